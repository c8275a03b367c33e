//! HTTPS for the harness's own requests to the API server: the credentials of a kubeconfig
//! (CA, client certificate and key) as rustls configurations, and one raw request over a
//! blocking TLS stream.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use base64::{Engine, engine::general_purpose::STANDARD};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

/// What a kubeconfig with a client certificate holds (PEM).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The CA that signed the server's certificate.
    pub ca_pem: String,
    /// The client certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

impl Credentials {
    /// The CA and client certificate of the first cluster and user of a kubeconfig with
    /// inline data (what `control` writes).
    ///
    /// # Errors
    /// When the file is missing or lacks the data.
    pub fn from_kubeconfig(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
        let field = |section: &str, inner: &str, key: &str| -> Result<String> {
            let b64 = doc[section][0][inner][key]
                .as_str()
                .with_context(|| format!("{} has no {section}[0].{inner}.{key}", path.display()))?;
            Ok(String::from_utf8(STANDARD.decode(b64)?)?)
        };
        Ok(Self {
            ca_pem: field("clusters", "cluster", "certificate-authority-data")?,
            cert_pem: field("users", "user", "client-certificate-data")?,
            key_pem: field("users", "user", "client-key-data")?,
        })
    }

    /// A rustls client configuration trusting the CA and presenting the client
    /// certificate; HTTP/1.1 only (the harness speaks it by hand).
    ///
    /// # Errors
    /// When a PEM does not parse.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).context("client key")?;
        let config = builder()
            .with_root_certificates(roots(&self.ca_pem)?)
            .with_client_auth_cert(certs, key)?;
        Ok(Arc::new(config))
    }

    /// A configuration trusting the CA that presents no certificate (an anonymous caller).
    ///
    /// # Errors
    /// When the CA does not parse.
    pub fn anonymous_config(&self) -> Result<Arc<ClientConfig>> {
        Ok(Arc::new(
            builder()
                .with_root_certificates(roots(&self.ca_pem)?)
                .with_no_client_auth(),
        ))
    }
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
}

/// A root store of the certificates in `pem`.
///
/// # Errors
/// When none parses.
pub fn roots(pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.context("CA certificate")?)?;
    }
    Ok(roots)
}

/// Sends `request` (a whole HTTP/1 request) to `address:port` over TLS and reads the answer
/// until the server closes the connection.
///
/// # Errors
/// On a connection or handshake failure (an untrusted server, a refused certificate).
pub fn exchange(
    config: Arc<ClientConfig>,
    address: IpAddr,
    port: u16,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let tcp = TcpStream::connect((address, port))?;
    tcp.set_read_timeout(Some(timeout))?;
    let conn = ClientConnection::new(config, ServerName::IpAddress(address.into()))?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    // The server may answer (413) before reading a large body; a failed write is fine once
    // the handshake is done.
    let _ = tls.write_all(request);
    let _ = tls.flush();
    // Read without writing: a body the server refused may still sit unsent in rustls, and
    // the stream's own read would try to send it first and fail before the answer.
    let (conn, sock) = (&mut tls.conn, &mut tls.sock);
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match conn.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::WouldBlock => match conn.read_tls(sock) {
                Ok(0) => break,
                Ok(_) => {
                    conn.process_new_packets()?;
                }
                // A server that resets a connection whose body it refused still said all it
                // had to.
                Err(_) if !response.is_empty() => break,
                Err(err) => return Err(err.into()),
            },
            // Closed without close_notify after the answer.
            Err(err) if err.kind() == ErrorKind::UnexpectedEof => break,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(response)
}

/// One GET to a node endpoint at `addr` (`host:port`) over `client`'s TLS; the whole
/// answer (status line, headers, body).
///
/// # Errors
/// When the node cannot be reached or the connection breaks before an answer.
pub async fn node_get(
    client: &skiff_api::kubelet_client::KubeletClient,
    addr: &str,
    path: &str,
) -> Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = client.dial(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut reply = Vec::new();
    // A server closing without TLS's close_notify has still said all it had to.
    if let Err(err) = s.read_to_end(&mut reply).await
        && (err.kind() != ErrorKind::UnexpectedEof || reply.is_empty())
    {
        return Err(err.into());
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// [`node_get`] from synchronous code, on a runtime of its own (in the calling thread, so
/// in its network namespace).
///
/// # Errors
/// As [`node_get`].
pub fn node_get_blocking(
    client: &skiff_api::kubelet_client::KubeletClient,
    addr: &str,
    path: &str,
) -> Result<String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(node_get(client, addr, path))
}
