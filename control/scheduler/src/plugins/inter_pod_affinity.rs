//! `InterPodAffinity`: required pod affinity and anti-affinity by topology key, including
//! placed pods' anti-affinity against the newcomer; preferred terms (the newcomer's and,
//! symmetrically, placed pods') score. Matching pods are found through the cache's label
//! and term indexes, never by scanning every pod.

use std::collections::{HashMap, HashSet};

use crate::{
    cache::{Cache, NodeInfo},
    framework::{CycleState, FilterPlugin, MAX_SCORE, ScorePlugin, Stage, Unfit},
    pod_info::{AffinityTerm, PodInfo},
};

const AFFINITY: &str = "node(s) didn't match pod affinity rules";
const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

/// A placed pod's required affinity term counts this much towards a newcomer it selects
/// (kube-scheduler's hardPodAffinityWeight).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// Topology key -> value -> count.
#[derive(Clone, Debug, Default)]
struct Counts(HashMap<String, HashMap<String, i64>>);

impl Counts {
    fn add(&mut self, key: &str, value: &str, delta: i64) {
        let values = self.0.entry(key.to_owned()).or_default();
        let n = values.entry(value.to_owned()).or_default();
        *n += delta;
        if *n == 0 {
            values.remove(value);
            if values.is_empty() {
                self.0.remove(key);
            }
        }
    }

    fn get(&self, key: &str, value: &str) -> i64 {
        self.0
            .get(key)
            .and_then(|v| v.get(value))
            .copied()
            .unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `delta` for `key`'s value on `node`, if the node has the key.
    fn add_on(&mut self, node: &NodeInfo, key: &str, delta: i64) {
        if let Some(value) = node.labels().get(key) {
            self.add(key, value, delta);
        }
    }
}

/// Nodes that may run pods `term` selects: from the pod label index when the term
/// requires a label, else every node.
fn nodes_for<'a>(term: &AffinityTerm, cache: &'a Cache) -> Vec<&'a NodeInfo> {
    let Some((key, value)) = &term.required_label else {
        return cache.nodes().collect();
    };
    let namespaces: Vec<String> = if term.namespace_selector.is_some() {
        cache
            .namespaces_with_pod_label(key, value)
            .into_iter()
            .filter(|ns| term.covers_namespace(ns, cache))
            .collect()
    } else {
        term.namespaces.iter().cloned().collect()
    };
    let mut seen = HashSet::new();
    namespaces
        .iter()
        .flat_map(|ns| cache.nodes_with_pod_label(ns, key, value))
        .filter(|n| seen.insert(n.name().to_owned()))
        .collect()
}

/// What the filter checks, per topology domain.
#[derive(Clone, Debug, Default)]
struct FilterState {
    /// Domains where placed pods' required anti-affinity selects the newcomer.
    existing_anti: Counts,
    /// Domains with pods matching all of the newcomer's required affinity terms.
    affinity: Counts,
    /// Domains with pods matching one of the newcomer's required anti-affinity terms.
    anti: Counts,
    /// Whether the newcomer matches all its own affinity terms (the first of a group may
    /// then go anywhere).
    self_match: bool,
}

fn matches_all(terms: &[AffinityTerm], pod: &PodInfo, cache: &Cache) -> bool {
    terms.iter().all(|t| t.matches(pod, cache))
}

/// Adds `delta` for what `other` on `node` means to `pod`'s filter.
fn count_pod(
    state: &mut FilterState,
    pod: &PodInfo,
    other: &PodInfo,
    node: &NodeInfo,
    cache: &Cache,
    delta: i64,
) {
    for term in &other.required_anti_affinity {
        if term.matches(pod, cache) {
            state.existing_anti.add_on(node, &term.topology_key, delta);
        }
    }
    if !pod.required_affinity.is_empty() && matches_all(&pod.required_affinity, other, cache) {
        for term in &pod.required_affinity {
            state.affinity.add_on(node, &term.topology_key, delta);
        }
    }
    for term in &pod.required_anti_affinity {
        if term.matches(other, cache) {
            state.anti.add_on(node, &term.topology_key, delta);
        }
    }
}

/// The `InterPodAffinity` filter and score.
#[derive(Debug)]
pub struct InterPodAffinity;

