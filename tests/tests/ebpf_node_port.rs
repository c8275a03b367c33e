//! The uplink's TC programs for real: a client, two nodes and a pod behind each, every one a
//! network namespace the test made, the client and the nodes on one bridge (the "LAN", in a
//! namespace of its own). Node A's loader attaches the programs to A's side of the LAN only;
//! frontends and backends are written straight into the maps. The client dials node A's
//! NodePort Services over real TCP and UDP; servers in the pods answer with the peer address they
//! saw, so the test sees whether the client's address was kept or SNAT-ed to node A.
//!
//! Client and pods send with checksum offload, so node A's programs rewrite
//! `CHECKSUM_PARTIAL` packets; the links into the pods and into the client have transmit
//! checksumming off, so the kernel completes each checksum in software from what the
//! programs left and the receiver verifies it: a wrong rewrite loses the packet.

use std::{
    io::{BufRead, BufReader, ErrorKind, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use skiff_ebpf_common::{
    Backend, BackendKey, FrontendKey, FrontendValue,
    service::{
        BACKEND_LOCAL, FLAG_EXTERNAL_LOCAL, KIND_NODE_PORT, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
    },
};
use skiff_node_proxy::{
    AttachConfig, Datapath, ServiceMaps, Uplink,
    ebpf::{DatapathStats, EbpfMaps},
};
use skiff_tests::{bpffs::BpfFs, cgroup::Cgroup, netns::Netns, require_root};

const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
const POD_A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 10), 8080);
const POD_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 10), 8080);
const TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `f` on a thread inside `ns` (sockets it opens stay in `ns`).
fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter()?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in netns {} panicked", ns.name()))?
    })
}

/// Turns transmit checksum offload off on `device` (this thread's netns), as `ethtool -K
/// <device> tx off` would: a partial checksum is completed in software before it leaves.
fn tx_checksum_off(device: &str) -> Result<()> {
    /// `struct ethtool_value`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    /// `ETHTOOL_STXCSUM`.
    const SET_TX_CHECKSUM: u32 = 0x17;
    let socket = UdpSocket::bind("127.0.0.1:0").context("a socket for SIOCETHTOOL")?;
    let mut value = EthtoolValue {
        cmd: SET_TX_CHECKSUM,
        data: 0,
    };
    // SAFETY: ifreq is plain C data; all zeros is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    ensure!(device.len() < request.ifr_name.len(), "name too long");
    for (to, from) in request.ifr_name.iter_mut().zip(device.bytes()) {
        *to = libc::c_char::try_from(from)?;
    }
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: the socket is open, request names the device and points at an ethtool_value
    // that lives across the call, which is what SIOCETHTOOL with ETHTOOL_STXCSUM reads.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &raw mut request) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("tx off on {device}"));
    }
    Ok(())
}

/// Client, LAN, two nodes and their pods. Dropping it deletes every namespace, and with them
/// every link and the programs attached to them.
struct Hosts {
    client: Netns,
    node_a: Netns,
    pod_a: Netns,
    pod_b: Netns,
    node_b: Netns,
    lan: Netns,
}

