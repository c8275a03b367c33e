//! Running a command inside a running container (`kubectl exec`, exec probes): libcontainer's
//! tenant builder joins the container's namespaces and cgroup, with pipes or a
//! pseudo-terminal for stdio, and the exit code comes from `waitpid` on the tenant, which
//! is this process's child.

use std::{
    collections::HashMap,
    io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use libcontainer::{
    container::{Container, builder::ContainerBuilder},
    syscall::syscall::SyscallType,
};
use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::{
        signal::{Signal, kill},
        wait::{WaitStatus, waitpid},
    },
    unistd::{Pid, pipe2},
};
use oci_spec::runtime::Spec;
use tokio::{io::AsyncReadExt, net::unix::pipe, sync::oneshot};

pub use crate::terminal::{ProcessInput, ProcessOutput, Terminal};
use crate::{container_start::join_v2_cgroup, libcontainer::BundleMeta};

/// How an exec'd process is wired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecIo {
    /// Give the process a standard input the caller writes to; otherwise it reads
    /// `/dev/null`-like EOF at once.
    pub stdin: bool,
    /// Run under a pseudo-terminal (stdout and stderr merged into it).
    pub tty: bool,
    /// Extra environment as `KEY=value`, over the container's own.
    pub env: Vec<String>,
}

/// Why a command could not be run in a container.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The container's state cannot be read (unknown id, or not created by this runtime).
    #[error("loading container {id}: {source}")]
    Load {
        /// The container id.
        id: String,
        /// libcontainer's failure.
        source: Box<libcontainer::error::LibcontainerError>,
    },
    /// The container's bundle spec cannot be read.
    #[error("reading the spec of container {id}: {source}")]
    Spec {
        /// The container id.
        id: String,
        /// The failure.
        source: oci_spec::OciSpecError,
    },
    /// libcontainer refused or failed to start the process (not running, bad command, ...).
    #[error("starting {command:?} in container {id}: {message}")]
    Start {
        /// The container id.
        id: String,
        /// The command.
        command: Vec<String>,
        /// libcontainer's failure, as the forked copy that ran it reported it.
        message: String,
    },
    /// Pipes or the pseudo-terminal could not be made.
    #[error("setting up stdio: {0}")]
    Stdio(#[source] io::Error),
    /// Waiting for the process failed.
    #[error("waiting for process {pid}: {source}")]
    Wait {
        /// The tenant's PID.
        pid: i32,
        /// The failure.
        source: nix::Error,
    },
    /// The command did not finish in time and was killed.
    #[error("command timed out after {0:?}")]
    Timeout(Duration),
    /// The blocking task running libcontainer went away.
    #[error("the exec task failed: {0}")]
    Task(String),
}

/// A process started in a container: its stdio ends and its exit.
pub struct ExecProcess {
    /// The tenant's PID on the host.
    pub pid: i32,
    /// Its standard input (when asked for; with a TTY, the terminal).
    pub stdin: Option<ProcessInput>,
    /// Its standard output (with a TTY, the terminal).
    pub stdout: Option<ProcessOutput>,
    /// Its standard error (never with a TTY).
    pub stderr: Option<ProcessOutput>,
    /// The terminal's master side, for resizes.
    pub terminal: Option<Terminal>,
    exit: oneshot::Receiver<Result<i32, ExecError>>,
}

impl std::fmt::Debug for ExecProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecProcess")
            .field("pid", &self.pid)
            .field("tty", &self.terminal.is_some())
            .finish_non_exhaustive()
    }
}

impl ExecProcess {
    /// Waits for the process; its exit code, or 128 + the signal that ended it.
    ///
    /// # Errors
    /// When waiting fails.
    pub async fn wait(self) -> Result<i32, ExecError> {
        self.exit
            .await
            .map_err(|_| ExecError::Task("the waiter went away".into()))?
    }

