//! Server-side apply and field ownership: which manager owns which fields (`managedFields`
//! in the `FieldsV1` format), conflicts between managers, and removal of fields a manager
//! stops applying.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::patch::{ListStrategy, strategic, strategy};

/// One step of a field path, as `FieldsV1` spells it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Elem {
    /// `f:name`: a map field.
    Field(String),
    /// `k:{"name":"x"}`: an item of a list merged by key (the JSON of the key fields).
    Key(String),
    /// `v:"x"`: an item of a list of primitives merged as a set.
    Value(String),
    /// `.`: the list item itself.
    Itself,
}

impl Elem {
    fn encode(&self) -> String {
        match self {
            Self::Field(f) => format!("f:{f}"),
            Self::Key(k) => format!("k:{k}"),
            Self::Value(v) => format!("v:{v}"),
            Self::Itself => ".".into(),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        if s == "." {
            return Some(Self::Itself);
        }
        let (kind, rest) = s.split_at_checked(2)?;
        match kind {
            "f:" => Some(Self::Field(rest.to_owned())),
            "k:" => Some(Self::Key(rest.to_owned())),
            "v:" => Some(Self::Value(rest.to_owned())),
            _ => None,
        }
    }
}

type Path = Vec<Elem>;

/// A conflict: another manager owns a field the applier sets to another value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// The field, e.g. `.spec.replicas`.
    pub field: String,
}

/// Why an apply was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Other managers own fields the apply would change; `force` takes them over.
    #[error("Apply failed with {} conflict{}: {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, render(.0))]
    Conflicts(Vec<Conflict>),
    /// The applied configuration could not be merged.
    #[error("{0}")]
    Merge(String),
}

fn render(conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(|c| format!("conflict with {:?}: {}", c.manager, c.field))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fields that identify an object rather than describe it; nobody owns them.
fn identity(path: &[Elem]) -> bool {
    matches!(
        path,
        [Elem::Field(f)] if f == "apiVersion" || f == "kind"
    ) || matches!(
        path,
        [Elem::Field(m), Elem::Field(f)] if m == "metadata"
            && matches!(f.as_str(), "name" | "namespace" | "uid" | "resourceVersion"
                | "creationTimestamp" | "generation" | "managedFields" | "deletionTimestamp")
    )
}

/// The leaf fields an object sets.
fn leaves(obj: &Value, kind: &str) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    walk(obj, kind, &mut Vec::new(), &mut Vec::new(), &mut out);
    out.retain(|p| !identity(p) && p.first() != Some(&Elem::Field("status".into())));
    out
}

fn walk(v: &Value, kind: &str, names: &mut Vec<String>, path: &mut Path, out: &mut BTreeSet<Path>) {
    let Value::Object(map) = v else {
        out.insert(path.clone());
        return;
    };
    if map.is_empty() && !path.is_empty() {
        out.insert(path.clone());
    }
    for (k, child) in map {
        if child.is_null() {
            continue;
        }
        names.push(k.clone());
        path.push(Elem::Field(k.clone()));
        match child {
            Value::Array(items) => match strategy(names, kind) {
                ListStrategy::MergeKey(key) => {
                    for item in items {
                        let id = json!({ key: item.get(key).cloned().unwrap_or(Value::Null) });
                        path.push(Elem::Key(id.to_string()));
                        let mut with_self = path.clone();
                        with_self.push(Elem::Itself);
                        out.insert(with_self);
                        walk(item, kind, names, path, out);
                        path.pop();
                    }
                }
                ListStrategy::MergePrimitives => {
                    for item in items {
                        let mut p = path.clone();
                        p.push(Elem::Value(item.to_string()));
                        out.insert(p);
                    }
                }
                ListStrategy::Replace => {
                    out.insert(path.clone());
                }
            },
            other => walk(other, kind, names, path, out),
        }
        path.pop();
        names.pop();
    }
}

/// The value a path names in `obj`.
fn lookup<'a>(obj: &'a Value, path: &[Elem]) -> Option<&'a Value> {
    let mut cur = obj;
    for elem in path {
        cur = match elem {
            Elem::Field(f) => cur.get(f)?,
            Elem::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                cur.as_array()?
                    .iter()
                    .find(|item| key.iter().all(|(kf, kv)| item.get(kf) == Some(kv)))?
            }
            Elem::Value(v) => {
                let want: Value = serde_json::from_str(v).ok()?;
                cur.as_array()?.iter().find(|item| **item == want)?
            }
            Elem::Itself => cur,
        };
    }
    Some(cur)
}

