//! Turns the replica count the metrics ask for into the one the autoscaler sets, as
//! kube-controller-manager normalizes it: the stabilisation windows (the highest recent
//! recommendation when scaling down, the lowest when scaling up), the scaling policies
//! (Pods / Percent per period, `selectPolicy`), and the bounds, with the `AbleToScale` and
//! `ScalingLimited` reasons that explain the outcome. Autoscalers without `behavior` get
//! the legacy rules: the controller's scale-down window and at most double (at least 4).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

/// Without `behavior`, a scale-up goes at most to this factor of the current count...
const SCALE_UP_LIMIT_FACTOR: f64 = 2.0;
/// ...or to this many replicas, whichever is more.
const SCALE_UP_LIMIT_MINIMUM: f64 = 4.0;

/// What the controller remembers of one autoscaler between syncs.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Replica counts the metrics asked for, and when.
    recommendations: Vec<(Timestamp, i32)>,
    /// Replicas added by past scale-ups, and when.
    scale_ups: Vec<(Timestamp, i32)>,
    /// Replicas removed by past scale-downs, and when.
    scale_downs: Vec<(Timestamp, i32)>,
}

/// A condition's status, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// `"True"` or `"False"`.
    pub status: &'static str,
    /// The reason.
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

fn reason(status: &'static str, reason: &'static str, message: &str) -> Reason {
    Reason {
        status,
        reason,
        message: message.to_owned(),
    }
}

/// The normalized count and the conditions that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The count to set.
    pub replicas: i32,
    /// `AbleToScale`: whether stabilisation held the recommendation back.
    pub able_to_scale: Reason,
    /// `ScalingLimited`: whether bounds or rates held it back.
    pub scaling_limited: Reason,
}

/// The bounds and the counts one normalization works on.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// `spec.minReplicas`.
    pub min: i32,
    /// `spec.maxReplicas`.
    pub max: i32,
    /// The target's replica count now.
    pub current: i32,
    /// What the metrics ask for.
    pub desired: i32,
}