    /// Keeps the outputs the caller asked for and reads and drops the others, so the
    /// process never blocks on a full pipe nobody reads.
    pub fn keep_outputs(&mut self, stdout: bool, stderr: bool) {
        for (out, wanted) in [(&mut self.stdout, stdout), (&mut self.stderr, stderr)] {
            if !wanted && let Some(out) = out.take() {
                tokio::spawn(discard(out));
            }
        }
    }
}

async fn discard(mut out: ProcessOutput) {
    let mut buf = vec![0; 16 * 1024];
    while matches!(out.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Starts `command` in the running container `id` whose libcontainer state lives under
/// `state_root` (`<state>/containers-state`), with the container's user, working directory
/// and environment (plus `opts.env`).
///
/// # Errors
/// [`ExecError::Load`] for an unknown container, [`ExecError::Start`] when it is not running
/// or the command cannot start.
pub async fn exec(
    state_root: &Path,
    id: &str,
    command: &[String],
    opts: ExecIo,
) -> Result<ExecProcess, ExecError> {
    let state_root = state_root.to_owned();
    let id = id.to_owned();
    let command = command.to_vec();
    let (stdio, ours) = Stdio::new(opts.stdin, opts.tty).map_err(ExecError::Stdio)?;
    let pid =
        tokio::task::spawn_blocking(move || start(&state_root, &id, &command, &opts.env, stdio))
            .await
            .map_err(|e| ExecError::Task(e.to_string()))??;
    let (done, exit) = oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let _ = done.send(wait_exit(pid));
    });
    let process = ours.into_process(pid, exit);
    tracing::debug!(pid = pid.as_raw(), "exec started");
    Ok(process)
}

/// Runs `command` for an exec probe: output discarded, killed (SIGKILL) at `timeout`.
///
/// # Errors
/// [`ExecError::Timeout`] when it ran too long; the errors of [`exec`] otherwise.
pub async fn exec_status(
    state_root: &Path,
    id: &str,
    command: &[String],
    timeout: Duration,
) -> Result<i32, ExecError> {
    let mut process = exec(state_root, id, command, ExecIo::default()).await?;
    let pid = Pid::from_raw(process.pid);
    process.keep_outputs(false, false);
    let Ok(result) = tokio::time::timeout(timeout, process.wait()).await else {
        // The waiter still owns the reaping; it sees the kill and finishes.
        if let Err(err) = kill(pid, Signal::SIGKILL) {
            tracing::debug!(pid = pid.as_raw(), %err, "killing a timed-out probe");
        }
        return Err(ExecError::Timeout(timeout));
    };
    result
}

