//! `PersistentVolumeClaim`: a new claim starts `Pending`, held by the `pvc-protection`
//! finalizer while a pod uses it, must ask for access modes and a
//! storage size, keeps its spec once made (but for a bigger size and the binder's
//! `volumeName`), and has kubectl's STATUS / VOLUME / CAPACITY / STORAGECLASS columns.

use serde_json::{Map, Value, json};
use skiff_machinery::status::Cause;

use super::{
    add_finalizer, object, or_set,
    persistentvolume::{access_modes, check_access_modes, check_storage},
};
use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `v1/PersistentVolumeClaim`.
#[derive(Debug)]
pub struct PersistentVolumeClaim;

const COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", 0, "The phase of the claim."),
    col("Volume", "string", 0, "The volume bound to the claim."),
    col("Capacity", "string", 0, "The capacity of the bound volume."),
    col(
        "Access Modes",
        "string",
        0,
        "Access modes of the bound volume.",
    ),
    col(
        "StorageClass",
        "string",
        0,
        "The storage class of the claim.",
    ),
    col(
        "VolumeAttributesClass",
        "string",
        0,
        "The volume attributes class of the claim.",
    ),
    AGE,
    col("VolumeMode", "string", 1, "Filesystem or Block."),
];

impl Strategy for PersistentVolumeClaim {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = object(obj, &["spec"]) {
            or_set(spec, "volumeMode", json!("Filesystem"));
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        add_finalizer(obj, skiff_types::storage::PVC_PROTECTION);
        if let Some(o) = obj.as_object_mut() {
            let mut status = Map::new();
            status.insert("phase".into(), json!("Pending"));
            o.insert("status".into(), Value::Object(status));
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        check_access_modes(
            obj.pointer("/spec/accessModes"),
            "spec.accessModes",
            &mut causes,
        );
        check_storage(
            obj.pointer("/spec/resources/requests/storage"),
            "spec.resources[storage]",
            &mut causes,
        );
        causes
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        // What may change: the requested size, and the volume name while it is unset.
        // A claim not yet bound may get its volume name; a bound one keeps it.
        let unbound = old
            .pointer("/spec/volumeName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        let comparable = |spec: Option<&Value>| {
            let mut spec = spec.cloned().unwrap_or_else(|| json!({}));
            if let Some(s) = spec.as_object_mut() {
                s.remove("resources");
                s.remove("volumeAttributesClassName");
                if unbound {
                    s.remove("volumeName");
                }
            }
            spec
        };
        if comparable(old.get("spec")) != comparable(new.get("spec")) {
            causes.push(Cause::forbidden(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            ));
        }
        causes
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let bound = table::text(o, "/status/phase") == "Bound";
        let (capacity, modes) = if bound {
            (
                table::text(o, "/status/capacity/storage").to_owned(),
                access_modes(o.pointer("/status/accessModes")),
            )
        } else {
            (String::new(), String::new())
        };
        vec![
            table::name(o),
            json!(table::text(o, "/status/phase")),
            json!(table::text(o, "/spec/volumeName")),
            json!(capacity),
            json!(modes),
            json!(table::text(o, "/spec/storageClassName")),
            json!("<unset>"),
            table::age(o, now),
            json!(table::text(o, "/spec/volumeMode")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> Value {
        json!({"metadata": {"name": "data"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                        "resources": {"requests": {"storage": "1Gi"}}}})
    }

    #[test]
    fn a_new_claim_is_pending_protected_and_filesystem() {
        let mut c = claim();
        PersistentVolumeClaim.default(&mut c);
        PersistentVolumeClaim.prepare_for_create(&mut c);
        assert_eq!(c["status"]["phase"], "Pending");
        assert_eq!(c["spec"]["volumeMode"], "Filesystem");
        assert_eq!(
            c["metadata"]["finalizers"],
            json!(["kubernetes.io/pvc-protection"])
        );
        assert!(PersistentVolumeClaim.validate(&c).is_empty());
        assert_eq!(
            PersistentVolumeClaim.validate(&json!({"spec": {}})).len(),
            2
        );
    }

    #[test]
    fn only_the_size_and_an_unset_volume_name_may_change() {
        let old = claim();
        let mut bound = old.clone();
        bound["spec"]["volumeName"] = json!("pv1");
        bound["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(
            PersistentVolumeClaim
                .validate_update(&old, &bound)
                .is_empty()
        );
        let mut rebound = bound.clone();
        rebound["spec"]["volumeName"] = json!("pv2");
        assert_eq!(
            PersistentVolumeClaim
                .validate_update(&bound, &rebound)
                .len(),
            1
        );
        let mut reclassed = old.clone();
        reclassed["spec"]["storageClassName"] = json!("fast");
        assert_eq!(
            PersistentVolumeClaim
                .validate_update(&old, &reclassed)
                .len(),
            1
        );
    }
}