impl FilterPlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn pre_filter(&self, pod: &PodInfo, cache: &Cache, state: &mut CycleState) -> Stage {
        let mut s = FilterState::default();
        for (existing, node) in cache.anti_affinity_towards(pod) {
            if existing.uid == pod.uid {
                continue;
            }
            for term in &existing.required_anti_affinity {
                if term.matches(pod, cache) {
                    s.existing_anti.add_on(node, &term.topology_key, 1);
                }
            }
        }
        if let Some(first) = pod.required_affinity.first() {
            s.self_match = matches_all(&pod.required_affinity, pod, cache);
            for node in nodes_for(first, cache) {
                let n = node
                    .pods
                    .values()
                    .filter(|p| p.uid != pod.uid && matches_all(&pod.required_affinity, p, cache))
                    .count();
                if n > 0 {
                    let n = i64::try_from(n).unwrap_or(i64::MAX);
                    for term in &pod.required_affinity {
                        s.affinity.add_on(node, &term.topology_key, n);
                    }
                }
            }
        }
        for term in &pod.required_anti_affinity {
            for node in nodes_for(term, cache) {
                let n = node
                    .pods
                    .values()
                    .filter(|p| p.uid != pod.uid && term.matches(p, cache))
                    .count();
                if n > 0 {
                    s.anti.add_on(
                        node,
                        &term.topology_key,
                        i64::try_from(n).unwrap_or(i64::MAX),
                    );
                }
            }
        }
        let needed = !s.existing_anti.is_empty()
            || !pod.required_affinity.is_empty()
            || !pod.required_anti_affinity.is_empty();
        if !needed {
            return Stage::Skip;
        }
        state.write(s);
        Stage::Run
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Unfit> {
        let Some(s) = state.read::<FilterState>() else {
            return Ok(());
        };
        let labels = node.labels();
        if !pod.required_affinity.is_empty() {
            let mut pods_exist = true;
            for term in &pod.required_affinity {
                // Every topology key must exist on the node.
                let Some(value) = labels.get(&term.topology_key) else {
                    return Err(Unfit::unresolvable(AFFINITY));
                };
                if s.affinity.get(&term.topology_key, value) <= 0 {
                    pods_exist = false;
                }
            }
            // The first pod of a group with affinity to itself may go anywhere.
            if !(pods_exist || s.affinity.is_empty() && s.self_match) {
                return Err(Unfit::unresolvable(AFFINITY));
            }
        }
        for term in &pod.required_anti_affinity {
            if let Some(value) = labels.get(&term.topology_key)
                && s.anti.get(&term.topology_key, value) > 0
            {
                return Err(Unfit::new(ANTI_AFFINITY));
            }
        }
        if !s.existing_anti.is_empty() && labels.iter().any(|(k, v)| s.existing_anti.get(k, v) > 0)
        {
            return Err(Unfit::new(EXISTING_ANTI_AFFINITY));
        }
        Ok(())
    }

    fn remove_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        cache: &Cache,
    ) {
        if let Some(s) = state.read_mut::<FilterState>() {
            count_pod(s, pod, other, node, cache, -1);
        }
    }

    fn add_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        cache: &Cache,
    ) {
        if let Some(s) = state.read_mut::<FilterState>() {
            count_pod(s, pod, other, node, cache, 1);
        }
    }
}

/// Weighted matches per topology domain, for scoring.
#[derive(Clone, Debug, Default)]
struct ScoreState(Counts);

