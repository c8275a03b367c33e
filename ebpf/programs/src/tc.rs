//! The TC programs on the node's uplinks: traffic from outside the node to an external-scope
//! frontend (NodePort, externalIPs, LoadBalancer) is sent to a backend here, with connection
//! tracking, SNAT when the backend is on another node, reverse translation of the replies,
//! ICMP errors about tracked flows translated alike, and a TCP RST or ICMP port unreachable
//! for a frontend without backends. The flow model is described in `skiff_ebpf_common::nat`.
//!
//! Only IPv4 without options and without fragmentation is translated; everything else, and
//! every packet that is not Service traffic, goes on untouched (`TC_ACT_UNSPEC`, so other
//! TCX programs behind ours still see it).

use core::{mem::size_of, ptr::null_mut};

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_adj_room_mode,
        bpf_fib_lookup,
    },
    helpers::{
        bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns,
        bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail,
    },
    macros::classifier,
    programs::TcContext,
};
use skiff_ebpf_common::{
    BackendKey, CtKey, CtValue,
    nat::{
        CT_CLOSING, CT_FORWARD, CT_REPLY, CT_SNAT, SNAT_ATTEMPTS, TCP_ACK, TCP_FIN, TCP_RST,
        TCP_SYN, checksum, ct_expired, rst_answer, settled_partial_checksum, snat_port, sum_words,
    },
    service::{
        BACKEND_LOCAL, CLIENT_ADDRESS, FLAG_EXTERNAL_LOCAL, KIND_CLUSTER_IP, PROTO_TCP, PROTO_UDP,
    },
};

use crate::{
    lb::{self, Miss},
    maps::{BACKENDS, CT, UPLINKS},
};

/// Let the packet go on (to the next TCX program, then the stack).
const NEXT: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT as i32;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const AF_INET: u8 = 2;
const IP_HLEN: usize = 20;
const IP_TOT_LEN: usize = ETH_HLEN + 2;
const IP_FRAG: usize = ETH_HLEN + 6;
const IP_PROTO: usize = ETH_HLEN + 9;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
const L4: usize = ETH_HLEN + IP_HLEN;
const TCP_SEQ: usize = L4 + 4;
const TCP_ACK_SEQ: usize = L4 + 8;
/// Data offset and flags, one 16-bit word.
const TCP_OFF_FLAGS: usize = L4 + 12;
const TCP_CSUM: usize = L4 + 16;
const UDP_CSUM: usize = L4 + 6;
const UDP_HLEN: usize = 8;
const ICMP_CSUM: usize = L4 + 2;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// The packet an ICMP error quotes: its IP header and the first 8 bytes after it.
const QUOTED: usize = L4 + 8;
const PROTO_ICMP: u8 = 1;
#[expect(clippy::cast_possible_truncation, reason = "28 bytes")]
const QUOTE_LEN: u32 = (IP_HLEN + 8) as u32;
/// The ICMP error's header and the offending packet's IP header, inserted before its UDP
/// header.
const ICMP_QUOTE: usize = 8 + IP_HLEN + UDP_HLEN;
const ICMP_ROOM: usize = 8 + IP_HLEN;

/// The fields of an IPv4 TCP or UDP packet the programs use, as on the wire.
struct Packet {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    protocol: u8,
    tcp_flags: u8,
}

#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    ingress(&ctx)
}

#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    egress(&ctx)
}

fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the kernel hands the program a valid __sk_buff; the verifier checks the access.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let ethertype: u16 = ctx.load(12).ok()?;
    if ethertype != ETH_P_IP.to_be() {
        return None;
    }
    // Version 4, no options.
    let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    if version_ihl != 0x45 {
        return None;
    }
    // More-fragments or an offset: only whole datagrams carry both ports.
    let frag: u16 = ctx.load(IP_FRAG).ok()?;
    if u16::from_be(frag) & 0x3fff != 0 {
        return None;
    }
    let protocol: u8 = ctx.load(IP_PROTO).ok()?;
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return None;
    }
    let tcp_flags = if protocol == PROTO_TCP {
        ctx.load::<u8>(TCP_OFF_FLAGS + 1).ok()?
    } else {
        0
    };
    Some(Packet {
        saddr: ctx.load(IP_SRC).ok()?,
        daddr: ctx.load(IP_DST).ok()?,
        sport: ctx.load(L4).ok()?,
        dport: ctx.load(L4 + 2).ok()?,
        protocol,
        tcp_flags,
    })
}

