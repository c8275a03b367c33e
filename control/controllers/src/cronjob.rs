//! The CronJob controller: creates a Job at each time the cron schedule names (in the
//! CronJob's time zone, UTC by default), honouring `concurrencyPolicy`,
//! `startingDeadlineSeconds`, `suspend` and the history limits.

use std::{str::FromStr, sync::Arc, time::Duration};

use croner::Cron;
use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::batch::v1::{CronJob, Job},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::{Timestamp, tz::TimeZone},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, reflector::Store, watcher},
};
use serde_json::json;

use crate::{Error, Shared, events::Recorder, ownership};

/// Missed start times looked at, at most, when catching up (as the Go controller's 100).
const MAX_MISSED: usize = 100;

/// The CronJob controller's state.
#[derive(Debug)]
pub struct Ctx {
    shared: Arc<Shared>,
    jobs: Store<Job>,
    recorder: Recorder,
}

/// Runs the controller until dropped.
pub async fn run(
    shared: Arc<Shared>,
    jobs: Store<Job>,
    job_changes: impl Stream<Item = Result<Job, watcher::Error>> + Send + 'static,
) {
    let api: Api<CronJob> = Api::all(shared.client.clone());
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(shared.client.clone(), "cronjob-controller"),
        shared,
        jobs,
    });
    Controller::new(api, watcher::Config::default().any_semantic())
        .owns_stream(job_changes)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
fn error_policy(cj: Arc<CronJob>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(cronjob = %cj.name_any(), ?err, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

fn finished(job: &Job) -> Option<&'static str> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some("Complete"),
            "Failed" => Some("Failed"),
            _ => None,
        })
}

/// The latest schedule time in `(after, now]`, and whether more than one was missed.
///
/// # Errors
/// When the schedule does not parse.
pub fn latest_due(
    schedule: &Cron,
    tz: &TimeZone,
    after: Timestamp,
    now: Timestamp,
) -> Result<Option<Timestamp>, String> {
    let mut cursor = after.to_zoned(tz.clone());
    let mut latest = None;
    for _ in 0..MAX_MISSED {
        let next = schedule
            .find_next_occurrence(&cursor, false)
            .map_err(|e| e.to_string())?;
        if next.timestamp() > now {
            return Ok(latest);
        }
        latest = Some(next.timestamp());
        cursor = next;
    }
    // Too many missed: jump to the most recent one.
    let previous = schedule
        .find_previous_occurrence(&now.to_zoned(tz.clone()), true)
        .map_err(|e| e.to_string())?;
    Ok(Some(previous.timestamp()))
}

