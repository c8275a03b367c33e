//! `PodTopologySpread`: keep matching pods spread over topology domains (zones, hosts)
//! within `maxSkew`; DoNotSchedule constraints filter, ScheduleAnyway ones score.
//! Controller-owned pods without constraints get kube-scheduler's soft system defaults.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{
    api::core::v1::TopologySpreadConstraint,
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
};
use kube::core::{Selector, SelectorExt};

use crate::{
    cache::{Cache, NodeInfo},
    framework::{CycleState, FilterPlugin, MAX_SCORE, ScorePlugin, Stage, Unfit},
    plugins::{
        node_affinity::{required_matches, restricts_nodes},
        taint_toleration::{tolerates, tolerations},
    },
    pod_info::{PodInfo, required_label},
};

const SKEW: &str = "node(s) didn't match pod topology spread constraints";
const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
const HOSTNAME: &str = "kubernetes.io/hostname";

/// One constraint with the matching pods counted per domain.
#[derive(Clone, Debug)]
struct Constraint {
    max_skew: i64,
    key: String,
    /// `None` (absent or invalid) selects nothing.
    selector: Option<Selector>,
    /// A label every selected pod carries, to find them through the cache's index.
    required_label: Option<(String, String)>,
    min_domains: usize,
    honor_affinity: bool,
    honor_taints: bool,
    /// Domain value -> matching pods there (for filters: every eligible domain, maybe 0).
    counts: HashMap<String, i64>,
    /// The smallest count (0 while fewer than `min_domains` domains exist).
    min: i64,
    /// 1 when the incoming pod itself matches (it adds one where it lands).
    self_match: i64,
}

impl Constraint {
    fn new(pod: &PodInfo, c: &TopologySpreadConstraint) -> Self {
        let mut selector = c.label_selector.clone();
        // matchLabelKeys narrow the selector to pods sharing the incoming pod's values.
        if let Some(selector) = selector.as_mut() {
            for key in c.match_label_keys.iter().flatten() {
                if let Some(value) = pod.labels().get(key) {
                    selector
                        .match_expressions
                        .get_or_insert_with(Vec::new)
                        .push(LabelSelectorRequirement {
                            key: key.clone(),
                            operator: "In".to_owned(),
                            values: Some(vec![value.clone()]),
                        });
                }
            }
        }
        let required = selector.as_ref().and_then(required_label);
        let selector = selector.and_then(|s| Selector::try_from(s).ok());
        let self_match = i64::from(selector.as_ref().is_some_and(|s| s.matches(pod.labels())));
        Self {
            max_skew: i64::from(c.max_skew.max(1)),
            key: c.topology_key.clone(),
            selector,
            required_label: required,
            min_domains: c
                .min_domains
                .and_then(|m| usize::try_from(m).ok())
                .unwrap_or(1),
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            counts: HashMap::new(),
            min: 0,
            self_match,
        }
    }

    /// Whether `node` counts for this constraint (its node inclusion policies).
    fn includes(&self, pod: &PodInfo, node: &NodeInfo) -> bool {
        if self.honor_affinity && !required_matches(pod, node) {
            return false;
        }
        if self.honor_taints {
            let tolerations = tolerations(pod);
            return node
                .taints()
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)));
        }
        true
    }

    /// Whether `other` counts towards the spread of `pod`.
    fn selects(&self, pod: &PodInfo, other: &PodInfo) -> bool {
        other.namespace == pod.namespace
            && !other.terminating()
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(other.labels()))
    }

    fn count_on(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let n = node.pods.values().filter(|p| self.selects(pod, p)).count();
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    fn update_min(&mut self) {
        self.min = if self.counts.len() < self.min_domains {
            0
        } else {
            self.counts.values().copied().min().unwrap_or(0)
        };
    }
}

fn has_keys(node: &NodeInfo, constraints: &[Constraint]) -> bool {
    let labels = node.labels();
    constraints.iter().all(|c| labels.contains_key(&c.key))
}

