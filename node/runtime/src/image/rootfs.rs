//! A container's root filesystem: overlayfs with the image's layers as lower directories and
//! the writable layer in the container's own directory, mounted at `<container_dir>/rootfs`.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use skiff_types::mountinfo;

use super::ImageError;

/// The mount point under the container directory.
pub const ROOTFS: &str = "rootfs";
/// The writable layer under the container directory.
pub const UPPER: &str = "upper";
/// overlayfs' scratch directory under the container directory.
pub const WORK: &str = "work";

/// Mounts and unmounts overlay filesystems; the real one needs `CAP_SYS_ADMIN`.
pub trait Mounter: Send + Sync + fmt::Debug {
    /// Mounts overlayfs at `target` with `options` (`lowerdir=..,upperdir=..,workdir=..`).
    ///
    /// # Errors
    /// If the kernel refuses the mount.
    fn mount_overlay(&self, options: &str, target: &Path) -> Result<(), ImageError>;

    /// Unmounts `target`.
    ///
    /// # Errors
    /// If the kernel refuses the unmount.
    fn unmount(&self, target: &Path) -> Result<(), ImageError>;

    /// Whether something is mounted at `target`.
    ///
    /// # Errors
    /// If the mount table cannot be read.
    fn is_mounted(&self, target: &Path) -> Result<bool, ImageError>;
}

/// The kernel's overlayfs through `mount(2)`, and `statx(2)` for what is mounted.
#[derive(Clone, Copy, Debug, Default)]
pub struct OverlayMounter;

impl Mounter for OverlayMounter {
    fn mount_overlay(&self, options: &str, target: &Path) -> Result<(), ImageError> {
        use nix::mount::{MsFlags, mount};
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options),
        )
        .map_err(|source| ImageError::Mount {
            op: "mount overlay at",
            target: target.display().to_string(),
            source,
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), ImageError> {
        use nix::{
            errno::Errno,
            mount::{MntFlags, umount2},
        };
        let map = |source| ImageError::Mount {
            op: "unmount",
            target: target.display().to_string(),
            source,
        };
        match umount2(target, MntFlags::empty()) {
            // A process still inside (an exec that has not ended) keeps it busy; detach so
            // the directory can go and the kernel frees the mount when the last user leaves.
            Err(Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH).map_err(map),
            other => other.map_err(map),
        }
    }

    fn is_mounted(&self, target: &Path) -> Result<bool, ImageError> {
        mountinfo::mounted_at(target).map_err(ImageError::io("inspect", target))
    }
}

/// overlayfs mount options: lower directories top first.
pub(super) fn overlay_options(
    layers_bottom_first: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> String {
    let lower: Vec<String> = layers_bottom_first
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    )
}

fn make_dir(path: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(path).map_err(ImageError::io("create", path))
}

/// Mounts the root filesystem of a container whose image has `layers` (bottom first);
/// `empty` stands in for an image without layers.
pub(super) fn mount(
    mounter: &dyn Mounter,
    layers: &[PathBuf],
    empty: &Path,
    container_dir: &Path,
) -> Result<PathBuf, ImageError> {
    make_dir(container_dir)?;
    let container_dir = container_dir
        .canonicalize()
        .map_err(ImageError::io("resolve", container_dir))?;
    let target = container_dir.join(ROOTFS);
    if mounter.is_mounted(&target)? {
        return Ok(target);
    }
    let upper = container_dir.join(UPPER);
    let work = container_dir.join(WORK);
    for dir in [&target, &upper, &work] {
        make_dir(dir)?;
    }
    for layer in layers {
        if !layer.is_dir() {
            return Err(ImageError::NotFound(format!("layer {}", layer.display())));
        }
    }
    let fallback = [empty.to_owned()];
    let lower = if layers.is_empty() {
        &fallback[..]
    } else {
        layers
    };
    mounter.mount_overlay(&overlay_options(lower, &upper, &work), &target)?;
    tracing::debug!(target = %target.display(), layers = layers.len(), "mounted root filesystem");
    Ok(target)
}

/// Unmounts the container's root filesystem if mounted and removes it and its writable layer.
pub(super) fn unmount(mounter: &dyn Mounter, container_dir: &Path) -> Result<(), ImageError> {
    let container_dir = match container_dir.canonicalize() {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("resolve", container_dir)(e)),
    };
    let target = container_dir.join(ROOTFS);
    if mounter.is_mounted(&target)? {
        mounter.unmount(&target)?;
    }
    // Never recursive: were the unmount to have failed silently, this must not reach into
    // the shared layers through the mount.
    match fs::remove_dir(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::io("remove", &target)(e)),
    }
    for dir in [UPPER, WORK] {
        let path = container_dir.join(dir);
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("remove", &path)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, sync::Mutex};

    use super::*;

    #[derive(Debug, Default)]
    struct FakeMounter {
        mounted: Mutex<HashSet<PathBuf>>,
        options: Mutex<Vec<String>>,
    }

    impl Mounter for FakeMounter {
        fn mount_overlay(&self, options: &str, target: &Path) -> Result<(), ImageError> {
            self.options.lock().unwrap().push(options.to_owned());
            self.mounted.lock().unwrap().insert(target.to_owned());
            Ok(())
        }

        fn unmount(&self, target: &Path) -> Result<(), ImageError> {
            self.mounted.lock().unwrap().remove(target);
            Ok(())
        }

        fn is_mounted(&self, target: &Path) -> Result<bool, ImageError> {
            Ok(self.mounted.lock().unwrap().contains(target))
        }
    }

    #[test]
    fn overlay_lists_lower_layers_top_first() {
        let layers = [PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        assert_eq!(
            overlay_options(&layers, Path::new("/c/upper"), Path::new("/c/work")),
            "lowerdir=/l/top:/l/bottom,upperdir=/c/upper,workdir=/c/work"
        );
    }

    #[test]
    fn mount_is_idempotent_and_unmount_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        fs::create_dir(&layer).unwrap();
        let container = dir.path().join("c1");
        let mounter = FakeMounter::default();
        let first = mount(
            &mounter,
            std::slice::from_ref(&layer),
            dir.path(),
            &container,
        )
        .unwrap();
        let second = mount(&mounter, &[layer], dir.path(), &container).unwrap();
        assert_eq!(first, second);
        assert_eq!(mounter.options.lock().unwrap().len(), 1);
        assert!(container.join(UPPER).is_dir());
        unmount(&mounter, &container).unwrap();
        unmount(&mounter, &container).unwrap();
        assert!(!container.join(ROOTFS).exists());
        assert!(!container.join(UPPER).exists());
        assert!(!container.join(WORK).exists());
    }

    #[test]
    fn image_without_layers_mounts_the_empty_lower() {
        let dir = tempfile::tempdir().unwrap();
        let mounter = FakeMounter::default();
        mount(
            &mounter,
            &[],
            &dir.path().join("empty"),
            &dir.path().join("c"),
        )
        .unwrap();
        assert!(
            mounter.options.lock().unwrap()[0]
                .starts_with(&format!("lowerdir={},", dir.path().join("empty").display()))
        );
    }
}
