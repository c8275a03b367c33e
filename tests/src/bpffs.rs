//! A private bpffs mount for a test's pins, so nothing lands in the machine's /sys/fs/bpf;
//! unmounted (and with it every pin) and removed on drop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A bpffs mounted on a temporary directory.
#[derive(Debug)]
pub struct BpfFs {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl BpfFs {
    /// Mounts a fresh bpffs on a new temporary directory.
    ///
    /// # Errors
    /// If the directory cannot be made or the mount fails.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("skiff-bpffs-").tempdir()?;
        let path = dir.path().to_path_buf();
        nix::mount::mount(
            Some("bpf"),
            &path,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting bpffs on {}", path.display()))?;
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }

    /// The mount point.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        // Pins are files of this mount: they go with it, and with them the links and maps
        // nobody else holds.
        if let Err(err) = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cleanup: unmounting bpffs {}: {err}", self.path.display());
        }
        drop(self.dir.take());
    }
}
