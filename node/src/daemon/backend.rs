//! The kubelet's backend on a real node: sandboxes from the pod network, volumes, images
//! from the store, containers through libcontainer (configured by [`oci`]).

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use k8s_openapi::{
    api::core::v1::{Container, Pod},
    jiff::Timestamp,
};
use skiff_kubelet::pod::{
    backend::{BackendError, Exit, ImageInfo, PodBackend, Run, SandboxInfo},
    command::{self, NodeLimits, Sources},
    volume::VolumeManager,
};
use skiff_node_net::{PodNetwork, SandboxRequest};
use skiff_node_runtime::{
    ContainerRuntime, Libcontainer, container_exec,
    image::{Image, ImageStore, PullError, PullPolicy, RegistryAuth},
};
use skiff_types::ContainerId;

use super::{cgroups, oci};

/// Where a node keeps things, and who it is.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The Node's name.
    pub node: String,
    /// The node's address.
    pub host_ip: String,
    /// `<state>/containers`: one directory per container run (rootfs mount, bundle).
    pub containers: PathBuf,
    /// Container logs: `<logs>/<ns>_<pod>_<uid>/<container>/<restart>.log`.
    pub logs: PathBuf,
    /// The v1 cgroup parent of every pod (`/skiff/<node>`).
    pub cgroup_parent: String,
    /// The v2 directory the containers' inits also join, on hybrid hosts.
    pub cgroup_v2_parent: Option<PathBuf>,
    /// libcontainer's state root (for exec).
    pub runtime_state: PathBuf,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// The real node's [`PodBackend`].
pub struct LocalBackend {
    /// Paths and names.
    pub layout: Layout,
    /// The pod network.
    pub network: Arc<dyn PodNetwork>,
    /// The image store.
    pub images: ImageStore,
    /// The container runtime.
    pub runtime: Arc<Libcontainer>,
    /// Pod volumes.
    pub volumes: VolumeManager,
    /// configMaps and secrets.
    pub sources: Arc<dyn Sources>,
    /// The node's allocatable, for `resourceFieldRef` defaults.
    pub limits: NodeLimits,
}

