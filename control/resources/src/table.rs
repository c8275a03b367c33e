//! `kubectl get` tables: the Table document built from a kind's own columns (its
//! [`Strategy`](crate::Strategy) says which, and computes each row as the Go apiserver's
//! printers do), and the cell helpers the kinds' printers share.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::ResourceInfo;

/// One column of a table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The header, e.g. `Ready`.
    pub name: &'static str,
    /// The OpenAPI type of the cells: `string`, `integer`, `boolean`.
    pub kind: &'static str,
    /// 0 for the default view, 1 for `-o wide` only.
    pub priority: u8,
    /// What the column shows.
    pub description: &'static str,
}

/// A column definition.
#[must_use]
pub const fn col(
    name: &'static str,
    kind: &'static str,
    priority: u8,
    description: &'static str,
) -> Column {
    Column {
        name,
        kind,
        priority,
        description,
    }
}

/// The name column every table starts with.
pub const NAME: Column = col(
    "Name",
    "string",
    0,
    "Name must be unique within a namespace.",
);
/// The age column.
pub const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);
/// The wide view's container names of a pod template.
pub const CONTAINERS: Column = col(
    "Containers",
    "string",
    1,
    "Names of each container in the template.",
);
/// The wide view's images of a pod template.
pub const IMAGES: Column = col(
    "Images",
    "string",
    1,
    "Images referenced by each container in the template.",
);
/// The wide view's label selector.
pub const SELECTOR: Column = col("Selector", "string", 1, "Label selector for pods.");

/// The Table for `objects` of `info`'s kind.
#[must_use]
pub fn table(info: &ResourceInfo, objects: &[Value], now: SystemTime) -> Value {
    let now = jiff::Timestamp::try_from(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let column_definitions: Vec<Value> = info
        .strategy
        .columns()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": if c.name == "Name" { "name" } else { "" },
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({
                "cells": info.strategy.row(o, now),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

/// The object's name, as a cell.
#[must_use]
pub fn name(o: &Value) -> Value {
    json!(text(o, "/metadata/name"))
}

/// The text at `pointer`, empty when absent.
#[must_use]
pub fn text<'a>(o: &'a Value, pointer: &str) -> &'a str {
    o.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The integer at `pointer`, 0 when absent.
#[must_use]
pub fn int(o: &Value, pointer: &str) -> i64 {
    o.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// How many entries the map `field` has.
#[must_use]
pub fn count(o: &Value, field: &str) -> usize {
    o.get(field)
        .and_then(Value::as_object)
        .map_or(0, serde_json::Map::len)
}

/// The object's age, as a cell.
#[must_use]
pub fn age(o: &Value, now: jiff::Timestamp) -> Value {
    json!(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .map_or_else(|| "<unknown>".to_owned(), |t| since(t, now))
    )
}

/// How long ago `timestamp` was, as kubectl writes it.
#[must_use]
pub fn since(timestamp: &str, now: jiff::Timestamp) -> String {
    timestamp.parse::<jiff::Timestamp>().map_or_else(
        |_| "<invalid>".to_owned(),
        |t| human_duration(now.as_second() - t.as_second()),
    )
}

/// kubectl's `HumanDuration`: 45s, 5m10s, 3h, 2d4h, 3y.
#[must_use]
pub fn human_duration(seconds: i64) -> String {
    let secs = seconds.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 60 * 2 {
        format!("{secs}s")
    } else if m < 10 {
        match secs % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        }
    } else if m < 60 * 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{d}d"),
            r => format!("{d}d{r}h"),
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        match d % 365 {
            0 => format!("{}y", d / 365),
            r => format!("{}y{r}d", d / 365),
        }
    } else {
        format!("{}y", d / 365)
    }
}

/// A map as `k{eq}v` pairs joined by `sep`; `None` when absent or empty.
#[must_use]
pub fn map_string(v: Option<&Value>, eq: &str, sep: &str) -> Option<String> {
    let map = v?.as_object()?;
    if map.is_empty() {
        return None;
    }
    Some(
        map.iter()
            .map(|(k, v)| format!("{k}{eq}{}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(sep),
    )
}

/// The container names and images of the object's pod template.
#[must_use]
pub fn containers_and_images(o: &Value) -> (String, String) {
    let containers = o
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| text(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// A `metav1.LabelSelector` as text (`app=web,tier in (a,b)`); `None` when it selects
/// everything or is absent.
#[must_use]
pub fn label_selector(selector: Option<&Value>) -> Option<String> {
    let selector = selector?;
    let mut parts = Vec::new();
    if let Some(s) = map_string(selector.get("matchLabels"), "=", ",") {
        parts.push(s);
    }
    for e in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let key = text(e, "/key");
        parts.push(match text(e, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            _ => format!("!{key}"),
        });
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

/// A cell that shows `<none>` for nothing.
#[must_use]
pub fn or_none(value: Option<String>) -> Value {
    json!(value.unwrap_or_else(|| "<none>".to_owned()))
}
#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::by_kind;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn human_durations_read_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(310), "5m10s");
        assert_eq!(human_duration(3 * 3600), "3h");
        assert_eq!(human_duration(52 * 3600), "2d4h");
        assert_eq!(human_duration(30 * 86_400), "30d");
    }

    #[test]
    fn pods_show_ready_status_restarts_and_age() {
        let pod = json!({"metadata": {"name": "web-1", "creationTimestamp": "2023-11-14T22:12:20Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let t = table(by_kind("v1", "Pod").unwrap(), &[pod], now());
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[4], "60s");
        assert_eq!(cells[5], "10.244.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn services_show_ports_like_kubectl() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
            "selector": {"app": "web"}}});
        let t = table(by_kind("v1", "Service").unwrap(), &[svc], now());
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[4], "80:30080/TCP,53/UDP");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[6], "app=web");
    }

    #[test]
    fn deployments_show_ready_over_desired() {
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "app", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let t = table(by_kind("apps/v1", "Deployment").unwrap(), &[d], now());
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "2/3");
        assert_eq!(cells[7], "app=web");
    }

    #[test]
    fn unknown_kinds_get_name_and_age() {
        let t = table(
            by_kind("coordination.k8s.io/v1", "Lease").unwrap(),
            &[json!({"metadata": {"name": "l"}})],
            now(),
        );
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 2);
        assert_eq!(t["rows"][0]["cells"][0], "l");
    }
}
