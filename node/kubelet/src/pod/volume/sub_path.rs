//! `subPath` and `subPathExpr` mounts that a container sharing the volume cannot redirect.
//!
//! A path that is resolved now and bind-mounted later lets a container swap one of its
//! components for a symlink in between and have a host path mounted into the pod (the
//! kubelet's CVE-2017-1002101 and CVE-2021-25741). So the sub path is opened beneath its
//! volume, by the kernel in one step (`openat2` with `RESOLVE_BENEATH`) or, where that is
//! missing, component by component with `O_PATH | O_NOFOLLOW` from the volume's root; and it
//! is the opened file, through `/proc/self/fd/N`, that is bind-mounted onto a target in the
//! pod's directory (`volume-subpaths/<volume>/<container>/<index>`, as the kubelet lays it
//! out). No container can write there, so the runtime's later mount of the target is safe.
//!
//! Symlinks inside the volume are followed as long as they stay beneath it (a configMap key
//! is a symlink into `..data`); absolute symlinks and `..` that would leave it are refused.
//! Missing directories are made one at a time, each opened without following symlinks right
//! after it is made.

use std::{
    collections::VecDeque,
    ffi::{OsStr, OsString},
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Component, Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat},
    sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, mkdirat},
};

use super::{Mounter, VolumeError, io_err};

/// The directory under a pod's directory that holds the bind targets of sub paths.
pub(crate) const DIR: &str = "volume-subpaths";

/// Symlinks followed in one resolution before it counts as a loop, as the kernel's limit.
const MAX_SYMLINKS: u32 = 40;

/// Why a sub path could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// It resolves outside the volume (`..` above the root, an absolute symlink).
    #[error("leaves the volume")]
    Escapes,
    /// More symlinks than the kernel would follow.
    #[error("too many levels of symbolic links")]
    Loop,
    /// A component other than the last is not a directory.
    #[error("a component is not a directory")]
    NotADirectory,
    /// A system call failed.
    #[error(transparent)]
    Os(#[from] Errno),
}

/// Opens `sub` (relative) beneath the directory `base` as an `O_PATH` descriptor, making
/// missing directories with `mode` when it is given: by the kernel in one step where it
/// can, by [`walk`] otherwise.
pub(crate) fn open_beneath(
    base: &OwnedFd,
    sub: &Path,
    create: Option<Mode>,
) -> Result<OwnedFd, OpenError> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(base, sub, how) {
        Ok(fd) => Ok(fd),
        Err(Errno::EXDEV) => Err(OpenError::Escapes),
        Err(Errno::ELOOP) => Err(OpenError::Loop),
        Err(Errno::ENOTDIR) => Err(OpenError::NotADirectory),
        // Missing parts are made by the walk; ENOSYS/E2BIG/EINVAL: no usable openat2;
        // EAGAIN: the kernel could not rule out a concurrent rename, so walk instead.
        Err(Errno::ENOENT) if create.is_some() => walk(base, sub, create),
        Err(Errno::ENOSYS | Errno::E2BIG | Errno::EINVAL | Errno::EAGAIN) => {
            walk(base, sub, create)
        }
        Err(err) => Err(OpenError::Os(err)),
    }
}

/// The walk: a stack of open directories from `base` down, one `openat(O_PATH|O_NOFOLLOW)`
/// per component; a symlink's target (read from its own descriptor) is spliced into the
/// components still to go, `..` pops the stack and may never pop `base`.
fn walk(base: &OwnedFd, sub: &Path, create: Option<Mode>) -> Result<OwnedFd, OpenError> {
    let mut pending: VecDeque<OsString> = names(sub.as_os_str());
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            dirs.pop().ok_or(OpenError::Escapes)?;
            continue;
        }
        let parent = dirs.last().unwrap_or(base);
        let fd = open_or_make(parent, &name, create)?;
        let kind = SFlag::from_bits_truncate(fstat(&fd)?.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(OpenError::Loop);
            }
            // An O_PATH descriptor of a symlink reads as the link itself with an empty path.
            let target = readlinkat(&fd, "")?;
            if target.as_bytes().starts_with(b"/") {
                return Err(OpenError::Escapes);
            }
            for part in names(&target).into_iter().rev() {
                pending.push_front(part);
            }
        } else if kind == SFlag::S_IFDIR {
            dirs.push(fd);
        } else if pending.iter().all(|n| n == ".") {
            return Ok(fd);
        } else {
            return Err(OpenError::NotADirectory);
        }
    }
    match dirs.pop() {
        Some(fd) => Ok(fd),
        None => Ok(nix::unistd::dup(base)?),
    }
}

