//! The scheduler's picture of the cluster: nodes with what is bound (or assumed bound) to
//! them, kept up to date incrementally from watch events, with indexes from pod labels
//! and affinity terms to nodes, so a scheduling cycle never copies or scans the cluster.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Node, Taint};

use crate::{
    pod_info::{AffinityTerm, HostPort, NamespaceLabels, PodInfo},
    resources::Resources,
    storage::Storage,
};

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// One node and what runs on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The Node object.
    pub node: Arc<Node>,
    /// `status.allocatable` (capacity when unset).
    pub allocatable: Resources,
    /// Sum of the requests of the pods on it.
    pub requested: Resources,
    /// Sum of the pods' cpu and memory with defaults for containers that request none.
    pub non_zero_requested: (i64, i64),
    /// Pods on it, by uid.
    pub pods: HashMap<String, Arc<PodInfo>>,
    /// Host ports in use, with how many pods use each.
    pub ports: HashMap<HostPort, u32>,
    /// Pods that preempted others to go here and wait for the victims to leave.
    pub nominated: Vec<Arc<PodInfo>>,
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
            non_zero_requested: (0, 0),
            pods: HashMap::new(),
            ports: HashMap::new(),
            nominated: Vec::new(),
        }
    }

    /// The node's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    /// The node's labels.
    #[must_use]
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.node.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
    }

    /// The node's taints.
    #[must_use]
    pub fn taints(&self) -> &[Taint] {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
    }

    /// Counts `pod` as running here.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_requested.0 += pod.non_zero.0;
        self.non_zero_requested.1 += pod.non_zero.1;
        for port in &pod.ports {
            *self.ports.entry(port.clone()).or_default() += 1;
        }
        self.pods.insert(pod.uid.clone(), pod);
    }

    /// Stops counting the pod `uid` here.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let pod = self.pods.remove(uid)?;
        self.requested.sub(&pod.requests);
        self.non_zero_requested.0 -= pod.non_zero.0;
        self.non_zero_requested.1 -= pod.non_zero.1;
        for port in &pod.ports {
            if let Some(n) = self.ports.get_mut(port) {
                *n -= 1;
                if *n == 0 {
                    self.ports.remove(port);
                }
            }
        }
        Some(pod)
    }
}

/// Pods with affinity terms, findable by a label their terms require of the pods they
/// select: a newcomer only meets the terms keyed by its own labels (plus the few terms
/// that require no single label).
#[derive(Debug, Default)]
struct TermIndex {
    by_label: HashMap<(String, String), HashSet<String>>,
    generic: HashSet<String>,
}

impl TermIndex {
    fn insert<'a>(&mut self, uid: &str, terms: impl Iterator<Item = &'a AffinityTerm>) {
        for term in terms {
            match &term.required_label {
                Some(label) => {
                    self.by_label
                        .entry(label.clone())
                        .or_default()
                        .insert(uid.to_owned());
                }
                None => {
                    self.generic.insert(uid.to_owned());
                }
            }
        }
    }

    fn remove<'a>(&mut self, uid: &str, terms: impl Iterator<Item = &'a AffinityTerm>) {
        for term in terms {
            match &term.required_label {
                Some(label) => {
                    if let Some(set) = self.by_label.get_mut(label) {
                        set.remove(uid);
                        if set.is_empty() {
                            self.by_label.remove(label);
                        }
                    }
                }
                None => {
                    self.generic.remove(uid);
                }
            }
        }
    }

    /// Uids of pods with a term that may select a pod labelled `labels`.
    fn candidates(&self, labels: &BTreeMap<String, String>) -> HashSet<&str> {
        let mut out: HashSet<&str> = self.generic.iter().map(String::as_str).collect();
        if self.by_label.is_empty() {
            return out;
        }
        for (k, v) in labels {
            if let Some(set) = self.by_label.get(&(k.clone(), v.clone())) {
                out.extend(set.iter().map(String::as_str));
            }
        }
        out
    }
}

/// Nodes in slots, reachable by name and by position in a stable order (the search
/// walks positions, so it never hashes a node name).
#[derive(Debug, Default)]
struct Nodes {
    slots: Vec<Option<NodeInfo>>,
    free: Vec<usize>,
    by_name: HashMap<String, usize>,
    /// Slots of the live nodes in a stable order, for round-robin search starts.
    order: Vec<usize>,
}

