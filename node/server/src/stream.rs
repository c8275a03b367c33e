//! Exec and attach: a WebSocket upgrade speaking the Kubernetes channel protocol, pumping the
//! backend's session streams to and from the client and ending with the exit status.

use std::{sync::Arc, time::Duration};

use futures::{SinkExt, StreamExt, stream::SplitStream};
use http::{HeaderValue, Request, Response};
use hyper::{body::Incoming, upgrade::Upgraded};
use hyper_util::rt::TokioIo;
use skiff_machinery::channel::{self, Incoming as Frame, Protocol, Upgrade, UpgradeError};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use super::{
    ContainerRef, NodeBackend, Session, SessionInput, SessionOutput, StreamOptions, TerminalSize,
    reply::{self, Body, Params},
};

/// How long the client may take to answer the final close before the connection is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long output may still drain after the process has exited; a background child holding
/// the pipe open must not keep the session alive forever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Exec runs a new command; attach joins the container's main process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Exec,
    Attach,
}

/// Why a stream request is refused before any upgrade.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum StreamError {
    /// A boolean parameter does not parse.
    #[error("{0}")]
    Query(String),
    /// Exec without a command.
    #[error("you must specify at least 1 command")]
    NoCommand,
    /// None of stdin, stdout, stderr was asked for.
    #[error("you must specify at least 1 of stdin, stdout, stderr")]
    NoStreams,
    /// Not a WebSocket upgrade (SPDY is not served), or no channel protocol offered.
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
}

/// Reads which streams the client wants, the way the kubelet does.
pub(super) fn options(params: &Params, kind: Kind) -> Result<StreamOptions, StreamError> {
    let flag = |k: &str| params.flag(k).map_err(StreamError::Query);
    let tty = flag("tty")?;
    let opts = StreamOptions {
        command: params.all("command"),
        stdin: flag("stdin")?,
        stdout: flag("stdout")?,
        // A terminal merges standard error into its one output.
        stderr: flag("stderr")? && !tty,
        tty,
    };
    if kind == Kind::Exec && opts.command.is_empty() {
        return Err(StreamError::NoCommand);
    }
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return Err(StreamError::NoStreams);
    }
    Ok(opts)
}

/// The WebSocket accept key and negotiated protocol of an upgrade request.
fn handshake<B>(req: &Request<B>) -> Result<(String, Protocol), StreamError> {
    let upgrade = Upgrade::read(req.headers())?;
    Ok((derive_accept_key(upgrade.key.as_bytes()), upgrade.best()))
}

/// Serves `/exec/...` or `/attach/...`: starts the session, then upgrades and pumps it.
pub(super) fn serve(
    backend: Arc<dyn NodeBackend>,
    mut req: Request<Incoming>,
    target: ContainerRef,
    kind: Kind,
) -> Response<Body> {
    let params = Params::parse(req.uri().query());
    let prepared = options(&params, kind).and_then(|o| handshake(&req).map(|h| (o, h)));
    let (opts, (accept, protocol)) = match prepared {
        Ok(p) => p,
        Err(err) => return reply::bad_request(&err.to_string()),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(err) => {
                tracing::warn!(%target, %err, "websocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // The process starts once the client holds the upgraded connection, as the kubelet
        // orders it: kubectl before 1.34 reads frames before it has made its streams, and
        // drops the ones that come too early ("Unknown stream id 3, discarding message"), so
        // a command that ended before the upgrade lost its exit status. A refusal goes out
        // on the error channel after the upgrade, as the kubelet reports a failed start: a
        // refused upgrade would make kubectl retry over SPDY, and the message it then
        // printed would be about SPDY instead of this.
        let session = match kind {
            Kind::Exec => backend.exec(&target, &opts).await,
            Kind::Attach => backend.attach(&target, &opts).await,
        };
        match session {
            Ok(session) => run(ws, session, protocol, &target).await,
            Err(err) => {
                let (code, reason) = err.status();
                finish(ws, &channel::failure_status(code, reason, &err.to_string())).await;
            }
        }
    });
    channel::switching_protocols(
        reply::full(""),
        HeaderValue::from_static(protocol.name()),
        &accept,
    )
}

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// How the client's side of a session ended, as the input pump saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ClientEnd {
    /// A close frame, with its code (`None`: a close without a status code).
    Close(Option<u16>),
    /// The connection ended without a close frame.
    Eof,
    /// Reading failed (a reset, a protocol error).
    Error(String),
    /// Still open when the session stopped waiting for it.
    Open,
}

