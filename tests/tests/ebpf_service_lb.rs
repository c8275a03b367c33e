//! The socket-level Service load balancer, for real: the eBPF programs attached to a cgroup
//! the test made, a server in a network namespace the test made, and a client process in
//! both that dials a Service VIP.

use std::{
    hash::BuildHasher,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail, ensure};
use skiff_node_proxy::{EbpfLoadBalancer, Frontend, Protocol, ServiceTable};
use skiff_tests::{cgroup::Cgroup, netns::Netns, process::ChildGuard, require_root};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");

/// The whole Service CIDR is unreachable inside the test host, so an untranslated VIP
/// packet can never leave it.
const SERVICE_CIDR: &str = "10.96.0.0/12";

struct Host {
    netns: Netns,
    cgroup: Cgroup,
}

impl Host {
    fn new() -> Result<Self> {
        let netns = Netns::new("skiff-lb")?;
        netns.ip(&["route", "add", "unreachable", SERVICE_CIDR])?;
        let cgroup = Cgroup::new("skiff-lb-test")?;
        Ok(Self { netns, cgroup })
    }

    /// Starts a server in the netns that answers with `token`, once it is bound.
    fn serve(&self, listen: SocketAddrV4, token: &str, udp: bool) -> Result<ChildGuard> {
        let mut cmd = Command::new(NETPROBE);
        cmd.args(["--netns", self.netns.name()]);
        if udp {
            cmd.arg("--udp");
        }
        cmd.args(["serve", "--listen", &listen.to_string(), "--token", token])
            .stdout(Stdio::piped());
        let mut server = ChildGuard::spawn(&mut cmd)?;
        let stdout = server.child_mut().stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        ensure!(line.trim() == "ready", "server did not start: {line:?}");
        Ok(server)
    }

    /// Dials `to` from a process inside the netns and the cgroup; Ok(stdout) if it got an
    /// answer, Err(stderr) if not.
    fn dial(&self, to: SocketAddrV4, udp: bool) -> Result<String> {
        let mut cmd = Command::new(NETPROBE);
        cmd.args(["--netns", self.netns.name()])
            .arg("--cgroup")
            .arg(self.cgroup.path());
        if udp {
            cmd.arg("--udp");
        }
        let out = cmd.args(["connect", "--to", &to.to_string()]).output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim())
        }
    }
}

fn token() -> String {
    format!("token-{}-{}", std::process::id(), rand_u32())
}

fn rand_u32() -> u32 {
    // Good enough to tell this run's server from anything else listening.
    std::collections::hash_map::RandomState::new()
        .hash_one(std::time::SystemTime::now())
        .try_into()
        .unwrap_or(u32::MAX)
}

#[test]
fn tcp_connect_to_a_service_vip_reaches_its_backend_and_stops_when_removed() -> Result<()> {
    if !require_root("tcp_connect_to_a_service_vip_reaches_its_backend_and_stops_when_removed") {
        return Ok(());
    }
    let host = Host::new()?;
    let mut table = ServiceTable::new(EbpfLoadBalancer::attach(host.cgroup.path())?);
    let token = token();
    let backend = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 18080);
    let _server = host.serve(backend, &token, false)?;
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    let web = Frontend {
        vip: *vip.ip(),
        port: vip.port(),
        protocol: Protocol::Tcp,
    };

    let before = host.dial(vip, false);
    assert!(
        before.is_err(),
        "VIP reachable without a Service entry: {before:?}"
    );

    table.set_backends(web, &[backend])?;
    let reply = host
        .dial(vip, false)
        .context("dialling the VIP with the entry")?;
    assert_eq!(reply, format!("reply={token} peer={vip}"));

    table.remove(web)?;
    let after = host.dial(vip, false);
    assert!(
        after.is_err(),
        "VIP still reachable after removal: {after:?}"
    );
    Ok(())
}

#[test]
fn udp_datagrams_to_a_service_vip_are_answered_from_the_vip() -> Result<()> {
    if !require_root("udp_datagrams_to_a_service_vip_are_answered_from_the_vip") {
        return Ok(());
    }
    let host = Host::new()?;
    let mut table = ServiceTable::new(EbpfLoadBalancer::attach(host.cgroup.path())?);
    let token = token();
    let backend = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15353);
    let _server = host.serve(backend, &token, true)?;
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 53), 53);
    let dns = Frontend {
        vip: *vip.ip(),
        port: vip.port(),
        protocol: Protocol::Udp,
    };
    table.set_backends(dns, &[backend])?;
    let reply = host.dial(vip, true).context("sending to the VIP")?;
    assert_eq!(reply, format!("reply={token} peer={vip}"));

    table.remove(dns)?;
    assert!(
        host.dial(vip, true).is_err(),
        "VIP still answers after removal"
    );
    Ok(())
}

#[test]
fn a_service_without_backends_refuses_connections() -> Result<()> {
    if !require_root("a_service_without_backends_refuses_connections") {
        return Ok(());
    }
    let host = Host::new()?;
    let mut table = ServiceTable::new(EbpfLoadBalancer::attach(host.cgroup.path())?);
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80);
    let empty = Frontend {
        vip: *vip.ip(),
        port: vip.port(),
        protocol: Protocol::Tcp,
    };
    table.set_backends(empty, &[])?;
    let err = host
        .dial(vip, false)
        .expect_err("no backend, yet connected");
    assert!(
        err.to_string().contains("Operation not permitted"),
        "expected the hook's EPERM, got: {err}"
    );
    Ok(())
}

#[test]
fn the_load_balancer_refuses_the_cgroup_root() {
    if !require_root("the_load_balancer_refuses_the_cgroup_root") {
        return;
    }
    let root = skiff_tests::cgroup::v2_root().expect("cgroup2 mounted");
    let err = EbpfLoadBalancer::attach(&root).expect_err("attached to the host root");
    assert!(err.to_string().contains("refusing"), "{err}");
}
