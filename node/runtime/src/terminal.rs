//! Pseudo-terminals: an exec's or a `tty: true` container's master side (input, output,
//! resizes), the console socket libcontainer hands a container's master through, the
//! fan-out of a container's terminal output to attached clients, and the keeper process that
//! holds a copy of the master so the container's session outlives a daemon restart.

use std::{
    io::{self, IoSliceMut},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
        unix::net::UnixListener,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::{
    fcntl::{FcntlArg, FdFlag, OFlag, fcntl},
    sys::socket::{ControlMessageOwned, MsgFlags, recvmsg},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::unix::pipe,
    sync::broadcast,
};

use crate::pidfd::{pidfd_getfd, pidfd_open};

/// A process's standard input, as the caller writes it.
pub type ProcessInput = std::pin::Pin<Box<dyn AsyncWrite + Send>>;
/// A process's standard output or error (or its terminal), as the caller reads it.
pub type ProcessOutput = std::pin::Pin<Box<dyn AsyncRead + Send>>;

/// A chunk of a container terminal's output, shared by every attached client.
pub type Chunk = Arc<[u8]>;

/// The socket file libcontainer connects to, in the container's bundle directory.
const CONSOLE_SOCKET: &str = "console.sock";
/// Where the keeper of a container's terminal holds the master.
const KEEPER_FD: RawFd = 3;
/// Where the keeper holds a pidfd of the container's init, whose exit ends it.
const KEEPER_INIT_FD: RawFd = 4;
/// The keeper's process name (`comm`), checked before taking a master from a pid.
const KEEPER_NAME: &str = "skiff-tty-keep";
/// Chunks an attached client may fall behind by before it misses output.
const BACKLOG: usize = 256;

/// The master side of a pseudo-terminal.
#[derive(Debug)]
pub struct Terminal {
    master: OwnedFd,
}

impl Terminal {
    /// Wraps a master, making it non-blocking and close-on-exec.
    ///
    /// # Errors
    /// When `fcntl` fails.
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        fcntl(&master, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        let flags = OFlag::from_bits_truncate(fcntl(&master, FcntlArg::F_GETFL)?);
        fcntl(&master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(Self { master })
    }

    /// Sets the terminal's size in columns and rows; the process gets `SIGWINCH`.
    ///
    /// # Errors
    /// When the ioctl fails.
    pub fn resize(&self, columns: u16, rows: u16) -> io::Result<()> {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the fd is an open pty master owned by self, and TIOCSWINSZ reads one
        // `winsize` from the valid pointer passed.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &raw const ws) };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A writer of the terminal's input, on a descriptor of its own: dropping it leaves the
    /// terminal open.
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated or registered.
    pub fn input(&self) -> io::Result<ProcessInput> {
        // A pty is not a pipe, but epoll treats it the same.
        let writer = pipe::Sender::from_owned_fd_unchecked(self.master.try_clone()?)?;
        Ok(Box::pin(writer))
    }

    /// A reader of the terminal's output, on a descriptor of its own.
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated or registered.
    pub fn reader(&self) -> io::Result<pipe::Receiver> {
        pipe::Receiver::from_owned_fd_unchecked(self.master.try_clone()?)
    }
}

/// The terminal of a running `tty: true` container: its input and size for attached
/// clients, and its output as the log pump reads it.
#[derive(Debug)]
pub struct ContainerTerminal {
    terminal: Terminal,
    /// Upgrades while the log pump (which holds the only strong sender) still reads.
    output: broadcast::WeakSender<Chunk>,
}

impl ContainerTerminal {
    /// The terminal, and the sender the log pump fans its output out with; clients'
    /// outputs end once that sender is dropped.
    #[must_use]
    pub fn new(terminal: Terminal) -> (Arc<Self>, broadcast::Sender<Chunk>) {
        let (tx, _) = broadcast::channel(BACKLOG);
        let this = Arc::new(Self {
            terminal,
            output: tx.downgrade(),
        });
        (this, tx)
    }

    /// The master side.
    #[must_use]
    pub fn terminal(&self) -> &Terminal {
        &self.terminal
    }

    /// The terminal's output from now on, until the container has ended and its output
    /// drained; `None` once it has.
    #[must_use]
    pub fn output(&self) -> Option<ProcessOutput> {
        let mut chunks = self.output.upgrade()?.subscribe();
        let (reader, mut writer) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            loop {
                match chunks.recv().await {
                    Ok(chunk) => {
                        if writer.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "a slow attached client missed terminal output");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            let _ = writer.shutdown().await;
        });
        Some(Box::pin(reader))
    }
}

/// The socket libcontainer sends a new container's terminal master to (`--console-socket`).
#[derive(Debug)]
pub(crate) struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on `console.sock` in `dir`.
    ///
    /// # Errors
    /// When the directory cannot be opened or the socket not bound.
    pub(crate) fn bind(dir: &Path) -> io::Result<Self> {
        let path = dir.join(CONSOLE_SOCKET);
        // Bound through the directory's descriptor: a socket path is limited to 108 bytes,
        // and bundle paths (state directory, pod UID, container name) can be longer.
        let dir_fd = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let short = format!("/proc/self/fd/{}/{CONSOLE_SOCKET}", dir_fd.as_raw_fd());
        let listener = UnixListener::bind(short)?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, path })
    }

    /// The socket's path, for libcontainer.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The master the container's init sent, waiting at most `timeout` for its connection
    /// (it connects, sends and closes before libcontainer's create returns).
    ///
    /// # Errors
    /// When nothing came in time or the message carries no descriptor.
    pub(crate) fn receive(&self, timeout: Duration) -> io::Result<OwnedFd> {
        let mut poll = libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, count 1.
        let ready = unsafe { libc::poll(&raw mut poll, 1, millis) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if ready == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the container never sent its terminal",
            ));
        }
        let (conn, _) = self.listener.accept()?;
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(timeout))?;
        receive_fd(conn.as_fd())
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one message and returns the descriptor it carries (close-on-exec).
fn receive_fd(conn: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(got) = cmsg {
            fds.extend(got);
        }
    }
    let mut owned = fds.into_iter().map(|fd| {
        // SAFETY: SCM_RIGHTS installed these descriptors in this process for us alone.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    });
    owned.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the console message carried no descriptor",
        )
    })
}

