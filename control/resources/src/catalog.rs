//! The one table of served kinds, so discovery, routing and storage never disagree.

use std::sync::LazyLock;

use k8s_openapi::{
    ClusterResourceScope, ListableResource, NamespaceResourceScope, Resource, api as k8s,
};

use crate::{Strategy, kinds};

/// A subresource served under `/{plural}/{name}/{subresource}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `status`: get, patch, update of `.status` only.
    Status,
    /// `scale`: an `autoscaling/v1` `Scale` view of replicas.
    Scale,
    /// `binding` (pods): binds a pod to a node.
    Binding,
    /// `log` (pods): container logs, proxied to the node.
    Log,
    /// `exec` (pods): runs a command in a container, proxied to the node.
    Exec,
    /// `attach` (pods): attaches to a running container, proxied to the node.
    Attach,
    /// `portforward` (pods): connections to the pod's ports, proxied to the node.
    PortForward,
    /// `ephemeralcontainers` (pods): adds debugging containers to a running pod.
    EphemeralContainers,
    /// `token` (serviceaccounts): issues a bound token (`TokenRequest`).
    Token,
}

impl Subresource {
    /// The URL segment, e.g. `status`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Scale => "scale",
            Self::Binding => "binding",
            Self::Log => "log",
            Self::Exec => "exec",
            Self::Attach => "attach",
            Self::PortForward => "portforward",
            Self::EphemeralContainers => "ephemeralcontainers",
            Self::Token => "token",
        }
    }

    /// The verbs discovery lists for it.
    #[must_use]
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Self::Status | Self::Scale | Self::EphemeralContainers => &["get", "patch", "update"],
            Self::Binding | Self::Token => &["create"],
            Self::Log => &["get"],
            Self::Exec | Self::Attach | Self::PortForward => &["create", "get"],
        }
    }

    /// The kind discovery reports for it.
    #[must_use]
    pub fn kind(self, parent_kind: &'static str) -> &'static str {
        match self {
            Self::Status => parent_kind,
            Self::Scale => "Scale",
            Self::Binding => "Binding",
            Self::Token => "TokenRequest",
            Self::Log
            | Self::Exec
            | Self::Attach
            | Self::PortForward
            | Self::EphemeralContainers => "Pod",
        }
    }
}

/// One served kind.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// Version, e.g. `v1`.
    pub version: &'static str,
    /// `apiVersion` as written in objects (`v1`, `apps/v1`).
    pub api_version: &'static str,
    /// Kind, e.g. `Deployment`.
    pub kind: &'static str,
    /// List kind, e.g. `DeploymentList`.
    pub list_kind: &'static str,
    /// Plural resource name, the URL segment, e.g. `deployments`.
    pub plural: &'static str,
    /// Singular name, e.g. `deployment`.
    pub singular: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl's short names, e.g. `deploy`.
    pub short_names: &'static [&'static str],
    /// Categories, e.g. `all`.
    pub categories: &'static [&'static str],
    /// Served subresources.
    pub subresources: &'static [Subresource],
    /// Decodes JSON into the kind's typed struct and encodes it back: fails on wrong
    /// types, and drops every field the kind does not have.
    pub roundtrip: fn(&serde_json::Value) -> Result<serde_json::Value, String>,
    /// Adds the kind's OpenAPI schema (and every schema it refers to) to a generator and
    /// returns the reference to it.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// The schema's name, e.g. `io.k8s.api.apps.v1.Deployment`.
    pub schema_name: fn() -> std::borrow::Cow<'static, str>,
    /// What is particular to the kind: defaults, validation, allocation, deletion rules,
    /// table columns.
    pub strategy: &'static dyn Strategy,
    /// For a kind also served in another version that is the one stored: how objects of
    /// this version are converted on the way to the store and back. `None`: stored as is.
    pub conversion: Option<&'static Conversion>,
}

/// How objects of a version that is not the storage version reach the store and back, so
/// that every version of a kind reads and writes the same stored objects.
#[derive(Debug)]
pub struct Conversion {
    /// An object of this version, in the storage version.
    pub to_storage: fn(&serde_json::Value) -> serde_json::Value,
    /// A stored object, in this version.
    pub from_storage: fn(&serde_json::Value) -> serde_json::Value,
}

impl ResourceInfo {
    /// The verbs discovery lists for the main resource.
    #[must_use]
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.strategy.delete_collection() {
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        } else {
            &[
                "create", "delete", "get", "list", "patch", "update", "watch",
            ]
        }
    }

    /// Whether `sub` is served for this kind.
    #[must_use]
    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }
}

