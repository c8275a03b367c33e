//! Which way each other node's pods are reached: a direct route via the peer when it shares
//! the node's link (host-gw), a VXLAN tunnel when it does not (or when asked), as flannel's
//! two backends do. Pure planning; the `overlay` module puts the plan into the kernel.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, str::FromStr};

use skiff_types::Ipv4Cidr;

/// The VXLAN device every node makes when a peer needs the tunnel.
pub const VXLAN_DEVICE: &str = "skiff-vxlan";
/// The VXLAN network identifier of the pod network.
pub const VXLAN_VNI: u32 = 1;
/// The UDP port of the tunnel (the Linux kernel's historic VXLAN port, as flannel uses).
pub const VXLAN_PORT: u16 = 8472;
/// Bytes VXLAN adds to every packet (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// How the node reaches other nodes' pods (`--pod-network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Per peer: a direct route when the peer is on the node's own link, else the tunnel.
    #[default]
    Auto,
    /// Direct routes only; a peer that is not on the link gets no route (and the node says
    /// so in its log).
    HostGw,
    /// The tunnel for every peer.
    Vxlan,
}

/// A `--pod-network` value that is not one of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pod network backend {0:?}: want auto, host-gw or vxlan")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "host-gw" => Ok(Self::HostGw),
            "vxlan" => Ok(Self::Vxlan),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::HostGw => "host-gw",
            Self::Vxlan => "vxlan",
        })
    }
}

/// This node, as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// The Node's name (its own entry among the peers is skipped).
    pub name: String,
    /// The address pod traffic to other nodes leaves from (the Node's `InternalIP`).
    pub address: Ipv4Addr,
    /// The subnets directly connected on the interface that carries pod traffic.
    pub link_subnets: Vec<Ipv4Cidr>,
    /// The node's own pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// The backend choice.
    pub mode: Mode,
}

/// Another node, from its Node object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Its `InternalIP`.
    pub address: Ipv4Addr,
    /// Its `spec.podCIDR`.
    pub pod_cidr: Ipv4Cidr,
}

/// How one peer's pods are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    /// `pod_cidr via <peer address> dev <uplink>`.
    Direct {
        /// The peer's address, the next hop.
        via: Ipv4Addr,
    },
    /// `pod_cidr via <peer VTEP> dev skiff-vxlan onlink`, with a permanent neighbour entry
    /// for the peer's VTEP and a forwarding entry sending its MAC to the peer's address.
    Tunnel {
        /// The peer's address, the tunnel's far end.
        remote: Ipv4Addr,
        /// The peer's VTEP address (its pod CIDR's network address).
        vtep: Ipv4Addr,
        /// The peer's VTEP MAC.
        mac: [u8; 6],
    },
}

/// What the kernel should hold: a route per peer pod CIDR.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Peer pod CIDR -> how it is reached.
    pub routes: BTreeMap<Ipv4Cidr, Route>,
    /// Peers left without a route, with why (logged by the caller).
    pub unreachable: Vec<(String, String)>,
}

impl Plan {
    /// Whether any peer is reached through the tunnel (the VXLAN device is needed).
    #[must_use]
    pub fn needs_tunnel(&self) -> bool {
        self.routes
            .values()
            .any(|r| matches!(r, Route::Tunnel { .. }))
    }
}

/// The routes to every peer's pod CIDR. Peers whose pod CIDR overlaps the node's own or an
/// earlier peer's (two nodes given one range) get no route and are listed as unreachable,
/// as are host-gw peers off the link.
#[must_use]
pub fn plan(local: &Local, peers: &[Peer]) -> Plan {
    let mut out = Plan::default();
    let mut sorted: Vec<&Peer> = peers.iter().filter(|p| p.name != local.name).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for peer in sorted {
        if peer.pod_cidr.overlaps(&local.pod_cidr) {
            out.unreachable.push((
                peer.name.clone(),
                format!(
                    "its pod CIDR {} overlaps this node's {}",
                    peer.pod_cidr, local.pod_cidr
                ),
            ));
            continue;
        }
        if let Some(other) = out.routes.keys().find(|c| c.overlaps(&peer.pod_cidr)) {
            out.unreachable.push((
                peer.name.clone(),
                format!(
                    "its pod CIDR {} overlaps another node's {other}",
                    peer.pod_cidr
                ),
            ));
            continue;
        }
        let on_link = local.link_subnets.iter().any(|s| s.contains(peer.address));
        let route = match (local.mode, on_link) {
            (Mode::Vxlan, _) | (Mode::Auto, false) => Route::Tunnel {
                remote: peer.address,
                vtep: vtep_address(peer.pod_cidr),
                mac: vtep_mac(peer.address),
            },
            (Mode::HostGw | Mode::Auto, true) => Route::Direct { via: peer.address },
            (Mode::HostGw, false) => {
                out.unreachable.push((
                    peer.name.clone(),
                    format!(
                        "its address {} is not on this node's link and --pod-network is \
                         host-gw (use auto or vxlan)",
                        peer.address
                    ),
                ));
                continue;
            }
        };
        out.routes.insert(peer.pod_cidr, route);
    }
    out
}

