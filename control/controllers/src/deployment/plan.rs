//! What a Deployment needs done, decided from the cache and the time alone: which
//! ReplicaSets to claim, create, annotate, scale and delete for the rollout, the status to
//! report and when to look again. [`super::apply`] carries it out.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec},
        core::v1::{Pod, PodTemplateSpec},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
    jiff::Timestamp,
};
use kube::ResourceExt;
use skiff_control_runtime::{
    ownership::{self, Claim, LabelMatcher},
    status as status_diff,
};

use super::status::{self, Rollout, counts};
use crate::{
    pods,
    revision::{POD_TEMPLATE_HASH, template_hash},
};

/// The annotation carrying a ReplicaSet's (and its Deployment's) revision number.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The replica count the Deployment asked for when it last scaled a ReplicaSet.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The most pods the Deployment may run during a rollout.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Why the template changed (copied to the ReplicaSet, shown by `rollout history`).
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// What the plan is made from.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The Deployment.
    pub deployment: &'a Deployment,
    /// ReplicaSets of its namespace (others are ignored).
    pub replica_sets: &'a [Arc<ReplicaSet>],
    /// Pods of its namespace (Recreate waits for the old ones to be gone).
    pub pods: &'a [Arc<Pod>],
    /// The time.
    pub now: Timestamp,
}

/// One thing to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Add our controller reference to this orphan.
    Adopt(Arc<ReplicaSet>),
    /// Remove our reference from this ReplicaSet, which no longer matches.
    Release(Arc<ReplicaSet>),
    /// Set these annotations (revision, change cause) on a ReplicaSet.
    Annotate {
        /// The ReplicaSet.
        name: String,
        /// What to set.
        annotations: BTreeMap<String, String>,
    },
    /// Create the ReplicaSet of the current template.
    Create(Box<ReplicaSet>),
    /// Scale a ReplicaSet.
    Scale {
        /// The ReplicaSet.
        name: String,
        /// Its replicas now.
        from: i32,
        /// Its replicas after.
        to: i32,
    },
    /// Delete an old ReplicaSet beyond the revision history limit.
    Delete(String),
}

/// The steps, then the status and revision to write, and when to look again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In order.
    pub steps: Vec<Step>,
    /// The new status, if it differs from the current one.
    pub status: Option<DeploymentStatus>,
    /// The Deployment's new revision annotation, if it changes.
    pub revision: Option<String>,
    /// When to look again without any change (the progress deadline).
    pub requeue: Option<Duration>,
}

/// The template a ReplicaSet runs, without the hash label, for comparing with the
/// Deployment's.
#[must_use]
pub fn bare_template(template: Option<&PodTemplateSpec>) -> serde_json::Value {
    let mut t = template.cloned().unwrap_or_default();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    serde_json::to_value(t).unwrap_or_default()
}

/// The revision annotation of an object (0 when missing).
#[must_use]
pub fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// Resolves maxSurge/maxUnavailable against `replicas` like the Go helper: surge rounds up,
/// unavailability down, and both zero means one unavailable.
#[must_use]
pub fn surge_and_unavailable(
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
    replicas: i32,
) -> (i32, i32) {
    let resolve = |v: Option<&IntOrString>, up: bool| -> i32 {
        let pct = match v {
            None => 25,
            Some(IntOrString::Int(i)) => return *i,
            Some(IntOrString::String(s)) => s.trim_end_matches('%').parse().unwrap_or(25),
        };
        let scaled = i64::from(replicas) * pct;
        let v = if up {
            (scaled + 99) / 100
        } else {
            scaled / 100
        };
        i32::try_from(v).unwrap_or(i32::MAX)
    };
    let s = resolve(surge, true).max(0);
    let mut u = resolve(unavailable, false).max(0);
    if s == 0 && u == 0 {
        u = 1;
    }
    (s, u)
}

