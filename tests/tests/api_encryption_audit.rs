//! Data at rest and audit against the real `control` binary: Secrets encrypted in the store
//! file and in backups yet readable through the API, key rotation by rewriting, and the
//! audit log's levels.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use skiff_tests::{bin, control::ControlPlane};

const KEY1: &str = "c2VjcmV0IGlzIHNlY3VyZSwgb3IgaXMgaXQ/c2VjcmU=";
const KEY2: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// The Secret's value, and its base64 as the stored JSON carries it.
const VALUE: &str = "correct-horse-battery-staple";
const VALUE_B64: &str = "Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ==";

fn encryption_config(providers: &str) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}  - identity: {{}}\n"
    )
}

fn aesgcm(name: &str, secret: &str) -> String {
    format!("  - aesgcm:\n      keys:\n      - {{name: {name}, secret: {secret}}}\n")
}

fn secretbox(name: &str, secret: &str) -> String {
    format!("  - secretbox:\n      keys:\n      - {{name: {name}, secret: {secret}}}\n")
}

/// Every byte of every file under `dir`.
fn bytes_under(dir: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(bytes_under(&path)?);
        } else {
            out.extend(std::fs::read(&path)?);
        }
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// `ctl backup` to `path`, and the file's bytes.
fn ctl_backup(cp: &ControlPlane, path: &Path) -> Result<Vec<u8>> {
    let out = Command::new(bin("ctl"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .arg("backup")
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!("ctl backup: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(std::fs::read(path)?)
}

fn secret_value(cp: &ControlPlane) -> Result<String> {
    let json: serde_json::Value =
        serde_json::from_str(&cp.ok(&["get", "secret", "db", "-o", "json"], None)?)?;
    Ok(json["data"]["password"]
        .as_str()
        .context("data.password")?
        .to_owned())
}

#[test]
fn secrets_are_encrypted_in_the_store_file_and_backups_and_rotate_by_rewriting() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("encryption.yaml");
    std::fs::write(&config, encryption_config(&aesgcm("k1", KEY1)))?;
    let mut cp = ControlPlane::start_with(
        dir.path(),
        &[
            "--encryption-provider-config",
            config.to_str().context("utf-8 path")?,
        ],
    )?;
    cp.ok(
        &[
            "create",
            "secret",
            "generic",
            "db",
            &format!("--from-literal=password={VALUE}"),
        ],
        None,
    )?;
    cp.ok(
        &[
            "create",
            "configmap",
            "plain",
            "--from-literal=note=visible-in-clear",
        ],
        None,
    )?;
    assert_eq!(secret_value(&cp)?, VALUE_B64);

    let data = dir.path().join("data");
    let stored = bytes_under(&data)?;
    assert!(
        contains(&stored, "k8s:enc:aesgcm:v1:k1:"),
        "no encrypted value in the store file"
    );
    assert!(
        contains(&stored, "visible-in-clear"),
        "the store file is not where objects are"
    );
    assert!(
        !contains(&stored, VALUE) && !contains(&stored, VALUE_B64),
        "plaintext in the store file"
    );

    let backup = dir.path().join("backup.redb");
    let backed_up = ctl_backup(&cp, &backup)?;
    assert!(contains(&backed_up, "k8s:enc:aesgcm:v1:k1:"));
    assert!(
        !contains(&backed_up, VALUE) && !contains(&backed_up, VALUE_B64),
        "plaintext in the backup"
    );
    let restored_dir = dir.path().join("restored");
    let restored = ControlPlane::start_with(
        &restored_dir,
        &[
            "--restore",
            backup.to_str().context("utf-8 path")?,
            "--encryption-provider-config",
            config.to_str().context("utf-8 path")?,
        ],
    )?;
    assert_eq!(
        secret_value(&restored)?,
        VALUE_B64,
        "read from the restored backup"
    );
    drop(restored);

    // Rotation: a new first key, then every Secret rewritten, then the old key removed.
    std::fs::write(
        &config,
        encryption_config(&format!("{}{}", secretbox("k2", KEY2), aesgcm("k1", KEY1))),
    )?;
    cp.restart()?;
    assert_eq!(
        secret_value(&cp)?,
        VALUE_B64,
        "read with the old key after adding a new one"
    );
    let all = cp.ok(&["get", "secrets", "-A", "-o", "json"], None)?;
    // A List has no OpenAPI v3 schema and skiff serves no /openapi/v2 for kubectl's
    // validation to fall back to.
    cp.ok(&["replace", "--validate=false", "-f", "-"], Some(&all))?;
    std::fs::write(&config, encryption_config(&secretbox("k2", KEY2)))?;
    cp.restart()?;
    assert_eq!(secret_value(&cp)?, VALUE_B64, "read with the new key only");
    assert!(contains(&bytes_under(&data)?, "k8s:enc:secretbox:v1:k2:"));

    // Without the key the value is refused, not served as garbage.
    std::fs::write(&config, encryption_config(&aesgcm("k1", KEY1)))?;
    cp.restart()?;
    let out = cp.run(&["get", "secret", "db", "-o", "json"], None)?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no secretbox key named \\\"k2\\\"")
            || err.contains("no secretbox key named \"k2\""),
        "{err}"
    );
    Ok(())
}

