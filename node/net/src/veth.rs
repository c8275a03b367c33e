//! A pod's veth pair: the host side on the node bridge, the other side moved into the pod's
//! network namespace as `eth0` with the pod's address and a default route via the gateway.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::PathBuf,
};

use rtnetlink::{Handle, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::{
    link::{self, LinkError},
    sandbox::{self, NamespaceError},
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

/// The pod side's name while it is still in the host namespace, before it becomes `eth0`.
fn peer_name(uid: &str) -> String {
    format!("vpod{}", short_hash(uid))
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

/// Creates `uid`'s veth pair (replacing a leftover one), attaches the host side to the
/// bridge with index `bridge` and configures the pod side inside its namespace.
///
/// # Errors
/// If a netlink request fails or the namespace cannot be entered.
pub(super) async fn create(
    handle: &Handle,
    uid: &str,
    bridge: u32,
    pod: PodSide,
) -> Result<String, VethError> {
    let host = host_name(uid);
    let peer = peer_name(uid);
    link::delete(handle, &host).await?;
    link::delete(handle, &peer).await?;
    let mut pair = LinkVeth::new(&host, &peer);
    if let Some(mtu) = pod.mtu {
        pair = pair.mtu(mtu);
    }
    handle
        .link()
        .add(pair.build())
        .execute()
        .await
        .map_err(LinkError::request(format!(
            "creating veth pair {host}/{peer}"
        )))?;
    let netns = std::fs::File::open(&pod.netns).map_err(|source| NamespaceError::File {
        path: pod.netns.clone(),
        source,
    })?;
    let moved = handle
        .link()
        .set(
            LinkUnspec::new_with_name(&peer)
                .setns_by_fd(netns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(LinkError::request(format!(
            "moving {peer} into {}",
            pod.netns.display()
        )));
    drop(netns);
    if let Err(e) = moved {
        link::delete(handle, &host).await?;
        return Err(e.into());
    }
    let attached = async {
        let index = link::index_of(handle, &host)
            .await?
            .ok_or_else(|| LinkError::Request {
                what: format!("veth {host} vanished after creation"),
                source: rtnetlink::Error::RequestFailed,
            })?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(LinkError::request(format!(
                "attaching {host} to the bridge"
            )))?;
        // A pod reaching itself through a Service it backs (hairpin): with the bridge's
        // netfilter hooks, the DNATed frame is bridged back out of the port it came in on,
        // which a bridge port does only in hairpin mode (kubelet's `hairpin-veth`).
        handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .map_err(LinkError::request(format!(
                "setting hairpin mode on {host}"
            )))
    }
    .await;
    let configured = match attached {
        Ok(()) => {
            let netns = pod.netns.clone();
            sandbox::in_netns(netns, move || configure_pod_side(peer, pod)).await
        }
        Err(e) => Ok(Err(e)),
    };
    match configured {
        Ok(Ok(())) => {
            debug!(uid, veth = host, "veth pair ready");
            Ok(host)
        }
        Ok(Err(e)) => {
            link::delete(handle, &host).await?;
            Err(e.into())
        }
        Err(e) => {
            link::delete(handle, &host).await?;
            Err(e.into())
        }
    }
}

/// Inside the pod's namespace: renames the peer to `eth0`, brings it and loopback up, adds
/// the pod's address and the default route.
async fn configure_pod_side(peer: String, pod: PodSide) -> Result<(), LinkError> {
    let handle = link::connect()?;
    let lo = link::index_of(&handle, "lo")
        .await?
        .ok_or_else(|| LinkError::Request {
            what: "pod namespace has no loopback".into(),
            source: rtnetlink::Error::RequestFailed,
        })?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(LinkError::request("bringing loopback up"))?;
    let index = link::index_of(&handle, &peer)
        .await?
        .ok_or_else(|| LinkError::Request {
            what: format!("{peer} did not arrive in the pod namespace"),
            source: rtnetlink::Error::RequestFailed,
        })?;
    let mut rename = LinkUnspec::new_with_index(index).name(POD_IFNAME);
    if let Some(mtu) = pod.mtu {
        rename = rename.mtu(mtu);
    }
    handle
        .link()
        .set(rename.build())
        .execute()
        .await
        .map_err(LinkError::request(format!(
            "renaming {peer} to {POD_IFNAME}"
        )))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(LinkError::request(format!("bringing {POD_IFNAME} up")))?;
    handle
        .address()
        .add(index, IpAddr::V4(pod.ip), pod.prefix)
        .replace()
        .execute()
        .await
        .map_err(LinkError::request(format!(
            "adding {}/{} to {POD_IFNAME}",
            pod.ip, pod.prefix
        )))?;
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
        )))?;
    Ok(())
}

/// Deletes `uid`'s veth pair if it exists (the pod side goes with it).
///
/// # Errors
/// If a netlink request fails.
pub(super) async fn remove(handle: &Handle, uid: &str) -> Result<(), VethError> {
    link::delete(handle, &host_name(uid)).await?;
    link::delete(handle, &peer_name(uid)).await?;
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
        assert_ne!(host_name("uid-1"), peer_name("uid-1"));
        assert!(peer_name("uid-1").len() <= 15);
    }
}
