//! The plugin framework: per-pod precomputation, filters that rule nodes out with a
//! reason, scores that rank the rest, and the `0/N nodes are available` summary.

use std::{any::Any, collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::Pod;

use crate::{
    cache::{Cache, HostPort, NodeInfo, host_ports},
    resources::{Resources, pod_requests},
};

/// The pod being scheduled, with what the plugins ask of it computed once.
#[derive(Debug)]
pub struct PodInfo {
    /// The pod.
    pub pod: Arc<Pod>,
    /// Its effective requests.
    pub requests: Resources,
    /// Host ports it takes.
    pub ports: Vec<HostPort>,
    /// Its namespace.
    pub namespace: String,
    /// Its priority (`spec.priority`, 0 when unset).
    pub priority: i32,
}

impl PodInfo {
    /// Precomputes what the plugins need about `pod`.
    #[must_use]
    pub fn new(pod: Arc<Pod>) -> Self {
        Self {
            requests: pod_requests(&pod),
            ports: host_ports(&pod),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            priority: pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            pod,
        }
    }

    /// The pod's uid.
    #[must_use]
    pub fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }

    /// The pod's labels.
    #[must_use]
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }
}

/// A plugin's per-pod precomputed state.
pub type State = Option<Box<dyn Any + Send + Sync>>;

/// Why a node was ruled out, in kube-scheduler's words (`Insufficient cpu`).
pub type Reason = String;

/// One scheduling concern. A plugin filters, scores, or both.
pub trait Plugin: Send + Sync {
    /// The plugin's name, as kube-scheduler calls it.
    fn name(&self) -> &'static str;

    /// Computes once per pod what `filter` and `score` need.
    fn pre_filter(&self, _pod: &PodInfo, _cache: &Cache) -> State {
        None
    }

    /// Rules `node` out with reasons, or lets it through.
    ///
    /// # Errors
    /// The reasons the node does not fit.
    fn filter(
        &self,
        _pod: &PodInfo,
        _node: &NodeInfo,
        _state: &State,
        _cache: &Cache,
    ) -> Result<(), Vec<Reason>> {
        Ok(())
    }

    /// Whether this plugin scores.
    fn scores(&self) -> bool {
        false
    }

    /// A raw score for a feasible node (higher is better).
    fn score(&self, _pod: &PodInfo, _node: &NodeInfo, _state: &State, _cache: &Cache) -> i64 {
        0
    }

    /// Turns raw scores into 0..=100 (default: scaled so the best node gets 100).
    fn normalize(&self, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        if max > 0 {
            for s in scores.iter_mut() {
                *s = *s * MAX_SCORE / max;
            }
        }
    }

    /// How much this plugin's score counts.
    fn weight(&self) -> i64 {
        1
    }
}

/// The highest score a plugin gives after normalizing.
pub const MAX_SCORE: i64 = 100;

/// The outcome of filtering every (sampled) node.
#[derive(Debug, Default)]
pub struct Diagnosis {
    /// Nodes checked.
    pub nodes: usize,
    /// Reason -> number of nodes it ruled out.
    pub reasons: BTreeMap<Reason, usize>,
}

impl Diagnosis {
    /// kube-scheduler's message: `0/3 nodes are available: 3 Insufficient cpu.`
    #[must_use]
    pub fn message(&self) -> String {
        if self.nodes == 0 {
            return "no nodes available to schedule pods".to_owned();
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        parts.sort();
        format!(
            "0/{} nodes are available: {}.",
            self.nodes,
            parts.join(", ")
        )
    }
}

/// The plugins in kube-scheduler's order.
pub struct Framework {
    plugins: Vec<Box<dyn Plugin>>,
}

impl std::fmt::Debug for Framework {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.plugins.iter().map(|p| p.name()))
            .finish()
    }
}

/// What one scheduling attempt decided.
#[derive(Debug)]
pub enum Decision {
    /// Bind to this node.
    Node(String),
    /// Nothing fits; why.
    Unschedulable(Diagnosis),
}

impl Framework {
    /// The default plugin set.
    #[must_use]
    pub fn new(plugins: Vec<Box<dyn Plugin>>) -> Self {
        Self { plugins }
    }

