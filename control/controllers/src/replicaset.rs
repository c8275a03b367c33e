//! The ReplicaSet controller: keeps exactly `spec.replicas` active pods matching the
//! selector, adopting orphans and releasing pods that stop matching, and reports counters.

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt, future::join_all};
use k8s_openapi::{
    api::{apps::v1::ReplicaSet, core::v1::Pod},
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
    expectations::Expectations,
    ownership::{self, Claim, LabelMatcher},
    pods,
};

/// Most pods created in one reconcile, as the Go controller's burst.
const BURST: usize = 500;

/// The ReplicaSet controller's state.
#[derive(Debug)]
pub struct Ctx {
    shared: Arc<Shared>,
    expectations: Expectations,
    recorder: Recorder,
}

/// Runs the controller until dropped. `replica_sets` and `pods` are change streams of the
/// shared informers behind `shared.replica_sets` and `shared.pods`.
pub async fn run(
    shared: Arc<Shared>,
    replica_sets: impl Stream<Item = Result<ReplicaSet, watcher::Error>> + Send + 'static,
    pods: impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
    orphans: impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(shared.client.clone(), "replicaset-controller"),
        expectations: Expectations::default(),
        shared: shared.clone(),
    });
    let sets = shared.replica_sets.clone();
    Controller::for_stream(replica_sets, shared.replica_sets.clone())
        .with_config(ControllerConfig::default().concurrency(8))
        .owns_stream(pods)
        .watches_stream(orphans, move |pod: Pod| orphan_owners(&sets, &pod))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// ReplicaSets that may adopt `pod` (an orphan whose labels they select).
fn orphan_owners(
    sets: &kube::runtime::reflector::Store<ReplicaSet>,
    pod: &Pod,
) -> Vec<ObjectRef<ReplicaSet>> {
    if ownership::controller_of(&pod.metadata).is_some() {
        return Vec::new();
    }
    let ns = pod.namespace();
    sets.state()
        .iter()
        .filter(|rs| rs.namespace() == ns)
        .filter(|rs| {
            let selector = rs.spec.as_ref().map(|s| &s.selector);
            LabelMatcher::new(selector).matches(pod.metadata.labels.as_ref())
        })
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
fn error_policy(rs: Arc<ReplicaSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(replicaset = %rs.name_any(), ?err, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Brings one ReplicaSet to its declared replica count and updates its status.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
#[expect(
    clippy::too_many_lines,
    reason = "claim, scale and status read best together"
)]
pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let key = format!("{ns}/{name}");
    let uid = rs.uid().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let matcher = LabelMatcher::new(Some(&spec.selector));
    let deleting = rs.meta().deletion_timestamp.is_some();
    let pod_api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);

    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for pod in ctx.shared.pods.state() {
        if pod.namespace().as_deref() != Some(ns.as_str()) {
            continue;
        }
        match ownership::claim(&pod.metadata, &uid, &matcher, deleting) {
            Claim::Owned => owned.push(pod),
            Claim::Adopt => {
                let patch =
                    ownership::adopt_patch(&pod.metadata, ownership::controller_ref(rs.as_ref()));
                match pod_api
                    .patch(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => owned.push(pod),
                    Err(err) => tracing::debug!(pod = %pod.name_any(), ?err, "adoption failed"),
                }
            }
            Claim::Release => {
                let patch = ownership::release_patch(&pod.metadata, &uid);
                pod_api
                    .patch(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
            }
            Claim::Ignore => {}
        }
    }
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| pods::is_active(p)).collect();

    let store = &ctx.shared.pods;
    let caught_up = ctx.expectations.satisfied(
        &key,
        |pod_name| store.get(&ObjectRef::new(pod_name).within(&ns)).is_some(),
        |pod_uid| {
            active
                .iter()
                .any(|p| p.metadata.uid.as_deref() == Some(pod_uid))
        },
    );
    if caught_up && !deleting {
        let want = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
        if active.len() < want {
            create_pods(&rs, &ctx, &pod_api, &key, want - active.len()).await?;
        } else if active.len() > want {
            let mut victims: Vec<&Arc<Pod>> = active.clone();
            victims.sort_by(|a, b| pods::deletion_order(a, b));
            victims.truncate(active.len() - want);
            delete_pods(&rs, &ctx, &pod_api, &key, &victims).await?;
        }
    }

    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let status = serde_json::json!({
        "replicas": count(&|_| true),
        "fullyLabeledReplicas": count(&|p| template_labels.iter().all(|(k, v)| p.labels().get(k) == Some(v))),
        "readyReplicas": count(&|p| pods::is_ready(p)),
        "availableReplicas": count(&|p| pods::is_available(p, min_ready, now)),
        "observedGeneration": rs.meta().generation,
    });
    let current = serde_json::to_value(rs.status.clone().unwrap_or_default()).unwrap_or_default();
    let changed = [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ]
    .iter()
    .any(|k| {
        current.get(k).unwrap_or(&serde_json::json!(0))
            != status.get(k).unwrap_or(&serde_json::json!(0))
    });
    if changed {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.shared.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "status": status })),
        )
        .await?;
    }
    // Pods that are ready but not yet available become available without any event.
    let waiting = min_ready > 0
        && active
            .iter()
            .any(|p| pods::is_ready(p) && !pods::is_available(p, min_ready, now));
    Ok(if waiting {
        Action::requeue(Duration::from_secs(1))
    } else {
        Action::await_change()
    })
}

