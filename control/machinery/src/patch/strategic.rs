//! Strategic merge patch: kubectl's default PATCH for built-in kinds, where lists of objects
//! merge by a key (containers by name) and `$patch`, `$setElementOrder`, `$retainKeys` and
//! `$deleteFromPrimitiveList` directives steer the merge.

use serde_json::{Map, Value};

use super::PatchError;

/// How a list field merges, from Kubernetes' `patchStrategy` / `patchMergeKey` tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListStrategy {
    /// Replaced wholesale (atomic lists such as `command`, `args`, `tolerations`).
    Replace,
    /// Objects merged by the value of this field.
    MergeKey(&'static str),
    /// Primitives merged as a set (`metadata.finalizers`).
    MergePrimitives,
}

/// Where in a pod spec a field sits, enough to know its list strategy.
pub(crate) fn strategy(path: &[String], kind: &str) -> ListStrategy {
    let field = path.last().map_or("", String::as_str);
    let parent = path.len().checked_sub(2).map_or("", |i| path[i].as_str());
    let in_container = matches!(
        parent,
        "containers" | "initContainers" | "ephemeralContainers"
    );
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => ListStrategy::MergeKey("name"),
        "env" if in_container => ListStrategy::MergeKey("name"),
        "ports" if in_container => ListStrategy::MergeKey("containerPort"),
        "ports" if kind == "Service" && path.len() == 2 => ListStrategy::MergeKey("port"),
        "volumeMounts" if in_container => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" if in_container => ListStrategy::MergeKey("devicePath"),
        "resizePolicy" if in_container => ListStrategy::MergeKey("resourceName"),
        "hostAliases" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "conditions" if parent == "status" => ListStrategy::MergeKey("type"),
        "addresses" if parent == "status" && kind == "Node" => ListStrategy::MergeKey("type"),
        "ownerReferences" if parent == "metadata" => ListStrategy::MergeKey("uid"),
        "finalizers" if parent == "metadata" => ListStrategy::MergePrimitives,
        _ => ListStrategy::Replace,
    }
}

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVES: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch to `target`, an object of `kind`.
///
/// # Errors
/// When a directive is malformed or the patch is not an object.
pub fn strategic(
    target: &Value,
    patch: &Value,
    _api_version: &str,
    kind: &str,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::InvalidStrategic(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let mut out = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    merge_map(&mut out, patch, &mut Vec::new(), kind)?;
    Ok(Value::Object(out))
}

fn merge_map(
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    fields: &mut Vec<String>,
    kind: &str,
) -> Result<(), PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *orig = strip(patch);
            return Ok(());
        }
        Some("delete") => {
            orig.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::InvalidStrategic(format!(
                "unknown $patch directive {other:?}"
            )));
        }
    }
    let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(SET_ORDER) {
            let Value::Array(order) = value else {
                return Err(PatchError::InvalidStrategic(format!(
                    "{key} must be a list"
                )));
            };
            orders.push((field, order));
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVES) {
            let Value::Array(doomed) = value else {
                return Err(PatchError::InvalidStrategic(format!(
                    "{key} must be a list"
                )));
            };
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                list.retain(|v| !doomed.contains(v));
            }
            continue;
        }
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        fields.push(key.clone());
        match value {
            Value::Null => {
                orig.remove(key);
            }
            Value::Object(sub) => {
                if sub.get("$patch").and_then(Value::as_str) == Some("delete") {
                    orig.remove(key);
                } else {
                    let entry = orig
                        .entry(key.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !entry.is_object() {
                        *entry = Value::Object(Map::new());
                    }
                    if let Value::Object(target) = entry {
                        merge_map(target, sub, fields, kind)?;
                    }
                }
            }
            Value::Array(items) => {
                let merged = merge_list(orig.get(key), items, fields, kind)?;
                orig.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                orig.insert(key.clone(), scalar.clone());
            }
        }
        fields.pop();
    }
    if let Some(Value::Array(retain)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, order) in orders {
        fields.push(field.to_owned());
        let strategy = strategy(fields, kind);
        fields.pop();
        if let Some(Value::Array(list)) = orig.get_mut(field) {
            reorder(list, order, strategy);
        }
    }
    Ok(())
}

