//! Carries out a binder plan: volume and claim replaces (compare-and-swap on the cached
//! resourceVersion, so a stale decision fails and is made again), status writes, the Event.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::{Api, Resource, ResourceExt, api::PostParams};
use skiff_control_runtime::status;

use super::{
    Ctx,
    plan::{Plan, Step},
};
use crate::Error;

/// Performs `plan`, whose Event is about `about`.
///
/// # Errors
/// When the API server refuses a write; the steps before it stay done.
pub async fn apply<K>(
    ctx: &Ctx,
    about: &K,
    claim: Option<&PersistentVolumeClaim>,
    plan: Plan,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>,
{
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    for step in plan.steps {
        match step {
            Step::UpdateVolume(volume) => {
                volumes
                    .replace(&volume.name_any(), &PostParams::default(), &volume)
                    .await?;
            }
            Step::VolumeStatus {
                name,
                before,
                after,
            } => {
                status::write(&volumes, &name, before.as_ref(), &after).await?;
            }
            Step::UpdateClaim(updated) => {
                let ns = updated.namespace().unwrap_or_default();
                let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
                claims
                    .replace(&updated.name_any(), &PostParams::default(), &updated)
                    .await?;
            }
            Step::ClaimStatus(after) => {
                let Some(claim) = claim else {
                    return Err(Error::Invalid(
                        "a claim status step without a claim".to_owned(),
                    ));
                };
                let ns = claim.namespace().unwrap_or_default();
                let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
                status::write(&claims, &claim.name_any(), claim.status.as_ref(), &after).await?;
            }
        }
    }
    if let Some(note) = plan.note {
        if note.warning {
            ctx.recorder
                .warning(about, note.reason, &note.message)
                .await;
        } else {
            ctx.recorder.normal(about, note.reason, &note.message).await;
        }
    }
    Ok(())
}
