//! The socket-level Service load balancer, for real: the eBPF programs attached to a cgroup
//! the test made, a server in a network namespace the test made, and a client process in
//! both that dials a Service VIP; and the pinned datapath surviving its loader.

use std::{
    collections::BTreeMap,
    hash::BuildHasher,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail, ensure};
use skiff_node_proxy::{
    AttachConfig, Datapath, Endpoint, Frontend, FrontendEntry, GroupKey, Kind, Protocol, Scope,
    ServiceEntries, ServiceRef, ServiceTable, ebpf::EbpfMaps,
};
use skiff_tests::{bpffs::BpfFs, cgroup::Cgroup, netns::Netns, process::ChildGuard, require_root};

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

/// The socket hooks on the host's cgroup, nothing pinned: detached when dropped.
fn table(host: &Host) -> Result<(ServiceTable<EbpfMaps>, skiff_node_proxy::DatapathHandle)> {
    let datapath = Datapath::attach(&AttachConfig {
        cgroup: host.cgroup.path().to_path_buf(),
        allow_cgroup_root: false,
        pin_dir: None,
        host_netns: 0,
    })?;
    Ok((ServiceTable::new(datapath.maps), datapath.handle))
}

/// One Service with one frontend over `backends`.
fn service(vip: SocketAddrV4, protocol: Protocol, backends: &[SocketAddrV4]) -> ServiceEntries {
    let group = GroupKey {
        port: vip.port(),
        protocol,
        local: false,
    };
    ServiceEntries {
        groups: BTreeMap::from([(
            group,
            backends
                .iter()
                .map(|b| Endpoint {
                    address: *b,
                    local: true,
                    terminating: false,
                })
                .collect(),
        )]),
        frontends: BTreeMap::from([(
            Frontend {
                address: *vip.ip(),
                port: vip.port(),
                protocol,
                scope: Scope::External,
            },
            FrontendEntry {
                group,
                kind: Kind::ClusterIp,
                flags: 0,
                affinity_timeout: 0,
            },
        )]),
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
    let (mut table, _attached) = table(&host)?;
    let token = token();
    let backend = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 18080);
    let _server = host.serve(backend, &token, false)?;
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    let web = ServiceRef::new("default", "web");

    let before = host.dial(vip, false);
    assert!(
        before.is_err(),
        "VIP reachable without a Service entry: {before:?}"
    );

    table.apply(&web, &service(vip, Protocol::Tcp, &[backend]))?;
    let reply = host
        .dial(vip, false)
        .context("dialling the VIP with the entry")?;
    assert_eq!(reply, format!("reply={token} peer={vip}"));

    table.remove(&web)?;
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
    let (mut table, _attached) = table(&host)?;
    let token = token();
    let backend = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15353);
    let _server = host.serve(backend, &token, true)?;
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 53), 53);
    let dns = ServiceRef::new("kube-system", "dns");
    table.apply(&dns, &service(vip, Protocol::Udp, &[backend]))?;
    let reply = host.dial(vip, true).context("sending to the VIP")?;
    assert_eq!(reply, format!("reply={token} peer={vip}"));

    table.remove(&dns)?;
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
    let (mut table, _attached) = table(&host)?;
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80);
    table.apply(
        &ServiceRef::new("default", "empty"),
        &service(vip, Protocol::Tcp, &[]),
    )?;
    let err = host
        .dial(vip, false)
        .expect_err("no backend, yet connected");
    assert!(
        err.to_string().contains("Connection refused"),
        "expected the hook's ECONNREFUSED, got: {err}"
    );
    Ok(())
}

#[test]
fn the_load_balancer_refuses_the_cgroup_root() {
    if !require_root("the_load_balancer_refuses_the_cgroup_root") {
        return;
    }
    let root = skiff_tests::cgroup::v2_root().expect("cgroup2 mounted");
    let err = Datapath::attach(&AttachConfig {
        cgroup: root,
        allow_cgroup_root: false,
        pin_dir: None,
        host_netns: 0,
    })
    .expect_err("attached to the host root");
    assert!(err.to_string().contains("refusing"), "{err}");
}

#[test]
fn a_pinned_datapath_outlives_its_loader_and_is_adopted_by_the_next() -> Result<()> {
    if !require_root("a_pinned_datapath_outlives_its_loader_and_is_adopted_by_the_next") {
        return Ok(());
    }
    let host = Host::new()?;
    let bpffs = BpfFs::new()?;
    let config = AttachConfig {
        cgroup: host.cgroup.path().to_path_buf(),
        allow_cgroup_root: false,
        pin_dir: Some(bpffs.path().join("node-a")),
        host_netns: 0,
    };
    let token = token();
    let backend = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 18081);
    let _server = host.serve(backend, &token, false)?;
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 12), 80);
    let web = ServiceRef::new("default", "web");
    {
        let first = Datapath::attach(&config)?;
        ensure!(!first.handle.restarted(), "a first start found pins");
        let mut table = ServiceTable::new(first.maps);
        table.apply(&web, &service(vip, Protocol::Tcp, &[backend]))?;
        // The loader goes away as a SIGKILLed node would: nothing is detached.
    }
    let reply = host
        .dial(vip, false)
        .context("dialling with the loader gone")?;
    assert_eq!(reply, format!("reply={token} peer={vip}"));

    let second = Datapath::attach(&config)?;
    ensure!(second.handle.restarted(), "the pins were not found");
    let mut table = ServiceTable::adopt(second.maps)?;
    let applied = table.apply(&web, &service(vip, Protocol::Tcp, &[backend]))?;
    assert_eq!(applied.writes, 0, "the adopted entries were rewritten");
    assert_eq!(table.finish_adoption()?, 0);
    let reply = host.dial(vip, false).context("dialling after the reload")?;
    assert_eq!(reply, format!("reply={token} peer={vip}"));

    second.handle.remove()?;
    ensure!(
        !bpffs.path().join("node-a").exists(),
        "pins left after removal"
    );
    let after = host.dial(vip, false);
    assert!(after.is_err(), "still translated after removal: {after:?}");
    Ok(())
}
