//! kubectl's port-forward: SPDY/3.1 carried in WebSocket binary messages (or, from clients
//! that do not tunnel, on the raw upgraded connection). Each local
//! connection opens an error stream and a data stream paired by their `requestID` header;
//! once both are there the pod's port is dialled. Data flows both ways, a FIN from the
//! client half-closes the pod connection, and the pod's end becomes FIN on both streams (with
//! the reason on the error stream first when the port refused).

use std::{collections::HashMap, sync::Arc};

use futures::{SinkExt, StreamExt};
use skiff_machinery::{
    portforward::{HEADER_PORT, HEADER_REQUEST_ID, HEADER_STREAM_TYPE, STREAM_DATA, STREAM_ERROR},
    spdy::{self, Codec, FLAG_FIN, Frame},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
    task::JoinSet,
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use super::{PodRef, forward_error};
use crate::NodeBackend;

/// What the client sent on a data stream.
#[derive(Debug)]
enum Inbound {
    Data(Vec<u8>),
    Fin,
}

/// One side of a pair as it arrived.
#[derive(Debug, Default)]
struct Pending {
    port: u16,
    data: Option<(u32, mpsc::UnboundedReceiver<Inbound>)>,
    error: Option<u32>,
}

/// A pair of streams ready to be forwarded.
#[derive(Debug)]
struct Ready {
    port: u16,
    data: u32,
    error: u32,
    from_client: mpsc::UnboundedReceiver<Inbound>,
}

/// The streams of one tunnel: which data stream feeds which connection, and the halves of
/// pairs still waiting for their other stream.
#[derive(Debug, Default)]
struct Streams {
    inbound: HashMap<u32, mpsc::UnboundedSender<Inbound>>,
    pending: HashMap<String, Pending>,
}

/// What handling one frame asks of the connection.
#[derive(Debug, Default)]
struct Step {
    replies: Vec<Frame>,
    ready: Option<Ready>,
    stop: bool,
}

impl Streams {
    fn on_frame(&mut self, frame: Frame) -> Step {
        let mut step = Step::default();
        match frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => {
                let kind = spdy::header(&headers, HEADER_STREAM_TYPE);
                let port = spdy::header(&headers, HEADER_PORT).and_then(|p| p.parse::<u16>().ok());
                let (Some(kind @ (STREAM_DATA | STREAM_ERROR)), Some(port)) = (kind, port) else {
                    tracing::debug!(stream_id, ?headers, "refusing a port-forward stream");
                    step.replies.push(Frame::RstStream {
                        stream_id,
                        status: spdy::RST_PROTOCOL_ERROR,
                    });
                    return step;
                };
                step.replies.push(Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: Vec::new(),
                });
                // Clients without request ids open the error stream two before the data one.
                let key = spdy::header(&headers, HEADER_REQUEST_ID).map_or_else(
                    || {
                        let error_id = if kind == STREAM_DATA {
                            stream_id.saturating_sub(2)
                        } else {
                            stream_id
                        };
                        format!("stream-{error_id}")
                    },
                    str::to_owned,
                );
                tracing::debug!(stream_id, kind, port, request = %key, "port-forward stream opened");
                let pending = self.pending.entry(key.clone()).or_default();
                pending.port = port;
                if kind == STREAM_DATA {
                    let (tx, rx) = mpsc::unbounded_channel();
                    self.inbound.insert(stream_id, tx);
                    pending.data = Some((stream_id, rx));
                } else {
                    pending.error = Some(stream_id);
                }
                if pending.data.is_some()
                    && pending.error.is_some()
                    && let Some(Pending {
                        port,
                        data: Some((data, from_client)),
                        error: Some(error),
                    }) = self.pending.remove(&key)
                {
                    step.ready = Some(Ready {
                        port,
                        data,
                        error,
                        from_client,
                    });
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if let Some(tx) = self.inbound.get(&stream_id) {
                    if !data.is_empty() {
                        let _ = tx.send(Inbound::Data(data));
                    }
                    if flags & FLAG_FIN != 0 {
                        let _ = tx.send(Inbound::Fin);
                        self.inbound.remove(&stream_id);
                    }
                }
            }
            // A reset data stream stops feeding its connection, which then winds down.
            Frame::RstStream { stream_id, .. } => {
                self.inbound.remove(&stream_id);
            }
            Frame::Ping { id } => step.replies.push(Frame::Ping { id }),
            Frame::GoAway { .. } => step.stop = true,
            Frame::SynReply { .. }
            | Frame::Settings
            | Frame::Headers { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
        step
    }
}

/// Serves one tunnel over a WebSocket until the client closes it (or says GOAWAY).
pub(super) async fn run<S>(ws: WebSocketStream<S>, backend: Arc<dyn NodeBackend>, target: PodRef)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (sink, source) = ws.split();
    // Only binary messages carry frames; a close (or an error) ends the byte stream.
    let source = source
        .take_while(|msg| {
            std::future::ready(matches!(
                msg,
                Ok(Message::Binary(_)
                    | Message::Ping(_)
                    | Message::Pong(_)
                    | Message::Frame(_)
                    | Message::Text(_))
            ))
        })
        .filter_map(|msg| {
            std::future::ready(match msg {
                Ok(Message::Binary(data)) => Some(data.to_vec()),
                _ => None,
            })
        });
    let sink = sink.with(|bytes: Vec<u8>| {
        std::future::ready(Ok::<_, tokio_tungstenite::tungstenite::Error>(
            Message::binary(bytes),
        ))
    });
    serve_frames(Box::pin(source), Box::pin(sink), backend, target).await;
}

/// Serves one tunnel over a raw upgraded connection (the `SPDY/3.1` upgrade).
pub(super) async fn run_raw<S>(io: S, backend: Arc<dyn NodeBackend>, target: PodRef)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(io);
    let source = futures::stream::unfold(reader, |mut reader| async move {
        let mut buf = vec![0; 32 * 1024];
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((buf, reader))
            }
        }
    });
    let sink = futures::sink::unfold(writer, |mut writer, bytes: Vec<u8>| async move {
        writer.write_all(&bytes).await?;
        writer.flush().await?;
        Ok::<_, std::io::Error>(writer)
    });
    serve_frames(Box::pin(source), Box::pin(sink), backend, target).await;
}