fn since(now: Timestamp, window: Duration) -> Timestamp {
    now.checked_sub(SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

fn seconds(s: Option<i32>) -> Duration {
    Duration::from_secs(u64::try_from(s.unwrap_or(0)).unwrap_or(0))
}

impl History {
    /// A history that starts with the target's count as its first recommendation, so a
    /// restarted controller does not scale down before one window has passed.
    #[must_use]
    pub fn starting_at(current: i32, now: Timestamp) -> Self {
        Self {
            recommendations: vec![(now, current)],
            ..Self::default()
        }
    }

    /// Remembers a rescale from `before` to `after` for the policies' periods.
    pub fn rescaled(
        &mut self,
        behavior: Option<&HorizontalPodAutoscalerBehavior>,
        before: i32,
        after: i32,
        now: Timestamp,
    ) {
        let Some(behavior) = behavior else {
            return;
        };
        let (events, rules) = if after > before {
            (&mut self.scale_ups, behavior.scale_up.as_ref())
        } else {
            (&mut self.scale_downs, behavior.scale_down.as_ref())
        };
        let longest = rules
            .and_then(|r| r.policies.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0);
        let cutoff = since(now, seconds(Some(longest)));
        events.retain(|(at, _)| *at > cutoff);
        events.push((now, (after - before).abs()));
    }

    /// Normalizes `counts.desired` for an autoscaler without `behavior`; `window` is the
    /// controller's scale-down stabilisation window.
    pub fn normalize_legacy(
        &mut self,
        counts: Counts,
        window: Duration,
        now: Timestamp,
    ) -> Normalized {
        let cutoff = since(now, window);
        self.recommendations.retain(|(at, _)| *at >= cutoff);
        let stabilized = self
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .fold(counts.desired, i32::max);
        self.recommendations.push((now, counts.desired));
        let able_to_scale = if stabilized == counts.desired {
            reason(
                "True",
                "ReadyForNewScale",
                "recommended size matches current size",
            )
        } else {
            reason(
                "True",
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        };
        #[expect(clippy::cast_possible_truncation, reason = "replica counts are small")]
        let up_limit =
            (SCALE_UP_LIMIT_FACTOR * f64::from(counts.current)).max(SCALE_UP_LIMIT_MINIMUM) as i32;
        let (ceiling, limited) = ceiling(up_limit, counts.max);
        let (replicas, scaling_limited) = if stabilized < counts.min {
            (counts.min, too_few())
        } else if stabilized > ceiling {
            (ceiling, limited)
        } else {
            (stabilized, within_range())
        };
        Normalized {
            replicas,
            able_to_scale,
            scaling_limited,
        }
    }

    /// Normalizes `counts.desired` under `behavior`; a scale-down rule without a window
    /// takes `default_down_window`.
    pub fn normalize(
        &mut self,
        counts: Counts,
        behavior: &HorizontalPodAutoscalerBehavior,
        default_down_window: Duration,
        now: Timestamp,
    ) -> Normalized {
        let up_rules = behavior.scale_up.clone().unwrap_or_default();
        let down_rules = behavior.scale_down.clone().unwrap_or_default();
        let up_window = seconds(up_rules.stabilization_window_seconds);
        let down_window = down_rules
            .stabilization_window_seconds
            .map_or(default_down_window, |s| seconds(Some(s)));
        let (up_cutoff, down_cutoff) = (since(now, up_window), since(now, down_window));
        let (mut up, mut down) = (counts.desired, counts.desired);
        for (at, r) in &self.recommendations {
            if *at > up_cutoff {
                up = up.min(*r);
            }
            if *at > down_cutoff {
                down = down.max(*r);
            }
        }
        let stabilized = counts.current.max(up).min(down);
        self.recommendations
            .retain(|(at, _)| *at >= up_cutoff || *at >= down_cutoff);
        self.recommendations.push((now, counts.desired));
        let able_to_scale = if stabilized == counts.desired {
            reason(
                "True",
                "ReadyForNewScale",
                "recommended size matches current size",
            )
        } else if counts.desired >= counts.current {
            reason(
                "True",
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        } else {
            reason(
                "True",
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        };
        let (replicas, scaling_limited) = self.rate_limited(
            Counts {
                desired: stabilized,
                ..counts
            },
            &up_rules,
            &down_rules,
            now,
        );
        let scaling_limited = if replicas == stabilized {
            Reason {
                status: "False",
                ..scaling_limited
            }
        } else {
            scaling_limited
        };
        Normalized {
            replicas,
            able_to_scale,
            scaling_limited,
        }
    }

    /// Applies the policies' rates and the bounds to a stabilized count.
    fn rate_limited(
        &self,
        counts: Counts,
        up: &HPAScalingRules,
        down: &HPAScalingRules,
        now: Timestamp,
    ) -> (i32, Reason) {
        if counts.desired > counts.current {
            let limit =
                scale_up_limit(counts.current, &self.scale_ups, up, now).max(counts.current);
            let (ceiling, why) = ceiling(limit, counts.max);
            if counts.desired > ceiling {
                return (ceiling, why);
            }
        } else if counts.desired < counts.current {
            let limit =
                scale_down_limit(counts.current, &self.scale_downs, down, now).min(counts.current);
            let (floor, why) = if counts.min < limit {
                (
                    limit,
                    reason(
                        "True",
                        "ScaleDownLimit",
                        "the desired replica count is decreasing faster than the maximum scale rate",
                    ),
                )
            } else {
                (counts.min, too_few())
            };
            if counts.desired < floor {
                return (floor, why);
            }
        }
        (counts.desired, within_range())
    }
}

/// The most replicas a scale-up may reach: the rate `limit`, or `max` when that is lower,
/// with the reason that names which one holds.
fn ceiling(limit: i32, max: i32) -> (i32, Reason) {
    if max > limit {
        (
            limit,
            reason(
                "True",
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            ),
        )
    } else {
        (
            max,
            reason(
                "True",
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            ),
        )
    }
}

fn too_few() -> Reason {
    reason(
        "True",
        "TooFewReplicas",
        "the desired replica count is less than the minimum replica count",
    )
}

fn within_range() -> Reason {
    reason(
        "False",
        "DesiredWithinRange",
        "the desired count is within the acceptable range",
    )
}

/// Replicas changed by the events of the last `period_seconds`.
fn changed_within(events: &[(Timestamp, i32)], period_seconds: i32, now: Timestamp) -> i32 {
    let cutoff = since(now, seconds(Some(period_seconds)));
    events
        .iter()
        .filter(|(at, _)| *at > cutoff)
        .map(|(_, n)| n)
        .sum()
}

/// How far up the policies allow, counted from the replicas at each period's start.
fn scale_up_limit(
    current: i32,
    events: &[(Timestamp, i32)],
    rules: &HPAScalingRules,
    now: Timestamp,
) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let proposals = rules.policies.iter().flatten().map(|p| {
        let start = current - changed_within(events, p.period_seconds, now);
        if p.type_ == "Pods" {
            start + p.value
        } else {
            #[expect(clippy::cast_possible_truncation, reason = "replica counts are small")]
            let n = (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32;
            n
        }
    });
    if select == "Min" {
        proposals.min().unwrap_or(i32::MAX)
    } else {
        proposals.max().unwrap_or(i32::MIN)
    }
}

/// How far down the policies allow, counted from the replicas at each period's start.
fn scale_down_limit(
    current: i32,
    events: &[(Timestamp, i32)],
    rules: &HPAScalingRules,
    now: Timestamp,
) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let proposals = rules.policies.iter().flatten().map(|p| {
        let start = current + changed_within(events, p.period_seconds, now);
        if p.type_ == "Pods" {
            start - p.value
        } else {
            #[expect(clippy::cast_possible_truncation, reason = "replica counts are small")]
            let n = (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32;
            n
        }
    });
    // The policy that allows the biggest change is the lowest floor.
    if select == "Min" {
        proposals.max().unwrap_or(i32::MIN)
    } else {
        proposals.min().unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::autoscaling::v2::HPAScalingPolicy;

    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + second).unwrap()
    }

    fn counts(current: i32, desired: i32) -> Counts {
        Counts {
            min: 1,
            max: 10,
            current,
            desired,
        }
    }

    fn rules(window: Option<i32>, select: &str, policies: &[(&str, i32, i32)]) -> HPAScalingRules {
        HPAScalingRules {
            stabilization_window_seconds: window,
            select_policy: Some(select.into()),
            policies: Some(
                policies
                    .iter()
                    .map(|(t, v, p)| HPAScalingPolicy {
                        type_: (*t).into(),
                        value: *v,
                        period_seconds: *p,
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// The API's defaults: up at most 4 pods or 100 % per 15 s, down 100 % per 15 s.
    fn default_behavior(down_window: Option<i32>) -> HorizontalPodAutoscalerBehavior {
        HorizontalPodAutoscalerBehavior {
            scale_up: Some(rules(
                Some(0),
                "Max",
                &[("Pods", 4, 15), ("Percent", 100, 15)],
            )),
            scale_down: Some(rules(down_window, "Max", &[("Percent", 100, 15)])),
        }
    }

    #[test]
    fn a_scale_down_waits_for_the_highest_recommendation_of_the_window() {
        let mut h = History::starting_at(4, at(0));
        let b = default_behavior(None);
        let window = Duration::from_mins(5);
        let n = h.normalize(counts(4, 1), &b, window, at(10));
        assert_eq!(
            (n.replicas, n.able_to_scale.reason),
            (4, "ScaleDownStabilized")
        );
        // Once the recommendation of 4 is older than 300 s, the lowest recent one wins.
        let n = h.normalize(counts(4, 2), &b, window, at(301));
        assert_eq!(n.replicas, 2);
        assert_eq!(n.able_to_scale.reason, "ReadyForNewScale");
        let n = h.normalize(counts(2, 1), &b, window, at(400));
        assert_eq!(
            n.replicas, 2,
            "1 is stabilised by the 2 recommended at 301 s"
        );
    }

    #[test]
    fn a_short_scale_down_window_lets_the_count_fall_soon() {
        let mut h = History::starting_at(4, at(0));
        let b = default_behavior(Some(5));
        let n = h.normalize(counts(4, 1), &b, Duration::from_mins(5), at(6));
        assert_eq!(n.replicas, 1);
        assert_eq!(n.able_to_scale.reason, "ReadyForNewScale");
        assert_eq!(n.scaling_limited.status, "False");
    }

    #[test]
    fn scale_up_follows_the_policy_that_allows_more_within_the_period() {
        let mut h = History::starting_at(2, at(0));
        let mut b = default_behavior(None);
        b.scale_up = Some(rules(
            Some(0),
            "Max",
            &[("Pods", 1, 60), ("Percent", 50, 60)],
        ));
        let n = h.normalize(counts(2, 10), &b, Duration::from_mins(5), at(1));
        assert_eq!(n.replicas, 3);
        assert_eq!(n.scaling_limited.reason, "ScaleUpLimit");
        assert_eq!(n.scaling_limited.status, "True");
        h.rescaled(Some(&b), 2, 3, at(1));
        // Within the same 60 s period, the period started at 2: Percent 50 % of 2 -> 3.
        let n = h.normalize(counts(3, 10), &b, Duration::from_mins(5), at(30));
        assert_eq!(n.replicas, 3);
        // After the period, 50 % of 3 rounds up to 5.
        let n = h.normalize(counts(3, 10), &b, Duration::from_mins(5), at(62));
        assert_eq!(n.replicas, 5);
    }

    #[test]
    fn select_policy_min_takes_the_smallest_change_and_disabled_none() {
        let mut h = History::starting_at(10, at(0));
        let mut b = default_behavior(Some(0));
        b.scale_down = Some(rules(
            Some(0),
            "Min",
            &[("Pods", 2, 60), ("Percent", 50, 60)],
        ));
        let n = h.normalize(
            Counts {
                max: 20,
                ..counts(10, 1)
            },
            &b,
            Duration::ZERO,
            at(1),
        );
        assert_eq!(
            (n.replicas, n.scaling_limited.reason),
            (8, "ScaleDownLimit")
        );
        b.scale_down = Some(rules(Some(0), "Disabled", &[]));
        let n = h.normalize(
            Counts {
                max: 20,
                ..counts(10, 1)
            },
            &b,
            Duration::ZERO,
            at(2),
        );
        assert_eq!(n.replicas, 10);
    }

    #[test]
    fn the_bounds_limit_with_their_own_reasons() {
        let mut h = History::starting_at(3, at(0));
        let b = default_behavior(Some(0));
        let n = h.normalize(
            Counts {
                min: 2,
                max: 4,
                current: 3,
                desired: 9,
            },
            &b,
            Duration::ZERO,
            at(1),
        );
        assert_eq!(
            (n.replicas, n.scaling_limited.reason),
            (4, "TooManyReplicas")
        );
        let n = h.normalize(
            Counts {
                min: 2,
                max: 4,
                current: 3,
                desired: 1,
            },
            &b,
            Duration::ZERO,
            at(2),
        );
        assert_eq!(
            (n.replicas, n.scaling_limited.reason),
            (2, "TooFewReplicas")
        );
    }

    #[test]
    fn without_behavior_scale_up_at_most_doubles_and_down_waits_the_window() {
        let mut h = History::starting_at(3, at(0));
        let window = Duration::from_mins(5);
        let n = h.normalize_legacy(
            Counts {
                min: 1,
                max: 20,
                current: 3,
                desired: 10,
            },
            window,
            at(1),
        );
        assert_eq!((n.replicas, n.scaling_limited.reason), (6, "ScaleUpLimit"));
        let n = h.normalize_legacy(
            Counts {
                min: 1,
                max: 20,
                current: 6,
                desired: 1,
            },
            window,
            at(2),
        );
        assert_eq!(
            (n.replicas, n.able_to_scale.reason),
            (10, "ScaleDownStabilized")
        );
    }
}
