//! `kubectl get` tables: the columns kubectl shows against Kubernetes, computed server-side
//! from each object like the Go apiserver's printers do.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::ResourceInfo;

type Row = Vec<Value>;
/// Computes one row's cells from an object.
type Printer = fn(&Value, jiff::Timestamp) -> Row;

struct Column {
    name: &'static str,
    kind: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(
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

const NAME: Column = col(
    "Name",
    "string",
    0,
    "Name must be unique within a namespace.",
);
const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

/// The Table for `objects` of `info`'s kind.
#[must_use]
pub fn table(info: &ResourceInfo, objects: &[Value], now: SystemTime) -> Value {
    let now = jiff::Timestamp::try_from(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let (columns, printer) = layout(info);
    let column_definitions: Vec<Value> = columns
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
                "cells": printer(o, now),
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

#[expect(
    clippy::too_many_lines,
    reason = "one arm per kind keeps every kind's columns in one readable table"
)]
fn layout(info: &ResourceInfo) -> (Vec<Column>, Printer) {
    match (info.group, info.kind) {
        ("", "Pod") => (
            vec![
                NAME,
                col(
                    "Ready",
                    "string",
                    0,
                    "The aggregate readiness state of this pod for accepting traffic.",
                ),
                col(
                    "Status",
                    "string",
                    0,
                    "The aggregate status of the containers in this pod.",
                ),
                col(
                    "Restarts",
                    "string",
                    0,
                    "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
                ),
                AGE,
                col(
                    "IP",
                    "string",
                    1,
                    "IP address allocated to the pod. Routable at least within the cluster.",
                ),
                col(
                    "Node",
                    "string",
                    1,
                    "NodeName is a request to schedule this pod onto a specific node.",
                ),
                col(
                    "Nominated Node",
                    "string",
                    1,
                    "nominatedNodeName is set only when this pod preempts other pods on the node.",
                ),
                col(
                    "Readiness Gates",
                    "string",
                    1,
                    "If specified, all readiness gates will be evaluated for pod readiness.",
                ),
            ],
            pod_row,
        ),
        ("apps", "Deployment") => (
            vec![
                NAME,
                col("Ready", "string", 0, "Number of the pod with ready state"),
                col(
                    "Up-to-date",
                    "string",
                    0,
                    "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                ),
                col(
                    "Available",
                    "string",
                    0,
                    "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                ),
                AGE,
                col(
                    "Containers",
                    "string",
                    1,
                    "Names of each container in the template.",
                ),
                col(
                    "Images",
                    "string",
                    1,
                    "Images referenced by each container in the template.",
                ),
                col("Selector", "string", 1, "Label selector for pods."),
            ],
            deployment_row,
        ),
        ("apps", "ReplicaSet") => (
            vec![
                NAME,
                col(
                    "Desired",
                    "integer",
                    0,
                    "Replicas is the number of desired replicas.",
                ),
                col(
                    "Current",
                    "integer",
                    0,
                    "Replicas is the most recently observed number of replicas.",
                ),
                col(
                    "Ready",
                    "integer",
                    0,
                    "The number of ready replicas for this replica set.",
                ),
                AGE,
                col(
                    "Containers",
                    "string",
                    1,
                    "Names of each container in the template.",
                ),
                col(
                    "Images",
                    "string",
                    1,
                    "Images referenced by each container in the template.",
                ),
                col("Selector", "string", 1, "Label selector for pods."),
            ],
            replicaset_row,
        ),
        ("apps", "StatefulSet") => (
            vec![
                NAME,
                col("Ready", "string", 0, "Number of the pod with ready state"),
                AGE,
            ],
            |o, now| {
                vec![
                    name(o),
                    json!(format!(
                        "{}/{}",
                        int(o, "/status/readyReplicas"),
                        int(o, "/spec/replicas")
                    )),
                    age(o, now),
                ]
            },
        ),
        ("apps", "DaemonSet") => (
            vec![
                NAME,
                col(
                    "Desired",
                    "integer",
                    0,
                    "The total number of nodes that should be running the daemon pod.",
                ),
                col(
                    "Current",
                    "integer",
                    0,
                    "The number of nodes that are running at least 1 daemon pod.",
                ),
                col(
                    "Ready",
                    "integer",
                    0,
                    "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
                ),
                col(
                    "Up-to-date",
                    "integer",
                    0,
                    "The total number of nodes that are running updated daemon pod",
                ),
                col(
                    "Available",
                    "integer",
                    0,
                    "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
                ),
                col(
                    "Node Selector",
                    "string",
                    0,
                    "NodeSelector is a selector which must be true for the pod to fit on a node.",
                ),
                AGE,
            ],
            |o, now| {
                vec![
                    name(o),
                    json!(int(o, "/status/desiredNumberScheduled")),
                    json!(int(o, "/status/currentNumberScheduled")),
                    json!(int(o, "/status/numberReady")),
                    json!(int(o, "/status/updatedNumberScheduled")),
                    json!(int(o, "/status/numberAvailable")),
                    json!(
                        map_string(o.pointer("/spec/template/spec/nodeSelector"), "=", ",")
                            .unwrap_or_else(|| "<none>".into())
                    ),
                    age(o, now),
                ]
            },
        ),
        ("", "Service") => (
            vec![
                NAME,
                col("Type", "string", 0, "The type of service."),
                col("Cluster-IP", "string", 0, "The cluster IP of the service."),
                col(
                    "External-IP",
                    "string",
                    0,
                    "The external IPs of the service.",
                ),
                col("Port(s)", "string", 0, "The ports of the service."),
                AGE,
                col(
                    "Selector",
                    "string",
                    1,
                    "Route service traffic to pods with label keys and values matching this selector.",
                ),
            ],
            service_row,
        ),
        ("", "Node") => (
            vec![
                NAME,
                col("Status", "string", 0, "The status of the node"),
                col("Roles", "string", 0, "The roles of the node"),
                AGE,
                col(
                    "Version",
                    "string",
                    0,
                    "Kubelet Version reported by the node.",
                ),
                col(
                    "Internal-IP",
                    "string",
                    1,
                    "List of addresses reachable to the node.",
                ),
                col(
                    "External-IP",
                    "string",
                    1,
                    "List of addresses reachable to the node.",
                ),
                col("OS-Image", "string", 1, "OS image reported by the node."),
                col(
                    "Kernel-Version",
                    "string",
                    1,
                    "Kernel version reported by the node.",
                ),
                col(
                    "Container-Runtime",
                    "string",
                    1,
                    "Container runtime and version reported by the node.",
                ),
            ],
            node_row,
        ),
        ("", "Namespace") => (
            vec![
                NAME,
                col("Status", "string", 0, "The status of the namespace"),
                AGE,
            ],
            |o, now| vec![name(o), json!(text(o, "/status/phase")), age(o, now)],
        ),
        ("batch", "Job") => (
            vec![
                NAME,
                col("Status", "string", 0, "Status of the job."),
                col(
                    "Completions",
                    "string",
                    0,
                    "The completion status of the job.",
                ),
                col(
                    "Duration",
                    "string",
                    0,
                    "Time required to complete the job.",
                ),
                AGE,
            ],
            job_row,
        ),
        ("batch", "CronJob") => (
            vec![
                NAME,
                col("Schedule", "string", 0, "The schedule in Cron format."),
                col(
                    "Timezone",
                    "string",
                    0,
                    "The time zone name for the given schedule.",
                ),
                col(
                    "Suspend",
                    "boolean",
                    0,
                    "Whether to suspend subsequent executions.",
                ),
                col(
                    "Active",
                    "integer",
                    0,
                    "The number of currently running jobs.",
                ),
                col(
                    "Last Schedule",
                    "string",
                    0,
                    "Information when was the last time the job was successfully scheduled.",
                ),
                AGE,
            ],
            |o, now| {
                let last = o
                    .pointer("/status/lastScheduleTime")
                    .and_then(Value::as_str)
                    .map_or_else(|| "<none>".to_owned(), |t| since(t, now));
                vec![
                    name(o),
                    json!(text(o, "/spec/schedule")),
                    json!(
                        o.pointer("/spec/timeZone")
                            .and_then(Value::as_str)
                            .unwrap_or("<none>")
                    ),
                    json!(
                        o.pointer("/spec/suspend")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                    ),
                    json!(
                        o.pointer("/status/active")
                            .and_then(Value::as_array)
                            .map_or(0, Vec::len)
                    ),
                    json!(last),
                    age(o, now),
                ]
            },
        ),
        ("", "ConfigMap") => (
            vec![
                NAME,
                col("Data", "string", 0, "Number of data entries."),
                AGE,
            ],
            |o, now| {
                vec![
                    name(o),
                    json!(count(o, "data") + count(o, "binaryData")),
                    age(o, now),
                ]
            },
        ),
        ("", "Secret") => (
            vec![
                NAME,
                col("Type", "string", 0, "The type of the secret"),
                col("Data", "string", 0, "Number of data entries."),
                AGE,
            ],
            |o, now| {
                vec![
                    name(o),
                    json!(text(o, "/type")),
                    json!(count(o, "data")),
                    age(o, now),
                ]
            },
        ),
        ("", "Endpoints") => (
            vec![
                NAME,
                col("Endpoints", "string", 0, "Endpoints of the service."),
                AGE,
            ],
            endpoints_row,
        ),
        ("", "Event") => (
            vec![
                col(
                    "Last Seen",
                    "string",
                    0,
                    "Time when the event was last seen.",
                ),
                col("Type", "string", 0, "Type of this event (Normal, Warning)."),
                col(
                    "Reason",
                    "string",
                    0,
                    "Short, machine understandable string that gives the reason for this event being generated.",
                ),
                col(
                    "Object",
                    "string",
                    0,
                    "The object that this event is about.",
                ),
                col(
                    "Message",
                    "string",
                    0,
                    "A human-readable description of the status of this operation.",
                ),
            ],
            event_row,
        ),
        _ => (vec![NAME, AGE], |o, now| vec![name(o), age(o, now)]),
    }
}

fn name(o: &Value) -> Value {
    json!(text(o, "/metadata/name"))
}

fn text<'a>(o: &'a Value, pointer: &str) -> &'a str {
    o.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn int(o: &Value, pointer: &str) -> i64 {
    o.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn count(o: &Value, field: &str) -> usize {
    o.get(field)
        .and_then(Value::as_object)
        .map_or(0, serde_json::Map::len)
}

fn age(o: &Value, now: jiff::Timestamp) -> Value {
    json!(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .map_or_else(|| "<unknown>".to_owned(), |t| since(t, now))
    )
}

fn since(timestamp: &str, now: jiff::Timestamp) -> String {
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

fn map_string(v: Option<&Value>, eq: &str, sep: &str) -> Option<String> {
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

fn containers_and_images(o: &Value) -> (String, String) {
    let containers = o
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| text(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn selector_string(o: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(s) = map_string(o.pointer("/spec/selector/matchLabels"), "=", ",") {
        parts.push(s);
    }
    for e in o
        .pointer("/spec/selector/matchExpressions")
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
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn pod_row(o: &Value, now: jiff::Timestamp) -> Row {
    let statuses = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let total = o
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses.iter().map(|s| int(s, "/restartCount")).sum();
    let last_restart = statuses
        .iter()
        .filter_map(|s| {
            s.pointer("/lastState/terminated/finishedAt")
                .and_then(Value::as_str)
        })
        .max();
    let restarts = match last_restart {
        Some(t) if restarts > 0 => format!("{restarts} ({} ago)", since(t, now)),
        _ => restarts.to_string(),
    };
    let mut status = o
        .pointer("/status/reason")
        .and_then(Value::as_str)
        .unwrap_or_else(|| text(o, "/status/phase"))
        .to_owned();
    if status.is_empty() {
        status = "Pending".into();
    }
    for s in statuses.iter().rev() {
        if let Some(reason) = s.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason.clone_into(&mut status);
        } else if let Some(reason) = s
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            reason.clone_into(&mut status);
        }
    }
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        status = "Terminating".into();
    }
    let ip = o
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let node = o
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let nominated = o
        .pointer("/status/nominatedNodeName")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    vec![
        name(o),
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
        age(o, now),
        json!(ip),
        json!(node),
        json!(nominated),
        json!("<none>"),
    ]
}

fn deployment_row(o: &Value, now: jiff::Timestamp) -> Row {
    let (containers, images) = containers_and_images(o);
    vec![
        name(o),
        json!(format!(
            "{}/{}",
            int(o, "/status/readyReplicas"),
            int(o, "/spec/replicas")
        )),
        json!(int(o, "/status/updatedReplicas")),
        json!(int(o, "/status/availableReplicas")),
        age(o, now),
        json!(containers),
        json!(images),
        json!(selector_string(o)),
    ]
}

fn replicaset_row(o: &Value, now: jiff::Timestamp) -> Row {
    let (containers, images) = containers_and_images(o);
    vec![
        name(o),
        json!(int(o, "/spec/replicas")),
        json!(int(o, "/status/replicas")),
        json!(int(o, "/status/readyReplicas")),
        age(o, now),
        json!(containers),
        json!(images),
        json!(selector_string(o)),
    ]
}

fn service_row(o: &Value, now: jiff::Timestamp) -> Row {
    let kind = o
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let external = match kind {
        "ExternalName" => text(o, "/spec/externalName").to_owned(),
        "LoadBalancer" => {
            let ips: Vec<&str> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("ip").and_then(Value::as_str))
                .collect();
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ => "<none>".into(),
    };
    let ports: Vec<String> = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node) => format!("{}:{node}/{protocol}", int(p, "/port")),
                None => format!("{}/{protocol}", int(p, "/port")),
            }
        })
        .collect();
    vec![
        name(o),
        json!(kind),
        json!(
            o.pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("<none>")
        ),
        json!(external),
        json!(if ports.is_empty() {
            "<none>".to_owned()
        } else {
            ports.join(",")
        }),
        age(o, now),
        json!(map_string(o.pointer("/spec/selector"), "=", ",").unwrap_or_else(|| "<none>".into())),
    ]
}

fn node_row(o: &Value, now: jiff::Timestamp) -> Row {
    let ready = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| text(c, "/type") == "Ready")
        .map(|c| text(c, "/status"));
    let mut status = match ready {
        Some("True") => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<&str> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|l| l.keys())
        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    let address = |kind: &str| {
        o.pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| text(a, "/type") == kind)
            .map_or("<none>", |a| text(a, "/address"))
            .to_owned()
    };
    vec![
        name(o),
        json!(status),
        json!(if roles.is_empty() {
            "<none>".to_owned()
        } else {
            roles.join(",")
        }),
        age(o, now),
        json!(text(o, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(text(o, "/status/nodeInfo/osImage")),
        json!(text(o, "/status/nodeInfo/kernelVersion")),
        json!(text(o, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

fn job_row(o: &Value, now: jiff::Timestamp) -> Row {
    let conditions = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let has = |t: &str| {
        conditions
            .iter()
            .any(|c| text(c, "/type") == t && text(c, "/status") == "True")
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if o.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        "Suspended"
    } else {
        "Running"
    };
    let completions = o.pointer("/spec/completions").and_then(Value::as_i64);
    let succeeded = int(o, "/status/succeeded");
    let completions = match completions {
        Some(c) => format!("{succeeded}/{c}"),
        None => format!("{succeeded}/1 of {}", int(o, "/spec/parallelism").max(1)),
    };
    let start = o.pointer("/status/startTime").and_then(Value::as_str);
    let end = o.pointer("/status/completionTime").and_then(Value::as_str);
    let duration = match (start, end) {
        (Some(s), Some(e)) => match (s.parse::<jiff::Timestamp>(), e.parse::<jiff::Timestamp>()) {
            (Ok(s), Ok(e)) => human_duration(e.as_second() - s.as_second()),
            _ => String::new(),
        },
        (Some(s), None) => since(s, now),
        _ => String::new(),
    };
    vec![
        name(o),
        json!(status),
        json!(completions),
        json!(duration),
        age(o, now),
    ]
}

fn endpoints_row(o: &Value, now: jiff::Timestamp) -> Row {
    let mut eps = Vec::new();
    for subset in o
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<i64> = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| int(p, "/port"))
            .collect();
        for a in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ip = text(a, "/ip");
            if ports.is_empty() {
                eps.push(ip.to_owned());
            }
            eps.extend(ports.iter().map(|p| format!("{ip}:{p}")));
        }
    }
    let shown = match eps.len() {
        0 => "<none>".to_owned(),
        n if n > 3 => format!("{} + {} more...", eps[..3].join(","), n - 3),
        _ => eps.join(","),
    };
    vec![name(o), json!(shown), age(o, now)]
}

fn event_row(o: &Value, now: jiff::Timestamp) -> Row {
    let last = o
        .get("lastTimestamp")
        .and_then(Value::as_str)
        .or_else(|| o.get("eventTime").and_then(Value::as_str))
        .or_else(|| {
            o.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
        })
        .map_or_else(|| "<unknown>".to_owned(), |t| since(t, now));
    let object = format!(
        "{}/{}",
        text(o, "/involvedObject/kind").to_ascii_lowercase(),
        text(o, "/involvedObject/name")
    );
    vec![
        json!(last),
        json!(text(o, "/type")),
        json!(text(o, "/reason")),
        json!(object),
        json!(text(o, "/message").trim()),
    ]
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
