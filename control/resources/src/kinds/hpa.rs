//! `HorizontalPodAutoscaler` (autoscaling/v2, the storage version): the defaults the Go API
//! applies (one replica at least, CPU at 80 % when no metric is given, every rule of a
//! given `behavior` filled in), the replica bounds, and kubectl's REFERENCE / TARGETS /
//! MINPODS / MAXPODS / REPLICAS columns.

use serde_json::{Map, Value, json};
use skiff_machinery::status::Cause;

use super::{object, or_set, reset_status};
use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `autoscaling/v2/HorizontalPodAutoscaler`.
#[derive(Debug)]
pub struct HorizontalPodAutoscaler;

/// The CPU utilisation an autoscaler without metrics aims at (Go's `DefaultCPUUtilization`).
pub const DEFAULT_CPU_UTILIZATION: i64 = 80;

/// Metrics shown in TARGETS before `+ N more...`.
const SHOWN_METRICS: usize = 2;

const COLUMNS: &[Column] = &[
    NAME,
    col(
        "Reference",
        "string",
        0,
        "The reference to the autoscaled resource.",
    ),
    col(
        "Targets",
        "string",
        0,
        "The current and target metric values.",
    ),
    col(
        "MinPods",
        "string",
        0,
        "The minimum number of replicas the autoscaler may set.",
    ),
    col(
        "MaxPods",
        "integer",
        0,
        "The maximum number of replicas the autoscaler may set.",
    ),
    col(
        "Replicas",
        "integer",
        0,
        "The current number of replicas of the autoscaled resource.",
    ),
    AGE,
];

/// The scale-up rules a `behavior` gets when it leaves them out: no stabilisation, at most
/// 4 pods or 100 % more every 15 s, whichever allows more.
fn default_scale_up() -> Value {
    json!({
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Pods", "value": 4, "periodSeconds": 15},
            {"type": "Percent", "value": 100, "periodSeconds": 15},
        ],
    })
}

/// The scale-down rules a `behavior` gets when it leaves them out: all pods may go every
/// 15 s; the stabilisation window stays unset, so the controller's own (300 s) applies.
fn default_scale_down() -> Value {
    json!({
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
    })
}

/// Fills the fields of `rules` the user left out from `defaults`.
fn fill_rules(behavior: &mut Map<String, Value>, key: &str, defaults: Value) {
    match behavior.get_mut(key).and_then(Value::as_object_mut) {
        Some(rules) => {
            if let Value::Object(defaults) = defaults {
                for (k, v) in defaults {
                    or_set(rules, &k, v);
                }
            }
        }
        None => {
            behavior.insert(key.to_owned(), defaults);
        }
    }
}

impl Strategy for HorizontalPodAutoscaler {
    fn default(&self, obj: &mut Value) {
        let Some(spec) = object(obj, &["spec"]) else {
            return;
        };
        or_set(spec, "minReplicas", json!(1));
        if spec
            .get("metrics")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            spec.insert(
                "metrics".into(),
                json!([{
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": DEFAULT_CPU_UTILIZATION},
                    },
                }]),
            );
        }
        if let Some(behavior) = spec.get_mut("behavior").and_then(Value::as_object_mut) {
            fill_rules(behavior, "scaleUp", default_scale_up());
            fill_rules(behavior, "scaleDown", default_scale_down());
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj);
        // Go always writes `desiredReplicas` (not omitempty); clients such as Python's
        // refuse a status without it.
        obj["status"]["desiredReplicas"] = json!(0);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        let mut causes = Vec::new();
        for field in ["kind", "name"] {
            if spec
                .pointer(&format!("/scaleTargetRef/{field}"))
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                causes.push(Cause::required(&format!("spec.scaleTargetRef.{field}")));
            }
        }
        let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1);
        let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
        if min < 1 {
            causes.push(Cause::invalid(
                "spec.minReplicas",
                &json!(min),
                "must be greater than or equal to 1",
            ));
        }
        if max < 1 {
            causes.push(Cause::invalid(
                "spec.maxReplicas",
                &json!(max),
                "must be greater than 0",
            ));
        } else if max < min {
            causes.push(Cause::invalid(
                "spec.maxReplicas",
                &json!(max),
                "must be greater than or equal to `minReplicas`",
            ));
        }
        for (i, metric) in spec
            .get("metrics")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(u) = metric
                .pointer("/resource/target/averageUtilization")
                .and_then(Value::as_i64)
                && u <= 0
            {
                causes.push(Cause::invalid(
                    &format!("spec.metrics[{i}].resource.target.averageUtilization"),
                    &json!(u),
                    "must be greater than 0",
                ));
            }
        }
        causes
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let reference = format!(
            "{}/{}",
            table::text(o, "/spec/scaleTargetRef/kind"),
            table::text(o, "/spec/scaleTargetRef/name")
        );
        let min = o
            .pointer("/spec/minReplicas")
            .and_then(Value::as_i64)
            .map_or_else(|| "<unset>".to_owned(), |m| m.to_string());
        vec![
            table::name(o),
            json!(reference),
            json!(targets(
                o.pointer("/spec/metrics").unwrap_or(&Value::Null),
                o.pointer("/status/currentMetrics").unwrap_or(&Value::Null)
            )),
            json!(min),
            json!(table::int(o, "/spec/maxReplicas")),
            json!(table::int(o, "/status/currentReplicas")),
            table::age(o, now),
        ]
    }
}

