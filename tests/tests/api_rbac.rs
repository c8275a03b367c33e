//! RBAC through the real `control` binary and the unmodified kubectl 1.32, acting as other
//! users through impersonation (`--as`, `--as-group`): kube's 403 wording, `kubectl auth
//! can-i` (and `--list`) and `whoami`, escalation prevention, and the default policy.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use skiff_tests::{control::ControlPlane, require_program};

fn kubectl_present(test: &str) -> bool {
    require_program(test, "kubectl")
}

/// Polls `kubectl auth can-i` until it answers `want`: bindings reach the authorizer through
/// its store watch, a moment after the write returns.
fn await_can_i(cp: &ControlPlane, args: &[&str], want: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = cp.run(&[&["auth", "can-i"], args].concat(), None)?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if answer == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "kubectl auth can-i {} answered {answer:?}, not {want:?}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `read` until `done` holds for its answer, which it returns.
fn settled(read: impl Fn() -> Result<String>, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = read()?;
        if done(&answer) {
            return Ok(answer);
        }
        if Instant::now() > deadline {
            bail!("never settled: {answer}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const NODE_VIEWER: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: node-viewer
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules:
- {apiGroups: [""], resources: [nodes], verbs: [get, list, watch]}
"#;

fn stderr_of(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let out = cp.run(args, stdin)?;
    if out.status.success() {
        bail!(
            "kubectl {} succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

#[test]
fn a_viewer_can_get_but_not_create_and_kubectl_says_why() -> Result<()> {
    if !kubectl_present("a_viewer_can_get_but_not_create_and_kubectl_says_why") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    cp.ok(&["create", "namespace", "demo"], None)?;
    cp.ok(
        &[
            "create",
            "configmap",
            "cfg",
            "-n",
            "demo",
            "--from-literal=k=v",
        ],
        None,
    )?;
    await_can_i(
        &cp,
        &["create", "pods", "-n", "demo", "--as", "alice"],
        "no",
    )?;
    let denied = stderr_of(
        &cp,
        &["get", "configmaps", "-n", "demo", "--as", "alice"],
        None,
    )?;
    assert_eq!(
        denied,
        r#"Error from server (Forbidden): configmaps is forbidden: User "alice" cannot list resource "configmaps" in API group "" in the namespace "demo""#
    );
    cp.ok(
        &[
            "create",
            "rolebinding",
            "alice-view",
            "--clusterrole=view",
            "--user=alice",
            "-n",
            "demo",
        ],
        None,
    )?;
    await_can_i(
        &cp,
        &["get", "configmaps", "-n", "demo", "--as", "alice"],
        "yes",
    )?;
    let got = cp.ok(
        &[
            "get",
            "configmap",
            "cfg",
            "-n",
            "demo",
            "--as",
            "alice",
            "-o",
            "jsonpath={.data.k}",
        ],
        None,
    )?;
    assert_eq!(got, "v");
    let refused = stderr_of(
        &cp,
        &[
            "create",
            "configmap",
            "other",
            "-n",
            "demo",
            "--from-literal=a=b",
            "--as",
            "alice",
        ],
        None,
    )?;
    assert_eq!(
        refused,
        r#"error: failed to create configmap: configmaps is forbidden: User "alice" cannot create resource "configmaps" in API group "" in the namespace "demo""#
    );
    // Cluster scope and other namespaces stay closed.
    let nodes = stderr_of(&cp, &["get", "nodes", "--as", "alice"], None)?;
    assert_eq!(
        nodes,
        r#"Error from server (Forbidden): nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the cluster scope"#
    );
    await_can_i(
        &cp,
        &["get", "pods", "-n", "default", "--as", "alice"],
        "no",
    )?;
    // The binding goes, and with it the access.
    cp.ok(&["delete", "rolebinding", "alice-view", "-n", "demo"], None)?;
    await_can_i(
        &cp,
        &["get", "configmaps", "-n", "demo", "--as", "alice"],
        "no",
    )?;
    Ok(())
}

#[test]
fn auth_can_i_and_whoami_answer_for_the_caller_and_impersonated_users() -> Result<()> {
    if !kubectl_present("auth_can_i_and_whoami_answer_for_the_caller_and_impersonated_users") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let me = cp.ok(&["auth", "whoami"], None)?;
    assert!(
        me.contains("kubernetes-admin") && me.contains("[system:masters system:authenticated]"),
        "{me}"
    );
    let alice = cp.ok(
        &["auth", "whoami", "--as", "alice", "--as-group", "dev"],
        None,
    )?;
    let rows: Vec<Vec<&str>> = alice
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["ATTRIBUTE", "VALUE"],
            vec!["Username", "alice"],
            vec!["Groups", "[dev", "system:authenticated]"],
        ]
    );
    assert_eq!(
        cp.ok(&["auth", "can-i", "create", "pods"], None)?.trim(),
        "yes"
    );
    await_can_i(&cp, &["create", "pods", "--as", "alice"], "no")?;
    cp.ok(
        &[
            "create",
            "clusterrolebinding",
            "dev-edit",
            "--clusterrole=edit",
            "--group=dev",
        ],
        None,
    )?;
    await_can_i(
        &cp,
        &[
            "create",
            "pods",
            "-n",
            "default",
            "--as",
            "alice",
            "--as-group",
            "dev",
        ],
        "yes",
    )?;
    await_can_i(&cp, &["create", "pods", "--as", "alice"], "no")?;
    let list = cp.ok(
        &[
            "auth",
            "can-i",
            "--list",
            "-n",
            "default",
            "--as",
            "alice",
            "--as-group",
            "dev",
        ],
        None,
    )?;
    assert!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.contains("create")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("selfsubjectaccessreviews.authorization.k8s.io")),
        "{list}"
    );
    Ok(())
}

const ADMIN_OF_DEMO: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dana-admin, namespace: demo}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: dana}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ed-edit, namespace: demo}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: ed}
";