/// Removes the field (or list item) a path names, if present.
fn remove(obj: &mut Value, path: &[Elem]) {
    let path = match path.last() {
        Some(Elem::Itself) => &path[..path.len() - 1],
        _ => path,
    };
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for elem in parent {
        let next = match elem {
            Elem::Field(f) => cur.get_mut(f),
            Elem::Key(k) => {
                let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else {
                    return;
                };
                cur.as_array_mut().and_then(|items| {
                    items
                        .iter_mut()
                        .find(|item| key.iter().all(|(kf, kv)| item.get(kf) == Some(kv)))
                })
            }
            Elem::Value(_) | Elem::Itself => None,
        };
        let Some(next) = next else {
            return;
        };
        cur = next;
    }
    match last {
        Elem::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Elem::Key(k) => {
            if let (Ok(key), Some(items)) = (
                serde_json::from_str::<Map<String, Value>>(k),
                cur.as_array_mut(),
            ) {
                items.retain(|item| !key.iter().all(|(kf, kv)| item.get(kf) == Some(kv)));
            }
        }
        Elem::Value(v) => {
            if let (Ok(want), Some(items)) = (serde_json::from_str::<Value>(v), cur.as_array_mut())
            {
                items.retain(|item| *item != want);
            }
        }
        Elem::Itself => {}
    }
}

/// Whether going from `before` to `after` changes the field at `path`: its value for a
/// field, its presence for a list item (whose own fields are compared one by one).
fn changes(before: &Value, after: &Value, path: &[Elem]) -> bool {
    if path.last() == Some(&Elem::Itself) {
        lookup(before, path).is_some() != lookup(after, path).is_some()
    } else {
        lookup(before, path) != lookup(after, path)
    }
}

fn display(path: &[Elem]) -> String {
    path.iter()
        .filter(|e| **e != Elem::Itself)
        .map(|e| match e {
            Elem::Field(f) => format!(".{f}"),
            Elem::Key(k) => format!("[{k}]"),
            Elem::Value(v) => format!("[={v}]"),
            Elem::Itself => String::new(),
        })
        .collect()
}

