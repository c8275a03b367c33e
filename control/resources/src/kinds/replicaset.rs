//! ReplicaSet: a replica count, a selector that matches its template and never changes,
//! and kubectl's DESIRED / CURRENT / READY columns.

use serde_json::{Map, Value, json};

use super::{or_set, workload, workload::AppsWorkload};
use crate::table;

/// `apps/v1/ReplicaSet`.
pub static REPLICA_SET: AppsWorkload = AppsWorkload {
    defaults,
    replicas: true,
    columns: workload::REPLICA_COLUMNS,
    row,
};

fn defaults(spec: &mut Map<String, Value>) {
    or_set(spec, "replicas", json!(1));
}

/// One row: the replica counts, and the wide view's template and selector.
fn row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    workload::replica_row(o, now, table::label_selector(o.pointer("/spec/selector")))
}
