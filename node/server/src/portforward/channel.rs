//! The channel protocol of port-forward (`v4.channel.k8s.io`, the Python client's): per
//! port a data channel and an error channel, each opened by the port's number; one
//! connection per port, and the WebSocket closes once every pod side has ended.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use skiff_machinery::{channel::frame, portforward};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf},
    sync::mpsc,
    task::JoinSet,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

use super::{PodRef, forward_error};
use crate::{NodeBackend, PortConnection};

/// Forwards `ports` of `target` over `ws` until every pod side has ended or the client left.
pub(super) async fn run<S>(
    ws: WebSocketStream<S>,
    backend: Arc<dyn NodeBackend>,
    target: PodRef,
    ports: Vec<u16>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut sink, mut source) = ws.split();
    for (i, port) in ports.iter().enumerate() {
        for ch in [portforward::data_channel(i), portforward::error_channel(i)] {
            if sink
                .send(Message::binary(portforward::port_frame(ch, *port)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let mut writers: Vec<Option<WriteHalf<PortConnection>>> = Vec::with_capacity(ports.len());
    let mut readers = JoinSet::new();
    for (i, port) in ports.iter().enumerate() {
        match backend
            .port_forward(&target.namespace, &target.pod, *port)
            .await
        {
            Ok(conn) => {
                let (reader, writer) = tokio::io::split(conn);
                writers.push(Some(writer));
                readers.spawn(pump(reader, portforward::data_channel(i), tx.clone()));
            }
            Err(err) => {
                writers.push(None);
                let message = forward_error(&target, *port, &err);
                tracing::debug!(%target, port, %err, "port-forward connection refused");
                let _ = tx
                    .send(frame(portforward::error_channel(i), message.as_bytes()))
                    .await;
            }
        }
    }
    drop(tx);
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(f) => {
                    if sink.send(Message::binary(f)).await.is_err() {
                        break;
                    }
                }
                // Every pod side has ended and its output gone out.
                None => break,
            },
            msg = source.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    let Some((&ch, bytes)) = data.split_first() else { continue };
                    if let Some(i) = portforward::data_port_index(ch, writers.len())
                        && let Some(w) = writers[i].as_mut()
                        && w.write_all(bytes).await.is_err()
                    {
                        writers[i] = None;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    readers.abort_all();
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    let _ = sink.close().await;
    tracing::debug!(%target, ?ports, "port-forward channel session ended");
}

/// Copies what the pod sends on one port into frames of its data channel.
async fn pump(
    mut reader: tokio::io::ReadHalf<PortConnection>,
    channel: u8,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let mut buf = vec![0; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}
