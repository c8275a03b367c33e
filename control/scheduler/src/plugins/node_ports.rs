//! `NodePorts`: two pods cannot take the same host port (protocol and address) on a node.

use crate::{
    cache::{Cache, NodeInfo},
    framework::{CycleState, FilterPlugin, Stage, Unfit},
    pod_info::PodInfo,
};

/// The `NodePorts` filter.
#[derive(Debug)]
pub struct NodePorts;

impl FilterPlugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn pre_filter(&self, pod: &PodInfo, _: &Cache, _: &mut CycleState) -> Stage {
        if pod.ports.is_empty() {
            Stage::Skip
        } else {
            Stage::Run
        }
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        if pod.ports.is_empty() || node.ports.is_empty() {
            return Ok(());
        }
        // 0.0.0.0 takes the port on every address, so it clashes with any address.
        let conflict = pod.ports.iter().any(|(proto, ip, port)| {
            node.ports.keys().any(|(p2, ip2, port2)| {
                proto == p2 && port == port2 && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
            })
        });
        if conflict {
            Err(Unfit::new(
                "node(s) didn't have free ports for the requested pod ports",
            ))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{ContainerPort, Pod};

    use super::*;
    use crate::plugins::testing::{cache, info, node, pod};

    fn with_port(name: &str, port: i32, ip: Option<&str>, protocol: Option<&str>) -> Pod {
        let mut p = pod(name, "100m", &[]);
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(port),
            host_ip: ip.map(str::to_owned),
            protocol: protocol.map(str::to_owned),
            ..ContainerPort::default()
        }]);
        p
    }

    #[test]
    fn a_taken_host_port_rules_the_node_out() {
        let mut c = cache(vec![node("n1", "4", "8Gi", &[])]);
        c.add_pod(Arc::new(info(with_port("a", 8080, None, None))), "n1");
        let n = c.node("n1").unwrap();
        let state = CycleState::default();
        let err = NodePorts
            .filter(&info(with_port("b", 8080, None, None)), n, &state)
            .unwrap_err();
        assert_eq!(
            err.reasons,
            ["node(s) didn't have free ports for the requested pod ports"]
        );
        assert!(
            NodePorts
                .filter(&info(with_port("b", 8081, None, None)), n, &state)
                .is_ok()
        );
    }

    #[test]
    fn different_addresses_or_protocols_do_not_clash() {
        let mut c = cache(vec![node("n1", "4", "8Gi", &[])]);
        c.add_pod(
            Arc::new(info(with_port("a", 53, Some("10.0.0.1"), Some("UDP")))),
            "n1",
        );
        let n = c.node("n1").unwrap();
        let state = CycleState::default();
        let ok = |p: Pod| NodePorts.filter(&info(p), n, &state).is_ok();
        assert!(ok(with_port("b", 53, Some("10.0.0.2"), Some("UDP"))));
        assert!(ok(with_port("c", 53, Some("10.0.0.1"), Some("TCP"))));
        assert!(!ok(with_port("d", 53, None, Some("UDP"))));
        assert!(!ok(with_port("e", 53, Some("10.0.0.1"), Some("UDP"))));
    }
}
