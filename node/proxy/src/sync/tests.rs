//! The mirror over maps in memory: what each watch event makes it write.

use std::net::Ipv4Addr;

use serde_json::{Value, json};
use skiff_ebpf_common::FrontendKey;

use super::*;
use crate::{
    entries::{Frontend, Protocol, Scope},
    testing::FakeMaps,
};

fn node() -> NodeView {
    NodeView {
        name: "n1".into(),
        addresses: vec![Ipv4Addr::new(192, 168, 50, 20)],
        loopback_node_ports: false,
    }
}

fn mirror() -> Mirror<ServiceTable<FakeMaps>> {
    Mirror::new(ServiceTable::new(FakeMaps::default()), node())
}

fn service(name: &str, ip: &str, ports: &Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": ports},
    }))
    .expect("a Service")
}

fn web() -> Service {
    service(
        "web",
        "10.96.0.10",
        &json!([{"port": 80, "targetPort": 8080}]),
    )
}

fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<Value> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {SERVICE_NAME_LABEL: service},
        },
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": endpoints,
    }))
    .expect("an EndpointSlice")
}

fn key(ip: [u8; 4], port: u16) -> FrontendKey {
    Frontend {
        address: Ipv4Addr::from(ip),
        port,
        protocol: Protocol::Tcp,
        scope: Scope::External,
    }
    .key()
}

