//! How many replicas one resource metric asks for, computed as kube-controller-manager's
//! replica calculator does: usage against requests (or an average value) over the ready
//! pods, a 10 % tolerance, and the pods without a reading or not yet ready counted in the
//! direction that dampens the change.

use std::{collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use skiff_machinery::quantity::parse_milli;

/// How far the usage may stray from the target before the replica count changes.
pub const TOLERANCE: f64 = 0.1;
/// How long after a pod starts its CPU readings may still be start-up noise.
pub const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_mins(5);
/// How long after a pod starts its first readiness change may still come.
pub const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);

/// One pod's reading from the metrics API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Usage in milli-units (millicores, milli-bytes).
    pub milli: i64,
    /// When it was taken.
    pub at: Timestamp,
    /// The window it was averaged over.
    pub window: Duration,
}

/// What a resource metric aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A percentage of the pods' requests.
    Utilization(i32),
    /// A usage per pod, in milli-units.
    AverageValue(i64),
}

/// What one metric proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    /// The replica count.
    pub replicas: i32,
    /// The current utilisation in percent of requests (utilisation targets only).
    pub utilization: Option<i32>,
    /// The current average usage per pod, in milli-units.
    pub average: i64,
}

/// Why no proposal could be made; the messages are kube-controller-manager's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalcError {
    /// The metrics API returned nothing for the selector.
    #[error(
        "unable to get metrics for resource {0}: no metrics returned from resource metrics API"
    )]
    NoMetrics(String),
    /// The selector matches no pod.
    #[error("no pods returned by selector while calculating replica count")]
    NoPods,
    /// Every reading belongs to a pod that is not ready or is going away.
    #[error("did not receive metrics for targeted pods (pods might be unready)")]
    NoReadyMetrics,
    /// A container lacks the request a utilisation is measured against.
    #[error("missing request for {resource} in container {container} of Pod {pod}")]
    MissingRequest {
        /// The resource.
        resource: String,
        /// The container.
        container: String,
        /// The pod.
        pod: String,
    },
    /// No reading belongs to a pod with requests.
    #[error("no metrics returned matched known pods")]
    NoMatchingPods,
}

/// The pods of the target and their readings, grouped as the calculator counts them.
struct Groups {
    ready: usize,
    unready: Vec<String>,
    missing: Vec<String>,
    ignored: Vec<String>,
}

fn group(
    pods: &[&Pod],
    metrics: &BTreeMap<String, Sample>,
    resource: &str,
    now: Timestamp,
) -> Groups {
    let mut groups = Groups {
        ready: 0,
        unready: Vec::new(),
        missing: Vec::new(),
        ignored: Vec::new(),
    };
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
        if pod.metadata.deletion_timestamp.is_some() || phase == "Failed" {
            groups.ignored.push(name);
            continue;
        }
        if phase == "Pending" {
            groups.unready.push(name);
            continue;
        }
        let Some(sample) = metrics.get(&name) else {
            groups.missing.push(name);
            continue;
        };
        if resource == "cpu" && !counts_for_cpu(pod, sample, now) {
            groups.unready.push(name);
            continue;
        }
        groups.ready += 1;
    }
    groups
}

/// Whether a pod's CPU reading is taken: not while it is unready in its start-up period or
/// was read before one window passed since it became ready, nor when it has never been
/// ready.
fn counts_for_cpu(pod: &Pod, sample: &Sample, now: Timestamp) -> bool {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let (Some(ready), Some(started)) = (ready, status.and_then(|s| s.start_time.as_ref())) else {
        return false;
    };
    let started = started.0;
    let changed = ready.last_transition_time.as_ref().map_or(started, |t| t.0);
    let is_false = ready.status == "False";
    if started + CPU_INITIALIZATION_PERIOD > now {
        !(is_false || sample.at < changed + sample.window)
    } else {
        !(is_false && started + INITIAL_READINESS_DELAY > changed)
    }
}

/// Each pod's request of `resource` (summed over its containers, or of one container).
fn requests(
    pods: &[&Pod],
    resource: &str,
    container: Option<&str>,
) -> Result<BTreeMap<String, i64>, CalcError> {
    let mut out = BTreeMap::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut sum = 0;
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            if container.is_some_and(|only| only != c.name) {
                continue;
            }
            let request = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .and_then(|q| parse_milli(&q.0))
                .ok_or_else(|| CalcError::MissingRequest {
                    resource: resource.to_owned(),
                    container: c.name.clone(),
                    pod: name.clone(),
                })?;
            sum += request;
        }
        out.insert(name, sum);
    }
    Ok(out)
}

