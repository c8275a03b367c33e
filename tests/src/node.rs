//! A real `node` daemon for end-to-end tests: its own state directory, bridge and cgroup
//! parent, stopped with SIGTERM on drop so it removes every container, sandbox and rule.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use skiff_types::mountinfo;

use crate::control::ControlPlane;

/// A node daemon process.
#[derive(Debug)]
pub struct NodeDaemon {
    child: Option<Child>,
    name: String,
    dir: PathBuf,
    args: Vec<String>,
    restarts: u32,
    /// The private bpffs its Service datapath is pinned on; unmounted (pins and all) after
    /// the daemon stops.
    bpffs: Option<crate::bpffs::BpfFs>,
}

impl NodeDaemon {
    /// Starts `node` for `cp` named `name`, state under `dir`, waiting until its Node is
    /// Ready. Call from a thread inside the test's network namespace.
    ///
    /// # Errors
    /// If it exits or is not Ready within 60 s.
    pub fn start(cp: &ControlPlane, dir: &Path, name: &str, extra: &[&str]) -> Result<Self> {
        let mut node = Self::spawn(cp, dir, name, extra)?;
        node.wait_ready(cp)?;
        Ok(node)
    }

    /// Starts `node` as [`NodeDaemon::start`] does, without waiting for it to be Ready.
    ///
    /// # Errors
    /// If it cannot be started.
    pub fn spawn(cp: &ControlPlane, dir: &Path, name: &str, extra: &[&str]) -> Result<Self> {
        let port = crate::etcd::free_port()?;
        let suffix = crate::unique_name("");
        let short: String = suffix.chars().rev().take(6).collect();
        let cgroup_parent = format!("/skiff-test-{short}/{name}");
        // The socket hooks go on the node's own cgroup v2 subtree, never the machine's
        // root, and the pins on a bpffs of the test's own.
        let socket_lb = cgroup2_root()
            .context("no cgroup v2 hierarchy mounted")?
            .join(cgroup_parent.trim_start_matches('/'));
        let bpffs = crate::bpffs::BpfFs::new()?;
        // Joins as a real node does: the bootstrap token and the cluster CA, then a client
        // certificate of its own through a CertificateSigningRequest.
        let mut args: Vec<String> = vec![
            "--server".into(),
            cp.url(),
            "--token".into(),
            cp.node_token()?,
            "--ca-file".into(),
            cp.ca_file().display().to_string(),
            "--name".into(),
            name.into(),
            "--node-ip".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--bridge".into(),
            format!("skt{short}"),
            "--cgroup-parent".into(),
            cgroup_parent,
            "--socket-lb-cgroup".into(),
            socket_lb.display().to_string(),
            "--bpf-pin-dir".into(),
            bpffs.path().join(name).display().to_string(),
            "--cleanup-on-exit".into(),
            // Two spare sandboxes: every test's first pods take the pool's path, without
            // each test node building the default pool of a hundred.
            "--sandbox-pool".into(),
            "2".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut node = Self {
            child: None,
            name: name.to_owned(),
            dir: dir.to_owned(),
            args,
            restarts: 0,
            bpffs: Some(bpffs),
        };
        node.launch()?;
        Ok(node)
    }

    fn launch(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(crate::bin("node"))
            .args(&self.args)
            .env("RUST_LOG", "info,node=debug,skiff_kubelet=debug,skiff_node_net=debug,skiff_node_runtime=debug,skiff_node_server=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting node")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the Node is Ready (60 s at most).
    ///
    /// # Errors
    /// If the daemon exits or the Node is not Ready in time.
    pub fn wait_ready(&mut self, cp: &ControlPlane) -> Result<()> {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("node exited ({status}):\n{}", self.log());
            }
            let body = cp
                .http_get(&format!("/api/v1/nodes/{}", self.name))
                .unwrap_or_default();
            let node: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let ready = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {} not Ready in 60 s:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's state directory.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The node's cgroup parent (`/skiff-test-x/<name>`).
    #[must_use]
    pub fn cgroup_parent(&self) -> String {
        let i = self
            .args
            .iter()
            .position(|a| a == "--cgroup-parent")
            .unwrap_or(0);
        self.args.get(i + 1).cloned().unwrap_or_default()
    }

    /// The cgroup v2 directory the node's socket load balancer hooks: processes put in it
    /// (or below) reach Services.
    #[must_use]
    pub fn socket_lb_cgroup(&self) -> PathBuf {
        let i = self
            .args
            .iter()
            .position(|a| a == "--socket-lb-cgroup")
            .unwrap_or(0);
        PathBuf::from(self.args.get(i + 1).cloned().unwrap_or_default())
    }

    /// The port of the node's endpoint (logs, exec, stats).
    #[must_use]
    pub fn port(&self) -> u16 {
        let i = self.args.iter().position(|a| a == "--port").unwrap_or(0);
        self.args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// The node's bridge.
    #[must_use]
    pub fn bridge(&self) -> String {
        let i = self.args.iter().position(|a| a == "--bridge").unwrap_or(0);
        self.args.get(i + 1).cloned().unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// The daemon's log so far (all runs).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The daemon's PID.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the daemon with SIGKILL, as a crash would; containers keep running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again over the same state and waits until Ready.
    ///
    /// # Errors
    /// If it does not come back.
    pub fn restart(&mut self, cp: &ControlPlane) -> Result<()> {
        self.kill();
        self.restarts += 1;
        self.launch()?;
        self.wait_ready(cp)
    }

    /// Stops the daemon with SIGTERM and waits for it to clean up (60 s at most).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_mins(1);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "cleanup: node {} ignored SIGTERM for 60 s: killing it",
            self.name
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for NodeDaemon {
    fn drop(&mut self) {
        self.stop();
        // Whatever the daemon could not remove: its cgroup parent, and the containers in
        // it when the daemon was killed (and not restarted) and so never cleaned up.
        let parent = self.cgroup_parent();
        let top = parent
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !top.is_empty() {
            for root in cgroup_roots() {
                let dir = root.join(&top);
                crate::cgroup::kill_tree(&dir);
                remove_cgroup_tree(&dir);
            }
        }
        // A killed daemon also leaves its pods' namespace files and root filesystems
        // mounted in its state directory, which would keep the test's directory from going;
        // deepest first, as one may lie inside another.
        let mut mounts = mounts_under(&self.state_dir());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for mount in mounts {
            if let Err(err) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: unmounting {}: {err}", mount.display());
            }
        }
        // Last, once the daemon is gone: the pins of its datapath, with their mount.
        drop(self.bpffs.take());
    }
}

/// Where the cgroup v2 hierarchy is mounted.
#[must_use]
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

/// Every mounted cgroup hierarchy (v1 controllers and the v2 unified one).
#[must_use]
pub fn cgroup_roots() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Cgroup directories left under the node's parent in any hierarchy (besides the parent
/// itself and its per-node directory).
#[must_use]
pub fn leftover_cgroups(parent: &str) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for root in cgroup_roots() {
        let dir = root.join(parent.trim_start_matches('/'));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    left.push(e.path());
                }
            }
        }
    }
    left
}

/// Mount points under `dir` (itself included), from the kernel's table.
#[must_use]
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    mountinfo::mount_points(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
        .into_iter()
        .filter(|m| m.starts_with(&dir))
        .collect()
}
