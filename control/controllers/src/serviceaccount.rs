//! The service account controller: every active namespace has a `default` ServiceAccount.

use std::{future::Future, sync::Arc};

use k8s_openapi::{
    api::core::v1::{Namespace, ServiceAccount},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, ResourceExt,
    api::PostParams,
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use skiff_control_runtime::{Clock, Context, Informers};

use crate::Error;

/// The account every namespace gets.
pub const DEFAULT: &str = "default";
const COMPONENT: &str = "serviceaccount-controller";

/// The account `ns` lacks, if it lacks one: `exists` says whether `default` is there.
#[must_use]
pub fn plan(ns: &Namespace, exists: bool) -> Option<ServiceAccount> {
    if ns.metadata.deletion_timestamp.is_some() || exists {
        return None;
    }
    Some(ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.to_owned()),
            namespace: ns.metadata.name.clone(),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    })
}

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    accounts: Store<ServiceAccount>,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let namespaces = informers.get::<Namespace>();
    let accounts = informers.get::<ServiceAccount>();
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            accounts: accounts.store(),
        },
    );
    let store = namespaces.store();
    let (changes, account_changes) = (namespaces.changes(), accounts.changes());
    async move {
        let _ = ctx.state.accounts.wait_until_ready().await;
        let controller = Controller::for_shared_stream(changes, store)
            // A deleted `default` account comes back.
            .watches_shared_stream(account_changes, |sa: Arc<ServiceAccount>| {
                (sa.name_any() == DEFAULT)
                    .then(|| ObjectRef::new(&sa.namespace().unwrap_or_default()))
            });
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Creates the namespace's `default` ServiceAccount when it is missing.
///
/// # Errors
/// When the API server refuses the request.
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = ns.name_any();
    let exists = ctx
        .state
        .accounts
        .get(&ObjectRef::new(DEFAULT).within(&name))
        .is_some();
    if let Some(sa) = plan(&ns, exists) {
        let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::debug!(namespace = %name, "created the default service account"),
            // Created meanwhile (the cache lags), or the namespace started terminating.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::namespace;

    #[test]
    fn a_namespace_without_its_default_account_gets_one() {
        let sa = plan(&namespace(false), false).unwrap();
        assert_eq!(
            (
                sa.metadata.name.as_deref(),
                sa.metadata.namespace.as_deref()
            ),
            (Some("default"), Some("team"))
        );
        assert_eq!(plan(&namespace(false), true), None);
        assert_eq!(plan(&namespace(true), false), None);
    }
}
