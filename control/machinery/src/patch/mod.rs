//! The patch formats a PATCH request may carry, applied to an object's JSON.

mod strategic;

use serde_json::Value;
pub use strategic::strategic;
pub(crate) use strategic::{ListStrategy, strategy};

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// A JSON patch document is not a list of valid operations.
    #[error("invalid JSON patch: {0}")]
    InvalidJsonPatch(String),
    /// A JSON patch operation failed (missing path, failed test).
    #[error("the JSON patch could not be applied: {0}")]
    JsonPatchFailed(String),
    /// A JSON patch has more operations than kube-apiserver accepts (a 413).
    #[error("The allowed maximum operations in a JSON patch is {max}, got {got}")]
    TooManyOperations {
        /// [`MAX_JSON_PATCH_OPERATIONS`].
        max: usize,
        /// The patch's.
        got: usize,
    },
    /// A strategic merge patch is malformed (e.g. a directive with a bad value).
    #[error("invalid strategic merge patch: {0}")]
    InvalidStrategic(String),
}

/// RFC 7386 JSON merge patch.
#[must_use]
pub fn merge(target: &Value, patch: &Value) -> Value {
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// kube-apiserver's `maxJSONPatchOperations`: a longer JSON patch is refused before it is
/// applied.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// RFC 6902 JSON patch, within kube-apiserver's limits: at most
/// [`MAX_JSON_PATCH_OPERATIONS`] operations, and `copy` operations adding at most
/// `max_copy_bytes` in all (its `JSONPatchMaxCopyBytes`, the request body limit), so a small
/// patch cannot double a document again and again.
///
/// # Errors
/// When the patch is not a list of operations, is too long, copies too much, or an
/// operation fails.
pub fn json(target: &Value, patch: &Value, max_copy_bytes: usize) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::InvalidJsonPatch(e.to_string()))?;
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations {
            max: MAX_JSON_PATCH_OPERATIONS,
            got: ops.0.len(),
        });
    }
    let mut out = target.clone();
    let mut copied = 0usize;
    for op in &ops.0 {
        if let json_patch::PatchOperation::Copy(copy) = op
            && let Some(from) = out.pointer(copy.from.as_str())
        {
            copied = copied.saturating_add(serde_json::to_vec(from).map_or(0, |v| v.len()));
            if copied > max_copy_bytes {
                return Err(PatchError::JsonPatchFailed(format!(
                    "Unable to complete the copy, the accumulated size increase of copy is {copied}, exceeding the limit {max_copy_bytes}"
                )));
            }
        }
        // Without json-patch's undo: `out` is a copy thrown away on error, and its undo of a
        // failed `move` can itself fail and panic (found by the patch fuzz target).
        json_patch::patch_unsafe(&mut out, std::slice::from_ref(op))
            .map_err(|e| PatchError::JsonPatchFailed(e.to_string()))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_failing_move_after_other_operations_is_an_error_not_a_panic() {
        let pod = json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "env": []}]},
        });
        let patch = json!([
            {"op": "add", "path": "/metadata/labels/tier", "value": "fe"},
            {"op": "remove", "path": "/spec/containers/0/env"},
            {"op": "test", "path": "/metadata/name", "value": "web"},
            {"op": "move", "from": "/metadata/labels", "path": "/metadatl/annotations"},
        ]);
        assert!(matches!(
            json(&pod, &patch, 1 << 20),
            Err(PatchError::JsonPatchFailed(_))
        ));
    }

    #[test]
    fn merge_patch_null_deletes_and_objects_merge() {
        let out = merge(
            &json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]}),
            &json!({"a": null, "b": {"c": 9}, "l": [3]}),
        );
        assert_eq!(out, json!({"b": {"c": 9, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_refuses_too_many_operations_and_copies_beyond_the_limit() {
        let doc = json!({"a": "x".repeat(100)});
        let many = Value::Array(vec![
            json!({"op": "test", "path": "/a", "value": "x".repeat(100)});
            MAX_JSON_PATCH_OPERATIONS + 1
        ]);
        assert!(matches!(
            json(&doc, &many, usize::MAX),
            Err(PatchError::TooManyOperations { got: 10_001, .. })
        ));
        // Each copy doubles the document: the total copied crosses the limit.
        let doubling: Vec<Value> = (0..20)
            .map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")}))
            .collect();
        let err = json(&doc, &Value::Array(doubling.clone()), 10_000).unwrap_err();
        assert!(
            err.to_string().contains("exceeding the limit 10000"),
            "{err}"
        );
        assert!(json(&doc, &Value::Array(doubling[..2].to_vec()), 10_000).is_ok());
    }

    #[test]
    fn json_patch_applies_operations_and_reports_failed_tests() {
        let doc = json!({"spec": {"replicas": 1, "a/b": 0}});
        let out = json(
            &doc,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 3},
                {"op": "remove", "path": "/spec/a~1b"},
                {"op": "add", "path": "/spec/list", "value": []},
                {"op": "add", "path": "/spec/list/-", "value": "x"}
            ]),
            usize::MAX,
        )
        .unwrap();
        assert_eq!(out, json!({"spec": {"replicas": 3, "list": ["x"]}}));
        let failed = json(
            &doc,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 2}]),
            usize::MAX,
        );
        assert!(matches!(failed, Err(PatchError::JsonPatchFailed(_))));
        let invalid = json(&doc, &json!({"op": "add"}), usize::MAX);
        assert!(matches!(invalid, Err(PatchError::InvalidJsonPatch(_))));
    }
}

