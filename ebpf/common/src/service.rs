//! The Service load balancer's maps that every datapath reads (the socket hooks and the TC
//! programs on the uplink): frontends, their backend slot groups, session affinity, per-group
//! counters and the node's configuration.
//!
//! # Byte order
//! Addresses and ports are stored in network byte order: the bytes as they appear on the
//! wire, read as a native integer, which is what the kernel's `bpf_sock_addr` and packet
//! headers hand a program. User space builds them with `u32::from_ne_bytes(ip.octets())` and
//! `port.to_be()`. Everything else (group ids, slots, counts, timeouts, flags, cookies,
//! counters) is in host byte order.
//!
//! # Lookups
//! A frontend is looked up with [`SCOPE_EXTERNAL`] first. When the value carries
//! [`FLAG_TWO_SCOPES`] and the traffic is internal (it started on this node: every socket
//! hook, and TC traffic from this node's pods), the frontend is looked up again with
//! [`SCOPE_INTERNAL`], as Cilium does: only Services whose internal and external traffic
//! policies differ pay for the second entry. The backend is then `(group, slot)` with
//! `slot < count`.
//!
//! # Updates
//! User space writes a group's new slots first, then the frontends' counts, then deletes the
//! slots past the new count, so a reader never looks up a slot that is missing. Frontends and
//! backends are hash maps without preallocation: an update replaces the element under RCU,
//! so a concurrent reader sees the old value or the new one, never a mix.

/// Name of the [`FrontendKey`] -> [`FrontendValue`] hash map.
pub const FRONTENDS_MAP: &str = "SKIFF_FRONTENDS";
/// Name of the [`BackendKey`] -> [`Backend`] hash map.
pub const BACKENDS_MAP: &str = "SKIFF_BACKENDS";
/// Name of the [`AffinityKey`] -> [`AffinityValue`] LRU map.
pub const AFFINITY_MAP: &str = "SKIFF_AFFINITY";
/// Name of the per-CPU `u32` (group) -> [`Counters`] hash map.
pub const COUNTERS_MAP: &str = "SKIFF_COUNTERS";
/// Name of the one-element array holding the node's [`Config`].
pub const CONFIG_MAP: &str = "SKIFF_CONFIG";

/// Capacity of the frontend map: (address, port, protocol, scope) entries.
pub const MAX_FRONTENDS: u32 = 131_072;
/// Capacity of the backend map: all slots of all groups.
pub const MAX_BACKENDS: u32 = 262_144;
/// Capacity of the per-group counters (at most one entry per group).
pub const MAX_GROUPS: u32 = MAX_FRONTENDS;
/// Capacity of the session-affinity LRU.
pub const MAX_AFFINITY: u32 = 65_536;

/// `BPF_F_NO_PREALLOC`: elements are allocated on update and freed under RCU.
pub const NO_PREALLOC: u32 = 1;

/// The external view of a frontend (`externalTrafficPolicy`), and the only entry of a
/// frontend whose two views agree.
pub const SCOPE_EXTERNAL: u8 = 0;
/// The internal view (`internalTrafficPolicy`): traffic from this node's pods and host,
/// present only beside an external entry flagged [`FLAG_TWO_SCOPES`].
pub const SCOPE_INTERNAL: u8 = 1;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// A frontend on the Service's `clusterIP`.
pub const KIND_CLUSTER_IP: u8 = 0;
/// A frontend on a node address and the port's `nodePort`.
pub const KIND_NODE_PORT: u8 = 1;
/// A frontend on one of `spec.externalIPs`.
pub const KIND_EXTERNAL_IP: u8 = 2;
/// A frontend on one of `status.loadBalancer.ingress[].ip`.
pub const KIND_LOAD_BALANCER: u8 = 3;

/// This external entry has an internal twin: internal traffic looks again with
/// [`SCOPE_INTERNAL`].
pub const FLAG_TWO_SCOPES: u16 = 1;
/// `externalTrafficPolicy: Local`: the external view holds only this node's endpoints, and
/// the client address must be kept (no SNAT).
pub const FLAG_EXTERNAL_LOCAL: u16 = 1 << 1;
/// `internalTrafficPolicy: Local`: the internal view holds only this node's endpoints.
pub const FLAG_INTERNAL_LOCAL: u16 = 1 << 2;
/// Only sockets of the node's own network namespace ([`Config::host_netns`]) use this
/// frontend: the NodePort on 127.0.0.1 is the host's, a pod's loopback is its own.
pub const FLAG_HOST_ONLY: u16 = 1 << 3;

/// The endpoint runs on this node.
pub const BACKEND_LOCAL: u8 = 1;
/// The endpoint is terminating (chosen only because no endpoint is ready, KEP-1669).
pub const BACKEND_TERMINATING: u8 = 1 << 1;

/// [`AffinityKey::client`] is a network namespace cookie (the socket path).
pub const CLIENT_NETNS: u8 = 0;
/// [`AffinityKey::client`] is an IPv4 address in network byte order in the low 32 bits
/// (the TC path).
pub const CLIENT_ADDRESS: u8 = 1;

