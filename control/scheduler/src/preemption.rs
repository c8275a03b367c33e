//! Preemption, kube-scheduler's default PostFilter: when a pod fits nowhere, find the
//! node where evicting lower-priority pods makes room, evicting as few and as unimportant
//! pods as possible; the filters re-run on what-if copies of the node and of the cycle
//! state, so affinity and spread count the victims as gone.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    cache::{Cache, NodeInfo},
    framework::{CycleState, Diagnosis, Framework, histogram},
    pod_info::PodInfo,
};

const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";

/// Pods to evict on a node so the preemptor fits there.
#[derive(Debug)]
pub struct Candidate {
    /// The node.
    pub node: String,
    /// The pods to evict, lowest priority first.
    pub victims: Vec<Arc<PodInfo>>,
}

/// What `find` decided.
#[derive(Debug)]
pub enum Preemption {
    /// Evict these pods and nominate the node.
    Evict(Candidate),
    /// The pod waits: it may not preempt, or its victims are still leaving. The message
    /// follows `preemption: ` in the `FailedScheduling` event.
    Wait(String),
    /// No node can be freed up; the message says why, node by node.
    Fail(String),
}

/// How many nodes to dry-run before picking: 10% of the candidates, at least 100, as
/// kube-scheduler.
fn candidates_wanted(nodes: usize) -> usize {
    (nodes / 10).max(100).min(nodes)
}

/// The victims on `node` that make room for `pod`, or why none do.
fn select_victims(
    framework: &Framework,
    pod: &PodInfo,
    node: &NodeInfo,
    cache: &Cache,
    state: &CycleState,
) -> Result<Vec<Arc<PodInfo>>, Vec<String>> {
    let mut potential: Vec<Arc<PodInfo>> = node
        .pods
        .values()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    if potential.is_empty() {
        return Err(vec![NO_VICTIMS.to_owned()]);
    }
    let mut what_if = node.clone();
    let mut state = state.clone();
    for p in &potential {
        what_if.remove_pod(&p.uid);
        framework.remove_pod(&mut state, pod, p, node, cache);
    }
    if let Err(unfit) = framework.filter(pod, &what_if, &state) {
        return Err(unfit.reasons);
    }
    // Give back as many pods as possible, most important first.
    potential.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.uid.cmp(&b.uid)));
    let mut victims = Vec::new();
    for p in potential {
        what_if.add_pod(p.clone());
        framework.add_pod(&mut state, pod, &p, node, cache);
        if framework.filter(pod, &what_if, &state).is_err() {
            what_if.remove_pod(&p.uid);
            framework.remove_pod(&mut state, pod, &p, node, cache);
            victims.push(p);
        }
    }
    victims.sort_by_key(|p| p.priority);
    Ok(victims)
}

/// kube-scheduler's ranking of candidates (without PodDisruptionBudgets): the lowest
/// highest-priority victim, then the lowest sum of priorities, then the fewest victims.
fn rank(victims: &[Arc<PodInfo>]) -> (i64, i64, usize) {
    let highest = victims
        .iter()
        .map(|p| i64::from(p.priority))
        .max()
        .unwrap_or(i64::MIN);
    // Shifted so that every victim adds a positive amount, as kube-scheduler does.
    let sum = victims
        .iter()
        .map(|p| i64::from(p.priority) + i64::from(i32::MAX) + 1)
        .sum();
    (highest, sum, victims.len())
}