/// The JSON merge patch client-side apply sends for a change of intent: set what
/// `modified` changes relative to `current`, and null what `original` (the last applied
/// intent) had and `modified` dropped. Fields only the server or others set are left alone.
#[must_use]
pub fn three_way(original: &Value, modified: &Value, current: &Value) -> Value {
    let empty = serde_json::Map::new();
    let as_map = |v: &Value| v.as_object().cloned().unwrap_or_else(|| empty.clone());
    let (original, modified, current) = (as_map(original), as_map(modified), as_map(current));
    let mut patch = serde_json::Map::new();
    for (key, want) in &modified {
        match (current.get(key), want) {
            (Some(have), _) if covers(have, want) => {}
            (Some(have @ Value::Object(_)), Value::Object(_)) => {
                let sub = three_way(original.get(key).unwrap_or(&Value::Null), want, have);
                if sub.as_object().is_some_and(|m| !m.is_empty()) {
                    patch.insert(key.clone(), sub);
                }
            }
            _ => {
                patch.insert(key.clone(), want.clone());
            }
        }
    }
    for key in original.keys() {
        if !modified.contains_key(key) && current.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    Value::Object(patch)
}

/// Whether `have` already says everything `want` says; fields only `have` has (set by the
/// server's defaulting) do not count as a difference, also inside list elements.
fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| covers(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| covers(hv, wv))
        }
        _ => have == want,
    }
}

#[cfg(test)]
mod three_way_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unchanged_intent_gives_an_empty_patch_despite_server_fields() {
        let intent = json!({"metadata": {"name": "a"}, "data": {"k": "v"}});
        let live = json!({"metadata": {"name": "a", "uid": "u", "resourceVersion": "3"}, "data": {"k": "v"}});
        assert_eq!(three_way(&intent, &intent, &live), json!({}));
    }

    #[test]
    fn dropped_fields_are_nulled_and_changes_set() {
        let original = json!({"data": {"a": "1", "b": "2"}});
        let modified = json!({"data": {"a": "9"}});
        let live = json!({"data": {"a": "1", "b": "2", "c": "others"}});
        assert_eq!(
            three_way(&original, &modified, &live),
            json!({"data": {"a": "9", "b": null}})
        );
    }

    #[test]
    fn server_defaults_inside_list_elements_are_not_a_change() {
        let intent = json!({"spec": {"ports": [{"port": 80}]}});
        let live = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}]}});
        assert_eq!(three_way(&intent, &intent, &live), json!({}));
    }

    #[test]
    fn lists_are_replaced_whole() {
        let original = json!({"spec": {"l": [1, 2]}});
        let modified = json!({"spec": {"l": [1]}});
        assert_eq!(
            three_way(&original, &modified, &original),
            json!({"spec": {"l": [1]}})
        );
    }
}