impl Nodes {
    fn get(&self, name: &str) -> Option<&NodeInfo> {
        self.slots[*self.by_name.get(name)?].as_ref()
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut NodeInfo> {
        self.slots[*self.by_name.get(name)?].as_mut()
    }

    fn insert(&mut self, name: String, info: NodeInfo) {
        let slot = if let Some(slot) = self.free.pop() {
            self.slots[slot] = Some(info);
            slot
        } else {
            self.slots.push(Some(info));
            self.slots.len() - 1
        };
        self.by_name.insert(name, slot);
        self.order.push(slot);
    }

    fn remove(&mut self, name: &str) -> Option<NodeInfo> {
        let slot = self.by_name.remove(name)?;
        self.order.retain(|s| *s != slot);
        self.free.push(slot);
        self.slots[slot].take()
    }

    fn nth(&self, i: usize) -> Option<&NodeInfo> {
        self.slots[*self.order.get(i)?].as_ref()
    }

    fn iter(&self) -> impl Iterator<Item = &NodeInfo> {
        self.order.iter().filter_map(|s| self.slots[*s].as_ref())
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// Nodes and bound pods, with the indexes the plugins look things up in.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Nodes,
    /// Pods bound to a node the cache has no Node object for (not yet, or not any more):
    /// they count again as soon as the node shows up.
    ghosts: HashMap<String, HashMap<String, Arc<PodInfo>>>,
    /// Every recorded pod: uid -> node name.
    placed: HashMap<String, String>,
    /// (namespace, label key, label value) -> node -> pods there with that label.
    pod_labels: HashMap<(String, String, String), HashMap<String, u32>>,
    /// Node label key -> value -> nodes with it.
    node_labels: HashMap<String, HashMap<String, u32>>,
    /// Placed pods with required anti-affinity terms (they can refuse newcomers).
    required_anti: TermIndex,
    /// Placed pods with terms that sway a newcomer's score: preferred terms and required
    /// affinity.
    scoring_terms: TermIndex,
    /// Namespace name -> labels, for terms with a namespace selector.
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Nominated pods: uid -> (node, pod).
    nominated: HashMap<String, (String, Arc<PodInfo>)>,
    /// Placed pods per priority, so preemption knows at once whether anything ranks
    /// below a pod.
    priorities: BTreeMap<i32, usize>,
    /// Claims, volumes and `StorageClasses` (`VolumeBinding`).
    pub storage: Storage,
}

impl NamespaceLabels for Cache {
    fn namespace_labels(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(name)
    }
}

/// Whether a node change can make a waiting pod fit (labels, taints, cordon, capacity).
fn schedulable_change(old: &Node, new: &Node) -> bool {
    let spec = |n: &Node| n.spec.as_ref().map(|s| (s.unschedulable, s.taints.clone()));
    let alloc = |n: &Node| {
        n.status
            .as_ref()
            .map(|s| (s.allocatable.clone(), s.capacity.clone()))
    };
    old.metadata.labels != new.metadata.labels || spec(old) != spec(new) || alloc(old) != alloc(new)
}

impl Cache {
    /// Adds or replaces a node, keeping its pods; returns whether the change can make a
    /// waiting pod fit.
    pub fn upsert_node(&mut self, node: impl Into<Arc<Node>>) -> bool {
        let node: Arc<Node> = node.into();
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(info) = self.nodes.get_mut(&name) {
            let changed = schedulable_change(&info.node, &node);
            if info.node.metadata.labels != node.metadata.labels {
                let old = info.node.clone();
                let new = node.clone();
                index_node_labels(&mut self.node_labels, &old, -1);
                index_node_labels(&mut self.node_labels, &new, 1);
            }
            let fresh = NodeInfo::new(node);
            info.node = fresh.node;
            info.allocatable = fresh.allocatable;
            return changed;
        }
        let mut info = NodeInfo::new(node);
        index_node_labels(&mut self.node_labels, &info.node, 1);
        for pod in self
            .ghosts
            .remove(&name)
            .into_iter()
            .flat_map(HashMap::into_values)
        {
            info.add_pod(pod);
        }
        info.nominated = self
            .nominated
            .values()
            .filter(|(n, _)| *n == name)
            .map(|(_, p)| p.clone())
            .collect();
        self.nodes.insert(name, info);
        true
    }

    /// Removes a node; its pods wait as ghosts until they go away or the node returns.
    pub fn remove_node(&mut self, name: &str) {
        let Some(info) = self.nodes.remove(name) else {
            return;
        };
        index_node_labels(&mut self.node_labels, &info.node, -1);
        if !info.pods.is_empty() {
            self.ghosts.insert(name.to_owned(), info.pods);
        }
    }

    /// Records `pod` on `node` (bound, or assumed while its binding is in flight), in place
    /// of an earlier record of the same pod.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.remove_pod(&pod.uid);
        for (k, v) in pod.labels() {
            *self
                .pod_labels
                .entry((pod.namespace.clone(), k.clone(), v.clone()))
                .or_default()
                .entry(node.to_owned())
                .or_default() += 1;
        }
        self.required_anti
            .insert(&pod.uid, pod.required_anti_affinity.iter());
        self.scoring_terms.insert(&pod.uid, scoring_terms(&pod));
        self.placed.insert(pod.uid.clone(), node.to_owned());
        *self.priorities.entry(pod.priority).or_default() += 1;
        match self.nodes.get_mut(node) {
            Some(info) => info.add_pod(pod),
            None => {
                self.ghosts
                    .entry(node.to_owned())
                    .or_default()
                    .insert(pod.uid.clone(), pod);
            }
        }
    }

    /// Forgets a pod (deleted, finished, or an assumption whose binding failed).
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let node = self.placed.remove(uid)?;
        let pod = if let Some(info) = self.nodes.get_mut(&node) {
            info.remove_pod(uid)
        } else {
            let ghosts = self.ghosts.get_mut(&node)?;
            let pod = ghosts.remove(uid);
            if ghosts.is_empty() {
                self.ghosts.remove(&node);
            }
            pod
        }?;
        if let Some(n) = self.priorities.get_mut(&pod.priority) {
            *n -= 1;
            if *n == 0 {
                self.priorities.remove(&pod.priority);
            }
        }
        self.required_anti
            .remove(uid, pod.required_anti_affinity.iter());
        self.scoring_terms.remove(uid, scoring_terms(&pod));
        for (k, v) in pod.labels() {
            let key = (pod.namespace.clone(), k.clone(), v.clone());
            if let Some(per_node) = self.pod_labels.get_mut(&key) {
                if let Some(n) = per_node.get_mut(&node) {
                    *n -= 1;
                    if *n == 0 {
                        per_node.remove(&node);
                    }
                }
                if per_node.is_empty() {
                    self.pod_labels.remove(&key);
                }
            }
        }
        Some(pod)
    }

