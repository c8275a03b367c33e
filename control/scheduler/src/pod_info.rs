//! What the scheduler reads from a pod, computed once per pod version: its requests, host
//! ports, priority and parsed inter-pod (anti-)affinity terms. Queued and bound pods share
//! the same form, so no scheduling cycle parses a selector or a quantity again.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, LazyLock},
};

use k8s_openapi::{
    api::core::v1::{Pod, PodAffinityTerm, WeightedPodAffinityTerm},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use kube::core::{Selector, SelectorExt};

use crate::resources::{Resources, pod_non_zero, pod_requests};

/// A host port a pod takes: (protocol, hostIP, port).
pub type HostPort = (String, String, i32);

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// The one empty pod every placed pod points at instead of a pod of its own (see
/// [`PodInfo::placed`]).
static NO_POD: LazyLock<Arc<Pod>> = LazyLock::new(|| Arc::new(Pod::default()));

/// Namespace labels, for terms with a `namespaceSelector`.
pub trait NamespaceLabels {
    /// The labels of namespace `name`, if it is known.
    fn namespace_labels(&self, name: &str) -> Option<&BTreeMap<String, String>>;
}

/// One pod (anti-)affinity term, ready to match pods.
#[derive(Clone, Debug)]
pub struct AffinityTerm {
    /// The label selector; `None` (absent or invalid) selects nothing, as in Kubernetes.
    pub selector: Option<Selector>,
    /// A `key=value` every matching pod carries, for looking matches up in an index.
    pub required_label: Option<(String, String)>,
    /// Namespaces named by the term (the pod's own when it names none and has no
    /// namespace selector).
    pub namespaces: HashSet<String>,
    /// The namespace selector; an empty one selects every namespace.
    pub namespace_selector: Option<Selector>,
    /// The node label whose values are the term's topology domains.
    pub topology_key: String,
}

/// A `key=value` that every pod `selector` selects must carry, if there is one.
#[must_use]
pub fn required_label(selector: &LabelSelector) -> Option<(String, String)> {
    if let Some((k, v)) = selector.match_labels.as_ref().and_then(|m| m.iter().next()) {
        return Some((k.clone(), v.clone()));
    }
    selector.match_expressions.iter().flatten().find_map(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        (e.operator == "In" && values.len() == 1).then(|| (e.key.clone(), values[0].clone()))
    })
}

impl AffinityTerm {
    /// Parses `term` of a pod in `own_namespace`.
    #[must_use]
    pub fn new(term: &PodAffinityTerm, own_namespace: &str) -> Self {
        let required = term.label_selector.as_ref().and_then(required_label);
        let selector = term
            .label_selector
            .clone()
            .and_then(|s| Selector::try_from(s).ok());
        let namespace_selector = term
            .namespace_selector
            .clone()
            .and_then(|s| Selector::try_from(s).ok());
        let mut namespaces: HashSet<String> = term.namespaces.iter().flatten().cloned().collect();
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.insert(own_namespace.to_owned());
        }
        Self {
            selector,
            required_label: required,
            namespaces,
            namespace_selector,
            topology_key: term.topology_key.clone(),
        }
    }

    /// Whether the term's namespaces include `namespace`.
    pub fn covers_namespace(&self, namespace: &str, labels: &dyn NamespaceLabels) -> bool {
        if self.namespaces.contains(namespace) {
            return true;
        }
        self.namespace_selector.as_ref().is_some_and(|s| {
            s.selects_all() || s.matches(labels.namespace_labels(namespace).unwrap_or(&NO_LABELS))
        })
    }

    /// Whether the term selects `pod`.
    pub fn matches(&self, pod: &PodInfo, labels: &dyn NamespaceLabels) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.matches(pod.labels()))
            && self.covers_namespace(&pod.namespace, labels)
    }
}

/// A preferred term with its weight (negative for anti-affinity).
#[derive(Clone, Debug)]
pub struct WeightedTerm {
    /// The term.
    pub term: AffinityTerm,
    /// Its weight, negated for anti-affinity.
    pub weight: i64,
}

