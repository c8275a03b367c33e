//! The DNS server on the node's address: UDP and TCP on one port, cluster names answered
//! from the zone in the receive loop, every other name relayed to the upstream resolvers.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use hickory_proto::op::{Message, ResponseCode};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
};

use crate::{
    answer::{self, Outcome, reply_to},
    zone::Zone,
};

/// How long one upstream gets to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay silent.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The UDP reply size for clients without EDNS.
const CLASSIC_PAYLOAD: usize = 512;

/// Failures starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The UDP or TCP socket could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The zone shared between the watches that write it and the server that reads it.
pub type SharedZone = Arc<RwLock<Zone>>;

#[derive(Debug)]
struct Shared {
    zone: SharedZone,
    upstreams: Vec<SocketAddr>,
}

/// A bound server, not yet serving.
#[derive(Debug)]
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    shared: Arc<Shared>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr`; names outside the cluster go to `upstreams` in order.
    ///
    /// # Errors
    /// When either socket cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        zone: SharedZone,
        upstreams: Vec<SocketAddr>,
    ) -> Result<Self, ServerError> {
        let bind_err = |source| ServerError::Bind { addr, source };
        let udp = UdpSocket::bind(addr).await.map_err(bind_err)?;
        let tcp = TcpListener::bind(addr).await.map_err(bind_err)?;
        Ok(Self {
            udp: Arc::new(udp),
            tcp,
            shared: Arc::new(Shared { zone, upstreams }),
        })
    }

    /// The UDP address (port 0 resolved).
    ///
    /// # Errors
    /// When the socket cannot say.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves until `stop` resolves.
    pub async fn serve(self, stop: impl Future<Output = ()>) {
        let udp = tokio::spawn(serve_udp(self.udp, self.shared.clone()));
        let tcp = tokio::spawn(serve_tcp(self.tcp, self.shared));
        stop.await;
        udp.abort();
        tcp.abort();
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err) => {
                // ICMP errors from earlier replies surface here; the socket stays usable.
                tracing::debug!(?err, "dns udp receive");
                continue;
            }
        };
        let packet = &buf[..len];
        let Ok(request) = Message::from_vec(packet) else {
            continue;
        };
        let limit = request.edns.as_ref().map_or(CLASSIC_PAYLOAD, |e| {
            usize::from(e.max_payload().clamp(512, answer::EDNS_PAYLOAD))
        });
        let outcome = {
            let zone = shared.zone.read().unwrap_or_else(PoisonError::into_inner);
            answer::answer(&zone, &request)
        };
        match outcome {
            Outcome::Reply(reply) => {
                if let Some(bytes) = encode(&reply, Some(limit)) {
                    _ = socket.send_to(&bytes, client).await;
                }
            }
            other => {
                let (socket, shared, packet) = (socket.clone(), shared.clone(), packet.to_vec());
                tokio::spawn(async move {
                    let bytes = resolve_elsewhere(&shared, &request, &packet, other).await;
                    if let Some(bytes) = bytes.and_then(|r| fit(r, &request, limit)) {
                        _ = socket.send_to(&bytes, client).await;
                    }
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_connection(stream, shared.clone()));
    }
}

async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut packet = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut packet).await.is_err() {
            return;
        }
        let Ok(request) = Message::from_vec(&packet) else {
            return;
        };
        let outcome = {
            let zone = shared.zone.read().unwrap_or_else(PoisonError::into_inner);
            answer::answer(&zone, &request)
        };
        let bytes = match outcome {
            Outcome::Reply(reply) => encode(&reply, None),
            other => resolve_elsewhere(&shared, &request, &packet, other).await,
        };
        let Some(bytes) = bytes else {
            return;
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// The reply's bytes; over UDP cut to `limit` with the TC bit, so the client retries over
/// TCP.
fn encode(reply: &Message, limit: Option<usize>) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    match limit {
        Some(limit) if bytes.len() > limit => reply.truncate().to_vec().ok(),
        _ => Some(bytes),
    }
}

/// An upstream reply relayed to a UDP client: as it came when it fits, else truncated.
fn fit(bytes: Vec<u8>, request: &Message, limit: usize) -> Option<Vec<u8>> {
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut cut = reply_to(request, ResponseCode::NoError);
    cut.metadata.truncation = true;
    cut.to_vec().ok()
}

/// Forwards the query or chases an alias upstream; SERVFAIL when no upstream answers.
async fn resolve_elsewhere(
    shared: &Shared,
    request: &Message,
    packet: &[u8],
    outcome: Outcome,
) -> Option<Vec<u8>> {
    match outcome {
        Outcome::Reply(reply) => encode(&reply, None),
        Outcome::Forward => match exchange(&shared.upstreams, packet).await {
            Some(bytes) => Some(bytes),
            None => encode(&reply_to(request, ResponseCode::ServFail), None),
        },
        Outcome::Chase {
            mut reply,
            target,
            query_type,
        } => {
            let query = answer::query(request.metadata.id, target, query_type);
            let upstream = match query.to_vec() {
                Ok(bytes) => exchange(&shared.upstreams, &bytes).await,
                Err(_) => None,
            }
            .and_then(|bytes| Message::from_vec(&bytes).ok());
            match upstream {
                Some(found) => {
                    reply.metadata.authoritative = false;
                    reply.metadata.response_code = found.metadata.response_code;
                    reply.add_answers(found.answers);
                }
                None => reply.metadata.response_code = ResponseCode::ServFail,
            }
            encode(&reply, None)
        }
    }
}

/// Sends `packet` to each upstream in turn over UDP and returns the first reply that
/// carries the query's id.
async fn exchange(upstreams: &[SocketAddr], packet: &[u8]) -> Option<Vec<u8>> {
    let id = packet.get(..2)?;
    for upstream in upstreams {
        let local: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(socket) = UdpSocket::bind(local).await else {
            continue;
        };
        if socket.connect(upstream).await.is_err() || socket.send(packet).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Ok(Ok(len)) if buf.get(..2) == Some(id) => {
                    buf.truncate(len);
                    return Some(buf);
                }
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    tracing::debug!(%upstream, ?err, "dns upstream");
                    break;
                }
                Err(_) => {
                    tracing::debug!(%upstream, "dns upstream timed out");
                    break;
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    /// A tiny upstream on loopback answering every A query with 192.0.2.7.
    async fn fake_upstream() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let request = Message::from_vec(&buf[..len]).unwrap();
                let mut reply = reply_to(&request, ResponseCode::NoError);
                let name = request.queries[0].name().clone();
                reply.add_answer(hickory_proto::rr::Record::from_rdata(
                    name,
                    60,
                    hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A([192, 0, 2, 7].into())),
                ));
                socket
                    .send_to(&reply.to_vec().unwrap(), from)
                    .await
                    .unwrap();
            }
        });
        addr
    }

    async fn ask(server: SocketAddr, name: &str) -> Message {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let query = answer::query(9, Name::from_ascii(name).unwrap(), RecordType::A);
        client
            .send_to(&query.to_vec().unwrap(), server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 1500];
        let len = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        Message::from_vec(&buf[..len]).unwrap()
    }

    #[tokio::test]
    async fn cluster_names_are_answered_here_and_others_relayed_upstream() {
        let upstream = fake_upstream().await;
        let zone = Arc::new(RwLock::new(Zone::new("cluster.local")));
        let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), zone, vec![upstream])
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async {
            _ = stopped.await;
        }));
        let local = ask(addr, "nope.default.svc.cluster.local.").await;
        assert_eq!(local.metadata.response_code, ResponseCode::NXDomain);
        let relayed = ask(addr, "example.org.").await;
        assert_eq!(relayed.metadata.id, 9);
        assert_eq!(
            answer::addresses(&relayed),
            [std::net::Ipv4Addr::new(192, 0, 2, 7)]
        );
        _ = stop.send(());
        serving.await.unwrap();
    }
}
