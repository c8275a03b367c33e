//! Job: completion and back-off defaults, pods that run to completion, a template that
//! never changes, and kubectl's STATUS / COMPLETIONS / DURATION columns.

use serde_json::{Map, Value, json};
use skiff_machinery::status::Cause;

use super::{object, or_set, pod_spec, reset_status};
use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `batch/v1/Job`.
#[derive(Debug)]
pub struct Job;

const COLUMNS: &[Column] = &[
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
];

/// A Job spec's defaults (also inside a CronJob's job template).
pub fn default_spec(spec: &mut Map<String, Value>) {
    or_set(spec, "parallelism", json!(1));
    if spec.get("completionMode").and_then(Value::as_str) != Some("Indexed") {
        or_set(spec, "completions", json!(1));
    }
    or_set(spec, "backoffLimit", json!(6));
    or_set(spec, "completionMode", json!("NonIndexed"));
    or_set(spec, "suspend", json!(false));
    if let Some(pod) = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("spec"))
        .and_then(Value::as_object_mut)
    {
        // Jobs have no default: validation asks for OnFailure or Never.
        pod_spec::default(pod, None);
    }
}

/// Validates a Job spec found at `at`.
pub fn validate_spec(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    pod_spec::validate(
        spec.pointer("/template/spec").unwrap_or(&Value::Null),
        &format!("{at}.template.spec"),
        pod_spec::TO_COMPLETION,
        causes,
    );
    for field in ["parallelism", "completions", "backoffLimit"] {
        if let Some(n) = spec.get(field).and_then(Value::as_i64)
            && n < 0
        {
            causes.push(Cause::invalid(
                &format!("{at}.{field}"),
                &Value::from(n),
                "must be greater than or equal to 0",
            ));
        }
    }
}

impl Strategy for Job {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = object(obj, &["spec"]) {
            default_spec(spec);
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        validate_spec(obj.get("spec").unwrap_or(&Value::Null), "spec", &mut causes);
        causes
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        let changed = |pointer: &str| old.pointer(pointer) != new.pointer(pointer);
        if changed("/spec/selector") || changed("/spec/template") {
            causes.push(Cause::invalid(
                "spec.template",
                new.pointer("/spec/template").unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
        causes
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let conditions = o
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let has = |t: &str| {
            conditions
                .iter()
                .any(|c| table::text(c, "/type") == t && table::text(c, "/status") == "True")
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
        let succeeded = table::int(o, "/status/succeeded");
        let completions = match completions {
            Some(c) => format!("{succeeded}/{c}"),
            None => format!(
                "{succeeded}/1 of {}",
                table::int(o, "/spec/parallelism").max(1)
            ),
        };
        let start = o.pointer("/status/startTime").and_then(Value::as_str);
        let end = o.pointer("/status/completionTime").and_then(Value::as_str);
        let duration = match (start, end) {
            (Some(s), Some(e)) => {
                match (s.parse::<jiff::Timestamp>(), e.parse::<jiff::Timestamp>()) {
                    (Ok(s), Ok(e)) => table::human_duration(e.as_second() - s.as_second()),
                    _ => String::new(),
                }
            }
            (Some(s), None) => table::since(s, now),
            _ => String::new(),
        };
        vec![
            table::name(o),
            json!(status),
            json!(completions),
            json!(duration),
            table::age(o, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_refuse_restart_always() {
        let causes = Job.validate(
            &json!({"spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "x"}]}}}}),
        );
        assert_eq!(causes[0].reason, "FieldValueNotSupported");
    }
}
