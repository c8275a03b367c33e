//! The certificate authority: one key and self-signed certificate that every serving and
//! client certificate of the cluster chains to.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// The CA certificate's file name in a PKI directory.
pub const CA_CERT: &str = "ca.crt";
/// The CA key's file name in a PKI directory.
pub const CA_KEY: &str = "ca.key";

/// How long the CA is valid (kubeadm's ten years).
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long an issued certificate is valid (kubeadm's one year).
const LEAF_VALIDITY: Duration = Duration::days(365);

/// Why a certificate could not be made, loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Generating a key or signing a certificate failed.
    #[error("certificate generation")]
    Generate(#[from] rcgen::Error),
    /// rcgen keeps one value per subject attribute, so an issued certificate names at most
    /// one group (certificates from elsewhere may carry several; all are read).
    #[error("a certificate skiff issues carries at most one group, not {0}")]
    Groups(usize),
    /// Reading or writing a PKI file failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// The cluster CA: signs serving and client certificates.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA named `common_name` with a fresh key.
    ///
    /// # Errors
    /// When key generation or signing fails.
    pub fn generate(common_name: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of a certificate and key given as PEM.
    ///
    /// # Errors
    /// When either does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The CA kept in `dir` (`ca.crt`, `ca.key`), created there on first use.
    ///
    /// # Errors
    /// When the files cannot be read, parsed or written.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if cert_path.exists() && key_path.exists() {
            let cert = read(&cert_path)?;
            let key = read(&key_path)?;
            return Self::from_pem(&cert, &key);
        }
        let ca = Self::generate("skiff-ca")?;
        write_private(&key_path, &ca.key_pem)?;
        write_file(&cert_path, &ca.cert_pem)?;
        Ok(ca)
    }

    /// The CA certificate (PEM), what clients and the server trust.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A client certificate for `user` in `groups` (`CN` and an `O`, as Kubernetes reads a
    /// certificate's identity).
    ///
    /// # Errors
    /// When there is more than one group, or key generation or signing fails.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<Issued, CaError> {
        if groups.len() > 1 {
            return Err(CaError::Groups(groups.len()));
        }
        let mut params = leaf(user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&params)
    }

    /// A serving certificate for `common_name`, valid for `names` (DNS names and IP
    /// addresses).
    ///
    /// # Errors
    /// When a name is not a valid DNS name, or signing fails.
    pub fn issue_server(&self, common_name: &str, names: &[String]) -> Result<Issued, CaError> {
        self.sign(&server_params(common_name, names)?)
    }

    /// Signs a PKCS#10 request (PEM) as a client certificate for the subject it asks for,
    /// with this CA's validity, serial and usages (nothing else of the request is kept).
    /// Returns the certificate (PEM).
    ///
    /// # Errors
    /// When the request does not parse, its signature is wrong, or signing fails.
    pub fn sign_client_request(&self, csr_pem: &str) -> Result<String, CaError> {
        let request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = leaf("");
        params.distinguished_name = request.params.distinguished_name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(params.signed_by(&request.public_key, &self.issuer)?.pem())
    }

    fn sign(&self, params: &CertificateParams) -> Result<Issued, CaError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The parameters of a serving certificate for `common_name`, valid for `names`.
fn server_params(common_name: &str, names: &[String]) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    let base = leaf(common_name);
    params.distinguished_name = base.distinguished_name;
    params.not_before = base.not_before;
    params.not_after = base.not_after;
    params.serial_number = base.serial_number;
    params.key_usages = base.key_usages;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// A self-signed serving certificate for `common_name`, valid for `names`, as the kubelet
/// makes for itself when no serving certificate is given (clients that reach it, the API
/// server, do not verify it, as kube-apiserver without `--kubelet-certificate-authority`).
///
/// # Errors
/// When a name is not a valid DNS name or IP address, or signing fails.
pub fn self_signed_server(common_name: &str, names: &[String]) -> Result<Issued, CaError> {
    let key = KeyPair::generate()?;
    let cert = server_params(common_name, names)?.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A fresh key and a PKCS#10 request (both PEM) for a client certificate naming `user` in
/// `group`, what a node sends in a `CertificateSigningRequest`.
///
/// # Errors
/// When key generation or signing fails.
pub fn client_request(user: &str, group: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, group);
    params.distinguished_name.push(DnType::CommonName, user);
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// The parameters every issued certificate starts from: a subject, a random serial, a
/// year's validity and the key usages of a TLS key.
fn leaf(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, LEAF_VALIDITY);
    params
}

/// A random positive serial number and a validity from a little before now (clocks of
/// clients differ) for `length`.
fn validity(params: &mut CertificateParams, length: Duration) {
    let mut serial = *uuid::Uuid::new_v4().as_bytes();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + length;
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file others may read (a certificate, a kubeconfig without secrets).
///
/// # Errors
/// When the file cannot be written.
pub fn write_file(path: &Path, contents: &str) -> Result<(), CaError> {
    std::fs::write(path, contents).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file only its owner may read (a key, a kubeconfig with a key, a token), created
/// with mode 0600 so it is never readable by others, not even briefly.
///
/// # Errors
/// When the file cannot be written.
pub fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Subject;

    #[test]
    fn a_client_certificate_carries_its_user_and_groups() {
        let ca = Ca::generate("test-ca").unwrap();
        let issued = ca.issue_client("alice", &["system:masters"]).unwrap();
        let subject = Subject::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(subject.common_name, "alice");
        assert_eq!(subject.organizations, ["system:masters"]);
        let nobody = ca.issue_client("bob", &[]).unwrap();
        assert!(
            Subject::from_pem(&nobody.cert_pem)
                .unwrap()
                .organizations
                .is_empty()
        );
        assert!(matches!(
            ca.issue_client("carol", &["a", "b"]),
            Err(CaError::Groups(2))
        ));
    }

    #[test]
    fn a_signed_request_names_what_it_asked_for() {
        let ca = Ca::generate("test-ca").unwrap();
        let (csr, _key) = client_request("system:node:n1", "system:nodes").unwrap();
        assert_eq!(
            Subject::from_request_pem(&csr).unwrap().common_name,
            "system:node:n1"
        );
        let cert = ca.sign_client_request(&csr).unwrap();
        let subject = Subject::from_pem(&cert).unwrap();
        assert_eq!(subject.common_name, "system:node:n1");
        assert_eq!(subject.organizations, ["system:nodes"]);
        assert!(ca.sign_client_request("not a request").is_err());
    }

    #[test]
    fn a_self_signed_serving_certificate_names_its_node() {
        let issued = self_signed_server("n1", &["n1".into(), "10.0.0.2".into()]).unwrap();
        assert_eq!(
            Subject::from_pem(&issued.cert_pem).unwrap().common_name,
            "n1"
        );
    }

    #[test]
    fn the_ca_is_created_once_and_loaded_after() {
        let dir = tempfile::tempdir().unwrap();
        let first = Ca::load_or_create(dir.path()).unwrap();
        let second = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(first.cert_pem(), second.cert_pem());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(CA_KEY))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the CA key is private");
        // A loaded CA still signs certificates.
        second.issue_server("x", &["localhost".into()]).unwrap();
    }
}
