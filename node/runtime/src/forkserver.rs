//! A small process, forked from the node daemon before its first thread, that forks the
//! copies in which containers are created.
//!
//! Forking the running daemon for every create (see [`crate::forked`]) copies the daemon's
//! page tables; every page the daemon then writes is copied once more, with a TLB shootdown
//! on every core; and libcontainer's clones of the copy copy the same tables again. With
//! 100 pods started at once this was about a fifth of the node's CPU. The forkserver is
//! forked while the daemon is small and single-threaded, so its copies are cheap, and no lock
//! another thread held can be inherited held.
//!
//! Protocol over one `SOCK_SEQPACKET` socket: a request is one datagram, the payload with
//! `SCM_RIGHTS` descriptors: a reply socket first, then those the operation takes. The server
//! forks a copy per request, which runs the operation, sends `ok PID` or `err MESSAGE` on the
//! reply socket and exits. The server reaps the copy and sends `gone`: from then on the
//! processes the copy made (a container's init) are children of the daemon, a child
//! subreaper, so callers wait for `gone` before they wait for those processes.

use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsFd as _, AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    sync::OnceLock,
    time::Duration,
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{
        socket::{
            AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, Shutdown, SockFlag,
            SockType, recv, recvmsg, send, sendmsg, setsockopt, shutdown, socketpair,
            sockopt::ReceiveTimeout,
        },
        time::TimeVal,
        wait::waitpid,
    },
    unistd::{ForkResult, Pid, fork},
};

/// What the server runs in a copy: the request's payload and descriptors (the reply socket
/// taken off), answering the pid it created or an error message.
pub type Handler = fn(&[u8], Vec<OwnedFd>) -> Result<i32, String>;

/// The copy was reaped; nothing more comes on the reply socket.
const GONE: &[u8] = b"gone";
/// Descriptors a request may carry, the reply socket included.
const MAX_FDS: usize = 8;
/// Largest payload.
const MAX_PAYLOAD: usize = 64 * 1024;
/// How long a caller waits for each answer before it gives up on the server.
const REPLY_TIMEOUT: Duration = Duration::from_mins(2);

