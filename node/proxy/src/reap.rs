//! Connected UDP sockets the socket load balancer pinned to a backend that is gone are
//! destroyed, so their owners (resolvers, mostly) see an error and dial the Service again
//! instead of sending into the void.
//!
//! `connect()` to a UDP frontend is translated once: the socket stays connected to the
//! backend picked then, whatever the maps say later. After a sync removed backends of UDP
//! groups, [`reap`] lists the connected UDP sockets whose peer is one of them, in every
//! network namespace the socket hooks serve, and destroys those the load balancer
//! translated (the reverse-translation map knows the frontend each one dialled) when that
//! frontend no longer offers the peer. A socket connected to a pod address directly, or to
//! a backend its frontend still has, is left alone.

use std::{collections::BTreeSet, net::SocketAddrV4, path::PathBuf};

/// A connected UDP socket in some network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UdpSocket {
    /// The cookie of its network namespace (as `bpf_get_netns_cookie` gives it).
    pub netns: u64,
    /// Its cookie (as `bpf_get_socket_cookie` gives it).
    pub cookie: u64,
    /// Its local address.
    pub local: SocketAddrV4,
    /// The peer it is connected to.
    pub peer: SocketAddrV4,
    /// The interface it is bound to, 0 for none.
    pub interface: u32,
}

/// Failures listing or destroying sockets.
#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    /// A network namespace could not be entered.
    #[error("entering network namespace {path}")]
    Namespace {
        /// Its file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `NETLINK_SOCK_DIAG` socket could not be used.
    #[error("sock_diag netlink: {what}")]
    Netlink {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer could not be read.
    #[error("sock_diag netlink: undecodable answer: {0}")]
    Decode(String),
    /// The kernel refused to destroy a socket (`CONFIG_INET_DIAG_DESTROY` missing: EOPNOTSUPP).
    #[error("destroying UDP socket {local} -> {peer}")]
    Destroy {
        /// The socket's local address.
        local: SocketAddrV4,
        /// Its peer.
        peer: SocketAddrV4,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// The reverse-translation map could not be read.
    #[error("reading the socket reverse-translation map")]
    RevNat(#[source] aya::maps::MapError),
}

/// Connected UDP sockets found in the namespaces, and the namespaces that could not be
/// searched.
#[derive(Debug, Default)]
pub struct Listing {
    /// The sockets.
    pub sockets: Vec<UdpSocket>,
    /// One error per namespace that was skipped.
    pub errors: Vec<ReapError>,
}

/// The privileged side: listing and destroying sockets across network namespaces, and the
/// socket load balancer's reverse translation.
pub trait SocketReaper {
    /// The connected UDP sockets of every namespace served whose peer is in `peers` (every
    /// connected UDP socket when `None`).
    fn connected_udp(&mut self, peers: Option<&BTreeSet<SocketAddrV4>>) -> Listing;

    /// The frontend the socket load balancer translated the socket's `connect()` from;
    /// `None` when it did not translate it (or no longer remembers it).
    ///
    /// # Errors
    /// When the map cannot be read.
    fn dialled(&self, socket: &UdpSocket) -> Result<Option<SocketAddrV4>, ReapError>;

    /// Destroys the socket (its owner's next call fails with `ECONNABORTED`) and forgets
    /// its translation. A socket already gone is not an error.
    ///
    /// # Errors
    /// When the kernel refuses.
    fn destroy(&mut self, socket: &UdpSocket) -> Result<(), ReapError>;
}

/// What one [`reap`] did.
#[derive(Debug, Default)]
pub struct Reaped {
    /// The sockets destroyed, each with the frontend it had dialled.
    pub destroyed: Vec<(UdpSocket, SocketAddrV4)>,
    /// Namespaces, lookups and destroys that failed (the rest went on).
    pub errors: Vec<ReapError>,
}

/// Destroys the connected UDP sockets whose peer is in `peers` (all of them when `None`)
/// that the load balancer translated from a frontend that does not offer that peer any
/// more; `backends_of` gives a frontend's current backends, `None` for no such frontend.
pub fn reap(
    reaper: &mut impl SocketReaper,
    peers: Option<&BTreeSet<SocketAddrV4>>,
    backends_of: impl Fn(SocketAddrV4) -> Option<Vec<SocketAddrV4>>,
) -> Reaped {
    let listing = reaper.connected_udp(peers);
    let mut out = Reaped {
        errors: listing.errors,
        ..Reaped::default()
    };
    for socket in listing.sockets {
        if peers.is_some_and(|p| !p.contains(&socket.peer)) {
            continue;
        }
        let frontend = match reaper.dialled(&socket) {
            Ok(Some(frontend)) => frontend,
            Ok(None) => continue,
            Err(err) => {
                out.errors.push(err);
                continue;
            }
        };
        let offered = backends_of(frontend).is_some_and(|b| b.contains(&socket.peer));
        if offered {
            continue;
        }
        match reaper.destroy(&socket) {
            Ok(()) => out.destroyed.push((socket, frontend)),
            Err(err) => out.errors.push(err),
        }
    }
    out
}

#[cfg(test)]
mod tests;
