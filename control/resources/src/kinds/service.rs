//! Service: type and port defaults, port validation, a cluster IP that never changes, the
//! cluster IP and node ports taken from the API server's pools on create and given back on
//! delete, and kubectl's TYPE / CLUSTER-IP / EXTERNAL-IP / PORT(S) columns.

use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};
use skiff_machinery::{status::Cause, validation::NameRule};

use super::{object, or_set, reset_status};
use crate::{
    Pools, Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `v1/Service`.
#[derive(Debug)]
pub struct Service;

const COLUMNS: &[Column] = &[
    NAME,
    col("Type", "string", 0, "The type of service."),
    col("Cluster-IP", "string", 0, "The cluster IP of the service."),
    col(
        "External-IP",
        "string",
        0,
        "The external IPs of the service.",
    ),
    col("Port(s)", "string", 0, "The ports of the service."),
    AGE,
    col(
        "Selector",
        "string",
        1,
        "Route service traffic to pods with label keys and values matching this selector.",
    ),
];

fn default_spec(spec: &mut Map<String, Value>) {
    or_set(spec, "type", json!("ClusterIP"));
    or_set(spec, "sessionAffinity", json!("None"));
    if spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
        or_set(spec, "internalTrafficPolicy", json!("Cluster"));
        or_set(spec, "ipFamilyPolicy", json!("SingleStack"));
        or_set(spec, "ipFamilies", json!(["IPv4"]));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            or_set(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                or_set(p, "targetPort", port);
            }
        }
    }
}

fn validate_spec(spec: &Value, causes: &mut Vec<Cause>) {
    let kind = service_type(spec);
    let allowed = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !allowed.contains(&kind) {
        causes.push(Cause::not_supported(
            "spec.type",
            &Value::from(kind),
            &allowed,
        ));
    }
    let ports = spec.get("ports").and_then(Value::as_array);
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if kind != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
        causes.push(Cause::required("spec.ports"));
    }
    let ports = ports.map(Vec::as_slice).unwrap_or_default();
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        match p.get("port").and_then(Value::as_i64) {
            None => causes.push(Cause::required(&format!("{field}.port"))),
            Some(port) if !(1..=65535).contains(&port) => causes.push(Cause::invalid(
                &format!("{field}.port"),
                &Value::from(port),
                "must be between 1 and 65535, inclusive",
            )),
            Some(_) => {}
        }
        let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&protocol) {
            causes.push(Cause::not_supported(
                &format!("{field}.protocol"),
                &Value::from(protocol),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(&format!("{field}.name")));
        }
        if !name.is_empty() {
            if names.contains(&name) {
                causes.push(Cause::duplicate(
                    &format!("{field}.name"),
                    &Value::from(name),
                ));
            }
            names.push(name);
        }
    }
}

