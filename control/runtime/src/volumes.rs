//! Which `PersistentVolume` may serve which claim, as Kubernetes' binder matches them, shared
//! by the binder controller and the scheduler's `VolumeBinding` filter: class, volume mode,
//! access modes, capacity, selector, a volume pre-bound to the claim, and a volume's node
//! affinity.

use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::StorageClass,
};
use skiff_machinery::{quantity::parse_milli, selector::LabelSelector};

use crate::placement::term_matches;

/// The binding mode that waits for the claim's first pod to be scheduled.
pub const WAIT_FOR_FIRST_CONSUMER: &str = "WaitForFirstConsumer";

/// The provisioner name that says a class has no provisioner.
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// The claim names of a pod's `persistentVolumeClaim` volumes.
pub fn pod_claims(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

/// The class a claim asks for; empty for none.
#[must_use]
pub fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// The class of a volume; empty for none.
#[must_use]
pub fn volume_class(volume: &PersistentVolume) -> &str {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// The volume a claim is bound or pre-bound to; empty for none.
#[must_use]
pub fn claim_volume(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or_default()
}

/// Whether `class` delays binding until a pod using the claim is scheduled.
#[must_use]
pub fn waits_for_consumer(class: Option<&StorageClass>) -> bool {
    class.and_then(|c| c.volume_binding_mode.as_deref()) == Some(WAIT_FOR_FIRST_CONSUMER)
}

/// Whether `class` makes volumes on demand.
#[must_use]
pub fn provisions(class: Option<&StorageClass>) -> bool {
    class.is_some_and(|c| !c.provisioner.is_empty() && c.provisioner != NO_PROVISIONER)
}

/// The storage a claim requests, in milli-bytes (0 when it names none).
#[must_use]
pub fn requested(claim: &PersistentVolumeClaim) -> i64 {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| parse_milli(&q.0))
        .unwrap_or(0)
}

/// The storage a volume has, in milli-bytes.
#[must_use]
pub fn capacity(volume: &PersistentVolume) -> i64 {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| parse_milli(&q.0))
        .unwrap_or(0)
}

/// Whether the volume's `claimRef` names the claim (by namespace and name, and by uid when
/// the reference carries one).
#[must_use]
pub fn refers_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name == claim.metadata.name
        && r.namespace == claim.metadata.namespace
        && r.uid
            .as_deref()
            .is_none_or(|uid| uid.is_empty() || Some(uid) == claim.metadata.uid.as_deref())
}

/// Whether a volume's node affinity admits `node` (a volume without one is reachable from
/// every node).
#[must_use]
pub fn admits_node(volume: &PersistentVolume, node: &Node) -> bool {
    let Some(required) = volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.as_deref().unwrap_or_default();
    required
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, &labels, name))
}

/// Whether the volume meets what the claim asks for: class, volume mode, every access mode,
/// enough capacity, and the claim's label selector.
#[must_use]
pub fn satisfies(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (volume.spec.as_ref(), claim.spec.as_ref()) else {
        return false;
    };
    let mode = |m: Option<&String>| m.map_or("Filesystem", String::as_str).to_owned();
    let modes = vs.access_modes.as_deref().unwrap_or_default();
    let selected = match &cs.selector {
        None => true,
        Some(selector) => serde_json::to_value(selector)
            .ok()
            .and_then(|v| LabelSelector::from_k8s(&v).ok())
            .is_some_and(|s| s.matches(&volume.metadata.labels.clone().unwrap_or_default())),
    };
    volume_class(volume) == claim_class(claim)
        && mode(vs.volume_mode.as_ref()) == mode(cs.volume_mode.as_ref())
        && cs
            .access_modes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .all(|m| modes.contains(m))
        && capacity(volume) >= requested(claim)
        && selected
}

