//! The kinds the API server serves, as `kube` dynamic resources, for the controllers that
//! work across kinds (garbage collector, namespace deletion).

use k8s_openapi::api::{
    apps::v1 as apps, batch::v1 as batch, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, scheduling::v1 as scheduling,
};
use kube::{Resource, core::ApiResource};

/// A served kind and whether it lives in namespaces.
#[derive(Clone, Debug)]
pub struct Kind {
    /// Group, version, kind and plural.
    pub resource: ApiResource,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
}

fn kind<K>(namespaced: bool) -> Kind
where
    K: Resource<DynamicType = ()>,
{
    Kind {
        resource: ApiResource::erase::<K>(&()),
        namespaced,
    }
}

/// Every kind skiff serves, owners before what they own, so that deleting in this order
/// never leaves a controller behind to recreate what was just removed.
#[must_use]
pub fn all() -> Vec<Kind> {
    vec![
        kind::<apps::Deployment>(true),
        kind::<apps::StatefulSet>(true),
        kind::<apps::DaemonSet>(true),
        kind::<batch::CronJob>(true),
        kind::<batch::Job>(true),
        kind::<apps::ReplicaSet>(true),
        kind::<apps::ControllerRevision>(true),
        kind::<core::Pod>(true),
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
    ]
}

/// The kind with this `apiVersion` and `kind`.
#[must_use]
pub fn find(api_version: &str, kind: &str) -> Option<Kind> {
    all()
        .into_iter()
        .find(|k| k.resource.api_version == api_version && k.resource.kind == kind)
}