#[test]
fn nobody_grants_what_they_do_not_hold() -> Result<()> {
    if !kubectl_present("nobody_grants_what_they_do_not_hold") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    cp.ok(&["apply", "-f", "-"], Some(ADMIN_OF_DEMO))?;
    await_can_i(&cp, &["create", "pods", "-n", "demo", "--as", "ed"], "yes")?;
    await_can_i(
        &cp,
        &["create", "rolebindings", "-n", "demo", "--as", "dana"],
        "yes",
    )?;
    // edit may not touch RBAC at all.
    let ed = stderr_of(
        &cp,
        &[
            "create",
            "rolebinding",
            "mine",
            "--clusterrole=cluster-admin",
            "--user=ed",
            "-n",
            "demo",
            "--as",
            "ed",
        ],
        None,
    )?;
    assert_eq!(
        ed,
        r#"error: failed to create rolebinding: rolebindings.rbac.authorization.k8s.io is forbidden: User "ed" cannot create resource "rolebindings" in API group "rbac.authorization.k8s.io" in the namespace "demo""#
    );
    // admin may write bindings, but only to what it holds itself.
    let dana = stderr_of(
        &cp,
        &[
            "create",
            "rolebinding",
            "mine",
            "--clusterrole=cluster-admin",
            "--user=dana",
            "-n",
            "demo",
            "--as",
            "dana",
        ],
        None,
    )?;
    assert!(
        dana.starts_with(r#"error: failed to create rolebinding: rolebindings.rbac.authorization.k8s.io "mine" is forbidden: user "dana" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#),
        "{dana}"
    );
    cp.ok(
        &[
            "create",
            "rolebinding",
            "viewers",
            "--clusterrole=view",
            "--group=viewers",
            "-n",
            "demo",
            "--as",
            "dana",
        ],
        None,
    )?;
    let role = stderr_of(
        &cp,
        &[
            "create",
            "role",
            "all-secrets",
            "--verb=*",
            "--resource=secrets",
            "-n",
            "demo",
            "--as",
            "dana",
        ],
        None,
    )?;
    assert!(
        role.contains(r#"{APIGroups:[""], Resources:["secrets"], Verbs:["*"]}"#),
        "{role}"
    );
    cp.ok(
        &[
            "create",
            "role",
            "read-secrets",
            "--verb=get",
            "--resource=secrets",
            "-n",
            "demo",
            "--as",
            "dana",
        ],
        None,
    )?;
    Ok(())
}

#[test]
fn the_default_roles_and_bindings_exist_and_come_back() -> Result<()> {
    if !kubectl_present("the_default_roles_and_bindings_exist_and_come_back") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(dir.path())?;
    let roles = cp.ok(&["get", "clusterroles", "-o", "name"], None)?;
    for role in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:discovery",
        "system:basic-user",
        "system:public-info-viewer",
        "system:node",
        "system:kube-scheduler",
        "system:kube-controller-manager",
    ] {
        assert!(
            roles
                .lines()
                .any(|l| l == format!("clusterrole.rbac.authorization.k8s.io/{role}")),
            "{role} missing from {roles}"
        );
    }
    // The scheduler and the controllers hold their own roles: only the scheduler binds.
    let bind = ["create", "pods", "--subresource=binding"];
    await_can_i(
        &cp,
        &[&bind[..], &["--as", "system:kube-scheduler"]].concat(),
        "yes",
    )?;
    await_can_i(
        &cp,
        &[&bind[..], &["--as", "system:kube-controller-manager"]].concat(),
        "no",
    )?;
    let binding = cp.ok(
        &[
            "get",
            "clusterrolebinding",
            "cluster-admin",
            "-o",
            "jsonpath={.roleRef.name} {.subjects[0].kind} {.subjects[0].name}",
        ],
        None,
    )?;
    assert_eq!(binding, "cluster-admin Group system:masters");
    cp.ok(&["delete", "clusterrolebinding", "system:discovery"], None)?;
    cp.ok(&["delete", "clusterrole", "edit"], None)?;
    // Emptied rules come back unless the autoupdate annotation is false.
    cp.ok(
        &[
            "patch",
            "clusterrole",
            "system:basic-user",
            "--type=merge",
            "-p",
            r#"{"rules":[]}"#,
        ],
        None,
    )?;
    cp.ok(
        &[
            "patch", "clusterrole", "system:public-info-viewer", "--type=merge", "-p",
            r#"{"metadata":{"annotations":{"rbac.authorization.kubernetes.io/autoupdate":"false"}},"rules":[]}"#,
        ],
        None,
    )?;
    cp.restart()?;
    let back = cp.ok(
        &[
            "get",
            "clusterrolebinding/system:discovery",
            "clusterrole/edit",
            "-o",
            "name",
        ],
        None,
    )?;
    assert_eq!(
        back.lines().count(),
        2,
        "deleted defaults are re-added at start: {back}"
    );
    let rules_of = |role: &str| {
        cp.ok(
            &[
                "get",
                "clusterrole",
                role,
                "-o",
                "jsonpath={.rules[*].resources}",
            ],
            None,
        )
    };
    assert!(rules_of("system:basic-user")?.contains("selfsubjectaccessreviews"));
    assert_eq!(rules_of("system:public-info-viewer")?, "");
    Ok(())
}

#[test]
fn aggregated_roles_carry_the_rules_of_the_roles_they_select() -> Result<()> {
    if !kubectl_present("aggregated_roles_carry_the_rules_of_the_roles_they_select") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    // Aggregated roles carry the rules of the roles their selectors match, transitively
    // (admin <- edit <- view), and pick up new ones.
    let rules_of = |role: &str| {
        cp.ok(
            &[
                "get",
                "clusterrole",
                role,
                "-o",
                "jsonpath={.rules[*].resources}",
            ],
            None,
        )
    };
    let admin = settled(|| rules_of("admin"), |r| r.contains("rolebindings"))?;
    assert!(
        admin.contains("\"pods\"") && admin.contains("\"deployments\""),
        "{admin}"
    );
    cp.ok(
        &[
            "create",
            "clusterrolebinding",
            "v",
            "--clusterrole=view",
            "--user=vic",
        ],
        None,
    )?;
    await_can_i(&cp, &["list", "nodes", "--as", "vic"], "no")?;
    cp.ok(&["apply", "-f", "-"], Some(NODE_VIEWER))?;
    settled(|| rules_of("view"), |r| r.contains(r#"["nodes"]"#))?;
    settled(|| rules_of("admin"), |r| r.contains(r#"["nodes"]"#))?;
    await_can_i(&cp, &["list", "nodes", "--as", "vic"], "yes")?;
    cp.ok(&["delete", "clusterrole", "node-viewer"], None)?;
    settled(|| rules_of("view"), |r| !r.contains(r#"["nodes"]"#))?;
    await_can_i(&cp, &["list", "nodes", "--as", "vic"], "no")?;

    Ok(())
}

const TWO_NODES_PODS: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: v1
kind: Secret
metadata: {name: one-secret, namespace: apps}
stringData: {k: v}
---
apiVersion: v1
kind: Secret
metadata: {name: two-secret, namespace: apps}
stringData: {k: v}
---
apiVersion: v1
kind: Pod
metadata: {name: on-one, namespace: apps}
spec:
  nodeName: one
  containers:
  - {name: c, image: busybox:1.36, envFrom: [{secretRef: {name: one-secret}}]}
---
apiVersion: v1
kind: Pod
metadata: {name: on-two, namespace: apps}
spec:
  nodeName: two
  volumes: [{name: s, secret: {secretName: two-secret}}]
  containers:
  - {name: c, image: busybox:1.36}
";

#[test]
fn a_node_reads_only_the_secrets_of_its_own_pods_and_changes_only_itself() -> Result<()> {
    if !kubectl_present("a_node_reads_only_the_secrets_of_its_own_pods_and_changes_only_itself") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start_with(dir.path(), &["--no-scheduler", "--no-controllers"])?;
    cp.ok(&["apply", "-f", "-"], Some(TWO_NODES_PODS))?;
    let as_one = ["--as", "system:node:one", "--as-group", "system:nodes"];
    let get = |what: &[&'static str]| -> Vec<&'static str> { [what, &as_one[..]].concat() };
    settled(
        || {
            let out = cp.run(
                &get(&["get", "secret", "one-secret", "-n", "apps", "-o", "name"]),
                None,
            )?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        },
        |out| out.trim() == "secret/one-secret",
    )?;
    let theirs = stderr_of(
        &cp,
        &get(&["get", "secret", "two-secret", "-n", "apps"]),
        None,
    )?;
    assert_eq!(
        theirs,
        r#"Error from server (Forbidden): secrets "two-secret" is forbidden: User "system:node:one" cannot get resource "secrets" in API group "" in the namespace "apps": no relationship found between node 'one' and this object"#
    );
    let all = stderr_of(&cp, &get(&["get", "secrets", "-n", "apps"]), None)?;
    assert!(all.contains("cannot list resource \"secrets\""), "{all}");
    // A node may read every pod but delete only its own.
    cp.ok(&get(&["get", "pods", "-A"]), None)?;
    let delete = stderr_of(&cp, &get(&["delete", "pod", "on-two", "-n", "apps"]), None)?;
    assert!(delete.contains("Forbidden"), "{delete}");
    // NodeRestriction: its own Node and Lease only.
    let node = |name: &str| format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n");
    cp.ok(&get(&["create", "-f", "-"]), Some(&node("one")))?;
    let other = stderr_of(&cp, &get(&["create", "-f", "-"]), Some(&node("two")))?;
    assert!(
        other.contains(r#"node "one" is not allowed to modify node "two""#),
        "{other}"
    );
    let lease = |name: &str| {
        format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {name}, namespace: kube-node-lease}}\n"
        )
    };
    cp.ok(&get(&["create", "-f", "-"]), Some(&lease("one")))?;
    let other = stderr_of(&cp, &get(&["create", "-f", "-"]), Some(&lease("two")))?;
    assert!(
        other.contains("can only access node lease with the same name as the requesting node"),
        "{other}"
    );
    Ok(())
}
