//! CronJob: schedule and history defaults, a five-field schedule, its job template's Job
//! rules, and kubectl's SCHEDULE / SUSPEND / ACTIVE / LAST SCHEDULE columns.

use serde_json::{Value, json};
use skiff_machinery::status::Cause;

use super::{job, object, or_set, reset_status};
use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `batch/v1/CronJob`.
#[derive(Debug)]
pub struct CronJob;

const COLUMNS: &[Column] = &[
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
];

impl Strategy for CronJob {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = object(obj, &["spec"]) {
            or_set(spec, "concurrencyPolicy", json!("Allow"));
            or_set(spec, "suspend", json!(false));
            or_set(spec, "successfulJobsHistoryLimit", json!(3));
            or_set(spec, "failedJobsHistoryLimit", json!(1));
        }
        if let Some(spec) = object(obj, &["spec", "jobTemplate", "spec"]) {
            job::default_spec(spec);
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        let mut causes = Vec::new();
        let schedule = spec.get("schedule").and_then(Value::as_str).unwrap_or("");
        if schedule.is_empty() {
            causes.push(Cause::required("spec.schedule"));
        } else if schedule.split_whitespace().count() != 5 && !schedule.starts_with('@') {
            causes.push(Cause::invalid(
                "spec.schedule",
                &Value::from(schedule),
                "unparseable cron schedule: expected exactly 5 fields",
            ));
        }
        job::validate_spec(
            spec.pointer("/jobTemplate/spec").unwrap_or(&Value::Null),
            "spec.jobTemplate.spec",
            &mut causes,
        );
        causes
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let last = o
            .pointer("/status/lastScheduleTime")
            .and_then(Value::as_str)
            .map(|t| table::since(t, now));
        vec![
            table::name(o),
            json!(table::text(o, "/spec/schedule")),
            table::or_none(
                o.pointer("/spec/timeZone")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
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
            table::or_none(last),
            table::age(o, now),
        ]
    }
}
