//! Owner references and label selectors: which pods (or ReplicaSets) a controller owns,
//! which orphans it may adopt, and which of its children it must release.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::{Selector, SelectorExt},
};
use serde::de::DeserializeOwned;

/// The owner reference a controller sets on what it creates (`controller: true`,
/// `blockOwnerDeletion: true`, as the Go controllers do).
#[must_use]
pub fn controller_ref<K>(owner: &K) -> OwnerReference
where
    K: Resource<DynamicType = ()>,
{
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The managing controller's reference, if any.
#[must_use]
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether `meta` is controlled by the object with `uid`.
#[must_use]
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// A parsed `spec.selector`; an empty or missing selector matches nothing, as for workloads.
#[derive(Debug, Clone)]
pub struct LabelMatcher(Option<Selector>);

impl LabelMatcher {
    /// Parses a workload selector. An invalid or empty one selects nothing.
    #[must_use]
    pub fn new(selector: Option<&LabelSelector>) -> Self {
        let Some(selector) = selector else {
            return Self(None);
        };
        let empty = selector
            .match_labels
            .as_ref()
            .is_none_or(BTreeMap::is_empty)
            && selector
                .match_expressions
                .as_ref()
                .is_none_or(Vec::is_empty);
        if empty {
            return Self(None);
        }
        Self(Selector::try_from(selector.clone()).ok())
    }

    /// A matcher for an equality selector (a `ReplicationController`'s `spec.selector`); an
    /// empty one selects nothing.
    #[must_use]
    pub fn equality(labels: Option<&BTreeMap<String, String>>) -> Self {
        Self::new(
            labels
                .filter(|l| !l.is_empty())
                .map(|l| LabelSelector {
                    match_labels: Some(l.clone()),
                    match_expressions: None,
                })
                .as_ref(),
        )
    }

    /// Whether `labels` are selected.
    #[must_use]
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let empty = BTreeMap::new();
        self.0
            .as_ref()
            .is_some_and(|s| s.matches(labels.unwrap_or(&empty)))
    }
}

/// What a controller should do with a candidate child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours already and still selected.
    Owned,
    /// An orphan that matches: take it by adding our controller reference.
    Adopt,
    /// Ours but no longer selected: remove our reference.
    Release,
    /// Not ours.
    Ignore,
}

/// Decides whether `child` belongs to the owner with `uid` and `matcher`, like the Go
/// `ControllerRefManager`: only orphans are adopted, and never while being deleted.
#[must_use]
pub fn claim(child: &ObjectMeta, uid: &str, matcher: &LabelMatcher, owner_deleting: bool) -> Claim {
    let selected = matcher.matches(child.labels.as_ref());
    match controller_of(child) {
        Some(r) if r.uid == uid => {
            if selected || owner_deleting {
                Claim::Owned
            } else {
                Claim::Release
            }
        }
        Some(_) => Claim::Ignore,
        None => {
            if selected && !owner_deleting && child.deletion_timestamp.is_none() {
                Claim::Adopt
            } else {
                Claim::Ignore
            }
        }
    }
}

/// A JSON merge patch adding `owner` to `child`'s owner references (kept with the others).
#[must_use]
pub fn adopt_patch(child: &ObjectMeta, owner: OwnerReference) -> serde_json::Value {
    let mut refs = child.owner_references.clone().unwrap_or_default();
    refs.push(owner);
    serde_json::json!({
        "metadata": {
            "ownerReferences": refs,
            "resourceVersion": child.resource_version,
        }
    })
}

/// A JSON merge patch removing the reference to `uid` from `child`.
#[must_use]
pub fn release_patch(child: &ObjectMeta, uid: &str) -> serde_json::Value {
    let refs: Vec<OwnerReference> = child
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != uid)
        .collect();
    serde_json::json!({
        "metadata": {
            "ownerReferences": refs,
            "resourceVersion": child.resource_version,
        }
    })
}

/// Adopts `child` for `owner` through `api`; the write carries the child's
/// resourceVersion, so a child changed meanwhile is not adopted on stale grounds.
///
/// # Errors
/// When the API server refuses the patch.
pub async fn adopt<K>(api: &Api<K>, child: &K, owner: OwnerReference) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = adopt_patch(child.meta(), owner);
    api.patch(
        &child.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

/// Releases `child` from the owner with `uid` through `api`.
///
/// # Errors
/// When the API server refuses the patch.
pub async fn release<K>(api: &Api<K>, child: &K, uid: &str) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = release_patch(child.meta(), uid);
    api.patch(
        &child.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::ReplicaSet;

    use super::*;

    fn meta(labels: &[(&str, &str)], owner: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            owner_references: owner.map(|uid| {
                vec![OwnerReference {
                    uid: uid.to_owned(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    fn matcher(labels: &[(&str, &str)]) -> LabelMatcher {
        LabelMatcher::new(Some(&LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            match_expressions: None,
        }))
    }

    #[test]
    fn orphans_that_match_are_adopted_and_others_ignored() {
        let m = matcher(&[("app", "web")]);
        assert_eq!(
            claim(&meta(&[("app", "web")], None), "u1", &m, false),
            Claim::Adopt
        );
        assert_eq!(
            claim(&meta(&[("app", "db")], None), "u1", &m, false),
            Claim::Ignore
        );
        assert_eq!(
            claim(&meta(&[("app", "web")], Some("u2")), "u1", &m, false),
            Claim::Ignore
        );
        assert_eq!(
            claim(&meta(&[("app", "web")], None), "u1", &m, true),
            Claim::Ignore
        );
    }

    #[test]
    fn owned_children_that_stop_matching_are_released() {
        let m = matcher(&[("app", "web")]);
        assert_eq!(
            claim(&meta(&[("app", "web")], Some("u1")), "u1", &m, false),
            Claim::Owned
        );
        assert_eq!(
            claim(&meta(&[("app", "x")], Some("u1")), "u1", &m, false),
            Claim::Release
        );
    }

    #[test]
    fn equality_selectors_match_their_labels_and_empty_ones_nothing() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let m = LabelMatcher::equality(Some(&labels));
        assert!(m.matches(Some(&labels)));
        assert!(!m.matches(Some(&BTreeMap::new())));
        assert!(!LabelMatcher::equality(Some(&BTreeMap::new())).matches(Some(&labels)));
        assert!(!LabelMatcher::equality(None).matches(Some(&labels)));
    }

    #[test]
    fn patches_add_and_remove_only_the_one_reference() {
        let child = meta(&[], Some("other"));
        let owner = OwnerReference {
            uid: "u1".into(),
            ..OwnerReference::default()
        };
        let adopted = adopt_patch(&child, owner);
        let refs = adopted["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(refs.len(), 2);
        let mut both = child.clone();
        both.owner_references =
            serde_json::from_value(adopted["metadata"]["ownerReferences"].clone()).unwrap();
        let released = release_patch(&both, "u1");
        let refs = released["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0]["uid"], "other");
    }

    #[test]
    fn empty_selector_selects_nothing() {
        let m = LabelMatcher::new(Some(&LabelSelector::default()));
        assert!(!m.matches(Some(&BTreeMap::new())));
    }

    #[test]
    fn controller_ref_names_the_owner() {
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                uid: Some("abc".into()),
                ..ObjectMeta::default()
            },
            ..ReplicaSet::default()
        };
        let r = controller_ref(&rs);
        assert_eq!(
            (r.kind.as_str(), r.api_version.as_str()),
            ("ReplicaSet", "apps/v1")
        );
        assert_eq!(r.controller, Some(true));
    }
}