/// Errors asking the forkserver.
#[derive(Debug, thiserror::Error)]
pub enum ForkserverError {
    /// The request did not reach the server (it has ended): nothing was run, and the caller
    /// may run the work another way.
    #[error("forkserver unavailable: {0}")]
    Unavailable(#[source] Errno),
    /// The request was sent, but its answers did not come whole.
    #[error("forkserver reply: {0}")]
    Reply(String),
}

/// The daemon's end of a running forkserver.
#[derive(Debug)]
pub struct Forkserver {
    requests: OwnedFd,
    pid: Pid,
}

impl Forkserver {
    /// Forks the server. Call it while this process is single-threaded and small: the
    /// server keeps what this process holds at this moment, and every copy starts from it.
    /// The server ends when this process does (or closes its end).
    ///
    /// # Errors
    /// If the socket pair or the fork fails.
    pub fn spawn(handler: Handler) -> std::io::Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let parent = nix::unistd::getpid();
        // SAFETY: the child runs only `serve`, which allocates (glibc's fork resets malloc's
        // locks) and forks, and ends with `_exit`, never returning into the caller's frames.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(ours);
                serve(&theirs, parent, handler)
            }
            ForkResult::Parent { child } => {
                drop(theirs);
                Ok(Self {
                    requests: ours,
                    pid: child,
                })
            }
        }
    }

    /// Runs `payload` with `fds` (duplicated into the server) in a fresh copy of the server
    /// and returns what the handler returned, once the copy has been reaped. When the
    /// handler failed, the copy has ended and reaped every process it started.
    ///
    /// # Errors
    /// [`ForkserverError::Unavailable`] when the server did not get the request (nothing
    /// ran), [`ForkserverError::Reply`] when it got it but the answers were lost.
    pub fn run(
        &self,
        payload: &[u8],
        fds: &[OwnedFd],
    ) -> Result<Result<i32, String>, ForkserverError> {
        let (reply, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(ForkserverError::Unavailable)?;
        let raw: Vec<RawFd> = std::iter::once(theirs.as_raw_fd())
            .chain(fds.iter().map(AsRawFd::as_raw_fd))
            .collect();
        sendmsg::<()>(
            self.requests.as_raw_fd(),
            &[IoSlice::new(payload)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(ForkserverError::Unavailable)?;
        drop(theirs);
        let timeout = TimeVal::new(
            i64::try_from(REPLY_TIMEOUT.as_secs()).unwrap_or(i64::MAX),
            0,
        );
        setsockopt(&reply, ReceiveTimeout, &timeout)
            .map_err(|e| ForkserverError::Reply(format!("setting the reply timeout: {e}")))?;
        let mut result = None;
        let mut buf = vec![0u8; 4096];
        loop {
            match recv(reply.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) => {
                    return Err(ForkserverError::Reply(
                        "the forkserver ended before it reaped the copy".to_owned(),
                    ));
                }
                Ok(n) if &buf[..n] == GONE => {
                    return Ok(result.unwrap_or_else(|| {
                        Err("the forked copy died without a result".to_owned())
                    }));
                }
                Ok(n) => {
                    result = Some(crate::forked::parse(&String::from_utf8_lossy(&buf[..n])));
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    return Err(ForkserverError::Reply(format!(
                        "no answer within {} s",
                        REPLY_TIMEOUT.as_secs()
                    )));
                }
                Err(e) => return Err(ForkserverError::Reply(e.to_string())),
            }
        }
    }
}

impl Drop for Forkserver {
    fn drop(&mut self) {
        // A shutdown, not a close: processes forked from the daemon hold copies of our end,
        // and the server must still see the end of its requests. It exits once its copies
        // are reaped; reaping it here leaves no zombie behind a test or a daemon.
        let _ = shutdown(self.requests.as_raw_fd(), Shutdown::Both);
        let _ = waitpid(self.pid, None);
    }
}

/// The server started by [`start`], which container creates use.
static SERVER: OnceLock<Forkserver> = OnceLock::new();

/// Starts the node's forkserver for container creates. Call it first thing in `main`,
/// before any thread starts (see [`Forkserver::spawn`]); without it, creates fork the
/// whole daemon.
///
/// # Errors
/// If the server cannot be forked, or one was started already.
pub fn start() -> std::io::Result<()> {
    let server = Forkserver::spawn(crate::container_start::create_in_copy)?;
    SERVER
        .set(server)
        .map_err(|_| std::io::Error::other("a forkserver runs already"))
}

/// The forkserver [`start`] made, if any.
pub(crate) fn installed() -> Option<&'static Forkserver> {
    SERVER.get()
}

/// A copy in flight: its pid, a pidfd that turns readable when it ends, and the socket its
/// caller waits on.
struct Copy {
    pid: Pid,
    pidfd: OwnedFd,
    reply: OwnedFd,
}