impl Hosts {
    fn new() -> Result<Self> {
        let hosts = Self {
            lan: Netns::new("skiff-np-lan")?,
            client: Netns::new("skiff-np-client")?,
            node_a: Netns::new("skiff-np-node-a")?,
            node_b: Netns::new("skiff-np-node-b")?,
            pod_a: Netns::new("skiff-np-pod-a")?,
            pod_b: Netns::new("skiff-np-pod-b")?,
        };
        hosts.lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        hosts.lan.ip(&["link", "set", "br0", "up"])?;
        for (port, host, address) in [
            ("client", &hosts.client, CLIENT),
            ("node-a", &hosts.node_a, NODE_A),
            ("node-b", &hosts.node_b, NODE_B),
        ] {
            hosts.lan.ip(&[
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.name(),
            ])?;
            hosts
                .lan
                .ip(&["link", "set", port, "master", "br0", "up"])?;
            if port == "client" {
                in_netns(&hosts.lan, || tx_checksum_off(port))?;
            }
            host.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            host.ip(&["link", "set", "eth0", "up"])?;
        }
        for (node, pod, subnet) in [
            (&hosts.node_a, &hosts.pod_a, 1),
            (&hosts.node_b, &hosts.pod_b, 2),
        ] {
            node.ip(&[
                "link",
                "add",
                "pod0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pod.name(),
            ])?;
            node.ip(&[
                "addr",
                "add",
                &format!("10.244.{subnet}.1/24"),
                "dev",
                "pod0",
            ])?;
            node.ip(&["link", "set", "pod0", "up"])?;
            in_netns(node, || tx_checksum_off("pod0"))?;
            pod.ip(&[
                "addr",
                "add",
                &format!("10.244.{subnet}.10/24"),
                "dev",
                "eth0",
            ])?;
            pod.ip(&["link", "set", "eth0", "up"])?;
            pod.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("10.244.{subnet}.1"),
            ])?;
            in_netns(node, || {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("ip_forward")
            })?;
        }
        // The pod network between the nodes: host-gw routes over the LAN.
        hosts
            .node_a
            .ip(&["route", "add", "10.244.2.0/24", "via", &NODE_B.to_string()])?;
        hosts
            .node_b
            .ip(&["route", "add", "10.244.1.0/24", "via", &NODE_A.to_string()])?;
        Ok(hosts)
    }

    /// Node A's loader: socket hooks on `cgroup`, TC programs on A's LAN link.
    fn attach(&self, cgroup: &Cgroup, pin_dir: Option<&BpfFs>) -> Result<Datapath> {
        self.attach_to(cgroup, pin_dir, &["eth0"])
    }

    fn attach_to(
        &self,
        cgroup: &Cgroup,
        pin_dir: Option<&BpfFs>,
        interfaces: &[&str],
    ) -> Result<Datapath> {
        let config = AttachConfig {
            cgroup: cgroup.path().to_path_buf(),
            allow_cgroup_root: false,
            pin_dir: pin_dir.map(|b| b.path().join("node-a")),
            host_netns: 0,
        };
        let uplinks: Vec<Uplink> = interfaces
            .iter()
            .map(|i| Uplink {
                interface: (*i).to_owned(),
                address: NODE_A,
            })
            .collect();
        in_netns(&self.node_a, || {
            Ok(Datapath::attach_with_uplinks(&config, &uplinks)?)
        })
    }

    /// A TCP connection from the client to node A's `port`.
    fn connect(&self, port: u16) -> Result<TcpStream> {
        in_netns(&self.client, || {
            let to = SocketAddr::from(SocketAddrV4::new(NODE_A, port));
            let stream = TcpStream::connect_timeout(&to, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            Ok(stream)
        })
    }

    /// A connected UDP socket from the client to node A's `port`: it takes answers only from
    /// there, and sees an ICMP error as a failed receive.
    fn udp(&self, port: u16) -> Result<UdpSocket> {
        in_netns(&self.client, || {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(SocketAddrV4::new(NODE_A, port))?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            Ok(socket)
        })
    }
}

/// Writes a NodePort frontend on node A in `group` over `backends` (address, on node A).
fn node_port(
    maps: &mut EbpfMaps,
    port: u16,
    protocol: u8,
    flags: u16,
    group: u32,
    backends: &[(SocketAddrV4, bool)],
) -> Result<()> {
    maps.add_group(group)?;
    for (slot, (address, local)) in (0u32..).zip(backends) {
        maps.set_backend(
            BackendKey { group, slot },
            Backend {
                address: u32::from_ne_bytes(address.ip().octets()),
                port: address.port().to_be(),
                flags: if *local { BACKEND_LOCAL } else { 0 },
                pad: 0,
            },
        )?;
    }
    maps.set_frontend(
        FrontendKey {
            address: u32::from_ne_bytes(NODE_A.octets()),
            port: port.to_be(),
            protocol,
            scope: SCOPE_EXTERNAL,
        },
        FrontendValue {
            group,
            count: u32::try_from(backends.len())?,
            affinity_timeout: 0,
            flags,
            kind: KIND_NODE_PORT,
            pad: 0,
        },
    )?;
    Ok(())
}

