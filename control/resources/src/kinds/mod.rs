//! One file per served kind with what is particular to it (defaults, validation, status on
//! create, allocation, deletion rules, table columns), as its [`Strategy`]; pod specs and
//! the workloads that template them share their rules.

mod configmap;
mod cronjob;
mod daemonset;
mod deployment;
mod endpoints;
mod event;
mod hpa;
mod hpa_v1;
mod job;
mod namespace;
mod node;
mod persistentvolume;
mod persistentvolumeclaim;
mod plain;
mod pod;
mod pod_spec;
mod rbac;
mod replicaset;
mod replicationcontroller;
mod resourcequota;
mod secret;
mod service;
mod statefulset;
mod storageclass;
mod workload;

pub use configmap::ConfigMap;
pub use cronjob::CronJob;
pub use daemonset::DAEMON_SET;
pub use deployment::DEPLOYMENT;
pub use endpoints::Endpoints;
pub use event::Event;
pub use hpa::HorizontalPodAutoscaler;
pub use hpa_v1::{CONVERSION as HPA_V1_CONVERSION, HorizontalPodAutoscalerV1};
pub use job::Job;
pub use namespace::Namespace;
pub use node::Node;
pub use persistentvolume::PersistentVolume;
pub use persistentvolumeclaim::PersistentVolumeClaim;
pub use plain::Plain;
pub use pod::{Pod, ephemeral_container_changes};
pub use rbac::{Binding as RbacBinding, RBAC_GROUP, Role as RbacRole};
pub use replicaset::REPLICA_SET;
pub use replicationcontroller::ReplicationController;
pub use resourcequota::ResourceQuota;
pub use secret::Secret;
use serde_json::{Map, Value};
pub use service::Service;
pub use statefulset::STATEFUL_SET;
pub use storageclass::{IS_DEFAULT_CLASS, StorageClass, is_default as is_default_class};

#[cfg(doc)]
use crate::Strategy;

/// Sets `obj[key]` to `value` if absent or null.
fn or_set(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_owned(), value);
    }
}

/// The map at `path` inside `value`, if there is one.
fn object<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut cur = value;
    for key in path {
        cur = cur.get_mut(*key)?;
    }
    cur.as_object_mut()
}

/// Adds `finalizer` to the object's finalizers unless it is there (what Kubernetes'
/// `StorageObjectInUseProtection` admission does for claims and volumes).
fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let Some(meta) = object(obj, &["metadata"]) else {
        return;
    };
    let list = meta
        .entry("finalizers")
        .or_insert_with(|| Value::Array(Vec::new()));
    if list.is_null() {
        *list = Value::Array(Vec::new());
    }
    if let Some(items) = list.as_array_mut()
        && !items.iter().any(|f| f.as_str() == Some(finalizer))
    {
        items.push(Value::from(finalizer));
    }
}

/// Empties the status: a client may not set it on create (what `PrepareForCreate` does for
/// most kinds; the wire format then shows the status struct's zero values).
fn reset_status(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        o.insert("status".into(), Value::Object(Map::new()));
    }
}
