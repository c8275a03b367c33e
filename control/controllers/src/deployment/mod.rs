//! The Deployment controller: one ReplicaSet per pod template, rolled from old to new by
//! `RollingUpdate` (maxSurge / maxUnavailable) or Recreate, with revision history, pause,
//! progress deadlines and the status `kubectl rollout status` reads. [`plan`] decides from
//! the cache and the time, [`apply`] writes.

pub mod apply;
pub mod plan;
pub mod status;

use std::{future::Future, sync::Arc};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
};
use kube::{
    ResourceExt,
    runtime::{
        Controller,
        controller::{Action, Config as ControllerConfig},
        reflector::{ObjectRef, Store},
    },
};
use skiff_control_runtime::{Clock, Context, Informers, informers::in_namespace, ownership};

use self::plan::Observed;
use crate::Error;

const COMPONENT: &str = "deployment-controller";

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    replica_sets: Store<ReplicaSet>,
    pods: Store<Pod>,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let deployments = informers.get::<Deployment>();
    let replica_sets = informers.get::<ReplicaSet>();
    let pods = informers.get::<Pod>();
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            replica_sets: replica_sets.store(),
            pods: pods.store(),
        },
    );
    let store = deployments.store();
    let (changes, set_changes, pod_changes) = (
        deployments.changes(),
        replica_sets.changes(),
        pods.changes(),
    );
    async move {
        let _ = ctx.state.replica_sets.wait_until_ready().await;
        let _ = ctx.state.pods.wait_until_ready().await;
        let sets = ctx.state.replica_sets.clone();
        let controller = Controller::for_shared_stream(changes, store)
            .with_config(ControllerConfig::default().concurrency(8))
            .owns_shared_stream(set_changes)
            // Recreate waits for old pods to be gone; their deletions go to the Deployment
            // through the ReplicaSet that owned them.
            .watches_shared_stream(pod_changes, move |pod: Arc<Pod>| {
                owner_of_owner(&sets, &pod)
            });
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

fn owner_of_owner(sets: &Store<ReplicaSet>, pod: &Pod) -> Option<ObjectRef<Deployment>> {
    let rs_ref = ownership::controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet")?;
    let rs = sets.get(&ObjectRef::new(&rs_ref.name).within(&pod.namespace()?))?;
    let deploy = ownership::controller_of(&rs.metadata).filter(|r| r.kind == "Deployment")?;
    Some(ObjectRef::new(&deploy.name).within(&rs.namespace()?))
}

/// Moves one Deployment a step toward its declared state and reports status.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_default();
    let replica_sets = in_namespace(&ctx.state.replica_sets, &ns);
    let recreate = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate");
    // Only Recreate looks at pods; the others need not copy the cache.
    let pods = if recreate {
        in_namespace(&ctx.state.pods, &ns)
    } else {
        Vec::new()
    };
    let plan = plan::plan(&Observed {
        deployment: d.as_ref(),
        replica_sets: &replica_sets,
        pods: &pods,
        now: ctx.clock.now(),
    });
    Box::pin(apply::apply(&ctx, d.as_ref(), plan)).await
}
