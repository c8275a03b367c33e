//! A pod's veth pair: the host side on the node bridge, the other side made inside the pod's
//! network namespace as `eth0` with the pod's address and a default route via the gateway.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::PathBuf,
};

use netlink_packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::{
    link::{self, LinkError},
    sandbox::NamespaceError,
};

/// The name of the pod side inside its namespace.
pub const POD_IFNAME: &str = "eth0";

/// Errors creating or deleting a pod's veth pair.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    /// A netlink request failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The pod's network namespace could not be opened or entered.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
}

/// The host-side name of `uid`'s veth: `veth` and 8 hex digits of the uid's SHA-256, stable
/// across restarts and within the kernel's 15-byte limit.
#[must_use]
pub fn host_name(uid: &str) -> String {
    format!("veth{}", short_hash(uid))
}

fn short_hash(uid: &str) -> String {
    hex::encode(&Sha256::digest(uid.as_bytes())[..4])
}

/// What the pod side gets inside the namespace.
#[derive(Clone, Debug)]
pub(super) struct PodSide {
    /// The pod's network namespace file.
    pub netns: PathBuf,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The pod range's prefix length.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: Ipv4Addr,
    /// The MTU, if not the kernel default.
    pub mtu: Option<u32>,
}

/// Creates the veth pair whose host side is `host` (replacing a leftover one of that name
/// unless the name is `fresh`, never used before) with one request: the host side up on
/// the bridge with index `bridge`, the pod side made inside the pod's namespace as `eth0`. Then hairpin mode on the host side and, through `pod_handle` (an rtnetlink handle
/// inside the pod's namespace), loopback and `eth0` up, the pod's address and default route.
///
/// Making the pod side where it belongs, under its final name, spares moving it between
/// namespaces (which waits for an RCU grace period under the rtnl lock) and renaming it:
/// with many pods starting at once, every pod waits for that lock.
///
/// # Errors
/// If a netlink request fails or the namespace cannot be opened.
pub(super) async fn create(
    handle: &Handle,
    pod_handle: &Handle,
    (host, fresh): (String, bool),
    bridge: u32,
    pod: PodSide,
) -> Result<String, VethError> {
    if !fresh {
        link::delete(handle, &host).await?;
    }
    let netns = std::fs::File::open(&pod.netns).map_err(|source| NamespaceError::File {
        path: pod.netns.clone(),
        source,
    })?;
    // The pod side cannot come up in this request: the kernel opens it before it links
    // the pair (ENOTCONN); it comes up with its address below.
    let mut peer = LinkUnspec::new_with_name(POD_IFNAME).setns_by_fd(netns.as_raw_fd());
    let mut pair = LinkVeth::new(&host, POD_IFNAME).controller(bridge).up();
    if let Some(mtu) = pod.mtu {
        peer = peer.mtu(mtu);
        pair = pair.mtu(mtu);
    }
    let pair = pair.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
    handle
        .link()
        .add(pair.build())
        .execute()
        .await
        .map_err(LinkError::request(format!(
            "creating veth pair {host}/{POD_IFNAME} in {}",
            pod.netns.display()
        )))?;
    drop(netns);
    let configured = async {
        // A pod reaching itself through a Service it backs (hairpin): with the bridge's
        // netfilter hooks, the DNATed frame is bridged back out of the port it came in on,
        // which a bridge port does only in hairpin mode (kubelet's `hairpin-veth`).
        let index = link::index_of(handle, &host)
            .await?
            .ok_or_else(|| LinkError::Request {
                what: format!("veth {host} vanished after creation"),
                source: rtnetlink::Error::RequestFailed,
            })?;
        handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .map_err(LinkError::request(format!(
                "setting hairpin mode on {host}"
            )))?;
        configure_pod_side(pod_handle, &pod).await
    }
    .await;
    match configured {
        Ok(()) => {
            debug!(veth = host, "veth pair ready");
            Ok(host)
        }
        Err(e) => {
            link::delete(handle, &host).await?;
            Err(e.into())
        }
    }
}

/// Inside the pod's namespace: loopback and `eth0` up, the pod's address on `eth0` and the
/// default route. The requests go out together; the kernel handles one socket's requests in
/// order, so the route finds `eth0` up with the address's subnet.
async fn configure_pod_side(handle: &Handle, pod: &PodSide) -> Result<(), LinkError> {
    let index = link::index_of(handle, POD_IFNAME)
        .await?
        .ok_or_else(|| LinkError::Request {
            what: format!("{POD_IFNAME} did not arrive in the pod namespace"),
            source: rtnetlink::Error::RequestFailed,
        })?;
    let lo = async {
        handle
            .link()
            .set(LinkUnspec::new_with_name("lo").up().build())
            .execute()
            .await
            .map_err(LinkError::request("bringing loopback up"))
    };
    let up = async {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(LinkError::request(format!("bringing {POD_IFNAME} up")))
    };
    let address = async {
        handle
            .address()
            .add(index, IpAddr::V4(pod.ip), pod.prefix)
            .replace()
            .execute()
            .await
            .map_err(LinkError::request(format!(
                "adding {}/{} to {POD_IFNAME}",
                pod.ip, pod.prefix
            )))
    };
    let route = async {
        handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(pod.gateway)
                    .output_interface(index)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(LinkError::request(format!(
                "adding default route via {}",
                pod.gateway
            )))
    };
    let (lo, up, address, route) = futures::join!(lo, up, address, route);
    lo.and(up).and(address).and(route)
}

/// Deletes the veth pair whose host side is `host` if it exists (the pod side goes with
/// it).
///
/// # Errors
/// If a netlink request fails.
pub(super) async fn remove(handle: &Handle, host: &str) -> Result<(), VethError> {
    link::delete(handle, host).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_is_veth_and_eight_hex_digits_of_the_uid_hash() {
        let name = host_name("6f1c3e1a-2b7d-4c55-9a0e-1d2f3a4b5c6d");
        assert_eq!(name.len(), 12);
        assert!(name.starts_with("veth"));
        assert!(name[4..].chars().all(|c| c.is_ascii_hexdigit()));
        // SHA-256("a") starts with ca978112.
        assert_eq!(host_name("a"), "vethca978112");
    }

    #[test]
    fn host_name_is_stable_and_differs_between_uids() {
        assert_eq!(host_name("uid-1"), host_name("uid-1"));
        assert_ne!(host_name("uid-1"), host_name("uid-2"));
    }
}
