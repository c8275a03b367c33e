//! The plugin framework, kube-scheduler's in small: filters rule nodes out with a reason,
//! scores rank the feasible rest (normalized, weighted), and a per-pod `CycleState` holds
//! what the plugins precompute once per attempt. It also words the `0/N nodes are
//! available` summary.

use std::{
    any::{Any, TypeId},
    collections::BTreeMap,
    sync::Arc,
};

use crate::{
    cache::{Cache, NodeInfo},
    pod_info::PodInfo,
};

/// Why a node was ruled out, in kube-scheduler's words (`Insufficient cpu`).
pub type Reason = String;

/// Whether evicting pods could make a ruled-out node fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Removing pods may help (resources, ports, anti-affinity, spread skew).
    Unschedulable,
    /// Nothing about the node's pods helps (selectors, taints, cordon).
    UnschedulableAndUnresolvable,
}

/// A filter's refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit {
    /// Whether preemption can help.
    pub code: Code,
    /// The reasons, as kube-scheduler words them.
    pub reasons: Vec<Reason>,
}

impl Unfit {
    /// A refusal preemption may resolve.
    #[must_use]
    pub fn new(reason: impl Into<Reason>) -> Self {
        Self {
            code: Code::Unschedulable,
            reasons: vec![reason.into()],
        }
    }

    /// A refusal no eviction resolves.
    #[must_use]
    pub fn unresolvable(reason: impl Into<Reason>) -> Self {
        Self {
            code: Code::UnschedulableAndUnresolvable,
            reasons: vec![reason.into()],
        }
    }
}

/// Whether a plugin has anything to check or rank for the pod at hand (kube-scheduler's
/// `Skip` status from `PreFilter` and `PreScore`): skipped plugins are not called per node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Call the plugin for every node.
    Run,
    /// Nothing to do for this pod.
    Skip,
}

/// Per-plugin data that a preemption what-if can copy.
pub trait StateData: Any + Send + Sync {
    /// A boxed copy.
    fn clone_data(&self) -> Box<dyn StateData>;
}

impl<T: Any + Clone + Send + Sync> StateData for T {
    fn clone_data(&self) -> Box<dyn StateData> {
        Box::new(self.clone())
    }
}

/// What the plugins computed for one scheduling attempt of one pod, by type.
#[derive(Default)]
pub struct CycleState {
    data: Vec<(TypeId, Box<dyn StateData>)>,
}

impl std::fmt::Debug for CycleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CycleState")
            .field("entries", &self.data.len())
            .finish()
    }
}

impl Clone for CycleState {
    fn clone(&self) -> Self {
        Self {
            data: self
                .data
                .iter()
                .map(|(id, d)| (*id, d.as_ref().clone_data()))
                .collect(),
        }
    }
}

impl CycleState {
    /// Stores `value`, replacing an earlier value of its type.
    pub fn write<T: StateData>(&mut self, value: T) {
        let id = TypeId::of::<T>();
        self.data.retain(|(t, _)| *t != id);
        self.data.push((id, Box::new(value)));
    }

    /// The stored value of type `T`.
    #[must_use]
    pub fn read<T: StateData>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.data
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, d)| (d.as_ref() as &dyn Any).downcast_ref())
    }

    /// The stored value of type `T`, to change (preemption what-ifs).
    pub fn read_mut<T: StateData>(&mut self) -> Option<&mut T> {
        let id = TypeId::of::<T>();
        self.data
            .iter_mut()
            .find(|(t, _)| *t == id)
            .and_then(|(_, d)| (d.as_mut() as &mut dyn Any).downcast_mut())
    }
}

/// A plugin that rules nodes out.
pub trait FilterPlugin: Send + Sync {
    /// The plugin's name, as kube-scheduler calls it.
    fn name(&self) -> &'static str;

    /// Computes once per attempt what `filter` needs, into `state`; says whether the
    /// filter has anything to check for this pod.
    fn pre_filter(&self, _pod: &PodInfo, _cache: &Cache, _state: &mut CycleState) -> Stage {
        Stage::Run
    }

    /// Rules `node` out with reasons, or lets it through.
    ///
    /// # Errors
    /// Why the node does not fit.
    fn filter(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Unfit>;

    /// Preemption what-if: `other` leaves `node`; adjusts what `pre_filter` counted.
    fn remove_pod(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _other: &PodInfo,
        _node: &NodeInfo,
        _cache: &Cache,
    ) {
    }

    /// Preemption what-if: `other` comes back to `node`.
    fn add_pod(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _other: &PodInfo,
        _node: &NodeInfo,
        _cache: &Cache,
    ) {
    }
}

/// A plugin that ranks feasible nodes.
pub trait ScorePlugin: Send + Sync {
    /// The plugin's name, as kube-scheduler calls it.
    fn name(&self) -> &'static str;

