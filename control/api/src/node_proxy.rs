//! The node proxy beside the server: `pods/log`, `pods/exec`, `pods/attach` and
//! `pods/portforward` are not verbs on stored objects but streams the pod's node serves, so
//! the API server finds the node and relays its answer, streaming a log body or pumping
//! WebSocket frames both ways, as the Go apiserver proxies these subresources to the kubelet.

use std::{convert::Infallible, fmt::Write as _, time::Duration};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use skiff_machinery::{
    channel::{self, Protocol, Upgrade},
    portforward,
    status::StatusError,
};
use skiff_resources::{Subresource, by_kind};
use skiff_types::namespace;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message, client::IntoClientRequest, handshake::derive_accept_key, protocol::Role,
    },
};

use crate::{
    ctx::Ctx,
    http::{self as h, Body, Query},
    kubelet_client::{KubeletClient, KubeletClientError},
    objects,
    route::ResourceRoute,
};

/// The kubelet port a Node without `daemonEndpoints` is assumed to serve on.
const DEFAULT_NODE_PORT: u16 = 10250;
/// How long the node may take to answer before the client hears of it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one side of a relayed stream may linger after the other side has ended.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Log options passed on to the node.
const LOG_PARAMS: [&str; 7] = [
    "follow",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "previous",
    "limitBytes",
];

/// Why the node could not be reached.
#[derive(Debug, thiserror::Error)]
enum NodeError {
    /// No TLS connection to the node endpoint.
    #[error(transparent)]
    Dial(#[from] KubeletClientError),
    /// The node did not answer in time.
    #[error("node endpoint {0} did not answer in time")]
    Timeout(String),
    /// The HTTP exchange with the node failed.
    #[error("talking to node endpoint: {0}")]
    Http(#[from] hyper::Error),
    /// The WebSocket handshake with the node failed for another reason than an HTTP answer.
    #[error("websocket to node endpoint: {0}")]
    WebSocket(#[from] tungstenite::Error),
}

impl From<NodeError> for StatusError {
    fn from(err: NodeError) -> Self {
        StatusError::unavailable(err.to_string())
    }
}

/// The subresources a node serves.
const NODE_SERVED: [Subresource; 4] = [
    Subresource::Log,
    Subresource::Exec,
    Subresource::Attach,
    Subresource::PortForward,
];

/// Whether the route names a subresource the node serves (`log`, `exec`, `attach`,
/// `portforward`) of a
/// kind that has it.
pub fn handles(route: &ResourceRoute) -> bool {
    route.name.is_some()
        && route.subresource.as_deref().is_some_and(|sub| {
            NODE_SERVED
                .iter()
                .any(|s| s.name() == sub && route.info.has(*s))
        })
}

/// Serves `pods/{log,exec,attach,portforward}`.
pub async fn serve(
    ctx: &Ctx,
    req: Request<Incoming>,
    route: &ResourceRoute,
    query: &Query,
) -> Result<Response<Body>, StatusError> {
    let sub = route.subresource.as_deref().unwrap_or("");
    let method = req.method();
    let allowed = match sub {
        "log" => method == Method::GET,
        _ => method == Method::GET || method == Method::POST,
    };
    if !allowed {
        return Err(StatusError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} pods/{sub})"
        )));
    }
    let namespace = route.namespace.as_deref().unwrap_or(namespace::DEFAULT);
    let name = route.name.as_deref().unwrap_or("");
    let (pod, _) = objects::fetch(ctx.store.as_ref(), route.info, Some(namespace), name).await?;
    if sub == "portforward" {
        let node = node_address(ctx, &pod).await?;
        // The node's query names each port `port`, as the kubelet's does.
        let forwarded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .filter(|(k, _)| k == "ports" || k == "port")
                    .map(|(_, v)| ("port", v)),
            )
            .finish();
        let path = format!("/portForward/{namespace}/{name}?{forwarded}");
        if portforward::is_spdy_upgrade(req.headers()) {
            return spdy(&ctx.kubelet, &node, &path, req).await;
        }
        return stream(&ctx.kubelet, &node, &path, req, Relay::PortForward).await;
    }
    let container = container_of(&pod, query.get("container"))?;
    let node = node_address(ctx, &pod).await?;
    let kind = if sub == "log" { "containerLogs" } else { sub };
    let path = format!("/{kind}/{namespace}/{name}/{container}");
    if sub == "log" {
        let forwarded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                LOG_PARAMS
                    .iter()
                    .filter_map(|k| query.get(k).map(|v| (*k, v))),
            )
            .finish();
        logs(&ctx.kubelet, &node, &format!("{path}?{forwarded}")).await
    } else {
        // Keep repeated `command` keys in order: re-encode the raw query without `container`.
        let forwarded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .filter(|(k, _)| k != "container"),
            )
            .finish();
        stream(
            &ctx.kubelet,
            &node,
            &format!("{path}?{forwarded}"),
            req,
            Relay::Channel,
        )
        .await
    }
}

