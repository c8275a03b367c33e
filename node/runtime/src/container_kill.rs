//! `kill`: signals a container's init process, through its pidfd when this process
//! supervises it, else through the pid in libcontainer's state.

use libcontainer::container::{Container, ContainerStatus};
use nix::{errno::Errno, sys::signal::Signal, unistd::Pid};

use super::{
    RuntimeError,
    libcontainer::{Libcontainer, blocking},
    pidfd::pidfd_signal,
};

impl Libcontainer {
    pub(super) async fn kill_container(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let sig = Signal::try_from(signal).map_err(|e| RuntimeError::io(id, "signal", e.into()))?;
        if let Some(tracked) = self.tracked(id) {
            let Some(pidfd) = &tracked.pidfd else {
                return Ok(());
            };
            if tracked.exit.borrow().is_some() {
                return Ok(());
            }
            tracing::debug!(id, pid = tracked.pid, signal = %sig, "signalling container");
            return pidfd_signal(pidfd, signal)
                .map_err(|e| RuntimeError::io(id, format!("sending {sig}"), e));
        }
        let root = self.state_root.join(id);
        let id_owned = id.to_owned();
        blocking(id, move || {
            if !root.exists() {
                return Ok(());
            }
            let container =
                Container::load(root).map_err(|e| RuntimeError::lc(&id_owned, "load", &e))?;
            // Not libcontainer's kill(): it records Stopped even when the process survives.
            if container.status() == ContainerStatus::Stopped {
                return Ok(());
            }
            let Some(pid) = container.pid() else {
                return Ok(());
            };
            match nix::sys::signal::kill(Pid::from_raw(pid.as_raw()), sig) {
                Ok(()) | Err(Errno::ESRCH) => Ok(()),
                Err(e) => Err(RuntimeError::io(
                    &id_owned,
                    format!("sending {sig}"),
                    e.into(),
                )),
            }
        })
        .await
    }
}
