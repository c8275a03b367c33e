//! What a ReplicaSet (or `ReplicationController`) needs done, decided from the cache alone:
//! which pods to adopt, release, create and delete, and the status to report.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::ResourceExt;
use skiff_control_runtime::{
    ownership::{self, Claim},
    status,
};

use super::kinds::{Counts, Replicated};
use crate::{Error, pods};

/// Most pods created in one reconcile, as the Go controller's burst.
pub const BURST: usize = 500;

/// What the plan is made from.
#[derive(Debug)]
pub struct Observed<'a, K> {
    /// The ReplicaSet or `ReplicationController`.
    pub owner: &'a K,
    /// Pods of its namespace (others are ignored).
    pub pods: &'a [Arc<Pod>],
    /// Whether the cache shows every pod this controller last created and deleted.
    pub caught_up: bool,
    /// The time.
    pub now: Timestamp,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Add our controller reference to this orphan.
    Adopt(Arc<Pod>),
    /// Remove our reference from this pod, which no longer matches.
    Release(Arc<Pod>),
    /// Create `count` pods like `pod` (named from its `generateName`).
    Create {
        /// The pod to create.
        pod: Box<Pod>,
        /// How many.
        count: usize,
    },
    /// Delete these pods, most deletable first.
    Delete(Vec<Arc<Pod>>),
}

/// The steps, the status to write (when it changed) and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan<S> {
    /// In order.
    pub steps: Vec<Step>,
    /// The new status, if it differs from the current one.
    pub status: Option<S>,
    /// When to reconcile again without any change (a pod turning available).
    pub requeue: Option<Duration>,
}