/// Counts matching pods per domain for every constraint; with `every_domain`, eligible
/// domains without matching pods get a 0 (the filter's minimum needs them).
fn count(pod: &PodInfo, constraints: &mut [Constraint], cache: &Cache, every_domain: bool) {
    let single = constraints.len() == 1;
    for i in 0..constraints.len() {
        let c = &constraints[i];
        let mut counts: HashMap<String, i64> = HashMap::new();
        if every_domain {
            let unrestricted = !(c.honor_taints || c.honor_affinity && restricts_nodes(pod));
            if single && unrestricted {
                // Every node with the key is eligible: the node label index has the domains.
                for value in cache
                    .node_label_values(&c.key)
                    .into_iter()
                    .flat_map(HashMap::keys)
                {
                    counts.insert(value.clone(), 0);
                }
            } else {
                for node in cache.nodes() {
                    if has_keys(node, constraints) && c.includes(pod, node) {
                        counts.entry(node.labels()[&c.key].clone()).or_insert(0);
                    }
                }
            }
        }
        let mut visit = |node: &NodeInfo| {
            if !has_keys(node, constraints) || !c.includes(pod, node) {
                return;
            }
            let n = c.count_on(pod, node);
            if n > 0 {
                *counts.entry(node.labels()[&c.key].clone()).or_default() += n;
            }
        };
        match &c.required_label {
            Some((k, v)) => cache
                .nodes_with_pod_label(&pod.namespace, k, v)
                .for_each(&mut visit),
            None => cache.nodes().for_each(&mut visit),
        }
        let c = &mut constraints[i];
        c.counts = counts;
        c.update_min();
    }
}

const PER_POD_LABELS: [&str; 3] = [
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
];

/// kube-scheduler's system default constraints for pods a controller manages (soft:
/// they only score): spread over hosts with skew 3 and zones with skew 5. The selector is
/// the pod's own labels, which for workload pods name their controller's pods.
fn default_constraints(pod: &PodInfo) -> Vec<TopologySpreadConstraint> {
    let managed = pod
        .pod
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.controller == Some(true)));
    // Labels that differ per pod of one controller say nothing about the group.
    let labels: BTreeMap<String, String> = pod
        .labels()
        .iter()
        .filter(|(k, _)| !PER_POD_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !managed || labels.is_empty() {
        return Vec::new();
    }
    let selector = LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    };
    [(HOSTNAME, 3), ("topology.kubernetes.io/zone", 5)]
        .into_iter()
        .map(|(key, skew)| TopologySpreadConstraint {
            max_skew: skew,
            topology_key: key.to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(selector.clone()),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

fn explicit(pod: &PodInfo) -> &[TopologySpreadConstraint] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default()
}

/// The DoNotSchedule constraints, counted.
#[derive(Clone, Debug)]
struct FilterState(Vec<Constraint>);

/// The ScheduleAnyway constraints, counted, with kube-scheduler's per-constraint weight.
#[derive(Clone, Debug)]
struct ScoreState {
    constraints: Vec<(Constraint, f64)>,
    /// Explicit constraints need every key on a node; defaults do not.
    require_all_keys: bool,
}

/// The `PodTopologySpread` filter and score.
#[derive(Debug)]
pub struct PodTopologySpread;

impl PodTopologySpread {
    fn what_if(
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        delta: i64,
    ) {
        let Some(FilterState(constraints)) = state.read_mut::<FilterState>() else {
            return;
        };
        if !has_keys(node, constraints) {
            return;
        }
        for c in constraints.iter_mut() {
            if c.selects(pod, other) && c.includes(pod, node) {
                *c.counts.entry(node.labels()[&c.key].clone()).or_default() += delta;
                c.update_min();
            }
        }
    }
}

impl FilterPlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn pre_filter(&self, pod: &PodInfo, cache: &Cache, state: &mut CycleState) -> Stage {
        let mut hard: Vec<Constraint> = explicit(pod)
            .iter()
            .filter(|c| c.when_unsatisfiable != "ScheduleAnyway")
            .map(|c| Constraint::new(pod, c))
            .collect();
        if hard.is_empty() {
            return Stage::Skip;
        }
        count(pod, &mut hard, cache, true);
        state.write(FilterState(hard));
        Stage::Run
    }

    fn filter(&self, _pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Unfit> {
        let Some(FilterState(constraints)) = state.read::<FilterState>() else {
            return Ok(());
        };
        let labels = node.labels();
        for c in constraints {
            let Some(value) = labels.get(&c.key) else {
                return Err(Unfit::unresolvable(MISSING_LABEL));
            };
            let here = c.counts.get(value).copied().unwrap_or(0);
            if here + c.self_match - c.min > c.max_skew {
                return Err(Unfit::new(SKEW));
            }
        }
        Ok(())
    }

    fn remove_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        _: &Cache,
    ) {
        Self::what_if(state, pod, other, node, -1);
    }

    fn add_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        _: &Cache,
    ) {
        Self::what_if(state, pod, other, node, 1);
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "domain counts are far below 2^52"
)]
fn normalizing_weight(domains: usize) -> f64 {
    ((domains + 2) as f64).ln()
}

