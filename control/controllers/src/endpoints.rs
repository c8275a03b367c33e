//! The Endpoints controller: a Service with a selector gets an Endpoints object listing
//! its pods' addresses (ready ones and not-ready ones apart) and target ports, named ports
//! resolved per pod.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::core::v1::{
        EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube::{
    Api, ResourceExt,
    api::PostParams,
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use crate::{Error, Shared, pods};

/// A Service port resolved for one pod: (name, port, protocol).
pub type PortMapping = (Option<String>, i32, String);

/// One pod behind a Service, as both the Endpoints and the EndpointSlice controllers see it.
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
    /// The Service's ports resolved for this pod: (name, port, protocol).
    pub ports: Vec<PortMapping>,
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

/// The pods behind `svc` (selector match, an IP, not finished), with their ports.
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
            })
        })
        .collect();
    out.sort_by(|a, b| a.ip.cmp(&b.ip));
    out
}

/// Services in `pod`'s namespace whose selector matches it.
pub(crate) fn services_of(services: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
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

/// Runs the controller until dropped.
pub async fn run(
    shared: Arc<Shared>,
    pods: impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
) {
    let api: Api<Service> = Api::all(shared.client.clone());
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    let services = controller.store();
    controller
        .watches_stream(pods, move |pod: Pod| services_of(&services, &pod))
        .run(reconcile, error_policy, shared)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
fn error_policy(svc: Arc<Service>, err: &Error, _ctx: Arc<Shared>) -> Action {
    tracing::warn!(service = %svc.name_any(), ?err, "endpoints update failed");
    Action::requeue(Duration::from_secs(2))
}

/// Writes the Service's Endpoints from its pods.
///
/// # Errors
/// When the API server refuses the write.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Shared>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let has_selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty());
    if !has_selector {
        // Endpoints of selector-less Services are the user's.
        return Ok(Action::await_change());
    }
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    // Pods with the same port mapping share a subset.
    let mut subsets: BTreeMap<Vec<PortMapping>, EndpointSubset> = BTreeMap::new();
    for b in backends(&svc, &ctx.pods.state()) {
        if b.terminating && !publish_not_ready {
            continue;
        }
        let address = EndpointAddress {
            ip: b.ip.clone(),
            node_name: b.node.clone(),
            target_ref: Some(b.target.clone()),
            hostname: None,
        };
        let subset = subsets
            .entry(b.ports.clone())
            .or_insert_with(|| EndpointSubset {
                ports: Some(
                    b.ports
                        .iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: name.clone(),
                            port: *port,
                            protocol: Some(protocol.clone()),
                            app_protocol: None,
                        })
                        .collect(),
                ),
                ..EndpointSubset::default()
            });
        if b.ready || publish_not_ready {
            subset.addresses.get_or_insert_with(Vec::new).push(address);
        } else {
            subset
                .not_ready_addresses
                .get_or_insert_with(Vec::new)
                .push(address);
        }
    }
    let subsets: Vec<EndpointSubset> = subsets.into_values().collect();
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let current = api.get_opt(&name).await?;
    let wanted = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: svc.metadata.labels.clone(),
            // Kubernetes deletes Endpoints with their Service itself; here the garbage
            // collector does, through this reference.
            owner_references: Some(vec![crate::ownership::controller_ref(svc.as_ref())]),
            resource_version: current
                .as_ref()
                .and_then(|c| c.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    };
    match current {
        Some(c)
            if c.subsets == wanted.subsets
                && c.metadata.labels == wanted.metadata.labels
                && c.metadata.owner_references == wanted.metadata.owner_references => {}
        Some(_) => {
            api.replace(&name, &PostParams::default(), &wanted).await?;
        }
        None => {
            if svc.metadata.deletion_timestamp.is_none() {
                api.create(&PostParams::default(), &wanted).await?;
            }
        }
    }
    Ok(Action::await_change())
}