fn merge_list(
    orig: Option<&Value>,
    patch: &[Value],
    fields: &mut Vec<String>,
    kind: &str,
) -> Result<Vec<Value>, PatchError> {
    let replace_all = patch
        .iter()
        .any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace"));
    let orig: Vec<Value> = match orig {
        Some(Value::Array(list)) if !replace_all => list.clone(),
        _ => Vec::new(),
    };
    let items = patch
        .iter()
        .filter(|item| item.get("$patch").and_then(Value::as_str) != Some("replace"));
    match strategy(fields, kind) {
        ListStrategy::Replace => Ok(items.map(strip_value).collect()),
        ListStrategy::MergePrimitives => {
            let mut out = orig;
            for item in items {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::MergeKey(merge_key) => {
            let mut out = orig;
            for item in items {
                let Value::Object(item) = item else {
                    return Err(PatchError::InvalidStrategic(format!(
                        "{}: list items must be objects with {merge_key:?}",
                        fields.join(".")
                    )));
                };
                let Some(key) = item.get(merge_key) else {
                    return Err(PatchError::InvalidStrategic(format!(
                        "{}: an item has no merge key {merge_key:?}",
                        fields.join(".")
                    )));
                };
                let position = out.iter().position(|o| o.get(merge_key) == Some(key));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.retain(|o| o.get(merge_key) != Some(key));
                    continue;
                }
                match position {
                    Some(i) => {
                        if let Value::Object(existing) = &mut out[i] {
                            merge_map(existing, item, fields, kind)?;
                        }
                    }
                    None => out.push(Value::Object(strip(item))),
                }
            }
            Ok(out)
        }
    }
}

/// Orders `list` as `order` says; items the order does not name keep their place after.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let rank = |item: &Value| {
        order.iter().position(|o| match strategy {
            ListStrategy::MergeKey(key) => o.get(key).is_some() && o.get(key) == item.get(key),
            _ => o == item,
        })
    };
    let mut ranked: Vec<(usize, usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, item)| (rank(&item).unwrap_or(usize::MAX), i, item))
        .collect();
    ranked.sort_by_key(|(r, i, _)| (*r, *i));
    list.extend(ranked.into_iter().map(|(_, _, item)| item));
}

/// The patch object as a value: directives removed, nulls dropped.
fn strip(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
        .map(|(k, v)| (k.clone(), strip_value(v)))
        .collect()
}

fn strip_value(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(strip(map)),
        Value::Array(items) => Value::Array(items.iter().map(strip_value).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(env: &Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "finalizers": ["a"]},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "app", "image": "busybox:1", "env": env,
                 "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "side", "image": "busybox:1", "command": ["sh", "-c", "x"]}
            ]}}}
        })
    }

    fn apply(target: &Value, patch: &Value) -> Value {
        strategic(target, patch, "apps/v1", "Deployment").unwrap()
    }

    #[test]
    fn removing_an_env_var_as_kubectl_apply_sends_it_keeps_the_others() {
        let orig = deployment(&json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]));
        let patch = json!({"spec":{"template":{"spec":{
            "$setElementOrder/containers":[{"name":"app"},{"name":"side"}],
            "containers":[{"$setElementOrder/env":[{"name":"A"}],
                           "env":[{"$patch":"delete","name":"B"}],"name":"app"}]}}}});
        let out = apply(&orig, &patch);
        let app = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(app["env"], json!([{"name": "A", "value": "1"}]));
        assert_eq!(app["image"], "busybox:1", "untouched fields stay");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][1]["name"],
            "side"
        );
    }

    #[test]
    fn containers_merge_by_name_and_new_ones_append() {
        let orig = deployment(&json!([]));
        let out = apply(
            &orig,
            &json!({"spec":{"template":{"spec":{"containers":[
                {"name":"side","image":"busybox:2"},
                {"name":"new","image":"nginx","$patch":"merge"}]}}}}),
        );
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[1]["image"], "busybox:2");
        assert_eq!(containers[1]["command"], json!(["sh", "-c", "x"]));
        assert_eq!(containers[2], json!({"name": "new", "image": "nginx"}));
    }

    #[test]
    fn atomic_lists_are_replaced_and_null_deletes_a_field() {
        let orig = deployment(&json!([]));
        let out = apply(
            &orig,
            &json!({"spec":{"replicas":null,"template":{"spec":{"containers":[
                {"name":"side","command":["true"]}]}}}}),
        );
        assert!(out["spec"].get("replicas").is_none());
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][1]["command"],
            json!(["true"])
        );
    }

    #[test]
    fn set_element_order_orders_the_merged_list() {
        let orig = deployment(&json!([]));
        let out = apply(
            &orig,
            &json!({"spec":{"template":{"spec":{
                "$setElementOrder/containers":[{"name":"side"},{"name":"app"}]}}}}),
        );
        let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["side", "app"]);
    }

    #[test]
    fn patch_replace_replaces_a_map_or_a_list_wholesale() {
        let orig = deployment(&json!([{"name": "A", "value": "1"}]));
        let out = apply(
            &orig,
            &json!({"spec":{"template":{"spec":{"containers":[
                {"$patch":"replace"},{"name":"only","image":"x"}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "x"}])
        );
        let out = apply(
            &orig,
            &json!({"metadata": {"$patch": "replace", "name": "web"}}),
        );
        assert_eq!(out["metadata"], json!({"name": "web"}));
    }

    #[test]
    fn finalizers_merge_as_a_set_and_delete_from_primitive_list_removes() {
        let orig = deployment(&json!([]));
        let out = apply(&orig, &json!({"metadata": {"finalizers": ["b", "a"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        let out = apply(
            &out,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn retain_keys_drops_unlisted_fields() {
        let orig = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = apply(
            &orig,
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn service_ports_merge_by_port() {
        let orig = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
        let out = strategic(
            &orig,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
            "v1",
            "Service",
        )
        .unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
        );
    }

    #[test]
    fn an_unknown_directive_is_an_error() {
        let err = strategic(&json!({}), &json!({"$patch": "explode"}), "v1", "Pod");
        assert!(err.is_err());
    }
}