/// The path's names, without empty and `.` components.
fn names(path: &OsStr) -> VecDeque<OsString> {
    path.as_bytes()
        .split(|b| *b == b'/')
        .filter(|n| !n.is_empty() && *n != b".")
        .map(|n| OsStr::from_bytes(n).to_owned())
        .collect()
}

/// Opens `name` in `parent` without following it; when missing and `create` is given, makes
/// it a directory first. A name made here is opened as a directory without following
/// symlinks, so one swapped in meanwhile fails the open instead of being followed, and it
/// gets `mode` whatever the umask.
fn open_or_make(
    parent: &OwnedFd,
    name: &OsStr,
    create: Option<Mode>,
) -> Result<OwnedFd, OpenError> {
    let path_flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    loop {
        match openat(parent, name, path_flags, Mode::empty()) {
            Err(Errno::ENOENT) => {}
            other => return Ok(other?),
        }
        let Some(mode) = create else {
            return Err(Errno::ENOENT.into());
        };
        match mkdirat(parent, name, mode) {
            Ok(()) => {}
            // Someone else made it meanwhile: open what is there now, as any other name.
            Err(Errno::EEXIST) => continue,
            Err(err) => return Err(err.into()),
        }
        let dir = openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| match err {
            Errno::ELOOP | Errno::ENOTDIR => OpenError::NotADirectory,
            other => OpenError::Os(other),
        })?;
        fchmod(&dir, mode)?;
        return Ok(dir);
    }
}

/// A single path component naming a pod's volume or container, never a way out of the
/// pod's directory.
fn plain(name: &str) -> Option<&str> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !name.starts_with('.') => Some(name),
        _ => None,
    }
}

/// Where a container's sub path mount is bound: `<pod>/volume-subpaths/<volume>/<container>/<index>`.
pub(crate) fn target(
    pod_dir: &Path,
    volume: &str,
    container: &str,
    index: usize,
) -> Result<PathBuf, VolumeError> {
    let invalid = |what: &str| VolumeError::InvalidSubPath {
        path: what.to_owned(),
        reason: "the volume or container name is not a plain name",
    };
    let volume = plain(volume).ok_or_else(|| invalid(volume))?;
    let container = plain(container).ok_or_else(|| invalid(container))?;
    Ok(pod_dir
        .join(DIR)
        .join(volume)
        .join(container)
        .join(index.to_string()))
}

/// Resolves `sub` beneath `base` (made when missing, as the kubelet does, with the mode of
/// `base`), and binds what it opened onto `target`, which is returned. A target already
/// bound to that same file is kept (a restarted container gets the same mount); one bound to
/// something else is unmounted and bound again.
///
/// # Errors
/// [`VolumeError::InvalidSubPath`] for a path that leaves the volume; I/O and mount
/// failures otherwise.
pub(crate) fn bind(
    mounter: &dyn Mounter,
    base: &Path,
    sub: &str,
    target: &Path,
) -> Result<PathBuf, VolumeError> {
    let invalid = |reason| VolumeError::InvalidSubPath {
        path: sub.to_owned(),
        reason,
    };
    if Path::new(sub).is_absolute() {
        return Err(invalid("must be relative"));
    }
    if Path::new(sub)
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(invalid("must not contain '..'"));
    }
    let root = fs::File::open(base).map_err(io_err("opening", base))?;
    let root = OwnedFd::from(root);
    let mode = Mode::from_bits_truncate(fstat(&root).map_err(os(base))?.st_mode & 0o7777);
    let opened = open_beneath(&root, Path::new(sub), Some(mode)).map_err(|err| match err {
        OpenError::Escapes => invalid("leaves the volume"),
        OpenError::Loop => invalid("too many levels of symbolic links"),
        OpenError::NotADirectory => invalid("a component is not a directory"),
        OpenError::Os(errno) => VolumeError::Io {
            op: "opening sub path in",
            path: base.to_owned(),
            source: errno.into(),
        },
    })?;
    let stat = fstat(&opened).map_err(os(base))?;
    let is_dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if prepare_target(mounter, target, &stat, is_dir)? {
        tracing::debug!(target = %target.display(), sub, "sub path already bound");
        return Ok(target.to_owned());
    }
    let source = PathBuf::from(format!("/proc/self/fd/{}", opened.as_fd().as_raw_fd()));
    mounter.bind(&source, target)?;
    drop(opened);
    tracing::debug!(base = %base.display(), sub, target = %target.display(), "sub path bound");
    Ok(target.to_owned())
}

fn os(path: &Path) -> impl FnOnce(Errno) -> VolumeError + '_ {
    move |errno| VolumeError::Io {
        op: "reading",
        path: path.to_owned(),
        source: errno.into(),
    }
}

