//! The node's pod bridge: every pod's host-side veth hangs off it and its address is the
//! pods' default gateway; plus IPv4 forwarding so pod traffic can leave the node.

use std::net::{IpAddr, Ipv4Addr};

use rtnetlink::{Handle, LinkBridge, LinkUnspec};
use sha2::{Digest as _, Sha256};
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
        let mut bridge = LinkBridge::new(name).address(mac(name).to_vec());
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

/// The bridge's MAC address: locally administered, unicast, derived from its name.
///
/// Set explicitly because a bridge with a kernel-chosen address takes the lowest address of
/// its ports, so the gateway's MAC would change under the pods' ARP caches whenever a veth
/// with a lower address joined; a set address stays put.
#[must_use]
pub(super) fn mac(name: &str) -> [u8; 6] {
    let hash = Sha256::digest(name.as_bytes());
    [0x02, hash[0], hash[1], hash[2], hash[3], hash[4]]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_mac_is_stable_unicast_and_locally_administered() {
        let addr = mac("skiff0");
        assert_eq!(addr, mac("skiff0"));
        assert_ne!(addr, mac("skiff1"));
        assert_eq!(addr[0] & 0b01, 0, "unicast");
        assert_eq!(addr[0] & 0b10, 0b10, "locally administered");
    }
}