/// Starts the keeper of a container's terminal: a forked process, in a session of its own,
/// holding a copy of `master` (so the terminal is not hung up, which would send `SIGHUP` to
/// the container, while no daemon holds it) until the container's init `init_pid` exits. A
/// later daemon takes the master from it with [`take_from_keeper`]. Returns its pid.
///
/// # Errors
/// If the pidfd, `/dev/null` or the fork fails.
pub(crate) fn spawn_keeper(master: &OwnedFd, init_pid: i32) -> io::Result<i32> {
    let init = pidfd_open(init_pid)?;
    let null = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let fds = [
        master.as_raw_fd(),
        init.as_raw_fd(),
        null.as_raw_fd(),
        ready_w.as_raw_fd(),
    ];
    // SAFETY: the child only makes raw syscalls (no allocation, no lock) and `_exit`s.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            // SAFETY: plain syscalls on descriptors this process holds; whatever fails, the
            // keeper exits or holds less, never touching memory of the daemon.
            unsafe { keep(fds) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            // Its name is set and the master in place once it writes (or it died: EOF).
            let mut byte = [0u8; 1];
            while matches!(
                nix::unistd::read(&ready_r, &mut byte),
                Err(nix::errno::Errno::EINTR)
            ) {}
            // The keeper is reaped by the daemon that made it; a later daemon is not its
            // parent and leaves that to the init process.
            std::thread::spawn(move || {
                while matches!(
                    nix::sys::wait::waitpid(child, None),
                    Err(nix::errno::Errno::EINTR)
                ) {}
            });
            Ok(child.as_raw())
        }
    }
}

