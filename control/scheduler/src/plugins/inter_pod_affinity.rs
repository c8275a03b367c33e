//! `InterPodAffinity`: required pod affinity and anti-affinity by topology key (including
//! existing pods' anti-affinity against the newcomer); preferred terms score.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};
use kube::core::{Selector, SelectorExt};

use crate::{
    cache::{Cache, NodeInfo},
    framework::{MAX_SCORE, Plugin, PodInfo, Reason, State},
};

/// A term ready to match pods: its selector and the namespaces it looks in (`None`: all).
struct Term {
    selector: Option<Selector>,
    match_labels: Vec<(String, String)>,
    namespaces: Option<HashSet<String>>,
    topology_key: String,
}

impl Term {
    fn new(term: &PodAffinityTerm, own_namespace: &str) -> Self {
        let selector = term
            .label_selector
            .clone()
            .and_then(|s| Selector::try_from(s).ok());
        let match_labels = term
            .label_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let listed = term.namespaces.clone().unwrap_or_default();
        // A namespaceSelector needs namespace labels this plugin does not index: any
        // namespaceSelector widens the term to every namespace.
        let namespaces = if !listed.is_empty() {
            Some(listed.into_iter().collect())
        } else if term.namespace_selector.is_some() {
            None
        } else {
            Some(HashSet::from([own_namespace.to_owned()]))
        };
        Self {
            selector,
            match_labels,
            namespaces,
            topology_key: term.topology_key.clone(),
        }
    }

    fn matches(&self, pod: &Pod) -> bool {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        if self
            .namespaces
            .as_ref()
            .is_some_and(|set| !set.contains(ns))
        {
            return false;
        }
        let empty = std::collections::BTreeMap::new();
        // A term without a selector selects nothing, as in Kubernetes.
        self.selector
            .as_ref()
            .is_some_and(|s| s.matches(pod.metadata.labels.as_ref().unwrap_or(&empty)))
    }

    /// Topology values (of this term's key) of the nodes running pods the term matches,
    /// with how many such pods each has.
    fn domains(&self, cache: &Cache) -> HashMap<String, i64> {
        let mut out = HashMap::new();
        let mut visit = |node: &NodeInfo| {
            let Some(value) = node.labels().get(&self.topology_key) else {
                return;
            };
            let n = node.pods.values().filter(|p| self.matches(p)).count();
            if n > 0 {
                *out.entry(value.clone()).or_default() += i64::try_from(n).unwrap_or(i64::MAX);
            }
        };
        // Use the label index when the selector names a label and the namespaces are known.
        match (self.match_labels.first(), &self.namespaces) {
            (Some((k, v)), Some(namespaces)) => {
                let mut seen = HashSet::new();
                for ns in namespaces {
                    for node in cache.nodes_with_label(ns, k, v) {
                        if seen.insert(node.name().to_owned()) {
                            visit(node);
                        }
                    }
                }
            }
            _ => cache.nodes().for_each(visit),
        }
        out
    }
}

