//! The namespace controller: a namespace being deleted loses everything in it, then its
//! `kubernetes` finalizer, and the API server removes it.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    core::DynamicObject,
    runtime::{Controller, controller::Action, watcher},
};

use crate::{Error, Shared, kinds};

/// The finalizer the API server puts in every namespace's `spec.finalizers`.
const FINALIZER: &str = "kubernetes";

/// Runs the controller until dropped.
pub async fn run(shared: Arc<Shared>) {
    let api: Api<Namespace> = Api::all(shared.client.clone());
    Controller::new(api, watcher::Config::default().any_semantic())
        .run(reconcile, error_policy, shared)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
fn error_policy(ns: Arc<Namespace>, err: &Error, _ctx: Arc<Shared>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), ?err, "namespace cleanup failed");
    Action::requeue(Duration::from_secs(2))
}

/// Empties a terminating namespace, then releases it.
///
/// # Errors
/// When the API server refuses a request; the controller retries.
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Shared>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let mut remaining = 0;
    for kind in kinds::all().into_iter().filter(|k| k.namespaced) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &name, &kind.resource);
        let list = api.list_metadata(&ListParams::default()).await?;
        if list.items.is_empty() {
            continue;
        }
        remaining += list.items.len();
        for obj in &list.items {
            if obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let params = DeleteParams::background();
            match api.delete(&obj.name_any(), &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    if remaining > 0 {
        tracing::debug!(namespace = %name, remaining, "waiting for the namespace's objects to go");
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let finalizers: Vec<String> = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != FINALIZER)
        .collect();
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({"spec": {"finalizers": finalizers}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(err) => return Err(err.into()),
    }
    tracing::info!(namespace = %name, "namespace emptied and released");
    Ok(Action::await_change())
}
