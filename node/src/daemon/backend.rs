//! The pod worker's backend on a real node: sandboxes from the pod network, volumes, images
//! from the store, containers through libcontainer, and the API server for status, deletes,
//! events, configMaps and secrets.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use k8s_openapi::{
    ByteString,
    api::core::v1::{
        ConfigMap, Container, Event, EventSource, ObjectReference, Pod, PodStatus, Secret,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
};
use serde_json::json;
use skiff_kubelet::pod::{
    backend::{BackendError, Exit, ImageInfo, PodBackend, Run, SandboxInfo},
    command::{self, ConfigError, NodeLimits, Sources},
    volume::VolumeManager,
};
use skiff_node_net::{PodNetwork, SandboxRequest};
use skiff_node_runtime::{
    ContainerConfig, ContainerRuntime, Libcontainer, MountKind, MountSpec, PodNamespaces,
    container_exec,
    image::{Image, ImageStore, PullError, PullPolicy, RegistryAuth},
};

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

/// configMaps and secrets from the API server.
#[derive(Clone)]
pub struct ApiSources {
    client: Client,
}

impl ApiSources {
    /// Reads through `client`.
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

fn api_error(err: &kube::Error) -> ConfigError {
    ConfigError::Api(err.to_string())
}

#[async_trait]
impl Sources for ApiSources {
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let Some(cm) = api.get_opt(name).await.map_err(|e| api_error(&e))? else {
            return Ok(None);
        };
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, ByteString(v)) in cm.binary_data.unwrap_or_default() {
            data.insert(k, v);
        }
        Ok(Some(data))
    }

    async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(secret) = api.get_opt(name).await.map_err(|e| api_error(&e))? else {
            return Ok(None);
        };
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, ByteString(v))| (k, v))
            .collect();
        for (k, v) in secret.string_data.unwrap_or_default() {
            data.insert(k, v.into_bytes());
        }
        Ok(Some(data))
    }
}

impl std::fmt::Debug for ApiSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSources").finish_non_exhaustive()
    }
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
    /// The API client.
    pub client: Client,
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
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
    )
}

/// The pod's hostname: `spec.hostname`, else its name cut to 63 characters.
#[must_use]
pub fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_owned()
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn milli(container: &Container, kind: &str, resource: &str) -> Option<i64> {
    let r = container.resources.as_ref()?;
    let set = if kind == "limits" {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    };
    set?.get(resource)
        .and_then(|q| skiff_machinery::quantity::parse_milli(&q.0))
}

/// cgroup settings from requests and limits, as the kubelet maps them.
#[must_use]
pub fn resources(container: &Container) -> skiff_node_runtime::ResourceSpec {
    const PERIOD: u64 = 100_000;
    let cpu_limit = milli(container, "limits", "cpu");
    let cpu_request = milli(container, "requests", "cpu").or(cpu_limit);
    let memory = milli(container, "limits", "memory").map(|m| m / 1000);
    skiff_node_runtime::ResourceSpec {
        // 1024 shares per core, at least 2 (the kernel's minimum).
        cpu_shares: Some(
            cpu_request.map_or(2, |m| u64::try_from(m * 1024 / 1000).unwrap_or(2).max(2)),
        ),
        cpu_quota: cpu_limit.map(|m| (m * i64::try_from(PERIOD).unwrap_or(0) / 1000).max(1000)),
        cpu_period: cpu_limit.map(|_| PERIOD),
        memory_limit: memory,
        pids_limit: None,
    }
}

fn passwd_lookup(rootfs: &Path, file: &str, name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(rootfs.join("etc").join(file)).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name)).then(|| {
            let id = fields.get(2)?.parse().ok()?;
            let gid = fields.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
            Some((id, gid))
        })?
    })
}