/// The backends the kernel would pick from for a frontend, as `a.b.c.d:port`, sorted.
fn reachable(m: &Mirror<ServiceTable<FakeMaps>>, frontend: FrontendKey) -> Vec<String> {
    let mut v: Vec<String> = m
        .table()
        .maps()
        .reachable(frontend)
        .iter()
        .map(|b| {
            format!(
                "{}:{}",
                Ipv4Addr::from(b.address.to_ne_bytes()),
                u16::from_be(b.port)
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_service_and_its_slice_become_a_frontend_over_the_slices_endpoints() {
    let mut m = mirror();
    m.service_applied(web());
    m.slice_applied(slice("web-1", "web", &["10.244.0.5", "10.244.1.6"]));
    let synced = m.sync().unwrap();
    assert_eq!(synced.services, 1);
    assert_eq!(
        reachable(&m, key([10, 96, 0, 10], 80)),
        ["10.244.0.5:8080", "10.244.1.6:8080"]
    );
    assert!(!m.is_dirty());
}

#[test]
fn a_slice_change_plans_only_its_own_service() {
    let mut m = mirror();
    m.service_applied(web());
    m.service_applied(service("db", "10.96.0.11", &json!([{"port": 5432}])));
    m.slice_applied(slice("web-1", "web", &["10.244.0.5"]));
    m.sync().unwrap();
    m.slice_applied(slice("web-1", "web", &["10.244.0.5", "10.244.0.6"]));
    let synced = m.sync().unwrap();
    assert_eq!(
        (synced.services, synced.writes),
        (1, 2),
        "one slot and the count"
    );
    // The same objects again (a resync, a status-only update) plan nothing.
    m.service_applied(web());
    m.slice_applied(slice("web-1", "web", &["10.244.0.5", "10.244.0.6"]));
    assert!(!m.is_dirty());
}

#[test]
fn the_slices_of_a_service_are_merged_and_a_deleted_slice_drops_its_endpoints() {
    let mut m = mirror();
    m.service_applied(web());
    m.slice_applied(slice("web-1", "web", &["10.244.0.5"]));
    m.slice_applied(slice("web-2", "web", &["10.244.1.6"]));
    m.sync().unwrap();
    assert_eq!(reachable(&m, key([10, 96, 0, 10], 80)).len(), 2);
    m.slice_deleted(&slice("web-1", "web", &[]));
    m.sync().unwrap();
    assert_eq!(reachable(&m, key([10, 96, 0, 10], 80)), ["10.244.1.6:8080"]);
}

#[test]
fn a_slice_that_changes_service_label_moves_to_the_other_service() {
    let mut m = mirror();
    m.service_applied(web());
    m.service_applied(service(
        "v2",
        "10.96.0.12",
        &json!([{"port": 80, "targetPort": 8080}]),
    ));
    m.slice_applied(slice("s", "web", &["10.244.0.5"]));
    m.sync().unwrap();
    m.slice_applied(slice("s", "v2", &["10.244.0.5"]));
    assert_eq!(m.sync().unwrap().services, 2);
    assert!(reachable(&m, key([10, 96, 0, 10], 80)).is_empty());
    assert_eq!(reachable(&m, key([10, 96, 0, 12], 80)), ["10.244.0.5:8080"]);
}

#[test]
fn a_deleted_service_takes_its_entries_with_it() {
    let mut m = mirror();
    m.service_applied(web());
    m.slice_applied(slice("web-1", "web", &["10.244.0.5"]));
    m.sync().unwrap();
    m.service_deleted(&web());
    m.sync().unwrap();
    let maps = m.table().maps();
    assert!(maps.frontends.is_empty() && maps.backends.is_empty() && maps.counters.is_empty());
}

#[test]
fn a_relist_drops_services_deleted_while_the_watch_was_down() {
    let mut m = mirror();
    m.service_applied(web());
    m.service_applied(service("db", "10.96.0.11", &json!([{"port": 5432}])));
    m.sync().unwrap();
    m.services_listed(vec![web()]);
    m.slices_listed(vec![slice("web-1", "web", &["10.244.0.5"])]);
    m.sync().unwrap();
    let maps = m.table().maps();
    assert!(!maps.frontends.contains_key(&key([10, 96, 0, 11], 5432)));
    assert_eq!(reachable(&m, key([10, 96, 0, 10], 80)), ["10.244.0.5:8080"]);
}

#[test]
fn an_unsupported_protocol_is_warned_about_once() {
    let mut m = mirror();
    let sctp = service(
        "sig",
        "10.96.0.13",
        &json!([{"port": 3868, "protocol": "SCTP"}, {"port": 80}]),
    );
    m.service_applied(sctp.clone());
    let synced = m.sync().unwrap();
    assert_eq!(synced.warnings.len(), 1);
    assert_eq!(synced.warnings[0].0, ServiceRef::new("default", "sig"));
    m.slice_applied(slice("sig-1", "sig", &["10.244.0.5"]));
    assert!(m.sync().unwrap().warnings.is_empty(), "said once");
    m.service_deleted(&sctp);
    m.sync().unwrap();
    m.service_applied(sctp);
    assert_eq!(
        m.sync().unwrap().warnings.len(),
        1,
        "a new Service is told again"
    );
}

#[test]
fn a_service_waiting_for_a_frontend_another_holds_gets_it_when_it_is_freed() {
    let mut m = mirror();
    m.service_applied(web());
    m.sync().unwrap();
    let twin = service(
        "twin",
        "10.96.0.10",
        &json!([{"port": 80, "targetPort": 8080}]),
    );
    m.service_applied(twin);
    m.slice_applied(slice("twin-1", "twin", &["10.244.0.9"]));
    let synced = m.sync().unwrap();
    assert_eq!(synced.conflicts.len(), 1);
    m.service_deleted(&web());
    m.sync().unwrap();
    assert_eq!(reachable(&m, key([10, 96, 0, 10], 80)), ["10.244.0.9:8080"]);
}

#[test]
fn a_failed_write_is_tried_again_at_the_next_sync() {
    let maps = FakeMaps {
        fail_at: Some(1),
        ..FakeMaps::default()
    };
    let mut m = Mirror::new(ServiceTable::new(maps), node());
    m.service_applied(web());
    m.slice_applied(slice("web-1", "web", &["10.244.0.5"]));
    assert!(m.sync().is_err());
    assert!(m.is_dirty());
    m.sync().unwrap();
    assert_eq!(reachable(&m, key([10, 96, 0, 10], 80)), ["10.244.0.5:8080"]);
}

#[test]
fn one_change_among_a_thousand_services_plans_and_writes_only_that_service() {
    let mut m = mirror();
    for i in 0..1000u16 {
        let [hi, lo] = i.to_be_bytes();
        let name = format!("svc-{i}");
        m.service_applied(service(
            &name,
            &format!("10.96.{hi}.{lo}"),
            &json!([{"port": 80, "targetPort": 8080}]),
        ));
        m.slice_applied(slice(&format!("{name}-1"), &name, &["10.244.0.5"]));
    }
    assert_eq!(m.sync().unwrap().services, 1000);
    let before = m.table().maps().log.len();
    m.slice_applied(slice("svc-500-1", "svc-500", &["10.244.0.5", "10.244.0.6"]));
    let synced = m.sync().unwrap();
    assert_eq!((synced.services, synced.writes), (1, 2));
    assert_eq!(m.table().maps().log.len() - before, 2);
    assert_eq!(
        reachable(&m, key([10, 96, 1, 244], 80)),
        ["10.244.0.5:8080", "10.244.0.6:8080"]
    );
}

#[test]
fn health_checks_follow_a_service_into_and_out_of_the_local_load_balancer_policy() {
    let mut m = mirror();
    m.services_listed(vec![web()]);
    let mut local: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "clusterIP": "10.96.0.10",
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 32000,
            "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}],
        },
    }))
    .expect("a Service");
    m.slices_listed(vec![slice("web-1", "web", &["10.244.0.5"])]);
    assert!(m.health_checks().is_empty());
    m.service_applied(local.clone());
    let checks = m.health_checks();
    assert_eq!(checks[&32000].service, ServiceRef::new("default", "web"));
    local.spec.as_mut().expect("a spec").external_traffic_policy = Some("Cluster".into());
    m.service_applied(local.clone());
    assert!(m.health_checks().is_empty());
    local.spec.as_mut().expect("a spec").external_traffic_policy = Some("Local".into());
    m.service_applied(local.clone());
    m.service_deleted(&local);
    assert!(m.health_checks().is_empty());
}
