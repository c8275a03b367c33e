//! `list` and `adopt`: finds the containers libcontainer's state directory holds (for
//! example after the daemon restarted) and takes over supervising running ones.

use std::{fs, path::PathBuf};

use libcontainer::container::{Container, ContainerStatus};

use super::{
    ContainerInfo, ExitStatus, RuntimeError,
    container_start::open_readers,
    libcontainer::{BundleMeta, Libcontainer, blocking},
};

/// One container as libcontainer's state describes it.
struct Found {
    pid: Option<i32>,
    running: bool,
    bundle: PathBuf,
}

fn load(root: PathBuf, id: &str) -> Result<Option<Found>, RuntimeError> {
    if !root.join("state.json").exists() {
        return Ok(None);
    }
    let container = Container::load(root).map_err(|e| RuntimeError::lc(id, "load", &e))?;
    let running = !matches!(container.status(), ContainerStatus::Stopped);
    Ok(Some(Found {
        pid: container.pid().map(i32::from),
        running,
        bundle: container.bundle().clone(),
    }))
}

impl Libcontainer {
    /// The bundle metadata of `id`, found through libcontainer's state.
    pub(super) async fn load_meta(&self, id: &str) -> Result<Option<BundleMeta>, RuntimeError> {
        let root = self.state_root.join(id);
        let id_owned = id.to_owned();
        blocking(id, move || {
            Ok(load(root, &id_owned)?.and_then(|f| BundleMeta::load(&f.bundle)))
        })
        .await
    }

    pub(super) async fn list_containers(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let state_root = self.state_root.clone();
        blocking("*", move || {
            let entries = match fs::read_dir(&state_root) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(RuntimeError::io("*", "reading state directory", e)),
            };
            let mut out = Vec::new();
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                match load(entry.path(), &id) {
                    Ok(Some(found)) => out.push(ContainerInfo {
                        log_path: BundleMeta::load(&found.bundle).map(|m| m.log_path),
                        id,
                        pid: found.pid,
                        running: found.running,
                    }),
                    Ok(None) => {}
                    Err(err) => tracing::warn!(id, error = %err, "skipping unreadable container"),
                }
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
        .await
    }

    pub(super) async fn adopt_container(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        if let Some(t) = self.tracked(id) {
            return Ok(ContainerInfo {
                id: id.to_owned(),
                pid: Some(t.pid),
                running: t.exit.borrow().is_none(),
                log_path: Some(t.meta.log_path.clone()),
            });
        }
        let root = self.state_root.join(id);
        let id_owned = id.to_owned();
        let found = blocking(id, move || load(root, &id_owned))
            .await?
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_owned() })?;
        let meta = BundleMeta::load(&found.bundle)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_owned() })?;
        let info = ContainerInfo {
            id: id.to_owned(),
            pid: found.pid,
            running: found.running,
            log_path: Some(meta.log_path.clone()),
        };
        if let (true, Some(pid)) = (found.running, found.pid) {
            let readers = open_readers(&meta.bundle_dir)
                .map_err(|e| RuntimeError::io(id, "reopening stdio fifos", e))?;
            let master = meta.tty.then(|| adopt_terminal(&meta)).flatten();
            self.supervise(meta, pid, readers, false, master)?;
            tracing::info!(id, pid, "adopted running container");
        } else {
            // It ended while no daemon watched: remember that, code unknown.
            self.track_exited(meta, found.pid.unwrap_or(0));
            tracing::info!(id, "adopted exited container");
        }
        Ok(info)
    }

    fn track_exited(&self, meta: BundleMeta, pid: i32) {
        let oom_killed = self.cgroup_files(&meta.cgroups_path).oom_kills() > 0;
        let status = ExitStatus {
            code: None,
            signal: None,
            oom_killed,
            finished_at: std::time::SystemTime::now(),
        };
        let (_tx, rx) = tokio::sync::watch::channel(Some(status));
        let tracked = super::libcontainer::Tracked {
            meta: meta.clone(),
            pid,
            pidfd: None,
            exit: rx,
            tasks: Vec::new(),
            terminal: None,
        };
        self.lock()
            .entry(meta.id)
            .or_insert_with(|| std::sync::Arc::new(tracked));
    }
}

/// The master of an adopted `tty: true` container's terminal, from the keeper the daemon
/// that started it left; `None` (logged) when it cannot be had: the container runs on, its
/// output no longer reaches the log and attaching is refused.
fn adopt_terminal(meta: &BundleMeta) -> Option<std::os::fd::OwnedFd> {
    let file = super::terminal::keeper_file(&meta.bundle_dir);
    let taken = std::fs::read_to_string(&file)
        .map_err(|e| e.to_string())
        .and_then(|pid| pid.trim().parse::<i32>().map_err(|e| e.to_string()))
        .and_then(|pid| super::terminal::take_from_keeper(pid).map_err(|e| e.to_string()));
    match taken {
        Ok(master) => Some(master),
        Err(err) => {
            tracing::warn!(id = meta.id, %err, "the terminal of an adopted container is lost");
            None
        }
    }
}
