//! The node endpoint's TLS: its serving certificate and the cluster CA that client
//! certificates must chain to (a client without one still completes the handshake, to be
//! answered 401 as the kubelet answers anonymous requests).

use std::sync::Arc;

use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Why the TLS settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM text holds no certificate or key.
    #[error("{0}: no usable PEM")]
    Pem(&'static str),
    /// rustls refused a certificate, the key or the CA.
    #[error("{what}: {source}")]
    Rustls {
        /// Which part.
        what: &'static str,
        /// The failure.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The server configuration serving `cert_pem`/`key_pem` and verifying client certificates
/// against `client_cas` (DER, as a kubeconfig's client config holds them).
///
/// # Errors
/// When a PEM text does not parse or rustls refuses it.
pub fn server_config(
    client_cas: &[CertificateDer<'static>],
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let rustls = |what| {
        move |e: rustls::Error| TlsError::Rustls {
            what,
            source: Box::new(e),
        }
    };
    let mut roots = RootCertStore::empty();
    for cert in client_cas {
        roots.add(cert.clone()).map_err(rustls("client CA"))?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Rustls {
                what: "client CA",
                source: Box::new(e),
            })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| TlsError::Pem("serving key"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem, "serving certificate")?, key)
        .map_err(rustls("serving certificate and key"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM text.
///
/// # Errors
/// When there are none or one does not parse.
pub fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem(what))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(what));
    }
    Ok(certs)
}
