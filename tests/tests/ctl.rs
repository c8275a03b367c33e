//! `ctl` against the real `control` binary: apply, get, describe, delete, and a backup that
//! `control --restore` brings back.

use std::process::Command;

use anyhow::{Result, bail};
use skiff_tests::{bin, control::ControlPlane, etcd::free_port, process::ChildGuard};

const MANIFEST: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: default}
data: {mode: fast}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - {name: api, image: busybox:1.36, ports: [{containerPort: 80}]}
";

fn ctl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(bin("ctl"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn ctl_applies_gets_describes_and_deletes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let created = ctl(&cp, &["apply", "-f", "-"], Some(MANIFEST))?;
    assert_eq!(
        created,
        "configmap/settings created\ndeployment.apps/api created\n"
    );
    let again = ctl(&cp, &["apply", "-f", "-"], Some(MANIFEST))?;
    assert_eq!(
        again,
        "configmap/settings unchanged\ndeployment.apps/api unchanged\n"
    );
    let changed = ctl(
        &cp,
        &["apply", "-f", "-"],
        Some(&MANIFEST.replace("fast", "safe")),
    )?;
    assert_eq!(
        changed,
        "configmap/settings configured\ndeployment.apps/api unchanged\n"
    );

    let table = ctl(&cp, &["get", "deploy,cm"], None)?;
    assert!(
        table.starts_with("NAME   READY   UP-TO-DATE   AVAILABLE   AGE\napi    0/1"),
        "{table}"
    );
    // kube-root-ca.crt, which every namespace gets, sits in the ConfigMap table too.
    let (_, configmaps) = table.split_once("\n\n").unwrap_or_default();
    assert!(configmaps.starts_with("NAME "), "{table}");
    assert!(
        configmaps.lines().any(|l| {
            let columns: Vec<&str> = l.split_whitespace().collect();
            columns.get(..2) == Some(&["settings", "1"][..])
        }),
        "{table}"
    );
    let yaml = ctl(&cp, &["get", "cm", "settings", "-o", "yaml"], None)?;
    assert!(yaml.contains("mode: safe"), "{yaml}");
    let wide = ctl(&cp, &["get", "deployments.apps", "-o", "wide", "-A"], None)?;
    assert!(wide.starts_with("NAMESPACE   NAME"), "{wide}");
    assert!(wide.contains("busybox:1.36"), "{wide}");

    let described = ctl(&cp, &["describe", "deploy", "api"], None)?;
    assert!(
        described.starts_with("Name:         api\nNamespace:    default\n"),
        "{described}"
    );
    assert!(described.contains("replicas: 1"), "{described}");

    let deleted = ctl(&cp, &["delete", "cm", "settings"], None)?;
    assert_eq!(deleted, "configmap \"settings\" deleted\n");
    let gone = ctl(&cp, &["get", "cm", "settings"], None).expect_err("deleted");
    assert!(gone.to_string().contains("NotFound"), "{gone}");
    Ok(())
}

#[test]
fn a_backup_restores_into_a_new_control_plane() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    ctl(&cp, &["apply", "-f", "-"], Some(MANIFEST))?;
    let before = ctl(&cp, &["get", "cm", "settings", "-o", "json"], None)?;
    let backup = dir.path().join("backup.redb");
    let said = ctl(&cp, &["backup", backup.to_str().expect("utf-8 path")], None)?;
    assert!(said.starts_with("backup written to"), "{said}");

    // A second control plane restored from the file, on another port and directory.
    let port = free_port()?;
    let restored_dir = dir.path().join("restored");
    let _restored = ChildGuard::spawn(
        Command::new(bin("control"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&restored_dir)
            .arg("--restore")
            .arg(&backup)
            .stderr(std::process::Stdio::null()),
    )?;
    // The restored server has a CA of its own in its new data directory.
    let kubeconfig = restored_dir.join("admin.kubeconfig");
    let mut after = String::new();
    for _ in 0..100 {
        let out = Command::new(bin("ctl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "cm", "settings", "-o", "json"])
            .output()?;
        if out.status.success() {
            after = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        before, after,
        "the restored object, resourceVersion included"
    );
    Ok(())
}
