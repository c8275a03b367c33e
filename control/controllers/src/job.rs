//! The Job controller: runs pods until `completions` succeed (`NonIndexed` or `Indexed`), at
//! most `parallelism` at a time, retrying failures with exponential back-off up to
//! `backoffLimit`, stopping at `activeDeadlineSeconds`, and removing finished Jobs after
//! `ttlSecondsAfterFinished`.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{EnvVar, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, reflector::Store, watcher},
};
use serde_json::json;

use crate::{Error, Shared, events::Recorder, expectations::Expectations, ownership, pods};

const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// First retry delay after a failed pod; doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_mins(6);

/// The Job controller's state.
#[derive(Debug)]
pub struct Ctx {
    shared: Arc<Shared>,
    recorder: Recorder,
    expectations: Expectations,
}

/// Runs the controller until dropped.
pub async fn run(
    shared: Arc<Shared>,
    jobs: Store<Job>,
    job_changes: impl Stream<Item = Result<Job, watcher::Error>> + Send + 'static,
    pods: impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(shared.client.clone(), "job-controller"),
        expectations: Expectations::default(),
        shared,
    });
    Controller::for_stream(job_changes, jobs)
        .owns_stream(pods)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
fn error_policy(job: Arc<Job>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(job = %job.name_any(), ?err, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
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
    pod.annotations().get(INDEX_ANNOTATION)?.parse().ok()
}

fn finished_at(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0)
        })
        .max()
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