/// The container a request names, defaulted when the pod has exactly one.
fn container_of(pod: &Value, asked: Option<&str>) -> Result<String, StatusError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let pod_name = objects::name_of(pod);
    let containers = names("containers");
    let init = names("initContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) => {
            if containers
                .iter()
                .chain(&init)
                .chain(&names("ephemeralContainers"))
                .any(|n| n == c)
            {
                Ok(c.to_owned())
            } else {
                Err(StatusError::bad_request(format!(
                    "container {c} is not valid for pod {pod_name}"
                )))
            }
        }
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(StatusError::bad_request(format!(
                "the pod {pod_name:?} does not have a container"
            ))),
            many => {
                let mut msg = format!(
                    "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                    many.join(" ")
                );
                if !init.is_empty() {
                    let _ = write!(msg, " or one of the init containers: [{}]", init.join(" "));
                }
                Err(StatusError::bad_request(msg))
            }
        },
    }
}

/// `host:port` of the node endpoint serving the pod.
async fn node_address(ctx: &Ctx, pod: &Value) -> Result<String, StatusError> {
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            StatusError::bad_request(format!(
                "pod {} does not have a host assigned",
                objects::name_of(pod)
            ))
        })?;
    let info = by_kind("v1", "Node")
        .ok_or_else(|| StatusError::internal("the resource catalog has no Node kind"))?;
    let (node, _) = objects::fetch(ctx.store.as_ref(), info, None, node_name).await?;
    endpoint_of(&node).ok_or_else(|| {
        StatusError::bad_request(format!("node {node_name} has no address to reach it at"))
    })
}

/// The node's preferred address (`InternalIP`, then `Hostname`, then `ExternalIP`) and port.
pub(crate) fn endpoint_of(node: &Value) -> Option<String> {
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)?;
    let host = ["InternalIP", "Hostname", "ExternalIP"]
        .iter()
        .find_map(|kind| {
            addresses
                .iter()
                .find(|a| a.get("type").and_then(Value::as_str) == Some(kind))
                .and_then(|a| a.get("address").and_then(Value::as_str))
                .filter(|a| !a.is_empty())
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_NODE_PORT);
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// Relays the node's log body: its status and body as they are, streamed.
async fn logs(
    kubelet: &KubeletClient,
    node: &str,
    path_and_query: &str,
) -> Result<Response<Body>, StatusError> {
    let stream = kubelet.dial(node).await.map_err(NodeError::from)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(NodeError::from)?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!(%err, "node log connection ended with an error");
        }
    });
    let req = Request::get(path_and_query)
        .header(header::HOST, node)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| StatusError::internal(format!("building the node request: {e}")))?;
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| NodeError::Timeout(node.to_owned()))?
        .map_err(NodeError::from)?;
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let body = BodyStream::new(resp.into_body())
        .take_while(|frame| {
            if let Err(err) = frame {
                tracing::debug!(%err, "node log stream broke off");
            }
            std::future::ready(frame.is_ok())
        })
        .filter_map(|frame| {
            std::future::ready(
                frame
                    .ok()
                    .and_then(|f| f.into_data().ok())
                    .map(|d| Ok::<_, Infallible>(Frame::data(d))),
            )
        });
    let mut out = Response::new(StreamBody::new(body).boxed_unsync());
    *out.status_mut() = status;
    let default_type = HeaderValue::from_static(if status.is_success() {
        "text/plain"
    } else {
        "application/json"
    });
    out.headers_mut()
        .insert(header::CONTENT_TYPE, content_type.unwrap_or(default_type));
    Ok(out)
}

