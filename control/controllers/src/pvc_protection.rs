//! The claim protection controller (kube-controller-manager's `pvc-protection`): a deleted
//! claim keeps its `kubernetes.io/pvc-protection` finalizer while a pod that has not
//! finished still uses it, so its volume is never released under a running pod.

use std::{future::Future, sync::Arc};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use skiff_control_runtime::{
    Clock, Context, Informers, informers::in_namespace, volumes::pod_claims,
};
use skiff_types::storage::PVC_PROTECTION;

use crate::{Error, pods};

const COMPONENT: &str = "pvc-protection-controller";

/// The finalizers to leave on a deleted claim once no unfinished pod of `pods` uses it;
/// `None` while the claim is not being deleted, has no protection finalizer, or is in use.
#[must_use]
pub fn plan(claim: &PersistentVolumeClaim, pods: &[Arc<Pod>]) -> Option<Vec<String>> {
    claim.metadata.deletion_timestamp.as_ref()?;
    let finalizers = claim.finalizers();
    if !finalizers.iter().any(|f| f == PVC_PROTECTION) {
        return None;
    }
    let name = claim.name_any();
    let in_use = pods.iter().any(|p| {
        p.namespace() == claim.namespace()
            && !pods::is_terminal(p)
            && pod_claims(p).any(|c| c == name)
    });
    (!in_use).then(|| {
        finalizers
            .iter()
            .filter(|f| *f != PVC_PROTECTION)
            .cloned()
            .collect()
    })
}

/// The controller's caches.
#[derive(Debug)]
pub struct State {
    pods: Store<Pod>,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let claims = informers.get::<PersistentVolumeClaim>();
    let pods = informers.get::<Pod>();
    let ctx = Context::new(informers, COMPONENT, clock, State { pods: pods.store() });
    let controller = Controller::for_shared_stream(claims.changes(), claims.store())
        // A pod that finishes or goes frees the claims it used.
        .watches_shared_stream(pods.changes(), |pod: Arc<Pod>| {
            let ns = pod.namespace().unwrap_or_default();
            pod_claims(&pod)
                .map(|c| ObjectRef::new(c).within(&ns))
                .collect::<Vec<_>>()
        });
    async move {
        let _ = ctx.state.pods.wait_until_ready().await;
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Lets a deleted claim go once no pod uses it.
///
/// # Errors
/// When the API server refuses the write; the controller retries.
pub async fn reconcile(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let pods = in_namespace(&ctx.state.pods, &ns);
    if let Some(finalizers) = plan(&claim, &pods) {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
        match api
            .patch(
                &claim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::debug!(claim = %claim.name_any(), namespace = %ns, "claim released by pvc-protection");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(deleted: bool) -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "data", "namespace": "default",
                         "finalizers": [PVC_PROTECTION, "example.com/keep"],
                         "deletionTimestamp": deleted.then_some("2025-01-01T00:00:00Z")},
        }))
        .unwrap()
    }

    fn pod(phase: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "default"},
                "spec": {"containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]},
                "status": {"phase": phase},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_deleted_claim_is_let_go_only_when_no_running_pod_uses_it() {
        assert_eq!(plan(&claim(false), &[]), None, "not being deleted");
        assert_eq!(plan(&claim(true), &[pod("Running")]), None, "in use");
        assert_eq!(
            plan(&claim(true), &[pod("Succeeded")]),
            Some(vec!["example.com/keep".to_owned()])
        );
        assert_eq!(
            plan(&claim(true), &[]),
            Some(vec!["example.com/keep".to_owned()])
        );
    }
}