/// A scale step when `rs` is not at `to` already.
fn scale(rs: &ReplicaSet, to: i32) -> Option<Step> {
    let from = spec_replicas(rs);
    (from != to).then(|| Step::Scale {
        name: rs.name_any(),
        from,
        to,
    })
}

/// Decides one step of the Deployment's rollout.
#[must_use]
#[expect(
    clippy::too_many_lines,
    reason = "claim, find-or-create, roll and report read best in order"
)]
pub fn plan(o: &Observed<'_>) -> Plan {
    let d = o.deployment;
    if d.metadata.deletion_timestamp.is_some() {
        return Plan::default();
    }
    let ns = d.namespace();
    let name = d.name_any();
    let uid = d.uid().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let matcher = LabelMatcher::new(Some(&spec.selector));
    let mut steps = Vec::new();

    // The ReplicaSets this Deployment owns (adopting orphans that match).
    let mut sets: Vec<ReplicaSet> = Vec::new();
    for rs in o.replica_sets.iter().filter(|rs| rs.namespace() == ns) {
        match ownership::claim(&rs.metadata, &uid, &matcher, false) {
            Claim::Owned => sets.push((**rs).clone()),
            Claim::Adopt => {
                steps.push(Step::Adopt(rs.clone()));
                sets.push((**rs).clone());
            }
            Claim::Release => steps.push(Step::Release(rs.clone())),
            Claim::Ignore => {}
        }
    }
    sets.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            rs.name_any(),
        )
    });

    let wanted = bare_template(Some(&spec.template));
    let new_index = sets
        .iter()
        .position(|rs| bare_template(rs.spec.as_ref().and_then(|s| s.template.as_ref())) == wanted);
    let max_revision = sets
        .iter()
        .map(|rs| revision_of(&rs.metadata))
        .max()
        .unwrap_or(0);
    let replicas = spec.replicas.unwrap_or(1);
    let paused = spec.paused.unwrap_or(false);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let (max_surge, max_unavailable) = if recreate {
        (0, replicas)
    } else {
        surge_and_unavailable(
            rolling.and_then(|r| r.max_surge.as_ref()),
            rolling.and_then(|r| r.max_unavailable.as_ref()),
            replicas,
        )
    };
    let cause = d.annotations().get(CHANGE_CAUSE).cloned();

    // Find or make the ReplicaSet of the current template (not while paused: a paused
    // Deployment only scales).
    let mut creating = false;
    let new_rs: Option<ReplicaSet> = match new_index {
        Some(i) => {
            let mut rs = sets.remove(i);
            let revision = revision_of(&rs.metadata);
            let want_revision = if revision < max_revision {
                max_revision + 1
            } else {
                revision.max(1)
            };
            let needs = revision != want_revision
                || (cause.is_some() && rs.annotations().get(CHANGE_CAUSE) != cause.as_ref());
            if needs && !paused {
                let mut annotations =
                    BTreeMap::from([(REVISION.to_owned(), want_revision.to_string())]);
                if let Some(cause) = &cause {
                    annotations.insert(CHANGE_CAUSE.to_owned(), cause.clone());
                }
                rs.annotations_mut().extend(annotations.clone());
                steps.push(Step::Annotate {
                    name: rs.name_any(),
                    annotations,
                });
            }
            Some(rs)
        }
        None if paused => None,
        None => {
            creating = true;
            let hash = template_hash(
                &spec.template,
                d.status.as_ref().and_then(|s| s.collision_count),
            );
            let mut template = spec.template.clone();
            let labels = template
                .metadata
                .get_or_insert_with(ObjectMeta::default)
                .labels
                .get_or_insert_with(BTreeMap::new);
            labels.insert(POD_TEMPLATE_HASH.to_owned(), hash.clone());
            let labels = labels.clone();
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(POD_TEMPLATE_HASH.to_owned(), hash.clone());
            let mut annotations = BTreeMap::from([
                (REVISION.to_owned(), (max_revision + 1).to_string()),
                (DESIRED_REPLICAS.to_owned(), replicas.to_string()),
                (MAX_REPLICAS.to_owned(), (replicas + max_surge).to_string()),
            ]);
            if let Some(cause) = &cause {
                annotations.insert(CHANGE_CAUSE.to_owned(), cause.clone());
            }
            // A fresh Deployment starts at full size; a rollout starts at zero and grows
            // within its budget below.
            let old_running = sets
                .iter()
                .any(|rs| spec_replicas(rs) > 0 || counts(rs).0 > 0);
            Some(ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{hash}")),
                    namespace: ns.clone(),
                    labels: Some(labels),
                    annotations: Some(annotations),
                    owner_references: Some(vec![ownership::controller_ref(d)]),
                    ..ObjectMeta::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(if old_running { 0 } else { replicas }),
                    min_ready_seconds: spec.min_ready_seconds,
                    selector,
                    template: Some(template),
                }),
                status: None,
            })
        }
    };
    let old = sets;

    let mut rollout = Vec::new();
    if let Some(new_rs) = &new_rs {
        if paused {
            // Paused: only keep the total at `replicas` by scaling the newest active set.
            let total: i32 = old.iter().map(spec_replicas).sum::<i32>() + spec_replicas(new_rs);
            if total != replicas && old.iter().all(|rs| spec_replicas(rs) == 0) {
                rollout.extend(scale(new_rs, replicas));
            }
        } else if recreate {
            rollout = roll_recreate(new_rs, &old, o.pods, replicas);
        } else {
            rollout = roll_rolling(new_rs, &old, replicas, max_surge, max_unavailable);
        }
    }
    if !paused {
        rollout.extend(
            cleanup_history(&old, spec.revision_history_limit.unwrap_or(10))
                .into_iter()
                .map(Step::Delete),
        );
    }
    if let Some(new_rs) = new_rs.as_ref().filter(|_| creating) {
        // The set being created starts at the size the rollout gives it at once.
        let new_name = new_rs.name_any();
        let mut created = new_rs.clone();
        rollout.retain(|step| match step {
            Step::Scale { name, to, .. } if *name == new_name => {
                if let Some(spec) = created.spec.as_mut() {
                    spec.replicas = Some(*to);
                }
                false
            }
            _ => true,
        });
        steps.push(Step::Create(Box::new(created)));
    }
    steps.extend(rollout);

    let (after, complete) = status::status(&Rollout {
        deployment: d,
        old: &old,
        new: new_rs.as_ref(),
        creating,
        replicas,
        max_unavailable,
        paused,
        now: o.now,
    });
    let before = d.status.as_ref().map(status::without_times);
    let changed = status_diff::changed(before.as_ref(), &status::without_times(&after));
    let revision = new_rs
        .as_ref()
        .map(|rs| revision_of(&rs.metadata).to_string())
        .filter(|r| d.annotations().get(REVISION) != Some(r));
    let deadline = spec.progress_deadline_seconds.unwrap_or(600);
    Plan {
        steps,
        status: changed.then_some(after),
        revision,
        // Come back to check the progress deadline even if nothing else happens.
        requeue: (!complete && !paused)
            .then(|| Duration::from_secs(u64::try_from(deadline.clamp(1, 30)).unwrap_or(30))),
    }
}

