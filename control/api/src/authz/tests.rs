//! The default policy against what skiff's own components call, the Node authorizer,
//! `NodeRestriction` and escalation prevention, on an authorizer fed the default objects.

use serde_json::{Value, json};
use skiff_machinery::user::UserInfo;

use super::{
    Authorizer, CALLER, admission,
    attributes::{Attributes, ResourceAttributes},
    index::Held,
    policy,
};
use crate::objects;

fn defaults() -> Authorizer {
    let authz = Authorizer::default();
    authz.update(|ix| {
        for role in policy::cluster_roles() {
            ix.apply(Held::ClusterRole, "", objects::name_of(&role), Some(&role));
        }
        for binding in policy::cluster_role_bindings() {
            let name = objects::name_of(&binding).to_owned();
            ix.apply(Held::ClusterRoleBinding, "", &name, Some(&binding));
        }
    });
    authz
}

fn add(authz: &Authorizer, held: Held, obj: &Value) {
    authz.update(|ix| {
        ix.apply(
            held,
            objects::namespace_of(obj).unwrap_or(""),
            objects::name_of(obj),
            Some(obj),
        );
    });
}

/// `verb group/resource[/sub] ns/name`, e.g. `patch /pods/status d/p` (core group empty);
/// a lone place is a namespace, or the name of a cluster-scoped object.
fn req(user: &UserInfo, line: &str) -> Attributes {
    let parts: Vec<&str> = line.split(' ').collect();
    let (verb, what, place) = (parts[0], parts[1], parts.get(2).copied().unwrap_or(""));
    if what.starts_with("url:") {
        return Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource: None,
            path: what.trim_start_matches("url:").into(),
        };
    }
    let mut segments = what.split('/');
    let group = segments.next().unwrap_or("");
    let resource = segments.next().unwrap_or("");
    let sub = segments.next().unwrap_or("");
    let cluster_scoped = matches!(
        resource,
        "nodes" | "persistentvolumes" | "clusterroles" | "clusterrolebindings"
    );
    let (namespace, name) = match place.split_once('/') {
        Some(pair) => pair,
        None if cluster_scoped => ("", place),
        None => (place, ""),
    };
    Attributes {
        user: user.clone(),
        verb: verb.into(),
        resource: Some(ResourceAttributes {
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: namespace.into(),
            name: name.into(),
        }),
        path: String::new(),
    }
}

fn allowed(authz: &Authorizer, user: &UserInfo, lines: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| authz.authorize(&req(user, l)).is_err())
        .map(|l| (*l).to_owned())
        .collect()
}

fn node(name: &str) -> UserInfo {
    UserInfo::new(format!("system:node:{name}"), [policy::NODES])
}

fn pod_on(node: &str, ns: &str, name: &str, secret: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": ns}, "spec": {"nodeName": node,
        "volumes": [{"name": "s", "secret": {"secretName": secret}}],
        "containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}}]}]}})
}

#[test]
fn the_node_daemon_may_make_every_call_it_makes() {
    let authz = defaults();
    add(&authz, Held::Pod, &pod_on("n1", "d", "p", "s"));
    let refused = allowed(
        &authz,
        &node("n1"),
        &[
            "list /pods",
            "watch /pods",
            "get /pods d/p",
            "patch /pods/status d/p",
            "delete /pods d/p",
            "create /events d",
            "patch /events d/e",
            "get /nodes n1",
            "list /nodes",
            "watch /nodes",
            "create /nodes",
            "patch /nodes n1",
            "patch /nodes/status n1",
            "get coordination.k8s.io/leases kube-node-lease/n1",
            "create coordination.k8s.io/leases kube-node-lease",
            "patch coordination.k8s.io/leases kube-node-lease/n1",
            "get coordination.k8s.io/leases kube-system/lb-10-0-0-1",
            "create coordination.k8s.io/leases kube-system",
            "update coordination.k8s.io/leases kube-system/lb-10-0-0-1",
            "delete coordination.k8s.io/leases kube-system/lb-10-0-0-1",
            "list /services",
            "watch /services",
            "get /services d/web",
            "list discovery.k8s.io/endpointslices",
            "watch discovery.k8s.io/endpointslices",
            "get discovery.k8s.io/endpointslices kube-system/kube-dns-n1",
            "patch discovery.k8s.io/endpointslices kube-system/kube-dns-n1",
            "get /secrets d/s",
            "get /configmaps d/cfg",
            "create /serviceaccounts/token d/default",
            "get /persistentvolumes pv-1",
            "list /persistentvolumeclaims",
            "watch /persistentvolumeclaims",
            "list /persistentvolumes",
            "watch /persistentvolumes",
            "create /persistentvolumes",
            "delete /persistentvolumes pv-1",
            "list storage.k8s.io/storageclasses",
            "watch storage.k8s.io/storageclasses",
        ],
    );
    assert!(refused.is_empty(), "refused: {refused:?}");
}

