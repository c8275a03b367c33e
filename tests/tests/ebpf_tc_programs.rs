//! The uplink's TC programs on crafted packets through `BPF_PROG_TEST_RUN`: each test loads
//! its own copy of the object (fresh, unpinned maps), writes frontends and backends straight
//! into the maps, and runs the programs in a network namespace it made, where the FIB lookup
//! of a SNAT-ed packet finds a route and a neighbour. The test run's packets enter on that
//! namespace's loopback, which is the uplink here.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use skiff_ebpf_common::{
    Backend, BackendKey, FrontendKey, FrontendValue, Uplink,
    nat::{SNAT_PORT_MAX, SNAT_PORT_MIN, sum_words},
    service::{
        BACKEND_LOCAL, BACKENDS_MAP, FLAG_EXTERNAL_LOCAL, FRONTENDS_MAP, KIND_CLUSTER_IP,
        KIND_NODE_PORT, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
    },
};
use skiff_tests::{netns::Netns, require_root};

/// `TC_ACT_UNSPEC` as the test run reports it: the packet goes on.
const NEXT: u32 = u32::MAX;
const REDIRECT: u32 = 7;
const LOOPBACK: u32 = 1;

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
const LOCAL_POD: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 10), 8080);
const REMOTE_POD: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 10), 8080);

const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