    /// Holds `node`'s room for `pod`, which preempted pods there and waits for them to go.
    pub fn nominate(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.clear_nomination(&pod.uid);
        if let Some(info) = self.nodes.get_mut(node) {
            info.nominated.push(pod.clone());
        }
        self.nominated
            .insert(pod.uid.clone(), (node.to_owned(), pod));
    }

    /// Releases what a nominated pod held (it got bound, went away, or gave up).
    pub fn clear_nomination(&mut self, uid: &str) {
        if let Some((node, _)) = self.nominated.remove(uid)
            && let Some(info) = self.nodes.get_mut(&node)
        {
            info.nominated.retain(|p| p.uid != uid);
        }
    }

    /// The node `uid` is nominated for.
    #[must_use]
    pub fn nomination(&self, uid: &str) -> Option<&str> {
        self.nominated.get(uid).map(|(n, _)| n.as_str())
    }

    /// The lowest priority of any placed pod.
    #[must_use]
    pub fn lowest_priority(&self) -> Option<i32> {
        self.priorities.keys().next().copied()
    }

    /// Records a namespace's labels (for namespace selectors).
    pub fn upsert_namespace(&mut self, name: String, labels: BTreeMap<String, String>) {
        self.namespaces.insert(name, labels);
    }

    /// Forgets a namespace.
    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Every recorded pod's uid.
    #[must_use]
    pub fn pod_uids(&self) -> Vec<String> {
        self.placed.keys().cloned().collect()
    }

    /// The node a pod is recorded on.
    #[must_use]
    pub fn node_of(&self, uid: &str) -> Option<&str> {
        self.placed.get(uid).map(String::as_str)
    }

    /// A recorded pod, with its node when the node is known.
    #[must_use]
    pub fn pod(&self, uid: &str) -> Option<(&Arc<PodInfo>, &NodeInfo)> {
        let node = self.nodes.get(self.placed.get(uid)?)?;
        Some((node.pods.get(uid)?, node))
    }

