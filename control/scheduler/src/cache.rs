//! The scheduler's picture of the cluster: nodes with what is bound (or assumed bound) to
//! them, kept up to date incrementally from watch events, so a scheduling cycle never
//! copies the cluster.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::resources::{Resources, pod_requests};

/// A host port a pod takes: (protocol, hostIP, port).
pub type HostPort = (String, String, i32);

/// One node and what runs on it.
#[derive(Debug)]
pub struct NodeInfo {
    /// The Node object.
    pub node: Arc<Node>,
    /// `status.allocatable` (capacity when unset).
    pub allocatable: Resources,
    /// Sum of the requests of the pods on it.
    pub requested: Resources,
    /// Pods on it, by uid.
    pub pods: HashMap<String, Arc<Pod>>,
    /// Host ports in use.
    pub ports: HashMap<HostPort, u32>,
}

impl NodeInfo {
    fn new(node: Arc<Node>) -> Self {
        let status = node.status.as_ref();
        let list = status
            .and_then(|s| s.allocatable.as_ref())
            .or_else(|| status.and_then(|s| s.capacity.as_ref()));
        Self {
            allocatable: Resources::from_list(list),
            node,
            requested: Resources::default(),
            pods: HashMap::new(),
            ports: HashMap::new(),
        }
    }

    /// This node as it would be without the pods in `uids` (for preemption what-ifs).
    #[must_use]
    pub fn without(&self, uids: &HashSet<String>) -> Self {
        let mut copy = Self {
            node: self.node.clone(),
            allocatable: self.allocatable.clone(),
            requested: self.requested.clone(),
            pods: self.pods.clone(),
            ports: self.ports.clone(),
        };
        for uid in uids {
            if let Some(pod) = copy.pods.remove(uid) {
                copy.requested.sub(&pod_requests(&pod));
                for port in host_ports(&pod) {
                    if let Some(n) = copy.ports.get_mut(&port) {
                        *n -= 1;
                        if *n == 0 {
                            copy.ports.remove(&port);
                        }
                    }
                }
            }
        }
        copy
    }

    /// The node's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    /// The node's labels.
    #[must_use]
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }
}

/// The host ports `pod` asks for.
#[must_use]
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".to_owned()),
                port,
            ))
        })
        .collect()
}

/// Nodes and bound pods, with an index from a pod label to the nodes running such pods.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: HashMap<String, NodeInfo>,
    /// Node names in a stable order, for round-robin search starts.
    order: Vec<String>,
    /// Bound pods: uid -> node name.
    placed: HashMap<String, String>,
    /// (namespace, label key, label value) -> node -> matching pods there.
    labels: HashMap<(String, String, String), HashMap<String, u32>>,
    /// Pods that carry required anti-affinity terms (they can refuse newcomers), by uid.
    anti_affinity: HashSet<String>,
}

impl Cache {
    /// Adds or replaces a node, keeping its pods.
    pub fn upsert_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let node = Arc::new(node);
        if let Some(info) = self.nodes.get_mut(&name) {
            let fresh = NodeInfo::new(node);
            info.node = fresh.node;
            info.allocatable = fresh.allocatable;
        } else {
            self.nodes.insert(name.clone(), NodeInfo::new(node));
            self.order.push(name);
        }
    }

    /// Removes a node; its pods stay known as placed until they go away.
    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.remove(name) {
            for uid in info.pods.keys() {
                self.placed.remove(uid);
                self.anti_affinity.remove(uid);
            }
            for (key, per_node) in &mut self.labels {
                let _ = key;
                per_node.remove(name);
            }
            self.order.retain(|n| n != name);
        }
    }

    /// Records `pod` as running on `node` (bound, or assumed while its binding is in
    /// flight); replaces an earlier record of the same pod.
    pub fn add_pod(&mut self, pod: Arc<Pod>, node: &str) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.remove_pod(&uid);
        let Some(info) = self.nodes.get_mut(node) else {
            return;
        };
        info.requested.add(&pod_requests(&pod));
        for port in host_ports(&pod) {
            *info.ports.entry(port).or_default() += 1;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        for (k, v) in pod.metadata.labels.iter().flatten() {
            *self
                .labels
                .entry((ns.clone(), k.clone(), v.clone()))
                .or_default()
                .entry(node.to_owned())
                .or_default() += 1;
        }
        if has_required_anti_affinity(&pod) {
            self.anti_affinity.insert(uid.clone());
        }
        info.pods.insert(uid.clone(), pod);
        self.placed.insert(uid, node.to_owned());
    }

    /// Forgets a pod (deleted, finished, or an assumption whose binding failed).
    pub fn remove_pod(&mut self, uid: &str) {
        let Some(node) = self.placed.remove(uid) else {
            return;
        };
        self.anti_affinity.remove(uid);
        let Some(info) = self.nodes.get_mut(&node) else {
            return;
        };
        let Some(pod) = info.pods.remove(uid) else {
            return;
        };
        info.requested.sub(&pod_requests(&pod));
        for port in host_ports(&pod) {
            if let Some(n) = info.ports.get_mut(&port) {
                *n -= 1;
                if *n == 0 {
                    info.ports.remove(&port);
                }
            }
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        for (k, v) in pod.metadata.labels.iter().flatten() {
            let key = (ns.clone(), k.clone(), v.clone());
            if let Some(per_node) = self.labels.get_mut(&key) {
                if let Some(n) = per_node.get_mut(&node) {
                    *n -= 1;
                    if *n == 0 {
                        per_node.remove(&node);
                    }
                }
                if per_node.is_empty() {
                    self.labels.remove(&key);
                }
            }
        }
    }

    /// Every pod recorded on a node.
    #[must_use]
    pub fn pod_uids(&self) -> Vec<String> {
        self.placed.keys().cloned().collect()
    }

    /// The node a pod is recorded on.
    #[must_use]
    pub fn node_of(&self, uid: &str) -> Option<&str> {
        self.placed.get(uid).map(String::as_str)
    }

    /// A node by name.
    #[must_use]
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    /// Every node, in a stable order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.order.iter().filter_map(|n| self.nodes.get(n))
    }

    /// The `i`-th node of the stable order.
    #[must_use]
    pub fn nth(&self, i: usize) -> Option<&NodeInfo> {
        self.order.get(i).and_then(|n| self.nodes.get(n))
    }

    /// How many nodes there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are no nodes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Nodes that run at least one pod in `namespace` labelled `key=value`, or `None` when
    /// the label is not indexed for lookups (then every node is a candidate).
    #[must_use]
    pub fn nodes_with_label(&self, namespace: &str, key: &str, value: &str) -> Vec<&NodeInfo> {
        self.labels
            .get(&(namespace.to_owned(), key.to_owned(), value.to_owned()))
            .map(|per_node| per_node.keys().filter_map(|n| self.nodes.get(n)).collect())
            .unwrap_or_default()
    }

    /// Pods with required anti-affinity terms, with their nodes.
    pub fn anti_affinity_pods(&self) -> impl Iterator<Item = (&Arc<Pod>, &NodeInfo)> {
        self.anti_affinity.iter().filter_map(|uid| {
            let node = self.nodes.get(self.placed.get(uid)?)?;
            Some((node.pods.get(uid)?, node))
        })
    }
}

fn has_required_anti_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|t| !t.is_empty())
}