/// TCP and UDP servers in a pod that answer `<name> from=<peer>`; the TCP one then echoes
/// lines. Stopped and joined on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(pod: &Netns, at: SocketAddrV4, name: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = mpsc::channel::<Result<()>>();
        let mut threads = Vec::new();
        for udp in [false, true] {
            let (stop, ready, name) = (stop.clone(), ready_tx.clone(), name.to_owned());
            let path = format!("/run/netns/{}", pod.name());
            threads.push(std::thread::spawn(move || {
                let bound = (|| -> Result<_> {
                    let file = std::fs::File::open(&path)?;
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    if udp {
                        let s = UdpSocket::bind(at)?;
                        s.set_read_timeout(Some(Duration::from_millis(50)))?;
                        Ok((None, Some(s)))
                    } else {
                        let l = TcpListener::bind(at)?;
                        l.set_nonblocking(true)?;
                        Ok((Some(l), None))
                    }
                })();
                match bound {
                    Ok((Some(listener), _)) => {
                        let _ = ready.send(Ok(()));
                        serve_tcp(&listener, &name, &stop);
                    }
                    Ok((_, Some(socket))) => {
                        let _ = ready.send(Ok(()));
                        serve_udp(&socket, &name, &stop);
                    }
                    Ok(_) => {}
                    Err(err) => {
                        let _ = ready.send(Err(err));
                    }
                }
            }));
        }
        let servers = Self { stop, threads };
        for _ in 0..2 {
            ready.recv_timeout(TIMEOUT).context("server start")??;
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(listener: &TcpListener, name: &str, stop: &Arc<AtomicBool>) {
    let mut handlers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let (name, stop) = (name.to_owned(), stop.clone());
                handlers.push(std::thread::spawn(move || echo(stream, peer, &name, &stop)));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => break,
        }
    }
    for h in handlers {
        let _ = h.join();
    }
}

fn echo(mut stream: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    if writeln!(stream, "{name} from={peer}").is_err() {
        return;
    }
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if stream.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn serve_udp(socket: &UdpSocket, name: &str, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(format!("{name} from={from}").as_bytes(), from);
        }
    }
}

/// The first line the server sends on a new connection.
fn greeting(stream: &TcpStream) -> Result<String> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

/// Sends `line` and reads it back.
fn round_trip(stream: &mut TcpStream, line: &str) -> Result<()> {
    writeln!(stream, "{line}")?;
    let mut back = String::new();
    BufReader::new(&*stream).read_line(&mut back)?;
    ensure!(
        back.trim_end_matches('\n') == line,
        "echoed {back:?} instead of {line:?}"
    );
    Ok(())
}

