//! Authentication: who a request comes from, from the client certificate its connection
//! presented (verified against the client CA during the TLS handshake) or the bearer token it
//! carries; requests with neither are anonymous, which only the health and version
//! endpoints accept.

pub mod serviceaccount;
pub mod tokens;

use std::{collections::HashMap, sync::Arc};

use http::{HeaderMap, header};
use skiff_machinery::{status::StatusError, user::UserInfo};
use skiff_pki::Subject;

pub use self::{serviceaccount::ServiceAccountTokens, tokens::TokenFileError};

/// The user of requests without credentials.
pub const ANONYMOUS: &str = "system:anonymous";
pub use skiff_machinery::user::UNAUTHENTICATED;

/// The paths anyone may read without credentials (kube-apiserver's
/// `system:public-info-viewer`).
const PUBLIC: [&str; 4] = ["/healthz", "/livez", "/readyz", "/version"];

/// Turns a connection's certificate and a request's headers into a [`UserInfo`].
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: HashMap<String, UserInfo>,
    service_accounts: Option<Arc<ServiceAccountTokens>>,
}

impl Authenticator {
    /// An authenticator that knows no tokens (certificates only).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` as `user` (a line of `--token-auth-file`, or a token `control`
    /// makes itself).
    pub fn add_token(&mut self, token: impl Into<String>, user: UserInfo) {
        self.tokens.insert(token.into(), user);
    }

    /// Accepts ServiceAccount tokens signed and checked by `tokens`.
    pub fn set_service_account_tokens(&mut self, tokens: Arc<ServiceAccountTokens>) {
        self.service_accounts = Some(tokens);
    }

    /// The ServiceAccount token signer and verifier, when one is configured.
    #[must_use]
    pub fn service_account_tokens(&self) -> Option<&Arc<ServiceAccountTokens>> {
        self.service_accounts.as_ref()
    }

    /// Adds every token of a static token file (kube-apiserver's `--token-auth-file` CSV:
    /// `token,user,uid,"group1,group2"`).
    ///
    /// # Errors
    /// When a line has fewer than three fields.
    pub fn add_token_file(&mut self, text: &str) -> Result<(), TokenFileError> {
        for (token, user) in tokens::parse(text)? {
            self.add_token(token, user);
        }
        Ok(())
    }

    /// Who sent a request on a connection whose verified client certificate named
    /// `connection` (if it presented one). A certificate wins over a token, as in
    /// kube-apiserver's union of authenticators; a token that matches nothing is refused
    /// even where anonymous requests would pass.
    ///
    /// # Errors
    /// 401 Unauthorized for an unknown token, and for a request without credentials to any
    /// path but the health and version endpoints.
    pub fn authenticate(
        &self,
        connection: Option<&UserInfo>,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<UserInfo, StatusError> {
        if let Some(user) = connection {
            return Ok(user.clone());
        }
        if let Some(token) = bearer(headers) {
            if let Some(user) = self.tokens.get(token) {
                return Ok(user.clone());
            }
            let now = jiff::Timestamp::now().as_second();
            return match self
                .service_accounts
                .as_ref()
                .and_then(|sa| sa.authenticate(token, now))
            {
                Some(Ok(user)) => Ok(user),
                Some(Err(err)) => {
                    tracing::debug!(%err, "service account token refused");
                    Err(unauthorized())
                }
                None => Err(unauthorized()),
            };
        }
        if is_public(path) {
            return Ok(anonymous());
        }
        Err(unauthorized())
    }
}

/// The identity of a verified client certificate (DER): `CN` is the user, each `O` a
/// group; `None` when the certificate names no user.
#[must_use]
pub fn certificate_user(der: &[u8]) -> Option<UserInfo> {
    match Subject::from_der(der) {
        Ok(subject) => Some(UserInfo::new(subject.common_name, subject.organizations)),
        Err(err) => {
            tracing::debug!(?err, "client certificate without an identity");
            None
        }
    }
}

/// The user of requests without credentials: not in `system:authenticated`.
#[must_use]
pub fn anonymous() -> UserInfo {
    UserInfo {
        name: ANONYMOUS.to_owned(),
        groups: vec![UNAUTHENTICATED.to_owned()],
        ..UserInfo::default()
    }
}

fn is_public(path: &str) -> bool {
    PUBLIC.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized() -> StatusError {
    StatusError::new(401, "Unauthorized", "Unauthorized")
}

#[cfg(test)]
mod tests {
    use skiff_machinery::user::{AUTHENTICATED, MASTERS};

    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = authorization {
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn requests_without_credentials_are_refused_except_health_and_version() {
        let a = Authenticator::new();
        let err = a
            .authenticate(None, "/api/v1/pods", &headers(None))
            .unwrap_err();
        assert_eq!(err.http_status().as_u16(), 401);
        assert_eq!(err.to_json()["reason"], "Unauthorized");
        for path in ["/healthz", "/livez", "/readyz/ping", "/version"] {
            let user = a.authenticate(None, path, &headers(None)).unwrap();
            assert_eq!(user.name, ANONYMOUS);
            assert!(!user.in_group(AUTHENTICATED));
        }
        assert!(a.authenticate(None, "/healthzzz", &headers(None)).is_err());
    }

    #[test]
    fn a_certificate_identity_wins_and_a_known_token_is_its_user() {
        let mut a = Authenticator::new();
        a.add_token("s3cret", UserInfo::new("bob", ["dev"]));
        let admin = UserInfo::new("kubernetes-admin", [MASTERS]);
        let got = a
            .authenticate(Some(&admin), "/api", &headers(Some("Bearer wrong")))
            .unwrap();
        assert_eq!(got, admin);
        let bob = a
            .authenticate(None, "/api", &headers(Some("Bearer s3cret")))
            .unwrap();
        assert_eq!(bob.name, "bob");
        assert!(bob.in_group("dev") && bob.in_group(AUTHENTICATED));
    }

    #[test]
    fn an_unknown_token_is_refused_even_on_public_paths() {
        let a = Authenticator::new();
        let err = a
            .authenticate(None, "/healthz", &headers(Some("Bearer nope")))
            .unwrap_err();
        assert_eq!(err.http_status().as_u16(), 401);
    }
}
