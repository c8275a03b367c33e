//! What the workload kinds that keep pods running from a template share (Deployment,
//! ReplicaSet, StatefulSet, DaemonSet, ReplicationController): a selector that must match
//! the template's labels, a replica count, and the template's pod spec.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use skiff_machinery::{selector::LabelSelector, status::Cause};

use super::{object, pod_spec, reset_status};
use crate::{Strategy, table};

/// An apps/v1 workload kind (Deployment, ReplicaSet, StatefulSet, DaemonSet): its own
/// defaults and columns, with the rules they all share (a template whose pods restart
/// always, a selector that matches it and never changes, a status only controllers write).
#[derive(Debug)]
pub struct AppsWorkload {
    /// The kind's defaults for `spec` (the template's pod spec is defaulted for all).
    pub defaults: fn(&mut Map<String, Value>),
    /// Whether the kind has `spec.replicas`.
    pub replicas: bool,
    /// The `kubectl get` columns.
    pub columns: &'static [table::Column],
    /// One row's cells.
    pub row: fn(&Value, jiff::Timestamp) -> Vec<Value>,
}

impl Strategy for AppsWorkload {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = object(obj, &["spec"]) {
            (self.defaults)(spec);
        }
        pod_spec::default_template(obj, Some("Always"));
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_apps(obj, self.replicas)
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<Cause> {
        let mut causes = validate_apps(new, self.replicas);
        if old.pointer("/spec/selector") != new.pointer("/spec/selector") {
            causes.push(Cause::invalid(
                "spec.selector",
                new.pointer("/spec/selector").unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
        causes
    }

    fn columns(&self) -> &'static [table::Column] {
        self.columns
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        (self.row)(obj, now)
    }
}

/// The template's labels as a map.
pub fn template_labels(spec: &Value) -> BTreeMap<String, String> {
    spec.pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("map[{}]", pairs.join(" "))
}

/// `spec.replicas` may not be negative.
pub fn replicas(spec: &Value, causes: &mut Vec<Cause>) {
    if let Some(replicas) = spec.get("replicas").and_then(Value::as_i64)
        && replicas < 0
    {
        causes.push(Cause::invalid(
            "spec.replicas",
            &Value::from(replicas),
            "must be greater than or equal to 0",
        ));
    }
}

/// Validates an apps/v1 workload: a replica count that is not negative (when it has one),
/// a `metav1.LabelSelector` that selects the template's labels, and a template whose pods
/// restart always.
fn validate_apps(obj: &Value, with_replicas: bool) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = Vec::new();
    if with_replicas {
        replicas(spec, &mut causes);
    }
    validate(spec, &mut causes);
    causes
}

fn validate(spec: &Value, causes: &mut Vec<Cause>) {
    let selector = spec.get("selector");
    match selector {
        None | Some(Value::Null) => causes.push(Cause::required("spec.selector")),
        Some(sel) => match LabelSelector::from_k8s(sel) {
            Ok(parsed) if parsed.is_empty() => causes.push(Cause::invalid(
                "spec.selector",
                sel,
                "empty selector is invalid for deployment",
            )),
            Ok(parsed) => {
                let labels = template_labels(spec);
                if !parsed.matches(&labels) {
                    causes.push(selector_mismatch(&labels));
                }
            }
            Err(e) => causes.push(Cause::invalid("spec.selector", sel, &e.to_string())),
        },
    }
    template(spec, causes);
}

/// The cause for a template whose labels the selector does not select.
pub fn selector_mismatch(labels: &BTreeMap<String, String>) -> Cause {
    Cause::invalid(
        "spec.template.metadata.labels",
        &Value::from(format_labels(labels)),
        "`selector` does not match template `labels`",
    )
}

/// Validates a template's pod spec, whose pods restart always.
pub fn template(spec: &Value, causes: &mut Vec<Cause>) {
    pod_spec::validate(
        spec.pointer("/template/spec").unwrap_or(&Value::Null),
        "spec.template.spec",
        pod_spec::ALWAYS,
        causes,
    );
}

/// The columns of a replica-set-like kind (`ReplicaSet`, `ReplicationController`).
pub const REPLICA_COLUMNS: &[table::Column] = &[
    table::NAME,
    table::col(
        "Desired",
        "integer",
        0,
        "Replicas is the number of desired replicas.",
    ),
    table::col(
        "Current",
        "integer",
        0,
        "Replicas is the most recently observed number of replicas.",
    ),
    table::col(
        "Ready",
        "integer",
        0,
        "The number of ready replicas for this replica set.",
    ),
    table::AGE,
    table::CONTAINERS,
    table::IMAGES,
    table::SELECTOR,
];

/// The row of a replica-set-like kind: name, desired, current, ready, age, and the wide
/// view's containers, images and `selector`.
pub fn replica_row(o: &Value, now: jiff::Timestamp, selector: Option<String>) -> Vec<Value> {
    let (containers, images) = table::containers_and_images(o);
    vec![
        table::name(o),
        json!(table::int(o, "/spec/replicas")),
        json!(table::int(o, "/status/replicas")),
        json!(table::int(o, "/status/readyReplicas")),
        table::age(o, now),
        json!(containers),
        json!(images),
        table::or_none(selector),
    ]
}
