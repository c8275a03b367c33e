//! The interface that carries the node's pod traffic to other nodes, and the node's address
//! on it: given by name (`--pod-network-iface`), found from an address (`--node-ip`), or the
//! interface of the default route, as kubelet and flannel choose.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::LinkAttribute,
    route::{RouteAttribute, RouteMessage},
};
use rtnetlink::{Handle, RouteMessageBuilder};
use skiff_types::Ipv4Cidr;

use crate::link::{self, LinkError};

/// Errors finding the uplink.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// A netlink request failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// No default route to take the interface from.
    #[error(
        "no default route to choose the node's address from: pass --node-ip or \
         --pod-network-iface"
    )]
    NoDefaultRoute,
    /// The named interface does not exist.
    #[error("interface {0} does not exist")]
    NoInterface(String),
    /// The interface has no IPv4 address.
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    /// No interface holds the given address.
    #[error("no interface holds {0} (--node-ip must be one of this host's addresses)")]
    AddressNotLocal(Ipv4Addr),
}

/// How the uplink is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The interface of this name, with its first IPv4 address (or the given one).
    Interface(String, Option<Ipv4Addr>),
    /// The interface that holds this address.
    Address(Ipv4Addr),
    /// The interface of the default route and its preferred source (or first) address.
    DefaultRoute,
}

/// The interface pod traffic to other nodes leaves through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Its name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// The node's address on it.
    pub address: Ipv4Addr,
    /// The subnets directly connected on it (peers inside are reached without a router).
    pub subnets: Vec<Ipv4Cidr>,
}

/// Finds the uplink in the caller's network namespace.
///
/// # Errors
/// If the choice names nothing that exists, or netlink fails.
pub async fn find(choice: &Choice) -> Result<Uplink, UplinkError> {
    let handle = link::connect()?;
    let (index, preferred) = match choice {
        Choice::Interface(name, address) => (
            link::index_of(&handle, name)
                .await?
                .ok_or_else(|| UplinkError::NoInterface(name.clone()))?,
            *address,
        ),
        Choice::Address(address) => (
            addresses(&handle, None)
                .await?
                .into_iter()
                .find(|(_, a, _)| a == address)
                .map(|(i, _, _)| i)
                .ok_or(UplinkError::AddressNotLocal(*address))?,
            Some(*address),
        ),
        Choice::DefaultRoute => default_route(&handle).await?,
    };
    let (name, mtu) = describe(&handle, index).await?;
    let on_link = addresses(&handle, Some(index)).await?;
    let address = preferred
        .or_else(|| on_link.first().map(|(_, a, _)| *a))
        .ok_or_else(|| UplinkError::NoAddress(name.clone()))?;
    let subnets = on_link
        .iter()
        .filter_map(|(_, a, p)| Ipv4Cidr::containing(*a, *p).ok())
        .collect();
    Ok(Uplink {
        name,
        mtu,
        address,
        subnets,
    })
}

/// The interface and preferred source of the main table's IPv4 default route.
async fn default_route(handle: &Handle) -> Result<(u32, Option<Ipv4Addr>), UplinkError> {
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut best: Option<(u32, u32, Option<Ipv4Addr>)> = None;
    while let Some(msg) = routes
        .try_next()
        .await
        .map_err(LinkError::request("listing routes"))?
    {
        if msg.header.destination_prefix_length != 0 || msg.header.table != 254 {
            continue;
        }
        if let Some((index, metric, source)) = route_exit(&msg)
            && best.is_none_or(|(_, m, _)| metric < m)
        {
            best = Some((index, metric, source));
        }
    }
    best.map(|(i, _, s)| (i, s))
        .ok_or(UplinkError::NoDefaultRoute)
}

fn route_exit(msg: &RouteMessage) -> Option<(u32, u32, Option<Ipv4Addr>)> {
    let mut index = None;
    let mut metric = 0;
    let mut source = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Oif(i) => index = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::PrefSource(netlink_packet_route::route::RouteAddress::Inet(a)) => {
                source = Some(*a);
            }
            _ => {}
        }
    }
    index.map(|i| (i, metric, source))
}

/// The IPv4 addresses (interface index, address, prefix) on one interface or all.
async fn addresses(
    handle: &Handle,
    index: Option<u32>,
) -> Result<Vec<(u32, Ipv4Addr, u8)>, UplinkError> {
    let mut req = handle.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let mut stream = req.execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(LinkError::request("listing addresses"))?
    {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(a)) = attr {
                out.push((msg.header.index, *a, msg.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// The name and MTU of interface `index`.
async fn describe(handle: &Handle, index: u32) -> Result<(String, u32), UplinkError> {
    let msg = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(LinkError::request(format!("looking up interface {index}")))?
        .ok_or_else(|| UplinkError::NoInterface(index.to_string()))?;
    let mut name = index.to_string();
    let mut mtu = 1500;
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n,
            LinkAttribute::Mtu(m) => mtu = m,
            _ => {}
        }
    }
    Ok((name, mtu))
}
