//! Secret: write-only `stringData` folded into `data`, the Opaque type, the ConfigMap rules
//! for keys and `immutable`, and kubectl's TYPE / DATA columns.

use base64::Engine;
use serde_json::{Value, json};
use skiff_machinery::status::Cause;

use super::{ConfigMap, configmap::DATA, or_set};
use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `v1/Secret`.
#[derive(Debug)]
pub struct Secret;

const COLUMNS: &[Column] = &[
    NAME,
    col("Type", "string", 0, "The type of the secret"),
    DATA,
    AGE,
];

impl Strategy for Secret {
    fn default(&self, obj: &mut Value) {
        // `stringData` is write-only: the Go apiserver folds it into `data`.
        if let Some(Value::Object(strings)) =
            obj.as_object_mut().and_then(|o| o.remove("stringData"))
        {
            if !obj.get("data").is_some_and(Value::is_object) {
                obj["data"] = json!({});
            }
            for (k, v) in strings {
                let text = v.as_str().unwrap_or_default();
                obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
            }
        }
        if let Some(o) = obj.as_object_mut() {
            or_set(o, "type", json!("Opaque"));
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        ConfigMap.validate(obj)
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<Cause> {
        ConfigMap.validate_update(old, new)
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            table::name(o),
            json!(table::text(o, "/type")),
            json!(table::count(o, "data")),
            table::age(o, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_is_folded_into_base64_data() {
        let mut s = json!({"data": {"a": "eA=="}, "stringData": {"b": "hello"}});
        Secret.default(&mut s);
        assert_eq!(s["data"], json!({"a": "eA==", "b": "aGVsbG8="}));
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
    }
}