/// What a relayed WebSocket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relay {
    /// The exec/attach channel protocol: a session the node ends with a status, which the
    /// relay makes up when the node's is lost.
    Channel,
    /// Port-forward (SPDY tunnel or channel protocol): no status to make up.
    PortForward,
}

/// The client's WebSocket key and the sub-protocols to offer the node.
fn offer(req: &Request<Incoming>, relay: Relay) -> Result<(String, Vec<String>), StatusError> {
    let headers = req.headers();
    match relay {
        Relay::Channel => {
            let upgrade =
                Upgrade::read(headers).map_err(|e| StatusError::bad_request(e.to_string()))?;
            let offered = upgrade
                .offered
                .iter()
                .map(|p| p.name().to_owned())
                .collect();
            Ok((upgrade.key.to_owned(), offered))
        }
        Relay::PortForward => {
            let key = channel::websocket_key(headers).ok_or_else(|| {
                StatusError::bad_request(
                    "upgrade request required: port-forward is served over websocket only",
                )
            })?;
            if portforward::Protocol::negotiate(channel::offered_protocols(headers)).is_none() {
                return Err(StatusError::bad_request(format!(
                    "unsupported websocket sub-protocol: expected {} or {}",
                    portforward::TUNNEL,
                    portforward::CHANNEL
                )));
            }
            let offered = channel::offered_protocols(headers)
                .flat_map(|h| h.split(','))
                .map(|p| p.trim().to_owned())
                .collect();
            Ok((key.to_owned(), offered))
        }
    }
}

/// Opens a WebSocket to the node with the client's sub-protocols, then upgrades the client
/// with the protocol the node chose and relays frames both ways. A node refusal reaches the
/// client as the node's own status, before any upgrade.
async fn stream(
    kubelet: &KubeletClient,
    node: &str,
    path_and_query: &str,
    mut req: Request<Incoming>,
    kind: Relay,
) -> Result<Response<Body>, StatusError> {
    let (key, offered) = offer(&req, kind)?;
    let accept = derive_accept_key(key.as_bytes());
    let mut node_req = format!("wss://{node}{path_and_query}")
        .into_client_request()
        .map_err(|e| StatusError::internal(format!("building the node request: {e}")))?;
    if let Ok(v) = HeaderValue::from_str(&offered.join(", ")) {
        node_req
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    let tcp = kubelet.dial(node).await.map_err(NodeError::from)?;
    let handshake = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async(node_req, tcp),
    )
    .await
    .map_err(|_| NodeError::Timeout(node.to_owned()))?;
    let (node_ws, node_resp) = match handshake {
        Ok(pair) => pair,
        Err(tungstenite::Error::Http(resp)) => return Ok(relay_refusal(&resp)),
        Err(err) => return Err(NodeError::from(err).into()),
    };
    let protocol = node_resp
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(Protocol::V5.name()));
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let client =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                relay(client, node_ws, kind).await;
            }
            Err(err) => tracing::warn!(%err, "client websocket upgrade failed"),
        }
    });
    Ok(channel::switching_protocols(h::full(""), protocol, &accept))
}

/// Relays kubectl's raw SPDY upgrade (its fallback when the WebSocket tunnel is refused, and
/// what kubectl before 1.31 sends): the node's 101 is passed on and the two upgraded
/// connections are joined byte for byte; a refusal comes back as the node's status and body.
async fn spdy(
    kubelet: &KubeletClient,
    node: &str,
    path_and_query: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, StatusError> {
    let tcp = kubelet.dial(node).await.map_err(NodeError::from)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(NodeError::from)?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%err, "node spdy connection ended with an error");
        }
    });
    let mut node_req = Request::post(path_and_query)
        .header(header::HOST, node)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, portforward::SPDY_UPGRADE);
    for v in req.headers().get_all(portforward::PROTOCOL_HEADER) {
        node_req = node_req.header(portforward::PROTOCOL_HEADER, v);
    }
    let node_req = node_req
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| StatusError::internal(format!("building the node request: {e}")))?;
    let mut resp = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(node_req))
        .await
        .map_err(|_| NodeError::Timeout(node.to_owned()))?
        .map_err(NodeError::from)?;
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        let mut out = Response::new(h::full(body));
        *out.status_mut() = status;
        if let Some(t) = content_type {
            out.headers_mut().insert(header::CONTENT_TYPE, t);
        }
        return Ok(out);
    }
    let node_side = hyper::upgrade::on(&mut resp);
    let client_side = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match (client_side.await, node_side.await) {
            (Ok(client), Ok(node)) => {
                let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
                let copied = tokio::io::copy_bidirectional(&mut client, &mut node).await;
                tracing::debug!(?copied, "port-forward spdy relay ended");
            }
            (client, node) => tracing::warn!(
                client = ?client.err(),
                node = ?node.err(),
                "port-forward spdy upgrade failed"
            ),
        }
    });
    Ok(portforward::spdy_switching_protocols(h::full("")))
}

