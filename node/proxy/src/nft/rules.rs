//! From one Service's planned entries to the nftables objects it owns in the proxy table
//! (verdict-map and endpoint-map elements, set members, affinity chains and sets) as nft
//! JSON, and the table's fixed skeleton. Pure: the same entries always give the same objects.
//!
//! The layout follows kube-proxy's nftables mode where it scales, and departs from it where
//! nft 1.0.6 does not: that version dumps every chain of the table before it adds a rule or
//! an element, so a change costs time in proportion to the number of chains (about 0.15 s
//! at 40,000). Here the number of chains does not grow with the number of Services:
//! - `services` (jumped from the NAT prerouting and output hooks) looks `ip daddr . meta
//!   l4proto . th dport` up in the verdict maps `internal-services` (a frontend's internal
//!   twin, for traffic that did not come in through the uplink), `service-ips` (cluster IPs,
//!   `externalIPs`, load balancer addresses) and `service-nodeports`; each element carries a
//!   counter and its Service's name as comment (the per-Service counters) and is a `goto` to
//!   a chain shared by every frontend with as many endpoints, `pick/<scope>/<proto>/<n>`;
//! - a pick chain draws one of `n` endpoints uniformly with `numgen random` rules (endpoint
//!   `i` with probability 1/(n-i) among those left) and DNATs through the endpoint maps
//!   `slot-<scope>-<i>-addr` / `-port`, keyed by the frontend: a frontend's endpoints are
//!   elements, not chains;
//! - a group with client-IP affinity has a chain of its own, `aff/...`, with a timed set per
//!   endpoint (sending a returning client back, else drawing as a pick chain does);
//! - masquerading is decided in postrouting from sets: `hairpin` (an endpoint reaching
//!   itself through a Service), `remote-endpoints` (for connections from outside, marked on
//!   the way in when their frontend is in `outside-frontends`) and `host-only-frontends`
//!   (127.0.0.1 node ports, always masqueraded);
//! - a filter chain ahead of NAT rejects new connections to frontends without endpoints
//!   through `no-endpoint-services` / `internal-no-endpoints` into the `reject` chain.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

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
pub const BASE_CHAINS: [&str; 9] = [
    "filter-prerouting",
    "filter-output",
    "endpoints-check",
    "nat-prerouting",
    "nat-output",
    "nat-postrouting",
    "services",
    "masquerading",
    "reject",
];

/// The fixed verdict maps, keyed by `ipv4_addr . inet_proto . inet_service`.
pub const VERDICT_MAPS: [MapName; 5] = [
    MapName::ServiceIps,
    MapName::NodePorts,
    MapName::Internal,
    MapName::NoEndpoints,
    MapName::InternalNoEndpoints,
];

/// Which half of an endpoint a slot map holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The address (`slot-...-addr`).
    Address,
    /// The port (`slot-...-port`).
    Port,
}

/// The maps of the table, keyed by `ipv4_addr . inet_proto . inet_service`.
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
    /// The `index`th endpoint of each frontend of `scope` (made when first needed).
    Slot {
        /// The view its frontends belong to.
        scope: Scope,
        /// The endpoint's place in its group.
        index: usize,
        /// Address or port.
        part: Part,
    },
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::External => "ext",
        Scope::Internal => "int",
    }
}

impl MapName {
    /// The map's name in the table.
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Self::ServiceIps => "service-ips".into(),
            Self::NodePorts => "service-nodeports".into(),
            Self::Internal => "internal-services".into(),
            Self::NoEndpoints => "no-endpoint-services".into(),
            Self::InternalNoEndpoints => "internal-no-endpoints".into(),
            Self::Slot { scope, index, part } => format!(
                "slot-{}-{index}-{}",
                scope_name(scope),
                match part {
                    Part::Address => "addr",
                    Part::Port => "port",
                }
            ),
        }
    }

    /// The map called `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        if let Some(fixed) = VERDICT_MAPS.into_iter().find(|m| m.name() == name) {
            return Some(fixed);
        }
        let mut parts = name.strip_prefix("slot-")?.split('-');
        let scope = match parts.next()? {
            "ext" => Scope::External,
            "int" => Scope::Internal,
            _ => return None,
        };
        let index = parts.next()?.parse().ok()?;
        let part = match parts.next()? {
            "addr" => Part::Address,
            "port" => Part::Port,
            _ => return None,
        };
        parts
            .next()
            .is_none()
            .then_some(Self::Slot { scope, index, part })
    }

    /// Whether its elements are verdicts (else endpoint halves).
    #[must_use]
    pub fn is_verdict(self) -> bool {
        !matches!(self, Self::Slot { .. })
    }

    /// The `add map` object (without the table), as nft JSON.
    #[must_use]
    pub fn declaration(self) -> Value {
        let mut map = json!({
            "name": self.name(),
            "type": ["ipv4_addr", "inet_proto", "inet_service"],
        });
        match self {
            Self::Slot {
                part: Part::Address,
                ..
            } => map["map"] = json!("ipv4_addr"),
            Self::Slot {
                part: Part::Port, ..
            } => map["map"] = json!("inet_service"),
            _ => {
                map["map"] = json!("verdict");
                // A counter per element: the per-Service counters.
                map["stmt"] = json!([{"counter": null}]);
            }
        }
        map
    }
}

