//! Destroying stale connected UDP sockets, for real: sockets the test opens in a network
//! namespace it made, listed and destroyed through `NETLINK_SOCK_DIAG` from outside that
//! namespace, and their owner's next call failing; and the whole chain over the socket load
//! balancer attached to a cgroup the test made: a resolver connected to a Service VIP is
//! destroyed when its backend is replaced, and its new connect reaches the new backend.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket as StdUdp},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use skiff_node_proxy::{
    AttachConfig, Datapath, Endpoint, Frontend, FrontendEntry, GroupKey, Kind, Protocol, Scope,
    ServiceEntries, ServiceRef, ServiceTable, UdpSocket,
    ebpf::{SockDiag, cookie::current_netns_cookie},
    reap::reap,
};
use skiff_tests::{
    cgroup::Cgroup,
    netns::{Netns, in_netns},
    process::ChildGuard,
    require_root,
};

/// A server socket and two clients connected to it, all on loopback inside `netns`.
fn connected_pair(netns: &Netns) -> Result<(StdUdp, StdUdp, StdUdp)> {
    in_netns(&netns.path(), || -> Result<_> {
        let server = StdUdp::bind("127.0.0.1:0")?;
        let to = server.local_addr()?;
        let doomed = StdUdp::bind("127.0.0.1:0")?;
        doomed.connect(to)?;
        let kept = StdUdp::bind("127.0.0.1:0")?;
        kept.connect(to)?;
        Ok((server, doomed, kept))
    })?
}

#[test]
fn a_destroyed_connected_udp_socket_fails_its_next_receive_with_econnaborted() -> Result<()> {
    if !require_root("a_destroyed_connected_udp_socket_fails_its_next_receive") {
        return Ok(());
    }
    let netns = Netns::new("skiff-reap")?;
    let (server, doomed, kept) = connected_pair(&netns)?;
    for s in [&doomed, &kept] {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
    }

    let diag = SockDiag::in_netns(&netns.path())?;
    ensure!(
        diag.netns() != current_netns_cookie()?,
        "the listing must speak for the test's namespace, not the caller's"
    );
    let sockets = diag.connected_udp()?;
    let doomed_addr = doomed.local_addr()?;
    let kept_addr = kept.local_addr()?;
    let server_addr = server.local_addr()?;
    // Both clients are listed with their peer; the unconnected server is not.
    let find = |addr: std::net::SocketAddr| {
        sockets
            .iter()
            .find(|s| std::net::SocketAddr::V4(s.local) == addr)
            .copied()
    };
    let target = find(doomed_addr).context("the doomed client is listed")?;
    ensure!(std::net::SocketAddr::V4(target.peer) == server_addr);
    ensure!(find(kept_addr).is_some(), "the other client is listed");
    ensure!(find(server_addr).is_none(), "an unconnected socket is not");
    ensure!(target.cookie != 0);

    // The kernel checks the cookie (as the reverse-translation map keys it): another
    // socket's cookie destroys nothing.
    let impostor = UdpSocket {
        cookie: target.cookie ^ 1,
        ..target
    };
    diag.destroy(&impostor)?;
    ensure!(
        diag.connected_udp()?.contains(&target),
        "a wrong cookie must not destroy the socket"
    );

    diag.destroy(&target)?;
    let mut buf = [0u8; 16];
    let err = doomed
        .recv(&mut buf)
        .expect_err("a destroyed socket cannot receive");
    ensure!(
        err.raw_os_error() == Some(nix::libc::ECONNABORTED),
        "expected ECONNABORTED, got {err}"
    );
    // The socket is no longer connected: it must connect again to send.
    let err = doomed.send(b"x").expect_err("no peer any more");
    ensure!(
        err.raw_os_error() == Some(nix::libc::EDESTADDRREQ),
        "expected EDESTADDRREQ, got {err}"
    );
    ensure!(
        diag.connected_udp()?
            .iter()
            .all(|s| std::net::SocketAddr::V4(s.local) != doomed_addr),
        "the destroyed socket is no longer connected"
    );

    // The other client is untouched: it still talks to the server.
    kept.send(b"ping")?;
    let (n, from) = server.recv_from(&mut buf)?;
    server.send_to(&buf[..n], from)?;
    let n = kept.recv(&mut buf)?;
    ensure!(&buf[..n] == b"ping");

    // Destroying what is already gone is fine.
    diag.destroy(&target)?;
    Ok(())
}

#[test]
fn a_missing_namespace_file_is_a_namespace_error() {
    let err = SockDiag::in_netns(std::path::Path::new("/run/netns/skiff-no-such-namespace"))
        .expect_err("no such namespace");
    assert!(
        matches!(err, skiff_node_proxy::reap::ReapError::Namespace { ref source, .. }
            if source.kind() == ErrorKind::NotFound),
        "{err:?}"
    );
}

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");

