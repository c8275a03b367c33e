//! `NodeAffinity`: `nodeSelector` and required node affinity rule nodes out; preferred
//! node affinity terms add their weights to a node's score.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};

use crate::{
    cache::{Cache, NodeInfo},
    framework::{Plugin, PodInfo, Reason, State},
};

/// Whether one node selector requirement holds for a node's labels (or its name, for
/// `matchFields` on `metadata.name`).
#[must_use]
pub fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node selector term selects the node (an empty term selects nothing).
#[must_use]
pub fn term_matches(
    term: &NodeSelectorTerm,
    labels: &BTreeMap<String, String>,
    name: &str,
) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| requirement_matches(r, (r.key == "metadata.name").then_some(name)))
}

/// Whether the pod's `nodeSelector` and required node affinity admit `node`.
#[must_use]
pub fn required_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let Some(spec) = pod.pod.spec.as_ref() else {
        return true;
    };
    let labels = node.labels();
    if let Some(selector) = &spec.node_selector
        && !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    required.is_none_or(|r| {
        r.node_selector_terms
            .iter()
            .any(|t| term_matches(t, labels, node.name()))
    })
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
        Affinity, NodeAffinity as Spec, NodeSelector, PreferredSchedulingTerm,
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
