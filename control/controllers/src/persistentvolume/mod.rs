//! The `PersistentVolume` binder, as kube-controller-manager's `persistentvolume-binder`:
//! binds claims to volumes (pre-created ones too), waits for the first consumer of
//! `WaitForFirstConsumer` claims, asks a class's provisioner for a volume, and moves
//! volumes through `Available`, `Bound` and `Released`. Two reconcilers, one over claims and
//! one over volumes, share the caches.

pub mod apply;
pub mod plan;

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim},
    storage::v1::StorageClass,
};
use kube::{
    ResourceExt,
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use skiff_control_runtime::{Clock, Context, Informers};

use self::plan::ClaimObserved;
use crate::Error;

const COMPONENT: &str = "persistentvolume-controller";

/// How often an unbound claim is looked at again even if nothing it watches changed (the
/// binder's resync period in Kubernetes).
pub const RESYNC: Duration = Duration::from_secs(15);

/// The binder's caches.
#[derive(Debug)]
pub struct State {
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
}

/// The binder's context.
pub type Ctx = Context<State>;

/// The binder over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let claims = informers.get::<PersistentVolumeClaim>();
    let volumes = informers.get::<PersistentVolume>();
    let classes = informers.get::<StorageClass>();
    let nodes = informers.get::<Node>();
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            claims: claims.store(),
            volumes: volumes.store(),
            classes: classes.store(),
            nodes: nodes.store(),
        },
    );
    let claim_side = Controller::for_shared_stream(claims.changes(), claims.store())
        // A volume change concerns the claim it points at.
        .watches_shared_stream(volumes.changes(), |pv: Arc<PersistentVolume>| {
            let r = pv.spec.as_ref()?.claim_ref.as_ref()?;
            Some(ObjectRef::new(r.name.as_deref()?).within(r.namespace.as_deref()?))
        });
    let volume_side = Controller::for_shared_stream(volumes.changes(), volumes.store())
        // A claim change (its deletion above all) concerns the volume it names.
        .watches_shared_stream(claims.changes(), |pvc: Arc<PersistentVolumeClaim>| {
            let name = pvc.spec.as_ref()?.volume_name.as_deref()?;
            (!name.is_empty()).then(|| ObjectRef::new(name))
        });
    async move {
        let _ = ctx.state.volumes.wait_until_ready().await;
        let _ = ctx.state.claims.wait_until_ready().await;
        let _ = ctx.state.classes.wait_until_ready().await;
        let _ = ctx.state.nodes.wait_until_ready().await;
        tokio::join!(
            skiff_control_runtime::controller::run(claim_side, reconcile_claim, ctx.clone()),
            skiff_control_runtime::controller::run(volume_side, reconcile_volume, ctx),
        );
    }
}

/// One binder pass over a claim.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
pub async fn reconcile_claim(
    claim: Arc<PersistentVolumeClaim>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let volumes = ctx.state.volumes.state();
    let classes = ctx.state.classes.state();
    let nodes = ctx.state.nodes.state();
    let plan = plan::plan_claim(&ClaimObserved {
        claim: claim.as_ref(),
        volumes: &volumes,
        classes: &classes,
        nodes: &nodes,
    });
    let bound = plan.steps.is_empty() && plan.note.is_none();
    apply::apply(&ctx, claim.as_ref(), Some(claim.as_ref()), plan).await?;
    Ok(if bound {
        Action::await_change()
    } else {
        Action::requeue(RESYNC)
    })
}

/// One binder pass over a volume.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
pub async fn reconcile_volume(
    volume: Arc<PersistentVolume>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let claims = ctx.state.claims.state();
    let plan = plan::plan_volume(volume.as_ref(), &claims);
    tracing::trace!(volume = %volume.name_any(), steps = plan.steps.len(), "binder pass");
    apply::apply(&ctx, volume.as_ref(), None, plan).await?;
    Ok(Action::requeue(RESYNC))
}
