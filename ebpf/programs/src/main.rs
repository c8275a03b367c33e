//! skiff's eBPF programs: a socket-level Service load balancer. Attached to the node's cgroup
//! v2 subtree, `connect4` and `sendmsg4` rewrite a Service VIP to one of its backends before
//! a packet exists, and `recvmsg4` and `getpeername4` show the application the VIP again, so
//! Service traffic needs no per-packet NAT.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap},
    programs::SockAddrContext,
};
use skiff_ebpf_common::{
    Backend, BackendKey, MAX_BACKENDS, MAX_REV_NAT, MAX_SERVICES, RevNatKey, RevNatValue,
    ServiceKey, ServiceValue,
};

/// Allow the socket call to proceed.
const ALLOW: i32 = 1;
/// Fail the socket call with EPERM (a Service without backends, as kube-proxy rejects).
const REJECT: i32 = 0;

#[map(name = "SKIFF_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "SKIFF_BACKENDS")]
static BACKENDS: HashMap<BackendKey, Backend> = HashMap::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "SKIFF_REV_NAT")]
static REV_NAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::with_max_entries(MAX_REV_NAT, 0);

/// Why a program left a socket call alone or refused it.
enum Verdict {
    /// Not a Service address, or nothing to translate.
    Pass,
    /// A Service with no usable backend.
    Reject,
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    verdict(try_translate(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(try_translate(&ctx))
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    // recvmsg4 must always allow; a miss just leaves the address as it is.
    let _ = try_restore(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    let _ = try_restore(&ctx);
    ALLOW
}

fn verdict(result: Result<(), Verdict>) -> i32 {
    match result {
        Ok(()) | Err(Verdict::Pass) => ALLOW,
        Err(Verdict::Reject) => REJECT,
    }
}

/// Rewrites a Service destination to a randomly chosen backend and remembers the VIP.
fn try_translate(ctx: &SockAddrContext) -> Result<(), Verdict> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime; the
    // verifier checks every field access against the context layout.
    let (vip, port, protocol) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    // user_port carries the network-order port in its low 16 bits.
    let port = port as u16;
    let key = ServiceKey {
        vip,
        port,
        protocol: protocol as u8,
        pad: 0,
    };
    // SAFETY: the value is copied out at once; user space replaces whole entries.
    let service = unsafe { SERVICES.get(&key) }.ok_or(Verdict::Pass)?;
    if service.count == 0 {
        return Err(Verdict::Reject);
    }
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let slot = unsafe { bpf_get_prandom_u32() } % service.count;
    let backend_key = BackendKey {
        service_id: service.id,
        slot,
    };
    // SAFETY: as above, copied out at once.
    let backend = *unsafe { BACKENDS.get(&backend_key) }.ok_or(Verdict::Reject)?;
    // SAFETY: the context pointer is valid (see above).
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let rev_key = RevNatKey {
        cookie,
        ip: backend.ip,
        port: backend.port,
        pad: 0,
    };
    let rev = RevNatValue { vip, port, pad: 0 };
    // Without the reverse entry getpeername/recvmsg would leak the backend: refuse instead.
    REV_NAT
        .insert(&rev_key, &rev, 0)
        .map_err(|_| Verdict::Reject)?;
    // SAFETY: user_ip4 and user_port are writable in connect4 and sendmsg4.
    unsafe {
        (*sa).user_ip4 = backend.ip;
        (*sa).user_port = u32::from(backend.port);
    }
    Ok(())
}

/// Shows the application the VIP it dialled instead of the backend it reached.
fn try_restore(ctx: &SockAddrContext) -> Result<(), Verdict> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: see try_translate.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    // SAFETY: the context pointer is valid.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let key = RevNatKey {
        cookie,
        ip,
        port: port as u16,
        pad: 0,
    };
    // SAFETY: copied out at once.
    let rev = *unsafe { REV_NAT.get(&key) }.ok_or(Verdict::Pass)?;
    // SAFETY: user_ip4 and user_port are writable in recvmsg4 and getpeername4.
    unsafe {
        (*sa).user_ip4 = rev.vip;
        (*sa).user_port = u32::from(rev.port);
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