/// A node's VTEP address: the network address of its pod CIDR, which no pod uses, so the
/// tunnel needs no addresses of its own.
#[must_use]
pub fn vtep_address(pod_cidr: Ipv4Cidr) -> Ipv4Addr {
    pod_cidr.network()
}

/// A node's VTEP MAC, derived from its address so every peer knows it without asking:
/// locally administered, unicast, `0e:53` then the four address bytes.
#[must_use]
pub fn vtep_mac(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x0e, 0x53, a, b, c, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().expect("a CIDR")
    }

    fn local(mode: Mode) -> Local {
        Local {
            name: "a".into(),
            address: Ipv4Addr::new(192, 168, 50, 20),
            link_subnets: vec![cidr("192.168.50.0/24")],
            pod_cidr: cidr("10.244.0.0/24"),
            mode,
        }
    }

    fn peer(name: &str, address: [u8; 4], pod_cidr: &str) -> Peer {
        Peer {
            name: name.into(),
            address: Ipv4Addr::from(address),
            pod_cidr: cidr(pod_cidr),
        }
    }

    fn peers() -> Vec<Peer> {
        vec![
            peer("a", [192, 168, 50, 20], "10.244.0.0/24"),
            peer("b", [192, 168, 50, 21], "10.244.1.0/24"),
            peer("c", [192, 168, 60, 22], "10.244.2.0/24"),
        ]
    }

    #[test]
    fn auto_routes_link_peers_directly_and_tunnels_to_the_rest() {
        let p = plan(&local(Mode::Auto), &peers());
        assert_eq!(p.routes.len(), 2, "the node itself gets no route");
        assert_eq!(
            p.routes[&cidr("10.244.1.0/24")],
            Route::Direct {
                via: Ipv4Addr::new(192, 168, 50, 21)
            }
        );
        assert_eq!(
            p.routes[&cidr("10.244.2.0/24")],
            Route::Tunnel {
                remote: Ipv4Addr::new(192, 168, 60, 22),
                vtep: Ipv4Addr::new(10, 244, 2, 0),
                mac: [0x0e, 0x53, 192, 168, 60, 22],
            }
        );
        assert!(p.needs_tunnel());
        assert!(p.unreachable.is_empty());
    }

    #[test]
    fn vxlan_mode_tunnels_even_to_link_peers() {
        let p = plan(&local(Mode::Vxlan), &peers());
        assert!(p.routes.values().all(|r| matches!(r, Route::Tunnel { .. })));
        assert_eq!(p.routes.len(), 2);
    }

    #[test]
    fn host_gw_mode_leaves_off_link_peers_unreachable_and_says_why() {
        let p = plan(&local(Mode::HostGw), &peers());
        assert_eq!(p.routes.len(), 1);
        assert!(!p.needs_tunnel());
        assert_eq!(p.unreachable.len(), 1);
        assert_eq!(p.unreachable[0].0, "c");
        assert!(
            p.unreachable[0].1.contains("host-gw"),
            "{:?}",
            p.unreachable
        );
    }

    #[test]
    fn overlapping_pod_cidrs_get_no_route() {
        let mut all = peers();
        all.push(peer("d", [192, 168, 50, 23], "10.244.1.0/25"));
        all.push(peer("e", [192, 168, 50, 24], "10.244.0.0/16"));
        let p = plan(&local(Mode::Auto), &all);
        assert_eq!(p.routes.len(), 2, "{p:?}");
        let names: Vec<&str> = p.unreachable.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["d", "e"]);
    }

    #[test]
    fn vtep_mac_is_unicast_locally_administered_and_unique_per_address() {
        let mac = vtep_mac(Ipv4Addr::new(192, 168, 60, 22));
        assert_eq!(mac[0] & 1, 0, "unicast");
        assert_eq!(mac[0] & 2, 2, "locally administered");
        assert_ne!(mac, vtep_mac(Ipv4Addr::new(192, 168, 60, 23)));
    }

    #[test]
    fn modes_parse_from_their_flag_spelling() {
        for m in [Mode::Auto, Mode::HostGw, Mode::Vxlan] {
            assert_eq!(m.to_string().parse::<Mode>(), Ok(m));
        }
        assert!("gre".parse::<Mode>().is_err());
    }
}
