//! Egress masquerade for pod traffic leaving the cluster's pod network, in an nftables
//! table of the node's own (`ip skiff-<bridge>`), so several nodes on one host and other
//! users of nftables never step on each other: only that table is ever replaced or deleted.
//!
//! The pod network is a set (`pod-networks`) holding the node's own pod CIDR and every
//! peer's: traffic between pods of different nodes keeps its source pod IP, and a peer
//! coming or going changes one set element, never the rule. A restarted node keeps the
//! peers' elements it finds in the table, so its pods' traffic to other nodes is never
//! masqueraded while the peer controller has not synced yet.

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashSet},
};

use nftables::{
    batch::Batch,
    expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix},
    helper::{self, NftablesError},
    schema::{
        Chain, Element, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
    },
    stmt::{Match, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};
use skiff_types::Ipv4Cidr;
use tracing::{debug, info};

/// The NAT chain's name.
const CHAIN: &str = "postrouting";
/// The set of pod CIDRs (this node's and its peers') traffic to which is not masqueraded.
pub const POD_NETWORKS: &str = "pod-networks";
/// Source NAT priority (`srcnat`).
const SRCNAT_PRIORITY: i32 = 100;

/// Errors applying or removing the masquerade table.
#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    /// `nft` failed.
    #[error("nftables table {table}: {source}")]
    Nft {
        /// The table.
        table: String,
        /// The cause.
        source: NftablesError,
    },
}

/// The node's table name for `bridge`.
#[must_use]
pub fn table_name(bridge: &str) -> String {
    format!("skiff-{bridge}")
}

fn prefix(cidr: Ipv4Cidr) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(cidr.network().to_string()))),
        len: u32::from(cidr.prefix()),
    }))
}

fn set_element(table: &str, cidr: Ipv4Cidr) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_owned()),
        name: Cow::Borrowed(POD_NETWORKS),
        elem: Cow::Owned(vec![prefix(cidr)]),
    })
}

/// The batch that replaces the node's table with one masquerading traffic from `pod_cidr`
/// that leaves the pod networks (`pod_cidr` and `peers`) through another interface than the
/// bridge. Adding the table before deleting it makes the delete succeed whether or not it
/// existed, all in one transaction.
#[must_use]
pub fn ruleset(bridge: &str, pod_cidr: Ipv4Cidr, peers: &BTreeSet<Ipv4Cidr>) -> Nftables<'static> {
    let table = table_name(bridge);
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table_object(&table)));
    batch.delete(NfListObject::Table(table_object(&table)));
    batch.add(NfListObject::Table(table_object(&table)));
    batch.add(NfListObject::Set(Box::new(Set {
        family: NfFamily::IP,
        table: Cow::Owned(table.clone()),
        name: Cow::Borrowed(POD_NETWORKS),
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        flags: Some(HashSet::from([SetFlag::Interval])),
        ..Set::default()
    })));
    for cidr in std::iter::once(pod_cidr).chain(peers.iter().copied()) {
        batch.add(set_element(&table, cidr));
    }
    batch.add(NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Owned(table.clone()),
        name: Cow::Borrowed(CHAIN),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(SRCNAT_PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }));
    let ip_field = |field: &'static str| {
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: Cow::Borrowed("ip"),
                field: Cow::Borrowed(field),
            },
        )))
    };
    batch.add(NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: Cow::Owned(table),
        chain: Cow::Borrowed(CHAIN),
        expr: Cow::Owned(vec![
            Statement::Match(Match {
                left: ip_field("saddr"),
                right: prefix(pod_cidr),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: ip_field("daddr"),
                right: Expression::String(Cow::Owned(format!("@{POD_NETWORKS}"))),
                op: Operator::NEQ,
            }),
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Meta(Meta {
                    key: MetaKey::Oifname,
                })),
                right: Expression::String(Cow::Owned(bridge.to_owned())),
                op: Operator::NEQ,
            }),
            Statement::Masquerade(None),
        ]),
        handle: None,
        index: None,
        comment: Some(Cow::Borrowed("skiff pod egress")),
    }));
    batch.to_nftables()
}

