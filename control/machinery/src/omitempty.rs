//! Go's `omitempty`: which JSON values Go's encoder leaves out of a struct, so that what
//! skiff writes and compares matches what the Go API types read and write.

use serde_json::Value;

/// Whether Go omits `value` from an `omitempty` field: null, false, zero, and the empty
/// string, list and object.
#[must_use]
pub fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// `value` without the fields Go would omit (at any depth; list items are kept, only pruned
/// inside).
#[must_use]
pub fn pruned(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, pruned(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(pruned).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn zero_values_are_empty_and_anything_else_is_not() {
        for empty in [
            json!(null),
            json!(false),
            json!(0),
            json!(0.0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(is_empty(&empty), "{empty}");
        }
        for full in [
            json!(true),
            json!(1),
            json!("x"),
            json!([0]),
            json!({"a": 0}),
        ] {
            assert!(!is_empty(&full), "{full}");
        }
    }

    #[test]
    fn pruning_drops_empty_fields_at_every_depth_but_keeps_list_items() {
        let v = json!({"a": 0, "b": {"c": "", "d": 2}, "e": [{"f": false}, 0], "g": {"h": []}});
        assert_eq!(pruned(v), json!({"b": {"d": 2}, "e": [{}, 0]}));
    }
}
