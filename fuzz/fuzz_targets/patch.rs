//! The patch formats a client sends to PATCH (JSON patch, merge patch, strategic merge
//! patch) and server-side apply, each applied to a fixed live object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use skiff_machinery::{apply, patch};

fn live(which: u8) -> Value {
    match which % 3 {
        0 => json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                    "apiVersion": "v1", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                            ".": {}, "f:image": {}, "f:name": {}}}}}}]},
            "spec": {"containers": [{"name": "web", "image": "nginx",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "env": [{"name": "A", "value": "1"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "tolerations": [{"key": "k", "operator": "Exists"}]},
        }),
        1 => json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default",
                "annotations": {"a": "b"}, "finalizers": ["x"]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
        }),
        _ => json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"},
                "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let [which, how, body @ ..] = data else {
        return;
    };
    let live = live(*which);
    match how % 4 {
        0 => {
            if let Ok(p) = serde_json::from_slice::<Value>(body) {
                let _ = patch::json(&live, &p, 3 << 20);
            }
        }
        1 => {
            if let Ok(p) = serde_json::from_slice::<Value>(body) {
                let merged = patch::merge(&live, &p);
                // A merge patch applied twice changes nothing more (RFC 7386 is idempotent).
                assert_eq!(
                    patch::merge(&merged, &p),
                    merged,
                    "merge patch is idempotent"
                );
            }
        }
        2 => {
            if let Ok(p) = serde_json::from_slice::<Value>(body) {
                let kind = live["kind"].as_str().unwrap_or("");
                let api_version = live["apiVersion"].as_str().unwrap_or("");
                let _ = patch::strategic(&live, &p, api_version, kind);
            }
        }
        _ => {
            // Apply bodies arrive as YAML (a superset of JSON).
            if let Ok(p) = serde_yaml::from_slice::<Value>(body)
                && p.is_object()
            {
                let force = body.len() % 2 == 0;
                let _ = apply::apply(Some(&live), &p, "fuzz", force, "2026-01-01T00:00:00Z");
                let _ = apply::apply(None, &p, "fuzz", force, "2026-01-01T00:00:00Z");
            }
        }
    }
});