/// What happened to the final status and close on their way out.
#[derive(Debug, Default)]
struct Farewell {
    status: Option<String>,
    close: Option<String>,
    flush: Option<String>,
}

impl Farewell {
    fn sent(&self) -> bool {
        self.status.is_none() && self.close.is_none() && self.flush.is_none()
    }
}

/// Counts of what a session carried, for its end-of-session log line.
#[derive(Debug, Default, Clone, Copy)]
struct Carried {
    frames: u64,
    bytes: u64,
}

/// Pumps a session until its process has exited and its output drained (or the client left),
/// then sends the exit status. Logs one line saying how the session ended: which side ended
/// first, whether the status and close went out, and how the client closed.
async fn run(ws: Ws, mut session: Session, protocol: Protocol, target: &ContainerRef) {
    let (mut sink, source) = ws.split();
    let mut input = tokio::spawn(pump_input(
        source,
        session.stdin.take(),
        session.resize.take(),
        protocol,
    ));
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    for (reader, ch) in [
        (session.stdout.take(), channel::STDOUT),
        (session.stderr.take(), channel::STDERR),
    ] {
        if let Some(reader) = reader {
            tokio::spawn(pump_output(reader, ch, tx.clone()));
        }
    }
    drop(tx);
    let mut exit = session.exit;
    let mut exited = None;
    let mut drained = false;
    let mut out = Carried::default();
    let mut client_first = None;
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    while !(drained && exited.is_some()) {
        tokio::select! {
            frame = rx.recv(), if !drained => match frame {
                Some(frame) => {
                    let len = frame.len() as u64;
                    if let Err(err) = sink.send(Message::binary(frame)).await {
                        input.abort();
                        tracing::debug!(
                            %target, frames = out.frames, bytes = out.bytes,
                            unsent_frames = rx.len() + 1, %err,
                            "stream session ended: the client left before the process ended"
                        );
                        return;
                    }
                    out.frames += 1;
                    out.bytes += len;
                }
                None => drained = true,
            },
            result = &mut exit, if exited.is_none() => {
                exited = Some(result);
                grace.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
            },
            () = &mut grace, if exited.is_some() && !drained => drained = true,
            end = &mut input, if client_first.is_none() => {
                // The client stopped sending (closed stdin's stream, or the socket): the
                // process may still run and its output still go out.
                client_first = Some(end.unwrap_or_else(|e| ClientEnd::Error(e.to_string())));
            },
        }
    }
    let (status, code) = match exited {
        Some(Ok(code)) => (channel::exit_status(code), code),
        Some(Err(err)) => (channel::error_status(&err.to_string()), None),
        None => (channel::exit_status(None), None),
    };
    let farewell = send_status(&mut sink, &status).await;
    // Read on until the client answers the close: a socket closed with unread frames in it
    // (a late resize or stdin) is reset, and the reset can overtake the status on its way
    // to the client, which then sees the connection end without it.
    let client = match client_first.clone() {
        Some(end) => end,
        None => {
            if let Ok(end) = tokio::time::timeout(CLOSE_WAIT, &mut input).await {
                end.unwrap_or_else(|e| ClientEnd::Error(e.to_string()))
            } else {
                input.abort();
                ClientEnd::Open
            }
        }
    };
    let log = |message: &str| {
        tracing::debug!(
            %target,
            exit_code = ?code,
            first = if client_first.is_some() { "client" } else { "process" },
            status_sent = farewell.status.is_none(),
            close_sent = farewell.close.is_none(),
            flushed = farewell.flush.is_none(),
            send_error = ?farewell.status.as_ref().or(farewell.close.as_ref()).or(farewell.flush.as_ref()),
            client_end = ?client,
            frames = out.frames,
            bytes = out.bytes,
            "{message}"
        );
    };
    if farewell.sent() && matches!(client, ClientEnd::Close(Some(_))) {
        log("stream session ended");
    } else {
        log("stream session ended uncleanly");
    }
}

