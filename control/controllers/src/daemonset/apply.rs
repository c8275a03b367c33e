//! Carries out a DaemonSet plan: pod writes with their events, then the status.

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::controller::Action,
};
use skiff_control_runtime::status;

use super::{
    Ctx,
    plan::{Plan, Step},
};
use crate::Error;

/// Deletes `name`; a pod already gone is fine.
async fn delete(api: &Api<Pod>, name: &str, params: &DeleteParams) -> Result<bool, Error> {
    match api.delete(name, params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Performs `plan` for `ds`.
///
/// # Errors
/// When the API server refuses a write; steps before it stay done.
pub async fn apply(ctx: &Ctx, ds: &DaemonSet, plan: Plan) -> Result<Action, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for step in plan.steps {
        match step {
            Step::Remove { name, force } => {
                let params = DeleteParams {
                    grace_period_seconds: force.then_some(0),
                    ..DeleteParams::default()
                };
                if delete(&pods, &name, &params).await? {
                    ctx.recorder
                        .normal(ds, "SuccessfulDelete", &format!("Deleted pod: {name}"))
                        .await;
                }
            }
            Step::Create(pod) => {
                let created = pods.create(&PostParams::default(), &pod).await?;
                ctx.recorder
                    .normal(
                        ds,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", created.name_any()),
                    )
                    .await;
            }
            Step::Replace(name) => {
                delete(&pods, &name, &DeleteParams::default()).await?;
            }
        }
    }
    if let Some(after) = plan.status {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        status::write(&api, &ds.name_any(), ds.status.as_ref(), &after).await?;
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}
