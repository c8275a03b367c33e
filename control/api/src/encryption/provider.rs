//! The value transformers kube names providers: AES-GCM, secretbox and identity, with
//! kube's `k8s:enc:<provider>:v1:<key>:` prefix on what they write.

use aes_gcm::{
    Aes128Gcm, Aes256Gcm,
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
};
use crypto_secretbox::XSalsa20Poly1305;

/// One named key of one provider.
pub(super) enum Cipher {
    /// AES-GCM with a 128-bit key.
    Aes128(Box<Aes128Gcm>),
    /// AES-GCM with a 256-bit key.
    Aes256(Box<Aes256Gcm>),
    /// XSalsa20-Poly1305 (`NaCl`'s secretbox) with a 256-bit key.
    Secretbox(Box<XSalsa20Poly1305>),
}

/// A provider's key: what it writes is prefixed with `k8s:enc:<provider>:v1:<name>:`.
pub(super) struct NamedKey {
    pub name: String,
    pub cipher: Cipher,
}

/// Why a key is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The secret is not base64.
    #[error("secret is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The secret has a length the provider cannot use.
    #[error("{provider} needs a key of {expected} bytes, got {actual}")]
    Length {
        /// The provider.
        provider: &'static str,
        /// The lengths it accepts.
        expected: &'static str,
        /// The decoded length.
        actual: usize,
    },
}

impl Cipher {
    /// The provider name in kube's prefix.
    pub fn provider(&self) -> &'static str {
        match self {
            Self::Aes128(_) | Self::Aes256(_) => "aesgcm",
            Self::Secretbox(_) => "secretbox",
        }
    }

    pub fn aesgcm(secret: &[u8]) -> Result<Self, KeyError> {
        match secret.len() {
            16 => Ok(Self::Aes128(Box::new(Aes128Gcm::new(secret.into())))),
            32 => Ok(Self::Aes256(Box::new(Aes256Gcm::new(secret.into())))),
            actual => Err(KeyError::Length {
                provider: "aesgcm",
                expected: "16 or 32",
                actual,
            }),
        }
    }

    pub fn secretbox(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() == 32 {
            Ok(Self::Secretbox(Box::new(XSalsa20Poly1305::new(
                secret.into(),
            ))))
        } else {
            Err(KeyError::Length {
                provider: "secretbox",
                expected: "32",
                actual: secret.len(),
            })
        }
    }

    /// Nonce then ciphertext. AES-GCM authenticates the store key too (as kube does), so a
    /// value copied under another key does not decrypt.
    pub fn seal(&self, key: &str, plain: &[u8]) -> Result<Vec<u8>, aes_gcm::Error> {
        let payload = Payload {
            msg: plain,
            aad: key.as_bytes(),
        };
        match self {
            Self::Aes128(c) => {
                let nonce = Aes128Gcm::generate_nonce(&mut OsRng);
                Ok([nonce.as_slice(), &c.encrypt(&nonce, payload)?].concat())
            }
            Self::Aes256(c) => {
                let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
                Ok([nonce.as_slice(), &c.encrypt(&nonce, payload)?].concat())
            }
            Self::Secretbox(c) => {
                let nonce = XSalsa20Poly1305::generate_nonce(&mut OsRng);
                Ok([nonce.as_slice(), &c.encrypt(&nonce, plain)?].concat())
            }
        }
    }

    /// The plaintext of what [`Cipher::seal`] wrote under `key`.
    pub fn open(&self, key: &str, sealed: &[u8]) -> Result<Vec<u8>, aes_gcm::Error> {
        let nonce_len = match self {
            Self::Aes128(_) | Self::Aes256(_) => 12,
            Self::Secretbox(_) => 24,
        };
        if sealed.len() < nonce_len {
            return Err(aes_gcm::Error);
        }
        let (nonce, msg) = sealed.split_at(nonce_len);
        let payload = Payload {
            msg,
            aad: key.as_bytes(),
        };
        match self {
            Self::Aes128(c) => c.decrypt(nonce.into(), payload),
            Self::Aes256(c) => c.decrypt(nonce.into(), payload),
            Self::Secretbox(c) => c.decrypt(nonce.into(), msg),
        }
    }
}

impl NamedKey {
    /// `k8s:enc:<provider>:v1:<name>:`
    pub fn prefix(&self) -> String {
        format!("k8s:enc:{}:v1:{}:", self.cipher.provider(), self.name)
    }
}