fn be32(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// The programs of one fresh object, in a network namespace of their own.
struct Uplinks {
    ebpf: Ebpf,
    _inside: Inside,
}

/// This thread inside a test's namespace; on drop, back where it was (the harness may run
/// every test on one thread) and the namespace deleted.
struct Inside {
    netns: Option<Netns>,
    home: Option<std::fs::File>,
}

impl Inside {
    fn enter(netns: Netns) -> Result<Self> {
        let home = std::fs::File::open("/proc/thread-self/ns/net").context("this netns")?;
        netns.enter()?;
        Ok(Self {
            netns: Some(netns),
            home: Some(home),
        })
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        if let Some(home) = self.home.take()
            && let Err(err) = nix::sched::setns(home, nix::sched::CloneFlags::CLONE_NEWNET)
        {
            eprintln!("cleanup: returning to the test's network namespace: {err}");
        }
        drop(self.netns.take());
    }
}

impl Uplinks {
    /// Enters a new netns on this thread (with forwarding, a subnet with static neighbours
    /// and a route to the remote pod network) and loads the programs.
    fn new() -> Result<Self> {
        let netns = Netns::new("skiff-tcrun")?;
        // A veth pair stands in for the link (this kernel may lack the dummy driver).
        netns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])?;
        netns.ip(&["addr", "add", "192.168.77.1/24", "dev", "d0"])?;
        netns.ip(&["link", "set", "d1", "up"])?;
        netns.ip(&["link", "set", "d0", "up"])?;
        for (ip, mac) in [(NEXT_HOP, NEXT_HOP_MAC), (CLIENT, CLIENT_MAC)] {
            netns.ip(&[
                "neigh",
                "add",
                &ip.to_string(),
                "lladdr",
                &mac_text(mac),
                "dev",
                "d0",
            ])?;
        }
        netns.ip(&[
            "route",
            "add",
            "10.244.2.0/24",
            "via",
            &NEXT_HOP.to_string(),
        ])?;
        let inside = Inside::enter(netns)?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("ip_forward")?;
        let mut ebpf = Ebpf::load(skiff_node_proxy::ebpf::object())?;
        for name in ["uplink_ingress", "uplink_egress"] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .context("program missing")?
                .try_into()?;
            program.load()?;
        }
        let mut uplinks = Self {
            ebpf,
            _inside: inside,
        };
        uplinks.uplink(LOOPBACK, NODE)?;
        Ok(uplinks)
    }

    fn uplink(&mut self, ifindex: u32, address: Ipv4Addr) -> Result<()> {
        let mut map: HashMap<&mut MapData, u32, Uplink> = self
            .ebpf
            .map_mut("SKIFF_UPLINKS")
            .context("uplinks")?
            .try_into()?;
        map.insert(
            ifindex,
            Uplink {
                address: be32(address),
                flags: 0,
            },
            0,
        )?;
        Ok(())
    }

    fn remove_uplink(&mut self, ifindex: u32) -> Result<()> {
        let mut map: HashMap<&mut MapData, u32, Uplink> = self
            .ebpf
            .map_mut("SKIFF_UPLINKS")
            .context("uplinks")?
            .try_into()?;
        map.remove(&ifindex)?;
        Ok(())
    }

    /// A frontend in group `group` with `backends` (address, local) in its slots.
    fn frontend(
        &mut self,
        at: SocketAddrV4,
        protocol: u8,
        kind: u8,
        flags: u16,
        group: u32,
        backends: &[(SocketAddrV4, bool)],
    ) -> Result<()> {
        {
            let mut map: HashMap<&mut MapData, BackendKey, Backend> = self
                .ebpf
                .map_mut(BACKENDS_MAP)
                .context("backends")?
                .try_into()?;
            for (slot, (address, local)) in (0u32..).zip(backends) {
                map.insert(
                    BackendKey { group, slot },
                    Backend {
                        address: be32(*address.ip()),
                        port: address.port().to_be(),
                        flags: if *local { BACKEND_LOCAL } else { 0 },
                        pad: 0,
                    },
                    0,
                )?;
            }
        }
        let mut map: HashMap<&mut MapData, FrontendKey, FrontendValue> = self
            .ebpf
            .map_mut(FRONTENDS_MAP)
            .context("frontends")?
            .try_into()?;
        map.insert(
            FrontendKey {
                address: be32(*at.ip()),
                port: at.port().to_be(),
                protocol,
                scope: SCOPE_EXTERNAL,
            },
            FrontendValue {
                group,
                count: u32::try_from(backends.len())?,
                affinity_timeout: 0,
                flags,
                kind,
                pad: 0,
            },
            0,
        )?;
        Ok(())
    }

    /// Gives the frontend at `at` session affinity for `seconds`.
    fn affinity(&mut self, at: SocketAddrV4, protocol: u8, seconds: u32) -> Result<()> {
        let mut map: HashMap<&mut MapData, FrontendKey, FrontendValue> = self
            .ebpf
            .map_mut(FRONTENDS_MAP)
            .context("frontends")?
            .try_into()?;
        let key = FrontendKey {
            address: be32(*at.ip()),
            port: at.port().to_be(),
            protocol,
            scope: SCOPE_EXTERNAL,
        };
        let mut value = map.get(&key, 0)?;
        value.affinity_timeout = seconds;
        map.insert(key, value, 0)?;
        Ok(())
    }

    /// Runs `program` on `packet`; the verdict and the packet as the program left it.
    fn run(&self, program: &str, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        let program: &SchedClassifier = self
            .ebpf
            .program(program)
            .context("program missing")?
            .try_into()?;
        let mut out = vec![0u8; packet.len() + 256];
        let result = program.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })?;
        out.truncate(usize::try_from(result.data_size_out)?);
        Ok((result.return_value, out))
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An Ethernet + IPv4 + TCP (with `flags`) or UDP packet with correct checksums.
fn packet(protocol: u8, from: SocketAddrV4, to: SocketAddrV4, flags: u8, data: &[u8]) -> Vec<u8> {
    let l4_len = if protocol == PROTO_TCP { 20 } else { 8 } + data.len();
    let mut p = Vec::new();
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0xaa, 0x08, 0x00]);
    let total = u16::try_from(20 + l4_len).expect("small packet");
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, protocol, 0, 0]);
    p.extend_from_slice(&from.ip().octets());
    p.extend_from_slice(&to.ip().octets());
    let ip_sum = skiff_ebpf_common::nat::checksum(&p[14..34]);
    p[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    p.extend_from_slice(&from.port().to_be_bytes());
    p.extend_from_slice(&to.port().to_be_bytes());
    if protocol == PROTO_TCP {
        p.extend_from_slice(&1000u32.to_be_bytes());
        let ack: u32 = if flags & ACK == 0 { 0 } else { 5000 };
        p.extend_from_slice(&ack.to_be_bytes());
        p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        p.extend_from_slice(&u16::try_from(l4_len).expect("small").to_be_bytes());
        p.extend_from_slice(&[0, 0]);
    }
    p.extend_from_slice(data);
    let sum = fold(l4_sum(&p));
    let at = if protocol == PROTO_TCP {
        34 + 16
    } else {
        34 + 6
    };
    p[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The L4 ones' complement sum over the pseudo header and the segment, unfolded.
fn l4_sum(p: &[u8]) -> u32 {
    let protocol = p[23];
    let len = u32::try_from(p.len() - 34).expect("small");
    let mut sum = sum_words(&p[26..34], 0);
    sum += u32::from(protocol) + len;
    sum_words(&p[34..], sum)
}

fn fold(sum: u32) -> u16 {
    skiff_ebpf_common::nat::fold(sum)
}

/// Both checksums of `p` verify.
fn checksums_hold(p: &[u8]) -> Result<()> {
    ensure!(
        skiff_ebpf_common::nat::checksum(&p[14..34]) == 0,
        "IPv4 header checksum broken"
    );
    match p[23] {
        1 => ensure!(
            skiff_ebpf_common::nat::checksum(&p[34..]) == 0,
            "ICMP checksum broken"
        ),
        _ => ensure!(fold(l4_sum(p)) == 0, "L4 checksum broken"),
    }
    Ok(())
}

fn source(p: &[u8]) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(p[26], p[27], p[28], p[29]),
        u16::from_be_bytes([p[34], p[35]]),
    )
}