/// Encodes leaves as a `FieldsV1` object.
fn encode(set: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for elem in path {
            cur = cur
                .entry(elem.encode())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("fieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

/// Decodes a `FieldsV1` object into leaves.
fn decode(fields: &Value) -> BTreeSet<Path> {
    fn go(node: &Map<String, Value>, path: &mut Path, out: &mut BTreeSet<Path>) {
        for (k, child) in node {
            let Some(elem) = Elem::decode(k) else {
                continue;
            };
            path.push(elem);
            match child.as_object() {
                Some(m) if !m.is_empty() => go(m, path, out),
                _ => {
                    out.insert(path.clone());
                }
            }
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    if let Some(m) = fields.as_object() {
        go(m, &mut Vec::new(), &mut out);
    }
    out
}

/// One `managedFields` entry, decoded.
struct Entry {
    manager: String,
    operation: String,
    raw: Value,
    fields: BTreeSet<Path>,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e
                .get("manager")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            operation: e
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            fields: decode(e.get("fieldsV1").unwrap_or(&Value::Null)),
            raw: e.clone(),
        })
        .collect()
}

fn store(obj: &mut Value, list: Vec<Entry>, api_version: &str, now: &str) {
    let rendered: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut raw = e.raw;
            if raw.get("manager").is_none() {
                raw = json!({"manager": e.manager, "operation": e.operation,
                             "apiVersion": api_version, "time": now, "fieldsType": "FieldsV1"});
            }
            raw["fieldsV1"] = encode(&e.fields);
            raw
        })
        .collect();
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["managedFields"] = Value::Array(rendered);
}

/// Server-side apply of `applied` (the manager's whole intent) onto `live` (`None` on
/// create): conflicts with other managers unless `force`, removal of fields this manager
/// applied before and no longer does (when nobody else owns them), and the merge.
///
/// # Errors
/// On conflicts without `force`, or when the intent cannot be merged.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApplyError> {
    let kind = applied.get("kind").and_then(Value::as_str).unwrap_or("");
    let api_version = applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let wanted = leaves(applied, kind);
    let mut list = entries(&base);
    let mine = |e: &Entry| e.manager == manager && e.operation == "Apply";
    let previous: BTreeSet<Path> = list
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let owned_by_others: BTreeSet<Path> = list
        .iter()
        .filter(|e| !mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut merged = base.clone();
    // Whole list items first: once an item's key field is gone it can no longer be found.
    let mut dropped: Vec<&Path> = previous
        .difference(&wanted)
        .filter(|p| !owned_by_others.contains(*p))
        .collect();
    dropped.sort_by_key(|p| (p.last() != Some(&Elem::Itself), p.len()));
    for path in dropped {
        remove(&mut merged, path);
    }
    let mut merged = strategic(&merged, &without_nulls(applied), api_version, kind)
        .map_err(|e| ApplyError::Merge(e.to_string()))?;
    // Only a field the apply changes conflicts: one set to the value it already has becomes
    // shared between the managers, as in Kubernetes' structured-merge-diff.
    let mut conflicts = Vec::new();
    for entry in list.iter_mut().filter(|e| !mine(e)) {
        let clashing: Vec<Path> = entry
            .fields
            .intersection(&wanted)
            .filter(|p| changes(&base, &merged, p))
            .cloned()
            .collect();
        for path in clashing {
            if force {
                entry.fields.remove(&path);
            } else {
                conflicts.push(Conflict {
                    manager: entry.manager.clone(),
                    field: display(&path),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(ApplyError::Conflicts(conflicts));
    }
    list.retain(|e| !mine(e));
    list.push(Entry {
        manager: manager.to_owned(),
        operation: "Apply".into(),
        raw: json!({"manager": manager, "operation": "Apply", "apiVersion": api_version,
                    "time": now, "fieldsType": "FieldsV1"}),
        fields: wanted,
    });
    store(&mut merged, list, api_version, now);
    Ok(merged)
}

/// Records a non-apply write by `manager`: it now owns every field it changed, and other
/// managers lose those fields, as with the Go apiserver's Update operations.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
    let kind = new
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let empty = json!({});
    let old = old.unwrap_or(&empty);
    let changed: BTreeSet<Path> = leaves(new, &kind)
        .into_iter()
        .filter(|p| lookup(old, p) != lookup(new, p))
        .collect();
    let mut list = entries(old);
    if changed.is_empty() {
        store(new, list, &api_version, now);
        return;
    }
    for entry in &mut list {
        entry.fields.retain(|p| !changed.contains(p));
    }
    match list
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update")
    {
        Some(entry) => {
            entry.fields.extend(changed);
            entry.raw["time"] = json!(now);
        }
        None => list.push(Entry {
            manager: manager.to_owned(),
            operation: "Update".into(),
            raw: json!({"manager": manager, "operation": "Update", "apiVersion": api_version,
                        "time": now, "fieldsType": "FieldsV1"}),
            fields: changed,
        }),
    }
    store(new, list, &api_version, now);
}

fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn deploy(replicas: i64, env: &Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"a": "b"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "app", "image": "x", "env": env}]}}}})
    }

    #[test]
    fn fields_v1_round_trips_and_names_keyed_items() {
        let set = leaves(
            &deploy(1, &json!([{"name": "A", "value": "1"}])),
            "Deployment",
        );
        let encoded = encode(&set);
        let containers = &encoded["f:spec"]["f:template"]["f:spec"]["f:containers"];
        assert!(
            containers[r#"k:{"name":"app"}"#]["."].is_object(),
            "{encoded}"
        );
        assert!(encoded["f:metadata"]["f:labels"]["f:a"].is_object());
        assert!(
            encoded["f:metadata"].get("f:name").is_none(),
            "identity is not owned"
        );
        assert_eq!(decode(&encoded), set);
    }

    #[test]
    fn reapplying_without_a_field_removes_it() {
        let first = apply(
            None,
            &deploy(
                1,
                &json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]),
            ),
            "me",
            false,
            NOW,
        )
        .unwrap();
        let second = apply(
            Some(&first),
            &deploy(1, &json!([{"name": "A", "value": "1"}])),
            "me",
            false,
            NOW,
        )
        .unwrap();
        assert_eq!(
            second["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "1"}])
        );
        let mut no_labels = deploy(1, &json!([{"name": "A", "value": "1"}]));
        no_labels["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        let third = apply(Some(&second), &no_labels, "me", false, NOW).unwrap();
        assert!(
            third["metadata"]
                .get("labels")
                .is_none_or(|l| l.get("a").is_none()),
            "{third}"
        );
    }

    #[test]
    fn another_managers_field_conflicts_unless_forced() {
        let mut live = apply(None, &deploy(1, &json!([])), "me", false, NOW).unwrap();
        let before = live.clone();
        live["spec"]["replicas"] = json!(5);
        record_update(Some(&before), &mut live, "kubectl-scale", NOW);
        let err = apply(Some(&live), &deploy(1, &json!([])), "me", false, NOW).unwrap_err();
        match &err {
            ApplyError::Conflicts(c) => {
                assert_eq!(
                    c,
                    &[Conflict {
                        manager: "kubectl-scale".into(),
                        field: ".spec.replicas".into()
                    }]
                );
            }
            other @ ApplyError::Merge(_) => panic!("{other}"),
        }
        assert!(err.to_string().starts_with("Apply failed with 1 conflict"));
        let forced = apply(Some(&live), &deploy(1, &json!([])), "me", true, NOW).unwrap();
        assert_eq!(forced["spec"]["replicas"], 1);
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["me"], "the scaler lost its only field");
    }

    /// A Deployment as the API server stores it after a POST: the client's fields plus
    /// defaults, all owned by the creating manager.
    fn created_by_post(manager: &str) -> Value {
        let mut live = deploy(2, &json!([{"name": "A", "value": "1"}]));
        live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Always");
        live["spec"]["template"]["spec"]["containers"][0]["resources"] = json!({});
        live["spec"]["revisionHistoryLimit"] = json!(10);
        record_update(None, &mut live, manager, NOW);
        live
    }

    fn managers(obj: &Value) -> Vec<(&str, &str)> {
        obj["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["manager"].as_str().unwrap(),
                    e["operation"].as_str().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn applying_the_values_another_manager_set_shares_the_fields() {
        let live = created_by_post("kubectl-create");
        let applied = apply(
            Some(&live),
            &deploy(2, &json!([{"name": "A", "value": "1"}])),
            "kubectl",
            false,
            NOW,
        )
        .expect("an unchanged apply does not conflict");
        assert_eq!(
            managers(&applied),
            [("kubectl-create", "Update"), ("kubectl", "Apply")]
        );
        let owns_replicas = |m: &str| {
            entries(&applied)
                .iter()
                .find(|e| e.manager == m)
                .unwrap()
                .fields
                .contains(&vec![
                    Elem::Field("spec".into()),
                    Elem::Field("replicas".into()),
                ])
        };
        assert!(owns_replicas("kubectl") && owns_replicas("kubectl-create"));
        assert_eq!(
            applied["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always",
            "defaults stay"
        );
    }

    #[test]
    fn applying_another_value_for_a_field_still_conflicts() {
        let live = created_by_post("kubectl-create");
        let mut changed = deploy(3, &json!([{"name": "A", "value": "2"}]));
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        let err = apply(Some(&live), &changed, "kubectl", false, NOW).unwrap_err();
        let ApplyError::Conflicts(conflicts) = err else {
            panic!("{err}")
        };
        let fields: Vec<&str> = conflicts.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                ".spec.replicas",
                r#".spec.template.spec.containers[{"name":"app"}].env[{"name":"A"}].value"#,
                r#".spec.template.spec.containers[{"name":"app"}].image"#,
            ]
        );
        assert!(conflicts.iter().all(|c| c.manager == "kubectl-create"));
    }

    #[test]
    fn a_field_another_manager_owns_survives_my_dropping_it() {
        let first = apply(None, &deploy(3, &json!([])), "me", false, NOW).unwrap();
        let shared = apply(Some(&first), &deploy(3, &json!([])), "other", false, NOW).unwrap();
        let mut without = deploy(3, &json!([]));
        without["spec"].as_object_mut().unwrap().remove("replicas");
        let after = apply(Some(&shared), &without, "me", false, NOW).unwrap();
        assert_eq!(
            after["spec"]["replicas"], 3,
            "still applied by the other manager"
        );
    }
}
