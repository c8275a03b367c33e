//! The cluster's names: the records each Service (with its EndpointSlices) and each Pod
//! contributes, kept in one index so a change replaces one object's records only.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};

/// The data of one record; names are lowercase, without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Data {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An alias (`ExternalName` Services).
    Cname(String),
    /// A named port: the port and the name serving it.
    Srv {
        /// The port.
        port: u16,
        /// The name holding the address.
        target: String,
    },
    /// The name of an address.
    Ptr(String),
}

/// The object that contributed records.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A Service and its EndpointSlices.
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A Pod.
    Pod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// What a name holds, for one query type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Records of the asked type (or the name's alias), each with its owner name.
    Records(Vec<(String, Data)>),
    /// The name exists, with other types only (or as the parent of other names).
    NoData,
    /// The name does not exist in the cluster domain.
    NxDomain,
    /// The name is not the cluster's: forward it.
    NotOurs,
}

/// Which records a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A.
    A,
    /// CNAME.
    Cname,
    /// SRV.
    Srv,
    /// PTR.
    Ptr,
    /// ANY.
    Any,
    /// Any type the cluster has no records of (AAAA, TXT, MX ...).
    Other,
}

impl Kind {
    fn matches(self, data: &Data) -> bool {
        matches!(
            (self, data),
            (Self::Any, _)
                | (Self::A, Data::A(_))
                | (Self::Cname, Data::Cname(_))
                | (Self::Srv, Data::Srv { .. })
                | (Self::Ptr, Data::Ptr(_))
        )
    }
}

/// The reverse zone the cluster answers for when it knows the address.
const REVERSE: &str = "in-addr.arpa";

/// The cluster's records.
#[derive(Debug)]
pub struct Zone {
    domain: String,
    by_source: HashMap<Source, Vec<(String, Data)>>,
    names: HashMap<String, Vec<(Source, Data)>>,
    /// Every owner name and each of its ancestors below the zone apex, counted, so a
    /// parent of existing names (`ns.svc.cluster.local`) is NODATA, not NXDOMAIN.
    nodes: HashMap<String, usize>,
}

/// The lowercase form of `name` without the trailing dot.
#[must_use]
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `d.c.b.a.in-addr.arpa` for `a.b.c.d`.
#[must_use]
pub fn reverse_name(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{d}.{c}.{b}.{a}.{REVERSE}")
}

/// `a-b-c-d`, the label Kubernetes gives an address.
fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn is_under(name: &str, zone: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|head| head.ends_with('.'))
}

/// `_name._proto.` in front of `base`, for a named port.
fn srv_name(port: &str, protocol: Option<&str>, base: &str) -> String {
    let proto = protocol.unwrap_or("TCP").to_ascii_lowercase();
    format!("_{}._{proto}.{base}", port.to_ascii_lowercase())
}

fn port_u16(port: i32) -> Option<u16> {
    u16::try_from(port).ok()
}

impl Zone {
    /// An empty zone for the cluster domain `domain` (`cluster.local`).
    #[must_use]
    pub fn new(domain: &str) -> Self {
        Self {
            domain: normalize(domain),
            by_source: HashMap::new(),
            names: HashMap::new(),
            nodes: HashMap::new(),
        }
    }

    /// The cluster domain.
    #[must_use]
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// `name.ns.svc.<domain>`.
    fn service_base(&self, namespace: &str, name: &str) -> String {
        format!("{name}.{namespace}.svc.{}", self.domain)
    }

