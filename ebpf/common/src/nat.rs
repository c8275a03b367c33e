//! The TC path's state: the uplinks the programs serve, connection tracking with the
//! translation each direction of a flow gets, and the pure arithmetic (checksums, SNAT ports,
//! the RST answer) the programs and their host-side tests share.
//!
//! # Flows
//! A packet from outside the node to an external-scope frontend (NodePort, `externalIPs`,
//! `LoadBalancer`) gets a backend once; two entries in [`CT_MAP`] then carry the flow:
//! - [`CT_FORWARD`], keyed by the tuple as it arrives (client -> frontend): the tuple to
//!   rewrite it to (client or node address -> backend);
//! - [`CT_REPLY`], keyed by the tuple the backend answers with (backend -> client, or backend
//!   -> node address and SNAT port): the tuple to rewrite it to (frontend -> client).
//!
//! A reply of a flow without SNAT (a local backend, or `externalTrafficPolicy: Local`) leaves
//! through the uplink's egress, where it is rewritten in place; a reply of a SNAT-ed flow
//! arrives at the uplink's ingress addressed to the node and is rewritten and sent straight
//! back out ([`CT_SNAT`]), as is the SNAT-ed forward direction, since the kernel would drop
//! either as a martian (a packet arriving with the node's own address as source). An ICMP
//! error about a packet of the flow (fragmentation needed, port unreachable) is found by the
//! reply entry of the tuple it quotes and reaches the client the same way, about the packet
//! the client sent.
//!
//! Entries are not deleted when a flow ends: the LRU evicts them. Each carries when it was
//! last used and whether a FIN or RST passed ([`CT_CLOSING`]), which decides when a SNAT port
//! may go to a new flow ([`ct_expired`]) and makes a new connection on a closed tuple choose
//! its backend again.
//!
//! Byte order as in [`crate::service`]: addresses and ports in network byte order.

/// Name of the `u32` (ifindex) -> [`Uplink`] hash map: the interfaces the TC programs serve.
pub const UPLINKS_MAP: &str = "SKIFF_UPLINKS";
/// Name of the [`CtKey`] -> [`CtValue`] LRU map.
pub const CT_MAP: &str = "SKIFF_CT";

/// Capacity of the uplink map.
pub const MAX_UPLINKS: u32 = 64;
/// Capacity of connection tracking: two entries per flow.
pub const MAX_CT: u32 = 262_144;

/// The entry of a flow's first direction (client -> frontend).
pub const CT_FORWARD: u8 = 0;
/// The entry of a flow's reply direction (backend -> client or node).
pub const CT_REPLY: u8 = 1;

/// The translated source is the node's address: the packet is sent out by the program
/// (a forwarded SNAT packet, or a SNAT reply) instead of being handed to the stack.
pub const CT_SNAT: u8 = 1;

/// The direction has seen a TCP FIN or RST: the flow is closing.
pub const CT_CLOSING: u8 = 1 << 1;

/// Seconds an idle TCP flow keeps its SNAT port (Cilium's default lifetime).
pub const CT_LIFETIME_TCP: u32 = 21_600;
/// Seconds an idle UDP flow keeps its SNAT port.
pub const CT_LIFETIME_OTHER: u32 = 60;
/// Seconds a closing flow keeps its SNAT port after its last packet.
pub const CT_CLOSE_TIMEOUT: u32 = 10;

/// Lowest port a SNAT-ed flow gets on the node address.
///
/// SNAT ports stay below the default NodePort range (30000-32767) and the kernel's default
/// ephemeral range (32768-60999): a reply to a SNAT-ed flow is told from a client of a
/// NodePort, and from a connection the node itself opened to a backend, by its port.
pub const SNAT_PORT_MIN: u16 = 1024;
/// Highest SNAT port.
pub const SNAT_PORT_MAX: u16 = 29999;
/// How many ports a new SNAT-ed flow tries before it is dropped.
pub const SNAT_ATTEMPTS: u32 = 16;

/// TCP header flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
/// SYN.
pub const TCP_SYN: u8 = 0x02;
/// RST.
pub const TCP_RST: u8 = 0x04;
/// ACK.
pub const TCP_ACK: u8 = 0x10;

