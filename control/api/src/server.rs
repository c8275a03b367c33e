//! The HTTPS server: accepts TLS connections, authenticates each request (the client
//! certificate of its connection or its bearer token), routes, records metrics, and compacts
//! the store.

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{Method, Request, Response, StatusCode, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use skiff_machinery::{status::StatusError, user::UserInfo};
use skiff_resources::wire::{self, Untyped};
use skiff_store::Store;
use skiff_types::{CidrError, Ipv4Cidr};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{
    allocator::RangeError,
    audit::{self, Auditor},
    authn::{self, Authenticator},
    authz::{self, attributes, review::Review},
    bootstrap,
    ctx::Ctx,
    discovery, flowcontrol,
    http::{self as h, Body, Query},
    metrics_api, node_proxy,
    route::{Route, route},
    verbs,
};

/// Settings of the API server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (default 127.0.0.1:6443).
    pub listen: SocketAddr,
    /// Where pods reach this server (the `kubernetes` Service's endpoint); none when it has
    /// no such address (a loopback listen).
    pub advertise: Option<SocketAddr>,
    /// The Service cluster IP range.
    pub service_cidr: String,
    /// The NodePort range.
    pub node_ports: (u16, u16),
    /// How often old store revisions are compacted.
    pub compaction_interval: Duration,
    /// How many revisions compaction keeps.
    pub compaction_keep: i64,
    /// Where audit events go, if anywhere.
    pub audit: Option<Arc<Auditor>>,
    /// In-flight, queue and watch limits.
    pub limits: flowcontrol::Limits,
    /// Largest request body accepted (`--max-request-body-bytes`).
    pub max_request_body_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            advertise: None,
            service_cidr: "10.96.0.0/12".into(),
            node_ports: (30000, 32767),
            compaction_interval: Duration::from_mins(5),
            compaction_keep: 10_000,
            audit: None,
            limits: flowcontrol::Limits::default(),
            max_request_body_bytes: h::MAX_BODY,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The Service range flag is not a CIDR.
    #[error("service cluster IP range")]
    ServiceCidr(#[source] CidrError),
    /// The Service range or the node port range cannot be allocated from.
    #[error("allocation ranges")]
    Ranges(#[source] RangeError),
    /// Creating the default namespaces or the `kubernetes` Service failed.
    #[error("bootstrapping default objects: {0}")]
    Bootstrap(String),
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server proves who it is and learns who calls: TLS (serving certificate, client
/// CA) and the bearer tokens it accepts.
#[derive(Debug, Clone)]
pub struct Security {
    /// The TLS configuration every connection is accepted with.
    pub tls: Arc<rustls::ServerConfig>,
    /// Who a request is from.
    pub authn: Arc<Authenticator>,
    /// How node endpoints are reached.
    pub kubelet: crate::kubelet_client::KubeletClient,
}

/// A bound, bootstrapped API server.
#[derive(Debug)]
pub struct Server {
    ctx: Arc<Ctx>,
    listener: TcpListener,
    config: Config,
    /// Where the authorizer's store watches start.
    revisions: Vec<i64>,
    security: Security,
}

impl Server {
    /// Binds the listen address and creates the default objects.
    ///
    /// # Errors
    /// When the address is taken, a range is invalid, or the store fails.
    pub async fn bind(
        store: Arc<dyn Store>,
        config: Config,
        security: Security,
    ) -> Result<Self, ServerError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let service_cidr =
            Ipv4Cidr::parse_masked(&config.service_cidr).map_err(ServerError::ServiceCidr)?;
        let mut ctx = Ctx::new(
            store,
            service_cidr,
            config.node_ports.0..=config.node_ports.1,
            local.to_string(),
        )
        .map_err(ServerError::Ranges)?;
        ctx.audit.clone_from(&config.audit);
        ctx.kubelet = security.kubelet.clone();
        ctx.flow = flowcontrol::FlowControl::new(&config.limits);
        ctx.max_body = config.max_request_body_bytes;
        ctx.service_accounts = security.authn.service_account_tokens().cloned();
        let ctx = Arc::new(ctx);
        bootstrap::run(&ctx, config.advertise)
            .await
            .map_err(|e| ServerError::Bootstrap(e.message))?;
        let revisions = authz::feed::load(&ctx)
            .await
            .map_err(|e| ServerError::Bootstrap(e.message))?;
        Ok(Self {
            ctx,
            listener,
            config,
            revisions,
            security,
        })
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let compaction = tokio::spawn(compact_forever(
            Arc::clone(&self.ctx.store),
            self.config.compaction_interval,
            self.config.compaction_keep,
        ));
        let authorizer = tokio::spawn(authz::feed::follow(
            Arc::clone(&self.ctx),
            self.revisions.clone(),
        ));
        let acceptor = TlsAcceptor::from(Arc::clone(&self.security.tls));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(?err, "accept failed");
                    continue;
                }
            };
            let ctx = Arc::clone(&self.ctx);
            let authn = Arc::clone(&self.security.authn);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that never finishes its handshake does not hold a task forever.
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, ?err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                // The chain was verified against the client CA during the handshake.
                let connection_user = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| authn::certificate_user(leaf));
                let connection_user = Arc::new(connection_user);
                let service = service_fn(move |req| {
                    let ctx = Arc::clone(&ctx);
                    let authn = Arc::clone(&authn);
                    let connection_user = Arc::clone(&connection_user);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            handle(ctx, &authn, connection_user.as_ref().as_ref(), req, peer).await,
                        )
                    }
                });
                if let Err(err) = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, ?err, "connection closed with an error");
                }
            });
        }
        compaction.abort();
        authorizer.abort();
    }
}

