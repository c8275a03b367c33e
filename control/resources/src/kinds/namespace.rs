//! Namespace: the `kubernetes` finalizer and the Active phase, names that are DNS labels,
//! deletion that turns the namespace Terminating until the namespace controller has emptied
//! it and dropped `spec.finalizers`, the namespaces that may never be deleted, and no
//! `deletecollection`.

use serde_json::{Value, json};
use skiff_machinery::validation::NameRule;
use skiff_types::namespace;

use super::{object, or_set};
use crate::{
    Deletion, Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `v1/Namespace`.
#[derive(Debug)]
pub struct Namespace;

/// The namespaces Kubernetes' `NamespaceLifecycle` admission never lets go.
const IMMORTAL: [&str; 3] = [
    namespace::DEFAULT,
    namespace::KUBE_SYSTEM,
    namespace::KUBE_PUBLIC,
];

const COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", 0, "The status of the namespace"),
    AGE,
];

fn finalizers_pending(obj: &Value) -> bool {
    obj.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

impl Strategy for Namespace {
    fn default(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            or_set(o, "spec", json!({}));
        }
        if let Some(spec) = object(obj, &["spec"]) {
            or_set(spec, "finalizers", json!(["kubernetes"]));
        }
        if let Some(o) = obj.as_object_mut() {
            or_set(o, "status", json!({"phase": "Active"}));
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({"phase": "Active"}));
        }
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn check_delete(&self, obj: &Value) -> Result<(), String> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if IMMORTAL.contains(&name) {
            Err("this namespace may not be deleted".into())
        } else {
            Ok(())
        }
    }

    fn deletion(&self, obj: &mut Value, _grace: Option<i64>) -> Deletion {
        if finalizers_pending(obj) {
            obj["status"]["phase"] = json!("Terminating");
            Deletion::Finalizing
        } else {
            Deletion::Immediate
        }
    }

    fn finalizing(&self, obj: &Value) -> bool {
        finalizers_pending(obj)
    }

    fn delete_collection(&self) -> bool {
        false
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            table::name(o),
            json!(table::text(o, "/status/phase")),
            table::age(o, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleting_a_namespace_waits_for_its_finalizers() {
        let mut ns = json!({"metadata": {"name": "team"}});
        Namespace.default(&mut ns);
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(Namespace.deletion(&mut ns, None), Deletion::Finalizing);
        assert_eq!(ns["status"]["phase"], "Terminating");
        assert!(Namespace.finalizing(&ns));
        ns["spec"]["finalizers"] = json!([]);
        assert!(!Namespace.finalizing(&ns));
    }

    #[test]
    fn a_new_namespace_is_active_whatever_it_says() {
        let mut ns = json!({"metadata": {"name": "team"}, "status": {"phase": "Terminating"}});
        Namespace.prepare_for_create(&mut ns);
        assert_eq!(ns["status"], json!({"phase": "Active"}));
    }

    #[test]
    fn the_system_namespaces_may_not_be_deleted() {
        for name in ["default", "kube-system", "kube-public"] {
            assert!(
                Namespace
                    .check_delete(&json!({"metadata": {"name": name}}))
                    .is_err()
            );
        }
        assert!(
            Namespace
                .check_delete(&json!({"metadata": {"name": "team"}}))
                .is_ok()
        );
    }
}
