//! The node lifecycle controller: a node whose Lease stops being renewed becomes
//! `Ready=Unknown` and is tainted unreachable; pods on nodes with NoExecute taints are
//! evicted once their tolerations run out (so their owners recreate them elsewhere).
//!
//! It checks every node on a period rather than per event: staleness is the absence of
//! events. [`Health`] decides per node from its heartbeat and the local clock;
//! [`evictions`] decides which pods go.

use std::{
    collections::HashMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, NodeCondition, Pod, Taint},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::reflector::{ObjectRef, Store},
};
use serde_json::json;
use skiff_control_runtime::{Clock, Informers, Recorder, placement::tolerates};
use skiff_types::namespace::KUBE_NODE_LEASE;

use crate::pods;

/// The taint of a node whose kubelet stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node that reports itself not ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const COMPONENT: &str = "node-controller";

/// What to do about one node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeStep {
    /// Its kubelet stopped reporting: every condition becomes Unknown.
    MarkUnknown(Vec<NodeCondition>),
    /// Its not-ready/unreachable taints must follow its Ready condition.
    SetTaints(Vec<Taint>),
}

/// When this controller last saw each node's heartbeat change, by its own clock (like the
/// Go controller's probe timestamps, so other machines' clocks do not matter).
#[derive(Debug, Default)]
pub struct Health {
    seen: HashMap<String, (Option<Timestamp>, Instant)>,
}

fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

impl Health {
    /// Decides about `node` (whose Lease is `lease`) at `now` / `local`; a node not
    /// heard from within `grace` is marked Unknown, else its taints follow Ready.
    pub fn check(
        &mut self,
        node: &Node,
        lease: Option<&Lease>,
        grace: Duration,
        now: Timestamp,
        local: Instant,
    ) -> Option<NodeStep> {
        let name = node.name_any();
        let renewed = lease
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
        let entry = self.seen.entry(name).or_insert((renewed, local));
        if entry.0 != renewed {
            *entry = (renewed, local);
        }
        let stale = local.saturating_duration_since(entry.1) > grace;
        let ready = ready_status(node);
        if stale && ready != Some("Unknown") {
            let conditions = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|c| NodeCondition {
                    status: "Unknown".to_owned(),
                    reason: Some("NodeStatusUnknown".to_owned()),
                    message: Some("Kubelet stopped posting node status.".to_owned()),
                    last_transition_time: Some(Time(now)),
                    ..c
                })
                .collect();
            return Some(NodeStep::MarkUnknown(conditions));
        }
        // Taints follow the Ready condition.
        let wanted: Option<&str> = match ready {
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
                        time_added: Some(Time(now)),
                    });
                }
            }
        }
        (next != taints).then_some(NodeStep::SetTaints(next))
    }

    /// Forgets nodes that no longer exist.
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        self.seen.retain(|name, _| exists(name));
    }
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

/// The active pods whose stay on a NoExecute-tainted node is over at `now`.
#[must_use]
pub fn evictions(
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    default_toleration_seconds: i64,
    now: Timestamp,
) -> Vec<Arc<Pod>> {
    let tainted: HashMap<String, Vec<&Taint>> = nodes
        .iter()
        .filter_map(|n| {
            let taints: Vec<&Taint> = n
                .spec
                .as_ref()?
                .taints
                .as_ref()?
                .iter()
                .filter(|t| t.effect == "NoExecute")
                .collect();
            (!taints.is_empty()).then(|| (n.name_any(), taints))
        })
        .collect();
    if tainted.is_empty() {
        return Vec::new();
    }
    pods.iter()
        .filter(|pod| pods::is_active(pod))
        .filter(|pod| {
            let Some(taints) = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .and_then(|node| tainted.get(node))
            else {
                return false;
            };
            taints.iter().any(|taint| {
                tolerated_for(pod, taint, default_toleration_seconds).is_some_and(|seconds| {
                    let added = taint.time_added.as_ref().map_or(now, |t| t.0);
                    now.as_second() >= added.as_second() + seconds
                })
            })
        })
        .cloned()
        .collect()
}

/// What the loop reads and writes with.
struct Loop {
    client: Client,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    recorder: Recorder,
    clock: Arc<dyn Clock>,
    grace: Duration,
    default_toleration_seconds: i64,
}

/// The controller over the process's informers; runs until dropped, checking every node
/// each `grace / 8` (between 0.5 and 5 s).
pub fn start(
    informers: &Informers,
    config: &crate::Config,
    clock: Arc<dyn Clock>,
) -> impl Future<Output = ()> + Send + use<> {
    let this = Loop {
        client: informers.client(),
        nodes: informers.get::<Node>().store(),
        leases: informers.get::<Lease>().store(),
        pods: informers.get::<Pod>().store(),
        recorder: Recorder::new(informers.client(), COMPONENT),
        clock,
        grace: config.node_monitor_grace_period,
        default_toleration_seconds: config.default_toleration_seconds,
    };
    async move {
        let period = (this.grace / 8).clamp(Duration::from_millis(500), Duration::from_secs(5));
        let _ = this.nodes.wait_until_ready().await;
        let _ = this.leases.wait_until_ready().await;
        let _ = this.pods.wait_until_ready().await;
        let mut health = Health::default();
        loop {
            this.pass(&mut health).await;
            tokio::time::sleep(period).await;
        }
    }
}

