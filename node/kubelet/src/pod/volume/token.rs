//! ServiceAccount tokens for projected volumes, as the kubelet's token manager keeps them:
//! requested through `TokenRequest` bound to the pod, cached, and requested again once 80%
//! of their lifetime has passed or they are older than a day.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Pod, ServiceAccountTokenProjection},
};

use crate::pod::command::{ConfigError, Sources};

/// The lifetime asked for when a projection names none (the API's default for
/// `serviceAccountToken.expirationSeconds`).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// A token this old is replaced whatever its lifetime (the kubelet's `maxTTL`).
const MAX_AGE_SECONDS: i64 = 24 * 60 * 60;
/// The account of a pod that names none.
const DEFAULT_ACCOUNT: &str = "default";

/// What a cached token was asked for; a different request (another audience, lifetime or
/// pod incarnation) never shares a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    account: String,
    audience: Option<String>,
    expiration_seconds: i64,
    pod_name: String,
    pod_uid: String,
}

/// A token and when it stops being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The signed token.
    pub token: String,
    /// Its expiry, Unix seconds.
    pub expires: i64,
    /// The lifetime the API server gave it, in seconds.
    pub lifetime: i64,
}

impl Token {
    /// When it was issued: its expiry less its lifetime.
    #[must_use]
    pub fn issued(&self) -> i64 {
        self.expires - self.lifetime
    }

    /// Whether a new token should be asked for at `now` (Unix seconds): once 80% of the
    /// lifetime has passed, or a day after issue, as the kubelet's `requiresRefresh`.
    #[must_use]
    pub fn needs_refresh(&self, now: i64) -> bool {
        now > self.issued() + MAX_AGE_SECONDS || now > self.expires - self.lifetime * 20 / 100
    }
}

/// Bound tokens by what they were asked for, shared by every pod of the node.
#[derive(Debug, Default)]
pub struct TokenManager {
    cache: Mutex<HashMap<Key, Token>>,
}

impl TokenManager {
    /// The token `projection` of `pod` needs at `now` (Unix seconds): the cached one while
    /// it is fresh, a new one otherwise. When asking fails, a cached token that has not
    /// expired yet is kept, as the kubelet does.
    ///
    /// # Errors
    /// The API refused or could not be asked, and no valid token is cached.
    pub async fn token(
        &self,
        sources: &dyn Sources,
        pod: &Pod,
        projection: &ServiceAccountTokenProjection,
        now: i64,
    ) -> Result<String, ConfigError> {
        let key = key(pod, projection);
        let cached = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache.retain(|_, t| t.expires > now);
            cache.get(&key).cloned()
        };
        if let Some(t) = &cached
            && !t.needs_refresh(now)
        {
            return Ok(t.token.clone());
        }
        match sources
            .service_account_token(&key.namespace, &key.account, &request(&key))
            .await
        {
            Ok(answer) => {
                let token = Token {
                    token: answer
                        .status
                        .as_ref()
                        .map(|s| s.token.clone())
                        .unwrap_or_default(),
                    expires: answer
                        .status
                        .as_ref()
                        .map_or(now, |s| s.expiration_timestamp.0.as_second()),
                    lifetime: answer
                        .spec
                        .expiration_seconds
                        .unwrap_or(key.expiration_seconds),
                };
                if token.token.is_empty() || token.expires <= now {
                    return Err(ConfigError::Api(
                        "the token request was answered without a valid token".to_owned(),
                    ));
                }
                tracing::debug!(pod = %key.pod_name, account = %key.account, expires = token.expires, "service account token issued");
                let out = token.token.clone();
                self.cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key, token);
                Ok(out)
            }
            Err(err) => match cached {
                Some(t) => {
                    tracing::warn!(pod = %key.pod_name, account = %key.account, %err, "token refresh failed; the current token stays until it expires");
                    Ok(t.token)
                }
                None => Err(err),
            },
        }
    }

    /// Drops the tokens of a pod that is gone.
    pub fn forget_pod(&self, uid: &str) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| k.pod_uid != uid);
    }

    /// How many tokens are cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no token is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key(pod: &Pod, projection: &ServiceAccountTokenProjection) -> Key {
    let meta = &pod.metadata;
    Key {
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| skiff_types::namespace::DEFAULT.to_owned()),
        account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_ACCOUNT.to_owned()),
        audience: projection.audience.clone().filter(|a| !a.is_empty()),
        expiration_seconds: projection
            .expiration_seconds
            .unwrap_or(DEFAULT_EXPIRATION_SECONDS),
        pod_name: meta.name.clone().unwrap_or_default(),
        pod_uid: meta.uid.clone().unwrap_or_default(),
    }
}