/// Maps a `k8s-openapi` scope type to "namespaced or not".
trait Scope {
    const NAMESPACED: bool;
}
impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

fn entry<T>(
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [Subresource],
    strategy: &'static dyn Strategy,
) -> ResourceInfo
where
    T: ListableResource + serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema,
    <T as Resource>::Scope: Scope,
{
    ResourceInfo {
        group: T::GROUP,
        version: T::VERSION,
        api_version: T::API_VERSION,
        kind: T::KIND,
        list_kind: T::LIST_KIND,
        plural: T::URL_PATH_SEGMENT,
        singular: T::KIND.to_ascii_lowercase(),
        namespaced: <T::Scope as Scope>::NAMESPACED,
        short_names,
        categories,
        subresources,
        roundtrip: roundtrip::<T>,
        schema: schemars::SchemaGenerator::subschema_for::<T>,
        schema_name: T::schema_name,
        strategy,
        conversion: None,
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];
const STATUS: &[Subresource] = &[Subresource::Status];
const STATUS_SCALE: &[Subresource] = &[Subresource::Status, Subresource::Scale];
const POD: &[Subresource] = &[
    Subresource::Status,
    Subresource::Binding,
    Subresource::Log,
    Subresource::Exec,
    Subresource::Attach,
    Subresource::PortForward,
    Subresource::EphemeralContainers,
];

static CATALOG: LazyLock<Vec<ResourceInfo>> = LazyLock::new(|| {
    use Subresource as S;
    vec![
        // core/v1
        entry::<k8s::core::v1::Namespace>(&["ns"], NONE, &[S::Status], &kinds::Namespace),
        entry::<k8s::core::v1::Pod>(&["po"], ALL, POD, &kinds::Pod),
        entry::<k8s::core::v1::Service>(&["svc"], ALL, STATUS, &kinds::Service),
        entry::<k8s::core::v1::Endpoints>(&["ep"], NONE, &[], &kinds::Endpoints),
        entry::<k8s::core::v1::Node>(&["no"], NONE, STATUS, &kinds::Node),
        entry::<k8s::core::v1::ConfigMap>(&["cm"], NONE, &[], &kinds::ConfigMap),
        entry::<k8s::core::v1::Secret>(NONE, NONE, &[], &kinds::Secret),
        entry::<k8s::core::v1::Event>(&["ev"], NONE, &[], &kinds::Event),
        entry::<k8s::core::v1::ServiceAccount>(&["sa"], NONE, &[S::Token], &kinds::Plain),
        entry::<k8s::core::v1::ResourceQuota>(&["quota"], NONE, STATUS, &kinds::ResourceQuota),
        entry::<k8s::core::v1::ReplicationController>(
            &["rc"],
            ALL,
            STATUS_SCALE,
            &kinds::ReplicationController,
        ),
        entry::<k8s::core::v1::PersistentVolume>(&["pv"], NONE, STATUS, &kinds::PersistentVolume),
        entry::<k8s::core::v1::PersistentVolumeClaim>(
            &["pvc"],
            NONE,
            STATUS,
            &kinds::PersistentVolumeClaim,
        ),
        // apps/v1
        entry::<k8s::apps::v1::Deployment>(&["deploy"], ALL, STATUS_SCALE, &kinds::DEPLOYMENT),
        entry::<k8s::apps::v1::ReplicaSet>(&["rs"], ALL, STATUS_SCALE, &kinds::REPLICA_SET),
        entry::<k8s::apps::v1::StatefulSet>(&["sts"], ALL, STATUS_SCALE, &kinds::STATEFUL_SET),
        entry::<k8s::apps::v1::DaemonSet>(&["ds"], ALL, STATUS, &kinds::DAEMON_SET),
        // autoscaling/v2, stored, then v1 (converted)
        entry::<k8s::autoscaling::v2::HorizontalPodAutoscaler>(
            &["hpa"],
            ALL,
            STATUS,
            &kinds::HorizontalPodAutoscaler,
        ),
        ResourceInfo {
            conversion: Some(&kinds::HPA_V1_CONVERSION),
            ..entry::<k8s::autoscaling::v1::HorizontalPodAutoscaler>(
                &["hpa"],
                ALL,
                STATUS,
                &kinds::HorizontalPodAutoscalerV1,
            )
        },
        // batch/v1
        entry::<k8s::batch::v1::Job>(NONE, ALL, STATUS, &kinds::Job),
        entry::<k8s::batch::v1::CronJob>(&["cj"], ALL, STATUS, &kinds::CronJob),
        // certificates.k8s.io/v1 (a node's client certificate through bootstrap)
        entry::<k8s::certificates::v1::CertificateSigningRequest>(
            &["csr"],
            NONE,
            STATUS,
            &kinds::Plain,
        ),
        // coordination.k8s.io/v1
        entry::<k8s::coordination::v1::Lease>(NONE, NONE, &[], &kinds::Plain),
        // discovery.k8s.io/v1
        entry::<k8s::discovery::v1::EndpointSlice>(NONE, NONE, &[], &kinds::Plain),
        // scheduling.k8s.io/v1
        entry::<k8s::scheduling::v1::PriorityClass>(&["pc"], NONE, &[], &kinds::Plain),
        // storage.k8s.io/v1
        entry::<k8s::storage::v1::StorageClass>(&["sc"], NONE, &[], &kinds::StorageClass),
        // apps/v1 revision history (StatefulSet, DaemonSet)
        entry::<k8s::apps::v1::ControllerRevision>(NONE, NONE, &[], &kinds::Plain),
        // rbac.authorization.k8s.io/v1
        entry::<k8s::rbac::v1::ClusterRole>(
            NONE,
            NONE,
            &[],
            &kinds::RbacRole { namespaced: false },
        ),
        entry::<k8s::rbac::v1::ClusterRoleBinding>(
            NONE,
            NONE,
            &[],
            &kinds::RbacBinding { namespaced: false },
        ),
        entry::<k8s::rbac::v1::Role>(NONE, NONE, &[], &kinds::RbacRole { namespaced: true }),
        entry::<k8s::rbac::v1::RoleBinding>(
            NONE,
            NONE,
            &[],
            &kinds::RbacBinding { namespaced: true },
        ),
    ]
});

/// Every served kind, core group first, in a stable order.
#[must_use]
pub fn all() -> &'static [ResourceInfo] {
    &CATALOG
}

