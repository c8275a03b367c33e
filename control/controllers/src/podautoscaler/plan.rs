//! Decides one sync of an autoscaler from what was observed (the target's scale, its pods
//! and their readings) as kube-controller-manager's `reconcileAutoscaler` does: the bounds
//! first, then every metric's proposal (the highest wins), then normalization; with the
//! status, conditions and events it writes.

use std::{cmp::Ordering, collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        autoscaling::v2::{
            ContainerResourceMetricStatus, HorizontalPodAutoscaler,
            HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerSpec,
            HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricTarget,
            MetricValueStatus, ResourceMetricStatus,
        },
        core::v1::Pod,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Time},
};
use skiff_control_runtime::events::EventType;
use skiff_machinery::quantity::{format_milli, parse_milli};

use super::{
    behavior::{Counts, History, Reason},
    replicas::{self, Sample, Target},
};

/// The target's `scale` subresource, as far as the autoscaler reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleView {
    /// `spec.replicas`.
    pub spec_replicas: i32,
    /// `status.selector`, as text.
    pub selector: String,
}

/// One pod's readings from the metrics API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodUsage {
    /// When they were taken.
    pub at: Option<Timestamp>,
    /// The window they were averaged over.
    pub window: Duration,
    /// Per container, per resource: usage in milli-units.
    pub containers: BTreeMap<String, BTreeMap<String, i64>>,
}

/// What one sync sees.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The autoscaler.
    pub hpa: &'a HorizontalPodAutoscaler,
    /// Its target's scale, or why it could not be read.
    pub scale: Result<ScaleView, String>,
    /// The pods the scale's selector matches.
    pub pods: Vec<&'a Pod>,
    /// Their readings by pod name, or why the metrics API did not answer.
    pub usage: Result<BTreeMap<String, PodUsage>, String>,
    /// The time of the sync.
    pub now: Timestamp,
    /// The scale-down stabilisation window of autoscalers without `behavior`, and of
    /// `behavior.scaleDown` rules without one.
    pub downscale_window: Duration,
}

/// A rescale of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescale {
    /// The replicas before.
    pub from: i32,
    /// The replicas to set.
    pub to: i32,
    /// Why, as the `SuccessfulRescale` event says.
    pub reason: String,
}

/// What one sync does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Events to record.
    pub events: Vec<(EventType, &'static str, String)>,
    /// The new replica count, if it changes.
    pub rescale: Option<Rescale>,
    /// The status to write once the rescale (if any) succeeded.
    pub status: HorizontalPodAutoscalerStatus,
}

impl Plan {
    /// The status and event after the rescale succeeded.
    pub fn rescaled(&mut self, now: Timestamp) {
        if let Some(r) = &self.rescale {
            set_condition(
                &mut self.status,
                "AbleToScale",
                &reason(
                    "True",
                    "SucceededRescale",
                    &format!(
                        "the HPA controller was able to update the target scale to {}",
                        r.to
                    ),
                ),
                now,
            );
            self.events.push((
                EventType::Normal,
                "SuccessfulRescale",
                format!("New size: {}; reason: {}", r.to, r.reason),
            ));
        }
    }

    /// The status and event after the rescale failed with `err`: the desired count stays
    /// what it was, and `AbleToScale` turns false.
    pub fn rescale_failed(
        &mut self,
        previous: Option<&HorizontalPodAutoscalerStatus>,
        err: &str,
        now: Timestamp,
    ) {
        if let Some(r) = &self.rescale {
            self.events.push((
                EventType::Warning,
                "FailedRescale",
                format!("New size: {}; reason: {}; error: {err}", r.to, r.reason),
            ));
            set_condition(
                &mut self.status,
                "AbleToScale",
                &reason(
                    "False",
                    "FailedUpdateScale",
                    &format!("the HPA controller was unable to update the target scale: {err}"),
                ),
                now,
            );
            self.status.desired_replicas = previous.map_or(0, |p| p.desired_replicas);
            self.status.last_scale_time = previous.and_then(|p| p.last_scale_time.clone());
        }
    }
}

fn reason(status: &'static str, reason: &'static str, message: &str) -> Reason {
    Reason {
        status,
        reason,
        message: message.to_owned(),
    }
}

/// Sets condition `type_`, keeping its transition time while its status stays.
fn set_condition(
    status: &mut HorizontalPodAutoscalerStatus,
    type_: &str,
    r: &Reason,
    now: Timestamp,
) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let fresh = HorizontalPodAutoscalerCondition {
        type_: type_.to_owned(),
        status: r.status.to_owned(),
        reason: Some(r.reason.to_owned()),
        message: Some(r.message.clone()),
        last_transition_time: Some(Time(now)),
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status == fresh.status {
                c.reason = fresh.reason;
                c.message = fresh.message;
            } else {
                *c = fresh;
            }
        }
        None => conditions.push(fresh),
    }
}

