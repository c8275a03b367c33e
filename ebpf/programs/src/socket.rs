//! The socket hooks: on the node's cgroup subtree, `connect4` and `sendmsg4` rewrite a
//! Service address to a backend before a packet exists, and `recvmsg4` and `getpeername4`
//! show the application the Service address again, so Service traffic that starts on the
//! node needs no per-packet NAT.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use skiff_ebpf_common::{
    SockRevNatKey, SockRevNatValue,
    service::{CLIENT_NETNS, FLAG_HOST_ONLY},
};

use crate::{
    lb::{self, Miss},
    maps::{CONFIG, SOCK_REV_NAT},
};

/// Let the socket call proceed.
const ALLOW: i32 = 1;
/// Fail the socket call (with the error set by `bpf_set_retval`).
const REJECT: i32 = 0;
/// What a client of a Service without endpoints gets, as from kube-proxy's REJECT rule.
const ECONNREFUSED: i32 = 111;

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
    // recvmsg4 must allow; a miss leaves the address as it is.
    let _ = try_restore(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    let _ = try_restore(&ctx);
    ALLOW
}

fn verdict(result: Result<(), Miss>) -> i32 {
    match result {
        Ok(()) | Err(Miss::NotAService) => ALLOW,
        Err(Miss::NoBackend) => {
            // SAFETY: bpf_set_retval has no preconditions; connect4 and sendmsg4 may call it.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            REJECT
        }
    }
}

/// Rewrites a Service destination to a backend and remembers the frontend for the reverse
/// direction.
fn try_translate(ctx: &SockAddrContext) -> Result<(), Miss> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime; the
    // verifier checks every field access against the context layout.
    let (address, port, protocol) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    // user_port carries the network-order port in its low 16 bits.
    let port = port as u16;
    // Sockets on this node are internal traffic.
    let frontend = lb::frontend(address, port, protocol as u8, true).ok_or(Miss::NotAService)?;
    // SAFETY: the context pointer is valid (see above).
    let netns = unsafe { bpf_get_netns_cookie(sa.cast()) };
    if frontend.flags & FLAG_HOST_ONLY != 0 {
        let host = CONFIG.get(0).map_or(0, |c| c.host_netns);
        if host == 0 || host != netns {
            return Err(Miss::NotAService);
        }
    }
    let backend = lb::pick(&frontend, netns, CLIENT_NETNS)?;
    let key = SockRevNatKey {
        // SAFETY: the context pointer is valid.
        cookie: unsafe { bpf_get_socket_cookie(sa.cast()) },
        netns,
        address: backend.address,
        port: backend.port,
        pad: 0,
    };
    let value = SockRevNatValue {
        address,
        port,
        pad: 0,
    };
    // Without the reverse entry getpeername/recvmsg would show the backend: refuse instead.
    SOCK_REV_NAT
        .insert(&key, &value, 0)
        .map_err(|_| Miss::NoBackend)?;
    // SAFETY: user_ip4 and user_port are writable in connect4 and sendmsg4.
    unsafe {
        (*sa).user_ip4 = backend.address;
        (*sa).user_port = u32::from(backend.port);
    }
    Ok(())
}

/// Shows the application the frontend it dialled instead of the backend it reached.
fn try_restore(ctx: &SockAddrContext) -> Result<(), Miss> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: see try_translate.
    let (address, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    let key = SockRevNatKey {
        // SAFETY: the context pointer is valid.
        cookie: unsafe { bpf_get_socket_cookie(sa.cast()) },
        // SAFETY: the context pointer is valid.
        netns: unsafe { bpf_get_netns_cookie(sa.cast()) },
        address,
        port: port as u16,
        pad: 0,
    };
    // SAFETY: copied out at once.
    let frontend = *unsafe { SOCK_REV_NAT.get(&key) }.ok_or(Miss::NotAService)?;
    // SAFETY: user_ip4 and user_port are writable in recvmsg4 and getpeername4.
    unsafe {
        (*sa).user_ip4 = frontend.address;
        (*sa).user_port = u32::from(frontend.port);
    }
    Ok(())
}
