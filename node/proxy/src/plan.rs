//! From one Service and its EndpointSlices to what this node puts in the maps: the
//! frontends (cluster IPs, node ports on the node's addresses, `externalIPs`, load balancer
//! ingress addresses, each with an internal twin when the traffic policies differ) and the
//! backend groups they pick from. Pure: no I/O, no clock.
//!
//! Endpoint choice follows kube-proxy: ready endpoints; when none is ready, the serving
//! ones that are terminating (KEP-1669); every endpoint with `publishNotReadyAddresses`;
//! under a `Local` policy the same among this node's endpoints only.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::EndpointSlice,
};
use skiff_ebpf_common::service::{
    FLAG_EXTERNAL_LOCAL, FLAG_HOST_ONLY, FLAG_INTERNAL_LOCAL, FLAG_TWO_SCOPES,
};

use super::entries::{
    Endpoint, Frontend, FrontendEntry, GroupKey, Kind, Protocol, Scope, ServiceEntries,
};

/// kube-proxy's `sessionAffinityConfig.clientIP.timeoutSeconds` default (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// What the planner needs to know about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The Node's name (endpoints with this `nodeName` are local).
    pub name: String,
    /// The addresses node ports are served on.
    pub addresses: Vec<Ipv4Addr>,
    /// Also serve node ports on 127.0.0.1, to the node's own host processes.
    pub loopback_node_ports: bool,
}

/// Something the Service asks for that this node cannot do, said as a Warning Event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Warning {
    /// The Event's reason.
    pub reason: &'static str,
    /// The Event's message.
    pub message: String,
}

/// The planner's answer for one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The Service's entries on this node.
    pub entries: ServiceEntries,
    /// What it asked for and does not get.
    pub warnings: Vec<Warning>,
}

/// The Service's settings that shape every frontend.
struct Policies {
    internal_local: bool,
    external_local: bool,
    affinity_timeout: u32,
    publish_not_ready: bool,
}

impl Policies {
    fn of(service: &Service, kind: &str) -> Self {
        let spec = service.spec.as_ref();
        let field = |f: fn(&ServiceSpec) -> Option<&String>| spec.and_then(f).map(String::as_str);
        let affinity_timeout = if field(|s| s.session_affinity.as_ref()) == Some("ClientIP") {
            spec.and_then(|s| s.session_affinity_config.as_ref())
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        } else {
            0
        };
        Self {
            internal_local: field(|s| s.internal_traffic_policy.as_ref()) == Some("Local"),
            // As kube-proxy: only NodePort and LoadBalancer Services have an external policy.
            external_local: matches!(kind, "NodePort" | "LoadBalancer")
                && field(|s| s.external_traffic_policy.as_ref()) == Some("Local"),
            affinity_timeout,
            publish_not_ready: spec
                .and_then(|s| s.publish_not_ready_addresses)
                .unwrap_or(false),
        }
    }
}

/// The addresses a Service is reached on, beside its ports.
struct Addresses {
    cluster: Vec<Ipv4Addr>,
    external: Vec<Ipv4Addr>,
    load_balancer: Vec<Ipv4Addr>,
    node_ports: bool,
}

impl Addresses {
    fn of(service: &Service, spec: &ServiceSpec, kind: &str) -> Self {
        let load_balancer = if kind == "LoadBalancer" {
            ipv4s(
                service
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    // ipMode Proxy: the load balancer sends traffic to the nodes, not to
                    // this address.
                    .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                    .filter_map(|i| i.ip.as_ref()),
            )
        } else {
            Vec::new()
        };
        Self {
            cluster: cluster_ips(spec),
            external: ipv4s(spec.external_ips.iter().flatten()),
            load_balancer,
            node_ports: matches!(kind, "NodePort" | "LoadBalancer"),
        }
    }
}

/// What `service` (with its `slices`) puts in the maps of `node`.
#[must_use]
pub fn plan<'a>(
    service: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &NodeView,
) -> Plan {
    let mut out = Plan::default();
    let Some(spec) = service.spec.as_ref() else {
        return out;
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return out;
    }
    let policies = Policies::of(service, kind);
    let addresses = Addresses::of(service, spec, kind);
    let slices: Vec<&EndpointSlice> = slices
        .into_iter()
        .filter(|s| s.address_type == "IPv4")
        .collect();
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = protocol(port, &mut out.warnings) else {
            continue;
        };
        let Ok(number) = u16::try_from(port.port) else {
            continue;
        };
        plan_port(
            &mut out.entries,
            port,
            (number, protocol),
            &addresses,
            &policies,
            node,
        );
        let group = |local| GroupKey {
            port: number,
            protocol,
            local,
        };
        let used: BTreeSet<GroupKey> = out.entries.frontends.values().map(|e| e.group).collect();
        for key in [
            group(policies.internal_local),
            group(policies.external_local),
        ] {
            if used.contains(&key) && !out.entries.groups.contains_key(&key) {
                let endpoints = endpoints(port, protocol, key.local, &slices, node, &policies);
                out.entries.groups.insert(key, endpoints);
            }
        }
    }
    out
}

