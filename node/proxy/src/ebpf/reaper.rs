//! The kernel side of [`SocketReaper`]: `NETLINK_SOCK_DIAG` dumps and `SOCK_DESTROY`s UDP
//! sockets, one netlink socket per network namespace (a netlink socket speaks for the
//! namespace it was made in, so it is made on a thread that entered it), and the socket
//! load balancer's reverse-translation map says which sockets it translated.

use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    fs::File,
    net::{IpAddr, SocketAddrV4},
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, MapData, MapError};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    AF_INET, IPPROTO_UDP, SockDiagDestroy, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use nix::sched::{CloneFlags, setns};
use skiff_ebpf_common::{SockRevNatKey, SockRevNatValue};

use super::cookie::current_netns_cookie;
use crate::reap::{Listing, ReapError, SocketReaper, UdpSocket};

/// `ENOENT`: the socket is gone already.
const ENOENT: i32 = 2;

fn netlink(what: &'static str) -> impl FnOnce(std::io::Error) -> ReapError {
    move |source| ReapError::Netlink { what, source }
}

/// A `NETLINK_SOCK_DIAG` socket in one network namespace.
#[derive(Debug)]
pub struct SockDiag {
    socket: Socket,
    netns: u64,
}

impl SockDiag {
    /// One in this thread's network namespace.
    ///
    /// # Errors
    /// When the socket cannot be made or the namespace's cookie read.
    pub fn here() -> Result<Self, ReapError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(netlink("opening a socket"))?;
        socket.bind_auto().map_err(netlink("binding"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(netlink("connecting to the kernel"))?;
        let netns = current_netns_cookie().map_err(netlink("reading the namespace cookie"))?;
        Ok(Self { socket, netns })
    }

    /// One in the network namespace mounted at (or linked from) `path`; made on a thread of
    /// its own that enters the namespace and ends.
    ///
    /// # Errors
    /// When the namespace cannot be entered or the socket made.
    pub fn in_netns(path: &Path) -> Result<Self, ReapError> {
        let namespace = |source| ReapError::Namespace {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(namespace)?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .map_err(|errno| namespace(std::io::Error::from(errno)))?;
                    Self::here()
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(namespace(std::io::Error::other(
                        "the namespace thread panicked",
                    )))
                })
        })
    }

    /// The cookie of its network namespace.
    #[must_use]
    pub fn netns(&self) -> u64 {
        self.netns
    }

    /// The namespace's connected IPv4 UDP sockets.
    ///
    /// # Errors
    /// When the dump fails or cannot be decoded.
    pub fn connected_udp(&self) -> Result<Vec<UdpSocket>, ReapError> {
        let request = SockDiagMessage::InetRequest(InetRequest {
            family: AF_INET,
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            // A connected UDP socket is TCP_ESTABLISHED to sock_diag.
            states: StateFlags::ESTABLISHED,
            socket_id: SocketId::new_v4(),
        });
        self.send(request, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut out = Vec::new();
        loop {
            let (buf, _) = self
                .socket
                .recv_from_full()
                .map_err(netlink("reading the dump"))?;
            let mut offset = 0;
            while offset < buf.len() {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..])
                    .map_err(|e| ReapError::Decode(e.to_string()))?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        if let Some(socket) = self.udp_socket(&response.header.socket_id) {
                            out.push(socket);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(err) if err.code.is_some() => {
                        return Err(netlink("dumping UDP sockets")(err.to_io()));
                    }
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    /// Destroys `socket` (its owner's next call fails with `ECONNABORTED`); one already
    /// gone is not an error.
    ///
    /// # Errors
    /// When the kernel refuses (`EOPNOTSUPP` without `CONFIG_INET_DIAG_DESTROY`).
    pub fn destroy(&self, socket: &UdpSocket) -> Result<(), ReapError> {
        let failed = |source| ReapError::Destroy {
            local: socket.local,
            peer: socket.peer,
            source,
        };
        let low = u32::try_from(socket.cookie & u64::from(u32::MAX)).unwrap_or(u32::MAX);
        let high = u32::try_from(socket.cookie >> 32).unwrap_or(u32::MAX);
        let mut cookie = [0u8; 8];
        cookie[..4].copy_from_slice(&low.to_ne_bytes());
        cookie[4..].copy_from_slice(&high.to_ne_bytes());
        let request = SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
            family: AF_INET,
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: socket.local.port(),
                destination_port: socket.peer.port(),
                source_address: IpAddr::V4(*socket.local.ip()),
                destination_address: IpAddr::V4(*socket.peer.ip()),
                interface_id: socket.interface,
                cookie,
            },
        }));
        self.send(request, NLM_F_REQUEST | NLM_F_ACK)?;
        let (buf, _) = self.socket.recv_from_full().map_err(failed)?;
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf)
            .map_err(|e| ReapError::Decode(e.to_string()))?;
        match message.payload {
            NetlinkPayload::Error(err) => match err.code {
                None => Ok(()),
                Some(code) if -code.get() == ENOENT => Ok(()),
                Some(_) => Err(failed(err.to_io())),
            },
            other => Err(ReapError::Decode(format!(
                "expected an acknowledgement, got message type {}",
                other.message_type()
            ))),
        }
    }

    fn send<T>(&self, payload: T, flags: u16) -> Result<(), ReapError>
    where
        T: NetlinkSerializable + std::fmt::Debug,
    {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(netlink("sending a request"))?;
        Ok(())
    }

    fn udp_socket(&self, id: &SocketId) -> Option<UdpSocket> {
        let (IpAddr::V4(local), IpAddr::V4(peer)) = (id.source_address, id.destination_address)
        else {
            return None;
        };
        let low = u32::from_ne_bytes(id.cookie[..4].try_into().ok()?);
        let high = u32::from_ne_bytes(id.cookie[4..].try_into().ok()?);
        Some(UdpSocket {
            netns: self.netns,
            cookie: u64::from(high) << 32 | u64::from(low),
            local: SocketAddrV4::new(local, id.source_port),
            peer: SocketAddrV4::new(peer, id.destination_port),
            interface: id.interface_id,
        })
    }
}

