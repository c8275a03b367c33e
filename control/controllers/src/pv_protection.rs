//! The volume protection controller (kube-controller-manager's `pv-protection`): a deleted
//! volume keeps its `kubernetes.io/pv-protection` finalizer while it is bound to a claim.

use std::{future::Future, sync::Arc};

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{Controller, controller::Action},
};
use skiff_control_runtime::{Clock, Context, Informers};
use skiff_types::storage::PV_PROTECTION;

use crate::Error;

const COMPONENT: &str = "pv-protection-controller";

/// The finalizers to leave on a deleted volume that is not bound; `None` while it is not
/// being deleted, has no protection finalizer, or is bound.
#[must_use]
pub fn plan(volume: &PersistentVolume) -> Option<Vec<String>> {
    volume.metadata.deletion_timestamp.as_ref()?;
    let finalizers = volume.finalizers();
    let bound = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    (finalizers.iter().any(|f| f == PV_PROTECTION) && !bound).then(|| {
        finalizers
            .iter()
            .filter(|f| *f != PV_PROTECTION)
            .cloned()
            .collect()
    })
}

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let volumes = informers.get::<PersistentVolume>();
    let ctx = Context::new(informers, COMPONENT, clock, ());
    let controller = Controller::for_shared_stream(volumes.changes(), volumes.store());
    async move {
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Lets a deleted volume go once it is not bound.
///
/// # Errors
/// When the API server refuses the write; the controller retries.
pub async fn reconcile(
    volume: Arc<PersistentVolume>,
    ctx: Arc<Context<()>>,
) -> Result<Action, Error> {
    if let Some(finalizers) = plan(&volume) {
        let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
        match api
            .patch(
                &volume.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_volume_is_let_go_once_not_bound() {
        let volume = |phase: &str, deleted: bool| -> PersistentVolume {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "pv", "finalizers": [PV_PROTECTION],
                             "deletionTimestamp": deleted.then_some("2025-01-01T00:00:00Z")},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        assert_eq!(plan(&volume("Released", false)), None);
        assert_eq!(plan(&volume("Bound", true)), None);
        assert_eq!(plan(&volume("Released", true)), Some(Vec::new()));
    }
}
