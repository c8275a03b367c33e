//! kube-proxy's health check node port, for Services whose external traffic stays on nodes
//! with an endpoint (`externalTrafficPolicy: Local`): which ports this node answers on and
//! how many local endpoints each Service has, so a load balancer skips nodes without one.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::entries::ServiceRef;

/// What a health check node port answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The Service.
    pub service: ServiceRef,
    /// Its ready endpoints on this node.
    pub local_endpoints: usize,
}

impl HealthCheck {
    /// Whether a load balancer should send this node traffic (kube-proxy's 200 vs 503).
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.local_endpoints > 0
    }
}

/// The health check node port of `service`, if it has one: set, on a `LoadBalancer` with
/// `externalTrafficPolicy: Local` (the API server allocates it only there).
#[must_use]
pub fn health_check_port(service: &Service) -> Option<u16> {
    let spec = service.spec.as_ref()?;
    let wanted = spec.type_.as_deref() == Some("LoadBalancer")
        && spec.external_traffic_policy.as_deref() == Some("Local");
    let port = u16::try_from(spec.health_check_node_port?).ok()?;
    (wanted && port != 0).then_some(port)
}

/// The ready endpoints of `slices` on node `node`, each address counted once (a pod is in
/// one slice per port set, with all its ports).
#[must_use]
pub fn local_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
) -> usize {
    let mut addresses = BTreeSet::new();
    for slice in slices {
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if ready && endpoint.node_name.as_deref() == Some(node) {
                addresses.extend(endpoint.addresses.first().cloned());
            }
        }
    }
    addresses.len()
}

/// The health checks of `services` (each with its slices) by port; of two Services claiming
/// one port (which the API server's allocator prevents) the first keeps it.
#[must_use]
pub fn health_checks<'a, S>(
    services: impl IntoIterator<Item = (ServiceRef, &'a Service, S)>,
    node: &str,
) -> BTreeMap<u16, HealthCheck>
where
    S: IntoIterator<Item = &'a EndpointSlice>,
{
    let mut out = BTreeMap::new();
    for (service, object, slices) in services {
        if let Some(port) = health_check_port(object) {
            out.entry(port).or_insert_with(|| HealthCheck {
                service,
                local_endpoints: local_endpoints(slices, node),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        core::v1::ServiceSpec,
        discovery::v1::{Endpoint, EndpointConditions},
    };

    use super::*;

    fn service(type_: &str, policy: &str, port: Option<i32>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                external_traffic_policy: Some(policy.into()),
                health_check_node_port: port,
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn endpoint(ip: &str, node: &str, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            node_name: Some(node.into()),
            conditions: Some(EndpointConditions {
                ready,
                ..EndpointConditions::default()
            }),
            ..Endpoint::default()
        }
    }

    fn slice(endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            endpoints,
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn only_local_load_balancers_have_a_health_check_port() {
        assert_eq!(
            health_check_port(&service("LoadBalancer", "Local", Some(32000))),
            Some(32000)
        );
        assert_eq!(
            health_check_port(&service("LoadBalancer", "Cluster", Some(32000))),
            None
        );
        assert_eq!(
            health_check_port(&service("NodePort", "Local", Some(32000))),
            None
        );
        assert_eq!(
            health_check_port(&service("LoadBalancer", "Local", None)),
            None
        );
    }

    #[test]
    fn ready_endpoints_on_this_node_are_counted_once_each() {
        let slices = [
            slice(vec![
                endpoint("10.244.0.5", "n1", Some(true)),
                endpoint("10.244.0.6", "n1", None),
                endpoint("10.244.0.7", "n1", Some(false)),
                endpoint("10.244.1.5", "n2", Some(true)),
            ]),
            // The same pod again, in the slice of another port set.
            slice(vec![endpoint("10.244.0.5", "n1", Some(true))]),
        ];
        assert_eq!(local_endpoints(&slices, "n1"), 2);
        assert_eq!(local_endpoints(&slices, "n2"), 1);
        assert_eq!(local_endpoints(&slices, "n3"), 0);
    }

    #[test]
    fn health_checks_are_keyed_by_port_with_their_local_count() {
        let lb = service("LoadBalancer", "Local", Some(32000));
        let plain = service("ClusterIP", "Cluster", None);
        let slices = [slice(vec![endpoint("10.244.0.5", "n1", Some(true))])];
        let checks = health_checks(
            [
                (ServiceRef::new("default", "lb"), &lb, slices.iter()),
                (ServiceRef::new("default", "plain"), &plain, slices.iter()),
            ],
            "n1",
        );
        assert_eq!(checks.len(), 1);
        let check = &checks[&32000];
        assert_eq!(check.service, ServiceRef::new("default", "lb"));
        assert!(check.healthy() && check.local_endpoints == 1);
        let elsewhere = health_checks(
            [(ServiceRef::new("default", "lb"), &lb, slices.iter())],
            "n2",
        );
        assert!(!elsewhere[&32000].healthy());
    }
}
