//! `NodeUnschedulable`: cordoned nodes take only pods that tolerate
//! `node.kubernetes.io/unschedulable:NoSchedule`.

use k8s_openapi::api::core::v1::Taint;

use crate::{
    cache::NodeInfo,
    framework::{CycleState, FilterPlugin, Unfit},
    plugins::taint_toleration::{tolerates, tolerations},
    pod_info::PodInfo,
};

/// The `NodeUnschedulable` filter.
#[derive(Debug)]
pub struct NodeUnschedulable;

impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        let cordoned = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if !cordoned {
            return Ok(());
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".to_owned(),
            effect: "NoSchedule".to_owned(),
            ..Taint::default()
        };
        if tolerations(pod).iter().any(|t| tolerates(t, &taint)) {
            Ok(())
        } else {
            Err(Unfit::unresolvable("node(s) were unschedulable"))
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Toleration;

    use super::*;
    use crate::plugins::testing::{cache, info, node, pod};

    #[test]
    fn cordoned_nodes_refuse_pods_unless_tolerated() {
        let mut n = node("n1", "4", "8Gi", &[]);
        n.spec.as_mut().unwrap().unschedulable = Some(true);
        let c = cache(vec![n, node("n2", "4", "8Gi", &[])]);
        let state = CycleState::default();
        let p = info(pod("p", "1", &[]));
        let err = NodeUnschedulable
            .filter(&p, c.node("n1").unwrap(), &state)
            .unwrap_err();
        assert_eq!(err.reasons, ["node(s) were unschedulable"]);
        assert!(
            NodeUnschedulable
                .filter(&p, c.node("n2").unwrap(), &state)
                .is_ok()
        );
        let mut tolerant = pod("q", "1", &[]);
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("node.kubernetes.io/unschedulable".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }]);
        assert!(
            NodeUnschedulable
                .filter(&info(tolerant), c.node("n1").unwrap(), &state)
                .is_ok()
        );
    }
}
