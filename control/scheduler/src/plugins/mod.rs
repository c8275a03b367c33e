//! The filter and score plugins, one file each, in kube-scheduler's order.

pub mod balanced_allocation;
pub mod inter_pod_affinity;
pub mod least_allocated;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod pod_topology_spread;
pub mod taint_toleration;

use crate::framework::{Framework, Plugin};

/// kube-scheduler's default profile: filters in its order, scores with its weights.
#[must_use]
pub fn default_framework() -> Framework {
    let plugins: Vec<Box<dyn Plugin>> = vec![
        Box::new(node_unschedulable::NodeUnschedulable),
        Box::new(node_name::NodeName),
        Box::new(taint_toleration::TaintToleration),
        Box::new(node_affinity::NodeAffinity),
        Box::new(node_ports::NodePorts),
        Box::new(node_resources_fit::NodeResourcesFit),
        Box::new(pod_topology_spread::PodTopologySpread),
        Box::new(inter_pod_affinity::InterPodAffinity),
        Box::new(least_allocated::LeastAllocated),
        Box::new(balanced_allocation::BalancedAllocation),
    ];
    Framework::new(plugins)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Small builders for plugin tests.

    use std::{collections::BTreeMap, sync::Arc};

    use k8s_openapi::{
        api::core::v1::{
            Container, Node, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements,
        },
        apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
    };

    use crate::{cache::Cache, framework::PodInfo};

    pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    pub fn node(name: &str, cpu: &str, memory: &str, node_labels: &[(&str, &str)]) -> Node {
        let list = BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
            ("pods".to_owned(), Quantity("110".to_owned())),
        ]);
        Node {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels(node_labels)),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(list.clone()),
                capacity: Some(list),
                ..NodeStatus::default()
            }),
        }
    }

    pub fn pod(name: &str, cpu: &str, pod_labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("default".to_owned()),
                uid: Some(format!("uid-{name}")),
                labels: Some(labels(pod_labels)),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".to_owned(),
                    resources: Some(ResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "cpu".to_owned(),
                            Quantity(cpu.to_owned()),
                        )])),
                        ..ResourceRequirements::default()
                    }),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    pub fn info(pod: Pod) -> PodInfo {
        PodInfo::new(Arc::new(pod))
    }

    pub fn cache(nodes: Vec<Node>) -> Cache {
        let mut cache = Cache::default();
        for n in nodes {
            cache.upsert_node(n);
        }
        cache
    }
}
