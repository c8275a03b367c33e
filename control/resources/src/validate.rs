//! Kind-specific validation on create and update, reporting causes as the Go apiserver
//! words them (metadata is checked by `skiff_machinery::validation`).

use serde_json::Value;
use skiff_machinery::{selector::LabelSelector, status::Cause, validation::dns1123_label};

use crate::ResourceInfo;

/// Validates a new object of `info`'s kind.
#[must_use]
pub fn create(info: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match (info.group, info.kind) {
        ("", "Pod") => pod_spec(spec, "spec", &["Always", "OnFailure", "Never"], &mut causes),
        ("", "Service") => service(spec, &mut causes),
        ("", "ConfigMap" | "Secret") => data_keys(obj, &mut causes),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            workload(spec, info.kind != "DaemonSet", &mut causes);
        }
        ("batch", "Job") => job(spec, "spec", &mut causes),
        ("batch", "CronJob") => {
            let schedule = spec.get("schedule").and_then(Value::as_str).unwrap_or("");
            if schedule.is_empty() {
                causes.push(Cause::required("spec.schedule"));
            } else if schedule.split_whitespace().count() != 5 && !schedule.starts_with('@') {
                causes.push(Cause::invalid(
                    "spec.schedule",
                    &Value::from(schedule),
                    "unparseable cron schedule: expected exactly 5 fields",
                ));
            }
            job(
                spec.pointer("/jobTemplate/spec").unwrap_or(&Value::Null),
                "spec.jobTemplate.spec",
                &mut causes,
            );
        }
        _ => {}
    }
    causes
}

