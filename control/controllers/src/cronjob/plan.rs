//! What a CronJob needs done, decided from its Jobs and the time alone: the Job due now
//! (per `concurrencyPolicy` and `startingDeadlineSeconds`), Jobs beyond the history limits,
//! the status, and when the next schedule time comes.

use std::{str::FromStr, sync::Arc, time::Duration};

use croner::Cron;
use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobStatus, Job},
        core::v1::ObjectReference,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::{Timestamp, tz::TimeZone},
};
use kube::{Resource, ResourceExt};
use skiff_control_runtime::{events::EventType, ownership, status};

use crate::Error;

/// Missed start times looked at, at most, when catching up (as the Go controller's 100).
const MAX_MISSED: usize = 100;
/// The annotation a scheduled Job carries with the time it was due.
pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// What the plan is made from.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The CronJob.
    pub cron_job: &'a CronJob,
    /// Jobs of its namespace (others are ignored).
    pub jobs: &'a [Arc<Job>],
    /// The time.
    pub now: Timestamp,
}

/// One thing to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Report something about the CronJob.
    Event {
        /// Normal or Warning.
        kind: EventType,
        /// The reason.
        reason: &'static str,
        /// The message.
        message: String,
    },
    /// Delete a Job (replaced, or beyond the history limit), reporting it with `reason`.
    DeleteJob {
        /// The Job.
        name: String,
        /// The event reason (`SuccessfulDelete`, `SawCompletedJob`).
        reason: &'static str,
    },
    /// Start the Job that is due.
    CreateJob(Box<Job>),
}

/// The steps, the status to write (when it changed) and when the next run is due.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// In order.
    pub steps: Vec<Step>,
    /// The new status, if it differs from the current one.
    pub status: Option<CronJobStatus>,
    /// Until the next schedule time.
    pub requeue: Duration,
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

/// The latest schedule time in `(after, now]`, if any.
///
/// # Errors
/// When no next time can be computed for the schedule.
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