fn destination(p: &[u8]) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(p[30], p[31], p[32], p[33]),
        u16::from_be_bytes([p[36], p[37]]),
    )
}

fn node_port(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(NODE, port)
}

#[test]
fn a_syn_to_a_node_port_reaches_a_local_backend_and_its_answer_shows_the_node_port() -> Result<()> {
    if !require_root("a_syn_to_a_node_port_reaches_a_local_backend") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    lb.frontend(
        node_port(30080),
        PROTO_TCP,
        KIND_NODE_PORT,
        0,
        1,
        &[(LOCAL_POD, true)],
    )?;
    let client = SocketAddrV4::new(CLIENT, 40000);
    let (verdict, out) = lb.run(
        "uplink_ingress",
        &packet(PROTO_TCP, client, node_port(30080), SYN, &[]),
    )?;
    assert_eq!(
        verdict, NEXT,
        "a local backend is reached through the stack"
    );
    assert_eq!(destination(&out), LOCAL_POD);
    assert_eq!(
        source(&out),
        client,
        "the client is kept for a local backend"
    );
    checksums_hold(&out)?;

    let answer = packet(PROTO_TCP, LOCAL_POD, client, SYN | ACK, b"hello");
    let (verdict, out) = lb.run("uplink_egress", &answer)?;
    assert_eq!(verdict, NEXT);
    assert_eq!(source(&out), node_port(30080));
    assert_eq!(destination(&out), client);
    checksums_hold(&out)?;
    Ok(())
}

