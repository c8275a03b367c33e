//! The patch formats a PATCH request may carry, applied to an object's JSON.

mod strategic;

use serde_json::Value;
pub use strategic::strategic;

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// A JSON patch document is not a list of valid operations.
    #[error("invalid JSON patch: {0}")]
    InvalidJsonPatch(String),
    /// A JSON patch operation failed (missing path, failed test).
    #[error("the JSON patch could not be applied: {0}")]
    JsonPatchFailed(String),
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

/// RFC 6902 JSON patch.
///
/// # Errors
/// When the patch is not a list of operations or an operation fails.
pub fn json(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::InvalidJsonPatch(e.to_string()))?;
    let mut out = target.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| PatchError::JsonPatchFailed(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_null_deletes_and_objects_merge() {
        let out = merge(
            &json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]}),
            &json!({"a": null, "b": {"c": 9}, "l": [3]}),
        );
        assert_eq!(out, json!({"b": {"c": 9, "d": 3}, "l": [3]}));
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
        )
        .unwrap();
        assert_eq!(out, json!({"spec": {"replicas": 3, "list": ["x"]}}));
        let failed = json(
            &doc,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 2}]),
        );
        assert!(matches!(failed, Err(PatchError::JsonPatchFailed(_))));
        let invalid = json(&doc, &json!({"op": "add"}));
        assert!(matches!(invalid, Err(PatchError::InvalidJsonPatch(_))));
    }
}
