//! The resource quota controller: keeps each ResourceQuota's `status.hard` and
//! `status.used` current (admission in the API server does the refusing).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    core::DynamicObject,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use serde_json::{Value, json};
use skiff_machinery::quota;

use crate::{Error, Shared, kinds};

/// Runs the controller until dropped.
pub async fn run(
    shared: Arc<Shared>,
    pods: impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
) {
    let api: Api<ResourceQuota> = Api::all(shared.client.clone());
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    let quotas = controller.store();
    controller
        // A pod coming or going changes the usage of its namespace's quotas.
        .watches_stream(pods, move |pod: Pod| {
            let ns = pod.namespace();
            quotas
                .state()
                .iter()
                .filter(|q| q.namespace() == ns)
                .map(|q| ObjectRef::from_obj(q.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, shared)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
fn error_policy(q: Arc<ResourceQuota>, err: &Error, _ctx: Arc<Shared>) -> Action {
    tracing::warn!(quota = %q.name_any(), ?err, "quota usage update failed");
    Action::requeue(Duration::from_secs(5))
}

/// Recounts one quota's usage.
///
/// # Errors
/// When the API server refuses a request.
pub async fn reconcile(q: Arc<ResourceQuota>, ctx: Arc<Shared>) -> Result<Action, Error> {
    let ns = q.namespace().unwrap_or_default();
    let hard = q
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for resource in hard.keys() {
        let Some((group, plural)) = quota::counted_kind(resource) else {
            continue;
        };
        let objects: Vec<Value> = if group.is_empty() && plural == "pods" {
            ctx.pods
                .state()
                .iter()
                .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
                .filter_map(|p| {
                    let mut v = serde_json::to_value(p.as_ref()).ok()?;
                    v["kind"] = json!("Pod");
                    Some(v)
                })
                .collect()
        } else {
            let Some(kind) = kinds::all()
                .into_iter()
                .find(|k| k.resource.group == group && k.resource.plural == plural)
            else {
                continue;
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &ns, &kind.resource);
            api.list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter_map(|o| {
                    let mut v = serde_json::to_value(o).ok()?;
                    v["kind"] = json!(kind.resource.kind);
                    Some(v)
                })
                .collect()
        };
        let total: i64 = objects.iter().map(|o| quota::usage(resource, o)).sum();
        used.insert(resource.clone(), quota::format_for(resource, total));
    }
    let status = json!({"hard": hard, "used": used});
    let before = serde_json::to_value(q.status.clone().unwrap_or_default()).unwrap_or_default();
    if before.get("used") != status.get("used") || before.get("hard") != status.get("hard") {
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &q.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    // Non-pod objects are not watched here: recount now and then.
    Ok(Action::requeue(Duration::from_secs(10)))
}
