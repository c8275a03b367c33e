//! The CronJob controller: creates a Job at each time the cron schedule names (in the
//! CronJob's time zone, UTC by default), honouring `concurrencyPolicy`,
//! `startingDeadlineSeconds`, `suspend` and the history limits.

pub mod apply;
pub mod plan;

use std::{future::Future, sync::Arc};

use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::{
    ResourceExt,
    runtime::{Controller, controller::Action, reflector::Store},
};
use skiff_control_runtime::{Clock, Context, Informers, informers::in_namespace};

use self::plan::Observed;
use crate::Error;

const COMPONENT: &str = "cronjob-controller";

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    jobs: Store<Job>,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let cron_jobs = informers.get::<CronJob>();
    let jobs = informers.get::<Job>();
    let ctx = Context::new(informers, COMPONENT, clock, State { jobs: jobs.store() });
    let store = cron_jobs.store();
    let (changes, job_changes) = (cron_jobs.changes(), jobs.changes());
    async move {
        let _ = ctx.state.jobs.wait_until_ready().await;
        let controller =
            Controller::for_shared_stream(changes, store).owns_shared_stream(job_changes);
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Starts the Job that is due, if any, and trims history.
///
/// # Errors
/// When the schedule is invalid or the API server refuses a write; the controller retries.
pub async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let jobs = in_namespace(&ctx.state.jobs, &cj.namespace().unwrap_or_default());
    let plan = plan::plan(&Observed {
        cron_job: cj.as_ref(),
        jobs: &jobs,
        now: ctx.clock.now(),
    })?;
    match plan {
        Some(plan) => Box::pin(apply::apply(&ctx, cj.as_ref(), plan)).await,
        None => Ok(Action::await_change()),
    }
}
