//! A pod's volumes on the node, as the kubelet lays them out: one directory per volume under
//! `<pods_dir>/<uid>/volumes/<plugin>/<name>`, kept fresh while the pod runs, plus the pod's
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, and the bind mounts a container needs.
//!
//! Not done here (yet): disk emptyDir `sizeLimit` is recorded ([`VolumeManager::disk_limits`])
//! but not enforced; `clusterTrustBundle` projections write nothing; secret and projected
//! volumes are tmpfs only when the [`Mounter`] can mount (root), plain directories
//! otherwise; no `fsGroup` ownership; claims are served when their volume is a `hostPath` or
//! `local` directory; other volume types are refused.

pub mod atomic_writer;
pub mod config_map;
pub mod downward_api;
pub mod empty_dir;
pub mod etc_files;
pub mod host_path;
pub mod persistent_claim;
pub mod projected;
pub mod secret;
mod sub_path;
pub mod token;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt, fs, io,
    os::unix::fs::DirBuilderExt as _,
    path::{Component, Path, PathBuf},
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use skiff_types::mountinfo;

pub use self::atomic_writer::{FileProjection, Payload, WriterError};
use crate::pod::command::{ConfigError, NodeLimits, Sources};

/// Errors setting up, listing or removing a pod's volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The pod has no UID, or one that is not a plain directory name.
    #[error("invalid pod uid {0:?}")]
    InvalidUid(String),
    /// A configMap or secret is missing, or a downward API reference is not supported.
    #[error(transparent)]
    Source(#[from] ConfigError),
    /// A configMap or secret lacks a key listed in `items`.
    #[error("{kind} \"{name}\" references non-existent key: {key}")]
    MissingKey {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// The key.
        key: String,
    },
    /// Writing a payload failed.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// A projected ServiceAccount token could not be had from the API server.
    #[error("failed to fetch token: {0}")]
    Token(ConfigError),
    /// A hostPath does not have the type the pod asked for.
    #[error("hostPath type check failed: {path} is not a {expected}")]
    HostPathType {
        /// The host path.
        path: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// A hostPath `type` Kubernetes does not know.
    #[error("hostPath {path}: unknown type {kind:?}")]
    UnknownHostPathType {
        /// The host path.
        path: String,
        /// The type given.
        kind: String,
    },
    /// An emptyDir `sizeLimit` that is not a quantity.
    #[error("volume {volume:?}: invalid sizeLimit {value:?}")]
    InvalidSizeLimit {
        /// The volume.
        volume: String,
        /// The quantity as written.
        value: String,
    },
    /// An emptyDir medium other than disk and `Memory`.
    #[error("volume {volume:?}: unsupported emptyDir medium {medium:?}")]
    UnsupportedMedium {
        /// The volume.
        volume: String,
        /// The medium.
        medium: String,
    },
    /// A claim's volume is not there yet or cannot be mounted here.
    #[error("error processing PVC {claim}: {detail}")]
    Claim {
        /// `namespace/name` of the claim.
        claim: String,
        /// What is wrong.
        detail: String,
    },
    /// A container mounts a claim whose volume was not set up.
    #[error("volume {0:?}: the claim's volume is not set up")]
    ClaimNotSetUp(String),
    /// A volume type this node does not provide.
    #[error("volume {0:?}: unsupported volume type")]
    UnsupportedVolume(String),
    /// A downward API `resourceFieldRef` names no container of the pod.
    #[error("volume {volume:?}: resourceFieldRef names unknown container {container:?}")]
    UnknownContainer {
        /// The volume.
        volume: String,
        /// The container name given (empty when missing).
        container: String,
    },
    /// A container mounts a volume the pod does not declare.
    #[error("container {container:?} mounts unknown volume {volume:?}")]
    NoSuchVolume {
        /// The container.
        container: String,
        /// The volume name.
        volume: String,
    },
    /// A `subPath` or expanded `subPathExpr` that is absolute or leaves the volume.
    #[error("invalid subPath {path:?}: {reason}")]
    InvalidSubPath {
        /// The sub path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Mounting or unmounting failed.
    #[error("{op} {path}: {source}")]
    Mount {
        /// What was being done.
        op: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        source: nix::Error,
    },
    /// A mount under the pod's directory survived unmounting, so nothing was removed.
    #[error("{0} is still mounted")]
    StillMounted(PathBuf),
    /// The teardown task panicked or was cancelled.
    #[error("volume teardown did not finish: {0}")]
    Interrupted(String),
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// One bind mount the runtime puts in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The path inside the container.
    pub destination: String,
    /// The host path bound there.
    pub source: PathBuf,
    /// Bound read-only.
    pub read_only: bool,
}

/// The privileged part: tmpfs mounts, behind a trait so the logic is tested without root.
pub trait Mounter: Send + Sync {
    /// Mounts a tmpfs on `dir`, of `size` bytes when given.
    ///
    /// # Errors
    /// The mount failed.
    fn mount_tmpfs(&self, dir: &Path, size: Option<u64>) -> Result<(), VolumeError>;
    /// Bind-mounts `source` on `target` (a `subPath`'s opened file, as `/proc/self/fd/N`).
    ///
    /// # Errors
    /// The mount failed.
    fn bind(&self, source: &Path, target: &Path) -> Result<(), VolumeError>;
    /// Detaches the mount on `dir`; succeeds when nothing is mounted there.
    ///
    /// # Errors
    /// The unmount failed.
    fn unmount(&self, dir: &Path) -> Result<(), VolumeError>;
    /// Whether something is mounted on `dir`.
    fn is_mounted(&self, dir: &Path) -> bool;
    /// Whether tmpfs mounts are possible at all; secret volumes fall back to plain
    /// directories when not.
    fn can_mount(&self) -> bool {
        true
    }
    /// Every mount point strictly below `dir`, so teardown also finds mounts it did not
    /// record (after a daemon restart).
    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        let _ = dir;
        Vec::new()
    }
}

/// The real [`Mounter`]: `mount(2)`, `statx(2)` for one path, `/proc/self/mountinfo` for a
/// listing.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemMounter;

impl Mounter for SystemMounter {
    fn mount_tmpfs(&self, dir: &Path, size: Option<u64>) -> Result<(), VolumeError> {
        use nix::mount::{MsFlags, mount};
        let data = size.map(|s| format!("size={s}"));
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data.as_deref(),
        )
        .map_err(|source| VolumeError::Mount {
            op: "mounting tmpfs on",
            path: dir.to_owned(),
            source,
        })?;
        tracing::debug!(dir = %dir.display(), size, "tmpfs mounted");
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path) -> Result<(), VolumeError> {
        use nix::mount::{MsFlags, mount};
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| VolumeError::Mount {
            op: "bind-mounting a sub path on",
            path: target.to_owned(),
            source,
        })
    }

    fn unmount(&self, dir: &Path) -> Result<(), VolumeError> {
        use nix::{
            errno::Errno,
            mount::{MntFlags, umount2},
        };
        match umount2(dir, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point; ENOENT: already gone.
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
            Err(source) => Err(VolumeError::Mount {
                op: "unmounting",
                path: dir.to_owned(),
                source,
            }),
        }
    }

    fn is_mounted(&self, dir: &Path) -> bool {
        // As the mount table read before: what cannot be inspected counts as not mounted.
        mountinfo::mounted_at(dir).unwrap_or(false)
    }

    fn can_mount(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        fs::read_to_string("/proc/self/mountinfo")
            .map(|text| mountinfo::mount_points(&text))
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m != &dir && m.starts_with(&dir))
            .collect()
    }
}

