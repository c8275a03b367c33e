//! How objects live in the store: their keys, their JSON without `resourceVersion` (set from
//! the store revision on every read, as the Go apiserver does), and store errors as Status.

use serde_json::{Value, json};
use skiff_machinery::status::StatusError;
use skiff_resources::ResourceInfo;
use skiff_store::{KeyValue, Store, StoreError};

/// The store key prefix of a kind, optionally narrowed to one namespace.
pub fn prefix(info: &ResourceInfo, namespace: Option<&str>) -> String {
    let group = if info.group.is_empty() {
        "core"
    } else {
        info.group
    };
    match namespace {
        Some(ns) if info.namespaced => format!("/registry/{group}/{}/{ns}/", info.plural),
        _ => format!("/registry/{group}/{}/", info.plural),
    }
}

/// The value at a dotted field path (`spec.nodeName`) as a field selector compares it: text
/// as is, other values as JSON, `null` as absent.
pub fn field_value(obj: &Value, field: &str) -> Option<String> {
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The store key of one object.
pub fn key(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> String {
    format!("{}{name}", prefix(info, namespace))
}

/// The current object `name` (in `namespace`) of `info`'s kind and its mod revision, or
/// 404.
pub async fn fetch(
    store: &dyn Store,
    info: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
) -> Result<(Value, i64), StatusError> {
    let kv = store
        .get(&key(info, namespace, name), 0)
        .await
        .map_err(|e| store_error(e, info, name))?
        .ok_or_else(|| StatusError::not_found(info.group, info.plural, name))?;
    Ok((decode(info, &kv)?, kv.mod_revision))
}

/// The object stored under `kv`, in `info`'s version, with its `resourceVersion`.
pub fn decode(info: &ResourceInfo, kv: &KeyValue) -> Result<Value, StatusError> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| StatusError::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    if let Some(conversion) = info.conversion {
        obj = (conversion.from_storage)(&obj);
    }
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

pub fn set_resource_version(obj: &mut Value, revision: i64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// The bytes to store: the object of `info`'s version in the storage version, without
/// `resourceVersion`.
pub fn encode(info: &ResourceInfo, obj: &Value) -> Vec<u8> {
    match info.conversion {
        Some(conversion) => {
            serde_json::to_vec(&Unversioned(&(conversion.to_storage)(obj))).unwrap_or_default()
        }
        // Serialized as it is, skipping the field, rather than cloned to remove it: every
        // write passes here.
        None => serde_json::to_vec(&Unversioned(obj)).unwrap_or_default(),
    }
}

/// An object serialized without `metadata.resourceVersion`, which the store keeps as the
/// key's revision instead.
struct Unversioned<'a>(&'a Value);

impl serde::Serialize for Unversioned<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let Value::Object(fields) = self.0 else {
            return self.0.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(fields.len()))?;
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("metadata", Value::Object(meta)) => {
                    map.serialize_key(key)?;
                    map.serialize_value(&WithoutKey(meta, "resourceVersion"))?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

/// A JSON object serialized without one of its keys.
struct WithoutKey<'a>(&'a serde_json::Map<String, Value>, &'static str);

impl serde::Serialize for WithoutKey<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let kept = self.0.iter().filter(|(k, _)| k.as_str() != self.1);
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in kept {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn namespace_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace").and_then(Value::as_str)
}

/// The `metadata.resourceVersion` a client sent, if any.
pub fn resource_version(obj: &Value) -> Result<Option<i64>, StatusError> {
    match obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse()
            .map(Some)
            .map_err(|_| StatusError::bad_request(format!("invalid resourceVersion {rv:?}"))),
    }
}

/// Now, as Kubernetes writes timestamps (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A store failure as the Status a client understands.
pub fn store_error(err: StoreError, info: &ResourceInfo, name: &str) -> StatusError {
    match err {
        StoreError::AlreadyExists(_) => StatusError::already_exists(info.group, info.plural, name),
        StoreError::NotFound(_) => StatusError::not_found(info.group, info.plural, name),
        StoreError::Conflict { .. } => StatusError::conflict(
            info.group,
            info.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        StoreError::Compacted { requested, .. } => StatusError::gone(format!(
            "The resourceVersion for the provided list is too old: {requested}"
        )),
        StoreError::FutureRevision(rv) => {
            StatusError::timeout(format!("Too large resource version: {rv}"))
        }
        other => StatusError::internal(other.to_string()),
    }
}

/// The spec-like part of an object: everything but `metadata` and `status`, whose change
/// bumps `metadata.generation`.
pub fn spec_part(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(map) = out.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_grouped_by_kind_then_namespace() {
        let pods = skiff_resources::by_kind("v1", "Pod").unwrap();
        assert_eq!(
            key(pods, Some("default"), "web"),
            "/registry/core/pods/default/web"
        );
        assert_eq!(prefix(pods, None), "/registry/core/pods/");
        let nodes = skiff_resources::by_kind("v1", "Node").unwrap();
        assert_eq!(key(nodes, Some("ignored"), "n1"), "/registry/core/nodes/n1");
    }

    #[test]
    fn another_version_of_a_kind_is_stored_in_the_storage_version_and_read_back() {
        let v1 =
            skiff_resources::by_plural("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let v2 =
            skiff_resources::by_plural("autoscaling", "v2", "horizontalpodautoscalers").unwrap();
        assert_eq!(key(v1, Some("ns"), "h"), key(v2, Some("ns"), "h"));
        let obj = json!({
            "apiVersion": "autoscaling/v1",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50},
        });
        let kv = KeyValue {
            key: "k".into(),
            value: encode(v1, &obj),
            create_revision: 3,
            mod_revision: 4,
        };
        let stored = decode(v2, &kv).unwrap();
        assert_eq!(stored["apiVersion"], "autoscaling/v2");
        assert_eq!(stored["spec"]["metrics"][0]["resource"]["name"], "cpu");
        assert_eq!(
            decode(v1, &kv).unwrap()["spec"]["targetCPUUtilizationPercentage"],
            50
        );
    }

    #[test]
    fn resource_version_is_not_stored_but_set_on_read() {
        let pods = skiff_resources::by_kind("v1", "Pod").unwrap();
        let obj = json!({"kind": "Pod", "metadata": {"name": "a", "resourceVersion": "7", "labels": {"x": "y"}},
                         "spec": {"nodeName": "n", "resourceVersion": "kept outside metadata"}});
        let bytes = encode(pods, &obj);
        let stored: Value = serde_json::from_slice(&bytes).unwrap();
        let mut expected = obj.clone();
        expected["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        assert_eq!(
            stored, expected,
            "everything but metadata.resourceVersion is stored"
        );
        let kv = KeyValue {
            key: "k".into(),
            value: bytes,
            create_revision: 3,
            mod_revision: 9,
        };
        assert_eq!(
            decode(pods, &kv).unwrap()["metadata"]["resourceVersion"],
            "9"
        );
    }
}