fn ingress(ctx: &TcContext) -> i32 {
    // SAFETY: copied out at once.
    let Some(uplink) = (unsafe { UPLINKS.get(&ifindex(ctx)) }).copied() else {
        return NEXT;
    };
    let Some(packet) = parse(ctx) else {
        return related(ctx, Some(uplink.address)).unwrap_or(NEXT);
    };
    let p = &packet;
    // The answer of a backend on another node to a SNATed flow.
    if p.daddr == uplink.address {
        let key = CtKey::new(p.saddr, p.sport, p.daddr, p.dport, p.protocol, CT_REPLY);
        if let Some((entry, to)) = tracked(&key) {
            touch(entry, p);
            return apply(ctx, p, &to);
        }
    }
    let key = CtKey::new(p.saddr, p.sport, p.daddr, p.dport, p.protocol, CT_FORWARD);
    // A new connection on a tracked tuple keeps the backend while its slot holds it, unless
    // the old connection closed (its SNAT port may go to another flow soon).
    if let Some((entry, to)) = tracked(&key)
        && (!opens(p) || (still_holds(&to) && to.flags & CT_CLOSING == 0))
    {
        touch(entry, p);
        return apply(ctx, p, &to);
    }
    let Some(frontend) = lb::frontend(p.daddr, p.dport, p.protocol, false) else {
        return NEXT;
    };
    // A ClusterIP is not reachable from outside the node.
    if frontend.kind == KIND_CLUSTER_IP {
        return NEXT;
    }
    match lb::pick_slot(&frontend, u64::from(p.saddr), CLIENT_ADDRESS) {
        Ok((slot, backend)) => {
            let snat =
                backend.flags & BACKEND_LOCAL == 0 && frontend.flags & FLAG_EXTERNAL_LOCAL == 0;
            let to = CtValue {
                saddr: if snat { uplink.address } else { p.saddr },
                daddr: backend.address,
                sport: p.sport,
                dport: backend.port,
                group: frontend.group,
                slot,
                flags: if snat { CT_SNAT } else { 0 },
                pad: [0; 3],
                seen: now(),
            };
            match track(p, &key, to) {
                Some(to) => apply(ctx, p, &to),
                None => DROP,
            }
        }
        Err(Miss::NoBackend) => refuse(ctx, p),
        Err(Miss::NotAService) => NEXT,
    }
}

fn egress(ctx: &TcContext) -> i32 {
    // SAFETY: copied out at once.
    if unsafe { UPLINKS.get(&ifindex(ctx)) }.is_none() {
        return NEXT;
    }
    let Some(p) = parse(ctx) else {
        return related(ctx, None).unwrap_or(NEXT);
    };
    // A local backend's answer (SNATed answers arrive at ingress instead).
    let key = CtKey::new(p.saddr, p.sport, p.daddr, p.dport, p.protocol, CT_REPLY);
    match tracked(&key) {
        Some((entry, to)) if to.flags & CT_SNAT == 0 => {
            touch(entry, &p);
            if rewrite(ctx, &p, &to).is_err() {
                return DROP;
            }
            NEXT
        }
        _ => NEXT,
    }
}

/// The entry for `key`, and a copy of it.
#[inline(always)]
fn tracked(key: &CtKey) -> Option<(*mut CtValue, CtValue)> {
    let entry = CT.get_ptr_mut(key)?;
    // SAFETY: the map's element for the key, valid during the program (LRU elements are
    // freed under RCU); copied at once.
    Some((entry, unsafe { *entry }))
}

/// Seconds since boot, the clock of [`CtValue::seen`].
#[inline(always)]
fn now() -> u32 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let nanos = unsafe { bpf_ktime_get_ns() };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "seconds since boot fit 32 bits"
    )]
    let seconds = (nanos / 1_000_000_000) as u32;
    seconds
}

