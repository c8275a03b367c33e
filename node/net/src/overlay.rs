//! Puts a [`Plan`](crate::peers::Plan) into the kernel: routes to peer pod CIDRs tagged
//! with skiff's route protocol (so stale ones are found after a restart and nothing else is
//! ever touched), and the VXLAN device with a neighbour and a forwarding entry per tunnelled
//! peer. Behind a trait so the reconciliation is tested without root.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use async_trait::async_trait;
use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    link::{LinkAttribute, LinkFlags},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteProtocol, RouteScope},
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use skiff_types::Ipv4Cidr;
use tracing::{debug, info};

use crate::{
    link::{self, LinkError},
    peers::{Plan, Route, VXLAN_DEVICE, VXLAN_PORT, VXLAN_VNI, vtep_address, vtep_mac},
};

/// The route protocol number skiff's peer routes carry (`ip route ... proto 83`), so they
/// are told apart from every other route in the table.
pub const ROUTE_PROTOCOL: u8 = 83;

/// Errors of the overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A netlink request failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The interface that carries pod traffic does not exist.
    #[error("pod network interface {0} does not exist")]
    NoUplink(String),
}

/// The tunnel's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// The node's address: the tunnel's local end.
    pub local: Ipv4Addr,
    /// The interface that carries the tunnel's packets.
    pub uplink: String,
    /// The node's pod CIDR (its network address is the node's VTEP address).
    pub pod_cidr: Ipv4Cidr,
    /// The tunnel's MTU.
    pub mtu: u32,
}

/// A route of skiff's found in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// Its destination.
    pub destination: Ipv4Cidr,
    /// Its next hop.
    pub gateway: Option<Ipv4Addr>,
    /// Its output interface.
    pub interface: Option<u32>,
}

/// A permanent neighbour or forwarding entry on the VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TunnelEntry {
    /// `neigh <vtep> lladdr <mac>`: the peer VTEP's MAC, so no ARP crosses the tunnel.
    Neighbour {
        /// The peer's VTEP address.
        vtep: Ipv4Addr,
        /// Its MAC.
        mac: [u8; 6],
    },
    /// `fdb <mac> dst <remote>`: where frames for that MAC are sent.
    Forward {
        /// The peer VTEP's MAC.
        mac: [u8; 6],
        /// The peer's address.
        remote: Ipv4Addr,
    },
}

/// The kernel operations the overlay needs.
#[async_trait]
pub trait PeerLinks: Send + Sync {
    /// The index of interface `name`, if it exists.
    async fn index(&self, name: &str) -> Result<Option<u32>, OverlayError>;
    /// Creates (or fixes) the VXLAN device and brings it up; returns its index.
    async fn ensure_tunnel(&self, spec: &TunnelSpec) -> Result<u32, OverlayError>;
    /// Deletes the VXLAN device if it exists (its routes and entries go with it).
    async fn remove_tunnel(&self) -> Result<(), OverlayError>;
    /// skiff's routes in the main table.
    async fn routes(&self) -> Result<Vec<Installed>, OverlayError>;
    /// Adds or replaces a route (`onlink` for tunnel routes).
    async fn replace_route(
        &self,
        destination: Ipv4Cidr,
        gateway: Ipv4Addr,
        interface: u32,
        onlink: bool,
    ) -> Result<(), OverlayError>;
    /// Deletes a route of skiff's.
    async fn delete_route(&self, route: &Installed) -> Result<(), OverlayError>;
    /// The permanent entries on the VXLAN device with index `tunnel`.
    async fn entries(&self, tunnel: u32) -> Result<Vec<TunnelEntry>, OverlayError>;
    /// Adds or replaces an entry.
    async fn replace_entry(&self, tunnel: u32, entry: TunnelEntry) -> Result<(), OverlayError>;
    /// Deletes an entry.
    async fn delete_entry(&self, tunnel: u32, entry: TunnelEntry) -> Result<(), OverlayError>;
}

/// What one [`sync`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Routes added or replaced.
    pub routes_set: usize,
    /// Routes removed.
    pub routes_removed: usize,
    /// Tunnel entries added or replaced.
    pub entries_set: usize,
    /// Tunnel entries removed.
    pub entries_removed: usize,
}

