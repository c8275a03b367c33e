//! Whether a pod may go on a node by its node selector, required node affinity and
//! tolerations: the scheduler's filters and the DaemonSet controller ask the same questions,
//! as Kubernetes' component-helpers (`scheduling/corev1`, `nodeaffinity`) serve both.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// Whether `toleration` tolerates `taint` (key, operator Equal/Exists, value, effect).
#[must_use]
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        _ => {
            key == taint.key
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
    }
}

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

/// Whether `spec`'s `nodeSelector` and required node affinity admit `node`.
#[must_use]
pub fn admits(spec: &PodSpec, node: &Node) -> bool {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&EMPTY);
    let name = node.metadata.name.as_deref().unwrap_or_default();
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
            .any(|t| term_matches(t, labels, name))
    })
}

/// The NoSchedule/NoExecute taints of `node` that `tolerations` do not tolerate.
#[must_use]
pub fn untolerated<'a>(node: &'a Node, tolerations: &[Toleration]) -> Vec<&'a Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Affinity, NodeAffinity, NodeSelector, NodeSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn node(labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..NodeSpec::default()
            }),
            ..Node::default()
        }
    }

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn toleration(
        key: &str,
        operator: &str,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some(operator.into()),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        }
    }

    #[test]
    fn tolerations_match_by_key_value_and_effect() {
        let t = taint("dedicated", Some("db"), "NoSchedule");
        assert!(tolerates(
            &toleration("dedicated", "Equal", Some("db"), None),
            &t
        ));
        assert!(!tolerates(
            &toleration("dedicated", "Equal", Some("web"), None),
            &t
        ));
        assert!(tolerates(
            &toleration("dedicated", "Exists", None, Some("NoSchedule")),
            &t
        ));
        assert!(!tolerates(
            &toleration("dedicated", "Exists", None, Some("NoExecute")),
            &t
        ));
        // An empty key with Exists tolerates everything.
        assert!(tolerates(&toleration("", "Exists", None, None), &t));
    }

    #[test]
    fn only_untolerated_hard_taints_count() {
        let n = node(
            &[],
            vec![
                taint("a", None, "NoSchedule"),
                taint("b", None, "PreferNoSchedule"),
                taint("c", None, "NoExecute"),
            ],
        );
        let left = untolerated(&n, &[toleration("a", "Exists", None, None)]);
        let keys: Vec<&str> = left.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["c"]);
    }

    #[test]
    fn node_selector_and_required_affinity_both_apply() {
        let n = node(&[("zone", "a"), ("gpu", "4")], Vec::new());
        let mut spec = PodSpec {
            node_selector: Some(BTreeMap::from([("zone".into(), "a".into())])),
            ..PodSpec::default()
        };
        assert!(admits(&spec, &n));
        let term = |key: &str, op: &str, values: &[&str]| NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
            }]),
            match_fields: None,
        };
        spec.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![term("gpu", "Gt", &["8"]), term("gpu", "Gt", &["2"])],
                }),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        });
        assert!(admits(&spec, &n), "the second term holds");
        spec.node_selector = Some(BTreeMap::from([("zone".into(), "b".into())]));
        assert!(!admits(&spec, &n));
    }

    #[test]
    fn match_fields_select_by_node_name_and_empty_terms_select_nothing() {
        let by_name = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec!["n1".into()]),
            }]),
        };
        let labels = BTreeMap::new();
        assert!(term_matches(&by_name, &labels, "n1"));
        assert!(!term_matches(&by_name, &labels, "n2"));
        assert!(!term_matches(&NodeSelectorTerm::default(), &labels, "n1"));
    }
}