#[test]
fn a_node_reads_only_the_secrets_and_config_maps_of_its_own_pods() {
    let authz = defaults();
    add(&authz, Held::Pod, &pod_on("n1", "d", "p", "mine"));
    add(&authz, Held::Pod, &pod_on("n2", "d", "q", "theirs"));
    let n1 = node("n1");
    assert!(authz.authorize(&req(&n1, "get /secrets d/mine")).is_ok());
    let err = authz
        .authorize(&req(&n1, "get /secrets d/theirs"))
        .unwrap_err();
    assert!(
        err.contains("no relationship found between node 'n1'"),
        "{err}"
    );
    assert!(authz.authorize(&req(&n1, "list /secrets d")).is_err());
    assert!(
        authz
            .authorize(&req(&n1, "get /secrets other/mine"))
            .is_err()
    );
    assert!(authz.authorize(&req(&n1, "delete /pods d/q")).is_err());
    assert!(authz.authorize(&req(&n1, "delete /nodes n2")).is_err());
    assert!(
        authz
            .authorize(&req(
                &n1,
                "delete coordination.k8s.io/leases kube-node-lease/n2"
            ))
            .is_err()
    );
    assert!(
        authz
            .authorize(&req(
                &n1,
                "patch coordination.k8s.io/leases kube-node-lease/n1"
            ))
            .is_ok()
    );
    assert!(authz.authorize(&req(&n1, "create /secrets d")).is_err());
    // A pod moving to another node takes its references along.
    add(&authz, Held::Pod, &pod_on("n2", "d", "p", "mine"));
    assert!(authz.authorize(&req(&n1, "get /secrets d/mine")).is_err());
    // A user named like a node but outside system:nodes is not a node.
    let fake = UserInfo::new("system:node:n2", Vec::<String>::new());
    assert!(
        authz
            .authorize(&req(&fake, "get /secrets d/theirs"))
            .is_err()
    );
}

#[test]
fn a_node_requests_tokens_only_for_the_accounts_its_pods_run_as() {
    let authz = defaults();
    let mut pod = pod_on("n1", "d", "p", "s");
    pod["spec"]["serviceAccountName"] = json!("builder");
    add(&authz, Held::Pod, &pod);
    let n1 = node("n1");
    assert!(
        authz
            .authorize(&req(&n1, "create /serviceaccounts/token d/builder"))
            .is_ok()
    );
    for line in [
        "create /serviceaccounts/token d/default",
        "create /serviceaccounts/token other/builder",
        "get /serviceaccounts/token d/builder",
    ] {
        assert!(authz.authorize(&req(&n1, line)).is_err(), "{line}");
    }
    let n2 = node("n2");
    assert!(
        authz
            .authorize(&req(&n2, "create /serviceaccounts/token d/builder"))
            .is_err()
    );
}

