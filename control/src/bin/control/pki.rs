//! The control process's certificates and credentials: the cluster CA, serving
//! certificate and ServiceAccount token key in `<data-dir>/pki`, the admin kubeconfig, the identities of its own
//! scheduler and controllers, and the authenticator the API server checks callers with.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use base64::{Engine, engine::general_purpose::STANDARD};
use skiff_api::{
    Security,
    authn::{Authenticator, ServiceAccountTokens},
    kubelet_client::{self, KubeletClient},
    tls::{self, KeyPairPem, LOOPBACK_NAME, TlsSettings},
};
use skiff_machinery::user::{MASTERS, UserInfo};
use skiff_pki::{Ca, Issued, ca::write_private};
use skiff_types::Ipv4Cidr;

/// The file (in the data directory) holding the bootstrap token nodes join with.
pub const NODE_TOKEN: &str = "node-token";
/// The admin kubeconfig's file name in the data directory.
pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";
/// The admin's user name (kubeadm's `kubernetes-admin`).
const ADMIN: &str = "kubernetes-admin";
/// The identity of the in-process controllers, and of the informers the scheduler shares
/// with them (reads only).
pub const CONTROL_PLANE_USER: &str = "system:kube-controller-manager";
/// The identity the in-process scheduler writes as (bindings, pod status, events,
/// preemption), under kube's `system:kube-scheduler` role only.
pub const SCHEDULER_USER: &str = "system:kube-scheduler";

/// The operator's TLS and token flags.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--tls-cert-file`: a serving certificate chain instead of the issued one.
    pub tls_cert_file: Option<PathBuf>,
    /// `--tls-private-key-file`: its key.
    pub tls_private_key_file: Option<PathBuf>,
    /// `--client-ca-file`: CAs whose client certificates are accepted besides the cluster
    /// CA's.
    pub client_ca_file: Option<PathBuf>,
    /// `--token-auth-file`: static bearer tokens.
    pub token_auth_file: Option<PathBuf>,
    /// `--api-audiences`: the audiences ServiceAccount tokens are accepted for (the issuer
    /// when empty).
    pub api_audiences: Vec<String>,
}

/// What the rest of the process needs from the PKI.
#[derive(Debug)]
pub struct Pki {
    /// TLS and authentication for the API server.
    pub security: Security,
    /// The cluster CA.
    pub ca: Arc<Ca>,
    /// Where the bootstrap token nodes join with was written.
    pub node_token: PathBuf,
    /// Where the admin kubeconfig was written.
    pub admin_kubeconfig: PathBuf,
    /// The client certificate of the in-process controllers.
    pub control_plane: Issued,
    /// The client certificate the in-process scheduler writes with.
    pub scheduler: Issued,
}

/// Loads or creates the CA in `<data_dir>/pki`, issues this start's serving certificate
/// (valid for `names`) and the in-process identities, writes the admin kubeconfig for
/// `server_url`, and reads the operator's files.
///
/// # Errors
/// When a file cannot be read or written, or a certificate not made.
pub fn prepare(data_dir: &Path, names: &[String], server_url: &str, flags: &Flags) -> Result<Pki> {
    let dir = data_dir.join("pki");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = Ca::load_or_create(&dir).context("the cluster CA")?;
    let issued = ca
        .issue_server("kube-apiserver", names)
        .context("issuing the serving certificate")?;
    write_private(&dir.join("apiserver.key"), &issued.key_pem)?;
    skiff_pki::ca::write_file(&dir.join("apiserver.crt"), &issued.cert_pem)?;
    let issued = KeyPairPem {
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    };
    let (serving, loopback) = match (&flags.tls_cert_file, &flags.tls_private_key_file) {
        (Some(cert), Some(key)) => (
            KeyPairPem {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
            },
            Some(issued),
        ),
        (None, None) => (issued, None),
        _ => anyhow::bail!("--tls-cert-file and --tls-private-key-file go together"),
    };
    let mut client_ca_pem = ca.cert_pem().to_owned();
    if let Some(path) = &flags.client_ca_file {
        client_ca_pem.push('\n');
        client_ca_pem.push_str(&read(path)?);
    }
    let tls = tls::server_config(&TlsSettings {
        serving,
        loopback,
        client_ca_pem,
    })
    .context("TLS settings")?;
    let mut authn = Authenticator::new();
    let sa_key = skiff_pki::satoken::SigningKey::load_or_create(&dir)
        .context("the service account signing key")?;
    authn.set_service_account_tokens(Arc::new(ServiceAccountTokens::new(
        sa_key,
        flags.api_audiences.clone(),
    )));
    if let Some(path) = &flags.token_auth_file {
        authn
            .add_token_file(&read(path)?)
            .with_context(|| format!("--token-auth-file {}", path.display()))?;
    }
    let node_token = data_dir.join(NODE_TOKEN);
    let (id, token) = bootstrap_token(&node_token)?;
    authn.add_token(
        token,
        UserInfo::new(
            format!("system:bootstrap:{id}"),
            [crate::csr_signer::BOOTSTRAPPERS],
        ),
    );
    let admin = ca.issue_client(ADMIN, &[MASTERS])?;
    let admin_kubeconfig = data_dir.join(ADMIN_KUBECONFIG);
    write_private(
        &admin_kubeconfig,
        &skiff_pki::kubeconfig::render(server_url, ca.cert_pem(), "skiff", ADMIN, &admin),
    )?;
    let control_plane = ca.issue_client(CONTROL_PLANE_USER, &[])?;
    let scheduler = ca.issue_client(SCHEDULER_USER, &[])?;
    // kubeadm's apiserver-kubelet-client: what nodes see the API server as.
    let kubelet_client = ca.issue_client(kubelet_client::USER, &[MASTERS])?;
    let kubelet = KubeletClient::with_identity(&kubelet_client.cert_pem, &kubelet_client.key_pem)
        .context("the kubelet client certificate")?;
    Ok(Pki {
        security: Security {
            tls,
            authn: Arc::new(authn),
            kubelet,
        },
        ca: Arc::new(ca),
        node_token,
        admin_kubeconfig,
        control_plane,
        scheduler,
    })
}

