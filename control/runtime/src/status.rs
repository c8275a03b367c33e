//! Typed status diffs: a controller builds the status it wants as the kind's own status
//! struct, and writes it only when it differs from the one it read, instead of keeping a
//! list of the JSON keys it means to compare.
//!
//! Two statuses are the same when their JSON forms are, once zero values are dropped: the
//! Go API types omit zero counters, empty strings and empty lists (`omitempty`), so a status
//! read back without `readyReplicas` is the one written with `readyReplicas: 0`.

use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use skiff_machinery::omitempty::pruned;

fn json<S: Serialize>(status: &S) -> Value {
    serde_json::to_value(status).unwrap_or(Value::Null)
}

/// Whether `after` says anything `before` (absent: an empty status) does not.
#[must_use]
pub fn changed<S: Serialize + Default>(before: Option<&S>, after: &S) -> bool {
    let before = before.map_or_else(|| json(&S::default()), json);
    pruned(before) != pruned(json(after))
}

/// The merge patch that turns `before` into `after`: every field of `after`, and `null` for
/// the top-level fields `before` had and `after` dropped.
#[must_use]
pub fn merge_patch<S: Serialize>(before: Option<&S>, after: &S) -> Value {
    let mut fields = match json(after) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    if let Some(Value::Object(old)) = before.map(json) {
        for key in old.keys() {
            fields.entry(key.clone()).or_insert(Value::Null);
        }
    }
    serde_json::json!({ "status": fields })
}

/// Writes `after` as the status of `name` when it differs from `before`; returns whether it
/// wrote.
///
/// # Errors
/// When the API server refuses the patch.
pub async fn write<K, S>(
    api: &Api<K>,
    name: &str,
    before: Option<&S>,
    after: &S,
) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + Default,
{
    if !changed(before, after) {
        return Ok(false);
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&merge_patch(before, after)),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{ReplicaSetCondition, ReplicaSetStatus};

    use super::*;

    #[test]
    fn zero_and_absent_counters_are_the_same_status() {
        let read_back = ReplicaSetStatus {
            replicas: 0,
            ..ReplicaSetStatus::default()
        };
        let wanted = ReplicaSetStatus {
            replicas: 0,
            ready_replicas: Some(0),
            available_replicas: Some(0),
            ..ReplicaSetStatus::default()
        };
        assert!(!changed(Some(&read_back), &wanted));
        assert!(!changed(None, &wanted));
    }

    #[test]
    fn a_changed_counter_or_condition_is_a_change() {
        let before = ReplicaSetStatus {
            replicas: 3,
            ready_replicas: Some(3),
            ..ReplicaSetStatus::default()
        };
        let mut after = before.clone();
        after.ready_replicas = Some(2);
        assert!(changed(Some(&before), &after));
        let mut after = before.clone();
        after.conditions = Some(vec![ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            ..ReplicaSetCondition::default()
        }]);
        assert!(changed(Some(&before), &after));
        // Down to zero is a change too, and the patch writes the zero.
        let mut after = before.clone();
        after.ready_replicas = Some(0);
        assert!(changed(Some(&before), &after));
        assert_eq!(
            merge_patch(Some(&before), &after)["status"]["readyReplicas"],
            0
        );
    }

    #[test]
    fn fields_dropped_from_the_status_are_cleared_by_the_patch() {
        let before = ReplicaSetStatus {
            replicas: 1,
            observed_generation: Some(4),
            ..ReplicaSetStatus::default()
        };
        let after = ReplicaSetStatus {
            replicas: 1,
            ..ReplicaSetStatus::default()
        };
        let patch = merge_patch(Some(&before), &after);
        assert_eq!(
            patch,
            serde_json::json!({"status": {"replicas": 1, "observedGeneration": null}})
        );
    }
}