/// One map element's key.
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

/// What a verdict-map element sends a packet to.
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

/// What a map element holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Data {
    /// A verdict, with the Service it counts for as comment (`namespace/name`).
    Verdict {
        /// The verdict.
        verdict: Verdict,
        /// The comment.
        comment: Option<String>,
    },
    /// An endpoint's address.
    Address(Ipv4Addr),
    /// An endpoint's port.
    Port(u16),
}

impl Data {
    /// The element `[key, data]` as nft JSON.
    #[must_use]
    pub fn element(&self, key: &ElementKey) -> Value {
        match self {
            Self::Verdict {
                verdict,
                comment: Some(comment),
            } => json!([{"elem": {"val": key.json(), "comment": comment}}, verdict.json()]),
            Self::Verdict {
                verdict,
                comment: None,
            } => json!([key.json(), verdict.json()]),
            Self::Address(address) => json!([key.json(), address.to_string()]),
            Self::Port(port) => json!([key.json(), port]),
        }
    }
}

/// A member of one of the fixed sets; Services may share them (the table counts claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Member {
    /// `hairpin`: an endpoint address, as `address . address`.
    Hairpin(Ipv4Addr),
    /// `remote-endpoints`: an endpoint on another node.
    RemoteEndpoint(Ipv4Addr),
    /// `outside-frontends`: a frontend whose connections from outside are masqueraded
    /// when they go to a remote endpoint.
    Outside(Ipv4Addr, Protocol, u16),
    /// `host-only-frontends`: a 127.0.0.1 node port, always masqueraded.
    HostOnly(Ipv4Addr, Protocol, u16),
}

/// The fixed sets, with their types.
pub const MEMBER_SETS: [(&str, &[&str]); 4] = [
    ("hairpin", &["ipv4_addr", "ipv4_addr"]),
    ("remote-endpoints", &["ipv4_addr"]),
    (
        "outside-frontends",
        &["ipv4_addr", "inet_proto", "inet_service"],
    ),
    (
        "host-only-frontends",
        &["ipv4_addr", "inet_proto", "inet_service"],
    ),
];

impl Member {
    /// The set it belongs to.
    #[must_use]
    pub fn set(&self) -> &'static str {
        match self {
            Self::Hairpin(_) => MEMBER_SETS[0].0,
            Self::RemoteEndpoint(_) => MEMBER_SETS[1].0,
            Self::Outside(..) => MEMBER_SETS[2].0,
            Self::HostOnly(..) => MEMBER_SETS[3].0,
        }
    }

    /// The element as nft JSON.
    #[must_use]
    pub fn json(&self) -> Value {
        match self {
            Self::Hairpin(a) => json!({"concat": [a.to_string(), a.to_string()]}),
            Self::RemoteEndpoint(a) => json!(a.to_string()),
            Self::Outside(a, p, port) | Self::HostOnly(a, p, port) => {
                json!({"concat": [a.to_string(), proto(*p), port]})
            }
        }
    }

    /// The member a listed element of `set` stands for.
    #[must_use]
    pub fn from_listed(set: &str, elem: &Value) -> Option<Self> {
        let elem = elem.get("elem").map_or(elem, |e| &e["val"]);
        let parts = elem.get("concat").and_then(Value::as_array);
        let address = |i: usize| -> Option<Ipv4Addr> { parts?.get(i)?.as_str()?.parse().ok() };
        match set {
            "hairpin" => {
                let a = address(0)?;
                (address(1)? == a).then_some(Self::Hairpin(a))
            }
            "remote-endpoints" => Some(Self::RemoteEndpoint(elem.as_str()?.parse().ok()?)),
            "outside-frontends" | "host-only-frontends" => {
                let a = address(0)?;
                let p = listed_protocol(parts?.get(1)?)?;
                let port = u16::try_from(parts?.get(2)?.as_u64()?).ok()?;
                Some(if set == "outside-frontends" {
                    Self::Outside(a, p, port)
                } else {
                    Self::HostOnly(a, p, port)
                })
            }
            _ => None,
        }
    }
}

