//! The filter and score plugins, one file each, and kube-scheduler's default profile of
//! them.

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
pub mod volume_binding;

use std::sync::Arc;

use crate::framework::{FilterPlugin, Framework, ScorePlugin};

/// kube-scheduler's default profile: filters in its order, scores with its weights.
#[must_use]
pub fn default_framework() -> Framework {
    let taints = Arc::new(taint_toleration::TaintToleration);
    let affinity = Arc::new(node_affinity::NodeAffinity);
    let spread = Arc::new(pod_topology_spread::PodTopologySpread);
    let inter_pod = Arc::new(inter_pod_affinity::InterPodAffinity);
    let filters: Vec<Arc<dyn FilterPlugin>> = vec![
        Arc::new(node_unschedulable::NodeUnschedulable),
        Arc::new(node_name::NodeName),
        taints.clone(),
        affinity.clone(),
        Arc::new(node_ports::NodePorts),
        Arc::new(node_resources_fit::NodeResourcesFit),
        Arc::new(volume_binding::VolumeBinding),
        spread.clone(),
        inter_pod.clone(),
    ];
    let scores: Vec<(Arc<dyn ScorePlugin>, i64)> = vec![
        (taints, 3),
        (affinity, 2),
        (spread, 2),
        (inter_pod, 2),
        (Arc::new(least_allocated::LeastAllocated), 1),
        (Arc::new(balanced_allocation::BalancedAllocation), 1),
    ];
    Framework::new(filters, scores)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Small builders for plugin tests.

    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::core::v1::{
            Affinity, Container, Node, NodeSpec, NodeStatus, Pod, PodAffinityTerm, PodAntiAffinity,
            PodSpec, ResourceRequirements,
        },
        apimachinery::pkg::{
            api::resource::Quantity,
            apis::meta::v1::{LabelSelector, ObjectMeta},
        },
    };

    use crate::{cache::Cache, pod_info::PodInfo};

    /// Required anti-affinity to pods labelled `app=<app>` on the same host.
    pub fn host_anti_affinity(app: &str) -> Affinity {
        Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(labels(&[("app", app)])),
                        match_expressions: None,
                    }),
                    topology_key: "kubernetes.io/hostname".to_owned(),
                    ..PodAffinityTerm::default()
                }]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }
    }

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
        PodInfo::plain(pod)
    }

    pub fn cache(nodes: Vec<Node>) -> Cache {
        let mut cache = Cache::default();
        for n in nodes {
            cache.upsert_node(n);
        }
        cache
    }
}