/// Marks the entry used now, and closing once a FIN or RST passed.
#[inline(always)]
fn touch(entry: *mut CtValue, p: &Packet) {
    let now = now();
    // SAFETY: the element `tracked` returned, valid during the program; plain stores, and a
    // racing CPU at worst writes the same second or flag.
    unsafe {
        if (*entry).seen != now {
            (*entry).seen = now;
        }
        if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 && (*entry).flags & CT_CLOSING == 0 {
            (*entry).flags |= CT_CLOSING;
        }
    }
}

/// Whether the flow holding the SNAT reply entry `key` has ended, so its port may go to a
/// new flow; its forward entry is removed then (a late packet of it picks anew).
#[inline(always)]
fn reclaim(key: &CtKey) -> bool {
    let Some((_, old)) = tracked(key) else {
        // Evicted since the insert failed: free.
        return true;
    };
    // `old` rewrites answers to frontend -> client; the flow's first direction is that turned
    // around.
    let forward = CtKey::new(
        old.daddr,
        old.dport,
        old.saddr,
        old.sport,
        key.protocol,
        CT_FORWARD,
    );
    let Some((_, first)) = tracked(&forward) else {
        return true;
    };
    let flags = old.flags | first.flags;
    let now = now();
    if ct_expired(key.protocol, flags, old.seen, now)
        && ct_expired(key.protocol, flags, first.seen, now)
    {
        let _ = CT.remove(&forward);
        return true;
    }
    false
}

/// The quoted IP header and ports of an ICMP error, 4-byte aligned for `bpf_csum_diff`.
#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct Quote([u8; IP_HLEN + 8]);

/// Translates an ICMP error (destination unreachable, time exceeded) about a packet of a
/// tracked flow the way the flow's answers are: at ingress (`node` is the uplink's address)
/// one addressed to the node about a SNAT-ed packet, at egress one from a local backend's
/// side. The client then sees the error about the packet it sent, from the frontend when the
/// backend itself reported it, and learns a smaller path MTU or a closed port. `None` when
/// the packet is no such error.
#[inline(always)]
fn related(ctx: &TcContext, node: Option<u32>) -> Option<i32> {
    let ethertype: u16 = ctx.load(12).ok()?;
    let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let frag: u16 = ctx.load(IP_FRAG).ok()?;
    let protocol: u8 = ctx.load(IP_PROTO).ok()?;
    if ethertype != ETH_P_IP.to_be()
        || version_ihl != 0x45
        || u16::from_be(frag) & 0x3fff != 0
        || protocol != PROTO_ICMP
    {
        return None;
    }
    let kind: u8 = ctx.load(L4).ok()?;
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED {
        return None;
    }
    let saddr: u32 = ctx.load(IP_SRC).ok()?;
    let daddr: u32 = ctx.load(IP_DST).ok()?;
    if node.is_some_and(|node| node != daddr) {
        return None;
    }
    let old: Quote = ctx.load(QUOTED).ok()?;
    let q = &old.0;
    let inner_protocol = q[9];
    if q[0] != 0x45 || (inner_protocol != PROTO_TCP && inner_protocol != PROTO_UDP) {
        return None;
    }
    let word = |at: usize| u32::from_ne_bytes([q[at], q[at + 1], q[at + 2], q[at + 3]]);
    let half = |at: usize| u16::from_ne_bytes([q[at], q[at + 1]]);
    let (inner_saddr, inner_daddr) = (word(12), word(16));
    let (inner_sport, inner_dport) = (half(IP_HLEN), half(IP_HLEN + 2));
    // The quoted packet went towards the backend; its answer's entry names the flow.
    let key = CtKey::new(
        inner_daddr,
        inner_dport,
        inner_saddr,
        inner_sport,
        inner_protocol,
        CT_REPLY,
    );
    let (_, to) = tracked(&key)?;
    if (to.flags & CT_SNAT != 0) != node.is_some() {
        return None;
    }
    // What the client sent: client -> frontend.
    let mut new = old;
    let n = &mut new.0;
    n[12..16].copy_from_slice(&to.daddr.to_ne_bytes());
    n[16..20].copy_from_slice(&to.saddr.to_ne_bytes());
    n[IP_HLEN..IP_HLEN + 2].copy_from_slice(&to.dport.to_ne_bytes());
    n[IP_HLEN + 2..IP_HLEN + 4].copy_from_slice(&to.sport.to_ne_bytes());
    n[10] = 0;
    n[11] = 0;
    let sum = checksum(&n[..IP_HLEN]).to_be_bytes();
    n[10] = sum[0];
    n[11] = sum[1];
    // The ICMP checksum covers the quote: move it by the quote's change.
    // SAFETY: both buffers are 4-byte aligned stack memory of the size given.
    let diff = unsafe {
        bpf_csum_diff(
            (&raw const old).cast_mut().cast(),
            QUOTE_LEN,
            (&raw mut new).cast(),
            QUOTE_LEN,
            0,
        )
    };
    if diff < 0 {
        return Some(DROP);
    }
    #[expect(clippy::cast_sign_loss, reason = "checked non-negative above")]
    let diff = diff as u64;
    let translated = ctx.store(QUOTED, &new, 0).is_ok()
        && ctx.l4_csum_replace(ICMP_CSUM, 0, diff, 0).is_ok()
        && ctx.store(IP_DST, &to.daddr, 0).is_ok()
        && ctx
            .l3_csum_replace(IP_CSUM, u64::from(daddr), u64::from(to.daddr), 4)
            .is_ok();
    if !translated {
        return Some(DROP);
    }
    // The backend itself reported it: from the frontend, as its answers are.
    let mut source = saddr;
    if saddr == inner_daddr {
        source = to.saddr;
        if ctx.store(IP_SRC, &source, 0).is_err()
            || ctx
                .l3_csum_replace(IP_CSUM, u64::from(saddr), u64::from(source), 4)
                .is_err()
        {
            return Some(DROP);
        }
    }
    Some(if node.is_some() {
        send(ctx, source, to.daddr)
    } else {
        NEXT
    })
}

