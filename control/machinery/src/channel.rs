//! The Kubernetes WebSocket channel protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io`) that
//! kubectl speaks for exec and attach, and that both the node and the API server's relay to
//! it answer: the upgrade handshake, one byte of channel before each binary frame's data, and
//! the command's end as a `metav1.Status` on the error channel.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

/// Standard input, client to server.
pub const STDIN: u8 = 0;
/// Standard output, server to client.
pub const STDOUT: u8 = 1;
/// Standard error, server to client.
pub const STDERR: u8 = 2;
/// The final `metav1.Status`, server to client.
pub const ERROR: u8 = 3;
/// Terminal size changes as JSON `{"Width":..,"Height":..}`, client to server.
pub const RESIZE: u8 = 4;
/// v5 only: `[255, channel]` closes one stream (the client's end of stdin).
pub const CLOSE: u8 = 255;

/// A sub-protocol of the channel family this node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `v5.channel.k8s.io`: v4 plus the close signal.
    V5,
    /// `v4.channel.k8s.io`: the status carries the exit code.
    V4,
}

impl Protocol {
    /// The `Sec-WebSocket-Protocol` token.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::V5 => "v5.channel.k8s.io",
            Self::V4 => "v4.channel.k8s.io",
        }
    }

    /// The protocol a `Sec-WebSocket-Protocol` token names, if it is one of the family.
    #[must_use]
    pub fn from_name(token: &str) -> Option<Self> {
        [Self::V5, Self::V4].into_iter().find(|p| p.name() == token)
    }

    /// The channel protocols among those a client offered (comma-separated, possibly over
    /// several `Sec-WebSocket-Protocol` headers), in the client's order.
    pub fn offered<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<Self> {
        headers
            .into_iter()
            .flat_map(|h| h.split(','))
            .filter_map(|token| Self::from_name(token.trim()))
            .collect()
    }

    /// The best protocol among those a client offered, preferring v5.
    pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        Self::best_of(&Self::offered(headers))
    }

    fn best_of(offered: &[Self]) -> Option<Self> {
        [Self::V5, Self::V4]
            .into_iter()
            .find(|p| offered.contains(p))
    }
}

/// Why a request cannot become a channel-protocol WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// Not a WebSocket upgrade (SPDY is not served).
    #[error("upgrade request required: exec and attach are served over websocket only")]
    NotWebSocket,
    /// The client offered no channel protocol.
    #[error("unsupported websocket sub-protocol: expected v5.channel.k8s.io or v4.channel.k8s.io")]
    Protocol,
}

/// The `Sec-WebSocket-Key` of a WebSocket upgrade request; `None` for any other request.
#[must_use]
pub fn websocket_key(headers: &HeaderMap) -> Option<&str> {
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|_| is_websocket)
}

/// The values of every `Sec-WebSocket-Protocol` header of a request.
pub fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
}

/// A WebSocket upgrade request for the channel protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade<'a> {
    /// The client's `Sec-WebSocket-Key`, from which the accept key is derived.
    pub key: &'a str,
    /// The channel protocols the client offered, in its order (never empty).
    pub offered: Vec<Protocol>,
}

impl<'a> Upgrade<'a> {
    /// Reads an upgrade request's headers.
    ///
    /// # Errors
    /// [`UpgradeError::NotWebSocket`] without `Upgrade: websocket` and a key,
    /// [`UpgradeError::Protocol`] when no channel protocol is offered.
    pub fn read(headers: &'a HeaderMap) -> Result<Self, UpgradeError> {
        let key = websocket_key(headers).ok_or(UpgradeError::NotWebSocket)?;
        let offered = Protocol::offered(offered_protocols(headers));
        if offered.is_empty() {
            return Err(UpgradeError::Protocol);
        }
        Ok(Self { key, offered })
    }

    /// The best protocol the client offered, preferring v5.
    #[must_use]
    pub fn best(&self) -> Protocol {
        Protocol::best_of(&self.offered).unwrap_or(Protocol::V4)
    }
}

/// The `101 Switching Protocols` answer that completes an upgrade with `protocol`; `accept`
/// is the key derived from the client's (`Sec-WebSocket-Accept`).
#[must_use]
pub fn switching_protocols<B>(body: B, protocol: HeaderValue, accept: &str) -> Response<B> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// A frame for `channel` carrying `data`.
#[must_use]
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    out
}

/// A client frame, split into what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Bytes for the process's standard input.
    Stdin(&'a [u8]),
    /// A terminal size, still JSON.
    Resize(&'a [u8]),
    /// The client closed one of its streams (v5).
    Close(u8),
    /// An empty frame or one for a channel clients do not write.
    Ignored,
}

/// Splits a binary frame from the client by its channel byte.
#[must_use]
pub fn parse(frame: &[u8]) -> Incoming<'_> {
    match frame {
        [STDIN, data @ ..] => Incoming::Stdin(data),
        [RESIZE, data @ ..] => Incoming::Resize(data),
        [CLOSE, channel, ..] => Incoming::Close(*channel),
        _ => Incoming::Ignored,
    }
}

/// The status that ends a session, as client-go's v4 error decoder reads it: `Success`, or
/// `Failure` with reason `NonZeroExitCode` and an `ExitCode` cause holding the code.
#[must_use]
pub fn exit_status(code: Option<i32>) -> Value {
    match code {
        None | Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
    }
}

/// A failure that is not an exit code (the command could not start, the container is not
/// there): client-go prints the message.
#[must_use]
pub fn error_status(message: &str) -> Value {
    failure_status(500, "InternalError", message)
}

/// A failure with the HTTP-like code and reason a `metav1.Status` carries.
#[must_use]
pub fn failure_status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_v5_and_accepts_v4_alone() {
        assert_eq!(
            Protocol::negotiate(["v4.channel.k8s.io, v5.channel.k8s.io"]),
            Some(Protocol::V5)
        );
        assert_eq!(
            Protocol::negotiate(["channel.k8s.io", "v4.channel.k8s.io"]),
            Some(Protocol::V4)
        );
        assert_eq!(Protocol::negotiate(["base64.channel.k8s.io"]), None);
    }

    #[test]
    fn an_upgrade_needs_websocket_a_key_and_a_channel_protocol() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert_eq!(Upgrade::read(&headers), Err(UpgradeError::NotWebSocket));
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("k"));
        assert_eq!(Upgrade::read(&headers), Err(UpgradeError::Protocol));
        headers.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io, base64.channel.k8s.io"),
        );
        headers.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v5.channel.k8s.io"),
        );
        assert_eq!(
            Upgrade::read(&headers),
            Ok(Upgrade {
                key: "k",
                offered: vec![Protocol::V4, Protocol::V5],
            })
        );
        assert_eq!(Upgrade::read(&headers).unwrap().best(), Protocol::V5);
    }

    #[test]
    fn frames_lead_with_their_channel_byte() {
        assert_eq!(frame(STDOUT, b"hi"), [1, b'h', b'i']);
        assert_eq!(parse(&[0, b'x']), Incoming::Stdin(b"x"));
        assert_eq!(parse(&[4, b'{']), Incoming::Resize(b"{"));
        assert_eq!(parse(&[255, 0]), Incoming::Close(0));
        assert_eq!(parse(&[]), Incoming::Ignored);
        assert_eq!(parse(&[1, b'x']), Incoming::Ignored);
    }

    #[test]
    fn a_non_zero_exit_is_a_failure_with_an_exit_code_cause() {
        let s = exit_status(Some(3));
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(
            serde_json::to_string(&exit_status(Some(0))).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(exit_status(None)["status"], "Success");
    }
}