    /// Computes once per attempt, only when there is more than one feasible node, what
    /// `score` needs; says whether the plugin ranks anything for this pod.
    fn pre_score(
        &self,
        _pod: &PodInfo,
        _cache: &Cache,
        _feasible: &[&NodeInfo],
        _state: &mut CycleState,
    ) -> Stage {
        Stage::Run
    }

    /// A raw score for a feasible node.
    fn score(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64;

    /// Turns the raw scores of all feasible nodes into `0..=MAX_SCORE`.
    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

/// The highest score a plugin gives after normalizing.
pub const MAX_SCORE: i64 = 100;

/// kube-scheduler's `DefaultNormalizeScore`: scale so the highest raw score becomes
/// `MAX_SCORE` (`reverse`: the lowest does).
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.fill(MAX_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let scaled = MAX_SCORE * *s / max;
        *s = if reverse { MAX_SCORE - scaled } else { scaled };
    }
}

/// The outcome of filtering every node for a pod that fits nowhere.
#[derive(Debug, Default)]
pub struct Diagnosis {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Reason -> number of nodes it ruled out.
    pub reasons: BTreeMap<Reason, usize>,
    /// Nodes ruled out for reasons preemption may resolve.
    pub resolvable: Vec<String>,
    /// What preemption found or why it did not run (`preemption: ...`), if it ran.
    pub post_filter: Option<String>,
    /// Why a pre-filter ruled every node out at once, when one did.
    pub pre_filter: Option<Reason>,
}

/// What a pre-filter writes into the [`CycleState`] to rule every node out at once, for a
/// reason that concerns the pod rather than any node (a claim it uses does not exist);
/// kube-scheduler's `UnschedulableAndUnresolvable` status from `PreFilter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection(pub Reason);

impl Diagnosis {
    /// Counts one node's refusal.
    pub fn record(&mut self, node: &str, unfit: Unfit) {
        if unfit.code == Code::Unschedulable {
            self.resolvable.push(node.to_owned());
        }
        for reason in unfit.reasons {
            *self.reasons.entry(reason).or_default() += 1;
        }
    }

    /// kube-scheduler's message: `0/3 nodes are available: 3 Insufficient cpu.`
    #[must_use]
    pub fn message(&self) -> String {
        if self.nodes == 0 {
            return "no nodes available to schedule pods".to_owned();
        }
        if let Some(reason) = &self.pre_filter {
            return format!("0/{} nodes are available: {reason}.", self.nodes);
        }
        format!(
            "0/{} nodes are available: {}.",
            self.nodes,
            histogram(&self.reasons)
        )
    }