impl ScorePlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn pre_score(
        &self,
        pod: &PodInfo,
        cache: &Cache,
        feasible: &[&NodeInfo],
        state: &mut CycleState,
    ) -> Stage {
        let list = explicit(pod);
        let (specs, require_all_keys) = if list.is_empty() {
            (default_constraints(pod), false)
        } else {
            let soft: Vec<TopologySpreadConstraint> = list
                .iter()
                .filter(|c| c.when_unsatisfiable == "ScheduleAnyway")
                .cloned()
                .collect();
            (soft, true)
        };
        if specs.is_empty() {
            return Stage::Skip;
        }
        let mut constraints: Vec<Constraint> =
            specs.iter().map(|c| Constraint::new(pod, c)).collect();
        // Host counts are read per node at scoring time; the rest per domain now.
        let (mut hosts, mut domains): (Vec<Constraint>, Vec<Constraint>) =
            constraints.drain(..).partition(|c| c.key == HOSTNAME);
        if require_all_keys {
            count(pod, &mut domains, cache, false);
        } else {
            for c in &mut domains {
                count(pod, std::slice::from_mut(c), cache, false);
            }
        }
        let weighted = hosts
            .drain(..)
            .map(|c| (c, normalizing_weight(feasible.len())))
            .chain(domains.into_iter().map(|c| {
                let n = cache.node_label_values(&c.key).map_or(0, HashMap::len);
                (c, normalizing_weight(n))
            }))
            .collect();
        state.write(ScoreState {
            constraints: weighted,
            require_all_keys,
        });
        Stage::Run
    }

    /// Weighted matching pods in the node's domains (fewer is better); -1 marks a node
    /// without the constraints' keys, which normalizing scores 0.
    fn score(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64 {
        let Some(s) = state.read::<ScoreState>() else {
            return 0;
        };
        let labels = node.labels();
        if s.require_all_keys
            && s.constraints
                .iter()
                .any(|(c, _)| !labels.contains_key(&c.key))
        {
            return -1;
        }
        let mut score = 0.0;
        for (c, weight) in &s.constraints {
            let Some(value) = labels.get(&c.key) else {
                continue;
            };
            let n = if c.key == HOSTNAME {
                c.count_on(pod, node)
            } else {
                c.counts.get(value).copied().unwrap_or(0)
            };
            #[expect(clippy::cast_precision_loss, reason = "pod counts are far below 2^52")]
            let n = n as f64;
            #[expect(clippy::cast_precision_loss, reason = "skews are small")]
            let skew = (c.max_skew - 1) as f64;
            score += n * weight + skew;
        }
        #[expect(
            clippy::cast_possible_truncation,
            reason = "a rounded score of small counts"
        )]
        let score = score.round() as i64;
        score
    }

    fn normalize(&self, scores: &mut [i64]) {
        let counted = scores.iter().copied().filter(|s| *s >= 0);
        let min = counted.clone().min().unwrap_or(0);
        let max = counted.max().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if *s < 0 {
                0
            } else if max == 0 {
                MAX_SCORE
            } else {
                MAX_SCORE * (max + min - *s) / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::OwnerReference};

    use super::*;
    use crate::plugins::testing::{cache, info, labels, node, pod};

    fn spread(name: &str, when: &str) -> Pod {
        let mut p = pod(name, "100m", &[("app", "web")]);
        p.spec.as_mut().unwrap().topology_spread_constraints =
            Some(vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "zone".into(),
                when_unsatisfiable: when.into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: None,
                }),
                ..TopologySpreadConstraint::default()
            }]);
        p
    }

    fn zones() -> Cache {
        cache(vec![
            node("a1", "4", "8Gi", &[("zone", "a")]),
            node("b1", "4", "8Gi", &[("zone", "b")]),
            node("x", "4", "8Gi", &[]),
        ])
    }

    #[test]
    fn a_zone_ahead_by_max_skew_is_refused() {
        let mut c = zones();
        c.add_pod(Arc::new(info(spread("p1", "DoNotSchedule"))), "a1");
        let p = info(spread("p2", "DoNotSchedule"));
        let mut state = CycleState::default();
        PodTopologySpread.pre_filter(&p, &c, &mut state);
        let check = |n: &str| PodTopologySpread.filter(&p, c.node(n).unwrap(), &state);
        assert_eq!(check("a1").unwrap_err().reasons, [SKEW]);
        assert!(check("b1").is_ok());
        assert_eq!(check("x").unwrap_err().reasons, [MISSING_LABEL]);
    }

    #[test]
    fn pods_in_other_namespaces_or_terminating_do_not_count() {
        let mut c = zones();
        let mut elsewhere = spread("p1", "DoNotSchedule");
        elsewhere.metadata.namespace = Some("other".into());
        c.add_pod(Arc::new(info(elsewhere)), "a1");
        let mut leaving = spread("p3", "DoNotSchedule");
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        c.add_pod(Arc::new(info(leaving)), "a1");
        let p = info(spread("p2", "DoNotSchedule"));
        let mut state = CycleState::default();
        PodTopologySpread.pre_filter(&p, &c, &mut state);
        assert!(
            PodTopologySpread
                .filter(&p, c.node("a1").unwrap(), &state)
                .is_ok()
        );
    }

    #[test]
    fn node_affinity_limits_the_domains_that_count() {
        let mut c = zones();
        c.add_pod(Arc::new(info(spread("p1", "DoNotSchedule"))), "a1");
        // Zone b is out of the pod's reach, so zone a's one pod is not a skew.
        let mut p = spread("p2", "DoNotSchedule");
        p.spec.as_mut().unwrap().node_selector = Some(labels(&[("zone", "a")]));
        let p = info(p);
        let mut state = CycleState::default();
        PodTopologySpread.pre_filter(&p, &c, &mut state);
        assert!(
            PodTopologySpread
                .filter(&p, c.node("a1").unwrap(), &state)
                .is_ok()
        );
    }

    #[test]
    fn min_domains_treats_missing_domains_as_empty() {
        let mut c = zones();
        c.add_pod(Arc::new(info(spread("p1", "DoNotSchedule"))), "a1");
        c.add_pod(Arc::new(info(spread("p2", "DoNotSchedule"))), "b1");
        let mut p = spread("p3", "DoNotSchedule");
        p.spec
            .as_mut()
            .unwrap()
            .topology_spread_constraints
            .as_mut()
            .unwrap()[0]
            .min_domains = Some(3);
        let p = info(p);
        let mut state = CycleState::default();
        PodTopologySpread.pre_filter(&p, &c, &mut state);
        // Two domains of three wanted: the global minimum is 0, so 1 + 1 - 0 > 1.
        assert!(
            PodTopologySpread
                .filter(&p, c.node("a1").unwrap(), &state)
                .is_err()
        );
    }

    #[test]
    fn evicting_a_matching_pod_lowers_its_domains_count() {
        let mut c = zones();
        c.add_pod(Arc::new(info(spread("p1", "DoNotSchedule"))), "a1");
        let p = info(spread("p2", "DoNotSchedule"));
        let mut state = CycleState::default();
        PodTopologySpread.pre_filter(&p, &c, &mut state);
        let a1 = c.node("a1").unwrap();
        assert!(PodTopologySpread.filter(&p, a1, &state).is_err());
        let victim = a1.pods["uid-p1"].clone();
        PodTopologySpread.remove_pod(&mut state, &p, &victim, a1, &c);
        assert!(PodTopologySpread.filter(&p, a1, &state).is_ok());
    }

    #[test]
    fn schedule_anyway_prefers_the_emptier_domain() {
        let mut c = zones();
        c.add_pod(Arc::new(info(spread("p1", "ScheduleAnyway"))), "a1");
        let p = info(spread("p2", "ScheduleAnyway"));
        let mut state = CycleState::default();
        PodTopologySpread.pre_filter(&p, &c, &mut state);
        assert!(
            PodTopologySpread
                .filter(&p, c.node("a1").unwrap(), &state)
                .is_ok()
        );
        let feasible: Vec<&NodeInfo> = c.nodes().collect();
        PodTopologySpread.pre_score(&p, &c, &feasible, &mut state);
        let mut scores: Vec<i64> = feasible
            .iter()
            .map(|n| PodTopologySpread.score(&p, n, &state))
            .collect();
        PodTopologySpread.normalize(&mut scores);
        // a1 has a match, b1 none, x lacks the key.
        assert!(scores[1] > scores[0], "{scores:?}");
        assert_eq!(scores[2], 0);
    }

    #[test]
    fn controller_owned_pods_spread_softly_by_default() {
        let mut c = cache(vec![
            node("n1", "4", "8Gi", &[(HOSTNAME, "n1")]),
            node("n2", "4", "8Gi", &[(HOSTNAME, "n2")]),
        ]);
        let owned = |name: &str| {
            let mut p = pod(name, "100m", &[("app", "web")]);
            p.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: "rs".into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]);
            info(p)
        };
        c.add_pod(Arc::new(owned("a")), "n1");
        let p = owned("b");
        let mut state = CycleState::default();
        PodTopologySpread.pre_filter(&p, &c, &mut state);
        let feasible: Vec<&NodeInfo> = c.nodes().collect();
        PodTopologySpread.pre_score(&p, &c, &feasible, &mut state);
        let s1 = PodTopologySpread.score(&p, feasible[0], &state);
        let s2 = PodTopologySpread.score(&p, feasible[1], &state);
        assert!(
            s1 > s2,
            "the host with a replica scores worse: {s1} vs {s2}"
        );
    }
}