/// An interface the TC programs serve, and the address SNAT-ed flows leave it with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Uplink {
    /// The node's IPv4 address on it, network byte order.
    pub address: u32,
    /// Reserved; always 0.
    pub flags: u32,
}

/// One direction of a flow as it appears on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source IPv4 address.
    pub saddr: u32,
    /// Destination IPv4 address.
    pub daddr: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// [`CT_FORWARD`] or [`CT_REPLY`].
    pub direction: u8,
    /// Explicit padding; always 0.
    pub pad: [u8; 2],
}

/// What a direction of a flow is rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// New source address.
    pub saddr: u32,
    /// New destination address.
    pub daddr: u32,
    /// New source port.
    pub sport: u16,
    /// New destination port.
    pub dport: u16,
    /// The backend group the flow was balanced in (forward entries).
    pub group: u32,
    /// The slot its backend was in; a new connection on the same tuple keeps the backend
    /// only while the slot still holds it.
    pub slot: u32,
    /// `CT_*` flags.
    pub flags: u8,
    /// Explicit padding; always 0.
    pub pad: [u8; 3],
    /// When a packet last used the entry, in seconds of `bpf_ktime_get_ns`.
    pub seen: u32,
}

impl CtKey {
    /// The key of a packet `saddr:sport -> daddr:dport` travelling in `direction`.
    #[must_use]
    pub const fn new(
        saddr: u32,
        sport: u16,
        daddr: u32,
        dport: u16,
        protocol: u8,
        direction: u8,
    ) -> Self {
        Self {
            saddr,
            daddr,
            sport,
            dport,
            protocol,
            direction,
            pad: [0; 2],
        }
    }

    /// The key the answer to a packet rewritten to `to` arrives with: `to`'s tuple turned
    /// around.
    #[must_use]
    pub const fn reply_to(to: &CtValue, protocol: u8) -> Self {
        Self::new(to.daddr, to.dport, to.saddr, to.sport, protocol, CT_REPLY)
    }

    /// What a reply with this key's forward tuple (`self`, as the client sent it) is
    /// rewritten to: from the frontend the client dialled, to the client.
    #[must_use]
    pub const fn restore(&self, flags: u8) -> CtValue {
        CtValue {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            group: 0,
            slot: 0,
            flags,
            pad: [0; 3],
            seen: 0,
        }
    }
}

/// The `attempt`th SNAT port (network byte order) for a flow whose random `seed` was
/// drawn once: consecutive ports from a random start, wrapping inside the SNAT range.
#[must_use]
#[inline]
pub const fn snat_port(seed: u32, attempt: u32) -> u16 {
    let span = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    let offset = (seed.wrapping_add(attempt)) % span;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "offset < span, so the sum is at most SNAT_PORT_MAX"
    )]
    let port = SNAT_PORT_MIN + offset as u16;
    port.to_be()
}

/// Whether a flow whose entries together carry `flags` and were last used at `seen` has
/// ended by `now` (seconds), so its SNAT port may go to a new flow. Entries are never
/// deleted on close: the LRU map evicts them, and this decides only about port reuse.
#[must_use]
#[inline]
pub const fn ct_expired(protocol: u8, flags: u8, seen: u32, now: u32) -> bool {
    let limit = if flags & CT_CLOSING != 0 {
        CT_CLOSE_TIMEOUT
    } else if protocol == crate::service::PROTO_TCP {
        CT_LIFETIME_TCP
    } else {
        CT_LIFETIME_OTHER
    };
    // Signed: an entry another CPU touched a moment after this one read the clock is not
    // idle.
    let idle = now.wrapping_sub(seen).cast_signed();
    idle > limit.cast_signed()
}

/// The ones' complement sum of `bytes` as 16-bit big-endian words (an odd last byte is
/// padded with zero), added to `sum`, not folded.
#[must_use]
#[inline]
pub fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]])));
        i += 2;
    }
    if i < bytes.len() {
        sum = sum.wrapping_add(u32::from(bytes[i]) << 8);
    }
    sum
}

/// Folds a 32-bit sum into the 16-bit Internet checksum (complemented), in host order: store
/// it with `to_be_bytes`.
#[must_use]
#[inline]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded into 16 bits above")]
    let folded = sum as u16;
    !folded
}