#[test]
fn a_remote_backend_gets_the_flow_from_the_node_address_and_its_answer_returns_to_the_client()
-> Result<()> {
    if !require_root("a_remote_backend_gets_the_flow_from_the_node_address") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    lb.frontend(
        node_port(30081),
        PROTO_TCP,
        KIND_NODE_PORT,
        0,
        2,
        &[(REMOTE_POD, false)],
    )?;
    let client = SocketAddrV4::new(CLIENT, 40001);
    let (verdict, out) = lb.run(
        "uplink_ingress",
        &packet(PROTO_TCP, client, node_port(30081), SYN, &[]),
    )?;
    assert_eq!(verdict, REDIRECT, "sent on by the program, not the stack");
    assert_eq!(destination(&out), REMOTE_POD);
    let snat = source(&out);
    assert_eq!(*snat.ip(), NODE, "SNAT to the node address");
    assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&snat.port()));
    assert_eq!(out[0..6], NEXT_HOP_MAC, "the next hop's MAC from the FIB");
    checksums_hold(&out)?;

    // Later segments of the flow keep the port.
    let (_, again) = lb.run(
        "uplink_ingress",
        &packet(PROTO_TCP, client, node_port(30081), ACK, b"data"),
    )?;
    assert_eq!(source(&again), snat);
    assert_eq!(destination(&again), REMOTE_POD);
    checksums_hold(&again)?;

    let answer = packet(PROTO_TCP, REMOTE_POD, snat, SYN | ACK, &[]);
    let (verdict, out) = lb.run("uplink_ingress", &answer)?;
    assert_eq!(verdict, REDIRECT);
    assert_eq!(source(&out), node_port(30081));
    assert_eq!(destination(&out), client);
    assert_eq!(out[0..6], CLIENT_MAC);
    checksums_hold(&out)?;
    Ok(())
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address() -> Result<()> {
    if !require_root("external_traffic_policy_local_keeps_the_client_address") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    // The flag alone decides: even a backend not marked local is reached without SNAT.
    lb.frontend(
        node_port(30082),
        PROTO_TCP,
        KIND_NODE_PORT,
        FLAG_EXTERNAL_LOCAL,
        3,
        &[(REMOTE_POD, false)],
    )?;
    let client = SocketAddrV4::new(CLIENT, 40002);
    let (verdict, out) = lb.run(
        "uplink_ingress",
        &packet(PROTO_TCP, client, node_port(30082), SYN, &[]),
    )?;
    assert_eq!(verdict, NEXT);
    assert_eq!(source(&out), client);
    assert_eq!(destination(&out), REMOTE_POD);
    checksums_hold(&out)?;
    Ok(())
}

#[test]
fn every_segment_of_a_connection_goes_to_the_backend_its_syn_got() -> Result<()> {
    if !require_root("every_segment_of_a_connection_goes_to_the_backend_its_syn_got") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    let pods: Vec<SocketAddrV4> = (1..=8)
        .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, i), 8080))
        .collect();
    let backends: Vec<(SocketAddrV4, bool)> = pods.iter().map(|p| (*p, true)).collect();
    lb.frontend(node_port(30083), PROTO_TCP, KIND_NODE_PORT, 0, 4, &backends)?;
    let mut chosen = std::collections::BTreeSet::new();
    for port in 41000..41016 {
        let client = SocketAddrV4::new(CLIENT, port);
        let (_, first) = lb.run(
            "uplink_ingress",
            &packet(PROTO_TCP, client, node_port(30083), SYN, &[]),
        )?;
        let backend = destination(&first);
        chosen.insert(backend);
        for flags in [ACK, ACK, SYN, ACK | 0x01] {
            let (_, next) = lb.run(
                "uplink_ingress",
                &packet(PROTO_TCP, client, node_port(30083), flags, b"x"),
            )?;
            assert_eq!(destination(&next), backend, "flow {client} moved");
            checksums_hold(&next)?;
        }
    }
    assert!(
        chosen.len() > 1,
        "16 flows over 8 backends all went to one: {chosen:?}"
    );
    Ok(())
}

#[test]
fn a_syn_to_a_frontend_without_backends_is_answered_with_a_reset() -> Result<()> {
    if !require_root("a_syn_to_a_frontend_without_backends_is_answered_with_a_reset") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    lb.frontend(node_port(30084), PROTO_TCP, KIND_NODE_PORT, 0, 5, &[])?;
    let client = SocketAddrV4::new(CLIENT, 40004);
    let syn = packet(PROTO_TCP, client, node_port(30084), SYN, &[]);
    let (verdict, out) = lb.run("uplink_ingress", &syn)?;
    assert_eq!(verdict, REDIRECT, "sent back out of the uplink");
    assert_eq!(source(&out), node_port(30084));
    assert_eq!(destination(&out), client);
    assert_eq!(out[47], RST | ACK);
    assert_eq!(
        u32::from_be_bytes([out[42], out[43], out[44], out[45]]),
        1001
    );
    assert_eq!(out[0..6], syn[6..12], "back to the sender's MAC");
    checksums_hold(&out)?;
    Ok(())
}