/// Whether the packet starts a connection, which must not follow a tracked backend that is
/// gone: a TCP SYN, and every UDP datagram.
#[inline(always)]
fn opens(p: &Packet) -> bool {
    p.protocol == PROTO_UDP || p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether the flow's slot still holds its backend.
#[inline(always)]
fn still_holds(to: &CtValue) -> bool {
    let key = BackendKey {
        group: to.group,
        slot: to.slot,
    };
    // SAFETY: copied out at once (the map is not preallocated).
    unsafe { BACKENDS.get(&key) }.is_some_and(|b| b.address == to.daddr && b.port == to.dport)
}

/// Records a new flow (the reply entry first, so an answer is never untracked) and returns
/// its forward translation, with the SNAT port it got.
#[inline(always)]
fn track(p: &Packet, key: &CtKey, mut to: CtValue) -> Option<CtValue> {
    let mut back = key.restore(to.flags);
    back.seen = to.seen;
    if to.flags & CT_SNAT == 0 {
        CT.insert(&CtKey::reply_to(&to, p.protocol), &back, 0)
            .ok()?;
    } else {
        // SAFETY: bpf_get_prandom_u32 has no preconditions.
        let seed = unsafe { bpf_get_prandom_u32() };
        let mut placed = false;
        for attempt in 0..SNAT_ATTEMPTS {
            to.sport = snat_port(seed, attempt);
            let reply = CtKey::reply_to(&to, p.protocol);
            if CT.insert(&reply, &back, u64::from(BPF_NOEXIST)).is_ok()
                || (reclaim(&reply) && CT.insert(&reply, &back, 0).is_ok())
            {
                placed = true;
                break;
            }
        }
        if !placed {
            return None;
        }
    }
    CT.insert(key, &to, 0).ok()?;
    Some(to)
}

/// Rewrites the packet to `to`; a SNATed packet is sent on by the program.
#[inline(always)]
fn apply(ctx: &TcContext, p: &Packet, to: &CtValue) -> i32 {
    if rewrite(ctx, p, to).is_err() {
        return DROP;
    }
    if to.flags & CT_SNAT == 0 {
        return NEXT;
    }
    send(ctx, to.saddr, to.daddr)
}

/// Rewrites addresses and ports, keeping the IPv4 and L4 checksums right (the kernel's
/// helpers handle `CHECKSUM_PARTIAL` packets from veths, whose L4 field holds only the
/// pseudo-header sum).
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Packet, to: &CtValue) -> Result<(), i64> {
    let (csum, mangled) = if p.protocol == PROTO_TCP {
        (TCP_CSUM, 0)
    } else {
        // A UDP checksum of 0 means none; a computed 0 is sent as 0xffff.
        (UDP_CSUM, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled;
    if to.saddr != p.saddr {
        ctx.store(IP_SRC, &to.saddr, 0)?;
        ctx.l4_csum_replace(csum, u64::from(p.saddr), u64::from(to.saddr), pseudo | 4)?;
        ctx.l3_csum_replace(IP_CSUM, u64::from(p.saddr), u64::from(to.saddr), 4)?;
    }
    if to.daddr != p.daddr {
        ctx.store(IP_DST, &to.daddr, 0)?;
        ctx.l4_csum_replace(csum, u64::from(p.daddr), u64::from(to.daddr), pseudo | 4)?;
        ctx.l3_csum_replace(IP_CSUM, u64::from(p.daddr), u64::from(to.daddr), 4)?;
    }
    if to.sport != p.sport {
        ctx.store(L4, &to.sport, 0)?;
        ctx.l4_csum_replace(csum, u64::from(p.sport), u64::from(to.sport), mangled | 2)?;
    }
    if to.dport != p.dport {
        ctx.store(L4 + 2, &to.dport, 0)?;
        ctx.l4_csum_replace(csum, u64::from(p.dport), u64::from(to.dport), mangled | 2)?;
    }
    Ok(())
}

/// Sends a packet whose source is now the node's address (or a frontend) straight to its
/// next hop: the stack would drop it as a martian.
#[inline(always)]
fn send(ctx: &TcContext, saddr: u32, daddr: u32) -> i32 {
    // SAFETY: bpf_fib_lookup is a plain C struct of integers; all zeros is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    params.ifindex = ifindex(ctx);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "64 bytes"
    )]
    let size = size_of::<bpf_fib_lookup>() as i32;
    // SAFETY: the context is the program's skb and params lives for the call.
    let found = unsafe { fib_lookup(ctx.skb.skb.cast(), &raw mut params, size, 0) };
    #[expect(
        clippy::cast_sign_loss,
        reason = "checked against the non-negative codes"
    )]
    match found as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            if ctx.store(0, &params.dmac, 0).is_err() || ctx.store(6, &params.smac, 0).is_err() {
                return DROP;
            }
            // SAFETY: bpf_redirect has no preconditions.
            #[expect(clippy::cast_possible_truncation, reason = "a TC_ACT_* code")]
            let action = unsafe { bpf_redirect(params.ifindex, 0) } as i32;
            action
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            // SAFETY: without parameters the helper resolves the next hop itself.
            #[expect(clippy::cast_possible_truncation, reason = "a TC_ACT_* code")]
            let action = unsafe { bpf_redirect_neigh(params.ifindex, null_mut(), 0, 0) } as i32;
            action
        }
        _ => DROP,
    }
}

