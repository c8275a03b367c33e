//! Port-forward's wire protocols as the API server and the node both speak them: the
//! WebSocket sub-protocols (kubectl's SPDY tunnel, the channel protocol of the Python client),
//! the ports a request names, the channel protocol's per-port channels and the SPDY streams'
//! headers.

/// kubectl 1.31+: SPDY/3.1 frames carried in WebSocket binary messages.
pub const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The WebSocket channel protocol: per port a data and an error channel.
pub const CHANNEL: &str = "v4.channel.k8s.io";
/// The `Upgrade` token of kubectl's fallback (and pre-1.31) port-forward: SPDY on the raw
/// connection.
pub const SPDY_UPGRADE: &str = "SPDY/3.1";
/// The port-forward protocol a SPDY upgrade negotiates in [`PROTOCOL_HEADER`].
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// The header a SPDY upgrade negotiates its protocol in.
pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// Whether a request asks for the raw SPDY upgrade of port-forward (`Upgrade: SPDY/3.1`
/// offering `portforward.k8s.io`).
#[must_use]
pub fn is_spdy_upgrade(headers: &http::HeaderMap) -> bool {
    let upgrade = headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(SPDY_UPGRADE));
    upgrade
        && headers
            .get_all(PROTOCOL_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SPDY_PROTOCOL)
}

/// The `101 Switching Protocols` answer to a SPDY upgrade.
#[must_use]
pub fn spdy_switching_protocols<B>(body: B) -> http::Response<B> {
    let mut resp = http::Response::new(body);
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static(SPDY_UPGRADE),
    );
    h.insert(
        PROTOCOL_HEADER,
        http::HeaderValue::from_static(SPDY_PROTOCOL),
    );
    resp
}

/// SPDY stream header naming the stream's role ([`STREAM_DATA`] or [`STREAM_ERROR`]).
pub const HEADER_STREAM_TYPE: &str = "streamtype";
/// SPDY stream header naming the pod's port.
pub const HEADER_PORT: &str = "port";
/// SPDY stream header pairing a connection's data and error streams.
pub const HEADER_REQUEST_ID: &str = "requestid";
/// The stream carrying a connection's bytes.
pub const STREAM_DATA: &str = "data";
/// The stream carrying why a connection failed (read to its end by the client).
pub const STREAM_ERROR: &str = "error";

/// A port-forward sub-protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// [`TUNNEL`].
    Tunnel,
    /// [`CHANNEL`].
    Channel,
}

impl Protocol {
    /// The `Sec-WebSocket-Protocol` token the server answers with.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Tunnel => TUNNEL,
            Self::Channel => CHANNEL,
        }
    }

    /// The protocol to answer a client that offered `headers` (comma-separated, possibly
    /// several headers): the SPDY tunnel when offered, else the channel protocol when the
    /// client offered `v4.channel.k8s.io` (clients that also offer v5 get v4: port-forward
    /// has no v5).
    pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let offered: Vec<&str> = headers
            .into_iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .collect();
        if offered.contains(&TUNNEL) {
            Some(Self::Tunnel)
        } else if offered.contains(&CHANNEL) {
            Some(Self::Channel)
        } else {
            None
        }
    }
}

/// Why a request's ports are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Not a number from 1 to 65535.
    #[error("invalid port {0:?}: a port is a number from 1 to 65535")]
    Invalid(String),
    /// More ports than the channel protocol has channels for.
    #[error("at most {MAX_PORTS} ports can be forwarded over one connection")]
    TooMany,
}

/// The most ports one channel-protocol connection carries (two channels each).
pub const MAX_PORTS: usize = 128;

/// The ports named by query values (`port` or `ports`, each possibly a comma-separated list),
/// in order.
///
/// # Errors
/// [`PortError`] for a value that is not a port, or too many.
pub fn ports<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<u16>, PortError> {
    let mut out = Vec::new();
    for value in values {
        for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(port) if port != 0 => out.push(port),
                _ => return Err(PortError::Invalid(p.to_owned())),
            }
        }
    }
    if out.len() > MAX_PORTS {
        return Err(PortError::TooMany);
    }
    Ok(out)
}

/// The channel-protocol data channel of the `index`th port.
#[must_use]
pub fn data_channel(index: usize) -> u8 {
    u8::try_from(index * 2).unwrap_or(u8::MAX)
}

/// The channel-protocol error channel of the `index`th port.
#[must_use]
pub fn error_channel(index: usize) -> u8 {
    data_channel(index).saturating_add(1)
}

/// The first frame on each of a port's channels: its number, little-endian.
#[must_use]
pub fn port_frame(channel: u8, port: u16) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![channel, lo, hi]
}

/// The port index a client frame's channel belongs to, when it is a data channel of one of
/// `count` ports (clients write only data channels).
#[must_use]
pub fn data_port_index(channel: u8, count: usize) -> Option<usize> {
    let index = usize::from(channel) / 2;
    (channel.is_multiple_of(2) && index < count).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunnel_wins_and_v4_is_answered_to_clients_offering_v5_too() {
        assert_eq!(
            Protocol::negotiate([TUNNEL, "SPDY/3.1+x"]),
            Some(Protocol::Tunnel)
        );
        assert_eq!(
            Protocol::negotiate(["v5.channel.k8s.io,v4.channel.k8s.io"]),
            Some(Protocol::Channel)
        );
        assert_eq!(Protocol::negotiate(["v5.channel.k8s.io"]), None);
    }

    #[test]
    fn a_spdy_upgrade_offers_the_port_forward_protocol() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::UPGRADE, "SPDY/3.1".parse().unwrap());
        assert!(!is_spdy_upgrade(&h));
        h.insert(PROTOCOL_HEADER, "portforward.k8s.io".parse().unwrap());
        assert!(is_spdy_upgrade(&h));
        h.insert(http::header::UPGRADE, "websocket".parse().unwrap());
        assert!(!is_spdy_upgrade(&h));
        let resp = spdy_switching_protocols(());
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.headers()[PROTOCOL_HEADER], SPDY_PROTOCOL);
    }

    #[test]
    fn ports_come_repeated_or_comma_separated_and_must_be_ports() {
        assert_eq!(ports(["80,8080", "9000"]), Ok(vec![80, 8080, 9000]));
        assert_eq!(ports(["0"]), Err(PortError::Invalid("0".to_owned())));
        assert_eq!(
            ports(["70000"]),
            Err(PortError::Invalid("70000".to_owned()))
        );
        let many = vec!["1"; MAX_PORTS + 1];
        assert_eq!(ports(many), Err(PortError::TooMany));
    }

    #[test]
    fn each_port_has_a_data_and_an_error_channel_opened_by_its_number() {
        assert_eq!((data_channel(0), error_channel(0)), (0, 1));
        assert_eq!((data_channel(2), error_channel(2)), (4, 5));
        assert_eq!(port_frame(2, 8080), [2, 0x90, 0x1f]);
        assert_eq!(data_port_index(2, 2), Some(1));
        assert_eq!(data_port_index(3, 2), None);
        assert_eq!(data_port_index(4, 2), None);
    }
}
