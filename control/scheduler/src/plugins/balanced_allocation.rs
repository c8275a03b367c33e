//! `NodeResourcesBalancedAllocation`: prefer nodes where cpu and memory use stay in
//! proportion after placing the pod, so neither runs out while the other idles.

use crate::{
    cache::NodeInfo,
    framework::{CycleState, MAX_SCORE, ScorePlugin},
    pod_info::PodInfo,
};

/// The BalancedAllocation score.
#[derive(Debug)]
pub struct BalancedAllocation;

impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        // Fractions in thousandths, capped at the whole node.
        let fraction = |used: i64, want: i64, cap: i64| -> i64 {
            if cap <= 0 {
                1000
            } else {
                ((used + want) * 1000 / cap).min(1000)
            }
        };
        let cpu = fraction(node.requested.cpu, pod.requests.cpu, node.allocatable.cpu);
        let memory = fraction(
            node.requested.memory,
            pod.requests.memory,
            node.allocatable.memory,
        );
        // With two resources the standard deviation is half their difference.
        let deviation = (cpu - memory).abs() / 2;
        (1000 - deviation) * MAX_SCORE / 1000
    }

    /// Scores are already on the common scale.
    fn normalize(&self, _scores: &mut [i64]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{cache, info, node, pod};

    #[test]
    fn lopsided_use_scores_lower() {
        // A 2-cpu pod on a 4-cpu/8Gi node uses 50% cpu and 0% memory.
        let c = cache(vec![node("n", "4", "8Gi", &[])]);
        let state = CycleState::default();
        let lopsided =
            BalancedAllocation.score(&info(pod("p", "2", &[])), c.node("n").unwrap(), &state);
        let small =
            BalancedAllocation.score(&info(pod("q", "10m", &[])), c.node("n").unwrap(), &state);
        assert_eq!(lopsided, 75);
        assert!(small > lopsided, "{small} > {lopsided}");
    }
}
