use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use skiff_machinery::spdy::{Codec, Frame};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    sync::{Mutex, mpsc},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::Role},
};

use super::{PodRef, channel, tunnel};
use crate::{
    BackendError, ContainerRef, ImageSummary, LogSource, NodeBackend, PortConnection, Session,
    StreamOptions, Summary,
};

/// Pod `ns/p`: port 80 connects to a duplex whose far end goes to the test; others refuse.
struct Pod {
    far: mpsc::UnboundedSender<DuplexStream>,
}

fn other() -> BackendError {
    BackendError::BadRequest("not faked".to_owned())
}

#[async_trait]
impl NodeBackend for Pod {
    async fn log_source(&self, _: &ContainerRef, _: bool) -> Result<LogSource, BackendError> {
        Err(other())
    }
    async fn exec(&self, _: &ContainerRef, _: &StreamOptions) -> Result<Session, BackendError> {
        Err(other())
    }
    async fn attach(&self, _: &ContainerRef, _: &StreamOptions) -> Result<Session, BackendError> {
        Err(other())
    }
    async fn port_forward(
        &self,
        _namespace: &str,
        _pod: &str,
        port: u16,
    ) -> Result<PortConnection, BackendError> {
        if port != 80 {
            return Err(BackendError::Internal(format!(
                "connecting to localhost:{port}: connection refused"
            )));
        }
        let (near, far) = tokio::io::duplex(64 * 1024);
        let _ = self.far.send(far);
        Ok(Box::pin(near))
    }
    async fn stats(&self) -> Result<Summary, BackendError> {
        Err(other())
    }
    async fn import_image(&self, _: &Path) -> Result<Vec<String>, BackendError> {
        Err(other())
    }
    async fn list_images(&self) -> Result<Vec<ImageSummary>, BackendError> {
        Err(other())
    }
    async fn remove_image(&self, _: &str) -> Result<String, BackendError> {
        Err(other())
    }
    async fn pull_image(&self, _: &str) -> Result<ImageSummary, BackendError> {
        Err(other())
    }
}

fn target() -> PodRef {
    PodRef {
        namespace: "ns".to_owned(),
        pod: "p".to_owned(),
    }
}

/// The client's WebSocket to a session served by `serve`, and the pod ends it dials.
async fn session<F, Fut>(
    serve: F,
) -> (
    WebSocketStream<DuplexStream>,
    mpsc::UnboundedReceiver<DuplexStream>,
)
where
    F: FnOnce(WebSocketStream<DuplexStream>, Arc<dyn NodeBackend>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (client_io, server_io) = tokio::io::duplex(256 * 1024);
    let (far, dialled) = mpsc::unbounded_channel();
    let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
    tokio::spawn(serve(server, Arc::new(Pod { far })));
    let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    (client, dialled)
}

/// The SPDY client side of a tunnel: frames out, frames in, however the bytes were split.
struct Spdy {
    ws: Arc<Mutex<WebSocketStream<DuplexStream>>>,
    codec: Codec,
    buf: Vec<u8>,
}

impl Spdy {
    async fn send(&mut self, frame: &Frame) {
        let bytes = self.codec.encode(frame).unwrap();
        // Split in two messages, as Go's framer writes a frame in pieces.
        let (a, b) = bytes.split_at(bytes.len() / 2);
        let mut ws = self.ws.lock().await;
        ws.send(Message::binary(a.to_vec())).await.unwrap();
        ws.send(Message::binary(b.to_vec())).await.unwrap();
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some((frame, used)) = self.codec.decode(&self.buf).unwrap() {
                self.buf.drain(..used);
                return frame;
            }
            match self.ws.lock().await.next().await {
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                other => panic!("tunnel ended: {other:?}"),
            }
        }
    }
}

fn syn(stream_id: u32, kind: &str, port: &str, request: &str) -> Frame {
    Frame::SynStream {
        stream_id,
        flags: 0,
        headers: vec![
            ("streamtype".to_owned(), kind.to_owned()),
            ("port".to_owned(), port.to_owned()),
            ("requestid".to_owned(), request.to_owned()),
        ],
    }
}