/// The frontends of one Service port.
fn plan_port(
    entries: &mut ServiceEntries,
    port: &ServicePort,
    (number, protocol): (u16, Protocol),
    addresses: &Addresses,
    policies: &Policies,
    node: &NodeView,
) {
    let group = |local| GroupKey {
        port: number,
        protocol,
        local,
    };
    let internal = group(policies.internal_local);
    let external_group = group(policies.external_local);
    let two_scopes = policies.internal_local != policies.external_local;
    let base_flags = if policies.internal_local {
        FLAG_INTERNAL_LOCAL
    } else {
        0
    };
    for ip in &addresses.cluster {
        add(
            entries,
            Frontend {
                address: *ip,
                port: number,
                protocol,
                scope: Scope::External,
            },
            FrontendEntry {
                group: internal,
                kind: Kind::ClusterIp,
                flags: base_flags,
                affinity_timeout: policies.affinity_timeout,
            },
        );
    }
    let mut outside: Vec<(Ipv4Addr, u16, Kind, u16)> = Vec::new();
    if addresses.node_ports
        && let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok())
    {
        for address in &node.addresses {
            outside.push((*address, node_port, Kind::NodePort, 0));
        }
        if node.loopback_node_ports {
            outside.push((
                Ipv4Addr::LOCALHOST,
                node_port,
                Kind::NodePort,
                FLAG_HOST_ONLY,
            ));
        }
    }
    let same_port = |ips: &[Ipv4Addr], kind| {
        ips.iter()
            .map(|ip| (*ip, number, kind, 0))
            .collect::<Vec<_>>()
    };
    outside.extend(same_port(&addresses.external, Kind::ExternalIp));
    outside.extend(same_port(&addresses.load_balancer, Kind::LoadBalancer));
    for (address, port_number, kind, extra) in outside {
        let mut flags = base_flags | extra;
        if policies.external_local {
            flags |= FLAG_EXTERNAL_LOCAL;
        }
        let at = |scope| Frontend {
            address,
            port: port_number,
            protocol,
            scope,
        };
        let entry = |group, flags| FrontendEntry {
            group,
            kind,
            flags,
            affinity_timeout: policies.affinity_timeout,
        };
        if two_scopes {
            add(
                entries,
                at(Scope::External),
                entry(external_group, flags | FLAG_TWO_SCOPES),
            );
            add(entries, at(Scope::Internal), entry(internal, flags));
        } else {
            add(entries, at(Scope::External), entry(internal, flags));
        }
    }
}

/// The first Service (by address) to claim a frontend keeps it; a later port of the same
/// Service cannot claim it twice either.
fn add(entries: &mut ServiceEntries, frontend: Frontend, entry: FrontendEntry) {
    entries.frontends.entry(frontend).or_insert(entry);
}

fn protocol(port: &ServicePort, warnings: &mut Vec<Warning>) -> Option<Protocol> {
    match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        other => {
            let name = port
                .name
                .as_deref()
                .map_or_else(String::new, |n| format!(" {n:?}"));
            warnings.push(Warning {
                reason: "UnsupportedProtocol",
                message: format!(
                    "port{name} ({}/{other}) is not served: {other} is not supported by skiff's Service proxy",
                    port.port
                ),
            });
            None
        }
    }
}

fn cluster_ips(spec: &ServiceSpec) -> Vec<Ipv4Addr> {
    let listed = spec.cluster_ips.iter().flatten();
    let single = spec.cluster_ip.iter();
    let mut ips = ipv4s(listed);
    if ips.is_empty() {
        ips = ipv4s(single);
    }
    ips
}

/// The IPv4 addresses among `texts` ("None", "" and IPv6 are skipped), without repeats.
fn ipv4s<'a>(texts: impl IntoIterator<Item = &'a String>) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for ip in texts.into_iter().filter_map(|t| t.parse::<Ipv4Addr>().ok()) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// One endpoint as the slices describe it for a Service port.
struct Candidate {
    endpoint: Endpoint,
    ready: bool,
    serving: bool,
}

/// The endpoints of `port` a group picks from: ready ones, else serving terminating ones;
/// `local` keeps only this node's.
fn endpoints(
    port: &ServicePort,
    protocol: Protocol,
    local: bool,
    slices: &[&EndpointSlice],
    node: &NodeView,
    policies: &Policies,
) -> Vec<Endpoint> {
    let name = port.name.as_deref().unwrap_or("");
    let mut candidates: BTreeMap<SocketAddrV4, Candidate> = BTreeMap::new();
    for slice in slices {
        // The slice's port for this Service port: same name and protocol. Its number is the
        // target port resolved for the slice's endpoints (a named targetPort can differ
        // from pod to pod, which is why slices group endpoints by port).
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == name
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol.to_string()
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in &slice.endpoints {
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let is_local = e.node_name.as_deref() == Some(node.name.as_str());
            if local && !is_local {
                continue;
            }
            let conditions = e.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let address = SocketAddrV4::new(ip, target);
            candidates.entry(address).or_insert(Candidate {
                endpoint: Endpoint {
                    address,
                    local: is_local,
                    terminating,
                },
                ready: ready || policies.publish_not_ready,
                serving: serving && terminating,
            });
        }
    }
    let ready: Vec<Endpoint> = candidates
        .values()
        .filter(|c| c.ready)
        .map(|c| c.endpoint)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .values()
        .filter(|c| c.serving)
        .map(|c| c.endpoint)
        .collect()
}

#[cfg(test)]
mod tests;
