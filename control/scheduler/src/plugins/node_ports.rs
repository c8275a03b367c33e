//! `NodePorts`: two pods cannot take the same host port (protocol and address) on a node.

use crate::{
    cache::{Cache, NodeInfo},
    framework::{Plugin, PodInfo, Reason, State},
};

/// The `NodePorts` filter.
#[derive(Debug)]
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &State,
        _: &Cache,
    ) -> Result<(), Vec<Reason>> {
        let conflict = pod.ports.iter().any(|(proto, ip, port)| {
            node.ports.keys().any(|(p2, ip2, port2)| {
                proto == p2 && port == port2 && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
            })
        });
        if conflict {
            Err(vec![
                "node(s) didn't have free ports for the requested pod ports".to_owned(),
            ])
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::ContainerPort;

    use super::*;
    use crate::plugins::testing::{cache, info, node, pod};

    fn with_port(name: &str, port: i32) -> k8s_openapi::api::core::v1::Pod {
        let mut p = pod(name, "100m", &[]);
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(port),
            ..ContainerPort::default()
        }]);
        p
    }

    #[test]
    fn a_taken_host_port_rules_the_node_out() {
        let mut c = cache(vec![node("n1", "4", "8Gi", &[])]);
        c.add_pod(Arc::new(with_port("a", 8080)), "n1");
        let n = c.node("n1").unwrap();
        assert!(
            NodePorts
                .filter(&info(with_port("b", 8080)), n, &None, &c)
                .is_err()
        );
        assert!(
            NodePorts
                .filter(&info(with_port("b", 8081)), n, &None, &c)
                .is_ok()
        );
    }
}