/// The keeper's whole life, in the forked child: `[master, init pidfd, /dev/null, ready]`.
///
/// # Safety
/// Only to be called in a freshly forked child; never returns.
unsafe fn keep([master, init, null, ready]: [RawFd; 4]) -> ! {
    // SAFETY: (all below) syscalls on integers and descriptors, no memory of ours but the
    // constant name and one pollfd on the stack.
    unsafe {
        libc::setsid();
        // Moved up first so that the dup2s below cannot clobber one another.
        let master = libc::fcntl(master, libc::F_DUPFD_CLOEXEC, 100);
        let init = libc::fcntl(init, libc::F_DUPFD_CLOEXEC, 100);
        let ready = libc::fcntl(ready, libc::F_DUPFD_CLOEXEC, 100);
        for std in 0..3 {
            libc::dup2(null, std);
        }
        libc::dup2(master, KEEPER_FD);
        libc::dup2(init, KEEPER_INIT_FD);
        libc::prctl(libc::PR_SET_NAME, c"skiff-tty-keep".as_ptr(), 0, 0, 0);
        // Nothing else of the daemon's (listening sockets, pipes, other terminals) stays
        // open in here; the readiness pipe goes once written.
        libc::syscall(libc::SYS_close_range, KEEPER_INIT_FD + 1, ready - 1, 0);
        libc::syscall(libc::SYS_close_range, ready + 1, u32::MAX, 0);
        libc::write(ready, c"k".as_ptr().cast(), 1);
        libc::close(ready);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(signal, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut());
        let mut poll = libc::pollfd {
            fd: KEEPER_INIT_FD,
            events: libc::POLLIN,
            revents: 0,
        };
        // A pidfd turns readable once its process has exited.
        while libc::poll(&raw mut poll, 1, -1) < 0 && *libc::__errno_location() == libc::EINTR {}
        libc::_exit(0)
    }
}

/// A copy of the master the keeper `pid` holds, after checking that `pid` is a keeper
/// holding a terminal master (and not a recycled pid).
///
/// # Errors
/// When `pid` is gone, is not a keeper, or holds no terminal.
pub(crate) fn take_from_keeper(pid: i32) -> io::Result<OwnedFd> {
    let pidfd = pidfd_open(pid)?;
    // Read after the pidfd is open: if the name matches now, the pidfd is the keeper's.
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    if name.trim_end() != KEEPER_NAME {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} is not a terminal keeper"),
        ));
    }
    let master = pidfd_getfd(&pidfd, KEEPER_FD)?;
    if !is_pty_master(&master)? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("keeper {pid} holds no terminal"),
        ));
    }
    Ok(master)
}

/// Whether `fd` is a pseudo-terminal master (`/dev/ptmx`, character device 5:2).
fn is_pty_master(fd: &OwnedFd) -> io::Result<bool> {
    let stat = nix::sys::stat::fstat(fd)?;
    let kind =
        nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode) & nix::sys::stat::SFlag::S_IFMT;
    Ok(kind == nix::sys::stat::SFlag::S_IFCHR
        && nix::sys::stat::major(stat.st_rdev) == 5
        && nix::sys::stat::minor(stat.st_rdev) == 2)
}