/// The kind served at `/{group}/{version}/{plural}`.
#[must_use]
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    all()
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The kind for an object's `apiVersion` and `kind`.
#[must_use]
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    all()
        .iter()
        .find(|r| r.api_version == api_version && r.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_are_namespaced_apps_v1_with_scale() {
        let d = by_plural("apps", "v1", "deployments").expect("deployments served");
        assert_eq!(d.kind, "Deployment");
        assert_eq!(d.list_kind, "DeploymentList");
        assert!(d.namespaced);
        assert!(d.has(Subresource::Scale));
        assert_eq!(d.singular, "deployment");
    }

    #[test]
    fn nodes_and_namespaces_are_cluster_scoped() {
        assert!(!by_kind("v1", "Node").expect("nodes").namespaced);
        assert!(!by_kind("v1", "Namespace").expect("namespaces").namespaced);
        assert!(by_kind("v1", "Pod").expect("pods").namespaced);
    }

    #[test]
    fn replication_controllers_are_served_with_status_and_scale() {
        let rc = by_plural("", "v1", "replicationcontrollers").expect("served");
        assert_eq!(rc.kind, "ReplicationController");
        assert!(rc.namespaced && rc.has(Subresource::Scale) && rc.has(Subresource::Status));
        assert_eq!((rc.short_names, rc.categories), (&["rc"][..], &["all"][..]));
    }

    #[test]
    fn namespaces_have_no_deletecollection() {
        assert!(
            !by_kind("v1", "Namespace")
                .unwrap()
                .verbs()
                .contains(&"deletecollection")
        );
        assert!(
            by_kind("v1", "Pod")
                .unwrap()
                .verbs()
                .contains(&"deletecollection")
        );
    }

    #[test]
    fn autoscalers_are_served_in_v2_first_and_v1_converted() {
        let v2 = by_plural("autoscaling", "v2", "horizontalpodautoscalers").expect("v2");
        let v1 = by_plural("autoscaling", "v1", "horizontalpodautoscalers").expect("v1");
        assert!(v2.conversion.is_none() && v1.conversion.is_some());
        let order: Vec<_> = all().iter().map(|r| (r.group, r.version)).collect();
        let at = |v| {
            order
                .iter()
                .position(|gv| *gv == ("autoscaling", v))
                .unwrap()
        };
        assert!(at("v2") < at("v1"), "discovery prefers the first version");
    }

    #[test]
    fn every_plural_is_unique_within_its_group_version() {
        let mut seen = std::collections::HashSet::new();
        for r in all() {
            assert!(
                seen.insert((r.group, r.version, r.plural)),
                "duplicate {}",
                r.plural
            );
        }
    }
}