/// The node's non-101 answer, passed on with its status and body.
fn relay_refusal(resp: &tungstenite::handshake::client::Response) -> Response<Body> {
    let body = resp.body().clone().unwrap_or_default();
    let mut out = Response::new(h::full(body));
    *out.status_mut() = resp.status();
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        resp.headers()
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/json")),
    );
    out
}

/// Pumps messages between the client and the node until both ends have closed (or one end
/// has and the other lingers past the grace period). A side that ends without a close frame
/// (a half-closed or reset connection) does not close the other: the node still sends its
/// exit status and its own close, which reach the client if it is still there. When the
/// node's side ends without its close reaching the client (the node died, the connection
/// was reset), the client gets a Failure status on the error channel saying so and a normal
/// close, instead of a close without a code that kubectl can only call "no status".
async fn relay<C, N>(client: WebSocketStream<C>, node: WebSocketStream<N>, kind: Relay)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    N: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let (mut client_sink, client_source) = client.split();
    let (mut node_sink, node_source) = node.split();
    let (up_end, down_end) = {
        let up = pump(client_source, &mut node_sink);
        let down = async {
            let end = pump(node_source, &mut client_sink).await;
            if kind == Relay::Channel && matches!(end, PumpEnd::Eof | PumpEnd::Error(_)) {
                // Tell the client at once: the node will not send its status now.
                let why = match &end {
                    PumpEnd::Error(e) => format!("the node's stream failed: {e}"),
                    _ => "the node closed the connection without a status".to_owned(),
                };
                send_lost_status(&mut client_sink, &why).await;
            }
            end
        };
        tokio::pin!(up, down);
        tokio::select! {
            end = &mut up => {
                let other = tokio::time::timeout(CLOSE_GRACE, down).await.ok();
                (Some(end), other)
            }
            end = &mut down => {
                let other = tokio::time::timeout(CLOSE_GRACE, up).await.ok();
                (other, Some(end))
            }
        }
    };
    tracing::debug!(client = ?up_end, node = ?down_end, ?kind, "node stream relay ended");
    let _ = node_sink.close().await;
    if down_end.is_none() && kind == Relay::Channel {
        let why = format!(
            "the node sent no status within {} s of the client's end",
            CLOSE_GRACE.as_secs()
        );
        send_lost_status(&mut client_sink, &why).await;
    }
    let _ = client_sink.close().await;
}

/// Sends the client a Failure status on the error channel and a normal close.
async fn send_lost_status<K>(sink: &mut K, why: &str)
where
    K: futures::Sink<Message> + Unpin,
{
    let _ = sink.send(Message::binary(lost_node_status(why))).await;
    let _ = sink
        .send(Message::Close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
}

/// The error-channel frame (channel 3, a `metav1.Status`) telling the client its session's
/// end was lost on the node's side.
fn lost_node_status(why: &str) -> Vec<u8> {
    channel::frame(
        channel::ERROR,
        &serde_json::to_vec(&StatusError::internal(why).to_json()).unwrap_or_default(),
    )
}

/// How one direction of a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PumpEnd {
    /// The source sent its close, which was passed on.
    Closed,
    /// The source ended without a close frame.
    Eof,
    /// Reading the source failed.
    Error(String),
    /// The other side could not be written to.
    SinkFailed,
}

