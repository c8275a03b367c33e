//! What a StatefulSet needs done, decided from the cache alone: the ControllerRevision of
//! its template, which ordinal to create, replace, remove or update next, the status, and
//! old revisions beyond the history limit, and the claims of `volumeClaimTemplates` each
//! pod needs (`<template>-<set>-<ordinal>`), made before the pod.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus},
        core::v1::{
            PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, runtime::RawExtension},
    jiff::Timestamp,
};
use kube::ResourceExt;
use serde_json::json;
use skiff_control_runtime::{ownership, status};

use crate::{
    pods,
    revision::{CONTROLLER_REVISION_HASH, template_hash},
};

/// How soon to look again while a pod is on its way up or down.
pub const WAIT: Duration = Duration::from_secs(5);

/// What the plan is made from.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The StatefulSet.
    pub set: &'a StatefulSet,
    /// ControllerRevisions of its namespace (others' are ignored).
    pub revisions: &'a [Arc<ControllerRevision>],
    /// Pods of its namespace (others are ignored).
    pub pods: &'a [Arc<Pod>],
    /// `PersistentVolumeClaims` of its namespace.
    pub claims: &'a [Arc<PersistentVolumeClaim>],
    /// The time.
    pub now: Timestamp,
}

/// One thing to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create a claim of a `volumeClaimTemplate` for the pod created next.
    CreateClaim(Box<PersistentVolumeClaim>),
    /// Record the current template.
    CreateRevision(Box<ControllerRevision>),
    /// Create the pod of one ordinal.
    CreatePod(Box<Pod>),
    /// Delete a pod: to scale down (reported as an event), or to replace it (finished, or
    /// of an old revision).
    DeletePod {
        /// The pod.
        name: String,
        /// Whether this is a scale-down the user sees in events.
        scale_down: bool,
    },
    /// Delete a ControllerRevision beyond the history limit.
    DeleteRevision(String),
}

/// The steps, the status to write (when it changed) and when to look again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In order.
    pub steps: Vec<Step>,
    /// The new status, if it differs from the current one.
    pub status: Option<StatefulSetStatus>,
    /// When to look again while waiting on a pod.
    pub requeue: Option<Duration>,
}

/// The ordinal of `pod` in `set`, from its stable name `<set>-<ordinal>`.
#[must_use]
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.labels()
        .get(CONTROLLER_REVISION_HASH)
        .map(String::as_str)
}

fn hash_of(revision: &str) -> &str {
    revision.rsplit('-').next().unwrap_or_default()
}

fn running_and_ready(pod: &Pod) -> bool {
    pods::phase(pod) == "Running"
        && pods::is_ready(pod)
        && pod.metadata.deletion_timestamp.is_none()
}