impl Changes {
    /// Whether anything changed.
    #[must_use]
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// Makes the kernel hold exactly `plan`: only what differs is written, so a sync with
/// nothing new writes nothing, and a restarted node keeps every route that is still right
/// (traffic to those peers never stops) while removing those of nodes that went away.
///
/// # Errors
/// The first failing kernel operation; a later sync picks up where it stopped.
pub async fn sync(
    links: &dyn PeerLinks,
    plan: &Plan,
    tunnel: &TunnelSpec,
) -> Result<Changes, OverlayError> {
    let mut changes = Changes::default();
    let uplink = links
        .index(&tunnel.uplink)
        .await?
        .ok_or_else(|| OverlayError::NoUplink(tunnel.uplink.clone()))?;
    let tunnel_index = if plan.needs_tunnel() {
        Some(links.ensure_tunnel(tunnel).await?)
    } else {
        None
    };
    // Entries before routes: a route through the tunnel must find its neighbour.
    if let Some(index) = tunnel_index {
        let wanted: BTreeSet<TunnelEntry> = plan
            .routes
            .values()
            .filter_map(|r| match *r {
                Route::Tunnel { remote, vtep, mac } => Some([
                    TunnelEntry::Neighbour { vtep, mac },
                    TunnelEntry::Forward { mac, remote },
                ]),
                Route::Direct { .. } => None,
            })
            .flatten()
            .collect();
        let present: BTreeSet<TunnelEntry> = links.entries(index).await?.into_iter().collect();
        for entry in wanted.difference(&present) {
            links.replace_entry(index, *entry).await?;
            changes.entries_set += 1;
        }
        for entry in present.difference(&wanted) {
            links.delete_entry(index, *entry).await?;
            changes.entries_removed += 1;
        }
    }
    let wanted: BTreeMap<Ipv4Cidr, (Ipv4Addr, u32, bool)> = plan
        .routes
        .iter()
        .filter_map(|(cidr, route)| match *route {
            Route::Direct { via } => Some((*cidr, (via, uplink, false))),
            Route::Tunnel { vtep, .. } => tunnel_index.map(|t| (*cidr, (vtep, t, true))),
        })
        .collect();
    let installed = links.routes().await?;
    for route in &installed {
        let keep = wanted.get(&route.destination).is_some_and(|(gw, dev, _)| {
            route.gateway == Some(*gw) && route.interface == Some(*dev)
        });
        if !keep {
            links.delete_route(route).await?;
            changes.routes_removed += 1;
        }
    }
    for (cidr, (gateway, interface, onlink)) in &wanted {
        let present = installed.iter().any(|r| {
            r.destination == *cidr && r.gateway == Some(*gateway) && r.interface == Some(*interface)
        });
        if !present {
            links
                .replace_route(*cidr, *gateway, *interface, *onlink)
                .await?;
            changes.routes_set += 1;
        }
    }
    if tunnel_index.is_none() && links.index(VXLAN_DEVICE).await?.is_some() {
        links.remove_tunnel().await?;
    }
    Ok(changes)
}

/// Removes every route of skiff's and the VXLAN device (node shutdown with clean-up).
///
/// # Errors
/// The first failing kernel operation.
pub async fn remove_all(links: &dyn PeerLinks) -> Result<(), OverlayError> {
    for route in links.routes().await? {
        links.delete_route(&route).await?;
    }
    links.remove_tunnel().await
}

/// [`PeerLinks`] over rtnetlink in the calling thread's network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink connection in the caller's network namespace.
    ///
    /// # Errors
    /// If the socket cannot be opened.
    pub fn connect() -> Result<Self, OverlayError> {
        Ok(Self {
            handle: link::connect()?,
        })
    }
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> OverlayError {
    let wrap = LinkError::request(what);
    move |e| OverlayError::Link(wrap(e))
}

#[async_trait]
impl PeerLinks for Netlink {
    async fn index(&self, name: &str) -> Result<Option<u32>, OverlayError> {
        Ok(link::index_of(&self.handle, name).await?)
    }

