//! What a DaemonSet needs done, decided from the cache alone: a daemon pod pinned to every
//! node its template admits, none elsewhere, old-template pods replaced within
//! `maxUnavailable`, and the status.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetStatus},
        core::v1::{
            Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
            Pod, PodSpec, Toleration,
        },
    },
    apimachinery::pkg::util::intstr::IntOrString,
    jiff::Timestamp,
};
use kube::ResourceExt;
use skiff_control_runtime::{ownership, placement, status};

use crate::{
    pods,
    revision::{CONTROLLER_REVISION_HASH, template_hash},
};

/// What the plan is made from.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The DaemonSet.
    pub daemon_set: &'a DaemonSet,
    /// Every node.
    pub nodes: &'a [Arc<Node>],
    /// Pods of its namespace (others are ignored).
    pub pods: &'a [Arc<Pod>],
    /// The time.
    pub now: Timestamp,
}

/// One thing to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Remove a daemon pod that finished, is a duplicate, or sits on a node it may not run
    /// on; `force` (no grace period) when its node is gone and no kubelet will finish it.
    Remove {
        /// The pod.
        name: String,
        /// Delete without a grace period.
        force: bool,
    },
    /// Create a daemon pod pinned to its node.
    Create(Box<Pod>),
    /// Delete a pod of an old template so its replacement can start (RollingUpdate).
    Replace(String),
}

/// The steps, the status to write (when it changed) and when to look again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In order.
    pub steps: Vec<Step>,
    /// The new status, if it differs from the current one.
    pub status: Option<DaemonSetStatus>,
    /// When a ready pod turns available.
    pub requeue: Option<Duration>,
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