/// Keeps the store's history bounded, like the Go apiserver's periodic etcd compaction.
async fn compact_forever(store: Arc<dyn Store>, every: Duration, keep: i64) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let result = async {
            let current = store.current_revision().await?;
            let target = current - keep;
            if target > store.compacted_revision().await? {
                store.compact(target).await?;
                tracing::info!(revision = target, "compacted store history");
            }
            Ok::<_, skiff_store::StoreError>(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(?err, "compaction failed");
        }
    }
}

/// Who is calling: the verified client certificate of the connection, else the request's
/// bearer token, else anonymous (allowed on the health and version endpoints only).
/// A ServiceAccount token's account (and bound pod) must still exist.
async fn authenticate(
    ctx: &Ctx,
    authn: &Authenticator,
    connection_user: Option<&UserInfo>,
    req: &Request<Incoming>,
) -> Result<UserInfo, StatusError> {
    let user = authn.authenticate(connection_user, req.uri().path(), req.headers())?;
    authn::serviceaccount::still_bound(ctx.store.as_ref(), &user).await?;
    Ok(user)
}

async fn handle(
    ctx: Arc<Ctx>,
    authn: &Authenticator,
    connection_user: Option<&UserInfo>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let query = Query::parse(req.uri().query()).with_agent(&agent);
    let audit_meta = ctx
        .audit
        .as_ref()
        .map(|_| audit::RequestMeta::new(req.uri(), req.headers(), peer));
    let mut audit = None;
    let (verb, resource, response) = match authenticate(&ctx, authn, connection_user, &req)
        .await
        .and_then(|user| {
            let authenticated = user.clone();
            authz::impersonate::impersonate(&ctx.authz, user, req.headers())
                .map(|user| (authenticated, user))
        }) {
        Err(err) => {
            if let (Some(auditor), Some(meta), true) = (&ctx.audit, &audit_meta, err.code == 401) {
                let attrs =
                    attributes::from_request(UserInfo::default(), method.as_str(), &path, &|k| {
                        query.get(k).map(str::to_owned)
                    });
                auditor.failed_authentication(&attrs, meta, &tried(connection_user, &req));
            }
            ("AUTH", String::new(), h::error(&err))
        }
        Ok((authenticated, user)) => {
            let attrs = attributes::from_request(user, method.as_str(), &path, &|k| {
                query.get(k).map(str::to_owned)
            });
            audit = ctx
                .audit
                .as_ref()
                .zip(audit_meta.as_ref())
                .and_then(|(a, meta)| a.begin(&attrs, &authenticated, meta));
            let resource = attrs
                .resource
                .as_ref()
                .map(|r| r.resource.clone())
                .unwrap_or_default();
            let permit = ctx.flow.admit(&attrs).await;
            if let Err(err) = &permit {
                tracing::debug!(user = %attrs.user.name, verb = %attrs.verb, "too many requests");
                ("FLOWCONTROL", resource, flowcontrol::refusal(err))
            } else if let Err(reason) = ctx.authz.authorize(&attrs) {
                let err = attributes::forbidden(&attrs, &reason);
                tracing::debug!(user = %attrs.user.name, groups = ?attrs.user.groups, message = %err.message, "forbidden");
                ("AUTHZ", resource, h::error(&err))
            } else {
                let user = attrs.user;
                let query = query.with_user(user.clone());
                // Boxed: the routed future is large and the audit wrapper would double it.
                let routed = Box::pin(authz::CALLER.scope(
                    user.clone(),
                    route_request(&ctx, &user, req, &method, &path, &query),
                ));
                let (verb, resource, response) = match &mut audit {
                    Some(entry) => entry.run(routed).await,
                    None => routed.await,
                };
                let permit = permit.unwrap_or(flowcontrol::Permit::Free);
                (verb, resource, flowcontrol::hold(response, permit))
            }
        }
    };
    let response = match (audit, &ctx.audit) {
        (Some(entry), Some(auditor)) => entry.finish(auditor, response).await,
        _ => response,
    };
    let code = response.status().as_u16();
    ctx.metrics
        .observe(verb, &resource, code, started.elapsed());
    tracing::debug!(%method, %path, code, took_ms = started.elapsed().as_millis(), "request");
    response
}

