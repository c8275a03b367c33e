//! The ReplicaSet controller: keeps exactly `spec.replicas` active pods matching the
//! selector, adopting orphans and releasing pods that stop matching, and reports counters.
//! The same code serves `ReplicationControllers`, which differ only in their equality
//! selector ([`kinds`]).

pub mod apply;
pub mod kinds;
pub mod plan;

use std::{future::Future, sync::Arc};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt,
    runtime::{
        Controller,
        controller::{Action, Config as ControllerConfig},
        reflector::{ObjectRef, Store},
    },
};
use skiff_control_runtime::{Clock, Context, Informers, expectations::Expectations};

pub use self::kinds::Replicated;
use self::plan::Observed;
use crate::{Error, pods};

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State<K: Replicated> {
    pods: Store<Pod>,
    owners: Store<K>,
    expectations: Expectations,
}

/// The controller's context.
pub type Ctx<K> = Context<State<K>>;

/// The controller for kind `K` over the process's informers; runs until dropped.
pub fn start<K: Replicated>(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<K> {
    let pod_informer = informers.get::<Pod>();
    let owner_informer = informers.get::<K>();
    let expectations = Expectations::new(clock.clone());
    let ctx = Context::new(
        informers,
        K::COMPONENT,
        clock,
        State {
            pods: pod_informer.store(),
            owners: owner_informer.store(),
            expectations,
        },
    );
    let owner_changes = owner_informer.changes();
    let pod_changes = pod_informer.changes();
    let orphan_changes = pod_informer.changes();
    async move {
        // Counting pods before the cache holds them all would create them twice.
        let _ = ctx.state.pods.wait_until_ready().await;
        let owners = ctx.state.owners.clone();
        let controller = Controller::for_shared_stream(owner_changes, ctx.state.owners.clone())
            .with_config(ControllerConfig::default().concurrency(8))
            .owns_shared_stream(pod_changes)
            .watches_shared_stream(orphan_changes, move |pod: Arc<Pod>| {
                orphan_owners(&owners, &pod)
            });
        skiff_control_runtime::controller::run(controller, reconcile::<K>, ctx).await;
    }
}

/// Owners that may adopt `pod` (an orphan whose labels they select).
fn orphan_owners<K: Replicated>(owners: &Store<K>, pod: &Pod) -> Vec<ObjectRef<K>> {
    if skiff_control_runtime::ownership::controller_of(&pod.metadata).is_some() {
        return Vec::new();
    }
    let ns = pod.namespace();
    owners
        .state()
        .iter()
        .filter(|o| o.namespace() == ns && o.selector().matches(pod.metadata.labels.as_ref()))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Brings one owner to its declared replica count and updates its status.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
pub async fn reconcile<K: Replicated>(owner: Arc<K>, ctx: Arc<Ctx<K>>) -> Result<Action, Error> {
    let pods::ForOwner {
        key,
        pods,
        caught_up,
    } = pods::for_owner(owner.as_ref(), &ctx.state.pods, &ctx.state.expectations);
    let plan = plan::plan(&Observed {
        owner: owner.as_ref(),
        pods: &pods,
        caught_up,
        now: ctx.clock.now(),
    })?;
    apply::apply(&ctx, owner.as_ref(), &key, plan).await
}
