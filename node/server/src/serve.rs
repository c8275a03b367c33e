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
    ContainerRef, NodeBackend,
    auth::{Caller, Decision, Reviewer, decide},
    images,
    logs::{LogOptions, stream_log},
    portforward,
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

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What makes the endpoint safe to expose: TLS with client certificates of the cluster CA,
/// and the API server's say on every request.
#[derive(Clone)]
pub struct Security {
    /// The serving certificate and the client CA ([`crate::tls::server_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// Who decides what an authenticated caller may do (a
    /// [`crate::auth::CachingReviewer`] over the API server's `SubjectAccessReview`).
    pub reviewer: Arc<dyn Reviewer>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").finish_non_exhaustive()
    }
}

/// The node's HTTP endpoint, bound and ready to serve.
pub struct NodeServer {
    listener: TcpListener,
    backend: Arc<dyn NodeBackend>,
    security: Option<Security>,
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
        Ok(Self {
            listener,
            backend,
            security: None,
        })
    }

    /// Serves HTTPS, authenticating callers by client certificate and authorizing each
    /// request with `security.reviewer`. Without it the endpoint speaks plain HTTP to anyone,
    /// which only tests of the routes themselves do.
    #[must_use]
    pub fn secured(mut self, security: Security) -> Self {
        self.security = Some(security);
        self
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
            let security = self.security.clone();
            tokio::spawn(async move {
                match security {
                    None => connection(stream, peer, backend, None).await,
                    Some(security) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&security.tls));
                        let tls = match tokio::time::timeout(
                            HANDSHAKE_TIMEOUT,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(err)) => {
                                tracing::debug!(%peer, %err, "node endpoint TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        let caller = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|leaf| skiff_pki::Subject::from_der(leaf).ok())
                            .map(|s| Caller {
                                user: s.common_name,
                                groups: s.organizations,
                            });
                        connection(tls, peer, backend, Some((security.reviewer, caller))).await;
                    }
                }
            });
        }
    }
}

