//! Carries out a ReplicaSet plan: claims, pod creation in slow-start batches, deletions,
//! events and the status write.

use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::controller::Action,
};
use skiff_control_runtime::{ownership, status};

use super::{
    Ctx,
    kinds::Replicated,
    plan::{Plan, Step},
};
use crate::Error;

/// Performs `plan` for `owner` (whose expectations are kept under `key`).
///
/// # Errors
/// When the API server refuses a write; steps before it stay done.
pub async fn apply<K: Replicated>(
    ctx: &Ctx<K>,
    owner: &K,
    key: &str,
    plan: Plan<K::Status>,
) -> Result<Action, Error> {
    let ns = owner.namespace().unwrap_or_default();
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = owner.uid().unwrap_or_default();
    for step in plan.steps {
        match step {
            Step::Adopt(pod) => {
                let reference = ownership::controller_ref(owner);
                if let Err(err) = ownership::adopt(&pod_api, pod.as_ref(), reference).await {
                    // Changed or gone meanwhile: the next reconcile sees it anew.
                    tracing::debug!(pod = %pod.name_any(), ?err, "adoption failed");
                }
            }
            Step::Release(pod) => {
                ownership::release(&pod_api, pod.as_ref(), &uid).await?;
            }
            Step::Create { pod, count } => {
                create(ctx, owner, &pod_api, key, &pod, count).await?;
            }
            Step::Delete(victims) => delete(ctx, owner, &pod_api, key, &victims).await?,
        }
    }
    if let Some(after) = plan.status {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        status::write(&api, &owner.name_any(), owner.status(), &after).await?;
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// Creates `count` copies of `pod` in batches of 1, 2, 4, ..., so that a template the
/// server refuses fails once rather than `count` times.
async fn create<K: Replicated>(
    ctx: &Ctx<K>,
    owner: &K,
    api: &Api<Pod>,
    key: &str,
    pod: &Pod,
    count: usize,
) -> Result<(), Error> {
    let mut remaining = count;
    let mut batch = 1;
    let params = PostParams::default();
    while remaining > 0 {
        let size = batch.min(remaining);
        let results = join_all((0..size).map(|_| api.create(&params, pod))).await;
        let mut failed = None;
        for result in results {
            match result {
                Ok(created) => {
                    ctx.state.expectations.created(key, &created.name_any());
                    ctx.recorder
                        .normal(
                            owner,
                            "SuccessfulCreate",
                            &format!("Created pod: {}", created.name_any()),
                        )
                        .await;
                }
                Err(err) => failed = Some(err),
            }
        }
        if let Some(err) = failed {
            let message = match &err {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            };
            ctx.recorder
                .warning(owner, "FailedCreate", &format!("Error creating: {message}"))
                .await;
            return Err(err.into());
        }
        remaining -= size;
        batch *= 2;
    }
    Ok(())
}

async fn delete<K: Replicated>(
    ctx: &Ctx<K>,
    owner: &K,
    api: &Api<Pod>,
    key: &str,
    victims: &[Arc<Pod>],
) -> Result<(), Error> {
    let params = DeleteParams::default();
    let names: Vec<String> = victims.iter().map(|p| p.name_any()).collect();
    let results = join_all(names.iter().map(|name| api.delete(name, &params))).await;
    for (pod, result) in victims.iter().zip(results) {
        match result {
            Ok(_) => {
                ctx.state
                    .expectations
                    .deleted(key, pod.metadata.uid.as_deref().unwrap_or_default());
                ctx.recorder
                    .normal(
                        owner,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", pod.name_any()),
                    )
                    .await;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
