//! A pod's shared namespaces (network, IPC, UTS), bind-mounted onto files in the state
//! directory so containers can join them by path and they outlive a daemon restart; and
//! running code inside a pod's network namespace.
//!
//! Namespace changes are per thread, so each happens on a dedicated OS thread that exits
//! afterwards: a tokio worker that unshared or setns'd would carry the wrong namespace into
//! every task it runs next.

use std::{
    fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
    sys::statfs::{NSFS_MAGIC, statfs},
    unistd::sethostname,
};
use tokio::sync::oneshot;

/// Errors creating, entering or removing namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// A namespace file could not be created, opened or removed.
    #[error("namespace file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A namespace syscall failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The errno.
        source: Errno,
    },
    /// The dedicated thread could not be started or died before answering.
    #[error("namespace thread: {0}")]
    Thread(String),
    /// Nothing accepted a connection to the port inside the namespace.
    #[error("connecting to localhost:{port} in the pod: {source}")]
    Connect {
        /// The port.
        port: u16,
        /// The cause.
        source: io::Error,
    },
    /// The rtnetlink socket inside a new network namespace could not be opened.
    #[error("rtnetlink socket in the new network namespace: {0}")]
    Netlink(#[source] io::Error),
}

/// Where a pod's namespaces are bind-mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacePaths {
    /// The network namespace.
    pub net: PathBuf,
    /// The IPC namespace.
    pub ipc: PathBuf,
    /// The UTS namespace.
    pub uts: PathBuf,
}

impl NamespacePaths {
    fn each(&self) -> [(&Path, &'static str); 3] {
        [
            (self.net.as_path(), "net"),
            (self.ipc.as_path(), "ipc"),
            (self.uts.as_path(), "uts"),
        ]
    }
}

/// Runs `f` on a fresh OS thread and awaits its answer without blocking the runtime.
async fn on_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T, NamespaceError> + Send + 'static,
) -> Result<T, NamespaceError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| NamespaceError::Thread(format!("spawning {name}: {e}")))?;
    rx.await
        .map_err(|_| NamespaceError::Thread(format!("{name} died without answering")))?
}

/// Creates new network, IPC and UTS namespaces (hostname `hostname`; a spare made ahead of
/// its pod keeps the node's until it is claimed) and bind-mounts them onto `paths`, whose
/// parent directories must exist. Leaves nothing behind on failure.
///
/// Returns an rtnetlink handle inside the new network namespace, opened by the thread that
/// made it (a socket keeps the namespace it was opened in), driven on the caller's runtime:
/// configuring the pod side needs no second thread that enters the namespace again.
///
/// # Errors
/// If a file cannot be created or a syscall fails.
pub(super) async fn create(
    paths: NamespacePaths,
    hostname: Option<String>,
) -> Result<rtnetlink::Handle, NamespaceError> {
    let runtime = tokio::runtime::Handle::current();
    let (connection, handle) = on_thread("skiff-ns-create", move || {
        let made = create_on_this_thread(&paths, hostname.as_deref()).and_then(|()| {
            // The socket registers with the caller's reactor, which needs its context.
            let _entered = runtime.enter();
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(NamespaceError::Netlink)?;
            Ok((connection, handle))
        });
        if made.is_err() {
            for (path, _) in paths.each() {
                let _ = remove(path);
            }
        }
        made
    })
    .await?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The body of [`create`]; it changes this thread's namespaces, so the thread must end
/// afterwards.
fn create_on_this_thread(
    paths: &NamespacePaths,
    hostname: Option<&str>,
) -> Result<(), NamespaceError> {
    for (path, _) in paths.each() {
        fs::File::create(path).map_err(|source| NamespaceError::File {
            path: path.to_owned(),
            source,
        })?;
    }
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
        .map_err(|source| NamespaceError::Sys {
            what: "unshare net, ipc and uts namespaces".into(),
            source,
        })?;
    if let Some(hostname) = hostname {
        set_hostname_here(hostname)?;
    }
    for (path, kind) in paths.each() {
        let source = format!("/proc/thread-self/ns/{kind}");
        mount(
            Some(source.as_str()),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|errno| NamespaceError::Sys {
            what: format!("bind-mounting {source} on {}", path.display()),
            source: errno,
        })?;
    }
    Ok(())
}

fn set_hostname_here(hostname: &str) -> Result<(), NamespaceError> {
    sethostname(hostname).map_err(|source| NamespaceError::Sys {
        what: format!("setting hostname {hostname}"),
        source,
    })
}

/// Sets the hostname inside the UTS namespace mounted at `path` (a spare sandbox given to
/// its pod): a thread enters the namespace, sets the name and ends.
///
/// # Errors
/// If the namespace cannot be entered or the name set.
pub(super) async fn set_hostname(path: PathBuf, hostname: String) -> Result<(), NamespaceError> {
    on_thread("skiff-ns-hostname", move || {
        enter(&path, CloneFlags::CLONE_NEWUTS)?;
        set_hostname_here(&hostname)
    })
    .await
}

/// Unmounts (lazily) and removes a namespace file; absent or unmounted files are fine.
///
/// # Errors
/// If unmounting or removal fails for another reason.
pub(super) fn remove(path: &Path) -> Result<(), NamespaceError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point; ENOENT: no file.
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
        Err(source) => {
            return Err(NamespaceError::Sys {
                what: format!("unmounting {}", path.display()),
                source,
            });
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NamespaceError::File {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Whether `path` has a namespace mounted on it.
#[must_use]
pub(super) fn is_mounted(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// How long a port-forward's connection inside a pod may take to be accepted.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A TCP connection to `localhost:port` in the network namespace mounted at `path`. The
/// socket is made on a thread inside the namespace and keeps it after the thread is gone.
///
/// # Errors
/// If the namespace cannot be entered ([`NamespaceError`]), or the connection is refused
/// ([`NamespaceError::Connect`]).
pub(super) async fn connect_local(
    path: PathBuf,
    port: u16,
) -> Result<std::net::TcpStream, NamespaceError> {
    on_thread("skiff-netns-dial", move || {
        enter(&path, CloneFlags::CLONE_NEWNET)?;
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|source| NamespaceError::Connect { port, source })
    })
    .await
}

/// Moves this thread into the namespace of kind `kind` mounted at `path`.
fn enter(path: &Path, kind: CloneFlags) -> Result<(), NamespaceError> {
    let file = fs::File::open(path).map_err(|source| NamespaceError::File {
        path: path.to_owned(),
        source,
    })?;
    setns(file.as_fd(), kind).map_err(|source| NamespaceError::Sys {
        what: format!("entering namespace {}", path.display()),
        source,
    })
}