/// A protocol as nft lists it (name or number).
#[must_use]
pub fn listed_protocol(value: &Value) -> Option<Protocol> {
    match value {
        Value::String(s) if s == "tcp" => Some(Protocol::Tcp),
        Value::String(s) if s == "udp" => Some(Protocol::Udp),
        Value::Number(n) if n.as_u64() == Some(6) => Some(Protocol::Tcp),
        Value::Number(n) if n.as_u64() == Some(17) => Some(Protocol::Udp),
        _ => None,
    }
}

/// A chain shared by every frontend of `scope` and `protocol` with `count` endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pick {
    /// The frontends' view.
    pub scope: Scope,
    /// Their protocol.
    pub protocol: Protocol,
    /// How many endpoints they have.
    pub count: usize,
}

impl Pick {
    /// The chain's name: `pick/<scope>/<proto>/<count>`.
    #[must_use]
    pub fn chain(self) -> String {
        format!(
            "pick/{}/{}/{}",
            scope_name(self.scope),
            proto(self.protocol),
            self.count
        )
    }

    /// The pick chain called `name`.
    #[must_use]
    pub fn from_chain(name: &str) -> Option<Self> {
        let mut parts = name.strip_prefix("pick/")?.split('/');
        let scope = match parts.next()? {
            "ext" => Scope::External,
            "int" => Scope::Internal,
            _ => return None,
        };
        let protocol = listed_protocol(&json!(parts.next()?))?;
        let count = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Self {
            scope,
            protocol,
            count,
        })
    }

    /// The maps its rules read.
    #[must_use]
    pub fn maps(self) -> Vec<MapName> {
        (0..self.count)
            .flat_map(|index| {
                [Part::Address, Part::Port].map(|part| MapName::Slot {
                    scope: self.scope,
                    index,
                    part,
                })
            })
            .collect()
    }

    /// Its rules: one draw per rule, uniform overall (endpoint `i` of `n` is taken with
    /// probability 1/(n-i) among those left), each translating to its slot's endpoint.
    #[must_use]
    pub fn rules(self) -> Vec<Rule> {
        (0..self.count)
            .map(|index| {
                let slot = |part| {
                    json!({"map": {
                        "key": lookup_key(),
                        "data": format!("@{}", MapName::Slot { scope: self.scope, index, part }.name()),
                    }})
                };
                let mut rule = draw(self.count - index);
                rule.push(matches("==", meta("l4proto"), json!(proto(self.protocol))));
                rule.push(json!({"dnat": {
                    "family": "ip",
                    "addr": slot(Part::Address),
                    "port": slot(Part::Port),
                }}));
                rule
            })
            .collect()
    }
}

/// The match taking one of `left` (none for the last).
fn draw(left: usize) -> Rule {
    if left > 1 {
        vec![matches(
            "==",
            json!({"numgen": {"mode": "random", "mod": left, "offset": 0}}),
            json!(0),
        )]
    } else {
        Vec::new()
    }
}

/// A rule: its statements as nft JSON.
pub type Rule = Vec<Value>;

/// Everything one Service owns in the table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    /// Its chains with their rules (groups with client-IP affinity only).
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// Its map elements.
    pub elements: BTreeMap<ElementKey, Data>,
    /// Its members of the fixed sets.
    pub members: BTreeSet<Member>,
    /// The shared pick chains its elements go to.
    pub picks: BTreeSet<Pick>,
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

fn lookup_key() -> Value {
    json!({"concat": [payload("ip", "daddr"), meta("l4proto"), payload("th", "dport")]})
}

fn vmap(map: MapName) -> Value {
    json!({"vmap": {"key": lookup_key(), "data": format!("@{}", map.name())}})
}

