//! From one Service's planned entries to the nftables objects it owns in the proxy table
//! (chains, verdict-map elements, affinity sets) as nft JSON, and the table's fixed
//! skeleton. Pure: the same entries always give the same objects.
//!
//! The layout follows kube-proxy's nftables mode:
//! - `services` (jumped from the NAT prerouting and output hooks) looks `ip daddr . meta
//!   l4proto . th dport` up in the verdict maps `internal-services` (a frontend's internal
//!   twin, for traffic that did not come in through the uplink), `service-ips` (cluster IPs,
//!   `externalIPs`, load balancer addresses) and `service-nodeports`, each element a `goto`
//!   to a per-group chain `svc/<ns>/<name>/<proto>/<port>[/local]`;
//! - a group chain counts the connection, sends a client with affinity back to its endpoint
//!   (`ip saddr @aff/...`), else picks one with `numgen random mod N` into an endpoint chain
//!   `ep/.../<ip>/<port>` that marks hairpin traffic for masquerade, records affinity and
//!   DNATs;
//! - traffic from outside (in through the uplink) to a node port, external or load balancer
//!   address with the `Cluster` policy passes `ext/...`, which marks it so that an endpoint
//!   chain of a *remote* endpoint has it masqueraded; 127.0.0.1 node ports pass `lo/...`,
//!   which always masquerades (`route_localnet` lets the kernel route them);
//! - a filter chain ahead of NAT rejects new connections to frontends without endpoints
//!   through `no-endpoint-services` / `internal-no-endpoints` into `rej/...` chains.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde_json::{Value, json};
use skiff_ebpf_common::service::{FLAG_EXTERNAL_LOCAL, FLAG_HOST_ONLY};

use crate::entries::{
    Endpoint, Frontend, FrontendEntry, GroupKey, Kind, Protocol, Scope, ServiceEntries, ServiceRef,
};

/// The packet mark bit asking the postrouting chain to masquerade.
pub const MASQUERADE_MARK: u32 = 0x4000;
/// The packet mark bit saying a connection came from outside to an address with the
/// `Cluster` policy: a remote endpoint's chain turns it into [`MASQUERADE_MARK`].
pub const OUTSIDE_MARK: u32 = 0x8000;

/// `filter` hooks run ahead of DNAT (`dstnat - 10`), so a frontend without endpoints is
/// rejected before anything translates it.
const FILTER_PRIORITY: i32 = -110;
/// `dstnat`.
const DNAT_PRIORITY: i32 = -100;
/// `srcnat`.
const SNAT_PRIORITY: i32 = 100;

/// The chains every table has, with their hook (or none for a regular chain).
pub const BASE_CHAINS: [&str; 8] = [
    "filter-prerouting",
    "filter-output",
    "endpoints-check",
    "nat-prerouting",
    "nat-output",
    "nat-postrouting",
    "services",
    "masquerading",
];

/// The verdict maps, keyed by `ipv4_addr . inet_proto . inet_service`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapName {
    /// External-view cluster IPs, `externalIPs` and load balancer addresses.
    ServiceIps,
    /// External-view node ports on the node's addresses.
    NodePorts,
    /// Internal twins (traffic from the node and its pods).
    Internal,
    /// External-view frontends without endpoints: rejected.
    NoEndpoints,
    /// Internal twins: rejected without endpoints, `return` with some (so the external
    /// view's rejection does not apply to them).
    InternalNoEndpoints,
}

impl MapName {
    /// Every map.
    pub const ALL: [Self; 5] = [
        Self::ServiceIps,
        Self::NodePorts,
        Self::Internal,
        Self::NoEndpoints,
        Self::InternalNoEndpoints,
    ];

    /// The map's name in the table.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::ServiceIps => "service-ips",
            Self::NodePorts => "service-nodeports",
            Self::Internal => "internal-services",
            Self::NoEndpoints => "no-endpoint-services",
            Self::InternalNoEndpoints => "internal-no-endpoints",
        }
    }

    /// The map called `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// One verdict-map element's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ElementKey {
    /// The map.
    pub map: MapName,
    /// Destination address.
    pub address: Ipv4Addr,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
}

impl ElementKey {
    /// The key as nft JSON.
    #[must_use]
    pub fn json(&self) -> Value {
        json!({"concat": [self.address.to_string(), proto(self.protocol), self.port]})
    }
}

/// What an element sends a packet to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `goto` a chain.
    Goto(String),
    /// `return` (to the base chain, which accepts).
    Return,
}