/// Makes `target` a mount point of the right kind (a directory for a directory, an empty
/// file for anything else). Returns `true` when it already has `opened` mounted on it.
fn prepare_target(
    mounter: &dyn Mounter,
    target: &Path,
    opened: &FileStat,
    is_dir: bool,
) -> Result<bool, VolumeError> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    if mounter.is_mounted(target) {
        let same = fs::metadata(target)
            .is_ok_and(|m| m.dev() == opened.st_dev && m.ino() == opened.st_ino);
        if same {
            return Ok(true);
        }
        mounter.unmount(target)?;
        if mounter.is_mounted(target) {
            return Err(VolumeError::StillMounted(target.to_owned()));
        }
    }
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() == is_dir && (is_dir || m.is_file()) => return Ok(false),
        // Not a mount point (checked above), so removing it removes nothing of the pod's.
        Ok(m) if m.is_dir() => fs::remove_dir(target).map_err(io_err("removing", target))?,
        Ok(_) => fs::remove_file(target).map_err(io_err("removing", target))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", target)(e)),
    }
    if is_dir {
        fs::create_dir(target).map_err(io_err("creating", target))?;
    } else {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
            .map_err(io_err("creating", target))?;
    }
    Ok(false)
}

/// Every bind target under `<pod>/volume-subpaths`.
pub(crate) fn targets(pod_dir: &Path) -> Vec<PathBuf> {
    let entries = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for volume in entries(&pod_dir.join(DIR)) {
        for container in entries(&volume) {
            out.extend(entries(&container));
        }
    }
    out
}

/// Removes the bind targets and their directories once nothing is mounted on them, never
/// looking inside a target: an unmount that did not happen must not lead removal into a
/// volume or a host directory.
pub(crate) fn remove_targets(pod_dir: &Path) -> Result<(), VolumeError> {
    let root = pod_dir.join(DIR);
    for target in targets(pod_dir) {
        let result = match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => fs::remove_dir(&target),
            Ok(_) => fs::remove_file(&target),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &target)(e)),
        }
    }
    let dirs = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for volume in dirs(&root) {
        for container in dirs(&volume) {
            remove_empty_dir(&container)?;
        }
        remove_empty_dir(&volume)?;
    }
    remove_empty_dir(&root)
}