fn in_set(key: Value, set: &str) -> Value {
    matches("==", key, json!(format!("@{set}")))
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

/// The chain of a group with client-IP affinity.
#[must_use]
pub fn affinity_chain(service: &ServiceRef, group: GroupKey) -> String {
    format!("aff/{}", group_base(service, group))
}

/// The chain every frontend without endpoints goes to.
pub const REJECT_CHAIN: &str = "reject";

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
    let mut timeouts = BTreeMap::new();
    for (group, endpoints) in &entries.groups {
        let timeout = entries
            .frontends
            .values()
            .filter(|e| e.group == *group)
            .map(|e| e.affinity_timeout)
            .max();
        let Some(timeout) = timeout else {
            continue;
        };
        timeouts.insert(*group, timeout);
        for endpoint in endpoints {
            let ip = *endpoint.address.ip();
            out.members.insert(Member::Hairpin(ip));
            if !endpoint.local && at.uplink.is_some() {
                out.members.insert(Member::RemoteEndpoint(ip));
            }
        }
        if timeout > 0 && !endpoints.is_empty() {
            affinity_objects(&mut out, service, *group, endpoints, timeout);
        }
    }
    for (frontend, entry) in &entries.frontends {
        let timeout = timeouts.get(&entry.group).copied().unwrap_or(0);
        frontend_objects(&mut out, service, *frontend, entry, entries, timeout, at);
    }
    out
}

fn affinity_objects(
    out: &mut Objects,
    service: &ServiceRef,
    group: GroupKey,
    endpoints: &[Endpoint],
    timeout: u32,
) {
    let base = group_base(service, group);
    let mut back = Vec::new();
    let mut picks = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let ip = endpoint.address.ip().to_string();
        let port = endpoint.address.port();
        let set = format!("aff/{base}/{ip}/{port}/{timeout}");
        let to_endpoint = [
            json!({"set": {"op": "update", "elem": payload("ip", "saddr"), "set": format!("@{set}")}}),
            matches("==", meta("l4proto"), json!(proto(group.protocol))),
            json!({"dnat": {"addr": ip, "port": port}}),
        ];
        let mut returning = vec![in_set(payload("ip", "saddr"), &set)];
        returning.extend(to_endpoint.iter().cloned());
        back.push(returning);
        let mut drawn = draw(endpoints.len() - i);
        drawn.extend(to_endpoint);
        picks.push(drawn);
        out.sets.insert(set, timeout);
    }
    back.extend(picks);
    out.chains.insert(affinity_chain(service, group), back);
}