    async fn ensure_tunnel(&self, spec: &TunnelSpec) -> Result<u32, OverlayError> {
        let uplink = self
            .index(&spec.uplink)
            .await?
            .ok_or_else(|| OverlayError::NoUplink(spec.uplink.clone()))?;
        let index = if let Some(index) = self.index(VXLAN_DEVICE).await? {
            index
        } else {
            self.handle
                .link()
                .add(
                    LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
                        .dev(uplink)
                        .local(spec.local)
                        .port(VXLAN_PORT)
                        .learning(false)
                        .build(),
                )
                .execute()
                .await
                .map_err(request(format!("creating {VXLAN_DEVICE}")))?;
            info!(device = VXLAN_DEVICE, local = %spec.local, uplink = %spec.uplink, "created the pod network tunnel");
            self.index(VXLAN_DEVICE)
                .await?
                .ok_or_else(|| LinkError::Request {
                    what: format!("{VXLAN_DEVICE} vanished after creation"),
                    source: rtnetlink::Error::RequestFailed,
                })?
        };
        // Only what differs is set: setting the address, even to the same value, flushes
        // the device's neighbours, and with them every tunnelled peer until the next sync.
        let mac = vtep_mac(spec.local);
        let current = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .map_err(request(format!("looking up {VXLAN_DEVICE}")))?;
        let (mut same_mac, mut same_mtu, mut up) = (false, false, false);
        if let Some(link) = current {
            up = link.header.flags.contains(LinkFlags::Up);
            for attr in &link.attributes {
                match attr {
                    LinkAttribute::Address(a) => same_mac = a.as_slice() == mac,
                    LinkAttribute::Mtu(m) => same_mtu = *m == spec.mtu,
                    _ => {}
                }
            }
        }
        if !(same_mac && same_mtu && up) {
            let mut change = LinkUnspec::new_with_index(index).up();
            if !same_mac {
                change = change.address(mac.to_vec());
            }
            if !same_mtu {
                change = change.mtu(spec.mtu);
            }
            self.handle
                .link()
                .set(change.build())
                .execute()
                .await
                .map_err(request(format!("configuring {VXLAN_DEVICE}")))?;
        }
        let vtep = vtep_address(spec.pod_cidr);
        self.handle
            .address()
            .add(index, IpAddr::V4(vtep), 32)
            .replace()
            .execute()
            .await
            .map_err(request(format!("adding {vtep}/32 to {VXLAN_DEVICE}")))?;
        Ok(index)
    }

    async fn remove_tunnel(&self) -> Result<(), OverlayError> {
        if link::delete(&self.handle, VXLAN_DEVICE).await? {
            info!(device = VXLAN_DEVICE, "deleted the pod network tunnel");
        }
        Ok(())
    }

