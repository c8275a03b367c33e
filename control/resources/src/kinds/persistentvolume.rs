//! `PersistentVolume`: a new volume starts `Pending` until the binder looks at it, held by
//! the `pv-protection` finalizer while bound, keeps its reclaim policy `Retain` unless told
//! otherwise, and has kubectl's CAPACITY / ACCESS MODES / RECLAIM POLICY / STATUS / CLAIM
//! columns.

use serde_json::{Map, Value, json};
use skiff_machinery::status::Cause;

use super::{add_finalizer, object, or_set};
use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `v1/PersistentVolume`.
#[derive(Debug)]
pub struct PersistentVolume;

const COLUMNS: &[Column] = &[
    NAME,
    col("Capacity", "string", 0, "Capacity of the volume."),
    col("Access Modes", "string", 0, "Access modes of the volume."),
    col(
        "Reclaim Policy",
        "string",
        0,
        "What happens to the volume once it is released.",
    ),
    col("Status", "string", 0, "The phase of the volume."),
    col("Claim", "string", 0, "The claim bound to the volume."),
    col(
        "StorageClass",
        "string",
        0,
        "The storage class of the volume.",
    ),
    col(
        "VolumeAttributesClass",
        "string",
        0,
        "The volume attributes class of the volume.",
    ),
    col("Reason", "string", 0, "Why the volume is in its phase."),
    AGE,
    col("VolumeMode", "string", 1, "Filesystem or Block."),
];

/// The volume sources a `PersistentVolume` may have, as the API names them.
const SOURCES: &[&str] = &[
    "hostPath",
    "local",
    "nfs",
    "csi",
    "iscsi",
    "fc",
    "rbd",
    "cephfs",
    "cinder",
    "flexVolume",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
    "glusterfs",
    "vsphereVolume",
    "quobyte",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "photonPersistentDisk",
    "flocker",
];

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
#[must_use]
pub fn access_modes(modes: Option<&Value>) -> String {
    modes
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The access modes Kubernetes knows.
pub const MODES: &[&str] = &[
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

/// Checks `accessModes` at `field`: at least one, each known.
pub fn check_access_modes(modes: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    let modes = modes
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if modes.is_empty() {
        causes.push(Cause::required(field));
    }
    for (i, m) in modes.iter().enumerate() {
        if !m.as_str().is_some_and(|m| MODES.contains(&m)) {
            causes.push(Cause::not_supported(&format!("{field}[{i}]"), m, MODES));
        }
    }
}

/// Checks a storage quantity at `field`: present and a quantity.
pub fn check_storage(value: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    match value {
        None | Some(Value::Null) => causes.push(Cause::required(field)),
        Some(v) => {
            if v.as_str()
                .and_then(skiff_machinery::quantity::parse_milli)
                .is_none_or(|q| q <= 0)
            {
                causes.push(Cause::invalid(field, v, "must be greater than zero"));
            }
        }
    }
}

impl Strategy for PersistentVolume {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = object(obj, &["spec"]) {
            or_set(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            or_set(spec, "volumeMode", json!("Filesystem"));
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        add_finalizer(obj, skiff_types::storage::PV_PROTECTION);
        if let Some(o) = obj.as_object_mut() {
            let mut status = Map::new();
            status.insert("phase".into(), json!("Pending"));
            o.insert("status".into(), Value::Object(status));
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
        check_storage(
            spec.pointer("/capacity/storage"),
            "spec.capacity",
            &mut causes,
        );
        check_access_modes(spec.get("accessModes"), "spec.accessModes", &mut causes);
        let sources = SOURCES
            .iter()
            .filter(|s| spec.get(**s).is_some_and(|v| !v.is_null()))
            .count();
        match sources {
            0 => causes.push(Cause::required("spec")),
            1 => {}
            _ => causes.push(Cause::forbidden(
                "spec",
                "may not specify more than 1 volume type",
            )),
        }
        if let Some(policy) = spec.get("persistentVolumeReclaimPolicy")
            && !matches!(policy.as_str(), Some("Retain" | "Delete" | "Recycle"))
        {
            causes.push(Cause::not_supported(
                "spec.persistentVolumeReclaimPolicy",
                policy,
                &["Delete", "Recycle", "Retain"],
            ));
        }
        causes
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let claim = match (
            table::text(o, "/spec/claimRef/namespace"),
            table::text(o, "/spec/claimRef/name"),
        ) {
            (_, "") => String::new(),
            (ns, name) => format!("{ns}/{name}"),
        };
        vec![
            table::name(o),
            json!(table::text(o, "/spec/capacity/storage")),
            json!(access_modes(o.pointer("/spec/accessModes"))),
            json!(table::text(o, "/spec/persistentVolumeReclaimPolicy")),
            json!(table::text(o, "/status/phase")),
            json!(claim),
            json!(table::text(o, "/spec/storageClassName")),
            json!("<unset>"),
            json!(table::text(o, "/status/reason")),
            table::age(o, now),
            json!(table::text(o, "/spec/volumeMode")),
        ]
    }
}
