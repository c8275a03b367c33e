//! What tests of the container runtime share: a busybox root file system, a network
//! namespace and a cgroup parent of their own in every hierarchy (killed and removed on
//! drop), and container configs that use them.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::{Context, Result};
use skiff_node_runtime::{ContainerConfig, Libcontainer, PodNamespaces, SecuritySpec};

use crate::netns::Netns;

/// Where the host mounts its cgroup hierarchies.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const BUSYBOX: &str = "/bin/busybox";

/// Makes `dir` a root file system: the usual top-level directories and `/bin/busybox`
/// with a link per applet.
fn busybox_rootfs(dir: &Path, applets: &[&str]) -> Result<()> {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy(BUSYBOX, dir.join("bin/busybox")).context("copying busybox")?;
    for applet in applets {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    Ok(())
}

/// A root file system under a directory, a network namespace and a cgroup parent for a
/// test's containers; their bundles and logs go under the same directory.
#[derive(Debug)]
pub struct Sandbox {
    dir: PathBuf,
    netns: Netns,
    cgroups: CgroupParent,
}

impl Sandbox {
    /// Makes `<dir>/rootfs` with `applets`, a network namespace and a cgroup parent named
    /// after `prefix`.
    ///
    /// # Errors
    /// If the root file system or the namespace cannot be made.
    pub fn new(dir: &Path, applets: &[&str], prefix: &str) -> Result<Self> {
        busybox_rootfs(&dir.join("rootfs"), applets)?;
        Ok(Self {
            dir: dir.to_owned(),
            netns: Netns::new(prefix)?,
            cgroups: CgroupParent::new(prefix),
        })
    }

    /// The cgroup parent of the containers.
    #[must_use]
    pub fn cgroups(&self) -> &CgroupParent {
        &self.cgroups
    }

    /// Container `id` running `args` as root in `/` of the root file system, in the
    /// namespace, with masked paths and its own cgroups.
    #[must_use]
    pub fn config(&self, id: &str, args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            id: id.to_owned(),
            bundle_dir: self.dir.join("containers").join(id),
            rootfs: self.dir.join("rootfs"),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            namespaces: PodNamespaces {
                net: Some(PathBuf::from("/run/netns").join(self.netns.name())),
                ..PodNamespaces::default()
            },
            security: SecuritySpec {
                masked_paths: true,
                ..SecuritySpec::default()
            },
            cgroups_path: self.cgroups.cgroups_path(id),
            cgroup_v2_path: Some(self.cgroups.v2_path(id)),
            log_path: self.dir.join("logs").join(format!("{id}.log")),
            ..ContainerConfig::default()
        }
    }
}

/// One container test at a time: libcontainer clones the test process, and a clone taken
/// while another test thread spawns `ip` (holding the environment lock) deadlocks in the
/// child when it sets the container's environment.
static SERIAL: Mutex<()> = Mutex::new(());

/// A [`Sandbox`] in a temporary directory with the containers' state beside it, all
/// removed on drop; while it lives, no other fixture of this process does.
#[derive(Debug)]
pub struct Fixture {
    // Dropped first: its cgroups go before the directory holding the containers' state.
    sandbox: Sandbox,
    dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Fixture {
    /// Waits for any other fixture of this process to go, then makes a sandbox with
    /// `applets`, named after `prefix`.
    ///
    /// # Errors
    /// If the directory or the sandbox cannot be made.
    pub fn new(applets: &[&str], prefix: &str) -> Result<Self> {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = tempfile::tempdir()?;
        Ok(Self {
            sandbox: Sandbox::new(dir.path(), applets, prefix)?,
            dir,
            _serial: serial,
        })
    }

    /// The sandbox the containers run in.
    #[must_use]
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Where the runtime keeps the containers' state.
    #[must_use]
    pub fn state_root(&self) -> PathBuf {
        self.dir.path().join("containers-state")
    }

    /// A runtime over the fixture's state, with cgroups under the host's hierarchies.
    #[must_use]
    pub fn runtime(&self) -> Libcontainer {
        Libcontainer::new(self.state_root(), CGROUP_ROOT.into())
    }
}

/// A cgroup parent with a unique name, for a test's containers.
#[derive(Debug)]
pub struct CgroupParent {
    name: String,
}

impl CgroupParent {
    /// A parent named `<prefix>-<pid>-<n>`; nothing is made until containers are.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        Self {
            name: crate::unique_name(prefix),
        }
    }

    /// The OCI `cgroupsPath` of container `id`.
    #[must_use]
    pub fn cgroups_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.name)
    }

    /// The cgroup v2 directory of container `id` (hybrid hosts mount v2 at `unified`).
    #[must_use]
    pub fn v2_path(&self, id: &str) -> PathBuf {
        Path::new(CGROUP_ROOT)
            .join("unified")
            .join(&self.name)
            .join(id)
    }

    /// The parent's directory in every hierarchy where it exists.
    #[must_use]
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(CGROUP_ROOT)
            .map(|e| e.flatten().map(|e| e.path().join(&self.name)).collect())
            .unwrap_or_default();
        dirs.retain(|d| d.is_dir());
        dirs
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for top in self.dirs() {
            remove_tree(&top);
        }
    }
}

/// Kills what is left in a cgroup subtree the test made (ours by construction), then
/// removes its directories bottom-up.
fn remove_tree(dir: &Path) {
    let children: Vec<PathBuf> = fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    for child in children {
        remove_tree(&child);
    }
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
            // SAFETY: kill has no memory arguments; the pid is in the test's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for _ in 0..100 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("cleanup: could not remove cgroup {}", dir.display());
}
