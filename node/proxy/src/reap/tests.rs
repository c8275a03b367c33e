//! Which sockets a sync's removals reap, against a mirror over maps in memory and sockets
//! that exist only in the fake.

use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;

use super::*;
use crate::{
    plan::NodeView,
    sync::{Mirror, SERVICE_NAME_LABEL},
    table::ServiceTable,
    testing::FakeMaps,
};

/// Sockets in memory, the reverse translation of some of them, and what was destroyed.
#[derive(Default)]
struct FakeReaper {
    sockets: Vec<UdpSocket>,
    /// (netns, cookie, peer) -> the frontend dialled.
    dialled: HashMap<(u64, u64, SocketAddrV4), SocketAddrV4>,
    destroyed: Vec<UdpSocket>,
    listings: Vec<Option<BTreeSet<SocketAddrV4>>>,
    refuse: BTreeSet<u64>,
}

impl FakeReaper {
    /// A socket with cookie `cookie` connected to `peer`, translated from `frontend`.
    fn connect(&mut self, cookie: u64, peer: &str, frontend: Option<&str>) {
        let socket = UdpSocket {
            netns: 7,
            cookie,
            local: SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 9), 40000),
            peer: peer.parse().expect("an address"),
            interface: 0,
        };
        if let Some(f) = frontend {
            self.dialled
                .insert((7, cookie, socket.peer), f.parse().expect("an address"));
        }
        self.sockets.push(socket);
    }

    fn destroyed(&self) -> Vec<u64> {
        self.destroyed.iter().map(|s| s.cookie).collect()
    }
}

impl SocketReaper for FakeReaper {
    fn connected_udp(&mut self, peers: Option<&BTreeSet<SocketAddrV4>>) -> Listing {
        self.listings.push(peers.cloned());
        Listing {
            sockets: self
                .sockets
                .iter()
                .filter(|s| peers.is_none_or(|p| p.contains(&s.peer)))
                .copied()
                .collect(),
            errors: Vec::new(),
        }
    }

    fn dialled(&self, socket: &UdpSocket) -> Result<Option<SocketAddrV4>, ReapError> {
        Ok(self
            .dialled
            .get(&(socket.netns, socket.cookie, socket.peer))
            .copied())
    }

    fn destroy(&mut self, socket: &UdpSocket) -> Result<(), ReapError> {
        if self.refuse.contains(&socket.cookie) {
            return Err(ReapError::Destroy {
                local: socket.local,
                peer: socket.peer,
                source: std::io::Error::from_raw_os_error(95),
            });
        }
        self.sockets.retain(|s| s != socket);
        self.destroyed.push(*socket);
        Ok(())
    }
}

fn mirror() -> Mirror<ServiceTable<FakeMaps>> {
    Mirror::new(
        ServiceTable::new(FakeMaps::default()),
        NodeView {
            name: "n1".into(),
            addresses: vec![Ipv4Addr::new(192, 168, 50, 20)],
            loopback_node_ports: false,
        },
    )
}

/// A DNS-like Service: UDP 53 -> 5353.
fn dns(name: &str, ip: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [
            {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "targetPort": 5353, "protocol": "TCP"},
        ]},
    }))
    .expect("a Service")
}

fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {SERVICE_NAME_LABEL: service},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "dns", "port": 5353, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
        ],
        "endpoints": endpoints,
    }))
    .expect("an EndpointSlice")
}

/// `kube-dns` at 10.96.0.10 over two pods, synced, with the removals of that sync taken.
fn two_resolvers() -> Mirror<ServiceTable<FakeMaps>> {
    let mut m = mirror();
    m.service_applied(dns("kube-dns", "10.96.0.10"));
    m.slice_applied(slice(
        "kube-dns-1",
        "kube-dns",
        &["10.244.0.5", "10.244.1.6"],
    ));
    m.sync().expect("synced");
    m
}

#[test]
fn a_socket_pinned_to_a_removed_backend_is_destroyed_and_one_on_a_kept_backend_is_not() {
    let mut m = two_resolvers();
    let mut reaper = FakeReaper::default();
    reaper.connect(1, "10.244.0.5:5353", Some("10.96.0.10:53"));
    reaper.connect(2, "10.244.1.6:5353", Some("10.96.0.10:53"));
    m.slice_applied(slice("kube-dns-1", "kube-dns", &["10.244.1.6"]));
    m.sync().expect("synced");
    let done = m.reap_stale_udp(&mut reaper, false);
    assert_eq!(reaper.destroyed(), [1]);
    assert_eq!(
        done.destroyed[0].1,
        "10.96.0.10:53".parse::<SocketAddrV4>().expect("an address")
    );
    assert!(done.errors.is_empty());
    // Only the removed backend was searched for.
    let removed: BTreeSet<SocketAddrV4> = ["10.244.0.5:5353".parse().expect("an address")].into();
    assert_eq!(reaper.listings, [Some(removed)]);
}