    /// The message with the preemption outcome after it, as kube-scheduler 1.33 words it
    /// (`... preemption: 0/3 nodes are available: 3 No preemption victims found for
    /// incoming pod.`); the events and the pod condition carry the shorter [`Self::message`].
    #[must_use]
    pub fn full_message(&self) -> String {
        let mut message = self.message();
        if let Some(post) = &self.post_filter {
            message.push_str(" preemption: ");
            message.push_str(post);
        }
        message
    }
}

/// `2 Insufficient cpu, 3 node(s) were unschedulable`: counts and reasons, sorted as
/// strings the way kube-scheduler sorts them.
#[must_use]
pub fn histogram(reasons: &BTreeMap<Reason, usize>) -> String {
    let mut parts: Vec<String> = reasons
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    parts.sort();
    parts.join(", ")
}

/// Where the next search starts and the tie-breaking sequence: kube-scheduler rotates the
/// first node checked so sampling visits every node over time.
#[derive(Debug)]
pub struct Cursor {
    /// Index of the next node to check first.
    pub start: usize,
    rng: u64,
}

impl Default for Cursor {
    fn default() -> Self {
        Self {
            start: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

impl Cursor {
    /// The next pseudo-random number (xorshift: cheap and deterministic).
    pub fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

/// The configured plugins: filters in order, scores with their weights.
pub struct Framework {
    filters: Vec<Arc<dyn FilterPlugin>>,
    scores: Vec<(Arc<dyn ScorePlugin>, i64)>,
}

impl std::fmt::Debug for Framework {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framework")
            .field(
                "filters",
                &self.filters.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field(
                "scores",
                &self
                    .scores
                    .iter()
                    .map(|(p, w)| (p.name(), *w))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Framework {
    /// A framework running `filters` in order and `scores` with their weights.
    #[must_use]
    pub fn new(
        filters: Vec<Arc<dyn FilterPlugin>>,
        scores: Vec<(Arc<dyn ScorePlugin>, i64)>,
    ) -> Self {
        Self { filters, scores }
    }

    /// Runs every filter's pre-filter for `pod`.
    #[must_use]
    pub fn pre_filter(&self, pod: &PodInfo, cache: &Cache) -> CycleState {
        self.prepare(pod, cache).0
    }

    /// Runs every filter's pre-filter; returns the state and the filters with work to do.
    fn prepare(&self, pod: &PodInfo, cache: &Cache) -> (CycleState, Vec<&dyn FilterPlugin>) {
        let mut state = CycleState::default();
        let mut active = Vec::with_capacity(self.filters.len());
        for plugin in &self.filters {
            if plugin.pre_filter(pod, cache, &mut state) == Stage::Run {
                active.push(plugin.as_ref());
            }
        }
        (state, active)
    }

    /// Runs the filters on one node, stopping at the first that refuses it.
    ///
    /// # Errors
    /// The refusing plugin's reasons.
    pub fn filter(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Unfit> {
        for plugin in &self.filters {
            plugin.filter(pod, node, state)?;
        }
        Ok(())
    }

    /// Tells every filter that `other` left `node` (preemption what-if).
    pub fn remove_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        cache: &Cache,
    ) {
        for plugin in &self.filters {
            plugin.remove_pod(state, pod, other, node, cache);
        }
    }

    /// Tells every filter that `other` came back to `node` (preemption what-if).
    pub fn add_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        cache: &Cache,
    ) {
        for plugin in &self.filters {
            plugin.add_pod(state, pod, other, node, cache);
        }
    }

    /// Picks a node for `pod`: its nominated node if that still fits, else the best
    /// scored of the first `wanted` feasible nodes found from the cursor on.
    ///
    /// # Errors
    /// When no node fits: why each was ruled out.
    pub fn schedule(
        &self,
        pod: &PodInfo,
        cache: &Cache,
        cursor: &mut Cursor,
        percentage: u8,
    ) -> Result<String, Diagnosis> {
        let total = cache.len();
        let mut diagnosis = Diagnosis {
            nodes: total,
            ..Diagnosis::default()
        };
        if total == 0 {
            return Err(diagnosis);
        }
        let (state, active) = self.prepare(pod, cache);
        if let Some(Rejection(reason)) = state.read::<Rejection>() {
            diagnosis.pre_filter = Some(reason.clone());
            return Err(diagnosis);
        }
        let fits = |node: &NodeInfo| -> Result<(), Unfit> {
            for plugin in &active {
                plugin.filter(pod, node, &state)?;
            }
            Ok(())
        };
        if let Some(node) = pod.nominated_node().and_then(|n| cache.node(n))
            && fits(node).is_ok()
        {
            return Ok(node.name().to_owned());
        }
        let wanted = nodes_to_find(total, percentage);
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(wanted.min(total));
        let mut processed = 0;
        for i in 0..total {
            let Some(node) = cache.nth((cursor.start + i) % total) else {
                continue;
            };
            processed += 1;
            match fits(node) {
                Ok(()) => {
                    feasible.push(node);
                    if feasible.len() >= wanted {
                        break;
                    }
                }
                Err(unfit) => diagnosis.record(node.name(), unfit),
            }
        }
        cursor.start = (cursor.start + processed) % total;
        match feasible.len() {
            0 => Err(diagnosis),
            1 => Ok(feasible[0].name().to_owned()),
            _ => Ok(self.pick(pod, cache, state, &feasible, cursor)),
        }
    }

    /// Scores `feasible` and takes the best, ties broken at random.
    fn pick(
        &self,
        pod: &PodInfo,
        cache: &Cache,
        mut state: CycleState,
        feasible: &[&NodeInfo],
        cursor: &mut Cursor,
    ) -> String {
        let mut active = Vec::with_capacity(self.scores.len());
        for (plugin, weight) in &self.scores {
            if plugin.pre_score(pod, cache, feasible, &mut state) == Stage::Run {
                active.push((plugin.as_ref(), *weight));
            }
        }
        let mut totals = vec![0_i64; feasible.len()];
        let mut scores = vec![0_i64; feasible.len()];
        for (plugin, weight) in active {
            for (s, node) in scores.iter_mut().zip(feasible) {
                *s = plugin.score(pod, node, &state);
            }
            plugin.normalize(&mut scores);
            for (t, s) in totals.iter_mut().zip(&scores) {
                *t += s * weight;
            }
        }
        // Reservoir sampling among the best, as kube-scheduler's selectHost.
        let mut best = 0;
        let mut ties = 1_u64;
        for i in 1..totals.len() {
            if totals[i] > totals[best] {
                best = i;
                ties = 1;
            } else if totals[i] == totals[best] {
                ties += 1;
                if cursor.next_random().is_multiple_of(ties) {
                    best = i;
                }
            }
        }
        feasible[best].name().to_owned()
    }
}

/// How many feasible nodes to look for among `nodes`: kube-scheduler's
/// percentageOfNodesToScore (`percentage` 0 = adaptive: 50% minus 1% per 125 nodes, at
/// least 5%), never fewer than 100.
#[must_use]
pub fn nodes_to_find(nodes: usize, percentage: u8) -> usize {
    const MIN: usize = 100;
    if nodes < MIN || percentage >= 100 {
        return nodes.max(1);
    }
    let pct = if percentage == 0 {
        (50_usize.saturating_sub(nodes / 125)).max(5)
    } else {
        usize::from(percentage)
    };
    (nodes * pct / 100).max(MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{
        default_framework,
        testing::{cache, info, node, pod},
    };

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
            ..Diagnosis::default()
        };
        assert_eq!(
            d.message(),
            "0/5 nodes are available: 2 Insufficient cpu, 3 node(s) didn't match Pod's node affinity/selector."
        );
    }

    #[test]
    fn message_carries_the_preemption_outcome() {
        let d = Diagnosis {
            nodes: 1,
            reasons: BTreeMap::from([("Insufficient cpu".to_owned(), 1)]),
            post_filter: Some("not eligible due to preemptionPolicy=Never.".to_owned()),
            ..Diagnosis::default()
        };
        assert_eq!(d.message(), "0/1 nodes are available: 1 Insufficient cpu.");
        assert_eq!(
            d.full_message(),
            "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
        );
        assert_eq!(
            Diagnosis::default().message(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn adaptive_sampling_shrinks_with_cluster_size() {
        assert_eq!(nodes_to_find(50, 0), 50);
        assert_eq!(nodes_to_find(150, 0), 100);
        assert_eq!(nodes_to_find(1000, 0), 420);
        assert_eq!(nodes_to_find(5000, 0), 500);
        assert_eq!(nodes_to_find(5000, 100), 5000);
        assert_eq!(nodes_to_find(5000, 30), 1500);
    }

    #[test]
    fn search_stops_at_enough_feasible_nodes_and_rotates() {
        let nodes: Vec<_> = (0..1000)
            .map(|i| node(&format!("n{i}"), "4", "8Gi", &[]))
            .collect();
        let c = cache(nodes);
        let fw = default_framework();
        let mut cursor = Cursor::default();
        let p = info(pod("p", "100m", &[]));
        fw.schedule(&p, &c, &mut cursor, 0).unwrap();
        // 420 feasible nodes wanted and every node fits: the next search starts after them.
        assert_eq!(cursor.start, 420);
        fw.schedule(&p, &c, &mut cursor, 0).unwrap();
        assert_eq!(cursor.start, 840);
        fw.schedule(&p, &c, &mut cursor, 0).unwrap();
        assert_eq!(cursor.start, 260);
    }

    #[test]
    fn a_pod_that_fits_nowhere_gets_every_nodes_reason() {
        let mut c = cache(vec![
            node("a", "2", "8Gi", &[]),
            node("b", "2", "8Gi", &[]),
            node("c", "1", "8Gi", &[]),
        ]);
        c.add_pod(Arc::new(info(pod("x", "1", &[]))), "a");
        c.add_pod(Arc::new(info(pod("y", "1", &[]))), "b");
        let err = default_framework()
            .schedule(&info(pod("p", "2", &[])), &c, &mut Cursor::default(), 0)
            .unwrap_err();
        assert_eq!(
            err.message(),
            "0/3 nodes are available: 3 Insufficient cpu."
        );
        // Evicting pods can help on a and b; c is too small for the pod whatever runs.
        assert_eq!(err.resolvable, ["a", "b"]);
    }

    #[test]
    fn the_least_loaded_node_wins() {
        let mut c = cache(vec![
            node("busy", "4", "8Gi", &[]),
            node("idle", "4", "8Gi", &[]),
        ]);
        c.add_pod(Arc::new(info(pod("a", "3", &[]))), "busy");
        for _ in 0..10 {
            let picked = default_framework()
                .schedule(&info(pod("p", "500m", &[])), &c, &mut Cursor::default(), 0)
                .unwrap();
            assert_eq!(picked, "idle");
        }
    }

    #[test]
    fn cycle_state_reads_back_by_type_and_copies() {
        let mut state = CycleState::default();
        state.write(5_u32);
        state.write(String::from("x"));
        state.write(7_u32);
        assert_eq!(state.read::<u32>(), Some(&7));
        let mut copy = state.clone();
        *copy.read_mut::<String>().unwrap() = "y".into();
        assert_eq!(state.read::<String>().map(String::as_str), Some("x"));
        assert_eq!(copy.read::<String>().map(String::as_str), Some("y"));
        assert!(state.read::<i64>().is_none());
    }
}
