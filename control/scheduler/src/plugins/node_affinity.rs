//! `NodeAffinity`: `nodeSelector` and required node affinity rule nodes out; preferred
//! node affinity terms add their weights to a node's score.

pub use skiff_control_runtime::placement::{requirement_matches, term_matches};

use crate::{
    cache::{Cache, NodeInfo},
    framework::{CycleState, FilterPlugin, ScorePlugin, Stage, Unfit},
    pod_info::PodInfo,
};

/// Whether the pod's `nodeSelector` and required node affinity admit `node`.
#[must_use]
pub fn required_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.pod
        .spec
        .as_ref()
        .is_none_or(|spec| skiff_control_runtime::placement::admits(spec, &node.node))
}

/// Whether the pod restricts nodes at all (a `nodeSelector` or required node affinity).
#[must_use]
pub fn restricts_nodes(pod: &PodInfo) -> bool {
    pod.pod.spec.as_ref().is_some_and(|spec| {
        spec.node_selector.as_ref().is_some_and(|s| !s.is_empty())
            || spec
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .is_some_and(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .is_some()
                })
    })
}

fn preferred(pod: &PodInfo) -> &[k8s_openapi::api::core::v1::PreferredSchedulingTerm] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

/// The `NodeAffinity` filter and score.
#[derive(Debug)]
pub struct NodeAffinity;

impl FilterPlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn pre_filter(&self, pod: &PodInfo, _: &Cache, _: &mut CycleState) -> Stage {
        if restricts_nodes(pod) {
            Stage::Run
        } else {
            Stage::Skip
        }
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        if required_matches(pod, node) {
            Ok(())
        } else {
            Err(Unfit::unresolvable(
                "node(s) didn't match Pod's node affinity/selector",
            ))
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn pre_score(&self, pod: &PodInfo, _: &Cache, _: &[&NodeInfo], _: &mut CycleState) -> Stage {
        if preferred(pod).is_empty() {
            Stage::Skip
        } else {
            Stage::Run
        }
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        preferred(pod)
            .iter()
            .filter(|p| term_matches(&p.preference, node.labels(), node.name()))
            .map(|p| i64::from(p.weight))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity as Spec, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
        PreferredSchedulingTerm,
    };

    use super::*;
    use crate::plugins::testing::{cache, info, labels, node, pod};

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn term(reqs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(reqs),
            match_fields: None,
        }
    }

    #[test]
    fn node_selector_must_match_every_label() {
        let c = cache(vec![
            node("a", "4", "8Gi", &[("disk", "ssd"), ("gen", "5")]),
            node("b", "4", "8Gi", &[("disk", "ssd")]),
        ]);
        let mut p = pod("p", "1", &[]);
        p.spec.as_mut().unwrap().node_selector = Some(labels(&[("disk", "ssd"), ("gen", "5")]));
        let p = info(p);
        let state = CycleState::default();
        assert!(
            NodeAffinity
                .filter(&p, c.node("a").unwrap(), &state)
                .is_ok()
        );
        assert_eq!(
            NodeAffinity
                .filter(&p, c.node("b").unwrap(), &state)
                .unwrap_err()
                .reasons,
            ["node(s) didn't match Pod's node affinity/selector"]
        );
    }

    #[test]
    fn required_terms_are_ored_and_expressions_anded() {
        let c = cache(vec![
            node("a", "4", "8Gi", &[("zone", "z1"), ("gen", "5")]),
            node("b", "4", "8Gi", &[("zone", "z1"), ("gen", "3")]),
        ]);
        let state = CycleState::default();
        let mut p = pod("p", "1", &[]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(Spec {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![
                        term(vec![req("zone", "In", &["z2"])]),
                        term(vec![req("zone", "In", &["z1"]), req("gen", "Gt", &["4"])]),
                    ],
                }),
                preferred_during_scheduling_ignored_during_execution: None,
            }),
            ..Affinity::default()
        });
        let p = info(p);
        assert!(
            NodeAffinity
                .filter(&p, c.node("a").unwrap(), &state)
                .is_ok()
        );
        assert!(
            NodeAffinity
                .filter(&p, c.node("b").unwrap(), &state)
                .is_err()
        );
    }

    #[test]
    fn preferred_terms_add_their_weights() {
        let c = cache(vec![
            node("a", "4", "8Gi", &[("zone", "z1"), ("disk", "ssd")]),
            node("b", "4", "8Gi", &[("zone", "z1")]),
            node("c", "4", "8Gi", &[]),
        ]);
        let state = CycleState::default();
        let mut p = pod("p", "1", &[]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(Spec {
                required_during_scheduling_ignored_during_execution: None,
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 10,
                        preference: term(vec![req("zone", "In", &["z1"])]),
                    },
                    PreferredSchedulingTerm {
                        weight: 30,
                        preference: term(vec![req("disk", "Exists", &[])]),
                    },
                ]),
            }),
            ..Affinity::default()
        });
        let p = info(p);
        let mut scores: Vec<i64> = ["a", "b", "c"]
            .iter()
            .map(|n| NodeAffinity.score(&p, c.node(n).unwrap(), &state))
            .collect();
        assert_eq!(scores, [40, 10, 0]);
        ScorePlugin::normalize(&NodeAffinity, &mut scores);
        assert_eq!(scores, [100, 25, 0]);
    }
}
