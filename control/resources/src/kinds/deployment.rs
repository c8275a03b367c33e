//! Deployment: rolling-update defaults, a selector that matches its template and never
//! changes, and kubectl's READY / UP-TO-DATE / AVAILABLE columns.

use serde_json::{Map, Value, json};

use super::{or_set, workload::AppsWorkload};
use crate::table::{self, AGE, CONTAINERS, Column, IMAGES, NAME, SELECTOR, col};

/// `apps/v1/Deployment`.
pub static DEPLOYMENT: AppsWorkload = AppsWorkload {
    defaults,
    replicas: true,
    columns: COLUMNS,
    row,
};

const COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", 0, "Number of the pod with ready state"),
    col(
        "Up-to-date",
        "string",
        0,
        "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
    ),
    col(
        "Available",
        "string",
        0,
        "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

fn defaults(spec: &mut Map<String, Value>) {
    or_set(spec, "replicas", json!(1));
    or_set(spec, "revisionHistoryLimit", json!(10));
    or_set(spec, "progressDeadlineSeconds", json!(600));
    or_set(
        spec,
        "strategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
    );
}

/// One row: Deployment's cells.
fn row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let (containers, images) = table::containers_and_images(o);
    vec![
        table::name(o),
        json!(format!(
            "{}/{}",
            table::int(o, "/status/readyReplicas"),
            table::int(o, "/spec/replicas")
        )),
        json!(table::int(o, "/status/updatedReplicas")),
        json!(table::int(o, "/status/availableReplicas")),
        table::age(o, now),
        json!(containers),
        json!(images),
        table::or_none(table::label_selector(o.pointer("/spec/selector"))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Strategy;

    fn deployment(labels: &Value, image: &str) -> Value {
        json!({"spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": labels}, "spec": {"restartPolicy": "Always",
                "containers": [{"name": "app", "image": image}]}}}})
    }

    #[test]
    fn defaults_match_the_go_apiserver() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "busybox:1.36", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "nginx"}
        ]}}}});
        DEPLOYMENT.default(&mut d);
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
    fn explicit_values_are_never_overwritten() {
        let mut d = json!({"spec": {"replicas": 0, "template": {"spec": {"restartPolicy": "Never", "containers": []}}}});
        DEPLOYMENT.default(&mut d);
        assert_eq!(d["spec"]["replicas"], 0);
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Never");
    }

    #[test]
    fn a_selector_that_misses_the_template_labels_is_invalid() {
        assert!(
            DEPLOYMENT
                .validate(&deployment(&json!({"app": "web"}), "x"))
                .is_empty()
        );
        let causes = DEPLOYMENT.validate(&deployment(&json!({"app": "db"}), "x"));
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
        assert!(
            causes[0]
                .message
                .contains("`selector` does not match template `labels`")
        );
    }

    #[test]
    fn selectors_are_immutable() {
        let old = deployment(&json!({"app": "web"}), "x");
        let mut new = old.clone();
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "v": "2"}});
        new["spec"]["template"]["metadata"]["labels"]["v"] = json!("2");
        assert!(
            DEPLOYMENT
                .validate_update(&old, &new)
                .iter()
                .any(|c| c.message.contains("immutable"))
        );
        let mut image_only = old.clone();
        image_only["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        assert!(DEPLOYMENT.validate_update(&old, &image_only).is_empty());
    }
}
