//! `HorizontalPodAutoscaler` in autoscaling/v1, served beside v2 (what `kubectl autoscale`
//! of kubectl 1.32 creates): converted to and from the stored v2 object as the Go API
//! converts it, a CPU utilisation target as the v1 field and whatever v1 cannot hold
//! (other metrics, `behavior`, conditions) kept in the `autoscaling.alpha.kubernetes.io/*`
//! annotations, so a v2 object read and written back through v1 loses nothing.

use serde_json::{Map, Value, json};
use skiff_machinery::status::Cause;

use super::hpa::HorizontalPodAutoscaler;
use crate::{Strategy, catalog::Conversion, table::Column};

/// `autoscaling/v1/HorizontalPodAutoscaler`.
#[derive(Debug)]
pub struct HorizontalPodAutoscalerV1;

/// How v1 objects reach the stored v2 form and back.
pub static CONVERSION: Conversion = Conversion {
    to_storage: to_v2,
    from_storage: to_v1,
};

/// The v2 metrics other than the CPU utilisation target (JSON list of v2 `MetricSpec`).
const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
/// The v2 current metrics other than CPU utilisation (JSON list of v2 `MetricStatus`).
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
/// The v2 status conditions (JSON list).
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
/// The v2 `spec.behavior` (JSON).
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// Whether `metric` is a CPU utilisation target or reading, what v1 has a field for.
fn is_cpu_utilization(metric: &Value, side: &str) -> bool {
    metric["type"] == "Resource"
        && metric.pointer("/resource/name") == Some(&json!("cpu"))
        && metric
            .pointer(&format!("/resource/{side}/averageUtilization"))
            .is_some_and(Value::is_i64)
        && (side == "current"
            || metric.pointer("/resource/target/type") == Some(&json!("Utilization")))
}

/// Copies `fields` of `from` into `to` where present.
fn copy(from: &Value, to: &mut Map<String, Value>, fields: &[&str]) {
    for f in fields {
        if let Some(v) = from.get(*f).filter(|v| !v.is_null()) {
            to.insert((*f).to_owned(), v.clone());
        }
    }
}

/// Takes the annotation `key` out of `annotations` and parses it as JSON.
fn take(annotations: &mut Map<String, Value>, key: &str) -> Option<Value> {
    let text = annotations.remove(key)?;
    serde_json::from_str(text.as_str()?).ok()
}

/// A stored v2 object as v1 shows it.
fn to_v1(v2: &Value) -> Value {
    let mut out = v2.as_object().cloned().unwrap_or_default();
    out.insert("apiVersion".into(), json!("autoscaling/v1"));
    let mut annotations = v2
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let spec = &v2["spec"];
    let mut v1_spec = Map::new();
    copy(
        spec,
        &mut v1_spec,
        &["scaleTargetRef", "minReplicas", "maxReplicas"],
    );
    let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
    let (cpu, others): (Vec<Value>, Vec<Value>) = metrics
        .into_iter()
        .partition(|m| is_cpu_utilization(m, "target"));
    if let Some(cpu) = cpu.first() {
        v1_spec.insert(
            "targetCPUUtilizationPercentage".into(),
            cpu["resource"]["target"]["averageUtilization"].clone(),
        );
    }
    if !others.is_empty() {
        annotations.insert(METRICS.into(), json!(Value::Array(others).to_string()));
    }
    if let Some(b) = spec.get("behavior").filter(|b| !b.is_null()) {
        annotations.insert(BEHAVIOR.into(), json!(b.to_string()));
    }
    out.insert("spec".into(), Value::Object(v1_spec));
    if let Some(status) = v2.get("status").filter(|s| s.is_object()) {
        // v1 always writes both counts (not omitempty).
        let mut v1_status = Map::new();
        v1_status.insert("currentReplicas".into(), json!(0));
        v1_status.insert("desiredReplicas".into(), json!(0));
        copy(
            status,
            &mut v1_status,
            &[
                "observedGeneration",
                "lastScaleTime",
                "currentReplicas",
                "desiredReplicas",
            ],
        );
        let current = status["currentMetrics"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let (cpu, others): (Vec<Value>, Vec<Value>) = current
            .into_iter()
            .partition(|m| is_cpu_utilization(m, "current"));
        if let Some(cpu) = cpu.first() {
            v1_status.insert(
                "currentCPUUtilizationPercentage".into(),
                cpu["resource"]["current"]["averageUtilization"].clone(),
            );
        }
        if !others.is_empty() {
            annotations.insert(
                CURRENT_METRICS.into(),
                json!(Value::Array(others).to_string()),
            );
        }
        if let Some(c) = status["conditions"].as_array().filter(|c| !c.is_empty()) {
            annotations.insert(
                CONDITIONS.into(),
                json!(Value::Array(c.clone()).to_string()),
            );
        }
        out.insert("status".into(), Value::Object(v1_status));
    }
    set_annotations(&mut out, annotations);
    Value::Object(out)
}

/// A v1 object in the stored v2 form, defaulted as v2.
fn to_v2(v1: &Value) -> Value {
    let mut out = v1.as_object().cloned().unwrap_or_default();
    out.insert("apiVersion".into(), json!("autoscaling/v2"));
    let mut annotations = v1
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let spec = &v1["spec"];
    let mut v2_spec = Map::new();
    copy(
        spec,
        &mut v2_spec,
        &["scaleTargetRef", "minReplicas", "maxReplicas"],
    );
    let mut metrics = Vec::new();
    if let Some(cpu) = spec
        .get("targetCPUUtilizationPercentage")
        .filter(|v| v.is_i64())
    {
        metrics.push(json!({
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}},
        }));
    }
    if let Some(Value::Array(others)) = take(&mut annotations, METRICS) {
        metrics.extend(others);
    }
    if !metrics.is_empty() {
        v2_spec.insert("metrics".into(), Value::Array(metrics));
    }
    if let Some(b) = take(&mut annotations, BEHAVIOR) {
        v2_spec.insert("behavior".into(), b);
    }
    out.insert("spec".into(), Value::Object(v2_spec));
    let status = v1.get("status").filter(|s| s.is_object());
    let current_others = take(&mut annotations, CURRENT_METRICS);
    let conditions = take(&mut annotations, CONDITIONS);
    if let Some(status) = status {
        let mut v2_status = Map::new();
        copy(
            status,
            &mut v2_status,
            &[
                "observedGeneration",
                "lastScaleTime",
                "currentReplicas",
                "desiredReplicas",
            ],
        );
        let mut current = Vec::new();
        if let Some(cpu) = status
            .get("currentCPUUtilizationPercentage")
            .filter(|v| v.is_i64())
        {
            current.push(json!({
                "type": "Resource",
                "resource": {"name": "cpu", "current": {"averageUtilization": cpu}},
            }));
        }
        if let Some(Value::Array(others)) = current_others {
            current.extend(others);
        }
        if !current.is_empty() {
            v2_status.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(c) = conditions {
            v2_status.insert("conditions".into(), c);
        }
        out.insert("status".into(), Value::Object(v2_status));
    }
    set_annotations(&mut out, annotations);
    let mut v2 = Value::Object(out);
    HorizontalPodAutoscaler.default(&mut v2);
    v2
}

