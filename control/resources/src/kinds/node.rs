//! Node: kubectl's STATUS / ROLES / VERSION columns (the node writes everything else).

use serde_json::{Value, json};

use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `v1/Node`.
#[derive(Debug)]
pub struct Node;

const COLUMNS: &[Column] = &[
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
];

impl Strategy for Node {
    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let ready = o
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| table::text(c, "/type") == "Ready")
            .map(|c| table::text(c, "/status"));
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
                .find(|a| table::text(a, "/type") == kind)
                .map_or("<none>", |a| table::text(a, "/address"))
                .to_owned()
        };
        vec![
            table::name(o),
            json!(status),
            table::or_none((!roles.is_empty()).then(|| roles.join(","))),
            table::age(o, now),
            json!(table::text(o, "/status/nodeInfo/kubeletVersion")),
            json!(address("InternalIP")),
            json!(address("ExternalIP")),
            json!(table::text(o, "/status/nodeInfo/osImage")),
            json!(table::text(o, "/status/nodeInfo/kernelVersion")),
            json!(table::text(o, "/status/nodeInfo/containerRuntimeVersion")),
        ]
    }
}