/// kubectl's TARGETS: `current/target` per metric, the current value `<unknown>` until the
/// controller has measured it.
fn targets(specs: &Value, statuses: &Value) -> String {
    let specs = specs.as_array().map(Vec::as_slice).unwrap_or_default();
    if specs.is_empty() {
        return "<none>".to_owned();
    }
    let statuses = statuses.as_array().map(Vec::as_slice).unwrap_or_default();
    let shown: Vec<String> = specs
        .iter()
        .enumerate()
        .take(SHOWN_METRICS)
        .map(|(i, spec)| target(spec, statuses.get(i)))
        .collect();
    let text = shown.join(", ");
    if specs.len() > SHOWN_METRICS {
        format!("{text} + {} more...", specs.len() - SHOWN_METRICS)
    } else {
        text
    }
}

/// One metric's `current/target`.
fn target(spec: &Value, status: Option<&Value>) -> String {
    let kind = spec.get("type").and_then(Value::as_str).unwrap_or("");
    let source = match kind {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "Object" => "object",
        "External" => "external",
        _ => return "<unknown>".to_owned(),
    };
    let target = spec.pointer(&format!("/{source}/target"));
    let current = status.and_then(|s| s.pointer(&format!("/{source}/current")));
    let quantity = |v: Option<&Value>, field: &str| {
        v.and_then(|v| v.get(field)).and_then(|q| {
            q.as_str()
                .map(str::to_owned)
                .or_else(|| Some(q.to_string()))
        })
    };
    let unknown = || "<unknown>".to_owned();
    let (current, wanted) = match target.and_then(|t| t.get("type")).and_then(Value::as_str) {
        Some("Utilization") => (
            current
                .and_then(|c| c.get("averageUtilization"))
                .and_then(Value::as_i64)
                .map_or_else(unknown, |u| format!("{u}%")),
            target
                .and_then(|t| t.get("averageUtilization"))
                .and_then(Value::as_i64)
                .map_or_else(|| "<auto>".to_owned(), |u| format!("{u}%")),
        ),
        Some("AverageValue") => (
            quantity(current, "averageValue").unwrap_or_else(unknown),
            quantity(target, "averageValue").unwrap_or_else(unknown),
        ),
        _ => (
            quantity(current, "value").unwrap_or_else(unknown),
            quantity(target, "value").unwrap_or_else(unknown),
        ),
    };
    let pair = format!("{current}/{wanted}");
    match kind {
        "Resource" | "ContainerResource" => format!(
            "{}: {pair}",
            spec.pointer(&format!("/{source}/name"))
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
        _ => pair,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(spec: &Value) -> Value {
        json!({"metadata": {"name": "h"}, "spec": spec})
    }

    #[test]
    fn an_autoscaler_without_metrics_aims_at_80_percent_cpu_from_one_replica() {
        let mut o =
            hpa(&json!({"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "maxReplicas": 3}));
        HorizontalPodAutoscaler.default(&mut o);
        assert_eq!(o["spec"]["minReplicas"], 1);
        assert_eq!(
            o["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert!(o["spec"].get("behavior").is_none());
    }

    #[test]
    fn a_partial_behavior_gets_the_missing_rules_and_keeps_its_own() {
        let mut o = hpa(&json!({
            "maxReplicas": 3,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}},
        }));
        HorizontalPodAutoscaler.default(&mut o);
        let b = &o["spec"]["behavior"];
        assert_eq!(b["scaleDown"]["stabilizationWindowSeconds"], 5);
        assert_eq!(b["scaleDown"]["policies"][0]["type"], "Percent");
        assert_eq!(b["scaleUp"]["stabilizationWindowSeconds"], 0);
        assert_eq!(b["scaleUp"]["policies"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn max_replicas_below_min_replicas_is_refused() {
        let o = hpa(&json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "d"},
            "minReplicas": 3,
            "maxReplicas": 2,
        }));
        let causes = HorizontalPodAutoscaler.validate(&o);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.maxReplicas");
    }

    #[test]
    fn targets_show_current_and_wanted_utilisation_per_resource() {
        let specs = json!([
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
            {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
            {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 70}}},
        ]);
        let statuses = json!([
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 112, "averageValue": "112m"}}},
        ]);
        assert_eq!(
            targets(&specs, &statuses),
            "cpu: 112%/50%, memory: <unknown>/100Mi + 1 more..."
        );
        assert_eq!(targets(&json!([]), &Value::Null), "<none>");
    }
}
