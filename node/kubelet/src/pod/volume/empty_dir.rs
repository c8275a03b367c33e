//! emptyDir: a scratch directory living as long as the pod, on disk or (`medium: Memory`) on
//! a tmpfs sized by `sizeLimit`.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

use k8s_openapi::api::core::v1::EmptyDirVolumeSource;

use super::{Mounter, VolumeError, ensure_dir, io_err};

/// The kubelet's plugin directory name.
pub const PLUGIN: &str = "kubernetes.io~empty-dir";

/// The `sizeLimit` in bytes, if set.
fn size_limit(volume: &str, source: &EmptyDirVolumeSource) -> Result<Option<u64>, VolumeError> {
    let Some(q) = &source.size_limit else {
        return Ok(None);
    };
    skiff_machinery::quantity::parse_milli(&q.0)
        .and_then(|milli| u64::try_from(milli / 1000).ok())
        .map(Some)
        .ok_or_else(|| VolumeError::InvalidSizeLimit {
            volume: volume.to_owned(),
            value: q.0.clone(),
        })
}

/// Creates the directory (a tmpfs mounted on it for `Memory`, once). Returns the disk
/// `sizeLimit` for the caller to record: it is not enforced on disk.
///
/// # Errors
/// An unknown medium, a malformed `sizeLimit`, a mount or file system failure.
pub fn setup(
    dir: &Path,
    volume: &str,
    source: &EmptyDirVolumeSource,
    mounter: &dyn Mounter,
) -> Result<Option<u64>, VolumeError> {
    let limit = size_limit(volume, source)?;
    let memory = match source.medium.as_deref().unwrap_or_default() {
        "" => false,
        "Memory" => true,
        other => {
            return Err(VolumeError::UnsupportedMedium {
                volume: volume.to_owned(),
                medium: other.to_owned(),
            });
        }
    };
    ensure_dir(dir)?;
    if memory && !mounter.is_mounted(dir) {
        mounter.mount_tmpfs(dir, limit)?;
    }
    // Any container user may write to an emptyDir, as with the kubelet.
    let meta = fs::metadata(dir).map_err(io_err("inspecting", dir))?;
    if meta.permissions().mode() & 0o7777 != 0o777 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777))
            .map_err(io_err("setting the mode of", dir))?;
    }
    Ok(if memory { None } else { limit })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::pod::volume::testing::{Call, FakeMounter};

    fn source(medium: Option<&str>, limit: Option<&str>) -> EmptyDirVolumeSource {
        EmptyDirVolumeSource {
            medium: medium.map(str::to_owned),
            size_limit: limit.map(|l| Quantity(l.to_owned())),
        }
    }

    #[test]
    fn disk_empty_dir_is_a_world_writable_directory_and_reports_its_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("scratch");
        let mounter = FakeMounter::default();
        let limit = setup(&dir, "scratch", &source(None, Some("1Gi")), &mounter).unwrap();
        assert_eq!(limit, Some(1 << 30));
        assert!(dir.is_dir());
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o777
        );
        assert!(mounter.calls().is_empty());
    }

    #[test]
    fn memory_empty_dir_mounts_tmpfs_with_size_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mem");
        let mounter = FakeMounter::default();
        let src = source(Some("Memory"), Some("64Mi"));
        assert_eq!(setup(&dir, "mem", &src, &mounter).unwrap(), None);
        setup(&dir, "mem", &src, &mounter).unwrap();
        assert_eq!(mounter.calls(), [Call::Mount(dir, Some(64 << 20))]);
    }

    #[test]
    fn memory_empty_dir_without_limit_has_no_size_option() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mem");
        let mounter = FakeMounter::default();
        setup(&dir, "mem", &source(Some("Memory"), None), &mounter).unwrap();
        assert_eq!(mounter.calls(), [Call::Mount(dir, None)]);
    }

    #[test]
    fn unknown_medium_and_bad_limit_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mounter = FakeMounter::default();
        let err = setup(tmp.path(), "h", &source(Some("HugePages"), None), &mounter);
        assert!(matches!(err, Err(VolumeError::UnsupportedMedium { .. })));
        let err = setup(tmp.path(), "b", &source(None, Some("lots")), &mounter).unwrap_err();
        assert_eq!(err.to_string(), "volume \"b\": invalid sizeLimit \"lots\"");
    }
}
