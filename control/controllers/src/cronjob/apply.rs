//! Carries out a CronJob plan: Job writes and events, then the status.

use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::controller::Action,
};
use skiff_control_runtime::{events::EventType, status};

use super::{
    Ctx,
    plan::{Plan, Step},
};
use crate::Error;

/// Performs `plan` for `cj`.
///
/// # Errors
/// When the API server refuses a write; steps before it stay done.
pub async fn apply(ctx: &Ctx, cj: &CronJob, plan: Plan) -> Result<Action, Error> {
    let ns = cj.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    for step in plan.steps {
        match step {
            Step::Event {
                kind,
                reason,
                message,
            } => match kind {
                EventType::Normal => ctx.recorder.normal(cj, reason, &message).await,
                EventType::Warning => ctx.recorder.warning(cj, reason, &message).await,
            },
            Step::DeleteJob { name, reason } => {
                match jobs.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {
                        ctx.recorder
                            .normal(cj, reason, &format!("Deleted job {name}"))
                            .await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(err) => return Err(err.into()),
                }
            }
            Step::CreateJob(job) => match jobs.create(&PostParams::default(), &job).await {
                Ok(created) => {
                    let message = format!("Created job {}", created.name_any());
                    ctx.recorder.normal(cj, "SuccessfulCreate", &message).await;
                }
                // Created before a restart of this controller: already done.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(err) => return Err(err.into()),
            },
        }
    }
    if let Some(after) = plan.status {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        status::write(&api, &cj.name_any(), cj.status.as_ref(), &after).await?;
    }
    Ok(Action::requeue(plan.requeue))
}