/// The `TokenRequest` the kubelet sends: the projection's audience (none: the API server's
/// own), its lifetime, bound to the pod by name and uid.
fn request(key: &Key) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            audiences: key.audience.iter().cloned().collect(),
            expiration_seconds: Some(key.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(key.pod_name.clone()),
                uid: Some(key.pod_uid.clone()),
            }),
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::core::v1::PodSpec, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    use super::*;
    use crate::pod::volume::testing::FakeSources;

    const T0: i64 = 1_700_000_000;

    fn pod(uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".to_owned()),
                namespace: Some("ns".to_owned()),
                uid: Some(uid.to_owned()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some("builder".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn projection(seconds: Option<i64>, audience: Option<&str>) -> ServiceAccountTokenProjection {
        ServiceAccountTokenProjection {
            path: "token".to_owned(),
            expiration_seconds: seconds,
            audience: audience.map(str::to_owned),
        }
    }

    fn token(expires: i64, lifetime: i64) -> Token {
        Token {
            token: "t".to_owned(),
            expires,
            lifetime,
        }
    }

    #[test]
    fn a_token_is_refreshed_once_eighty_percent_of_its_lifetime_passed() {
        let t = token(T0 + 3607, 3607);
        // 20% of 3607 s, in whole seconds as the kubelet computes it, is 721 s.
        assert!(!t.needs_refresh(T0));
        assert!(!t.needs_refresh(T0 + 3607 - 721));
        assert!(t.needs_refresh(T0 + 3607 - 720));
    }

    #[test]
    fn a_long_lived_token_is_refreshed_after_a_day() {
        let year = 365 * 24 * 3600;
        let t = token(T0 + year, year);
        assert!(!t.needs_refresh(T0 + MAX_AGE_SECONDS));
        assert!(t.needs_refresh(T0 + MAX_AGE_SECONDS + 1));
    }

    #[tokio::test]
    async fn the_request_is_bound_to_the_pod_with_the_projection_audience_and_lifetime() {
        let sources = FakeSources::at(T0);
        let tokens = TokenManager::default();
        let got = tokens
            .token(
                &sources,
                &pod("u1"),
                &projection(Some(7200), Some("vault")),
                T0,
            )
            .await
            .unwrap();
        let requests = sources.token_requests();
        assert_eq!(requests.len(), 1);
        let (ns, account, req) = &requests[0];
        assert_eq!((ns.as_str(), account.as_str()), ("ns", "builder"));
        assert_eq!(req.spec.audiences, ["vault"]);
        assert_eq!(req.spec.expiration_seconds, Some(7200));
        let bound = req.spec.bound_object_ref.as_ref().unwrap();
        assert_eq!(
            (
                bound.kind.as_deref(),
                bound.name.as_deref(),
                bound.uid.as_deref()
            ),
            (Some("Pod"), Some("p"), Some("u1"))
        );
        assert_eq!(got, "token-1");
    }

    #[tokio::test]
    async fn no_audience_leaves_it_to_the_api_server_and_the_lifetime_defaults_to_an_hour() {
        let sources = FakeSources::at(T0);
        TokenManager::default()
            .token(&sources, &pod("u1"), &projection(None, Some("")), T0)
            .await
            .unwrap();
        let (_, _, req) = &sources.token_requests()[0];
        assert!(req.spec.audiences.is_empty());
        assert_eq!(req.spec.expiration_seconds, Some(3600));
    }

    #[tokio::test]
    async fn a_fresh_token_is_reused_and_a_stale_one_replaced() {
        let sources = FakeSources::at(T0);
        let tokens = TokenManager::default();
        let (p, proj) = (pod("u1"), projection(Some(1000), None));
        let first = tokens.token(&sources, &p, &proj, T0).await.unwrap();
        let again = tokens.token(&sources, &p, &proj, T0 + 799).await.unwrap();
        assert_eq!((first.as_str(), again.as_str()), ("token-1", "token-1"));
        let refreshed = tokens.token(&sources, &p, &proj, T0 + 801).await.unwrap();
        assert_eq!(refreshed, "token-2");
        assert_eq!(sources.token_requests().len(), 2);
        assert_eq!(tokens.len(), 1);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_unexpired_token_and_fails_once_it_expired() {
        let sources = FakeSources::at(T0);
        let tokens = TokenManager::default();
        let (p, proj) = (pod("u1"), projection(Some(1000), None));
        tokens.token(&sources, &p, &proj, T0).await.unwrap();
        sources.fail_tokens("serviceaccounts \"builder\" not found");
        let kept = tokens.token(&sources, &p, &proj, T0 + 900).await.unwrap();
        assert_eq!(kept, "token-1");
        let err = tokens
            .token(&sources, &p, &proj, T0 + 1000)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "serviceaccounts \"builder\" not found");
        assert!(tokens.is_empty());
    }

    #[tokio::test]
    async fn a_new_pod_incarnation_gets_its_own_token_and_forgetting_drops_it() {
        let sources = FakeSources::at(T0);
        let tokens = TokenManager::default();
        let proj = projection(None, None);
        tokens.token(&sources, &pod("u1"), &proj, T0).await.unwrap();
        let second = tokens.token(&sources, &pod("u2"), &proj, T0).await.unwrap();
        assert_eq!(second, "token-2");
        tokens.forget_pod("u1");
        assert_eq!(tokens.len(), 1);
    }
}