impl Verdict {
    /// The verdict as nft JSON.
    #[must_use]
    pub fn json(&self) -> Value {
        match self {
            Self::Goto(chain) => json!({"goto": {"target": chain}}),
            Self::Return => json!({"return": null}),
        }
    }
}

/// A rule: its statements as nft JSON.
pub type Rule = Vec<Value>;

/// Everything one Service owns in the table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    /// Its chains with their rules.
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// Its verdict-map elements.
    pub elements: BTreeMap<ElementKey, Verdict>,
    /// Its affinity sets with their timeout in seconds.
    pub sets: BTreeMap<String, u32>,
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    wrap(
        "match",
        object([("op", json!(op)), ("left", left), ("right", right)]),
    )
}

/// `{key: value}`, moving `value` in.
fn wrap(key: &str, value: Value) -> Value {
    object([(key, value)])
}

fn object<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn set_mark(bits: u32) -> Value {
    json!({"mangle": {"key": meta("mark"), "value": {"|": [meta("mark"), bits]}}})
}

fn goto(chain: &str) -> Value {
    json!({"goto": {"target": chain}})
}

fn lookup_key() -> Value {
    json!({"concat": [payload("ip", "daddr"), meta("l4proto"), payload("th", "dport")]})
}

fn vmap(map: MapName) -> Value {
    json!({"vmap": {"key": lookup_key(), "data": format!("@{}", map.name())}})
}

fn from_uplink(op: &str, uplink: &str) -> Value {
    matches(op, meta("iifname"), json!(uplink))
}

/// The part of a group's names after the prefix: `<ns>/<name>/<proto>/<port>[/local]`.
fn group_base(service: &ServiceRef, group: GroupKey) -> String {
    format!(
        "{}/{}/{}/{}{}",
        service.namespace,
        service.name,
        proto(group.protocol),
        group.port,
        if group.local { "/local" } else { "" }
    )
}

/// The chain that picks among a group's endpoints.
#[must_use]
pub fn group_chain(service: &ServiceRef, group: GroupKey) -> String {
    format!("svc/{}", group_base(service, group))
}

/// The chain that rejects for a group without endpoints.
#[must_use]
pub fn reject_chain(service: &ServiceRef, group: GroupKey) -> String {
    format!("rej/{}", group_base(service, group))
}

/// The Service a `svc/` or `rej/` chain belongs to, and whether it rejects.
#[must_use]
pub fn counted_chain(name: &str) -> Option<(ServiceRef, bool)> {
    let (kind, rest) = name.split_once('/')?;
    let rejects = match kind {
        "svc" => false,
        "rej" => true,
        _ => return None,
    };
    let mut parts = rest.split('/');
    let namespace = parts.next()?;
    let service = parts.next()?;
    Some((ServiceRef::new(namespace, service), rejects))
}

/// Where the table's traffic comes from that is not the node's own or its pods'.
#[derive(Debug, Clone, Copy)]
pub struct Outside<'a> {
    /// The uplink's interface name; `None` on a node without one (all traffic internal).
    pub uplink: Option<&'a str>,
}

/// The objects `service` owns for `entries`.
#[must_use]
pub fn service_objects(service: &ServiceRef, entries: &ServiceEntries, at: Outside<'_>) -> Objects {
    let mut out = Objects::default();
    for (group, endpoints) in &entries.groups {
        let timeout = entries
            .frontends
            .values()
            .filter(|e| e.group == *group)
            .map(|e| e.affinity_timeout)
            .max()
            .unwrap_or(0);
        let uses = entries.frontends.values().any(|e| e.group == *group);
        if !uses {
            continue;
        }
        if endpoints.is_empty() {
            out.chains.insert(
                reject_chain(service, *group),
                vec![
                    vec![json!({"counter": null})],
                    vec![json!({"reject": null})],
                ],
            );
        } else {
            group_objects(&mut out, service, *group, endpoints, timeout, at);
        }
    }
    for (frontend, entry) in &entries.frontends {
        frontend_objects(&mut out, service, *frontend, entry, entries, at);
    }
    out
}

