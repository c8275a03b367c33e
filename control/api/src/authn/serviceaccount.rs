//! ServiceAccount tokens: the key that signs them (for `TokenRequest`) and their
//! authentication, which also checks that the account and the bound pod still exist.

use serde_json::Value;
use skiff_machinery::{
    status::StatusError,
    user::{SERVICE_ACCOUNT_PREFIX, SERVICE_ACCOUNTS, UserInfo},
};
use skiff_pki::satoken::{Claims, ISSUER, SigningKey, TokenError, Verifier};
use skiff_store::Store;

use crate::objects;

/// The `extra` key naming the pod a token is bound to.
pub const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The `extra` key naming the uid of the pod a token is bound to.
pub const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// The `extra` key identifying the token (`JTI=<jti>`), which also marks a user as coming from
/// a ServiceAccount token.
pub const CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// Signs and verifies ServiceAccount tokens for the API server's audiences.
#[derive(Debug)]
pub struct ServiceAccountTokens {
    key: SigningKey,
    verifier: Verifier,
    audiences: Vec<String>,
}

impl ServiceAccountTokens {
    /// Tokens signed with `key`, accepted for `audiences` (the issuer when empty, as
    /// kube-apiserver's `--api-audiences` defaults).
    #[must_use]
    pub fn new(key: SigningKey, audiences: Vec<String>) -> Self {
        let audiences = if audiences.is_empty() {
            vec![ISSUER.to_owned()]
        } else {
            audiences
        };
        Self {
            verifier: key.verifier(),
            key,
            audiences,
        }
    }

    /// The audiences tokens are accepted for, and issued for when a request names none.
    #[must_use]
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Signs `claims`.
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        self.key.sign(claims)
    }

    /// The user `token` stands for, if it is a valid ServiceAccount token at `now` (Unix
    /// seconds); `None` when it does not look like one of ours, so other authenticators may
    /// answer.
    ///
    /// # Errors
    /// When it looks like ours but fails a check.
    #[must_use]
    pub fn authenticate(&self, token: &str, now: i64) -> Option<Result<UserInfo, TokenError>> {
        if !Verifier::is_ours(token) {
            return None;
        }
        Some(
            self.verifier
                .verify(token, now, &self.audiences)
                .map(|c| user_of(&c)),
        )
    }
}

/// The user a token's claims name: kube's ServiceAccount user, groups and extra.
#[must_use]
pub fn user_of(claims: &Claims) -> UserInfo {
    let k = &claims.kubernetes;
    let mut user = UserInfo::new(
        format!(
            "{SERVICE_ACCOUNT_PREFIX}{}:{}",
            k.namespace, k.serviceaccount.name
        ),
        [
            SERVICE_ACCOUNTS.to_owned(),
            format!("{SERVICE_ACCOUNTS}:{}", k.namespace),
        ],
    );
    user.uid.clone_from(&k.serviceaccount.uid);
    user.extra
        .insert(CREDENTIAL_ID.into(), vec![format!("JTI={}", claims.jti)]);
    if let Some(pod) = &k.pod {
        user.extra.insert(POD_NAME.into(), vec![pod.name.clone()]);
        user.extra.insert(POD_UID.into(), vec![pod.uid.clone()]);
    }
    user
}

/// Refuses (401) a ServiceAccount token user whose account, or bound pod, was deleted (or
/// replaced by one with another uid) since the token was issued; other users pass.
///
/// # Errors
/// 401 when the account or pod is gone, a store failure otherwise.
pub async fn still_bound(store: &dyn Store, user: &UserInfo) -> Result<(), StatusError> {
    if !user.extra.contains_key(CREDENTIAL_ID) {
        return Ok(());
    }
    let Some((namespace, name)) = user
        .name
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
    else {
        return Ok(());
    };
    check_uid(store, "serviceaccounts", namespace, name, &user.uid).await?;
    let first = |key: &str| user.extra.get(key).and_then(|v| v.first());
    if let (Some(pod), Some(uid)) = (first(POD_NAME), first(POD_UID)) {
        check_uid(store, "pods", namespace, pod, uid).await?;
    }
    Ok(())
}

async fn check_uid(
    store: &dyn Store,
    plural: &str,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<(), StatusError> {
    let info = skiff_resources::by_plural("", "v1", plural)
        .ok_or_else(|| StatusError::internal(format!("{plural} are not served")))?;
    match objects::fetch(store, info, Some(namespace), name).await {
        Ok((obj, _)) if obj.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid) => Ok(()),
        Ok(_) => {
            tracing::debug!(plural, namespace, name, "token bound to a replaced object");
            Err(super::unauthorized())
        }
        Err(err) if err.http_status().as_u16() == 404 => {
            tracing::debug!(plural, namespace, name, "token bound to a deleted object");
            Err(super::unauthorized())
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use skiff_pki::satoken::ObjectRef;

    use super::*;

    fn claims(pod: bool) -> Claims {
        Claims::new(
            "team",
            ObjectRef {
                name: "builder".into(),
                uid: "sa-1".into(),
            },
            pod.then(|| ObjectRef {
                name: "web".into(),
                uid: "pod-1".into(),
            }),
            vec![ISSUER.into()],
            100,
            3600,
        )
    }

    #[test]
    fn a_token_user_is_the_account_in_its_groups_with_the_bound_pod_as_extra() {
        let user = user_of(&claims(true));
        assert_eq!(user.name, "system:serviceaccount:team:builder");
        assert_eq!(user.uid, "sa-1");
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:team",
                "system:authenticated"
            ]
        );
        assert_eq!(user.extra[POD_NAME], ["web"]);
        assert_eq!(user.extra[POD_UID], ["pod-1"]);
        assert!(!user_of(&claims(false)).extra.contains_key(POD_NAME));
    }

    #[test]
    fn only_our_tokens_are_answered_and_the_audience_defaults_to_the_issuer() {
        let (key, _) = SigningKey::generate().unwrap();
        let tokens = ServiceAccountTokens::new(key, Vec::new());
        assert_eq!(tokens.audiences(), [ISSUER]);
        assert!(tokens.authenticate("s3cret", 200).is_none());
        let token = tokens.sign(&claims(false)).unwrap();
        let user = tokens.authenticate(&token, 200).unwrap().unwrap();
        assert_eq!(user.name, "system:serviceaccount:team:builder");
        assert!(tokens.authenticate(&token, 3700).unwrap().is_err());
        let (other, _) = SigningKey::generate().unwrap();
        let picky = ServiceAccountTokens::new(other, vec!["api".into()]);
        let mut c = claims(false);
        c.aud = vec!["api".into()];
        let for_api = picky.sign(&c).unwrap();
        assert!(picky.authenticate(&for_api, 200).unwrap().is_ok());
        assert!(picky.authenticate(&token, 200).unwrap().is_err());
    }
}
