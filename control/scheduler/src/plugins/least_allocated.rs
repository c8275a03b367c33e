//! `NodeResourcesFit` scoring with the LeastAllocated strategy: prefer nodes with more
//! cpu and memory left after placing the pod, so load spreads.

use crate::{
    cache::{Cache, NodeInfo},
    framework::{MAX_SCORE, Plugin, PodInfo, State},
};

/// Share of `capacity` left after `used + want`, scaled to 0..=100.
fn free_share(used: i64, want: i64, capacity: i64) -> i64 {
    if capacity <= 0 {
        return 0;
    }
    let after = used + want;
    if after > capacity {
        return 0;
    }
    (capacity - after) * MAX_SCORE / capacity
}

/// The LeastAllocated score.
#[derive(Debug)]
pub struct LeastAllocated;

impl Plugin for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesLeastAllocated"
    }

    fn scores(&self) -> bool {
        true
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &State, _: &Cache) -> i64 {
        // Pods without requests count as the defaults kube-scheduler assumes (100m, 200Mi).
        let cpu = if pod.requests.cpu == 0 {
            100
        } else {
            pod.requests.cpu
        };
        let memory = if pod.requests.memory == 0 {
            200 * 1024 * 1024 * 1000
        } else {
            pod.requests.memory
        };
        i64::midpoint(
            free_share(node.requested.cpu, cpu, node.allocatable.cpu),
            free_share(node.requested.memory, memory, node.allocatable.memory),
        )
    }

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
        c.add_pod(Arc::new(pod("a", "3", &[])), "busy");
        let p = info(pod("p", "1", &[]));
        let busy = LeastAllocated.score(&p, c.node("busy").unwrap(), &None, &c);
        let idle = LeastAllocated.score(&p, c.node("idle").unwrap(), &None, &c);
        assert!(idle > busy, "{idle} > {busy}");
    }
}
