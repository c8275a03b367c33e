//! ServiceAccount tokens end to end through the real `control` binary and kubectl:
//! `kubectl create token` issues a signed, bound token that authenticates as the account,
//! for the server's audience only and only until it expires, and stops authenticating once
//! the account (or the pod it is bound to) is gone; pods get the token volume and every namespace the cluster CA.

use std::{
    process::Output,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use skiff_tests::{control::ControlPlane, require_program};

/// kubectl with only `token` and the cluster CA: no client certificate, which would win.
fn as_token(
    cp: &ControlPlane,
    home: &std::path::Path,
    token: &str,
    args: &[&str],
) -> Result<Output> {
    std::process::Command::new("kubectl")
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .args(["--server", &cp.url(), "--token", token])
        .arg("--certificate-authority")
        .arg(cp.ca_file())
        .args(args)
        .output()
        .context("running kubectl")
}

fn whoami(cp: &ControlPlane, home: &std::path::Path, token: &str) -> Result<Output> {
    as_token(cp, home, token, &["auth", "whoami"])
}

/// Waits for the ServiceAccount controller's `default` account.
fn await_default_account(cp: &ControlPlane) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cp
        .run(&["get", "serviceaccount", "default"], None)?
        .status
        .success()
    {
        if Instant::now() > deadline {
            bail!("no default ServiceAccount");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Waits for the cluster CA in the `default` namespace's `kube-root-ca.crt`.
fn await_root_ca(cp: &ControlPlane) -> Result<()> {
    let ca = std::fs::read_to_string(cp.ca_file())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cp.run(
            &[
                "get",
                "configmap",
                "kube-root-ca.crt",
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ],
            None,
        )?;
        if String::from_utf8_lossy(&out.stdout).trim() == ca.trim() {
            break;
        }
        if Instant::now() > deadline {
            bail!("kube-root-ca.crt never held the cluster CA");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

const POD: &str = r"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  serviceAccountName: builder
  containers: [{name: c, image: busybox}]
";

/// Pods of `builder` get the token volume, pods of an unknown account are refused, and a
/// token bound to a pod dies with it while `token` (unbound) lives on.
fn pods_get_the_token_volume_and_bound_tokens_die_with_them(
    cp: &ControlPlane,
    home: &std::path::Path,
    token: &str,
) -> Result<()> {
    // A token bound to a pod dies with the pod. The pod got the token volume.
    cp.ok(&["apply", "-f", "-"], Some(POD))?;
    let volumes = cp.ok(
        &[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.spec.volumes[*].name}",
        ],
        None,
    )?;
    assert!(volumes.starts_with("kube-api-access-"), "{volumes}");
    let mounts = cp.ok(
        &[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.spec.containers[0].volumeMounts[0].mountPath}",
        ],
        None,
    )?;
    assert_eq!(mounts, "/var/run/secrets/kubernetes.io/serviceaccount");
    let stranger = cp.run(
        &["apply", "-f", "-"],
        Some(&POD.replace("builder", "nobody").replace("web", "other")),
    )?;
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("serviceaccount \"nobody\" not found"),
        "{}",
        String::from_utf8_lossy(&stranger.stderr)
    );
    let bound = cp.ok(
        &[
            "create",
            "token",
            "builder",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "web",
        ],
        None,
    )?;
    let bound = bound.trim();
    let me = whoami(cp, home, bound)?;
    let out = String::from_utf8_lossy(&me.stdout);
    assert!(
        out.contains("authentication.kubernetes.io/pod-name") && out.contains("web"),
        "{out}"
    );
    cp.ok(
        &["delete", "pod", "web", "--grace-period", "0", "--force"],
        None,
    )?;
    let gone = whoami(cp, home, bound)?;
    assert!(
        !gone.status.success(),
        "{}",
        String::from_utf8_lossy(&gone.stdout)
    );
    assert!(whoami(cp, home, token)?.status.success());

    Ok(())
}

/// A token signed with the cluster's own key for `builder` authenticates while its time
/// holds and is refused (401) once it expired.
fn expired_tokens_are_refused(cp: &ControlPlane, home: &std::path::Path) -> Result<()> {
    use skiff_pki::satoken::{Claims, ISSUER, ObjectRef, SigningKey};
    let key = SigningKey::load_or_create(&cp.data_dir().join("pki"))?;
    let uid = cp.ok(
        &[
            "get",
            "serviceaccount",
            "builder",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    )?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    let token_from = |issued: i64| {
        let account = ObjectRef {
            name: "builder".to_owned(),
            uid: uid.trim().to_owned(),
        };
        key.sign(&Claims::new(
            "default",
            account,
            None,
            vec![ISSUER.to_owned()],
            issued,
            600,
        ))
    };
    let valid = whoami(cp, home, &token_from(now - 60)?)?;
    assert!(
        valid.status.success(),
        "{}",
        String::from_utf8_lossy(&valid.stderr)
    );
    let expired = whoami(cp, home, &token_from(now - 3600)?)?;
    assert!(!expired.status.success());
    assert!(
        String::from_utf8_lossy(&expired.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&expired.stderr)
    );
    Ok(())
}

#[test]
fn a_requested_token_authenticates_as_its_account_until_the_account_is_deleted() -> Result<()> {
    if !require_program(
        "a_requested_token_authenticates_as_its_account_until_the_account_is_deleted",
        "kubectl",
    ) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start_with(&dir.path().join("cp"), &["--no-scheduler"])?;
    await_default_account(&cp)?;
    assert!(cp.data_dir().join("pki/sa.key").exists());
    await_root_ca(&cp)?;
    let default = cp.ok(&["create", "token", "default"], None)?;
    let me = whoami(&cp, dir.path(), default.trim())?;
    let out = String::from_utf8_lossy(&me.stdout);
    assert!(
        me.status.success(),
        "{}",
        String::from_utf8_lossy(&me.stderr)
    );
    assert!(
        out.contains("system:serviceaccount:default:default"),
        "{out}"
    );
    assert!(
        out.contains("system:serviceaccounts:default") && out.contains("system:authenticated"),
        "{out}"
    );

    cp.ok(&["create", "serviceaccount", "builder"], None)?;
    let token = cp.ok(&["create", "token", "builder", "--duration", "10m"], None)?;
    let token = token.trim();
    let me = whoami(&cp, dir.path(), token)?;
    assert!(
        String::from_utf8_lossy(&me.stdout).contains("system:serviceaccount:default:builder"),
        "{}",
        String::from_utf8_lossy(&me.stderr)
    );
    // Without an RBAC grant the account is authenticated but not authorized.
    let denied = as_token(&cp, dir.path(), token, &["get", "pods"])?;
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains(
            "User \"system:serviceaccount:default:builder\" cannot list resource \"pods\""
        ),
        "{stderr}"
    );
    // A token for another audience is not for this server.
    let vault = cp.ok(&["create", "token", "builder", "--audience", "vault"], None)?;
    let refused = whoami(&cp, dir.path(), vault.trim())?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    expired_tokens_are_refused(&cp, dir.path())?;
    // Less than ten minutes is refused.
    let short = cp.run(&["create", "token", "builder", "--duration", "5m"], None)?;
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("less than 10 minutes"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );

    pods_get_the_token_volume_and_bound_tokens_die_with_them(&cp, dir.path(), token)?;

    // Deleting the account revokes its tokens.
    cp.ok(&["delete", "serviceaccount", "builder"], None)?;
    let revoked = whoami(&cp, dir.path(), token)?;
    assert!(!revoked.status.success());
    assert!(
        String::from_utf8_lossy(&revoked.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    Ok(())
}