struct Inner {
    pods_dir: PathBuf,
    sources: Arc<dyn Sources>,
    mounter: Arc<dyn Mounter>,
    node: NodeLimits,
    cluster_domain: String,
    host_resolv_conf: PathBuf,
    /// The `kube-dns` address `ClusterFirst` pods resolve through, when the node has one.
    cluster_dns: Option<std::net::Ipv4Addr>,
    /// Disk emptyDir size limits by pod UID and volume, for an eviction manager to enforce.
    disk_limits: Mutex<HashMap<String, BTreeMap<String, u64>>>,
    /// The host directories of claims' volumes, by pod UID and volume, as setup found them.
    claim_paths: Mutex<HashMap<String, BTreeMap<String, PathBuf>>>,
    /// Projected ServiceAccount tokens, refreshed before they expire.
    tokens: Arc<token::TokenManager>,
}

/// Sets up, refreshes and removes pods' volumes. Cheap to clone.
#[derive(Clone)]
pub struct VolumeManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for VolumeManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeManager")
            .field("pods_dir", &self.inner.pods_dir)
            .field("cluster_domain", &self.inner.cluster_domain)
            .finish_non_exhaustive()
    }
}

/// Which plugin serves a volume.
enum Kind {
    EmptyDir,
    HostPath,
    ConfigMap,
    Secret,
    DownwardApi,
    Projected,
    PersistentClaim,
}

impl Kind {
    fn of(volume: &Volume) -> Option<Self> {
        Some(if volume.empty_dir.is_some() {
            Self::EmptyDir
        } else if volume.host_path.is_some() {
            Self::HostPath
        } else if volume.config_map.is_some() {
            Self::ConfigMap
        } else if volume.secret.is_some() {
            Self::Secret
        } else if volume.downward_api.is_some() {
            Self::DownwardApi
        } else if volume.projected.is_some() {
            Self::Projected
        } else if volume.persistent_volume_claim.is_some() {
            Self::PersistentClaim
        } else {
            return None;
        })
    }

    fn plugin(&self) -> &'static str {
        match self {
            Self::EmptyDir => empty_dir::PLUGIN,
            Self::HostPath => host_path::PLUGIN,
            Self::ConfigMap => config_map::PLUGIN,
            Self::Secret => secret::PLUGIN,
            Self::DownwardApi => downward_api::PLUGIN,
            Self::Projected => projected::PLUGIN,
            Self::PersistentClaim => persistent_claim::PLUGIN,
        }
    }

    /// Volumes the node writes through the atomic writer; containers never write to them.
    fn always_read_only(&self) -> bool {
        matches!(
            self,
            Self::ConfigMap | Self::Secret | Self::DownwardApi | Self::Projected
        )
    }
}

/// A pod UID as a single directory name, never a way out of `pods_dir`.
fn checked_uid(uid: &str) -> Result<&str, VolumeError> {
    let mut parts = Path::new(uid).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !uid.starts_with('.') => Ok(uid),
        _ => Err(VolumeError::InvalidUid(uid.to_owned())),
    }
}

/// Creates `dir` (and parents) if missing, 0755 as the kubelet's volume dirs.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), VolumeError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err("creating", dir))
}

