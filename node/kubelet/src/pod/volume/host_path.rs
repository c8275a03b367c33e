//! hostPath: a path of the host bound into the container, checked (or created) according to
//! its `type` as Kubernetes does.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::HostPathVolumeSource;

use super::{VolumeError, io_err};

/// The kubelet's plugin directory name (hostPath volumes have no directory of their own).
pub const PLUGIN: &str = "kubernetes.io~host-path";

/// Checks the path against its type, creating a directory (`DirectoryOrCreate`, 0755 with
/// parents) or an empty file (`FileOrCreate`, 0644, parent must exist) when missing.
/// Returns the host path.
///
/// # Errors
/// A type mismatch or a missing path, naming the path; an unknown type.
pub fn check(source: &HostPathVolumeSource) -> Result<PathBuf, VolumeError> {
    let path = Path::new(&source.path);
    let kind = source.type_.as_deref().unwrap_or_default();
    let mismatch = |expected| VolumeError::HostPathType {
        path: source.path.clone(),
        expected,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("inspecting", path)(e)),
    };
    match (kind, meta) {
        ("", _) => {}
        ("DirectoryOrCreate", None) => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(io_err("creating", path))?;
            tracing::debug!(path = %path.display(), "hostPath directory created");
        }
        ("FileOrCreate", None) => {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
                .map_err(io_err("creating", path))?;
            tracing::debug!(path = %path.display(), "hostPath file created");
        }
        ("DirectoryOrCreate" | "Directory", m) => {
            if !m.is_some_and(|m| m.is_dir()) {
                return Err(mismatch("directory"));
            }
        }
        ("FileOrCreate" | "File", m) => {
            if !m.is_some_and(|m| m.is_file()) {
                return Err(mismatch("file"));
            }
        }
        ("Socket", m) => {
            if !m.is_some_and(|m| m.file_type().is_socket()) {
                return Err(mismatch("socket"));
            }
        }
        ("CharDevice", m) => {
            if !m.is_some_and(|m| m.file_type().is_char_device()) {
                return Err(mismatch("character device"));
            }
        }
        ("BlockDevice", m) => {
            if !m.is_some_and(|m| m.file_type().is_block_device()) {
                return Err(mismatch("block device"));
            }
        }
        (other, _) => {
            return Err(VolumeError::UnknownHostPathType {
                path: source.path.clone(),
                kind: other.to_owned(),
            });
        }
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn source(path: &Path, kind: &str) -> HostPathVolumeSource {
        HostPathVolumeSource {
            path: path.to_string_lossy().into_owned(),
            type_: Some(kind.to_owned()),
        }
    }

    #[test]
    fn directory_or_create_makes_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b");
        assert_eq!(check(&source(&path, "DirectoryOrCreate")).unwrap(), path);
        assert!(path.is_dir());
    }

    #[test]
    fn file_or_create_makes_an_empty_file_but_not_its_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        check(&source(&path, "FileOrCreate")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"");
        fs::write(&path, "keep").unwrap();
        check(&source(&path, "FileOrCreate")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"keep", "existing file untouched");
        let orphan = tmp.path().join("none/f");
        assert!(check(&source(&orphan, "FileOrCreate")).is_err());
    }

    #[test]
    fn type_mismatches_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = check(&source(&file, "Directory")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "hostPath type check failed: {} is not a directory",
                file.display()
            )
        );
        let err = check(&source(tmp.path(), "File")).unwrap_err();
        assert!(
            err.to_string().contains(&*tmp.path().to_string_lossy()),
            "{err}"
        );
        let missing = tmp.path().join("missing");
        assert!(check(&source(&missing, "Directory")).is_err());
        assert!(check(&source(&file, "Socket")).is_err());
        assert!(check(&source(&file, "CharDevice")).is_err());
        assert!(check(&source(&file, "BlockDevice")).is_err());
        assert!(matches!(
            check(&source(&file, "Symlink")),
            Err(VolumeError::UnknownHostPathType { .. })
        ));
    }

    #[test]
    fn matching_types_pass_and_empty_type_checks_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("s.sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        check(&source(&sock, "Socket")).unwrap();
        check(&source(Path::new("/dev/null"), "CharDevice")).unwrap();
        check(&source(tmp.path(), "Directory")).unwrap();
        let missing = tmp.path().join("missing");
        assert_eq!(check(&source(&missing, "")).unwrap(), missing);
        assert!(!missing.exists(), "no type: nothing created");
    }
}