/// Decides whether and where `pod`, which fits nowhere (`diagnosis`), may preempt.
#[must_use]
pub fn find(
    framework: &Framework,
    pod: &PodInfo,
    cache: &Cache,
    diagnosis: &Diagnosis,
    start: usize,
) -> Preemption {
    if !pod.may_preempt {
        return Preemption::Wait("not eligible due to preemptionPolicy=Never.".to_owned());
    }
    let nominated = cache.nomination(&pod.uid).or_else(|| pod.nominated_node());
    if let Some(node) = nominated.and_then(|n| cache.node(n))
        && diagnosis.resolvable.iter().any(|n| n == node.name())
        && node
            .pods
            .values()
            .any(|p| p.priority < pod.priority && p.terminating())
    {
        return Preemption::Wait(
            "not eligible due to a terminating pod on the nominated node.".to_owned(),
        );
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let unresolvable = diagnosis.nodes.saturating_sub(diagnosis.resolvable.len());
    if unresolvable > 0 {
        reasons.insert(NOT_HELPFUL.to_owned(), unresolvable);
    }
    if cache
        .lowest_priority()
        .is_none_or(|lowest| lowest >= pod.priority)
    {
        // Nothing anywhere ranks below the pod: no node needs a dry run.
        if !diagnosis.resolvable.is_empty() {
            reasons.insert(NO_VICTIMS.to_owned(), diagnosis.resolvable.len());
        }
        return Preemption::Fail(format!(
            "0/{} nodes are available: {}.",
            diagnosis.nodes,
            histogram(&reasons)
        ));
    }
    let state = framework.pre_filter(pod, cache);
    let wanted = candidates_wanted(diagnosis.resolvable.len());
    let mut found: Vec<Candidate> = Vec::new();
    let n = diagnosis.resolvable.len();
    for i in 0..n {
        if found.len() >= wanted {
            break;
        }
        let Some(node) = cache.node(&diagnosis.resolvable[(start + i) % n]) else {
            continue;
        };
        match select_victims(framework, pod, node, cache, &state) {
            Ok(victims) if !victims.is_empty() => found.push(Candidate {
                node: node.name().to_owned(),
                victims,
            }),
            // Fits without evicting anyone: the cluster changed since the pod was
            // filtered, and its next attempt will place it without preempting.
            Ok(_) => {}
            Err(why) => {
                for reason in why {
                    *reasons.entry(reason).or_default() += 1;
                }
            }
        }
    }
    match found.into_iter().min_by_key(|c| rank(&c.victims)) {
        Some(best) => Preemption::Evict(best),
        None => Preemption::Fail(format!(
            "0/{} nodes are available: {}.",
            diagnosis.nodes,
            histogram(&reasons)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        framework::Cursor,
        plugins::{
            default_framework,
            testing::{cache, info, node, pod},
        },
    };

    fn with_priority(name: &str, cpu: &str, p: i32) -> PodInfo {
        let mut pod = pod(name, cpu, &[]);
        pod.spec.as_mut().unwrap().priority = Some(p);
        info(pod)
    }

    fn preempt(c: &Cache, p: &PodInfo) -> Preemption {
        let fw = default_framework();
        let diagnosis = fw
            .schedule(p, c, &mut Cursor::default(), 0)
            .expect_err("the pod must not fit");
        find(&fw, p, c, &diagnosis, 0)
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
        let Preemption::Evict(found) = preempt(&c, &with_priority("vip", "2", 100)) else {
            panic!("expected a candidate");
        };
        assert_eq!(found.node, "n2");
        assert_eq!(found.victims.len(), 1);
    }

    #[test]
    fn prefers_evicting_less_important_pods() {
        let mut c = cache(vec![
            node("n1", "1", "8Gi", &[]),
            node("n2", "1", "8Gi", &[]),
        ]);
        c.add_pod(Arc::new(with_priority("mid", "1", 50)), "n1");
        c.add_pod(Arc::new(with_priority("low", "1", 10)), "n2");
        let Preemption::Evict(found) = preempt(&c, &with_priority("vip", "1", 100)) else {
            panic!("expected a candidate");
        };
        assert_eq!(found.node, "n2");
        assert_eq!(found.victims[0].name(), "low");
    }

    #[test]
    fn keeps_the_pods_it_does_not_need_to_evict() {
        let mut c = cache(vec![node("n1", "3", "8Gi", &[])]);
        c.add_pod(Arc::new(with_priority("a", "1", 5)), "n1");
        c.add_pod(Arc::new(with_priority("b", "1", 1)), "n1");
        c.add_pod(Arc::new(with_priority("c", "1", 3)), "n1");
        let Preemption::Evict(found) = preempt(&c, &with_priority("vip", "1", 100)) else {
            panic!("expected a candidate");
        };
        let names: Vec<&str> = found.victims.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn equal_or_higher_priority_pods_are_never_victims() {
        let mut c = cache(vec![node("n1", "1", "8Gi", &[])]);
        c.add_pod(Arc::new(with_priority("a", "1", 100)), "n1");
        let Preemption::Fail(message) = preempt(&c, &with_priority("p", "1", 100)) else {
            panic!("expected no candidate");
        };
        assert_eq!(
            message,
            "0/1 nodes are available: 1 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn nodes_ruled_out_for_other_reasons_are_not_helped() {
        let mut cordoned = node("n2", "8", "8Gi", &[]);
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let mut c = cache(vec![node("n1", "1", "8Gi", &[]), cordoned]);
        c.add_pod(Arc::new(with_priority("a", "1", 100)), "n1");
        let Preemption::Fail(message) = preempt(&c, &with_priority("p", "1", 100)) else {
            panic!("expected no candidate");
        };
        assert_eq!(
            message,
            "0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn preemption_policy_never_does_not_preempt() {
        let mut c = cache(vec![node("n1", "1", "8Gi", &[])]);
        c.add_pod(Arc::new(with_priority("a", "1", 0)), "n1");
        let mut p = pod("p", "1", &[]);
        p.spec.as_mut().unwrap().priority = Some(100);
        p.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        let Preemption::Wait(message) = preempt(&c, &info(p)) else {
            panic!("expected no preemption");
        };
        assert_eq!(message, "not eligible due to preemptionPolicy=Never.");
    }

    #[test]
    fn a_preemptor_waits_while_its_victims_terminate() {
        let mut c = cache(vec![node("n1", "1", "8Gi", &[])]);
        let mut leaving = pod("a", "1", &[]);
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        c.add_pod(Arc::new(info(leaving)), "n1");
        let vip = Arc::new(with_priority("vip", "1", 100));
        c.nominate(vip.clone(), "n1");
        assert!(matches!(preempt(&c, &vip), Preemption::Wait(_)));
    }

    #[test]
    fn evicting_an_anti_affine_pod_makes_room() {
        use crate::plugins::testing::host_anti_affinity;
        let mut c = cache(vec![node(
            "n1",
            "4",
            "8Gi",
            &[("kubernetes.io/hostname", "n1")],
        )]);
        let mut guard = pod("guard", "100m", &[]);
        guard.spec.as_mut().unwrap().affinity = Some(host_anti_affinity("web"));
        c.add_pod(Arc::new(info(guard)), "n1");
        c.add_pod(Arc::new(with_priority("bystander", "100m", 0)), "n1");
        let mut web = pod("web", "100m", &[("app", "web")]);
        web.spec.as_mut().unwrap().priority = Some(10);
        let Preemption::Evict(found) = preempt(&c, &info(web)) else {
            panic!("expected a candidate");
        };
        let names: Vec<&str> = found.victims.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["guard"]);
    }
}