fn remove_empty_dir(dir: &Path) -> Result<(), VolumeError> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A volume root with `outside` next to it, as the host around a volume.
    struct Tree {
        _tmp: tempfile::TempDir,
        volume: PathBuf,
        outside: PathBuf,
    }

    fn tree() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let volume = tmp.path().join("volume");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(volume.join("a/b/c")).unwrap();
        fs::write(volume.join("a/b/c/file"), "inside").unwrap();
        fs::create_dir_all(outside.join("b/c")).unwrap();
        fs::write(outside.join("marker"), "host").unwrap();
        Tree {
            _tmp: tmp,
            volume,
            outside,
        }
    }

    fn root(t: &Tree) -> OwnedFd {
        OwnedFd::from(fs::File::open(&t.volume).unwrap())
    }

    /// What an opened descriptor refers to.
    fn points_at(fd: &OwnedFd) -> PathBuf {
        fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

    /// How a path is resolved: by the kernel (with the walk as its fallback), or by the
    /// walk alone, as on kernels without `openat2`.
    type Resolve = fn(&OwnedFd, &Path, Option<Mode>) -> Result<OwnedFd, OpenError>;

    const BOTH: [(&str, Resolve); 2] = [("openat2", open_beneath), ("walk", walk)];

    fn open(t: &Tree, sub: &str, (_, resolve): (&str, Resolve)) -> Result<OwnedFd, OpenError> {
        resolve(&root(t), Path::new(sub), None)
    }

    #[test]
    fn a_plain_path_opens_what_it_names() {
        let t = tree();
        for r in BOTH {
            let fd = open(&t, "a/b/c/file", r).unwrap();
            assert_eq!(points_at(&fd), t.volume.join("a/b/c/file"), "{}", r.0);
            let fd = open(&t, "./a//b/", r).unwrap();
            assert_eq!(points_at(&fd), t.volume.join("a/b"), "{}", r.0);
        }
    }

    #[test]
    fn relative_symlinks_inside_the_volume_are_followed_at_any_depth() {
        let t = tree();
        // As a configMap: the key is a symlink into a data directory.
        symlink("a/b", t.volume.join("top")).unwrap();
        symlink("../b/c", t.volume.join("a/b/up")).unwrap();
        symlink("c/file", t.volume.join("a/b/key")).unwrap();
        for r in BOTH {
            let fd = open(&t, "top/c/file", r).unwrap();
            assert_eq!(points_at(&fd), t.volume.join("a/b/c/file"), "{}", r.0);
            let fd = open(&t, "a/b/up/file", r).unwrap();
            assert_eq!(points_at(&fd), t.volume.join("a/b/c/file"), "{}", r.0);
            let fd = open(&t, "a/b/key", r).unwrap();
            assert_eq!(points_at(&fd), t.volume.join("a/b/c/file"), "{}", r.0);
        }
    }

    #[test]
    fn a_symlink_leaving_the_volume_is_refused_at_any_depth() {
        let t = tree();
        // Relative links that climb out, at the first and at a deeper component.
        symlink("../outside", t.volume.join("first")).unwrap();
        symlink("../../../../outside", t.volume.join("a/b/c/deep")).unwrap();
        for r in BOTH {
            for sub in ["first/marker", "a/b/c/deep/marker", "first", "a/b/c/deep"] {
                assert!(
                    matches!(open(&t, sub, r), Err(OpenError::Escapes)),
                    "{sub} {}",
                    r.0
                );
            }
        }
    }

    #[test]
    fn an_absolute_symlink_is_refused_even_to_a_path_inside() {
        let t = tree();
        symlink(&t.outside, t.volume.join("host")).unwrap();
        // An absolute path means the host's tree, whatever it names.
        symlink(t.volume.join("a"), t.volume.join("a/b/self")).unwrap();
        for r in BOTH {
            for sub in ["host/marker", "a/b/self/b"] {
                assert!(
                    matches!(open(&t, sub, r), Err(OpenError::Escapes)),
                    "{sub} {}",
                    r.0
                );
            }
        }
    }

    #[test]
    fn dot_dot_may_move_inside_but_never_above_the_root() {
        let t = tree();
        for r in BOTH {
            let fd = open(&t, "a/b/../b/c/file", r).unwrap();
            assert_eq!(points_at(&fd), t.volume.join("a/b/c/file"), "{}", r.0);
            for sub in ["..", "a/../../outside/marker", "a/b/c/../../../.."] {
                assert!(
                    matches!(open(&t, sub, r), Err(OpenError::Escapes)),
                    "{sub} {}",
                    r.0
                );
            }
        }
    }

    #[test]
    fn symlink_loops_and_files_in_the_middle_are_errors() {
        let t = tree();
        symlink("loop2", t.volume.join("loop1")).unwrap();
        symlink("loop1", t.volume.join("loop2")).unwrap();
        for r in BOTH {
            assert!(
                matches!(open(&t, "loop1/x", r), Err(OpenError::Loop)),
                "{}",
                r.0
            );
            assert!(
                matches!(open(&t, "a/b/c/file/x", r), Err(OpenError::NotADirectory)),
                "{}",
                r.0
            );
            assert!(
                matches!(open(&t, "missing", r), Err(OpenError::Os(Errno::ENOENT))),
                "{}",
                r.0
            );
        }
    }

    #[test]
    fn missing_directories_are_made_with_the_given_mode() {
        for r in BOTH {
            let t = tree();
            let mode = Mode::from_bits_truncate(0o2771);
            let fd = r.1(&root(&t), Path::new("a/new/deeper"), Some(mode)).unwrap();
            let deeper = t.volume.join("a/new/deeper");
            assert_eq!(points_at(&fd), deeper, "{}", r.0);
            for dir in [t.volume.join("a/new"), deeper] {
                let meta = fs::metadata(&dir).unwrap();
                assert!(meta.is_dir());
                assert_eq!(meta.mode() & 0o7777, 0o2771, "{} {}", dir.display(), r.0);
            }
            // An existing path is opened, not made again.
            r.1(&root(&t), Path::new("a/new/deeper"), Some(mode)).unwrap();
        }
    }

    #[test]
    fn making_a_path_through_a_symlink_that_leaves_makes_nothing_outside() {
        for r in BOTH {
            let t = tree();
            symlink(&t.outside, t.volume.join("abs")).unwrap();
            symlink("../outside", t.volume.join("rel")).unwrap();
            let mode = Mode::from_bits_truncate(0o755);
            for sub in ["abs/made", "rel/made", "rel/b/c/made"] {
                let got = r.1(&root(&t), Path::new(sub), Some(mode));
                assert!(matches!(got, Err(OpenError::Escapes)), "{sub} {}", r.0);
            }
            assert!(!t.outside.join("made").exists(), "{}", r.0);
            assert!(!t.outside.join("b/c/made").exists(), "{}", r.0);
        }
    }

    #[test]
    fn targets_are_plain_names_under_the_pod() {
        let pod = Path::new("/pods/uid");
        assert_eq!(
            target(pod, "data", "app", 2).unwrap(),
            Path::new("/pods/uid/volume-subpaths/data/app/2")
        );
        for (volume, container) in [("..", "app"), ("data", "a/b"), ("", "app"), ("data", ".x")] {
            assert!(
                target(pod, volume, container, 0).is_err(),
                "{volume} {container}"
            );
        }
    }
}
