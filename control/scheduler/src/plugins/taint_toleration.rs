//! `TaintToleration`: NoSchedule and NoExecute taints keep out pods that do not tolerate
//! them; PreferNoSchedule taints only lower a node's score.

use k8s_openapi::api::core::v1::Toleration;
pub use skiff_control_runtime::placement::tolerates;

use crate::{
    cache::NodeInfo,
    framework::{CycleState, FilterPlugin, ScorePlugin, Unfit, default_normalize},
    pod_info::PodInfo,
};

/// The pod's tolerations.
#[must_use]
pub fn tolerations(pod: &PodInfo) -> &[Toleration] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

/// The `TaintToleration` filter and score.
#[derive(Debug)]
pub struct TaintToleration;

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        let tolerations = tolerations(pod);
        let untolerated = node
            .taints()
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)));
        match untolerated {
            Some(t) => Err(Unfit::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            ))),
            None => Ok(()),
        }
    }
}

impl ScorePlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    /// Counts the PreferNoSchedule taints the pod does not tolerate (fewer is better).
    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let tolerations = tolerations(pod);
        let count = node
            .taints()
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
            .count();
        i64::try_from(count).unwrap_or(i64::MAX)
    }

    /// Reversed: the node with the most intolerable taints gets 0.
    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Taint;

    use super::*;
    use crate::plugins::testing::{cache, info, node, pod};

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            time_added: None,
        }
    }

    #[test]
    fn untolerated_no_schedule_taints_refuse_and_tolerations_admit() {
        let mut n = node("n1", "4", "8Gi", &[]);
        n.spec.as_mut().unwrap().taints = Some(vec![taint("dedicated", "gpu", "NoSchedule")]);
        let c = cache(vec![n]);
        let state = CycleState::default();
        let plain = info(pod("p", "1", &[]));
        let err = TaintToleration
            .filter(&plain, c.node("n1").unwrap(), &state)
            .unwrap_err();
        assert_eq!(
            err.reasons,
            ["node(s) had untolerated taint {dedicated: gpu}"]
        );
        let mut tolerant = pod("q", "1", &[]);
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("gpu".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        }]);
        assert!(
            TaintToleration
                .filter(&info(tolerant), c.node("n1").unwrap(), &state)
                .is_ok()
        );
    }

    #[test]
    fn no_execute_taints_refuse_too() {
        let mut n = node("n1", "4", "8Gi", &[]);
        n.spec.as_mut().unwrap().taints = Some(vec![taint("evict", "now", "NoExecute")]);
        let c = cache(vec![n]);
        assert!(
            TaintToleration
                .filter(
                    &info(pod("p", "1", &[])),
                    c.node("n1").unwrap(),
                    &CycleState::default()
                )
                .is_err()
        );
    }

    #[test]
    fn exists_without_key_tolerates_everything() {
        let tol = Toleration {
            operator: Some("Exists".into()),
            ..Toleration::default()
        };
        assert!(tolerates(&tol, &taint("a", "b", "NoExecute")));
    }

    #[test]
    fn prefer_no_schedule_only_lowers_the_score() {
        let mut n = node("n1", "4", "8Gi", &[]);
        n.spec.as_mut().unwrap().taints = Some(vec![taint("x", "y", "PreferNoSchedule")]);
        let c = cache(vec![n, node("n2", "4", "8Gi", &[])]);
        let state = CycleState::default();
        let p = info(pod("p", "1", &[]));
        assert!(
            TaintToleration
                .filter(&p, c.node("n1").unwrap(), &state)
                .is_ok()
        );
        let mut scores = vec![
            TaintToleration.score(&p, c.node("n1").unwrap(), &state),
            TaintToleration.score(&p, c.node("n2").unwrap(), &state),
        ];
        ScorePlugin::normalize(&TaintToleration, &mut scores);
        assert_eq!(scores, [0, 100]);
    }
}
