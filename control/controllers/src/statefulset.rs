//! The StatefulSet controller: pods with stable names `<name>-<ordinal>`, created in order
//! and removed in reverse (OrderedReady) or all at once (Parallel), updated from the
//! highest ordinal down to the partition (RollingUpdate) or only when deleted (OnDelete),
//! with ControllerRevisions recording each template.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::{ControllerRevision, StatefulSet},
        core::v1::{Pod, PodTemplateSpec},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, runtime::RawExtension},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, reflector::Store, watcher},
};
use serde_json::json;

use crate::{Error, Shared, deployment::template_hash, events::Recorder, ownership, pods};

/// The label naming the revision a pod (or DaemonSet pod) was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// The StatefulSet controller's state.
#[derive(Debug)]
pub struct Ctx {
    shared: Arc<Shared>,
    recorder: Recorder,
}

/// Runs the controller until dropped.
pub async fn run(
    shared: Arc<Shared>,
    sets: Store<StatefulSet>,
    changes: impl Stream<Item = Result<StatefulSet, watcher::Error>> + Send + 'static,
    pods: impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(shared.client.clone(), "statefulset-controller"),
        shared,
    });
    Controller::for_stream(changes, sets)
        .owns_stream(pods)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
fn error_policy(set: Arc<StatefulSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(statefulset = %set.name_any(), ?err, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_LABEL).map(String::as_str)
}

fn running_and_ready(pod: &Pod) -> bool {
    pods::phase(pod) == "Running"
        && pods::is_ready(pod)
        && pod.metadata.deletion_timestamp.is_none()
}

/// Makes sure a ControllerRevision for `template` exists; returns its name.
async fn ensure_revision(
    ctx: &Ctx,
    set: &StatefulSet,
    template: &PodTemplateSpec,
) -> Result<(String, Vec<ControllerRevision>), Error> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let uid = set.uid().unwrap_or_default();
    let mut revisions: Vec<ControllerRevision> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| ownership::is_controlled_by(&r.metadata, &uid))
        .collect();
    let hash = template_hash(
        template,
        set.status.as_ref().and_then(|s| s.collision_count),
    );
    let name = format!("{}-{hash}", set.name_any());
    if revisions.iter().all(|r| r.name_any() != name) {
        let next = revisions.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
        let revision = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns),
                labels: Some(BTreeMap::from([(REVISION_LABEL.to_owned(), hash)])),
                owner_references: Some(vec![ownership::controller_ref(set)]),
                ..ObjectMeta::default()
            },
            data: Some(RawExtension(json!({"spec": {"template": template}}))),
            revision: next,
        };
        match api.create(&PostParams::default(), &revision).await {
            Ok(created) => revisions.push(created),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(err) => return Err(err.into()),
        }
    }
    revisions.sort_by_key(|r| r.revision);
    Ok((name, revisions))
}

fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let data = revision.data.as_ref()?;
    serde_json::from_value(data.0.get("spec")?.get("template")?.clone()).ok()
}

