//! ServiceAccount tokens: ES256 JWTs with kube's bound-token claims, signed by a key
//! `control` keeps next to the CA (`sa.key`, `sa.pub`) and verified by the authenticator.

use std::path::Path;

use aws_lc_rs::{
    digest,
    encoding::AsDer,
    rand::SystemRandom,
    signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
        UnparsedPublicKey,
    },
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use serde::{Deserialize, Serialize};

use crate::ca::{CaError, write_file, write_private};

/// The issuer of every token, kube-apiserver's default `--service-account-issuer`.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The private key's file in the PKI directory.
pub const KEY_FILE: &str = "sa.key";
/// The public key's file in the PKI directory (for anyone verifying tokens offline).
pub const PUB_FILE: &str = "sa.pub";

/// Why a token could not be made or was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key file could not be read or written.
    #[error("service account key")]
    Io(#[from] CaError),
    /// The key file does not hold a P-256 PKCS#8 key.
    #[error("service account key is not a PKCS#8 P-256 key")]
    Key,
    /// Signing failed.
    #[error("signing failed")]
    Sign,
    /// The token is not three base64url parts with a JSON header and claims.
    #[error("malformed token")]
    Malformed,
    /// The header names another algorithm or key.
    #[error("unexpected token algorithm")]
    Algorithm,
    /// The signature does not verify with this key.
    #[error("invalid signature")]
    Signature,
    /// The token was issued by another issuer.
    #[error("invalid issuer")]
    Issuer,
    /// The token has expired.
    #[error("token has expired")]
    Expired,
    /// The token is not valid yet.
    #[error("token is not valid yet")]
    NotYetValid,
    /// None of the token's audiences is one the server accepts.
    #[error("token audiences {0:?} is invalid for the target audiences")]
    Audience(Vec<String>),
}

/// A reference to the object a token is bound to (the ServiceAccount, the pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Its name.
    pub name: String,
    /// Its uid: the token dies with the object it names.
    pub uid: String,
}

/// The `kubernetes.io` private claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeClaims {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub serviceaccount: ObjectRef,
    /// The pod the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
}

/// A bound token's claims, as kube-apiserver writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer ([`ISSUER`]).
    pub iss: String,
    /// `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// A unique id.
    pub jti: String,
    /// The ServiceAccount and the bound object.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubeClaims,
}

impl Claims {
    /// The claims of a token for `account` in `namespace`, for `audiences`, valid from `now`
    /// for `seconds`, bound to `pod` if given.
    #[must_use]
    pub fn new(
        namespace: &str,
        account: ObjectRef,
        pod: Option<ObjectRef>,
        audiences: Vec<String>,
        now: i64,
        seconds: i64,
    ) -> Self {
        Self {
            iss: ISSUER.to_owned(),
            sub: format!("system:serviceaccount:{namespace}:{}", account.name),
            aud: audiences,
            exp: now + seconds,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: KubeClaims {
                namespace: namespace.to_owned(),
                serviceaccount: account,
                pod,
            },
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    kid: String,
}

/// The key tokens are signed with (ES256).
#[derive(Debug)]
pub struct SigningKey {
    key: EcdsaKeyPair,
    kid: String,
}

impl SigningKey {
    /// A new random key.
    ///
    /// # Errors
    /// When the key cannot be made.
    pub fn generate() -> Result<(Self, Vec<u8>), TokenError> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| TokenError::Key)?;
        let der = pkcs8.as_ref().to_vec();
        Ok((Self::from_pkcs8(&der)?, der))
    }

    /// The key of a PKCS#8 document.
    ///
    /// # Errors
    /// When it is not a P-256 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, TokenError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| TokenError::Key)?;
        let spki = key.public_key().as_der().map_err(|_| TokenError::Key)?;
        // kube's key id: the unpadded base64url SHA-256 of the public key's DER.
        let kid = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, spki.as_ref()));
        Ok(Self { key, kid })
    }

    /// The key kept in `dir` (`sa.key`, PKCS#8 PEM, and `sa.pub`), made there on first use.
    ///
    /// # Errors
    /// When the files cannot be read, parsed or written.
    pub fn load_or_create(dir: &Path) -> Result<Self, TokenError> {
        let path = dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let der = pem_body(&pem).ok_or(TokenError::Key)?;
                Self::from_pkcs8(&der)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let (key, der) = Self::generate()?;
                write_private(&path, &pem("PRIVATE KEY", &der))?;
                let spki = key.key.public_key().as_der().map_err(|_| TokenError::Key)?;
                write_file(&dir.join(PUB_FILE), &pem("PUBLIC KEY", spki.as_ref()))?;
                Ok(key)
            }
            Err(source) => Err(CaError::Io { path, source }.into()),
        }
    }

    /// The verifier of this key's tokens.
    #[must_use]
    pub fn verifier(&self) -> Verifier {
        Verifier {
            public: self.key.public_key().as_ref().to_vec(),
            kid: self.kid.clone(),
        }
    }

    /// The signed token carrying `claims`.
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = Header {
            alg: "ES256".into(),
            kid: self.kid.clone(),
        };
        let part = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let header = serde_json::to_vec(&header).map_err(|_| TokenError::Sign)?;
        let claims = serde_json::to_vec(claims).map_err(|_| TokenError::Sign)?;
        let signed = format!("{}.{}", part(&header), part(&claims));
        let signature = self
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .map_err(|_| TokenError::Sign)?;
        Ok(format!("{signed}.{}", part(signature.as_ref())))
    }
}

