//! The pods behind a Service, as the Endpoints and EndpointSlice controllers both list them:
//! selected, with an IP, not finished, their target ports resolved.

use std::sync::Arc;

use k8s_openapi::{
    api::core::v1::{ObjectReference, Pod, Service},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{
    ResourceExt,
    runtime::{
        Controller,
        reflector::{ObjectRef, Store},
    },
};
use skiff_control_runtime::Informers;

use crate::pods;

/// A Service port resolved for one pod: (name, port, protocol).
pub type PortMapping = (Option<String>, i32, String);

/// One pod behind a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// The pod's IP.
    pub ip: String,
    /// The node it runs on.
    pub node: Option<String>,
    /// Who it is.
    pub target: ObjectReference,
    /// Ready condition True.
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
    /// The Service's ports resolved for this pod.
    pub ports: Vec<PortMapping>,
    /// The pod's `hostname` when its `subdomain` names this Service, as Kubernetes
    /// publishes it (cluster DNS answers `<hostname>.<service>.<ns>.svc`).
    pub hostname: Option<String>,
}

/// Whether `svc` has a selector (Services without one have user-managed endpoints).
#[must_use]
pub fn has_selector(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
}

/// Resolves a Service port's `targetPort` for `pod` (a name looks up the container port).
fn resolve(target: Option<&IntOrString>, port: i32, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The Service's own ports, as a mapping (for a Service without pods).
#[must_use]
pub fn service_ports(svc: &Service) -> Vec<PortMapping> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p.name,
                p.port,
                p.protocol.unwrap_or_else(|| "TCP".to_owned()),
            )
        })
        .collect()
}

/// The pod's hostname, when it has one and its `subdomain` is `svc`'s name.
fn hostname_for(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let subdomain = spec.subdomain.as_deref()?;
    (svc.metadata.name.as_deref() == Some(subdomain))
        .then(|| spec.hostname.clone())
        .flatten()
        .filter(|h| !h.is_empty())
}

/// The pods behind `svc` (selector match, an IP, not finished), sorted by IP.
#[must_use]
pub fn backends(svc: &Service, all: &[Arc<Pod>]) -> Vec<Backend> {
    let Some(selector) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return Vec::new();
    };
    let ns = svc.namespace();
    let service_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let mut out: Vec<Backend> = all
        .iter()
        .filter(|p| p.namespace() == ns)
        .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .filter(|p| !pods::is_terminal(p))
        .filter_map(|p| {
            let ip = p
                .status
                .as_ref()?
                .pod_ip
                .clone()
                .filter(|ip| !ip.is_empty())?;
            let ports = service_ports
                .iter()
                .filter_map(|sp| {
                    Some((
                        sp.name.clone(),
                        resolve(sp.target_port.as_ref(), sp.port, p)?,
                        sp.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                    ))
                })
                .collect();
            Some(Backend {
                ip,
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                target: ObjectReference {
                    kind: Some("Pod".to_owned()),
                    name: p.metadata.name.clone(),
                    namespace: p.metadata.namespace.clone(),
                    uid: p.metadata.uid.clone(),
                    ..ObjectReference::default()
                },
                ready: pods::is_ready(p),
                terminating: p.metadata.deletion_timestamp.is_some(),
                ports,
                hostname: hostname_for(svc, p),
            })
        })
        .collect();
    out.sort_by(|a, b| a.ip.cmp(&b.ip));
    out
}

/// A controller of Services that also reconciles a Service when one of the pods it selects
/// changes; built by the returned closure once the caller's caches are ready.
pub fn service_controller(
    informers: &Informers,
) -> impl FnOnce() -> Controller<Service> + Send + use<> {
    let services = informers.get::<Service>();
    let store = services.store();
    let changes = services.changes();
    let pod_changes = informers.get::<Pod>().changes();
    move || {
        let lookup = store.clone();
        Controller::for_shared_stream(changes, store)
            .watches_shared_stream(pod_changes, move |pod: Arc<Pod>| services_of(&lookup, &pod))
    }
}

/// Services in `pod`'s namespace whose selector matches it.
#[must_use]
pub fn services_of(services: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
    let ns = pod.namespace();
    services
        .state()
        .iter()
        .filter(|s| s.namespace() == ns)
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|spec| spec.selector.as_ref())
                .is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| pod.labels().get(k) == Some(v))
                })
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{pod, service, web};

    #[test]
    fn backends_are_selected_pods_with_an_ip_and_their_named_port_resolved() {
        let pods = [
            web("b", "10.0.0.2", 8080),
            web("a", "10.0.0.1", 9090),
            pod("no-ip")
                .labels(&[("app", "web")])
                .ready_since(0)
                .build(),
            pod("other").labels(&[("app", "db")]).ip("10.0.0.9").build(),
            web("done", "10.0.0.3", 1).with_phase("Succeeded"),
        ];
        let found = backends(&service(), &pods);
        let summary: Vec<(&str, i32)> = found
            .iter()
            .map(|b| (b.ip.as_str(), b.ports[0].1))
            .collect();
        assert_eq!(summary, [("10.0.0.1", 9090), ("10.0.0.2", 8080)]);
        assert!(found[0].ready && !found[0].terminating);
        assert_eq!(found[0].node.as_deref(), Some("n1"));
    }

    #[test]
    fn a_pod_whose_subdomain_names_the_service_publishes_its_hostname() {
        let named = |name: &str, ip: &str, subdomain: &str| {
            let p = web(name, ip, 80);
            let mut p = Arc::unwrap_or_clone(p);
            let spec = p.spec.get_or_insert_with(Default::default);
            spec.hostname = Some(name.to_owned());
            spec.subdomain = Some(subdomain.to_owned());
            Arc::new(p)
        };
        let pods = [
            named("web-0", "10.0.0.1", "web"),
            named("web-1", "10.0.0.2", "other"),
        ];
        let found = backends(&service(), &pods);
        let hostnames: Vec<Option<&str>> = found.iter().map(|b| b.hostname.as_deref()).collect();
        assert_eq!(hostnames, [Some("web-0"), None]);
    }

    #[test]
    fn a_service_without_a_selector_has_no_backends() {
        let mut svc = service();
        svc.spec.as_mut().unwrap().selector = None;
        assert!(!has_selector(&svc));
        assert!(backends(&svc, &[web("a", "10.0.0.1", 80)]).is_empty());
    }

    trait Phase {
        fn with_phase(self, phase: &str) -> Self;
    }

    impl Phase for Arc<Pod> {
        fn with_phase(self, phase: &str) -> Self {
            let mut p = (*self).clone();
            p.status.as_mut().unwrap().phase = Some(phase.into());
            Arc::new(p)
        }
    }
}