#[test]
fn a_socket_connected_to_the_pod_address_itself_is_left_alone() {
    let mut m = two_resolvers();
    let mut reaper = FakeReaper::default();
    reaper.connect(1, "10.244.0.5:5353", None);
    m.slice_applied(slice("kube-dns-1", "kube-dns", &["10.244.1.6"]));
    m.sync().expect("synced");
    let done = m.reap_stale_udp(&mut reaper, false);
    assert!(done.destroyed.is_empty() && reaper.destroyed.is_empty());
}

#[test]
fn a_backend_another_service_keeps_reaps_only_the_sockets_of_the_service_that_lost_it() {
    let mut m = two_resolvers();
    m.service_applied(dns("other-dns", "10.96.0.11"));
    m.slice_applied(slice("other-dns-1", "other-dns", &["10.244.0.5"]));
    m.sync().expect("synced");
    let mut reaper = FakeReaper::default();
    reaper.connect(1, "10.244.0.5:5353", Some("10.96.0.10:53"));
    reaper.connect(2, "10.244.0.5:5353", Some("10.96.0.11:53"));
    m.slice_applied(slice("kube-dns-1", "kube-dns", &["10.244.1.6"]));
    m.sync().expect("synced");
    m.reap_stale_udp(&mut reaper, false);
    assert_eq!(reaper.destroyed(), [1]);
}

#[test]
fn the_sockets_of_a_deleted_service_are_destroyed() {
    let mut m = two_resolvers();
    let mut reaper = FakeReaper::default();
    reaper.connect(1, "10.244.0.5:5353", Some("10.96.0.10:53"));
    reaper.connect(2, "10.244.1.6:5353", Some("10.96.0.10:53"));
    m.service_deleted(&dns("kube-dns", "10.96.0.10"));
    m.sync().expect("synced");
    m.reap_stale_udp(&mut reaper, false);
    assert_eq!(reaper.destroyed(), [1, 2]);
}

#[test]
fn a_sync_that_removed_no_udp_backend_lists_no_socket() {
    let mut m = two_resolvers();
    let mut reaper = FakeReaper::default();
    // The first sync only added backends.
    m.reap_stale_udp(&mut reaper, false);
    // A new backend, none gone.
    m.slice_applied(slice(
        "kube-dns-1",
        "kube-dns",
        &["10.244.0.5", "10.244.1.6", "10.244.2.7"],
    ));
    m.sync().expect("synced");
    m.reap_stale_udp(&mut reaper, false);
    assert!(reaper.listings.is_empty());
}

#[test]
fn a_removal_is_reaped_once() {
    let mut m = two_resolvers();
    let mut reaper = FakeReaper::default();
    m.slice_applied(slice("kube-dns-1", "kube-dns", &["10.244.1.6"]));
    m.sync().expect("synced");
    m.reap_stale_udp(&mut reaper, false);
    m.reap_stale_udp(&mut reaper, false);
    assert_eq!(reaper.listings.len(), 1);
}

#[test]
fn a_full_search_after_a_restart_destroys_what_went_stale_while_the_node_was_down() {
    let mut m = two_resolvers();
    m.reap_stale_udp(&mut FakeReaper::default(), false);
    let mut reaper = FakeReaper::default();
    // Left from before the restart: one socket on a backend the Service still has, one
    // on a backend it lost while the node was down, one on an address no Service has.
    reaper.connect(1, "10.244.1.6:5353", Some("10.96.0.10:53"));
    reaper.connect(2, "10.244.3.3:5353", Some("10.96.0.10:53"));
    reaper.connect(3, "10.244.4.4:5353", Some("10.96.9.9:53"));
    reaper.connect(4, "10.244.5.5:5353", None);
    let done = m.reap_stale_udp(&mut reaper, true);
    assert_eq!(reaper.listings, [None]);
    assert_eq!(reaper.destroyed(), [2, 3]);
    assert_eq!(done.destroyed.len(), 2);
}

#[test]
fn a_refused_destroy_is_reported_and_the_others_still_go() {
    let mut m = two_resolvers();
    let mut reaper = FakeReaper::default();
    reaper.connect(1, "10.244.0.5:5353", Some("10.96.0.10:53"));
    reaper.connect(2, "10.244.0.5:5353", Some("10.96.0.10:53"));
    reaper.refuse.insert(1);
    m.slice_applied(slice("kube-dns-1", "kube-dns", &["10.244.1.6"]));
    m.sync().expect("synced");
    let done = m.reap_stale_udp(&mut reaper, false);
    assert_eq!(reaper.destroyed(), [2]);
    assert!(matches!(done.errors[..], [ReapError::Destroy { .. }]));
}

#[test]
fn a_tcp_backend_removal_reaps_nothing() {
    let mut m = mirror();
    let tcp: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .expect("a Service");
    let web_slice = |ips: &[&str]| -> EndpointSlice {
        let endpoints: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": endpoints,
        }))
        .expect("an EndpointSlice")
    };
    m.service_applied(tcp);
    m.slice_applied(web_slice(&["10.244.0.5", "10.244.1.6"]));
    m.sync().expect("synced");
    m.slice_applied(web_slice(&["10.244.1.6"]));
    m.sync().expect("synced");
    let mut reaper = FakeReaper::default();
    m.reap_stale_udp(&mut reaper, false);
    assert!(reaper.listings.is_empty());
}
