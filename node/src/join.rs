//! Joining with a bootstrap token (kubelet's TLS bootstrap): the node asks for a client
//! certificate of its own (`CN=system:node:<name>, O=system:nodes`) through a
//! `CertificateSigningRequest` made with the token, waits until the control plane signs it,
//! keeps it in its state directory and uses it from then on (a restart reuses it).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use k8s_openapi::{
    ByteString,
    api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, api::PostParams};
use rustls_pki_types::{CertificateDer, pem::PemObject};

/// How long the node waits for its request to be signed.
const SIGNING_TIMEOUT: Duration = Duration::from_mins(2);

/// A client certificate and its key (PEM).
#[derive(Debug)]
pub struct Identity {
    /// The certificate.
    pub cert_pem: String,
    /// The key.
    pub key_pem: String,
}

/// The API server's connection settings before the node has an identity.
#[derive(Debug)]
pub struct Bootstrap<'a> {
    /// `https://HOST:PORT`.
    pub server: &'a str,
    /// The cluster CA (PEM).
    pub ca_pem: &'a str,
    /// The bootstrap token.
    pub token: &'a str,
}

/// A client config for `server` trusting `ca_pem`, without credentials.
///
/// # Errors
/// When the URL or the CA does not parse.
pub fn config(server: &str, ca_pem: &str) -> Result<kube::Config> {
    let mut config = kube::Config::new(server.parse().context("--server is not a URL")?);
    let roots = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .context("the CA file")?;
    config.root_cert = Some(roots);
    Ok(config)
}

/// Puts `identity` into `config` as its client certificate.
pub fn authenticate(config: &mut kube::Config, identity: &Identity) {
    config.auth_info.client_certificate_data = Some(STANDARD.encode(&identity.cert_pem));
    config.auth_info.client_key_data = Some(STANDARD.encode(&identity.key_pem).into());
}

/// The node's identity: the one kept in `dir` from an earlier join, else a new one signed
/// through a `CertificateSigningRequest` made with the bootstrap token.
///
/// # Errors
/// When the request cannot be made or is not signed in time.
pub async fn identity(bootstrap: &Bootstrap<'_>, name: &str, dir: &Path) -> Result<Identity> {
    let (cert_path, key_path) = paths(dir);
    if let (Ok(cert_pem), Ok(key_pem)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        tracing::info!(cert = %cert_path.display(), "using the node's client certificate");
        return Ok(Identity { cert_pem, key_pem });
    }
    let mut config = config(bootstrap.server, bootstrap.ca_pem)?;
    config.auth_info.token = Some(bootstrap.token.to_owned().into());
    let client = kube::Client::try_from(config).context("building the bootstrap client")?;
    let user = format!("system:node:{name}");
    let (request, key_pem) =
        skiff_pki::ca::client_request(&user, "system:nodes").context("making a key")?;
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let csr_name = format!(
        "node-csr-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(csr_name.clone()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: "kubernetes.io/kube-apiserver-client-kubelet".into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    api.create(&PostParams::default(), &csr)
        .await
        .context("creating the CertificateSigningRequest (is the token right?)")?;
    tracing::info!(csr = %csr_name, %user, "asked for a client certificate");
    let deadline = Instant::now() + SIGNING_TIMEOUT;
    let cert_pem = loop {
        let got = api.get(&csr_name).await.context("reading the request")?;
        if let Some(status) = got.status {
            if let Some(cert) = status.certificate {
                break String::from_utf8(cert.0).context("the certificate is not PEM")?;
            }
            if let Some(c) = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
            {
                bail!(
                    "the certificate request was {}: {}",
                    c.type_,
                    c.message.clone().unwrap_or_default()
                );
            }
        }
        if Instant::now() > deadline {
            bail!("the certificate request {csr_name} was not signed within {SIGNING_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    skiff_pki::ca::write_private(&key_path, &key_pem)?;
    skiff_pki::ca::write_file(&cert_path, &cert_pem)?;
    tracing::info!(cert = %cert_path.display(), "joined: the client certificate is signed");
    Ok(Identity { cert_pem, key_pem })
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (
        dir.join("kubelet-client.crt"),
        dir.join("kubelet-client.key"),
    )
}