fn affinity(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::Affinity> {
    pod.spec.as_ref()?.affinity.as_ref()
}

#[derive(Default)]
struct Prepared {
    /// Required affinity: (topology key, allowed values), and whether the pod may go
    /// anywhere because no pod matches yet but it matches its own terms.
    affinity: Vec<(String, HashSet<String>)>,
    affinity_bootstrap: bool,
    /// Required anti-affinity: (topology key, forbidden values).
    anti: Vec<(String, HashSet<String>)>,
    /// Domains refused by existing pods' anti-affinity: (key, value).
    refused: HashSet<(String, String)>,
    /// Preferred terms: (topology key, value -> weighted count).
    preferred: Vec<(String, HashMap<String, i64>)>,
}

/// The `InterPodAffinity` filter and score.
#[derive(Debug)]
pub struct InterPodAffinity;

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn pre_filter(&self, pod: &PodInfo, cache: &Cache) -> State {
        let mut prepared = Prepared::default();
        let ns = pod.namespace.as_str();
        let aff = affinity(&pod.pod);
        if let Some(terms) = aff.and_then(|a| a.pod_affinity.as_ref()).and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }) {
            let terms: Vec<Term> = terms.iter().map(|t| Term::new(t, ns)).collect();
            let mut any = false;
            for term in &terms {
                let domains = term.domains(cache);
                any |= !domains.is_empty();
                prepared
                    .affinity
                    .push((term.topology_key.clone(), domains.into_keys().collect()));
            }
            prepared.affinity_bootstrap = !any && terms.iter().all(|t| t.matches(&pod.pod));
        }
        if let Some(terms) = aff
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
        {
            for t in terms {
                let term = Term::new(t, ns);
                prepared.anti.push((
                    term.topology_key.clone(),
                    term.domains(cache).into_keys().collect(),
                ));
            }
        }
        for (existing, node) in cache.anti_affinity_pods() {
            let existing_ns = existing.metadata.namespace.as_deref().unwrap_or_default();
            let terms = affinity(existing)
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_deref()
                })
                .unwrap_or_default();
            for t in terms {
                let term = Term::new(t, existing_ns);
                if term.matches(&pod.pod)
                    && let Some(value) = node.labels().get(&term.topology_key)
                {
                    prepared
                        .refused
                        .insert((term.topology_key.clone(), value.clone()));
                }
            }
        }
        let weighted =
            |terms: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>,
             sign: i64,
             out: &mut Vec<(String, HashMap<String, i64>)>| {
                for w in terms.into_iter().flatten() {
                    let term = Term::new(&w.pod_affinity_term, ns);
                    let counts = term
                        .domains(cache)
                        .into_iter()
                        .map(|(k, n)| (k, n * i64::from(w.weight) * sign))
                        .collect();
                    out.push((term.topology_key, counts));
                }
            };
        weighted(
            aff.and_then(|a| a.pod_affinity.as_ref()).and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
            1,
            &mut prepared.preferred,
        );
        weighted(
            aff.and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
            -1,
            &mut prepared.preferred,
        );
        Some(Box::new(prepared))
    }

    fn filter(
        &self,
        _pod: &PodInfo,
        node: &NodeInfo,
        state: &State,
        _: &Cache,
    ) -> Result<(), Vec<Reason>> {
        let Some(p) = state.as_ref().and_then(|s| s.downcast_ref::<Prepared>()) else {
            return Ok(());
        };
        let labels = node.labels();
        if p.refused.iter().any(|(k, v)| labels.get(k) == Some(v)) {
            return Err(vec![
                "node(s) didn't satisfy existing pods anti-affinity rules".to_owned(),
            ]);
        }
        if !p.affinity_bootstrap {
            let ok = p
                .affinity
                .iter()
                .all(|(key, values)| labels.get(key).is_some_and(|v| values.contains(v)));
            if !ok {
                return Err(vec!["node(s) didn't match pod affinity rules".to_owned()]);
            }
        } else if p.affinity.iter().any(|(key, _)| !labels.contains_key(key)) {
            return Err(vec!["node(s) didn't match pod affinity rules".to_owned()]);
        }
        if p.anti
            .iter()
            .any(|(key, values)| labels.get(key).is_some_and(|v| values.contains(v)))
        {
            return Err(vec![
                "node(s) didn't match pod anti-affinity rules".to_owned(),
            ]);
        }
        Ok(())
    }

    fn scores(&self) -> bool {
        true
    }

    fn score(&self, _pod: &PodInfo, node: &NodeInfo, state: &State, _: &Cache) -> i64 {
        let Some(p) = state.as_ref().and_then(|s| s.downcast_ref::<Prepared>()) else {
            return 0;
        };
        let labels = node.labels();
        p.preferred
            .iter()
            .filter_map(|(key, counts)| counts.get(labels.get(key)?))
            .sum()
    }

    /// Min-max scaling, since preferred anti-affinity scores go negative.
    fn normalize(&self, scores: &mut [i64]) {
        let (min, max) = (
            scores.iter().copied().min().unwrap_or(0),
            scores.iter().copied().max().unwrap_or(0),
        );
        for s in scores.iter_mut() {
            *s = if max == min {
                0
            } else {
                (*s - min) * MAX_SCORE / (max - min)
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

    use k8s_openapi::{
        api::core::v1::{Affinity, PodAntiAffinity},
        apimachinery::pkg::apis::meta::v1::LabelSelector,
    };

    use super::*;
    use crate::plugins::testing::{cache, info, labels, node, pod};

    fn anti(app: &str) -> Affinity {
        Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(labels(&[("app", app)])),
                        match_expressions: None,
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..PodAffinityTerm::default()
                }]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }
    }

    #[test]
    fn anti_affinity_keeps_replicas_apart_both_ways() {
        let mut c = cache(vec![
            node("n1", "4", "8Gi", &[("kubernetes.io/hostname", "n1")]),
            node("n2", "4", "8Gi", &[("kubernetes.io/hostname", "n2")]),
        ]);
        let mut first = pod("a", "1", &[("app", "web")]);
        first.spec.as_mut().unwrap().affinity = Some(anti("web"));
        c.add_pod(Arc::new(first), "n1");
        // The newcomer's own term refuses n1.
        let mut second = pod("b", "1", &[("app", "web")]);
        second.spec.as_mut().unwrap().affinity = Some(anti("web"));
        let second = info(second);
        let state = InterPodAffinity.pre_filter(&second, &c);
        assert_eq!(
            InterPodAffinity
                .filter(&second, c.node("n1").unwrap(), &state, &c)
                .unwrap_err(),
            ["node(s) didn't satisfy existing pods anti-affinity rules"]
        );
        assert!(
            InterPodAffinity
                .filter(&second, c.node("n2").unwrap(), &state, &c)
                .is_ok()
        );
        // A plain pod with the label is refused by the existing pod's term alone.
        let plain = info(pod("c", "1", &[("app", "web")]));
        let state = InterPodAffinity.pre_filter(&plain, &c);
        assert!(
            InterPodAffinity
                .filter(&plain, c.node("n1").unwrap(), &state, &c)
                .is_err()
        );
        let other = info(pod("d", "1", &[("app", "db")]));
        let state = InterPodAffinity.pre_filter(&other, &c);
        assert!(
            InterPodAffinity
                .filter(&other, c.node("n1").unwrap(), &state, &c)
                .is_ok()
        );
    }

    #[test]
    fn required_affinity_follows_matching_pods_or_bootstraps_the_first() {
        let mut c = cache(vec![
            node("n1", "4", "8Gi", &[("zone", "a")]),
            node("n2", "4", "8Gi", &[("zone", "b")]),
        ]);
        let with_affinity = |name: &str| {
            let mut p = pod(name, "1", &[("app", "cache")]);
            p.spec.as_mut().unwrap().affinity = Some(Affinity {
                pod_affinity: Some(k8s_openapi::api::core::v1::PodAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(labels(&[("app", "cache")])),
                                match_expressions: None,
                            }),
                            topology_key: "zone".into(),
                            ..PodAffinityTerm::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Affinity::default()
            });
            info(p)
        };
        let first = with_affinity("a");
        let state = InterPodAffinity.pre_filter(&first, &c);
        assert!(
            InterPodAffinity
                .filter(&first, c.node("n2").unwrap(), &state, &c)
                .is_ok()
        );
        c.add_pod(first.pod.clone(), "n1");
        let second = with_affinity("b");
        let state = InterPodAffinity.pre_filter(&second, &c);
        assert!(
            InterPodAffinity
                .filter(&second, c.node("n1").unwrap(), &state, &c)
                .is_ok()
        );
        assert!(
            InterPodAffinity
                .filter(&second, c.node("n2").unwrap(), &state, &c)
                .is_err()
        );
    }
}
