//! `PodTopologySpread`: keep matching pods spread over topology domains (zones, nodes)
//! within `maxSkew`; DoNotSchedule constraints filter, ScheduleAnyway ones score.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use kube::core::{Selector, SelectorExt};

use crate::{
    cache::{Cache, NodeInfo},
    framework::{MAX_SCORE, Plugin, PodInfo, Reason, State},
    plugins::node_affinity::required_matches,
};

struct Constraint {
    max_skew: i64,
    key: String,
    hard: bool,
    /// Domain value -> matching pods there (every eligible domain present, maybe 0).
    counts: HashMap<String, i64>,
    min: i64,
    /// Whether the incoming pod itself matches the selector (it adds one where it lands).
    self_match: i64,
}

fn constraints(pod: &PodInfo) -> &[TopologySpreadConstraint] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default()
}

fn prepare(pod: &PodInfo, c: &TopologySpreadConstraint, cache: &Cache) -> Constraint {
    let selector = c
        .label_selector
        .clone()
        .and_then(|s| Selector::try_from(s).ok());
    let empty = BTreeMap::new();
    let selects = |labels: Option<&BTreeMap<String, String>>| {
        selector
            .as_ref()
            .is_some_and(|s| s.matches(labels.unwrap_or(&empty)))
    };
    let honor_affinity = c.node_affinity_policy.as_deref() != Some("Ignore");
    let hard = c.when_unsatisfiable != "ScheduleAnyway";
    let mut counts: HashMap<String, i64> = HashMap::new();
    let count_on = |node: &NodeInfo, counts: &mut HashMap<String, i64>| {
        let Some(value) = node.labels().get(&c.topology_key) else {
            return;
        };
        if honor_affinity && !required_matches(pod, node) {
            return;
        }
        let n = node
            .pods
            .values()
            .filter(|p| p.metadata.namespace.as_deref() == Some(pod.namespace.as_str()))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| selects(p.metadata.labels.as_ref()))
            .count();
        *counts.entry(value.clone()).or_default() += i64::try_from(n).unwrap_or(i64::MAX);
    };
    let first_label = c
        .label_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .and_then(|m| m.iter().next());
    match first_label {
        // Only nodes running a pod with the selector's first label can count: the index
        // finds them without a pass over every node.
        Some((k, v)) => {
            for node in cache.nodes_with_label(&pod.namespace, k, v) {
                count_on(node, &mut counts);
            }
        }
        None => cache.nodes().for_each(|node| count_on(node, &mut counts)),
    }
    if hard {
        // The minimum needs every eligible domain, empty ones included.
        for node in cache.nodes() {
            if let Some(value) = node.labels().get(&c.topology_key)
                && !counts.contains_key(value)
                && (!honor_affinity || required_matches(pod, node))
            {
                counts.insert(value.clone(), 0);
            }
        }
    }
    let min = counts.values().copied().min().unwrap_or(0);
    Constraint {
        max_skew: i64::from(c.max_skew.max(1)),
        key: c.topology_key.clone(),
        hard,
        min,
        self_match: i64::from(selects(Some(pod.labels()))),
        counts,
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
    let selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    };
    [
        ("kubernetes.io/hostname", 3),
        ("topology.kubernetes.io/zone", 5),
    ]
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

/// The `PodTopologySpread` filter and score.
#[derive(Debug)]
pub struct PodTopologySpread;

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn pre_filter(&self, pod: &PodInfo, cache: &Cache) -> State {
        let list = constraints(pod);
        let prepared: Vec<Constraint> = if list.is_empty() {
            default_constraints(pod)
                .iter()
                .map(|c| prepare(pod, c, cache))
                .collect()
        } else {
            list.iter().map(|c| prepare(pod, c, cache)).collect()
        };
        if prepared.is_empty() {
            return None;
        }
        Some(Box::new(prepared))
    }

    fn filter(
        &self,
        _pod: &PodInfo,
        node: &NodeInfo,
        state: &State,
        _: &Cache,
    ) -> Result<(), Vec<Reason>> {
        let Some(list) = state
            .as_ref()
            .and_then(|s| s.downcast_ref::<Vec<Constraint>>())
        else {
            return Ok(());
        };
        for c in list.iter().filter(|c| c.hard) {
            let Some(value) = node.labels().get(&c.key) else {
                return Err(vec![
                    "node(s) didn't match pod topology spread constraints (missing required label)"
                        .to_owned(),
                ]);
            };
            let here = c.counts.get(value).copied().unwrap_or(0);
            if here + c.self_match - c.min > c.max_skew {
                return Err(vec![
                    "node(s) didn't match pod topology spread constraints".to_owned(),
                ]);
            }
        }
        Ok(())
    }

    fn scores(&self) -> bool {
        true
    }

    /// Matching pods already in the node's domains (fewer is better).
    fn score(&self, _pod: &PodInfo, node: &NodeInfo, state: &State, _: &Cache) -> i64 {
        let Some(list) = state
            .as_ref()
            .and_then(|s| s.downcast_ref::<Vec<Constraint>>())
        else {
            return 0;
        };
        list.iter()
            .filter(|c| !c.hard)
            .map(|c| {
                node.labels()
                    .get(&c.key)
                    .and_then(|v| c.counts.get(v))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    }

    fn normalize(&self, scores: &mut [i64]) {
        let (min, max) = (
            scores.iter().copied().min().unwrap_or(0),
            scores.iter().copied().max().unwrap_or(0),
        );
        for s in scores.iter_mut() {
            *s = if max == min {
                MAX_SCORE
            } else {
                (max - *s) * MAX_SCORE / (max - min)
            };
        }
    }

    fn weight(&self) -> i64 {
        2
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::*;
    use crate::plugins::testing::{cache, info, labels, node, pod};

    fn spread(name: &str) -> k8s_openapi::api::core::v1::Pod {
        let mut p = pod(name, "100m", &[("app", "web")]);
        p.spec.as_mut().unwrap().topology_spread_constraints =
            Some(vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "zone".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: None,
                }),
                ..TopologySpreadConstraint::default()
            }]);
        p
    }

    #[test]
    fn a_zone_ahead_by_max_skew_is_refused() {
        let mut c = cache(vec![
            node("a1", "4", "8Gi", &[("zone", "a")]),
            node("b1", "4", "8Gi", &[("zone", "b")]),
            node("x", "4", "8Gi", &[]),
        ]);
        c.add_pod(Arc::new(spread("p1")), "a1");
        let p = info(spread("p2"));
        let state = PodTopologySpread.pre_filter(&p, &c);
        assert_eq!(
            PodTopologySpread
                .filter(&p, c.node("a1").unwrap(), &state, &c)
                .unwrap_err(),
            ["node(s) didn't match pod topology spread constraints"]
        );
        assert!(
            PodTopologySpread
                .filter(&p, c.node("b1").unwrap(), &state, &c)
                .is_ok()
        );
        assert!(
            PodTopologySpread
                .filter(&p, c.node("x").unwrap(), &state, &c)
                .is_err()
        );
    }
}
