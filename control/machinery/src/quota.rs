//! ResourceQuota arithmetic: which objects a quota resource name counts and how much each
//! uses, shared by quota admission in the API server and the quota controller.

use serde_json::Value;

use crate::quantity::parse_milli;

/// The (group, plural) of the objects a quota resource counts, or `None` when the name is
/// not understood (then it is ignored, as Kubernetes ignores unknown resources).
#[must_use]
pub fn counted_kind(resource: &str) -> Option<(String, String)> {
    let core = |plural: &str| Some((String::new(), plural.to_owned()));
    match resource {
        "pods"
        | "cpu"
        | "memory"
        | "requests.cpu"
        | "requests.memory"
        | "limits.cpu"
        | "limits.memory"
        | "requests.ephemeral-storage"
        | "limits.ephemeral-storage"
        | "ephemeral-storage" => core("pods"),
        "services"
        | "configmaps"
        | "secrets"
        | "resourcequotas"
        | "replicationcontrollers"
        | "persistentvolumeclaims"
        | "services.nodeports"
        | "services.loadbalancers" => core(resource.split('.').next().unwrap_or(resource)),
        other => {
            let rest = other.strip_prefix("count/")?;
            match rest.split_once('.') {
                Some((plural, group)) => Some((group.to_owned(), plural.to_owned())),
                None => core(rest),
            }
        }
    }
}

fn terminal_pod(obj: &Value) -> bool {
    matches!(
        obj.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

fn container_sum(obj: &Value, section: &str, name: &str) -> i64 {
    let sum = |list: Option<&Value>| -> i64 {
        list.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                let resources = c.get("resources");
                let direct = resources
                    .and_then(|r| r.get(section))
                    .and_then(|s| s.get(name));
                // A missing request defaults to the limit.
                let fallback = (section == "requests")
                    .then(|| {
                        resources
                            .and_then(|r| r.get("limits"))
                            .and_then(|s| s.get(name))
                    })
                    .flatten();
                direct
                    .or(fallback)
                    .and_then(Value::as_str)
                    .and_then(parse_milli)
                    .unwrap_or(0)
            })
            .sum()
    };
    let app = sum(obj.pointer("/spec/containers"));
    let init = obj
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| sum(Some(&Value::Array(vec![c.clone()]))))
        .max()
        .unwrap_or(0);
    app.max(init)
}

/// How much of `resource` one object uses, in milli-units (a count is 1000).
#[must_use]
pub fn usage(resource: &str, obj: &Value) -> i64 {
    let is_pod = obj.get("kind").and_then(Value::as_str) == Some("Pod");
    if is_pod && terminal_pod(obj) {
        return 0;
    }
    let (section, name) = match resource {
        "cpu" | "requests.cpu" => ("requests", "cpu"),
        "memory" | "requests.memory" => ("requests", "memory"),
        "ephemeral-storage" | "requests.ephemeral-storage" => ("requests", "ephemeral-storage"),
        "limits.cpu" => ("limits", "cpu"),
        "limits.memory" => ("limits", "memory"),
        "limits.ephemeral-storage" => ("limits", "ephemeral-storage"),
        "services.nodeports" => {
            let ports = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let node_port = matches!(
                obj.pointer("/spec/type").and_then(Value::as_str),
                Some("NodePort" | "LoadBalancer")
            );
            return if node_port {
                i64::try_from(ports).unwrap_or(0) * 1000
            } else {
                0
            };
        }
        "services.loadbalancers" => {
            let lb = obj.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer");
            return if lb { 1000 } else { 0 };
        }
        _ => return 1000,
    };
    if is_pod {
        container_sum(obj, section, name)
    } else {
        0
    }
}

/// A milli-unit amount as a quantity string (`2`, `500m`).
#[must_use]
pub fn format(milli: i64) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

/// A memory-like amount, kept readable (`1Gi`, `512Mi`) when it divides evenly.
#[must_use]
pub fn format_for(resource: &str, milli: i64) -> String {
    if resource.contains("memory") || resource.contains("storage") {
        let bytes = milli / 1000;
        for (unit, size) in [("Gi", 1_i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if bytes != 0 && bytes % size == 0 {
                return format!("{}{unit}", bytes / size);
            }
        }
        return bytes.to_string();
    }
    format(milli)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn resource_names_map_to_the_kinds_they_count() {
        assert_eq!(counted_kind("pods"), Some((String::new(), "pods".into())));
        assert_eq!(
            counted_kind("requests.cpu"),
            Some((String::new(), "pods".into()))
        );
        assert_eq!(
            counted_kind("count/deployments.apps"),
            Some(("apps".into(), "deployments".into()))
        );
        assert_eq!(
            counted_kind("count/configmaps"),
            Some((String::new(), "configmaps".into()))
        );
        assert_eq!(counted_kind("nonsense"), None);
    }

    #[test]
    fn pod_usage_sums_requests_and_finished_pods_use_nothing() {
        let pod = json!({"kind": "Pod", "spec": {"containers": [
            {"resources": {"requests": {"cpu": "250m"}}},
            {"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
        ]}});
        assert_eq!(usage("requests.cpu", &pod), 1250);
        assert_eq!(usage("limits.memory", &pod), (1 << 30) * 1000);
        assert_eq!(usage("pods", &pod), 1000);
        let mut done = pod.clone();
        done["status"] = json!({"phase": "Succeeded"});
        assert_eq!(usage("pods", &done), 0);
        assert_eq!(format_for("limits.memory", (1 << 30) * 1000), "1Gi");
        assert_eq!(format(1500), "1500m");
    }
}
