//! Carries out a Job plan: pod and Job writes, events, expectations, then the status.

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
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

fn gone(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

/// Performs `plan` for `job` (whose expectations are kept under `key`).
///
/// # Errors
/// When the API server refuses a write; steps before it stay done.
pub async fn apply(ctx: &Ctx, job: &Job, key: &str, plan: Plan) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for step in plan.steps {
        match step {
            Step::DeleteJob => {
                tracing::info!(job = %name, "deleting a finished job after its TTL");
                match jobs.delete(&name, &DeleteParams::background()).await {
                    Err(err) if !gone(&err) => return Err(err.into()),
                    _ => return Ok(Action::await_change()),
                }
            }
            Step::DeletePod(pod) => match pods.delete(&pod, &DeleteParams::default()).await {
                Err(err) if !gone(&err) => return Err(err.into()),
                _ => {}
            },
            Step::CreatePod(pod) => match pods.create(&PostParams::default(), &pod).await {
                Ok(created) => {
                    ctx.state.expectations.created(key, &created.name_any());
                    let message = format!("Created pod: {}", created.name_any());
                    ctx.recorder.normal(job, "SuccessfulCreate", &message).await;
                }
                Err(err) => {
                    let message = match &err {
                        kube::Error::Api(s) => s.message.clone(),
                        other => other.to_string(),
                    };
                    ctx.recorder
                        .warning(job, "FailedCreate", &format!("Error creating: {message}"))
                        .await;
                    return Err(err.into());
                }
            },
            Step::Event {
                kind,
                reason,
                message,
            } => match kind {
                EventType::Normal => ctx.recorder.normal(job, &reason, &message).await,
                EventType::Warning => ctx.recorder.warning(job, &reason, &message).await,
            },
        }
    }
    if let Some(after) = plan.status {
        status::write(&jobs, &name, job.status.as_ref(), &after).await?;
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}
