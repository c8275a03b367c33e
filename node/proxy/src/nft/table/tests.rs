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
    assert!(t.contains("add chain svc/default/web/tcp/80"));
    assert!(t.contains("add chain ep/default/web/tcp/80/10.244.1.5/8080"));
    assert!(t.contains("add chain svc/default/db/tcp/80"));
    assert!(t.contains("add element service-ips"));
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
    let t = touched(commands);
    assert!(t.iter().all(|c| c.contains("/web/")), "{t:?}");
    assert!(t.contains("add chain ep/default/web/tcp/80/10.244.1.6/8080"));
    assert!(t.contains("flush chain svc/default/web/tcp/80"));
    // The endpoint that stayed keeps its chain; the frontend keeps its element.
    assert!(
        !t.iter()
            .any(|c| c.contains("10.244.1.5") || c.contains("element"))
    );
}

#[test]
fn a_deleted_services_chains_are_emptied_at_once_and_deleted_a_transaction_later() {
    let mut m = mirror(None);
    m.service_applied(service("web", "10.96.0.10", &json!({})));
    m.slice_applied(slice("web", &["10.244.1.5"]));
    m.sync().unwrap();
    m.service_deleted(&service("web", "10.96.0.10", &json!({})));
    m.sync().unwrap();
    let t = touched(last(&m));
    assert!(t.contains("delete element service-ips"));
    assert!(t.contains("flush chain svc/default/web/tcp/80"));
    assert!(!t.iter().any(|c| c.starts_with("delete chain")), "{t:?}");
    assert!(m.has_deferred());
    m.sync().unwrap();
    let t = touched(last(&m));
    assert_eq!(
        t,
        BTreeSet::from([
            "delete chain ep/default/web/tcp/80/10.244.1.5/8080".to_owned(),
            "delete chain svc/default/web/tcp/80".to_owned(),
        ])
    );
    assert!(!m.has_deferred());
}

#[test]
fn a_service_back_before_its_chains_were_deleted_keeps_them() {
    let mut m = mirror(None);
    let web = service("web", "10.96.0.10", &json!({}));
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
    assert!(t.contains("add chain rej/default/empty/tcp/80"));
    assert!(!t.contains("add element service-ips"));
    let rejects = last(&m)
        .iter()
        .any(|c| c.to_string().contains("\"reject\""));
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
    let elements: Vec<&Value> = last(&m)
        .iter()
        .filter_map(|c| c.get("add")?.get("element"))
        .filter(|e| e["name"] == "service-nodeports")
        .collect();
    let targets: BTreeSet<String> = elements
        .iter()
        .map(|e| {
            e["elem"][0][1]["goto"]["target"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        targets,
        BTreeSet::from([
            "ext/default/np/tcp/80".to_owned(),
            "lo/default/np/tcp/80".to_owned()
        ])
    );
}

/// A listing of a table a previous run left: web's element and chains, and a chain and
/// element of a Service deleted while the node was down.
fn previous_run() -> Vec<Value> {
    let element =
        |ip: &str, target: &str| json!([{"concat": [ip, "tcp", 80]}, {"goto": {"target": target}}]);
    vec![
        json!({"table": {"family": "ip", "name": "skiff-proxy-n1"}}),
        json!({"chain": {"family": "ip", "table": "skiff-proxy-n1", "name": "services"}}),
        json!({"chain": {"family": "ip", "table": "skiff-proxy-n1", "name": "svc/default/web/tcp/80"}}),
        json!({"chain": {"family": "ip", "table": "skiff-proxy-n1", "name": "ep/default/web/tcp/80/10.244.1.5/8080"}}),
        json!({"chain": {"family": "ip", "table": "skiff-proxy-n1", "name": "svc/default/gone/tcp/80"}}),
        json!({"map": {"family": "ip", "table": "skiff-proxy-n1", "name": "service-ips", "elem": [
            element("10.96.0.10", "svc/default/web/tcp/80"),
            element("10.96.0.99", "svc/default/gone/tcp/80"),
        ]}}),
    ]
}

#[test]
fn a_restarted_node_keeps_the_elements_it_finds_and_removes_what_no_service_claims() {
    let mut m = mirror(Some(previous_run()));
    m.service_applied(service("web", "10.96.0.10", &json!({})));
    m.slice_applied(slice("web", &["10.244.1.5"]));
    m.sync().unwrap();
    let t = touched(last(&m));
    // Chains are refilled in place (flush and rules in one transaction); the element that
    // already points at the right chain is not touched.
    assert!(t.contains("flush chain svc/default/web/tcp/80"));
    assert!(!t.iter().any(|c| c.contains("element")), "{t:?}");
    assert!(!t.iter().any(|c| c.contains("delete")), "{t:?}");
    m.finish_adoption().unwrap();
    let t = touched(last(&m));
    assert_eq!(
        t,
        BTreeSet::from([
            "delete element service-ips".to_owned(),
            "flush chain svc/default/gone/tcp/80".to_owned(),
        ])
    );
    m.sync().unwrap();
    assert_eq!(
        touched(last(&m)),
        BTreeSet::from(["delete chain svc/default/gone/tcp/80".to_owned()])
    );
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
    assert!(t.contains("add chain svc/default/db/tcp/80"));
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
    let target = |map: &str, ip: &str| {
        last(&m)
            .iter()
            .filter_map(|c| c.get("add")?.get("element"))
            .find(|e| e["name"] == map && e["elem"][0][0]["concat"][0] == ip)
            .map(|e| e["elem"][0][1].clone())
    };
    // From outside: straight to the local group, no chain that marks for masquerade.
    assert_eq!(
        target("service-nodeports", "192.168.50.20"),
        Some(json!({"goto": {"target": "svc/default/local/tcp/80/local"}}))
    );
    // From the node and its pods: the internal twin, over every endpoint.
    assert_eq!(
        target("internal-services", "192.168.50.20"),
        Some(json!({"goto": {"target": "svc/default/local/tcp/80"}}))
    );
    let local_group = last(&m)
        .iter()
        .filter_map(|c| c.get("add")?.get("rule"))
        .filter(|r| r["chain"] == "svc/default/local/tcp/80/local")
        .map(ToString::to_string)
        .collect::<String>();
    assert!(local_group.contains("10.244.0.5") && !local_group.contains("10.244.1.6"));
}

/// What the kernel would list after `sent`: chains, rules, sets, map elements (adds and
/// deletes of elements and chains applied in order; flushes drop a chain's rules).
fn kernel_after(sent: &[Vec<Value>]) -> Vec<Value> {
    let mut chains: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut maps: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut sets: Vec<Value> = Vec::new();
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
            ("add", "map") => {
                maps.entry(name).or_default();
            }
            ("add", "element") => maps
                .get_mut(&name)
                .unwrap()
                .extend(object["elem"].as_array().unwrap().iter().cloned()),
            ("delete", "element") => {
                let key = &object["elem"][0];
                maps.get_mut(&name).unwrap().retain(|e| e[0] != *key);
            }
            ("add", "set") => sets.push(json!({"set": object})),
            _ => {}
        }
    }
    let mut out = vec![json!({"table": {"family": "ip", "name": "skiff-proxy-n1"}})];
    for (name, elem) in maps {
        out.push(json!({"map": {"name": name, "elem": elem}}));
    }
    out.extend(sets);
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
    assert!(t.contains("flush chain svc/default/web/tcp/80"), "{t:?}");
    assert!(t.contains("flush chain ep/default/web/tcp/80/10.244.1.6/8080"));
    assert!(!t.iter().any(|c| c.contains("10.244.1.5")), "{t:?}");
}
