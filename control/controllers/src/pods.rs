//! Pod facts every workload controller asks (active, ready, available) and the pod a
//! template stamps out.

use std::{cell::OnceCell, cmp::Ordering, collections::HashSet, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Pod, PodTemplateSpec},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use skiff_control_runtime::{expectations::Expectations, informers::in_namespace, ownership};

/// Not finished and not being deleted: counts toward a workload's replicas.
#[must_use]
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !is_terminal(pod)
}

/// Phase Succeeded or Failed.
#[must_use]
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// `status.phase`, `Pending` when unset.
#[must_use]
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// When the Ready condition last became True, if it is True.
#[must_use]
pub fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (cond.status == "True").then(|| {
        cond.last_transition_time
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
    })
}

/// The Ready condition is True.
#[must_use]
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now`.
#[must_use]
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    ready_since(pod).is_some_and(|since| {
        min_ready_seconds <= 0
            || now.as_second() - since.as_second() >= i64::from(min_ready_seconds)
    })
}

/// How long until a ready pod has been ready for `min_ready_seconds` (`None`: not ready, or
/// available already).
#[must_use]
pub fn available_in(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> Option<Duration> {
    let since = ready_since(pod)?;
    let left = since.as_second() + i64::from(min_ready_seconds) - now.as_second();
    (min_ready_seconds > 0 && left > 0).then(|| Duration::from_secs(left.unsigned_abs()))
}

/// What a controller that creates and deletes pods reads before it plans for one owner.
#[derive(Debug)]
pub struct ForOwner {
    /// The owner's expectations key, `namespace/name`.
    pub key: String,
    /// The cached pods of the owner's namespace.
    pub pods: Vec<Arc<Pod>>,
    /// Whether the cache shows what the owner last created and deleted (see
    /// [`Expectations`]): every created name cached, every deleted pod gone or terminating.
    pub caught_up: bool,
}

/// The pods of `owner`'s namespace in `cache`, and whether its expectations are met.
#[must_use]
pub fn for_owner<K: ResourceExt>(
    owner: &K,
    cache: &Store<Pod>,
    expectations: &Expectations,
) -> ForOwner {
    let ns = owner.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", owner.name_any());
    let owner_uid = owner.uid().unwrap_or_default();
    let pods = in_namespace(cache, &ns);
    // Built only when a deletion is pending.
    let live: OnceCell<HashSet<&str>> = OnceCell::new();
    let caught_up = expectations.satisfied(
        &key,
        |name| cache.get(&ObjectRef::new(name).within(&ns)).is_some(),
        |uid| {
            live.get_or_init(|| {
                pods.iter()
                    .filter(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && ownership::is_controlled_by(&p.metadata, &owner_uid)
                    })
                    .filter_map(|p| p.metadata.uid.as_deref())
                    .collect()
            })
            .contains(uid)
        },
    );
    ForOwner {
        key,
        pods,
        caught_up,
    }
}

/// A pod from `template` owned by `owner`, named `name` or generated from `generate_name`.
#[must_use]
pub fn from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    name: Option<String>,
    generate_name: Option<String>,
    owner: OwnerReference,
) -> Pod {
    let template_meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: Some(namespace.to_owned()),
            labels: template_meta.labels,
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The order in which pods should be deleted when scaling down, most deletable first, as
/// the Go `ActivePods` sort: unassigned before assigned, pending before running, not ready
/// before ready, recently ready before long ready, more restarts before fewer, newer
/// before older.
#[must_use]
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let rank = |p: &Pod| match phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| {
                cs.iter().map(|c| c.restart_count).max().unwrap_or(0)
            })
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| rank(a).cmp(&rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(|| ready_since(b).cmp(&ready_since(a)))
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| created(b).cmp(&created(a)))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{PodCondition, PodSpec, PodStatus},
        apimachinery::pkg::apis::meta::v1::Time,
    };

    use super::*;

    fn pod(node: Option<&str>, phase: &str, ready: bool, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_owned),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(Timestamp::from_second(created).unwrap())),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn scale_down_removes_unscheduled_then_not_ready_then_newest() {
        let mut pods = [
            pod(Some("n1"), "Running", true, 100),
            pod(Some("n1"), "Running", true, 200),
            pod(Some("n1"), "Running", false, 50),
            pod(None, "Pending", false, 10),
        ];
        pods.sort_by(deletion_order);
        let order: Vec<i64> = pods
            .iter()
            .map(|p| {
                p.metadata
                    .creation_timestamp
                    .as_ref()
                    .unwrap()
                    .0
                    .as_second()
            })
            .collect();
        assert_eq!(order, [10, 50, 200, 100]);
    }

    #[test]
    fn a_ready_pod_becomes_available_after_min_ready_seconds() {
        let p = pod(Some("n"), "Running", true, 100);
        let now = Timestamp::from_second(104).unwrap();
        assert_eq!(available_in(&p, 10, now), Some(Duration::from_secs(6)));
        assert_eq!(available_in(&p, 4, now), None);
        assert_eq!(available_in(&p, 0, now), None);
        assert_eq!(
            available_in(&pod(Some("n"), "Running", false, 100), 10, now),
            None
        );
    }

    #[test]
    fn available_waits_for_min_ready_seconds() {
        let p = pod(Some("n"), "Running", true, 100);
        let now = Timestamp::from_second(105).unwrap();
        assert!(is_available(&p, 0, now));
        assert!(is_available(&p, 5, now));
        assert!(!is_available(&p, 6, now));
        assert!(!is_available(
            &pod(Some("n"), "Running", false, 100),
            0,
            now
        ));
    }
}