impl Loop {
    async fn pass(&self, health: &mut Health) {
        let nodes = self.nodes.state();
        health.retain(|name| nodes.iter().any(|n| n.name_any() == name));
        let api: Api<Node> = Api::all(self.client.clone());
        for node in &nodes {
            let name = node.name_any();
            let lease = self
                .leases
                .get(&ObjectRef::new(&name).within(KUBE_NODE_LEASE));
            let step = health.check(
                node,
                lease.as_deref(),
                self.grace,
                self.clock.now(),
                self.clock.instant(),
            );
            let result = match step {
                None => Ok(()),
                Some(NodeStep::MarkUnknown(conditions)) => {
                    let patch = json!({"status": {"conditions": conditions}});
                    match api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(node = %name, "node stopped renewing its lease: Ready=Unknown");
                            let message = format!("Node {name} status is now: NodeNotReady");
                            self.recorder
                                .normal(node.as_ref(), "NodeNotReady", &message)
                                .await;
                            Ok(())
                        }
                        Err(err) => Err(err),
                    }
                }
                Some(NodeStep::SetTaints(taints)) => api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"spec": {"taints": taints}})),
                    )
                    .await
                    .map(|_| ()),
            };
            if let Err(err) = result {
                tracing::warn!(node = %name, ?err, "node health update failed");
            }
        }
        let due = evictions(
            &nodes,
            &self.pods.state(),
            self.default_toleration_seconds,
            self.clock.now(),
        );
        for pod in due {
            let ns = pod.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) => {
                    let message = format!("Marking for deletion Pod {ns}/{}", pod.name_any());
                    self.recorder
                        .normal(pod.as_ref(), "TaintManagerEviction", &message)
                        .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(err) => tracing::warn!(pod = %pod.name_any(), ?err, "taint eviction failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            coordination::v1::LeaseSpec,
            core::v1::{PodSpec, Toleration},
        },
        apimachinery::pkg::apis::meta::v1::MicroTime,
    };
    use skiff_control_runtime::FakeClock;

    use super::*;
    use crate::fixtures::{at, node, pod};

    const GRACE: Duration = Duration::from_secs(40);

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            ..Taint::default()
        }
    }

    fn lease(renewed: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(at(renewed))),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    fn with_ready(status: &str) -> Node {
        let mut n = (*node("n1", &[])).clone();
        n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = status.into();
        n
    }

    fn with_taints(mut n: Node, taints: Vec<Taint>) -> Node {
        n.spec.as_mut().unwrap().taints = Some(taints);
        n
    }

    #[test]
    fn a_node_whose_lease_stops_changing_for_the_grace_period_turns_unknown() {
        let clock = FakeClock::at_second(1_000);
        let mut health = Health::default();
        let n = with_ready("True");
        let check = |h: &mut Health, renewed: i64| {
            h.check(
                &n,
                Some(&lease(renewed)),
                GRACE,
                clock.now(),
                clock.instant(),
            )
        };
        // The lease's own time is years off: only changes count, on this clock.
        assert_eq!(check(&mut health, 5), None);
        clock.advance(Duration::from_secs(30));
        assert_eq!(check(&mut health, 6), None, "renewed: the wait starts over");
        clock.advance(Duration::from_secs(40));
        assert_eq!(check(&mut health, 6), None, "exactly the grace period");
        clock.advance(Duration::from_secs(1));
        let Some(NodeStep::MarkUnknown(conditions)) = check(&mut health, 6) else {
            panic!("not marked");
        };
        assert_eq!(conditions[0].status, "Unknown");
        assert_eq!(conditions[0].reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(conditions[0].last_transition_time, Some(Time(clock.now())));
    }

    #[test]
    fn taints_follow_the_ready_condition_and_others_are_kept() {
        let clock = FakeClock::at_second(1_000);
        let mut health = Health::default();
        let mut check = |n: &Node| health.check(n, None, GRACE, clock.now(), clock.instant());
        let Some(NodeStep::SetTaints(taints)) = check(&with_ready("Unknown")) else {
            panic!("no taints");
        };
        let keys: Vec<(&str, &str)> = taints
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            [(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]
        );
        let own = Taint {
            key: "dedicated".into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        let unready = with_taints(with_ready("False"), vec![own.clone(), taint(UNREACHABLE)]);
        let Some(NodeStep::SetTaints(taints)) = check(&unready) else {
            panic!("no taints");
        };
        let keys: Vec<&str> = taints.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["dedicated", NOT_READY, NOT_READY]);
        let healthy = with_taints(with_ready("True"), vec![own.clone(), taint(NOT_READY)]);
        assert_eq!(
            check(&healthy),
            Some(NodeStep::SetTaints(vec![own.clone()]))
        );
        assert_eq!(check(&with_taints(with_ready("True"), vec![own])), None);
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

    #[test]
    fn pods_are_evicted_once_their_toleration_of_a_no_execute_taint_runs_out() {
        let mut added = taint(UNREACHABLE);
        added.time_added = Some(Time(at(100)));
        let nodes = [
            Arc::new(with_taints(with_ready("Unknown"), vec![added])),
            node("healthy", &[]),
        ];
        let pods = [
            pod("on-bad").on("n1").ready_since(0).build(),
            pod("on-good").on("healthy").ready_since(0).build(),
            pod("finished").on("n1").finished("Succeeded", 50).build(),
        ];
        let names = |now: i64| -> Vec<String> {
            evictions(&nodes, &pods, 30, at(now))
                .iter()
                .map(|p| p.name_any())
                .collect()
        };
        assert!(names(129).is_empty());
        assert_eq!(names(130), ["on-bad"]);
    }
}