/// Sends the final status and closes the connection.
async fn finish(ws: Ws, status: &serde_json::Value) {
    let (mut sink, _source) = ws.split();
    let farewell = send_status(&mut sink, status).await;
    tracing::debug!(?farewell, "refused stream session ended");
}

async fn send_status<S>(sink: &mut S, status: &serde_json::Value) -> Farewell
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let body = serde_json::to_vec(status).unwrap_or_default();
    let mut farewell = Farewell::default();
    if let Err(err) = sink
        .send(Message::binary(channel::frame(channel::ERROR, &body)))
        .await
    {
        farewell.status = Some(err.to_string());
    }
    if let Err(err) = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await
    {
        farewell.close = Some(err.to_string());
    }
    if let Err(err) = sink.close().await {
        farewell.flush = Some(err.to_string());
    }
    farewell
}

/// Copies one output of the process into channel frames.
async fn pump_output(mut reader: SessionOutput, ch: u8, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(channel::frame(ch, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Feeds client frames to the process: stdin bytes, resizes, and the v5 close of stdin.
/// Returns how the client's side ended.
async fn pump_input(
    mut source: SplitStream<Ws>,
    mut stdin: Option<SessionInput>,
    mut resize: Option<Box<dyn FnMut(TerminalSize) + Send>>,
    protocol: Protocol,
) -> ClientEnd {
    let end = loop {
        let msg = match source.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(err)) => break ClientEnd::Error(err.to_string()),
            None => break ClientEnd::Eof,
        };
        // Clients that write strings (the Python client) send text frames, which the
        // kubelet takes as the same channel-prefixed bytes.
        let data = match msg {
            Message::Binary(data) => data,
            Message::Text(text) => text.into(),
            Message::Close(frame) => break ClientEnd::Close(frame.map(|f| f.code.into())),
            _ => continue,
        };
        match channel::parse(&data) {
            Frame::Stdin(bytes) => {
                if let Some(w) = stdin.as_mut()
                    && (w.write_all(bytes).await.is_err() || w.flush().await.is_err())
                {
                    stdin = None;
                }
            }
            Frame::Resize(json) => {
                match (
                    resize.as_mut(),
                    serde_json::from_slice::<TerminalSize>(json),
                ) {
                    (Some(resize), Ok(size)) => resize(size),
                    (_, Err(err)) => tracing::debug!(%err, "ignoring a malformed resize"),
                    (None, Ok(_)) => {}
                }
            }
            Frame::Close(channel::STDIN) if protocol == Protocol::V5 => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
            Frame::Close(_) | Frame::Ignored => {}
        }
    };
    if let Some(mut w) = stdin.take() {
        let _ = w.shutdown().await;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_needs_a_command_and_a_stream_and_a_tty_drops_stderr() {
        let p = Params::parse(Some(
            "command=sh&command=-c&command=echo%20hi&stdin=1&stdout=1&stderr=1&tty=1",
        ));
        let o = options(&p, Kind::Exec).unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && o.tty && !o.stderr);
        assert_eq!(
            options(&Params::parse(Some("stdout=1")), Kind::Exec),
            Err(StreamError::NoCommand)
        );
        assert_eq!(
            options(&Params::parse(Some("command=ls")), Kind::Exec),
            Err(StreamError::NoStreams)
        );
        assert!(options(&Params::parse(Some("stdout=true")), Kind::Attach).is_ok());
    }

    #[test]
    fn handshake_needs_a_websocket_upgrade_with_a_channel_protocol() {
        let req = |proto: &str| {
            Request::builder()
                .header("upgrade", "websocket")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("sec-websocket-protocol", proto)
                .body(())
                .unwrap()
        };
        let (accept, p) = handshake(&req("v5.channel.k8s.io, v4.channel.k8s.io")).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(p, Protocol::V5);
        assert_eq!(
            handshake(&req("SPDY/3.1")).unwrap_err(),
            StreamError::Upgrade(UpgradeError::Protocol)
        );
        let spdy = Request::builder()
            .header("upgrade", "SPDY/3.1")
            .body(())
            .unwrap();
        assert_eq!(
            handshake(&spdy).unwrap_err(),
            StreamError::Upgrade(UpgradeError::NotWebSocket)
        );
    }
}
