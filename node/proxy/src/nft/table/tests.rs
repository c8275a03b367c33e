//! The nftables table over a recording fake: what each sync sends, in which transaction.

use std::net::Ipv4Addr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};

use super::*;
use crate::{
    plan::NodeView,
    sync::{Mirror, SERVICE_NAME_LABEL},
};

/// Transactions as they were sent; `listing` is what `list` answers; `fail` refuses the
/// next transaction.
#[derive(Debug, Default)]
struct FakeNft {
    sent: Vec<Vec<Value>>,
    listing: Option<Vec<Value>>,
    fail: bool,
}

impl Nft for FakeNft {
    fn apply(&mut self, commands: &[Value]) -> Result<(), NftError> {
        if std::mem::take(&mut self.fail) {
            return Err(NftError::Json {
                table: "t".into(),
                source: serde_json::from_str::<Value>("x").unwrap_err(),
            });
        }
        self.sent.push(commands.to_vec());
        Ok(())
    }

    fn list(&self) -> Result<Option<Vec<Value>>, NftError> {
        Ok(self.listing.clone())
    }

    fn delete_table(&mut self) -> Result<(), NftError> {
        Ok(())
    }
}

fn node() -> NodeView {
    NodeView {
        name: "n1".into(),
        addresses: vec![Ipv4Addr::new(192, 168, 50, 20)],
        loopback_node_ports: true,
    }
}

fn mirror(listing: Option<Vec<Value>>) -> Mirror<NftTable<FakeNft>> {
    let nft = FakeNft {
        listing,
        ..FakeNft::default()
    };
    Mirror::new(
        NftTable::open(nft, "skiff-proxy-n1", Some("eth0")).unwrap(),
        node(),
    )
}

