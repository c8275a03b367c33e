//! The kinds the API server serves, for the controllers that work across kinds (garbage
//! collector, namespace deletion, quota counting): each as a `kube` dynamic resource, with
//! a way to follow its objects' metadata through the process's one informer of the kind.

use std::sync::Arc;

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::{
    api::{
        apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch,
        coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
        scheduling::v1 as scheduling, storage::v1 as storage,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{core::ApiResource, runtime::watcher::Event};
use skiff_control_runtime::{Informers, informers::Kind as Watched};

/// The metadata events of one kind.
pub type MetadataEvents = BoxStream<'static, Event<Arc<ObjectMeta>>>;

/// A served kind and whether it lives in namespaces.
#[derive(Clone, Debug)]
pub struct Kind {
    /// Group, version, kind and plural.
    pub resource: ApiResource,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Subscribes to the metadata of this kind's objects through `informers`.
    pub metadata: fn(&Informers) -> MetadataEvents,
}

/// The metadata of every `K` event, from the process's informer of `K`.
fn metadata_of<K: Watched>(informers: &Informers) -> MetadataEvents {
    let meta = |obj: Arc<K>| Arc::new(obj.meta().clone());
    informers
        .get::<K>()
        .events()
        .map(move |event| match event {
            Event::Apply(obj) => Event::Apply(meta(obj)),
            Event::Delete(obj) => Event::Delete(meta(obj)),
            Event::InitApply(obj) => Event::InitApply(meta(obj)),
            Event::Init => Event::Init,
            Event::InitDone => Event::InitDone,
        })
        .boxed()
}

fn kind<K: Watched>(namespaced: bool) -> Kind {
    Kind {
        resource: ApiResource::erase::<K>(&()),
        namespaced,
        metadata: metadata_of::<K>,
    }
}

/// Every kind skiff serves, owners before what they own, so that deleting in this order
/// never leaves a controller behind to recreate what was just removed.
#[must_use]
pub fn all() -> Vec<Kind> {
    vec![
        kind::<autoscaling::HorizontalPodAutoscaler>(true),
        kind::<apps::Deployment>(true),
        kind::<apps::StatefulSet>(true),
        kind::<apps::DaemonSet>(true),
        kind::<batch::CronJob>(true),
        kind::<batch::Job>(true),
        kind::<apps::ReplicaSet>(true),
        kind::<core::ReplicationController>(true),
        kind::<apps::ControllerRevision>(true),
        kind::<core::Pod>(true),
        kind::<core::PersistentVolumeClaim>(true),
        kind::<core::Service>(true),
        kind::<core::Endpoints>(true),
        kind::<discovery::EndpointSlice>(true),
        kind::<core::ConfigMap>(true),
        kind::<core::Secret>(true),
        kind::<core::ServiceAccount>(true),
        kind::<core::ResourceQuota>(true),
        kind::<coordination::Lease>(true),
        kind::<core::Event>(true),
        kind::<core::Node>(false),
        kind::<core::Namespace>(false),
        kind::<scheduling::PriorityClass>(false),
        kind::<core::PersistentVolume>(false),
        kind::<storage::StorageClass>(false),
    ]
}

/// The kind with this `apiVersion` and `kind`.
#[must_use]
pub fn find(api_version: &str, kind: &str) -> Option<Kind> {
    all()
        .into_iter()
        .find(|k| k.resource.api_version == api_version && k.resource.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_come_before_what_they_own() {
        let order: Vec<String> = all().into_iter().map(|k| k.resource.kind).collect();
        let at = |k: &str| order.iter().position(|o| o == k).unwrap();
        assert!(at("Deployment") < at("ReplicaSet"));
        assert!(at("ReplicaSet") < at("Pod"));
        assert!(at("ReplicationController") < at("Pod"));
        assert!(at("CronJob") < at("Job"));
        assert!(at("Job") < at("Pod"));
    }

    #[test]
    fn kinds_are_found_by_api_version_and_kind() {
        let rc = find("v1", "ReplicationController").unwrap();
        assert!(rc.namespaced);
        assert_eq!(rc.resource.plural, "replicationcontrollers");
        assert!(find("apps/v1", "Pod").is_none());
    }
}
