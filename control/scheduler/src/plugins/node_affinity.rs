//! `NodeAffinity`: `nodeSelector` and required node affinity rule nodes out; preferred
//! node affinity terms add their weights to a node's score.

pub use skiff_controllers::placement::{requirement_matches, term_matches};

use crate::{
    cache::{Cache, NodeInfo},
    framework::{Plugin, PodInfo, Reason, State},
};

/// Whether the pod's `nodeSelector` and required node affinity admit `node`.
#[must_use]
pub fn required_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.pod
        .spec
        .as_ref()
        .is_none_or(|spec| skiff_controllers::placement::admits(spec, &node.node))
}

/// The `NodeAffinity` filter and score.
#[derive(Debug)]
pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &State,
        _: &Cache,
    ) -> Result<(), Vec<Reason>> {
        if required_matches(pod, node) {
            Ok(())
        } else {
            Err(vec![
                "node(s) didn't match Pod's node affinity/selector".to_owned(),
            ])
        }
    }

    fn scores(&self) -> bool {
        true
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &State, _: &Cache) -> i64 {
        let preferred = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default();
        preferred
            .iter()
            .filter(|p| term_matches(&p.preference, node.labels(), node.name()))
            .map(|p| i64::from(p.weight))
            .sum()
    }

    fn weight(&self) -> i64 {
        2
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

    #[test]
    fn node_selector_must_match_every_label() {
        let c = cache(vec![
            node("a", "4", "8Gi", &[("disk", "ssd")]),
            node("b", "4", "8Gi", &[]),
        ]);
        let mut p = pod("p", "1", &[]);
        p.spec.as_mut().unwrap().node_selector = Some(labels(&[("disk", "ssd")]));
        let p = info(p);
        assert!(
            NodeAffinity
                .filter(&p, c.node("a").unwrap(), &None, &c)
                .is_ok()
        );
        assert_eq!(
            NodeAffinity
                .filter(&p, c.node("b").unwrap(), &None, &c)
                .unwrap_err(),
            ["node(s) didn't match Pod's node affinity/selector"]
        );
    }

    #[test]
    fn required_terms_are_ored_and_expressions_anded() {
        let c = cache(vec![node("a", "4", "8Gi", &[("zone", "z1"), ("gen", "5")])]);
        let a = c.node("a").unwrap();
        let t1 = NodeSelectorTerm {
            match_expressions: Some(vec![req("zone", "In", &["z2"])]),
            match_fields: None,
        };
        let t2 = NodeSelectorTerm {
            match_expressions: Some(vec![req("zone", "In", &["z1"]), req("gen", "Gt", &["4"])]),
            match_fields: None,
        };
        let mut p = pod("p", "1", &[]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(Spec {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![t1.clone(), t2],
                }),
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 7,
                        preference: t1,
                    },
                ]),
            }),
            ..Affinity::default()
        });
        let p = info(p);
        assert!(NodeAffinity.filter(&p, a, &None, &c).is_ok());
        assert_eq!(NodeAffinity.score(&p, a, &None, &c), 0);
    }
}