/// Checks tokens signed by a [`SigningKey`].
#[derive(Debug, Clone)]
pub struct Verifier {
    public: Vec<u8>,
    kid: String,
}

impl Verifier {
    /// Whether `token` looks like a JWT of this issuer, before any check: lets other token
    /// authenticators answer for tokens that are not ours.
    #[must_use]
    pub fn is_ours(token: &str) -> bool {
        let Some((header, _)) = token.split_once('.') else {
            return false;
        };
        URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice::<Header>(&h).ok())
            .is_some()
    }

    /// The claims of `token` when its signature, issuer, validity at `now` (Unix seconds)
    /// and audiences (one of `audiences`) hold.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn verify(
        &self,
        token: &str,
        now: i64,
        audiences: &[String],
    ) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| TokenError::Malformed);
        let head: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        if head.alg != "ES256" || head.kid != self.kid {
            return Err(TokenError::Algorithm);
        }
        let signed_len = header.len() + 1 + claims.len();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(&token.as_bytes()[..signed_len], &decode(signature)?)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(claims)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Issuer);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if now < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        if !claims.aud.iter().any(|a| audiences.contains(a)) {
            return Err(TokenError::Audience(claims.aud));
        }
        Ok(claims)
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out + "-----END " + label + "-----\n"
}

fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims::new(
            "team",
            ObjectRef {
                name: "builder".into(),
                uid: "sa-uid".into(),
            },
            Some(ObjectRef {
                name: "web-0".into(),
                uid: "pod-uid".into(),
            }),
            vec![ISSUER.into()],
            now,
            600,
        )
    }

    #[test]
    fn a_signed_token_verifies_and_carries_kubes_bound_claims() {
        let (key, _) = SigningKey::generate().unwrap();
        let token = key.sign(&claims(1000)).unwrap();
        assert!(Verifier::is_ours(&token));
        let got = key
            .verifier()
            .verify(&token, 1001, &[ISSUER.into()])
            .unwrap();
        assert_eq!(got.sub, "system:serviceaccount:team:builder");
        assert_eq!(got.exp, 1600);
        let payload = token.split('.').nth(1).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(json["kubernetes.io"]["pod"]["uid"], "pod-uid");
        assert_eq!(json["kubernetes.io"]["serviceaccount"]["name"], "builder");
        assert_eq!(json["aud"][0], ISSUER);
    }

    #[test]
    fn expired_early_wrong_audience_and_tampered_tokens_are_refused() {
        let (key, _) = SigningKey::generate().unwrap();
        let v = key.verifier();
        let token = key.sign(&claims(1000)).unwrap();
        let aud = [ISSUER.to_owned()];
        assert!(matches!(
            v.verify(&token, 1600, &aud),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            v.verify(&token, 999, &aud),
            Err(TokenError::NotYetValid)
        ));
        assert!(matches!(
            v.verify(&token, 1001, &["vault".into()]),
            Err(TokenError::Audience(_))
        ));
        let mut forged = claims(1000);
        forged.kubernetes.namespace = "kube-system".into();
        let other = key.sign(&forged).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = other.split('.').nth(1).unwrap();
        assert!(matches!(
            v.verify(&parts.join("."), 1001, &aud),
            Err(TokenError::Signature)
        ));
        let (stranger, _) = SigningKey::generate().unwrap();
        let foreign = stranger.sign(&claims(1000)).unwrap();
        assert!(v.verify(&foreign, 1001, &aud).is_err());
        assert!(matches!(
            v.verify("a.b", 1001, &aud),
            Err(TokenError::Malformed)
        ));
    }

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(dir.path()).unwrap();
        assert!(dir.path().join(PUB_FILE).exists());
        let again = SigningKey::load_or_create(dir.path()).unwrap();
        let token = key.sign(&claims(1000)).unwrap();
        assert!(
            again
                .verifier()
                .verify(&token, 1001, &[ISSUER.into()])
                .is_ok()
        );
    }
}
