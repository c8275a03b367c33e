//! Node IPAM: every node gets its own `spec.podCIDR` carved from the cluster CIDR, never
//! one another node holds.

use std::{
    collections::{BTreeSet, HashSet},
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::{Action, Config as ControllerConfig},
        reflector::Store,
    },
};
use skiff_control_runtime::{Clock, Context, Informers};
use skiff_types::Ipv4Cidr;

use crate::Error;

const COMPONENT: &str = "node-ipam-controller";

/// The pod CIDR a node holds, if any.
fn pod_cidr(node: &Node) -> Option<Ipv4Cidr> {
    let text = node.spec.as_ref()?.pod_cidr.as_deref()?;
    Ipv4Cidr::parse_masked(text).ok()
}

/// The pod CIDR to give `node`: `Ok(None)` when it has one, else the first subnet of
/// `cluster` with `mask` bits that no node in `nodes` holds and that is not in `given`
/// (handed out by this process but maybe not in the cache yet).
///
/// # Errors
/// [`Error::Invalid`] when every subnet is taken.
pub fn allocate(
    node: &Node,
    nodes: &[Arc<Node>],
    given: &BTreeSet<Ipv4Cidr>,
    cluster: Ipv4Cidr,
    mask: u8,
) -> Result<Option<Ipv4Cidr>, Error> {
    if pod_cidr(node).is_some() {
        return Ok(None);
    }
    let used: HashSet<Ipv4Cidr> = nodes.iter().filter_map(|n| pod_cidr(n)).collect();
    (0..cluster.subnet_count(mask))
        .filter_map(|i| cluster.subnet(mask, i))
        .find(|c| !used.contains(c) && !given.contains(c))
        .map(Some)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no /{mask} pod CIDR left in {cluster} for node {}",
                node.name_any()
            ))
        })
}

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    nodes: Store<Node>,
    cluster: Ipv4Cidr,
    mask: u8,
    given: Mutex<BTreeSet<Ipv4Cidr>>,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers, splitting `cluster` into per-node CIDRs
/// of `mask` bits; runs until dropped.
pub fn start(
    informers: &Informers,
    cluster: Ipv4Cidr,
    mask: u8,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let nodes = informers.get::<Node>();
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            nodes: nodes.store(),
            cluster,
            mask,
            given: Mutex::default(),
        },
    );
    let changes = nodes.changes();
    async move {
        tracing::info!(
            cluster_cidr = %cluster,
            node_cidr_mask_size = mask,
            nodes = cluster.subnet_count(mask),
            "node IPAM gives each node a pod CIDR"
        );
        let store = ctx.state.nodes.clone();
        let controller = Controller::for_shared_stream(changes, store)
            .with_config(ControllerConfig::default().concurrency(1));
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Gives a node without a pod CIDR the first free one.
///
/// # Errors
/// When the range is exhausted or the API server refuses the write.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let given = ctx
        .state
        .given
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let free = match allocate(
        &node,
        &ctx.state.nodes.state(),
        &given,
        ctx.state.cluster,
        ctx.state.mask,
    ) {
        Ok(Some(free)) => free,
        Ok(None) => return Ok(Action::await_change()),
        Err(err) => {
            let message = format!("Node {} has no pod CIDR: {err}", node.name_any());
            ctx.recorder
                .warning(node.as_ref(), "CIDRNotAvailable", &message)
                .await;
            return Err(err);
        }
    };
    let api: Api<Node> = Api::all(ctx.client.clone());
    let cidr = free.to_string();
    let patch = serde_json::json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    api.patch(
        &node.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    tracing::info!(node = %node.name_any(), %cidr, "allocated a pod CIDR");
    ctx.state
        .given
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(free);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::node;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap()
    }

    fn holding(name: &str, pod_cidr: &str) -> Arc<Node> {
        let mut n = (*node(name, &[])).clone();
        n.spec.as_mut().unwrap().pod_cidr = Some(pod_cidr.into());
        Arc::new(n)
    }

    #[test]
    fn a_new_node_gets_the_first_subnet_nobody_holds() {
        let cluster = cidr("10.42.0.0/16");
        let nodes = [holding("a", "10.42.0.0/24"), holding("b", "10.42.2.0/24")];
        let given = BTreeSet::from([cidr("10.42.1.0/24")]);
        let new = node("c", &[]);
        assert_eq!(
            allocate(&new, &nodes, &given, cluster, 24).unwrap(),
            Some(cidr("10.42.3.0/24"))
        );
        assert_eq!(
            allocate(&nodes[0], &nodes, &given, cluster, 24).unwrap(),
            None
        );
    }

    #[test]
    fn an_exhausted_range_is_an_error_naming_it() {
        let cluster = cidr("10.42.0.0/23");
        let nodes = [holding("a", "10.42.0.0/24"), holding("b", "10.42.1.0/24")];
        let err = allocate(&node("c", &[]), &nodes, &BTreeSet::new(), cluster, 24).unwrap_err();
        assert!(err.to_string().contains("10.42.0.0/23"), "{err}");
    }
}