/// A pod as the scheduler sees it.
#[derive(Debug)]
pub struct PodInfo {
    /// The pod; for a placed pod that keeps only its metadata ([`PodInfo::placed`]), a
    /// shared empty pod: read its metadata through [`PodInfo::metadata`] and hand it to
    /// the API through [`PodInfo::object`].
    pub pod: Arc<Pod>,
    /// A placed pod's metadata, when `pod` no longer holds it.
    meta: Option<Box<ObjectMeta>>,
    /// Its uid.
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its effective requests.
    pub requests: Resources,
    /// Its cpu and memory requests with defaults for containers that name none.
    pub non_zero: (i64, i64),
    /// Host ports it takes.
    pub ports: Vec<HostPort>,
    /// Its priority, resolved from its PriorityClass when the API server left it unset.
    pub priority: i32,
    /// Whether it may evict lower-priority pods (`preemptionPolicy` is not `Never`).
    pub may_preempt: bool,
    /// Required pod affinity terms.
    pub required_affinity: Vec<AffinityTerm>,
    /// Required pod anti-affinity terms.
    pub required_anti_affinity: Vec<AffinityTerm>,
    /// Preferred affinity (positive weight) and anti-affinity (negative) terms.
    pub preferred: Vec<WeightedTerm>,
}