/// Decides what the CronJob does now.
///
/// # Errors
/// [`Error::Invalid`] when the schedule or time zone does not parse.
#[expect(
    clippy::too_many_lines,
    reason = "schedule, concurrency and history read best together"
)]
pub fn plan(o: &Observed<'_>) -> Result<Option<Plan>, Error> {
    let cj = o.cron_job;
    let now = o.now;
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let uid = cj.uid().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let tz = match spec.time_zone.as_deref() {
        Some(zone) => {
            TimeZone::get(zone).map_err(|e| Error::Invalid(format!("time zone {zone}: {e}")))?
        }
        None => TimeZone::UTC,
    };
    let schedule = Cron::from_str(&spec.schedule)
        .map_err(|e| Error::Invalid(format!("schedule {:?}: {e}", spec.schedule)))?;

    let mut owned: Vec<&Arc<Job>> = o
        .jobs
        .iter()
        .filter(|j| {
            j.namespace().as_deref() == Some(ns.as_str())
                && ownership::is_controlled_by(&j.metadata, &uid)
        })
        .collect();
    owned.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let active: Vec<&Arc<Job>> = owned
        .iter()
        .copied()
        .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();

    let last = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    let mut steps = Vec::new();
    let mut scheduled: Option<Timestamp> = None;
    if !spec.suspend.unwrap_or(false)
        && let Some(due) = latest_due(&schedule, &tz, last, now).map_err(Error::Invalid)?
    {
        let too_late = spec
            .starting_deadline_seconds
            .is_some_and(|deadline| now.as_second() - due.as_second() > deadline);
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        if too_late {
            steps.push(Step::Event {
                kind: EventType::Warning,
                reason: "MissSchedule",
                message: format!("Missed scheduled time to start a job: {due}"),
            });
            scheduled = Some(due);
        } else if policy == "Forbid" && !active.is_empty() {
            steps.push(Step::Event {
                kind: EventType::Normal,
                reason: "JobAlreadyActive",
                message: "Not starting job because prior execution is running and concurrency policy is Forbid".to_owned(),
            });
        } else {
            if policy == "Replace" {
                steps.extend(active.iter().map(|j| Step::DeleteJob {
                    name: j.name_any(),
                    reason: "SuccessfulDelete",
                }));
            }
            let template = spec.job_template.clone();
            let mut meta = template.metadata.clone().unwrap_or_default();
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(SCHEDULED_AT.to_owned(), due.to_string());
            steps.push(Step::CreateJob(Box::new(Job {
                metadata: ObjectMeta {
                    // One name per due minute: a Job created before a restart is not made
                    // twice.
                    name: Some(format!("{name}-{}", due.as_second() / 60)),
                    namespace: Some(ns.clone()),
                    labels: meta.labels,
                    annotations: meta.annotations,
                    owner_references: Some(vec![ownership::controller_ref(cj)]),
                    ..ObjectMeta::default()
                },
                spec: template.spec,
                status: None,
            })));
            scheduled = Some(due);
        }
    }

    // History limits, oldest first.
    let trim = |kind: &'static str, limit: i32| {
        let done: Vec<&&Arc<Job>> = owned.iter().filter(|j| finished(j) == Some(kind)).collect();
        let keep = usize::try_from(limit.max(0)).unwrap_or(0);
        done[..done.len().saturating_sub(keep)]
            .iter()
            .map(|j| Step::DeleteJob {
                name: j.name_any(),
                reason: "SawCompletedJob",
            })
            .collect::<Vec<_>>()
    };
    steps.extend(trim(
        "Complete",
        spec.successful_jobs_history_limit.unwrap_or(3),
    ));
    steps.extend(trim("Failed", spec.failed_jobs_history_limit.unwrap_or(1)));

    let before = cj.status.as_ref();
    let last_success = owned
        .iter()
        .filter(|j| finished(j) == Some("Complete"))
        .filter_map(|j| j.status.as_ref()?.completion_time.clone())
        .max_by_key(|t| t.0);
    let after = CronJobStatus {
        active: Some(
            active
                .iter()
                .map(|j| ObjectReference {
                    api_version: Some(Job::api_version(&()).into_owned()),
                    kind: Some(Job::kind(&()).into_owned()),
                    name: j.metadata.name.clone(),
                    namespace: j.metadata.namespace.clone(),
                    uid: j.metadata.uid.clone(),
                    ..ObjectReference::default()
                })
                .collect(),
        ),
        last_schedule_time: scheduled
            .map(Time)
            .or_else(|| before.and_then(|s| s.last_schedule_time.clone())),
        // Kept once known, even after the Job it came from is trimmed from history.
        last_successful_time: last_success
            .or_else(|| before.and_then(|s| s.last_successful_time.clone())),
    };
    // Wake up for the next scheduled time.
    let next = schedule
        .find_next_occurrence(&now.to_zoned(tz), false)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let wait = (next.timestamp().as_second() - now.as_second()).max(1);
    Ok(Some(Plan {
        steps,
        status: status::changed(before, &after).then_some(after),
        requeue: Duration::from_secs(wait.unsigned_abs()),
    }))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobCondition, JobStatus, JobTemplateSpec};

    use super::*;
    use crate::fixtures::meta;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn cron_job(schedule: &str, created: &str) -> CronJob {
        let mut metadata = meta("tick");
        metadata.creation_timestamp = Some(Time(at(created)));
        CronJob {
            metadata,
            spec: Some(CronJobSpec {
                schedule: schedule.into(),
                job_template: JobTemplateSpec::default(),
                ..CronJobSpec::default()
            }),
            status: None,
        }
    }

    /// A Job of `cj` created at `created`, finished as `outcome` (`None`: still running).
    fn job(cj: &CronJob, name: &str, created: &str, outcome: Option<&str>) -> Arc<Job> {
        let mut metadata = meta(name);
        metadata.creation_timestamp = Some(Time(at(created)));
        metadata.owner_references = Some(vec![ownership::controller_ref(cj)]);
        Arc::new(Job {
            metadata,
            spec: None,
            status: outcome.map(|t| JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: t.into(),
                    status: "True".into(),
                    ..JobCondition::default()
                }]),
                completion_time: (t == "Complete").then(|| Time(at(created))),
                ..JobStatus::default()
            }),
        })
    }

    fn run(cj: &CronJob, jobs: &[Arc<Job>], now: &str) -> Plan {
        plan(&Observed {
            cron_job: cj,
            jobs,
            now: at(now),
        })
        .unwrap()
        .unwrap()
    }

    fn created(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::CreateJob(j) => Some(j.name_any()),
                _ => None,
            })
            .collect()
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

    #[test]
    fn a_due_time_starts_a_job_named_after_it_and_sleeps_until_the_next() {
        let cj = cron_job("*/5 * * * *", "2026-01-01T00:00:00Z");
        let plan = run(&cj, &[], "2026-01-01T00:06:30Z");
        let due = at("2026-01-01T00:05:00Z");
        assert_eq!(created(&plan), [format!("tick-{}", due.as_second() / 60)]);
        let Step::CreateJob(job) = &plan.steps[0] else {
            panic!("{:?}", plan.steps);
        };
        assert_eq!(job.annotations().get(SCHEDULED_AT), Some(&due.to_string()));
        assert_eq!(
            job.metadata.owner_references.as_ref().unwrap()[0].kind,
            "CronJob"
        );
        assert_eq!(plan.status.unwrap().last_schedule_time, Some(Time(due)));
        assert_eq!(plan.requeue, Duration::from_secs(210));
    }

    #[test]
    fn nothing_starts_before_the_first_time_or_while_suspended() {
        let mut cj = cron_job("*/5 * * * *", "2026-01-01T00:00:00Z");
        assert!(created(&run(&cj, &[], "2026-01-01T00:04:59Z")).is_empty());
        cj.spec.as_mut().unwrap().suspend = Some(true);
        assert!(created(&run(&cj, &[], "2026-01-01T00:30:00Z")).is_empty());
    }

    #[test]
    fn forbid_skips_while_a_job_runs_and_replace_swaps_it() {
        let mut cj = cron_job("* * * * *", "2026-01-01T00:00:00Z");
        cj.spec.as_mut().unwrap().concurrency_policy = Some("Forbid".into());
        let running = [job(&cj, "tick-1", "2026-01-01T00:01:00Z", None)];
        let plan = run(&cj, &running, "2026-01-01T00:02:10Z");
        assert!(created(&plan).is_empty());
        assert!(matches!(
            plan.steps[0],
            Step::Event {
                reason: "JobAlreadyActive",
                ..
            }
        ));
        assert_eq!(plan.status.unwrap().last_schedule_time, None);

        cj.spec.as_mut().unwrap().concurrency_policy = Some("Replace".into());
        let plan = run(&cj, &running, "2026-01-01T00:02:10Z");
        assert_eq!(
            plan.steps[0],
            Step::DeleteJob {
                name: "tick-1".into(),
                reason: "SuccessfulDelete"
            }
        );
        assert_eq!(created(&plan).len(), 1);
    }

    #[test]
    fn a_start_past_its_deadline_is_skipped_with_a_warning() {
        let mut cj = cron_job("0 * * * *", "2026-01-01T00:00:00Z");
        cj.spec.as_mut().unwrap().starting_deadline_seconds = Some(60);
        let plan = run(&cj, &[], "2026-01-01T01:05:00Z");
        assert!(created(&plan).is_empty());
        assert!(matches!(
            plan.steps[0],
            Step::Event {
                kind: EventType::Warning,
                reason: "MissSchedule",
                ..
            }
        ));
        assert_eq!(
            plan.status.unwrap().last_schedule_time,
            Some(Time(at("2026-01-01T01:00:00Z")))
        );
    }

    #[test]
    fn history_beyond_the_limits_is_deleted_oldest_first() {
        let cj = cron_job("0 0 1 1 *", "2026-01-01T00:00:00Z");
        let jobs = [
            job(&cj, "ok-1", "2026-01-01T00:01:00Z", Some("Complete")),
            job(&cj, "bad-1", "2026-01-01T00:02:00Z", Some("Failed")),
            job(&cj, "ok-2", "2026-01-01T00:03:00Z", Some("Complete")),
            job(&cj, "ok-3", "2026-01-01T00:04:00Z", Some("Complete")),
            job(&cj, "bad-2", "2026-01-01T00:05:00Z", Some("Failed")),
            job(&cj, "ok-4", "2026-01-01T00:06:00Z", Some("Complete")),
        ];
        let plan = run(&cj, &jobs, "2026-01-01T00:10:00Z");
        let deleted: Vec<&str> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::DeleteJob { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, ["ok-1", "bad-1"]);
        let status = plan.status.unwrap();
        assert_eq!(
            status.last_successful_time,
            Some(Time(at("2026-01-01T00:06:00Z")))
        );
        assert_eq!(status.active, Some(Vec::new()));
    }

    #[test]
    fn a_bad_schedule_is_an_invalid_object() {
        let cj = cron_job("every tuesday", "2026-01-01T00:00:00Z");
        let err = plan(&Observed {
            cron_job: &cj,
            jobs: &[],
            now: at("2026-01-01T00:00:00Z"),
        })
        .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)));
    }
}
