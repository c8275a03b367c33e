//! StatefulSet: ordered pod management and rolling-update defaults, a selector that
//! matches its template and never changes, and kubectl's READY column.

use serde_json::{Map, Value, json};

use super::{or_set, workload::AppsWorkload};
use crate::table::{self, AGE, Column, NAME, col};

/// `apps/v1/StatefulSet`.
pub static STATEFUL_SET: AppsWorkload = AppsWorkload {
    defaults,
    replicas: true,
    columns: COLUMNS,
    row,
};

const COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", 0, "Number of the pod with ready state"),
    AGE,
];

fn defaults(spec: &mut Map<String, Value>) {
    or_set(spec, "replicas", json!(1));
    or_set(spec, "podManagementPolicy", json!("OrderedReady"));
    or_set(spec, "revisionHistoryLimit", json!(10));
    or_set(
        spec,
        "updateStrategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
    );
}

/// One row: StatefulSet's cells.
fn row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    vec![
        table::name(o),
        json!(format!(
            "{}/{}",
            table::int(o, "/status/readyReplicas"),
            table::int(o, "/spec/replicas")
        )),
        table::age(o, now),
    ]
}