/// A milli-unit value as Go's `resource.NewMilliQuantity(v, DecimalSI)` prints it.
#[must_use]
pub fn milli_quantity(milli: i64) -> Quantity {
    Quantity(format_milli(milli))
}

/// One metric's outcome: a proposal with its status and name, or the condition reason
/// and error that explain why there is none.
type Reading = Result<(i32, String, MetricStatus), (&'static str, String)>;

/// The proposal of one metric spec.
fn read_metric(o: &Observed<'_>, current: i32, spec: &MetricSpec) -> Reading {
    let (name, container, target) = match (spec.type_.as_str(), &spec.resource, &spec.container_resource) {
        ("Resource", Some(r), _) => (r.name.as_str(), None, &r.target),
        ("ContainerResource", _, Some(c)) => (c.name.as_str(), Some(c.container.as_str()), &c.target),
        ("Pods", ..) => return Err(("FailedGetPodsMetric", custom_metrics("pods"))),
        ("Object", ..) => return Err(("FailedGetObjectMetric", custom_metrics("object"))),
        ("External", ..) => return Err(("FailedGetExternalMetric", "unable to get external metric: no external metrics API (external.metrics.k8s.io) is served".to_owned())),
        (other, ..) => {
            return Err((
                "InvalidMetricSourceType",
                format!("unknown metric source type {other:?}"),
            ));
        }
    };
    let reason = if container.is_some() {
        "FailedGetContainerResourceMetric"
    } else {
        "FailedGetResourceMetric"
    };
    let (target, what) = resource_target(target, name).map_err(|e| (reason, e))?;
    let samples = samples(o, name, container)
        .map_err(|e| (reason, format!("failed to get {name} {what}: {e}")))?;
    let proposal = replicas::propose(current, target, name, container, &o.pods, samples, o.now)
        .map_err(|e| (reason, format!("failed to get {name} {what}: {e}")))?;
    let current_value = MetricValueStatus {
        average_utilization: proposal.utilization,
        average_value: Some(milli_quantity(proposal.average)),
        value: None,
    };
    let (status, metric_name) = match container {
        None => (
            MetricStatus {
                type_: "Resource".into(),
                resource: Some(ResourceMetricStatus {
                    name: name.to_owned(),
                    current: current_value,
                }),
                ..Default::default()
            },
            name.to_owned(),
        ),
        Some(c) => (
            MetricStatus {
                type_: "ContainerResource".into(),
                container_resource: Some(ContainerResourceMetricStatus {
                    name: name.to_owned(),
                    container: c.to_owned(),
                    current: current_value,
                }),
                ..Default::default()
            },
            format!("{name} container resource"),
        ),
    };
    let metric_name = match target {
        Target::Utilization(_) if container.is_none() => {
            format!("{name} resource utilization (percentage of request)")
        }
        Target::Utilization(_) => format!("{metric_name} utilization (percentage of request)"),
        Target::AverageValue(_) if container.is_none() => format!("{name} resource"),
        Target::AverageValue(_) => metric_name,
    };
    Ok((proposal.replicas, metric_name, status))
}

fn custom_metrics(what: &str) -> String {
    format!("unable to get {what} metric: no custom metrics API (custom.metrics.k8s.io) is served")
}

/// A resource target and how its errors name it (`utilization` or `usage`).
fn resource_target(target: &MetricTarget, name: &str) -> Result<(Target, &'static str), String> {
    if let Some(v) = &target.average_value {
        let milli = parse_milli(&v.0)
            .ok_or_else(|| format!("invalid average value {:?} for {name}", v.0))?;
        return Ok((Target::AverageValue(milli), "usage"));
    }
    match target.average_utilization {
        Some(u) => Ok((Target::Utilization(u), "utilization")),
        None => Err(
            "invalid resource metric source: neither an average utilization target nor an average value (usage) target was set"
                .to_owned(),
        ),
    }
}

/// Each pod's reading of `resource` (of one container, or summed over all).
fn samples(
    o: &Observed<'_>,
    resource: &str,
    container: Option<&str>,
) -> Result<BTreeMap<String, Sample>, String> {
    let usage = o
        .usage
        .as_ref()
        .map_err(|e| format!("unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {e}"))?;
    let mut out = BTreeMap::new();
    for (pod, u) in usage {
        let mut milli = 0;
        let mut found = false;
        for (name, resources) in &u.containers {
            if container.is_some_and(|c| c != name) {
                continue;
            }
            if let Some(v) = resources.get(resource) {
                milli += v;
                found = true;
            }
        }
        if found {
            out.insert(
                pod.clone(),
                Sample {
                    milli,
                    at: u.at.unwrap_or(o.now),
                    window: u.window,
                },
            );
        }
    }
    Ok(out)
}

/// The plan when the target's scale could not be read: say so, change nothing else.
fn unable_to_get_scale(
    err: &str,
    mut status: HorizontalPodAutoscalerStatus,
    now: Timestamp,
) -> Plan {
    set_condition(
        &mut status,
        "AbleToScale",
        &reason(
            "False",
            "FailedGetScale",
            &format!("the HPA controller was unable to get the target's current scale: {err}"),
        ),
        now,
    );
    Plan {
        events: vec![(EventType::Warning, "FailedGetScale", err.to_owned())],
        rescale: None,
        status,
    }
}

/// Plans one sync of `o.hpa`; `history` is what the controller remembers of it.
#[must_use]
pub fn plan(o: &Observed<'_>, history: &mut History) -> Plan {
    let hpa = o.hpa;
    let spec = hpa.spec.clone().unwrap_or_default();
    let mut status = HorizontalPodAutoscalerStatus {
        observed_generation: hpa.metadata.generation,
        ..hpa.status.clone().unwrap_or_default()
    };
    let mut events = Vec::new();
    let now = o.now;
    let scale = match &o.scale {
        Ok(s) => s,
        Err(err) => return unable_to_get_scale(err, status, now),
    };
    set_condition(
        &mut status,
        "AbleToScale",
        &reason(
            "True",
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        ),
        now,
    );
    let current = scale.spec_replicas;
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    status.current_replicas = Some(current);
    status.current_metrics = None;
    let (desired, why) = if current == 0 && min != 0 {
        set_condition(
            &mut status,
            "ScalingActive",
            &reason(
                "False",
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            ),
            now,
        );
        (0, String::new())
    } else if current > max {
        (
            max,
            "Current number of replicas above Spec.MaxReplicas".to_owned(),
        )
    } else if current < min {
        (
            min,
            "Current number of replicas below Spec.MinReplicas".to_owned(),
        )
    } else {
        let mut partial = Plan {
            events,
            rescale: None,
            status,
        };
        let counts = Counts {
            min,
            max,
            current,
            desired: 0,
        };
        let Some(found) = from_metrics(o, &spec, counts, &scale.selector, &mut partial, history)
        else {
            return partial;
        };
        (events, status) = (partial.events, partial.status);
        found
    };
    let rescale = (desired != current && !(current == 0 && min != 0)).then_some(Rescale {
        from: current,
        to: desired,
        reason: why,
    });
    if rescale.is_some() {
        status.desired_replicas = desired;
        status.last_scale_time = Some(Time(now));
    } else {
        status.desired_replicas = current;
    }
    Plan {
        events,
        rescale,
        status,
    }
}

/// The count `spec`'s metrics ask for, normalized, and why it differs from the current
/// one; `None` when the metrics could not be read (`plan`'s status and events say why).
fn from_metrics(
    o: &Observed<'_>,
    spec: &HorizontalPodAutoscalerSpec,
    counts: Counts,
    selector: &str,
    plan: &mut Plan,
    history: &mut History,
) -> Option<(i32, String)> {
    let (now, current) = (o.now, counts.current);
    if selector.is_empty() {
        plan.events.push((
            EventType::Warning,
            "SelectorRequired",
            "selector is required".to_owned(),
        ));
        set_condition(
            &mut plan.status,
            "ScalingActive",
            &reason(
                "False",
                "InvalidSelector",
                "the HPA target's scale is missing a selector",
            ),
            now,
        );
        return None;
    }
    let metrics = spec.metrics.clone().unwrap_or_default();
    let mut statuses = vec![MetricStatus::default(); metrics.len()];
    let mut best: Option<(i32, String)> = None;
    let mut invalid: Vec<(&'static str, String)> = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        match read_metric(o, current, m) {
            Ok((replicas, name, s)) => {
                statuses[i] = s;
                if best.as_ref().is_none_or(|(r, _)| replicas > *r) {
                    best = Some((replicas, name));
                }
            }
            Err((why, err)) => {
                plan.events.push((EventType::Warning, why, err.clone()));
                invalid.push((why, err));
            }
        }
    }
    plan.status.current_metrics = Some(statuses);
    let proposed = best.as_ref().map_or(0, |(r, _)| *r);
    if let Some((why, err)) = invalid.first()
        && (invalid.len() >= metrics.len() || proposed < current)
    {
        set_condition(
            &mut plan.status,
            "ScalingActive",
            &reason(
                "False",
                why,
                &format!("the HPA was unable to compute the replica count: {err}"),
            ),
            now,
        );
        plan.events.push((
            EventType::Warning,
            "FailedComputeMetricsReplicas",
            format!(
                "invalid metrics ({} invalid out of {}), first error is: {err}",
                invalid.len(),
                metrics.len()
            ),
        ));
        return None;
    }
    let metric = best.map(|(_, name)| name).unwrap_or_default();
    set_condition(
        &mut plan.status,
        "ScalingActive",
        &reason(
            "True",
            "ValidMetricFound",
            &format!("the HPA was able to successfully calculate a replica count from {metric}"),
        ),
        now,
    );
    let why = match proposed.cmp(&current) {
        Ordering::Greater => format!("{metric} above target"),
        Ordering::Less => "All metrics below target".to_owned(),
        Ordering::Equal => String::new(),
    };
    let counts = Counts {
        desired: proposed,
        ..counts
    };
    let normalized = match &spec.behavior {
        Some(b) => history.normalize(counts, b, o.downscale_window, now),
        None => history.normalize_legacy(counts, o.downscale_window, now),
    };
    set_condition(
        &mut plan.status,
        "AbleToScale",
        &normalized.able_to_scale,
        now,
    );
    set_condition(
        &mut plan.status,
        "ScalingLimited",
        &normalized.scaling_limited,
        now,
    );
    Some((normalized.replicas, why))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::autoscaling::v2::{
        CrossVersionObjectReference, HorizontalPodAutoscalerSpec, ResourceMetricSource,
    };

    use super::*;
    use crate::podautoscaler::replicas::tests::NOW;

    fn hpa(min: i32, max: i32, cpu: i32) -> HorizontalPodAutoscaler {
        HorizontalPodAutoscaler {
            metadata: kube::api::ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: "web".into(),
                },
                min_replicas: Some(min),
                max_replicas: max,
                metrics: Some(vec![MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: MetricTarget {
                            type_: "Utilization".into(),
                            average_utilization: Some(cpu),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                }]),
                behavior: None,
            }),
            status: None,
        }
    }

    fn pod(name: &str) -> Pod {
        replicas::tests::pod(name, 100)
    }

    fn usage(cpu: &[(&str, i64)]) -> BTreeMap<String, PodUsage> {
        cpu.iter()
            .map(|(n, m)| {
                let containers = [(
                    "c".to_owned(),
                    [("cpu".to_owned(), *m)].into_iter().collect(),
                )]
                .into_iter()
                .collect();
                let u = PodUsage {
                    at: Some(Timestamp::from_second(NOW).unwrap()),
                    window: Duration::from_secs(1),
                    containers,
                };
                ((*n).to_owned(), u)
            })
            .collect()
    }

    fn observe<'a>(
        hpa: &'a HorizontalPodAutoscaler,
        replicas: i32,
        pods: &'a [Pod],
        cpu: &[(&str, i64)],
    ) -> Observed<'a> {
        Observed {
            hpa,
            scale: Ok(ScaleView {
                spec_replicas: replicas,
                selector: "app=web".into(),
            }),
            pods: pods.iter().collect(),
            usage: Ok(usage(cpu)),
            now: Timestamp::from_second(NOW).unwrap(),
            downscale_window: Duration::from_mins(5),
        }
    }

    fn condition<'a>(plan: &'a Plan, type_: &str) -> (&'a str, &'a str) {
        let c = plan
            .status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .expect("condition");
        (c.status.as_str(), c.reason.as_deref().unwrap_or(""))
    }

    #[test]
    fn busy_pods_scale_the_target_up_with_the_metric_named_in_the_reason() {
        let h = hpa(1, 5, 50);
        let pods = [pod("a")];
        let o = observe(&h, 1, &pods, &[("a", 100)]);
        let mut history = History::starting_at(1, o.now);
        let mut plan = plan(&o, &mut history);
        let r = plan.rescale.clone().expect("rescale");
        assert_eq!((r.from, r.to), (1, 2));
        assert_eq!(
            r.reason,
            "cpu resource utilization (percentage of request) above target"
        );
        assert_eq!(plan.status.desired_replicas, 2);
        assert_eq!(plan.status.current_replicas, Some(1));
        let m = plan.status.current_metrics.as_ref().unwrap()[0]
            .resource
            .clone()
            .unwrap();
        assert_eq!(m.current.average_utilization, Some(100));
        assert_eq!(m.current.average_value, Some(Quantity("100m".into())));
        assert_eq!(
            condition(&plan, "ScalingActive"),
            ("True", "ValidMetricFound")
        );
        assert_eq!(
            condition(&plan, "ScalingLimited"),
            ("False", "DesiredWithinRange")
        );
        plan.rescaled(o.now);
        assert_eq!(
            condition(&plan, "AbleToScale"),
            ("True", "SucceededRescale")
        );
        assert_eq!(
            plan.events.last().unwrap().2,
            "New size: 2; reason: cpu resource utilization (percentage of request) above target"
        );
    }

    #[test]
    fn a_target_outside_the_bounds_is_brought_back_without_metrics() {
        let h = hpa(2, 3, 50);
        let o = observe(&h, 5, &[], &[]);
        let plan = plan(&o, &mut History::default());
        let r = plan.rescale.unwrap();
        assert_eq!(
            (r.to, r.reason.as_str()),
            (3, "Current number of replicas above Spec.MaxReplicas")
        );
    }

    #[test]
    fn a_target_scaled_to_zero_disables_autoscaling() {
        let h = hpa(1, 3, 50);
        let o = observe(&h, 0, &[], &[]);
        let plan = plan(&o, &mut History::default());
        assert!(plan.rescale.is_none());
        assert_eq!(
            condition(&plan, "ScalingActive"),
            ("False", "ScalingDisabled")
        );
    }

    #[test]
    fn missing_metrics_leave_the_count_and_say_why() {
        let h = hpa(1, 3, 50);
        let pods = [pod("a")];
        let o = observe(&h, 1, &pods, &[]);
        let plan = plan(&o, &mut History::starting_at(1, o.now));
        assert!(plan.rescale.is_none());
        assert_eq!(
            condition(&plan, "ScalingActive"),
            ("False", "FailedGetResourceMetric")
        );
        let messages: Vec<&str> = plan.events.iter().map(|e| e.1).collect();
        assert_eq!(
            messages,
            ["FailedGetResourceMetric", "FailedComputeMetricsReplicas"]
        );
        assert_eq!(
            plan.events[1].2,
            "invalid metrics (1 invalid out of 1), first error is: failed to get cpu utilization: \
             unable to get metrics for resource cpu: no metrics returned from resource metrics API"
        );
    }

    #[test]
    fn an_unreadable_scale_makes_the_autoscaler_unable_to_scale() {
        let h = hpa(1, 3, 50);
        let mut o = observe(&h, 1, &[], &[]);
        o.scale = Err("deployments.apps \"web\" not found".into());
        let plan = plan(&o, &mut History::default());
        assert_eq!(condition(&plan, "AbleToScale"), ("False", "FailedGetScale"));
        assert_eq!(plan.events[0].1, "FailedGetScale");
    }

    #[test]
    fn a_failed_rescale_keeps_the_previous_desired_count() {
        let h = hpa(1, 5, 50);
        let pods = [pod("a")];
        let o = observe(&h, 1, &pods, &[("a", 100)]);
        let mut plan = plan(&o, &mut History::starting_at(1, o.now));
        plan.rescale_failed(None, "conflict", o.now);
        assert_eq!(plan.status.desired_replicas, 0);
        assert!(plan.status.last_scale_time.is_none());
        assert_eq!(
            condition(&plan, "AbleToScale"),
            ("False", "FailedUpdateScale")
        );
        assert_eq!(plan.events.last().unwrap().1, "FailedRescale");
    }

    #[test]
    fn conditions_keep_their_transition_time_while_their_status_stays() {
        let mut status = HorizontalPodAutoscalerStatus::default();
        let t0 = Timestamp::from_second(NOW).unwrap();
        let t1 = Timestamp::from_second(NOW + 60).unwrap();
        set_condition(&mut status, "AbleToScale", &reason("True", "A", "a"), t0);
        set_condition(&mut status, "AbleToScale", &reason("True", "B", "b"), t1);
        let c = &status.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.reason.as_deref(), c.last_transition_time.clone()),
            (Some("B"), Some(Time(t0)))
        );
        set_condition(&mut status, "AbleToScale", &reason("False", "C", "c"), t1);
        assert_eq!(
            status.conditions.as_ref().unwrap()[0].last_transition_time,
            Some(Time(t1))
        );
    }
}