fn pod_name(pod: &Pod) -> (&str, &str, &str) {
    (
        pod.metadata
            .namespace
            .as_deref()
            .unwrap_or(skiff_types::namespace::DEFAULT),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
    )
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

impl LocalBackend {
    fn container_dir(&self, id: &str) -> PathBuf {
        self.layout.containers.join(id)
    }

    /// The log file of one run of a container.
    #[must_use]
    pub fn log_path(&self, pod: &Pod, container: &str, restart: u32) -> PathBuf {
        let (ns, name, uid) = pod_name(pod);
        self.layout
            .logs
            .join(format!("{ns}_{name}_{uid}"))
            .join(container)
            .join(format!("{restart}.log"))
    }

    async fn pull_secrets(&self, pod: &Pod) -> Vec<RegistryAuth> {
        let (ns, ..) = pod_name(pod);
        let mut auths = Vec::new();
        let names = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default();
        for r in names {
            match self.sources.secret(ns, &r.name).await {
                Ok(Some(data)) => {
                    for key in [".dockerconfigjson", ".dockercfg"] {
                        if let Some(bytes) = data.get(key) {
                            match RegistryAuth::from_docker_config_json(bytes) {
                                Ok(found) => auths.extend(found),
                                Err(err) => {
                                    tracing::warn!(secret = %r.name, ?err, "unusable pull secret");
                                }
                            }
                        }
                    }
                }
                Ok(None) => tracing::warn!(secret = %r.name, "pull secret not found"),
                Err(err) => tracing::warn!(secret = %r.name, %err, "pull secret unreadable"),
            }
        }
        auths
    }

    fn image_for(&self, info: &ImageInfo) -> Result<Image, BackendError> {
        self.images.lookup(&info.id).ok_or_else(|| {
            BackendError::new("CreateContainerError", format!("image {} is gone", info.id))
        })
    }
}

#[async_trait]
impl PodBackend for LocalBackend {
    async fn create_sandbox(&self, pod: &Pod) -> Result<SandboxInfo, BackendError> {
        if host_network(pod) {
            return Ok(SandboxInfo {
                ip: Some(self.layout.host_ip.clone()),
                ..SandboxInfo::default()
            });
        }
        let (.., uid) = pod_name(pod);
        let request = SandboxRequest {
            uid: uid.to_owned(),
            hostname: oci::hostname(pod),
        };
        let sandbox = self
            .network
            .create_sandbox(&request)
            .await
            .map_err(|e| BackendError::new("FailedCreatePodSandBox", e.to_string()))?;
        Ok(SandboxInfo {
            ip: Some(sandbox.ip.to_string()),
            netns: Some(sandbox.netns),
            ipcns: Some(sandbox.ipcns),
            utsns: Some(sandbox.utsns),
        })
    }

    async fn remove_sandbox(&self, uid: &str) -> Result<(), BackendError> {
        cgroups::remove_pod_cgroups(&self.layout.cgroup_parent, uid);
        self.volumes
            .teardown(uid)
            .await
            .map_err(|e| BackendError::new("FailedKillPod", e.to_string()))?;
        self.network
            .remove_sandbox(uid)
            .await
            .map_err(|e| BackendError::new("FailedKillPod", e.to_string()))
    }

    async fn setup_volumes(&self, pod: &Pod, sandbox: &SandboxInfo) -> Result<(), BackendError> {
        self.volumes
            .setup(pod, sandbox.ip.as_deref())
            .await
            .map_err(|e| BackendError::new("FailedMount", e.to_string()))
    }

    async fn pull_image(
        &self,
        pod: &Pod,
        container: &Container,
    ) -> Result<ImageInfo, BackendError> {
        let reference = container.image.clone().unwrap_or_default();
        let policy = PullPolicy::from_spec(container.image_pull_policy.as_deref(), &reference);
        let auths = self.pull_secrets(pod).await;
        let image = self
            .images
            .ensure(&reference, policy, &auths)
            .await
            .map_err(|e| match e {
                PullError::NotPresent(_) => BackendError::new(
                    "ErrImageNeverPull",
                    format!(
                        "Container image \"{reference}\" is not present with pull policy of Never"
                    ),
                ),
                other => BackendError::new(
                    "ErrImagePull",
                    format!("Failed to pull image \"{reference}\": {other}"),
                ),
            })?;
        Ok(ImageInfo {
            id: image.id.clone(),
            image_ref: image
                .repo_digest
                .clone()
                .unwrap_or_else(|| image.id.clone()),
            entrypoint: image.config.entrypoint.clone(),
            cmd: image.config.cmd.clone(),
            env: image.config.env.clone(),
            working_dir: image.config.working_dir.clone(),
            user: image.config.user.clone(),
        })
    }

    async fn start_container(&self, run: Run<'_>) -> Result<ContainerId, BackendError> {
        let (_, _, uid) = pod_name(run.pod);
        let typed = ContainerId::new(
            uid,
            &run.container.name,
            u32::try_from(run.restart).unwrap_or_default(),
        );
        let id = typed.to_string();
        let image = self.image_for(run.image)?;
        let dir = self.container_dir(&id);
        let env = command::environment(
            run.pod,
            run.container,
            &run.image.env,
            self.sources.as_ref(),
            self.limits,
        )
        .await
        .map_err(|e| BackendError::new("CreateContainerConfigError", e.to_string()))?;
        let env_map: HashMap<String, String> = env.iter().cloned().collect();
        let args = command::argv(
            run.container,
            &run.image.entrypoint,
            &run.image.cmd,
            &env_map,
        );
        if args.is_empty() {
            return Err(BackendError::new(
                "CreateContainerError",
                "no command specified",
            ));
        }
        let mounts = self
            .volumes
            .mounts(run.pod, run.container, &env_map)
            .map_err(|e| BackendError::new("CreateContainerConfigError", e.to_string()))?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| BackendError::new("CreateContainerError", e.to_string()))?;
        let images = self.images.clone();
        let (mount_image, mount_dir) = (image.clone(), dir.clone());
        let rootfs =
            tokio::task::spawn_blocking(move || images.mount_rootfs(&mount_image, &mount_dir))
                .await
                .map_err(|e| BackendError::new("CreateContainerError", e.to_string()))?
                .map_err(|e| BackendError::new("CreateContainerError", e.to_string()))?;
        let user = match oci::user(run.pod, run.container, run.image.user.as_deref(), &rootfs) {
            Ok(u) => u,
            Err(e) => {
                let _ = self.images.unmount_rootfs(&dir);
                return Err(e);
            }
        };
        let config = oci::container_config(
            run,
            oci::Resolved {
                args,
                env,
                mounts,
                user,
            },
            oci::Placement {
                id: id.clone(),
                dir: dir.clone(),
                rootfs,
                cgroup_parent: self.layout.cgroup_parent.clone(),
                cgroup_v2_parent: self.layout.cgroup_v2_parent.clone(),
                log_path: self.log_path(run.pod, &run.container.name, typed.run),
            },
        );
        if let Err(err) = self.runtime.start(&config).await {
            let _ = self.runtime.delete(&id).await;
            let _ = self.images.unmount_rootfs(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(BackendError::new("CreateContainerError", err.to_string()));
        }
        Ok(typed)
    }

    async fn adopt_container(&self, _pod: &Pod, id: &str) -> bool {
        match self.runtime.adopt(id).await {
            Ok(info) => info.running,
            Err(err) => {
                tracing::info!(%id, %err, "container not adopted");
                false
            }
        }
    }

    async fn wait_container(&self, id: &str) -> Exit {
        let status = self.runtime.wait(id).await;
        match status {
            Ok(s) => Exit {
                code: s.code,
                signal: s.signal,
                oom_killed: s.oom_killed,
                finished_at: Timestamp::try_from(s.finished_at)
                    .unwrap_or_else(|_| Timestamp::now()),
            },
            Err(err) => {
                tracing::warn!(%id, %err, "lost track of a container");
                Exit {
                    code: None,
                    signal: None,
                    oom_killed: false,
                    finished_at: Timestamp::now(),
                }
            }
        }
    }

    async fn signal_container(&self, id: &str, signal: i32) -> Result<(), BackendError> {
        self.runtime
            .kill(id, signal)
            .await
            .map_err(|e| BackendError::new("KillContainerError", e.to_string()))
    }

    async fn remove_container(&self, id: &str) -> Result<(), BackendError> {
        let dir = self.container_dir(id);
        let images = self.images.clone();
        let d = dir.clone();
        let unmounted = tokio::task::spawn_blocking(move || images.unmount_rootfs(&d))
            .await
            .map_err(|e| BackendError::new("RemoveContainerError", e.to_string()))?;
        unmounted.map_err(|e| BackendError::new("RemoveContainerError", e.to_string()))?;
        self.runtime
            .delete(id)
            .await
            .map_err(|e| BackendError::new("RemoveContainerError", e.to_string()))?;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(BackendError::new("RemoveContainerError", e.to_string()))
            }
            _ => Ok(()),
        }
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<i32, BackendError> {
        container_exec::exec_status(&self.layout.runtime_state, id, command, timeout)
            .await
            .map_err(|e| BackendError::new("ExecError", e.to_string()))
    }
}
