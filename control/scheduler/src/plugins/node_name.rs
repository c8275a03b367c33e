//! `NodeName`: a pod that names its node fits only there.

use crate::{
    cache::{Cache, NodeInfo},
    framework::{CycleState, FilterPlugin, Stage, Unfit},
    pod_info::PodInfo,
};

/// The `NodeName` filter.
#[derive(Debug)]
pub struct NodeName;

impl FilterPlugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }

    fn pre_filter(&self, pod: &PodInfo, _: &Cache, _: &mut CycleState) -> Stage {
        let named = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        if named { Stage::Run } else { Stage::Skip }
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(name) if !name.is_empty() && name != node.name() => Err(Unfit::unresolvable(
                "node(s) didn't match the requested node name",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{cache, info, node, pod};

    #[test]
    fn a_named_node_admits_only_itself() {
        let c = cache(vec![node("a", "4", "8Gi", &[]), node("b", "4", "8Gi", &[])]);
        let mut p = pod("p", "1", &[]);
        p.spec.as_mut().unwrap().node_name = Some("a".into());
        let p = info(p);
        let state = CycleState::default();
        assert!(NodeName.filter(&p, c.node("a").unwrap(), &state).is_ok());
        assert_eq!(
            NodeName
                .filter(&p, c.node("b").unwrap(), &state)
                .unwrap_err()
                .reasons,
            ["node(s) didn't match the requested node name"]
        );
        let free = info(pod("q", "1", &[]));
        assert!(NodeName.filter(&free, c.node("b").unwrap(), &state).is_ok());
    }
}
