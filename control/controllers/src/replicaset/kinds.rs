//! The two kinds this controller keeps at a replica count: ReplicaSet (set-based selector)
//! and `ReplicationController` (equality selector, defaulting to its template's labels).

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{ReplicaSet, ReplicaSetStatus},
        core::v1::{PodTemplateSpec, ReplicationController, ReplicationControllerStatus},
    },
};
use kube::Resource;
use serde::Serialize;
use skiff_control_runtime::{informers::Kind, ownership::LabelMatcher};

/// What the controller counts for a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Active pods.
    pub replicas: i32,
    /// Active pods carrying every label of the template.
    pub fully_labeled: i32,
    /// Active pods whose Ready condition is True.
    pub ready: i32,
    /// Active pods ready for at least `minReadySeconds`.
    pub available: i32,
    /// The generation these counts answer.
    pub observed_generation: Option<i64>,
}

/// A kind that keeps a number of pods from a template.
pub trait Replicated: Kind + Resource<Scope = NamespaceResourceScope> {
    /// Its status struct.
    type Status: Serialize + Default + Clone + PartialEq + std::fmt::Debug + Send + Sync;
    /// The component its events are signed with.
    const COMPONENT: &'static str;

    /// Which pods it selects.
    fn selector(&self) -> LabelMatcher;
    /// `spec.replicas` (1 when unset).
    fn replicas(&self) -> i32;
    /// The pod template.
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// `spec.minReadySeconds`.
    fn min_ready_seconds(&self) -> i32;
    /// The current status.
    fn status(&self) -> Option<&Self::Status>;
    /// `before` with the counters replaced by `counts` (other fields kept).
    fn counted(before: Option<&Self::Status>, counts: Counts) -> Self::Status;
}

/// The accessors both kinds spell alike: their specs and statuses have the same field
/// names with different types.
macro_rules! same_fields {
    ($status:ident) => {
        fn replicas(&self) -> i32 {
            self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
        }

        fn template(&self) -> Option<&PodTemplateSpec> {
            self.spec.as_ref()?.template.as_ref()
        }

        fn min_ready_seconds(&self) -> i32 {
            self.spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0)
        }

        fn status(&self) -> Option<&Self::Status> {
            self.status.as_ref()
        }

        fn counted(before: Option<&Self::Status>, c: Counts) -> Self::Status {
            $status {
                replicas: c.replicas,
                fully_labeled_replicas: Some(c.fully_labeled),
                ready_replicas: Some(c.ready),
                available_replicas: Some(c.available),
                observed_generation: c.observed_generation,
                ..before.cloned().unwrap_or_default()
            }
        }
    };
}

impl Replicated for ReplicaSet {
    type Status = ReplicaSetStatus;

    const COMPONENT: &'static str = "replicaset-controller";

    same_fields!(ReplicaSetStatus);

    fn selector(&self) -> LabelMatcher {
        LabelMatcher::new(self.spec.as_ref().map(|s| &s.selector))
    }
}

impl Replicated for ReplicationController {
    type Status = ReplicationControllerStatus;

    const COMPONENT: &'static str = "replication-controller";

    same_fields!(ReplicationControllerStatus);

    fn selector(&self) -> LabelMatcher {
        let spec = self.spec.as_ref();
        // The API server defaults the selector to the template's labels; do the same for
        // an object written before that defaulting existed.
        let labels = spec.and_then(|s| s.selector.as_ref()).or_else(|| {
            spec.and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.as_ref())
        });
        LabelMatcher::equality(labels)
    }
}
