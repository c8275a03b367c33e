//! `NodeResourcesFit`: a pod fits where its requests fit in allocatable minus what the
//! node's pods already request (cpu, memory, ephemeral storage, pod slots, extended
//! resources), and minus what higher-priority pods nominated to the node hold back.

use crate::{
    cache::NodeInfo,
    framework::{CycleState, FilterPlugin, Unfit},
    pod_info::PodInfo,
    resources::Resources,
};

/// The `NodeResourcesFit` filter.
#[derive(Debug)]
pub struct NodeResourcesFit;

/// One resource check: (requested by the pod, in use, allocatable, reason).
fn check(
    want: i64,
    used: i64,
    have: i64,
    reason: impl FnOnce() -> String,
    out: &mut Vec<(String, bool)>,
) {
    if want > 0 && used + want > have {
        // The pod alone exceeding the node is something no eviction fixes.
        out.push((reason(), want > have));
    }
}

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        let want = &pod.requests;
        let have = &node.allocatable;
        // Room held for pods that preempted their way onto this node and outrank this one.
        let held: Option<Resources> = (!node.nominated.is_empty()).then(|| {
            let mut held = Resources::default();
            for other in &node.nominated {
                if other.uid != pod.uid && other.priority >= pod.priority {
                    held.add(&other.requests);
                }
            }
            held
        });
        let used = match &held {
            Some(held) => {
                let mut used = node.requested.clone();
                used.add(held);
                std::borrow::Cow::Owned(used)
            }
            None => std::borrow::Cow::Borrowed(&node.requested),
        };
        let mut reasons: Vec<(String, bool)> = Vec::new();
        if used.pods + 1 > have.pods {
            reasons.push(("Too many pods".to_owned(), have.pods < 1));
        }
        check(
            want.cpu,
            used.cpu,
            have.cpu,
            || "Insufficient cpu".to_owned(),
            &mut reasons,
        );
        check(
            want.memory,
            used.memory,
            have.memory,
            || "Insufficient memory".to_owned(),
            &mut reasons,
        );
        check(
            want.ephemeral,
            used.ephemeral,
            have.ephemeral,
            || "Insufficient ephemeral-storage".to_owned(),
            &mut reasons,
        );
        for (name, amount) in &want.extended {
            check(
                *amount,
                used.extended.get(name).copied().unwrap_or(0),
                have.extended.get(name).copied().unwrap_or(0),
                || format!("Insufficient {name}"),
                &mut reasons,
            );
        }
        if reasons.is_empty() {
            return Ok(());
        }
        let unresolvable = reasons.iter().all(|(_, u)| *u);
        let reasons: Vec<String> = reasons.into_iter().map(|(r, _)| r).collect();
        Err(Unfit {
            code: if unresolvable {
                crate::framework::Code::UnschedulableAndUnresolvable
            } else {
                crate::framework::Code::Unschedulable
            },
            reasons,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::{
        framework::Code,
        plugins::testing::{cache, info, node, pod},
    };

    fn fits(c: &crate::cache::Cache, p: &PodInfo) -> Result<(), Unfit> {
        NodeResourcesFit.filter(p, c.node("n1").unwrap(), &CycleState::default())
    }

    #[test]
    fn requests_must_fit_in_what_is_left() {
        let mut c = cache(vec![node("n1", "2", "8Gi", &[])]);
        c.add_pod(Arc::new(info(pod("a", "1500m", &[]))), "n1");
        assert!(fits(&c, &info(pod("b", "500m", &[]))).is_ok());
        let err = fits(&c, &info(pod("b", "501m", &[]))).unwrap_err();
        assert_eq!(err.reasons, ["Insufficient cpu"]);
        assert_eq!(err.code, Code::Unschedulable);
    }

    #[test]
    fn a_pod_larger_than_the_node_is_unresolvable() {
        let c = cache(vec![node("n1", "2", "8Gi", &[])]);
        let err = fits(&c, &info(pod("b", "3", &[]))).unwrap_err();
        assert_eq!(err.code, Code::UnschedulableAndUnresolvable);
    }

    #[test]
    fn removing_a_pod_frees_its_requests() {
        let mut c = cache(vec![node("n1", "1", "8Gi", &[])]);
        c.add_pod(Arc::new(info(pod("a", "1", &[]))), "n1");
        assert!(fits(&c, &info(pod("b", "1", &[]))).is_err());
        c.remove_pod("uid-a");
        assert!(fits(&c, &info(pod("b", "1", &[]))).is_ok());
    }

    #[test]
    fn memory_ephemeral_storage_and_extended_resources_are_checked() {
        let mut n = node("n1", "8", "1Gi", &[]);
        let status = n.status.as_mut().unwrap();
        for list in [
            status.allocatable.as_mut().unwrap(),
            status.capacity.as_mut().unwrap(),
        ] {
            list.insert("ephemeral-storage".into(), Quantity("10Gi".into()));
            list.insert("example.com/gpu".into(), Quantity("1".into()));
        }
        let c = cache(vec![n]);
        let mut p = pod("p", "1", &[]);
        p.spec.as_mut().unwrap().containers[0]
            .resources
            .as_mut()
            .unwrap()
            .requests = Some(BTreeMap::from([
            ("memory".to_owned(), Quantity("2Gi".into())),
            ("ephemeral-storage".to_owned(), Quantity("20Gi".into())),
            ("example.com/gpu".to_owned(), Quantity("2".into())),
        ]));
        let err = fits(&c, &info(p)).unwrap_err();
        assert_eq!(
            err.reasons,
            [
                "Insufficient memory",
                "Insufficient ephemeral-storage",
                "Insufficient example.com/gpu"
            ]
        );
    }

    #[test]
    fn pod_slots_run_out() {
        let mut n = node("n1", "8", "8Gi", &[]);
        let status = n.status.as_mut().unwrap();
        for list in [
            status.allocatable.as_mut().unwrap(),
            status.capacity.as_mut().unwrap(),
        ] {
            list.insert("pods".into(), Quantity("1".into()));
        }
        let mut c = cache(vec![n]);
        c.add_pod(Arc::new(info(pod("a", "10m", &[]))), "n1");
        assert_eq!(
            fits(&c, &info(pod("b", "10m", &[]))).unwrap_err().reasons,
            ["Too many pods"]
        );
    }

    #[test]
    fn room_held_for_a_nominated_pod_is_kept_from_lower_priority_pods() {
        let mut c = cache(vec![node("n1", "2", "8Gi", &[])]);
        let mut vip = pod("vip", "2", &[]);
        vip.spec.as_mut().unwrap().priority = Some(100);
        c.nominate(Arc::new(info(vip.clone())), "n1");
        assert!(fits(&c, &info(pod("low", "1", &[]))).is_err());
        // The nominated pod itself fits in the room held for it.
        assert!(fits(&c, &info(vip)).is_ok());
        c.clear_nomination("uid-vip");
        assert!(fits(&c, &info(pod("low", "1", &[]))).is_ok());
    }
}