fn datagram(socket: &UdpSocket) -> Result<String> {
    socket.send(b"ping")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The peer address in a server's answer.
fn peer_ip(answer: &str) -> Result<Ipv4Addr> {
    let peer = answer
        .split_once("from=")
        .context("no peer in the answer")?
        .1;
    let peer: SocketAddrV4 = peer.parse().context("peer address")?;
    Ok(*peer.ip())
}

#[test]
fn a_node_port_reaches_a_local_backend_over_tcp_and_udp() -> Result<()> {
    if !require_root("a_node_port_reaches_a_local_backend_over_tcp_and_udp") {
        return Ok(());
    }
    let hosts = Hosts::new()?;
    let cgroup = Cgroup::new("skiff-np")?;
    let _servers = Servers::start(&hosts.pod_a, POD_A, "pod-a")?;
    let mut datapath = hosts.attach(&cgroup, None)?;
    node_port(&mut datapath.maps, 30080, PROTO_TCP, 0, 1, &[(POD_A, true)])?;
    node_port(&mut datapath.maps, 30080, PROTO_UDP, 0, 2, &[(POD_A, true)])?;

    let mut stream = hosts.connect(30080).context("TCP to the NodePort")?;
    let hello = greeting(&stream)?;
    assert!(hello.starts_with("pod-a "), "{hello}");
    assert_eq!(peer_ip(&hello)?, CLIENT, "a local backend sees the client");
    for i in 0..20 {
        round_trip(&mut stream, &format!("line {i} {}", "x".repeat(i * 50)))?;
    }
    let answer = datagram(&hosts.udp(30080)?).context("UDP to the NodePort")?;
    assert!(answer.starts_with("pod-a "), "{answer}");
    assert_eq!(peer_ip(&answer)?, CLIENT);
    Ok(())
}

#[test]
fn a_node_port_reaches_a_backend_on_another_node_through_snat() -> Result<()> {
    if !require_root("a_node_port_reaches_a_backend_on_another_node_through_snat") {
        return Ok(());
    }
    let hosts = Hosts::new()?;
    let cgroup = Cgroup::new("skiff-np")?;
    let _servers = Servers::start(&hosts.pod_b, POD_B, "pod-b")?;
    let mut datapath = hosts.attach(&cgroup, None)?;
    node_port(
        &mut datapath.maps,
        30081,
        PROTO_TCP,
        0,
        1,
        &[(POD_B, false)],
    )?;
    node_port(
        &mut datapath.maps,
        30081,
        PROTO_UDP,
        0,
        2,
        &[(POD_B, false)],
    )?;

    let mut stream = hosts.connect(30081).context("TCP to the NodePort")?;
    let hello = greeting(&stream)?;
    assert!(hello.starts_with("pod-b "), "{hello}");
    assert_eq!(
        peer_ip(&hello)?,
        NODE_A,
        "SNAT-ed to node A so replies return"
    );
    for i in 0..20 {
        round_trip(&mut stream, &format!("line {i} {}", "y".repeat(i * 50)))?;
    }
    let socket = hosts.udp(30081)?;
    for _ in 0..3 {
        let answer = datagram(&socket).context("UDP to the NodePort")?;
        assert!(answer.starts_with("pod-b "), "{answer}");
        assert_eq!(peer_ip(&answer)?, NODE_A);
    }
    let tracked = datapath
        .stats
        .fill()?
        .into_iter()
        .find(|f| f.map == "SKIFF_CT")
        .context("no connection tracking fill")?;
    assert_eq!(
        tracked.entries, 4,
        "two entries per flow, one TCP and one UDP flow"
    );
    Ok(())
}

#[test]
fn external_traffic_policy_local_preserves_the_client_address() -> Result<()> {
    if !require_root("external_traffic_policy_local_preserves_the_client_address") {
        return Ok(());
    }
    let hosts = Hosts::new()?;
    let cgroup = Cgroup::new("skiff-np")?;
    let _servers = Servers::start(&hosts.pod_a, POD_A, "pod-a")?;
    let mut datapath = hosts.attach(&cgroup, None)?;
    let local = FLAG_EXTERNAL_LOCAL;
    node_port(
        &mut datapath.maps,
        30082,
        PROTO_TCP,
        local,
        1,
        &[(POD_A, true)],
    )?;
    node_port(
        &mut datapath.maps,
        30082,
        PROTO_UDP,
        local,
        2,
        &[(POD_A, true)],
    )?;

    let hello = greeting(&hosts.connect(30082)?)?;
    assert_eq!(peer_ip(&hello)?, CLIENT, "{hello}");
    let answer = datagram(&hosts.udp(30082)?)?;
    assert_eq!(peer_ip(&answer)?, CLIENT, "{answer}");
    Ok(())
}

#[test]
fn a_node_port_without_backends_refuses_at_once() -> Result<()> {
    if !require_root("a_node_port_without_backends_refuses_at_once") {
        return Ok(());
    }
    let hosts = Hosts::new()?;
    let cgroup = Cgroup::new("skiff-np")?;
    let mut datapath = hosts.attach(&cgroup, None)?;
    // A listener on node A itself: a RST from the kernel would mean the program let the
    // SYN through; only the program's RST refuses while something listens.
    let _decoy = in_netns(&hosts.node_a, || {
        Ok(TcpListener::bind(SocketAddrV4::new(NODE_A, 30083))?)
    })?;
    node_port(&mut datapath.maps, 30083, PROTO_TCP, 0, 1, &[])?;
    node_port(&mut datapath.maps, 30083, PROTO_UDP, 0, 2, &[])?;

    let started = std::time::Instant::now();
    match hosts.connect(30083) {
        Err(err) => {
            let refused = err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == ErrorKind::ConnectionRefused);
            ensure!(refused, "expected a refusal, got {err:#}");
        }
        Ok(_) => bail!("connected to a NodePort without backends"),
    }
    ensure!(started.elapsed() < TIMEOUT, "refused only after a timeout");
    let socket = hosts.udp(30083)?;
    match datagram(&socket) {
        Err(err) => {
            let refused = err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == ErrorKind::ConnectionRefused);
            ensure!(refused, "expected port unreachable, got {err:#}");
        }
        Ok(answer) => bail!("an answer from a NodePort without backends: {answer}"),
    }
    Ok(())
}