/// The batch that adds peers' pod CIDRs to the pod networks and removes others, in one
/// transaction.
#[must_use]
pub fn pod_networks_change(
    bridge: &str,
    add: &[Ipv4Cidr],
    remove: &[Ipv4Cidr],
) -> Nftables<'static> {
    let table = table_name(bridge);
    let mut batch = Batch::new();
    for cidr in add {
        batch.add(set_element(&table, *cidr));
    }
    for cidr in remove {
        batch.delete(set_element(&table, *cidr));
    }
    batch.to_nftables()
}

/// Adds and removes pod networks (peers' pod CIDRs) in the calling thread's network
/// namespace.
///
/// # Errors
/// If `nft` fails.
pub fn change_pod_networks(
    bridge: &str,
    add: &[Ipv4Cidr],
    remove: &[Ipv4Cidr],
) -> Result<(), MasqueradeError> {
    if add.is_empty() && remove.is_empty() {
        return Ok(());
    }
    helper::apply_ruleset(&pod_networks_change(bridge, add, remove)).map_err(|source| {
        MasqueradeError::Nft {
            table: table_name(bridge),
            source,
        }
    })
}

/// The batch that deletes the node's table whether or not it exists.
#[must_use]
pub fn removal(bridge: &str) -> Nftables<'static> {
    let table = table_name(bridge);
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table_object(&table)));
    batch.delete(NfListObject::Table(table_object(&table)));
    batch.to_nftables()
}

fn table_object(name: &str) -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: Cow::Owned(name.to_owned()),
        handle: None,
    }
}

/// Installs (replacing) the masquerade table in the calling thread's network namespace.
///
/// Runs `nft` synchronously on purpose: a child process inherits the namespaces of the
/// thread that forks it, and this happens once per setup, in milliseconds.
///
/// # Errors
/// If `nft` fails.
pub(super) fn apply(bridge: &str, pod_cidr: Ipv4Cidr) -> Result<(), MasqueradeError> {
    let mut peers = pod_networks(bridge);
    peers.remove(&pod_cidr);
    helper::apply_ruleset(&ruleset(bridge, pod_cidr, &peers)).map_err(|source| {
        MasqueradeError::Nft {
            table: table_name(bridge),
            source,
        }
    })?;
    info!(
        table = table_name(bridge),
        peers_kept = peers.len(),
        "installed pod egress masquerade"
    );
    Ok(())
}

/// The pod networks now in the node's table, in the calling thread's network namespace;
/// none when the table does not exist (or `nft` cannot list it).
#[must_use]
pub fn pod_networks(bridge: &str) -> BTreeSet<Ipv4Cidr> {
    let table = table_name(bridge);
    match helper::get_current_ruleset_with_args(
        helper::DEFAULT_NFT,
        ["list", "set", "ip", table.as_str(), POD_NETWORKS],
    ) {
        Ok(listed) => set_elements(&listed),
        Err(err) => {
            debug!(%table, %err, "no pod networks to keep");
            BTreeSet::new()
        }
    }
}

/// The IPv4 prefixes and addresses listed as elements of the pod networks set.
fn set_elements(listed: &Nftables<'_>) -> BTreeSet<Ipv4Cidr> {
    let element = |e: &Expression<'_>| match e {
        Expression::Named(NamedExpression::Prefix(p)) => match p.addr.as_ref() {
            Expression::String(addr) => format!("{addr}/{}", p.len).parse().ok(),
            _ => None,
        },
        Expression::String(addr) => format!("{addr}/32").parse().ok(),
        _ => None,
    };
    listed
        .objects
        .iter()
        .filter_map(|o| match o {
            nftables::schema::NfObject::ListObject(NfListObject::Set(set))
                if set.name == POD_NETWORKS =>
            {
                set.elem.as_deref()
            }
            _ => None,
        })
        .flatten()
        .filter_map(element)
        .collect()
}