/// Validates an update: the create rules plus the fields that may not change.
#[must_use]
pub fn update(info: &ResourceInfo, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = create(info, new);
    let changed = |pointer: &str| old.pointer(pointer) != new.pointer(pointer);
    match (info.group, info.kind) {
        ("apps", _) if changed("/spec/selector") => causes.push(Cause::invalid(
            "spec.selector",
            new.pointer("/spec/selector").unwrap_or(&Value::Null),
            "field is immutable",
        )),
        ("batch", "Job") if changed("/spec/selector") || changed("/spec/template") => {
            causes.push(Cause::invalid(
                "spec.template",
                new.pointer("/spec/template").unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
        ("", "Service") => {
            let old_ip = old.pointer("/spec/clusterIP").and_then(Value::as_str);
            let new_ip = new.pointer("/spec/clusterIP").and_then(Value::as_str);
            if old_ip.is_some_and(|ip| !ip.is_empty()) && new_ip != old_ip {
                causes.push(Cause::invalid(
                    "spec.clusterIP",
                    &Value::from(new_ip.unwrap_or("")),
                    "field is immutable",
                ));
            }
        }
        ("", "ConfigMap" | "Secret")
            if old.get("immutable") == Some(&Value::Bool(true))
                && (changed("/data") || changed("/binaryData")) =>
        {
            causes.push(Cause::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
        ("", "Pod") => {
            // Only images (and a few scheduling fields) of a pod may change.
            let mut old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
            let mut new_spec = new.get("spec").cloned().unwrap_or(Value::Null);
            for spec in [&mut old_spec, &mut new_spec] {
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
                    ] {
                        s.remove(mutable);
                    }
                }
            }
            if old_spec != new_spec {
                causes.push(Cause::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        _ => {}
    }
    causes
}

fn pod_spec(spec: &Value, at: &str, restart_allowed: &[&str], causes: &mut Vec<Cause>) {
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

fn workload(spec: &Value, allow_replicas: bool, causes: &mut Vec<Cause>) {
    if allow_replicas
        && let Some(replicas) = spec.get("replicas").and_then(Value::as_i64)
        && replicas < 0
    {
        causes.push(Cause::invalid(
            "spec.replicas",
            &Value::from(replicas),
            "must be greater than or equal to 0",
        ));
    }
    let selector = spec.get("selector");
    let labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object);
    match selector {
        None | Some(Value::Null) => causes.push(Cause::required("spec.selector")),
        Some(sel) => match LabelSelector::from_k8s(sel) {
            Ok(parsed) if parsed.is_empty() => causes.push(Cause::invalid(
                "spec.selector",
                sel,
                "empty selector is invalid for deployment",
            )),
            Ok(parsed) => {
                let labels = labels
                    .map(|l| {
                        l.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                if !parsed.matches(&labels) {
                    causes.push(Cause::invalid(
                        "spec.template.metadata.labels",
                        &Value::from(format_labels(&labels)),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            Err(e) => causes.push(Cause::invalid("spec.selector", sel, &e.to_string())),
        },
    }
    pod_spec(
        spec.pointer("/template/spec").unwrap_or(&Value::Null),
        "spec.template.spec",
        &["Always"],
        causes,
    );
}

fn format_labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("map[{}]", pairs.join(" "))
}

fn job(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    pod_spec(
        spec.pointer("/template/spec").unwrap_or(&Value::Null),
        &format!("{at}.template.spec"),
        &["OnFailure", "Never"],
        causes,
    );
    for field in ["parallelism", "completions", "backoffLimit"] {
        if let Some(n) = spec.get(field).and_then(Value::as_i64)
            && n < 0
        {
            causes.push(Cause::invalid(
                &format!("{at}.{field}"),
                &Value::from(n),
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn service(spec: &Value, causes: &mut Vec<Cause>) {
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let allowed = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !allowed.contains(&kind) {
        causes.push(Cause::not_supported(
            "spec.type",
            &Value::from(kind),
            &allowed,
        ));
    }
    let ports = spec.get("ports").and_then(Value::as_array);
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if kind != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
        causes.push(Cause::required("spec.ports"));
    }
    let ports = ports.map(Vec::as_slice).unwrap_or_default();
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        match p.get("port").and_then(Value::as_i64) {
            None => causes.push(Cause::required(&format!("{field}.port"))),
            Some(port) if !(1..=65535).contains(&port) => causes.push(Cause::invalid(
                &format!("{field}.port"),
                &Value::from(port),
                "must be between 1 and 65535, inclusive",
            )),
            Some(_) => {}
        }
        let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&protocol) {
            causes.push(Cause::not_supported(
                &format!("{field}.protocol"),
                &Value::from(protocol),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(&format!("{field}.name")));
        }
        if !name.is_empty() {
            if names.contains(&name) {
                causes.push(Cause::duplicate(
                    &format!("{field}.name"),
                    &Value::from(name),
                ));
            }
            names.push(name);
        }
    }
}

fn data_keys(obj: &Value, causes: &mut Vec<Cause>) {
    for field in ["data", "binaryData", "stringData"] {
        for key in obj
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys())
        {
            let ok = !key.is_empty()
                && key.len() <= 253
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                causes.push(Cause::invalid(
                    &format!("{field}[{key}]"),
                    &Value::from(key.as_str()),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::by_kind;

    fn deployment(labels: &Value, image: &str) -> Value {
        json!({"spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": labels}, "spec": {"restartPolicy": "Always",
                "containers": [{"name": "app", "image": image}]}}}})
    }

    #[test]
    fn a_selector_that_misses_the_template_labels_is_invalid() {
        let info = by_kind("apps/v1", "Deployment").unwrap();
        assert!(create(info, &deployment(&json!({"app": "web"}), "x")).is_empty());
        let causes = create(info, &deployment(&json!({"app": "db"}), "x"));
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
        assert!(
            causes[0]
                .message
                .contains("`selector` does not match template `labels`")
        );
    }

    #[test]
    fn containers_need_a_name_and_an_image() {
        let info = by_kind("v1", "Pod").unwrap();
        let causes = create(
            info,
            &json!({"spec": {"containers": [{"name": "a"}, {"image": "x"}]}}),
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.containers[0].image", "spec.containers[1].name"]
        );
    }

    #[test]
    fn selectors_are_immutable() {
        let info = by_kind("apps/v1", "Deployment").unwrap();
        let old = deployment(&json!({"app": "web"}), "x");
        let mut new = old.clone();
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "v": "2"}});
        new["spec"]["template"]["metadata"]["labels"]["v"] = json!("2");
        assert!(
            update(info, &old, &new)
                .iter()
                .any(|c| c.message.contains("immutable"))
        );
        let mut image_only = old.clone();
        image_only["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        assert!(update(info, &old, &image_only).is_empty());
    }

    #[test]
    fn pod_specs_may_only_change_images() {
        let info = by_kind("v1", "Pod").unwrap();
        let old = json!({"spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "x"}]}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("y");
        assert!(update(info, &old, &new).is_empty());
        new["spec"]["containers"][0]["command"] = json!(["sh"]);
        assert_eq!(update(info, &old, &new)[0].reason, "FieldValueForbidden");
    }

    #[test]
    fn service_ports_are_checked() {
        let info = by_kind("v1", "Service").unwrap();
        let causes = create(
            info,
            &json!({"spec": {"ports": [{"port": 0}, {"port": 80, "protocol": "ICMP"}]}}),
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.ports[0].port"));
        assert!(fields.contains(&"spec.ports[1].protocol"));
        assert!(fields.contains(&"spec.ports[0].name"));
    }

    #[test]
    fn jobs_refuse_restart_always() {
        let info = by_kind("batch/v1", "Job").unwrap();
        let causes = create(
            info,
            &json!({"spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "x"}]}}}}),
        );
        assert_eq!(causes[0].reason, "FieldValueNotSupported");
    }
}
