//! Preemption: when a pod fits nowhere, find the node where evicting the fewest (and
//! least important) lower-priority pods makes room, like kube-scheduler's default
//! PostFilter.

use std::{collections::HashSet, sync::Arc};

use k8s_openapi::api::core::v1::Pod;

use crate::{
    cache::Cache,
    framework::{Framework, PodInfo},
};

/// Pods to evict on a node so the preemptor fits there.
#[derive(Debug)]
pub struct Candidate {
    /// The node.
    pub node: String,
    /// The pods to evict, lowest priority first.
    pub victims: Vec<Arc<Pod>>,
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The best node to preempt on, or `None` when no eviction of lower-priority pods helps
/// (or the pod may not preempt). Filters that look across nodes (inter-pod affinity,
/// spread) are evaluated against the cluster as it is, victims included.
#[must_use]
pub fn find(framework: &Framework, pod: &PodInfo, cache: &Cache) -> Option<Candidate> {
    let policy = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref());
    if policy == Some("Never") {
        return None;
    }
    let states = framework.pre_filter(pod, cache);
    let mut best: Option<(Candidate, (usize, i32))> = None;
    for node in cache.nodes() {
        let mut lower: Vec<&Arc<Pod>> = node
            .pods
            .values()
            .filter(|p| priority(p) < pod.priority && p.metadata.deletion_timestamp.is_none())
            .collect();
        if lower.is_empty() {
            continue;
        }
        let all: HashSet<String> = lower
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        if framework
            .filter(pod, &node.without(&all), &states, cache)
            .is_err()
        {
            continue;
        }
        // Give back as many pods as possible, most important first.
        lower.sort_by_key(|p| std::cmp::Reverse(priority(p)));
        let mut evict = all;
        for p in &lower {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            evict.remove(&uid);
            if framework
                .filter(pod, &node.without(&evict), &states, cache)
                .is_err()
            {
                evict.insert(uid);
            }
        }
        let mut victims: Vec<Arc<Pod>> = lower
            .into_iter()
            .filter(|p| p.metadata.uid.as_ref().is_some_and(|u| evict.contains(u)))
            .cloned()
            .collect();
        victims.sort_by_key(|p| priority(p));
        let rank = (
            victims.len(),
            victims.iter().map(|p| priority(p)).max().unwrap_or(0),
        );
        if best.as_ref().is_none_or(|(_, r)| rank < *r) {
            best = Some((
                Candidate {
                    node: node.name().to_owned(),
                    victims,
                },
                rank,
            ));
        }
    }
    best.map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{
        default_framework,
        testing::{cache, info, node, pod},
    };

    fn with_priority(name: &str, cpu: &str, p: i32) -> Pod {
        let mut pod = pod(name, cpu, &[]);
        pod.spec.as_mut().unwrap().priority = Some(p);
        pod
    }

    #[test]
    fn evicts_the_fewest_lower_priority_pods() {
        let mut c = cache(vec![
            node("n1", "2", "8Gi", &[]),
            node("n2", "2", "8Gi", &[]),
        ]);
        c.add_pod(Arc::new(with_priority("a", "1", 0)), "n1");
        c.add_pod(Arc::new(with_priority("b", "1", 0)), "n1");
        c.add_pod(Arc::new(with_priority("c", "2", 0)), "n2");
        let fw = default_framework();
        let found = find(&fw, &info(with_priority("vip", "2", 100)), &c).unwrap();
        assert_eq!(found.node, "n2");
        assert_eq!(found.victims.len(), 1);
    }

    #[test]
    fn equal_or_higher_priority_pods_are_never_victims() {
        let mut c = cache(vec![node("n1", "1", "8Gi", &[])]);
        c.add_pod(Arc::new(with_priority("a", "1", 100)), "n1");
        let fw = default_framework();
        assert!(find(&fw, &info(with_priority("p", "1", 100)), &c).is_none());
    }

    #[test]
    fn preemption_policy_never_does_not_preempt() {
        let mut c = cache(vec![node("n1", "1", "8Gi", &[])]);
        c.add_pod(Arc::new(with_priority("a", "1", 0)), "n1");
        let mut p = with_priority("p", "1", 100);
        p.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert!(find(&default_framework(), &info(p), &c).is_none());
    }
}
