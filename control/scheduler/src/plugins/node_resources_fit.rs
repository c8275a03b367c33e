//! `NodeResourcesFit`: a pod fits where its requests fit in allocatable minus what the
//! node's pods already request (cpu, memory, ephemeral storage, pod slots, extended).

use crate::{
    cache::{Cache, NodeInfo},
    framework::{Plugin, PodInfo, Reason, State},
};

/// The `NodeResourcesFit` filter.
#[derive(Debug)]
pub struct NodeResourcesFit;

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &State,
        _: &Cache,
    ) -> Result<(), Vec<Reason>> {
        let want = &pod.requests;
        let have = &node.allocatable;
        let used = &node.requested;
        let mut reasons = Vec::new();
        if used.pods + 1 > have.pods {
            reasons.push("Too many pods".to_owned());
        }
        if want.cpu > 0 && used.cpu + want.cpu > have.cpu {
            reasons.push("Insufficient cpu".to_owned());
        }
        if want.memory > 0 && used.memory + want.memory > have.memory {
            reasons.push("Insufficient memory".to_owned());
        }
        if want.ephemeral > 0 && used.ephemeral + want.ephemeral > have.ephemeral {
            reasons.push("Insufficient ephemeral-storage".to_owned());
        }
        for (name, amount) in &want.extended {
            let available = have.extended.get(name).copied().unwrap_or(0);
            let taken = used.extended.get(name).copied().unwrap_or(0);
            if *amount > 0 && taken + amount > available {
                reasons.push(format!("Insufficient {name}"));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plugins::testing::{cache, info, node, pod};

    #[test]
    fn requests_must_fit_in_what_is_left() {
        let mut c = cache(vec![node("n1", "2", "8Gi", &[])]);
        c.add_pod(Arc::new(pod("a", "1500m", &[])), "n1");
        let n = c.node("n1").unwrap();
        assert!(
            NodeResourcesFit
                .filter(&info(pod("b", "500m", &[])), n, &None, &c)
                .is_ok()
        );
        assert_eq!(
            NodeResourcesFit
                .filter(&info(pod("b", "501m", &[])), n, &None, &c)
                .unwrap_err(),
            ["Insufficient cpu"]
        );
    }

    #[test]
    fn removing_a_pod_frees_its_requests() {
        let mut c = cache(vec![node("n1", "1", "8Gi", &[])]);
        c.add_pod(Arc::new(pod("a", "1", &[])), "n1");
        assert!(
            NodeResourcesFit
                .filter(&info(pod("b", "1", &[])), c.node("n1").unwrap(), &None, &c)
                .is_err()
        );
        c.remove_pod("uid-a");
        assert!(
            NodeResourcesFit
                .filter(&info(pod("b", "1", &[])), c.node("n1").unwrap(), &None, &c)
                .is_ok()
        );
    }
}