/// Recreate: every old ReplicaSet to zero; the new one grows only once no old pod runs.
fn roll_recreate(
    new_rs: &ReplicaSet,
    old: &[ReplicaSet],
    pods: &[Arc<Pod>],
    replicas: i32,
) -> Vec<Step> {
    let mut steps: Vec<Step> = old.iter().filter_map(|rs| scale(rs, 0)).collect();
    let uids: Vec<String> = old.iter().filter_map(ResourceExt::uid).collect();
    let old_pods_running = pods.iter().any(|p| {
        ownership::controller_of(&p.metadata).is_some_and(|r| uids.contains(&r.uid))
            && !pods::is_terminal(p)
    });
    if !old_pods_running {
        steps.extend(scale(new_rs, replicas));
    }
    steps
}

/// RollingUpdate: grow the new set within the surge budget, shrink old sets while keeping
/// `replicas - maxUnavailable` available.
fn roll_rolling(
    new_rs: &ReplicaSet,
    old: &[ReplicaSet],
    replicas: i32,
    max_surge: i32,
    max_unavailable: i32,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let new_count = spec_replicas(new_rs);
    let all_count: i32 = old.iter().map(spec_replicas).sum::<i32>() + new_count;
    if new_count > replicas {
        steps.extend(scale(new_rs, replicas));
    } else if new_count < replicas {
        let room = replicas + max_surge - all_count;
        if room > 0 {
            steps.extend(scale(new_rs, new_count + room.min(replicas - new_count)));
        }
    }
    let old_count: i32 = old.iter().map(spec_replicas).sum();
    if old_count == 0 {
        return steps;
    }
    let min_available = replicas - max_unavailable;
    let new_unavailable = (new_count - counts(new_rs).2).max(0);
    let mut budget = all_count - min_available - new_unavailable;
    if budget <= 0 {
        return steps;
    }
    // First old pods that are not available anyway: removing them costs nothing.
    let mut targets: Vec<(&ReplicaSet, i32)> =
        old.iter().map(|rs| (rs, spec_replicas(rs))).collect();
    for (rs, target) in &mut targets {
        if budget <= 0 {
            break;
        }
        let unhealthy = (*target - counts(rs).2).max(0).min(budget);
        *target -= unhealthy;
        budget -= unhealthy;
    }
    // Then available ones, oldest first, as far as availability allows.
    let available: i32 = old.iter().map(|rs| counts(rs).2).sum::<i32>() + counts(new_rs).2;
    let mut removable = (available - min_available).max(0);
    for (rs, target) in &mut targets {
        if removable <= 0 {
            break;
        }
        let healthy = (*target).min(counts(rs).2).min(removable);
        *target -= healthy;
        removable -= healthy;
    }
    steps.extend(
        targets
            .into_iter()
            .filter_map(|(rs, target)| scale(rs, target)),
    );
    steps
}