/// Searches the node's own network namespace (the daemon's) and the pods' namespaces it is
/// told about, and reads the socket load balancer's reverse translation.
pub struct NetlinkReaper {
    rev_nat: HashMap<MapData, SockRevNatKey, SockRevNatValue>,
    pods: Vec<PathBuf>,
    /// The netlink sockets of the last listing, by namespace cookie, to destroy through.
    open: StdHashMap<u64, SockDiag>,
}

impl std::fmt::Debug for NetlinkReaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkReaper")
            .field("pods", &self.pods)
            .finish_non_exhaustive()
    }
}

impl NetlinkReaper {
    /// A reaper over the datapath's reverse-translation map.
    #[must_use]
    pub fn new(rev_nat: HashMap<MapData, SockRevNatKey, SockRevNatValue>) -> Self {
        Self {
            rev_nat,
            pods: Vec::new(),
            open: StdHashMap::new(),
        }
    }

    /// The pods' network namespace files to search besides the node's own.
    pub fn set_pod_namespaces(&mut self, pods: Vec<PathBuf>) {
        self.pods = pods;
    }

    fn key(socket: &UdpSocket) -> SockRevNatKey {
        SockRevNatKey {
            cookie: socket.cookie,
            netns: socket.netns,
            address: u32::from_ne_bytes(socket.peer.ip().octets()),
            port: socket.peer.port().to_be(),
            pad: 0,
        }
    }
}

impl SocketReaper for NetlinkReaper {
    fn connected_udp(&mut self, peers: Option<&BTreeSet<SocketAddrV4>>) -> Listing {
        self.open.clear();
        let mut listing = Listing::default();
        let namespaces = std::iter::once(None).chain(self.pods.iter().map(Some));
        for path in namespaces {
            let diag = match path {
                None => SockDiag::here(),
                Some(path) => SockDiag::in_netns(path),
            };
            // A pod being torn down may take its namespace away meanwhile.
            let diag = match diag {
                Ok(diag) => diag,
                Err(ReapError::Namespace { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(err) => {
                    listing.errors.push(err);
                    continue;
                }
            };
            // Two paths to one namespace are searched once.
            if self.open.contains_key(&diag.netns()) {
                continue;
            }
            match diag.connected_udp() {
                Ok(sockets) => listing.sockets.extend(
                    sockets
                        .into_iter()
                        .filter(|s| peers.is_none_or(|p| p.contains(&s.peer))),
                ),
                Err(err) => listing.errors.push(err),
            }
            self.open.insert(diag.netns(), diag);
        }
        listing
    }

    fn dialled(&self, socket: &UdpSocket) -> Result<Option<SocketAddrV4>, ReapError> {
        match self.rev_nat.get(&Self::key(socket), 0) {
            Ok(value) => Ok(Some(SocketAddrV4::new(
                value.address.to_ne_bytes().into(),
                u16::from_be(value.port),
            ))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(ReapError::RevNat(err)),
        }
    }

    fn destroy(&mut self, socket: &UdpSocket) -> Result<(), ReapError> {
        let diag = self
            .open
            .get(&socket.netns)
            .ok_or_else(|| ReapError::Destroy {
                local: socket.local,
                peer: socket.peer,
                source: std::io::Error::other("its namespace was not listed"),
            })?;
        diag.destroy(socket)?;
        // Its translation would only show a later peer at that address as the frontend.
        match self.rev_nat.remove(&Self::key(socket)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(ReapError::RevNat(err)),
        }
    }
}
