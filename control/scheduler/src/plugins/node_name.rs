//! `NodeName`: a pod that names its node fits only there.

use crate::{
    cache::{Cache, NodeInfo},
    framework::{Plugin, PodInfo, Reason, State},
};

/// The `NodeName` filter.
#[derive(Debug)]
pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &State,
        _: &Cache,
    ) -> Result<(), Vec<Reason>> {
        match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(name) if !name.is_empty() && name != node.name() => Err(vec![
                "node(s) didn't match the requested node name".to_owned(),
            ]),
            _ => Ok(()),
        }
    }
}
