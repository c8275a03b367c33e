//! `StorageClass`: reclaim policy `Delete` and binding mode `Immediate` unless told, a
//! provisioner and parameters that never change, and kubectl's columns with `(default)`
//! after the default class's name.

use serde_json::{Value, json};
use skiff_machinery::status::Cause;

use super::{object, or_set};
use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `storage.k8s.io/v1/StorageClass`.
#[derive(Debug)]
pub struct StorageClass;

/// The annotation that marks the class claims without one get.
pub const IS_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// Whether `class` carries the default-class annotation.
#[must_use]
pub fn is_default(class: &Value) -> bool {
    class
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(IS_DEFAULT_CLASS))
        .and_then(Value::as_str)
        == Some("true")
}

const COLUMNS: &[Column] = &[
    NAME,
    col(
        "Provisioner",
        "string",
        0,
        "Who provisions volumes of the class.",
    ),
    col(
        "ReclaimPolicy",
        "string",
        0,
        "What happens to released volumes.",
    ),
    col("VolumeBindingMode", "string", 0, "When claims are bound."),
    col(
        "AllowVolumeExpansion",
        "string",
        0,
        "Whether volumes may grow.",
    ),
    AGE,
];

impl Strategy for StorageClass {
    fn default(&self, obj: &mut Value) {
        if let Some(o) = object(obj, &[]) {
            or_set(o, "reclaimPolicy", json!("Delete"));
            or_set(o, "volumeBindingMode", json!("Immediate"));
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        if table::text(obj, "/provisioner").is_empty() {
            causes.push(Cause::required("provisioner"));
        }
        if let Some(mode) = obj.get("volumeBindingMode")
            && !matches!(mode.as_str(), Some("Immediate" | "WaitForFirstConsumer"))
        {
            causes.push(Cause::not_supported(
                "volumeBindingMode",
                mode,
                &["Immediate", "WaitForFirstConsumer"],
            ));
        }
        if let Some(policy) = obj.get("reclaimPolicy")
            && !matches!(policy.as_str(), Some("Retain" | "Delete"))
        {
            causes.push(Cause::not_supported(
                "reclaimPolicy",
                policy,
                &["Delete", "Retain"],
            ));
        }
        causes
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        for field in [
            "provisioner",
            "parameters",
            "reclaimPolicy",
            "volumeBindingMode",
        ] {
            if old.get(field) != new.get(field) {
                causes.push(Cause::forbidden(
                    field,
                    &format!("updates to {field} are forbidden."),
                ));
            }
        }
        causes
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let name = table::text(o, "/metadata/name");
        let name = if is_default(o) {
            format!("{name} (default)")
        } else {
            name.to_owned()
        };
        vec![
            json!(name),
            json!(table::text(o, "/provisioner")),
            json!(table::text(o, "/reclaimPolicy")),
            json!(table::text(o, "/volumeBindingMode")),
            json!(
                o.get("allowVolumeExpansion")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string()
            ),
            table::age(o, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_class_is_marked_in_its_name_cell_and_defaults_are_filled() {
        let mut class = json!({"metadata": {"name": "local-path",
            "annotations": {IS_DEFAULT_CLASS: "true"}}, "provisioner": "rancher.io/local-path"});
        StorageClass.default(&mut class);
        assert_eq!(class["reclaimPolicy"], "Delete");
        assert_eq!(class["volumeBindingMode"], "Immediate");
        let row = StorageClass.row(&class, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(row[0], "local-path (default)");
        assert_eq!(row[4], "false");
        let mut changed = class.clone();
        changed["provisioner"] = json!("other");
        assert_eq!(StorageClass.validate_update(&class, &changed).len(), 1);
    }
}
