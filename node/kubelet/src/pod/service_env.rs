//! The Service environment variables containers get, as the kubelet makes them: those of the
//! `kubernetes` Service in `default` always (in-cluster clients find the API server by
//! them), and with `enableServiceLinks` those of every Service of the pod's namespace, in
//! Docker links' form.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};

/// The Service of the API server, whose variables every pod gets.
pub const API_SERVICE: &str = "kubernetes";

/// Whether the pod wants its namespace's Services as variables (the default).
#[must_use]
pub fn links_enabled(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true)
}

/// The variables of `services` (those of `default` and of the pod's namespace) for a pod in
/// `namespace`: the `kubernetes` Service of `default` always, the namespace's Services
/// when `links` (a namespace Service of the same name wins in `default` itself, as the
/// kubelet's map keeps the first). Services without a cluster IP (headless) give none.
#[must_use]
pub fn variables(namespace: &str, links: bool, services: &[Service]) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for service in services {
        if cluster_ip(service).is_none() {
            continue;
        }
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let ns = service
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(skiff_types::namespace::DEFAULT);
        if ns == skiff_types::namespace::DEFAULT && name == API_SERVICE {
            chosen.entry(name).or_insert(service);
        } else if ns == namespace && links {
            chosen.insert(name, service);
        }
    }
    chosen.into_values().flat_map(of_service).collect()
}

fn cluster_ip(service: &Service) -> Option<&str> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

fn env_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

/// One Service's variables, in the kubelet's order: `_SERVICE_HOST`, `_SERVICE_PORT` (the
/// first port) and one per named port, then the Docker link variables.
fn of_service(service: &Service) -> Vec<(String, String)> {
    let Some(ip) = cluster_ip(service) else {
        return Vec::new();
    };
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let prefix = env_name(service.metadata.name.as_deref().unwrap_or_default());
    let mut out = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.to_owned()),
        (format!("{prefix}_SERVICE_PORT"), first.port.to_string()),
    ];
    for port in ports {
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{prefix}_SERVICE_PORT_{}", env_name(name)),
                port.port.to_string(),
            ));
        }
    }
    for (i, port) in ports.iter().enumerate() {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let (lower, upper) = (protocol.to_lowercase(), protocol.to_uppercase());
        let url = format!("{lower}://{ip}:{}", port.port);
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let port_prefix = format!("{prefix}_PORT_{}_{upper}", port.port);
        out.push((port_prefix.clone(), url));
        out.push((format!("{port_prefix}_PROTO"), lower));
        out.push((format!("{port_prefix}_PORT"), port.port.to_string()));
        out.push((format!("{port_prefix}_ADDR"), ip.to_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{ServicePort, ServiceSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn service(ns: &str, name: &str, ip: &str, ports: &[(Option<&str>, i32, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(ns.to_owned()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.to_owned()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(name, port, proto)| ServicePort {
                            name: name.map(str::to_owned),
                            port: *port,
                            protocol: Some((*proto).to_owned()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn api() -> Service {
        service(
            "default",
            "kubernetes",
            "10.96.0.1",
            &[(Some("https"), 443, "TCP")],
        )
    }

    fn get<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_api_service_gives_what_in_cluster_clients_read_even_without_links() {
        let vars = variables("team", false, &[api()]);
        let expected = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
        ];
        let got: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn links_add_the_namespaces_services_and_skip_headless_ones_and_other_namespaces() {
        let services = [
            api(),
            service(
                "team",
                "web-front",
                "10.96.0.20",
                &[(None, 80, "TCP"), (Some("metrics-port"), 9090, "TCP")],
            ),
            service("team", "dns", "10.96.0.30", &[(Some("dns"), 53, "UDP")]),
            service("team", "headless", "None", &[(None, 80, "TCP")]),
            service("other", "elsewhere", "10.96.0.40", &[(None, 80, "TCP")]),
        ];
        let vars = variables("team", true, &services);
        assert_eq!(get(&vars, "WEB_FRONT_SERVICE_HOST"), Some("10.96.0.20"));
        assert_eq!(get(&vars, "WEB_FRONT_SERVICE_PORT"), Some("80"));
        assert_eq!(
            get(&vars, "WEB_FRONT_SERVICE_PORT_METRICS_PORT"),
            Some("9090")
        );
        assert_eq!(get(&vars, "WEB_FRONT_PORT"), Some("tcp://10.96.0.20:80"));
        assert_eq!(
            get(&vars, "WEB_FRONT_PORT_9090_TCP"),
            Some("tcp://10.96.0.20:9090")
        );
        assert_eq!(get(&vars, "DNS_PORT_53_UDP_PROTO"), Some("udp"));
        assert_eq!(get(&vars, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert!(vars.iter().all(|(k, _)| !k.starts_with("HEADLESS_")));
        assert!(vars.iter().all(|(k, _)| !k.starts_with("ELSEWHERE_")));
        assert!(
            variables("team", false, &services)
                .iter()
                .all(|(k, _)| k.starts_with("KUBERNETES_"))
        );
    }
}
