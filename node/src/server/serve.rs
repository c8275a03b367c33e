//! The listener and the routing of the node endpoint's paths, which follow the kubelet's so
//! the API server proxies to a node as it would to a kubelet.

use std::{convert::Infallible, future::Future, io, net::SocketAddr, sync::Arc};

use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use tokio::net::TcpListener;

use super::{
    ContainerRef, NodeBackend, images,
    logs::{LogOptions, stream_log},
    reply::{self, Body, Params},
    stream::{self, Kind},
};

/// The kubelet's port, which the Node object advertises as `daemonEndpoints.kubeletEndpoint`.
pub const DEFAULT_PORT: u16 = 10250;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

/// The node's HTTP endpoint, bound and ready to serve.
pub struct NodeServer {
    listener: TcpListener,
    backend: Arc<dyn NodeBackend>,
}

impl std::fmt::Debug for NodeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeServer")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl NodeServer {
    /// Binds `addr` (port 0 picks a free one).
    ///
    /// # Errors
    /// [`ServeError::Bind`] when the address cannot be bound.
    pub async fn bind(addr: SocketAddr, backend: Arc<dyn NodeBackend>) -> Result<Self, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self { listener, backend })
    }

    /// The address actually bound.
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; open streams end with their connections.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        tracing::warn!(%err, "node endpoint accept failed");
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let backend = Arc::clone(&self.backend);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let backend = Arc::clone(&backend);
                    async move { Ok::<_, Infallible>(handle(backend, req).await) }
                });
                if let Err(err) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await
                {
                    tracing::debug!(%peer, %err, "node endpoint connection closed with an error");
                }
            });
        }
    }
}

async fn handle(backend: Arc<dyn NodeBackend>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let target = |ns: &str, pod: &str, container: &str| ContainerRef {
        namespace: ns.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
    };
    let resp = match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => reply::text(StatusCode::OK, "ok"),
        (&Method::GET, ["containerLogs", ns, pod, container]) => {
            logs(backend, &req, target(ns, pod, container)).await
        }
        (&Method::GET | &Method::POST, ["exec", ns, pod, container]) => {
            stream::serve(backend, req, target(ns, pod, container), Kind::Exec).await
        }
        (&Method::GET | &Method::POST, ["attach", ns, pod, container]) => {
            stream::serve(backend, req, target(ns, pod, container), Kind::Attach).await
        }
        (&Method::GET, ["stats", "summary"]) => match backend.stats().await {
            Ok(summary) => match serde_json::to_value(&summary) {
                Ok(v) => reply::json(StatusCode::OK, &v),
                Err(err) => reply::error(500, "InternalError", &err.to_string()),
            },
            Err(err) => reply::backend_error(&err),
        },
        (&Method::POST, ["images", "import"]) => images::serve(backend, req).await,
        (
            _,
            [
                "healthz" | "containerLogs" | "exec" | "attach" | "stats" | "images",
                ..,
            ],
        ) => reply::error(
            405,
            "MethodNotAllowed",
            &format!("{method} is not allowed on {path}"),
        ),
        _ => reply::error(404, "NotFound", &format!("no such path {path}")),
    };
    tracing::debug!(%method, %path, code = resp.status().as_u16(), "node endpoint request");
    resp
}

async fn logs(
    backend: Arc<dyn NodeBackend>,
    req: &Request<Incoming>,
    target: ContainerRef,
) -> Response<Body> {
    let params = Params::parse(req.uri().query());
    let opts = match LogOptions::from_query(&params, Timestamp::now()) {
        Ok(o) => o,
        Err(err) => return reply::bad_request(&err.to_string()),
    };
    let source = match backend.log_source(&target, opts.previous).await {
        Ok(s) => s,
        Err(err) => return reply::backend_error(&err),
    };
    let stream = stream_log(source.path, opts, source.running).await;
    let body = StreamBody::new(stream.filter_map(move |chunk| {
        let frame = match chunk {
            Ok(bytes) => Some(Ok::<_, Infallible>(hyper::body::Frame::data(bytes))),
            // The status line has gone out: an error can only end the stream early.
            Err(err) => {
                tracing::warn!(%target, %err, "container log stream broke off");
                None
            }
        };
        std::future::ready(frame)
    }));
    let mut resp = Response::new(BodyExt::boxed_unsync(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}
