//! The service account controller: every active namespace has a `default` ServiceAccount.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{Namespace, ServiceAccount},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, ResourceExt,
    api::PostParams,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};

use crate::{Error, Shared};

/// Runs the controller until dropped.
pub async fn run(shared: Arc<Shared>) {
    let namespaces: Api<Namespace> = Api::all(shared.client.clone());
    let accounts: Api<ServiceAccount> = Api::all(shared.client.clone());
    Controller::new(namespaces, watcher::Config::default().any_semantic())
        // A deleted `default` account comes back.
        .watches(
            accounts,
            watcher::Config::default().any_semantic(),
            |sa: ServiceAccount| {
                (sa.name_any() == "default")
                    .then(|| ObjectRef::new(&sa.namespace().unwrap_or_default()))
            },
        )
        .run(reconcile, error_policy, shared)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
fn error_policy(ns: Arc<Namespace>, err: &Error, _ctx: Arc<Shared>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), ?err, "default service account failed");
    Action::requeue(Duration::from_secs(2))
}

/// Creates the namespace's `default` ServiceAccount when it is missing.
///
/// # Errors
/// When the API server refuses the request.
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Shared>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if api.get_opt("default").await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".to_owned()),
                namespace: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::debug!(namespace = %name, "created the default service account"),
            // Created meanwhile, or the namespace started terminating.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(Action::await_change())
}
