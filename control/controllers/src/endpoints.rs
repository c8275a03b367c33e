//! The Endpoints controller: a Service with a selector gets an Endpoints object listing
//! its pods' addresses (ready ones and not-ready ones apart) and target ports, named ports
//! resolved per pod.

use std::{collections::BTreeMap, future::Future, sync::Arc};

use k8s_openapi::{
    api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Pod, Service},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, ResourceExt,
    api::PostParams,
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use skiff_control_runtime::{Clock, Context, Informers, ownership};

use crate::{
    Error,
    backends::{PortMapping, backends, has_selector, service_controller},
};

const COMPONENT: &str = "endpoints-controller";

/// What to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// The Service has no Endpoints yet.
    Create(Endpoints),
    /// The Service's Endpoints differ (carries the resourceVersion read).
    Replace(Endpoints),
}

/// The Endpoints `svc` should have given `pods`, and whether `current` must change.
#[must_use]
pub fn plan(svc: &Service, pods: &[Arc<Pod>], current: Option<&Endpoints>) -> Option<Write> {
    // Endpoints of selector-less Services are the user's.
    if !has_selector(svc) {
        return None;
    }
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    // Pods with the same port mapping share a subset.
    let mut subsets: BTreeMap<Vec<PortMapping>, EndpointSubset> = BTreeMap::new();
    for b in backends(svc, pods) {
        if b.terminating && !publish_not_ready {
            continue;
        }
        let address = EndpointAddress {
            ip: b.ip.clone(),
            node_name: b.node.clone(),
            target_ref: Some(b.target.clone()),
            hostname: b.hostname.clone(),
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
        let list = if b.ready || publish_not_ready {
            &mut subset.addresses
        } else {
            &mut subset.not_ready_addresses
        };
        list.get_or_insert_with(Vec::new).push(address);
    }
    let subsets: Vec<EndpointSubset> = subsets.into_values().collect();
    let wanted = Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            labels: svc.metadata.labels.clone(),
            // Kubernetes deletes Endpoints with their Service itself; here the garbage
            // collector does, through this reference.
            owner_references: Some(vec![ownership::controller_ref(svc)]),
            resource_version: current.and_then(|c| c.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    };
    match current {
        Some(c)
            if c.subsets == wanted.subsets
                && c.metadata.labels == wanted.metadata.labels
                && c.metadata.owner_references == wanted.metadata.owner_references =>
        {
            None
        }
        Some(_) => Some(Write::Replace(wanted)),
        None if svc.metadata.deletion_timestamp.is_none() => Some(Write::Create(wanted)),
        None => None,
    }
}

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
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
    let endpoints = informers.get::<Endpoints>();
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            pods: pods.store(),
            endpoints: endpoints.store(),
        },
    );
    async move {
        let _ = ctx.state.pods.wait_until_ready().await;
        let _ = ctx.state.endpoints.wait_until_ready().await;
        skiff_control_runtime::controller::run(controller(), reconcile, ctx).await;
    }
}

/// Writes the Service's Endpoints from its pods.
///
/// # Errors
/// When the API server refuses the write (a stale cache's conflict included).
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let current = ctx.state.endpoints.get(&ObjectRef::new(&name).within(&ns));
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    match plan(&svc, &ctx.state.pods.state(), current.as_deref()) {
        Some(Write::Create(e)) => {
            api.create(&PostParams::default(), &e).await?;
        }
        Some(Write::Replace(e)) => {
            api.replace(&name, &PostParams::default(), &e).await?;
        }
        None => {}
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{pod, service, web};

    fn ips(list: Option<&Vec<EndpointAddress>>) -> Vec<&str> {
        list.into_iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    fn addresses(e: &Endpoints) -> (Vec<&str>, Vec<&str>) {
        let subset = &e.subsets.as_ref().unwrap()[0];
        (
            ips(subset.addresses.as_ref()),
            ips(subset.not_ready_addresses.as_ref()),
        )
    }

    #[test]
    fn ready_and_not_ready_pods_are_listed_apart_with_the_resolved_port() {
        let mut not_ready = (*web("c", "10.0.0.3", 8080)).clone();
        not_ready.status.as_mut().unwrap().conditions = None;
        let pods = [
            web("a", "10.0.0.1", 8080),
            Arc::new(not_ready),
            web("b", "10.0.0.2", 8080),
        ];
        let Some(Write::Create(e)) = plan(&service(), &pods, None) else {
            panic!("no create");
        };
        assert_eq!(
            addresses(&e),
            (vec!["10.0.0.1", "10.0.0.2"], vec!["10.0.0.3"])
        );
        let ports = e.subsets.as_ref().unwrap()[0].ports.as_ref().unwrap();
        assert_eq!(
            (ports[0].port, ports[0].name.as_deref()),
            (8080, Some("http"))
        );
        assert_eq!(
            e.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Service"
        );
    }

    #[test]
    fn pods_with_other_ports_get_their_own_subset() {
        let pods = [web("a", "10.0.0.1", 8080), web("b", "10.0.0.2", 9090)];
        let Some(Write::Create(e)) = plan(&service(), &pods, None) else {
            panic!("no create");
        };
        assert_eq!(e.subsets.unwrap().len(), 2);
    }

    #[test]
    fn unchanged_endpoints_are_not_written_and_changed_ones_replaced() {
        let pods = [web("a", "10.0.0.1", 8080)];
        let Some(Write::Create(mut current)) = plan(&service(), &pods, None) else {
            panic!("no create");
        };
        current.metadata.resource_version = Some("5".into());
        assert_eq!(plan(&service(), &pods, Some(&current)), None);
        let more = [web("a", "10.0.0.1", 8080), web("b", "10.0.0.2", 8080)];
        let Some(Write::Replace(e)) = plan(&service(), &more, Some(&current)) else {
            panic!("no replace");
        };
        assert_eq!(e.metadata.resource_version.as_deref(), Some("5"));
    }

    #[test]
    fn terminating_pods_leave_unless_not_ready_addresses_are_published() {
        let going = pod("a")
            .labels(&[("app", "web")])
            .ready_since(0)
            .ip("10.0.0.1")
            .terminating()
            .build();
        let Some(Write::Create(e)) = plan(&service(), std::slice::from_ref(&going), None) else {
            panic!("no create");
        };
        assert_eq!(e.subsets, None);
        let mut svc = service();
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let Some(Write::Create(e)) = plan(&svc, &[going], None) else {
            panic!("no create");
        };
        assert_eq!(e.subsets.unwrap()[0].addresses.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn a_service_without_a_selector_is_left_to_its_user() {
        let mut svc = service();
        svc.spec.as_mut().unwrap().selector = None;
        assert_eq!(plan(&svc, &[web("a", "10.0.0.1", 80)], None), None);
    }
}
