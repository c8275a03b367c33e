//! `DefaultStorageClass` admission: a new claim that names no class gets the cluster's
//! default one, as Kubernetes' admission plugin of that name does. A claim with
//! `storageClassName: ""` asks for no class and is left alone.

use serde_json::{Value, json};
use skiff_machinery::status::StatusError;
use skiff_resources::{ResourceInfo, is_default_class};

use crate::{ctx::Ctx, http::Query, verbs::read};

/// The default class among `classes`: the newest of those marked default (Kubernetes picks
/// the newest when several are), then by name so the choice is stable.
#[must_use]
pub fn pick(classes: &[Value]) -> Option<&str> {
    classes
        .iter()
        .filter(|c| is_default_class(c))
        .max_by(|a, b| {
            let key = |c: &Value| {
                (
                    c.pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    c.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                )
            };
            key(a).cmp(&key(b))
        })
        .and_then(|c| c.pointer("/metadata/name"))
        .and_then(Value::as_str)
}

/// Fills `spec.storageClassName` of a new claim that has none.
pub async fn admit(ctx: &Ctx, info: &ResourceInfo, obj: &mut Value) -> Result<(), StatusError> {
    if !info.group.is_empty() || info.kind != "PersistentVolumeClaim" {
        return Ok(());
    }
    if obj
        .pointer("/spec/storageClassName")
        .is_some_and(|c| !c.is_null())
    {
        return Ok(());
    }
    let Some(classes) = skiff_resources::by_kind("storage.k8s.io/v1", "StorageClass") else {
        return Ok(());
    };
    let list = read::list_objects(ctx, classes, None, &Query::default()).await?;
    if let Some(name) = pick(&list.items)
        && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("storageClassName".into(), json!(name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, default: bool, created: &str) -> Value {
        let mut c = json!({"metadata": {"name": name, "creationTimestamp": created}});
        if default {
            c["metadata"]["annotations"] =
                json!({"storageclass.kubernetes.io/is-default-class": "true"});
        }
        c
    }

    #[test]
    fn the_newest_default_class_is_picked() {
        let classes = [
            class("old", true, "2024-01-01T00:00:00Z"),
            class("plain", false, "2025-01-01T00:00:00Z"),
            class("new", true, "2024-06-01T00:00:00Z"),
        ];
        assert_eq!(pick(&classes), Some("new"));
        assert_eq!(pick(&classes[1..2]), None);
    }
}