/// A netprobe client that holds a connected UDP socket to `to` inside the test's netns
/// (and, when given, the cgroup the socket hooks are attached to).
struct Holder {
    _child: ChildGuard,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Holder {
    fn start(netns: &Netns, cgroup: Option<&Cgroup>, to: SocketAddrV4) -> Result<Self> {
        let mut cmd = Command::new(NETPROBE);
        cmd.args(["--netns", netns.name(), "--udp"]);
        if let Some(cgroup) = cgroup {
            cmd.arg("--cgroup").arg(cgroup.path());
        }
        cmd.args(["hold", "--to", &to.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd)?;
        let stdin = child.child_mut().stdin.take().context("holder stdin")?;
        let stdout = child.child_mut().stdout.take().context("holder stdout")?;
        Ok(Self {
            _child: child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        ensure!(!line.is_empty(), "the holder exited");
        Ok(line.trim().to_owned())
    }

    /// Asks again on the held socket; the lines it printed.
    fn ask(&mut self) -> Result<Vec<String>> {
        writeln!(self.stdin)?;
        let first = self.line()?;
        if first.starts_with("error=") {
            let again = self.line()?;
            return Ok(vec![first, again]);
        }
        Ok(vec![first])
    }
}

fn udp_service(vip: SocketAddrV4, backend: SocketAddrV4) -> ServiceEntries {
    let group = GroupKey {
        port: vip.port(),
        protocol: Protocol::Udp,
        local: false,
    };
    ServiceEntries {
        groups: BTreeMap::from([(
            group,
            vec![Endpoint {
                address: backend,
                local: true,
                terminating: false,
            }],
        )]),
        frontends: BTreeMap::from([(
            Frontend {
                address: *vip.ip(),
                port: vip.port(),
                protocol: Protocol::Udp,
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

fn serve(netns: &Netns, listen: SocketAddrV4, token: &str) -> Result<ChildGuard> {
    let mut cmd = Command::new(NETPROBE);
    cmd.args(["--netns", netns.name(), "--udp"])
        .args(["serve", "--listen", &listen.to_string(), "--token", token])
        .stdout(Stdio::piped());
    let mut server = ChildGuard::spawn(&mut cmd)?;
    let stdout = server.child_mut().stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    ensure!(line.trim() == "ready", "server did not start: {line:?}");
    Ok(server)
}

#[test]
fn a_resolver_pinned_to_a_removed_backend_is_destroyed_and_reconnects_to_the_new_one() -> Result<()>
{
    if !require_root("a_resolver_pinned_to_a_removed_backend_is_destroyed_and_reconnects") {
        return Ok(());
    }
    let netns = Netns::new("skiff-reap")?;
    // The whole Service CIDR is unreachable inside the test netns: an untranslated VIP
    // packet never leaves it.
    netns.ip(&["route", "add", "unreachable", "10.96.0.0/12"])?;
    let cgroup = Cgroup::new("skiff-reap-test")?;
    let datapath = Datapath::attach(&AttachConfig {
        cgroup: cgroup.path().to_path_buf(),
        allow_cgroup_root: false,
        pin_dir: None,
        host_netns: 0,
    })?;
    let _attached = datapath.handle;
    let mut reaper = datapath.reaper;
    let mut table = ServiceTable::new(datapath.maps);

    let old = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15353);
    let new = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15354);
    let pid = std::process::id();
    let _old_server = serve(&netns, old, &format!("old-{pid}"))?;
    let _new_server = serve(&netns, new, &format!("new-{pid}"))?;
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 53), 53);
    let dns = ServiceRef::new("kube-system", "dns");
    table.apply(&dns, &udp_service(vip, old))?;
    table.take_removed_udp();

    // A resolver through the Service, and a client of the old backend's own address.
    let mut resolver = Holder::start(&netns, Some(&cgroup), vip)?;
    ensure!(resolver.line()? == format!("reply=old-{pid} peer={vip}"));
    let mut direct = Holder::start(&netns, Some(&cgroup), old)?;
    ensure!(direct.line()? == format!("reply=old-{pid} peer={old}"));

    // The backend is replaced.
    table.apply(&dns, &udp_service(vip, new))?;
    let removed = table.take_removed_udp();
    ensure!(removed == BTreeSet::from([old]), "removed: {removed:?}");
    // Searched from inside the test's namespace (the node's own, to the reaper), and named
    // again as a pod namespace: it is searched once.
    reaper.set_pod_namespaces(vec![netns.path()]);
    let done = in_netns(&netns.path(), || {
        reap(&mut reaper, Some(&removed), |f| table.udp_backends_of(f))
    })?;
    ensure!(done.errors.is_empty(), "errors: {:?}", done.errors);
    ensure!(
        done.destroyed.len() == 1 && done.destroyed[0].1 == vip,
        "destroyed: {:?}",
        done.destroyed
    );

    // The resolver's socket fails and a new connect reaches the new backend; the client of
    // the pod address itself was left alone.
    let lines = resolver.ask()?;
    ensure!(
        lines
            == [
                format!("error={}", nix::libc::ECONNABORTED),
                format!("again=new-{pid}")
            ],
        "resolver: {lines:?}"
    );
    ensure!(direct.ask()? == [format!("reply=old-{pid}")]);
    Ok(())
}
