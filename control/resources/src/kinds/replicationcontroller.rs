//! `ReplicationController` (core/v1), the ReplicaSet's predecessor every Kubernetes still
//! serves: a plain label map as selector (defaulted from the template's labels, and
//! mutable), a required template whose pods restart always, and the DESIRED / CURRENT /
//! READY columns.

use serde_json::{Value, json};
use skiff_machinery::status::Cause;

use super::{object, or_set, pod_spec, reset_status, workload};
use crate::{
    Strategy,
    table::{self, Column},
};

/// `v1/ReplicationController`.
#[derive(Debug)]
pub struct ReplicationController;

fn is_empty_map(v: Option<&Value>) -> bool {
    v.and_then(Value::as_object)
        .is_none_or(serde_json::Map::is_empty)
}

/// The selector map as text (`app=web,tier=db`).
fn selector_text(obj: &Value) -> Option<String> {
    table::map_string(obj.pointer("/spec/selector"), "=", ",")
}

impl Strategy for ReplicationController {
    fn default(&self, obj: &mut Value) {
        // SetDefaults_ReplicationController: selector and labels come from the template.
        let labels = obj
            .pointer("/spec/template/metadata/labels")
            .filter(|l| !is_empty_map(Some(l)))
            .cloned();
        if let Some(labels) = labels {
            if is_empty_map(obj.pointer("/spec/selector"))
                && let Some(spec) = object(obj, &["spec"])
            {
                spec.insert("selector".into(), labels.clone());
            }
            if is_empty_map(obj.pointer("/metadata/labels"))
                && let Some(meta) = object(obj, &["metadata"])
            {
                meta.insert("labels".into(), labels);
            }
        }
        if let Some(spec) = object(obj, &["spec"]) {
            or_set(spec, "replicas", json!(1));
        }
        pod_spec::default_template(obj, Some("Always"));
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        reset_status(obj);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        let mut causes = Vec::new();
        let selector = spec.get("selector").and_then(Value::as_object);
        if selector.is_none_or(serde_json::Map::is_empty) {
            causes.push(Cause::required("spec.selector"));
        }
        workload::replicas(spec, &mut causes);
        if let Some(n) = spec.get("minReadySeconds").and_then(Value::as_i64)
            && n < 0
        {
            causes.push(Cause::invalid(
                "spec.minReadySeconds",
                &Value::from(n),
                "must be greater than or equal to 0",
            ));
        }
        if spec.get("template").is_none_or(Value::is_null) {
            causes.push(Cause::required("spec.template"));
            return causes;
        }
        if let Some(selector) = selector.filter(|s| !s.is_empty()) {
            let labels = workload::template_labels(spec);
            let selected = selector
                .iter()
                .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
            if !selected {
                causes.push(workload::selector_mismatch(&labels));
            }
        }
        workload::template(spec, &mut causes);
        causes
    }

    fn scale_selector(&self, obj: &Value) -> String {
        selector_text(obj).unwrap_or_default()
    }

    fn columns(&self) -> &'static [Column] {
        workload::REPLICA_COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        workload::replica_row(o, now, selector_text(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(selector: &Value, labels: &Value) -> Value {
        json!({"metadata": {"name": "rc"}, "spec": {"selector": selector, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}})
    }

    #[test]
    fn the_selector_and_labels_default_to_the_template_labels() {
        let mut obj = rc(&Value::Null, &json!({"app": "web"}));
        ReplicationController.default(&mut obj);
        assert_eq!(obj["spec"]["selector"], json!({"app": "web"}));
        assert_eq!(obj["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(ReplicationController.validate(&obj).is_empty());
        assert_eq!(ReplicationController.scale_selector(&obj), "app=web");
    }

    #[test]
    fn a_selector_must_select_the_template_and_pods_must_restart_always() {
        let mut obj = rc(&json!({"app": "db"}), &json!({"app": "web"}));
        obj["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        let fields: Vec<String> = ReplicationController
            .validate(&obj)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.template.metadata.labels",
                "spec.template.spec.restartPolicy"
            ]
        );
        let bare = json!({"metadata": {"name": "rc"}, "spec": {"replicas": -1}});
        let fields: Vec<String> = ReplicationController
            .validate(&bare)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, ["spec.selector", "spec.replicas", "spec.template"]);
    }

    #[test]
    fn the_table_shows_desired_current_ready() {
        let mut obj = rc(&json!({"app": "web"}), &json!({"app": "web"}));
        obj["spec"]["replicas"] = json!(3);
        obj["status"] = json!({"replicas": 2, "readyReplicas": 1});
        let names: Vec<&str> = ReplicationController
            .columns()
            .iter()
            .filter(|c| c.priority == 0)
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Name", "Desired", "Current", "Ready", "Age"]);
        let row = ReplicationController.row(&obj, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(row[..4], [json!("rc"), json!(3), json!(2), json!(1)]);
        assert_eq!(row[7], "app=web");
    }
}
