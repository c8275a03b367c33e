//! The API server's side of the node endpoint: every connection to a node (logs, exec,
//! attach, port-forward, metrics) is TLS and presents the `kube-apiserver-kubelet-client`
//! certificate the node authorizes. Nodes serve a self-signed certificate, as the kubelet
//! does by default, so it is not verified (kube-apiserver without
//! `--kubelet-certificate-authority`); the connection is still encrypted.

use std::{sync::Arc, time::Duration};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

/// The user the API server is to nodes (kubeadm's `apiserver-kubelet-client` certificate).
pub const USER: &str = "kube-apiserver-kubelet-client";

/// How long a node may take to accept the connection and finish the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the node could not be reached, or the client not built.
#[derive(Debug, thiserror::Error)]
pub enum KubeletClientError {
    /// The certificate or key does not parse, or rustls refused them.
    #[error("kubelet client certificate: {0}")]
    Identity(String),
    /// No TCP connection or TLS session to the node endpoint.
    #[error("dialing node endpoint {addr}: {source}")]
    Dial {
        /// `host:port`.
        addr: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The node did not answer in time.
    #[error("node endpoint {0} did not answer in time")]
    Timeout(String),
}

/// How the API server connects to nodes.
#[derive(Debug, Clone)]
pub struct KubeletClient {
    tls: Arc<ClientConfig>,
}

impl Default for KubeletClient {
    /// TLS without a client certificate: nodes answer it 401.
    fn default() -> Self {
        Self {
            tls: Arc::new(builder().with_no_client_auth()),
        }
    }
}

impl KubeletClient {
    /// A client presenting `cert_pem`/`key_pem`.
    ///
    /// # Errors
    /// When either does not parse or rustls refuses them.
    pub fn with_identity(cert_pem: &str, key_pem: &str) -> Result<Self, KubeletClientError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| KubeletClientError::Identity(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| KubeletClientError::Identity(e.to_string()))?;
        let tls = builder()
            .with_client_auth_cert(chain, key)
            .map_err(|e| KubeletClientError::Identity(e.to_string()))?;
        Ok(Self { tls: Arc::new(tls) })
    }

    /// A TLS session to the node endpoint at `addr` (`host:port`, IPv6 in brackets).
    ///
    /// # Errors
    /// When the node cannot be reached or the handshake fails or takes too long.
    pub async fn dial(&self, addr: &str) -> Result<TlsStream<TcpStream>, KubeletClientError> {
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_matches(['[', ']']);
        let name = ServerName::try_from(host.to_owned())
            .unwrap_or_else(|_| ServerName::try_from("node").unwrap_or_else(|_| unreachable!()));
        let connector = TlsConnector::from(Arc::clone(&self.tls));
        let dial = async {
            let tcp = TcpStream::connect(addr).await?;
            connector.connect(name, tcp).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => Err(KubeletClientError::Dial {
                addr: addr.to_owned(),
                source,
            }),
            Err(_) => Err(KubeletClientError::Timeout(addr.to_owned())),
        }
    }
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("aws-lc-rs supports the default protocol versions"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyNodeCertificate(provider)))
}

/// Accepts whichever certificate a node serves, but still checks the handshake's signatures
/// so the session is bound to the key of that certificate.
#[derive(Debug)]
struct AnyNodeCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyNodeCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
