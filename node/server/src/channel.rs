//! The Kubernetes WebSocket channel protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io`) that
//! kubectl speaks for exec and attach: one byte of channel before each binary frame's data,
//! and the command's end as a `metav1.Status` on the error channel.

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

    /// The best protocol among those a client offered (comma-separated, possibly over
    /// several `Sec-WebSocket-Protocol` headers), preferring v5.
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let tokens: Vec<&str> = offered
            .into_iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .collect();
        [Self::V5, Self::V4]
            .into_iter()
            .find(|p| tokens.contains(&p.name()))
    }
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
