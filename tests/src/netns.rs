//! Network namespaces that tests create as isolated test hosts, deleted on drop.

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// A named network namespace (`ip netns add`), with loopback up, removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    ///
    /// # Errors
    /// If `ip` fails.
    pub fn new(prefix: &str) -> Result<Self> {
        let name = crate::unique_name(prefix);
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ...`.
    ///
    /// # Errors
    /// If `ip` fails.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Moves the calling thread into the namespace: sockets it opens and processes it
    /// spawns from then on live there (unlike `ip netns exec`, `/sys` is not remounted, so
    /// cgroups stay visible to children such as a node daemon).
    ///
    /// # Errors
    /// If the namespace file cannot be opened or `setns` fails.
    pub fn enter(&self) -> Result<()> {
        enter(&self.path())
    }

    /// The namespace's file, `/run/netns/<name>`.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Links this namespace to `peer` with a veth pair: `local` here, `remote` in `peer`.
    /// The pair goes away with either namespace.
    ///
    /// # Errors
    /// If `ip` fails.
    pub fn veth_to(&self, local: &str, peer: &Netns, remote: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            local,
            "type",
            "veth",
            "peer",
            "name",
            remote,
            "netns",
            peer.name(),
        ])
    }

    /// Runs `body` to completion on a thread inside the namespace, with its own
    /// current-thread runtime, so every socket, netlink handle and process the code under
    /// test makes belongs to this namespace.
    ///
    /// # Errors
    /// If the namespace cannot be entered, the runtime not built, or `body` fails.
    ///
    /// # Panics
    /// If `body` panics.
    pub fn block_on<F, Fut, T>(&self, body: F) -> Result<T>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = Result<T>>,
        T: Send,
    {
        in_netns(&self.path(), || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(body())
        })?
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    #[must_use]
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = ip(&["netns", "delete", &self.name]) {
            eprintln!("cleanup: deleting netns {}: {err:#}", self.name);
        }
    }
}

/// Moves the calling thread into the network namespace bound at `path`.
fn enter(path: &Path) -> Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("opening netns {}", path.display()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering netns {}", path.display()))
}

/// Runs `f` on a thread inside the network namespace bound at `path` (a pod's sandbox
/// namespace file, say): sockets it opens live there.
///
/// # Errors
/// If the namespace cannot be entered.
///
/// # Panics
/// If `f` panics.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(path)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
