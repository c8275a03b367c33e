//! The kubelet's atomic writer: a running container sees a configMap, secret or downward API
//! volume switch from one complete payload to the next, never a half-written mix.
//!
//! Layout of a volume directory:
//! ```text
//! ..2026_12_01_18_25_53.Ab3xYz/   the payload (one timestamped directory per version)
//! ..data -> ..2026_12_01_18_25_53.Ab3xYz
//! <key>  -> ..data/<key>           one symlink per top-level user-visible path
//! ```
//! An update writes a new timestamped directory, renames a `..data_tmp` symlink over
//! `..data` (one atomic step), then fixes the user-visible symlinks and removes the old
//! directory. Every symlink is relative so the layout resolves inside the container too.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _, symlink},
    path::{Component, Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

/// The symlink naming the current payload directory.
const DATA: &str = "..data";
/// The symlink renamed over [`DATA`].
const DATA_TMP: &str = "..data_tmp";

/// Errors writing a payload.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// A payload path is absolute, climbs out with `..`, or starts with `..`.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriterError + 'a {
    move |source| WriterError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    /// The file's content.
    pub data: Vec<u8>,
    /// Its permission bits (`0o644` by default in Kubernetes).
    pub mode: u32,
}

/// A volume's complete content: relative path -> file.
pub type Payload = BTreeMap<String, FileProjection>;

/// Checks a payload path as the kubelet's `validatePath` does.
///
/// # Errors
/// [`WriterError::InvalidPath`] naming the path.
pub fn validate_path(path: &str) -> Result<(), WriterError> {
    let invalid = |reason| {
        Err(WriterError::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return invalid("must not be empty");
    }
    if path.starts_with('/') {
        return invalid("must be relative");
    }
    if path.starts_with("..") {
        return invalid("must not start with '..'");
    }
    if path.split('/').any(|part| part == "..") {
        return invalid("must not contain '..'");
    }
    if !Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return invalid("must be a plain relative path");
    }
    Ok(())
}

/// The first component of a payload path: the name the user sees in the volume's top level.
fn top_level(path: &str) -> &str {
    path.trim_start_matches("./")
        .split('/')
        .find(|p| !p.is_empty() && *p != ".")
        .unwrap_or(path)
}

/// Writes `payload` into `dir` (which must exist). Returns whether anything changed: an
/// unchanged payload leaves `..data` pointing at the same directory.
///
/// # Errors
/// An invalid path in the payload, or a file system failure.
pub fn write(dir: &Path, payload: &Payload) -> Result<bool, WriterError> {
    for path in payload.keys() {
        validate_path(path)?;
    }
    let data_link = dir.join(DATA);
    let old = match fs::read_link(&data_link) {
        Ok(target) => Some(target),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("reading", &data_link)(e)),
    };
    let old_dir = old.as_ref().map(|t| dir.join(t));
    let unchanged = match &old_dir {
        Some(old_dir) => read_payload(old_dir)?.as_ref() == Some(payload),
        None => false,
    };
    let new_top: BTreeSet<&str> = payload.keys().map(|p| top_level(p)).collect();
    if unchanged {
        // A user-visible symlink deleted by hand would otherwise stay missing.
        make_visible(dir, &new_top)?;
        return Ok(false);
    }

    let ts_dir = new_ts_dir(dir)?;
    write_payload(&ts_dir, payload)?;
    let ts_name = ts_dir
        .file_name()
        .map_or_else(|| ts_dir.clone(), PathBuf::from);

    let tmp_link = dir.join(DATA_TMP);
    match fs::remove_file(&tmp_link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing", &tmp_link)(e)),
    }
    symlink(&ts_name, &tmp_link).map_err(io_err("linking", &tmp_link))?;
    fs::rename(&tmp_link, &data_link).map_err(io_err("renaming over", &data_link))?;

    make_visible(dir, &new_top)?;
    if let Some(old_dir) = &old_dir {
        remove_stale_visible(dir, old_dir, &new_top)?;
        match fs::remove_dir_all(old_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", old_dir)(e)),
        }
    }
    remove_orphan_ts_dirs(dir, &ts_name);
    tracing::debug!(dir = %dir.display(), version = %ts_name.display(), files = payload.len(), "volume payload written");
    Ok(true)
}

