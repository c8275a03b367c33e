//! The pod network across nodes: the node's address and uplink chosen at start, then a
//! watch of every Node keeping routes (or tunnel entries) to the other nodes' pod CIDRs and
//! the set of pod networks that egress masquerade leaves alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use skiff_node_net::{
    masquerade,
    overlay::{self, Netlink, OverlayError, PeerLinks, TunnelSpec},
    peers::{self, Local, Mode, Peer, VXLAN_OVERHEAD},
    uplink::{self, Choice, Uplink, UplinkError},
};
use skiff_types::Ipv4Cidr;

/// A full resync even without events, so a route someone deleted comes back.
const RESYNC_EVERY: Duration = Duration::from_mins(1);
/// Events arriving this close together are applied in one sync.
const SETTLE: Duration = Duration::from_millis(50);
/// Pause after a failed sync.
const RETRY: Duration = Duration::from_secs(5);

/// How the node joins the pod network, decided at start.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// The node's address (its `InternalIP`).
    pub address: Ipv4Addr,
    /// The uplink, when the node has one other nodes can reach (not loopback).
    pub uplink: Option<Uplink>,
    /// The backend choice.
    pub mode: Mode,
}

impl PodNetwork {
    /// Chooses the node's address and uplink: `--pod-network-iface`, else the interface
    /// holding `--node-ip`, else the default route's. A node with neither a default route
    /// nor flags runs alone on loopback, and says so.
    ///
    /// # Errors
    /// When a flag names an interface or address this host does not have.
    pub async fn choose(
        node_ip: Option<Ipv4Addr>,
        iface: Option<String>,
        mode: Mode,
    ) -> Result<Self, UplinkError> {
        let choice = match (iface, node_ip) {
            (Some(name), ip) => Choice::Interface(name, ip),
            (None, Some(ip)) => Choice::Address(ip),
            (None, None) => Choice::DefaultRoute,
        };
        let found = match uplink::find(&choice).await {
            Ok(found) => found,
            Err(UplinkError::NoDefaultRoute) => {
                tracing::warn!(
                    "no default route: the node's address is 127.0.0.1, so no other host can \
                     reach it or its pods; pass --node-ip or --pod-network-iface to join a \
                     cluster of several hosts"
                );
                return Ok(Self {
                    address: Ipv4Addr::LOCALHOST,
                    uplink: None,
                    mode,
                });
            }
            Err(err) => return Err(err),
        };
        let address = found.address;
        let uplink = (!found.address.is_loopback()).then_some(found);
        if let Some(u) = &uplink {
            tracing::info!(
                %address, uplink = %u.name, mtu = u.mtu, %mode,
                "node address and pod network interface chosen"
            );
        } else {
            tracing::info!(%address, "node on loopback: pods reach only this node");
        }
        Ok(Self {
            address,
            uplink,
            mode,
        })
    }

    /// The MTU of pod interfaces: lowered by the tunnel's overhead whenever the tunnel may
    /// carry their packets, so no pod sends what the tunnel must fragment.
    #[must_use]
    pub fn pod_mtu(&self) -> Option<u32> {
        let uplink = self.uplink.as_ref()?;
        match self.mode {
            Mode::HostGw => None,
            Mode::Auto | Mode::Vxlan => Some(uplink.mtu.saturating_sub(VXLAN_OVERHEAD)),
        }
    }
}

/// A peer as a Node object describes it, if it has what a route needs: a pod CIDR and a
/// reachable IPv4 `InternalIP` (simulated nodes report loopback addresses and get none).
fn peer(node: &Node) -> Option<Peer> {
    let name = node.metadata.name.clone()?;
    let pod_cidr: Ipv4Cidr = node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
    let address: Ipv4Addr = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    (!address.is_loopback() && !address.is_unspecified()).then_some(Peer {
        name,
        address,
        pod_cidr,
    })
}

/// The controller's state between syncs.
struct Peers {
    local: Local,
    tunnel: TunnelSpec,
    bridge: String,
    /// Every Node seen, by name, with what it offers a route.
    nodes: BTreeMap<String, Option<Peer>>,
    /// Peer pod CIDRs now in the masquerade exemption set.
    exempt: BTreeSet<Ipv4Cidr>,
    /// What was last said about peers without a route, so it is said once per change.
    unreachable: Vec<(String, String)>,
}

impl Peers {
    async fn sync(&mut self, links: &dyn PeerLinks) -> Result<(), OverlayError> {
        let all: Vec<Peer> = self.nodes.values().flatten().cloned().collect();
        let plan = peers::plan(&self.local, &all);
        if plan.unreachable != self.unreachable {
            for (peer, why) in &plan.unreachable {
                tracing::warn!(%peer, %why, "no route to a node's pods");
            }
            self.unreachable.clone_from(&plan.unreachable);
        }
        let changes = overlay::sync(links, &plan, &self.tunnel).await?;
        if changes.any() {
            tracing::info!(
                peers = plan.routes.len(),
                routes_set = changes.routes_set,
                routes_removed = changes.routes_removed,
                tunnel_entries_set = changes.entries_set,
                tunnel_entries_removed = changes.entries_removed,
                "pod network routes synced"
            );
        }
        let wanted: BTreeSet<Ipv4Cidr> = plan.routes.keys().copied().collect();
        let add: Vec<Ipv4Cidr> = wanted.difference(&self.exempt).copied().collect();
        let remove: Vec<Ipv4Cidr> = self.exempt.difference(&wanted).copied().collect();
        // `nft` runs as a child process, which must start in this node's namespace: a
        // blocking call on this thread, as the masquerade setup does.
        match masquerade::change_pod_networks(&self.bridge, &add, &remove) {
            Ok(()) => self.exempt = wanted,
            Err(err) => tracing::warn!(%err, "masquerade exemptions not updated"),
        }
        Ok(())
    }
}

