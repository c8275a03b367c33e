//! The node's pod bridge: every pod's host-side veth hangs off it and its address is the
//! pods' default gateway; plus IPv4 forwarding so pod traffic can leave the node.

use std::net::{IpAddr, Ipv4Addr};

use rtnetlink::{Handle, LinkBridge, LinkUnspec};
use tracing::info;

use super::link::{self, LinkError};

/// Where the kernel exposes IPv4 forwarding for the caller's network namespace.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Errors setting up or removing the bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A netlink request failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// IPv4 forwarding could not be switched on.
    #[error("enabling ipv4 forwarding: {0}")]
    Forwarding(#[source] std::io::Error),
}

/// Creates bridge `name` unless it exists, brings it up and gives it `gateway/prefix`.
/// Returns the bridge's link index.
///
/// # Errors
/// If a netlink request fails.
pub(super) async fn ensure(
    handle: &Handle,
    name: &str,
    (gateway, prefix): (Ipv4Addr, u8),
    mtu: Option<u32>,
) -> Result<u32, BridgeError> {
    let index = if let Some(index) = link::index_of(handle, name).await? {
        index
    } else {
        let mut bridge = LinkBridge::new(name);
        if let Some(mtu) = mtu {
            bridge = bridge.mtu(mtu);
        }
        handle
            .link()
            .add(bridge.build())
            .execute()
            .await
            .map_err(LinkError::request(format!("creating bridge {name}")))?;
        info!(bridge = name, "created pod bridge");
        link::index_of(handle, name)
            .await?
            .ok_or_else(|| LinkError::Request {
                what: format!("bridge {name} vanished after creation"),
                source: rtnetlink::Error::RequestFailed,
            })?
    };
    let mut up = LinkUnspec::new_with_index(index).up();
    if let Some(mtu) = mtu {
        up = up.mtu(mtu);
    }
    handle
        .link()
        .set(up.build())
        .execute()
        .await
        .map_err(LinkError::request(format!("bringing bridge {name} up")))?;
    handle
        .address()
        .add(index, IpAddr::V4(gateway), prefix)
        .replace()
        .execute()
        .await
        .map_err(LinkError::request(format!(
            "adding {gateway}/{prefix} to bridge {name}"
        )))?;
    Ok(index)
}

/// Deletes bridge `name` if it exists.
///
/// # Errors
/// If a netlink request fails.
pub(super) async fn remove(handle: &Handle, name: &str) -> Result<(), BridgeError> {
    if link::delete(handle, name).await? {
        info!(bridge = name, "deleted pod bridge");
    }
    Ok(())
}

/// Turns IPv4 forwarding on in the caller's network namespace.
///
/// # Errors
/// If the sysctl cannot be written.
pub(super) fn enable_forwarding() -> Result<(), BridgeError> {
    if std::fs::read_to_string(IP_FORWARD).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, "1").map_err(BridgeError::Forwarding)
}
