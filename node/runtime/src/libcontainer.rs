//! The [`ContainerRuntime`] over youki's libcontainer, run inside the node daemon's own
//! process: no shim, no external runtime binary. The verbs live in `container_*.rs`; this
//! file holds the state they share.

use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    ContainerConfig, ContainerInfo, ContainerRuntime, ExitStatus, RuntimeError, Started, Usage,
    config::LogRotation, stats::CgroupFiles, terminal::ContainerTerminal,
};

/// File in the bundle directory with what `adopt` and `delete` need after a restart.
pub(super) const META_FILE: &str = "skiff.json";
/// The container's stdout FIFO in its bundle directory.
pub(super) const STDOUT_FIFO: &str = "stdout.fifo";
/// The container's stderr FIFO in its bundle directory.
pub(super) const STDERR_FIFO: &str = "stderr.fifo";
/// The container's stdin FIFO (only with `stdin: true`).
pub(super) const STDIN_FIFO: &str = "stdin.fifo";

/// Runs containers with libcontainer, keeping its state under `state_root`.
#[derive(Debug)]
pub struct Libcontainer {
    /// libcontainer's root: one directory per container with its `state.json`.
    pub(super) state_root: PathBuf,
    /// Mount root of the cgroup hierarchies (`/sys/fs/cgroup`).
    pub(super) cgroup_root: PathBuf,
    /// How container logs rotate.
    pub(super) rotation: LogRotation,
    /// Containers whose exit this process watches and whose output it pumps.
    pub(super) tracked: Mutex<HashMap<String, Arc<Tracked>>>,
}

/// What survives in the bundle directory for a later daemon process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct BundleMeta {
    pub id: String,
    pub bundle_dir: PathBuf,
    pub log_path: PathBuf,
    pub cgroups_path: String,
    pub cgroup_v2_path: Option<PathBuf>,
    /// The container runs under a terminal (`tty: true`).
    #[serde(default)]
    pub tty: bool,
}

impl BundleMeta {
    pub(super) fn from_config(config: &ContainerConfig) -> Self {
        Self {
            id: config.id.clone(),
            bundle_dir: config.bundle_dir.clone(),
            log_path: config.log_path.clone(),
            cgroups_path: config.cgroups_path.clone(),
            cgroup_v2_path: config.cgroup_v2_path.clone(),
            tty: config.tty,
        }
    }

    pub(super) fn load(bundle_dir: &Path) -> Option<Self> {
        let text = std::fs::read(bundle_dir.join(META_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// A container this process supervises: its exit watcher and log pump.
#[derive(Debug)]
pub(super) struct Tracked {
    pub meta: BundleMeta,
    pub pid: i32,
    /// The init's pidfd, so signals never reach a recycled pid (`None` when it had
    /// already exited when adopted).
    pub pidfd: Option<Arc<OwnedFd>>,
    /// `Some` once the init exited and the log pump drained.
    pub exit: watch::Receiver<Option<ExitStatus>>,
    pub tasks: Vec<JoinHandle<()>>,
    /// The container's terminal (`tty: true`), while this process holds its master.
    pub terminal: Option<Arc<ContainerTerminal>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Dropping the runtime (a daemon shutting down) stops supervising but leaves the
        // container running; the FIFOs keep its output until the next process adopts it.
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Libcontainer {
    /// A runtime keeping libcontainer state in `state_root` (`<state>/containers-state`),
    /// with cgroup hierarchies mounted under `cgroup_root` (`/sys/fs/cgroup`).
    #[must_use]
    pub fn new(state_root: PathBuf, cgroup_root: PathBuf) -> Self {
        // Containers are created by a forked copy of this process (see `forked`) and are
        // handed to us when it exits.
        if let Err(err) = super::forked::become_subreaper() {
            tracing::error!(%err, "cannot become a child subreaper: containers will not be reaped");
        }
        Self {
            state_root,
            cgroup_root,
            rotation: LogRotation::default(),
            tracked: Mutex::new(HashMap::new()),
        }
    }

    /// Sets how container logs rotate (default 10 MiB, 5 files).
    #[must_use]
    pub fn with_log_rotation(mut self, rotation: LogRotation) -> Self {
        self.rotation = rotation;
        self
    }

    /// libcontainer's root directory.
    #[must_use]
    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    pub(super) fn tracked(&self, id: &str) -> Option<Arc<Tracked>> {
        self.lock().get(id).cloned()
    }

    /// The terminal of the running `tty: true` container `id`, for attaching; `None` when it
    /// has none, has ended, or its terminal did not survive a daemon restart.
    #[must_use]
    pub fn terminal(&self, id: &str) -> Option<Arc<ContainerTerminal>> {
        self.tracked(id)?.terminal.clone()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Tracked>>> {
        self.tracked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn cgroup_files(&self, cgroups_path: &str) -> CgroupFiles {
        CgroupFiles::new(&self.cgroup_root, cgroups_path)
    }
}

/// A `tracing` filter that drops events emitted outside the daemon's own process.
///
/// libcontainer forks the container's init from the daemon and logs in it before `exec`;
/// there stderr is already the container's, so those events would land in the container's
/// log. Add this (per-layer or as a layer) to the daemon's subscriber.
#[must_use]
pub fn daemon_process_only<S>() -> tracing_subscriber::filter::DynFilterFn<
    S,
    impl Fn(&tracing::Metadata<'_>, &tracing_subscriber::layer::Context<'_, S>) -> bool,
> {
    let daemon = std::process::id();
    tracing_subscriber::filter::dynamic_filter_fn(move |_, _| std::process::id() == daemon)
}

#[async_trait::async_trait]
impl ContainerRuntime for Libcontainer {
    async fn start(&self, config: &ContainerConfig) -> Result<Started, RuntimeError> {
        self.start_container(config).await
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        self.wait_container(id).await
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.kill_container(id, signal).await
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.delete_container(id).await
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.list_containers().await
    }

    async fn adopt(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.adopt_container(id).await
    }

    async fn usage(&self, id: &str) -> Result<Usage, RuntimeError> {
        let cgroups_path = match self.tracked(id) {
            Some(t) => t.meta.cgroups_path.clone(),
            None => {
                self.load_meta(id)
                    .await?
                    .ok_or_else(|| RuntimeError::NotFound { id: id.to_owned() })?
                    .cgroups_path
            }
        };
        let files = self.cgroup_files(&cgroups_path);
        let id_owned = id.to_owned();
        tokio::task::spawn_blocking(move || files.usage())
            .await
            .map_err(|e| RuntimeError::Task {
                id: id_owned.clone(),
                message: e.to_string(),
            })?
            .map_err(|source| RuntimeError::Stats {
                id: id_owned,
                source,
            })
    }
}

/// Runs blocking libcontainer or file-system work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    id: &str,
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Task {
            id: id.to_owned(),
            message: e.to_string(),
        })?
}