/// The child's ends of its stdio, handed to libcontainer.
struct Stdio {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// Our ends of the child's stdio.
enum Ours {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Pty {
        master: OwnedFd,
    },
}

impl Stdio {
    fn new(stdin: bool, tty: bool) -> io::Result<(Self, Ours)> {
        if tty {
            let pty = nix::pty::openpty(None, None)?;
            set_cloexec_nonblock(&pty.master)?;
            set_cloexec(&pty.slave)?;
            let child = Self {
                stdin: Some(pty.slave.try_clone()?),
                stdout: pty.slave.try_clone()?,
                stderr: pty.slave,
            };
            return Ok((child, Ours::Pty { master: pty.master }));
        }
        // CLOEXEC so that processes forked meanwhile (other containers, other execs) do not
        // inherit our ends and hold the pipes open.
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (child_in, our_in) = if stdin {
            let (in_r, in_w) = pipe2(OFlag::O_CLOEXEC)?;
            (Some(in_r), Some(in_w))
        } else {
            // An empty, closed pipe: the process reads EOF at once.
            let (in_r, in_w) = pipe2(OFlag::O_CLOEXEC)?;
            drop(in_w);
            (Some(in_r), None)
        };
        Ok((
            Self {
                stdin: child_in,
                stdout: out_w,
                stderr: err_w,
            },
            Ours::Pipes {
                stdin: our_in,
                stdout: out_r,
                stderr: err_r,
            },
        ))
    }
}

impl Ours {
    fn into_process(
        self,
        pid: Pid,
        exit: oneshot::Receiver<Result<i32, ExecError>>,
    ) -> ExecProcess {
        let reader = |fd: OwnedFd| -> Option<ProcessOutput> {
            match pipe::Receiver::from_owned_fd_unchecked(fd) {
                Ok(r) => Some(Box::pin(r)),
                Err(err) => {
                    tracing::warn!(%err, "registering an exec output failed");
                    None
                }
            }
        };
        let writer = |fd: OwnedFd| -> Option<ProcessInput> {
            match pipe::Sender::from_owned_fd(fd) {
                Ok(w) => Some(Box::pin(w)),
                Err(err) => {
                    tracing::warn!(%err, "registering an exec input failed");
                    None
                }
            }
        };
        let (stdin, stdout, stderr, terminal) = match self {
            Ours::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let _ = set_nonblock(&stdout).and(set_nonblock(&stderr));
                (stdin.and_then(writer), reader(stdout), reader(stderr), None)
            }
            Ours::Pty { master } => match Terminal::new(master) {
                // Reader, writer and resizer each hold their own descriptor of the master.
                Ok(t) => (
                    t.input().ok(),
                    t.reader().ok().map(|r| Box::pin(r) as ProcessOutput),
                    None,
                    Some(t),
                ),
                Err(err) => {
                    tracing::warn!(%err, "setting up an exec terminal failed");
                    (None, None, None, None)
                }
            },
        };
        ExecProcess {
            pid: pid.as_raw(),
            stdin,
            stdout,
            stderr,
            terminal,
            exit,
        }
    }
}

fn set_nonblock(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    Ok(())
}

fn set_cloexec_nonblock(fd: &OwnedFd) -> io::Result<()> {
    set_cloexec(fd)?;
    set_nonblock(fd)
}

/// The container's process settings an exec inherits: user, groups and working directory.
struct Inherited {
    uid: Option<u32>,
    gid: Option<u32>,
    additional_gids: Vec<u32>,
    cwd: Option<PathBuf>,
}

fn inherited(container: &Container, id: &str) -> Result<Inherited, ExecError> {
    let spec =
        Spec::load(container.bundle().join("config.json")).map_err(|source| ExecError::Spec {
            id: id.to_owned(),
            source,
        })?;
    let process = spec.process().as_ref();
    let user = process.map(oci_spec::runtime::Process::user);
    Ok(Inherited {
        uid: user.map(oci_spec::runtime::User::uid),
        gid: user.map(oci_spec::runtime::User::gid),
        additional_gids: user
            .and_then(|u| u.additional_gids().clone())
            .unwrap_or_default(),
        cwd: process.map(|p| p.cwd().clone()),
    })
}