fn group_objects(
    out: &mut Objects,
    service: &ServiceRef,
    group: GroupKey,
    endpoints: &[Endpoint],
    timeout: u32,
    at: Outside<'_>,
) {
    let base = group_base(service, group);
    let mut rules: Vec<Rule> = vec![vec![json!({"counter": null})]];
    let mut picks = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let ip = endpoint.address.ip().to_string();
        let port = endpoint.address.port();
        let chain = format!("ep/{base}/{ip}/{port}");
        let set = (timeout > 0).then(|| format!("aff/{base}/{ip}/{port}/{timeout}"));
        let mut ep_rules: Vec<Rule> = vec![vec![
            matches("==", payload("ip", "saddr"), json!(ip)),
            set_mark(MASQUERADE_MARK),
        ]];
        if !endpoint.local && at.uplink.is_some() {
            ep_rules.push(vec![
                matches("!=", json!({"&": [meta("mark"), OUTSIDE_MARK]}), json!(0)),
                set_mark(MASQUERADE_MARK),
            ]);
        }
        if let Some(set) = &set {
            rules.push(vec![
                matches("==", payload("ip", "saddr"), json!(format!("@{set}"))),
                goto(&chain),
            ]);
            ep_rules.push(vec![json!({"set": {
                "op": "update",
                "elem": payload("ip", "saddr"),
                "set": format!("@{set}"),
            }})]);
            out.sets.insert(set.clone(), timeout);
        }
        ep_rules.push(vec![
            matches("==", meta("l4proto"), json!(proto(group.protocol))),
            json!({"dnat": {"addr": ip, "port": port}}),
        ]);
        picks.push(json!([i, goto(&chain)]));
        out.chains.insert(chain, ep_rules);
    }
    rules.push(vec![json!({"vmap": {
        "key": {"numgen": {"mode": "random", "mod": endpoints.len(), "offset": 0}},
        "data": {"set": picks},
    }})]);
    out.chains.insert(group_chain(service, group), rules);
}

fn frontend_objects(
    out: &mut Objects,
    service: &ServiceRef,
    frontend: Frontend,
    entry: &FrontendEntry,
    entries: &ServiceEntries,
    at: Outside<'_>,
) {
    let key = |map| ElementKey {
        map,
        address: frontend.address,
        protocol: frontend.protocol,
        port: frontend.port,
    };
    let internal = frontend.scope == Scope::Internal;
    let empty = entries.groups.get(&entry.group).is_none_or(Vec::is_empty);
    if empty {
        let map = if internal {
            MapName::InternalNoEndpoints
        } else {
            MapName::NoEndpoints
        };
        out.elements
            .insert(key(map), Verdict::Goto(reject_chain(service, entry.group)));
        return;
    }
    let group = group_chain(service, entry.group);
    let base = group_base(service, entry.group);
    let target = if entry.flags & FLAG_HOST_ONLY != 0 {
        // 127.0.0.1 cannot be a source anywhere else: always masqueraded.
        let chain = format!("lo/{base}");
        out.chains.insert(
            chain.clone(),
            vec![vec![set_mark(MASQUERADE_MARK)], vec![goto(&group)]],
        );
        chain
    } else if let (false, Some(uplink), false) = (
        internal || entry.kind == Kind::ClusterIp,
        at.uplink,
        entry.flags & FLAG_EXTERNAL_LOCAL != 0,
    ) {
        let chain = format!("ext/{base}");
        out.chains.insert(
            chain.clone(),
            vec![
                vec![from_uplink("==", uplink), set_mark(OUTSIDE_MARK)],
                vec![goto(&group)],
            ],
        );
        chain
    } else {
        group
    };
    if internal {
        out.elements
            .insert(key(MapName::InternalNoEndpoints), Verdict::Return);
    }
    let map = match (internal, entry.kind) {
        (true, _) => MapName::Internal,
        (false, Kind::NodePort) => MapName::NodePorts,
        (false, _) => MapName::ServiceIps,
    };
    out.elements.insert(key(map), Verdict::Goto(target));
}

/// One command of a transaction, as nft JSON (`{"add": {"chain": ...}}`).
#[must_use]
pub fn command(verb: &str, kind: &str, object: Value) -> Value {
    wrap(verb, wrap(kind, object))
}

