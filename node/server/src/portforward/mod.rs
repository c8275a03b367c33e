//! Port-forward: a WebSocket upgrade speaking kubectl's SPDY tunnel or the Python client's
//! channel protocol, each forwarded connection relayed to a port inside the pod.

mod channel;
mod tunnel;

use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use skiff_machinery::{
    channel::{offered_protocols, switching_protocols, websocket_key},
    portforward::{self, Protocol},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role},
};

use super::{
    NodeBackend,
    reply::{self, Body, Params},
};

/// The pod whose ports are forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PodRef {
    pub namespace: String,
    pub pod: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)
    }
}

/// What a connection's error stream says when the pod's port cannot be reached.
fn forward_error(target: &PodRef, port: u16, err: &super::BackendError) -> String {
    format!("error forwarding port {port} to pod {target}: {err}")
}

/// Serves `/portForward/{namespace}/{pod}`: ports come from `port` (or `ports`) query values
/// for the channel protocol, and from each stream's headers in the SPDY tunnel.
pub(super) fn serve(
    backend: Arc<dyn NodeBackend>,
    mut req: Request<Incoming>,
    target: PodRef,
) -> Response<Body> {
    let params = Params::parse(req.uri().query());
    let values: Vec<String> = params
        .all("port")
        .into_iter()
        .chain(params.all("ports"))
        .collect();
    let ports = match portforward::ports(values.iter().map(String::as_str)) {
        Ok(p) => p,
        Err(err) => return reply::bad_request(&err.to_string()),
    };
    if portforward::is_spdy_upgrade(req.headers()) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => tunnel::run_raw(TokioIo::new(upgraded), backend, target).await,
                Err(err) => tracing::warn!(%target, %err, "port-forward spdy upgrade failed"),
            }
        });
        return portforward::spdy_switching_protocols(reply::full(""));
    }
    let Some(key) = websocket_key(req.headers()) else {
        return reply::bad_request(
            "upgrade request required: port-forward is served over websocket or a SPDY/3.1 upgrade",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let Some(protocol) = Protocol::negotiate(offered_protocols(req.headers())) else {
        return reply::bad_request(&format!(
            "unsupported websocket sub-protocol: expected {} or {}",
            portforward::TUNNEL,
            portforward::CHANNEL
        ));
    };
    if protocol == Protocol::Channel && ports.is_empty() {
        return reply::bad_request("query parameter \"port\" is required");
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(err) => {
                tracing::warn!(%target, %err, "port-forward websocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        match protocol {
            Protocol::Tunnel => tunnel::run(ws, backend, target).await,
            Protocol::Channel => channel::run(ws, backend, target, ports).await,
        }
    });
    switching_protocols(
        reply::full(""),
        HeaderValue::from_static(protocol.name()),
        &accept,
    )
}

#[cfg(test)]
mod tests;
