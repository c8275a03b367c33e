//! DaemonSet: update-strategy defaults, a selector that matches its template and never
//! changes, and kubectl's per-node counters.

use serde_json::{Map, Value, json};

use super::{or_set, workload::AppsWorkload};
use crate::table::{self, AGE, Column, NAME, col};

/// `apps/v1/DaemonSet`.
pub static DAEMON_SET: AppsWorkload = AppsWorkload {
    defaults,
    replicas: false,
    columns: COLUMNS,
    row,
};

const COLUMNS: &[Column] = &[
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
];

fn defaults(spec: &mut Map<String, Value>) {
    or_set(spec, "revisionHistoryLimit", json!(10));
    or_set(
        spec,
        "updateStrategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
    );
}

/// One row: DaemonSet's cells.
fn row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    vec![
        table::name(o),
        json!(table::int(o, "/status/desiredNumberScheduled")),
        json!(table::int(o, "/status/currentNumberScheduled")),
        json!(table::int(o, "/status/numberReady")),
        json!(table::int(o, "/status/updatedNumberScheduled")),
        json!(table::int(o, "/status/numberAvailable")),
        table::or_none(table::map_string(
            o.pointer("/spec/template/spec/nodeSelector"),
            "=",
            ",",
        )),
        table::age(o, now),
    ]
}
