//! skiff-node-runtime is the node's container runtime: OCI bundles from the pod's wishes,
//! the libcontainer lifecycle run in-process (one file per verb, creates in copies forked
//! by a small forkserver), the image store (registry pulls, tarball import, overlay root
//! filesystems, garbage collection), CRI-format logs, exec processes and per-container
//! cgroup usage. It knows nothing of pods or the API: the node daemon translates a pod into
//! a [`ContainerConfig`].

pub mod config;
mod container_delete;
pub mod container_exec;
mod container_kill;
mod container_list;
mod container_start;
mod container_wait;
mod executor;
pub mod forked;
pub mod forkserver;
pub mod image;
pub mod libcontainer;
pub mod log_pump;
mod pidfd;
pub mod spec;
pub mod stats;
pub mod terminal;

use std::{path::PathBuf, sync::Mutex, time::SystemTime};

/// Held while libcontainer starts a container in this process: `start` changes the whole
/// process's working directory to the container's state directory to reach its notify
/// socket by a short relative name, so two at once could start the wrong container. Creates
/// and execs run in forked copies of the process (see [`forked`]) and need no lock.
pub(crate) static START: Mutex<()> = Mutex::new(());

/// Takes [`START`], even if a panicking holder poisoned it.
pub(crate) fn start_guard() -> std::sync::MutexGuard<'static, ()> {
    START
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub use config::{
    ContainerConfig, LogRotation, MountKind, MountSpec, PodNamespaces, ResourceSpec, SeccompMode,
    SecuritySpec, UserSpec,
};
pub use libcontainer::Libcontainer;

/// A started container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The init process on the host.
    pub pid: i32,
    /// When `start` returned.
    pub started_at: SystemTime,
}

/// How a container's init process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code; `None` when killed by a signal or unknown (adopted after a restart).
    pub code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// The kernel's OOM killer fired in the container's cgroup.
    pub oom_killed: bool,
    /// When the runtime saw it end.
    pub finished_at: SystemTime,
}

impl ExitStatus {
    /// The code Kubernetes reports: the exit code, or 128 + signal.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 0,
        }
    }
}

/// A container found in the runtime's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Its id.
    pub id: String,
    /// Its init process, if known.
    pub pid: Option<i32>,
    /// Whether the init process is alive.
    pub running: bool,
    /// Where its log goes, if the bundle still says.
    pub log_path: Option<PathBuf>,
}

/// One reading of a container's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Cumulative CPU time.
    pub cpu_usage_nanos: u64,
    /// Memory usage minus inactive file cache, what the kubelet evicts by.
    pub memory_working_set_bytes: u64,
    /// Raw memory usage including cache.
    pub memory_usage_bytes: u64,
    /// When it was read.
    pub at: SystemTime,
}

/// Errors of the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration cannot be turned into an OCI spec.
    #[error("container {id}: {source}")]
    Spec {
        /// The container.
        id: String,
        /// Why.
        source: spec::SpecError,
    },
    /// The id is not usable as a libcontainer id.
    #[error("invalid container id {id:?}")]
    InvalidId {
        /// The id as given.
        id: String,
    },
    /// A container with this id already exists.
    #[error("container {id} already exists")]
    AlreadyExists {
        /// The container.
        id: String,
    },
    /// No container with this id is known.
    #[error("container {id} not found")]
    NotFound {
        /// The container.
        id: String,
    },
    /// libcontainer refused or failed.
    #[error("container {id}: {op}: {message}")]
    Libcontainer {
        /// The container.
        id: String,
        /// What was attempted.
        op: &'static str,
        /// libcontainer's error, rendered (its error type is not `Send`).
        message: String,
    },
    /// A file-system or process operation failed.
    #[error("container {id}: {what}: {source}")]
    Io {
        /// The container.
        id: String,
        /// What was attempted.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading the container's cgroup failed.
    #[error("container {id}: {source}")]
    Stats {
        /// The container.
        id: String,
        /// Why.
        source: stats::StatsError,
    },
    /// A blocking task died.
    #[error("container {id}: background task failed: {message}")]
    Task {
        /// The container.
        id: String,
        /// The panic or cancellation.
        message: String,
    },
}

impl RuntimeError {
    pub(crate) fn io(id: &str, what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            id: id.to_owned(),
            what: what.into(),
            source,
        }
    }

    pub(crate) fn lc(id: &str, op: &'static str, err: &impl std::fmt::Display) -> Self {
        Self::Libcontainer {
            id: id.to_owned(),
            op,
            message: err.to_string(),
        }
    }
}

/// What the pod worker needs from a container runtime.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Creates and starts the container; on failure leaves nothing behind.
    async fn start(&self, config: &ContainerConfig) -> Result<Started, RuntimeError>;
    /// Resolves when the container's init exited; may be called several times and
    /// concurrently (the status is cached).
    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError>;
    /// Sends `signal` to the init process; no error if it is already gone.
    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError>;
    /// Kills the container if running and removes its cgroups (v1 and v2), libcontainer
    /// state and bundle directory; idempotent.
    async fn delete(&self, id: &str) -> Result<(), RuntimeError>;
    /// The containers in the state directory.
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError>;
    /// After a daemon restart: reattaches the log pump and the exit watcher.
    async fn adopt(&self, id: &str) -> Result<ContainerInfo, RuntimeError>;
    /// CPU and memory use from the container's cgroup.
    async fn usage(&self, id: &str) -> Result<Usage, RuntimeError>;
}