/// The credentials a request came with, in kube's audit words (`bearer`, `x509`).
fn tried(connection_user: Option<&UserInfo>, req: &Request<Incoming>) -> Vec<&'static str> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
    [(bearer, "bearer"), (connection_user.is_some(), "x509")]
        .into_iter()
        .filter_map(|(used, name)| used.then_some(name))
        .collect()
}

/// `/apis/metrics.k8s.io...`: discovery, then node and pod metrics read from the nodes.
async fn metrics(
    ctx: &Arc<Ctx>,
    method: &Method,
    under_group: &str,
    query: &Query,
) -> (&'static str, String, Response<Body>) {
    let segments: Vec<&str> = under_group.split('/').filter(|s| !s.is_empty()).collect();
    let resource = match segments.as_slice() {
        [_, .., "nodes"] | [_, "nodes", _] => "nodes",
        _ => "pods",
    };
    if method != Method::GET && method != Method::HEAD {
        let err = StatusError::method_not_allowed(format!(
            "{method} is not allowed on {}",
            metrics_api::GROUP
        ));
        return ("other", resource.to_owned(), h::error(&err));
    }
    let answer = match segments.as_slice() {
        [] => {
            let mut g = metrics_api::group();
            g["kind"] = serde_json::json!("APIGroup");
            g["apiVersion"] = serde_json::json!("v1");
            h::json(StatusCode::OK, &g)
        }
        [metrics_api::VERSION] => h::json(StatusCode::OK, &metrics_api::resources()),
        [metrics_api::VERSION, rest @ ..] => match metrics_api::target(rest) {
            Some(target) => match metrics_api::serve(ctx, target, query).await {
                Ok(v) => h::json(StatusCode::OK, &v),
                Err(err) => h::error(&err),
            },
            None => h::error(&StatusError::not_found(metrics_api::GROUP, rest[0], "")),
        },
        _ => h::error(&StatusError::not_found(metrics_api::GROUP, "", "")),
    };
    ("get", resource.to_owned(), answer)
}

/// `POST` of a review kind: answered from the authorizer, never stored.
async fn review(
    ctx: &Ctx,
    caller: &UserInfo,
    req: Request<Incoming>,
    method: &Method,
    (kind, namespace): (Review, Option<String>),
) -> Response<Body> {
    if method != Method::POST {
        return h::error(&StatusError::method_not_allowed(format!(
            "{method} is not allowed on {}",
            kind.plural()
        )));
    }
    let headers = req.headers().clone();
    let answer = async {
        let body = h::read_body(&headers, req.into_body(), ctx.max_body).await?;
        let obj = h::decode_object(&headers, &body)?;
        authz::review::answer(&ctx.authz, caller, kind, namespace.as_deref(), obj)
    }
    .await;
    match answer {
        Ok(v) => h::json(StatusCode::CREATED, &v),
        Err(err) => h::error(&err),
    }
}

