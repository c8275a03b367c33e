//! `delete`: force-removes a container: kills it if needed, waits for the exit watcher (so
//! the OOM counter and the last output are captured), then removes libcontainer's state
//! with the v1 cgroup, the v2 cgroup directory and the bundle.

use std::{fs, time::Duration};

use libcontainer::container::Container;

use super::{
    RuntimeError,
    container_start::remove_cgroup_dir,
    libcontainer::{Libcontainer, blocking},
    pidfd::pidfd_signal,
};

/// How long `delete` waits for the init to be reaped after `SIGKILL`.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

impl Libcontainer {
    pub(super) async fn delete_container(&self, id: &str) -> Result<(), RuntimeError> {
        let tracked = self.tracked(id);
        if let Some(t) = &tracked {
            if let Some(pidfd) = &t.pidfd
                && t.exit.borrow().is_none()
            {
                pidfd_signal(pidfd, libc::SIGKILL)
                    .map_err(|e| RuntimeError::io(id, "sending SIGKILL", e))?;
            }
            let mut exit = t.exit.clone();
            if tokio::time::timeout(KILL_TIMEOUT, exit.wait_for(Option::is_some))
                .await
                .is_err()
            {
                tracing::warn!(id, "init not reaped after SIGKILL; deleting anyway");
            }
        }
        let meta = match &tracked {
            Some(t) => Some(t.meta.clone()),
            None => self.load_meta(id).await?,
        };

        let root = self.state_root.join(id);
        let id_owned = id.to_owned();
        blocking(id, move || {
            if root.exists() {
                let mut container =
                    Container::load(root).map_err(|e| RuntimeError::lc(&id_owned, "load", &e))?;
                container
                    .delete(true)
                    .map_err(|e| RuntimeError::lc(&id_owned, "delete", &e))?;
            }
            if let Some(meta) = meta {
                if let Some(dir) = &meta.cgroup_v2_path
                    && !remove_cgroup_dir(dir)
                {
                    return Err(RuntimeError::io(
                        &id_owned,
                        format!("removing {}", dir.display()),
                        std::io::Error::from(std::io::ErrorKind::ResourceBusy),
                    ));
                }
                match fs::remove_dir_all(&meta.bundle_dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(RuntimeError::io(&id_owned, "removing bundle", e)),
                }
            }
            Ok(())
        })
        .await?;
        self.lock().remove(id);
        tracing::info!(id, "container deleted");
        Ok(())
    }
}
