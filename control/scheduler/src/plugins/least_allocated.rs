//! `NodeResourcesFit` scoring with the LeastAllocated strategy: prefer nodes with more
//! cpu and memory left after placing the pod, so load spreads. Pods without requests
//! count as 100m and 200Mi here, as in kube-scheduler.

use crate::{
    cache::NodeInfo,
    framework::{CycleState, MAX_SCORE, ScorePlugin},
    pod_info::PodInfo,
};

/// Share of `capacity` left after `requested`, scaled to `0..=MAX_SCORE`.
fn free_share(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_SCORE / capacity
}

/// The LeastAllocated score (cpu and memory weighted equally).
#[derive(Debug)]
pub struct LeastAllocated;

impl ScorePlugin for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let cpu = free_share(
            node.non_zero_requested.0 + pod.non_zero.0,
            node.allocatable.cpu,
        );
        let memory = free_share(
            node.non_zero_requested.1 + pod.non_zero.1,
            node.allocatable.memory,
        );
        i64::midpoint(cpu, memory)
    }

    /// Scores are already on the common scale.
    fn normalize(&self, _scores: &mut [i64]) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plugins::testing::{cache, info, node, pod};

    #[test]
    fn emptier_nodes_score_higher() {
        let mut c = cache(vec![
            node("busy", "4", "8Gi", &[]),
            node("idle", "4", "8Gi", &[]),
        ]);
        c.add_pod(Arc::new(info(pod("a", "3", &[]))), "busy");
        let p = info(pod("p", "1", &[]));
        let state = CycleState::default();
        let busy = LeastAllocated.score(&p, c.node("busy").unwrap(), &state);
        let idle = LeastAllocated.score(&p, c.node("idle").unwrap(), &state);
        assert!(idle > busy, "{idle} > {busy}");
    }

    #[test]
    fn scores_average_free_cpu_and_memory() {
        // 1 of 4 cpu and 200Mi (the default stand-in) of 8Gi taken.
        let c = cache(vec![node("n", "4", "8Gi", &[])]);
        let s = LeastAllocated.score(
            &info(pod("p", "1", &[])),
            c.node("n").unwrap(),
            &CycleState::default(),
        );
        assert_eq!(s, 86);
    }

    #[test]
    fn an_overfull_node_scores_zero() {
        let c = cache(vec![node("n", "1", "100Mi", &[])]);
        let s = LeastAllocated.score(
            &info(pod("p", "2", &[])),
            c.node("n").unwrap(),
            &CycleState::default(),
        );
        assert_eq!(s, 0);
    }
}
