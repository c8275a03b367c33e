//! Pod: spec defaults, a status that starts Pending with the pod's `QoS` class, a spec that
//! only changes images once created, graceful deletion of pods bound to a node (the node
//! removes them), and kubectl's READY / STATUS / RESTARTS columns.

use serde_json::{Value, json};
use skiff_machinery::{quantity::parse_milli, status::Cause};

use super::{object, pod_spec};
use crate::{
    Deletion, Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `v1/Pod`.
#[derive(Debug)]
pub struct Pod;

/// The grace period of a pod that names none.
const DEFAULT_GRACE_SECONDS: i64 = 30;

const COLUMNS: &[Column] = &[
    NAME,
    col(
        "Ready",
        "string",
        0,
        "The aggregate readiness state of this pod for accepting traffic.",
    ),
    col(
        "Status",
        "string",
        0,
        "The aggregate status of the containers in this pod.",
    ),
    col(
        "Restarts",
        "string",
        0,
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    AGE,
    col(
        "IP",
        "string",
        1,
        "IP address allocated to the pod. Routable at least within the cluster.",
    ),
    col(
        "Node",
        "string",
        1,
        "NodeName is a request to schedule this pod onto a specific node.",
    ),
    col(
        "Nominated Node",
        "string",
        1,
        "nominatedNodeName is set only when this pod preempts other pods on the node.",
    ),
    col(
        "Readiness Gates",
        "string",
        1,
        "If specified, all readiness gates will be evaluated for pod readiness.",
    ),
];

/// The pod's `QoS` class, as Kubernetes' `GetPodQOS` computes it from the cpu and memory
/// requests and limits of its containers (a request left out counts as its limit, which
/// Kubernetes' defaulting copies in).
fn qos_class(spec: &Value) -> &'static str {
    const COMPUTE: [&str; 2] = ["cpu", "memory"];
    let mut any = false;
    let mut guaranteed = true;
    for c in ["initContainers", "containers"]
        .iter()
        .filter_map(|list| spec.get(*list).and_then(Value::as_array))
        .flatten()
    {
        let quantity = |kind: &str, resource: &str| {
            c.pointer(&format!("/resources/{kind}/{resource}"))
                .and_then(Value::as_str)
                .and_then(parse_milli)
                .filter(|q| *q > 0)
        };
        for resource in COMPUTE {
            let limit = quantity("limits", resource);
            let request = quantity("requests", resource).or(limit);
            any |= request.is_some() || limit.is_some();
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Which pod fields may change after create: the images, and a few scheduling fields.
fn without_mutable_fields(spec: &Value) -> Value {
    let mut spec = spec.clone();
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                c.remove("image");
            }
        }
    }
    if let Some(s) = spec.as_object_mut() {
        for mutable in [
            "activeDeadlineSeconds",
            "tolerations",
            "terminationGracePeriodSeconds",
            "nodeName",
            "schedulingGates",
            // Changed through the ephemeralcontainers subresource only, under its own rules.
            "ephemeralContainers",
        ] {
            s.remove(mutable);
        }
    }
    spec
}

/// What is wrong with an update of a pod's ephemeral containers (Go's
/// `ValidatePodEphemeralContainersUpdate`): they may only be added, each with a name no
/// other container of the pod has and an image, never changed or removed.
#[must_use]
pub fn ephemeral_container_changes(old: &Value, new: &Value) -> Vec<Cause> {
    let list = |o: &Value| {
        o.pointer("/spec/ephemeralContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (before, after) = (list(old), list(new));
    let mut causes = Vec::new();
    for (i, was) in before.iter().enumerate() {
        if !after.iter().any(|c| c == was) {
            causes.push(Cause::forbidden(
                &format!("spec.ephemeralContainers[{i}]"),
                "existing ephemeral containers may not be changed",
            ));
        }
    }
    let mut names: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| {
            new.pointer(&format!("/spec/{l}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|c| c["name"].as_str())
        .collect();
    for (i, c) in after.iter().enumerate() {
        let field = format!("spec.ephemeralContainers[{i}]");
        let name = c["name"].as_str().unwrap_or("");
        if name.is_empty() {
            causes.push(Cause::required(&format!("{field}.name")));
        } else if names.contains(&name) {
            causes.push(Cause::duplicate(&format!("{field}.name"), &json!(name)));
        }
        names.push(name);
        if c["image"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required(&format!("{field}.image")));
        }
    }
    causes
}

impl Strategy for Pod {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = object(obj, &["spec"]) {
            pod_spec::default(spec, Some("Always"));
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
        if let Some(o) = obj.as_object_mut() {
            o.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": qos}),
            );
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        pod_spec::validate(
            obj.get("spec").unwrap_or(&Value::Null),
            "spec",
            pod_spec::ANY_RESTART,
            &mut causes,
        );
        causes
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        let spec = |o: &Value| without_mutable_fields(o.get("spec").unwrap_or(&Value::Null));
        if spec(old) != spec(new) {
            causes.push(Cause::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            ));
        }
        causes
    }

    fn deletion(&self, obj: &mut Value, grace: Option<i64>) -> Deletion {
        // A bound pod is stopped by its node, which deletes it with grace 0 when done.
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let grace = grace.unwrap_or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(DEFAULT_GRACE_SECONDS)
        });
        if bound && grace > 0 {
            Deletion::Graceful(grace)
        } else {
            Deletion::Immediate
        }
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let statuses = o
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let total = o
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let ready = statuses
            .iter()
            .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
            .count();
        let restarts: i64 = statuses
            .iter()
            .map(|s| table::int(s, "/restartCount"))
            .sum();
        let last_restart = statuses
            .iter()
            .filter_map(|s| {
                s.pointer("/lastState/terminated/finishedAt")
                    .and_then(Value::as_str)
            })
            .max();
        let restarts = match last_restart {
            Some(t) if restarts > 0 => format!("{restarts} ({} ago)", table::since(t, now)),
            _ => restarts.to_string(),
        };
        let mut status = o
            .pointer("/status/reason")
            .and_then(Value::as_str)
            .unwrap_or_else(|| table::text(o, "/status/phase"))
            .to_owned();
        if status.is_empty() {
            status = "Pending".into();
        }
        for s in statuses.iter().rev() {
            if let Some(reason) = s.pointer("/state/waiting/reason").and_then(Value::as_str) {
                reason.clone_into(&mut status);
            } else if let Some(reason) = s
                .pointer("/state/terminated/reason")
                .and_then(Value::as_str)
            {
                reason.clone_into(&mut status);
            }
        }
        if o.pointer("/metadata/deletionTimestamp").is_some() {
            status = "Terminating".into();
        }
        let or_none = |pointer: &str| {
            table::or_none(
                o.pointer(pointer)
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            )
        };
        vec![
            table::name(o),
            json!(format!("{ready}/{total}")),
            json!(status),
            json!(restarts),
            table::age(o, now),
            or_none("/status/podIP"),
            or_none("/spec/nodeName"),
            or_none("/status/nominatedNodeName"),
            json!("<none>"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_specs_may_only_change_images() {
        let old = json!({"spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "x"}]}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("y");
        assert!(Pod.validate_update(&old, &new).is_empty());
        new["spec"]["containers"][0]["command"] = json!(["sh"]);
        assert_eq!(
            Pod.validate_update(&old, &new)[0].reason,
            "FieldValueForbidden"
        );
    }

    #[test]
    fn the_qos_class_follows_requests_and_limits() {
        let pod = |resources: Value| json!({"containers": [{"name": "a", "resources": resources}]});
        assert_eq!(qos_class(&pod(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&pod(json!({"requests": {"cpu": "100m"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&pod(json!({"limits": {"cpu": "1", "memory": "64Mi"}}))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(
                json!({"limits": {"cpu": "1", "memory": "64Mi"}, "requests": {"cpu": "500m"}})
            )),
            "Burstable"
        );
    }

    #[test]
    fn only_bound_pods_are_deleted_gracefully() {
        let mut unbound = json!({"spec": {"terminationGracePeriodSeconds": 10}});
        assert_eq!(Pod.deletion(&mut unbound, None), Deletion::Immediate);
        let mut bound = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 10}});
        assert_eq!(Pod.deletion(&mut bound, None), Deletion::Graceful(10));
        assert_eq!(Pod.deletion(&mut bound, Some(0)), Deletion::Immediate);
        let mut defaulted = json!({"spec": {"nodeName": "n1"}});
        assert_eq!(Pod.deletion(&mut defaulted, None), Deletion::Graceful(30));
    }

    #[test]
    fn a_new_pod_starts_pending() {
        let mut p =
            json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running"}});
        Pod.prepare_for_create(&mut p);
        assert_eq!(
            p["status"],
            json!({"phase": "Pending", "qosClass": "BestEffort"})
        );
    }
}