/// The server's loop: forks a copy per request, reaps copies as they end, and exits once
/// the daemon's end is closed and no copy is left.
fn serve(requests: &OwnedFd, daemon: Pid, handler: Handler) -> ! {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory of ours. The
    // forking thread is the daemon's main thread, which lives as long as the daemon.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // The daemon may have ended before the line above.
    if nix::unistd::getppid() != daemon {
        // SAFETY: ends this process without running the daemon's destructors.
        unsafe { libc::_exit(0) }
    }
    let mut copies: Vec<Copy> = Vec::new();
    let mut open = true;
    while open || !copies.is_empty() {
        let ready: Vec<bool> = {
            let mut polled: Vec<PollFd> = copies
                .iter()
                .map(|c| PollFd::new(c.pidfd.as_fd(), PollFlags::POLLIN))
                .collect();
            if open {
                polled.push(PollFd::new(requests.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut polled, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                // SAFETY: as above; nothing can be served without poll.
                Err(_) => unsafe { libc::_exit(1) },
            }
            polled
                .iter()
                .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let mut index = 0;
        copies.retain(|copy| {
            let ended = ready[index];
            index += 1;
            if ended {
                let _ = waitpid(copy.pid, None);
                let _ = send(copy.reply.as_raw_fd(), GONE, MsgFlags::MSG_NOSIGNAL);
            }
            !ended
        });
        if open && ready.last() == Some(&true) {
            open = accept(requests, handler, &mut copies);
        }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

/// Takes one request and forks its copy; `false` once the daemon's end is closed.
fn accept(requests: &OwnedFd, handler: Handler, copies: &mut Vec<Copy>) -> bool {
    let mut payload = vec![0u8; MAX_PAYLOAD];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, mut fds) = {
        let mut iov = [IoSliceMut::new(&mut payload)];
        let message = match recvmsg::<()>(
            requests.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => message,
            Err(Errno::EINTR | Errno::EAGAIN) => return true,
            Err(_) => return false,
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = message.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: the kernel installed these descriptors in this process for
                    // this message; nothing else owns them.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        (message.bytes, fds)
    };
    if len == 0 && fds.is_empty() {
        // End of file: the daemon closed its end.
        return false;
    }
    if fds.is_empty() {
        // A request without its reply socket cannot be answered.
        return true;
    }
    let reply = fds.remove(0);
    // SAFETY: the child is a copy of this single-threaded server; it runs the handler and
    // ends with `_exit`.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // The server's socket and other requests' sockets and pidfds are not this copy's
            // to hold (the container's init would keep them until it execs).
            copies.clear();
            let _ = nix::unistd::close(requests.as_raw_fd());
            let message = crate::forked::run_in_copy(|| handler(&payload[..len], fds));
            let _ = send(reply.as_raw_fd(), &message, MsgFlags::MSG_NOSIGNAL);
            // SAFETY: ends the copy without running the server's destructors.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(fds);
            if let Ok(pidfd) = crate::pidfd::pidfd_open(child.as_raw()) {
                copies.push(Copy {
                    pid: child,
                    pidfd,
                    reply,
                });
            } else {
                // Without a pidfd the copy is waited for here, the other requests after it.
                let _ = waitpid(child, None);
                let _ = send(reply.as_raw_fd(), GONE, MsgFlags::MSG_NOSIGNAL);
            }
        }
        Err(e) => {
            let message = format!("err forking the copy: {e}");
            let _ = send(
                reply.as_raw_fd(),
                message.as_bytes(),
                MsgFlags::MSG_NOSIGNAL,
            );
            let _ = send(reply.as_raw_fd(), GONE, MsgFlags::MSG_NOSIGNAL);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[expect(
        clippy::needless_pass_by_value,
        reason = "the signature of a forkserver handler"
    )]
    fn echo_length(payload: &[u8], fds: Vec<OwnedFd>) -> Result<i32, String> {
        if payload == b"fail" {
            return Err(format!("failed with {} descriptors", fds.len()));
        }
        if payload == b"die" {
            // SAFETY: ends the copy at once, as a crashing create would.
            unsafe { libc::_exit(3) }
        }
        Ok(i32::try_from(payload.len() * 10 + fds.len()).unwrap_or(-1))
    }

    #[test]
    fn each_request_gets_its_own_answer_with_its_descriptors() {
        let server = Forkserver::spawn(echo_length).unwrap();
        let devnull = || -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        assert_eq!(server.run(b"abc", &[devnull(), devnull()]).unwrap(), Ok(32));
        assert_eq!(
            server.run(b"fail", &[devnull()]).unwrap(),
            Err("failed with 1 descriptors".to_owned())
        );
        assert_eq!(
            server.run(b"die", &[]).unwrap(),
            Err("the forked copy died without a result".to_owned())
        );
        // Many at once, from several threads, each answered with its own result.
        std::thread::scope(|scope| {
            let handles: Vec<_> = (1..=16)
                .map(|n| {
                    let server = &server;
                    scope.spawn(move || server.run(&vec![b'x'; n], &[]).unwrap())
                })
                .collect();
            for (n, handle) in (1..=16).zip(handles) {
                assert_eq!(handle.join().unwrap(), Ok(n * 10));
            }
        });
    }

    #[test]
    fn a_server_that_ended_refuses_requests_so_the_caller_can_fall_back() {
        let server = Forkserver::spawn(echo_length).unwrap();
        nix::sys::signal::kill(server.pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let _ = waitpid(server.pid, None);
        assert!(matches!(
            server.run(b"abc", &[]),
            Err(ForkserverError::Unavailable(_))
        ));
    }

    #[test]
    fn dropping_the_handle_ends_and_reaps_the_server() {
        let server = Forkserver::spawn(echo_length).unwrap();
        let pid = server.pid;
        drop(server);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "server {pid} still exists"
        );
    }
}