#[test]
fn node_restriction_keeps_a_node_to_its_own_objects() {
    let authz = defaults();
    let pods = skiff_resources::by_kind("v1", "Pod").unwrap();
    let nodes = skiff_resources::by_kind("v1", "Node").unwrap();
    let leases = skiff_resources::by_kind("coordination.k8s.io/v1", "Lease").unwrap();
    let n1 = node("n1");
    let on_n2 = pod_on("n2", "d", "q", "s");
    let on_n1 = pod_on("n1", "d", "p", "s");
    let lease = |ns: &str, name: &str| json!({"metadata": {"name": name, "namespace": ns}});
    CALLER.sync_scope(n1, || {
        assert!(admission::admit(&authz, pods, Some(&on_n1), &on_n1).is_ok());
        let err = admission::admit(&authz, pods, Some(&on_n2), &on_n2).unwrap_err();
        assert!(
            err.message
                .contains("can only update pod status for pods with spec.nodeName set to itself")
        );
        assert!(admission::admit(&authz, pods, None, &on_n1).is_err());
        let own = json!({"metadata": {"name": "n1"}});
        let other = json!({"metadata": {"name": "n2"}});
        assert!(admission::admit(&authz, nodes, None, &own).is_ok());
        assert_eq!(
            admission::admit(&authz, nodes, Some(&other), &other)
                .unwrap_err()
                .code,
            403
        );
        assert!(admission::admit(&authz, leases, None, &lease("kube-node-lease", "n1")).is_ok());
        assert!(admission::admit(&authz, leases, None, &lease("kube-node-lease", "n2")).is_err());
        assert!(admission::admit(&authz, leases, None, &lease("kube-system", "lb-1")).is_ok());
    });
}

#[test]
fn the_scheduler_may_make_every_call_it_makes() {
    let authz = defaults();
    let user = UserInfo::new(policy::SCHEDULER, Vec::<String>::new());
    let refused = allowed(
        &authz,
        &user,
        &[
            "list /pods",
            "watch /pods",
            "list /nodes",
            "watch /nodes",
            "list /namespaces",
            "watch /namespaces",
            "list scheduling.k8s.io/priorityclasses",
            "list /persistentvolumeclaims",
            "list /persistentvolumes",
            "list storage.k8s.io/storageclasses",
            "create /pods/binding d/p",
            "patch /pods/status d/p",
            "patch /persistentvolumeclaims d/c",
            "delete /pods d/victim",
            "create /events d",
            "patch /events d/e",
            "get coordination.k8s.io/leases kube-system/kube-scheduler",
            "create coordination.k8s.io/leases kube-system",
            "update coordination.k8s.io/leases kube-system/kube-scheduler",
        ],
    );
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert!(authz.authorize(&req(&user, "create /pods d")).is_err());
    assert!(authz.authorize(&req(&user, "get /secrets d/s")).is_err());
}

#[test]
fn the_controllers_may_make_every_call_they_make() {
    let authz = defaults();
    let user = UserInfo::new(policy::CONTROLLER_MANAGER, Vec::<String>::new());
    let refused = allowed(
        &authz,
        &user,
        &[
            "list apps/deployments",
            "watch apps/replicasets",
            "create apps/replicasets d",
            "patch apps/deployments/status d/w",
            "create /pods d",
            "delete /pods d/p",
            "create apps/controllerrevisions d",
            "create batch/jobs d",
            "delete batch/jobs d/j",
            "patch batch/jobs/status d/j",
            "create discovery.k8s.io/endpointslices d",
            "update discovery.k8s.io/endpointslices d/s",
            "create /endpoints d",
            "create /serviceaccounts d",
            "create /persistentvolumeclaims d",
            "update /persistentvolumes pv",
            "patch /nodes n1",
            "patch /nodes/status n1",
            "patch /services/status d/lb",
            "update /namespaces/finalize ns/ns",
            "delete /configmaps ns/c",
            "deletecollection /secrets ns",
            "delete rbac.authorization.k8s.io/roles ns/r",
            "update /resourcequotas/status d/q",
            "update apps/deployments/scale d/w",
            "list metrics.k8s.io/pods d",
            "create /events d",
            "patch /events d/e",
            "create coordination.k8s.io/leases kube-system",
            "update coordination.k8s.io/leases kube-system/kube-controller-manager",
        ],
    );
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert!(
        authz
            .authorize(&req(
                &user,
                "create rbac.authorization.k8s.io/clusterrolebindings"
            ))
            .is_err()
    );
    assert!(
        authz
            .authorize(&req(
                &user,
                "escalate rbac.authorization.k8s.io/clusterroles x"
            ))
            .is_err()
    );
}