/// Moves one StatefulSet a step toward its declared state.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
#[expect(
    clippy::too_many_lines,
    reason = "the ordered state machine reads best in one place"
)]
pub async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let pod_api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);

    let (update_revision, revisions) = ensure_revision(&ctx, &set, &spec.template).await?;
    let current_revision = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .unwrap_or_else(|| update_revision.clone());
    let hash_of = |revision: &str| revision.rsplit('-').next().unwrap_or_default().to_owned();

    let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
    for pod in ctx.shared.pods.state() {
        if pod.namespace().as_deref() != Some(ns.as_str())
            || !ownership::is_controlled_by(&pod.metadata, &uid)
        {
            continue;
        }
        if let Some(i) = ordinal(&name, &pod.name_any()) {
            by_ordinal.insert(i, pod);
        }
    }

    let make_pod = |i: i32, revision: &str| -> Pod {
        let template = revisions
            .iter()
            .find(|r| r.name_any() == revision)
            .and_then(template_of)
            .unwrap_or_else(|| spec.template.clone());
        let pod_name = format!("{name}-{i}");
        let mut pod = pods::from_template(
            &template,
            &ns,
            Some(pod_name.clone()),
            None,
            ownership::controller_ref(set.as_ref()),
        );
        let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(REVISION_LABEL.to_owned(), hash_of(revision));
        labels.insert(
            "statefulset.kubernetes.io/pod-name".to_owned(),
            pod_name.clone(),
        );
        labels.insert("apps.kubernetes.io/pod-index".to_owned(), i.to_string());
        let pod_spec = pod.spec.get_or_insert_with(Default::default);
        pod_spec.hostname = Some(pod_name);
        if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
            pod_spec.subdomain.clone_from(&spec.service_name);
        }
        pod
    };

    let mut waiting = false;
    // Create missing pods (and replace failed ones), in order unless Parallel.
    for i in 0..replicas {
        match by_ordinal.get(&i) {
            None => {
                let revision = if !on_delete && i < partition {
                    &current_revision
                } else {
                    &update_revision
                };
                match pod_api
                    .create(&PostParams::default(), &make_pod(i, revision))
                    .await
                {
                    Ok(_) => {
                        ctx.recorder
                            .normal(
                                set.as_ref(),
                                "SuccessfulCreate",
                                &format!("create Pod {name}-{i} in StatefulSet {name} successful"),
                            )
                            .await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(err) => return Err(err.into()),
                }
                if !parallel {
                    waiting = true;
                    break;
                }
            }
            Some(pod) => {
                if pods::is_terminal(pod) && pod.metadata.deletion_timestamp.is_none() {
                    pod_api
                        .delete(&pod.name_any(), &DeleteParams::default())
                        .await?;
                    waiting = true;
                    if !parallel {
                        break;
                    }
                } else if !parallel && !running_and_ready(pod) {
                    waiting = true;
                    break;
                }
            }
        }
    }
    // Remove pods beyond `replicas`, highest ordinal first, one at a time unless Parallel.
    if !waiting {
        let extra: Vec<(&i32, &Arc<Pod>)> = by_ordinal
            .iter()
            .rev()
            .filter(|(i, _)| **i >= replicas)
            .collect();
        for (i, pod) in extra {
            if pod.metadata.deletion_timestamp.is_some() {
                if !parallel {
                    waiting = true;
                    break;
                }
                continue;
            }
            pod_api
                .delete(&pod.name_any(), &DeleteParams::default())
                .await?;
            ctx.recorder
                .normal(
                    set.as_ref(),
                    "SuccessfulDelete",
                    &format!("delete Pod {name}-{i} in StatefulSet {name} successful"),
                )
                .await;
            if !parallel {
                waiting = true;
                break;
            }
        }
    }
    // Rolling update: from the highest ordinal down to the partition, one at a time.
    if !waiting && !on_delete {
        let update_hash = hash_of(&update_revision);
        for i in (partition..replicas).rev() {
            let Some(pod) = by_ordinal.get(&i) else {
                continue;
            };
            if revision_of(pod) != Some(update_hash.as_str()) {
                if pod.metadata.deletion_timestamp.is_none() {
                    pod_api
                        .delete(&pod.name_any(), &DeleteParams::default())
                        .await?;
                }
                break;
            }
            if !running_and_ready(pod) {
                break;
            }
        }
    }

    // Status.
    let live: Vec<&Arc<Pod>> = by_ordinal
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let update_hash = hash_of(&update_revision);
    let current_hash = hash_of(&current_revision);
    let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count();
    let updated = count(&|p| revision_of(p) == Some(update_hash.as_str()));
    let current = count(&|p| revision_of(p) == Some(current_hash.as_str()));
    let ready = count(&|p| pods::is_ready(p));
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let available = count(&|p| pods::is_available(p, min_ready, Timestamp::now()));
    let all_updated = usize::try_from(replicas).unwrap_or(0) == updated && live.len() == updated;
    let (current_revision, current) = if all_updated {
        (update_revision.clone(), updated)
    } else {
        (current_revision, current)
    };
    let status = json!({
        "observedGeneration": set.metadata.generation,
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": update_revision,
    });
    let before = serde_json::to_value(set.status.clone().unwrap_or_default()).unwrap_or_default();
    let changed = [
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "availableReplicas",
        "currentReplicas",
        "updatedReplicas",
        "currentRevision",
        "updateRevision",
    ]
    .iter()
    .any(|k| before.get(k).unwrap_or(&json!(0)) != status.get(k).unwrap_or(&json!(0)));
    if changed {
        let api: Api<StatefulSet> = Api::namespaced(ctx.shared.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    // Old revisions beyond the history limit go (never the current or update one).
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(10);
    let old: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| r.name_any() != update_revision && r.name_any() != status["currentRevision"])
        .collect();
    if old.len() > limit {
        let api: Api<ControllerRevision> = Api::namespaced(ctx.shared.client.clone(), &ns);
        for r in &old[..old.len() - limit] {
            let _ = api.delete(&r.name_any(), &DeleteParams::default()).await;
        }
    }
    Ok(if waiting {
        Action::requeue(Duration::from_secs(5))
    } else {
        Action::await_change()
    })
}

#[cfg(test)]
mod tests {
    use super::ordinal;

    #[test]
    fn ordinals_come_from_the_stable_name() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "webby-1"), None);
    }
}