#[test]
fn flows_survive_the_loader_going_away_and_a_restart_adopts_the_pinned_links() -> Result<()> {
    if !require_root("flows_survive_the_loader_going_away_and_a_restart_adopts_the_pinned_links") {
        return Ok(());
    }
    let hosts = Hosts::new()?;
    let cgroup = Cgroup::new("skiff-np")?;
    let bpffs = BpfFs::new()?;
    let links = bpffs.path().join("node-a/links");
    let _servers = Servers::start(&hosts.pod_b, POD_B, "pod-b")?;
    let mut stream = {
        let mut first = hosts.attach(&cgroup, Some(&bpffs))?;
        node_port(&mut first.maps, 30084, PROTO_TCP, 0, 1, &[(POD_B, false)])?;
        let mut stream = hosts.connect(30084)?;
        greeting(&stream)?;
        round_trip(&mut stream, "before")?;
        stream
        // The loader goes away as a SIGKILLed node would: nothing is detached.
    };
    round_trip(&mut stream, "with the loader gone")?;
    greeting(
        &hosts
            .connect(30084)
            .context("a new flow with the loader gone")?,
    )?;

    let second = hosts.attach(&cgroup, Some(&bpffs))?;
    ensure!(second.handle.restarted(), "the pins were not found");
    round_trip(&mut stream, "after the restart")?;
    greeting(
        &hosts
            .connect(30084)
            .context("a new flow after the restart")?,
    )?;
    let pinned: Vec<String> = std::fs::read_dir(&links)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(
        pinned.iter().filter(|n| n.starts_with("tc_")).count() == 2,
        "one pinned link per direction, none left from the first run: {pinned:?}"
    );
    drop(second);

    // Told to use no uplink, a restart takes the TC links away and keeps the socket hooks.
    let third = hosts.attach_to(&cgroup, Some(&bpffs), &[])?;
    let left: Vec<String> = std::fs::read_dir(&links)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(
        !left.iter().any(|n| n.starts_with("tc_")),
        "TC links left: {left:?}"
    );
    ensure!(
        hosts.connect(30084).is_err(),
        "the NodePort is still translated without TC links"
    );
    third.handle.remove()?;
    ensure!(
        !bpffs.path().join("node-a").exists(),
        "pins left after removal"
    );
    Ok(())
}

#[test]
fn a_backend_port_nobody_listens_on_is_reported_to_the_client_at_once() -> Result<()> {
    if !require_root("a_backend_port_nobody_listens_on_is_reported_to_the_client_at_once") {
        return Ok(());
    }
    let hosts = Hosts::new()?;
    let cgroup = Cgroup::new("skiff-np")?;
    let mut datapath = hosts.attach(&cgroup, None)?;
    let closed_a = SocketAddrV4::new(*POD_A.ip(), 9999);
    let closed_b = SocketAddrV4::new(*POD_B.ip(), 9999);
    node_port(
        &mut datapath.maps,
        30085,
        PROTO_UDP,
        0,
        1,
        &[(closed_a, true)],
    )?;
    node_port(
        &mut datapath.maps,
        30086,
        PROTO_UDP,
        0,
        2,
        &[(closed_b, false)],
    )?;
    for (port, which) in [(30085, "a local backend"), (30086, "a backend on node B")] {
        let started = std::time::Instant::now();
        match datagram(&hosts.udp(port)?) {
            Err(err) => {
                let refused = err
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == ErrorKind::ConnectionRefused);
                ensure!(refused, "{which}: expected port unreachable, got {err:#}");
            }
            Ok(answer) => bail!("{which}: an answer from a closed port: {answer}"),
        }
        ensure!(started.elapsed() < TIMEOUT, "{which}: only a timeout");
    }
    Ok(())
}