/// Keeps the routes to other nodes' pods equal to the Nodes in the API until dropped.
/// Without an uplink (a node on loopback) there is nothing to route and it returns at once.
pub async fn run(
    client: Client,
    name: String,
    network: PodNetwork,
    pod_cidr: Ipv4Cidr,
    bridge: String,
) {
    let Some(uplink) = network.uplink else {
        return;
    };
    let links = match Netlink::connect() {
        Ok(l) => l,
        Err(err) => {
            tracing::error!(%err, "pod network across nodes is off: no netlink socket");
            return;
        }
    };
    // What an earlier run left in the set is the baseline, so the first sync removes the
    // pod CIDRs of nodes deleted meanwhile; until then they keep the restarted node's
    // pods' traffic to its peers unmasqueraded.
    let exempt = masquerade::pod_networks(&bridge)
        .into_iter()
        .filter(|cidr| *cidr != pod_cidr)
        .collect();
    let mut state = Peers {
        local: Local {
            name,
            address: network.address,
            link_subnets: uplink.subnets.clone(),
            pod_cidr,
            mode: network.mode,
        },
        tunnel: TunnelSpec {
            local: network.address,
            uplink: uplink.name.clone(),
            pod_cidr,
            mtu: uplink.mtu.saturating_sub(VXLAN_OVERHEAD),
        },
        bridge,
        nodes: BTreeMap::new(),
        exempt,
        unreachable: Vec::new(),
    };
    let mut events = std::pin::pin!(
        watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff()
    );
    let mut synced = false;
    let mut dirty = false;
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    let mut listing: Option<BTreeMap<String, Option<Peer>>> = None;
    loop {
        let settle = tokio::time::sleep(if dirty { SETTLE } else { Duration::MAX });
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return };
                match event {
                    Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
                    Ok(watcher::Event::InitApply(node)) => {
                        if let (Some(list), Some(n)) = (listing.as_mut(), node.metadata.name.clone()) {
                            list.insert(n, peer(&node));
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(list) = listing.take() {
                            // A relist replaces what was known: nodes deleted while the watch
                            // was down drop out here.
                            state.nodes = list;
                            dirty = true;
                            synced = true;
                        }
                    }
                    Ok(watcher::Event::Apply(node)) => {
                        if let Some(n) = node.metadata.name.clone() {
                            let p = peer(&node);
                            if state.nodes.get(&n) != Some(&p) {
                                state.nodes.insert(n, p);
                                dirty = synced;
                            }
                        }
                    }
                    Ok(watcher::Event::Delete(node)) => {
                        if let Some(n) = node.metadata.name.as_deref()
                            && state.nodes.remove(n).is_some()
                        {
                            dirty = synced;
                        }
                    }
                    Err(err) => tracing::warn!(%err, "node watch (pod network)"),
                }
            }
            () = settle => {
                dirty = false;
                if let Err(err) = state.sync(&links).await {
                    tracing::warn!(%err, "pod network routes not synced; trying again");
                    tokio::time::sleep(RETRY).await;
                    dirty = true;
                }
            }
            _ = resync.tick(), if synced => dirty = true,
        }
    }
}

/// Removes the routes to other nodes and the tunnel (node shutdown with clean-up).
pub async fn remove() {
    match Netlink::connect() {
        Ok(links) => {
            if let Err(err) = overlay::remove_all(&links).await {
                tracing::warn!(%err, "pod network routes not removed");
            }
        }
        Err(err) => tracing::warn!(%err, "pod network routes not removed"),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    use super::*;

    fn node(name: &str, address: &str, cidr: Option<&str>) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_owned),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: name.into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: address.into(),
                    },
                ]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_node_offers_a_route_only_with_a_pod_cidr_and_a_reachable_address() {
        let p = peer(&node("b", "192.168.50.21", Some("10.244.1.0/24"))).unwrap();
        assert_eq!(p.address, Ipv4Addr::new(192, 168, 50, 21));
        assert_eq!(p.pod_cidr.to_string(), "10.244.1.0/24");
        assert!(peer(&node("b", "192.168.50.21", None)).is_none());
        assert!(peer(&node("sim-1", "127.64.0.2", Some("10.244.2.0/24"))).is_none());
        assert!(peer(&node("b", "not-an-ip", Some("10.244.1.0/24"))).is_none());
    }

    #[test]
    fn pods_get_the_tunnel_mtu_unless_routes_are_direct_only() {
        let uplink = Uplink {
            name: "eth0".into(),
            mtu: 1500,
            address: Ipv4Addr::new(192, 168, 50, 20),
            subnets: Vec::new(),
        };
        let net = |mode| PodNetwork {
            address: uplink.address,
            uplink: Some(uplink.clone()),
            mode,
        };
        assert_eq!(net(Mode::Auto).pod_mtu(), Some(1450));
        assert_eq!(net(Mode::Vxlan).pod_mtu(), Some(1450));
        assert_eq!(net(Mode::HostGw).pod_mtu(), None);
        let alone = PodNetwork {
            address: Ipv4Addr::LOCALHOST,
            uplink: None,
            mode: Mode::Auto,
        };
        assert_eq!(alone.pod_mtu(), None);
    }
}
