//! Node IPAM: every node gets its own `spec.podCIDR` carved from the cluster CIDR, never
//! one another node holds.

mod allocator;

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

pub use allocator::{Allocator, Plan, pod_cidr};
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

/// Writes refused because the copy written against was stale, before the reconcile gives
/// up and backs off.
const ATTEMPTS: usize = 3;

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    nodes: Store<Node>,
    allocator: Mutex<Allocator>,
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
            allocator: Mutex::new(Allocator::new(cluster, mask)),
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
        // The runner starts once the cache holds every Node, so the first plan already
        // counts every CIDR handed out before this process started.
        let controller = Controller::for_shared_stream(changes, store)
            .with_config(ControllerConfig::default().concurrency(1));
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

impl State {
    fn plan(&self, node: &Node) -> Result<Plan, Error> {
        let nodes = self.nodes.state();
        self.allocator().plan(node, &nodes)
    }

    fn allocator(&self) -> std::sync::MutexGuard<'_, Allocator> {
        self.allocator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sets `cidr` on `node` only if the node is still the version read: a Node that changed
/// since (perhaps given a CIDR by an earlier write the cache does not show yet) is refused
/// with 409, and one that holds a CIDR already is refused by the API server with 422.
async fn assign(api: &Api<Node>, node: &Node, cidr: Ipv4Cidr) -> Result<Node, kube::Error> {
    let cidr = cidr.to_string();
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": node.resource_version()},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    });
    api.patch(
        &node.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

/// Gives a node without a pod CIDR the first free one, once: a write refused because the
/// cached copy was stale is followed by a fresh read, never by a second allocation.
///
/// # Errors
/// When the range is exhausted or the API server refuses the write.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let name = node.name_any();
    let mut current = node;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cidr = match ctx.state.plan(&current) {
            Ok(Plan::Holds(_)) => return Ok(Action::await_change()),
            Ok(Plan::Assign(cidr)) => cidr,
            Err(err) => {
                let message = format!("Node {name} has no pod CIDR: {err}");
                ctx.recorder
                    .warning(current.as_ref(), "CIDRNotAvailable", &message)
                    .await;
                return Err(err);
            }
        };
        match assign(&api, &current, cidr).await {
            Ok(written) => {
                ctx.state.allocator().observed(&written);
                tracing::info!(node = %name, %cidr, "allocated a pod CIDR");
                return Ok(Action::await_change());
            }
            Err(kube::Error::Api(status))
                if (status.code == 409 || status.code == 422) && attempt < ATTEMPTS =>
            {
                tracing::debug!(
                    node = %name,
                    %cidr,
                    code = status.code,
                    "pod CIDR write refused; reading the Node afresh"
                );
                let Some(fresh) = api.get_opt(&name).await? else {
                    ctx.state.allocator().gone(&name);
                    return Ok(Action::await_change());
                };
                ctx.state.allocator().observed(&fresh);
                current = Arc::new(fresh);
            }
            Err(err) => return Err(err.into()),
        }
    }
}
