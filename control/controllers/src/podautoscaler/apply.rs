//! What the autoscaler reads and writes over the API: the target's `scale`, the pods'
//! usage from `metrics.k8s.io`, the rescale, events and status.

use std::{collections::BTreeMap, sync::PoisonError, time::Duration};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use skiff_control_runtime::{events::EventType, status};
use skiff_machinery::quantity::parse_milli;

use super::{
    Ctx,
    plan::{Plan, PodUsage, ScaleView},
};
use crate::{Error, kinds};

/// The API of the autoscaler's target kind.
fn target_api(
    ctx: &Ctx,
    hpa: &HorizontalPodAutoscaler,
) -> Result<(Api<DynamicObject>, String), String> {
    let spec = hpa.spec.clone().unwrap_or_default();
    let target = spec.scale_target_ref;
    let kind = target
        .api_version
        .as_deref()
        .and_then(|v| kinds::find(v, &target.kind))
        .or_else(|| {
            kinds::all()
                .into_iter()
                .find(|k| k.resource.kind == target.kind)
        })
        .ok_or_else(|| format!("no matches for kind {:?} in the served API", target.kind))?;
    let api = Api::namespaced_with(
        ctx.client.clone(),
        &hpa.namespace().unwrap_or_default(),
        &kind.resource,
    );
    Ok((api, target.name))
}

/// The target's scale.
///
/// # Errors
/// Why it could not be read, as the `FailedGetScale` event says.
pub async fn scale(ctx: &Ctx, hpa: &HorizontalPodAutoscaler) -> Result<ScaleView, String> {
    let (api, name) = target_api(ctx, hpa)?;
    let scale = api.get_scale(&name).await.map_err(|e| api_message(&e))?;
    Ok(ScaleView {
        spec_replicas: scale.spec.and_then(|s| s.replicas).unwrap_or(0),
        selector: scale.status.and_then(|s| s.selector).unwrap_or_default(),
    })
}

/// The API server's message for a refused request, else the error.
fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// A Go duration as the metrics API writes windows (`1s`, `1m30s`, `500ms`); zero when
/// unreadable.
fn window(text: &str) -> Duration {
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let letters = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(letters);
        let n: f64 = number.parse().unwrap_or(0.0);
        total += n * match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "\u{b5}s" => 1e-6,
            "ns" => 1e-9,
            _ => return Duration::ZERO,
        };
        rest = tail;
    }
    Duration::try_from_secs_f64(total).unwrap_or_default()
}

/// The usage of the pods `selector` matches in `ns`, by pod name.
///
/// # Errors
/// Why the metrics API did not answer.
pub async fn usage(
    ctx: &Ctx,
    ns: &str,
    selector: &str,
) -> Result<BTreeMap<String, PodUsage>, String> {
    let resource = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| api_message(&e))?;
    Ok(list
        .items
        .into_iter()
        .map(|m| {
            let name = m.name_any();
            (name, pod_usage(&m.data))
        })
        .collect())
}

/// One `PodMetrics` object's readings.
fn pod_usage(data: &Value) -> PodUsage {
    let containers = data["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let usage = c["usage"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(r, q)| Some((r.clone(), parse_milli(q.as_str()?)?)))
                .collect();
            (c["name"].as_str().unwrap_or_default().to_owned(), usage)
        })
        .collect();
    PodUsage {
        at: data["timestamp"].as_str().and_then(|t| t.parse().ok()),
        window: window(data["window"].as_str().unwrap_or("")),
        containers,
    }
}

/// Carries out `plan` for `hpa` (`key` is its `namespace/name`).
///
/// # Errors
/// When the API server refuses the status write.
pub async fn apply(
    ctx: &Ctx,
    hpa: &HorizontalPodAutoscaler,
    key: &str,
    mut plan: Plan,
) -> Result<(), Error> {
    let now = ctx.clock.now();
    if let Some(rescale) = plan.rescale.clone() {
        let written = match target_api(ctx, hpa) {
            Ok((api, name)) => api
                .patch_scale(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": rescale.to}})),
                )
                .await
                .map(|_| ())
                .map_err(|e| api_message(&e)),
            Err(err) => Err(err),
        };
        match written {
            Ok(()) => {
                tracing::info!(hpa = key, from = rescale.from, to = rescale.to, reason = %rescale.reason, "rescaled");
                plan.rescaled(now);
                let behavior = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref());
                if let Some(history) = ctx
                    .state
                    .histories
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_mut(key)
                {
                    history.rescaled(behavior, rescale.from, rescale.to, now);
                }
            }
            Err(err) => plan.rescale_failed(hpa.status.as_ref(), &err, now),
        }
    }
    for (kind, reason, message) in &plan.events {
        match kind {
            EventType::Normal => ctx.recorder.normal(hpa, reason, message).await,
            EventType::Warning => ctx.recorder.warning(hpa, reason, message).await,
        }
    }
    let api: Api<HorizontalPodAutoscaler> =
        Api::namespaced(ctx.client.clone(), &hpa.namespace().unwrap_or_default());
    status::write(&api, &hpa.name_any(), hpa.status.as_ref(), &plan.status).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_windows_read_as_go_durations() {
        assert_eq!(window("1s"), Duration::from_secs(1));
        assert_eq!(window("1m30s"), Duration::from_secs(90));
        assert_eq!(window("500ms"), Duration::from_millis(500));
        assert_eq!(window("soon"), Duration::ZERO);
    }

    #[test]
    fn pod_metrics_are_read_per_container_in_milli_units() {
        let u = pod_usage(&json!({
            "timestamp": "2026-01-01T00:00:00Z",
            "window": "1s",
            "containers": [{"name": "c", "usage": {"cpu": "250000000n", "memory": "1Ki"}}],
        }));
        assert_eq!(u.containers["c"]["cpu"], 250);
        assert_eq!(u.containers["c"]["memory"], 1_024_000);
        assert_eq!(u.window, Duration::from_secs(1));
        assert!(u.at.is_some());
    }
}
