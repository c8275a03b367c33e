//! The status a Deployment reports from its ReplicaSets: the counters and the `Available`
//! and `Progressing` conditions `kubectl rollout status` reads, with the progress deadline.

use k8s_openapi::{
    api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::ResourceExt;

/// `(status.replicas, readyReplicas, availableReplicas)` of a ReplicaSet.
#[must_use]
pub fn counts(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// What the status is computed from.
#[derive(Debug)]
pub struct Rollout<'a> {
    /// The Deployment.
    pub deployment: &'a Deployment,
    /// Its ReplicaSets of other templates.
    pub old: &'a [ReplicaSet],
    /// The ReplicaSet of the current template, if there is one yet.
    pub new: Option<&'a ReplicaSet>,
    /// Whether this step creates the new ReplicaSet.
    pub creating: bool,
    /// `spec.replicas`.
    pub replicas: i32,
    /// Resolved `maxUnavailable`.
    pub max_unavailable: i32,
    /// `spec.paused`.
    pub paused: bool,
    /// The time.
    pub now: Timestamp,
}

/// The status the Deployment should report, and whether the rollout is complete.
#[must_use]
#[expect(
    clippy::too_many_lines,
    reason = "the two conditions and their precedence read best in one place"
)]
pub fn status(r: &Rollout<'_>) -> (DeploymentStatus, bool) {
    let d = r.deployment;
    let all: Vec<&ReplicaSet> = r.old.iter().chain(r.new).collect();
    let sum = |f: &dyn Fn((i32, i32, i32)) -> i32| all.iter().map(|rs| f(counts(rs))).sum::<i32>();
    let total = sum(&|c| c.0);
    let ready = sum(&|c| c.1);
    let available = sum(&|c| c.2);
    let (updated, new_available) = r.new.map_or((0, 0), |rs| (counts(rs).0, counts(rs).2));
    let new_name = r.new.map(ResourceExt::name_any).unwrap_or_default();
    let before = d.status.clone().unwrap_or_default();
    let previous = |t: &str| {
        before
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .cloned()
    };
    let spec = d.spec.as_ref();
    let deadline = spec
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);

    let available_condition = if available >= r.replicas - r.max_unavailable {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".to_owned(),
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".to_owned(),
        )
    };
    let complete = updated == r.replicas
        && new_available == r.replicas
        && total == r.replicas
        && r.old.iter().all(|rs| counts(rs).0 == 0);
    let previous_progress = previous("Progressing");
    let previous_reason = previous_progress.as_ref().and_then(|c| c.reason.as_deref());
    // (status, reason, message, whether this counts as progress now)
    let progressing = if r.paused {
        (
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".to_owned(),
            true,
        )
    } else if previous_reason == Some("DeploymentPaused") {
        (
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed".to_owned(),
            true,
        )
    } else if complete {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            false,
        )
    } else if r.creating {
        (
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{new_name}\""),
            true,
        )
    } else {
        // Progress = any counter moved since the last status.
        let moved = before.updated_replicas.unwrap_or(0) != updated
            || before.available_replicas.unwrap_or(0) != available
            || before.ready_replicas.unwrap_or(0) != ready
            || before.replicas.unwrap_or(0) != total
            || d.metadata.generation != before.observed_generation;
        let last_update = previous_progress
            .as_ref()
            .and_then(|c| c.last_update_time.as_ref())
            .map_or(r.now, |t| t.0);
        let stalled = !moved && (r.now.as_second() - last_update.as_second()) > i64::from(deadline);
        let already_exceeded = previous_reason == Some("ProgressDeadlineExceeded");
        if stalled || (already_exceeded && !moved) {
            (
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                false,
            )
        } else {
            (
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                moved,
            )
        }
    };
    let condition = |t: &str, status: &str, reason: &str, message: String, touch: bool| {
        let prev = previous(t);
        let same = prev.as_ref().is_some_and(|c| c.status == status);
        let same_reason = prev
            .as_ref()
            .is_some_and(|c| c.reason.as_deref() == Some(reason));
        DeploymentCondition {
            type_: t.to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message),
            last_transition_time: if same {
                prev.as_ref().and_then(|c| c.last_transition_time.clone())
            } else {
                Some(Time(r.now))
            },
            last_update_time: if same && same_reason && !touch {
                prev.as_ref().and_then(|c| c.last_update_time.clone())
            } else {
                Some(Time(r.now))
            },
        }
    };
    let (a_status, a_reason, a_message) = available_condition;
    let (p_status, p_reason, p_message, touch) = progressing;
    let after = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((r.replicas - available).max(0)),
        conditions: Some(vec![
            condition("Available", a_status, a_reason, a_message, false),
            condition("Progressing", p_status, p_reason, p_message, touch),
        ]),
        ..before
    };
    (after, complete)
}

/// `status` without the conditions' timestamps: a condition touched with nothing else
/// changed (a paused Deployment's, every reconcile) is not worth a write.
#[must_use]
pub fn without_times(status: &DeploymentStatus) -> DeploymentStatus {
    let mut s = status.clone();
    for c in s.conditions.iter_mut().flatten() {
        c.last_transition_time = None;
        c.last_update_time = None;
    }
    s
}
