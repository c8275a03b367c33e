//! Carries out a Deployment plan: claims, ReplicaSet writes with their events, the status
//! and the revision annotation. A name collision on create bumps `collisionCount` so the
//! next plan hashes the template differently, as the Go controller does.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use skiff_control_runtime::{ownership, status};

use super::{
    Ctx,
    plan::{DESIRED_REPLICAS, Plan, REVISION, Step, bare_template},
};
use crate::Error;

/// Performs `plan` for `d`.
///
/// # Errors
/// When the API server refuses a write; steps before it stay done.
pub async fn apply(ctx: &Ctx, d: &Deployment, plan: Plan) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let merge = |patch: serde_json::Value| Patch::Merge(patch);
    for step in plan.steps {
        match step {
            Step::Adopt(rs) => {
                ownership::adopt(&rs_api, rs.as_ref(), ownership::controller_ref(d)).await?;
            }
            Step::Release(rs) => {
                ownership::release(&rs_api, rs.as_ref(), &d.uid().unwrap_or_default()).await?;
            }
            Step::Annotate { name, annotations } => {
                let patch = serde_json::json!({"metadata": {"annotations": annotations}});
                rs_api
                    .patch(&name, &PatchParams::default(), &merge(patch))
                    .await?;
            }
            Step::Create(rs) => {
                if !create(ctx, d, &rs_api, &api, &rs).await? {
                    return Ok(Action::requeue(std::time::Duration::from_millis(100)));
                }
            }
            Step::Scale { name, from, to } => {
                let desired = d
                    .spec
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .unwrap_or(1)
                    .to_string();
                let patch = serde_json::json!({
                    "metadata": {"annotations": {DESIRED_REPLICAS: desired}},
                    "spec": {"replicas": to},
                });
                rs_api
                    .patch(&name, &PatchParams::default(), &merge(patch))
                    .await?;
                let direction = if to > from { "up" } else { "down" };
                ctx.recorder
                    .normal(
                        d,
                        "ScalingReplicaSet",
                        &format!("Scaled {direction} replica set {name} from {from} to {to}"),
                    )
                    .await;
            }
            Step::Delete(name) => match rs_api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(err.into()),
            },
        }
    }
    if let Some(after) = plan.status {
        status::write(&api, &name, d.status.as_ref(), &after).await?;
    }
    if let Some(revision) = plan.revision {
        let patch = serde_json::json!({"metadata": {"annotations": {REVISION: revision}}});
        api.patch(&name, &PatchParams::default(), &merge(patch))
            .await?;
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// Creates the new ReplicaSet; `Ok(false)` when its name was taken by another template (a
/// hash collision, now counted). A ReplicaSet of that name that is ours with the same
/// template is one the cache has not shown yet, not a collision.
async fn create(
    ctx: &Ctx,
    d: &Deployment,
    rs_api: &Api<ReplicaSet>,
    api: &Api<Deployment>,
    rs: &ReplicaSet,
) -> Result<bool, Error> {
    match rs_api.create(&PostParams::default(), rs).await {
        Ok(created) => {
            let replicas = created.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let message = format!(
                "Scaled up replica set {} from 0 to {replicas}",
                created.name_any()
            );
            ctx.recorder.normal(d, "ScalingReplicaSet", &message).await;
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = rs_api.get_opt(&rs.name_any()).await?;
            let ours = existing.as_ref().is_some_and(|e| {
                ownership::is_controlled_by(&e.metadata, &d.uid().unwrap_or_default())
                    && bare_template(e.spec.as_ref().and_then(|s| s.template.as_ref()))
                        == bare_template(rs.spec.as_ref().and_then(|s| s.template.as_ref()))
            });
            if ours {
                return Ok(true);
            }
            let count = d
                .status
                .as_ref()
                .and_then(|s| s.collision_count)
                .unwrap_or(0)
                + 1;
            tracing::info!(deployment = %d.name_any(), replicaset = %rs.name_any(), count, "template hash collision");
            api.patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"status": {"collisionCount": count}})),
            )
            .await?;
            Ok(false)
        }
        Err(err) => Err(err.into()),
    }
}