/// Answers a packet to a frontend without backends: a TCP RST, an ICMP port unreachable.
#[inline(always)]
fn refuse(ctx: &TcContext, p: &Packet) -> i32 {
    let answered = if p.protocol == PROTO_TCP {
        reset(ctx, p)
    } else {
        unreachable(ctx, p)
    };
    if answered.is_err() {
        return DROP;
    }
    if swap_macs(ctx).is_err() {
        return DROP;
    }
    // SAFETY: bpf_redirect has no preconditions.
    #[expect(clippy::cast_possible_truncation, reason = "a TC_ACT_* code")]
    let action = unsafe { bpf_redirect(ifindex(ctx), 0) } as i32;
    action
}

#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Result<(), i64> {
    let dst: [u8; 6] = ctx.load(0)?;
    let src: [u8; 6] = ctx.load(6)?;
    ctx.store(0, &src, 0)?;
    ctx.store(6, &dst, 0)
}

/// Turns the segment into the RST that refuses it, in place. Swapping addresses and ports
/// leaves every checksum as it is; the changed sequence numbers and flags go through the
/// checksum helpers, which keep a `CHECKSUM_PARTIAL` packet partial.
#[inline(always)]
fn reset(ctx: &TcContext, p: &Packet) -> Result<(), i64> {
    let seq: u32 = ctx.load(TCP_SEQ)?;
    let ack: u32 = ctx.load(TCP_ACK_SEQ)?;
    let off_flags: u16 = ctx.load(TCP_OFF_FLAGS)?;
    let total: u16 = ctx.load(IP_TOT_LEN)?;
    let header = u32::from(u16::from_be(off_flags) >> 12) * 4;
    let payload = u32::from(u16::from_be(total)).saturating_sub(IP_HLEN as u32 + header);
    let (new_seq, new_ack, flags) =
        rst_answer(u32::from_be(seq), u32::from_be(ack), p.tcp_flags, payload).ok_or(-1i64)?;
    let (new_seq, new_ack) = (new_seq.to_be(), new_ack.to_be());
    let new_off_flags = ((u16::from_be(off_flags) & 0xf000) | u16::from(flags)).to_be();
    ctx.store(IP_SRC, &p.daddr, 0)?;
    ctx.store(IP_DST, &p.saddr, 0)?;
    ctx.store(L4, &p.dport, 0)?;
    ctx.store(L4 + 2, &p.sport, 0)?;
    ctx.store(TCP_SEQ, &new_seq, 0)?;
    ctx.l4_csum_replace(TCP_CSUM, u64::from(seq), u64::from(new_seq), 4)?;
    ctx.store(TCP_ACK_SEQ, &new_ack, 0)?;
    ctx.l4_csum_replace(TCP_CSUM, u64::from(ack), u64::from(new_ack), 4)?;
    ctx.store(TCP_OFF_FLAGS, &new_off_flags, 0)?;
    ctx.l4_csum_replace(TCP_CSUM, u64::from(off_flags), u64::from(new_off_flags), 2)
}

