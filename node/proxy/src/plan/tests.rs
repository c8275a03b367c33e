//! The planner on Services and EndpointSlices written as the API server returns them.

use serde_json::{Value, json};

use super::*;

fn node() -> NodeView {
    NodeView {
        name: "n1".into(),
        addresses: vec![Ipv4Addr::new(192, 168, 50, 20)],
        loopback_node_ports: true,
    }
}

fn service(spec: &Value) -> Service {
    service_with_status(spec, &json!({}))
}

fn service_with_status(spec: &Value, status: &Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
        "status": status,
    }))
    .expect("a Service")
}

/// An endpoint: address, node, and (ready, serving, terminating).
fn endpoint(ip: &str, node: &str, conditions: (bool, bool, bool)) -> Value {
    let (ready, serving, terminating) = conditions;
    json!({
        "addresses": [ip],
        "nodeName": node,
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
    })
}

const READY: (bool, bool, bool) = (true, true, false);

fn slice(ports: &Value, endpoints: &[Value]) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": "web-abc", "namespace": "default"},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }))
    .expect("an EndpointSlice")
}

fn at(ip: [u8; 4], port: u16, protocol: Protocol, scope: Scope) -> Frontend {
    Frontend {
        address: Ipv4Addr::from(ip),
        port,
        protocol,
        scope,
    }
}

fn tcp(ip: [u8; 4], port: u16) -> Frontend {
    at(ip, port, Protocol::Tcp, Scope::External)
}

fn addresses(endpoints: &[Endpoint]) -> Vec<String> {
    endpoints.iter().map(|e| e.address.to_string()).collect()
}

/// The endpoints the frontend's group holds.
fn backends_of(plan: &Plan, frontend: Frontend) -> Vec<String> {
    let entry = plan.entries.frontends[&frontend];
    addresses(&plan.entries.groups[&entry.group])
}

fn two_port_service() -> (Service, EndpointSlice) {
    let svc = service(&json!({
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
        ],
    }));
    let slice = slice(
        &json!([
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "dns", "port": 5353, "protocol": "UDP"},
        ]),
        &[
            endpoint("10.244.0.5", "n1", READY),
            endpoint("10.244.1.7", "n2", READY),
        ],
    );
    (svc, slice)
}

#[test]
fn a_cluster_ip_serves_every_port_over_tcp_and_udp() {
    let (svc, slice) = two_port_service();
    let plan = plan(&svc, [&slice], &node());
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let http = tcp([10, 96, 0, 10], 80);
    let dns = at([10, 96, 0, 10], 53, Protocol::Udp, Scope::External);
    assert_eq!(
        plan.entries.frontends.keys().copied().collect::<Vec<_>>(),
        vec![dns, http]
    );
    assert_eq!(
        backends_of(&plan, http),
        ["10.244.0.5:8080", "10.244.1.7:8080"]
    );
    assert_eq!(
        backends_of(&plan, dns),
        ["10.244.0.5:5353", "10.244.1.7:5353"]
    );
    let local: Vec<bool> = plan.entries.groups[&plan.entries.frontends[&http].group]
        .iter()
        .map(|e| e.local)
        .collect();
    assert_eq!(local, [true, false], "n1's endpoint is local, n2's is not");
    let entry = plan.entries.frontends[&http];
    assert_eq!(
        (entry.kind, entry.flags, entry.affinity_timeout),
        (Kind::ClusterIp, 0, 0)
    );
}

#[test]
fn an_sctp_port_is_warned_about_and_the_other_ports_still_served() {
    let svc = service(&json!({
        "clusterIP": "10.96.0.10",
        "ports": [
            {"name": "sig", "port": 3868, "protocol": "SCTP"},
            {"name": "http", "port": 80, "protocol": "TCP"},
        ],
    }));
    let plan = plan(&svc, [], &node());
    assert_eq!(plan.warnings.len(), 1);
    assert_eq!(plan.warnings[0].reason, "UnsupportedProtocol");
    assert!(
        plan.warnings[0].message.contains("SCTP") && plan.warnings[0].message.contains("3868"),
        "{}",
        plan.warnings[0].message
    );
    assert_eq!(
        plan.entries.frontends.keys().copied().collect::<Vec<_>>(),
        vec![tcp([10, 96, 0, 10], 80)]
    );
}

#[test]
fn a_service_without_endpoints_has_frontends_with_an_empty_group() {
    let (svc, _) = two_port_service();
    let plan = plan(&svc, [], &node());
    let entry = plan.entries.frontends[&tcp([10, 96, 0, 10], 80)];
    assert!(plan.entries.groups[&entry.group].is_empty());
}