/// `template` pinned to `node` by required node affinity on `metadata.name`, with the
/// daemon tolerations, as the scheduler then binds it.
fn pinned_to(template: &PodSpec, node: &str) -> PodSpec {
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

fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Decides where daemon pods must be added, removed or replaced.
#[must_use]
#[expect(
    clippy::too_many_lines,
    reason = "placement, rollout and status read best together"
)]
pub fn plan(o: &Observed<'_>) -> Plan {
    let ds = o.daemon_set;
    if ds.metadata.deletion_timestamp.is_some() {
        return Plan::default();
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
    let mut tolerations = template_spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations());
    let eligible: BTreeMap<String, &Arc<Node>> = o
        .nodes
        .iter()
        .filter(|n| {
            placement::admits(&template_spec, n)
                && placement::untolerated(n, &tolerations).is_empty()
        })
        .map(|n| (n.name_any(), n))
        .collect();
    let mut by_node: BTreeMap<String, Vec<&Arc<Pod>>> = BTreeMap::new();
    for pod in o.pods {
        if pod.namespace().as_deref() != Some(ns.as_str())
            || !ownership::is_controlled_by(&pod.metadata, &uid)
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        if let Some(node) = target_node(pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    let mut steps = Vec::new();

    // Daemon pods that finished or sit where they should not are removed.
    let mut misscheduled = 0;
    for (node, list) in &by_node {
        let wrong_place = !eligible.contains_key(node);
        let node_exists = o.nodes.iter().any(|n| n.name_any() == *node);
        for (i, pod) in list.iter().enumerate() {
            if wrong_place || i > 0 || pods::is_terminal(pod) {
                if wrong_place {
                    misscheduled += 1;
                }
                steps.push(Step::Remove {
                    name: pod.name_any(),
                    force: !node_exists,
                });
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
            ownership::controller_ref(ds),
        );
        pod.spec = Some(pinned_to(&template_spec, node));
        pod.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(CONTROLLER_REVISION_HASH.to_owned(), hash.clone());
        steps.push(Step::Create(Box::new(pod)));
    }

    // RollingUpdate: replace old pods while at most maxUnavailable nodes lack a ready pod.
    let on_node = |node: &str| by_node.get(node).and_then(|l| l.first()).copied();
    let desired = eligible.len();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| {
        eligible
            .keys()
            .filter(|n| on_node(n).is_some_and(|p| f(p)))
            .count()
    };
    let available = count(&|p| pods::is_available(p, min_ready, o.now));
    let updated = count(&|p| p.labels().get(CONTROLLER_REVISION_HASH) == Some(&hash));
    let ready = count(&pods::is_ready);
    let scheduled = count(&|_| true);
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
        // Not-available old pods first: replacing them costs no availability.
        let mut old: Vec<&Arc<Pod>> = eligible
            .keys()
            .filter_map(|n| on_node(n))
            .filter(|p| p.labels().get(CONTROLLER_REVISION_HASH) != Some(&hash))
            .collect();
        old.sort_by_key(|p| pods::is_available(p, min_ready, o.now));
        for pod in old {
            let counts = pods::is_available(pod, min_ready, o.now);
            if counts && budget == 0 {
                break;
            }
            steps.push(Step::Replace(pod.name_any()));
            if counts {
                budget -= 1;
            }
        }
    }

    let before = ds.status.as_ref();
    let after = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        desired_number_scheduled: to_i32(desired),
        current_number_scheduled: to_i32(scheduled),
        number_misscheduled: misscheduled,
        number_ready: to_i32(ready),
        number_available: Some(to_i32(available)),
        number_unavailable: Some(to_i32(desired - available)),
        updated_number_scheduled: Some(to_i32(updated)),
        ..before.cloned().unwrap_or_default()
    };
    let requeue = eligible
        .keys()
        .filter_map(|n| on_node(n))
        .filter_map(|p| pods::available_in(p, min_ready, o.now))
        .min();
    Plan {
        steps,
        status: status::changed(before, &after).then_some(after),
        requeue,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            apps::v1::{DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet},
            core::v1::Taint,
        },
        apimachinery::pkg::apis::meta::v1::LabelSelector,
    };

    use super::*;
    use crate::fixtures::{at, labels, meta, node, pod, template};

    fn daemon_set(image: &str) -> DaemonSet {
        let mut t = template(&[("app", "agent")]);
        t.spec.as_mut().unwrap().containers[0].image = Some(image.to_owned());
        DaemonSet {
            metadata: meta("agent"),
            spec: Some(DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "agent")])),
                    match_expressions: None,
                },
                template: t,
                ..DaemonSetSpec::default()
            }),
            status: None,
        }
    }

    fn hash(ds: &DaemonSet) -> String {
        template_hash(&ds.spec.as_ref().unwrap().template, None)
    }

    /// `ds`'s pod on `node`, ready, of `ds`'s template.
    fn daemon(ds: &DaemonSet, name: &str, node: &str) -> Arc<Pod> {
        pod(name)
            .labels(&[("app", "agent"), (CONTROLLER_REVISION_HASH, &hash(ds))])
            .owned_by(ds)
            .on(node)
            .ready_since(0)
            .build()
    }

    fn tainted(name: &str, key: &str, effect: &str) -> Arc<Node> {
        let mut n = (*node(name, &[])).clone();
        n.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: key.into(),
            effect: effect.into(),
            ..Taint::default()
        }]);
        Arc::new(n)
    }

    fn run(ds: &DaemonSet, nodes: &[Arc<Node>], pods: &[Arc<Pod>]) -> Plan {
        plan(&Observed {
            daemon_set: ds,
            nodes,
            pods,
            now: at(100),
        })
    }

    fn created_on(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::Create(p) => target_node(p),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_admitting_node_gets_one_pinned_pod_with_the_daemon_tolerations() {
        let mut ds = daemon_set("agent:1");
        ds.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .node_selector = Some(labels(&[("role", "worker")]));
        let nodes = [
            node("a", &[("role", "worker")]),
            node("b", &[("role", "db")]),
            node("c", &[("role", "worker")]),
        ];
        let plan = run(&ds, &nodes, &[daemon(&ds, "agent-x", "c")]);
        assert_eq!(created_on(&plan), ["a"]);
        let Step::Create(p) = &plan.steps[0] else {
            panic!("{:?}", plan.steps);
        };
        let tolerations = p.spec.as_ref().unwrap().tolerations.as_ref().unwrap();
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable"))
        );
        assert_eq!(p.labels().get(CONTROLLER_REVISION_HASH), Some(&hash(&ds)));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("agent-"));
    }

    #[test]
    fn untolerated_taints_keep_daemons_off_but_cordons_do_not() {
        let ds = daemon_set("agent:1");
        let nodes = [
            tainted("gpu", "dedicated", "NoSchedule"),
            tainted("cordoned", "node.kubernetes.io/unschedulable", "NoSchedule"),
        ];
        assert_eq!(created_on(&run(&ds, &nodes, &[])), ["cordoned"]);
    }

    #[test]
    fn misplaced_duplicate_and_finished_pods_are_removed_and_a_gone_node_forces_it() {
        let ds = daemon_set("agent:1");
        let nodes = [node("a", &[]), node("b", &[])];
        let mut finished = (*daemon(&ds, "agent-done", "b")).clone();
        finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let pods = [
            daemon(&ds, "agent-a1", "a"),
            daemon(&ds, "agent-a2", "a"),
            Arc::new(finished),
            daemon(&ds, "agent-gone", "gone"),
        ];
        let plan = run(&ds, &nodes, &pods);
        let removed: Vec<&Step> = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Remove { .. }))
            .collect();
        let remove = |name: &str, force| Step::Remove {
            name: name.into(),
            force,
        };
        assert_eq!(
            removed,
            [
                &remove("agent-a2", false),
                &remove("agent-done", false),
                &remove("agent-gone", true)
            ]
        );
        assert_eq!(created_on(&plan), ["b"], "the finished one is replaced");
        assert_eq!(plan.status.unwrap().number_misscheduled, 1);
    }

    #[test]
    fn a_rolling_update_replaces_unavailable_pods_freely_and_available_ones_within_budget() {
        let old = daemon_set("agent:1");
        let mut new = daemon_set("agent:2");
        new.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(IntOrString::Int(1)),
                max_surge: None,
            }),
        });
        let nodes = [node("a", &[]), node("b", &[]), node("c", &[])];
        let mut not_ready = (*daemon(&old, "agent-c", "c")).clone();
        not_ready.status.as_mut().unwrap().conditions = None;
        let pods = [
            daemon(&old, "agent-a", "a").owned(&new),
            daemon(&old, "agent-b", "b").owned(&new),
            Arc::new(not_ready).owned(&new),
        ];
        let plan = run(&new, &nodes, &pods);
        let replaced: Vec<&Step> = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Replace(_)))
            .collect();
        // c is unavailable anyway (1 of the budget of 1 used up): nothing else may go yet.
        assert_eq!(replaced, [&Step::Replace("agent-c".into())]);
        let all_ready = [
            daemon(&old, "agent-a", "a").owned(&new),
            daemon(&old, "agent-b", "b").owned(&new),
            daemon(&new, "agent-c2", "c"),
        ];
        let plan = run(&new, &nodes, &all_ready);
        assert_eq!(plan.steps, [Step::Replace("agent-a".into())]);
        let status = plan.status.unwrap();
        assert_eq!(
            (
                status.desired_number_scheduled,
                status.updated_number_scheduled,
                status.number_available
            ),
            (3, Some(1), Some(3))
        );
    }

    #[test]
    fn a_settled_daemon_set_writes_nothing() {
        let mut ds = daemon_set("agent:1");
        let nodes = [node("a", &[])];
        let pods = [daemon(&ds, "agent-a", "a")];
        let first = run(&ds, &nodes, &pods);
        assert!(first.steps.is_empty(), "{:?}", first.steps);
        ds.status = first.status;
        assert_eq!(run(&ds, &nodes, &pods), Plan::default());
    }

    trait Owned {
        fn owned(self, ds: &DaemonSet) -> Arc<Pod>;
    }

    impl Owned for Arc<Pod> {
        /// The same pod, controlled by `ds` (old-template pods of a changed DaemonSet).
        fn owned(self, ds: &DaemonSet) -> Arc<Pod> {
            let mut p = (*self).clone();
            p.metadata.owner_references = Some(vec![ownership::controller_ref(ds)]);
            Arc::new(p)
        }
    }
}