/// Serves one connection; with a reviewer, every request is decided before it is handled.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    backend: Arc<dyn NodeBackend>,
    guard: Option<(Arc<dyn Reviewer>, Option<Caller>)>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let guard = guard.map(Arc::new);
    let service = service_fn(move |req: Request<Incoming>| {
        let backend = Arc::clone(&backend);
        let guard = guard.clone();
        async move {
            if let Some(guard) = guard {
                let (reviewer, caller) = guard.as_ref();
                match decide(
                    reviewer.as_ref(),
                    caller.as_ref(),
                    req.method(),
                    req.uri().path(),
                )
                .await
                {
                    Decision::Allow => {}
                    Decision::Unauthorized => {
                        return Ok::<_, Infallible>(reply::text(
                            StatusCode::UNAUTHORIZED,
                            "Unauthorized",
                        ));
                    }
                    Decision::Forbidden(text) => {
                        return Ok(reply::text(StatusCode::FORBIDDEN, text));
                    }
                }
            }
            Ok(handle(backend, req).await)
        }
    });
    if let Err(err) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(%peer, %err, "node endpoint connection closed with an error");
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
            stream::serve(backend, req, target(ns, pod, container), Kind::Exec)
        }
        (&Method::GET | &Method::POST, ["attach", ns, pod, container]) => {
            stream::serve(backend, req, target(ns, pod, container), Kind::Attach)
        }
        (&Method::GET | &Method::POST, ["portForward", ns, pod]) => {
            let target = portforward::PodRef {
                namespace: (*ns).to_owned(),
                pod: (*pod).to_owned(),
            };
            portforward::serve(backend, req, target)
        }
        (&Method::GET, ["metrics"]) => match backend.metrics().await {
            Ok(text) => reply::text(StatusCode::OK, text),
            Err(err) => reply::backend_error(&err),
        },
        (&Method::GET, ["stats", "summary"]) => match backend.stats().await {
            Ok(summary) => match serde_json::to_value(&summary) {
                Ok(v) => reply::json(StatusCode::OK, &v),
                Err(err) => reply::error(500, "InternalError", &err.to_string()),
            },
            Err(err) => reply::backend_error(&err),
        },
        (&Method::POST, ["images", "import"]) => images::serve(backend, req).await,
        (&Method::GET, ["images"]) => images::list(backend.as_ref()).await,
        (&Method::DELETE, ["images"]) => images::remove(backend.as_ref(), &req).await,
        (&Method::POST, ["images", "pull"]) => images::pull(backend.as_ref(), &req).await,
        (
            _,
            [
                "healthz" | "containerLogs" | "exec" | "attach" | "portForward" | "stats"
                | "images",
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

#[cfg(test)]
mod tests {
    use std::{
        path::Path,
        sync::{Arc, Mutex},
    };

    use async_trait::async_trait;
    use futures::{SinkExt, StreamExt};
    use skiff_machinery::channel::{self, Protocol};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::{
        self, Message, client::IntoClientRequest, http::HeaderValue,
    };

    use super::*;
    use crate::{
        BackendError, ImageSummary, LogSource, Session, StreamOptions, Summary, TerminalSize,
    };

    /// One pod `ns/p` with container `c`: a log, an exec that echoes stdin and exits 3,
    /// resizes recorded, imports that report the tarball's size.
    struct Fake {
        log: std::path::PathBuf,
        resizes: Arc<Mutex<Vec<TerminalSize>>>,
    }

    #[async_trait]
    impl NodeBackend for Fake {
        async fn log_source(
            &self,
            target: &ContainerRef,
            _previous: bool,
        ) -> Result<LogSource, BackendError> {
            if target.pod != "p" {
                return Err(BackendError::pod_not_found(&target.namespace, &target.pod));
            }
            Ok(LogSource {
                path: self.log.clone(),
                running: Arc::new(|| false),
            })
        }

        async fn exec(
            &self,
            target: &ContainerRef,
            opts: &StreamOptions,
        ) -> Result<Session, BackendError> {
            if target.container != "c" {
                return Err(BackendError::container_not_found(
                    &target.pod,
                    &target.container,
                ));
            }
            let (stdin, mut input) = tokio::io::duplex(1024);
            let (mut output, stdout) = tokio::io::duplex(1024);
            let (done, exited) = tokio::sync::oneshot::channel();
            let code = if opts.command == ["fail"] { 3 } else { 0 };
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut input, &mut output).await;
                let _ = output.shutdown().await;
                let _ = done.send(());
            });
            let resizes = Arc::clone(&self.resizes);
            Ok(Session {
                stdin: Some(Box::pin(stdin)),
                stdout: Some(Box::pin(stdout)),
                stderr: None,
                resize: Some(Box::new(move |size| resizes.lock().unwrap().push(size))),
                exit: Box::pin(async move {
                    let _ = exited.await;
                    Ok(Some(code))
                }),
            })
        }

        async fn attach(
            &self,
            target: &ContainerRef,
            opts: &StreamOptions,
        ) -> Result<Session, BackendError> {
            self.exec(target, opts).await
        }

        async fn stats(&self) -> Result<Summary, BackendError> {
            let mut s = Summary::default();
            s.node.node_name = "n1".into();
            Ok(s)
        }

        async fn import_image(&self, tarball: &Path) -> Result<Vec<String>, BackendError> {
            let len = std::fs::metadata(tarball)
                .map_err(|e| BackendError::Internal(e.to_string()))?
                .len();
            Ok(vec![format!("imported:{len}")])
        }

        async fn list_images(&self) -> Result<Vec<ImageSummary>, BackendError> {
            Ok(vec![summary("docker.io/library/busybox:1", true)])
        }

        async fn remove_image(&self, reference: &str) -> Result<String, BackendError> {
            match reference {
                "busybox:1" => Err(BackendError::Conflict("in use by pod ns/p".into())),
                "unused:1" => Ok("sha256:unused".into()),
                other => Err(BackendError::NotFound(format!("no image {other}"))),
            }
        }

        async fn pull_image(&self, reference: &str) -> Result<ImageSummary, BackendError> {
            Ok(summary(reference, false))
        }
    }

    fn summary(reference: &str, in_use: bool) -> ImageSummary {
        ImageSummary {
            reference: reference.into(),
            id: "sha256:abc".into(),
            size: 7,
            in_use,
        }
    }

    async fn start() -> (SocketAddr, Arc<Mutex<Vec<TerminalSize>>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(&log, "2026-01-01T00:00:01Z stdout F hello\n").unwrap();
        let resizes = Arc::new(Mutex::new(Vec::new()));
        let backend = Arc::new(Fake {
            log,
            resizes: Arc::clone(&resizes),
        });
        let server = NodeServer::bind(([127, 0, 0, 1], 0).into(), backend)
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.serve(std::future::pending()));
        (addr, resizes, dir)
    }

    /// A raw HTTP/1.1 exchange; returns the status code and the whole response.
    async fn http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let code = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, resp)
    }

    #[tokio::test]
    async fn plain_routes_answer_health_logs_stats_imports_and_errors() {
        let (addr, _, _dir) = start().await;
        let get =
            |path: &str| format!("GET {path} HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n");
        let (code, resp) = http(addr, &get("/healthz"), b"").await;
        assert_eq!((code, resp.ends_with("ok")), (200, true));
        let (code, resp) = http(addr, &get("/containerLogs/ns/p/c?timestamps=true"), b"").await;
        assert_eq!(code, 200);
        assert!(resp.contains("2026-01-01T00:00:01Z hello\n"), "{resp}");
        let (code, resp) = http(addr, &get("/containerLogs/ns/q/c"), b"").await;
        assert_eq!(code, 404);
        assert!(resp.contains(r#""reason":"NotFound""#), "{resp}");
        let (code, _) = http(addr, &get("/containerLogs/ns/p/c?tailLines=x"), b"").await;
        assert_eq!(code, 400);
        let (code, resp) = http(addr, &get("/stats/summary"), b"").await;
        assert_eq!(code, 200);
        assert!(resp.contains(r#""nodeName":"n1""#), "{resp}");
        let body = b"0123456789";
        let head = format!(
            "POST /images/import HTTP/1.1\r\nHost: n\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let (code, resp) = http(addr, &head, body).await;
        assert_eq!(code, 200);
        assert!(resp.contains(r#"{"images":["imported:10"]}"#), "{resp}");
        let (code, _) = http(addr, &get("/nowhere"), b"").await;
        assert_eq!(code, 404);
        let (code, _) = http(addr, &get("/images/import"), b"").await;
        assert_eq!(code, 405);
        let (code, resp) = http(addr, &get("/images"), b"").await;
        assert_eq!(code, 200);
        assert!(
            resp.contains(r#""reference":"docker.io/library/busybox:1""#)
                && resp.contains(r#""inUse":true"#),
            "{resp}"
        );
        let delete = |q: &str| {
            format!("DELETE /images?{q} HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
        };
        assert_eq!(http(addr, &delete("image=busybox%3A1"), b"").await.0, 409);
        assert_eq!(http(addr, &delete("image=nope"), b"").await.0, 404);
        assert_eq!(http(addr, &delete(""), b"").await.0, 400);
        let (code, resp) = http(addr, &delete("image=unused%3A1"), b"").await;
        assert_eq!(code, 200);
        assert!(resp.contains(r#""removed":"sha256:unused""#), "{resp}");
        let pull = "POST /images/pull?image=registry.local%2Fa%3A2 HTTP/1.1\r\nHost: n\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let (code, resp) = http(addr, pull, b"").await;
        assert_eq!(code, 200);
        assert!(
            resp.contains(r#""reference":"registry.local/a:2""#),
            "{resp}"
        );
        // Exec without a WebSocket upgrade (SPDY, or a plain GET) is refused before any work.
        let (code, resp) = http(addr, &get("/exec/ns/p/c?command=ls&stdout=1"), b"").await;
        assert_eq!(code, 400);
        assert!(resp.contains("websocket"), "{resp}");
    }

    async fn connect(
        addr: SocketAddr,
        path: &str,
        protocols: &str,
    ) -> Result<
        (
            tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
            String,
        ),
        tungstenite::Error,
    > {
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocols).unwrap(),
        );
        let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
        let proto = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        Ok((ws, proto))
    }

    /// Reads frames until the server closes: what each channel carried.
    async fn collect(
        ws: &mut (impl futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin),
    ) -> (Vec<u8>, serde_json::Value) {
        let (mut out, mut status) = (Vec::new(), serde_json::Value::Null);
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Binary(data) = msg {
                match data.first() {
                    Some(&channel::STDOUT) => out.extend_from_slice(&data[1..]),
                    Some(&channel::ERROR) => status = serde_json::from_slice(&data[1..]).unwrap(),
                    _ => {}
                }
            }
        }
        (out, status)
    }

    #[tokio::test]
    async fn exec_over_v5_echoes_stdin_until_closed_and_reports_the_exit_code() {
        let (addr, resizes, _dir) = start().await;
        let (mut ws, proto) = connect(
            addr,
            "/exec/ns/p/c?command=fail&stdin=1&stdout=1&tty=1",
            "v4.channel.k8s.io, v5.channel.k8s.io",
        )
        .await
        .unwrap();
        assert_eq!(proto, Protocol::V5.name());
        ws.send(Message::binary(channel::frame(
            channel::RESIZE,
            br#"{"Width":80,"Height":24}"#,
        )))
        .await
        .unwrap();
        ws.send(Message::binary(channel::frame(channel::STDIN, b"ping\n")))
            .await
            .unwrap();
        ws.send(Message::binary(vec![channel::CLOSE, channel::STDIN]))
            .await
            .unwrap();
        let (out, status) = collect(&mut ws).await;
        assert_eq!(out, b"ping\n");
        assert_eq!(status, channel::exit_status(Some(3)));
        assert_eq!(
            *resizes.lock().unwrap(),
            [TerminalSize {
                width: 80,
                height: 24
            }]
        );
    }

    #[tokio::test]
    async fn text_frames_carry_stdin_and_resizes_as_binary_ones_do() {
        let (addr, resizes, _dir) = start().await;
        let (mut ws, _) = connect(
            addr,
            "/attach/ns/p/c?stdin=true&stdout=true&tty=true",
            "v5.channel.k8s.io",
        )
        .await
        .unwrap();
        // What the Python client's write_stdin and write_channel send for strings.
        ws.send(Message::text("\u{4}{\"Width\":90,\"Height\":20}"))
            .await
            .unwrap();
        ws.send(Message::text("\u{0}typed\n")).await.unwrap();
        ws.send(Message::binary(vec![channel::CLOSE, channel::STDIN]))
            .await
            .unwrap();
        let (out, _) = collect(&mut ws).await;
        assert_eq!(out, b"typed\n");
        assert_eq!(
            *resizes.lock().unwrap(),
            [TerminalSize {
                width: 90,
                height: 20
            }]
        );
    }

    #[tokio::test]
    async fn exec_over_v4_ends_with_success_when_the_client_closes() {
        let (addr, _, _dir) = start().await;
        let (ws, proto) = connect(
            addr,
            "/attach/ns/p/c?stdin=true&stdout=true",
            "v4.channel.k8s.io",
        )
        .await
        .unwrap();
        assert_eq!(proto, Protocol::V4.name());
        let (mut sink, mut source) = ws.split();
        sink.send(Message::binary(channel::frame(channel::STDIN, b"x")))
            .await
            .unwrap();
        // v4 has no close signal: the client ending the connection closes stdin.
        sink.send(Message::Close(None)).await.unwrap();
        let (out, status) = collect(&mut source).await;
        assert!(out.is_empty() || out == b"x", "{out:?}");
        assert!(
            status.is_null() || status["status"] == "Success",
            "{status}"
        );
    }

    #[tokio::test]
    async fn backend_refusals_come_on_the_error_channel_and_protocol_ones_as_http() {
        let (addr, _, _dir) = start().await;
        let (mut ws, _) = connect(
            addr,
            "/exec/ns/p/other?command=ls&stdout=1",
            "v5.channel.k8s.io",
        )
        .await
        .unwrap();
        let (out, status) = collect(&mut ws).await;
        assert!(out.is_empty());
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(
            status["message"],
            r#"container "other" not found in pod "p""#
        );
        let err = connect(
            addr,
            "/exec/ns/p/c?command=ls&stdout=1",
            "base64.channel.k8s.io",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, tungstenite::Error::Http(ref r) if r.status() == 400),
            "{err}"
        );
        let err = connect(addr, "/exec/ns/p/c?stdout=1", "v5.channel.k8s.io")
            .await
            .unwrap_err();
        assert!(
            matches!(err, tungstenite::Error::Http(ref r) if r.status() == 400),
            "{err}"
        );
    }
}
