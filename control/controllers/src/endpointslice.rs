//! The EndpointSlice controller: a Service with a selector gets EndpointSlices (one per
//! port mapping) whose endpoints carry the ready, serving and terminating conditions.
//!
//! Slices are named by the API server (`generateName`), so the cache alone cannot tell a
//! slice just created from a missing one: expectations hold the controller back until the
//! cache shows what it created and deleted, as the Go controller's slice tracker does.

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::{controller::Action, reflector::Store},
};
use skiff_control_runtime::{Clock, Context, Informers, expectations::Expectations, ownership};

use crate::{
    Error,
    backends::{Backend, PortMapping, backends, has_selector, service_controller, service_ports},
};

/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY`].
pub const MANAGER: &str = "endpointslice-controller.k8s.io";
const COMPONENT: &str = "endpointslice-controller";
/// How soon to look again while the cache has not shown this controller's last writes.
const CATCH_UP: Duration = Duration::from_secs(1);

/// One write, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A new slice for a port mapping.
    Create(EndpointSlice),
    /// New endpoints or ports for an existing slice.
    Replace(EndpointSlice),
    /// A slice no port mapping needs any more.
    Delete(Arc<EndpointSlice>),
}

/// The endpoint of `b`; `publish_not_ready` is the Service's `publishNotReadyAddresses`.
fn endpoint(b: &Backend, publish_not_ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![b.ip.clone()],
        conditions: Some(EndpointConditions {
            // Ready means serving and not terminating, as Kubernetes defines it, unless the
            // Service publishes every address: then every endpoint is ready to its readers
            // (DNS among them), as the Go controller writes it.
            ready: Some(publish_not_ready || (b.ready && !b.terminating)),
            serving: Some(b.ready),
            terminating: Some(b.terminating),
        }),
        node_name: b.node.clone(),
        target_ref: Some(b.target.clone()),
        hostname: b.hostname.clone(),
        ..Endpoint::default()
    }
}

/// Whether `slice` is this controller's for the Service named `service`.
#[must_use]
pub fn manages(slice: &EndpointSlice, service: &str) -> bool {
    let labels = slice.labels();
    labels.get(SERVICE_NAME).map(String::as_str) == Some(service)
        && labels.get(MANAGED_BY).map(String::as_str) == Some(MANAGER)
}

/// The writes that make `existing` (this Service's managed slices) list `svc`'s pods.
#[must_use]
pub fn plan(svc: &Service, pods: &[Arc<Pod>], existing: &[Arc<EndpointSlice>]) -> Vec<Step> {
    if !has_selector(svc) || svc.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let name = svc.name_any();
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut groups: BTreeMap<Vec<PortMapping>, Vec<Endpoint>> = BTreeMap::new();
    for b in backends(svc, pods) {
        groups
            .entry(b.ports.clone())
            .or_default()
            .push(endpoint(&b, publish_not_ready));
    }
    if groups.is_empty() {
        // A Service without pods still has one (empty) slice with its ports.
        groups.insert(service_ports(svc), Vec::new());
    }
    let mut existing: Vec<&Arc<EndpointSlice>> = existing.iter().collect();
    existing.sort_by_key(|s| s.name_any());
    let mut existing = existing.into_iter();
    let mut steps = Vec::new();
    for (ports, endpoints) in groups {
        let slice_ports: Vec<EndpointPort> = ports
            .iter()
            .map(|(name, port, protocol)| EndpointPort {
                name: name.clone(),
                port: Some(*port),
                protocol: Some(protocol.clone()),
                app_protocol: None,
            })
            .collect();
        let mut labels = svc.metadata.labels.clone().unwrap_or_default();
        labels.insert(SERVICE_NAME.to_owned(), name.clone());
        labels.insert(MANAGED_BY.to_owned(), MANAGER.to_owned());
        if let Some(slice) = existing.next() {
            let same = slice.endpoints == endpoints
                && slice.ports.as_deref() == Some(slice_ports.as_slice());
            if !same {
                let mut slice = (**slice).clone();
                slice.endpoints = endpoints;
                slice.ports = Some(slice_ports);
                slice.metadata.labels = Some(labels);
                steps.push(Step::Replace(slice));
            }
        } else {
            steps.push(Step::Create(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: svc.metadata.namespace.clone(),
                    labels: Some(labels),
                    owner_references: Some(vec![ownership::controller_ref(svc)]),
                    ..ObjectMeta::default()
                },
                address_type: "IPv4".to_owned(),
                endpoints,
                ports: Some(slice_ports),
            }));
        }
    }
    steps.extend(existing.map(|stale| Step::Delete(stale.clone())));
    steps
}

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    expectations: Expectations,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let controller = service_controller(informers);
    let pods = informers.get::<Pod>();
    let slices = informers.get::<EndpointSlice>();
    let expectations = Expectations::new(clock.clone());
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            pods: pods.store(),
            slices: slices.store(),
            expectations,
        },
    );
    async move {
        let _ = ctx.state.pods.wait_until_ready().await;
        let _ = ctx.state.slices.wait_until_ready().await;
        skiff_control_runtime::controller::run(controller(), reconcile, ctx).await;
    }
}

/// Writes the Service's EndpointSlices from its pods.
///
/// # Errors
/// When the API server refuses a write.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let key = format!("{ns}/{name}");
    let existing: Vec<Arc<EndpointSlice>> = ctx
        .state
        .slices
        .state()
        .into_iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()) && manages(s, &name))
        .collect();
    let caught_up = ctx.state.expectations.satisfied(
        &key,
        |slice| {
            existing
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some(slice))
        },
        |uid| {
            existing
                .iter()
                .any(|s| s.metadata.uid.as_deref() == Some(uid))
        },
    );
    if !caught_up {
        return Ok(Action::requeue(CATCH_UP));
    }
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    for step in plan(&svc, &ctx.state.pods.state(), &existing) {
        match step {
            Step::Create(slice) => {
                let created = api.create(&PostParams::default(), &slice).await?;
                ctx.state.expectations.created(&key, &created.name_any());
            }
            Step::Replace(slice) => {
                api.replace(&slice.name_any(), &PostParams::default(), &slice)
                    .await?;
            }
            Step::Delete(stale) => {
                match api
                    .delete(&stale.name_any(), &DeleteParams::default())
                    .await
                {
                    Ok(_) => ctx
                        .state
                        .expectations
                        .deleted(&key, stale.metadata.uid.as_deref().unwrap_or_default()),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{meta, service, web};

    fn slice_of(step: &Step) -> &EndpointSlice {
        match step {
            Step::Create(s) | Step::Replace(s) => s,
            Step::Delete(s) => s,
        }
    }

    #[test]
    fn one_slice_per_port_mapping_with_the_conditions_and_labels() {
        let pods = [
            web("a", "10.0.0.1", 8080),
            web("b", "10.0.0.2", 9090),
            web("c", "10.0.0.3", 8080),
        ];
        let steps = plan(&service(), &pods, &[]);
        assert_eq!(steps.len(), 2);
        let first = slice_of(&steps[0]);
        assert!(matches!(steps[0], Step::Create(_)));
        assert_eq!(first.endpoints.len(), 2);
        let conditions = first.endpoints[0].conditions.as_ref().unwrap();
        assert_eq!(
            (conditions.ready, conditions.serving, conditions.terminating),
            (Some(true), Some(true), Some(false))
        );
        assert!(manages(first, "web"));
        assert_eq!(first.metadata.generate_name.as_deref(), Some("web-"));
    }

    #[test]
    fn a_service_without_pods_still_has_an_empty_slice_with_its_ports() {
        let steps = plan(&service(), &[], &[]);
        let [Step::Create(slice)] = steps.as_slice() else {
            panic!("{steps:?}");
        };
        assert!(slice.endpoints.is_empty());
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(80));
    }

    #[test]
    fn existing_slices_are_kept_replaced_or_deleted() {
        let pods = [web("a", "10.0.0.1", 8080)];
        let steps = plan(&service(), &pods, &[]);
        let [Step::Create(created)] = steps.as_slice() else {
            panic!("no create");
        };
        let mut current = created.clone();
        current.metadata = meta("web-abc");
        current.metadata.labels = created.metadata.labels.clone();
        let current = Arc::new(current);
        assert!(plan(&service(), &pods, std::slice::from_ref(&current)).is_empty());
        let more = [web("a", "10.0.0.1", 8080), web("b", "10.0.0.2", 8080)];
        let steps = plan(&service(), &more, std::slice::from_ref(&current));
        assert!(
            matches!(&steps[..], [Step::Replace(s)] if s.endpoints.len() == 2 && s.metadata.name.as_deref() == Some("web-abc"))
        );
        let mut extra = (*current).clone();
        extra.metadata = meta("web-xyz");
        let extra = Arc::new(extra);
        let steps = plan(&service(), &pods, &[extra.clone(), current]);
        assert_eq!(steps, [Step::Delete(extra)]);
    }

    #[test]
    fn a_service_publishing_not_ready_addresses_lists_every_endpoint_ready() {
        let mut unready = (*web("a", "10.0.0.1", 8080)).clone();
        if let Some(conditions) = unready.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            conditions.retain(|c| c.type_ != "Ready");
        }
        let mut going = (*web("b", "10.0.0.2", 8080)).clone();
        going.metadata.deletion_timestamp = going.metadata.creation_timestamp.clone();
        let pods = [Arc::new(unready), Arc::new(going)];
        let conditions = |svc: &Service| -> Vec<(Option<bool>, Option<bool>, Option<bool>)> {
            slice_of(&plan(svc, &pods, &[])[0])
                .endpoints
                .iter()
                .map(|e| {
                    let c = e.conditions.clone().unwrap();
                    (c.ready, c.serving, c.terminating)
                })
                .collect()
        };
        assert_eq!(
            conditions(&service()),
            [
                (Some(false), Some(false), Some(false)),
                (Some(false), Some(true), Some(true))
            ]
        );
        let mut publishing = service();
        publishing
            .spec
            .as_mut()
            .unwrap()
            .publish_not_ready_addresses = Some(true);
        assert_eq!(
            conditions(&publishing),
            [
                (Some(true), Some(false), Some(false)),
                (Some(true), Some(true), Some(true))
            ]
        );
    }

    #[test]
    fn a_terminating_pod_is_serving_but_not_ready() {
        let mut going = (*web("a", "10.0.0.1", 8080)).clone();
        going.metadata.deletion_timestamp = going.metadata.creation_timestamp.clone();
        let steps = plan(&service(), &[Arc::new(going)], &[]);
        let conditions = slice_of(&steps[0]).endpoints[0].conditions.clone().unwrap();
        assert_eq!(
            (conditions.ready, conditions.serving, conditions.terminating),
            (Some(false), Some(true), Some(true))
        );
    }
}
