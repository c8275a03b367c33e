//! Authentication end to end against the real `control` binary: HTTPS only, anonymous
//! callers refused but for health and version, client certificates of the cluster CA and
//! bearer tokens of `--token-auth-file` accepted, certificates of another CA refused.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::Value;
use skiff_tests::{control::ControlPlane, tls::Credentials};

const TOKEN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// A GET with `tls` and optional extra headers; the status code and the body.
fn get(
    cp: &ControlPlane,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &str,
) -> Result<(u16, String)> {
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nAccept: application/json\r\n{headers}\r\n"
    );
    let raw = cp.exchange_as(tls, request.as_bytes(), Duration::from_secs(10))?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

fn start(dir: &std::path::Path) -> Result<ControlPlane> {
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, format!("{TOKEN},jane,1001,\"dev,ops\"\n"))?;
    ControlPlane::start_with(
        &dir.join("cp"),
        &[
            "--no-scheduler",
            "--no-controllers",
            "--token-auth-file",
            tokens.to_str().context("path")?,
        ],
    )
}

#[test]
fn anonymous_requests_get_401_except_health_and_version() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    let anonymous = cp.admin_credentials()?.anonymous_config()?;
    let (code, body) = get(&cp, Arc::clone(&anonymous), "/api/v1/namespaces", "")?;
    assert_eq!(code, 401, "{body}");
    let status: Value = serde_json::from_str(&body)?;
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let (code, body) = get(&cp, Arc::clone(&anonymous), path, "")?;
        assert_eq!(code, 200, "{path}: {body}");
    }
    // The admin certificate from control's kubeconfig reads what anonymous may not.
    let (code, body) = get(
        &cp,
        cp.admin_credentials()?.client_config()?,
        "/api/v1/namespaces",
        "",
    )?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("kube-system"), "{body}");
    Ok(())
}

#[test]
fn a_token_from_the_token_file_authenticates_and_an_unknown_one_does_not() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    let anonymous = cp.admin_credentials()?.anonymous_config()?;
    // The token authenticates jane in dev and ops; RBAC then decides: refused until dev
    // may view.
    let as_jane = || {
        get(
            &cp,
            Arc::clone(&anonymous),
            "/api/v1/namespaces",
            &format!("Authorization: Bearer {TOKEN}\r\n"),
        )
    };
    let (code, body) = as_jane()?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(r#"User \"jane\" cannot list"#), "{body}");
    cp.ok(
        &[
            "create",
            "clusterrolebinding",
            "dev-view",
            "--clusterrole=view",
            "--group=dev",
        ],
        None,
    )?;
    skiff_tests::sim::wait_for("jane to be allowed", Duration::from_secs(30), || {
        Ok((as_jane()?.0 == 200).then_some(()))
    })?;
    let (code, _) = get(
        &cp,
        anonymous,
        "/api/v1/namespaces",
        "Authorization: Bearer not-a-token\r\n",
    )?;
    assert_eq!(code, 401);
    // kubectl with the token and the cluster CA, no certificate.
    let out = std::process::Command::new("kubectl")
        .env("HOME", dir.path())
        .env_remove("KUBECONFIG")
        .args(["--server", &cp.url(), "--token", TOKEN])
        .arg("--certificate-authority")
        .arg(cp.ca_file())
        .args(["get", "namespace", "kube-system", "-o", "name"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "namespace/kube-system"
    );
    Ok(())
}

#[test]
fn a_certificate_of_another_ca_is_refused_and_the_server_is_verified() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    let admin = cp.admin_credentials()?;
    let stranger_ca = skiff_pki::Ca::generate("stranger")?;
    let stranger = stranger_ca.issue_client("kubernetes-admin", &["system:masters"])?;
    let forged = Credentials {
        ca_pem: admin.ca_pem.clone(),
        cert_pem: stranger.cert_pem,
        key_pem: stranger.key_pem,
    };
    let refused = get(&cp, forged.client_config()?, "/api/v1/namespaces", "");
    assert!(
        refused.is_err(),
        "a certificate of another CA was accepted: {refused:?}"
    );
    // A client that trusts another CA does not trust the server either.
    let wrong_trust = Credentials {
        ca_pem: stranger_ca.cert_pem().to_owned(),
        ..admin
    };
    assert!(get(&cp, wrong_trust.client_config()?, "/healthz", "").is_err());
    Ok(())
}

#[test]
fn kubectl_works_with_the_admin_kubeconfig_control_wrote() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    let out = std::process::Command::new("kubectl")
        .env("HOME", dir.path())
        .env("KUBECONFIG", cp.admin_kubeconfig())
        .args(["get", "namespaces", "-o", "name"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/default"));
    Ok(())
}

/// The `CertificateSigningRequest` a joining node makes, as kubectl would send it.
fn node_csr(name: &str, request_pem: &str) -> String {
    serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": STANDARD.encode(request_pem),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
            "username": "forged-by-the-client",
        },
    })
    .to_string()
}

#[test]
fn a_bootstrap_token_gets_a_node_certificate_signed_and_that_certificate_authenticates()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(dir.path())?;
    let token = cp.node_token()?;
    let kubectl = |args: &[&str], stdin: Option<&str>| -> Result<String> {
        use std::io::Write;
        let mut child = std::process::Command::new("kubectl")
            .env("HOME", dir.path())
            .env_remove("KUBECONFIG")
            .args(["--server", &cp.url(), "--token", &token])
            .arg("--certificate-authority")
            .arg(cp.ca_file())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (request, key_pem) = skiff_pki::ca::client_request("system:node:joiner", "system:nodes")?;
    kubectl(&["create", "-f", "-"], Some(&node_csr("joiner", &request)))?;
    let csr =
        skiff_tests::sim::wait_for("the request to be signed", Duration::from_secs(30), || {
            let csr: Value =
                serde_json::from_str(&kubectl(&["get", "csr", "joiner", "-o", "json"], None)?)?;
            Ok(csr["status"]["certificate"].is_string().then_some(csr))
        })?;
    // The server recorded who asked, whatever the client claimed.
    assert!(
        csr["spec"]["username"]
            .as_str()
            .is_some_and(|u| u.starts_with("system:bootstrap:")),
        "{csr}"
    );
    assert!(
        csr["spec"]["groups"]
            .to_string()
            .contains("system:bootstrappers"),
        "{csr}"
    );
    assert_eq!(csr["status"]["conditions"][0]["type"], "Approved", "{csr}");
    let cert_pem = String::from_utf8(
        STANDARD.decode(
            csr["status"]["certificate"]
                .as_str()
                .context("certificate")?,
        )?,
    )?;
    let subject = skiff_pki::Subject::from_pem(&cert_pem)?;
    assert_eq!(subject.common_name, "system:node:joiner");
    assert_eq!(subject.organizations, ["system:nodes"]);
    let node = Credentials {
        ca_pem: cp.admin_credentials()?.ca_pem,
        cert_pem,
        key_pem,
    };
    let (code, body) = get(&cp, node.client_config()?, "/api/v1/nodes", "")?;
    assert_eq!(code, 200, "{body}");
    // A request for an identity that is not a node's is left alone.
    let (request, _) = skiff_pki::ca::client_request("kubernetes-admin", "system:masters")?;
    kubectl(&["create", "-f", "-"], Some(&node_csr("grab", &request)))?;
    std::thread::sleep(Duration::from_secs(2));
    let grab: Value = serde_json::from_str(&kubectl(&["get", "csr", "grab", "-o", "json"], None)?)?;
    assert!(grab["status"]["certificate"].is_null(), "{grab}");
    Ok(())
}