    async fn routes(&self) -> Result<Vec<Installed>, OverlayError> {
        let mut stream = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(request("listing routes"))? {
            if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
                continue;
            }
            let mut destination = None;
            let mut gateway = None;
            let mut interface = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => destination = Some(*a),
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                    RouteAttribute::Oif(i) => interface = Some(*i),
                    _ => {}
                }
            }
            let prefix = msg.header.destination_prefix_length;
            if let Some(Ok(destination)) = destination.map(|d| Ipv4Cidr::containing(d, prefix)) {
                out.push(Installed {
                    destination,
                    gateway,
                    interface,
                });
            }
        }
        Ok(out)
    }

    async fn replace_route(
        &self,
        destination: Ipv4Cidr,
        gateway: Ipv4Addr,
        interface: u32,
        onlink: bool,
    ) -> Result<(), OverlayError> {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix())
            .gateway(gateway)
            .output_interface(interface)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .scope(RouteScope::Universe);
        if onlink {
            route = route.onlink();
        }
        self.handle
            .route()
            .add(route.build())
            .replace()
            .execute()
            .await
            .map_err(request(format!("adding route {destination} via {gateway}")))?;
        debug!(%destination, %gateway, interface, "peer route set");
        Ok(())
    }

    async fn delete_route(&self, route: &Installed) -> Result<(), OverlayError> {
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.destination.network(), route.destination.prefix())
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        if let Some(gw) = route.gateway {
            msg = msg.gateway(gw);
        }
        if let Some(i) = route.interface {
            msg = msg.output_interface(i);
        }
        match self.handle.route().del(msg.build()).execute().await {
            Ok(()) => {}
            // Gone already (its interface was deleted with it).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
            Err(e) => {
                return Err(request(format!("deleting route {}", route.destination))(e));
            }
        }
        debug!(destination = %route.destination, "peer route removed");
        Ok(())
    }

    async fn entries(&self, tunnel: u32) -> Result<Vec<TunnelEntry>, OverlayError> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Bridge] {
            let mut stream = self
                .handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute();
            while let Some(msg) = stream
                .try_next()
                .await
                .map_err(request("listing neighbours"))?
            {
                if msg.header.ifindex != tunnel || msg.header.state != NeighbourState::Permanent {
                    continue;
                }
                let mut ip = None;
                let mut mac = None;
                for attr in &msg.attributes {
                    match attr {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                            ip = Some(*a);
                        }
                        // The bridge family's destination is not decoded as an address.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                            ip = <[u8; 4]>::try_from(bytes.as_slice())
                                .ok()
                                .map(Ipv4Addr::from);
                        }
                        NeighbourAttribute::LinkLayerAddress(l) => {
                            mac = <[u8; 6]>::try_from(l.as_slice()).ok();
                        }
                        _ => {}
                    }
                }
                let entry = match (family, ip, mac) {
                    (AddressFamily::Inet, Some(vtep), Some(mac)) => {
                        TunnelEntry::Neighbour { vtep, mac }
                    }
                    (AddressFamily::Bridge, Some(remote), Some(mac)) => {
                        TunnelEntry::Forward { mac, remote }
                    }
                    _ => continue,
                };
                out.push(entry);
            }
        }
        Ok(out)
    }

    async fn replace_entry(&self, tunnel: u32, entry: TunnelEntry) -> Result<(), OverlayError> {
        let neighbours = self.handle.neighbours();
        let req = match entry {
            TunnelEntry::Neighbour { vtep, mac } => neighbours
                .add(tunnel, IpAddr::V4(vtep))
                .link_layer_address(&mac),
            TunnelEntry::Forward { mac, remote } => neighbours
                .add_bridge(tunnel, &mac)
                .destination(IpAddr::V4(remote))
                .flags(NeighbourFlags::Own),
        };
        req.state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(request(format!("adding tunnel entry {entry:?}")))
    }

    async fn delete_entry(&self, tunnel: u32, entry: TunnelEntry) -> Result<(), OverlayError> {
        let neighbours = self.handle.neighbours();
        let mut req = match entry {
            TunnelEntry::Neighbour { vtep, mac } => neighbours
                .add(tunnel, IpAddr::V4(vtep))
                .link_layer_address(&mac),
            TunnelEntry::Forward { mac, remote } => neighbours
                .add_bridge(tunnel, &mac)
                .destination(IpAddr::V4(remote))
                .flags(NeighbourFlags::Own),
        };
        // The add request's message names the entry exactly; send it as a delete.
        let message = req.message_mut().clone();
        match neighbours.del(message).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => Ok(()),
            Err(e) => Err(request(format!("deleting tunnel entry {entry:?}"))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::peers::{Local, Mode, Peer, plan};

    /// A kernel in memory: interfaces by name, routes, entries per device.
    #[derive(Debug, Default)]
    struct Fake {
        links: Mutex<BTreeMap<String, u32>>,
        routes: Mutex<Vec<Installed>>,
        entries: Mutex<BTreeSet<TunnelEntry>>,
        writes: Mutex<usize>,
    }

    impl Fake {
        fn with_uplink() -> Self {
            let f = Self::default();
            f.links.lock().unwrap().insert("eth0".into(), 2);
            f
        }

        fn wrote(&self) -> usize {
            *self.writes.lock().unwrap()
        }

        fn write(&self) {
            *self.writes.lock().unwrap() += 1;
        }
    }

    #[async_trait]
    impl PeerLinks for Fake {
        async fn index(&self, name: &str) -> Result<Option<u32>, OverlayError> {
            Ok(self.links.lock().unwrap().get(name).copied())
        }
        async fn ensure_tunnel(&self, _: &TunnelSpec) -> Result<u32, OverlayError> {
            let mut links = self.links.lock().unwrap();
            if let Some(i) = links.get(VXLAN_DEVICE) {
                return Ok(*i);
            }
            self.write();
            links.insert(VXLAN_DEVICE.into(), 9);
            Ok(9)
        }
        async fn remove_tunnel(&self) -> Result<(), OverlayError> {
            if self.links.lock().unwrap().remove(VXLAN_DEVICE).is_some() {
                self.write();
                self.routes
                    .lock()
                    .unwrap()
                    .retain(|r| r.interface != Some(9));
                self.entries.lock().unwrap().clear();
            }
            Ok(())
        }
        async fn routes(&self) -> Result<Vec<Installed>, OverlayError> {
            Ok(self.routes.lock().unwrap().clone())
        }
        async fn replace_route(
            &self,
            destination: Ipv4Cidr,
            gateway: Ipv4Addr,
            interface: u32,
            _: bool,
        ) -> Result<(), OverlayError> {
            self.write();
            let mut routes = self.routes.lock().unwrap();
            routes.retain(|r| r.destination != destination);
            routes.push(Installed {
                destination,
                gateway: Some(gateway),
                interface: Some(interface),
            });
            Ok(())
        }
        async fn delete_route(&self, route: &Installed) -> Result<(), OverlayError> {
            self.write();
            self.routes.lock().unwrap().retain(|r| r != route);
            Ok(())
        }
        async fn entries(&self, _: u32) -> Result<Vec<TunnelEntry>, OverlayError> {
            Ok(self.entries.lock().unwrap().iter().copied().collect())
        }
        async fn replace_entry(&self, _: u32, entry: TunnelEntry) -> Result<(), OverlayError> {
            self.write();
            self.entries.lock().unwrap().insert(entry);
            Ok(())
        }
        async fn delete_entry(&self, _: u32, entry: TunnelEntry) -> Result<(), OverlayError> {
            self.write();
            self.entries.lock().unwrap().remove(&entry);
            Ok(())
        }
    }

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap()
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

    fn spec() -> TunnelSpec {
        TunnelSpec {
            local: Ipv4Addr::new(192, 168, 50, 20),
            uplink: "eth0".into(),
            pod_cidr: cidr("10.244.0.0/24"),
            mtu: 1450,
        }
    }

    fn peer(name: &str, last: u8, subnet: u8, pod: &str) -> Peer {
        Peer {
            name: name.into(),
            address: Ipv4Addr::new(192, 168, subnet, last),
            pod_cidr: cidr(pod),
        }
    }

    #[tokio::test]
    async fn a_second_sync_of_the_same_plan_writes_nothing() {
        let k = Fake::with_uplink();
        let peers = [
            peer("b", 21, 50, "10.244.1.0/24"),
            peer("c", 22, 60, "10.244.2.0/24"),
        ];
        let p = plan(&local(Mode::Auto), &peers);
        let first = sync(&k, &p, &spec()).await.unwrap();
        assert_eq!(first.routes_set, 2);
        assert_eq!(
            first.entries_set, 2,
            "a neighbour and a forwarding entry for c"
        );
        let before = k.wrote();
        let second = sync(&k, &p, &spec()).await.unwrap();
        assert!(!second.any(), "{second:?}");
        assert_eq!(k.wrote(), before);
    }

    #[tokio::test]
    async fn a_peer_that_leaves_loses_its_route_and_entries_and_the_tunnel_goes_with_the_last() {
        let k = Fake::with_uplink();
        let b = peer("b", 21, 50, "10.244.1.0/24");
        let c = peer("c", 22, 60, "10.244.2.0/24");
        sync(&k, &plan(&local(Mode::Auto), &[b.clone(), c]), &spec())
            .await
            .unwrap();
        let changes = sync(&k, &plan(&local(Mode::Auto), &[b]), &spec())
            .await
            .unwrap();
        assert_eq!(changes.routes_removed, 1);
        assert!(k.links.lock().unwrap().get(VXLAN_DEVICE).is_none());
        let routes = k.routes.lock().unwrap().clone();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].destination, cidr("10.244.1.0/24"));
    }

    #[tokio::test]
    async fn stale_routes_from_before_a_restart_are_removed_and_right_ones_kept() {
        let k = Fake::with_uplink();
        k.routes.lock().unwrap().extend([
            Installed {
                destination: cidr("10.244.1.0/24"),
                gateway: Some(Ipv4Addr::new(192, 168, 50, 21)),
                interface: Some(2),
            },
            Installed {
                destination: cidr("10.244.7.0/24"),
                gateway: Some(Ipv4Addr::new(192, 168, 50, 27)),
                interface: Some(2),
            },
        ]);
        let p = plan(&local(Mode::Auto), &[peer("b", 21, 50, "10.244.1.0/24")]);
        let changes = sync(&k, &p, &spec()).await.unwrap();
        assert_eq!(changes.routes_removed, 1, "the deleted node's route");
        assert_eq!(
            changes.routes_set, 0,
            "the live peer's route stayed as it was"
        );
    }

    #[tokio::test]
    async fn a_peer_that_moves_subnet_switches_from_direct_to_tunnel() {
        let k = Fake::with_uplink();
        sync(
            &k,
            &plan(&local(Mode::Auto), &[peer("b", 21, 50, "10.244.1.0/24")]),
            &spec(),
        )
        .await
        .unwrap();
        sync(
            &k,
            &plan(&local(Mode::Auto), &[peer("b", 21, 60, "10.244.1.0/24")]),
            &spec(),
        )
        .await
        .unwrap();
        let routes = k.routes.lock().unwrap().clone();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].interface, Some(9), "through the tunnel now");
        assert_eq!(routes[0].gateway, Some(Ipv4Addr::new(10, 244, 1, 0)));
        assert_eq!(k.entries.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_missing_uplink_is_an_error_that_names_it() {
        let k = Fake::default();
        let err = sync(&k, &Plan::default(), &spec()).await.unwrap_err();
        assert!(err.to_string().contains("eth0"), "{err}");
    }
}