/// The volume to bind the claim to: one pre-bound to it if it satisfies the claim, else the
/// smallest free one that does. With `delay` (a `WaitForFirstConsumer` class), free
/// volumes are only considered once a node is chosen, and must be reachable from it.
#[must_use]
pub fn best_match<'a>(
    claim: &PersistentVolumeClaim,
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
    node: Option<&Node>,
    delay: bool,
) -> Option<&'a PersistentVolume> {
    let mut best: Option<&PersistentVolume> = None;
    for volume in volumes {
        if volume.metadata.deletion_timestamp.is_some() || !satisfies(volume, claim) {
            continue;
        }
        let bound = volume
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some();
        let reachable = node.is_none_or(|n| admits_node(volume, n));
        if refers_to(volume, claim) {
            if reachable {
                return Some(volume);
            }
            continue;
        }
        if bound || !reachable || (delay && node.is_none()) {
            continue;
        }
        let phase = volume.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Released" | "Failed")) {
            continue;
        }
        if best.is_none_or(|b| capacity(volume) < capacity(b)) {
            best = Some(volume);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::core::v1::{
            NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
            PersistentVolumeClaimSpec, PersistentVolumeSpec, VolumeNodeAffinity,
            VolumeResourceRequirements,
        },
        apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
    };

    use super::*;

    fn claim(size: &str, class: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("default".into()),
                uid: Some("uid-data".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: Some(class.into()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity(size.into()))])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        }
    }

    fn volume(name: &str, size: &str, class: &str, node: Option<&str>) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                access_modes: Some(vec!["ReadWriteOnce".into(), "ReadOnlyMany".into()]),
                capacity: Some(BTreeMap::from([("storage".into(), Quantity(size.into()))])),
                storage_class_name: Some(class.into()),
                node_affinity: node.map(|n| VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "kubernetes.io/hostname".into(),
                                operator: "In".into(),
                                values: Some(vec![n.into()]),
                            }]),
                            ..NodeSelectorTerm::default()
                        }],
                    }),
                }),
                ..PersistentVolumeSpec::default()
            }),
            status: None,
        }
    }

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/hostname".into(),
                    name.into(),
                )])),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    #[test]
    fn the_smallest_volume_that_satisfies_the_claim_is_chosen() {
        let vols = [
            volume("big", "10Gi", "", None),
            volume("small", "1Gi", "", None),
            volume("tiny", "100Mi", "", None),
            volume("other-class", "1Gi", "fast", None),
        ];
        let got = best_match(&claim("500Mi", ""), &vols, None, false);
        assert_eq!(got.and_then(|v| v.metadata.name.as_deref()), Some("small"));
        assert!(best_match(&claim("20Gi", ""), &vols, None, false).is_none());
    }

    #[test]
    fn access_modes_and_selector_must_match() {
        let mut c = claim("1Gi", "");
        c.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteMany".into()]);
        assert!(!satisfies(&volume("v", "1Gi", "", None), &c));
        let mut c = claim("1Gi", "");
        c.spec.as_mut().unwrap().selector = Some(
            serde_json::from_value(serde_json::json!({"matchLabels": {"tier": "db"}})).unwrap(),
        );
        let mut v = volume("v", "1Gi", "", None);
        assert!(!satisfies(&v, &c));
        v.metadata.labels = Some(BTreeMap::from([("tier".into(), "db".into())]));
        assert!(satisfies(&v, &c));
    }

    #[test]
    fn a_volume_bound_elsewhere_is_skipped_and_one_pre_bound_wins() {
        let mut taken = volume("taken", "1Gi", "", None);
        taken.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            name: Some("other".into()),
            namespace: Some("default".into()),
            ..ObjectReference::default()
        });
        let mut mine = volume("mine", "5Gi", "", None);
        mine.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            name: Some("data".into()),
            namespace: Some("default".into()),
            ..ObjectReference::default()
        });
        let vols = [taken, volume("free", "2Gi", "", None), mine];
        let got = best_match(&claim("1Gi", ""), &vols, None, false);
        assert_eq!(got.and_then(|v| v.metadata.name.as_deref()), Some("mine"));
    }

    #[test]
    fn delayed_binding_waits_for_a_node_and_respects_node_affinity() {
        let vols = [volume("on-a", "1Gi", "local", Some("a"))];
        let c = claim("1Gi", "local");
        assert!(best_match(&c, &vols, None, true).is_none());
        assert!(best_match(&c, &vols, Some(&node("b")), true).is_none());
        assert!(best_match(&c, &vols, Some(&node("a")), true).is_some());
    }
}
