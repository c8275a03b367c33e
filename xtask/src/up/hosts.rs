//! The hosts of `cargo xtask up --nodes N`: a network namespace per node joined by a switch
//! (a bridge in a namespace of its own), and a veth from the switch into this machine's
//! namespace so `control`, kubectl and ctl here reach the nodes. No host has a default route,
//! so nothing from the cluster can leave through this machine's uplink.

use std::process::Command;

use anyhow::{Context, Result};

use crate::shell;

/// The switch's namespace.
const SWITCH: &str = "skiff-sw";
/// Node host `i` is the namespace `skiff-h<i>`.
const HOST_PREFIX: &str = "skiff-h";
/// This machine's end of the link to the switch.
const UPLINK: &str = "skiff-up0";
/// The switch's end of that link. Not `up`: `ip link set up ...` reads a device named
/// `up` as the keyword.
const SWITCH_PORT: &str = "machine";
/// The hosts' subnet; this machine is `.1`, node `i` is `.(10 + i)`.
const SUBNET: [u8; 3] = [192, 168, 77];

/// The switch, the node hosts and the link to this machine; removed on drop.
#[derive(Debug)]
pub struct Hosts {
    count: usize,
}

impl Hosts {
    /// Removes what an earlier run left (it may have been killed), then makes `count` hosts.
    ///
    /// # Errors
    /// If `ip` fails.
    pub fn create(count: usize) -> Result<Self> {
        remove_all();
        let hosts = Self { count };
        ip(&["netns", "add", SWITCH])?;
        ip(&["-n", SWITCH, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", SWITCH, "link", "set", "br0", "up"])?;
        ip(&[
            "link",
            "add",
            UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            SWITCH_PORT,
            "netns",
            SWITCH,
        ])?;
        ip(&[
            "-n",
            SWITCH,
            "link",
            "set",
            "dev",
            SWITCH_PORT,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", Self::machine_address()),
            "dev",
            UPLINK,
        ])?;
        ip(&["link", "set", UPLINK, "up"])?;
        for i in 0..count {
            let ns = Self::netns(i);
            let port = format!("h{i}");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", SWITCH, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", SWITCH, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", Self::address(i)?),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(hosts)
    }

    /// This machine's address on the switch, where `control` listens.
    #[must_use]
    pub fn machine_address() -> String {
        host_address(1).to_string()
    }

    /// Node host `i`'s address.
    ///
    /// # Errors
    /// Past the subnet's end.
    pub fn address(i: usize) -> Result<String> {
        let number = u8::try_from(10 + i)
            .ok()
            .filter(|n| *n < 255)
            .context("at most 244 nodes")?;
        Ok(host_address(number).to_string())
    }

    /// Node host `i`'s namespace name.
    #[must_use]
    pub fn netns(i: usize) -> String {
        format!("{HOST_PREFIX}{i}")
    }

    /// A command that runs `program` in node host `i` (`nsenter --net`, which keeps this
    /// machine's `/sys`, and with it the cgroups the node needs).
    #[must_use]
    pub fn command(i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", Self::netns(i)))
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        eprintln!(
            "xtask: removing the switch, {} host namespaces and {UPLINK}",
            self.count
        );
        remove_all();
    }
}

/// Removes the uplink, the switch and every `skiff-h*` namespace, whatever exists of them.
fn remove_all() {
    let _ = Command::new("ip").args(["link", "del", UPLINK]).output();
    let names = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for name in names {
        let ours = name == SWITCH
            || name
                .strip_prefix(HOST_PREFIX)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if ours {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

fn host_address(number: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], number)
}

fn ip(args: &[&str]) -> Result<()> {
    shell::quiet(Command::new("ip").args(args))
}
