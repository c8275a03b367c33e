//! A stand-in upstream resolver for cluster DNS tests and benches: a UDP socket in a test
//! host's namespace answering `A` queries for the names it is given, NXDOMAIN for others,
//! and counting what it was asked. Node daemons under test forward to it, never to the
//! machine's resolver.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, Record, RecordType, rdata::A},
};

/// A running stand-in resolver; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Serves `names` (lowercase, with the trailing dot) on `socket`, which the caller
    /// bound inside a test namespace.
    ///
    /// # Errors
    /// When the socket cannot be set up.
    pub fn serve(socket: UdpSocket, names: HashMap<String, Ipv4Addr>) -> Result<Self> {
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr().context("upstream address")?;
        let queries = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (queries, stop) = (queries.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let Ok(request) = Message::from_vec(&buf[..len]) else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = answer(&request, &names) {
                        let _ = socket.send_to(&reply, from);
                    }
                }
            })
        };
        Ok(Self {
            addr,
            queries,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received so far.
    #[must_use]
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(request: &Message, names: &HashMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    let query = request.queries.first()?;
    let name = query.name().to_ascii().to_ascii_lowercase();
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    match names.get(&name) {
        Some(ip) if query.query_type() == RecordType::A => {
            reply.add_answer(Record::from_rdata(
                query.name().clone(),
                60,
                RData::A(A(*ip)),
            ));
        }
        Some(_) => {}
        None => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.to_vec().ok()
}