/// Replaces the datagram with an ICMP port unreachable quoting its IP and UDP headers.
#[inline(always)]
fn unreachable(ctx: &TcContext, p: &Packet) -> Result<(), i64> {
    let mut quote = [0u8; ICMP_QUOTE];
    // Type 3 (destination unreachable), code 3 (port unreachable); checksum and the unused
    // word stay 0 for now.
    quote[0] = 3;
    quote[1] = 3;
    let mut original: [u8; IP_HLEN + UDP_HLEN] = ctx.load(ETH_HLEN)?;
    // A datagram from a local socket over a veth is CHECKSUM_PARTIAL with its checksum start
    // at the UDP header, which stays so below: the quoted header gets a checksum field the
    // completion leaves alone (the receiver matches the quote by its ports only).
    let settled = settled_partial_checksum(sum_words(&original[IP_HLEN..IP_HLEN + 6], 0));
    original[IP_HLEN + 6..].copy_from_slice(&settled.to_be_bytes());
    quote[8..].copy_from_slice(&original);
    let sum = checksum(&quote).to_be_bytes();
    quote[2] = sum[0];
    quote[3] = sum[1];
    let mut header = [0u8; IP_HLEN];
    header[0] = 0x45;
    #[expect(clippy::cast_possible_truncation, reason = "56 bytes")]
    let length = ((IP_HLEN + ICMP_QUOTE) as u16).to_be_bytes();
    header[2] = length[0];
    header[3] = length[1];
    header[8] = 64;
    header[9] = 1;
    header[12..16].copy_from_slice(&p.daddr.to_ne_bytes());
    header[16..20].copy_from_slice(&p.saddr.to_ne_bytes());
    let sum = checksum(&header).to_be_bytes();
    header[10] = sum[0];
    header[11] = sum[1];
    // Keep the UDP header only, then open room for the ICMP header and the quoted IP header
    // between the IP header and it.
    #[expect(clippy::cast_possible_truncation, reason = "42 bytes")]
    let keep = (L4 + UDP_HLEN) as u32;
    // SAFETY: the context is the program's skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, keep, 0) } != 0 {
        return Err(-1);
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "28 bytes"
    )]
    ctx.adjust_room(ICMP_ROOM as i32, bpf_adj_room_mode::BPF_ADJ_ROOM_NET, 0)?;
    // Keeps a CHECKSUM_COMPLETE packet's sum right (L3 onwards is covered, not the MACs).
    let recompute = u64::from(BPF_F_RECOMPUTE_CSUM);
    ctx.store(L4, &quote, recompute)?;
    ctx.store(ETH_HLEN, &header, recompute)
}