/// The Internet checksum of `bytes` (RFC 1071), in host order.
#[must_use]
#[inline]
pub fn checksum(bytes: &[u8]) -> u16 {
    fold(sum_words(bytes, 0))
}

/// A value for the checksum field of a packet still marked `CHECKSUM_PARTIAL` that the
/// kernel's (or a NIC's) completion leaves as it is, given `sum`, the unfolded sum of the
/// other bytes the completion covers.
///
/// An ICMP error built from a partial UDP datagram quotes the datagram's UDP header, which
/// the completion still rewrites (the packet's checksum start points at it); with this
/// value there, the completion changes nothing and the ICMP checksum over the quote holds
/// whether or not the packet was partial. The completion stores `!fold(v + sum)` (0 sent as
/// 0xffff); `v + sum + v = 0xffff` makes that `v`, and doubling in ones' complement is a
/// rotation.
#[must_use]
#[inline]
pub const fn settled_partial_checksum(sum: u32) -> u16 {
    let folded = !fold(sum);
    let v = (!folded).rotate_right(1);
    if v == 0 { 0xffff } else { v }
}

/// The sequence number, acknowledgement number and flags of the RST that refuses a TCP
/// segment (RFC 9293 3.10.7.1, "CLOSED"): `seq`, `ack` in host order, `payload` the
/// segment's data length.
///
/// `None` for a segment that is itself a RST, which is never answered.
#[must_use]
#[inline]
pub const fn rst_answer(seq: u32, ack: u32, flags: u8, payload: u32) -> Option<(u32, u32, u8)> {
    if flags & TCP_RST != 0 {
        return None;
    }
    if flags & TCP_ACK != 0 {
        // <SEQ=SEG.ACK><CTL=RST>
        return Some((ack, 0, TCP_RST));
    }
    // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>; SYN and FIN count in SEG.LEN.
    let mut len = payload;
    if flags & TCP_SYN != 0 {
        len += 1;
    }
    if flags & TCP_FIN != 0 {
        len += 1;
    }
    Some((0, seq.wrapping_add(len), TCP_RST | TCP_ACK))
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], Copy, only integers, no implicit padding (checked below).
    unsafe impl aya::Pod for super::Uplink {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtValue {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn tracking_entries_have_no_implicit_padding() {
        assert_eq!(size_of::<Uplink>(), 4 + 4);
        assert_eq!(size_of::<CtKey>(), 4 + 4 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<CtValue>(), 4 + 4 + 2 + 2 + 4 + 4 + 1 + 3 + 4);
        assert_eq!(offset_of!(CtValue, seen), 24);
        assert_eq!(offset_of!(CtKey, protocol), 12);
        assert_eq!(offset_of!(CtKey, direction), 13);
        assert_eq!(offset_of!(CtValue, group), 12);
        assert_eq!(offset_of!(CtValue, flags), 20);
        assert!(UPLINKS_MAP.len() < 16 && CT_MAP.len() < 16);
    }

    #[test]
    fn the_reply_key_is_the_translated_tuple_turned_around() {
        // client 192.0.2.1:40000 -> node 10.0.0.1:30080, DNAT to pod 10.244.1.5:8080 and
        // SNAT to the node's 10.0.0.1:2000.
        let client = u32::from_ne_bytes([192, 0, 2, 1]);
        let node = u32::from_ne_bytes([10, 0, 0, 1]);
        let pod = u32::from_ne_bytes([10, 244, 1, 5]);
        let forward = CtKey::new(
            client,
            40000u16.to_be(),
            node,
            30080u16.to_be(),
            6,
            CT_FORWARD,
        );
        let to = CtValue {
            saddr: node,
            daddr: pod,
            sport: 2000u16.to_be(),
            dport: 8080u16.to_be(),
            group: 7,
            slot: 0,
            flags: CT_SNAT,
            pad: [0; 3],
            seen: 0,
        };
        let reply = CtKey::reply_to(&to, 6);
        assert_eq!(
            reply,
            CtKey::new(pod, 8080u16.to_be(), node, 2000u16.to_be(), 6, CT_REPLY)
        );
        let back = forward.restore(CT_SNAT);
        assert_eq!(
            (back.saddr, back.sport, back.daddr, back.dport),
            (node, 30080u16.to_be(), client, 40000u16.to_be())
        );
        // What the client receives is its own tuple turned around.
        let seen = CtKey::reply_to(&back, 6);
        assert_eq!(
            (seen.saddr, seen.sport, seen.daddr, seen.dport),
            (forward.saddr, forward.sport, forward.daddr, forward.dport)
        );
    }

    #[test]
    fn a_snat_port_is_freed_after_its_flow_closed_or_idled() {
        let tcp = crate::service::PROTO_TCP;
        let udp = crate::service::PROTO_UDP;
        assert!(!ct_expired(tcp, CT_SNAT, 100, 100 + CT_LIFETIME_TCP));
        assert!(ct_expired(tcp, CT_SNAT, 100, 101 + CT_LIFETIME_TCP));
        assert!(!ct_expired(tcp, CT_CLOSING, 100, 110));
        assert!(ct_expired(tcp, CT_CLOSING, 100, 111));
        assert!(!ct_expired(udp, 0, 100, 160));
        assert!(ct_expired(udp, 0, 100, 161));
        // A clock that has not moved, or an entry another CPU saw a moment "later".
        assert!(!ct_expired(udp, 0, 100, 100));
        assert!(!ct_expired(udp, 0, 101, 100));
    }

    #[test]
    fn snat_ports_stay_in_their_range_and_differ_per_attempt() {
        for seed in [0, 1, 28_975, 28_976, u32::MAX - 3, u32::MAX] {
            let mut seen = [0u16; SNAT_ATTEMPTS as usize];
            for attempt in 0..SNAT_ATTEMPTS {
                let port = u16::from_be(snat_port(seed, attempt));
                assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port), "{port}");
                assert!(!seen.contains(&port), "port {port} tried twice");
                seen[attempt as usize] = port;
            }
        }
        assert_eq!(u16::from_be(snat_port(0, 0)), SNAT_PORT_MIN);
        assert_eq!(
            u16::from_be(snat_port(u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN), 1)),
            SNAT_PORT_MIN
        );
    }

    #[test]
    fn the_checksum_matches_a_known_ipv4_header() {
        // A header from the wild (Wikipedia's example), checksum 0xb861.
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0xb861);
        header[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        // A header with its checksum in place sums to zero.
        assert_eq!(checksum(&header), 0);
    }

    #[test]
    fn an_odd_length_is_padded_with_zero() {
        assert_eq!(sum_words(&[0x01, 0x02, 0x03], 0), 0x0102 + 0x0300);
        assert_eq!(checksum(&[]), 0xffff);
    }

    /// What `skb_checksum_help` does to a partial packet's checksum field.
    fn complete(field: u16, sum: u32) -> u16 {
        match fold(sum + u32::from(field)) {
            0 => 0xffff,
            v => v,
        }
    }

    #[test]
    fn the_settled_checksum_survives_the_completion_of_a_partial_packet() {
        for sum in (0..=0x2_ffffu32)
            .step_by(7)
            .chain([0, 0xffff, 0x1_fffe, 0xfffe])
        {
            let v = settled_partial_checksum(sum);
            assert_eq!(complete(v, sum), v, "sum {sum:#x}");
        }
    }

    #[test]
    fn a_syn_is_refused_with_rst_ack_for_the_next_sequence_number() {
        assert_eq!(
            rst_answer(1000, 0, TCP_SYN, 0),
            Some((0, 1001, TCP_RST | TCP_ACK))
        );
        assert_eq!(
            rst_answer(u32::MAX, 0, TCP_SYN | TCP_FIN, 10),
            Some((0, 11, TCP_RST | TCP_ACK))
        );
    }

    #[test]
    fn a_segment_with_ack_is_refused_with_its_ack_as_sequence() {
        assert_eq!(
            rst_answer(5, 777, TCP_ACK | TCP_FIN, 3),
            Some((777, 0, TCP_RST))
        );
    }

    #[test]
    fn a_rst_is_never_answered() {
        assert_eq!(rst_answer(5, 777, TCP_RST | TCP_ACK, 0), None);
    }
}