/// Puts `annotations` back into the object's metadata, leaving none when empty.
fn set_annotations(obj: &mut Map<String, Value>, annotations: Map<String, Value>) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if annotations.is_empty() {
            meta.remove("annotations");
        } else {
            meta.insert("annotations".into(), Value::Object(annotations));
        }
    }
}

impl Strategy for HorizontalPodAutoscalerV1 {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = super::object(obj, &["spec"]) {
            super::or_set(spec, "minReplicas", json!(1));
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        super::reset_status(obj);
        obj["status"]["desiredReplicas"] = json!(0);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = HorizontalPodAutoscaler.validate(&to_v2(obj));
        if let Some(cpu) = obj
            .pointer("/spec/targetCPUUtilizationPercentage")
            .and_then(Value::as_i64)
            .filter(|c| *c < 1)
        {
            causes.retain(|c| !c.field.starts_with("spec.metrics"));
            causes.push(Cause::invalid(
                "spec.targetCPUUtilizationPercentage",
                &json!(cpu),
                "must be greater than 0",
            ));
        }
        causes
    }

    fn columns(&self) -> &'static [Column] {
        HorizontalPodAutoscaler.columns()
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        HorizontalPodAutoscaler.row(&to_v2(obj), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_target_becomes_a_v2_utilization_metric_and_back() {
        let v1 = json!({
            "apiVersion": "autoscaling/v1",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetCPUUtilizationPercentage": 50,
            },
        });
        let v2 = to_v2(&v1);
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"],
            json!({"type": "Utilization", "averageUtilization": 50})
        );
        assert_eq!(to_v1(&v2), v1);
    }

    #[test]
    fn what_v1_cannot_hold_survives_a_round_trip_through_annotations() {
        let v2 = json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                "minReplicas": 1,
                "maxReplicas": 3,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "64Mi"}}},
                ],
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 5}]},
                    "scaleDown": {"stabilizationWindowSeconds": 5, "selectPolicy": "Max", "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
                },
            },
            "status": {
                "currentReplicas": 2,
                "desiredReplicas": 3,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 90, "averageValue": "90m"}}},
                ],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "SucceededRescale"}],
            },
        });
        let v1 = to_v1(&v2);
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 90);
        assert!(v1["metadata"]["annotations"][BEHAVIOR].is_string());
        let back = to_v2(&v1);
        assert_eq!(back["spec"], v2["spec"]);
        assert_eq!(back["status"]["conditions"], v2["status"]["conditions"]);
        assert!(back["metadata"].get("annotations").is_none());
    }
}
