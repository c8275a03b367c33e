//! Server-side apply through unmodified kubectl: create, removal of fields the manager
//! stops applying, conflicts with another manager, and `--force-conflicts`.

use anyhow::Result;
use skiff_tests::{control::ControlPlane, require_program};

fn manifest(replicas: u32, env: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: ssa, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: ssa}}}}
  template:
    metadata: {{labels: {{app: ssa}}}}
    spec:
      containers:
      - name: app
        image: busybox:1.36
        env: [{env}]
"
    )
}

/// `manager/operation` of each of the Deployment's managedFields entries.
fn managers(cp: &ControlPlane) -> Result<Vec<String>> {
    let out = cp.ok(
        &[
            "get",
            "deploy",
            "ssa",
            "--show-managed-fields",
            "-o",
            "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation} {end}",
        ],
        None,
    )?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

#[test]
fn server_side_apply_owns_removes_and_conflicts() -> Result<()> {
    if !require_program("server_side_apply_owns_removes_and_conflicts", "kubectl") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let both = r#"{name: A, value: "1"}, {name: B, value: "2"}"#;
    let out = cp.ok(
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest(2, both)),
    )?;
    assert_eq!(out.trim(), "deployment.apps/ssa serverside-applied");
    let managers = managers(&cp)?;
    // kubectl owns what it applied; the deployment controller adds its own entries.
    assert!(
        managers.iter().any(|m| m == "kubectl/Apply"),
        "{managers:?}"
    );
    assert!(
        managers
            .iter()
            .all(|m| m == "kubectl/Apply" || m.starts_with("kube-controller-manager/")),
        "{managers:?}"
    );

    cp.ok(
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest(2, r#"{name: A, value: "1"}"#)),
    )?;
    let env = cp.ok(
        &[
            "get",
            "deploy",
            "ssa",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[*].name}",
        ],
        None,
    )?;
    assert_eq!(env, "A", "a field the manager stopped applying is removed");

    cp.ok(&["scale", "deploy", "ssa", "--replicas=5"], None)?;
    let conflict = cp.run(
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest(2, r#"{name: A, value: "1"}"#)),
    )?;
    assert!(!conflict.status.success());
    let err = String::from_utf8_lossy(&conflict.stderr);
    assert!(
        err.contains("conflict") && err.contains(".spec.replicas"),
        "{err}"
    );

    cp.ok(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&manifest(2, r#"{name: A, value: "1"}"#)),
    )?;
    let replicas = cp.ok(
        &["get", "deploy", "ssa", "-o", "jsonpath={.spec.replicas}"],
        None,
    )?;
    assert_eq!(replicas, "2");
    Ok(())
}

#[test]
fn applying_an_object_created_by_post_unchanged_shares_its_fields() -> Result<()> {
    if !require_program(
        "applying_an_object_created_by_post_unchanged_shares_its_fields",
        "kubectl",
    ) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start_with(dir.path(), &["--no-controllers", "--no-scheduler"])?;
    let env = r#"{name: A, value: "1"}"#;
    cp.ok(&["create", "-f", "-"], Some(&manifest(2, env)))?;
    let out = cp.ok(
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest(2, env)),
    )?;
    assert_eq!(out.trim(), "deployment.apps/ssa serverside-applied");
    assert_eq!(managers(&cp)?, ["kubectl-create/Update", "kubectl/Apply"]);
    let changed = cp.run(
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest(3, env)),
    )?;
    assert!(!changed.status.success(), "another value still conflicts");
    let err = String::from_utf8_lossy(&changed.stderr);
    assert!(
        err.contains("conflict") && err.contains(".spec.replicas"),
        "{err}"
    );
    Ok(())
}