#[test]
fn every_authenticated_user_may_discover_and_ask_about_itself() {
    let authz = defaults();
    let alice = UserInfo::new("alice", Vec::<String>::new());
    let refused = allowed(
        &authz,
        &alice,
        &[
            "get url:/api",
            "get url:/apis/apps/v1",
            "get url:/version",
            "get url:/healthz",
            "get url:/openapi/v3",
            "create authorization.k8s.io/selfsubjectaccessreviews",
            "create authorization.k8s.io/selfsubjectrulesreviews",
            "create authentication.k8s.io/selfsubjectreviews",
        ],
    );
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert!(authz.authorize(&req(&alice, "get url:/metrics")).is_err());
    let prometheus = UserInfo::new("prometheus", ["system:monitoring"]);
    assert!(
        authz
            .authorize(&req(&prometheus, "get url:/metrics"))
            .is_ok()
    );
    assert!(authz.authorize(&req(&alice, "list /pods d")).is_err());
    let admin = UserInfo::new("root", [skiff_machinery::user::MASTERS]);
    assert!(
        authz
            .authorize(&req(
                &admin,
                "escalate rbac.authorization.k8s.io/clusterroles x"
            ))
            .is_ok()
    );
}

fn binding(ns: &str, name: &str, role: &str, user: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]})
}

#[test]
fn view_and_edit_and_admin_aggregate_and_nest() {
    let authz = defaults();
    add(
        &authz,
        Held::RoleBinding,
        &binding("d", "v", "view", "viewer"),
    );
    add(
        &authz,
        Held::RoleBinding,
        &binding("d", "e", "edit", "editor"),
    );
    add(
        &authz,
        Held::RoleBinding,
        &binding("d", "a", "admin", "admin"),
    );
    let u = |n: &str| UserInfo::new(n, Vec::<String>::new());
    let yes = |user: &str, line: &str| authz.authorize(&req(&u(user), line)).is_ok();
    assert!(yes("viewer", "get /pods d/p") && yes("viewer", "list apps/deployments d"));
    assert!(yes("viewer", "list metrics.k8s.io/pods d"), "kubectl top");
    assert!(!yes("viewer", "create /pods d") && !yes("viewer", "get /secrets d/s"));
    assert!(!yes("viewer", "get /pods other/p"));
    assert!(yes("editor", "create /pods d") && yes("editor", "get /secrets d/s"));
    assert!(yes("editor", "get /pods d/p"), "edit holds view");
    assert!(!yes(
        "editor",
        "create rbac.authorization.k8s.io/rolebindings d"
    ));
    assert!(yes(
        "admin",
        "create rbac.authorization.k8s.io/rolebindings d"
    ));
    assert!(yes("admin", "delete /pods d/p"), "admin holds edit");
}

#[test]
fn roles_and_bindings_cannot_grant_more_than_their_writer_holds() {
    let authz = defaults();
    add(
        &authz,
        Held::RoleBinding,
        &binding("d", "a", "admin", "alice"),
    );
    let crbs = skiff_resources::by_kind("rbac.authorization.k8s.io/v1", "RoleBinding").unwrap();
    let roles = skiff_resources::by_kind("rbac.authorization.k8s.io/v1", "Role").unwrap();
    let alice = UserInfo::new("alice", Vec::<String>::new());
    CALLER.sync_scope(alice.clone(), || {
        let err = admission::admit(&authz, crbs, None, &binding("d", "x", "cluster-admin", "bob"))
            .unwrap_err();
        assert_eq!(err.code, 403);
        assert!(
            err.message.starts_with(r#"rolebindings.rbac.authorization.k8s.io "x" is forbidden: user "alice" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#),
            "{}",
            err.message
        );
        assert!(admission::admit(&authz, crbs, None, &binding("d", "y", "edit", "bob")).is_ok());
        let role = |verbs: Value| json!({"metadata": {"name": "r", "namespace": "d"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": verbs}]});
        assert!(admission::admit(&authz, roles, None, &role(json!(["get", "delete"]))).is_ok());
        assert!(admission::admit(&authz, roles, None, &role(json!(["*"]))).is_err());
    });
    // The escalate and bind verbs lift the check.
    add(
        &authz,
        Held::ClusterRole,
        &json!({"metadata": {"name": "esc"}, "rules": [
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "clusterroles"], "verbs": ["escalate", "bind"]}]}),
    );
    add(
        &authz,
        Held::RoleBinding,
        &binding("d", "esc", "esc", "alice"),
    );
    CALLER.sync_scope(alice, || {
        assert!(
            admission::admit(
                &authz,
                crbs,
                None,
                &binding("d", "x", "cluster-admin", "bob")
            )
            .is_ok()
        );
    });
}
