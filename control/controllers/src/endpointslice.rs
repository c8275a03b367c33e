//! The EndpointSlice controller: a Service with a selector gets EndpointSlices (one per
//! port mapping) whose endpoints carry the ready, serving and terminating conditions.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{Controller, controller::Action, watcher},
};

use crate::{
    Error, Shared,
    endpoints::{Backend, PortMapping, backends, services_of},
    ownership,
};

/// The label naming a slice's Service.
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";

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
    tracing::warn!(service = %svc.name_any(), ?err, "endpointslice update failed");
    Action::requeue(Duration::from_secs(2))
}

fn endpoint(b: &Backend) -> Endpoint {
    Endpoint {
        addresses: vec![b.ip.clone()],
        conditions: Some(EndpointConditions {
            // Ready means serving and not terminating, as Kubernetes defines it.
            ready: Some(b.ready && !b.terminating),
            serving: Some(b.ready),
            terminating: Some(b.terminating),
        }),
        node_name: b.node.clone(),
        target_ref: Some(b.target.clone()),
        ..Endpoint::default()
    }
}

/// Writes the Service's EndpointSlices from its pods.
///
/// # Errors
/// When the API server refuses a write.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Shared>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let has_selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty());
    if !has_selector || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let mut groups: BTreeMap<Vec<PortMapping>, Vec<Endpoint>> = BTreeMap::new();
    for b in backends(&svc, &ctx.pods.state()) {
        groups
            .entry(b.ports.clone())
            .or_default()
            .push(endpoint(&b));
    }
    if groups.is_empty() {
        // A Service without pods still has one (empty) slice with its ports.
        let ports = svc
            .spec
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
            .collect();
        groups.insert(ports, Vec::new());
    }
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let mut existing = api
        .list(
            &ListParams::default().labels(&format!("{SERVICE_NAME}={name},{MANAGED_BY}={MANAGER}")),
        )
        .await?
        .items;
    existing.sort_by_key(ResourceExt::name_any);
    let mut existing = existing.into_iter();
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
        if let Some(mut slice) = existing.next() {
            let same = slice.endpoints == endpoints
                && slice.ports.as_deref() == Some(slice_ports.as_slice());
            if !same {
                slice.endpoints = endpoints;
                slice.ports = Some(slice_ports);
                slice.metadata.labels = Some(labels);
                api.replace(&slice.name_any(), &PostParams::default(), &slice)
                    .await?;
            }
        } else {
            let slice = EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    owner_references: Some(vec![ownership::controller_ref(svc.as_ref())]),
                    ..ObjectMeta::default()
                },
                address_type: "IPv4".to_owned(),
                endpoints,
                ports: Some(slice_ports),
            };
            api.create(&PostParams::default(), &slice).await?;
        }
    }
    for stale in existing {
        match api
            .delete(&stale.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(Action::await_change())
}