/// The user a container runs as: its securityContext, the pod's, then the image's.
fn user(
    pod: &Pod,
    container: &Container,
    image_user: Option<&str>,
    rootfs: &Path,
) -> Result<skiff_node_runtime::UserSpec, BackendError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let (mut uid, mut gid) = (0_u32, 0_u32);
    if let Some(spec) = image_user.filter(|u| !u.is_empty()) {
        let (u, g) = spec
            .split_once(':')
            .map_or((spec, None), |(u, g)| (u, Some(g)));
        if let Ok(n) = u.parse() {
            uid = n;
            gid = passwd_lookup(rootfs, "passwd", u).map_or(0, |(_, g)| g);
        } else if let Some((n, g)) = passwd_lookup(rootfs, "passwd", u) {
            (uid, gid) = (n, g);
        } else {
            return Err(BackendError::new(
                "CreateContainerConfigError",
                format!("unable to find user {u}: no matching entries in passwd file"),
            ));
        }
        if let Some(g) = g {
            gid = g
                .parse()
                .ok()
                .or_else(|| passwd_lookup(rootfs, "group", g).map(|(n, _)| n))
                .unwrap_or(gid);
        }
    }
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    if let Some(u) = run_as_user {
        uid = u32::try_from(u).unwrap_or(0);
    }
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group));
    if let Some(g) = run_as_group {
        gid = u32::try_from(g).unwrap_or(0);
    }
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if non_root && uid == 0 {
        return Err(BackendError::new(
            "CreateContainerConfigError",
            "container has runAsNonRoot and image will run as root",
        ));
    }
    let mut additional: Vec<u32> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| u32::try_from(g).ok())
        .collect();
    if let Some(fs_group) = pod_sc.and_then(|s| s.fs_group) {
        additional.extend(u32::try_from(fs_group).ok());
    }
    Ok(skiff_node_runtime::UserSpec {
        uid,
        gid,
        additional_gids: additional,
    })
}

fn security(pod: &Pod, container: &Container) -> skiff_node_runtime::SecuritySpec {
    let sc = container.security_context.clone().unwrap_or_default();
    let pod_sc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let privileged = sc.privileged.unwrap_or(false);
    let seccomp = sc
        .seccomp_profile
        .or(pod_sc.seccomp_profile)
        .map(|p| p.type_);
    skiff_node_runtime::SecuritySpec {
        privileged,
        capabilities_add: sc
            .capabilities
            .as_ref()
            .and_then(|c| c.add.clone())
            .unwrap_or_default(),
        capabilities_drop: sc
            .capabilities
            .as_ref()
            .and_then(|c| c.drop.clone())
            .unwrap_or_default(),
        read_only_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        no_new_privileges: !privileged && sc.allow_privilege_escalation == Some(false),
        seccomp: if privileged || seccomp.as_deref() == Some("Unconfined") {
            skiff_node_runtime::SeccompMode::Unconfined
        } else {
            skiff_node_runtime::SeccompMode::RuntimeDefault
        },
        masked_paths: !privileged,
    }
}

/// Removes the pod's own cgroup directory (`<parent>/pod<uid>`) in every hierarchy once
/// its containers' directories are gone; a directory still holding one stays.
/// Mount points of the cgroup hierarchies (v1 controllers and the v2 unified one).
fn cgroup_mounts() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 2 && (fields[2] == "cgroup" || fields[2] == "cgroup2"))
                .then(|| PathBuf::from(fields[1]))
        })
        .collect()
}

/// Removes the node's own cgroup directories (`/skiff/<node>`, then `/skiff`) in every
/// hierarchy, each only when empty: what a node stopping with `--cleanup-on-exit` made.
pub fn remove_node_cgroups(parent: &str) {
    let levels: Vec<&str> = parent
        .trim_start_matches('/')
        .split('/')
        .filter(|l| !l.is_empty())
        .collect();
    for root in cgroup_mounts() {
        for depth in (1..=levels.len()).rev() {
            let dir = levels[..depth].iter().fold(root.clone(), |d, l| d.join(l));
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => break,
                _ => {}
            }
        }
    }
}