/// The bootstrap token in `path` (kubeadm's form `<id>.<secret>`, 6 and 16 characters of
/// `[a-z0-9]`), made there on first start; returns the id and the whole token.
fn bootstrap_token(path: &Path) -> Result<(String, String)> {
    let token = match std::fs::read_to_string(path) {
        Ok(text) => text.trim().to_owned(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let random: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
                .iter()
                .flat_map(|u| *u.as_bytes())
                .collect();
            let mut chars = random
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
            let id: String = chars.by_ref().take(6).collect();
            let secret: String = chars.take(16).collect();
            let token = format!("{id}.{secret}");
            write_private(path, &format!("{token}\n"))?;
            token
        }
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let (id, _) = token
        .split_once('.')
        .with_context(|| format!("{} is not <id>.<secret>", path.display()))?;
    Ok((id.to_owned(), token))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The names the serving certificate is valid for: the listen and advertised addresses,
/// loopback, the `kubernetes` Service's cluster IP and DNS names, the host name, and the
/// loopback name of control's own clients.
pub fn serving_names(
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    service_cidr: Ipv4Cidr,
) -> Vec<String> {
    let mut names: Vec<String> = vec![
        Ipv4Addr::LOCALHOST.to_string(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        LOOPBACK_NAME.into(),
    ];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    if let Some(a) = advertise.filter(|a| a.ip() != listen.ip()) {
        names.push(a.ip().to_string());
    }
    if let Some(ip) = service_cidr.nth(1) {
        names.push(IpAddr::V4(ip).to_string());
    }
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && !names.iter().any(|n| n == host) {
            names.push(host.to_owned());
        }
    }
    names.dedup();
    names
}

/// The address clients of this host reach the server at (loopback for a wildcard listen).
pub fn reachable(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    }
}

/// A client of this process's own API server, the road every other client takes: HTTPS to
/// the loopback name, trusting the cluster CA, as `identity` (one of the in-process
/// components' certificates) with `agent` as its user agent (the field manager and event
/// source its writes are recorded under, as Kubernetes').
///
/// # Errors
/// When the client cannot be built.
pub fn self_client(
    addr: SocketAddr,
    pki: &Pki,
    identity: &Issued,
    agent: &'static str,
) -> Result<kube::Client> {
    let url: http::Uri = format!("https://{}", reachable(addr))
        .parse()
        .context("API URL")?;
    let mut config = kube::Config::new(url);
    config.root_cert = Some(vec![der(pki.ca.cert_pem())?]);
    config.tls_server_name = Some(LOOPBACK_NAME.to_owned());
    config.auth_info.client_certificate_data = Some(STANDARD.encode(&identity.cert_pem));
    config.auth_info.client_key_data = Some(STANDARD.encode(&identity.key_pem).into());
    config.read_timeout = Some(Duration::from_mins(5));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(agent),
    ));
    kube::Client::try_from(config).context("building the API client")
}

fn der(pem: &str) -> Result<Vec<u8>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())
        .context("the CA certificate")?
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_token_is_made_once_in_kubeadms_form_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NODE_TOKEN);
        let (id, token) = bootstrap_token(&path).unwrap();
        let (head, secret) = token.split_once('.').unwrap();
        assert_eq!((head, head.len(), secret.len()), (id.as_str(), 6, 16));
        assert!(
            token
                .bytes()
                .all(|b| b == b'.' || b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_eq!(bootstrap_token(&path).unwrap(), (id, token));
    }

    #[test]
    fn first_start_writes_the_ca_the_admin_kubeconfig_and_a_serving_certificate_for_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let cidr = Ipv4Cidr::parse_masked("10.96.0.0/12").unwrap();
        let names = serving_names(
            "0.0.0.0:6443".parse().unwrap(),
            Some("192.0.2.7:6443".parse().unwrap()),
            cidr,
        );
        assert!(names.iter().any(|n| n == "10.96.0.1"), "{names:?}");
        assert!(names.iter().any(|n| n == "192.0.2.7"), "{names:?}");
        assert!(
            names
                .iter()
                .any(|n| n == "kubernetes.default.svc.cluster.local")
        );
        let pki = prepare(
            dir.path(),
            &names,
            "https://127.0.0.1:6443",
            &Flags::default(),
        )
        .unwrap();
        let kubeconfig = std::fs::read_to_string(&pki.admin_kubeconfig).unwrap();
        assert!(kubeconfig.contains("server: \"https://127.0.0.1:6443\""));
        assert!(kubeconfig.contains("client-certificate-data"));
        let again = prepare(
            dir.path(),
            &names,
            "https://127.0.0.1:6443",
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(
            pki.ca.cert_pem(),
            again.ca.cert_pem(),
            "the CA is kept across starts"
        );
        let only_cert = Flags {
            tls_cert_file: Some(dir.path().join("x")),
            ..Flags::default()
        };
        assert!(prepare(dir.path(), &names, "https://127.0.0.1:6443", &only_cert).is_err());
    }
}