fn service(name: &str, ip: &str, extra: &Value) -> Service {
    let mut spec = json!({"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

fn slice(service: &str, ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": "n2"}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{service}-1"),
            "namespace": "default",
            "labels": {SERVICE_NAME_LABEL: service},
        },
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

/// The names of the chains, sets and maps a transaction's commands touch.
fn touched(commands: &[Value]) -> BTreeSet<String> {
    commands
        .iter()
        .filter_map(|c| {
            let (verb, body) = c.as_object()?.iter().next()?;
            let (kind, object) = body.as_object()?.iter().next()?;
            let name = object
                .get("chain")
                .or_else(|| object.get("name"))?
                .as_str()?;
            Some(format!("{verb} {kind} {name}"))
        })
        .collect()
}

fn last(m: &Mirror<NftTable<FakeNft>>) -> &[Value] {
    m.table().nft().sent.last().map_or(&[], Vec::as_slice)
}

#[test]
fn opening_lays_down_the_skeleton_in_one_transaction_without_flushing_the_table() {
    let m = mirror(None);
    let sent = &m.table().nft().sent;
    assert_eq!(sent.len(), 1);
    let t = touched(&sent[0]);
    assert!(t.contains("add map service-ips") && t.contains("add chain services"));
    assert!(
        !t.iter()
            .any(|c| c.starts_with("delete") || c.starts_with("flush table"))
    );
}

#[test]
fn a_sync_of_several_services_is_one_transaction() {
    let mut m = mirror(None);
    m.service_applied(service("web", "10.96.0.10", &json!({})));
    m.service_applied(service("db", "10.96.0.11", &json!({})));
    m.slice_applied(slice("web", &["10.244.1.5", "10.244.1.6"]));
    m.slice_applied(slice("db", &["10.244.1.7"]));
    m.sync().unwrap();
    assert_eq!(m.table().nft().sent.len(), 2, "the skeleton, then one sync");
    let t = touched(last(&m));
    // A chain per number of endpoints, shared, and the endpoints as elements.
    assert!(t.contains("add chain pick/ext/tcp/2"));
    assert!(t.contains("add chain pick/ext/tcp/1"));
    assert!(t.contains("add map slot-ext-1-addr"));
    assert!(t.contains("add element slot-ext-1-addr"));
    assert!(t.contains("add element service-ips"));
    assert!(t.contains("add element hairpin"));
    let chains = t.iter().filter(|c| c.starts_with("add chain")).count();
    assert_eq!(chains, 2, "{t:?}");
}

#[test]
fn the_number_of_chains_does_not_grow_with_the_number_of_services() {
    let mut m = mirror(None);
    for i in 0..50u8 {
        let name = format!("s{i}");
        m.service_applied(service(&name, &format!("10.96.1.{i}"), &json!({})));
        m.slice_applied(slice(
            &name,
            &[&format!("10.244.2.{i}"), &format!("10.244.3.{i}")],
        ));
    }
    m.sync().unwrap();
    let t = touched(last(&m));
    let chains: Vec<&String> = t.iter().filter(|c| c.starts_with("add chain")).collect();
    assert_eq!(chains, ["add chain pick/ext/tcp/2"]);
}

#[test]
fn a_service_change_touches_only_that_services_chains_and_elements() {
    let mut m = mirror(None);
    m.service_applied(service("web", "10.96.0.10", &json!({})));
    m.service_applied(service("db", "10.96.0.11", &json!({})));
    m.slice_applied(slice("web", &["10.244.1.5"]));
    m.slice_applied(slice("db", &["10.244.1.7"]));
    m.sync().unwrap();
    m.slice_applied(slice("web", &["10.244.1.5", "10.244.1.6"]));
    m.sync().unwrap();
    let commands = last(&m);
    let text = Value::Array(commands.to_vec()).to_string();
    assert!(
        !text.contains("10.96.0.11") && !text.contains("10.244.1.7"),
        "{text}"
    );
    let t = touched(commands);
    assert!(t.contains("add chain pick/ext/tcp/2"));
    assert!(t.contains("add element slot-ext-1-addr"));
    // The frontend now goes to the chain for two endpoints.
    assert!(t.contains("delete element service-ips") && t.contains("add element service-ips"));
    // The endpoint that stayed keeps its elements.
    assert!(!t.contains("add element slot-ext-0-addr"), "{t:?}");
}

#[test]
fn an_endpoint_two_services_share_stays_in_the_hairpin_set_until_both_let_it_go() {
    let mut m = mirror(None);
    m.service_applied(service("a", "10.96.0.10", &json!({})));
    m.service_applied(service("b", "10.96.0.11", &json!({})));
    m.slice_applied(slice("a", &["10.244.1.5"]));
    m.slice_applied(slice("b", &["10.244.1.5"]));
    m.sync().unwrap();
    let hairpin = |commands: &[Value], verb: &str| {
        commands
            .iter()
            .filter_map(|c| c.get(verb)?.get("element"))
            .filter(|e| e["name"] == "hairpin")
            .count()
    };
    assert_eq!(hairpin(last(&m), "add"), 1);
    m.service_deleted(&service("a", "10.96.0.10", &json!({})));
    m.sync().unwrap();
    assert_eq!(hairpin(last(&m), "delete"), 0);
    m.service_deleted(&service("b", "10.96.0.11", &json!({})));
    m.sync().unwrap();
    assert_eq!(hairpin(last(&m), "delete"), 1);
}

#[test]
fn a_deleted_services_chains_are_emptied_at_once_and_deleted_a_transaction_later() {
    let mut m = mirror(None);
    let web = service("web", "10.96.0.10", &json!({"sessionAffinity": "ClientIP"}));
    m.service_applied(web.clone());
    m.slice_applied(slice("web", &["10.244.1.5"]));
    m.sync().unwrap();
    m.service_deleted(&web);
    m.sync().unwrap();
    let t = touched(last(&m));
    assert!(t.contains("delete element service-ips"));
    assert!(t.contains("flush chain aff/default/web/tcp/80"));
    assert!(!t.iter().any(|c| c.starts_with("delete chain")), "{t:?}");
    assert!(m.has_deferred());
    m.sync().unwrap();
    let t = touched(last(&m));
    assert_eq!(
        t,
        BTreeSet::from([
            "delete chain aff/default/web/tcp/80".to_owned(),
            "delete set aff/default/web/tcp/80/10.244.1.5/8080/10800".to_owned(),
        ])
    );
    assert!(!m.has_deferred());
}

#[test]
fn a_service_back_before_its_chains_were_deleted_keeps_them() {
    let mut m = mirror(None);
    let web = service("web", "10.96.0.10", &json!({"sessionAffinity": "ClientIP"}));
    m.service_applied(web.clone());
    m.slice_applied(slice("web", &["10.244.1.5"]));
    m.sync().unwrap();
    m.service_deleted(&web);
    m.sync().unwrap();
    m.service_applied(web);
    m.sync().unwrap();
    let t = touched(last(&m));
    assert!(!t.iter().any(|c| c.starts_with("delete chain")), "{t:?}");
    assert!(t.contains("add element service-ips"));
    assert!(!m.has_deferred());
}

#[test]
fn a_service_without_endpoints_goes_to_a_reject_chain_and_not_to_the_nat_maps() {
    let mut m = mirror(None);
    m.service_applied(service("empty", "10.96.0.12", &json!({})));
    m.sync().unwrap();
    let t = touched(last(&m));
    assert!(t.contains("add element no-endpoint-services"));
    assert!(!t.contains("add element service-ips"));
    let element = last(&m)
        .iter()
        .find_map(|c| c.get("add")?.get("element"))
        .unwrap();
    assert_eq!(element["elem"][0][1]["goto"]["target"], "reject");
    assert_eq!(element["elem"][0][0]["elem"]["comment"], "default/empty");
    let opening = &m.table().nft().sent[0];
    let rejects = opening.iter().any(|c| {
        c["add"]["rule"]["chain"] == "reject" && c.to_string().contains("\"reject\":null")
    });
    assert!(rejects);
}

#[test]
fn client_ip_affinity_gets_a_timed_set_per_endpoint() {
    let mut m = mirror(None);
    m.service_applied(service(
        "sticky",
        "10.96.0.13",
        &json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
    ));
    m.slice_applied(slice("sticky", &["10.244.1.5"]));
    m.sync().unwrap();
    let set = last(&m)
        .iter()
        .find_map(|c| c.get("add")?.get("set").cloned())
        .unwrap();
    assert_eq!(set["name"], "aff/default/sticky/tcp/80/10.244.1.5/8080/60");
    assert_eq!(set["timeout"], 60);
    assert_eq!(set["flags"], json!(["timeout"]));
}

#[test]
fn node_ports_go_to_their_own_map_and_from_outside_pass_the_masquerade_check() {
    let mut m = mirror(None);
    let mut svc = service("np", "10.96.0.14", &json!({"type": "NodePort"}));
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(30080);
    m.service_applied(svc);
    m.slice_applied(slice("np", &["10.244.1.5"]));
    m.sync().unwrap();
    let added = |set: &str| -> BTreeSet<String> {
        last(&m)
            .iter()
            .filter_map(|c| c.get("add")?.get("element"))
            .filter(|e| e["name"] == set)
            .flat_map(|e| e["elem"].as_array().unwrap().iter().map(Value::to_string))
            .collect()
    };
    let key = |ip: &str| json!({"concat": [ip, "tcp", 30080]}).to_string();
    let node_ports: BTreeSet<String> = added("service-nodeports")
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap()[0]["elem"]["val"].to_string())
        .collect();
    assert_eq!(
        node_ports,
        BTreeSet::from([key("127.0.0.1"), key("192.168.50.20")])
    );
    // From outside through the node's address: masqueraded for a remote endpoint.
    assert_eq!(
        added("outside-frontends"),
        BTreeSet::from([key("192.168.50.20")])
    );
    assert_eq!(
        added("remote-endpoints"),
        BTreeSet::from([json!("10.244.1.5").to_string()])
    );
    // 127.0.0.1: always masqueraded.
    assert_eq!(
        added("host-only-frontends"),
        BTreeSet::from([key("127.0.0.1")])
    );
}

/// A listing of a table a previous run left: web's elements and pick chain, and an
/// element, a member and an affinity chain of a Service deleted while the node was down.
fn previous_run() -> Vec<Value> {
    let key = |ip: &str| json!({"concat": [ip, "tcp", 80]});
    let counted = |ip: &str, service: &str, target: &str| json!([{"elem": {"val": key(ip), "comment": service, "counter": {"packets": 1, "bytes": 60}}}, {"goto": {"target": target}}]);
    let table = "skiff-proxy-n1";
    vec![
        json!({"table": {"family": "ip", "name": table}}),
        json!({"chain": {"family": "ip", "table": table, "name": "services"}}),
        json!({"chain": {"family": "ip", "table": table, "name": "pick/ext/tcp/1"}}),
        json!({"chain": {"family": "ip", "table": table, "name": "aff/default/gone/tcp/80"}}),
        json!({"map": {"family": "ip", "table": table, "name": "service-ips", "stmt": [{"counter": null}], "elem": [
            counted("10.96.0.10", "default/web", "pick/ext/tcp/1"),
            counted("10.96.0.99", "default/gone", "aff/default/gone/tcp/80"),
        ]}}),
        json!({"map": {"family": "ip", "table": table, "name": "slot-ext-0-addr", "elem": [
            [key("10.96.0.10"), "10.244.1.5"],
        ]}}),
        json!({"map": {"family": "ip", "table": table, "name": "slot-ext-0-port", "elem": [
            [key("10.96.0.10"), 8080],
        ]}}),
        json!({"set": {"family": "ip", "table": table, "name": "remote-endpoints", "elem": ["10.244.1.5"]}}),
        json!({"set": {"family": "ip", "table": table, "name": "hairpin", "elem": [
            {"concat": ["10.244.1.5", "10.244.1.5"]},
            {"concat": ["10.244.9.9", "10.244.9.9"]},
        ]}}),
    ]
}

#[test]
fn a_restarted_node_keeps_the_elements_it_finds_and_removes_what_no_service_claims() {
    let mut m = mirror(Some(previous_run()));
    assert!(m.table().found());
    // The pick chain found is refilled in the opening transaction.
    let opening = touched(&m.table().nft().sent[0]);
    assert!(
        opening.contains("flush chain pick/ext/tcp/1"),
        "{opening:?}"
    );
    m.service_applied(service("web", "10.96.0.10", &json!({})));
    m.slice_applied(slice("web", &["10.244.1.5"]));
    m.sync().unwrap();
    // What already holds the right values is not touched.
    assert_eq!(
        m.table().nft().sent.len(),
        1,
        "{:?}",
        m.table().nft().sent.get(1)
    );
    m.finish_adoption().unwrap();
    let t = touched(last(&m));
    assert_eq!(
        t,
        BTreeSet::from([
            "delete element service-ips".to_owned(),
            "delete element hairpin".to_owned(),
            "flush chain aff/default/gone/tcp/80".to_owned(),
        ])
    );
    m.sync().unwrap();
    assert_eq!(
        touched(last(&m)),
        BTreeSet::from(["delete chain aff/default/gone/tcp/80".to_owned()])
    );
}

#[test]
fn a_table_of_the_earlier_layout_is_replaced_in_the_opening_transaction() {
    let earlier = vec![
        json!({"table": {"family": "ip", "name": "skiff-proxy-n1"}}),
        json!({"chain": {"family": "ip", "table": "skiff-proxy-n1", "name": "svc/default/web/tcp/80"}}),
        json!({"map": {"family": "ip", "table": "skiff-proxy-n1", "name": "service-ips", "elem": []}}),
    ];
    let mut m = mirror(Some(earlier));
    assert!(!m.table().found());
    let opening = &m.table().nft().sent[0];
    assert_eq!(
        touched(&opening[..2]),
        BTreeSet::from([
            "add table skiff-proxy-n1".to_owned(),
            "delete table skiff-proxy-n1".to_owned()
        ])
    );
    m.service_applied(service("web", "10.96.0.10", &json!({})));
    m.slice_applied(slice("web", &["10.244.1.5"]));
    m.sync().unwrap();
    assert!(touched(last(&m)).contains("add element service-ips"));
}

#[test]
fn a_refused_transaction_is_sent_again_in_full_at_the_next_sync() {
    let mut m = mirror(None);
    m.service_applied(service("web", "10.96.0.10", &json!({})));
    m.slice_applied(slice("web", &["10.244.1.5"]));
    m.sync().unwrap();
    m.service_applied(service("db", "10.96.0.11", &json!({})));
    m.slice_applied(slice("db", &["10.244.1.7"]));
    let sent_before = m.table().nft().sent.len();
    fail_next(&mut m);
    assert!(m.sync().is_err());
    assert_eq!(m.table().nft().sent.len(), sent_before);
    assert!(m.is_dirty(), "every Service is applied again");
    m.sync().unwrap();
    let t = touched(last(&m));
    assert!(t.contains("add element slot-ext-0-addr"));
    assert!(t.contains("add element service-ips"));
}

fn fail_next(m: &mut Mirror<NftTable<FakeNft>>) {
    m.table_mut().nft.fail = true;
}

#[test]
fn a_removed_udp_backend_is_reported_for_its_conntrack_entries() {
    let mut m = mirror(None);
    let mut dns = service("dns", "10.96.0.53", &json!({}));
    dns.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    m.service_applied(dns);
    let mut s = slice("dns", &["10.244.1.5", "10.244.1.6"]);
    s.ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    m.slice_applied(s.clone());
    m.sync().unwrap();
    s.endpoints.pop();
    m.slice_applied(s);
    m.sync().unwrap();
    assert!(m.udp_backends_removed());
    let removed = m.table_mut().take_removed_udp();
    assert_eq!(
        removed,
        BTreeSet::from(["10.244.1.6:8080".parse().unwrap()])
    );
}

#[test]
fn external_policy_local_keeps_the_client_ip_and_sends_the_node_to_every_endpoint() {
    let mut m = mirror(None);
    let mut svc = service(
        "local",
        "10.96.0.15",
        &json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
    );
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(30081);
    m.service_applied(svc);
    let mut s = slice("local", &["10.244.0.5", "10.244.1.6"]);
    s.endpoints[0].node_name = Some("n1".into());
    m.slice_applied(s);
    m.sync().unwrap();
    let value = |map: &str, ip: &str| {
        last(&m)
            .iter()
            .filter_map(|c| c.get("add")?.get("element"))
            .filter(|e| e["name"] == map)
            .flat_map(|e| e["elem"].as_array().unwrap().iter())
            .find(|e| e[0]["concat"][0] == ip || e[0]["elem"]["val"]["concat"][0] == ip)
            .map(|e| e[1].clone())
    };
    // From outside: to the local endpoint only, and not marked for masquerade.
    assert_eq!(
        value("service-nodeports", "192.168.50.20"),
        Some(json!({"goto": {"target": "pick/ext/tcp/1"}}))
    );
    assert_eq!(
        value("slot-ext-0-addr", "192.168.50.20"),
        Some(json!("10.244.0.5"))
    );
    let outside = last(&m)
        .iter()
        .filter_map(|c| c.get("add")?.get("element"))
        .any(|e| e["name"] == "outside-frontends");
    assert!(!outside);
    // From the node and its pods: the internal twin, over every endpoint.
    assert_eq!(
        value("internal-services", "192.168.50.20"),
        Some(json!({"goto": {"target": "pick/int/tcp/2"}}))
    );
    assert_eq!(
        value("slot-int-1-addr", "192.168.50.20"),
        Some(json!("10.244.1.6"))
    );
}

/// What the kernel would list after `sent`: chains, rules, sets and maps with their
/// elements (adds and deletes applied in order; flushes drop a chain's rules).
fn kernel_after(sent: &[Vec<Value>]) -> Vec<Value> {
    let mut chains: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    // Maps and sets: the object as added, and its elements.
    let mut holders: BTreeMap<String, (String, Value, Vec<Value>)> = BTreeMap::new();
    let key_of = |e: &Value| -> Value {
        let first = e.as_array().map_or(e, |pair| &pair[0]);
        first.get("elem").map_or(first, |w| &w["val"]).clone()
    };
    for command in sent.iter().flatten() {
        let (verb, body) = command.as_object().unwrap().iter().next().unwrap();
        let (kind, object) = body.as_object().unwrap().iter().next().unwrap();
        let name = object["name"].as_str().unwrap_or_default().to_owned();
        match (verb.as_str(), kind.as_str()) {
            ("add", "chain") => {
                chains.entry(name).or_default();
            }
            ("delete", "chain") => {
                chains.remove(&name);
            }
            ("flush", "chain") => chains.insert(name, Vec::new()).map_or((), drop),
            ("add", "rule") => chains
                .get_mut(object["chain"].as_str().unwrap())
                .unwrap()
                .push(object.clone()),
            ("add", "map" | "set") => {
                holders
                    .entry(name)
                    .or_insert_with(|| (kind.clone(), object.clone(), Vec::new()));
            }
            ("delete", "set") => {
                holders.remove(&name);
            }
            ("add", "element") => holders
                .get_mut(&name)
                .unwrap()
                .2
                .extend(object["elem"].as_array().unwrap().iter().cloned()),
            ("delete", "element") => {
                let key = &object["elem"][0];
                holders
                    .get_mut(&name)
                    .unwrap()
                    .2
                    .retain(|e| key_of(e) != *key);
            }
            _ => {}
        }
    }
    let mut out = vec![json!({"table": {"family": "ip", "name": "skiff-proxy-n1"}})];
    for (kind, mut object, elem) in holders.into_values() {
        object["elem"] = Value::Array(elem);
        out.push(json!({kind: object}));
    }
    for (name, rules) in chains {
        out.push(json!({"chain": {"name": name}}));
        out.extend(rules.into_iter().map(|r| json!({"rule": r})));
    }
    out
}

#[test]
fn a_restarted_node_whose_table_holds_what_it_wants_writes_nothing_but_the_skeleton() {
    let mut m = mirror(None);
    let svcs = [
        service("web", "10.96.0.10", &json!({"sessionAffinity": "ClientIP"})),
        service("empty", "10.96.0.12", &json!({})),
    ];
    for s in &svcs {
        m.service_applied(s.clone());
    }
    m.slice_applied(slice("web", &["10.244.1.5", "10.244.1.6"]));
    m.sync().unwrap();
    m.finish_adoption().unwrap();
    let listing = kernel_after(&m.table().nft().sent);

    let mut restarted = mirror(Some(listing));
    assert!(restarted.table().found());
    for s in &svcs {
        restarted.service_applied(s.clone());
    }
    restarted.slice_applied(slice("web", &["10.244.1.5", "10.244.1.6"]));
    restarted.sync().unwrap();
    restarted.finish_adoption().unwrap();
    assert_eq!(
        restarted.table().nft().sent.len(),
        1,
        "only the skeleton: {:?}",
        restarted.table().nft().sent.get(1)
    );
    // A change after the restart rewrites only what changed.
    restarted.slice_applied(slice("web", &["10.244.1.5"]));
    restarted.sync().unwrap();
    let t = touched(last(&restarted));
    assert!(t.contains("flush chain aff/default/web/tcp/80"), "{t:?}");
    assert!(!t.iter().any(|c| c.contains("10.244.1.5")), "{t:?}");
}

#[test]
fn elements_of_many_services_go_in_one_command_per_map_and_verb() {
    let mut m = mirror(None);
    for i in 0..50u8 {
        let name = format!("s{i}");
        m.service_applied(service(&name, &format!("10.96.1.{i}"), &json!({})));
        m.slice_applied(slice(&name, &[&format!("10.244.2.{i}")]));
    }
    m.sync().unwrap();
    let ips: Vec<&Value> = last(&m)
        .iter()
        .filter_map(|c| c.get("add")?.get("element"))
        .filter(|e| e["name"] == "service-ips")
        .collect();
    assert_eq!(ips.len(), 1);
    assert_eq!(ips[0]["elem"].as_array().unwrap().len(), 50);
}

#[test]
fn an_element_added_and_changed_within_one_sync_is_only_added_with_its_last_value() {
    let mut m = mirror(None);
    m.service_applied(service("web", "10.96.0.10", &json!({})));
    m.slice_applied(slice("web", &["10.244.1.5"]));
    m.slice_applied(slice("web", &["10.244.1.6"]));
    m.sync().unwrap();
    let text = Value::Array(last(&m).to_vec()).to_string();
    assert!(!text.contains("\"delete\""), "{text}");
    assert!(
        text.contains("10.244.1.6") && !text.contains("10.244.1.5"),
        "{text}"
    );
}

#[test]
fn a_changed_element_is_deleted_first_and_added_last_in_its_transaction() {
    let mut m = mirror(None);
    m.service_applied(service("web", "10.96.0.10", &json!({})));
    m.slice_applied(slice("web", &["10.244.1.5"]));
    m.sync().unwrap();
    m.slice_applied(slice("web", &["10.244.1.6", "10.244.1.7"]));
    m.sync().unwrap();
    let kinds: Vec<String> = last(&m)
        .iter()
        .map(|c| {
            let (verb, body) = c.as_object().unwrap().iter().next().unwrap();
            let kind = body.as_object().unwrap().keys().next().unwrap();
            format!("{verb} {kind}")
        })
        .collect();
    // Deletions, then the new pick chain and its maps, then the elements naming them.
    let deletes = kinds.iter().take_while(|k| *k == "delete element").count();
    let first_add = kinds.iter().position(|k| k == "add element").unwrap();
    assert!(deletes > 0, "{kinds:?}");
    assert!(
        kinds[deletes..first_add]
            .iter()
            .all(|k| !k.ends_with(" element")),
        "{kinds:?}"
    );
    assert!(
        kinds[first_add..].iter().all(|k| k == "add element"),
        "{kinds:?}"
    );
}