#[test]
fn a_datagram_to_a_frontend_without_backends_is_answered_with_port_unreachable() -> Result<()> {
    if !require_root("a_datagram_to_a_frontend_without_backends_is_answered_with_port_unreachable")
    {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    lb.frontend(node_port(30085), PROTO_UDP, KIND_NODE_PORT, 0, 6, &[])?;
    let client = SocketAddrV4::new(CLIENT, 40005);
    let datagram = packet(PROTO_UDP, client, node_port(30085), 0, &[7; 100]);
    let (verdict, out) = lb.run("uplink_ingress", &datagram)?;
    assert_eq!(verdict, REDIRECT);
    assert_eq!(out.len(), 14 + 20 + 8 + 20 + 8);
    assert_eq!(out[23], 1, "ICMP");
    assert_eq!((out[34], out[35]), (3, 3), "port unreachable");
    assert_eq!(out[26..30], NODE.octets());
    assert_eq!(out[30..34], CLIENT.octets());
    // The quote: the datagram's IP header and UDP ports and length, as sent (its checksum
    // field is one a partial checksum's completion leaves alone).
    assert_eq!(out[42..68], datagram[14..40]);
    checksums_hold(&out)?;
    Ok(())
}

#[test]
fn a_udp_flow_is_translated_both_ways_and_a_zero_checksum_stays_zero() -> Result<()> {
    if !require_root("a_udp_flow_is_translated_both_ways") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    lb.frontend(
        node_port(30086),
        PROTO_UDP,
        KIND_NODE_PORT,
        0,
        7,
        &[(LOCAL_POD, true)],
    )?;
    let client = SocketAddrV4::new(CLIENT, 40006);
    let (verdict, out) = lb.run(
        "uplink_ingress",
        &packet(PROTO_UDP, client, node_port(30086), 0, b"ping"),
    )?;
    assert_eq!(verdict, NEXT);
    assert_eq!(destination(&out), LOCAL_POD);
    checksums_hold(&out)?;

    let mut unsummed = packet(PROTO_UDP, client, node_port(30086), 0, b"ping2");
    unsummed[40..42].copy_from_slice(&[0, 0]);
    let (_, out) = lb.run("uplink_ingress", &unsummed)?;
    assert_eq!(destination(&out), LOCAL_POD);
    assert_eq!(out[40..42], [0, 0], "no checksum stays no checksum");

    let (_, answer) = lb.run(
        "uplink_egress",
        &packet(PROTO_UDP, LOCAL_POD, client, 0, b"pong"),
    )?;
    assert_eq!(source(&answer), node_port(30086));
    checksums_hold(&answer)?;
    Ok(())
}

#[test]
fn traffic_that_is_not_for_an_external_frontend_passes_untouched() -> Result<()> {
    if !require_root("traffic_that_is_not_for_an_external_frontend_passes_untouched") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    let cluster_ip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    lb.frontend(
        cluster_ip,
        PROTO_TCP,
        KIND_CLUSTER_IP,
        0,
        8,
        &[(LOCAL_POD, true)],
    )?;
    lb.frontend(
        node_port(30087),
        PROTO_TCP,
        KIND_NODE_PORT,
        0,
        9,
        &[(LOCAL_POD, true)],
    )?;
    let client = SocketAddrV4::new(CLIENT, 40007);
    for (to, why) in [
        (node_port(22), "a port without a frontend"),
        (cluster_ip, "a ClusterIP from outside the node"),
    ] {
        let syn = packet(PROTO_TCP, client, to, SYN, &[]);
        let (verdict, out) = lb.run("uplink_ingress", &syn)?;
        assert_eq!((verdict, &out), (NEXT, &syn), "{why}");
    }
    // An interface the node was not told to use.
    lb.remove_uplink(LOOPBACK)?;
    let syn = packet(PROTO_TCP, client, node_port(30087), SYN, &[]);
    let (verdict, out) = lb.run("uplink_ingress", &syn)?;
    assert_eq!((verdict, &out), (NEXT, &syn), "not an uplink");
    Ok(())
}

#[test]
fn a_new_connection_leaves_a_backend_that_is_gone_while_its_flow_keeps_it() -> Result<()> {
    if !require_root("a_new_connection_leaves_a_backend_that_is_gone") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    let old = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 20), 8080);
    let new = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 21), 8080);
    lb.frontend(
        node_port(30088),
        PROTO_TCP,
        KIND_NODE_PORT,
        0,
        10,
        &[(old, true)],
    )?;
    let client = SocketAddrV4::new(CLIENT, 40008);
    let (_, first) = lb.run(
        "uplink_ingress",
        &packet(PROTO_TCP, client, node_port(30088), SYN, &[]),
    )?;
    assert_eq!(destination(&first), old);
    // The slot now holds another backend (the old pod is terminating or gone).
    lb.frontend(
        node_port(30088),
        PROTO_TCP,
        KIND_NODE_PORT,
        0,
        10,
        &[(new, true)],
    )?;
    let (_, segment) = lb.run(
        "uplink_ingress",
        &packet(PROTO_TCP, client, node_port(30088), ACK, b"x"),
    )?;
    assert_eq!(
        destination(&segment),
        old,
        "an established flow keeps its backend"
    );
    let (_, again) = lb.run(
        "uplink_ingress",
        &packet(PROTO_TCP, client, node_port(30088), SYN, &[]),
    )?;
    assert_eq!(
        destination(&again),
        new,
        "a new SYN on the same tuple re-picks"
    );
    let (_, answer) = lb.run(
        "uplink_egress",
        &packet(PROTO_TCP, new, client, SYN | ACK, &[]),
    )?;
    assert_eq!(source(&answer), node_port(30088));
    checksums_hold(&answer)?;
    Ok(())
}

