//! The Job controller: runs pods until `completions` succeed (`NonIndexed` or `Indexed`), at
//! most `parallelism` at a time, retrying failures with exponential back-off up to
//! `backoffLimit`, stopping at `activeDeadlineSeconds`, and removing finished Jobs after
//! `ttlSecondsAfterFinished`.

pub mod apply;
pub mod plan;

use std::{future::Future, sync::Arc};

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::runtime::{Controller, controller::Action, reflector::Store};
use skiff_control_runtime::{Clock, Context, Informers, expectations::Expectations};

use self::plan::Observed;
use crate::{Error, pods};

const COMPONENT: &str = "job-controller";

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    pods: Store<Pod>,
    expectations: Expectations,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let jobs = informers.get::<Job>();
    let pods = informers.get::<Pod>();
    let expectations = Expectations::new(clock.clone());
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            pods: pods.store(),
            expectations,
        },
    );
    let store = jobs.store();
    let (changes, pod_changes) = (jobs.changes(), pods.changes());
    async move {
        let _ = ctx.state.pods.wait_until_ready().await;
        let controller =
            Controller::for_shared_stream(changes, store).owns_shared_stream(pod_changes);
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Drives one Job a step.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let pods::ForOwner {
        key,
        pods,
        caught_up,
    } = pods::for_owner(job.as_ref(), &ctx.state.pods, &ctx.state.expectations);
    let plan = plan::plan(&Observed {
        job: job.as_ref(),
        pods: &pods,
        caught_up,
        now: ctx.clock.now(),
    });
    Box::pin(apply::apply(&ctx, job.as_ref(), &key, plan)).await
}