#[test]
fn a_node_port_is_served_on_every_node_address_and_on_the_hosts_loopback() {
    let svc = service(&json!({
        "type": "NodePort",
        "clusterIP": "10.96.0.10",
        "ports": [{"port": 80, "nodePort": 30080, "targetPort": 8080}],
    }));
    let mut view = node();
    view.addresses.push(Ipv4Addr::new(10, 0, 0, 4));
    let plan = plan(&svc, [], &view);
    let keys: Vec<Frontend> = plan.entries.frontends.keys().copied().collect();
    assert_eq!(
        keys,
        vec![
            tcp([10, 0, 0, 4], 30080),
            tcp([10, 96, 0, 10], 80),
            tcp([127, 0, 0, 1], 30080),
            tcp([192, 168, 50, 20], 30080),
        ]
    );
    let loopback = plan.entries.frontends[&tcp([127, 0, 0, 1], 30080)];
    assert_eq!(loopback.kind, Kind::NodePort);
    assert_eq!(
        loopback.flags, FLAG_HOST_ONLY,
        "only the host's sockets use 127.0.0.1"
    );
    assert_eq!(plan.entries.frontends[&tcp([10, 0, 0, 4], 30080)].flags, 0);
    assert_eq!(
        plan.entries.groups.len(),
        1,
        "every frontend shares one group"
    );

    view.loopback_node_ports = false;
    let plan = super::plan(&svc, [], &view);
    assert!(
        !plan
            .entries
            .frontends
            .contains_key(&tcp([127, 0, 0, 1], 30080))
    );
}

#[test]
fn a_cluster_ip_service_has_no_node_port_even_if_one_is_written() {
    let svc = service(&json!({
        "clusterIP": "10.96.0.10",
        "ports": [{"port": 80, "nodePort": 30080}],
    }));
    let plan = plan(&svc, [], &node());
    assert_eq!(plan.entries.frontends.len(), 1);
}

#[test]
fn external_ips_and_load_balancer_ingress_addresses_are_frontends() {
    let svc = service_with_status(
        &json!({
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "externalIPs": ["203.0.113.7", "2001:db8::1"],
            "ports": [{"port": 443, "nodePort": 30443}],
        }),
        &json!({"loadBalancer": {"ingress": [
            {"ip": "198.51.100.9"},
            {"ip": "198.51.100.10", "ipMode": "Proxy"},
            {"hostname": "lb.example"},
        ]}}),
    );
    let plan = plan(&svc, [], &node());
    let kinds: Vec<(Frontend, Kind)> = plan
        .entries
        .frontends
        .iter()
        .map(|(f, e)| (*f, e.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (tcp([10, 96, 0, 10], 443), Kind::ClusterIp),
            (tcp([127, 0, 0, 1], 30443), Kind::NodePort),
            (tcp([192, 168, 50, 20], 30443), Kind::NodePort),
            (tcp([198, 51, 100, 9], 443), Kind::LoadBalancer),
            (tcp([203, 0, 113, 7], 443), Kind::ExternalIp),
        ]
    );
}

#[test]
fn load_balancer_ingress_is_ignored_on_other_service_types() {
    let svc = service_with_status(
        &json!({"clusterIP": "10.96.0.10", "ports": [{"port": 443}]}),
        &json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}),
    );
    assert_eq!(plan(&svc, [], &node()).entries.frontends.len(), 1);
}

#[test]
fn external_name_and_headless_services_have_no_frontends() {
    let external = service(&json!({"type": "ExternalName", "externalName": "db.example"}));
    assert_eq!(plan(&external, [], &node()), Plan::default());
    let headless = service(&json!({"clusterIP": "None", "ports": [{"port": 80}]}));
    assert!(plan(&headless, [], &node()).entries.frontends.is_empty());
}

#[test]
fn only_ready_endpoints_serve_while_any_is_ready() {
    let (svc, _) = two_port_service();
    let s = slice(
        &json!([{"name": "http", "port": 8080}]),
        &[
            endpoint("10.244.0.5", "n1", READY),
            endpoint("10.244.0.6", "n1", (false, false, false)),
            endpoint("10.244.0.7", "n1", (false, true, true)),
        ],
    );
    let plan = plan(&svc, [&s], &node());
    assert_eq!(
        backends_of(&plan, tcp([10, 96, 0, 10], 80)),
        ["10.244.0.5:8080"]
    );
}

