//! Carries out a StatefulSet plan: revision and pod writes with their events, the status.

use k8s_openapi::api::{
    apps::v1::{ControllerRevision, StatefulSet},
    core::v1::{PersistentVolumeClaim, Pod},
};
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

/// Whether a failed request only says the work is done already.
fn done_already(err: &kube::Error, codes: &[u16]) -> bool {
    matches!(err, kube::Error::Api(s) if codes.contains(&s.code))
}

/// Performs `plan` for `set`.
///
/// # Errors
/// When the API server refuses a write; steps before it stay done.
pub async fn apply(ctx: &Ctx, set: &StatefulSet, plan: Plan) -> Result<Action, Error> {
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let revisions: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for step in plan.steps {
        match step {
            Step::CreateClaim(claim) => match claims.create(&PostParams::default(), &claim).await {
                Ok(created) => {
                    let message = format!(
                        "create Claim {} Pod {}-{} in StatefulSet {name} success",
                        created.name_any(),
                        name,
                        created.name_any().rsplit('-').next().unwrap_or_default()
                    );
                    ctx.recorder.normal(set, "SuccessfulCreate", &message).await;
                }
                Err(err) if done_already(&err, &[409]) => {}
                Err(err) => return Err(err.into()),
            },
            Step::CreateRevision(revision) => {
                match revisions.create(&PostParams::default(), &revision).await {
                    Err(err) if !done_already(&err, &[409]) => return Err(err.into()),
                    _ => {}
                }
            }
            Step::CreatePod(pod) => match pods.create(&PostParams::default(), &pod).await {
                Ok(created) => {
                    let message = format!(
                        "create Pod {} in StatefulSet {name} successful",
                        created.name_any()
                    );
                    ctx.recorder.normal(set, "SuccessfulCreate", &message).await;
                }
                Err(err) if done_already(&err, &[409]) => {}
                Err(err) => return Err(err.into()),
            },
            Step::DeletePod {
                name: pod,
                scale_down,
            } => match pods.delete(&pod, &DeleteParams::default()).await {
                Ok(_) if scale_down => {
                    let message = format!("delete Pod {pod} in StatefulSet {name} successful");
                    ctx.recorder.normal(set, "SuccessfulDelete", &message).await;
                }
                Ok(_) => {}
                Err(err) if done_already(&err, &[404]) => {}
                Err(err) => return Err(err.into()),
            },
            Step::DeleteRevision(revision) => {
                if let Err(err) = revisions.delete(&revision, &DeleteParams::default()).await
                    && !done_already(&err, &[404])
                {
                    return Err(err.into());
                }
            }
        }
    }
    if let Some(after) = plan.status {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        status::write(&api, &name, set.status.as_ref(), &after).await?;
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}