fn frontend_objects(
    out: &mut Objects,
    service: &ServiceRef,
    frontend: Frontend,
    entry: &FrontendEntry,
    entries: &ServiceEntries,
    timeout: u32,
    at: Outside<'_>,
) {
    let key = |map| ElementKey {
        map,
        address: frontend.address,
        protocol: frontend.protocol,
        port: frontend.port,
    };
    let counted = |verdict| Data::Verdict {
        verdict,
        comment: Some(service.to_string()),
    };
    let internal = frontend.scope == Scope::Internal;
    let endpoints = entries
        .groups
        .get(&entry.group)
        .map_or(&[][..], Vec::as_slice);
    if endpoints.is_empty() {
        let map = if internal {
            MapName::InternalNoEndpoints
        } else {
            MapName::NoEndpoints
        };
        out.elements
            .insert(key(map), counted(Verdict::Goto(REJECT_CHAIN.to_owned())));
        return;
    }
    let (address, protocol, port) = (frontend.address, frontend.protocol, frontend.port);
    if entry.flags & FLAG_HOST_ONLY != 0 {
        // 127.0.0.1 cannot be a source anywhere else: always masqueraded.
        out.members
            .insert(Member::HostOnly(address, protocol, port));
    } else if !(internal || entry.kind == Kind::ClusterIp)
        && at.uplink.is_some()
        && entry.flags & FLAG_EXTERNAL_LOCAL == 0
    {
        out.members.insert(Member::Outside(address, protocol, port));
    }
    let target = if timeout > 0 {
        affinity_chain(service, entry.group)
    } else {
        let pick = Pick {
            scope: frontend.scope,
            protocol: entry.group.protocol,
            count: endpoints.len(),
        };
        for (index, endpoint) in endpoints.iter().enumerate() {
            let slot = |part| {
                key(MapName::Slot {
                    scope: frontend.scope,
                    index,
                    part,
                })
            };
            out.elements
                .insert(slot(Part::Address), Data::Address(*endpoint.address.ip()));
            out.elements
                .insert(slot(Part::Port), Data::Port(endpoint.address.port()));
        }
        out.picks.insert(pick);
        pick.chain()
    };
    if internal {
        out.elements.insert(
            key(MapName::InternalNoEndpoints),
            Data::Verdict {
                verdict: Verdict::Return,
                comment: None,
            },
        );
    }
    let map = match (internal, entry.kind) {
        (true, _) => MapName::Internal,
        (false, Kind::NodePort) => MapName::NodePorts,
        (false, _) => MapName::ServiceIps,
    };
    out.elements
        .insert(key(map), counted(Verdict::Goto(target)));
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
    for map in VERDICT_MAPS {
        out.push(add_map(table, map));
    }
    for (name, kind) in MEMBER_SETS {
        out.push(command(
            "add",
            "set",
            json!({"family": "ip", "table": table, "name": name, "type": kind}),
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
    for (chain, expr) in fixed_rules(at) {
        out.push(rule(table, chain, expr));
    }
    out
}

/// The rules of the fixed chains, in order.
fn fixed_rules(at: Outside<'_>) -> Vec<(&'static str, Rule)> {
    let new = || matches("in", json!({"ct": {"key": "state"}}), json!("new"));
    let internal_first = |map: MapName| match at.uplink {
        Some(uplink) => vec![from_uplink("!=", uplink), vmap(map)],
        None => vec![vmap(map)],
    };
    let host_only = || {
        vec![
            in_set(lookup_key(), MEMBER_SETS[3].0),
            set_mark(MASQUERADE_MARK),
        ]
    };
    let mut rules: Vec<(&str, Rule)> = vec![
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
        (REJECT_CHAIN, vec![json!({"reject": null})]),
        (
            "nat-prerouting",
            vec![json!({"jump": {"target": "services"}})],
        ),
        ("nat-output", host_only()),
        ("nat-output", vec![vmap(MapName::Internal)]),
        ("nat-output", vec![json!({"jump": {"target": "services"}})]),
        (
            "nat-postrouting",
            vec![json!({"jump": {"target": "masquerading"}})],
        ),
    ];
    if let Some(uplink) = at.uplink {
        // From outside to an address with the `Cluster` policy: masqueraded below when
        // the endpoint drawn is on another node.
        rules.push((
            "services",
            vec![
                from_uplink("==", uplink),
                in_set(lookup_key(), MEMBER_SETS[2].0),
                set_mark(OUTSIDE_MARK),
            ],
        ));
    }
    rules.extend([
        ("services", host_only()),
        ("services", internal_first(MapName::Internal)),
        ("services", vec![vmap(MapName::ServiceIps)]),
        ("services", vec![vmap(MapName::NodePorts)]),
    ]);
    rules.extend(masquerading_rules(at));
    rules
}

/// The rules of `masquerading` (postrouting): which connections are masqueraded.
fn masquerading_rules(at: Outside<'_>) -> Vec<(&'static str, Rule)> {
    let masquerade_if = |test: Vec<Value>| {
        let mut rule = test;
        rule.push(set_mark(MASQUERADE_MARK));
        rule
    };
    let mut rules = vec![
        // An endpoint reaching itself through a Service: its answer must come back
        // through this node.
        (
            "masquerading",
            masquerade_if(vec![
                matches("in", json!({"ct": {"key": "status"}}), json!("dnat")),
                in_set(
                    json!({"concat": [payload("ip", "saddr"), payload("ip", "daddr")]}),
                    MEMBER_SETS[0].0,
                ),
            ]),
        ),
    ];
    if at.uplink.is_some() {
        rules.push((
            "masquerading",
            masquerade_if(vec![
                matches("!=", json!({"&": [meta("mark"), OUTSIDE_MARK]}), json!(0)),
                in_set(payload("ip", "daddr"), MEMBER_SETS[1].0),
            ]),
        ));
    }
    rules.extend([
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
    ]);
    rules
}

/// `add map` for `map` in `table`.
#[must_use]
pub fn add_map(table: &str, map: MapName) -> Value {
    let mut object = map.declaration();
    object["family"] = json!("ip");
    object["table"] = json!(table);
    command("add", "map", object)
}

/// The commands that create (or refill) the shared chain `pick`.
#[must_use]
pub fn pick_chain(table: &str, pick: Pick, flush: bool) -> Vec<Value> {
    let chain = pick.chain();
    let name = json!({"family": "ip", "table": table, "name": chain});
    let mut out = vec![command("add", "chain", name.clone())];
    if flush {
        out.push(command("flush", "chain", name));
    }
    out.extend(pick.rules().into_iter().map(|r| rule(table, &chain, r)));
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