    /// A node by name.
    #[must_use]
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    /// Every node, in a stable order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter()
    }

    /// The `i`-th node of the stable order.
    #[must_use]
    pub fn nth(&self, i: usize) -> Option<&NodeInfo> {
        self.nodes.nth(i)
    }

    /// How many nodes there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 0
    }

    /// Nodes running at least one pod in `namespace` labelled `key=value`.
    pub fn nodes_with_pod_label(
        &self,
        namespace: &str,
        key: &str,
        value: &str,
    ) -> impl Iterator<Item = &NodeInfo> {
        self.pod_labels
            .get(&(namespace.to_owned(), key.to_owned(), value.to_owned()))
            .into_iter()
            .flat_map(|per_node| per_node.keys())
            .filter_map(|n| self.nodes.get(n))
    }

    /// Namespaces that have pods labelled `key=value`.
    #[must_use]
    pub fn namespaces_with_pod_label(&self, key: &str, value: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .pod_labels
            .keys()
            .filter(|(_, k, v)| k == key && v == value)
            .map(|(ns, _, _)| ns.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The values node label `key` takes, with how many nodes carry each.
    #[must_use]
    pub fn node_label_values(&self, key: &str) -> Option<&HashMap<String, u32>> {
        self.node_labels.get(key)
    }

    /// Placed pods whose required anti-affinity terms may select `pod`, with their nodes.
    pub fn anti_affinity_towards(
        &self,
        pod: &PodInfo,
    ) -> impl Iterator<Item = (&Arc<PodInfo>, &NodeInfo)> {
        self.required_anti
            .candidates(pod.labels())
            .into_iter()
            .filter_map(|uid| self.pod(uid))
    }

    /// Placed pods whose preferred terms (or required affinity) may select `pod`.
    pub fn scoring_terms_towards(
        &self,
        pod: &PodInfo,
    ) -> impl Iterator<Item = (&Arc<PodInfo>, &NodeInfo)> {
        self.scoring_terms
            .candidates(pod.labels())
            .into_iter()
            .filter_map(|uid| self.pod(uid))
    }
}

fn scoring_terms(pod: &PodInfo) -> impl Iterator<Item = &AffinityTerm> {
    pod.preferred
        .iter()
        .map(|w| &w.term)
        .chain(pod.required_affinity.iter())
}

fn index_node_labels(index: &mut HashMap<String, HashMap<String, u32>>, node: &Node, delta: i32) {
    for (k, v) in node.metadata.labels.iter().flatten() {
        let values = index.entry(k.clone()).or_default();
        let count = values.entry(v.clone()).or_default();
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            values.remove(v);
            if values.is_empty() {
                index.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{cache, info, node, pod};

    #[test]
    fn pods_bound_before_their_node_appears_count_once_it_does() {
        let mut c = cache(vec![]);
        c.add_pod(Arc::new(info(pod("a", "1", &[("app", "web")]))), "n1");
        assert!(c.node("n1").is_none());
        c.upsert_node(node("n1", "4", "8Gi", &[]));
        let n1 = c.node("n1").unwrap();
        assert_eq!(n1.requested.cpu, 1000);
        assert_eq!(c.nodes_with_pod_label("default", "app", "web").count(), 1);
        // The node goes away and comes back: its pods are still counted.
        c.remove_node("n1");
        c.upsert_node(node("n1", "4", "8Gi", &[]));
        assert_eq!(c.node("n1").unwrap().requested.cpu, 1000);
        c.remove_pod("uid-a");
        assert_eq!(c.node("n1").unwrap().requested.cpu, 0);
        assert_eq!(c.nodes_with_pod_label("default", "app", "web").count(), 0);
    }

    #[test]
    fn node_label_index_follows_relabelling() {
        let mut c = cache(vec![
            node("a", "4", "8Gi", &[("zone", "z1")]),
            node("b", "4", "8Gi", &[("zone", "z1")]),
        ]);
        assert_eq!(c.node_label_values("zone").unwrap()["z1"], 2);
        assert!(c.upsert_node(node("b", "4", "8Gi", &[("zone", "z2")])));
        let zones = c.node_label_values("zone").unwrap();
        assert_eq!((zones["z1"], zones["z2"]), (1, 1));
        assert!(!c.upsert_node(node("b", "4", "8Gi", &[("zone", "z2")])));
        c.remove_node("a");
        assert!(!c.node_label_values("zone").unwrap().contains_key("z1"));
    }

    #[test]
    fn host_ports_are_released_with_their_pod() {
        use k8s_openapi::api::core::v1::ContainerPort;
        let mut c = cache(vec![node("n1", "4", "8Gi", &[])]);
        let mut p = pod("a", "1", &[]);
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(80),
            ..ContainerPort::default()
        }]);
        c.add_pod(Arc::new(info(p)), "n1");
        assert_eq!(c.node("n1").unwrap().ports.len(), 1);
        c.remove_pod("uid-a");
        assert!(c.node("n1").unwrap().ports.is_empty());
    }
}
