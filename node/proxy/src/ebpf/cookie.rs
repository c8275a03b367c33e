//! The network namespace cookie of the calling thread's namespace, which the kernel hands
//! BPF programs as `bpf_get_netns_cookie`: the socket hooks compare it with the node's own
//! to serve the NodePort on 127.0.0.1 to host processes only.
#![allow(
    unsafe_code,
    reason = "getsockopt(SO_NETNS_COOKIE) has no safe wrapper in nix or std"
)]

use std::os::fd::AsRawFd as _;

/// `SO_NETNS_COOKIE` (Linux 5.14), the same on every architecture skiff builds for.
const SO_NETNS_COOKIE: nix::libc::c_int = 71;

/// The cookie of the network namespace this thread is in.
///
/// # Errors
/// When no socket can be made or the kernel predates `SO_NETNS_COOKIE`.
pub fn current_netns_cookie() -> std::io::Result<u64> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut cookie: u64 = 0;
    let mut len = nix::libc::socklen_t::try_from(size_of::<u64>()).unwrap_or(8);
    // SAFETY: the descriptor is a live socket owned by `socket`, and `cookie`/`len` point to
    // a u64 and its size, which is what the kernel writes for SO_NETNS_COOKIE.
    let rc = unsafe {
        nix::libc::getsockopt(
            socket.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_of_this_namespace_is_stable_and_not_zero() {
        let a = current_netns_cookie().expect("SO_NETNS_COOKIE");
        assert_ne!(a, 0);
        assert_eq!(current_netns_cookie().expect("SO_NETNS_COOKIE"), a);
    }
}