fn service_type(spec: &Value) -> &str {
    spec.get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

/// Every type but `ExternalName` has a cluster IP (or is headless).
fn needs_cluster_ip(spec: &Value) -> bool {
    service_type(spec) != "ExternalName"
}

fn needs_node_ports(spec: &Value) -> bool {
    matches!(service_type(spec), "NodePort" | "LoadBalancer")
}

/// Reached from outside the cluster, so `externalTrafficPolicy` applies.
fn externally_accessible(spec: &Value) -> bool {
    needs_node_ports(spec)
        || (service_type(spec) == "ClusterIP"
            && spec
                .get("externalIPs")
                .and_then(Value::as_array)
                .is_some_and(|ips| !ips.is_empty()))
}

/// A port's `nodePort`, 0 when unset.
fn port_node_port(port: &Value) -> u64 {
    port.get("nodePort").and_then(Value::as_u64).unwrap_or(0)
}

fn ports_of(spec: &Value) -> &[Value] {
    spec.get("ports")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Fills in what a client that does not send allocated values (a PUT of its own manifest)
/// left out and the old version holds, as the Go apiserver's `patchAllocatedValues`: the
/// cluster IP, node ports by port name, the health check node port.
fn patch_allocated_values(old: &Value, new: &mut Map<String, Value>) {
    let new_spec = Value::Object(new.clone());
    let unset = |v: Option<&Value>| v.and_then(Value::as_str).is_none_or(str::is_empty);
    if needs_cluster_ip(old) && needs_cluster_ip(&new_spec) && unset(new.get("clusterIP")) {
        for field in ["clusterIP", "clusterIPs"] {
            if let Some(v) = old.get(field) {
                new.insert(field.to_owned(), v.clone());
            }
        }
    }
    if needs_node_ports(old) && needs_node_ports(&new_spec) {
        let used: Vec<u64> = ports_of(&new_spec).iter().map(port_node_port).collect();
        if let Some(Value::Array(ports)) = new.get_mut("ports") {
            for p in ports.iter_mut().filter(|p| port_node_port(p) == 0) {
                let name = p.get("name").cloned().unwrap_or(Value::Null);
                let before = ports_of(old)
                    .iter()
                    .find(|o| o.get("name").cloned().unwrap_or(Value::Null) == name)
                    .map_or(0, port_node_port);
                if before != 0 && !used.contains(&before) {
                    p["nodePort"] = json!(before);
                }
            }
        }
    }
    if needs_health_check(old)
        && needs_health_check(&new_spec)
        && new
            .get("healthCheckNodePort")
            .and_then(Value::as_u64)
            .is_none_or(|p| p == 0)
        && let Some(port) = old.get("healthCheckNodePort")
    {
        new.insert("healthCheckNodePort".to_owned(), port.clone());
    }
}

/// Clears what the new type does not use, when the client left it as it was (so it was
/// allocated or defaulted, not asked for), as the Go apiserver's `dropTypeDependentFields`:
/// an `ExternalName` has no cluster IP, a `ClusterIP` no node ports.
fn drop_type_dependent_fields(old: &Value, new: &mut Map<String, Value>) {
    let new_spec = Value::Object(new.clone());
    let same = |field: &str| old.get(field) == new_spec.get(field);
    if needs_cluster_ip(old) && !needs_cluster_ip(&new_spec) {
        if same("clusterIP") && same("clusterIPs") {
            new.remove("clusterIP");
            new.remove("clusterIPs");
        }
        for field in ["ipFamilies", "ipFamilyPolicy"] {
            if same(field) {
                new.remove(field);
            }
        }
    }
    if needs_node_ports(old) && !needs_node_ports(&new_spec) {
        let node_ports =
            |spec: &Value| -> Vec<u64> { ports_of(spec).iter().map(port_node_port).collect() };
        if node_ports(old) == node_ports(&new_spec)
            && let Some(Value::Array(ports)) = new.get_mut("ports")
        {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.remove("nodePort");
            }
        }
    }
    if needs_health_check(old) && !needs_health_check(&new_spec) && same("healthCheckNodePort") {
        new.remove("healthCheckNodePort");
    }
    if service_type(old) == "LoadBalancer"
        && service_type(&new_spec) != "LoadBalancer"
        && same("loadBalancerClass")
    {
        new.remove("loadBalancerClass");
    }
    if externally_accessible(old)
        && !externally_accessible(&new_spec)
        && same("externalTrafficPolicy")
    {
        new.remove("externalTrafficPolicy");
    }
}

/// The cluster IP a stored Service holds, if any.
fn cluster_ip(obj: &Value) -> Option<Ipv4Addr> {
    obj.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// The node ports a stored Service holds: its ports' and its health check's.
fn node_ports(obj: &Value) -> impl Iterator<Item = u16> + '_ {
    obj.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .chain(
            obj.pointer("/spec/healthCheckNodePort")
                .and_then(Value::as_u64),
        )
        .filter_map(|p| u16::try_from(p).ok())
}

/// Whether a Service needs a health check node port: a `LoadBalancer` whose external
/// traffic stays on nodes with a local endpoint, which load balancers must learn.
fn needs_health_check(spec: &Value) -> bool {
    service_type(spec) == "LoadBalancer"
        && spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
}

/// Takes the health check node port a `LoadBalancer` Service with `externalTrafficPolicy:
/// Local` asks for, or any from the node port range, as the Go apiserver does.
fn allocate_health_check_port(obj: &mut Value, pools: &dyn Pools) -> Result<(), Cause> {
    if !needs_health_check(obj.get("spec").unwrap_or(&Value::Null)) {
        return Ok(());
    }
    let wanted = obj
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
        .filter(|p| *p != 0)
        .and_then(|p| u16::try_from(p).ok());
    let port = pools
        .take_node_port(wanted)
        .map_err(|e| Cause::invalid("spec.healthCheckNodePort", &json!(wanted), &e.to_string()))?;
    obj["spec"]["healthCheckNodePort"] = json!(port);
    Ok(())
}

/// Takes the cluster IP a new Service asks for (or any), unless it is headless.
fn allocate_ip(obj: &mut Value, pools: &dyn Pools) -> Result<Option<Ipv4Addr>, Cause> {
    let requested = obj
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if requested == "None" {
        return Ok(None);
    }
    let wanted = if requested.is_empty() {
        None
    } else {
        Some(requested.parse::<Ipv4Addr>().map_err(|_| {
            Cause::invalid(
                "spec.clusterIPs",
                &json!(requested),
                "must be a valid IP address",
            )
        })?)
    };
    let ip = pools
        .take_cluster_ip(wanted)
        .map_err(|e| Cause::invalid("spec.clusterIPs", &json!([requested]), &e.to_string()))?;
    obj["spec"]["clusterIP"] = json!(ip.to_string());
    obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
    Ok(Some(ip))
}

/// Takes a node port for every port of a `NodePort` or `LoadBalancer` Service; on failure the
/// ports already taken are given back.
fn allocate_node_ports(obj: &mut Value, pools: &dyn Pools) -> Result<(), Cause> {
    let count = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut taken = Vec::new();
    for i in 0..count {
        let wanted = obj["spec"]["ports"][i]
            .get("nodePort")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        match pools.take_node_port(wanted) {
            Ok(port) => {
                obj["spec"]["ports"][i]["nodePort"] = json!(port);
                taken.push(port);
            }
            Err(e) => {
                for p in taken {
                    pools.release_node_port(p);
                }
                return Err(Cause::invalid(
                    &format!("spec.ports[{i}].nodePort"),
                    &json!(wanted),
                    &e.to_string(),
                ));
            }
        }
    }
    Ok(())
}

impl Strategy for Service {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = object(obj, &["spec"]) {
            default_spec(spec);
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj);
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        validate_spec(obj.get("spec").unwrap_or(&Value::Null), &mut causes);
        causes
    }

    fn prepare_for_update(&self, old: &Value, new: &mut Value) {
        let old_spec = old.get("spec").unwrap_or(&Value::Null);
        if let Some(spec) = object(new, &["spec"]) {
            patch_allocated_values(old_spec, spec);
            drop_type_dependent_fields(old_spec, spec);
        }
        // Only a LoadBalancer has a load balancer status; the controller that gave the
        // address sees it freed.
        let kind = service_type(new.get("spec").unwrap_or(&Value::Null));
        if kind != "LoadBalancer"
            && let Some(status) = object(new, &["status"])
            && status.contains_key("loadBalancer")
        {
            status.insert("loadBalancer".to_owned(), json!({}));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        let old_ip = old.pointer("/spec/clusterIP").and_then(Value::as_str);
        let new_ip = new.pointer("/spec/clusterIP").and_then(Value::as_str);
        // A change to or from ExternalName gives the cluster IP up or takes a new one.
        let keeps_type_with_ip = [old, new]
            .iter()
            .all(|o| needs_cluster_ip(o.get("spec").unwrap_or(&Value::Null)));
        if keeps_type_with_ip && old_ip.is_some_and(|ip| !ip.is_empty()) && new_ip != old_ip {
            causes.push(Cause::invalid(
                "spec.clusterIP",
                &Value::from(new_ip.unwrap_or("")),
                "field is immutable",
            ));
        }
        causes
    }

    fn holds_allocations(&self) -> bool {
        true
    }

    fn allocate(&self, obj: &mut Value, pools: &dyn Pools) -> Result<(), Cause> {
        let kind = service_type(obj.get("spec").unwrap_or(&Value::Null)).to_owned();
        if kind == "ExternalName" {
            return Ok(());
        }
        let ip = allocate_ip(obj, pools)?;
        let release_ip = || {
            if let Some(ip) = ip {
                pools.release_cluster_ip(ip);
            }
        };
        if kind == "NodePort" || kind == "LoadBalancer" {
            allocate_node_ports(obj, pools).inspect_err(|_| release_ip())?;
        }
        if let Err(cause) = allocate_health_check_port(obj, pools) {
            release_ip();
            // The ports' node ports only: the health check port asked for was not taken.
            let taken: Vec<u16> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                .filter_map(|p| u16::try_from(p).ok())
                .collect();
            for port in taken {
                pools.release_node_port(port);
            }
            return Err(cause);
        }
        Ok(())
    }

    fn allocate_update(
        &self,
        old: &Value,
        new: &mut Value,
        pools: &dyn Pools,
    ) -> Result<(), Cause> {
        let spec = new.get("spec").cloned().unwrap_or(Value::Null);
        let held: Vec<u16> = node_ports(old).collect();
        let mut ip = None;
        let mut taken = Vec::new();
        let give_back = |ip: Option<Ipv4Addr>, taken: &[u16]| {
            if let Some(ip) = ip {
                pools.release_cluster_ip(ip);
            }
            for port in taken {
                pools.release_node_port(*port);
            }
        };
        // From ExternalName: a cluster IP (the one asked for, or any).
        if needs_cluster_ip(&spec) && cluster_ip(old).is_none() {
            ip = allocate_ip(new, pools)?;
        }
        // (field, the port's index or none for the health check, the port asked for)
        let mut wanted: Vec<(String, Option<usize>, Option<u16>)> = Vec::new();
        let number = |p: Option<&Value>| {
            p.and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
        };
        if needs_node_ports(&spec) {
            for (i, p) in ports_of(&spec).iter().enumerate() {
                let field = format!("spec.ports[{i}].nodePort");
                wanted.push((field, Some(i), number(p.get("nodePort"))));
            }
        }
        if needs_health_check(&spec) {
            let port = number(spec.get("healthCheckNodePort"));
            wanted.push(("spec.healthCheckNodePort".to_owned(), None, port));
        }
        for (field, index, port) in wanted {
            if port.is_some_and(|p| held.contains(&p)) {
                continue;
            }
            match pools.take_node_port(port) {
                Ok(got) => {
                    taken.push(got);
                    match index {
                        Some(i) => new["spec"]["ports"][i]["nodePort"] = json!(got),
                        None => new["spec"]["healthCheckNodePort"] = json!(got),
                    }
                }
                Err(e) => {
                    give_back(ip, &taken);
                    return Err(Cause::invalid(&field, &json!(port), &e.to_string()));
                }
            }
        }
        Ok(())
    }

    fn release_update(&self, held: &Value, kept: &Value, pools: &dyn Pools) {
        if let Some(ip) = cluster_ip(held)
            && cluster_ip(kept) != Some(ip)
        {
            pools.release_cluster_ip(ip);
        }
        let still: Vec<u16> = node_ports(kept).collect();
        for port in node_ports(held).filter(|p| !still.contains(p)) {
            pools.release_node_port(port);
        }
    }

    fn release(&self, obj: &Value, pools: &dyn Pools) {
        if let Some(ip) = cluster_ip(obj) {
            pools.release_cluster_ip(ip);
        }
        for port in node_ports(obj) {
            pools.release_node_port(port);
        }
    }

    fn reserve(&self, obj: &Value, pools: &dyn Pools) {
        // A stored Service already passed allocation; a clash here would mean duplicates in
        // the store, which the pools cannot repair, so it is only logged.
        if let Some(ip) = cluster_ip(obj)
            && let Err(err) = pools.take_cluster_ip(Some(ip))
        {
            tracing::warn!(%ip, %err, "stored Service IP could not be reserved");
        }
        for port in node_ports(obj) {
            if let Err(err) = pools.take_node_port(Some(port)) {
                tracing::warn!(port, %err, "stored node port could not be reserved");
            }
        }
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let kind = service_type(o.get("spec").unwrap_or(&Value::Null));
        let external = match kind {
            "ExternalName" => table::text(o, "/spec/externalName").to_owned(),
            "LoadBalancer" => {
                let ips: Vec<&str> = o
                    .pointer("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.get("ip").and_then(Value::as_str))
                    .collect();
                if ips.is_empty() {
                    "<pending>".into()
                } else {
                    ips.join(",")
                }
            }
            _ => "<none>".into(),
        };
        let ports: Vec<String> = o
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                match p.get("nodePort").and_then(Value::as_i64) {
                    Some(node) => format!("{}:{node}/{protocol}", table::int(p, "/port")),
                    None => format!("{}/{protocol}", table::int(p, "/port")),
                }
            })
            .collect();
        vec![
            table::name(o),
            json!(kind),
            table::or_none(
                o.pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            ),
            json!(external),
            table::or_none((!ports.is_empty()).then(|| ports.join(","))),
            table::age(o, now),
            table::or_none(table::map_string(o.pointer("/spec/selector"), "=", ",")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, sync::Mutex};

    use super::*;
    use crate::AllocError;

    /// Pools with a few addresses and ports, recording what is held.
    #[derive(Default)]
    struct Few {
        ips: Mutex<BTreeSet<Ipv4Addr>>,
        ports: Mutex<BTreeSet<u16>>,
    }

    impl Pools for Few {
        fn take_cluster_ip(&self, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, AllocError> {
            let ip = wanted.unwrap_or(Ipv4Addr::new(10, 96, 0, 10));
            if self.ips.lock().unwrap().insert(ip) {
                Ok(ip)
            } else {
                Err(AllocError::Taken(format!("IP {ip}")))
            }
        }
        fn release_cluster_ip(&self, ip: Ipv4Addr) {
            self.ips.lock().unwrap().remove(&ip);
        }
        fn take_node_port(&self, wanted: Option<u16>) -> Result<u16, AllocError> {
            let mut ports = self.ports.lock().unwrap();
            let port = wanted.unwrap_or(30000 + u16::try_from(ports.len()).unwrap());
            if port > 30001 {
                return Err(AllocError::Full);
            }
            ports.insert(port);
            Ok(port)
        }
        fn release_node_port(&self, port: u16) {
            self.ports.lock().unwrap().remove(&port);
        }
    }

    #[test]
    fn ports_default_their_target_port_and_protocol() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        Service.default(&mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
    }

    #[test]
    fn ports_are_checked() {
        let causes = Service
            .validate(&json!({"spec": {"ports": [{"port": 0}, {"port": 80, "protocol": "ICMP"}]}}));
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.ports[0].port"));
        assert!(fields.contains(&"spec.ports[1].protocol"));
        assert!(fields.contains(&"spec.ports[0].name"));
    }

    #[test]
    fn a_node_port_service_takes_an_ip_and_ports_and_gives_all_back_on_failure() {
        let pools = Few::default();
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}});
        Service.allocate(&mut svc, &pools).unwrap();
        assert_eq!(svc["spec"]["clusterIPs"], json!(["10.96.0.10"]));
        assert_eq!(svc["spec"]["ports"][1]["nodePort"], 30001);
        Service.release(&svc, &pools);
        assert!(pools.ips.lock().unwrap().is_empty() && pools.ports.lock().unwrap().is_empty());

        let mut three = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.20",
            "ports": [{"port": 80}, {"port": 81}, {"port": 82}]}});
        let cause = Service.allocate(&mut three, &pools).unwrap_err();
        assert_eq!(cause.field, "spec.ports[2].nodePort");
        assert!(pools.ips.lock().unwrap().is_empty() && pools.ports.lock().unwrap().is_empty());
    }

    #[test]
    fn a_local_load_balancer_takes_a_health_check_node_port_and_gives_it_back() {
        let pools = Few::default();
        let mut svc = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]}});
        Service.allocate(&mut svc, &pools).unwrap();
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30000);
        assert_eq!(svc["spec"]["healthCheckNodePort"], 30001);
        Service.release(&svc, &pools);
        assert!(pools.ips.lock().unwrap().is_empty() && pools.ports.lock().unwrap().is_empty());

        // No port left for the health check: everything taken is given back.
        let mut two = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}, {"port": 81}]}});
        let cause = Service.allocate(&mut two, &pools).unwrap_err();
        assert_eq!(cause.field, "spec.healthCheckNodePort");
        assert!(pools.ips.lock().unwrap().is_empty() && pools.ports.lock().unwrap().is_empty());

        // Cluster policy, or a NodePort: no health check port.
        for spec in [
            json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
            json!({"type": "NodePort", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        ] {
            let mut svc = json!({ "spec": spec });
            Service.allocate(&mut svc, &pools).unwrap();
            assert!(svc["spec"].get("healthCheckNodePort").is_none(), "{svc}");
            Service.release(&svc, &pools);
        }
    }

    #[test]
    fn a_type_change_takes_what_the_new_type_needs_or_nothing() {
        let pools = Few::default();
        let ports = |n: u16| (80..80 + n).map(|p| json!({"port": p})).collect::<Vec<_>>();
        let old = json!({"spec": {"type": "ExternalName", "externalName": "x.example",
            "ports": ports(3)}});
        // Three node ports from a pool of two: nothing stays taken, the cluster IP neither.
        let mut three = json!({"spec": {"type": "NodePort", "ports": ports(3)}});
        let cause = Service
            .allocate_update(&old, &mut three, &pools)
            .unwrap_err();
        assert_eq!(cause.field, "spec.ports[2].nodePort");
        assert!(pools.ips.lock().unwrap().is_empty() && pools.ports.lock().unwrap().is_empty());

        let mut two = json!({"spec": {"type": "NodePort", "ports": ports(2)}});
        Service.allocate_update(&old, &mut two, &pools).unwrap();
        assert_eq!(two["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(two["spec"]["ports"][1]["nodePort"], 30001);
        // Written as NodePort and changed back to ExternalName: prepare drops what it held,
        // and the write gives it back.
        let mut back = json!({"spec": {"type": "ExternalName", "externalName": "x.example",
            "ports": two["spec"]["ports"].clone(), "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"]}});
        Service.prepare_for_update(&two, &mut back);
        assert!(back["spec"].get("clusterIP").is_none(), "{back}");
        assert!(back["spec"]["ports"][0].get("nodePort").is_none(), "{back}");
        Service.release_update(&two, &back, &pools);
        assert!(pools.ips.lock().unwrap().is_empty() && pools.ports.lock().unwrap().is_empty());
    }

    #[test]
    fn headless_and_external_name_services_take_nothing() {
        let pools = Few::default();
        let mut headless = json!({"spec": {"clusterIP": "None"}});
        Service.allocate(&mut headless, &pools).unwrap();
        let mut external = json!({"spec": {"type": "ExternalName", "externalName": "x.example"}});
        Service.allocate(&mut external, &pools).unwrap();
        assert!(pools.ips.lock().unwrap().is_empty());
    }
}
