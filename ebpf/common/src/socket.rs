//! The socket path's reverse translation: a translated socket's view of its peer, so
//! `getpeername` and `recvmsg` show the application the Service address it dialled.
//!
//! Byte order as in [`crate::service`]: addresses and ports in network byte order, cookies
//! in host order.

/// Name of the [`SockRevNatKey`] -> [`SockRevNatValue`] LRU map.
pub const SOCK_REV_NAT_MAP: &str = "SKIFF_SOCK_RNAT";

/// Capacity of the reverse-translation LRU (live translated sockets and UDP peers).
pub const MAX_SOCK_REV_NAT: u32 = 131_072;

/// A translated socket and the backend it reached.
///
/// Socket cookies are unique only within a network namespace on older kernels, so the
/// namespace's cookie is part of the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatKey {
    /// `bpf_get_socket_cookie` of the client socket.
    pub cookie: u64,
    /// `bpf_get_netns_cookie` of the socket's network namespace.
    pub netns: u64,
    /// Backend IPv4 address, network byte order.
    pub address: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding; always 0.
    pub pad: u16,
}

/// The frontend the application dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatValue {
    /// Frontend IPv4 address, network byte order.
    pub address: u32,
    /// Frontend port, network byte order.
    pub port: u16,
    /// Explicit padding; always 0.
    pub pad: u16,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], Copy, only integers, no implicit padding (checked below).
    unsafe impl aya::Pod for super::SockRevNatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRevNatValue {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn reverse_entries_have_no_implicit_padding() {
        assert_eq!(size_of::<SockRevNatKey>(), 8 + 8 + 4 + 2 + 2);
        assert_eq!(size_of::<SockRevNatValue>(), 4 + 2 + 2);
        assert_eq!(offset_of!(SockRevNatKey, netns), 8);
        assert_eq!(offset_of!(SockRevNatKey, address), 16);
        assert_eq!(offset_of!(SockRevNatKey, port), 20);
        assert_eq!(align_of::<SockRevNatKey>(), 8);
        assert!(SOCK_REV_NAT_MAP.len() < 16);
    }
}
