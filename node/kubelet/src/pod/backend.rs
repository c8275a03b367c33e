//! What a pod worker asks of the node: sandboxes, volumes, images and containers, behind
//! one trait so the lifecycle logic is tested without root, and simulated nodes drive the
//! same worker with timers.

use std::{path::PathBuf, time::Duration};

use async_trait::async_trait;
use k8s_openapi::{
    api::core::v1::{Container, Pod},
    jiff::Timestamp,
};
use serde::{Deserialize, Serialize};
use skiff_types::ContainerId;

/// A failure of the node's machinery, with the words a user should read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// A `CamelCase` reason for container states and events (`CreateContainerError`, ...).
    pub reason: String,
    /// What went wrong.
    pub message: String,
}

impl BackendError {
    /// An error with a reason and a message.
    #[must_use]
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The pod's namespaces and address, as created for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// The pod's IP (the node's for `hostNetwork` pods).
    pub ip: Option<String>,
    /// The network namespace to join; `None` for the host's.
    pub netns: Option<PathBuf>,
    /// The IPC namespace to join; `None` for the host's.
    pub ipcns: Option<PathBuf>,
    /// The UTS namespace to join; `None` for the host's.
    pub utsns: Option<PathBuf>,
}

/// What an image provides to the containers made from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// `sha256:<config digest>`, the runtime's image ID.
    pub id: String,
    /// What `imageID` shows (`<repo>@sha256:...` when pulled, else the ID).
    pub image_ref: String,
    /// The image's entrypoint.
    pub entrypoint: Vec<String>,
    /// The image's command.
    pub cmd: Vec<String>,
    /// The image's environment, `K=V`.
    pub env: Vec<String>,
    /// The image's working directory.
    pub working_dir: Option<String>,
    /// The image's user (`uid[:gid]` or a name).
    pub user: Option<String>,
}

/// One run of one container to start.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its sandbox.
    pub sandbox: &'a SandboxInfo,
    /// The container's spec.
    pub container: &'a Container,
    /// Its image.
    pub image: &'a ImageInfo,
    /// Which run this is (0 for the first), part of the container's ID and log file name.
    pub restart: i32,
}

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code; `None` when it was not seen (a container adopted after a restart).
    pub code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// When.
    pub finished_at: Timestamp,
}

/// Everything the pod worker needs from the node's machinery (the API side is
/// `PodApi` in the `api` module).
#[async_trait]
pub trait PodBackend: Send + Sync + 'static {
    /// Creates (or returns the existing) sandbox of the pod.
    async fn create_sandbox(&self, pod: &Pod) -> Result<SandboxInfo, BackendError>;
    /// Removes the sandbox of the pod with this UID, and its volumes; idempotent.
    async fn remove_sandbox(&self, uid: &str) -> Result<(), BackendError>;
    /// Writes (or refreshes in place) the pod's volumes and its `/etc/hosts`.
    async fn setup_volumes(&self, pod: &Pod, sandbox: &SandboxInfo) -> Result<(), BackendError>;
    /// Makes the container's image present as its pull policy says.
    async fn pull_image(&self, pod: &Pod, container: &Container)
    -> Result<ImageInfo, BackendError>;
    /// Creates and starts one run of a container; returns its runtime ID.
    async fn start_container(&self, run: Run<'_>) -> Result<ContainerId, BackendError>;
    /// How pod status names a run (`containerID`): `<runtime>://<id>`.
    fn status_id(&self, id: &ContainerId) -> String {
        id.status_form()
    }
    /// Takes over the sandbox an earlier daemon made for the pod.
    async fn adopt_sandbox(&self, _pod: &Pod, _sandbox: &SandboxInfo) {}
    /// Takes over a container an earlier daemon started; `false` when it is gone.
    async fn adopt_container(&self, pod: &Pod, id: &str) -> bool;
    /// Resolves when the container's process has ended.
    async fn wait_container(&self, id: &str) -> Exit;
    /// Sends a signal to the container's init; no error when it is gone.
    async fn signal_container(&self, id: &str, signal: i32) -> Result<(), BackendError>;
    /// Removes a stopped container (state, cgroup, rootfs mount), keeping its log.
    async fn remove_container(&self, id: &str) -> Result<(), BackendError>;
    /// Runs a command in a container (exec probes and hooks); returns its exit code.
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<i32, BackendError>;
    /// Whether probes and hooks may reach the pod over the network (`httpGet`, `tcpSocket`,
    /// `grpc`). Simulated pods have no network: their checks pass without a packet sent.
    fn network_checks(&self) -> bool {
        true
    }
}
