//! The DaemonSet controller: one pod on every node the template's node selector, affinity
//! and tolerations admit, following nodes as they join and leave, rolled to a new
//! template `maxUnavailable` nodes at a time (RollingUpdate) or on deletion (OnDelete).

pub mod apply;
pub mod plan;

use std::{future::Future, sync::Arc};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node, Pod},
};
use kube::{
    ResourceExt,
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use skiff_control_runtime::{Clock, Context, Informers, informers::in_namespace};

use self::plan::Observed;
use crate::Error;

const COMPONENT: &str = "daemonset-controller";

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    pods: Store<Pod>,
    nodes: Store<Node>,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let sets = informers.get::<DaemonSet>();
    let pods = informers.get::<Pod>();
    let nodes = informers.get::<Node>();
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            pods: pods.store(),
            nodes: nodes.store(),
        },
    );
    let store = sets.store();
    let (changes, pod_changes, node_changes) = (sets.changes(), pods.changes(), nodes.changes());
    async move {
        let _ = ctx.state.pods.wait_until_ready().await;
        let _ = ctx.state.nodes.wait_until_ready().await;
        let all = store.clone();
        let controller = Controller::for_shared_stream(changes, store)
            .owns_shared_stream(pod_changes)
            // Any node change may add or remove a daemon pod anywhere.
            .watches_shared_stream(node_changes, move |_node: Arc<Node>| {
                all.state()
                    .iter()
                    .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                    .collect::<Vec<_>>()
            });
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Puts one daemon pod on each eligible node and none elsewhere; rolls out new templates.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let pods = in_namespace(&ctx.state.pods, &ds.namespace().unwrap_or_default());
    let plan = plan::plan(&Observed {
        daemon_set: ds.as_ref(),
        nodes: &ctx.state.nodes.state(),
        pods: &pods,
        now: ctx.clock.now(),
    });
    Box::pin(apply::apply(&ctx, ds.as_ref(), plan)).await
}
