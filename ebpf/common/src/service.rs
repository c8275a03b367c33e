//! The socket-level Service load balancer's maps: Service -> backend slots -> address, and
//! the reverse translation that makes the application see the VIP it dialled.
//!
//! Byte order: every address and port is stored in network byte order, i.e. the bytes as
//! they appear on the wire, read as a native integer (what the kernel's `bpf_sock_addr`
//! hands the program). User space builds them with `u32::from_ne_bytes(ip.octets())` and
//! `port.to_be()`.

/// Name of the `ServiceKey -> ServiceValue` hash map.
pub const SERVICES_MAP: &str = "SKIFF_SERVICES";
/// Name of the `BackendKey -> Backend` hash map.
pub const BACKENDS_MAP: &str = "SKIFF_BACKENDS";
/// Name of the `RevNatKey -> RevNatValue` LRU map.
pub const REV_NAT_MAP: &str = "SKIFF_REV_NAT";

/// Capacity of the Service map (VIP, port, protocol triples).
pub const MAX_SERVICES: u32 = 65_536;
/// Capacity of the backend map (all slots of all Services).
pub const MAX_BACKENDS: u32 = 262_144;
/// Capacity of the reverse-translation LRU (live translated sockets and UDP peers).
pub const MAX_REV_NAT: u32 = 262_144;

/// A Service frontend: the virtual IP, port and protocol a client dials.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Virtual IPv4 address, network byte order.
    pub vip: u32,
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    /// Explicit padding; always 0.
    pub pad: u8,
}

/// What the programs need to pick a backend for a [`ServiceKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Identifies the Service's slots in the backend map.
    pub id: u32,
    /// How many slots (0..count) hold backends; 0 rejects connections like kube-proxy.
    pub count: u32,
}

/// One backend slot of one Service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    /// [`ServiceValue::id`] of the owning Service.
    pub service_id: u32,
    /// Slot index, `0..ServiceValue::count`.
    pub slot: u32,
}

/// A backend address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Backend IPv4 address, network byte order.
    pub ip: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding; always 0.
    pub pad: u16,
}

/// A translated socket's view of its peer: socket cookie plus the backend address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// `bpf_get_socket_cookie` of the client socket.
    pub cookie: u64,
    /// Backend IPv4 address, network byte order.
    pub ip: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding; always 0.
    pub pad: u16,
}

/// The Service address the application dialled, restored on `getpeername` and `recvmsg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    /// Virtual IPv4 address, network byte order.
    pub vip: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Explicit padding; always 0.
    pub pad: u16,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers, and has no implicit
    // padding (the layout tests below check the sizes), so any byte pattern is valid.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RevNatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RevNatValue {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    /// The sum of field sizes equals the struct size: no byte is left to implicit padding.
    #[test]
    fn map_types_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 4 + 2 + 1 + 1);
        assert_eq!(size_of::<ServiceValue>(), 4 + 4);
        assert_eq!(size_of::<BackendKey>(), 4 + 4);
        assert_eq!(size_of::<Backend>(), 4 + 2 + 2);
        assert_eq!(size_of::<RevNatKey>(), 8 + 4 + 2 + 2);
        assert_eq!(size_of::<RevNatValue>(), 4 + 2 + 2);
    }

    #[test]
    fn map_types_are_aligned_for_the_kernel() {
        assert_eq!(align_of::<ServiceKey>(), 4);
        assert_eq!(align_of::<RevNatKey>(), 8);
    }
}
