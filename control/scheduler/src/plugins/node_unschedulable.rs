//! `NodeUnschedulable`: cordoned nodes take only pods that tolerate
//! `node.kubernetes.io/unschedulable`.

use crate::{
    cache::{Cache, NodeInfo},
    framework::{Plugin, PodInfo, Reason, State},
    plugins::taint_toleration::tolerates,
};

/// The `NodeUnschedulable` filter.
#[derive(Debug)]
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &State,
        _: &Cache,
    ) -> Result<(), Vec<Reason>> {
        let cordoned = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if !cordoned {
            return Ok(());
        }
        let taint = k8s_openapi::api::core::v1::Taint {
            key: "node.kubernetes.io/unschedulable".to_owned(),
            effect: "NoSchedule".to_owned(),
            ..Default::default()
        };
        let tolerations = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        if tolerations.iter().any(|t| tolerates(t, &taint)) {
            Ok(())
        } else {
            Err(vec!["node(s) were unschedulable".to_owned()])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{cache, info, node, pod};

    #[test]
    fn cordoned_nodes_refuse_pods() {
        let mut n = node("n1", "4", "8Gi", &[]);
        n.spec.as_mut().unwrap().unschedulable = Some(true);
        let c = cache(vec![n]);
        let p = info(pod("p", "1", &[]));
        let err = NodeUnschedulable
            .filter(&p, c.node("n1").unwrap(), &None, &c)
            .unwrap_err();
        assert_eq!(err, ["node(s) were unschedulable"]);
    }
}
