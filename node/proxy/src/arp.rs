//! L2 announcement of `LoadBalancer` addresses (`MetalLB`'s L2 mode): a raw packet socket on
//! the uplink answers ARP for the addresses this node holds and sends gratuitous ARP when it
//! takes one over, without adding them to the interface (the TC program translates their
//! traffic before the kernel would look for a local address).
#![allow(
    unsafe_code,
    reason = "AF_PACKET sockets (socket, bind to an interface, send, recv) have no safe \
              wrapper in nix or std"
)]

use std::{
    collections::BTreeSet,
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// `ETH_P_ARP`, the Ethernet type of ARP.
const ETH_P_ARP: u16 = 0x0806;
/// An Ethernet header and an IPv4-over-Ethernet ARP packet.
const FRAME: usize = 14 + 28;
/// How often the receiving thread looks whether it should stop.
const POLL: Duration = Duration::from_millis(200);

/// Failures opening the responder.
#[derive(Debug, thiserror::Error)]
pub enum ArpError {
    /// The interface does not exist in this network namespace.
    #[error("interface {0} not found")]
    NoInterface(String),
    /// The interface has no Ethernet address.
    #[error("interface {0} has no Ethernet address")]
    NoAddress(String),
    /// The packet socket could not be made or bound.
    #[error("packet socket on {interface}")]
    Socket {
        /// The interface.
        interface: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Sends ARP frames on the uplink: the seam unit tests replace.
pub trait Announce: Send + Sync {
    /// From now on answer ARP for exactly `held`; send gratuitous ARP for each address
    /// not held before.
    fn hold(&self, held: BTreeSet<Ipv4Addr>);
}

/// The ARP responder on one interface; stops when dropped.
#[derive(Debug)]
pub struct ArpResponder {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    socket: OwnedFd,
    mac: [u8; 6],
    held: Mutex<BTreeSet<Ipv4Addr>>,
    stop: AtomicBool,
}

impl ArpResponder {
    /// Opens a packet socket for ARP on `interface` (in the caller's network namespace)
    /// and starts answering for the addresses given to [`Announce::hold`].
    ///
    /// # Errors
    /// If the interface is missing or the socket cannot be made.
    pub fn open(interface: &str) -> Result<Self, ArpError> {
        let (index, mac) = link(interface)?;
        let socket = packet_socket(index).map_err(|source| ArpError::Socket {
            interface: interface.to_owned(),
            source,
        })?;
        let shared = Arc::new(Shared {
            socket,
            mac,
            held: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let answering = shared.clone();
        let thread = std::thread::Builder::new()
            .name("arp".into())
            .spawn(move || answering.answer())
            .map_err(|source| ArpError::Socket {
                interface: interface.to_owned(),
                source,
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }
}

impl Announce for ArpResponder {
    fn hold(&self, held: BTreeSet<Ipv4Addr>) {
        let new: Vec<Ipv4Addr> = {
            let mut current = self
                .shared
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let new = held.difference(&current).copied().collect();
            *current = held;
            new
        };
        for ip in new {
            // A gratuitous request: neighbours that cached another node's address for it
            // take this one.
            let frame = frame(1, self.shared.mac, ip, [0xff; 6], [0; 6], ip);
            if let Err(err) = self.shared.send(&frame) {
                tracing::warn!(%ip, %err, "gratuitous ARP not sent");
            }
        }
    }
}

impl Drop for ArpResponder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn answer(&self) {
        let mut buf = [0u8; 128];
        while !self.stop.load(Ordering::Relaxed) {
            // SAFETY: buf is valid for writes of its length for the whole call.
            let n = unsafe {
                nix::libc::recv(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                continue; // timed out (SO_RCVTIMEO) or interrupted
            };
            let Some(request) = parse_request(&buf[..n]) else {
                continue;
            };
            let held = self
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&request.target);
            if held {
                let reply = frame(
                    2,
                    self.mac,
                    request.target,
                    request.sender_mac,
                    request.sender_mac,
                    request.sender_ip,
                );
                if let Err(err) = self.send(&reply) {
                    tracing::debug!(ip = %request.target, %err, "ARP reply not sent");
                }
            }
        }
    }

    fn send(&self, frame: &[u8; FRAME]) -> io::Result<()> {
        // SAFETY: frame is valid for reads of its length; the socket is bound to the
        // interface, so no destination address is needed.
        let sent = unsafe {
            nix::libc::send(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
            )
        };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// An ARP request for an IPv4 address.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target: Ipv4Addr,
}

/// The request in an Ethernet frame, if it is an IPv4-over-Ethernet ARP request.
fn parse_request(frame: &[u8]) -> Option<Request> {
    let arp = frame.get(14..FRAME)?;
    let is_request = frame[12..14] == ETH_P_ARP.to_be_bytes()
        && arp[0..2] == [0, 1] // Ethernet
        && arp[2..4] == [0x08, 0x00] // IPv4
        && arp[4] == 6
        && arp[5] == 4
        && arp[6..8] == [0, 1];
    if !is_request {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(arp[at], arp[at + 1], arp[at + 2], arp[at + 3]);
    Some(Request {
        sender_mac: arp[8..14].try_into().ok()?,
        sender_ip: ip(14),
        target: ip(24),
    })
}

/// An ARP frame of `op` (1 request, 2 reply) from `mac` for `ip`, to Ethernet `dst`.
fn frame(
    op: u8,
    mac: [u8; 6],
    ip: Ipv4Addr,
    dst: [u8; 6],
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, op]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&target_ip.octets());
    f
}

/// The index and Ethernet address of `interface`.
fn link(interface: &str) -> Result<(i32, [u8; 6]), ArpError> {
    let index = nix::net::if_::if_nametoindex(interface)
        .map_err(|_| ArpError::NoInterface(interface.to_owned()))?;
    let mac = nix::ifaddrs::getifaddrs()
        .ok()
        .into_iter()
        .flatten()
        .filter(|a| a.interface_name == interface)
        .find_map(|a| a.address?.as_link_addr()?.addr())
        .ok_or_else(|| ArpError::NoAddress(interface.to_owned()))?;
    let index = i32::try_from(index).map_err(|_| ArpError::NoInterface(interface.to_owned()))?;
    Ok((index, mac))
}

/// A raw packet socket receiving and sending ARP on interface `index` only.
fn packet_socket(index: i32) -> io::Result<OwnedFd> {
    let protocol = ETH_P_ARP.to_be();
    // SAFETY: socket takes no pointers; the result is checked before use.
    let fd = unsafe {
        nix::libc::socket(
            nix::libc::AF_PACKET,
            nix::libc::SOCK_RAW | nix::libc::SOCK_CLOEXEC,
            i32::from(protocol),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket this function owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut addr: nix::libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(nix::libc::AF_PACKET).unwrap_or_default();
    addr.sll_protocol = protocol;
    addr.sll_ifindex = index;
    // SAFETY: addr is a valid sockaddr_ll and the length given is its size.
    let bound = unsafe {
        nix::libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            u32::try_from(size_of::<nix::libc::sockaddr_ll>()).unwrap_or_default(),
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    let timeout = nix::libc::timeval {
        tv_sec: 0,
        tv_usec: nix::libc::suseconds_t::try_from(POLL.as_micros()).unwrap_or_default(),
    };
    // SAFETY: timeout is a valid timeval and the length given is its size.
    let set = unsafe {
        nix::libc::setsockopt(
            socket.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            u32::try_from(size_of::<nix::libc::timeval>()).unwrap_or_default(),
        )
    };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_answers_the_request_it_is_built_from() {
        let asker = [2, 0, 0, 0, 0, 1];
        let (from, wanted) = (
            Ipv4Addr::new(192, 168, 50, 9),
            Ipv4Addr::new(192, 168, 50, 200),
        );
        let request = frame(1, asker, from, [0xff; 6], [0; 6], wanted);
        let parsed = parse_request(&request).unwrap();
        assert_eq!(
            parsed,
            Request {
                sender_mac: asker,
                sender_ip: from,
                target: wanted
            }
        );
        let me = [2, 0, 0, 0, 0, 2];
        let reply = frame(2, me, wanted, asker, asker, from);
        assert_eq!(parse_request(&reply), None, "a reply is no request");
        assert_eq!(&reply[0..6], &asker);
        assert_eq!(&reply[22..28], &me);
        assert_eq!(&reply[28..32], &wanted.octets());
        assert_eq!(&reply[38..42], &from.octets());
        assert_eq!(
            parse_request(&request[..30]),
            None,
            "a short frame is ignored"
        );
    }
}
