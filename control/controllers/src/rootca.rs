//! The root CA publisher: every active namespace has the `kube-root-ca.crt` ConfigMap
//! holding the cluster CA (`ca.crt`), which ServiceAccount token volumes project.

use std::{collections::BTreeMap, future::Future, sync::Arc};

use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use skiff_control_runtime::{Clock, Context, Informers};

use crate::Error;

/// The ConfigMap every namespace gets.
pub const NAME: &str = "kube-root-ca.crt";
/// Its key holding the CA bundle.
pub const KEY: &str = "ca.crt";
const COMPONENT: &str = "root-ca-cert-publisher";

/// What the namespace's ConfigMap should become: `None` when it is right (or the namespace
/// is going away).
#[must_use]
pub fn plan(ns: &Namespace, current: Option<&ConfigMap>, ca: &str) -> Option<ConfigMap> {
    if ns.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let data = BTreeMap::from([(KEY.to_owned(), ca.to_owned())]);
    if current.is_some_and(|cm| cm.data.as_ref() == Some(&data)) {
        return None;
    }
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            namespace: ns.metadata.name.clone(),
            annotations: Some(BTreeMap::from([(
                "kubernetes.io/description".to_owned(),
                "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The controller's caches and the CA it publishes.
#[derive(Debug)]
pub struct State {
    config_maps: Store<ConfigMap>,
    ca: String,
}

/// The controller's context.
pub type Ctx = Context<State>;

/// The controller publishing `ca` (PEM) over the process's informers; runs until dropped.
pub fn start(
    informers: &Informers,
    ca: String,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let namespaces = informers.get::<Namespace>();
    let config_maps = informers.get::<ConfigMap>();
    let ctx = Context::new(
        informers,
        COMPONENT,
        clock,
        State {
            config_maps: config_maps.store(),
            ca,
        },
    );
    let store = namespaces.store();
    let (changes, map_changes) = (namespaces.changes(), config_maps.changes());
    async move {
        let _ = ctx.state.config_maps.wait_until_ready().await;
        let controller = Controller::for_shared_stream(changes, store)
            // A deleted or edited ConfigMap is put back.
            .watches_shared_stream(map_changes, |cm: Arc<ConfigMap>| {
                (cm.name_any() == NAME).then(|| ObjectRef::new(&cm.namespace().unwrap_or_default()))
            });
        skiff_control_runtime::controller::run(controller, reconcile, ctx).await;
    }
}

/// Creates or corrects the namespace's `kube-root-ca.crt`.
///
/// # Errors
/// When the API server refuses the request.
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = ns.name_any();
    let current = ctx
        .state
        .config_maps
        .get(&ObjectRef::new(NAME).within(&name));
    let Some(want) = plan(&ns, current.as_deref(), &ctx.state.ca) else {
        return Ok(Action::await_change());
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let result = if current.is_some() {
        api.patch(NAME, &PatchParams::default(), &Patch::Merge(&want))
            .await
            .map(|_| ())
    } else {
        api.create(&PostParams::default(), &want).await.map(|_| ())
    };
    match result {
        Ok(()) => tracing::debug!(namespace = %name, "published the root CA"),
        // Created meanwhile (the cache lags), or the namespace started terminating.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 => {}
        Err(err) => return Err(err.into()),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::namespace;

    #[test]
    fn every_live_namespace_gets_the_ca_and_a_stale_copy_is_corrected() {
        let cm = plan(&namespace(false), None, "PEM").unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some(NAME));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(cm.data.as_ref().unwrap()[KEY], "PEM");
        assert_eq!(plan(&namespace(false), Some(&cm), "PEM"), None);
        assert!(plan(&namespace(false), Some(&cm), "NEW").is_some());
        assert_eq!(plan(&namespace(true), None, "PEM"), None);
    }
}