/// Parses `terms` with the owning pod's label keys folded in.
fn parse_terms(
    terms: Option<&Vec<PodAffinityTerm>>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<AffinityTerm> {
    terms
        .into_iter()
        .flatten()
        .map(|t| label_keyed(t, namespace, labels))
        .collect()
}

/// Parses one term, turning `matchLabelKeys` and `mismatchLabelKeys` into selector
/// requirements on the owner's label values, as the API server does on create.
fn label_keyed(
    term: &PodAffinityTerm,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> AffinityTerm {
    let match_keys = term.match_label_keys.as_deref().unwrap_or_default();
    let mismatch_keys = term.mismatch_label_keys.as_deref().unwrap_or_default();
    if match_keys.is_empty() && mismatch_keys.is_empty() || term.label_selector.is_none() {
        return AffinityTerm::new(term, namespace);
    }
    let mut term = term.clone();
    if let Some(selector) = term.label_selector.as_mut() {
        let exprs = selector.match_expressions.get_or_insert_with(Vec::new);
        for (keys, operator) in [(match_keys, "In"), (mismatch_keys, "NotIn")] {
            for key in keys {
                if let Some(value) = labels.get(key) {
                    exprs.push(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                            key: key.clone(),
                            operator: operator.to_owned(),
                            values: Some(vec![value.clone()]),
                        },
                    );
                }
            }
        }
    }
    AffinityTerm::new(&term, namespace)
}

fn weighted(
    terms: Option<&Vec<WeightedPodAffinityTerm>>,
    sign: i64,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> impl Iterator<Item = WeightedTerm> {
    terms.into_iter().flatten().map(move |w| WeightedTerm {
        term: label_keyed(&w.pod_affinity_term, namespace, labels),
        weight: sign * i64::from(w.weight),
    })
}

impl PodInfo {
    /// Reads `pod`, whose priority (and preemption policy) the caller resolved.
    #[must_use]
    pub fn new(pod: Arc<Pod>, priority: i32, may_preempt: bool) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
        let anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required_affinity = parse_terms(
            pod_affinity.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
            &namespace,
            labels,
        );
        let required_anti_affinity = parse_terms(
            anti.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
            &namespace,
            labels,
        );
        let preferred = weighted(
            pod_affinity.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
            1,
            &namespace,
            labels,
        )
        .chain(weighted(
            anti.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
            -1,
            &namespace,
            labels,
        ))
        .collect();
        Self {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            requests: pod_requests(&pod),
            non_zero: pod_non_zero(&pod),
            ports: host_ports(&pod),
            priority,
            may_preempt,
            required_affinity,
            required_anti_affinity,
            preferred,
            namespace,
            pod,
            meta: None,
        }
    }

    /// A pod with its own `spec.priority` (0 when unset) and preemption policy, for pods
    /// whose PriorityClass needs no lookup (and tests).
    #[must_use]
    pub fn plain(pod: Pod) -> Self {
        let spec = pod.spec.as_ref();
        let priority = spec.and_then(|s| s.priority).unwrap_or(0);
        let may_preempt = spec.and_then(|s| s.preemption_policy.as_deref()) != Some("Never");
        Self::new(Arc::new(pod), priority, may_preempt)
    }

    /// The same pod keeping only the metadata a placed pod is read for (name, namespace,
    /// uid, labels, deletion): filters and scores read a placed pod through the fields
    /// computed here, and preemption names it. A decoded pod is about 6 KB, mostly its
    /// containers; the scheduler holds every placed pod, so at 50,000 pods this is the
    /// largest part of its memory. Worth it only when nobody else holds the pod (no
    /// informer cache shares the object). The metadata is kept on its own rather than in
    /// a `Pod` with neither spec nor status: a `Pod` value is 2,176 bytes, nearly all of it
    /// the room its spec and status take even when absent, so that form cost about 90 MB
    /// at 50,000 pods (heaptrack, scheduler bench) where this one costs a sixth of it.
    #[must_use]
    pub fn placed(mut self) -> Self {
        let meta = self.metadata();
        self.meta = Some(Box::new(ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            labels: meta.labels.clone(),
            deletion_timestamp: meta.deletion_timestamp.clone(),
            ..ObjectMeta::default()
        }));
        self.pod = Arc::clone(&NO_POD);
        self
    }

    /// The pod's metadata (of a placed pod, only what [`PodInfo::placed`] keeps).
    #[must_use]
    pub fn metadata(&self) -> &ObjectMeta {
        self.meta.as_deref().unwrap_or(&self.pod.metadata)
    }

    /// The pod as an object to name in API calls and events: of a placed pod, one made
    /// from the metadata it keeps, without spec or status.
    #[must_use]
    pub fn object(&self) -> Arc<Pod> {
        match &self.meta {
            Some(meta) => Arc::new(Pod {
                metadata: (**meta).clone(),
                ..Pod::default()
            }),
            None => Arc::clone(&self.pod),
        }
    }

    /// The pod's labels.
    #[must_use]
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.metadata().labels.as_ref().unwrap_or(&NO_LABELS)
    }

    /// The pod's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// Whether the pod is being deleted.
    #[must_use]
    pub fn terminating(&self) -> bool {
        self.metadata().deletion_timestamp.is_some()
    }

    /// Whether the pod's placement depends on other pods (inter-pod affinity or hard
    /// topology spread), so a newly placed pod can make it fit.
    #[must_use]
    pub fn depends_on_pods(&self) -> bool {
        !self.required_affinity.is_empty()
            || self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.topology_spread_constraints.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.when_unsatisfiable == "DoNotSchedule"))
    }

    /// The node the pod waits for after preempting (`status.nominatedNodeName`).
    #[must_use]
    pub fn nominated_node(&self) -> Option<&str> {
        self.pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .filter(|n| !n.is_empty())
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
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                p.host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".to_owned()),
                port,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ContainerPort;

    use super::*;
    use crate::plugins::testing::{host_anti_affinity, labels, pod};

    #[test]
    fn a_placed_pod_keeps_what_filters_and_preemption_read_and_drops_its_spec() {
        let mut whole = pod("web-1", "500m", &[("app", "web")]);
        let spec = whole.spec.as_mut().expect("a spec");
        spec.containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(8080),
            ..ContainerPort::default()
        }]);
        spec.affinity = Some(host_anti_affinity("web"));
        let info = PodInfo::plain(whole);
        let (requests, non_zero, ports) =
            (info.requests.clone(), info.non_zero, info.ports.clone());

        let placed = info.placed();
        assert!(placed.pod.spec.is_none() && placed.pod.status.is_none());
        assert!(
            Arc::ptr_eq(&placed.pod, &NO_POD),
            "no pod of its own: its metadata is kept alone"
        );
        let object = placed.object();
        assert_eq!(object.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(object.metadata.uid.as_deref(), Some("uid-web-1"));
        assert!(object.spec.is_none());
        assert_eq!(placed.name(), "web-1");
        assert_eq!(placed.namespace, "default");
        assert_eq!(placed.uid, "uid-web-1");
        assert_eq!(placed.labels(), &labels(&[("app", "web")]));
        assert_eq!((&placed.requests, placed.non_zero), (&requests, non_zero));
        assert_eq!(placed.ports, ports);
        assert_eq!(
            ports.len(),
            1,
            "the host port was read before the spec went"
        );
        assert_eq!(placed.required_anti_affinity.len(), 1);
        assert!(!placed.terminating());
    }
}