/// Old ReplicaSets scaled to zero beyond the history limit, oldest revision first.
fn cleanup_history(old: &[ReplicaSet], limit: i32) -> Vec<String> {
    let mut idle: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| {
            spec_replicas(rs) == 0 && counts(rs).0 == 0 && rs.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let keep = usize::try_from(limit.max(0)).unwrap_or(0);
    if idle.len() <= keep {
        return Vec::new();
    }
    idle.sort_by_key(|rs| revision_of(&rs.metadata));
    idle[..idle.len() - keep]
        .iter()
        .map(|rs| rs.name_any())
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::apps::v1::{
            DeploymentCondition, DeploymentSpec, DeploymentStrategy, ReplicaSetStatus,
            RollingUpdateDeployment,
        },
        apimachinery::pkg::apis::meta::v1::{LabelSelector, Time},
    };

    use super::*;
    use crate::fixtures::{at, labels, meta, owner_ref, pod, template};

    fn deployment(replicas: i32, image: &str) -> Deployment {
        let mut t = template(&[("app", "web")]);
        t.spec.as_mut().unwrap().containers[0].image = Some(image.to_owned());
        Deployment {
            metadata: meta("web"),
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: None,
                },
                template: t,
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::Int(2)),
                        max_unavailable: Some(IntOrString::Int(2)),
                    }),
                }),
                ..DeploymentSpec::default()
            }),
            status: None,
        }
    }

    /// The ReplicaSet `d` made for its template with `image`, at `replicas`, all available.
    fn replica_set(
        d: &Deployment,
        image: &str,
        replicas: i32,
        revision: i64,
        created: i64,
    ) -> Arc<ReplicaSet> {
        let mut template = d.spec.as_ref().unwrap().template.clone();
        template.spec.as_mut().unwrap().containers[0].image = Some(image.to_owned());
        let hash = template_hash(&template, None);
        template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut metadata = meta(&format!("web-{hash}"));
        metadata.creation_timestamp = Some(Time(at(created)));
        metadata.annotations = Some(BTreeMap::from([(REVISION.into(), revision.to_string())]));
        metadata.owner_references = Some(vec![owner_ref(d)]);
        metadata.labels = template.metadata.as_ref().unwrap().labels.clone();
        Arc::new(ReplicaSet {
            metadata,
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector::default(),
                template: Some(template),
                min_ready_seconds: None,
            }),
            status: Some(ReplicaSetStatus {
                replicas,
                ready_replicas: Some(replicas),
                available_replicas: Some(replicas),
                ..ReplicaSetStatus::default()
            }),
        })
    }

    fn run(d: &Deployment, sets: &[Arc<ReplicaSet>], now: i64) -> Plan {
        plan(&Observed {
            deployment: d,
            replica_sets: sets,
            pods: &[],
            now: at(now),
        })
    }

    fn condition<'a>(status: &'a DeploymentStatus, t: &str) -> &'a DeploymentCondition {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .expect("the condition")
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        let pct = |s: &str| IntOrString::String(s.to_owned());
        assert_eq!(
            surge_and_unavailable(Some(&pct("25%")), Some(&pct("25%")), 10),
            (3, 2)
        );
        assert_eq!(surge_and_unavailable(None, None, 10), (3, 2));
        assert_eq!(
            surge_and_unavailable(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 3),
            (0, 1)
        );
        assert_eq!(
            surge_and_unavailable(Some(&IntOrString::Int(1)), Some(&IntOrString::Int(0)), 3),
            (1, 0)
        );
    }

    #[test]
    fn a_new_deployment_creates_its_replica_set_at_full_size() {
        let d = deployment(3, "busybox:1");
        let plan = run(&d, &[], 100);
        let [Step::Create(rs)] = plan.steps.as_slice() else {
            panic!("{:?}", plan.steps);
        };
        let hash = template_hash(&d.spec.as_ref().unwrap().template, None);
        assert_eq!(rs.name_any(), format!("web-{hash}"));
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(3));
        assert_eq!(
            rs.annotations().get(REVISION).map(String::as_str),
            Some("1")
        );
        assert_eq!(
            rs.labels().get(POD_TEMPLATE_HASH),
            Some(&hash),
            "the hash tells its pods apart"
        );
        let selector = &rs.spec.as_ref().unwrap().selector;
        assert_eq!(
            selector
                .match_labels
                .as_ref()
                .unwrap()
                .get(POD_TEMPLATE_HASH),
            Some(&hash)
        );
        let status = plan.status.expect("a first status");
        assert_eq!(
            condition(&status, "Progressing").reason.as_deref(),
            Some("NewReplicaSetCreated")
        );
        assert_eq!(plan.revision.as_deref(), Some("1"));
        assert!(
            plan.requeue.is_some(),
            "the progress deadline is checked later"
        );
    }

    #[test]
    fn a_finished_rollout_reports_complete_once_and_then_rests() {
        let mut d = deployment(3, "busybox:1");
        let rs = replica_set(&d, "busybox:1", 3, 1, 0);
        let first = run(&d, std::slice::from_ref(&rs), 100);
        assert!(first.steps.is_empty(), "{:?}", first.steps);
        let status = first.status.expect("the counters changed");
        assert_eq!(status.available_replicas, Some(3));
        assert_eq!(
            condition(&status, "Progressing").reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
        assert_eq!(condition(&status, "Available").status, "True");
        assert_eq!(first.requeue, None);
        d.status = Some(status);
        d.metadata.annotations = Some(BTreeMap::from([(REVISION.into(), "1".into())]));
        let again = run(&d, &[rs], 200);
        assert_eq!(again, Plan::default());
    }

    #[test]
    fn a_template_change_surges_the_new_set_and_shrinks_the_old_within_budget() {
        let d = deployment(10, "busybox:2");
        let old = replica_set(&d, "busybox:1", 10, 1, 0);
        let plan = run(&d, std::slice::from_ref(&old), 100);
        let Step::Create(new) = &plan.steps[0] else {
            panic!("{:?}", plan.steps);
        };
        // maxSurge 2: the new set starts at 2; maxUnavailable 2: 10 available - 8 needed.
        assert_eq!(new.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!(
            new.annotations().get(REVISION).map(String::as_str),
            Some("2")
        );
        assert_eq!(
            plan.steps[1..],
            [Step::Scale {
                name: old.name_any(),
                from: 10,
                to: 8
            }]
        );
        assert_eq!(plan.revision.as_deref(), Some("2"));
    }

    #[test]
    fn the_rollout_waits_for_new_pods_before_shrinking_further() {
        let d = deployment(10, "busybox:2");
        let old = replica_set(&d, "busybox:1", 8, 1, 0);
        let mut new = (*replica_set(&d, "busybox:2", 2, 2, 5)).clone();
        // The two new pods are not available yet: nothing more may go.
        new.status.as_mut().unwrap().available_replicas = Some(0);
        let plan = run(&d, &[old.clone(), Arc::new(new.clone())], 100);
        assert_eq!(
            plan.steps,
            [Step::Scale {
                name: new.name_any(),
                from: 2,
                to: 4
            }]
        );
        // Once they are, the old set shrinks by what the budget allows.
        new.status.as_mut().unwrap().available_replicas = Some(2);
        new.spec.as_mut().unwrap().replicas = Some(4);
        new.status.as_mut().unwrap().replicas = 4;
        let plan = run(&d, &[old.clone(), Arc::new(new)], 110);
        assert!(plan.steps.contains(&Step::Scale {
            name: old.name_any(),
            from: 8,
            to: 6
        }));
    }

    #[test]
    fn recreate_starts_the_new_template_only_after_every_old_pod_is_gone() {
        let mut d = deployment(2, "busybox:2");
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let old = replica_set(&d, "busybox:1", 2, 1, 0);
        let old_pod = pod("web-old-1")
            .owned_by(old.as_ref())
            .ready_since(0)
            .build();
        let plan = plan(&Observed {
            deployment: &d,
            replica_sets: std::slice::from_ref(&old),
            pods: &[old_pod],
            now: at(100),
        });
        let Step::Create(new) = &plan.steps[0] else {
            panic!("{:?}", plan.steps);
        };
        assert_eq!(new.spec.as_ref().unwrap().replicas, Some(0));
        assert_eq!(
            plan.steps[1],
            Step::Scale {
                name: old.name_any(),
                from: 2,
                to: 0
            }
        );
        // The old pods are gone and the old set at zero: the new set grows.
        let mut emptied = (*old).clone();
        emptied.spec.as_mut().unwrap().replicas = Some(0);
        emptied.status = None;
        let mut new = (**new).clone();
        new.metadata.uid = Some("uid-new".into());
        let plan = run(&d, &[Arc::new(emptied), Arc::new(new.clone())], 110);
        assert_eq!(
            plan.steps,
            [Step::Scale {
                name: new.name_any(),
                from: 0,
                to: 2
            }]
        );
    }

    #[test]
    fn a_paused_deployment_makes_no_new_set_and_its_status_is_written_once() {
        let mut d = deployment(3, "busybox:2");
        d.spec.as_mut().unwrap().paused = Some(true);
        let old = replica_set(&d, "busybox:1", 3, 1, 0);
        let first = run(&d, std::slice::from_ref(&old), 100);
        assert!(first.steps.is_empty(), "{:?}", first.steps);
        let status = first.status.expect("the paused condition");
        assert_eq!(
            condition(&status, "Progressing").reason.as_deref(),
            Some("DeploymentPaused")
        );
        assert_eq!(first.requeue, None);
        d.status = Some(status);
        // Later reconciles touch the condition's time but write nothing.
        let again = run(&d, &[old], 200);
        assert_eq!(again.status, None);
    }

    #[test]
    fn a_rollout_that_stops_moving_exceeds_its_progress_deadline() {
        let mut d = deployment(3, "busybox:2");
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(60);
        let mut new = (*replica_set(&d, "busybox:2", 3, 1, 0)).clone();
        new.status.as_mut().unwrap().available_replicas = Some(1);
        new.status.as_mut().unwrap().ready_replicas = Some(1);
        let new = Arc::new(new);
        let first = run(&d, std::slice::from_ref(&new), 100);
        d.status = first.status;
        d.metadata.annotations = Some(BTreeMap::from([(REVISION.into(), "1".into())]));
        let status = d.status.as_ref().unwrap();
        assert_eq!(
            condition(status, "Progressing").reason.as_deref(),
            Some("ReplicaSetUpdated")
        );
        assert_eq!(
            condition(status, "Available").status,
            "True",
            "3 - maxUnavailable 2 = 1"
        );
        // Within the deadline nothing changes; past it the condition turns False.
        assert_eq!(run(&d, std::slice::from_ref(&new), 150).status, None);
        let late = run(&d, &[new], 161).status.expect("the deadline passed");
        let progressing = condition(&late, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_deref()),
            ("False", Some("ProgressDeadlineExceeded"))
        );
    }

    #[test]
    fn old_sets_beyond_the_history_limit_are_deleted_oldest_revision_first() {
        let mut d = deployment(1, "busybox:9");
        d.spec.as_mut().unwrap().revision_history_limit = Some(2);
        let mut sets: Vec<Arc<ReplicaSet>> = (1..=4)
            .map(|i| replica_set(&d, &format!("busybox:{i}"), 0, i, i))
            .collect();
        sets.push(replica_set(&d, "busybox:9", 1, 5, 9));
        let plan = run(&d, &sets, 100);
        let deleted: Vec<&Step> = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Delete(_)))
            .collect();
        assert_eq!(
            deleted,
            [
                &Step::Delete(sets[0].name_any()),
                &Step::Delete(sets[1].name_any())
            ]
        );
    }

    #[test]
    fn a_matching_orphan_set_is_adopted_and_an_older_template_gets_the_next_revision() {
        let d = deployment(2, "busybox:1");
        let mut orphan = (*replica_set(&d, "busybox:1", 2, 1, 0)).clone();
        orphan.metadata.owner_references = None;
        let newer = replica_set(&d, "busybox:2", 0, 3, 5);
        let orphan = Arc::new(orphan);
        let plan = run(&d, &[orphan.clone(), newer], 100);
        assert_eq!(plan.steps[0], Step::Adopt(orphan.clone()));
        // Rolling back to the orphan's template makes it revision 4.
        assert_eq!(
            plan.steps[1],
            Step::Annotate {
                name: orphan.name_any(),
                annotations: BTreeMap::from([(REVISION.into(), "4".into())])
            }
        );
        assert_eq!(plan.revision.as_deref(), Some("4"));
    }

    #[test]
    fn scaling_the_deployment_down_scales_its_current_set() {
        let d = deployment(1, "busybox:1");
        let rs = replica_set(&d, "busybox:1", 3, 1, 0);
        let plan = run(&d, std::slice::from_ref(&rs), 100);
        assert_eq!(
            plan.steps,
            [Step::Scale {
                name: rs.name_any(),
                from: 3,
                to: 1
            }]
        );
    }

    #[test]
    fn a_deployment_being_deleted_is_left_alone() {
        let mut d = deployment(3, "busybox:1");
        d.metadata.deletion_timestamp = Some(Time(at(5)));
        assert_eq!(run(&d, &[], 100), Plan::default());
    }
}