#[test]
fn session_affinity_sends_every_connection_of_a_client_to_one_backend() -> Result<()> {
    if !require_root("session_affinity_sends_every_connection_of_a_client_to_one_backend") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    let backends: Vec<(SocketAddrV4, bool)> = (1..=8)
        .map(|i| (SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, i), 8080), true))
        .collect();
    lb.frontend(
        node_port(30089),
        PROTO_TCP,
        KIND_NODE_PORT,
        0,
        11,
        &backends,
    )?;
    lb.affinity(node_port(30089), PROTO_TCP, 60)?;
    let mut chosen = std::collections::BTreeSet::new();
    for port in 42000..42016 {
        let (_, out) = lb.run(
            "uplink_ingress",
            &packet(
                PROTO_TCP,
                SocketAddrV4::new(CLIENT, port),
                node_port(30089),
                SYN,
                &[],
            ),
        )?;
        chosen.insert(destination(&out));
    }
    assert_eq!(chosen.len(), 1, "one client, several backends: {chosen:?}");
    Ok(())
}

#[test]
fn a_new_connection_after_a_fin_gets_a_fresh_snat_port() -> Result<()> {
    if !require_root("a_new_connection_after_a_fin_gets_a_fresh_snat_port") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    lb.frontend(
        node_port(30090),
        PROTO_TCP,
        KIND_NODE_PORT,
        0,
        12,
        &[(REMOTE_POD, false)],
    )?;
    let client = SocketAddrV4::new(CLIENT, 40010);
    let syn = packet(PROTO_TCP, client, node_port(30090), SYN, &[]);
    let (_, first) = lb.run("uplink_ingress", &syn)?;
    let port = source(&first).port();
    let (_, retransmitted) = lb.run("uplink_ingress", &syn)?;
    assert_eq!(
        source(&retransmitted).port(),
        port,
        "a repeated SYN of an open flow keeps its port"
    );
    let (_, fin) = lb.run(
        "uplink_ingress",
        &packet(PROTO_TCP, client, node_port(30090), FIN | ACK, &[]),
    )?;
    assert_eq!(
        source(&fin).port(),
        port,
        "the FIN still belongs to the flow"
    );
    let (_, reopened) = lb.run("uplink_ingress", &syn)?;
    assert_eq!(destination(&reopened), REMOTE_POD);
    assert_ne!(
        source(&reopened).port(),
        port,
        "a SYN after the FIN reuses a port the closing flow still holds"
    );
    Ok(())
}

