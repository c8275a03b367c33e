//! The DaemonSet controller: one pod on every node the template's node selector, affinity
//! and tolerations admit, following nodes as they join and leave, rolled to a new
//! template `maxUnavailable` nodes at a time (RollingUpdate) or on deletion (OnDelete).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{
            Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
            Pod, Toleration,
        },
    },
    apimachinery::pkg::util::intstr::IntOrString,
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;

use crate::{
    Error, Shared, deployment::template_hash, events::Recorder, ownership, placement, pods,
    statefulset::REVISION_LABEL,
};

/// The DaemonSet controller's state.
#[derive(Debug)]
pub struct Ctx {
    shared: Arc<Shared>,
    recorder: Recorder,
}

/// Runs the controller until dropped.
pub async fn run(
    shared: Arc<Shared>,
    sets: Store<DaemonSet>,
    changes: impl Stream<Item = Result<DaemonSet, watcher::Error>> + Send + 'static,
    pods: impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
    nodes: impl Stream<Item = Result<Node, watcher::Error>> + Send + 'static,
) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(shared.client.clone(), "daemonset-controller"),
        shared,
    });
    let all = sets.clone();
    Controller::for_stream(changes, sets)
        .owns_stream(pods)
        // Any node change may add or remove a daemon pod anywhere.
        .watches_stream(nodes, move |_node: Node| {
            all.state()
                .iter()
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
fn error_policy(ds: Arc<DaemonSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(daemonset = %ds.name_any(), ?err, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Tolerations every daemon pod gets, as the Go controller adds them: daemons keep running
/// on nodes that are unreachable, under pressure or cordoned.
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(effect.to_owned()),
        ..Toleration::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// The node a daemon pod is for: where it is bound, or the node its affinity pins.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(node.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

fn pinned_to(
    template: &k8s_openapi::api::core::v1::PodSpec,
    node: &str,
) -> k8s_openapi::api::core::v1::PodSpec {
    let mut spec = template.clone();
    let pin = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".to_owned(),
            operator: "In".to_owned(),
            values: Some(vec![node.to_owned()]),
        }]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![pin],
    });
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations() {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    spec
}

/// Puts one daemon pod on each eligible node and none elsewhere; rolls out new templates.
///
/// # Errors
/// When the API server refuses a write; the controller retries.
#[expect(
    clippy::too_many_lines,
    reason = "placement, rollout and status read best together"
)]
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let uid = ds.uid().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let template_spec = spec.template.spec.clone().unwrap_or_default();
    let hash = template_hash(
        &spec.template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    );
    let pod_api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let mut tolerations = template_spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations());

    let nodes = ctx.shared.nodes.state();
    let eligible: BTreeMap<String, Arc<Node>> = nodes
        .iter()
        .filter(|n| {
            placement::admits(&template_spec, n)
                && placement::untolerated(n, &tolerations).is_empty()
        })
        .map(|n| (n.name_any(), n.clone()))
        .collect();
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for pod in ctx.shared.pods.state() {
        if pod.namespace().as_deref() != Some(ns.as_str())
            || !ownership::is_controlled_by(&pod.metadata, &uid)
        {
            continue;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(node) = target_node(&pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }

    // Daemon pods that finished or sit where they should not are removed.
    let mut misscheduled = 0;
    for (node, list) in &by_node {
        let node_exists = nodes.iter().any(|n| n.name_any() == *node);
        for (i, pod) in list.iter().enumerate() {
            let wrong_place = !eligible.contains_key(node);
            let duplicate = i > 0;
            if wrong_place || duplicate || pods::is_terminal(pod) {
                if wrong_place {
                    misscheduled += 1;
                }
                // A pod on a node that is gone has no kubelet to finish it.
                let params = if node_exists {
                    DeleteParams::default()
                } else {
                    DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    }
                };
                match pod_api.delete(&pod.name_any(), &params).await {
                    Ok(_) => {
                        ctx.recorder
                            .normal(
                                ds.as_ref(),
                                "SuccessfulDelete",
                                &format!("Deleted pod: {}", pod.name_any()),
                            )
                            .await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
    }
    // Missing daemon pods are created, pinned to their node.
    for node in eligible.keys() {
        let has = by_node
            .get(node)
            .is_some_and(|l| l.iter().any(|p| !pods::is_terminal(p)));
        if has {
            continue;
        }
        let mut pod = pods::from_template(
            &spec.template,
            &ns,
            None,
            Some(format!("{name}-")),
            ownership::controller_ref(ds.as_ref()),
        );
        pod.spec = Some(pinned_to(&template_spec, node));
        pod.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(REVISION_LABEL.to_owned(), hash.clone());
        match pod_api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                ctx.recorder
                    .normal(
                        ds.as_ref(),
                        "SuccessfulCreate",
                        &format!("Created pod: {}", created.name_any()),
                    )
                    .await;
            }
            Err(err) => return Err(err.into()),
        }
    }

    // RollingUpdate: replace old pods while at most maxUnavailable nodes lack a ready pod.
    let on_node = |node: &str| by_node.get(node).and_then(|l| l.first()).cloned();
    let desired = eligible.len();
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let available = eligible
        .keys()
        .filter(|n| on_node(n).is_some_and(|p| pods::is_available(&p, min_ready, now)))
        .count();
    let updated = eligible
        .keys()
        .filter(|n| on_node(n).is_some_and(|p| p.labels().get(REVISION_LABEL) == Some(&hash)))
        .count();
    let ready = eligible
        .keys()
        .filter(|n| on_node(n).is_some_and(|p| pods::is_ready(&p)))
        .count();
    let scheduled = eligible.keys().filter(|n| on_node(n).is_some()).count();
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() != Some("OnDelete") {
        let max_unavailable = match strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.clone())
        {
            Some(IntOrString::Int(i)) => usize::try_from(i.max(0)).unwrap_or(1),
            Some(IntOrString::String(s)) => {
                let pct: usize = s.trim_end_matches('%').parse().unwrap_or(0);
                (desired * pct / 100).max(1)
            }
            None => 1,
        };
        let mut budget = max_unavailable.saturating_sub(desired - available);
        // Not-ready old pods first: replacing them costs no availability.
        let mut old: Vec<Arc<Pod>> = eligible
            .keys()
            .filter_map(|n| on_node(n))
            .filter(|p| p.labels().get(REVISION_LABEL) != Some(&hash))
            .collect();
        old.sort_by_key(|p| pods::is_available(p, min_ready, now));
        for pod in old {
            let counts = pods::is_available(&pod, min_ready, now);
            if counts && budget == 0 {
                break;
            }
            match pod_api
                .delete(&pod.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(err.into()),
            }
            if counts {
                budget -= 1;
            }
        }
    }

    let status = json!({
        "observedGeneration": ds.metadata.generation,
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": scheduled,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": available,
        "numberUnavailable": desired - available,
        "updatedNumberScheduled": updated,
    });
    let before = serde_json::to_value(ds.status.clone().unwrap_or_default()).unwrap_or_default();
    let changed = status
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| before.get(k).unwrap_or(&json!(0)) != v);
    if changed {
        let api: Api<DaemonSet> = Api::namespaced(ctx.shared.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    Ok(if min_ready > 0 && available < ready {
        Action::requeue(Duration::from_secs(1))
    } else {
        Action::await_change()
    })
}