/// The commands that create the table's skeleton, or bring an existing one back to it
/// without touching the maps' elements or the Services' chains: the fixed chains are
/// flushed and refilled in the same transaction.
#[must_use]
pub fn skeleton(table: &str, at: Outside<'_>) -> Vec<Value> {
    let mut out = vec![command(
        "add",
        "table",
        json!({"family": "ip", "name": table}),
    )];
    for map in MapName::ALL {
        out.push(command(
            "add",
            "map",
            json!({
                "family": "ip", "table": table, "name": map.name(),
                "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
            }),
        ));
    }
    let hooked = [
        ("filter-prerouting", "filter", "prerouting", FILTER_PRIORITY),
        ("filter-output", "filter", "output", FILTER_PRIORITY),
        ("nat-prerouting", "nat", "prerouting", DNAT_PRIORITY),
        ("nat-output", "nat", "output", DNAT_PRIORITY),
        ("nat-postrouting", "nat", "postrouting", SNAT_PRIORITY),
    ];
    for name in BASE_CHAINS {
        let mut chain = json!({"family": "ip", "table": table, "name": name});
        if let Some((_, kind, hook, prio)) = hooked.iter().find(|h| h.0 == name) {
            chain["type"] = json!(kind);
            chain["hook"] = json!(hook);
            chain["prio"] = json!(prio);
            chain["policy"] = json!("accept");
        }
        out.push(command("add", "chain", chain));
        out.push(command(
            "flush",
            "chain",
            json!({"family": "ip", "table": table, "name": name}),
        ));
    }
    let new = || matches("in", json!({"ct": {"key": "state"}}), json!("new"));
    let internal_first = |map: MapName| match at.uplink {
        Some(uplink) => vec![from_uplink("!=", uplink), vmap(map)],
        None => vec![vmap(map)],
    };
    let rules: Vec<(&str, Rule)> = vec![
        (
            "filter-prerouting",
            vec![new(), json!({"jump": {"target": "endpoints-check"}})],
        ),
        // The node's own traffic never came through the uplink: its internal view first.
        (
            "filter-output",
            vec![new(), vmap(MapName::InternalNoEndpoints)],
        ),
        (
            "filter-output",
            vec![new(), json!({"jump": {"target": "endpoints-check"}})],
        ),
        (
            "endpoints-check",
            internal_first(MapName::InternalNoEndpoints),
        ),
        ("endpoints-check", vec![vmap(MapName::NoEndpoints)]),
        (
            "nat-prerouting",
            vec![json!({"jump": {"target": "services"}})],
        ),
        ("nat-output", vec![vmap(MapName::Internal)]),
        ("nat-output", vec![json!({"jump": {"target": "services"}})]),
        (
            "nat-postrouting",
            vec![json!({"jump": {"target": "masquerading"}})],
        ),
        ("services", internal_first(MapName::Internal)),
        ("services", vec![vmap(MapName::ServiceIps)]),
        ("services", vec![vmap(MapName::NodePorts)]),
        (
            "masquerading",
            vec![
                matches(
                    "==",
                    json!({"&": [meta("mark"), MASQUERADE_MARK]}),
                    json!(0),
                ),
                json!({"return": null}),
            ],
        ),
        (
            "masquerading",
            vec![
                json!({"mangle": {"key": meta("mark"), "value": {"&": [meta("mark"), !(MASQUERADE_MARK | OUTSIDE_MARK)]}}}),
                json!({"masquerade": {"flags": ["fully-random"]}}),
            ],
        ),
    ];
    for (chain, expr) in rules {
        out.push(rule(table, chain, expr));
    }
    out
}

/// `add rule` in `chain`.
#[must_use]
pub fn rule(table: &str, chain: &str, expr: Rule) -> Value {
    command(
        "add",
        "rule",
        object([
            ("family", json!("ip")),
            ("table", json!(table)),
            ("chain", json!(chain)),
            ("expr", Value::Array(expr)),
        ]),
    )
}

/// The prefix of the comment a Service chain's first rule carries.
const FINGERPRINT: &str = "skiff:";

/// The `add rule` commands that fill a Service chain with `rules`, the first one commented
/// with their fingerprint, so that a restarted node finds which chains already hold what
/// it wants without reading the rules back (nft lists them in another form than it takes).
#[must_use]
pub fn chain_rules(table: &str, chain: &str, rules: &[Rule]) -> Vec<Value> {
    let mut out: Vec<Value> = rules
        .iter()
        .map(|r| rule(table, chain, r.clone()))
        .collect();
    if let Some(first) = out.first_mut() {
        first["add"]["rule"]["comment"] =
            json!(format!("{FINGERPRINT}{:016x}", fingerprint(rules)));
    }
    out
}

/// The fingerprint a listed rule's comment carries, if it is one of ours.
#[must_use]
pub fn listed_fingerprint(rule: &Value) -> Option<u64> {
    let comment = rule.get("comment")?.as_str()?;
    u64::from_str_radix(comment.strip_prefix(FINGERPRINT)?, 16).ok()
}

/// FNV-1a over the rules' JSON: stable across runs and versions of Rust (a mismatch after
/// an upgrade only rewrites the chain).
#[must_use]
pub fn fingerprint(rules: &[Rule]) -> u64 {
    let text = Value::Array(rules.iter().cloned().map(Value::Array).collect()).to_string();
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