const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  namespaces: [quiet]
- level: RequestResponse
  resources:
  - group: ""
    resources: [configmaps]
- level: Metadata
"#;

/// The audit events written so far, once `done` holds for them (the writer is
/// asynchronous).
fn audit_events(
    path: &Path,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Result<Vec<serde_json::Value>> {
    let mut events = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        events = text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<serde_json::Value>, _>>()?;
        if done(&events) {
            return Ok(events);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(events)
}

#[test]
fn the_audit_log_records_requests_at_the_levels_the_policy_says() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, AUDIT_POLICY)?;
    let log = dir.path().join("audit.log");
    let cp = ControlPlane::start_with(
        dir.path(),
        &[
            "--audit-log-path",
            log.to_str().context("utf-8 path")?,
            "--audit-policy-file",
            policy.to_str().context("utf-8 path")?,
        ],
    )?;
    cp.ok(&["create", "namespace", "quiet"], None)?;
    cp.ok(&["get", "pods", "-n", "quiet"], None)?;
    cp.ok(&["get", "secrets", "-n", "default"], None)?;
    cp.ok(
        &[
            "create",
            "configmap",
            "cfg",
            "--from-literal=k=audited-value",
        ],
        None,
    )?;
    let missing = cp.run(&["get", "secret", "missing"], None)?;
    assert!(!missing.status.success());

    // Only kubectl's requests: the controllers in the same process make their own.
    let is = |e: &serde_json::Value, verb: &str, resource: &str| {
        e["verb"] == verb
            && e["objectRef"]["resource"] == resource
            && e["userAgent"]
                .as_str()
                .is_some_and(|a| a.starts_with("kubectl"))
    };
    let events = audit_events(&log, |events| {
        events.iter().any(|e| is(e, "create", "configmaps"))
            && events.iter().any(|e| is(e, "list", "secrets"))
            && events.iter().any(|e| is(e, "get", "secrets"))
    })?;
    let listed = events
        .iter()
        .find(|e| is(e, "list", "secrets"))
        .context("no event for listing secrets")?;
    assert_eq!(listed["level"], "Metadata");
    assert_eq!(listed["stage"], "ResponseComplete");
    assert_eq!(listed["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(listed["user"]["username"], "kubernetes-admin");
    assert_eq!(listed["sourceIPs"][0], "127.0.0.1");
    assert_eq!(listed["objectRef"]["namespace"], "default");
    assert_eq!(listed["responseStatus"]["code"], 200);
    assert!(
        listed["userAgent"]
            .as_str()
            .is_some_and(|a| a.starts_with("kubectl")),
        "{listed}"
    );
    assert!(
        listed["requestURI"]
            .as_str()
            .is_some_and(|u| u.starts_with("/api/v1/namespaces/default/secrets"))
    );
    assert!(listed.get("responseObject").is_none() && listed.get("requestObject").is_none());

    let created = events
        .iter()
        .find(|e| is(e, "create", "configmaps"))
        .context("no event for creating the configmap")?;
    assert_eq!(created["level"], "RequestResponse");
    assert_eq!(created["responseStatus"]["code"], 201);
    assert_eq!(created["requestObject"]["data"]["k"], "audited-value");
    assert_eq!(created["responseObject"]["metadata"]["name"], "cfg");
    assert!(created["responseObject"]["metadata"]["uid"].is_string());
    assert_eq!(
        created["objectRef"]["name"], "cfg",
        "a create is named from its answer"
    );

    let missing = events
        .iter()
        .find(|e| is(e, "get", "secrets"))
        .context("no event for the missing secret")?;
    assert_eq!(missing["objectRef"]["name"], "missing");
    assert_eq!(missing["responseStatus"]["code"], 404);
    assert_eq!(missing["responseStatus"]["reason"], "NotFound");
    assert!(missing.get("responseObject").is_none(), "{missing}");

    assert!(
        events
            .iter()
            .all(|e| e["objectRef"]["namespace"] != "quiet"),
        "the None rule for namespace quiet let an event through"
    );
    assert!(events.iter().all(|e| e["stage"] == "ResponseComplete"));
    drop(cp);
    Ok(())
}