/// Decides what brings the owner to its replica count.
///
/// # Errors
/// [`Error::Invalid`] when pods are missing and the owner has no template.
pub fn plan<K: Replicated>(o: &Observed<'_, K>) -> Result<Plan<K::Status>, Error> {
    let owner = o.owner;
    let ns = owner.namespace();
    let uid = owner.uid().unwrap_or_default();
    let matcher = owner.selector();
    let deleting = owner.meta().deletion_timestamp.is_some();
    let mut steps = Vec::new();
    let mut claimed: Vec<&Arc<Pod>> = Vec::new();
    for pod in o.pods.iter().filter(|p| p.namespace() == ns) {
        match ownership::claim(&pod.metadata, &uid, &matcher, deleting) {
            Claim::Owned => claimed.push(pod),
            Claim::Adopt => {
                steps.push(Step::Adopt(pod.clone()));
                claimed.push(pod);
            }
            Claim::Release => steps.push(Step::Release(pod.clone())),
            Claim::Ignore => {}
        }
    }
    let active: Vec<&Arc<Pod>> = claimed.into_iter().filter(|p| pods::is_active(p)).collect();

    if o.caught_up && !deleting {
        let want = usize::try_from(owner.replicas().max(0)).unwrap_or(0);
        if active.len() < want {
            let Some(template) = owner.template() else {
                return Err(Error::Invalid(format!(
                    "{} {} has no pod template",
                    K::kind(&()),
                    owner.name_any()
                )));
            };
            let pod = pods::from_template(
                template,
                ns.as_deref().unwrap_or_default(),
                None,
                Some(format!("{}-", owner.name_any())),
                ownership::controller_ref(owner),
            );
            steps.push(Step::Create {
                pod: Box::new(pod),
                count: (want - active.len()).min(BURST),
            });
        } else if active.len() > want {
            let mut victims: Vec<Arc<Pod>> = active.iter().map(|p| (*p).clone()).collect();
            victims.sort_by(|a, b| pods::deletion_order(a, b));
            victims.truncate(active.len() - want);
            steps.push(Step::Delete(victims));
        }
    }

    let min_ready = owner.min_ready_seconds();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let template_labels = owner
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let counts = Counts {
        replicas: count(&|_| true),
        fully_labeled: count(&|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
        }),
        ready: count(&pods::is_ready),
        available: count(&|p| pods::is_available(p, min_ready, o.now)),
        observed_generation: owner.meta().generation,
    };
    let after = K::counted(owner.status(), counts);
    let status = status::changed(owner.status(), &after).then_some(after);
    // Pods that are ready but not yet available become available without any event.
    let requeue = active
        .iter()
        .filter_map(|p| pods::available_in(p, min_ready, o.now))
        .min();
    Ok(Plan {
        steps,
        status,
        requeue,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            apps::v1::{ReplicaSet, ReplicaSetSpec, ReplicaSetStatus},
            core::v1::{ReplicationController, ReplicationControllerSpec},
        },
        apimachinery::pkg::apis::meta::v1::{LabelSelector, Time},
    };

    use super::*;
    use crate::fixtures::{at, labels, meta, pod, template};

    fn rs(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: meta("web"),
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: None,
                },
                template: Some(template(&[("app", "web")])),
                min_ready_seconds: None,
            }),
            status: None,
        }
    }

    fn observe<'a, K>(owner: &'a K, pods: &'a [Arc<Pod>], now: i64) -> Observed<'a, K> {
        Observed {
            owner,
            pods,
            caught_up: true,
            now: at(now),
        }
    }

    fn created(plan: &Plan<impl std::fmt::Debug>) -> usize {
        plan.steps
            .iter()
            .map(|s| match s {
                Step::Create { count, .. } => *count,
                _ => 0,
            })
            .sum()
    }

    fn deleted(plan: &Plan<impl std::fmt::Debug>) -> Vec<String> {
        plan.steps
            .iter()
            .flat_map(|s| match s {
                Step::Delete(pods) => pods.iter().map(|p| p.name_any()).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn missing_pods_are_created_from_the_template_with_a_controller_reference() {
        let set = rs(3);
        let mine = pod("web-a")
            .labels(&[("app", "web")])
            .owned_by(&set)
            .build();
        let plan = plan(&observe(&set, &[mine], 10)).unwrap();
        let Some(Step::Create { pod, count }) = plan.steps.first() else {
            panic!("{plan:?}");
        };
        assert_eq!(*count, 2);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(pod.metadata.labels, Some(labels(&[("app", "web")])));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ReplicaSet", Some(true))
        );
    }

    #[test]
    fn nothing_is_created_while_the_cache_lags_behind_earlier_creates() {
        let set = rs(3);
        let mut o = observe(&set, &[], 10);
        o.caught_up = false;
        assert_eq!(created(&plan(&o).unwrap()), 0);
    }

    #[test]
    fn creation_is_capped_at_the_burst() {
        let set = rs(2_000);
        assert_eq!(created(&plan(&observe(&set, &[], 0)).unwrap()), BURST);
    }

    #[test]
    fn scale_down_deletes_unscheduled_then_not_ready_then_newest() {
        let set = rs(2);
        let p = |name: &str| pod(name).labels(&[("app", "web")]).owned_by(&set);
        let pods = [
            p("old-ready").on("n").ready_since(5).created(1).build(),
            p("new-ready").on("n").ready_since(5).created(9).build(),
            p("not-ready").on("n").running().created(3).build(),
            p("pending").created(2).build(),
        ];
        let plan = plan(&observe(&set, &pods, 10)).unwrap();
        assert_eq!(deleted(&plan), ["pending", "not-ready"]);
    }

    #[test]
    fn finished_and_terminating_pods_do_not_count() {
        let set = rs(2);
        let p = |name: &str| pod(name).labels(&[("app", "web")]).owned_by(&set);
        let pods = [
            p("done").finished("Succeeded", 3).build(),
            p("going").ready_since(1).terminating().build(),
            p("live").ready_since(1).build(),
        ];
        let plan = plan(&observe(&set, &pods, 10)).unwrap();
        assert_eq!(created(&plan), 1);
        assert_eq!(plan.status.unwrap().replicas, 1);
    }

    #[test]
    fn matching_orphans_are_adopted_and_counted_and_strays_released() {
        let set = rs(2);
        let orphan = pod("orphan")
            .labels(&[("app", "web")])
            .ready_since(1)
            .build();
        let stray = pod("stray").labels(&[("app", "db")]).owned_by(&set).build();
        let foreign = pod("foreign")
            .labels(&[("app", "web")])
            .owned_by(&rs(1).with_name("other"))
            .build();
        let plan = plan(&observe(
            &set,
            &[orphan.clone(), stray.clone(), foreign],
            10,
        ))
        .unwrap();
        assert_eq!(plan.steps[0], Step::Adopt(orphan));
        assert_eq!(plan.steps[1], Step::Release(stray));
        assert_eq!(created(&plan), 1, "the adopted orphan counts");
    }

    #[test]
    fn an_owner_being_deleted_neither_creates_nor_adopts() {
        let mut set = rs(3);
        set.metadata.deletion_timestamp = Some(Time(at(1)));
        let orphan = pod("orphan").labels(&[("app", "web")]).build();
        let plan = plan(&observe(&set, &[orphan], 10)).unwrap();
        assert!(plan.steps.is_empty(), "{:?}", plan.steps);
    }

    #[test]
    fn status_counts_ready_and_available_and_is_written_only_when_it_changes() {
        let mut set = rs(3);
        set.spec.as_mut().unwrap().min_ready_seconds = Some(10);
        let p = |name: &str| pod(name).labels(&[("app", "web")]).owned_by(&set);
        let pods = [
            p("a").ready_since(0).build(),
            p("b").ready_since(5).build(),
            p("c").running().build(),
        ];
        let first = plan(&observe(&set, &pods, 12)).unwrap();
        let status = first.status.clone().unwrap();
        assert_eq!(
            (
                status.replicas,
                status.ready_replicas,
                status.available_replicas
            ),
            (3, Some(2), Some(1))
        );
        assert_eq!(status.observed_generation, Some(1));
        // "b" becomes available at 15: look again then.
        assert_eq!(first.requeue, Some(Duration::from_secs(3)));
        set.status = Some(status);
        let again = plan(&observe(&set, &pods, 12)).unwrap();
        assert_eq!(again.status, None);
    }

    #[test]
    fn fields_the_controller_does_not_own_are_kept() {
        let mut set = rs(0);
        set.status = Some(ReplicaSetStatus {
            conditions: Some(vec![
                k8s_openapi::api::apps::v1::ReplicaSetCondition::default(),
            ]),
            ..ReplicaSetStatus::default()
        });
        let plan = plan(&observe(&set, &[], 0)).unwrap();
        assert!(plan.status.unwrap().conditions.is_some());
    }

    #[test]
    fn a_replication_controller_selects_by_equality_and_defaults_to_its_template_labels() {
        let rc = ReplicationController {
            metadata: meta("legacy"),
            spec: Some(ReplicationControllerSpec {
                replicas: Some(2),
                selector: None,
                template: Some(template(&[("app", "legacy")])),
                min_ready_seconds: None,
            }),
            status: None,
        };
        let orphan = pod("o").labels(&[("app", "legacy")]).build();
        let other = pod("x").labels(&[("app", "web")]).build();
        let plan = plan(&observe(&rc, &[orphan.clone(), other], 0)).unwrap();
        assert_eq!(plan.steps[0], Step::Adopt(orphan));
        let Step::Create { pod, count } = &plan.steps[1] else {
            panic!("{plan:?}");
        };
        assert_eq!(*count, 1);
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.api_version.as_str()),
            ("ReplicationController", "v1")
        );
        assert_eq!(plan.status.unwrap().replicas, 1);
    }

    trait Named {
        fn with_name(self, name: &str) -> Self;
    }

    impl Named for ReplicaSet {
        fn with_name(mut self, name: &str) -> Self {
            self.metadata = meta(name);
            self
        }
    }
}
