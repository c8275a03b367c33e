//! Who may use the node endpoint: the caller is the client certificate the TLS handshake
//! verified against the cluster CA, and what it asks is authorized by the API server through
//! a `SubjectAccessReview`, as the kubelet's webhook authenticator and authorizer do.

mod cache;
mod review;

use std::time::Duration;

use async_trait::async_trait;
pub use cache::CachingReviewer;
use http::Method;
pub use review::ApiReviewer;

/// How long an allowed answer is kept (the kubelet's `--authorization-webhook-cache-authorized-ttl`).
pub const ALLOWED_TTL: Duration = Duration::from_mins(5);
/// How long a denied answer is kept (`--authorization-webhook-cache-unauthorized-ttl`).
pub const DENIED_TTL: Duration = Duration::from_secs(30);

/// An authenticated caller: a client certificate's `CN` and `O`s.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The user name.
    pub user: String,
    /// The groups.
    pub groups: Vec<String>,
}

/// What a request asks of the node, as a `SubjectAccessReview`'s resource attributes on the
/// Node object (`nodes/<subresource>`, named after the node).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// The verb, from the HTTP method.
    pub verb: &'static str,
    /// `stats`, `metrics`, `log`, `spec` or `proxy`.
    pub subresource: &'static str,
}

impl Attributes {
    /// The attributes of `method` on `path`, mapped as the kubelet's `GetRequestAttributes`:
    /// `/stats`, `/metrics`, `/logs` and `/spec` have their own subresource, everything else
    /// (logs of containers, exec, attach, port-forward, images) is `proxy`.
    #[must_use]
    pub fn of(method: &Method, path: &str) -> Self {
        let verb = match *method {
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "get",
        };
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let subresource = match first {
            "stats" => "stats",
            "metrics" => "metrics",
            "logs" => "log",
            "spec" => "spec",
            _ => "proxy",
        };
        Self { verb, subresource }
    }

    /// The kubelet's refusal text: `Forbidden (user=u, verb=get, resource=nodes,
    /// subresource=proxy)`.
    #[must_use]
    pub fn forbidden(&self, caller: &Caller) -> String {
        format!(
            "Forbidden (user={}, verb={}, resource=nodes, subresource={})",
            caller.user, self.verb, self.subresource
        )
    }
}

/// Why a review could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server could not be asked or did not answer.
    #[error("subject access review: {0}")]
    Unavailable(String),
}

/// Asks whether `caller` may do `attrs` on this node (the daemon posts a
/// `SubjectAccessReview` to the API server; tests answer from a table).
#[async_trait]
pub trait Reviewer: Send + Sync + 'static {
    /// Whether the request is allowed.
    ///
    /// # Errors
    /// When no answer can be had; the request is then refused.
    async fn allowed(&self, caller: &Caller, attrs: &Attributes) -> Result<bool, ReviewError>;
}

/// The decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Serve it.
    Allow,
    /// 401: no client certificate.
    Unauthorized,
    /// 403 with the kubelet's text.
    Forbidden(String),
}

/// Decides a request of `caller` (none when the handshake had no client certificate).
/// A review that fails refuses the request, as the kubelet does.
pub async fn decide(
    reviewer: &dyn Reviewer,
    caller: Option<&Caller>,
    method: &Method,
    path: &str,
) -> Decision {
    let Some(caller) = caller else {
        return Decision::Unauthorized;
    };
    let attrs = Attributes::of(method, path);
    match reviewer.allowed(caller, &attrs).await {
        Ok(true) => Decision::Allow,
        Ok(false) => Decision::Forbidden(attrs.forbidden(caller)),
        Err(err) => {
            tracing::warn!(user = %caller.user, %err, "node endpoint authorization failed");
            Decision::Forbidden(attrs.forbidden(caller))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// Allows `admin` everything and `reader` only `get nodes/stats`; counts the reviews.
    #[derive(Default)]
    struct Table {
        asked: AtomicUsize,
    }

    #[async_trait]
    impl Reviewer for Table {
        async fn allowed(&self, caller: &Caller, attrs: &Attributes) -> Result<bool, ReviewError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            match caller.user.as_str() {
                "admin" => Ok(true),
                "reader" => Ok(attrs.verb == "get" && attrs.subresource == "stats"),
                _ => Err(ReviewError::Unavailable("down".into())),
            }
        }
    }

    fn caller(user: &str) -> Caller {
        Caller {
            user: user.into(),
            groups: vec!["g".into()],
        }
    }

    #[test]
    fn paths_map_to_the_kubelets_subresources_and_methods_to_verbs() {
        let of = |m: Method, p: &str| {
            let a = Attributes::of(&m, p);
            (a.verb, a.subresource)
        };
        assert_eq!(of(Method::GET, "/stats/summary"), ("get", "stats"));
        assert_eq!(of(Method::GET, "/metrics"), ("get", "metrics"));
        assert_eq!(of(Method::GET, "/logs/"), ("get", "log"));
        assert_eq!(of(Method::GET, "/containerLogs/ns/p/c"), ("get", "proxy"));
        assert_eq!(of(Method::POST, "/exec/ns/p/c"), ("create", "proxy"));
        assert_eq!(of(Method::DELETE, "/images"), ("delete", "proxy"));
        assert_eq!(of(Method::PUT, "/x"), ("update", "proxy"));
    }

    #[tokio::test]
    async fn no_certificate_is_401_and_a_refusal_or_failed_review_is_403_in_kubes_words() {
        let table = Table::default();
        let get = |c: Option<Caller>, p: &'static str| {
            let table = &table;
            async move { decide(table, c.as_ref(), &Method::GET, p).await }
        };
        assert_eq!(get(None, "/healthz").await, Decision::Unauthorized);
        assert_eq!(
            get(Some(caller("admin")), "/exec/a/b/c").await,
            Decision::Allow
        );
        assert_eq!(
            get(Some(caller("reader")), "/stats/summary").await,
            Decision::Allow
        );
        assert_eq!(
            get(Some(caller("reader")), "/containerLogs/a/b/c").await,
            Decision::Forbidden(
                "Forbidden (user=reader, verb=get, resource=nodes, subresource=proxy)".into()
            )
        );
        assert!(matches!(
            get(Some(caller("other")), "/metrics").await,
            Decision::Forbidden(_)
        ));
    }

    #[tokio::test]
    async fn answers_are_cached_allowed_longer_than_denied() {
        let table = Arc::new(Table::default());
        let cached = CachingReviewer::with_ttls(
            Arc::clone(&table) as Arc<dyn Reviewer>,
            Duration::from_mins(1),
            Duration::ZERO,
        );
        let stats = Attributes::of(&Method::GET, "/stats/summary");
        let proxy = Attributes::of(&Method::GET, "/exec/a/b/c");
        for _ in 0..3 {
            assert!(cached.allowed(&caller("reader"), &stats).await.unwrap());
        }
        assert_eq!(table.asked.load(Ordering::SeqCst), 1, "allowed is cached");
        for _ in 0..2 {
            assert!(!cached.allowed(&caller("reader"), &proxy).await.unwrap());
        }
        assert_eq!(
            table.asked.load(Ordering::SeqCst),
            3,
            "a denial with a zero ttl is asked again"
        );
        // Errors are never cached.
        assert!(cached.allowed(&caller("other"), &stats).await.is_err());
        assert!(cached.allowed(&caller("other"), &stats).await.is_err());
        assert_eq!(table.asked.load(Ordering::SeqCst), 5);
    }
}
