//! skiff-node-server is the node's HTTP endpoint: container logs, exec and attach, usage,
//! image import and port-forward, reached by the API server's `pods/log`, `pods/exec`,
//! `pods/attach` and `pods/portforward`.
//!
//! The server knows HTTP and the Kubernetes streaming protocols; everything it serves comes
//! from a [`NodeBackend`], which the daemon implements over its pods, runtime and image store.

#![forbid(unsafe_code)]

pub mod auth;
mod images;
pub mod logs;
mod portforward;
mod reply;
mod serve;
pub mod stats;
mod stream;
pub mod tls;

use std::{
    fmt,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
};

use async_trait::async_trait;
pub use logs::{LogOptions, stream_log};
pub use serve::{DEFAULT_PORT, NodeServer, Security, ServeError};
pub use stats::{
    ContainerStats, CpuStats, MemoryStats, NodeStats, PodReference, PodStats, Summary,
};
use tokio::io::{AsyncRead, AsyncWrite};

/// A container as the API server names it in a node URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container's name (init containers included).
    pub container: String,
}

impl fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.pod, self.container)
    }
}

/// Which streams an exec or attach session carries, from the request's query.
#[expect(
    clippy::struct_excessive_bools,
    reason = "one flag per query parameter, as the kubelet's API has them"
)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// The command to run (exec only; empty for attach).
    pub command: Vec<String>,
    /// The client sends standard input.
    pub stdin: bool,
    /// The client wants standard output.
    pub stdout: bool,
    /// The client wants standard error (never with a TTY: a terminal has one output).
    pub stderr: bool,
    /// Run under a pseudo-terminal.
    pub tty: bool,
}

/// A terminal size sent by the client on the resize channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// A boxed standard input of a session.
pub type SessionInput = Pin<Box<dyn AsyncWrite + Send>>;
/// A boxed standard output or error of a session.
pub type SessionOutput = Pin<Box<dyn AsyncRead + Send>>;
/// Both directions of a connection to a pod's port; shutting it down ends what is written.
pub trait PortStream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> PortStream for T {}
/// A boxed connection to a pod's port.
pub type PortConnection = Pin<Box<dyn PortStream>>;
/// Resolves when the session's process is gone: `Some(code)` for an exec'd command,
/// `None` when no code is known (attach, or an adopted container).
pub type SessionExit = Pin<Box<dyn Future<Output = Result<Option<i32>, BackendError>> + Send>>;

/// A running exec or attach: the process's streams and its end.
///
/// With a TTY there is no `stderr` (the terminal merges it into `stdout`) and `resize`
/// changes the terminal's size. Dropping `stdin` closes the process's standard input.
pub struct Session {
    /// Standard input, when the client asked for it.
    pub stdin: Option<SessionInput>,
    /// Standard output (or the terminal), when the client asked for it.
    pub stdout: Option<SessionOutput>,
    /// Standard error, when the client asked for it and there is no TTY.
    pub stderr: Option<SessionOutput>,
    /// Applies a terminal size (TTY sessions).
    pub resize: Option<Box<dyn FnMut(TerminalSize) + Send>>,
    /// The exit of the process.
    pub exit: SessionExit,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether a container's run still runs, so a followed log keeps being read.
pub type RunningFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// The log of one run of a container, as the runtime writes it.
#[derive(Clone)]
pub struct LogSource {
    /// The run's CRI-format log file; rotated parts sit beside it as `<path>.1`, `.2`, ...
    /// (older further up).
    pub path: PathBuf,
    /// Whether the run still runs; polled while the log is followed.
    pub running: RunningFn,
}

impl fmt::Debug for LogSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What the node's endpoint needs from the daemon. Implemented by the daemon over its pods,
/// runtime and image store; tests implement it with fakes.
#[async_trait]
pub trait NodeBackend: Send + Sync + 'static {
    /// The log files of the container's current (or, with `previous`, its last-but-one) run.
    ///
    /// # Errors
    /// [`BackendError::NotFound`] for an unknown pod or container, [`BackendError::BadRequest`]
    /// when the container has not started yet or there is no previous run.
    async fn log_source(
        &self,
        target: &ContainerRef,
        previous: bool,
    ) -> Result<LogSource, BackendError>;