async fn route_request(
    ctx: &Arc<Ctx>,
    caller: &UserInfo,
    req: Request<Incoming>,
    method: &Method,
    path: &str,
    query: &Query,
) -> (&'static str, String, Response<Body>) {
    let get_only = |resp: Response<Body>| {
        if method == Method::GET || method == Method::HEAD {
            resp
        } else {
            h::error(&StatusError::method_not_allowed(format!(
                "{method} is not allowed on {path}"
            )))
        }
    };
    let not_found = || {
        h::error(&StatusError {
            code: 404,
            reason: "NotFound".into(),
            message: "the server could not find the requested resource".into(),
            details: None,
        })
    };
    let ok_json =
        |v: Option<serde_json::Value>| v.map_or_else(not_found, |v| h::json(StatusCode::OK, &v));
    if let Some(at) = authz::review::at(path) {
        let plural = at.0.plural().to_owned();
        return ("POST", plural, review(ctx, caller, req, method, at).await);
    }
    if let Some(rest) = path
        .strip_prefix("/apis/")
        .and_then(|p| p.strip_prefix(metrics_api::GROUP))
        .filter(|r| r.is_empty() || r.starts_with('/'))
    {
        return metrics(ctx, method, rest, query).await;
    }
    let resp = match route(path) {
        Route::Version => get_only(h::json_bytes(
            StatusCode::OK,
            wire::encode_indented_as(&discovery::version(), Untyped::VersionInfo),
        )),
        Route::Api => get_only(h::json_bytes(
            StatusCode::OK,
            wire::encode_as(&discovery::api(&ctx.address), Untyped::ApiVersions),
        )),
        Route::Apis => get_only(h::json(StatusCode::OK, &discovery::apis())),
        Route::ApiGroup(g) => get_only(ok_json(discovery::api_group(&g))),
        Route::GroupVersion { group, version } => {
            get_only(ok_json(discovery::resource_list(&group, &version)))
        }
        Route::OpenApiRoot => get_only(h::json(StatusCode::OK, &skiff_resources::openapi::root())),
        Route::OpenApiDocument { group, version } => get_only(ok_json(
            skiff_resources::openapi::document(&group, &version).cloned(),
        )),
        Route::Health => get_only(h::text(StatusCode::OK, "ok")),
        Route::Metrics => get_only(h::text(
            StatusCode::OK,
            ctx.metrics.render() + &ctx.flow.render(),
        )),
        Route::Backup => get_only(match ctx.store.snapshot().await {
            Ok(bytes) => {
                let mut resp = h::text(StatusCode::OK, bytes);
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                resp
            }
            Err(err) => h::error(&StatusError::internal(format!("snapshot: {err}"))),
        }),
        Route::Resource(r) if node_proxy::handles(&r) => {
            let verb = verbs::verb(method, &r, query);
            let resp = match node_proxy::serve(ctx, req, &r, query).await {
                Ok(resp) => resp,
                Err(err) => h::error(&err),
            };
            return (verb, r.info.plural.to_owned(), resp);
        }
        Route::Resource(r) => {
            let verb = verbs::verb(method, &r, query);
            let plural = r.info.plural.to_owned();
            let headers = req.headers().clone();
            let body = if verbs::has_body(method) {
                h::read_body(&headers, req.into_body(), ctx.max_body).await
            } else {
                Ok(bytes::Bytes::new())
            };
            let resp = match body {
                Ok(body) => verbs::dispatch(ctx, method, &r, query, &headers, body).await,
                Err(err) => Err(err),
            };
            return (verb, plural, resp.unwrap_or_else(|err| h::error(&err)));
        }
        Route::NotFound => not_found(),
    };
    ("GET", String::new(), resp)
}