/// A Service frontend: what a client dials, and which view of the Service it gets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// IPv4 address, network byte order.
    pub address: u32,
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`], [`PROTO_UDP`]).
    pub protocol: u8,
    /// [`SCOPE_EXTERNAL`] or [`SCOPE_INTERNAL`].
    pub scope: u8,
}

/// Where a frontend's backends are and how to pick one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrontendValue {
    /// The slot group in [`BACKENDS_MAP`]; frontends with the same backends share one.
    pub group: u32,
    /// Slots `0..count` hold backends; 0 refuses the connection at once.
    pub count: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 without affinity.
    pub affinity_timeout: u32,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// `KIND_*`.
    pub kind: u8,
    /// Explicit padding; always 0.
    pub pad: u8,
}

/// One backend slot of one group.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// [`FrontendValue::group`].
    pub group: u32,
    /// Slot index, `0..FrontendValue::count`.
    pub slot: u32,
}

/// An endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub address: u32,
    /// Port, network byte order.
    pub port: u16,
    /// `BACKEND_*` bits.
    pub flags: u8,
    /// Explicit padding; always 0.
    pub pad: u8,
}

/// A client's affinity to a backend of a group.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// The client: a netns cookie ([`CLIENT_NETNS`]) or an address ([`CLIENT_ADDRESS`]).
    pub client: u64,
    /// The group the backend was picked from.
    pub group: u32,
    /// `CLIENT_*`: keeps cookies and addresses apart.
    pub origin: u8,
    /// Explicit padding; always 0.
    pub pad: [u8; 3],
}

/// The backend a client keeps, and when it last used it.
///
/// Slots move when a group shrinks, so the backend is stored whole: a reader takes the
/// entry only while slot `slot` still holds the same address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns` at the last use.
    pub last_used_ns: u64,
    /// The slot the backend was in.
    pub slot: u32,
    /// Backend IPv4 address, network byte order.
    pub address: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding; always 0.
    pub pad: [u8; 6],
}

/// Per-CPU counters of one group (summed over CPUs, and over a Service's groups, by user
/// space).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    /// Connections or datagrams sent to a backend.
    pub translations: u64,
    /// Connections or datagrams refused because the frontend had no backend.
    pub refusals: u64,
}

/// What the programs need to know about the node (index 0 of [`CONFIG_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// Network namespace cookie of the node's own (host) namespace, for
    /// [`FLAG_HOST_ONLY`] frontends; 0 until user space writes it.
    pub host_netns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers, and has no implicit
    // padding (the layout tests below check the sizes), so any byte pattern is valid.
    unsafe impl aya::Pod for super::FrontendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FrontendValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    /// The sum of field sizes equals the struct size: no byte is left to implicit padding,
    /// so keys compare equal byte for byte on both sides.
    #[test]
    fn map_types_have_no_implicit_padding() {
        assert_eq!(size_of::<FrontendKey>(), 4 + 2 + 1 + 1);
        assert_eq!(size_of::<FrontendValue>(), 4 + 4 + 4 + 2 + 1 + 1);
        assert_eq!(size_of::<BackendKey>(), 4 + 4);
        assert_eq!(size_of::<Backend>(), 4 + 2 + 1 + 1);
        assert_eq!(size_of::<AffinityKey>(), 8 + 4 + 1 + 3);
        assert_eq!(size_of::<AffinityValue>(), 8 + 4 + 4 + 2 + 6);
        assert_eq!(size_of::<Counters>(), 8 + 8);
        assert_eq!(size_of::<Config>(), 8);
    }

    /// Field offsets are part of the contract with the kernel side (and with the TC
    /// programs, which read the same maps).
    #[test]
    fn fields_sit_where_both_sides_expect_them() {
        assert_eq!(offset_of!(FrontendKey, port), 4);
        assert_eq!(offset_of!(FrontendKey, protocol), 6);
        assert_eq!(offset_of!(FrontendKey, scope), 7);
        assert_eq!(offset_of!(FrontendValue, count), 4);
        assert_eq!(offset_of!(FrontendValue, affinity_timeout), 8);
        assert_eq!(offset_of!(FrontendValue, flags), 12);
        assert_eq!(offset_of!(FrontendValue, kind), 14);
        assert_eq!(offset_of!(Backend, flags), 6);
        assert_eq!(offset_of!(AffinityKey, group), 8);
        assert_eq!(offset_of!(AffinityKey, origin), 12);
        assert_eq!(offset_of!(AffinityValue, slot), 8);
        assert_eq!(offset_of!(AffinityValue, address), 12);
        assert_eq!(offset_of!(AffinityValue, port), 16);
    }

    #[test]
    fn map_types_are_aligned_for_the_kernel() {
        assert_eq!(align_of::<FrontendKey>(), 4);
        assert_eq!(align_of::<FrontendValue>(), 4);
        assert_eq!(align_of::<AffinityKey>(), 8);
        assert_eq!(align_of::<AffinityValue>(), 8);
        assert_eq!(align_of::<Counters>(), 8);
    }

    #[test]
    fn map_names_fit_the_kernels_object_name() {
        for name in [
            FRONTENDS_MAP,
            BACKENDS_MAP,
            AFFINITY_MAP,
            COUNTERS_MAP,
            CONFIG_MAP,
        ] {
            assert!(
                name.len() < 16,
                "{name} is longer than BPF_OBJ_NAME_LEN - 1"
            );
        }
    }
}