#[test]
fn terminating_serving_endpoints_serve_when_none_is_ready() {
    let (svc, _) = two_port_service();
    let s = slice(
        &json!([{"name": "http", "port": 8080}]),
        &[
            endpoint("10.244.0.6", "n1", (false, false, false)),
            endpoint("10.244.0.7", "n1", (false, true, true)),
            endpoint("10.244.0.8", "n2", (false, false, true)),
        ],
    );
    let plan = plan(&svc, [&s], &node());
    let entry = plan.entries.frontends[&tcp([10, 96, 0, 10], 80)];
    let group = &plan.entries.groups[&entry.group];
    assert_eq!(addresses(group), ["10.244.0.7:8080"]);
    assert!(group[0].terminating);
}

#[test]
fn endpoints_without_conditions_count_as_ready() {
    let (svc, _) = two_port_service();
    let s: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-abc"},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["10.244.0.5"]}],
    }))
    .expect("a slice");
    let plan = plan(&svc, [&s], &node());
    assert_eq!(
        backends_of(&plan, tcp([10, 96, 0, 10], 80)),
        ["10.244.0.5:8080"]
    );
}

#[test]
fn publish_not_ready_addresses_serves_every_endpoint() {
    let svc = service(&json!({
        "clusterIP": "10.96.0.10",
        "publishNotReadyAddresses": true,
        "ports": [{"port": 80, "targetPort": 8080}],
    }));
    let s = slice(
        &json!([{"port": 8080}]),
        &[
            endpoint("10.244.0.5", "n1", READY),
            endpoint("10.244.0.6", "n1", (false, false, false)),
        ],
    );
    let plan = plan(&svc, [&s], &node());
    assert_eq!(
        backends_of(&plan, tcp([10, 96, 0, 10], 80)),
        ["10.244.0.5:8080", "10.244.0.6:8080"]
    );
}

#[test]
fn a_named_target_port_resolves_per_endpoint_from_its_slice() {
    let svc = service(&json!({
        "clusterIP": "10.96.0.10",
        "ports": [{"name": "web", "port": 80, "targetPort": "http"}],
    }));
    // Two versions of the pod name their port "http" on different numbers: the
    // EndpointSlice controller puts them in two slices.
    let old = slice(
        &json!([{"name": "web", "port": 8080}]),
        &[endpoint("10.244.0.5", "n1", READY)],
    );
    let new = slice(
        &json!([{"name": "web", "port": 9090}]),
        &[endpoint("10.244.1.6", "n2", READY)],
    );
    let other = slice(
        &json!([{"name": "metrics", "port": 9100}]),
        &[endpoint("10.244.1.7", "n2", READY)],
    );
    let plan = plan(&svc, [&old, &new, &other], &node());
    assert_eq!(
        backends_of(&plan, tcp([10, 96, 0, 10], 80)),
        ["10.244.0.5:8080", "10.244.1.6:9090"]
    );
}

#[test]
fn a_slice_port_of_another_protocol_is_not_used() {
    let (svc, _) = two_port_service();
    let s = slice(
        &json!([{"name": "http", "port": 8080, "protocol": "UDP"}]),
        &[endpoint("10.244.0.5", "n1", READY)],
    );
    let plan = plan(&svc, [&s], &node());
    assert!(backends_of(&plan, tcp([10, 96, 0, 10], 80)).is_empty());
}

#[test]
fn an_endpoint_in_two_slices_is_one_backend_and_ipv6_slices_are_skipped() {
    let (svc, s) = two_port_service();
    let mut v6 = slice(
        &json!([{"name": "http", "port": 8080}]),
        &[endpoint("fd00::5", "n1", READY)],
    );
    v6.address_type = "IPv6".into();
    let plan = plan(&svc, [&s, &s.clone(), &v6], &node());
    assert_eq!(
        backends_of(&plan, tcp([10, 96, 0, 10], 80)),
        ["10.244.0.5:8080", "10.244.1.7:8080"]
    );
}

#[test]
fn client_ip_affinity_carries_its_timeout_or_kube_proxys_default() {
    let svc = service(&json!({
        "clusterIP": "10.96.0.10",
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}},
        "ports": [{"port": 80}],
    }));
    let plan1 = plan(&svc, [], &node());
    assert_eq!(
        plan1.entries.frontends[&tcp([10, 96, 0, 10], 80)].affinity_timeout,
        30
    );
    let svc = service(&json!({
        "clusterIP": "10.96.0.10",
        "sessionAffinity": "ClientIP",
        "ports": [{"port": 80}],
    }));
    let plan2 = plan(&svc, [], &node());
    assert_eq!(
        plan2.entries.frontends[&tcp([10, 96, 0, 10], 80)].affinity_timeout,
        DEFAULT_AFFINITY_TIMEOUT
    );
}