    /// Starts `opts.command` in the container.
    ///
    /// # Errors
    /// [`BackendError::NotFound`] for an unknown pod or container, [`BackendError::BadRequest`]
    /// when the container does not run, [`BackendError::Internal`] when the command cannot start.
    async fn exec(
        &self,
        target: &ContainerRef,
        opts: &StreamOptions,
    ) -> Result<Session, BackendError>;

    /// Attaches to the container's main process.
    ///
    /// # Errors
    /// As [`NodeBackend::exec`]; also [`BackendError::BadRequest`] when stdin is asked for a
    /// container whose spec has `stdin: false`.
    async fn attach(
        &self,
        target: &ContainerRef,
        opts: &StreamOptions,
    ) -> Result<Session, BackendError>;

    /// A connection to `port` inside the pod's network namespace, for port-forward.
    ///
    /// # Errors
    /// [`BackendError::NotFound`] for an unknown pod, [`BackendError::Internal`] when
    /// nothing accepts the connection. Nodes that cannot forward say so with
    /// [`BackendError::BadRequest`] (the default).
    async fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<PortConnection, BackendError> {
        let _ = (namespace, pod, port);
        Err(BackendError::BadRequest(
            "this node does not forward ports".to_owned(),
        ))
    }

    /// Cumulative usage of the node, its pods and their containers.
    ///
    /// # Errors
    /// When the readings cannot be taken.
    async fn stats(&self) -> Result<Summary, BackendError>;

    /// The node's metrics in the Prometheus text format (empty by default).
    ///
    /// # Errors
    /// When the readings cannot be taken.
    async fn metrics(&self) -> Result<String, BackendError> {
        Ok(String::new())
    }

    /// Imports an OCI layout or docker-archive tarball into the image store; returns the
    /// names of the imported images.
    ///
    /// # Errors
    /// [`BackendError::BadRequest`] for a tarball that is not an image archive.
    async fn import_image(&self, tarball: &Path) -> Result<Vec<String>, BackendError>;

    /// Every image in the store.
    ///
    /// # Errors
    /// When the store cannot be read.
    async fn list_images(&self) -> Result<Vec<ImageSummary>, BackendError>;

    /// Removes the image `reference` names (a name or an id) and whatever of its data no
    /// other image needs; returns its id.
    ///
    /// # Errors
    /// [`BackendError::NotFound`] for an unknown image, [`BackendError::Conflict`] for one a
    /// pod of the node uses.
    async fn remove_image(&self, reference: &str) -> Result<String, BackendError>;

    /// Pulls `reference` (always, as `crictl pull` does) through the node's registry
    /// configuration.
    ///
    /// # Errors
    /// [`BackendError::BadRequest`] with the registry's reason when the pull fails.
    async fn pull_image(&self, reference: &str) -> Result<ImageSummary, BackendError>;
}

/// One image of a node's store, as `ctl image ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    /// Its normalized name (`docker.io/library/busybox:1.36`), or its id when unnamed.
    pub reference: String,
    /// `sha256:<config digest>`.
    pub id: String,
    /// Config plus compressed layer bytes.
    pub size: u64,
    /// Whether a pod of the node uses it.
    pub in_use: bool,
}

/// Why the backend could not serve a request; each maps onto an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The pod or container does not exist on this node (404).
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be served in the container's state (400), e.g. it is still waiting.
    #[error("{0}")]
    BadRequest(String),
    /// Something on the node failed (500).
    #[error("{0}")]
    Internal(String),
    /// The request conflicts with what the node runs (409), e.g. removing an image in use.
    #[error("{0}")]
    Conflict(String),
}

impl BackendError {
    /// `pod "ns/x" not found`, as the kubelet words it.
    #[must_use]
    pub fn pod_not_found(namespace: &str, pod: &str) -> Self {
        Self::NotFound(format!("pod {namespace}/{pod} not found"))
    }

    /// `container "c" not found in pod "x"`.
    #[must_use]
    pub fn container_not_found(pod: &str, container: &str) -> Self {
        Self::NotFound(format!("container {container:?} not found in pod {pod:?}"))
    }

    /// The HTTP status code and `metav1.Status` reason.
    #[must_use]
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Self::NotFound(_) => (404, "NotFound"),
            Self::BadRequest(_) => (400, "BadRequest"),
            Self::Internal(_) => (500, "InternalError"),
            Self::Conflict(_) => (409, "Conflict"),
        }
    }
}
