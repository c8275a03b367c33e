//! Kubernetes' defaulting (the `SetDefaults_*` functions) for the served kinds, so stored
//! objects look like the ones a Go apiserver stores.

use serde_json::{Map, Value, json};

use crate::ResourceInfo;

/// Sets `obj[key]` to `value` if absent or null.
fn or_set(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_owned(), value);
    }
}

fn object<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut cur = value;
    for key in path {
        cur = cur.get_mut(*key)?;
    }
    cur.as_object_mut()
}

/// Applies Kubernetes' defaults for `info`'s kind to `obj`.
pub fn apply(info: &ResourceInfo, obj: &mut Value) {
    match (info.group, info.kind) {
        ("", "Pod") => {
            if let Some(spec) = object(obj, &["spec"]) {
                pod_spec(spec, Some("Always"));
            }
        }
        ("", "Service") => {
            if let Some(spec) = object(obj, &["spec"]) {
                service(spec);
            }
        }
        ("", "Namespace") => {
            if let Some(o) = obj.as_object_mut() {
                or_set(o, "spec", json!({}));
                if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                    or_set(spec, "finalizers", json!(["kubernetes"]));
                }
                or_set(o, "status", json!({"phase": "Active"}));
            }
        }
        ("", "Secret") => {
            if let Some(o) = obj.as_object_mut() {
                or_set(o, "type", json!("Opaque"));
            }
        }
        ("apps", "Deployment") => workload(obj, |spec| {
            or_set(spec, "replicas", json!(1));
            or_set(spec, "revisionHistoryLimit", json!(10));
            or_set(spec, "progressDeadlineSeconds", json!(600));
            or_set(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
        }),
        ("apps", "ReplicaSet") => workload(obj, |spec| or_set(spec, "replicas", json!(1))),
        ("apps", "StatefulSet") => workload(obj, |spec| {
            or_set(spec, "replicas", json!(1));
            or_set(spec, "podManagementPolicy", json!("OrderedReady"));
            or_set(spec, "revisionHistoryLimit", json!(10));
            or_set(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
        }),
        ("apps", "DaemonSet") => workload(obj, |spec| {
            or_set(spec, "revisionHistoryLimit", json!(10));
            or_set(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
        }),
        ("batch", "Job") => {
            if let Some(spec) = object(obj, &["spec"]) {
                job(spec);
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = object(obj, &["spec"]) {
                or_set(spec, "concurrencyPolicy", json!("Allow"));
                or_set(spec, "suspend", json!(false));
                or_set(spec, "successfulJobsHistoryLimit", json!(3));
                or_set(spec, "failedJobsHistoryLimit", json!(1));
            }
            if let Some(spec) = object(obj, &["spec", "jobTemplate", "spec"]) {
                job(spec);
            }
        }
        _ => {}
    }
}

fn workload(obj: &mut Value, f: impl FnOnce(&mut Map<String, Value>)) {
    if let Some(spec) = object(obj, &["spec"]) {
        f(spec);
    }
    if let Some(pod) = object(obj, &["spec", "template", "spec"]) {
        pod_spec(pod, Some("Always"));
    }
}

fn job(spec: &mut Map<String, Value>) {
    or_set(spec, "parallelism", json!(1));
    if spec.get("completionMode").and_then(Value::as_str) != Some("Indexed") {
        or_set(spec, "completions", json!(1));
    }
    or_set(spec, "backoffLimit", json!(6));
    or_set(spec, "completionMode", json!("NonIndexed"));
    or_set(spec, "suspend", json!(false));
    if let Some(pod) = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("spec"))
        .and_then(Value::as_object_mut)
    {
        // Jobs have no default: validation asks for OnFailure or Never.
        pod_spec(pod, None);
    }
}

fn pod_spec(spec: &mut Map<String, Value>, restart: Option<&str>) {
    if let Some(restart) = restart {
        or_set(spec, "restartPolicy", json!(restart));
    }
    or_set(spec, "dnsPolicy", json!("ClusterFirst"));
    or_set(spec, "schedulerName", json!("default-scheduler"));
    or_set(spec, "terminationGracePeriodSeconds", json!(30));
    or_set(spec, "securityContext", json!({}));
    or_set(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    // The tag is after the last ':' that follows the last '/'.
    let tag = image
        .rsplit('/')
        .next()
        .and_then(|last| last.split('@').next())
        .and_then(|last| last.split_once(':').map(|(_, t)| t));
    let policy = if image.contains('@') || tag.is_some_and(|t| t != "latest") {
        "IfNotPresent"
    } else {
        "Always"
    };
    or_set(c, "imagePullPolicy", json!(policy));
    or_set(c, "terminationMessagePath", json!("/dev/termination-log"));
    or_set(c, "terminationMessagePolicy", json!("File"));
    or_set(c, "resources", json!({}));
    if let Some(Value::Array(ports)) = c.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            or_set(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            or_set(p, "timeoutSeconds", json!(1));
            or_set(p, "periodSeconds", json!(10));
            or_set(p, "successThreshold", json!(1));
            or_set(p, "failureThreshold", json!(3));
        }
    }
}

fn service(spec: &mut Map<String, Value>) {
    or_set(spec, "type", json!("ClusterIP"));
    or_set(spec, "sessionAffinity", json!("None"));
    or_set(spec, "internalTrafficPolicy", json!("Cluster"));
    or_set(spec, "ipFamilyPolicy", json!("SingleStack"));
    or_set(spec, "ipFamilies", json!(["IPv4"]));
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            or_set(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                or_set(p, "targetPort", port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::by_kind;

    #[test]
    fn deployment_defaults_match_the_go_apiserver() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "busybox:1.36", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "nginx"}
        ]}}}});
        apply(by_kind("apps/v1", "Deployment").unwrap(), &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["containers"][1]["imagePullPolicy"], "Always");
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            pod["containers"][0]["terminationMessagePath"],
            "/dev/termination-log"
        );
    }

    #[test]
    fn service_ports_default_their_target_port_and_protocol() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply(by_kind("v1", "Service").unwrap(), &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
    }

    #[test]
    fn explicit_values_are_never_overwritten() {
        let mut d = json!({"spec": {"replicas": 0, "template": {"spec": {"restartPolicy": "Never", "containers": []}}}});
        apply(by_kind("apps/v1", "Deployment").unwrap(), &mut d);
        assert_eq!(d["spec"]["replicas"], 0);
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Never");
    }

    #[test]
    fn a_registry_port_is_not_a_tag() {
        let mut c = json!({"image": "localhost:5000/busybox"})
            .as_object()
            .unwrap()
            .clone();
        container(&mut c);
        assert_eq!(c["imagePullPolicy"], "Always");
        let mut c = json!({"image": "localhost:5000/busybox:1"})
            .as_object()
            .unwrap()
            .clone();
        container(&mut c);
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    }
}