/// The usage ratio (current over target) and what is reported with it.
fn ratio(
    target: Target,
    metrics: &BTreeMap<String, Sample>,
    requests: &BTreeMap<String, i64>,
) -> Result<(f64, Option<i32>, i64), CalcError> {
    match target {
        Target::Utilization(wanted) => {
            let (mut used, mut requested, mut n) = (0_i64, 0_i64, 0_i64);
            for (pod, sample) in metrics {
                if let Some(r) = requests.get(pod) {
                    used += sample.milli;
                    requested += r;
                    n += 1;
                }
            }
            if requested == 0 {
                return Err(CalcError::NoMatchingPods);
            }
            let utilization = i32::try_from(used * 100 / requested).unwrap_or(i32::MAX);
            Ok((
                f64::from(utilization) / f64::from(wanted),
                Some(utilization),
                used / n,
            ))
        }
        Target::AverageValue(wanted) => {
            let used: i64 = metrics.values().map(|s| s.milli).sum();
            let average = used / i64::try_from(metrics.len()).unwrap_or(i64::MAX).max(1);
            #[expect(
                clippy::cast_precision_loss,
                reason = "milli-unit usages are far below 2^52"
            )]
            let r = average as f64 / wanted as f64;
            Ok((r, None, average))
        }
    }
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "replica counts are small"
)]
fn ceil_times(ratio: f64, count: usize) -> i32 {
    (ratio * count as f64).ceil() as i32
}