/// The claim `template` makes for pod `ordinal` of `set`: `<template>-<set>-<ordinal>`,
/// labelled with the set's selector; owned by the set only when its retention policy
/// deletes claims with it (Kubernetes keeps them by default).
fn claim_for(
    set: &StatefulSet,
    template: &PersistentVolumeClaim,
    ordinal: i32,
) -> PersistentVolumeClaim {
    let spec = set.spec.as_ref();
    let mut labels = template.metadata.labels.clone().unwrap_or_default();
    if let Some(selector) = spec.and_then(|s| s.selector.match_labels.as_ref()) {
        labels.extend(selector.clone());
    }
    let delete_with_set = spec
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim_name(set, template, ordinal)),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template.metadata.annotations.clone(),
            owner_references: delete_with_set.then(|| vec![ownership::controller_ref(set)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// `<template>-<set>-<ordinal>`.
fn claim_name(set: &StatefulSet, template: &PersistentVolumeClaim, ordinal: i32) -> String {
    format!(
        "{}-{}-{ordinal}",
        template.metadata.name.as_deref().unwrap_or_default(),
        set.name_any()
    )
}

fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let data = revision.data.as_ref()?;
    serde_json::from_value(data.0.get("spec")?.get("template")?.clone()).ok()
}

/// Decides one step of the StatefulSet's ordered state machine.
#[must_use]
#[expect(
    clippy::too_many_lines,
    reason = "the ordered state machine reads best in one place"
)]
pub fn plan(o: &Observed<'_>) -> Plan {
    let set = o.set;
    if set.metadata.deletion_timestamp.is_some() {
        return Plan::default();
    }
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let mut steps = Vec::new();

    // The revision of the current template, recorded if it is new.
    let mut revisions: Vec<ControllerRevision> = o
        .revisions
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
        .filter(|r| ownership::is_controlled_by(&r.metadata, &uid))
        .map(|r| (**r).clone())
        .collect();
    let hash = template_hash(
        &spec.template,
        set.status.as_ref().and_then(|s| s.collision_count),
    );
    let update_revision = format!("{name}-{hash}");
    if revisions.iter().all(|r| r.name_any() != update_revision) {
        let revision = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(update_revision.clone()),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([(
                    CONTROLLER_REVISION_HASH.to_owned(),
                    hash,
                )])),
                owner_references: Some(vec![ownership::controller_ref(set)]),
                ..ObjectMeta::default()
            },
            data: Some(RawExtension(json!({"spec": {"template": spec.template}}))),
            revision: revisions.iter().map(|r| r.revision).max().unwrap_or(0) + 1,
        };
        steps.push(Step::CreateRevision(Box::new(revision.clone())));
        revisions.push(revision);
    }
    revisions.sort_by_key(|r| r.revision);
    let current_revision = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .unwrap_or_else(|| update_revision.clone());

    let mut by_ordinal: BTreeMap<i32, &Arc<Pod>> = BTreeMap::new();
    for pod in o.pods {
        if pod.namespace().as_deref() != Some(ns.as_str())
            || !ownership::is_controlled_by(&pod.metadata, &uid)
        {
            continue;
        }
        if let Some(i) = ordinal(&name, &pod.name_any()) {
            by_ordinal.insert(i, pod);
        }
    }

    let claim_templates = spec.volume_claim_templates.clone().unwrap_or_default();
    let make_pod = |i: i32, revision: &str| -> Pod {
        let template = revisions
            .iter()
            .find(|r| r.name_any() == revision)
            .and_then(template_of)
            .unwrap_or_else(|| spec.template.clone());
        let pod_name = format!("{name}-{i}");
        let mut pod = pods::from_template(
            &template,
            &ns,
            Some(pod_name.clone()),
            None,
            ownership::controller_ref(set),
        );
        let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(
            CONTROLLER_REVISION_HASH.to_owned(),
            hash_of(revision).to_owned(),
        );
        labels.insert(
            "statefulset.kubernetes.io/pod-name".to_owned(),
            pod_name.clone(),
        );
        labels.insert("apps.kubernetes.io/pod-index".to_owned(), i.to_string());
        let pod_spec = pod.spec.get_or_insert_with(Default::default);
        // The claims stand in for template volumes of the same name.
        let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
        for t in &claim_templates {
            let volume_name = t.metadata.name.clone().unwrap_or_default();
            volumes.retain(|v| v.name != volume_name);
            volumes.push(Volume {
                name: volume_name,
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(set, t, i),
                    read_only: None,
                }),
                ..Volume::default()
            });
        }
        pod_spec.hostname = Some(pod_name);
        if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
            pod_spec.subdomain.clone_from(&spec.service_name);
        }
        pod
    };

    // Claims the pod of an ordinal lacks, made before it.
    let missing_claims = |i: i32| -> Vec<Step> {
        claim_templates
            .iter()
            .filter(|t| {
                let name = claim_name(set, t, i);
                !o.claims
                    .iter()
                    .any(|c| c.namespace().as_deref() == Some(ns.as_str()) && c.name_any() == name)
            })
            .map(|t| Step::CreateClaim(Box::new(claim_for(set, t, i))))
            .collect()
    };

    let mut waiting = false;
    // Create missing pods (and replace finished ones), in order unless Parallel.
    for i in 0..replicas {
        match by_ordinal.get(&i) {
            None => {
                let revision = if !on_delete && i < partition {
                    &current_revision
                } else {
                    &update_revision
                };
                steps.extend(missing_claims(i));
                steps.push(Step::CreatePod(Box::new(make_pod(i, revision))));
                if !parallel {
                    waiting = true;
                    break;
                }
            }
            Some(pod) => {
                if pods::is_terminal(pod) && pod.metadata.deletion_timestamp.is_none() {
                    steps.push(Step::DeletePod {
                        name: pod.name_any(),
                        scale_down: false,
                    });
                    waiting = true;
                    if !parallel {
                        break;
                    }
                } else if !parallel && !running_and_ready(pod) {
                    waiting = true;
                    break;
                }
            }
        }
    }
    // Remove pods beyond `replicas`, highest ordinal first, one at a time unless Parallel.
    if !waiting {
        for (i, pod) in by_ordinal.iter().rev().filter(|(i, _)| **i >= replicas) {
            if pod.metadata.deletion_timestamp.is_none() {
                steps.push(Step::DeletePod {
                    name: format!("{name}-{i}"),
                    scale_down: true,
                });
            } else if parallel {
                continue;
            }
            if !parallel {
                waiting = true;
                break;
            }
        }
    }
    // Rolling update: from the highest ordinal down to the partition, one at a time.
    if !waiting && !on_delete {
        let update_hash = hash_of(&update_revision);
        for i in (partition..replicas).rev() {
            let Some(pod) = by_ordinal.get(&i) else {
                continue;
            };
            if revision_of(pod) != Some(update_hash) {
                if pod.metadata.deletion_timestamp.is_none() {
                    steps.push(Step::DeletePod {
                        name: pod.name_any(),
                        scale_down: false,
                    });
                }
                break;
            }
            if !running_and_ready(pod) {
                break;
            }
        }
    }

    // Status.
    let live: Vec<&&Arc<Pod>> = by_ordinal
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let updated = count(&|p| revision_of(p) == Some(hash_of(&update_revision)));
    let current = count(&|p| revision_of(p) == Some(hash_of(&current_revision)));
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let live_count = i32::try_from(live.len()).unwrap_or(i32::MAX);
    let all_updated = replicas == updated && live_count == updated;
    let (current_revision, current) = if all_updated {
        (update_revision.clone(), updated)
    } else {
        (current_revision, current)
    };
    let before = set.status.as_ref();
    let after = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: live_count,
        ready_replicas: Some(count(&pods::is_ready)),
        available_replicas: Some(count(&|p| pods::is_available(p, min_ready, o.now))),
        current_replicas: Some(current),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision.clone()),
        update_revision: Some(update_revision.clone()),
        ..before.cloned().unwrap_or_default()
    };

    // Old revisions beyond the history limit go (never the current or update one).
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(10);
    let old: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| r.name_any() != update_revision && r.name_any() != current_revision)
        .collect();
    if old.len() > limit {
        steps.extend(
            old[..old.len() - limit]
                .iter()
                .map(|r| Step::DeleteRevision(r.name_any())),
        );
    }
    Plan {
        steps,
        status: status::changed(before, &after).then_some(after),
        requeue: waiting.then_some(WAIT),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::apps::v1::{
            RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetUpdateStrategy,
        },
        apimachinery::pkg::apis::meta::v1::LabelSelector,
    };

    use super::*;
    use crate::fixtures::{at, labels, meta, pod, template};

    fn set(replicas: i32, image: &str) -> StatefulSet {
        let mut t = template(&[("app", "db")]);
        t.spec.as_mut().unwrap().containers[0].image = Some(image.to_owned());
        StatefulSet {
            metadata: meta("db"),
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some("db".into()),
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "db")])),
                    match_expressions: None,
                },
                template: t,
                ..StatefulSetSpec::default()
            }),
            status: None,
        }
    }

    fn hash(s: &StatefulSet) -> String {
        template_hash(&s.spec.as_ref().unwrap().template, None)
    }

    /// The revision `s` records for its template.
    fn revision(s: &StatefulSet, number: i64) -> Arc<ControllerRevision> {
        let name = format!("db-{}", hash(s));
        let mut metadata = meta(&name);
        metadata.owner_references = Some(vec![ownership::controller_ref(s)]);
        Arc::new(ControllerRevision {
            metadata,
            data: Some(RawExtension(
                json!({"spec": {"template": s.spec.as_ref().unwrap().template}}),
            )),
            revision: number,
        })
    }

    /// Pod `ordinal` of `s` at `s`'s revision, ready or not.
    fn member(s: &StatefulSet, ordinal: i32, ready: bool) -> Arc<Pod> {
        let p = pod(&format!("db-{ordinal}"))
            .labels(&[("app", "db"), (CONTROLLER_REVISION_HASH, &hash(s))])
            .owned_by(s)
            .on("n1");
        if ready { p.ready_since(0) } else { p.running() }.build()
    }

    fn run(s: &StatefulSet, revisions: &[Arc<ControllerRevision>], pods: &[Arc<Pod>]) -> Plan {
        plan(&Observed {
            set: s,
            revisions,
            pods,
            claims: &[],
            now: at(100),
        })
    }

    fn created_pods(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::CreatePod(p) => Some(p.name_any()),
                _ => None,
            })
            .collect()
    }

    fn deleted_pods(plan: &Plan) -> Vec<(String, bool)> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::DeletePod { name, scale_down } => Some((name.clone(), *scale_down)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ordinals_come_from_the_stable_name() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "webby-1"), None);
    }

    #[test]
    fn a_new_set_records_its_revision_and_creates_only_the_first_pod() {
        let s = set(3, "busybox:1");
        let plan = run(&s, &[], &[]);
        let Step::CreateRevision(r) = &plan.steps[0] else {
            panic!("{:?}", plan.steps);
        };
        assert_eq!(r.name_any(), format!("db-{}", hash(&s)));
        assert_eq!(r.revision, 1);
        assert_eq!(created_pods(&plan), ["db-0"]);
        let Step::CreatePod(p) = &plan.steps[1] else {
            panic!("{:?}", plan.steps);
        };
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            (spec.hostname.as_deref(), spec.subdomain.as_deref()),
            (Some("db-0"), Some("db"))
        );
        assert_eq!(p.labels().get(CONTROLLER_REVISION_HASH), Some(&hash(&s)));
        assert_eq!(
            p.labels()
                .get("apps.kubernetes.io/pod-index")
                .map(String::as_str),
            Some("0")
        );
        assert_eq!(plan.requeue, Some(WAIT));
    }

    #[test]
    fn the_next_ordinal_waits_until_the_previous_pod_is_ready() {
        let s = set(3, "busybox:1");
        let rev = [revision(&s, 1)];
        assert!(created_pods(&run(&s, &rev, &[member(&s, 0, false)])).is_empty());
        assert_eq!(
            created_pods(&run(&s, &rev, &[member(&s, 0, true)])),
            ["db-1"]
        );
    }

    #[test]
    fn parallel_management_creates_every_missing_pod_at_once() {
        let mut s = set(3, "busybox:1");
        s.spec.as_mut().unwrap().pod_management_policy = Some("Parallel".into());
        let plan = run(&s, &[revision(&s, 1)], &[member(&s, 1, false)]);
        assert_eq!(created_pods(&plan), ["db-0", "db-2"]);
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first_one_at_a_time() {
        let s = set(1, "busybox:1");
        let pods: Vec<Arc<Pod>> = (0..3).map(|i| member(&s, i, true)).collect();
        let plan = run(&s, &[revision(&s, 1)], &pods);
        assert_eq!(deleted_pods(&plan), [("db-2".to_owned(), true)]);
        // While db-2 terminates, db-1 waits.
        let terminating = pod("db-2").owned_by(&s).terminating().build();
        let plan = run(
            &s,
            &[revision(&s, 1)],
            &[pods[0].clone(), pods[1].clone(), terminating],
        );
        assert!(deleted_pods(&plan).is_empty(), "{:?}", plan.steps);
    }

    #[test]
    fn a_finished_pod_is_deleted_to_be_recreated() {
        let s = set(2, "busybox:1");
        let failed = pod("db-1").owned_by(&s).finished("Failed", 50).build();
        let plan = run(&s, &[revision(&s, 1)], &[member(&s, 0, true), failed]);
        assert_eq!(deleted_pods(&plan), [("db-1".to_owned(), false)]);
    }

    #[test]
    fn a_rolling_update_replaces_from_the_highest_ordinal_down_to_the_partition() {
        let old = set(3, "busybox:1");
        let pods: Vec<Arc<Pod>> = (0..3).map(|i| member(&old, i, true)).collect();
        let mut new = set(3, "busybox:2");
        new.status = Some(StatefulSetStatus {
            current_revision: Some(format!("db-{}", hash(&old))),
            ..StatefulSetStatus::default()
        });
        let revisions = [revision(&old, 1)];
        let plan = run(&new, &revisions, &pods);
        assert!(matches!(plan.steps[0], Step::CreateRevision(ref r) if r.revision == 2));
        assert_eq!(deleted_pods(&plan), [("db-2".to_owned(), false)]);
        // With the partition at 2, pods below it keep the old revision.
        new.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateStatefulSetStrategy {
                partition: Some(2),
                max_unavailable: None,
            }),
        });
        let updated = [pods[0].clone(), pods[1].clone(), member(&new, 2, true)];
        let plan = run(&new, &[revision(&old, 1), revision(&new, 2)], &updated);
        assert!(plan.steps.is_empty(), "{:?}", plan.steps);
        let status = plan.status.expect("counts changed");
        assert_eq!(
            (status.updated_replicas, status.current_replicas),
            (Some(1), Some(2))
        );
    }

    #[test]
    fn on_delete_leaves_old_pods_until_someone_deletes_them() {
        let old = set(2, "busybox:1");
        let pods: Vec<Arc<Pod>> = (0..2).map(|i| member(&old, i, true)).collect();
        let mut new = set(2, "busybox:2");
        new.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        });
        let plan = run(&new, &[revision(&old, 1), revision(&new, 2)], &pods);
        assert!(deleted_pods(&plan).is_empty());
    }

    #[test]
    fn status_moves_the_current_revision_once_every_pod_is_updated() {
        let old = set(2, "busybox:1");
        let mut new = set(2, "busybox:2");
        new.status = Some(StatefulSetStatus {
            current_revision: Some(format!("db-{}", hash(&old))),
            ..StatefulSetStatus::default()
        });
        let pods: Vec<Arc<Pod>> = (0..2).map(|i| member(&new, i, true)).collect();
        let plan = run(&new, &[revision(&old, 1), revision(&new, 2)], &pods);
        let status = plan.status.unwrap();
        let current = format!("db-{}", hash(&new));
        assert_eq!(status.current_revision.as_deref(), Some(current.as_str()));
        assert_eq!(status.update_revision.as_deref(), Some(current.as_str()));
        assert_eq!((status.replicas, status.ready_replicas), (2, Some(2)));
        new.status = Some(status);
        assert_eq!(
            run(&new, &[revision(&old, 1), revision(&new, 2)], &pods).status,
            None
        );
    }

    #[test]
    fn revisions_beyond_the_history_limit_are_deleted_oldest_first() {
        let mut s = set(0, "busybox:9");
        s.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let mut revisions: Vec<Arc<ControllerRevision>> = (1..=3)
            .map(|i| revision(&set(0, &format!("busybox:{i}")), i))
            .map(|r| {
                let mut r = (*r).clone();
                r.metadata.owner_references = Some(vec![ownership::controller_ref(&s)]);
                Arc::new(r)
            })
            .collect();
        revisions.push(revision(&s, 4));
        let plan = run(&s, &revisions, &[]);
        assert_eq!(
            plan.steps,
            [
                Step::DeleteRevision(revisions[0].name_any()),
                Step::DeleteRevision(revisions[1].name_any())
            ]
        );
    }

    #[test]
    fn each_pod_gets_its_claims_made_before_it_and_mounted_by_template_name() {
        let mut s = set(2, "busybox");
        let template: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }))
        .unwrap();
        s.spec.as_mut().unwrap().volume_claim_templates = Some(vec![template]);
        let plan = run(&s, &[revision(&s, 1)], &[]);
        let claim_at = plan
            .steps
            .iter()
            .position(|st| matches!(st, Step::CreateClaim(c) if c.name_any() == "data-db-0"))
            .expect("the claim of pod 0 is made");
        let pod_at = plan
            .steps
            .iter()
            .position(|st| matches!(st, Step::CreatePod(_)))
            .expect("pod 0 is made");
        assert!(claim_at < pod_at);
        let Step::CreateClaim(claim) = &plan.steps[claim_at] else {
            unreachable!()
        };
        assert_eq!(claim.labels()["app"], "db");
        assert!(
            claim.metadata.owner_references.is_none(),
            "kept when the set goes"
        );
        let Step::CreatePod(pod) = &plan.steps[pod_at] else {
            unreachable!()
        };
        let volumes = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let source = volumes
            .iter()
            .find(|v| v.name == "data")
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .unwrap();
        assert_eq!(source.claim_name, "data-db-0");

        // An existing claim is reused, not made again.
        let existing = Arc::new(PersistentVolumeClaim {
            metadata: meta("data-db-0"),
            ..claim.as_ref().clone()
        });
        let plan = super::plan(&Observed {
            set: &s,
            revisions: &[revision(&s, 1)],
            pods: &[],
            claims: &[existing],
            now: at(100),
        });
        assert!(
            !plan
                .steps
                .iter()
                .any(|st| matches!(st, Step::CreateClaim(_)))
        );
    }
}
