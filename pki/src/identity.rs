//! Who a client certificate names: Kubernetes reads the subject's `CN` as the user and each
//! `O` as a group.

use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, pem::PemObject};
use x509_parser::{
    certification_request::X509CertificationRequest,
    prelude::{FromDer, X509Certificate, X509Name},
};

/// Why a certificate's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not an X.509 certificate.
    #[error("not an x509 certificate")]
    Parse,
    /// The subject has no common name.
    #[error("the certificate subject has no common name")]
    NoCommonName,
}

/// The identity in a certificate's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `CN`: the user name.
    pub common_name: String,
    /// Each `O`: the groups.
    pub organizations: Vec<String>,
}

impl Subject {
    /// The subject of a DER certificate.
    ///
    /// # Errors
    /// When it does not parse or names no user.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Parse)?;
        Self::from_name(cert.subject())
    }

    /// The subject a PKCS#10 request (PEM) asks for.
    ///
    /// # Errors
    /// When it does not parse or names no user.
    pub fn from_request_pem(pem: &str) -> Result<Self, IdentityError> {
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| IdentityError::Parse)?;
        let (_, request) =
            X509CertificationRequest::from_der(&der).map_err(|_| IdentityError::Parse)?;
        Self::from_name(&request.certification_request_info.subject)
    }

    fn from_name(subject: &X509Name<'_>) -> Result<Self, IdentityError> {
        let common_name = subject
            .iter_common_name()
            .find_map(|a| a.as_str().ok())
            .filter(|cn| !cn.is_empty())
            .ok_or(IdentityError::NoCommonName)?
            .to_owned();
        let organizations = subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .map(str::to_owned)
            .collect();
        Ok(Self {
            common_name,
            organizations,
        })
    }

    /// The subject of the first certificate of a PEM text.
    ///
    /// # Errors
    /// When it does not parse or names no user.
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let der =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| IdentityError::Parse)?;
        Self::from_der(&der)
    }
}