/// Where the pid of a container's terminal keeper is kept, in its bundle directory.
pub(crate) fn keeper_file(bundle: &Path) -> PathBuf {
    bundle.join("tty-keeper.pid")
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn winsize(fd: BorrowedFd<'_>) -> (u16, u16) {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the fd is open and TIOCGWINSZ writes one winsize to the pointer.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &raw mut ws) };
        assert_eq!(rc, 0);
        (ws.ws_col, ws.ws_row)
    }

    #[test]
    fn the_console_socket_receives_a_master_sent_with_scm_rights() {
        // A directory deep enough that its socket path would not fit a sockaddr_un.
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let socket = ConsoleSocket::bind(&deep).unwrap();
        assert!(socket.path().as_os_str().len() > 108);
        let pty = nix::pty::openpty(None, None).unwrap();
        // What libcontainer's init does: connect (here through a short relative symlink's
        // equivalent, the directory's descriptor), send the master, close.
        let dir_fd = std::fs::File::open(&deep).unwrap();
        let short = format!("/proc/self/fd/{}/{CONSOLE_SOCKET}", dir_fd.as_raw_fd());
        let conn = std::os::unix::net::UnixStream::connect(short).unwrap();
        let fds = [pty.master.as_raw_fd()];
        nix::sys::socket::sendmsg::<()>(
            conn.as_raw_fd(),
            &[std::io::IoSlice::new(b"/dev/ptmx")],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(conn);
        let got = socket.receive(Duration::from_secs(5)).unwrap();
        assert!(is_pty_master(&got).unwrap());
        // The received descriptor is the same terminal: a size set on it shows on the slave.
        Terminal::new(got).unwrap().resize(91, 33).unwrap();
        assert_eq!(winsize(pty.slave.as_fd()), (91, 33));
        let path = socket.path().to_owned();
        drop(socket);
        assert!(!path.exists(), "the socket file is removed");
    }

    #[test]
    fn nothing_sent_is_a_timeout_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let socket = ConsoleSocket::bind(dir.path()).unwrap();
        let err = socket.receive(Duration::from_millis(50)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn every_attached_client_gets_the_output_until_the_pump_ends() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let (terminal, tx) = ContainerTerminal::new(Terminal::new(pty.master).unwrap());
        let mut first = terminal.output().unwrap();
        let mut second = terminal.output().unwrap();
        tx.send(Arc::from(&b"$ "[..])).unwrap();
        drop(tx);
        for out in [&mut first, &mut second] {
            let mut got = Vec::new();
            out.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"$ ");
        }
        assert!(terminal.output().is_none(), "no output once the pump ended");
    }

    #[tokio::test]
    async fn input_reaches_the_terminal_and_dropping_it_keeps_the_terminal() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let terminal = Terminal::new(pty.master).unwrap();
        let mut input = terminal.input().unwrap();
        input.write_all(b"ls\n").await.unwrap();
        drop(input);
        let mut buf = [0u8; 16];
        let n = nix::unistd::read(&pty.slave, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"ls\n");
        // The master is still open: the slave is not hung up.
        terminal.resize(10, 5).unwrap();
        assert_eq!(winsize(pty.slave.as_fd()), (10, 5));
    }

    #[test]
    fn the_keeper_hands_out_the_master_and_ends_with_the_container() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut init = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let init_pid = i32::try_from(init.id()).unwrap();
        let keeper = spawn_keeper(&pty.master, init_pid).unwrap();
        // What a daemon that restarted finds: the master, through the keeper alone.
        drop(pty.master);
        let taken = take_from_keeper(keeper).unwrap();
        Terminal::new(taken).unwrap().resize(77, 22).unwrap();
        assert_eq!(winsize(pty.slave.as_fd()), (77, 22));
        // The keeper holds nothing of ours but the master and the init's pidfd (once it
        // has closed the readiness pipe it wrote to).
        let fds = || -> Vec<String> {
            std::fs::read_dir(format!("/proc/{keeper}/fd"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        };
        let settled = std::time::Instant::now() + Duration::from_secs(10);
        while fds().len() != 5 && std::time::Instant::now() < settled {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(fds(), ["0", "1", "2", "3", "4"]);
        init.kill().unwrap();
        init.wait().unwrap();
        let gone = std::time::Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{keeper}")).exists() {
            assert!(
                std::time::Instant::now() < gone,
                "the keeper outlived its container"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_process_that_is_not_a_keeper_gives_no_terminal() {
        let err = take_from_keeper(i32::try_from(std::process::id()).unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