/// Forwards data and close messages from one side to the other until the source ends or
/// sends its close; pings stay per connection.
async fn pump<S, K>(mut source: S, sink: &mut K) -> PumpEnd
where
    S: futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    K: futures::Sink<Message> + Unpin,
{
    loop {
        match source.next().await {
            None => return PumpEnd::Eof,
            Some(Err(e)) => return PumpEnd::Error(e.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                return if sink.send(Message::Close(frame)).await.is_ok() {
                    PumpEnd::Closed
                } else {
                    PumpEnd::SinkFailed
                };
            }
            Some(Ok(data)) => {
                if sink.send(data).await.is_err() {
                    return PumpEnd::SinkFailed;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::{io::DuplexStream, task::JoinHandle};

    use super::*;

    /// kubectl's socket, the relay between it and the node, and the node's raw end.
    async fn relayed() -> (WebSocketStream<DuplexStream>, JoinHandle<()>, DuplexStream) {
        let (client_io, client_far) = tokio::io::duplex(4096);
        let (node_io, node_far) = tokio::io::duplex(4096);
        let client = WebSocketStream::from_raw_socket(client_io, Role::Server, None).await;
        let node = WebSocketStream::from_raw_socket(node_io, Role::Client, None).await;
        let kubectl = WebSocketStream::from_raw_socket(client_far, Role::Client, None).await;
        (
            kubectl,
            tokio::spawn(relay(client, node, Relay::Channel)),
            node_far,
        )
    }

    /// Every frame kubectl receives until the relay closes its socket.
    async fn frames(
        mut kubectl: WebSocketStream<DuplexStream>,
        relayed: JoinHandle<()>,
    ) -> Vec<Message> {
        let mut frames = Vec::new();
        while let Some(Ok(msg)) = kubectl.next().await {
            frames.push(msg);
        }
        relayed.await.unwrap();
        frames
    }

    #[tokio::test]
    async fn a_node_stream_that_ends_without_a_close_gives_the_client_a_status() {
        let (kubectl, relayed, node_far) = relayed().await;
        // The node's end of the connection goes away without a close frame.
        drop(node_far);
        let frames = frames(kubectl, relayed).await;
        let status = frames
            .iter()
            .find_map(|m| match m {
                Message::Binary(b) if b.first() == Some(&3) => {
                    serde_json::from_slice::<serde_json::Value>(&b[1..]).ok()
                }
                _ => None,
            })
            .expect("a status on the error channel");
        assert_eq!(status["status"], "Failure");
        assert!(
            status["message"].as_str().unwrap().contains("node"),
            "{status}"
        );
        assert!(
            frames.iter().any(|m| matches!(
                m,
                Message::Close(Some(f)) if f.code == tungstenite::protocol::frame::coding::CloseCode::Normal
            )),
            "{frames:?}"
        );
    }

    #[tokio::test]
    async fn a_node_close_is_passed_on_without_a_made_up_status() {
        let (kubectl, relayed, node_far) = relayed().await;
        let mut node_side = WebSocketStream::from_raw_socket(node_far, Role::Server, None).await;
        node_side
            .send(Message::binary(vec![3, b'{', b'}']))
            .await
            .unwrap();
        node_side.close(None).await.unwrap();
        let frames = frames(kubectl, relayed).await;
        let statuses = frames
            .iter()
            .filter(|m| matches!(m, Message::Binary(b) if b.first() == Some(&3)))
            .count();
        assert_eq!(statuses, 1, "{frames:?}");
    }

    #[test]
    fn the_only_container_is_the_default_and_several_need_a_name() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}});
        assert_eq!(container_of(&one, None).unwrap(), "app");
        assert_eq!(container_of(&one, Some("")).unwrap(), "app");
        let two = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "i"}],
        }});
        assert_eq!(
            container_of(&two, None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(container_of(&two, Some("i")).unwrap(), "i");
        assert_eq!(
            container_of(&two, Some("x")).unwrap_err().message,
            "container x is not valid for pod p"
        );
    }

    #[test]
    fn the_node_endpoint_prefers_the_internal_ip_and_the_advertised_port() {
        let node = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 4321}},
        }});
        assert_eq!(endpoint_of(&node).as_deref(), Some("127.0.0.1:4321"));
        let bare = json!({"status": {"addresses": [{"type": "InternalIP", "address": "fd00::1"}]}});
        assert_eq!(endpoint_of(&bare).as_deref(), Some("[fd00::1]:10250"));
        assert_eq!(endpoint_of(&json!({"status": {}})), None);
    }
}