impl ScorePlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn pre_score(
        &self,
        pod: &PodInfo,
        cache: &Cache,
        _feasible: &[&NodeInfo],
        state: &mut CycleState,
    ) -> Stage {
        let mut scores = Counts::default();
        for w in &pod.preferred {
            for node in nodes_for(&w.term, cache) {
                let n = node
                    .pods
                    .values()
                    .filter(|p| p.uid != pod.uid && w.term.matches(p, cache))
                    .count();
                if n > 0 {
                    let n = i64::try_from(n).unwrap_or(i64::MAX);
                    scores.add_on(node, &w.term.topology_key, n * w.weight);
                }
            }
        }
        // Placed pods' preferences about the newcomer count too (symmetry).
        for (existing, node) in cache.scoring_terms_towards(pod) {
            if existing.uid == pod.uid {
                continue;
            }
            for w in &existing.preferred {
                if w.term.matches(pod, cache) {
                    scores.add_on(node, &w.term.topology_key, w.weight);
                }
            }
            for term in &existing.required_affinity {
                if term.matches(pod, cache) {
                    scores.add_on(node, &term.topology_key, HARD_POD_AFFINITY_WEIGHT);
                }
            }
        }
        if scores.is_empty() {
            return Stage::Skip;
        }
        state.write(ScoreState(scores));
        Stage::Run
    }

    fn score(&self, _pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64 {
        let Some(ScoreState(scores)) = state.read::<ScoreState>() else {
            return 0;
        };
        let labels = node.labels();
        scores
            .0
            .iter()
            .filter_map(|(key, values)| values.get(labels.get(key)?))
            .sum()
    }

    /// Min-max scaling, since anti-affinity scores go negative.
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
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use k8s_openapi::{
        api::core::v1::{
            Affinity, Pod, PodAffinity, PodAffinityTerm, PodAntiAffinity, WeightedPodAffinityTerm,
        },
        apimachinery::pkg::apis::meta::v1::LabelSelector,
    };

    use super::*;
    use crate::plugins::testing::{cache, info, labels, node, pod};

    fn term(app: &str, key: &str) -> PodAffinityTerm {
        PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some(labels(&[("app", app)])),
                match_expressions: None,
            }),
            topology_key: key.into(),
            ..PodAffinityTerm::default()
        }
    }

    fn anti(app: &str) -> Affinity {
        Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![term(
                    app,
                    "kubernetes.io/hostname",
                )]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }
    }

    fn with(mut p: Pod, affinity: Affinity) -> Pod {
        p.spec.as_mut().unwrap().affinity = Some(affinity);
        p
    }

    fn check(c: &Cache, p: &PodInfo, node: &str) -> Result<(), Unfit> {
        let mut state = CycleState::default();
        InterPodAffinity.pre_filter(p, c, &mut state);
        InterPodAffinity.filter(p, c.node(node).unwrap(), &state)
    }

    fn hosts() -> Cache {
        cache(vec![
            node("n1", "4", "8Gi", &[("kubernetes.io/hostname", "n1")]),
            node("n2", "4", "8Gi", &[("kubernetes.io/hostname", "n2")]),
        ])
    }

    #[test]
    fn anti_affinity_keeps_replicas_apart() {
        let mut c = hosts();
        c.add_pod(Arc::new(info(pod("a", "1", &[("app", "db")]))), "n1");
        let second = info(with(pod("b", "1", &[("app", "web")]), anti("db")));
        assert_eq!(
            check(&c, &second, "n1").unwrap_err().reasons,
            [ANTI_AFFINITY]
        );
        assert!(check(&c, &second, "n2").is_ok());
    }

    #[test]
    fn placed_pods_anti_affinity_refuses_newcomers_it_selects() {
        let mut c = hosts();
        c.add_pod(
            Arc::new(info(with(pod("a", "1", &[("app", "web")]), anti("web")))),
            "n1",
        );
        let plain = info(pod("c", "1", &[("app", "web")]));
        assert_eq!(
            check(&c, &plain, "n1").unwrap_err().reasons,
            [EXISTING_ANTI_AFFINITY]
        );
        assert!(check(&c, &plain, "n2").is_ok());
        let other = info(pod("d", "1", &[("app", "db")]));
        assert!(check(&c, &other, "n1").is_ok());
    }

    #[test]
    fn anti_affinity_only_looks_in_its_namespaces() {
        let mut c = hosts();
        let mut elsewhere = pod("a", "1", &[("app", "db")]);
        elsewhere.metadata.namespace = Some("other".into());
        c.add_pod(Arc::new(info(elsewhere)), "n1");
        let p = info(with(pod("b", "1", &[]), anti("db")));
        assert!(check(&c, &p, "n1").is_ok());
        // An empty namespace selector reaches every namespace.
        let mut all = anti("db");
        all.pod_anti_affinity
            .as_mut()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_mut()
            .unwrap()[0]
            .namespace_selector = Some(LabelSelector::default());
        let p = info(with(pod("b", "1", &[]), all));
        assert!(check(&c, &p, "n1").is_err());
    }

    #[test]
    fn namespace_selectors_use_namespace_labels() {
        let mut c = hosts();
        c.upsert_namespace(
            "prod".into(),
            BTreeMap::from([("env".into(), "prod".into())]),
        );
        let mut db = pod("a", "1", &[("app", "db")]);
        db.metadata.namespace = Some("prod".into());
        c.add_pod(Arc::new(info(db)), "n1");
        let mut t = anti("db");
        t.pod_anti_affinity
            .as_mut()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_mut()
            .unwrap()[0]
            .namespace_selector = Some(LabelSelector {
            match_labels: Some(labels(&[("env", "prod")])),
            match_expressions: None,
        });
        assert!(check(&c, &info(with(pod("b", "1", &[]), t)), "n1").is_err());
    }

    #[test]
    fn required_affinity_follows_matching_pods_or_bootstraps_the_first() {
        let mut c = cache(vec![
            node("n1", "4", "8Gi", &[("zone", "a")]),
            node("n2", "4", "8Gi", &[("zone", "b")]),
            node("n3", "4", "8Gi", &[]),
        ]);
        let with_affinity = |name: &str| {
            info(with(
                pod(name, "1", &[("app", "cache")]),
                Affinity {
                    pod_affinity: Some(PodAffinity {
                        required_during_scheduling_ignored_during_execution: Some(vec![term(
                            "cache", "zone",
                        )]),
                        ..PodAffinity::default()
                    }),
                    ..Affinity::default()
                },
            ))
        };
        let first = with_affinity("a");
        assert!(check(&c, &first, "n2").is_ok());
        // A node without the topology key never qualifies.
        assert_eq!(check(&c, &first, "n3").unwrap_err().reasons, [AFFINITY]);
        c.add_pod(Arc::new(first), "n1");
        let second = with_affinity("b");
        assert!(check(&c, &second, "n1").is_ok());
        assert_eq!(check(&c, &second, "n2").unwrap_err().reasons, [AFFINITY]);
    }

    #[test]
    fn removing_a_victim_lifts_its_anti_affinity() {
        let mut c = hosts();
        c.add_pod(
            Arc::new(info(with(pod("a", "1", &[("app", "web")]), anti("web")))),
            "n1",
        );
        let p = info(pod("c", "1", &[("app", "web")]));
        let mut state = CycleState::default();
        InterPodAffinity.pre_filter(&p, &c, &mut state);
        let n1 = c.node("n1").unwrap();
        assert!(InterPodAffinity.filter(&p, n1, &state).is_err());
        let victim = n1.pods["uid-a"].clone();
        InterPodAffinity.remove_pod(&mut state, &p, &victim, n1, &c);
        assert!(InterPodAffinity.filter(&p, n1, &state).is_ok());
        InterPodAffinity.add_pod(&mut state, &p, &victim, n1, &c);
        assert!(InterPodAffinity.filter(&p, n1, &state).is_err());
    }

    #[test]
    fn preferred_anti_affinity_scores_away_from_matching_pods() {
        let mut c = cache(vec![
            node("n1", "4", "8Gi", &[("zone", "a")]),
            node("n2", "4", "8Gi", &[("zone", "b")]),
        ]);
        c.add_pod(Arc::new(info(pod("a", "1", &[("app", "web")]))), "n1");
        let p = info(with(
            pod("p", "1", &[("app", "web")]),
            Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            weight: 50,
                            pod_affinity_term: term("web", "zone"),
                        },
                    ]),
                    ..PodAntiAffinity::default()
                }),
                ..Affinity::default()
            },
        ));
        let mut state = CycleState::default();
        InterPodAffinity.pre_score(&p, &c, &[], &mut state);
        let mut scores = vec![
            InterPodAffinity.score(&p, c.node("n1").unwrap(), &state),
            InterPodAffinity.score(&p, c.node("n2").unwrap(), &state),
        ];
        assert_eq!(scores, [-50, 0]);
        ScorePlugin::normalize(&InterPodAffinity, &mut scores);
        assert_eq!(scores, [0, 100]);
    }

    #[test]
    fn placed_pods_preferences_attract_the_pods_they_select() {
        let mut c = cache(vec![
            node("n1", "4", "8Gi", &[("zone", "a")]),
            node("n2", "4", "8Gi", &[("zone", "b")]),
        ]);
        let fan = with(
            pod("fan", "1", &[]),
            Affinity {
                pod_affinity: Some(PodAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            weight: 10,
                            pod_affinity_term: term("star", "zone"),
                        },
                    ]),
                    ..PodAffinity::default()
                }),
                ..Affinity::default()
            },
        );
        c.add_pod(Arc::new(info(fan)), "n2");
        let star = info(pod("star", "1", &[("app", "star")]));
        let mut state = CycleState::default();
        InterPodAffinity.pre_score(&star, &c, &[], &mut state);
        assert_eq!(
            InterPodAffinity.score(&star, c.node("n2").unwrap(), &state),
            10
        );
        assert_eq!(
            InterPodAffinity.score(&star, c.node("n1").unwrap(), &state),
            0
        );
    }
}
