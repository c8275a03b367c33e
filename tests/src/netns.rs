//! Network namespaces that tests create as isolated test hosts, deleted on drop.

use std::process::Command;

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
        let file = std::fs::File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {}", self.name))
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