/// The replica count `resource` (of `container`, or of whole pods) asks for, given the
/// target's pods and their readings; `current` is the target's replica count.
///
/// # Errors
/// When there are no readings or pods to compute from, or a request is missing.
pub fn propose(
    current: i32,
    target: Target,
    resource: &str,
    container: Option<&str>,
    pods: &[&Pod],
    mut metrics: BTreeMap<String, Sample>,
    now: Timestamp,
) -> Result<Proposal, CalcError> {
    if metrics.is_empty() {
        return Err(CalcError::NoMetrics(resource.to_owned()));
    }
    if pods.is_empty() {
        return Err(CalcError::NoPods);
    }
    let groups = group(pods, &metrics, resource, now);
    for name in groups.ignored.iter().chain(&groups.unready) {
        metrics.remove(name);
    }
    if metrics.is_empty() {
        return Err(CalcError::NoReadyMetrics);
    }
    let requests = match target {
        Target::Utilization(_) => requests(pods, resource, container)?,
        Target::AverageValue(_) => BTreeMap::new(),
    };
    let (usage, utilization, average) = ratio(target, &metrics, &requests)?;
    let proposal = |replicas| Proposal {
        replicas,
        utilization,
        average,
    };
    let scale_up_with_unready = !groups.unready.is_empty() && usage > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if (1.0 - usage).abs() <= TOLERANCE {
            return Ok(proposal(current));
        }
        return Ok(proposal(ceil_times(usage, groups.ready)));
    }
    // Pods without a reading count as using the target (at least all they request) when
    // scaling down and nothing when scaling up; unready pods count as using nothing.
    for name in &groups.missing {
        let assumed = if usage < 1.0 {
            match target {
                Target::Utilization(wanted) => {
                    requests.get(name).copied().unwrap_or(0) * i64::from(wanted.max(100)) / 100
                }
                Target::AverageValue(wanted) => wanted,
            }
        } else {
            0
        };
        metrics.insert(
            name.clone(),
            Sample {
                milli: assumed,
                at: now,
                window: Duration::ZERO,
            },
        );
    }
    if scale_up_with_unready {
        for name in &groups.unready {
            metrics.insert(
                name.clone(),
                Sample {
                    milli: 0,
                    at: now,
                    window: Duration::ZERO,
                },
            );
        }
    }
    let (new_usage, _, _) = ratio(target, &metrics, &requests)?;
    if (1.0 - new_usage).abs() <= TOLERANCE
        || (usage < 1.0 && new_usage > 1.0)
        || (usage > 1.0 && new_usage < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = ceil_times(new_usage, metrics.len());
    if (new_usage < 1.0 && replicas > current) || (new_usage > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

#[cfg(test)]
pub(super) mod tests {
    use k8s_openapi::{
        api::core::v1::{Container, PodCondition, PodSpec, PodStatus, ResourceRequirements},
        apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Time},
    };

    use super::*;

    /// The second tests run at.
    pub(in crate::podautoscaler) const NOW: i64 = 1_000_000;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    /// A running pod requesting `cpu` millicores, started and ready long ago.
    pub(in crate::podautoscaler) fn pod(name: &str, cpu: i64) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_owned(), Quantity(format!("{cpu}m")))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                start_time: Some(Time(at(NOW - 3600))),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(at(NOW - 3500))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn readings(usages: &[(&str, i64)]) -> BTreeMap<String, Sample> {
        usages
            .iter()
            .map(|(n, m)| {
                let s = Sample {
                    milli: *m,
                    at: at(NOW),
                    window: Duration::from_secs(1),
                };
                ((*n).to_owned(), s)
            })
            .collect()
    }

    fn cpu(
        current: i32,
        target: i32,
        pods: &[Pod],
        usages: &[(&str, i64)],
    ) -> Result<Proposal, CalcError> {
        let pods: Vec<&Pod> = pods.iter().collect();
        propose(
            current,
            Target::Utilization(target),
            "cpu",
            None,
            &pods,
            readings(usages),
            at(NOW),
        )
    }

    #[test]
    fn utilisation_above_target_scales_by_the_usage_ratio_rounded_up() {
        let pods = [pod("a", 100), pod("b", 100)];
        let p = cpu(2, 50, &pods, &[("a", 90), ("b", 70)]).unwrap();
        // 80 % of requests against 50 %: 1.6 * 2 ready pods = 3.2 -> 4.
        assert_eq!(
            p,
            Proposal {
                replicas: 4,
                utilization: Some(80),
                average: 80
            }
        );
    }

    #[test]
    fn usage_within_the_tolerance_keeps_the_current_count() {
        let pods = [pod("a", 100), pod("b", 100)];
        assert_eq!(
            cpu(2, 50, &pods, &[("a", 54), ("b", 54)]).unwrap().replicas,
            2
        );
        assert_eq!(
            cpu(2, 50, &pods, &[("a", 20), ("b", 20)]).unwrap().replicas,
            1
        );
    }

    #[test]
    fn a_pod_without_a_reading_holds_back_a_scale_down() {
        let pods = [pod("a", 100), pod("b", 100)];
        // a alone would ask for 1 replica; b missing counts as using its full request.
        let p = cpu(2, 50, &pods, &[("a", 10)]).unwrap();
        assert_eq!(p.replicas, 2);
        assert_eq!(p.utilization, Some(10));
    }

    #[test]
    fn unready_pods_count_as_idle_when_scaling_up() {
        let mut pending = pod("b", 100);
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let pods = [pod("a", 100), pending];
        // a at 200 % of a 50 % target; with b at 0 the ratio is 2.0 over 2 pods -> 4.
        assert_eq!(cpu(2, 50, &pods, &[("a", 200)]).unwrap().replicas, 4);
    }

    #[test]
    fn a_cpu_reading_from_before_readiness_in_the_start_up_period_is_left_out() {
        let mut fresh = pod("b", 100);
        let status = fresh.status.as_mut().unwrap();
        status.start_time = Some(Time(at(NOW - 10)));
        status.conditions.as_mut().unwrap()[0].last_transition_time = Some(Time(at(NOW)));
        let pods = [pod("a", 100), fresh];
        // b is counted as unready; a alone at 100 % of a 100 % target keeps 2.
        assert_eq!(
            cpu(2, 100, &pods, &[("a", 100), ("b", 900)])
                .unwrap()
                .replicas,
            2
        );
    }

    #[test]
    fn deleted_and_failed_pods_are_ignored() {
        let mut failed = pod("b", 100);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = [pod("a", 100), failed];
        assert_eq!(
            cpu(2, 50, &pods, &[("a", 100), ("b", 0)]).unwrap().replicas,
            2
        );
    }

    #[test]
    fn missing_requests_and_missing_metrics_are_errors() {
        let mut bare = pod("a", 100);
        bare.spec.as_mut().unwrap().containers[0].resources = None;
        assert_eq!(
            cpu(1, 50, &[bare], &[("a", 10)]).unwrap_err().to_string(),
            "missing request for cpu in container c of Pod a"
        );
        assert_eq!(
            cpu(1, 50, &[pod("a", 100)], &[]).unwrap_err().to_string(),
            "unable to get metrics for resource cpu: no metrics returned from resource metrics API"
        );
    }

    #[test]
    fn an_average_value_target_divides_the_mean_usage() {
        let pods = [pod("a", 100), pod("b", 100)];
        let refs: Vec<&Pod> = pods.iter().collect();
        let mi = 1024 * 1024 * 1000;
        let p = propose(
            2,
            Target::AverageValue(100 * mi),
            "memory",
            None,
            &refs,
            readings(&[("a", 300 * mi), ("b", 100 * mi)]),
            at(NOW),
        )
        .unwrap();
        assert_eq!((p.replicas, p.utilization, p.average), (4, None, 200 * mi));
    }
}
