//! Pod Security Admission: pods are held to their namespace's `pod-security.kubernetes.io`
//! levels (enforce refuses, warn warns, audit is logged), workload pod templates are warned
//! about but never refused, and a namespace whose enforce level changes is told which of
//! its pods would now fail, all as Kubernetes' `PodSecurity` admission plugin does.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Value, json};
use skiff_machinery::status::{Cause, StatusError};
use skiff_resources::ResourceInfo;

use crate::{
    ctx::Ctx,
    http::Query,
    objects,
    podsecurity::{self, Level, LevelVersion, Policy, Violation},
    verbs::read,
};

/// Where a kind keeps the pod template it creates pods from.
fn template_pointer(info: &ResourceInfo) -> Option<&'static str> {
    match (info.group, info.kind) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => Some("/spec/template"),
        ("batch", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Admits a create (`old` is `None`) or update of `new`; returns the warnings for the
/// response.
///
/// # Errors
/// 403 when a pod violates its namespace's enforce level; store errors reading the
/// namespace or its pods.
pub async fn admit(
    ctx: &Ctx,
    info: &ResourceInfo,
    old: Option<&Value>,
    new: &Value,
) -> Result<Vec<String>, StatusError> {
    match (info.group, info.kind) {
        ("", "Namespace") => {
            check_labels(info, new)?;
            match old {
                Some(old) => namespace_changed(ctx, old, new).await,
                None => Ok(Vec::new()),
            }
        }
        ("", "Pod") => {
            // Writes that leave the spec alone (status, labels, finalizers) are not
            // re-checked, so a pod admitted before a namespace tightened still reports.
            if old.is_some_and(|old| !pod_changed(old, new)) {
                return Ok(Vec::new());
            }
            let policy = namespace_policy(ctx, new).await?;
            pod(info, &policy, new)
        }
        _ => {
            let Some(pointer) = template_pointer(info) else {
                return Ok(Vec::new());
            };
            let Some(template) = new.pointer(pointer) else {
                return Ok(Vec::new());
            };
            if old.is_some_and(|old| old.pointer(pointer) == Some(template)) {
                return Ok(Vec::new());
            }
            let policy = namespace_policy(ctx, new).await?;
            Ok(workload(info, &policy, new, template))
        }
    }
}

/// Refuses a namespace whose `pod-security.kubernetes.io` labels do not parse, with 422
/// as Kubernetes does.
fn check_labels(info: &ResourceInfo, ns: &Value) -> Result<(), StatusError> {
    let errors = podsecurity::label_errors(&string_map(ns.pointer("/metadata/labels")));
    if errors.is_empty() {
        return Ok(());
    }
    let causes = errors
        .into_iter()
        .map(|(label, value, why)| {
            Cause::invalid(&format!("metadata.labels[{label}]"), &json!(value), why)
        })
        .collect();
    Err(StatusError::invalid(
        info.group,
        info.kind,
        objects::name_of(ns),
        causes,
    ))
}

/// Whether an update touches what the checks read. As in Kubernetes, changing only
/// images, `activeDeadlineSeconds` or tolerations does not count, so a pod admitted before
/// its namespace tightened can still take them.
fn pod_changed(old: &Value, new: &Value) -> bool {
    significant(old) != significant(new) || apparmor(old) != apparmor(new)
}

fn significant(pod: &Value) -> Value {
    let mut spec = pod.get("spec").cloned().unwrap_or_default();
    if let Some(s) = spec.as_object_mut() {
        s.remove("activeDeadlineSeconds");
        s.remove("tolerations");
        for list in ["containers", "initContainers"] {
            for c in s
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(c) = c.as_object_mut() {
                    c.remove("image");
                }
            }
        }
    }
    spec
}

fn apparmor(pod: &Value) -> BTreeMap<String, String> {
    annotations(pod)
        .into_iter()
        .filter(|(k, _)| k.starts_with("container.apparmor.security.beta.kubernetes.io/"))
        .collect()
}