/// Reads back a payload directory; `None` when it is missing or holds something other than
/// plain files and directories (then it is rewritten).
fn read_payload(ts_dir: &Path) -> Result<Option<Payload>, WriterError> {
    let mut out = Payload::new();
    let mut stack = vec![(ts_dir.to_owned(), String::new())];
    while let Some((path, prefix)) = stack.pop() {
        let entries = match fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("listing", &path)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry.file_type().map_err(io_err("inspecting", &path))?;
            if kind.is_dir() {
                stack.push((entry.path(), rel));
            } else if kind.is_file() {
                let file = entry.path();
                let meta = entry.metadata().map_err(io_err("inspecting", &file))?;
                let data = fs::read(&file).map_err(io_err("reading", &file))?;
                let mode = meta.permissions().mode() & 0o7777;
                out.insert(rel, FileProjection { data, mode });
            } else {
                return Ok(None);
            }
        }
    }
    Ok(Some(out))
}

/// `..YYYY_MM_DD_HH_MM_SS.<random>`, as the kubelet names its payload directories.
fn new_ts_dir(dir: &Path) -> Result<PathBuf, WriterError> {
    let prefix = format!("..{}.", timestamp(SystemTime::now()));
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(10)
        .tempdir_in(dir)
        .map_err(io_err("creating a payload directory in", dir))?;
    let path = tmp.keep();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting the mode of", &path))?;
    Ok(path)
}

fn write_payload(ts_dir: &Path, payload: &Payload) -> Result<(), WriterError> {
    for (rel, file) in payload {
        let path = ts_dir.join(rel);
        if let Some(parent) = path.parent()
            && parent != ts_dir
        {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_err("creating", parent))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        f.write_all(&file.data).map_err(io_err("writing", &path))?;
        // Set explicitly: the open mode is filtered through the umask.
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode & 0o7777))
            .map_err(io_err("setting the mode of", &path))?;
    }
    Ok(())
}

/// Creates the `<name> -> ..data/<name>` symlinks that are missing.
fn make_visible(dir: &Path, top: &BTreeSet<&str>) -> Result<(), WriterError> {
    for name in top {
        let link = dir.join(name);
        let target = Path::new(DATA).join(name);
        match fs::read_link(&link) {
            Ok(t) if t == target => continue,
            Ok(_) => fs::remove_file(&link).map_err(io_err("removing", &link))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Something that is not a symlink sits there: leave the user's data alone.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => continue,
            Err(e) => return Err(io_err("reading", &link)(e)),
        }
        symlink(&target, &link).map_err(io_err("linking", &link))?;
    }
    Ok(())
}

/// Removes the symlinks of top-level names the old payload had and the new one does not.
fn remove_stale_visible(
    dir: &Path,
    old_dir: &Path,
    new_top: &BTreeSet<&str>,
) -> Result<(), WriterError> {
    let Ok(entries) = fs::read_dir(old_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if new_top.contains(name.as_str()) {
            continue;
        }
        let link = dir.join(&name);
        if fs::read_link(&link).is_ok_and(|t| t == Path::new(DATA).join(&name)) {
            fs::remove_file(&link).map_err(io_err("removing", &link))?;
        }
    }
    Ok(())
}

/// Removes payload directories left by a writer that stopped midway (not `keep`).
fn remove_orphan_ts_dirs(dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let s = name.to_string_lossy();
        let is_ts = s.starts_with("..") && s != DATA && s != DATA_TMP;
        if is_ts
            && Path::new(&name) != keep
            && entry.file_type().is_ok_and(|t| t.is_dir())
            && let Err(e) = fs::remove_dir_all(entry.path())
        {
            tracing::warn!(path = %entry.path().display(), error = %e, "removing a stale payload directory");
        }
    }
}