#[tokio::test]
async fn a_tunnel_pairs_streams_relays_both_ways_and_reports_a_refused_port() {
    let (ws, mut dialled) =
        session(|ws, backend| async move { tunnel::run(ws, backend, target()).await }).await;
    let mut c = Spdy {
        ws: Arc::new(Mutex::new(ws)),
        codec: Codec::new(),
        buf: Vec::new(),
    };
    c.send(&syn(1, "error", "80", "0")).await;
    assert!(matches!(
        c.next().await,
        Frame::SynReply { stream_id: 1, .. }
    ));
    c.send(&Frame::fin(1)).await;
    c.send(&syn(3, "data", "80", "0")).await;
    assert!(matches!(
        c.next().await,
        Frame::SynReply { stream_id: 3, .. }
    ));
    let mut pod = dialled.recv().await.unwrap();
    c.send(&Frame::data(3, b"ping")).await;
    c.send(&Frame::fin(3)).await;
    let mut got = Vec::new();
    pod.read_to_end(&mut got).await.unwrap();
    assert_eq!(
        got, b"ping",
        "the client's bytes, then its FIN as end of input"
    );
    pod.write_all(b"pong").await.unwrap();
    drop(pod);
    assert_eq!(c.next().await, Frame::data(3, b"pong"));
    assert_eq!(c.next().await, Frame::fin(3));
    assert_eq!(c.next().await, Frame::fin(1));

    c.send(&Frame::Ping { id: 7 }).await;
    assert_eq!(c.next().await, Frame::Ping { id: 7 });

    c.send(&syn(5, "error", "81", "1")).await;
    c.send(&syn(7, "data", "81", "1")).await;
    let mut frames = Vec::new();
    for _ in 0..5 {
        frames.push(c.next().await);
    }
    let error = frames.iter().find_map(|f| match f {
        Frame::Data {
            stream_id: 5, data, ..
        } if !data.is_empty() => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    });
    assert_eq!(
        error.as_deref(),
        Some(
            "error forwarding port 81 to pod ns/p: connecting to localhost:81: connection refused"
        ),
        "{frames:?}"
    );
    assert!(frames.contains(&Frame::fin(5)) && frames.contains(&Frame::fin(7)));
}

#[tokio::test]
async fn a_stream_without_a_port_is_reset() {
    let (ws, _dialled) =
        session(|ws, backend| async move { tunnel::run(ws, backend, target()).await }).await;
    let mut c = Spdy {
        ws: Arc::new(Mutex::new(ws)),
        codec: Codec::new(),
        buf: Vec::new(),
    };
    c.send(&syn(1, "data", "http", "0")).await;
    assert!(matches!(
        c.next().await,
        Frame::RstStream { stream_id: 1, .. }
    ));
}

#[tokio::test]
async fn the_channel_protocol_opens_each_port_relays_and_closes_when_the_pods_end() {
    let (mut ws, mut dialled) = session(|ws, backend| async move {
        channel::run(ws, backend, target(), vec![80, 81]).await;
    })
    .await;
    let mut next = async || match ws.next().await {
        Some(Ok(Message::Binary(b))) => Some(b.to_vec()),
        _ => None,
    };
    // Each channel opens with its port, little-endian; port 81 refuses on its error channel.
    assert_eq!(next().await.unwrap(), [0, 80, 0]);
    assert_eq!(next().await.unwrap(), [1, 80, 0]);
    assert_eq!(next().await.unwrap(), [2, 81, 0]);
    assert_eq!(next().await.unwrap(), [3, 81, 0]);
    let refused = next().await.unwrap();
    assert_eq!(refused[0], 3);
    assert!(String::from_utf8_lossy(&refused[1..]).contains("port 81"));
    let mut pod = dialled.recv().await.unwrap();
    ws.send(Message::binary(b"\x00hello".to_vec()))
        .await
        .unwrap();
    let mut got = [0; 5];
    pod.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
    pod.write_all(b"world").await.unwrap();
    drop(pod);
    let mut next = async || match ws.next().await {
        Some(Ok(Message::Binary(b))) => Some(b.to_vec()),
        _ => None,
    };
    assert_eq!(next().await.unwrap(), b"\x00world");
    // The only connection has ended: the session closes.
    assert_eq!(next().await, None);
}