/// Drives one Job a step.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
#[expect(
    clippy::too_many_lines,
    reason = "the Job state machine reads best in one place"
)]
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let key = format!("{ns}/{name}");
    let uid = job.uid().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let pod_api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let now = Timestamp::now();
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }

    // A finished Job only waits for its TTL.
    let finished = condition_true(&job, "Complete").or_else(|| condition_true(&job, "Failed"));
    if let Some(at) = finished {
        let Some(ttl) = spec.ttl_seconds_after_finished else {
            return Ok(Action::await_change());
        };
        let left = at.as_second() + i64::from(ttl) - now.as_second();
        if left > 0 {
            return Ok(Action::requeue(Duration::from_secs(left.unsigned_abs())));
        }
        tracing::info!(job = %name, "deleting a finished job after its TTL");
        match jobs.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
        return Ok(Action::await_change());
    }

    let owned: Vec<Arc<Pod>> = ctx
        .shared
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns.as_str())
                && ownership::is_controlled_by(&p.metadata, &uid)
        })
        .collect();
    let store = &ctx.shared.pods;
    let caught_up = ctx.expectations.satisfied(
        &key,
        |pod| {
            store
                .get(&kube::runtime::reflector::ObjectRef::new(pod).within(&ns))
                .is_some()
        },
        |pod_uid| {
            owned.iter().any(|p| {
                p.metadata.uid.as_deref() == Some(pod_uid)
                    && p.metadata.deletion_timestamp.is_none()
            })
        },
    );
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| pods::is_active(p)).collect();
    let succeeded: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| pods::phase(p) == "Succeeded")
        .collect();
    let failed: Vec<&Arc<Pod>> = owned
        .iter()
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

    let completed_indexes: BTreeSet<i32> = succeeded.iter().filter_map(|p| index_of(p)).collect();
    let done = match (indexed, completions) {
        (true, Some(c)) => (0..c).all(|i| completed_indexes.contains(&i)),
        (false, Some(c)) => i32::try_from(succeeded.len()).unwrap_or(i32::MAX) >= c,
        // No completions: done once one pod succeeded and none is left running.
        (_, None) => !succeeded.is_empty() && active.is_empty(),
    };
    let failed_count = i32::try_from(failed.len()).unwrap_or(i32::MAX);
    let mut failure: Option<(&str, String)> = None;
    if failed_count > backoff_limit {
        failure = Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".to_owned(),
        ));
    } else if let Some(deadline) = spec.active_deadline_seconds
        && !suspended
        && now.as_second() - start.as_second() >= deadline
    {
        failure = Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline".to_owned(),
        ));
    }

    let mut conditions: Vec<serde_json::Value> = Vec::new();
    let mut requeue: Option<Duration> = None;
    if done || failure.is_some() {
        // Stop what still runs.
        for pod in &active {
            match pod_api
                .delete(&pod.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(err.into()),
            }
        }
        let (type_, reason, message) = match &failure {
            Some((reason, message)) => ("Failed", *reason, message.clone()),
            None => (
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods".to_owned(),
            ),
        };
        // Kubernetes 1.31+ reports the terminal state first as FailureTarget/SuccessCriteriaMet.
        let interim = if failure.is_some() {
            "FailureTarget"
        } else {
            "SuccessCriteriaMet"
        };
        for t in [interim, type_] {
            conditions.push(json!({
                "type": t, "status": "True", "reason": reason, "message": message,
                "lastProbeTime": Time(now), "lastTransitionTime": Time(now),
            }));
        }
        if failure.is_some() {
            ctx.recorder.warning(job.as_ref(), reason, &message).await;
        } else {
            ctx.recorder
                .normal(job.as_ref(), "Completed", "Job completed")
                .await;
        }
    } else if caught_up && !suspended {
        // Exponential back-off after failures, from the latest failure.
        let last_failure = failed.iter().filter_map(|p| finished_at(p)).max();
        let delay = if failed_count == 0 {
            Duration::ZERO
        } else {
            (BACKOFF_BASE * 2_u32.pow(u32::try_from(failed_count - 1).unwrap_or(0).min(10)))
                .min(BACKOFF_MAX)
        };
        let waited = last_failure.map_or(i64::MAX, |t| now.as_second() - t.as_second());
        let delay_secs = i64::try_from(delay.as_secs()).unwrap_or(i64::MAX);
        if waited < delay_secs {
            requeue = Some(Duration::from_secs((delay_secs - waited).unsigned_abs()));
        } else {
            let active_count = i32::try_from(active.len()).unwrap_or(i32::MAX);
            let mut to_create: Vec<Option<i32>> = Vec::new();
            if indexed {
                let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
                let room = usize::try_from((parallelism - active_count).max(0)).unwrap_or(0);
                to_create = (0..completions.unwrap_or(1))
                    .filter(|i| !completed_indexes.contains(i) && !running.contains(i))
                    .take(room)
                    .map(Some)
                    .collect();
            } else {
                let remaining = completions
                    .map_or(if succeeded.is_empty() { parallelism } else { 0 }, |c| {
                        c - i32::try_from(succeeded.len()).unwrap_or(i32::MAX)
                    });
                let want = parallelism.min(remaining).max(0);
                for _ in active_count..want {
                    to_create.push(None);
                }
            }
            for index in to_create {
                create_pod(&job, &ctx, &pod_api, &key, index).await?;
            }
        }
    } else if suspended {
        for pod in &active {
            let _ = pod_api
                .delete(&pod.name_any(), &DeleteParams::default())
                .await;
        }
    }

    let mut status = json!({
        "active": active.len(),
        "succeeded": succeeded.len(),
        "failed": failed.len(),
        "ready": ready,
        "startTime": Time(start),
    });
    if indexed {
        status["completedIndexes"] = json!(format_indexes(&completed_indexes));
    }
    if done && failure.is_none() {
        status["completionTime"] = json!(Time(now));
        status["active"] = json!(0);
    }
    if !conditions.is_empty() {
        status["conditions"] = json!(conditions);
        status["active"] = json!(0);
    }
    let before = serde_json::to_value(job.status.clone().unwrap_or_default()).unwrap_or_default();
    let changed = ["active", "succeeded", "failed", "ready", "completedIndexes"]
        .iter()
        .any(|k| before.get(k).unwrap_or(&json!(0)) != status.get(k).unwrap_or(&json!(0)))
        || before.get("startTime").is_none()
        || !conditions.is_empty();
    if changed {
        jobs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    if let Some(deadline) = spec.active_deadline_seconds {
        let left = start.as_second() + deadline - now.as_second();
        if left > 0 {
            let at = Duration::from_secs(left.unsigned_abs());
            requeue = Some(requeue.map_or(at, |r| r.min(at)));
        }
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

async fn create_pod(
    job: &Job,
    ctx: &Ctx,
    api: &Api<Pod>,
    key: &str,
    index: Option<i32>,
) -> Result<(), Error> {
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
        labels.insert(INDEX_ANNOTATION.to_owned(), i.to_string());
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(INDEX_ANNOTATION.to_owned(), i.to_string());
        pod.spec.get_or_insert_with(Default::default).hostname = Some(format!("{name}-{i}"));
        for c in &mut pod.spec.get_or_insert_with(Default::default).containers {
            c.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: "JOB_COMPLETION_INDEX".to_owned(),
                value: Some(i.to_string()),
                value_from: None,
            });
        }
    }
    match api.create(&PostParams::default(), &pod).await {
        Ok(created) => {
            ctx.expectations.created(key, &created.name_any());
            ctx.recorder
                .normal(
                    job,
                    "SuccessfulCreate",
                    &format!("Created pod: {}", created.name_any()),
                )
                .await;
            Ok(())
        }
        Err(err) => {
            let message = match &err {
                kube::Error::Api(s) => s.message.clone(),
                other => other.to_string(),
            };
            ctx.recorder
                .warning(job, "FailedCreate", &format!("Error creating: {message}"))
                .await;
            Err(err.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_are_written_as_ranges() {
        assert_eq!(
            format_indexes(&BTreeSet::from([0, 1, 2, 4, 6, 7])),
            "0-2,4,6-7"
        );
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }
}