/// The frame loop of a tunnel, over whatever carries its bytes.
async fn serve_frames<Src, Snk, E>(
    mut source: Src,
    mut sink: Snk,
    backend: Arc<dyn NodeBackend>,
    target: PodRef,
) where
    Src: futures::Stream<Item = Vec<u8>> + Unpin,
    Snk: futures::Sink<Vec<u8>, Error = E> + Unpin,
    E: std::fmt::Display,
{
    let mut codec = Codec::new();
    let (tx, mut rx) = mpsc::channel::<Frame>(64);
    let mut streams = Streams::default();
    let mut connections = JoinSet::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut forwarded = 0u64;
    let end = 'session: loop {
        let outgoing = tokio::select! {
            Some(frame) = rx.recv() => vec![frame],
            msg = source.next() => match msg {
                Some(data) => {
                    buf.extend_from_slice(&data);
                    let mut replies = Vec::new();
                    loop {
                        let (frame, used) = match codec.decode(&buf) {
                            Ok(Some(decoded)) => decoded,
                            Ok(None) => break,
                            Err(err) => break 'session format!("bad frame: {err}"),
                        };
                        buf.drain(..used);
                        let step = streams.on_frame(frame);
                        replies.extend(step.replies);
                        if let Some(ready) = step.ready {
                            forwarded += 1;
                            connections.spawn(forward(
                                Arc::clone(&backend),
                                target.clone(),
                                ready,
                                tx.clone(),
                            ));
                        }
                        if step.stop {
                            break 'session "goaway".to_owned();
                        }
                    }
                    replies
                }
                None => break 'session "closed".to_owned(),
            },
        };
        for frame in outgoing {
            let bytes = match codec.encode(&frame) {
                Ok(b) => b,
                Err(err) => break 'session format!("encoding: {err}"),
            };
            if let Err(err) = sink.send(bytes).await {
                break 'session format!("sending: {err}");
            }
        }
    };
    connections.abort_all();
    let _ = sink.close().await;
    tracing::debug!(%target, connections = forwarded, end, "port-forward tunnel ended");
}

/// Dials the pod's port and relays one connection; the pod's end (or a refusal) ends both
/// streams.
async fn forward(
    backend: Arc<dyn NodeBackend>,
    target: PodRef,
    ready: Ready,
    to_client: mpsc::Sender<Frame>,
) {
    let Ready {
        port,
        data,
        error,
        mut from_client,
    } = ready;
    let conn = match backend
        .port_forward(&target.namespace, &target.pod, port)
        .await
    {
        Ok(conn) => conn,
        Err(err) => {
            tracing::debug!(%target, port, %err, "port-forward connection refused");
            let message = forward_error(&target, port, &err);
            for frame in [
                Frame::data(error, message.as_bytes()),
                Frame::fin(error),
                Frame::fin(data),
            ] {
                let _ = to_client.send(frame).await;
            }
            return;
        }
    };
    tracing::debug!(%target, port, data, "port-forward connection made");
    let (mut reader, mut writer) = tokio::io::split(conn);
    let upstream = tokio::spawn(async move {
        while let Some(Inbound::Data(bytes)) = from_client.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        // The client's FIN (or reset): the pod reads its end of input and may answer still.
        let _ = writer.shutdown().await;
        writer
    });
    let mut chunk = vec![0; 32 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to_client
                    .send(Frame::data(data, &chunk[..n]))
                    .await
                    .is_err()
                {
                    upstream.abort();
                    return;
                }
            }
        }
    }
    upstream.abort();
    for frame in [Frame::fin(data), Frame::fin(error)] {
        let _ = to_client.send(frame).await;
    }
}
