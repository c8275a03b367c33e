//! The Deployment controller: one ReplicaSet per pod template, rolled from old to new by
//! `RollingUpdate` (maxSurge / maxUnavailable) or Recreate, with revision history, pause,
//! progress deadlines and the status `kubectl rollout status` reads.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, ReplicaSet, ReplicaSetSpec},
        core::v1::{Pod, PodTemplateSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::{Action, Config as ControllerConfig},
        reflector::ObjectRef,
        watcher,
    },
};

use crate::{
    Error, Shared,
    events::Recorder,
    ownership::{self, Claim, LabelMatcher},
    pods,
};

/// The annotation carrying a ReplicaSet's (and its Deployment's) revision number.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The label that tells the pods of one template apart.
pub const TEMPLATE_HASH: &str = "pod-template-hash";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// The Deployment controller's state.
#[derive(Debug)]
pub struct Ctx {
    shared: Arc<Shared>,
    recorder: Recorder,
}

/// Runs the controller until dropped.
pub async fn run(
    shared: Arc<Shared>,
    deployments: kube::runtime::reflector::Store<Deployment>,
    deployment_changes: impl Stream<Item = Result<Deployment, watcher::Error>> + Send + 'static,
    replica_sets: impl Stream<Item = Result<ReplicaSet, watcher::Error>> + Send + 'static,
    pods: impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(shared.client.clone(), "deployment-controller"),
        shared: shared.clone(),
    });
    let sets = shared.replica_sets.clone();
    Controller::for_stream(deployment_changes, deployments)
        .with_config(ControllerConfig::default().concurrency(8))
        .owns_stream(replica_sets)
        // Recreate waits for old pods to be gone; their deletions go to the Deployment
        // through the ReplicaSet that owned them.
        .watches_stream(pods, move |pod: Pod| owner_of_owner(&sets, &pod))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn owner_of_owner(
    sets: &kube::runtime::reflector::Store<ReplicaSet>,
    pod: &Pod,
) -> Option<ObjectRef<Deployment>> {
    let rs_ref = ownership::controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet")?;
    let rs = sets.get(&ObjectRef::new(&rs_ref.name).within(&pod.namespace()?))?;
    let deploy = ownership::controller_of(&rs.metadata).filter(|r| r.kind == "Deployment")?;
    Some(ObjectRef::new(&deploy.name).within(&rs.namespace()?))
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
fn error_policy(d: Arc<Deployment>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(deployment = %d.name_any(), ?err, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// The template a ReplicaSet runs, without the hash label, for comparing with the
/// Deployment's.
fn bare_template(template: Option<&PodTemplateSpec>) -> serde_json::Value {
    let mut t = template.cloned().unwrap_or_default();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(TEMPLATE_HASH);
    }
    serde_json::to_value(t).unwrap_or_default()
}

/// The `pod-template-hash` of a template: FNV-1a over its JSON (and the collision count),
/// spelled in the Go `SafeEncodeString` alphabet.
#[must_use]
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(
        serde_json::to_string(template)
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Some(count) = collision_count {
        feed(&count.to_le_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|d| char::from(ALPHABET[usize::from(d - b'0')]))
        .collect()
}

fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// Resolves maxSurge/maxUnavailable against `replicas` like the Go helper: surge rounds up,
/// unavailability down, and both zero means one unavailable.
#[must_use]
pub fn surge_and_unavailable(
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
    replicas: i32,
) -> (i32, i32) {
    let resolve = |v: Option<&IntOrString>, up: bool| -> i32 {
        match v {
            None => {
                let scaled = i64::from(replicas) * 25;
                let v = if up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                };
                i32::try_from(v).unwrap_or(i32::MAX)
            }
            Some(IntOrString::Int(i)) => *i,
            Some(IntOrString::String(s)) => {
                let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
                let scaled = i64::from(replicas) * pct;
                let v = if up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                };
                i32::try_from(v).unwrap_or(i32::MAX)
            }
        }
    };
    let s = resolve(surge, true).max(0);
    let mut u = resolve(unavailable, false).max(0);
    if s == 0 && u == 0 {
        u = 1;
    }
    (s, u)
}

/// Brings one Deployment's ReplicaSets to its declared state and reports status.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
#[expect(
    clippy::too_many_lines,
    reason = "one rollout step reads best in one place"
)]
pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let uid = d.uid().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    if d.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let matcher = LabelMatcher::new(Some(&spec.selector));
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.shared.client.clone(), &ns);

    // The ReplicaSets this Deployment owns (adopting orphans that match).
    let mut sets: Vec<ReplicaSet> = Vec::new();
    for rs in ctx.shared.replica_sets.state() {
        if rs.namespace().as_deref() != Some(ns.as_str()) {
            continue;
        }
        match ownership::claim(&rs.metadata, &uid, &matcher, false) {
            Claim::Owned => sets.push((*rs).clone()),
            Claim::Adopt => {
                let patch =
                    ownership::adopt_patch(&rs.metadata, ownership::controller_ref(d.as_ref()));
                sets.push(
                    rs_api
                        .patch(
                            &rs.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await?,
                );
            }
            Claim::Release => {
                let patch = ownership::release_patch(&rs.metadata, &uid);
                rs_api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
            }
            Claim::Ignore => {}
        }
    }
    sets.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            rs.name_any(),
        )
    });

    let wanted = bare_template(Some(&spec.template));
    let new_index = sets
        .iter()
        .position(|rs| bare_template(rs.spec.as_ref().and_then(|s| s.template.as_ref())) == wanted);
    let max_revision = sets
        .iter()
        .map(|rs| revision_of(&rs.metadata))
        .max()
        .unwrap_or(0);
    let replicas = spec.replicas.unwrap_or(1);
    let paused = spec.paused.unwrap_or(false);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let (max_surge, max_unavailable) = if recreate {
        (0, replicas)
    } else {
        surge_and_unavailable(
            rolling.and_then(|r| r.max_surge.as_ref()),
            rolling.and_then(|r| r.max_unavailable.as_ref()),
            replicas,
        )
    };
    let mut new_rs_created = None;

    // Find or make the ReplicaSet of the current template (not while paused: a paused
    // Deployment only scales).
    let new_rs: Option<ReplicaSet> = match new_index {
        Some(i) => {
            let rs = sets.remove(i);
            let revision = revision_of(&rs.metadata);
            let want_revision = if revision < max_revision {
                max_revision + 1
            } else {
                revision.max(1)
            };
            let cause = d.annotations().get(CHANGE_CAUSE).cloned();
            let needs = revision != want_revision
                || (cause.is_some() && rs.annotations().get(CHANGE_CAUSE) != cause.as_ref());
            if needs && !paused {
                let mut annotations =
                    BTreeMap::from([(REVISION.to_owned(), want_revision.to_string())]);
                if let Some(cause) = cause {
                    annotations.insert(CHANGE_CAUSE.to_owned(), cause);
                }
                let patch = serde_json::json!({"metadata": {"annotations": annotations}});
                Some(
                    rs_api
                        .patch(
                            &rs.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await?,
                )
            } else {
                Some(rs)
            }
        }
        None if paused => None,
        None => {
            let hash = template_hash(
                &spec.template,
                d.status.as_ref().and_then(|s| s.collision_count),
            );
            let mut template = spec.template.clone();
            let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
            meta.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(TEMPLATE_HASH.to_owned(), hash.clone());
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(TEMPLATE_HASH.to_owned(), hash.clone());
            let mut annotations = BTreeMap::from([
                (REVISION.to_owned(), (max_revision + 1).to_string()),
                (
                    "deployment.kubernetes.io/desired-replicas".to_owned(),
                    replicas.to_string(),
                ),
                (
                    "deployment.kubernetes.io/max-replicas".to_owned(),
                    (replicas + max_surge).to_string(),
                ),
            ]);
            if let Some(cause) = d.annotations().get(CHANGE_CAUSE) {
                annotations.insert(CHANGE_CAUSE.to_owned(), cause.clone());
            }
            // A fresh Deployment starts at full size; a rollout starts at zero and grows
            // within its budget below.
            let old_running = sets
                .iter()
                .any(|rs| spec_replicas(rs) > 0 || status_of(rs).0 > 0);
            let initial = if old_running { 0 } else { replicas };
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{hash}")),
                    namespace: Some(ns.clone()),
                    labels: meta.labels.clone(),
                    annotations: Some(annotations),
                    owner_references: Some(vec![ownership::controller_ref(d.as_ref())]),
                    ..ObjectMeta::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(initial),
                    min_ready_seconds: spec.min_ready_seconds,
                    selector,
                    template: Some(template),
                }),
                status: None,
            };
            match rs_api.create(&PostParams::default(), &rs).await {
                Ok(created) => {
                    let message = format!(
                        "Scaled up replica set {} from 0 to {initial}",
                        created.name_any()
                    );
                    ctx.recorder
                        .normal(d.as_ref(), "ScalingReplicaSet", &message)
                        .await;
                    new_rs_created = Some(created.name_any());
                    Some(created)
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    // A ReplicaSet of that name with another template: a hash collision.
                    let api: Api<Deployment> = Api::namespaced(ctx.shared.client.clone(), &ns);
                    let count = d
                        .status
                        .as_ref()
                        .and_then(|s| s.collision_count)
                        .unwrap_or(0)
                        + 1;
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&serde_json::json!({"status": {"collisionCount": count}})),
                    )
                    .await?;
                    return Ok(Action::requeue(Duration::from_millis(100)));
                }
                Err(err) => return Err(err.into()),
            }
        }
    };
    let old: Vec<ReplicaSet> = sets;

    if !paused {
        if let Some(new_rs) = &new_rs {
            if recreate {
                rollout_recreate(&ctx, &d, new_rs, &old, replicas).await?;
            } else {
                rollout_rolling(&ctx, &d, new_rs, &old, replicas, max_surge, max_unavailable)
                    .await?;
            }
        }
        cleanup_history(&ctx, &d, &old, spec.revision_history_limit.unwrap_or(10)).await?;
    } else if let Some(new_rs) = &new_rs {
        // Paused: only keep the total at `replicas` by scaling the newest active set.
        let total: i32 = old.iter().map(spec_replicas).sum::<i32>() + spec_replicas(new_rs);
        if total != replicas && old.iter().all(|rs| spec_replicas(rs) == 0) {
            scale(&ctx, &d, new_rs, replicas).await?;
        }
    }

    // Status, from what the ReplicaSets report.
    let all: Vec<&ReplicaSet> = old.iter().chain(new_rs.iter()).collect();
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let total = sum(&|rs| status_of(rs).0);
    let ready = sum(&|rs| status_of(rs).1);
    let available = sum(&|rs| status_of(rs).2);
    let (updated, new_available) = new_rs
        .as_ref()
        .map_or((0, 0), |rs| (status_of(rs).0, status_of(rs).2));
    let new_name = new_rs
        .as_ref()
        .map(ResourceExt::name_any)
        .unwrap_or_default();
    let now = Timestamp::now();
    let old_conditions = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let find = |t: &str| old_conditions.iter().find(|c| c.type_ == t).cloned();

    let available_cond = if available >= replicas - max_unavailable {
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
    let complete = updated == replicas
        && new_available == replicas
        && total == replicas
        && old.iter().all(|rs| status_of(rs).0 == 0);
    let previous_progress = find("Progressing");
    let deadline = spec.progress_deadline_seconds.unwrap_or(600);
    let progressing = if paused {
        (
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".to_owned(),
            true,
        )
    } else if previous_progress.as_ref().and_then(|c| c.reason.as_deref())
        == Some("DeploymentPaused")
    {
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
    } else if let Some(created) = &new_rs_created {
        (
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{created}\""),
            true,
        )
    } else {
        // Progress = any counter moved since the last status.
        let before = d.status.clone().unwrap_or_default();
        let moved = before.updated_replicas.unwrap_or(0) != updated
            || before.available_replicas.unwrap_or(0) != available
            || before.ready_replicas.unwrap_or(0) != ready
            || before.replicas.unwrap_or(0) != total
            || d.meta().generation != before.observed_generation;
        let last_update = previous_progress
            .as_ref()
            .and_then(|c| c.last_update_time.as_ref())
            .map_or(now, |t| t.0);
        let stalled = !moved && (now.as_second() - last_update.as_second()) > i64::from(deadline);
        let already_exceeded = previous_progress.as_ref().and_then(|c| c.reason.as_deref())
            == Some("ProgressDeadlineExceeded");
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
    let condition = |t: &str, (status, reason, message): (&str, &str, String), touch: bool| {
        let prev = find(t);
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
                Some(Time(now))
            },
            last_update_time: if same && same_reason && !touch {
                prev.as_ref().and_then(|c| c.last_update_time.clone())
            } else {
                Some(Time(now))
            },
        }
    };
    let conditions = vec![
        condition("Available", available_cond, false),
        condition(
            "Progressing",
            (progressing.0, progressing.1, progressing.2),
            progressing.3,
        ),
    ];
    let status = serde_json::json!({
        "observedGeneration": d.meta().generation,
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
        "conditions": conditions,
    });
    let before = serde_json::to_value(d.status.clone().unwrap_or_default()).unwrap_or_default();
    let differs = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ]
    .iter()
    .any(|k| {
        before.get(k).unwrap_or(&serde_json::json!(0))
            != status.get(k).unwrap_or(&serde_json::json!(0))
    }) || strip_times(&before.get("conditions").cloned().unwrap_or_default())
        != strip_times(&status["conditions"]);
    if differs {
        let api: Api<Deployment> = Api::namespaced(ctx.shared.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"status": status})),
        )
        .await?;
    }
    if let Some(new_rs) = &new_rs {
        let revision = revision_of(&new_rs.metadata).to_string();
        if d.annotations().get(REVISION) != Some(&revision) {
            let api: Api<Deployment> = Api::namespaced(ctx.shared.client.clone(), &ns);
            let patch = serde_json::json!({"metadata": {"annotations": {REVISION: revision}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    // Come back to check the progress deadline even if nothing else happens.
    Ok(if complete || paused {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(
            u64::try_from(deadline.clamp(1, 30)).unwrap_or(30),
        ))
    })
}

fn strip_times(conditions: &serde_json::Value) -> serde_json::Value {
    let mut c = conditions.clone();
    if let Some(list) = c.as_array_mut() {
        for item in list {
            if let Some(o) = item.as_object_mut() {
                o.remove("lastTransitionTime");
                o.remove("lastUpdateTime");
            }
        }
    }
    c
}

async fn scale(ctx: &Ctx, d: &Deployment, rs: &ReplicaSet, to: i32) -> Result<(), Error> {
    let from = spec_replicas(rs);
    if from == to {
        return Ok(());
    }
    let api: Api<ReplicaSet> = Api::namespaced(
        ctx.shared.client.clone(),
        &rs.namespace().unwrap_or_default(),
    );
    let patch = serde_json::json!({
        "metadata": {"annotations": {"deployment.kubernetes.io/desired-replicas": d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).to_string()}},
        "spec": {"replicas": to},
    });
    api.patch(
        &rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    let direction = if to > from { "up" } else { "down" };
    ctx.recorder
        .normal(
            d,
            "ScalingReplicaSet",
            &format!(
                "Scaled {direction} replica set {} from {from} to {to}",
                rs.name_any()
            ),
        )
        .await;
    Ok(())
}

async fn rollout_recreate(
    ctx: &Ctx,
    d: &Deployment,
    new_rs: &ReplicaSet,
    old: &[ReplicaSet],
    replicas: i32,
) -> Result<(), Error> {
    for rs in old {
        scale(ctx, d, rs, 0).await?;
    }
    // Only once every old pod is gone does the new template start.
    let uids: Vec<String> = old.iter().filter_map(ResourceExt::uid).collect();
    let old_pods_running = ctx.shared.pods.state().iter().any(|p| {
        ownership::controller_of(&p.metadata).is_some_and(|r| uids.contains(&r.uid))
            && !pods::is_terminal(p)
    });
    if !old_pods_running {
        scale(ctx, d, new_rs, replicas).await?;
    }
    Ok(())
}

async fn rollout_rolling(
    ctx: &Ctx,
    d: &Deployment,
    new_rs: &ReplicaSet,
    old: &[ReplicaSet],
    replicas: i32,
    max_surge: i32,
    max_unavailable: i32,
) -> Result<(), Error> {
    // Grow the new set within the surge budget.
    let new_count = spec_replicas(new_rs);
    let all_count: i32 = old.iter().map(spec_replicas).sum::<i32>() + new_count;
    if new_count > replicas {
        scale(ctx, d, new_rs, replicas).await?;
    } else if new_count < replicas {
        let room = replicas + max_surge - all_count;
        if room > 0 {
            scale(ctx, d, new_rs, new_count + room.min(replicas - new_count)).await?;
        }
    }
    // Shrink old sets while keeping `replicas - maxUnavailable` available.
    let old_count: i32 = old.iter().map(spec_replicas).sum();
    if old_count == 0 {
        return Ok(());
    }
    let new_target = spec_replicas(new_rs).max(new_count);
    let min_available = replicas - max_unavailable;
    let new_unavailable = (new_target - status_of(new_rs).2).max(0);
    let mut budget = all_count - min_available - new_unavailable;
    if budget <= 0 {
        return Ok(());
    }
    // First old pods that are not available anyway: removing them costs nothing.
    let mut targets: Vec<(ReplicaSet, i32)> = old
        .iter()
        .map(|rs| (rs.clone(), spec_replicas(rs)))
        .collect();
    for (rs, target) in &mut targets {
        if budget <= 0 {
            break;
        }
        let unhealthy = (*target - status_of(rs).2).max(0).min(budget);
        if unhealthy > 0 {
            *target -= unhealthy;
            budget -= unhealthy;
        }
    }
    // Then available ones, oldest first, as far as availability allows.
    let available: i32 = old.iter().map(|rs| status_of(rs).2).sum::<i32>() + status_of(new_rs).2;
    let mut removable = (available - min_available).max(0);
    for (rs, target) in &mut targets {
        if removable <= 0 {
            break;
        }
        let healthy = (*target).min(status_of(rs).2).min(removable);
        *target -= healthy;
        removable -= healthy;
    }
    for (rs, target) in targets {
        if target != spec_replicas(&rs) {
            scale(ctx, d, &rs, target).await?;
        }
    }
    Ok(())
}

async fn cleanup_history(
    ctx: &Ctx,
    d: &Deployment,
    old: &[ReplicaSet],
    limit: i32,
) -> Result<(), Error> {
    let mut idle: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| {
            spec_replicas(rs) == 0
                && status_of(rs).0 == 0
                && rs.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let keep = usize::try_from(limit.max(0)).unwrap_or(0);
    if idle.len() <= keep {
        return Ok(());
    }
    idle.sort_by_key(|rs| revision_of(&rs.metadata));
    let api: Api<ReplicaSet> = Api::namespaced(
        ctx.shared.client.clone(),
        &d.namespace().unwrap_or_default(),
    );
    for rs in &idle[..idle.len() - keep] {
        match api
            .delete(&rs.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        let pct = |s: &str| IntOrString::String(s.to_owned());
        assert_eq!(
            surge_and_unavailable(Some(&pct("25%")), Some(&pct("25%")), 10),
            (3, 2)
        );
        assert_eq!(surge_and_unavailable(None, None, 10), (3, 2));
        assert_eq!(
            surge_and_unavailable(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 3),
            (0, 1)
        );
        assert_eq!(
            surge_and_unavailable(Some(&IntOrString::Int(1)), Some(&IntOrString::Int(0)), 3),
            (1, 0)
        );
    }

    #[test]
    fn template_hash_changes_with_the_template_and_the_collision_count() {
        let mut t = PodTemplateSpec::default();
        let a = template_hash(&t, None);
        assert_eq!(a, template_hash(&t, None));
        assert_ne!(a, template_hash(&t, Some(1)));
        t.metadata = Some(ObjectMeta {
            labels: Some(BTreeMap::from([("a".into(), "b".into())])),
            ..ObjectMeta::default()
        });
        assert_ne!(a, template_hash(&t, None));
        assert!(
            a.bytes()
                .all(|c| b"bcdfghjklmnpqrstvwxz2456789".contains(&c))
        );
    }
}
