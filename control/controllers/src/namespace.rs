//! The namespace controller: a namespace being deleted loses everything in it, then its
//! `kubernetes` finalizer, and the API server removes it.
//!
//! It lists every kind from the API server rather than the caches: releasing a namespace
//! on a cache that has not seen its newest objects would orphan them.

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    core::DynamicObject,
    runtime::{Controller, controller::Action},
};
use skiff_control_runtime::{Clock, Context, Informers};

use crate::{Error, kinds};

/// The finalizer the API server puts in every namespace's `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";
const COMPONENT: &str = "namespace-controller";
/// How soon to look again while objects are going.
const POLL: Duration = Duration::from_millis(500);

/// An object still in the namespace: its kind (index into [`kinds::all`]), its name, and
/// whether it is already being deleted.
pub type Remaining = (usize, String, bool);

/// What to do with a namespace.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// It is not being deleted.
    Idle,
    /// Delete these objects (kind index, name) and look again.
    Empty(Vec<(usize, String)>),
    /// Nothing is left: set these finalizers (ours removed).
    Release(Vec<String>),
}

/// Decides from the objects still in `ns`.
#[must_use]
pub fn plan(ns: &Namespace, remaining: &[Remaining]) -> Plan {
    if ns.metadata.deletion_timestamp.is_none() {
        return Plan::Idle;
    }
    if !remaining.is_empty() {
        return Plan::Empty(
            remaining
                .iter()
                .filter(|(_, _, deleting)| !deleting)
                .map(|(kind, name, _)| (*kind, name.clone()))
                .collect(),
        );
    }
    Plan::Release(
        ns.spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != FINALIZER)
            .collect(),
    )
}

/// The controller's own caches and bookkeeping.
#[derive(Debug)]
pub struct State {
    kinds: Vec<kinds::Kind>,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let namespaces = informers.get::<Namespace>();
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            kinds: kinds::all(),
        },
    );
    let (store, changes) = (namespaces.store(), namespaces.changes());
    async move {
        let controller = Controller::for_shared_stream(changes, store);
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Empties a terminating namespace, then releases it.
///
/// # Errors
/// When the API server refuses a request; the controller retries.
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api = |kind: usize| -> Api<DynamicObject> {
        Api::namespaced_with(ctx.client.clone(), &name, &ctx.state.kinds[kind].resource)
    };
    let mut remaining: Vec<Remaining> = Vec::new();
    for (index, _) in ctx
        .state
        .kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| k.namespaced)
    {
        let list = match api(index).list_metadata(&ListParams::default()).await {
            Ok(list) => list,
            // A kind this server does not serve holds nothing.
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(err) => return Err(err.into()),
        };
        remaining.extend(list.items.into_iter().map(|o| {
            let deleting = o.metadata.deletion_timestamp.is_some();
            (index, o.name_any(), deleting)
        }));
    }
    match plan(&ns, &remaining) {
        Plan::Idle => Ok(Action::await_change()),
        Plan::Empty(deletes) => {
            for (kind, object) in deletes {
                match api(kind).delete(&object, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(err) => return Err(err.into()),
                }
            }
            tracing::debug!(namespace = %name, remaining = remaining.len(), "waiting for the namespace's objects to go");
            Ok(Action::requeue(POLL))
        }
        Plan::Release(finalizers) => {
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
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NamespaceSpec;

    use super::*;
    use crate::fixtures;

    fn namespace(deleting: bool) -> Namespace {
        Namespace {
            spec: Some(NamespaceSpec {
                finalizers: Some(vec![FINALIZER.into(), "example.com/other".into()]),
            }),
            ..fixtures::namespace(deleting)
        }
    }

    #[test]
    fn a_live_namespace_is_left_alone() {
        assert_eq!(
            plan(&namespace(false), &[(0, "web".into(), false)]),
            Plan::Idle
        );
    }

    #[test]
    fn objects_not_yet_going_are_deleted_and_the_namespace_waits_for_all() {
        let remaining = [(0, "web".into(), false), (7, "web-1".into(), true)];
        assert_eq!(
            plan(&namespace(true), &remaining),
            Plan::Empty(vec![(0, "web".into())])
        );
    }

    #[test]
    fn an_empty_namespace_loses_only_its_kubernetes_finalizer() {
        assert_eq!(
            plan(&namespace(true), &[]),
            Plan::Release(vec!["example.com/other".into()])
        );
    }
}
