//! The StatefulSet controller: pods with stable names `<name>-<ordinal>`, created in order
//! and removed in reverse (OrderedReady) or all at once (Parallel), updated from the
//! highest ordinal down to the partition (RollingUpdate) or only when deleted (OnDelete),
//! with ControllerRevisions recording each template, and a claim per
//! `volumeClaimTemplate` and pod.

pub mod apply;
pub mod plan;

use std::{future::Future, sync::Arc};

use k8s_openapi::api::{
    apps::v1::{ControllerRevision, StatefulSet},
    core::v1::{PersistentVolumeClaim, Pod},
};
use kube::{
    ResourceExt,
    runtime::{Controller, controller::Action, reflector::Store},
};
use skiff_control_runtime::{Clock, Context, Informers, informers::in_namespace};

use self::plan::Observed;
use crate::Error;

const COMPONENT: &str = "statefulset-controller";

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    pods: Store<Pod>,
    revisions: Store<ControllerRevision>,
    claims: Store<PersistentVolumeClaim>,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let sets = informers.get::<StatefulSet>();
    let pods = informers.get::<Pod>();
    let revisions = informers.get::<ControllerRevision>();
    let claims = informers.get::<PersistentVolumeClaim>();
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            pods: pods.store(),
            revisions: revisions.store(),
            claims: claims.store(),
        },
    );
    let store = sets.store();
    let (changes, pod_changes) = (sets.changes(), pods.changes());
    async move {
        let _ = ctx.state.pods.wait_until_ready().await;
        let _ = ctx.state.revisions.wait_until_ready().await;
        let _ = ctx.state.claims.wait_until_ready().await;
        let controller =
            Controller::for_shared_stream(changes, store).owns_shared_stream(pod_changes);
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Moves one StatefulSet a step toward its declared state.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
pub async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = set.namespace().unwrap_or_default();
    let pods = in_namespace(&ctx.state.pods, &ns);
    let revisions = in_namespace(&ctx.state.revisions, &ns);
    let claims = in_namespace(&ctx.state.claims, &ns);
    let plan = plan::plan(&Observed {
        set: set.as_ref(),
        revisions: &revisions,
        pods: &pods,
        claims: &claims,
        now: ctx.clock.now(),
    });
    Box::pin(apply::apply(&ctx, set.as_ref(), plan)).await
}
