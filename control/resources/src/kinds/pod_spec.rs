//! Pod specs, wherever they appear (pods and the templates of workloads and jobs): their
//! defaults and their validation.

use serde_json::{Map, Value, json};
use skiff_machinery::{status::Cause, validation::dns1123_label};

use super::{object, or_set};

/// The restart policies a bare pod may have.
pub const ANY_RESTART: &[&str] = &["Always", "OnFailure", "Never"];
/// The restart policy of pods a controller keeps running.
pub const ALWAYS: &[&str] = &["Always"];
/// The restart policies of pods that run to completion.
pub const TO_COMPLETION: &[&str] = &["OnFailure", "Never"];

/// Defaults the pod template at `spec.template` (and its pod spec).
pub fn default_template(obj: &mut Value, restart: Option<&str>) {
    if let Some(pod) = object(obj, &["spec", "template", "spec"]) {
        default(pod, restart);
    }
}

/// Kubernetes' pod spec defaults; `restart` is the default restart policy, if the owner has
/// one (Jobs have none: validation asks for OnFailure or Never).
pub fn default(spec: &mut Map<String, Value>, restart: Option<&str>) {
    if let Some(restart) = restart {
        or_set(spec, "restartPolicy", json!(restart));
    }
    or_set(spec, "dnsPolicy", json!("ClusterFirst"));
    or_set(spec, "schedulerName", json!("default-scheduler"));
    or_set(spec, "terminationGracePeriodSeconds", json!(30));
    or_set(spec, "securityContext", json!({}));
    or_set(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers", "ephemeralContainers"] {
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

/// Validates the pod spec at `at` (a field path such as `spec.template.spec`).
pub fn validate(spec: &Value, at: &str, restart_allowed: &[&str], causes: &mut Vec<Cause>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(&format!("{at}.containers")));
    }
    let mut names = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let field = format!("{at}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(&format!("{field}.name"))),
                Some(name) => {
                    for e in dns1123_label(name) {
                        causes.push(Cause::invalid(
                            &format!("{field}.name"),
                            &Value::from(name),
                            &e,
                        ));
                    }
                    if names.contains(&name) {
                        causes.push(Cause::duplicate(
                            &format!("{field}.name"),
                            &Value::from(name),
                        ));
                    }
                    names.push(name);
                }
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                causes.push(Cause::required(&format!("{field}.image")));
            }
            for (j, p) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push(Cause::invalid(
                        &format!("{field}.ports[{j}].containerPort"),
                        &Value::from(port),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !restart_allowed.contains(&policy) {
            causes.push(Cause::not_supported(
                &format!("{at}.restartPolicy"),
                &Value::from(policy),
                restart_allowed,
            ));
        }
    } else if !restart_allowed.contains(&"Always") {
        causes.push(Cause::required(&format!("{at}.restartPolicy")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn containers_need_a_name_and_an_image() {
        let mut causes = Vec::new();
        validate(
            &json!({"containers": [{"name": "a"}, {"image": "x"}]}),
            "spec",
            ANY_RESTART,
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.containers[0].image", "spec.containers[1].name"]
        );
    }
}
