//! What is mounted where: one path asked of the kernel ([`mounted_at`], what the node's
//! start and teardown paths ask), and the whole table as `/proc/self/mountinfo` lists it
//! (for a listing: teardown after a restart, and the tests that check nothing stays
//! mounted).

use std::{
    ffi::OsStr,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};

/// Whether `path` (symlinks followed, as `canonicalize` would) is where something is mounted.
///
/// One `statx` call: the kernel marks the root of a mount (`STATX_ATTR_MOUNT_ROOT`, Linux
/// 5.8). The mountinfo text is only read on older kernels: building it takes the kernel's
/// mount-namespace lock and costs a line per mount, which on a busy node (three namespace
/// mounts per pod sandbox and spare, a root filesystem and volumes per pod) made these
/// checks a large share of starting a pod, and every mount or unmount waits for them.
///
/// # Errors
/// If `path` cannot be inspected for a reason other than not existing.
pub fn mounted_at(path: &Path) -> io::Result<bool> {
    match statx(CWD, path, AtFlags::NO_AUTOMOUNT, StatxFlags::empty()) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
        }
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(false),
        // A kernel without the attribute (or without statx): the table has the answer.
        Ok(_) | Err(rustix::io::Errno::NOSYS) => listed(path),
        Err(e) => Err(e.into()),
    }
}

/// Whether `/proc/self/mountinfo` lists a mount at `path` resolved.
fn listed(path: &Path) -> io::Result<bool> {
    let path = match fs::canonicalize(path) {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(is_mount_point(
        &fs::read_to_string("/proc/self/mountinfo")?,
        &path,
    ))
}

/// One mount of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted, escapes undone.
    pub point: PathBuf,
    /// The filesystem type, e.g. `tmpfs`.
    pub fs_type: String,
    /// The filesystem's own options, e.g. `rw,size=16384k`.
    pub super_options: String,
}

/// The mounts of a mountinfo text, in its order (later mounts over earlier ones); lines that
/// do not parse are skipped.
#[must_use]
pub fn mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let mut tail = tail.split(' ');
            let fs_type = tail.next()?.to_owned();
            let super_options = tail.nth(1)?.to_owned();
            Some(Mount {
                point: point(head)?,
                fs_type,
                super_options,
            })
        })
        .collect()
}

/// The mount points (fifth field) of a mountinfo text, in its order.
#[must_use]
pub fn mount_points(text: &str) -> Vec<PathBuf> {
    text.lines().filter_map(point).collect()
}

/// Whether a mountinfo text lists a mount at `target`.
#[must_use]
pub fn is_mount_point(text: &str, target: &Path) -> bool {
    text.lines().filter_map(point).any(|p| p == target)
}

fn point(line: &str) -> Option<PathBuf> {
    line.split(' ').nth(4).map(unescape)
}

/// Undoes mountinfo's `\040`-style octal escapes of spaces, tabs, newlines and backslashes.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        match digits {
            Some(d) if bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw\n\
                        37 35 0:5 / /proc rw - proc proc rw\n\
                        38 35 0:6 / /run/a\\134b rw - tmpfs tmpfs rw,size=16384k\n";

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(
            mount_points(TEXT),
            [
                PathBuf::from("/mnt two"),
                PathBuf::from("/proc"),
                PathBuf::from("/run/a\\b")
            ]
        );
        assert!(is_mount_point(TEXT, Path::new("/mnt two")));
        assert!(is_mount_point(TEXT, Path::new("/proc")));
        assert!(!is_mount_point(TEXT, Path::new("/mnt")));
    }

    #[test]
    fn mounts_carry_their_type_and_options() {
        let all = mounts(TEXT);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].point, PathBuf::from("/run/a\\b"));
        assert_eq!(all[2].fs_type, "tmpfs");
        assert_eq!(all[2].super_options, "rw,size=16384k");
    }

    #[test]
    fn mounted_at_agrees_with_the_mount_table() {
        // Whatever this process may mount, the mounts it already has answer the same both
        // ways: every mount point listed is one (unless another mount hides it), and a
        // plain directory is none.
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let points = mount_points(&text);
        for point in &points {
            if points
                .iter()
                .any(|p| p != point && point.starts_with(p) && p != Path::new("/"))
            {
                continue;
            }
            if fs::metadata(point).is_ok() {
                assert!(mounted_at(point).unwrap(), "{} is listed", point.display());
                assert!(listed(point).unwrap());
            }
        }
        let dir = tempfile::tempdir().unwrap();
        if !points.iter().any(|p| p == dir.path()) {
            assert!(!mounted_at(dir.path()).unwrap());
            assert!(!listed(dir.path()).unwrap());
        }
    }

    #[test]
    fn nothing_is_mounted_where_nothing_exists() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!mounted_at(&dir.path().join("absent")).unwrap());
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(!mounted_at(&file.join("below")).unwrap());
        assert!(!listed(&dir.path().join("absent")).unwrap());
    }

    #[test]
    fn a_symlink_to_a_mount_point_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("proc");
        std::os::unix::fs::symlink("/proc", &link).unwrap();
        assert!(mounted_at(&link).unwrap());
    }

    #[test]
    fn a_backslash_without_three_octal_digits_stays() {
        assert_eq!(unescape("/a\\09x\\"), PathBuf::from("/a\\09x\\"));
    }
}