fn local_slice() -> EndpointSlice {
    slice(
        &json!([{"port": 8080}]),
        &[
            endpoint("10.244.0.5", "n1", READY),
            endpoint("10.244.1.7", "n2", READY),
        ],
    )
}

#[test]
fn internal_traffic_policy_local_keeps_this_nodes_endpoints_for_the_cluster_ip() {
    let svc = service(&json!({
        "clusterIP": "10.96.0.10",
        "internalTrafficPolicy": "Local",
        "ports": [{"port": 80, "targetPort": 8080}],
    }));
    let plan = plan(&svc, [&local_slice()], &node());
    let entry = plan.entries.frontends[&tcp([10, 96, 0, 10], 80)];
    assert_eq!(entry.flags, FLAG_INTERNAL_LOCAL);
    assert!(entry.group.local);
    assert_eq!(
        backends_of(&plan, tcp([10, 96, 0, 10], 80)),
        ["10.244.0.5:8080"]
    );
}

#[test]
fn external_traffic_policy_local_gives_node_ports_two_scopes() {
    let svc = service(&json!({
        "type": "NodePort",
        "clusterIP": "10.96.0.10",
        "externalTrafficPolicy": "Local",
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}],
    }));
    let plan = plan(&svc, [&local_slice()], &node());
    let node_port = tcp([192, 168, 50, 20], 30080);
    let external = plan.entries.frontends[&node_port];
    assert_eq!(
        external.flags,
        FLAG_EXTERNAL_LOCAL | FLAG_TWO_SCOPES,
        "outside traffic sees only local endpoints"
    );
    assert_eq!(backends_of(&plan, node_port), ["10.244.0.5:8080"]);
    let internal = at([192, 168, 50, 20], 30080, Protocol::Tcp, Scope::Internal);
    assert_eq!(plan.entries.frontends[&internal].flags, FLAG_EXTERNAL_LOCAL);
    assert_eq!(
        backends_of(&plan, internal),
        ["10.244.0.5:8080", "10.244.1.7:8080"],
        "traffic from this node sees every endpoint"
    );
    assert_eq!(
        backends_of(&plan, tcp([10, 96, 0, 10], 80)),
        ["10.244.0.5:8080", "10.244.1.7:8080"]
    );
    assert_eq!(plan.entries.groups.len(), 2);
}

#[test]
fn both_policies_local_need_one_scope() {
    let svc = service(&json!({
        "type": "NodePort",
        "clusterIP": "10.96.0.10",
        "externalTrafficPolicy": "Local",
        "internalTrafficPolicy": "Local",
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}],
    }));
    let plan = plan(&svc, [&local_slice()], &node());
    assert!(
        plan.entries
            .frontends
            .keys()
            .all(|f| f.scope == Scope::External)
    );
    assert_eq!(plan.entries.groups.len(), 1);
    assert_eq!(
        backends_of(&plan, tcp([192, 168, 50, 20], 30080)),
        ["10.244.0.5:8080"]
    );
}

#[test]
fn external_traffic_policy_is_ignored_without_an_external_frontend_type() {
    let svc = service(&json!({
        "clusterIP": "10.96.0.10",
        "externalTrafficPolicy": "Local",
        "ports": [{"port": 80, "targetPort": 8080}],
    }));
    let plan = plan(&svc, [&local_slice()], &node());
    assert_eq!(plan.entries.frontends[&tcp([10, 96, 0, 10], 80)].flags, 0);
    assert_eq!(
        backends_of(&plan, tcp([10, 96, 0, 10], 80)),
        ["10.244.0.5:8080", "10.244.1.7:8080"]
    );
}

#[test]
fn a_local_policy_falls_back_to_local_terminating_endpoints_only() {
    let svc = service(&json!({
        "clusterIP": "10.96.0.10",
        "internalTrafficPolicy": "Local",
        "ports": [{"port": 80, "targetPort": 8080}],
    }));
    let s = slice(
        &json!([{"port": 8080}]),
        &[
            endpoint("10.244.0.5", "n1", (false, true, true)),
            endpoint("10.244.1.7", "n2", READY),
        ],
    );
    let plan = plan(&svc, [&s], &node());
    assert_eq!(
        backends_of(&plan, tcp([10, 96, 0, 10], 80)),
        ["10.244.0.5:8080"]
    );
}