/// An ICMP error of `kind`/`code` from `from` to `to`, quoting `quoted` (from its IP header
/// on) as the kernel would.
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0xbb, 0x08, 0x00]);
    let total = u16::try_from(20 + 8 + quoted.len()).expect("small packet");
    p.extend_from_slice(&[0x45, 0xc0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    p.extend_from_slice(&from.octets());
    p.extend_from_slice(&to.octets());
    let ip_sum = skiff_ebpf_common::nat::checksum(&p[14..34]);
    p[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    // Type, code, checksum, and the next-hop MTU for "fragmentation needed".
    p.extend_from_slice(&[kind, code, 0, 0, 0, 0, 0x05, 0xaa]);
    p.extend_from_slice(quoted);
    let sum = skiff_ebpf_common::nat::checksum(&p[34..]);
    p[36..38].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The quoted packet's source and destination in an ICMP error.
fn quoted_tuple(p: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let q = &p[42..];
    (
        SocketAddrV4::new(
            Ipv4Addr::new(q[12], q[13], q[14], q[15]),
            u16::from_be_bytes([q[20], q[21]]),
        ),
        SocketAddrV4::new(
            Ipv4Addr::new(q[16], q[17], q[18], q[19]),
            u16::from_be_bytes([q[22], q[23]]),
        ),
    )
}

#[test]
fn an_icmp_error_about_a_snat_ed_packet_reaches_the_client_about_its_own_packet() -> Result<()> {
    if !require_root("an_icmp_error_about_a_snat_ed_packet_reaches_the_client") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    lb.frontend(
        node_port(30091),
        PROTO_TCP,
        KIND_NODE_PORT,
        0,
        13,
        &[(REMOTE_POD, false)],
    )?;
    let client = SocketAddrV4::new(CLIENT, 40011);
    let (_, sent) = lb.run(
        "uplink_ingress",
        &packet(PROTO_TCP, client, node_port(30091), ACK, &[9; 1200]),
    )?;
    // Node B cannot forward it without fragmenting: it tells node A, quoting the packet.
    let error = icmp_error(NEXT_HOP, NODE, 3, 4, &sent[14..]);
    let (verdict, out) = lb.run("uplink_ingress", &error)?;
    assert_eq!(verdict, REDIRECT);
    assert_eq!(
        out[26..30],
        NEXT_HOP.octets(),
        "the router still reports it"
    );
    assert_eq!(out[30..34], CLIENT.octets());
    assert_eq!(quoted_tuple(&out), (client, node_port(30091)));
    assert_eq!(
        skiff_ebpf_common::nat::checksum(&out[42..62]),
        0,
        "quoted IP header checksum"
    );
    checksums_hold(&out)?;

    // An error about a flow nobody tracks is left alone.
    let stray = packet(
        PROTO_TCP,
        SocketAddrV4::new(NODE, 2000),
        REMOTE_POD,
        ACK,
        &[],
    );
    let error = icmp_error(NEXT_HOP, NODE, 3, 4, &stray[14..]);
    let (verdict, out) = lb.run("uplink_ingress", &error)?;
    assert_eq!((verdict, &out), (NEXT, &error));
    Ok(())
}

#[test]
fn a_local_backend_s_port_unreachable_reaches_the_client_from_the_node_port() -> Result<()> {
    if !require_root("a_local_backend_s_port_unreachable_reaches_the_client") {
        return Ok(());
    }
    let mut lb = Uplinks::new()?;
    lb.frontend(
        node_port(30092),
        PROTO_UDP,
        KIND_NODE_PORT,
        0,
        14,
        &[(LOCAL_POD, true)],
    )?;
    let client = SocketAddrV4::new(CLIENT, 40012);
    let (_, sent) = lb.run(
        "uplink_ingress",
        &packet(PROTO_UDP, client, node_port(30092), 0, b"query"),
    )?;
    let error = icmp_error(*LOCAL_POD.ip(), CLIENT, 3, 3, &sent[14..]);
    let (verdict, out) = lb.run("uplink_egress", &error)?;
    assert_eq!(verdict, NEXT);
    assert_eq!(
        out[26..30],
        NODE.octets(),
        "from the frontend, as its answers"
    );
    assert_eq!(out[30..34], CLIENT.octets());
    assert_eq!(quoted_tuple(&out), (client, node_port(30092)));
    checksums_hold(&out)?;
    Ok(())
}