/// `YYYY_MM_DD_HH_MM_SS` in UTC.
fn timestamp(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    fn payload(entries: &[(&str, &str)]) -> Payload {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), file(v, 0o644)))
            .collect()
    }

    fn data_target(dir: &Path) -> PathBuf {
        fs::read_link(dir.join(DATA)).unwrap()
    }

    #[test]
    fn payload_lands_behind_data_symlink_with_relative_user_links() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(write(dir, &payload(&[("a", "1"), ("sub/b", "2")])).unwrap());

        let target = data_target(dir);
        let name = target.to_string_lossy().into_owned();
        assert!(name.starts_with("..20"), "{name}");
        assert!(target.is_relative());
        assert_eq!(fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
        assert_eq!(
            fs::read_link(dir.join("sub")).unwrap(),
            Path::new("..data/sub")
        );
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert!(!dir.join(DATA_TMP).exists());
    }

    #[test]
    fn update_changes_content_through_the_same_path_and_drops_old_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(dir, &payload(&[("a", "1")])).unwrap();
        let first = data_target(dir);
        assert!(write(dir, &payload(&[("a", "2")])).unwrap());
        let second = data_target(dir);
        assert_ne!(first, second);
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "2");
        assert!(!dir.join(&first).exists(), "old version removed");
        let hidden: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..20"))
            .collect();
        assert_eq!(hidden.len(), 1);
    }

    #[test]
    fn unchanged_payload_is_not_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let p = payload(&[("a", "1"), ("b/c", "2")]);
        write(dir, &p).unwrap();
        let first = data_target(dir);
        assert!(!write(dir, &p).unwrap());
        assert_eq!(data_target(dir), first);
    }

    #[test]
    fn mode_change_alone_is_a_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(dir, &payload(&[("a", "1")])).unwrap();
        let mut p = payload(&[("a", "1")]);
        p.get_mut("a").unwrap().mode = 0o400;
        assert!(write(dir, &p).unwrap());
        let mode = fs::metadata(dir.join("a")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
    }

    #[test]
    fn removed_keys_vanish_from_the_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(dir, &payload(&[("a", "1"), ("gone", "x"), ("d/e", "y")])).unwrap();
        write(dir, &payload(&[("a", "1")])).unwrap();
        assert!(fs::symlink_metadata(dir.join("gone")).is_err());
        assert!(fs::symlink_metadata(dir.join("d")).is_err());
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
    }

    #[test]
    fn deleted_user_link_is_restored_without_rewrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let p = payload(&[("a", "1")]);
        write(dir, &p).unwrap();
        let first = data_target(dir);
        fs::remove_file(dir.join("a")).unwrap();
        assert!(!write(dir, &p).unwrap());
        assert_eq!(data_target(dir), first);
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
    }

    #[test]
    fn empty_payload_gives_only_the_data_link() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(dir, &Payload::new()).unwrap();
        let names: BTreeSet<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(DATA));
    }

    #[test]
    fn climbing_or_absolute_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../x", "..hidden", ""] {
            let err = write(tmp.path(), &payload(&[(bad, "1")])).unwrap_err();
            assert!(
                matches!(err, WriterError::InvalidPath { .. }),
                "{bad}: {err}"
            );
        }
        assert!(fs::read_dir(tmp.path()).unwrap().next().is_none());
    }

    #[test]
    fn timestamp_is_utc_calendar_time() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_149_553);
        assert_eq!(timestamp(t), "2026_12_01_18_25_53");
        assert_eq!(timestamp(UNIX_EPOCH), "1970_01_01_00_00_00");
        let leap = UNIX_EPOCH + Duration::from_hours(264_384);
        assert_eq!(timestamp(leap), "2000_02_29_00_00_00");
    }
}