fn annotations(obj: &Value) -> BTreeMap<String, String> {
    string_map(obj.pointer("/metadata/annotations"))
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

async fn namespace_policy(ctx: &Ctx, obj: &Value) -> Result<Policy, StatusError> {
    let namespace = objects::namespace_of(obj).unwrap_or("");
    let ns_info = skiff_resources::by_kind("v1", "Namespace")
        .ok_or_else(|| StatusError::internal("namespaces are not served"))?;
    let (ns, _) = super::read::fetch_recent(ctx, ns_info, None, namespace).await?;
    Ok(Policy::from_labels(&string_map(
        ns.pointer("/metadata/labels"),
    )))
}

/// The violations of the pod (or template) `obj` at `level`. Validation refuses a spec
/// that does not decode before this runs; should one get here it fails the check rather
/// than pass unchecked.
fn violations(level: Level, obj: &Value) -> Vec<Violation> {
    if level == Level::Privileged {
        return Vec::new();
    }
    match serde_json::from_value::<PodSpec>(obj.get("spec").cloned().unwrap_or_default()) {
        Ok(spec) => podsecurity::check(level, &annotations(obj), &spec),
        Err(err) => vec![Violation {
            reason: "spec".to_owned(),
            detail: format!("cannot be checked: {err}"),
        }],
    }
}

fn would_violate(level: &LevelVersion, violations: &[Violation]) -> String {
    format!(
        "would violate PodSecurity {}",
        podsecurity::describe(level, violations)
    )
}

fn audit(info: &ResourceInfo, obj: &Value, level: &LevelVersion) {
    let found = violations(level.level, obj);
    if !found.is_empty() {
        // Kubernetes records this as the audit annotation
        // `pod-security.kubernetes.io/audit-violations`; until skiff has an audit log it
        // goes to the API server's log under the `audit` target.
        tracing::info!(
            target: "audit",
            kind = info.kind,
            namespace = objects::namespace_of(obj).unwrap_or(""),
            name = objects::name_of(obj),
            violations = %would_violate(level, &found),
            "pod-security.kubernetes.io/audit-violations"
        );
    }
}

fn pod(info: &ResourceInfo, policy: &Policy, obj: &Value) -> Result<Vec<String>, StatusError> {
    if policy.is_privileged() {
        return Ok(Vec::new());
    }
    let enforced = violations(policy.enforce.level, obj);
    if !enforced.is_empty() {
        return Err(StatusError::forbidden(format!(
            "{} {:?} is forbidden: violates PodSecurity {}",
            info.plural,
            objects::name_of(obj),
            podsecurity::describe(&policy.enforce, &enforced)
        )));
    }
    audit(info, obj, &policy.audit);
    let warned = violations(policy.warn.level, obj);
    Ok(if warned.is_empty() {
        Vec::new()
    } else {
        vec![would_violate(&policy.warn, &warned)]
    })
}

/// A workload's template is held to the enforce and warn levels as warnings only: its
/// pods are refused when they are created, not the workload.
fn workload(info: &ResourceInfo, policy: &Policy, obj: &Value, template: &Value) -> Vec<String> {
    if policy.is_privileged() {
        return Vec::new();
    }
    let mut warnings = Vec::new();
    let mut levels = vec![&policy.enforce];
    if policy.warn != policy.enforce {
        levels.push(&policy.warn);
    }
    for level in levels {
        let found = violations(level.level, template);
        if !found.is_empty() {
            warnings.push(would_violate(level, &found));
        }
    }
    let found = violations(policy.audit.level, template);
    if !found.is_empty() {
        tracing::info!(
            target: "audit",
            kind = info.kind,
            namespace = objects::namespace_of(obj).unwrap_or(""),
            name = objects::name_of(obj),
            violations = %would_violate(&policy.audit, &found),
            "pod-security.kubernetes.io/audit-violations"
        );
    }
    warnings
}

/// When a namespace's enforce level changes, the warnings naming its pods that the new
/// level would refuse.
async fn namespace_changed(
    ctx: &Ctx,
    old: &Value,
    new: &Value,
) -> Result<Vec<String>, StatusError> {
    let before = Policy::from_labels(&string_map(old.pointer("/metadata/labels")));
    let after = Policy::from_labels(&string_map(new.pointer("/metadata/labels")));
    if after.enforce == before.enforce || after.enforce.level == Level::Privileged {
        return Ok(Vec::new());
    }
    let Some(pod_info) = skiff_resources::by_kind("v1", "Pod") else {
        return Ok(Vec::new());
    };
    let namespace = objects::name_of(new);
    let pods = read::list_objects(ctx, pod_info, Some(namespace), &Query::default()).await?;
    let mut checked: Vec<(String, Vec<Violation>)> = pods
        .items
        .iter()
        .map(|p| {
            (
                objects::name_of(p).to_owned(),
                violations(after.enforce.level, p),
            )
        })
        .collect();
    checked.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(podsecurity::existing_pod_warnings(
        namespace,
        &after.enforce,
        &checked,
    ))
}
