//! The default roles and bindings kube-apiserver creates (its `bootstrappolicy`), adjusted
//! to what skiff's own components call: the node daemon is also kube-proxy, cluster DNS and
//! a local-path provisioner, and every controller runs under one identity.

use serde_json::{Value, json};
use skiff_resources::RBAC_GROUP;

/// The annotation that lets the API server re-add a default object at start.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
pub use skiff_machinery::user::{BOOTSTRAPPERS, NODES};
/// The user-name prefix of node identities.
pub const NODE_PREFIX: &str = "system:node:";
/// The scheduler's user.
pub const SCHEDULER: &str = "system:kube-scheduler";
/// The controllers' user.
pub const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn cat(parts: &[&[&'static str]]) -> Vec<&'static str> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

fn meta(name: &str, labels: &Value) -> Value {
    let mut all = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
        all.extend(extra.clone());
    }
    json!({"name": name, "labels": all, "annotations": {AUTOUPDATE: "true"}})
}

fn cluster_role(name: &str, labels: &Value, rules: &[Value]) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta(name, labels),
        "rules": rules,
    })
}

fn aggregated(name: &str, labels: &Value, selector_label: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta(name, labels),
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {selector_label: "true"}}]},
        "rules": [],
    })
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, name)| json!({"kind": kind, "apiGroup": RBAC_GROUP, "name": name}))
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta(name, &json!({})),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// What a node identity may do before the Node authorizer narrows it (kube's `NodeRules`,
/// plus what skiff's node daemon does as kube-proxy, cluster DNS and storage provisioner).
#[must_use]
pub fn node_rules() -> Vec<Value> {
    vec![
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        rule(READ, &[""], &["services", "endpoints", "namespaces"]),
        rule(
            &["create", "get", "list", "watch", "update", "patch"],
            &[""],
            &["nodes"],
        ),
        rule(&["update", "patch"], &[""], &["nodes/status"]),
        rule(
            &["create", "update", "patch"],
            &["", "events.k8s.io"],
            &["events"],
        ),
        rule(
            &["get", "list", "watch", "create", "delete"],
            &[""],
            &["pods"],
        ),
        rule(&["update", "patch"], &[""], &["pods/status"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(READ, &[""], &["secrets", "configmaps"]),
        rule(READ, &[""], &["persistentvolumeclaims"]),
        rule(
            &["update", "patch"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        // The local-path provisioner makes and removes the volumes of its node.
        rule(
            &["get", "list", "watch", "create", "delete"],
            &[""],
            &["persistentvolumes"],
        ),
        rule(READ, &["storage.k8s.io"], &["storageclasses"]),
        rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        // Its own heartbeat in kube-node-lease; LoadBalancer address leases in kube-system.
        rule(
            &["get", "create", "update", "patch", "delete"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        // kube-proxy and cluster DNS, and the node's own kube-dns EndpointSlice.
        rule(
            &["get", "list", "watch", "create", "update", "patch"],
            &["discovery.k8s.io"],
            &["endpointslices"],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
    ]
}

fn scheduler_rules() -> Vec<Value> {
    vec![
        rule(
            &["create", "patch", "update"],
            &["", "events.k8s.io"],
            &["events"],
        ),
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        rule(&["get", "update"], &["coordination.k8s.io"], &["leases"]),
        rule(
            READ,
            &[""],
            &[
                "nodes",
                "namespaces",
                "services",
                "replicationcontrollers",
                "configmaps",
            ],
        ),
        rule(&["get", "list", "watch", "delete"], &[""], &["pods"]),
        rule(&["create"], &[""], &["bindings", "pods/binding"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(READ, &["apps"], &["replicasets", "statefulsets"]),
        rule(READ, &["policy"], &["poddisruptionbudgets"]),
        // Volume binding (kube's system:volume-scheduler is folded in).
        rule(
            &["get", "list", "watch", "patch", "update"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(
            READ,
            &["storage.k8s.io"],
            &[
                "storageclasses",
                "csinodes",
                "csidrivers",
                "csistoragecapacities",
            ],
        ),
        rule(READ, &["scheduling.k8s.io"], &["priorityclasses"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
    ]
}

/// Every skiff controller under one identity: the garbage collector and the namespace
/// controller read, patch and delete any kind; the rest create what they own.
fn controller_manager_rules() -> Vec<Value> {
    vec![
        rule(READ, &["*"], &["*"]),
        rule(
            &["update", "patch", "delete", "deletecollection"],
            &["*"],
            &["*"],
        ),
        rule(
            &["create"],
            &[""],
            &[
                "pods",
                "events",
                "endpoints",
                "serviceaccounts",
                "persistentvolumes",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "configmaps",
                "pods/eviction",
            ],
        ),
        rule(
            &["create"],
            &["apps"],
            &[
                "replicasets",
                "controllerrevisions",
                "deployments",
                "statefulsets",
                "daemonsets",
            ],
        ),
        rule(&["create"], &["batch"], &["jobs"]),
        rule(&["create"], &["discovery.k8s.io"], &["endpointslices"]),
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        rule(&["create"], &["events.k8s.io"], &["events"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
    ]
}

fn view_rules() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "resourcequotas",
                "resourcequotas/status",
                "namespaces",
            ],
        ),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
            ],
        ),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
        rule(READ, &["coordination.k8s.io"], &["leases"]),
    ]
}

fn edit_rules() -> Vec<Value> {
    let read_write = cat(&[READ, WRITE]);
    vec![
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            &read_write,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
            ],
        ),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(
            WRITE,
            &[""],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "endpoints",
                "pods/ephemeralcontainers",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &["apps"],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        rule(WRITE, &["coordination.k8s.io"], &["leases"]),
    ]
}

fn admin_rules() -> Vec<Value> {
    vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(
            &cat(&[READ, WRITE]),
            &[RBAC_GROUP],
            &["rolebindings", "roles"],
        ),
    ]
}

/// Every default `ClusterRole`.
#[must_use]
pub fn cluster_roles() -> Vec<Value> {
    let none = json!({});
    let aggregate =
        |to: &str| json!({format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"});
    let discovery_urls = [
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ];
    vec![
        cluster_role(
            "cluster-admin",
            &none,
            &[rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated(
            "admin",
            &none,
            "rbac.authorization.k8s.io/aggregate-to-admin",
        ),
        aggregated(
            "edit",
            &aggregate("admin"),
            "rbac.authorization.k8s.io/aggregate-to-edit",
        ),
        aggregated(
            "view",
            &aggregate("edit"),
            "rbac.authorization.k8s.io/aggregate-to-view",
        ),
        cluster_role(
            "system:aggregate-to-admin",
            &aggregate("admin"),
            &admin_rules(),
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &aggregate("edit"),
            &edit_rules(),
        ),
        cluster_role(
            "system:aggregate-to-view",
            &aggregate("view"),
            &view_rules(),
        ),
        // metrics-server's reader, so `kubectl top` works wherever view does.
        cluster_role(
            "system:aggregated-metrics-reader",
            &json!({
                "rbac.authorization.k8s.io/aggregate-to-view": "true",
                "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                "rbac.authorization.k8s.io/aggregate-to-admin": "true",
            }),
            &[rule(READ, &["metrics.k8s.io"], &["pods", "nodes"])],
        ),
        cluster_role(
            "system:discovery",
            &none,
            &[urls(&["get"], &discovery_urls)],
        ),
        cluster_role(
            "system:monitoring",
            &none,
            &[urls(
                &["get"],
                &[
                    "/metrics",
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/livez/*",
                    "/readyz/*",
                    "/healthz/*",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            &none,
            &[urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &none,
            &[
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role("system:node", &none, &node_rules()),
        cluster_role(
            "system:node-bootstrapper",
            &none,
            &[rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(SCHEDULER, &none, &scheduler_rules()),
        cluster_role(CONTROLLER_MANAGER, &none, &controller_manager_rules()),
    ]
}

/// Every default `ClusterRoleBinding`. `system:node` has no subjects, as in Kubernetes: nodes
/// are authorized by the Node authorizer.
#[must_use]
pub fn cluster_role_bindings() -> Vec<Value> {
    const AUTHENTICATED: &str = skiff_machinery::user::AUTHENTICATED;
    vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            &[("Group", skiff_machinery::user::MASTERS)],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &[("Group", AUTHENTICATED)],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", AUTHENTICATED)],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[
                ("Group", AUTHENTICATED),
                ("Group", skiff_machinery::user::UNAUTHENTICATED),
            ],
        ),
        binding(
            "system:monitoring",
            "system:monitoring",
            &[("Group", "system:monitoring")],
        ),
        binding("system:node", "system:node", &[]),
        // A node joining with a bootstrap token asks for its certificate (kubeadm's
        // `kubeadm:kubelet-bootstrap`; skiff issues the tokens itself).
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            &[("Group", BOOTSTRAPPERS)],
        ),
        binding(SCHEDULER, SCHEDULER, &[("User", SCHEDULER)]),
        binding(
            CONTROLLER_MANAGER,
            CONTROLLER_MANAGER,
            &[("User", CONTROLLER_MANAGER)],
        ),
    ]
}