/// Deletes the masquerade table if it exists, in the calling thread's network namespace.
///
/// # Errors
/// If `nft` fails.
pub(super) fn remove(bridge: &str) -> Result<(), MasqueradeError> {
    helper::apply_ruleset(&removal(bridge)).map_err(|source| MasqueradeError::Nft {
        table: table_name(bridge),
        source,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ruleset_replaces_only_the_nodes_own_table_with_one_masquerade_rule() {
        let doc = serde_json::to_value(ruleset(
            "skiff0",
            "10.244.1.0/24".parse().unwrap(),
            &BTreeSet::new(),
        ))
        .unwrap();
        let cmds = doc["nftables"].as_array().unwrap();
        let table = json!({"family": "ip", "name": "skiff-skiff0"});
        assert_eq!(cmds[0], json!({"add": {"table": table}}));
        assert_eq!(cmds[1], json!({"delete": {"table": table}}));
        assert_eq!(cmds[2], json!({"add": {"table": table}}));
        let set = &cmds[3]["add"]["set"];
        assert_eq!(set["name"], "pod-networks");
        assert_eq!(set["flags"], json!(["interval"]));
        assert_eq!(
            cmds[4]["add"]["element"]["elem"],
            json!([{"prefix": {"addr": "10.244.1.0", "len": 24}}])
        );
        let chain = &cmds[5]["add"]["chain"];
        assert_eq!(chain["hook"], "postrouting");
        assert_eq!(chain["type"], "nat");
        let rule = &cmds[6]["add"]["rule"];
        assert_eq!(rule["table"], "skiff-skiff0");
        let expr = rule["expr"].as_array().unwrap();
        let prefix = json!({"prefix": {"addr": "10.244.1.0", "len": 24}});
        assert_eq!(
            expr[0]["match"]["left"],
            json!({"payload": {"protocol": "ip", "field": "saddr"}})
        );
        assert_eq!(expr[0]["match"]["right"], prefix);
        assert_eq!(expr[0]["match"]["op"], "==");
        assert_eq!(expr[1]["match"]["op"], "!=");
        assert_eq!(expr[1]["match"]["right"], "@pod-networks");
        assert_eq!(
            expr[2]["match"]["left"],
            json!({"meta": {"key": "oifname"}})
        );
        assert_eq!(expr[2]["match"]["right"], "skiff0");
        assert_eq!(expr[2]["match"]["op"], "!=");
        assert!(expr[3].get("masquerade").is_some());
        assert_eq!(cmds.len(), 7);
    }

    #[test]
    fn a_replaced_table_keeps_the_peers_it_is_given_beside_the_nodes_own_cidr() {
        let peers = BTreeSet::from(["10.244.2.0/24".parse().unwrap()]);
        let doc = serde_json::to_value(ruleset("skiff0", "10.244.1.0/24".parse().unwrap(), &peers))
            .unwrap();
        let elements: Vec<_> = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"]["element"].get("elem"))
            .cloned()
            .collect();
        assert_eq!(
            elements,
            [
                json!([{"prefix": {"addr": "10.244.1.0", "len": 24}}]),
                json!([{"prefix": {"addr": "10.244.2.0", "len": 24}}]),
            ]
        );
    }

    #[test]
    fn listed_set_elements_are_read_back_as_cidrs() {
        // What `nft -j list set ip skiff-skiff0 pod-networks` prints.
        let listed: Nftables<'_> = serde_json::from_value(json!({"nftables": [
            {"metainfo": {"version": "1.0.9", "release_name": "Old Doc Yak #3", "json_schema_version": 1}},
            {"set": {"family": "ip", "name": "pod-networks", "table": "skiff-skiff0",
                     "type": "ipv4_addr", "handle": 1, "flags": ["interval"],
                     "elem": [{"prefix": {"addr": "10.244.1.0", "len": 24}},
                              {"prefix": {"addr": "10.244.2.0", "len": 24}},
                              "10.9.9.9"]}}
        ]}))
        .unwrap();
        let cidrs: Vec<String> = set_elements(&listed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(cidrs, ["10.9.9.9/32", "10.244.1.0/24", "10.244.2.0/24"]);
    }

    #[test]
    fn a_peer_change_touches_only_set_elements() {
        let doc = serde_json::to_value(pod_networks_change(
            "skiff0",
            &["10.244.2.0/24".parse().unwrap()],
            &["10.244.3.0/24".parse().unwrap()],
        ))
        .unwrap();
        let cmds = doc["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0]["add"]["element"]["name"], "pod-networks");
        assert_eq!(
            cmds[1]["delete"]["element"]["elem"],
            json!([{"prefix": {"addr": "10.244.3.0", "len": 24}}])
        );
    }

    #[test]
    fn removal_deletes_the_table_even_when_absent() {
        let doc = serde_json::to_value(removal("br9")).unwrap();
        let table = json!({"family": "ip", "name": "skiff-br9"});
        assert_eq!(
            doc["nftables"],
            json!([{"add": {"table": table}}, {"delete": {"table": table}}])
        );
    }
}
