//! Watches a container's init process through a pidfd and publishes its exit status once
//! the log pump has drained; `wait` reads that cached status.
//!
//! Containers this process started are its children (libcontainer clones the init with
//! `CLONE_PARENT`), so the watcher reaps them with `waitid(P_PIDFD)` and knows the exit
//! code. Containers adopted from an earlier daemon process are not: their pidfd only says
//! that they ended, and the code is reported unknown.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::Arc,
    time::SystemTime,
};

use nix::{
    errno::Errno,
    sys::wait::{Id, WaitPidFlag, WaitStatus, waitid},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::unix::pipe,
    sync::{oneshot, watch},
};

use super::{
    ExitStatus, RuntimeError,
    libcontainer::{BundleMeta, Libcontainer, Tracked},
    log_pump::{CriLogWriter, pump},
    pidfd::pidfd_open,
    stats::CgroupFiles,
    terminal::{ContainerTerminal, Terminal},
};

/// How long the watcher waits for the log pump to drain after the init exited.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until the process behind `pidfd` ends; reaps it if it is our child.
/// Returns `(code, signal)`, both `None` when it was not our child.
async fn await_exit(pidfd: Arc<OwnedFd>) -> (Option<i32>, Option<i32>) {
    // SAFETY: the AsyncFd owns a clone of the Arc, so the descriptor stays open and refers
    // to the same pidfd for as long as it is registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(Arc::clone(&pidfd), Interest::READABLE) };
    match registered {
        Ok(fd) => {
            // A pidfd turns readable once its process has terminated.
            if let Ok(mut guard) = fd.readable().await {
                guard.retain_ready();
            }
        }
        Err(err) => {
            tracing::warn!(err = %err, "pidfd not pollable; waiting on a blocking thread");
            let fd = Arc::clone(&pidfd);
            let _ = tokio::task::spawn_blocking(move || {
                let mut poll = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, count 1, infinite timeout.
                while unsafe { libc::poll(&raw mut poll, 1, -1) } < 0 {}
            })
            .await;
        }
    }
    reap(&pidfd)
}

fn reap(pidfd: &OwnedFd) -> (Option<i32>, Option<i32>) {
    loop {
        match waitid(
            Id::PIDFd(pidfd.as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        ) {
            Ok(WaitStatus::Exited(_, code)) => return (Some(code), None),
            Ok(WaitStatus::Signaled(_, signal, _)) => return (None, Some(signal as i32)),
            Err(Errno::EINTR) => {}
            // ECHILD: adopted, not our child. StillAlive cannot follow a readable pidfd.
            Ok(_) | Err(_) => return (None, None),
        }
    }
}

impl Libcontainer {
    /// Starts the log pump and the exit watcher of a running container and tracks it. With
    /// a terminal's master, the pump reads the terminal instead of the stdout FIFO and fans
    /// its output out to attached clients.
    pub(super) fn supervise(
        &self,
        meta: BundleMeta,
        pid: i32,
        readers: (pipe::Receiver, pipe::Receiver),
        own_child: bool,
        master: Option<OwnedFd>,
    ) -> Result<(), RuntimeError> {
        let id = meta.id.clone();
        if self.lock().contains_key(&id) {
            return Err(RuntimeError::AlreadyExists { id });
        }
        let pidfd = Arc::new(pidfd_open(pid).map_err(|e| RuntimeError::io(&id, "pidfd_open", e))?);
        let writer = CriLogWriter::open(&meta.log_path, self.rotation).map_err(|e| {
            RuntimeError::io(&id, format!("opening {}", meta.log_path.display()), e)
        })?;
        let (stdout, stderr) = readers;
        let (stdout, terminal, tap) = match master {
            Some(master) => {
                let terminal = Terminal::new(master)
                    .map_err(|e| RuntimeError::io(&id, "setting up the terminal", e))?;
                let reader = terminal
                    .reader()
                    .map_err(|e| RuntimeError::io(&id, "reading the terminal", e))?;
                let (terminal, tap) = ContainerTerminal::new(terminal);
                (reader, Some(terminal), Some(tap))
            }
            None => (stdout, None, None),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let pump_task = tokio::spawn(pump(
            stdout,
            stderr,
            writer,
            async move {
                let _ = stop_rx.await;
            },
            tap,
        ));
        let (exit_tx, exit_rx) = watch::channel(None);
        let cgroup = self.cgroup_files(&meta.cgroups_path);
        let watcher = tokio::spawn(watch_exit(
            id.clone(),
            Arc::clone(&pidfd),
            cgroup,
            stop_tx,
            pump_task,
            exit_tx,
            own_child,
        ));
        let tracked = Tracked {
            meta,
            pid,
            pidfd: Some(pidfd),
            exit: exit_rx,
            tasks: vec![watcher],
            terminal,
        };
        // Two concurrent adopts may race here; the loser's tasks stop when it is dropped.
        self.lock().entry(id).or_insert_with(|| Arc::new(tracked));
        Ok(())
    }

    pub(super) async fn wait_container(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let tracked = self
            .tracked(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_owned() })?;
        let mut exit = tracked.exit.clone();
        drop(tracked);
        let status = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| RuntimeError::Task {
                id: id.to_owned(),
                message: "exit watcher stopped".into(),
            })?;
        Ok(status.expect("wait_for returned a published status"))
    }
}

async fn watch_exit(
    id: String,
    pidfd: Arc<OwnedFd>,
    cgroup: CgroupFiles,
    stop_pump: oneshot::Sender<()>,
    pump_task: tokio::task::JoinHandle<()>,
    exit: watch::Sender<Option<ExitStatus>>,
    own_child: bool,
) {
    // Aborting this task (the runtime was dropped) must stop the pump as well.
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _pump_guard = AbortOnDrop(pump_task.abort_handle());

    let (code, signal) = await_exit(pidfd).await;
    if code.is_none() && signal.is_none() {
        tracing::debug!(id, own_child, "container exited; exit code unknown");
    }
    let finished_at = SystemTime::now();
    // Read before anyone deletes the cgroup.
    let oom_killed = tokio::task::spawn_blocking(move || cgroup.oom_kills() > 0)
        .await
        .unwrap_or(false);
    let _ = stop_pump.send(());
    if tokio::time::timeout(DRAIN_TIMEOUT, pump_task)
        .await
        .is_err()
    {
        tracing::warn!(id, "log pump did not drain in time");
    }
    let status = ExitStatus {
        code,
        signal,
        oom_killed,
        finished_at,
    };
    tracing::info!(id, ?code, ?signal, oom_killed, "container exited");
    exit.send_replace(Some(status));
}
