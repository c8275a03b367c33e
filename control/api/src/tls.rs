//! The server side of TLS: the serving certificate (the operator's, or the one `control`
//! issued; the issued one always answers the loopback name its own clients ask for), ALPN for
//! HTTP/2 and HTTP/1.1, and the client CA whose certificates authenticate callers.

use std::sync::Arc;

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// The server name `control`'s own clients ask for, answered with the certificate issued by
/// the cluster CA even when the operator serves another (kube-apiserver's
/// `apiserver-loopback-client`).
pub const LOOPBACK_NAME: &str = "apiserver-loopback-client";

/// Why the TLS settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM text holds no certificate or key, or does not parse.
    #[error("{what}: no usable PEM")]
    Pem {
        /// Which text.
        what: &'static str,
    },
    /// rustls refused the key, the certificates or the client CA.
    #[error("{what}")]
    Rustls {
        /// Which part.
        what: &'static str,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A certificate chain and its key, PEM.
#[derive(Debug, Clone)]
pub struct KeyPairPem {
    /// The chain, leaf first.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

/// What the server needs for TLS.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The certificate served to clients.
    pub serving: KeyPairPem,
    /// The certificate served for [`LOOPBACK_NAME`] (when it differs from `serving`).
    pub loopback: Option<KeyPairPem>,
    /// The CAs whose client certificates are accepted (PEM, one or more).
    pub client_ca_pem: String,
}

/// The rustls server configuration of `settings`: client certificates are asked for and
/// verified when given, but optional (tokens and anonymous health checks need none).
///
/// # Errors
/// When a certificate, key or CA does not parse or does not match.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in certs(&settings.client_ca_pem, "client CA")? {
        roots.add(cert).map_err(|e| TlsError::Rustls {
            what: "client CA",
            source: Box::new(e),
        })?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Rustls {
                what: "client CA",
                source: Box::new(e),
            })?;
    let resolver = Resolver {
        default: certified(&settings.serving, &provider)?,
        loopback: settings
            .loopback
            .as_ref()
            .map(|l| certified(l, &provider))
            .transpose()?,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls {
            what: "protocol versions",
            source: Box::new(e),
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem { what })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what });
    }
    Ok(certs)
}

fn certified(pair: &KeyPairPem, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs(&pair.cert_pem, "serving certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).map_err(|_| TlsError::Pem {
            what: "serving key",
        })?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|e| TlsError::Rustls {
            what: "serving certificate and key",
            source: Box::new(e),
        })
}

/// Picks the loopback certificate for [`LOOPBACK_NAME`], the serving one otherwise.
#[derive(Debug)]
struct Resolver {
    default: Arc<CertifiedKey>,
    loopback: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match (&self.loopback, hello.server_name()) {
            (Some(loopback), Some(LOOPBACK_NAME)) => Some(Arc::clone(loopback)),
            _ => Some(Arc::clone(&self.default)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::{ClientConfig, ClientConnection, ServerConnection};
    use rustls_pki_types::ServerName;
    use skiff_pki::{Ca, Subject};

    use super::*;

    fn client(trust: &Ca, identity: Option<&skiff_pki::Issued>) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(certs(trust.cert_pem(), "ca").unwrap().remove(0))
            .unwrap();
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match identity {
            Some(id) => builder
                .with_client_auth_cert(
                    certs(&id.cert_pem, "cert").unwrap(),
                    PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        })
    }

    /// Runs a handshake in memory; the server certificate the client got and the client
    /// certificate the server verified.
    fn handshake(
        server: &Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> Result<(String, Option<String>), rustls::Error> {
        let mut c = ClientConnection::new(client, ServerName::try_from(name.to_owned()).unwrap())?;
        let mut s = ServerConnection::new(Arc::clone(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        let cn = |chain: Option<&[CertificateDer<'_>]>| {
            chain
                .and_then(|c| c.first())
                .map(|leaf| Subject::from_der(leaf).unwrap().common_name)
        };
        Ok((
            cn(c.peer_certificates()).unwrap_or_default(),
            cn(s.peer_certificates()),
        ))
    }

    #[test]
    fn the_loopback_name_gets_the_cluster_certificate_and_others_the_operators() {
        let cluster = Ca::generate("cluster").unwrap();
        let operator = Ca::generate("operator").unwrap();
        let pair = |i: skiff_pki::Issued| KeyPairPem {
            cert_pem: i.cert_pem,
            key_pem: i.key_pem,
        };
        let server = server_config(&TlsSettings {
            serving: pair(
                operator
                    .issue_server("public", &["api.example".into()])
                    .unwrap(),
            ),
            loopback: Some(pair(
                cluster
                    .issue_server("loopback", &[LOOPBACK_NAME.into()])
                    .unwrap(),
            )),
            client_ca_pem: cluster.cert_pem().to_owned(),
        })
        .unwrap();
        assert_eq!(
            server.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let admin = cluster
            .issue_client("kubernetes-admin", &["system:masters"])
            .unwrap();
        let (got, who) = handshake(&server, client(&cluster, Some(&admin)), LOOPBACK_NAME).unwrap();
        assert_eq!(got, "loopback");
        assert_eq!(who.as_deref(), Some("kubernetes-admin"));
        let (got, who) = handshake(&server, client(&operator, None), "api.example").unwrap();
        assert_eq!((got.as_str(), who), ("public", None));
        // A client certificate of a CA the server does not trust ends the handshake.
        let stranger = operator.issue_client("mallory", &[]).unwrap();
        assert!(handshake(&server, client(&operator, Some(&stranger)), "api.example").is_err());
    }
}