    /// Precomputes every plugin's state for `pod`.
    #[must_use]
    pub fn pre_filter(&self, pod: &PodInfo, cache: &Cache) -> Vec<State> {
        self.plugins
            .iter()
            .map(|p| p.pre_filter(pod, cache))
            .collect()
    }

    /// Runs the filters on one node; the reasons of the first plugin that refuses it.
    ///
    /// # Errors
    /// The reasons the node does not fit.
    pub fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        states: &[State],
        cache: &Cache,
    ) -> Result<(), Vec<Reason>> {
        for (plugin, state) in self.plugins.iter().zip(states) {
            plugin.filter(pod, node, state, cache)?;
        }
        Ok(())
    }

    /// Picks a node: filters nodes starting at `start` until `wanted` feasible ones are
    /// found (kube-scheduler's percentageOfNodesToScore), scores them, and takes the best;
    /// `tie` breaks ties.
    #[must_use]
    pub fn schedule(
        &self,
        pod: &PodInfo,
        cache: &Cache,
        start: usize,
        wanted: usize,
        tie: u64,
    ) -> Decision {
        let states = self.pre_filter(pod, cache);
        let total = cache.len();
        let mut diagnosis = Diagnosis {
            nodes: total,
            ..Diagnosis::default()
        };
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        // A pod that names its node only ever needs that one checked.
        let named = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty());
        let candidates: Box<dyn Iterator<Item = &NodeInfo>> = match named {
            Some(name) => Box::new(cache.node(name).into_iter()),
            None => Box::new((0..total).filter_map(|i| cache.nth((start + i) % total))),
        };
        for node in candidates {
            match self.filter(pod, node, &states, cache) {
                Ok(()) => {
                    feasible.push(node);
                    if feasible.len() >= wanted {
                        break;
                    }
                }
                Err(reasons) => {
                    for reason in reasons {
                        *diagnosis.reasons.entry(reason).or_default() += 1;
                    }
                }
            }
        }
        if feasible.is_empty() {
            return Decision::Unschedulable(diagnosis);
        }
        if feasible.len() == 1 {
            return Decision::Node(feasible[0].name().to_owned());
        }
        let mut totals = vec![0_i64; feasible.len()];
        for (plugin, state) in self.plugins.iter().zip(&states) {
            if !plugin.scores() {
                continue;
            }
            let mut scores: Vec<i64> = feasible
                .iter()
                .map(|n| plugin.score(pod, n, state, cache))
                .collect();
            plugin.normalize(&mut scores);
            for (t, s) in totals.iter_mut().zip(scores) {
                *t += s * plugin.weight();
            }
        }
        let best = totals.iter().copied().max().unwrap_or(0);
        let top: Vec<usize> = (0..feasible.len()).filter(|i| totals[*i] == best).collect();
        let pick = top[usize::try_from(tie % top.len() as u64).unwrap_or(0)];
        Decision::Node(feasible[pick].name().to_owned())
    }
}

/// How many feasible nodes to look for among `nodes`, kube-scheduler's adaptive
/// percentageOfNodesToScore (`percentage` 0 = adaptive).
#[must_use]
pub fn nodes_to_find(nodes: usize, percentage: u8) -> usize {
    const MIN: usize = 100;
    if nodes < MIN {
        return nodes.max(1);
    }
    let pct = if percentage == 0 {
        (50_usize.saturating_sub(nodes / 125)).max(5)
    } else {
        usize::from(percentage.min(100))
    };
    (nodes * pct / 100).max(MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_counts_reasons_like_kube_scheduler() {
        let d = Diagnosis {
            nodes: 5,
            reasons: BTreeMap::from([
                ("Insufficient cpu".to_owned(), 2),
                (
                    "node(s) didn't match Pod's node affinity/selector".to_owned(),
                    3,
                ),
            ]),
        };
        assert_eq!(
            d.message(),
            "0/5 nodes are available: 2 Insufficient cpu, 3 node(s) didn't match Pod's node affinity/selector."
        );
    }

    #[test]
    fn adaptive_sampling_shrinks_with_cluster_size() {
        assert_eq!(nodes_to_find(50, 0), 50);
        assert_eq!(nodes_to_find(1000, 0), 420);
        assert_eq!(nodes_to_find(5000, 0), 500);
        assert_eq!(nodes_to_find(5000, 100), 5000);
    }
}
