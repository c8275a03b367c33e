//! What a Job needs done, decided from the cache and the time alone: pods to start (within
//! parallelism, after the failure back-off), pods to stop, the terminal condition when
//! completions are reached, the back-off limit or the deadline passed, and deletion once
//! the TTL after finishing is over.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobCondition, JobStatus},
        core::v1::{EnvVar, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::ResourceExt;
use skiff_control_runtime::{events::EventType, ownership, status};
use skiff_types::RestartPolicy;

use crate::pods;

/// The annotation (and label) carrying an Indexed Job pod's completion index.
pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// First retry delay after a failed pod; doubles per failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest retry delay after failed pods.
pub const BACKOFF_MAX: Duration = Duration::from_mins(6);

/// What the plan is made from.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The Job.
    pub job: &'a Job,
    /// Pods of its namespace (others are ignored).
    pub pods: &'a [Arc<Pod>],
    /// Whether the cache shows every pod this controller last created.
    pub caught_up: bool,
    /// The time.
    pub now: Timestamp,
}

/// One thing to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Delete the Job: its TTL after finishing is over.
    DeleteJob,
    /// Stop a pod that still runs (the Job is finished or suspended).
    DeletePod(String),
    /// Start a pod.
    CreatePod(Box<Pod>),
    /// Report something about the Job.
    Event {
        /// Normal or Warning.
        kind: EventType,
        /// The reason.
        reason: String,
        /// The message.
        message: String,
    },
}

/// The steps, the status to write (when it changed) and when to look again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In order.
    pub steps: Vec<Step>,
    /// The new status, if it differs from the current one.
    pub status: Option<JobStatus>,
    /// When to look again without any change (back-off, deadline, TTL).
    pub requeue: Option<Duration>,
}

fn condition_true(job: &Job, type_: &str) -> Option<Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
        })
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.annotations().get(INDEX)?.parse().ok()
}

fn finished_at(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
}

fn secs(d: i64) -> Duration {
    Duration::from_secs(d.unsigned_abs())
}

/// `0-2,4` for indexes {0, 1, 2, 4}, as `status.completedIndexes` spells them.
#[must_use]
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// The pod the Job runs for `index` (Indexed) or any index (`None`).
fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let mut pod = pods::from_template(
        &spec.template,
        &job.namespace().unwrap_or_default(),
        None,
        Some(match index {
            Some(i) => format!("{name}-{i}-"),
            None => format!("{name}-"),
        }),
        ownership::controller_ref(job),
    );
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("batch.kubernetes.io/job-name", name.as_str()),
        ("controller-uid", uid.as_str()),
        ("job-name", name.as_str()),
    ] {
        labels.entry(k.to_owned()).or_insert_with(|| v.to_owned());
    }
    if let Some(i) = index {
        labels.insert(INDEX.to_owned(), i.to_string());
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(INDEX.to_owned(), i.to_string());
        let pod_spec = pod.spec.get_or_insert_with(Default::default);
        pod_spec.hostname = Some(format!("{name}-{i}"));
        for c in &mut pod_spec.containers {
            c.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: "JOB_COMPLETION_INDEX".to_owned(),
                value: Some(i.to_string()),
                value_from: None,
            });
        }
    }
    pod
}