impl VolumeManager {
    /// A manager keeping pods' directories under `pods_dir`.
    #[must_use]
    pub fn new(
        pods_dir: PathBuf,
        sources: Arc<dyn Sources>,
        mounter: Arc<dyn Mounter>,
        node: NodeLimits,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pods_dir,
                sources,
                mounter,
                node,
                cluster_domain: "cluster.local".to_owned(),
                host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
                cluster_dns: None,
                disk_limits: Mutex::new(HashMap::new()),
                claim_paths: Mutex::new(HashMap::new()),
                tokens: Arc::default(),
            }),
        }
    }

    /// Sets the cluster domain used in `/etc/hosts` for pods with a subdomain
    /// (`cluster.local` by default). Call before cloning.
    #[must_use]
    pub fn with_cluster_domain(self, domain: &str) -> Self {
        self.rebuild(|inner| domain.clone_into(&mut inner.cluster_domain))
    }

    /// Sets the host resolver file pods inherit (`/etc/resolv.conf` by default). Call
    /// before cloning.
    #[must_use]
    pub fn with_host_resolv_conf(self, path: PathBuf) -> Self {
        self.rebuild(|inner| inner.host_resolv_conf = path)
    }

    /// Sets the cluster DNS address `ClusterFirst` pods get as their nameserver (none by
    /// default: they get the host's resolver). Call before cloning.
    #[must_use]
    pub fn with_cluster_dns(self, server: Option<std::net::Ipv4Addr>) -> Self {
        self.rebuild(|inner| inner.cluster_dns = server)
    }

    fn rebuild(self, change: impl FnOnce(&mut Inner)) -> Self {
        let old = &self.inner;
        let mut inner = Inner {
            pods_dir: old.pods_dir.clone(),
            sources: Arc::clone(&old.sources),
            mounter: Arc::clone(&old.mounter),
            node: old.node,
            cluster_domain: old.cluster_domain.clone(),
            host_resolv_conf: old.host_resolv_conf.clone(),
            cluster_dns: old.cluster_dns,
            disk_limits: Mutex::new(
                old.disk_limits
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            ),
            claim_paths: Mutex::new(
                old.claim_paths
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            ),
            tokens: Arc::clone(&old.tokens),
        };
        change(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The directory holding every pod's directory.
    #[must_use]
    pub fn pods_dir(&self) -> &Path {
        &self.inner.pods_dir
    }

    /// The pod's directory: `<pods_dir>/<uid>`.
    #[must_use]
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.inner.pods_dir.join(uid)
    }

    fn volume_dir(&self, uid: &str, kind: &Kind, name: &str) -> PathBuf {
        self.pod_dir(uid)
            .join("volumes")
            .join(kind.plugin())
            .join(name)
    }

    /// The recorded (not enforced) `sizeLimit` of each disk emptyDir of a pod, in bytes.
    #[must_use]
    pub fn disk_limits(&self, uid: &str) -> BTreeMap<String, u64> {
        self.inner
            .disk_limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(uid)
            .cloned()
            .unwrap_or_default()
    }

    fn claim_path(&self, uid: &str, volume: &str) -> Option<PathBuf> {
        self.inner
            .claim_paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(uid)
            .and_then(|m| m.get(volume))
            .cloned()
    }

    /// Creates the pod's volumes and `/etc` files, or refreshes them in place: configMap,
    /// secret, downward API and projected contents are swapped atomically when they changed
    /// and left alone otherwise. Every volume is tried; the first failure is returned.
    ///
    /// # Errors
    /// A missing non-optional source, a failed hostPath check, an unsupported volume, a
    /// mount or file system failure.
    pub async fn setup(&self, pod: &Pod, pod_ip: Option<&str>) -> Result<(), VolumeError> {
        let uid = checked_uid(pod.metadata.uid.as_deref().unwrap_or_default())?;
        let pod_dir = self.pod_dir(uid);
        ensure_dir(&pod_dir)?;
        let pod_ip = pod_ip
            .map(str::to_owned)
            .or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone()));
        let cluster_dns = self.inner.cluster_dns.map(|ip| etc_files::ClusterDns {
            server: ip.to_string(),
            domain: self.inner.cluster_domain.clone(),
        });
        etc_files::write(
            &pod_dir,
            pod,
            pod_ip.as_deref(),
            &self.inner.cluster_domain,
            &self.inner.host_resolv_conf,
            cluster_dns.as_ref(),
        )?;

        let namespace = pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(skiff_types::namespace::DEFAULT);
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_deref())
            .unwrap_or_default();
        let mut first_error = None;
        let mut limits = BTreeMap::new();
        let mut claim_paths = BTreeMap::new();
        for volume in volumes {
            let result = self
                .setup_one(pod, uid, namespace, volume, &mut limits, &mut claim_paths)
                .await;
            if let Err(e) = result {
                tracing::warn!(pod_uid = uid, volume = %volume.name, error = %e, "volume setup failed");
                first_error.get_or_insert(e);
            }
        }
        let mut recorded = self
            .inner
            .disk_limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if limits.is_empty() {
            recorded.remove(uid);
        } else {
            recorded.insert(uid.to_owned(), limits);
        }
        drop(recorded);
        let mut recorded = self
            .inner
            .claim_paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if claim_paths.is_empty() {
            recorded.remove(uid);
        } else {
            recorded.insert(uid.to_owned(), claim_paths);
        }
        drop(recorded);
        first_error.map_or(Ok(()), Err)
    }

    async fn setup_one(
        &self,
        pod: &Pod,
        uid: &str,
        namespace: &str,
        volume: &Volume,
        limits: &mut BTreeMap<String, u64>,
        claim_paths: &mut BTreeMap<String, PathBuf>,
    ) -> Result<(), VolumeError> {
        let kind =
            Kind::of(volume).ok_or_else(|| VolumeError::UnsupportedVolume(volume.name.clone()))?;
        let dir = self.volume_dir(uid, &kind, &volume.name);
        let sources = self.inner.sources.as_ref();
        let mounter = self.inner.mounter.as_ref();
        match (&kind, volume) {
            (
                Kind::EmptyDir,
                Volume {
                    empty_dir: Some(src),
                    ..
                },
            ) => {
                if let Some(limit) = empty_dir::setup(&dir, &volume.name, src, mounter)? {
                    limits.insert(volume.name.clone(), limit);
                }
            }
            (
                Kind::HostPath,
                Volume {
                    host_path: Some(src),
                    ..
                },
            ) => {
                host_path::check(src)?;
            }
            (
                Kind::ConfigMap,
                Volume {
                    config_map: Some(src),
                    ..
                },
            ) => {
                config_map::setup(&dir, src, sources, namespace).await?;
            }
            (
                Kind::Secret,
                Volume {
                    secret: Some(src), ..
                },
            ) => {
                secret::setup(&dir, src, sources, namespace, mounter).await?;
            }
            (
                Kind::DownwardApi,
                Volume {
                    downward_api: Some(src),
                    ..
                },
            ) => {
                downward_api::setup(&dir, &volume.name, pod, src, self.inner.node)?;
            }
            (
                Kind::Projected,
                Volume {
                    projected: Some(src),
                    ..
                },
            ) => {
                let inputs = projected::Inputs {
                    sources,
                    tokens: &self.inner.tokens,
                    node: self.inner.node,
                    now: k8s_openapi::jiff::Timestamp::now().as_second(),
                };
                projected::setup(&dir, &volume.name, pod, src, inputs, mounter).await?;
            }
            (
                Kind::PersistentClaim,
                Volume {
                    persistent_volume_claim: Some(src),
                    ..
                },
            ) => {
                let path = persistent_claim::setup(src, sources, namespace).await?;
                claim_paths.insert(volume.name.clone(), path);
            }
            _ => return Err(VolumeError::UnsupportedVolume(volume.name.clone())),
        }
        Ok(())
    }

    /// The bind mounts for `container`: its `volumeMounts` (with `subPath`, or `subPathExpr`
    /// expanded from `env`), then the pod's `/etc/hosts` (not for hostNetwork pods),
    /// `/etc/hostname` and `/etc/resolv.conf` unless the container mounts over them itself.
    /// A missing `subPath` directory is created, as the kubelet does. A `subPath` is opened
    /// beneath its volume and bound here, onto a target in the pod's directory that the
    /// returned mount names (see `sub_path`), so a container sharing the volume cannot
    /// redirect it with a symlink before the runtime mounts it.
    ///
    /// # Errors
    /// A mount of an undeclared volume, a `subPath` that is absolute or leaves its volume,
    /// a failed bind of a `subPath`.
    pub fn mounts(
        &self,
        pod: &Pod,
        container: &Container,
        env: &HashMap<String, String>,
    ) -> Result<Vec<VolumeMount>, VolumeError> {
        let uid = checked_uid(pod.metadata.uid.as_deref().unwrap_or_default())?;
        let spec = pod.spec.as_ref();
        let volumes = spec.and_then(|s| s.volumes.as_deref()).unwrap_or_default();
        let mut out = Vec::new();
        let pod_dir = self.pod_dir(uid);
        for (index, vm) in container
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let no_such = || VolumeError::NoSuchVolume {
                container: container.name.clone(),
                volume: vm.name.clone(),
            };
            let volume = volumes
                .iter()
                .find(|v| v.name == vm.name)
                .ok_or_else(no_such)?;
            let kind = Kind::of(volume)
                .ok_or_else(|| VolumeError::UnsupportedVolume(volume.name.clone()))?;
            let base = match (&volume.host_path, &kind) {
                (Some(hp), _) => PathBuf::from(&hp.path),
                (None, Kind::PersistentClaim) => self
                    .claim_path(uid, &volume.name)
                    .ok_or_else(|| VolumeError::ClaimNotSetUp(volume.name.clone()))?,
                (None, _) => self.volume_dir(uid, &kind, &volume.name),
            };
            let claim_read_only = volume
                .persistent_volume_claim
                .as_ref()
                .and_then(|c| c.read_only)
                .unwrap_or(false);
            let sub = match (&vm.sub_path, &vm.sub_path_expr) {
                (Some(s), _) if !s.is_empty() => Some(s.clone()),
                (_, Some(expr)) if !expr.is_empty() => Some(crate::pod::command::expand(expr, env)),
                _ => None,
            };
            let source = match sub {
                Some(sub) if !sub.is_empty() => {
                    let target = sub_path::target(&pod_dir, &volume.name, &container.name, index)?;
                    sub_path::bind(self.inner.mounter.as_ref(), &base, &sub, &target)?
                }
                _ => base,
            };
            out.push(VolumeMount {
                destination: vm.mount_path.clone(),
                source,
                read_only: vm.read_only.unwrap_or(false)
                    || kind.always_read_only()
                    || claim_read_only,
            });
        }

        let taken: HashSet<String> = out
            .iter()
            .map(|m| normalize_destination(&m.destination).to_owned())
            .collect();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        for (destination, file) in [
            ("/etc/hosts", etc_files::HOSTS),
            ("/etc/hostname", etc_files::HOSTNAME),
            ("/etc/resolv.conf", etc_files::RESOLV_CONF),
        ] {
            if taken.contains(destination) || (host_network && destination == "/etc/hosts") {
                continue;
            }
            out.push(VolumeMount {
                destination: destination.to_owned(),
                source: pod_dir.join(file),
                read_only: false,
            });
        }
        Ok(out)
    }

    /// Unmounts every mount under the pod's directory and removes its volume directories and
    /// `/etc` files; idempotent. hostPath volumes are never touched: they live elsewhere, and
    /// removal does not follow symlinks.
    ///
    /// # Errors
    /// An unmount failure, or a mount that survived it (then nothing is removed).
    pub async fn teardown(&self, uid: &str) -> Result<(), VolumeError> {
        let uid = checked_uid(uid)?.to_owned();
        let this = self.clone();
        // Removing a pod's files can take a while; keep it off the async workers.
        tokio::task::spawn_blocking(move || this.teardown_blocking(&uid))
            .await
            .map_err(|e| VolumeError::Interrupted(e.to_string()))?
    }

    fn teardown_blocking(&self, uid: &str) -> Result<(), VolumeError> {
        let pod_dir = self.pod_dir(uid);
        self.inner.tokens.forget_pod(uid);
        self.inner
            .disk_limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(uid);
        self.inner
            .claim_paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(uid);
        if fs::symlink_metadata(&pod_dir).is_err() {
            return Ok(());
        }
        let volumes_dir = pod_dir.join("volumes");
        let mounter = self.inner.mounter.as_ref();
        let mut points: Vec<PathBuf> = mounter.mounts_under(&pod_dir);
        for dir in volume_dirs(&volumes_dir)
            .into_iter()
            .chain(sub_path::targets(&pod_dir))
        {
            // mounts_under reports resolved paths; compare like with like so one mount is
            // never detached twice (the second could hit a mount stacked below it).
            let dir = fs::canonicalize(&dir).unwrap_or(dir);
            if mounter.is_mounted(&dir) && !points.contains(&dir) {
                points.push(dir);
            }
        }
        // Deepest first, so a mount inside another one goes before its parent.
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in &points {
            mounter.unmount(dir)?;
            tracing::debug!(pod_uid = uid, dir = %dir.display(), "volume unmounted");
        }
        if let Some(still) = points.iter().find(|d| mounter.is_mounted(d)) {
            return Err(VolumeError::StillMounted(still.clone()));
        }
        sub_path::remove_targets(&pod_dir)?;
        match fs::remove_dir_all(&volumes_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &volumes_dir)(e)),
        }
        for file in [
            etc_files::HOSTS,
            etc_files::HOSTNAME,
            etc_files::RESOLV_CONF,
        ] {
            let path = pod_dir.join(file);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path)(e)),
            }
        }
        // Other parts of the node may keep files here; the directory goes once it is empty.
        let _ = fs::remove_dir(&pod_dir);
        tracing::debug!(
            pod_uid = uid,
            unmounted = points.len(),
            "pod volumes removed"
        );
        Ok(())
    }
}

