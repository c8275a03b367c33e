//! `LoadBalancer` addresses without a range (k3s `ServiceLB`): a Service's ingress is the
//! address of every node that takes load-balancer traffic, and its ports are claimed on
//! those addresses, so no two such Services, and not the node endpoint, share a port.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc};

use k8s_openapi::api::core::v1::{Node, Service};

use super::{Plan, ingress, is_ours, seniority, uid};

/// The label that keeps a node out of every external load balancer (Kubernetes' own).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The node endpoint's port when a node does not report one.
const NODE_ENDPOINT_PORT: i32 = 10250;

/// Whether `node` takes load-balancer traffic: Ready, not being deleted, not excluded.
#[must_use]
pub fn serves(node: &Node) -> bool {
    let excluded = node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_LABEL));
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ready && !excluded && node.metadata.deletion_timestamp.is_none()
}

/// The address clients reach `node` at: its `ExternalIP` if it has one, else its
/// `InternalIP` (as k3s picks them).
#[must_use]
pub fn address(node: &Node) -> Option<Ipv4Addr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    let of = |kind: &str| {
        addresses
            .iter()
            .filter(|a| a.type_ == kind)
            .find_map(|a| a.address.parse().ok())
    };
    of("ExternalIP").or_else(|| of("InternalIP"))
}

/// `(port, protocol)` of every port of `svc`.
fn ports(svc: &Service) -> BTreeSet<(i32, String)> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p.port,
                p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
            )
        })
        .collect()
}

/// What to do for the `LoadBalancer` Service `svc` of this controller's class, given every
/// cached Service and Node: the addresses of the serving nodes, unless a port of it is
/// the node endpoint's or an older such Service's.
#[must_use]
pub fn plan(svc: &Service, services: &[Arc<Service>], nodes: &[Arc<Node>]) -> Plan {
    let mine = ports(svc);
    let reserved = nodes
        .iter()
        .map(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.daemon_endpoints.as_ref())
                .and_then(|d| d.kubelet_endpoint.as_ref())
                .map_or(NODE_ENDPOINT_PORT, |e| e.port)
        })
        .chain([NODE_ENDPOINT_PORT])
        .find(|port| mine.contains(&(*port, "TCP".to_owned())));
    let conflict = || {
        let (my_uid, my_seniority) = (uid(svc), seniority(svc));
        services
            .iter()
            .filter(|o| uid(o) != my_uid && is_ours(o) && seniority(o) < my_seniority)
            .find_map(|o| {
                let shared = ports(o).intersection(&mine).next().cloned()?;
                Some((
                    o.metadata.namespace.clone().unwrap_or_default(),
                    o.metadata.name.clone().unwrap_or_default(),
                    shared,
                ))
            })
    };
    let refusal = if let Some(port) = reserved {
        Some(format!(
            "port {port}/TCP is the node endpoint's on every node address; without \
             --loadbalancer-ip-range LoadBalancer ports are opened on the node addresses"
        ))
    } else {
        conflict().map(|(ns, name, (port, protocol))| {
            format!(
                "port {port}/{protocol} is already taken on the node addresses by Service \
                 {ns}/{name}; without --loadbalancer-ip-range LoadBalancer ports are opened \
                 on the node addresses"
            )
        })
    };
    let current = ingress(svc);
    if let Some(message) = refusal {
        return if current.is_empty() {
            Plan::Pending {
                reason: "PortInUse",
                message,
            }
        } else {
            Plan::Clear
        };
    }
    let wanted: Vec<Ipv4Addr> = nodes
        .iter()
        .filter(|n| serves(n))
        .filter_map(|n| address(n))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if wanted.is_empty() {
        // Addresses already given stay while no node serves (a cluster-wide outage is
        // no reason to make every client look the Service up again).
        return if current.is_empty() {
            Plan::Pending {
                reason: "NoServingNodes",
                message: format!(
                    "no Ready node without the {EXCLUDE_LABEL} label has an address, and \
                     control runs without --loadbalancer-ip-range"
                ),
            }
        } else {
            Plan::Nothing
        };
    }
    let mut sorted = current;
    sorted.sort_unstable();
    if sorted == wanted {
        Plan::Nothing
    } else {
        Plan::Nodes(wanted)
    }
}