fn remove_pod_cgroups(parent: &str, uid: &str) {
    for root in cgroup_mounts() {
        let dir = root
            .join(parent.trim_start_matches('/'))
            .join(format!("pod{uid}"));
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), %e, "pod cgroup not removed");
            }
            _ => {}
        }
    }
}

impl LocalBackend {
    fn container_dir(&self, id: &str) -> PathBuf {
        self.layout.containers.join(id)
    }

    /// The log file of one run of a container.
    #[must_use]
    pub fn log_path(&self, pod: &Pod, container: &str, restart: i32) -> PathBuf {
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
            hostname: hostname(pod),
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
        remove_pod_cgroups(&self.layout.cgroup_parent, uid);
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

    async fn start_container(&self, run: Run<'_>) -> Result<String, BackendError> {
        let (_, _, uid) = pod_name(run.pod);
        let id = format!("{uid}-{}-{}", run.container.name, run.restart);
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
        let user = match user(run.pod, run.container, run.image.user.as_deref(), &rootfs) {
            Ok(u) => u,
            Err(e) => {
                let _ = self.images.unmount_rootfs(&dir);
                return Err(e);
            }
        };
        let private_uts = run.sandbox.utsns.is_some();
        let config = ContainerConfig {
            id: id.clone(),
            bundle_dir: dir.join("bundle"),
            rootfs,
            args,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: run
                .container
                .working_dir
                .clone()
                .or_else(|| run.image.working_dir.clone())
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".to_owned()),
            user,
            hostname: private_uts.then(|| hostname(run.pod)),
            namespaces: PodNamespaces {
                net: run.sandbox.netns.clone(),
                ipc: run.sandbox.ipcns.clone(),
                uts: run.sandbox.utsns.clone(),
            },
            mounts: mounts
                .into_iter()
                .map(|m| MountSpec {
                    destination: m.destination,
                    source: m.source,
                    read_only: m.read_only,
                    kind: MountKind::Bind,
                })
                .collect(),
            security: security(run.pod, run.container),
            resources: resources(run.container),
            cgroups_path: format!("{}/pod{uid}/{id}", self.layout.cgroup_parent),
            cgroup_v2_path: self
                .layout
                .cgroup_v2_parent
                .as_ref()
                .map(|p| p.join(format!("pod{uid}")).join(&id)),
            log_path: self.log_path(run.pod, &run.container.name, run.restart),
            stdin: run.container.stdin.unwrap_or(false),
            tty: run.container.tty.unwrap_or(false),
        };
        if let Err(err) = self.runtime.start(&config).await {
            let _ = self.runtime.delete(&id).await;
            let _ = self.images.unmount_rootfs(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(BackendError::new("CreateContainerError", err.to_string()));
        }
        Ok(id)
    }

    async fn adopt_container(&self, id: &str) -> bool {
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

    async fn patch_status(&self, pod: &Pod, status: &PodStatus) -> Result<(), BackendError> {
        let (ns, name, uid) = pod_name(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let patch = json!({"metadata": {"uid": uid}, "status": status});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|e| BackendError::new("StatusUpdateFailed", e.to_string()))
    }

    async fn delete_pod(&self, pod: &Pod) -> Result<(), BackendError> {
        let (ns, name, uid) = pod_name(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(BackendError::new("DeleteFailed", e.to_string())),
        }
    }

    async fn event(&self, pod: &Pod, type_: &str, reason: &str, message: &str) {
        let (ns, name, uid) = pod_name(pod);
        let now = Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(ns.to_owned()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.to_owned()),
                namespace: Some(ns.to_owned()),
                uid: Some(uid.to_owned()),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(type_.to_owned()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.layout.node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.layout.node.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        // Events are best effort and must not hold a pod back.
        tokio::spawn(async move {
            if let Err(err) = api.create(&PostParams::default(), &event).await {
                tracing::debug!(?err, "event not recorded");
            }
        });
    }
}