async fn create_pods(
    rs: &ReplicaSet,
    ctx: &Ctx,
    api: &Api<Pod>,
    key: &str,
    missing: usize,
) -> Result<(), Error> {
    let spec = rs.spec.clone().unwrap_or_default();
    let Some(template) = spec.template.as_ref() else {
        return Err(Error::Invalid(format!("replicaset {key} has no template")));
    };
    let ns = rs.namespace().unwrap_or_default();
    // Slow start (1, 2, 4, ...): a template the server refuses fails once, not `missing`
    // times.
    let mut remaining = missing.min(BURST);
    let mut batch = 1;
    while remaining > 0 {
        let size = batch.min(remaining);
        let pod = pods::from_template(
            template,
            &ns,
            None,
            Some(format!("{}-", rs.name_any())),
            ownership::controller_ref(rs),
        );
        let params = PostParams::default();
        let results = join_all((0..size).map(|_| api.create(&params, &pod))).await;
        let mut failed = None;
        for result in results {
            match result {
                Ok(created) => {
                    ctx.expectations.created(key, &created.name_any());
                    ctx.recorder
                        .normal(
                            rs,
                            "SuccessfulCreate",
                            &format!("Created pod: {}", created.name_any()),
                        )
                        .await;
                }
                Err(err) => failed = Some(err),
            }
        }
        if let Some(err) = failed {
            let message = match &err {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            };
            ctx.recorder
                .warning(rs, "FailedCreate", &format!("Error creating: {message}"))
                .await;
            return Err(err.into());
        }
        remaining -= size;
        batch *= 2;
    }
    Ok(())
}

async fn delete_pods(
    rs: &ReplicaSet,
    ctx: &Ctx,
    api: &Api<Pod>,
    key: &str,
    victims: &[&Arc<Pod>],
) -> Result<(), Error> {
    let params = DeleteParams::default();
    let results = join_all(
        victims
            .iter()
            .map(|p| api.delete(p.metadata.name.as_deref().unwrap_or_default(), &params)),
    )
    .await;
    for (pod, result) in victims.iter().zip(results) {
        match result {
            Ok(_) => {
                ctx.expectations
                    .deleted(key, pod.metadata.uid.as_deref().unwrap_or_default());
                ctx.recorder
                    .normal(
                        rs,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", pod.name_any()),
                    )
                    .await;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
