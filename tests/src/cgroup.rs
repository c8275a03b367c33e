//! cgroup v2 subtrees that tests create for their processes, removed on drop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where the host mounts cgroup v2 (hybrid hosts mount it at `unified`).
///
/// # Errors
/// If no cgroup2 mount is found.
pub fn v2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .context("no cgroup2 mount on this host")
}

/// A cgroup v2 directory a test made; on drop its processes are killed and it is removed.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 root>/<unique name>`.
    ///
    /// # Errors
    /// If the directory cannot be made.
    pub fn new(prefix: &str) -> Result<Self> {
        let path = v2_root()?.join(crate::unique_name(prefix));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// The cgroup's directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Processes still inside keep the directory busy; they are ours by construction.
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("cleanup: could not remove cgroup {}", self.path.display());
    }
}
