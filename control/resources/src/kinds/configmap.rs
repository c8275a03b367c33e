//! ConfigMap: data keys that are valid config keys, data that stays put once `immutable`
//! is set (Secrets follow the same rules), and kubectl's DATA column.

use serde_json::{Value, json};
use skiff_machinery::status::Cause;

use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `v1/ConfigMap`.
#[derive(Debug)]
pub struct ConfigMap;

/// The Data column (ConfigMap and Secret).
pub const DATA: Column = col("Data", "string", 0, "Number of data entries.");

/// Checks the keys of `data`, `binaryData` and `stringData`.
fn data_keys(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for field in ["data", "binaryData", "stringData"] {
        for key in obj
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys())
        {
            let ok = !key.is_empty()
                && key.len() <= 253
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                causes.push(Cause::invalid(
                    &format!("{field}[{key}]"),
                    &Value::from(key.as_str()),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
        }
    }
    causes
}

/// Refuses data changes to an object marked `immutable`.
fn immutable_data(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let changed = |pointer: &str| old.pointer(pointer) != new.pointer(pointer);
    if old.get("immutable") == Some(&Value::Bool(true))
        && (changed("/data") || changed("/binaryData"))
    {
        causes.push(Cause::forbidden(
            "data",
            "field is immutable when `immutable` is set",
        ));
    }
}

impl Strategy for ConfigMap {
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        data_keys(obj)
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        immutable_data(old, new, &mut causes);
        causes
    }

    fn columns(&self) -> &'static [Column] {
        &[NAME, DATA, AGE]
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            table::name(o),
            json!(table::count(o, "data") + table::count(o, "binaryData")),
            table::age(o, now),
        ]
    }
}