/// Decides one step of the Job.
#[must_use]
#[expect(
    clippy::too_many_lines,
    reason = "the Job state machine reads best in one place"
)]
pub fn plan(o: &Observed<'_>) -> Plan {
    let job = o.job;
    let now = o.now;
    if job.metadata.deletion_timestamp.is_some() {
        return Plan::default();
    }
    let spec = job.spec.clone().unwrap_or_default();

    // A finished Job only waits for its TTL.
    if let Some(at) = condition_true(job, "Complete").or_else(|| condition_true(job, "Failed")) {
        let Some(ttl) = spec.ttl_seconds_after_finished else {
            return Plan::default();
        };
        let left = at.as_second() + i64::from(ttl) - now.as_second();
        return if left > 0 {
            Plan {
                requeue: Some(secs(left)),
                ..Plan::default()
            }
        } else {
            Plan {
                steps: vec![Step::DeleteJob],
                ..Plan::default()
            }
        };
    }

    let ns = job.namespace();
    let uid = job.uid().unwrap_or_default();
    let owned: Vec<&Arc<Pod>> = o
        .pods
        .iter()
        .filter(|p| p.namespace() == ns && ownership::is_controlled_by(&p.metadata, &uid))
        .collect();
    let active: Vec<&Arc<Pod>> = owned
        .iter()
        .copied()
        .filter(|p| pods::is_active(p))
        .collect();
    let succeeded: Vec<&Arc<Pod>> = owned
        .iter()
        .copied()
        .filter(|p| pods::phase(p) == "Succeeded")
        .collect();
    let failed: Vec<&Arc<Pod>> = owned
        .iter()
        .copied()
        .filter(|p| pods::phase(p) == "Failed")
        .collect();
    let ready = active.iter().filter(|p| pods::is_ready(p)).count();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or(now, |t| t.0);
    let suspended = spec.suspend.unwrap_or(false);
    let restart_policy = RestartPolicy::from_field(
        spec.template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref()),
    )
    .unwrap_or_default();

    let completed_indexes: BTreeSet<i32> = succeeded.iter().filter_map(|p| index_of(p)).collect();
    let succeeded_count = i32::try_from(succeeded.len()).unwrap_or(i32::MAX);
    let done = match (indexed, completions) {
        (true, Some(c)) => (0..c).all(|i| completed_indexes.contains(&i)),
        (false, Some(c)) => succeeded_count >= c,
        // No completions: done once one pod succeeded and none is left running.
        (_, None) => !succeeded.is_empty() && active.is_empty(),
    };
    let failed_count = i32::try_from(failed.len()).unwrap_or(i32::MAX);
    // With OnFailure, containers restart in place: their restarts are the failures.
    let restarted: i32 = if restart_policy == RestartPolicy::OnFailure {
        active.iter().map(|p| restarts(p)).sum()
    } else {
        0
    };
    let failure: Option<(&str, &str)> = if failed_count + restarted > backoff_limit {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if let Some(deadline) = spec.active_deadline_seconds
        && !suspended
        && now.as_second() - start.as_second() >= deadline
    {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    };

    let mut steps = Vec::new();
    let mut conditions: Option<Vec<JobCondition>> = None;
    let mut requeue: Option<Duration> = None;
    if done || failure.is_some() {
        // Stop what still runs.
        steps.extend(active.iter().map(|p| Step::DeletePod(p.name_any())));
        let (type_, reason, message) = match failure {
            Some((reason, message)) => ("Failed", reason, message),
            None => (
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ),
        };
        // Kubernetes 1.31+ reports the terminal state first as FailureTarget/SuccessCriteriaMet.
        let interim = if failure.is_some() {
            "FailureTarget"
        } else {
            "SuccessCriteriaMet"
        };
        conditions = Some(
            [interim, type_]
                .into_iter()
                .map(|t| JobCondition {
                    type_: t.to_owned(),
                    status: "True".to_owned(),
                    reason: Some(reason.to_owned()),
                    message: Some(message.to_owned()),
                    last_probe_time: Some(Time(now)),
                    last_transition_time: Some(Time(now)),
                })
                .collect(),
        );
        steps.push(if failure.is_some() {
            Step::Event {
                kind: EventType::Warning,
                reason: reason.to_owned(),
                message: message.to_owned(),
            }
        } else {
            Step::Event {
                kind: EventType::Normal,
                reason: "Completed".to_owned(),
                message: "Job completed".to_owned(),
            }
        });
    } else if suspended {
        steps.extend(active.iter().map(|p| Step::DeletePod(p.name_any())));
    } else if o.caught_up {
        // Exponential back-off after failures, from the latest failure.
        let last_failure = failed.iter().filter_map(|p| finished_at(p)).max();
        let delay = if failed_count == 0 {
            Duration::ZERO
        } else {
            let doublings = u32::try_from(failed_count - 1).unwrap_or(0).min(10);
            (BACKOFF_BASE * 2_u32.pow(doublings)).min(BACKOFF_MAX)
        };
        let waited = last_failure.map_or(i64::MAX, |t| now.as_second() - t.as_second());
        let delay_secs = i64::try_from(delay.as_secs()).unwrap_or(i64::MAX);
        if waited < delay_secs {
            requeue = Some(secs(delay_secs - waited));
        } else {
            let active_count = i32::try_from(active.len()).unwrap_or(i32::MAX);
            if indexed {
                let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
                let room = usize::try_from((parallelism - active_count).max(0)).unwrap_or(0);
                steps.extend(
                    (0..completions.unwrap_or(1))
                        .filter(|i| !completed_indexes.contains(i) && !running.contains(i))
                        .take(room)
                        .map(|i| Step::CreatePod(Box::new(pod_for(job, Some(i))))),
                );
            } else {
                let remaining = completions
                    .map_or(if succeeded.is_empty() { parallelism } else { 0 }, |c| {
                        c - succeeded_count
                    });
                let want = parallelism.min(remaining).max(0);
                for _ in active_count..want {
                    steps.push(Step::CreatePod(Box::new(pod_for(job, None))));
                }
            }
        }
    }

    let to_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let terminal = conditions.is_some();
    let before = job.status.as_ref();
    let mut after = JobStatus {
        active: Some(if terminal { 0 } else { to_i32(active.len()) }),
        succeeded: Some(succeeded_count),
        failed: Some(failed_count),
        ready: Some(to_i32(ready)),
        start_time: Some(Time(start)),
        ..before.cloned().unwrap_or_default()
    };
    if indexed {
        after.completed_indexes = Some(format_indexes(&completed_indexes));
    }
    if done && failure.is_none() {
        after.completion_time = Some(Time(now));
    }
    if let Some(conditions) = conditions {
        after.conditions = Some(conditions);
    }
    if let Some(deadline) = spec.active_deadline_seconds.filter(|_| !terminal) {
        let left = start.as_second() + deadline - now.as_second();
        if left > 0 {
            let at = secs(left);
            requeue = Some(requeue.map_or(at, |r| r.min(at)));
        }
    }
    Plan {
        steps,
        status: status::changed(before, &after).then_some(after),
        requeue,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{batch::v1::JobSpec, core::v1::ContainerStatus};

    use super::*;
    use crate::fixtures::{at, meta, pod, template};

    fn job(completions: Option<i32>, parallelism: i32) -> Job {
        let mut t = template(&[]);
        t.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        Job {
            metadata: meta("work"),
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                backoff_limit: Some(2),
                template: t,
                ..JobSpec::default()
            }),
            status: None,
        }
    }

    fn member(j: &Job, name: &str) -> crate::fixtures::PodFixture {
        pod(name).owned_by(j).on("n1")
    }

    fn run(j: &Job, pods: &[Arc<Pod>], now: i64) -> Plan {
        plan(&Observed {
            job: j,
            pods,
            caught_up: true,
            now: at(now),
        })
    }

    fn created(plan: &Plan) -> Vec<&Pod> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::CreatePod(p) => Some(p.as_ref()),
                _ => None,
            })
            .collect()
    }

    fn condition<'a>(status: &'a JobStatus, t: &str) -> Option<&'a JobCondition> {
        status.conditions.iter().flatten().find(|c| c.type_ == t)
    }

    #[test]
    fn completed_indexes_are_written_as_ranges() {
        assert_eq!(
            format_indexes(&BTreeSet::from([0, 1, 2, 4, 6, 7])),
            "0-2,4,6-7"
        );
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn a_new_job_starts_parallelism_pods_labelled_with_its_name() {
        let j = job(Some(5), 2);
        let plan = run(&j, &[], 100);
        let pods = created(&plan);
        assert_eq!(pods.len(), 2);
        let labels = pods[0].metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get("job-name").map(String::as_str), Some("work"));
        assert_eq!(
            labels
                .get("batch.kubernetes.io/controller-uid")
                .map(String::as_str),
            Some("uid-work")
        );
        let status = plan.status.unwrap();
        assert_eq!(status.start_time, Some(Time(at(100))));
        assert_eq!(
            status.active,
            Some(0),
            "counted from the cache, not the plan"
        );
    }

    #[test]
    fn nothing_starts_while_the_cache_lags_behind_earlier_creates() {
        let j = job(Some(1), 1);
        let mut o = Observed {
            job: &j,
            pods: &[],
            caught_up: false,
            now: at(0),
        };
        assert!(created(&plan(&o)).is_empty());
        o.caught_up = true;
        assert_eq!(created(&plan(&o)).len(), 1);
    }

    #[test]
    fn indexed_pods_get_the_missing_indexes_their_env_and_hostname() {
        let mut j = job(Some(3), 3);
        j.spec.as_mut().unwrap().completion_mode = Some("Indexed".into());
        let done = member(&j, "work-0-x")
            .annotated(INDEX, "0")
            .finished("Succeeded", 50)
            .build();
        let plan = run(&j, &[done], 100);
        let pods = created(&plan);
        let indexes: Vec<&str> = pods
            .iter()
            .map(|p| p.annotations().get(INDEX).unwrap().as_str())
            .collect();
        assert_eq!(indexes, ["1", "2"]);
        let spec = pods[0].spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("work-1"));
        let env = spec.containers[0].env.as_ref().unwrap();
        assert_eq!(
            (env[0].name.as_str(), env[0].value.as_deref()),
            ("JOB_COMPLETION_INDEX", Some("1"))
        );
        assert_eq!(plan.status.unwrap().completed_indexes.as_deref(), Some("0"));
    }

    #[test]
    fn reaching_the_completions_completes_the_job_and_stops_the_rest() {
        let j = job(Some(2), 3);
        let pods = [
            member(&j, "a").finished("Succeeded", 50).build(),
            member(&j, "b").finished("Succeeded", 60).build(),
            member(&j, "c").ready_since(10).build(),
        ];
        let plan = run(&j, &pods, 100);
        assert_eq!(plan.steps[0], Step::DeletePod("c".into()));
        assert!(matches!(&plan.steps[1], Step::Event { reason, .. } if reason == "Completed"));
        let status = plan.status.unwrap();
        assert_eq!(condition(&status, "Complete").unwrap().status, "True");
        assert!(condition(&status, "SuccessCriteriaMet").is_some());
        assert_eq!(status.completion_time, Some(Time(at(100))));
        assert_eq!((status.active, status.succeeded), (Some(0), Some(2)));
    }

    #[test]
    fn failures_past_the_backoff_limit_fail_the_job() {
        let j = job(Some(1), 1);
        let pods: Vec<Arc<Pod>> = (0..3)
            .map(|i| {
                member(&j, &format!("f{i}"))
                    .finished("Failed", 10 * i)
                    .build()
            })
            .collect();
        let plan = run(&j, &pods, 100);
        let status = plan.status.clone().unwrap();
        let failed = condition(&status, "Failed").unwrap();
        assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert!(condition(&status, "FailureTarget").is_some());
        assert!(plan.steps.iter().any(|s| matches!(
            s,
            Step::Event {
                kind: EventType::Warning,
                ..
            }
        )));
        assert!(created(&plan).is_empty());
    }

    #[test]
    fn container_restarts_count_as_failures_under_on_failure() {
        let mut j = job(Some(1), 1);
        j.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("OnFailure".into());
        let crashing = member(&j, "c")
            .running()
            .with(|p| {
                p.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
                    name: "c".into(),
                    restart_count: 3,
                    ..ContainerStatus::default()
                }]);
            })
            .build();
        let plan = run(&j, &[crashing], 100);
        let status = plan.status.unwrap();
        assert_eq!(
            condition(&status, "Failed").and_then(|c| c.reason.as_deref()),
            Some("BackoffLimitExceeded")
        );
        assert_eq!(plan.steps[0], Step::DeletePod("c".into()));
    }

    #[test]
    fn a_retry_waits_out_the_exponential_back_off_from_the_last_failure() {
        let j = job(Some(1), 1);
        let pods = [
            member(&j, "f0").finished("Failed", 60).build(),
            member(&j, "f1").finished("Failed", 90).build(),
        ];
        // Two failures: 20 s from the last one, at 90.
        let early = run(&j, &pods, 100);
        assert!(created(&early).is_empty());
        assert_eq!(early.requeue, Some(Duration::from_secs(10)));
        assert_eq!(created(&run(&j, &pods, 110)).len(), 1);
    }

    #[test]
    fn the_active_deadline_fails_the_job_and_is_waited_for_until_then() {
        let mut j = job(Some(1), 1);
        j.spec.as_mut().unwrap().active_deadline_seconds = Some(30);
        j.status = Some(JobStatus {
            start_time: Some(Time(at(100))),
            ..JobStatus::default()
        });
        let running = [member(&j, "r").ready_since(100).build()];
        let before = run(&j, &running, 110);
        assert_eq!(before.requeue, Some(Duration::from_secs(20)));
        let after = run(&j, &running, 130).status.unwrap();
        assert_eq!(
            condition(&after, "Failed").and_then(|c| c.reason.as_deref()),
            Some("DeadlineExceeded")
        );
    }

    #[test]
    fn a_finished_job_is_deleted_once_its_ttl_is_over() {
        let mut j = job(Some(1), 1);
        j.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(60);
        j.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Complete".into(),
                status: "True".into(),
                last_transition_time: Some(Time(at(100))),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        assert_eq!(
            run(&j, &[], 130),
            Plan {
                requeue: Some(Duration::from_secs(30)),
                ..Plan::default()
            }
        );
        assert_eq!(run(&j, &[], 160).steps, [Step::DeleteJob]);
        j.spec.as_mut().unwrap().ttl_seconds_after_finished = None;
        assert_eq!(run(&j, &[], 1_000), Plan::default());
    }

    #[test]
    fn a_suspended_job_stops_its_pods_and_starts_none() {
        let mut j = job(Some(3), 2);
        j.spec.as_mut().unwrap().suspend = Some(true);
        let plan = run(&j, &[member(&j, "r").ready_since(1).build()], 100);
        assert_eq!(plan.steps, [Step::DeletePod("r".into())]);
    }
}