/// `volumes/<plugin>/<name>` directories.
fn volume_dirs(volumes_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(plugins) = fs::read_dir(volumes_dir) else {
        return out;
    };
    for plugin in plugins.flatten() {
        if !plugin.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Ok(names) = fs::read_dir(plugin.path()) {
            out.extend(
                names
                    .flatten()
                    .filter(|n| n.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|n| n.path()),
            );
        }
    }
    out
}

fn normalize_destination(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// Fakes for unprivileged tests: a mounter that records, sources from memory.
#[cfg(test)]
pub(crate) mod testing {
    use std::{
        collections::{BTreeMap, HashSet},
        path::{Path, PathBuf},
        sync::Mutex,
    };

    use async_trait::async_trait;
    use k8s_openapi::{
        api::{
            authentication::v1::{TokenRequest, TokenRequestStatus},
            core::v1::{PersistentVolume, PersistentVolumeClaim},
        },
        apimachinery::pkg::apis::meta::v1::Time,
    };

    use super::{Mounter, VolumeError};
    use crate::pod::command::{ConfigError, Sources};

    /// A recorded mounter call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Mount(PathBuf, Option<u64>),
        /// A sub path bind: what the opened descriptor named, and the target.
        Bind(PathBuf, PathBuf),
        Unmount(PathBuf),
    }

    /// Records mounts and pretends they happened.
    #[derive(Debug)]
    pub struct FakeMounter {
        calls: Mutex<Vec<Call>>,
        mounted: Mutex<HashSet<PathBuf>>,
        privileged: bool,
    }

    impl Default for FakeMounter {
        fn default() -> Self {
            Self {
                calls: Mutex::new(Vec::new()),
                mounted: Mutex::new(HashSet::new()),
                privileged: true,
            }
        }
    }

    impl FakeMounter {
        pub fn unprivileged() -> Self {
            Self {
                privileged: false,
                ..Self::default()
            }
        }

        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Mounter for FakeMounter {
        fn bind(&self, source: &Path, target: &Path) -> Result<(), VolumeError> {
            // What the opened sub path is, while its descriptor is still open.
            let opened = std::fs::read_link(source).unwrap_or_else(|_| source.to_owned());
            self.calls
                .lock()
                .unwrap()
                .push(Call::Bind(opened, target.to_owned()));
            self.mounted.lock().unwrap().insert(target.to_owned());
            Ok(())
        }

        fn mount_tmpfs(&self, dir: &Path, size: Option<u64>) -> Result<(), VolumeError> {
            self.calls
                .lock()
                .unwrap()
                .push(Call::Mount(dir.to_owned(), size));
            self.mounted.lock().unwrap().insert(dir.to_owned());
            Ok(())
        }

        fn unmount(&self, dir: &Path) -> Result<(), VolumeError> {
            self.calls
                .lock()
                .unwrap()
                .push(Call::Unmount(dir.to_owned()));
            self.mounted.lock().unwrap().remove(dir);
            Ok(())
        }

        fn is_mounted(&self, dir: &Path) -> bool {
            self.mounted.lock().unwrap().contains(dir)
        }

        fn can_mount(&self) -> bool {
            self.privileged
        }
    }

    type Objects = BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>;

    type Claims = BTreeMap<(String, String), (PersistentVolumeClaim, Option<PersistentVolume>)>;

    /// configMaps, secrets and claims held in memory; tokens issued as `token-<n>` at the
    /// time [`FakeSources::set_clock`] gave (or refused with the message of
    /// [`FakeSources::fail_tokens`]).
    #[derive(Debug, Default)]
    pub struct FakeSources {
        config_maps: Mutex<Objects>,
        secrets: Mutex<Objects>,
        claims: Mutex<Claims>,
        token_requests: Mutex<Vec<(String, String, TokenRequest)>>,
        token_failure: Mutex<Option<String>>,
        clock: Mutex<i64>,
    }

    fn data(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    impl FakeSources {
        pub fn set_config_map(&self, ns: &str, name: &str, entries: &[(&str, &str)]) {
            self.config_maps
                .lock()
                .unwrap()
                .insert((ns.to_owned(), name.to_owned()), data(entries));
        }

        pub fn set_claim(
            &self,
            ns: &str,
            name: &str,
            claim: PersistentVolumeClaim,
            volume: Option<PersistentVolume>,
        ) {
            self.claims
                .lock()
                .unwrap()
                .insert((ns.to_owned(), name.to_owned()), (claim, volume));
        }

        pub fn set_secret(&self, ns: &str, name: &str, entries: &[(&str, &str)]) {
            self.secrets
                .lock()
                .unwrap()
                .insert((ns.to_owned(), name.to_owned()), data(entries));
        }

        /// Sources issuing tokens at `now`.
        pub fn at(now: i64) -> Self {
            let sources = Self::default();
            sources.set_clock(now);
            sources
        }

        /// The Unix time tokens are issued at from now on.
        pub fn set_clock(&self, now: i64) {
            *self.clock.lock().unwrap() = now;
        }

        /// Token requests fail with `message` from now on.
        pub fn fail_tokens(&self, message: &str) {
            *self.token_failure.lock().unwrap() = Some(message.to_owned());
        }

        /// Every token request: namespace, account, request.
        pub fn token_requests(&self) -> Vec<(String, String, TokenRequest)> {
            self.token_requests.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Sources for FakeSources {
        async fn config_map(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
            let key = (namespace.to_owned(), name.to_owned());
            Ok(self.config_maps.lock().unwrap().get(&key).cloned())
        }

        async fn secret(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
            let key = (namespace.to_owned(), name.to_owned());
            Ok(self.secrets.lock().unwrap().get(&key).cloned())
        }

        async fn claim(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<(PersistentVolumeClaim, Option<PersistentVolume>)>, ConfigError>
        {
            let key = (namespace.to_owned(), name.to_owned());
            Ok(self.claims.lock().unwrap().get(&key).cloned())
        }

        async fn service_account_token(
            &self,
            namespace: &str,
            account: &str,
            request: &TokenRequest,
        ) -> Result<TokenRequest, ConfigError> {
            if let Some(message) = self.token_failure.lock().unwrap().clone() {
                return Err(ConfigError::Api(message));
            }
            let mut requests = self.token_requests.lock().unwrap();
            requests.push((namespace.to_owned(), account.to_owned(), request.clone()));
            let seconds = request.spec.expiration_seconds.unwrap_or(3600);
            let expires = *self.clock.lock().unwrap() + seconds;
            let mut answer = request.clone();
            answer.status = Some(TokenRequestStatus {
                token: format!("token-{}", requests.len()),
                expiration_timestamp: Time(
                    k8s_openapi::jiff::Timestamp::from_second(expires).unwrap(),
                ),
            });
            Ok(answer)
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{
            ConfigMapVolumeSource, EmptyDirVolumeSource, EnvVar, HostPathVolumeSource,
            PersistentVolume, PersistentVolumeClaim, PodSpec, SecretVolumeSource,
            VolumeMount as K8sVolumeMount,
        },
        apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
    };

    use super::{
        testing::{Call, FakeMounter, FakeSources},
        *,
    };

    struct Fixture {
        _tmp: tempfile::TempDir,
        pods: PathBuf,
        host: PathBuf,
        sources: Arc<FakeSources>,
        mounter: Arc<FakeMounter>,
        manager: VolumeManager,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let pods = tmp.path().join("pods");
        let host = tmp.path().join("host");
        fs::create_dir_all(&host).unwrap();
        let resolv = host.join("resolv.conf");
        fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
        let sources = Arc::new(FakeSources::default());
        let mounter = Arc::new(FakeMounter::default());
        let manager = VolumeManager::new(
            pods.clone(),
            Arc::clone(&sources) as Arc<dyn Sources>,
            Arc::clone(&mounter) as Arc<dyn Mounter>,
            NodeLimits::default(),
        )
        .with_host_resolv_conf(resolv);
        Fixture {
            _tmp: tmp,
            pods,
            host,
            sources,
            mounter,
            manager,
        }
    }

    fn volume(name: &str) -> Volume {
        Volume {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    fn pod(volumes: Vec<Volume>, containers: Vec<Container>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".to_owned()),
                namespace: Some("ns".to_owned()),
                uid: Some("uid-1".to_owned()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                volumes: Some(volumes),
                containers,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn standard_volumes(host_dir: &Path) -> Vec<Volume> {
        vec![
            Volume {
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..volume("scratch")
            },
            Volume {
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".to_owned()),
                    size_limit: Some(Quantity("16Mi".to_owned())),
                }),
                ..volume("mem")
            },
            Volume {
                host_path: Some(HostPathVolumeSource {
                    path: host_dir.to_string_lossy().into_owned(),
                    type_: Some("DirectoryOrCreate".to_owned()),
                }),
                ..volume("host")
            },
            Volume {
                config_map: Some(ConfigMapVolumeSource {
                    name: "cfg".to_owned(),
                    ..Default::default()
                }),
                ..volume("config")
            },
            Volume {
                secret: Some(SecretVolumeSource {
                    secret_name: Some("sec".to_owned()),
                    ..Default::default()
                }),
                ..volume("creds")
            },
        ]
    }

    fn mount(name: &str, path: &str) -> K8sVolumeMount {
        K8sVolumeMount {
            name: name.to_owned(),
            mount_path: path.to_owned(),
            ..Default::default()
        }
    }

    fn container(mounts: Vec<K8sVolumeMount>) -> Container {
        Container {
            name: "app".to_owned(),
            volume_mounts: Some(mounts),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn setup_lays_out_every_volume_under_the_pod_dir() {
        let f = fixture();
        f.sources.set_config_map("ns", "cfg", &[("app.conf", "v1")]);
        f.sources.set_secret("ns", "sec", &[("token", "t")]);
        let host_dir = f.host.join("data");
        let p = pod(standard_volumes(&host_dir), Vec::new());
        f.manager.setup(&p, Some("10.0.0.7")).await.unwrap();

        let vols = f.pods.join("uid-1/volumes");
        assert!(vols.join("kubernetes.io~empty-dir/scratch").is_dir());
        let cm = vols.join("kubernetes.io~configmap/config/app.conf");
        assert_eq!(fs::read_to_string(cm).unwrap(), "v1");
        let secret = vols.join("kubernetes.io~secret/creds");
        assert_eq!(fs::read_to_string(secret.join("token")).unwrap(), "t");
        assert!(host_dir.is_dir());
        assert!(
            fs::read_to_string(f.pods.join("uid-1/etc-hosts"))
                .unwrap()
                .ends_with("10.0.0.7\tweb\n")
        );
        assert_eq!(
            f.mounter.calls(),
            [
                Call::Mount(vols.join("kubernetes.io~empty-dir/mem"), Some(16 << 20)),
                Call::Mount(secret, None),
            ]
        );
    }

    #[tokio::test]
    async fn repeated_setup_updates_config_map_in_place_and_is_cheap_when_unchanged() {
        let f = fixture();
        f.sources.set_config_map("ns", "cfg", &[("app.conf", "v1")]);
        f.sources.set_secret("ns", "sec", &[("token", "t")]);
        let p = pod(standard_volumes(&f.host.join("data")), Vec::new());
        f.manager.setup(&p, None).await.unwrap();
        let dir = f.pods.join("uid-1/volumes/kubernetes.io~configmap/config");
        let first = fs::read_link(dir.join("..data")).unwrap();

        f.manager.setup(&p, None).await.unwrap();
        assert_eq!(fs::read_link(dir.join("..data")).unwrap(), first);
        assert_eq!(f.mounter.calls().len(), 2, "no new mounts");

        f.sources.set_config_map("ns", "cfg", &[("app.conf", "v2")]);
        f.manager.setup(&p, None).await.unwrap();
        assert_ne!(fs::read_link(dir.join("..data")).unwrap(), first);
        assert_eq!(fs::read_to_string(dir.join("app.conf")).unwrap(), "v2");
    }

    #[tokio::test]
    async fn one_failing_volume_does_not_stop_the_others() {
        let f = fixture();
        f.sources.set_secret("ns", "sec", &[("token", "t")]);
        let p = pod(standard_volumes(&f.host.join("data")), Vec::new());
        let err = f.manager.setup(&p, None).await.unwrap_err();
        assert_eq!(err.to_string(), "configmap \"cfg\" not found");
        let secret = f
            .pods
            .join("uid-1/volumes/kubernetes.io~secret/creds/token");
        assert!(secret.exists());
    }

    #[tokio::test]
    async fn disk_size_limits_are_recorded_and_forgotten_on_teardown() {
        let f = fixture();
        let p = pod(
            vec![Volume {
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: None,
                    size_limit: Some(Quantity("1Gi".to_owned())),
                }),
                ..volume("big")
            }],
            Vec::new(),
        );
        f.manager.setup(&p, None).await.unwrap();
        assert_eq!(
            f.manager.disk_limits("uid-1"),
            BTreeMap::from([("big".to_owned(), 1 << 30)])
        );
        f.manager.teardown("uid-1").await.unwrap();
        assert!(f.manager.disk_limits("uid-1").is_empty());
    }

    #[tokio::test]
    async fn unsupported_volume_types_and_bad_uids_are_refused() {
        let f = fixture();
        let p = pod(vec![volume("pvc")], Vec::new());
        let err = f.manager.setup(&p, None).await.unwrap_err();
        assert_eq!(err.to_string(), "volume \"pvc\": unsupported volume type");
        let mut p = pod(Vec::new(), Vec::new());
        for bad in ["", "..", "../x", "a/b", "/abs"] {
            p.metadata.uid = Some(bad.to_owned());
            assert!(
                matches!(
                    f.manager.setup(&p, None).await,
                    Err(VolumeError::InvalidUid(_))
                ),
                "{bad}"
            );
            assert!(f.manager.teardown(bad).await.is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn mounts_follow_volume_mounts_then_add_etc_files() {
        let f = fixture();
        f.sources.set_config_map("ns", "cfg", &[("app.conf", "v1")]);
        f.sources.set_secret("ns", "sec", &[("token", "t")]);
        let host_dir = f.host.join("data");
        let c = container(vec![
            mount("scratch", "/scratch"),
            K8sVolumeMount {
                read_only: Some(true),
                ..mount("host", "/host")
            },
            mount("config", "/etc/app"),
            mount("creds", "/var/run/creds"),
        ]);
        let p = pod(standard_volumes(&host_dir), vec![c.clone()]);
        f.manager.setup(&p, Some("10.0.0.7")).await.unwrap();
        let mounts = f.manager.mounts(&p, &c, &HashMap::new()).unwrap();
        let pod_dir = f.pods.join("uid-1");
        let vols = pod_dir.join("volumes");
        let expect = |d: &str, s: PathBuf, ro| VolumeMount {
            destination: d.to_owned(),
            source: s,
            read_only: ro,
        };
        assert_eq!(
            mounts,
            [
                expect(
                    "/scratch",
                    vols.join("kubernetes.io~empty-dir/scratch"),
                    false
                ),
                expect("/host", host_dir, true),
                expect(
                    "/etc/app",
                    vols.join("kubernetes.io~configmap/config"),
                    true
                ),
                expect(
                    "/var/run/creds",
                    vols.join("kubernetes.io~secret/creds"),
                    true
                ),
                expect("/etc/hosts", pod_dir.join("etc-hosts"), false),
                expect("/etc/hostname", pod_dir.join("etc-hostname"), false),
                expect("/etc/resolv.conf", pod_dir.join("resolv.conf"), false),
            ]
        );
    }

    #[tokio::test]
    async fn sub_path_and_sub_path_expr_point_inside_the_volume() {
        let f = fixture();
        f.sources.set_config_map("ns", "cfg", &[("app.conf", "v1")]);
        f.sources.set_secret("ns", "sec", &[("token", "t")]);
        let c = Container {
            env: Some(vec![EnvVar {
                name: "POD".to_owned(),
                value: Some("web".to_owned()),
                ..Default::default()
            }]),
            ..container(vec![
                K8sVolumeMount {
                    sub_path: Some("logs".to_owned()),
                    ..mount("scratch", "/logs")
                },
                K8sVolumeMount {
                    sub_path_expr: Some("data/$(POD)".to_owned()),
                    ..mount("scratch", "/data")
                },
                K8sVolumeMount {
                    sub_path: Some("app.conf".to_owned()),
                    ..mount("config", "/etc/app.conf")
                },
            ])
        };
        let p = pod(standard_volumes(&f.host.join("data")), vec![c.clone()]);
        f.manager.setup(&p, None).await.unwrap();
        let env = HashMap::from([("POD".to_owned(), "web".to_owned())]);
        let mounts = f.manager.mounts(&p, &c, &env).unwrap();
        let scratch =
            fs::canonicalize(f.pods.join("uid-1/volumes/kubernetes.io~empty-dir/scratch")).unwrap();
        let config =
            fs::canonicalize(f.pods.join("uid-1/volumes/kubernetes.io~configmap/config")).unwrap();
        // Each sub path is bound onto its own target in the pod's directory, and the
        // container mounts the target.
        let targets = f.pods.join("uid-1/volume-subpaths");
        let expected = [
            targets.join("scratch/app/0"),
            targets.join("scratch/app/1"),
            targets.join("config/app/2"),
        ];
        let sources: Vec<&Path> = mounts[..3].iter().map(|m| m.source.as_path()).collect();
        assert_eq!(
            sources,
            expected.iter().map(PathBuf::as_path).collect::<Vec<_>>()
        );
        let binds: Vec<(PathBuf, PathBuf)> = f
            .mounter
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Bind(opened, target) => Some((opened, target)),
                Call::Mount(..) | Call::Unmount(_) => None,
            })
            .collect();
        assert_eq!(binds.len(), 3);
        assert_eq!(binds[0], (scratch.join("logs"), expected[0].clone()));
        assert!(scratch.join("logs").is_dir(), "missing subPath created");
        assert!(expected[0].is_dir(), "a directory's target is a directory");
        assert_eq!(binds[1], (scratch.join("data/web"), expected[1].clone()));
        assert!(!mounts[1].read_only);
        // A configMap key is a symlink into its data directory: followed inside the volume.
        let (opened, target) = &binds[2];
        assert!(opened.starts_with(&config), "{}", opened.display());
        assert_eq!(fs::read_to_string(opened).unwrap(), "v1");
        assert!(target.is_file(), "a file's target is a file");
        assert!(mounts[2].read_only);
    }

    #[tokio::test]
    async fn a_restarted_container_binds_its_sub_path_target_again() {
        let f = fixture();
        let c = container(vec![K8sVolumeMount {
            sub_path: Some("logs".to_owned()),
            ..mount("scratch", "/logs")
        }]);
        let p = pod(
            vec![Volume {
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..volume("scratch")
            }],
            vec![c.clone()],
        );
        f.manager.setup(&p, None).await.unwrap();
        let first = f.manager.mounts(&p, &c, &HashMap::new()).unwrap();
        let second = f.manager.mounts(&p, &c, &HashMap::new()).unwrap();
        assert_eq!(first, second);
        let target = f.pods.join("uid-1/volume-subpaths/scratch/app/0");
        // The fake's target is not the opened directory, so the old bind goes first.
        let calls: Vec<Call> = f
            .mounter
            .calls()
            .into_iter()
            .filter(|c| !matches!(c, Call::Mount(..)))
            .collect();
        let logs = fs::canonicalize(
            f.pods
                .join("uid-1/volumes/kubernetes.io~empty-dir/scratch/logs"),
        )
        .unwrap();
        assert_eq!(
            calls,
            [
                Call::Bind(logs.clone(), target.clone()),
                Call::Unmount(target.clone()),
                Call::Bind(logs, target),
            ]
        );
    }

    #[tokio::test]
    async fn escaping_sub_paths_are_refused() {
        let f = fixture();
        let outside = f.host.join("secret-dir");
        fs::create_dir_all(&outside).unwrap();
        let p0 = pod(standard_volumes(&f.host.join("data")), Vec::new());
        let scratch = f.pods.join("uid-1/volumes/kubernetes.io~empty-dir/scratch");
        fs::create_dir_all(&scratch).unwrap();
        std::os::unix::fs::symlink(&outside, scratch.join("link")).unwrap();
        for (sub, expr) in [
            (Some("../../x"), None),
            (Some("/etc"), None),
            (None, Some("$(UP)/x")),
            (Some("link"), None),
        ] {
            let c = container(vec![K8sVolumeMount {
                sub_path: sub.map(str::to_owned),
                sub_path_expr: expr.map(str::to_owned),
                ..mount("scratch", "/x")
            }]);
            let env = HashMap::from([("UP".to_owned(), "..".to_owned())]);
            let err = f.manager.mounts(&p0, &c, &env).unwrap_err();
            assert!(
                matches!(err, VolumeError::InvalidSubPath { .. }),
                "{sub:?} {expr:?}: {err}"
            );
        }
    }

    #[test]
    fn etc_files_are_skipped_when_mounted_over_or_host_network() {
        let f = fixture();
        let c = container(vec![mount("scratch", "/etc/resolv.conf/")]);
        let mut p = pod(standard_volumes(&f.host.join("data")), vec![c.clone()]);
        let dests = |mounts: Vec<VolumeMount>| {
            mounts
                .into_iter()
                .map(|m| m.destination)
                .collect::<Vec<_>>()
        };
        let got = dests(f.manager.mounts(&p, &c, &HashMap::new()).unwrap());
        assert_eq!(got, ["/etc/resolv.conf/", "/etc/hosts", "/etc/hostname"]);
        p.spec.as_mut().unwrap().host_network = Some(true);
        let got = dests(f.manager.mounts(&p, &c, &HashMap::new()).unwrap());
        assert_eq!(got, ["/etc/resolv.conf/", "/etc/hostname"]);
    }

    #[test]
    fn mount_of_undeclared_volume_is_an_error() {
        let f = fixture();
        let c = container(vec![mount("ghost", "/x")]);
        let p = pod(Vec::new(), vec![c.clone()]);
        let err = f.manager.mounts(&p, &c, &HashMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "container \"app\" mounts unknown volume \"ghost\""
        );
    }

    #[tokio::test]
    async fn teardown_unmounts_tmpfs_removes_dirs_and_spares_host_paths() {
        let f = fixture();
        f.sources.set_config_map("ns", "cfg", &[("app.conf", "v1")]);
        f.sources.set_secret("ns", "sec", &[("token", "t")]);
        let host_dir = f.host.join("data");
        let p = pod(standard_volumes(&host_dir), Vec::new());
        f.manager.setup(&p, None).await.unwrap();
        fs::write(host_dir.join("keep"), "x").unwrap();
        // A symlink to the host inside an emptyDir must not lead removal outside.
        let scratch = f.pods.join("uid-1/volumes/kubernetes.io~empty-dir/scratch");
        std::os::unix::fs::symlink(&host_dir, scratch.join("escape")).unwrap();
        let c = container(vec![K8sVolumeMount {
            sub_path: Some("logs".to_owned()),
            ..mount("scratch", "/logs")
        }]);
        f.manager.mounts(&p, &c, &HashMap::new()).unwrap();
        let target = f.pods.join("uid-1/volume-subpaths/scratch/app/0");

        f.manager.teardown("uid-1").await.unwrap();
        let vols = f.pods.join("uid-1/volumes");
        let mut unmounted: Vec<Call> = f
            .mounter
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Unmount(_)))
            .collect();
        unmounted.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            unmounted,
            [
                Call::Unmount(target),
                Call::Unmount(vols.join("kubernetes.io~empty-dir/mem")),
                Call::Unmount(vols.join("kubernetes.io~secret/creds")),
            ]
        );
        assert!(!f.pods.join("uid-1/volume-subpaths").exists());
        assert!(!f.pods.join("uid-1").exists());
        assert_eq!(fs::read_to_string(host_dir.join("keep")).unwrap(), "x");

        f.manager.teardown("uid-1").await.unwrap();
        f.manager.teardown("never-existed").await.unwrap();
    }

    #[tokio::test]
    async fn teardown_keeps_other_files_of_the_pod_dir() {
        let f = fixture();
        let p = pod(Vec::new(), Vec::new());
        f.manager.setup(&p, None).await.unwrap();
        fs::write(f.pods.join("uid-1/record.json"), "{}").unwrap();
        f.manager.teardown("uid-1").await.unwrap();
        assert!(f.pods.join("uid-1/record.json").exists());
        assert!(!f.pods.join("uid-1/etc-hosts").exists());
    }

    #[tokio::test]
    async fn a_claim_mounts_its_bound_volumes_directory_once_bound() {
        let f = fixture();
        let dir = f.host.join("pvc-1");
        let claim_volume = Volume {
            persistent_volume_claim: Some(
                k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                    claim_name: "data".to_owned(),
                    read_only: None,
                },
            ),
            ..volume("data")
        };
        let p = pod(vec![claim_volume], Vec::new());
        let err = f.manager.setup(&p, None).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "error processing PVC ns/data: persistentvolumeclaim \"data\" not found"
        );

        let mut claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "data", "namespace": "ns"},
            "spec": {"storageClassName": "local-path"},
            "status": {"phase": "Pending"},
        }))
        .unwrap();
        f.sources.set_claim("ns", "data", claim.clone(), None);
        let err = f.manager.setup(&p, None).await.unwrap_err();
        assert!(err.to_string().ends_with("PVC is not bound"), "{err}");

        claim.spec.as_mut().unwrap().volume_name = Some("pvc-1".to_owned());
        claim.status.as_mut().unwrap().phase = Some("Bound".to_owned());
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pvc-1"},
            "spec": {"hostPath": {"path": dir.to_str().unwrap(), "type": "DirectoryOrCreate"}},
        }))
        .unwrap();
        f.sources.set_claim("ns", "data", claim, Some(pv));
        f.manager.setup(&p, None).await.unwrap();
        assert!(dir.is_dir(), "DirectoryOrCreate made the directory");
        let mounts = f
            .manager
            .mounts(
                &p,
                &container(vec![mount("data", "/data")]),
                &HashMap::new(),
            )
            .unwrap();
        assert_eq!(mounts[0].source, dir);
        assert!(!mounts[0].read_only);

        fs::write(dir.join("kept"), "x").unwrap();
        f.manager.teardown("uid-1").await.unwrap();
        assert!(
            dir.join("kept").exists(),
            "teardown leaves the volume's data"
        );
    }
}
