//! The node lifecycle controller: a node whose Lease stops being renewed becomes
//! `Ready=Unknown` and is tainted unreachable; pods on nodes with NoExecute taints are
//! evicted once their tolerations run out (so their owners recreate them elsewhere).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, Pod, Taint},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::reflector::Store,
};
use serde_json::json;

use crate::{Shared, events::Recorder, placement::tolerates, pods};

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// When this controller last saw each node's Lease change, by its own clock (like the Go
/// controller's probe timestamps, so other machines' clocks do not matter).
#[derive(Debug, Default)]
struct Observed {
    seen: HashMap<String, (Option<Timestamp>, Instant)>,
}

fn ready_status(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// Runs the controller until dropped: checks every node each `period`.
pub async fn run(shared: Arc<Shared>, leases: Store<Lease>) {
    let recorder = Recorder::new(shared.client.clone(), "node-controller");
    let grace = shared.config.node_monitor_grace_period;
    let period = (grace / 8).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut observed = Observed::default();
    let _ = shared.nodes.wait_until_ready().await;
    let _ = leases.wait_until_ready().await;
    loop {
        for node in shared.nodes.state() {
            if let Err(err) =
                check_node(&shared, &recorder, &leases, &mut observed, &node, grace).await
            {
                tracing::warn!(node = %node.name_any(), ?err, "node health update failed");
            }
        }
        if let Err(err) = evict(&shared, &recorder).await {
            tracing::warn!(?err, "taint eviction pass failed");
        }
        tokio::time::sleep(period).await;
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "health, conditions and taints of one node together"
)]
async fn check_node(
    shared: &Shared,
    recorder: &Recorder,
    leases: &Store<Lease>,
    observed: &mut Observed,
    node: &Node,
    grace: Duration,
) -> Result<(), kube::Error> {
    let name = node.name_any();
    let lease =
        leases.get(&kube::runtime::reflector::ObjectRef::new(&name).within("kube-node-lease"));
    let renewed = lease
        .as_ref()
        .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0))
        .or_else(|| {
            node.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready")?
                .last_heartbeat_time
                .as_ref()
                .map(|t| t.0)
        });
    let entry = observed
        .seen
        .entry(name.clone())
        .or_insert((renewed, Instant::now()));
    if entry.0 != renewed {
        *entry = (renewed, Instant::now());
    }
    let stale = entry.1.elapsed() > grace;
    let api: Api<Node> = Api::all(shared.client.clone());
    let ready = ready_status(node);
    if stale && ready.as_deref() != Some("Unknown") {
        let now = Time(Timestamp::now());
        let conditions: Vec<serde_json::Value> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                json!({
                    "type": c.type_,
                    "status": "Unknown",
                    "reason": "NodeStatusUnknown",
                    "message": "Kubelet stopped posting node status.",
                    "lastHeartbeatTime": c.last_heartbeat_time,
                    "lastTransitionTime": now,
                })
            })
            .collect();
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": conditions}})),
        )
        .await?;
        recorder
            .normal(
                node,
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
            )
            .await;
        tracing::info!(node = %name, "node stopped renewing its lease: Ready=Unknown");
        return Ok(());
    }
    // Taints follow the Ready condition.
    let wanted: Option<&str> = match ready.as_deref() {
        Some("Unknown") => Some(UNREACHABLE),
        Some("False") => Some(NOT_READY),
        _ => None,
    };
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut next: Vec<Taint> = taints
        .iter()
        .filter(|t| {
            !((t.key == UNREACHABLE || t.key == NOT_READY) && Some(t.key.as_str()) != wanted)
        })
        .cloned()
        .collect();
    if let Some(key) = wanted {
        for effect in ["NoSchedule", "NoExecute"] {
            if !next.iter().any(|t| t.key == key && t.effect == effect) {
                next.push(Taint {
                    key: key.to_owned(),
                    value: None,
                    effect: effect.to_owned(),
                    time_added: Some(Time(Timestamp::now())),
                });
            }
        }
    }
    if next != taints {
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"taints": next}})),
        )
        .await?;
    }
    Ok(())
}

/// How long `pod` may stay on a node with `taint` (`None`: forever, `Some(0)`: not at
/// all). Pods without a toleration for the not-ready/unreachable taints get the default
/// toleration seconds, as Kubernetes' `DefaultTolerationSeconds` admission gives them.
fn tolerated_for(pod: &Pod, taint: &Taint, default_seconds: i64) -> Option<i64> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
    if matching.is_empty() {
        if taint.key == UNREACHABLE || taint.key == NOT_READY {
            return Some(default_seconds);
        }
        return Some(0);
    }
    if matching.iter().any(|t| t.toleration_seconds.is_none()) {
        return None;
    }
    matching
        .iter()
        .filter_map(|t| t.toleration_seconds)
        .min()
        .map(|s| s.max(0))
}

async fn evict(shared: &Shared, recorder: &Recorder) -> Result<(), kube::Error> {
    let now = Timestamp::now();
    let tainted: HashMap<String, Vec<Taint>> = shared
        .nodes
        .state()
        .iter()
        .filter_map(|n| {
            let taints: Vec<Taint> = n
                .spec
                .as_ref()?
                .taints
                .as_ref()?
                .iter()
                .filter(|t| t.effect == "NoExecute")
                .cloned()
                .collect();
            (!taints.is_empty()).then(|| (n.name_any(), taints))
        })
        .collect();
    if tainted.is_empty() {
        return Ok(());
    }
    for pod in shared.pods.state() {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) else {
            continue;
        };
        let Some(taints) = tainted.get(node) else {
            continue;
        };
        if !pods::is_active(&pod) {
            continue;
        }
        let due = taints.iter().any(|taint| {
            tolerated_for(&pod, taint, shared.config.default_toleration_seconds).is_some_and(
                |seconds| {
                    let added = taint.time_added.as_ref().map_or(now, |t| t.0);
                    now.as_second() >= added.as_second() + seconds
                },
            )
        });
        if due {
            let api: Api<Pod> =
                Api::namespaced(shared.client.clone(), &pod.namespace().unwrap_or_default());
            match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) => {
                    recorder
                        .normal(
                            pod.as_ref(),
                            "TaintManagerEviction",
                            &format!(
                                "Marking for deletion Pod {}/{}",
                                pod.namespace().unwrap_or_default(),
                                pod.name_any()
                            ),
                        )
                        .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, Toleration};

    use super::*;

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            ..Taint::default()
        }
    }

    #[test]
    fn pods_without_tolerations_get_the_default_for_unreachable_only() {
        let pod = Pod::default();
        assert_eq!(tolerated_for(&pod, &taint(UNREACHABLE), 300), Some(300));
        assert_eq!(tolerated_for(&pod, &taint("dedicated"), 300), Some(0));
    }

    #[test]
    fn toleration_seconds_bound_the_stay_and_none_means_forever() {
        let with = |seconds: Option<i64>| Pod {
            spec: Some(PodSpec {
                tolerations: Some(vec![Toleration {
                    key: Some(UNREACHABLE.into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoExecute".into()),
                    toleration_seconds: seconds,
                    ..Toleration::default()
                }]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert_eq!(
            tolerated_for(&with(Some(5)), &taint(UNREACHABLE), 300),
            Some(5)
        );
        assert_eq!(tolerated_for(&with(None), &taint(UNREACHABLE), 300), None);
    }
}
