//! cgroup v2 subtrees that tests create for their processes, removed on drop.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

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

/// Every process in the cgroup `dir` or below it.
fn procs_in(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        // A v1 hierarchy lists processes of other PID namespaces as 0; never signal that.
        .filter(|pid| *pid > 0)
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(procs_in(&e.path()));
        }
    }
    pids
}

/// Kills (SIGKILL) every process in the cgroup `dir` and below, in whichever hierarchy
/// `dir` is, and waits (5 s at most) until none is left, so the directories can be
/// removed. Only for a subtree the test made: whatever runs in it the test started, itself
/// or through a node daemon that may be dead by now (a killed daemon leaves its containers
/// running).
pub fn kill_tree(dir: &Path) {
    // cgroup v2 kills the whole subtree in one write (Linux 5.14 and later).
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    loop {
        let pids: Vec<i32> = procs_in(dir).into_iter().filter(|p| *p != me).collect();
        if pids.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!(
                "cleanup: processes {pids:?} in {} outlived SIGKILL",
                dir.display()
            );
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn kill_tree_ends_processes_anywhere_below_and_leaves_the_tree_removable() -> Result<()> {
        if !crate::require_root("kill_tree_ends_processes_anywhere_below") {
            return Ok(());
        }
        let top = Cgroup::new("skiff-kill-tree")?;
        let leaf = top.path().join("pod").join("container");
        std::fs::create_dir_all(&leaf)?;
        let mut child = Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()?;
        std::fs::write(leaf.join("cgroup.procs"), child.id().to_string())?;
        assert_eq!(procs_in(top.path()), vec![i32::try_from(child.id())?]);
        kill_tree(top.path());
        let status = child.wait()?;
        assert!(!status.success(), "sleep was killed: {status}");
        assert!(procs_in(top.path()).is_empty());
        std::fs::remove_dir(&leaf)?;
        std::fs::remove_dir(top.path().join("pod"))?;
        Ok(())
    }
}