/// Starts the Job that is due, if any, and trims history.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
#[expect(
    clippy::too_many_lines,
    reason = "schedule, concurrency and history read best together"
)]
pub async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let uid = cj.uid().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let now = Timestamp::now();
    let tz = match spec.time_zone.as_deref() {
        Some(name) => {
            TimeZone::get(name).map_err(|e| Error::Invalid(format!("time zone {name}: {e}")))?
        }
        None => TimeZone::UTC,
    };
    let schedule = Cron::from_str(&spec.schedule)
        .map_err(|e| Error::Invalid(format!("schedule {:?}: {e}", spec.schedule)))?;

    let mut owned: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            j.namespace().as_deref() == Some(ns.as_str())
                && ownership::is_controlled_by(&j.metadata, &uid)
        })
        .collect();
    owned.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let active: Vec<&Arc<Job>> = owned
        .iter()
        .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();

    let last = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    let mut scheduled: Option<Timestamp> = None;
    if !spec.suspend.unwrap_or(false)
        && let Some(due) = latest_due(&schedule, &tz, last, now).map_err(Error::Invalid)?
    {
        let too_late = spec
            .starting_deadline_seconds
            .is_some_and(|deadline| now.as_second() - due.as_second() > deadline);
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        if too_late {
            ctx.recorder
                .warning(
                    cj.as_ref(),
                    "MissSchedule",
                    &format!("Missed scheduled time to start a job: {due}"),
                )
                .await;
            scheduled = Some(due);
        } else if policy == "Forbid" && !active.is_empty() {
            ctx.recorder
                    .normal(cj.as_ref(), "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid")
                    .await;
        } else {
            if policy == "Replace" {
                for job in &active {
                    let _ = jobs_api
                        .delete(&job.name_any(), &DeleteParams::background())
                        .await;
                    ctx.recorder
                        .normal(
                            cj.as_ref(),
                            "SuccessfulDelete",
                            &format!("Deleted job {}", job.name_any()),
                        )
                        .await;
                }
            }
            let template = spec.job_template.clone();
            let mut meta = template.metadata.clone().unwrap_or_default();
            let job_name = format!("{name}-{}", due.as_second() / 60);
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(
                    "batch.kubernetes.io/cronjob-scheduled-timestamp".to_owned(),
                    due.to_string(),
                );
            let job = Job {
                metadata: ObjectMeta {
                    name: Some(job_name.clone()),
                    namespace: Some(ns.clone()),
                    labels: meta.labels,
                    annotations: meta.annotations,
                    owner_references: Some(vec![ownership::controller_ref(cj.as_ref())]),
                    ..ObjectMeta::default()
                },
                spec: template.spec,
                status: None,
            };
            match jobs_api.create(&PostParams::default(), &job).await {
                Ok(_) => {
                    ctx.recorder
                        .normal(
                            cj.as_ref(),
                            "SuccessfulCreate",
                            &format!("Created job {job_name}"),
                        )
                        .await;
                }
                // Created before a restart of this controller: already done.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(err) => return Err(err.into()),
            }
            scheduled = Some(due);
        }
    }

    // History limits.
    let trim = |kind: &'static str, limit: i32| {
        let done: Vec<&Arc<Job>> = owned.iter().filter(|j| finished(j) == Some(kind)).collect();
        let keep = usize::try_from(limit.max(0)).unwrap_or(0);
        done[..done.len().saturating_sub(keep)].to_vec()
    };
    let mut old = trim("Complete", spec.successful_jobs_history_limit.unwrap_or(3));
    old.extend(trim("Failed", spec.failed_jobs_history_limit.unwrap_or(1)));
    for job in old {
        match jobs_api
            .delete(&job.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {
                ctx.recorder
                    .normal(
                        cj.as_ref(),
                        "SawCompletedJob",
                        &format!("Deleted job {}", job.name_any()),
                    )
                    .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }

    let active_refs: Vec<serde_json::Value> = active
        .iter()
        .map(|j| json!({"apiVersion": "batch/v1", "kind": "Job", "name": j.name_any(), "namespace": ns, "uid": j.uid()}))
        .collect();
    let last_success = owned
        .iter()
        .filter(|j| finished(j) == Some("Complete"))
        .filter_map(|j| j.status.as_ref()?.completion_time.clone())
        .max_by_key(|t| t.0);
    let mut status = json!({"active": active_refs, "lastSuccessfulTime": last_success});
    if let Some(t) = scheduled {
        status["lastScheduleTime"] = json!(Time(t));
    }
    let before = serde_json::to_value(cj.status.clone().unwrap_or_default()).unwrap_or_default();
    let changed = scheduled.is_some()
        || before.get("active").cloned().unwrap_or(json!([])) != status["active"]
        || before
            .get("lastSuccessfulTime")
            .cloned()
            .unwrap_or(serde_json::Value::Null)
            != status["lastSuccessfulTime"];
    if changed {
        let api: Api<CronJob> = Api::namespaced(ctx.shared.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    // Wake up for the next scheduled time.
    let next = schedule
        .find_next_occurrence(&now.to_zoned(tz), false)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let wait = (next.timestamp().as_second() - now.as_second()).max(1);
    Ok(Action::requeue(Duration::from_secs(wait.unsigned_abs())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn the_latest_missed_time_is_started_once() {
        let every_5 = Cron::from_str("*/5 * * * *").unwrap();
        let due = latest_due(
            &every_5,
            &TimeZone::UTC,
            at("2026-01-01T00:00:00Z"),
            at("2026-01-01T00:12:00Z"),
        )
        .unwrap();
        assert_eq!(due, Some(at("2026-01-01T00:10:00Z")));
        let none = latest_due(
            &every_5,
            &TimeZone::UTC,
            at("2026-01-01T00:10:00Z"),
            at("2026-01-01T00:12:00Z"),
        )
        .unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn schedules_follow_their_time_zone() {
        let nine = Cron::from_str("0 9 * * *").unwrap();
        let seoul = TimeZone::get("Asia/Seoul").unwrap();
        let due = latest_due(
            &nine,
            &seoul,
            at("2026-01-01T00:30:00Z"),
            at("2026-01-01T01:00:00Z"),
        )
        .unwrap();
        assert_eq!(due, None);
        let due = latest_due(
            &nine,
            &seoul,
            at("2025-12-31T23:30:00Z"),
            at("2026-01-01T01:00:00Z"),
        )
        .unwrap();
        assert_eq!(due, Some(at("2026-01-01T00:00:00Z")));
    }
}