    /// The records of `svc` with its `slices`: the cluster IP (A, PTR) or, for a headless
    /// Service, every ready endpoint (A at the Service's name and at the endpoint's own
    /// `hostname`/`a-b-c-d` name, PTR); SRV for named ports; CNAME for `ExternalName`.
    #[must_use]
    pub fn service_records(&self, svc: &Service, slices: &[EndpointSlice]) -> Vec<(String, Data)> {
        let (Some(namespace), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            return Vec::new();
        };
        let base = self.service_base(namespace, name);
        let mut out = BTreeSet::new();
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec.external_name.as_deref().filter(|t| !t.is_empty()) {
                out.insert((base, Data::Cname(normalize(target))));
            }
            return out.into_iter().collect();
        }
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        if let Some(ip) = cluster_ip {
            out.insert((base.clone(), Data::A(ip)));
            out.insert((reverse_name(ip), Data::Ptr(base.clone())));
            for port in spec.ports.iter().flatten() {
                let (Some(port_name), Some(number)) = (
                    port.name.as_deref().filter(|n| !n.is_empty()),
                    port_u16(port.port),
                ) else {
                    continue;
                };
                let srv = Data::Srv {
                    port: number,
                    target: base.clone(),
                };
                out.insert((
                    srv_name(port_name, port.protocol.as_deref(), &base),
                    srv.clone(),
                ));
                out.insert((base.clone(), srv));
            }
        } else {
            for slice in slices
                .iter()
                .filter(|s| s.address_type.eq_ignore_ascii_case("IPv4"))
            {
                for endpoint in &slice.endpoints {
                    // Ready unless said otherwise, as the EndpointSlice API defines it.
                    let ready = endpoint
                        .conditions
                        .as_ref()
                        .and_then(|c| c.ready)
                        .unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for ip in endpoint
                        .addresses
                        .iter()
                        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                    {
                        let label = endpoint
                            .hostname
                            .as_deref()
                            .filter(|h| !h.is_empty())
                            .map_or_else(|| dashed(ip), str::to_ascii_lowercase);
                        let own = format!("{label}.{base}");
                        out.insert((base.clone(), Data::A(ip)));
                        out.insert((own.clone(), Data::A(ip)));
                        out.insert((reverse_name(ip), Data::Ptr(own.clone())));
                        for port in slice.ports.iter().flatten() {
                            let (Some(port_name), Some(number)) = (
                                port.name.as_deref().filter(|n| !n.is_empty()),
                                port.port.and_then(port_u16),
                            ) else {
                                continue;
                            };
                            let srv = Data::Srv {
                                port: number,
                                target: own.clone(),
                            };
                            out.insert((
                                srv_name(port_name, port.protocol.as_deref(), &base),
                                srv.clone(),
                            ));
                            out.insert((base.clone(), srv));
                        }
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// The records of a pod with an IPv4 address: `a-b-c-d.ns.pod.<domain>` and its PTR.
    /// Pods on the host's network have the node's address and get none.
    #[must_use]
    pub fn pod_records(&self, pod: &Pod) -> Vec<(String, Data)> {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let (Some(namespace), Some(ip), false) =
            (pod.metadata.namespace.as_deref(), ip, host_network)
        else {
            return Vec::new();
        };
        let name = format!("{}.{namespace}.pod.{}", dashed(ip), self.domain);
        vec![
            (reverse_name(ip), Data::Ptr(name.clone())),
            (name, Data::A(ip)),
        ]
    }

    /// Replaces what `source` contributed with `records`.
    pub fn replace(&mut self, source: &Source, records: Vec<(String, Data)>) {
        self.remove(source);
        if records.is_empty() {
            return;
        }
        for (name, data) in &records {
            self.names
                .entry(name.clone())
                .or_default()
                .push((source.clone(), data.clone()));
            for node in self.ancestors(name) {
                *self.nodes.entry(node).or_default() += 1;
            }
        }
        self.by_source.insert(source.clone(), records);
    }

    /// Every object that contributed records.
    #[must_use]
    pub fn sources(&self) -> Vec<Source> {
        self.by_source.keys().cloned().collect()
    }

    /// Forgets what `source` contributed.
    pub fn remove(&mut self, source: &Source) {
        let Some(old) = self.by_source.remove(source) else {
            return;
        };
        for (name, _) in &old {
            if let Some(entries) = self.names.get_mut(name) {
                entries.retain(|(s, _)| s != source);
                if entries.is_empty() {
                    self.names.remove(name);
                }
            }
            for node in self.ancestors(name) {
                if let Some(count) = self.nodes.get_mut(&node) {
                    *count -= 1;
                    if *count == 0 {
                        self.nodes.remove(&node);
                    }
                }
            }
        }
    }

    /// `name` and its ancestors below the apex of the zone it belongs to.
    fn ancestors(&self, name: &str) -> Vec<String> {
        let apex = if is_under(name, &self.domain) {
            self.domain.as_str()
        } else {
            REVERSE
        };
        let mut out = Vec::new();
        let mut current = name;
        while current.len() > apex.len() {
            out.push(current.to_owned());
            match current.split_once('.') {
                Some((_, rest)) => current = rest,
                None => break,
            }
        }
        out
    }

    /// Whether `name` (normalized) is in the cluster domain.
    #[must_use]
    pub fn is_cluster_name(&self, name: &str) -> bool {
        is_under(name, &self.domain)
    }

    /// What `name` holds of `kind`. An alias answers every type but CNAME with itself (the
    /// caller follows it). Reverse names the cluster does not know are forwarded, as
    /// `CoreDNS`'s `fallthrough in-addr.arpa` does.
    #[must_use]
    pub fn lookup(&self, name: &str, kind: Kind) -> Found {
        let name = normalize(name);
        let ours = is_under(&name, &self.domain);
        if !ours && !is_under(&name, REVERSE) {
            return Found::NotOurs;
        }
        if let Some(entries) = self.names.get(&name) {
            let mut found: Vec<(String, Data)> = entries
                .iter()
                .filter(|(_, d)| kind.matches(d))
                .map(|(_, d)| (name.clone(), d.clone()))
                .collect();
            if found.is_empty() && kind != Kind::Cname {
                found.extend(
                    entries
                        .iter()
                        .filter(|(_, d)| matches!(d, Data::Cname(_)))
                        .map(|(_, d)| (name.clone(), d.clone())),
                );
            }
            found.sort();
            found.dedup();
            if !found.is_empty() {
                return Found::Records(found);
            }
        }
        if name == self.domain || self.nodes.contains_key(&name) {
            Found::NoData
        } else if ours {
            Found::NxDomain
        } else {
            Found::NotOurs
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            core::v1::{PodSpec, PodStatus, ServicePort, ServiceSpec},
            discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn meta(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        }
    }

    fn service(name: &str, cluster_ip: &str) -> Service {
        Service {
            metadata: meta("prod", name),
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.to_owned()),
                ports: Some(vec![
                    ServicePort {
                        name: Some("http".to_owned()),
                        port: 80,
                        protocol: Some("TCP".to_owned()),
                        ..ServicePort::default()
                    },
                    ServicePort {
                        port: 81,
                        ..ServicePort::default()
                    },
                ]),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn slice(endpoints: &[(&str, Option<&str>, bool)]) -> EndpointSlice {
        EndpointSlice {
            metadata: meta("prod", "db-abc"),
            address_type: "IPv4".to_owned(),
            endpoints: endpoints
                .iter()
                .map(|(ip, hostname, ready)| Endpoint {
                    addresses: vec![(*ip).to_owned()],
                    hostname: hostname.map(str::to_owned),
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        ..EndpointConditions::default()
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("pg".to_owned()),
                port: Some(5432),
                protocol: Some("TCP".to_owned()),
                ..EndpointPort::default()
            }]),
        }
    }

    fn source(name: &str) -> Source {
        Source::Service {
            namespace: "prod".to_owned(),
            name: name.to_owned(),
        }
    }

    fn zone_with(svc: &Service, slices: &[EndpointSlice]) -> Zone {
        let mut zone = Zone::new("cluster.local.");
        let records = zone.service_records(svc, slices);
        zone.replace(&source(svc.metadata.name.as_deref().unwrap()), records);
        zone
    }

    fn a(ip: &str) -> Data {
        Data::A(ip.parse().unwrap())
    }

    fn records(found: Found) -> Vec<Data> {
        match found {
            Found::Records(r) => r.into_iter().map(|(_, d)| d).collect(),
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn a_cluster_ip_service_answers_its_address_srv_and_ptr() {
        let zone = zone_with(&service("api", "10.96.0.20"), &[]);
        assert_eq!(
            records(zone.lookup("API.prod.svc.cluster.local.", Kind::A)),
            [a("10.96.0.20")]
        );
        let srv = Data::Srv {
            port: 80,
            target: "api.prod.svc.cluster.local".to_owned(),
        };
        assert_eq!(
            records(zone.lookup("_http._tcp.api.prod.svc.cluster.local", Kind::Srv)),
            std::slice::from_ref(&srv)
        );
        // The unnamed port has no SRV name; the Service's own SRV lists the named ones.
        assert_eq!(
            records(zone.lookup("api.prod.svc.cluster.local", Kind::Srv)),
            [srv]
        );
        assert_eq!(
            records(zone.lookup("20.0.96.10.in-addr.arpa", Kind::Ptr)),
            [Data::Ptr("api.prod.svc.cluster.local".to_owned())]
        );
    }

    #[test]
    fn a_name_with_other_types_is_nodata_and_a_missing_one_nxdomain() {
        let zone = zone_with(&service("api", "10.96.0.20"), &[]);
        assert_eq!(
            zone.lookup("api.prod.svc.cluster.local", Kind::Other),
            Found::NoData
        );
        assert_eq!(
            zone.lookup("api.prod.svc.cluster.local", Kind::Ptr),
            Found::NoData
        );
        // Parents of existing names exist, as does the apex.
        assert_eq!(
            zone.lookup("prod.svc.cluster.local", Kind::A),
            Found::NoData
        );
        assert_eq!(
            zone.lookup("_tcp.api.prod.svc.cluster.local", Kind::A),
            Found::NoData
        );
        assert_eq!(zone.lookup("cluster.local", Kind::A), Found::NoData);
        assert_eq!(
            zone.lookup("web.prod.svc.cluster.local", Kind::A),
            Found::NxDomain
        );
        assert_eq!(
            zone.lookup("api.dev.svc.cluster.local", Kind::A),
            Found::NxDomain
        );
        assert_eq!(zone.lookup("xcluster.local", Kind::A), Found::NotOurs);
        assert_eq!(zone.lookup("example.com", Kind::A), Found::NotOurs);
        // An address the cluster does not know is somebody else's.
        assert_eq!(
            zone.lookup("1.2.0.192.in-addr.arpa", Kind::Ptr),
            Found::NotOurs
        );
    }

    #[test]
    fn a_headless_service_answers_every_ready_endpoint_and_their_hostnames() {
        let slices = [slice(&[
            ("10.1.0.5", Some("db-0"), true),
            ("10.1.0.6", None, true),
            ("10.1.0.7", Some("db-2"), false),
        ])];
        let zone = zone_with(&service("db", "None"), &slices);
        assert_eq!(
            records(zone.lookup("db.prod.svc.cluster.local", Kind::A)),
            [a("10.1.0.5"), a("10.1.0.6")]
        );
        assert_eq!(
            records(zone.lookup("db-0.db.prod.svc.cluster.local", Kind::A)),
            [a("10.1.0.5")]
        );
        assert_eq!(
            records(zone.lookup("10-1-0-6.db.prod.svc.cluster.local", Kind::A)),
            [a("10.1.0.6")]
        );
        assert_eq!(
            zone.lookup("db-2.db.prod.svc.cluster.local", Kind::A),
            Found::NxDomain,
            "not ready"
        );
        assert_eq!(
            records(zone.lookup("_pg._tcp.db.prod.svc.cluster.local", Kind::Srv)),
            [
                Data::Srv {
                    port: 5432,
                    target: "10-1-0-6.db.prod.svc.cluster.local".to_owned()
                },
                Data::Srv {
                    port: 5432,
                    target: "db-0.db.prod.svc.cluster.local".to_owned()
                },
            ]
        );
        assert_eq!(
            records(zone.lookup("5.0.1.10.in-addr.arpa", Kind::Ptr)),
            [Data::Ptr("db-0.db.prod.svc.cluster.local".to_owned())]
        );
    }

    #[test]
    fn an_external_name_is_an_alias_for_every_type_but_its_own() {
        let mut svc = service("ext", "");
        let spec = svc.spec.as_mut().unwrap();
        spec.type_ = Some("ExternalName".to_owned());
        spec.external_name = Some("Example.COM.".to_owned());
        let zone = zone_with(&svc, &[]);
        let alias = Data::Cname("example.com".to_owned());
        assert_eq!(
            records(zone.lookup("ext.prod.svc.cluster.local", Kind::A)),
            std::slice::from_ref(&alias)
        );
        assert_eq!(
            records(zone.lookup("ext.prod.svc.cluster.local", Kind::Cname)),
            [alias]
        );
    }

    #[test]
    fn pods_have_dashed_address_names_and_ptr_and_host_network_pods_none() {
        let mut pod = Pod {
            metadata: meta("prod", "web-1"),
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                pod_ip: Some("10.1.0.9".to_owned()),
                ..PodStatus::default()
            }),
        };
        let zone = Zone::new("cluster.local");
        assert_eq!(
            zone.pod_records(&pod),
            [
                (
                    "9.0.1.10.in-addr.arpa".to_owned(),
                    Data::Ptr("10-1-0-9.prod.pod.cluster.local".to_owned())
                ),
                ("10-1-0-9.prod.pod.cluster.local".to_owned(), a("10.1.0.9")),
            ]
        );
        pod.spec.as_mut().unwrap().host_network = Some(true);
        assert!(zone.pod_records(&pod).is_empty());
    }

    #[test]
    fn replacing_or_removing_a_source_leaves_no_trace() {
        let mut zone = zone_with(&service("api", "10.96.0.20"), &[]);
        let moved = zone.service_records(&service("api", "10.96.0.21"), &[]);
        zone.replace(&source("api"), moved);
        assert_eq!(
            records(zone.lookup("api.prod.svc.cluster.local", Kind::A)),
            [a("10.96.0.21")]
        );
        assert_eq!(
            zone.lookup("20.0.96.10.in-addr.arpa", Kind::Ptr),
            Found::NotOurs
        );
        zone.remove(&source("api"));
        assert_eq!(
            zone.lookup("api.prod.svc.cluster.local", Kind::A),
            Found::NxDomain
        );
        assert_eq!(
            zone.lookup("prod.svc.cluster.local", Kind::A),
            Found::NxDomain
        );
        assert!(zone.nodes.is_empty() && zone.names.is_empty());
    }
}