/// Builds the tenant; blocking (libcontainer forks and waits for the tenant's init).
fn start(
    state_root: &Path,
    id: &str,
    command: &[String],
    env: &[String],
    stdio: Stdio,
) -> Result<Pid, ExecError> {
    let load_err = |source| ExecError::Load {
        id: id.to_owned(),
        source: Box::new(source),
    };
    let container = Container::load(state_root.join(id)).map_err(load_err)?;
    let inherited = inherited(&container, id)?;
    // On a hybrid host libcontainer puts the tenant in the container's v1 cgroups only; it
    // joins the container's v2 directory too, where the node's socket hooks see it (a
    // `kubectl exec` of `wget <service>` reaches the Service as the container does).
    let cgroup_v2 = BundleMeta::load(container.bundle()).and_then(|m| m.cgroup_v2_path);
    let env: HashMap<String, String> = env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let start_err = |message| ExecError::Start {
        id: id.to_owned(),
        command: command.to_vec(),
        message,
    };
    let build = || {
        if let Some(dir) = &cgroup_v2 {
            // This forked copy joins; the tenant it forks inherits the membership.
            join_v2_cgroup(dir, nix::unistd::getpid().as_raw())
                .map_err(|e| format!("joining {}: {e}", dir.display()))?;
        }
        let mut builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_root_path(state_root)
            .map_err(|e| e.to_string())?
            .with_executor(super::executor::EnvExecutor::default())
            .with_stdout(stdio.stdout)
            .with_stderr(stdio.stderr);
        if let Some(stdin) = stdio.stdin {
            builder = builder.with_stdin(stdin);
        }
        builder
            .as_tenant()
            .with_detach(false)
            .with_container_args(command.to_vec())
            .with_env(env)
            .with_cwd(inherited.cwd)
            .with_user(inherited.uid)
            .with_group(inherited.gid)
            .with_additional_gids(inherited.additional_gids)
            .build()
            .map(i32::from)
            .map_err(|e| e.to_string())
    };
    // A failed build's intermediate and init processes are reaped by the forked copy: left
    // as zombies, the init one would sit in the container's PID namespace and keep the
    // container's own init from ever finishing its exit.
    super::forked::in_forked_copy(build)
        .map_err(|e| start_err(format!("forking: {e}")))
        .and_then(|r| r.map_err(start_err))
        .map(Pid::from_raw)
}

/// Reaps the tenant: its exit code, or 128 + signal as a shell reports it.
fn wait_exit(pid: Pid) -> Result<i32, ExecError> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(source) => {
                return Err(ExecError::Wait {
                    pid: pid.as_raw(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn pipe_stdio_hands_the_child_its_ends_and_keeps_ours_async() {
        let (child, ours) = Stdio::new(true, false).unwrap();
        let (tx, rx) = oneshot::channel();
        drop(tx);
        let mut process = ours.into_process(Pid::from_raw(1), rx);
        // What the child writes to its stdout reaches our reader.
        nix::unistd::write(&child.stdout, b"out").unwrap();
        drop(child.stdout);
        let mut got = String::new();
        process
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut got)
            .await
            .unwrap();
        assert_eq!(got, "out");
        // What we write to stdin reaches the child's end.
        let mut stdin = process.stdin.take().unwrap();
        stdin.write_all(b"in").await.unwrap();
        drop(stdin);
        let mut buf = [0; 8];
        let n = nix::unistd::read(child.stdin.as_ref().unwrap(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"in");
        assert!(process.terminal.is_none());
        assert!(process.wait().await.is_err());
    }

    #[tokio::test]
    async fn without_stdin_the_child_reads_eof_at_once() {
        let (child, ours) = Stdio::new(false, false).unwrap();
        let (_tx, rx) = oneshot::channel();
        let process = ours.into_process(Pid::from_raw(1), rx);
        assert!(process.stdin.is_none());
        let mut buf = [0; 8];
        assert_eq!(
            nix::unistd::read(child.stdin.as_ref().unwrap(), &mut buf).unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn a_tty_merges_output_and_resizes_the_terminal() {
        let (child, ours) = Stdio::new(true, true).unwrap();
        let (_tx, rx) = oneshot::channel();
        let mut process = ours.into_process(Pid::from_raw(1), rx);
        assert!(process.stderr.is_none());
        let terminal = process.terminal.take().unwrap();
        terminal.resize(120, 40).unwrap();
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the slave fd is open and TIOCGWINSZ writes one winsize to the pointer.
        let rc = unsafe { libc::ioctl(child.stdout.as_raw_fd(), libc::TIOCGWINSZ, &raw mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (120, 40));
        nix::unistd::write(&child.stderr, b"x").unwrap();
        let mut buf = [0; 8];
        let n = process
            .stdout
            .as_mut()
            .unwrap()
            .read(&mut buf)
            .await
            .unwrap();
        assert_eq!(&buf[..n], b"x");
    }

    #[tokio::test]
    async fn an_unknown_container_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = exec(dir.path(), "skt-none", &["true".into()], ExecIo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::Load { .. }), "{err}");
    }
}
