//! What the pod worker asks the runtime to run: one container's resolved configuration,
//! kept free of OCI details so the caller needs no knowledge of the spec format.

use std::path::PathBuf;

/// Everything needed to create and start one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    /// `<pod-uid>-<container>-<restart>`; must be a valid libcontainer id
    /// (letters, digits, `_`, `+`, `-`, `.`).
    pub id: String,
    /// `<state>/containers/<id>`; created by the runtime, removed by `delete`.
    pub bundle_dir: PathBuf,
    /// The container's root filesystem, already mounted by the image store.
    pub rootfs: PathBuf,
    /// The resolved command line; must not be empty.
    pub args: Vec<String>,
    /// Environment as `K=V`.
    pub env: Vec<String>,
    /// Working directory inside the container (`/` when unset).
    pub cwd: String,
    /// The user the process runs as.
    pub user: UserSpec,
    /// Hostname; only honoured when the UTS namespace is private to the pod.
    pub hostname: Option<String>,
    /// Namespaces shared with the pod (or the host).
    pub namespaces: PodNamespaces,
    /// Caller mounts (volumes, `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`), added after
    /// the defaults the runtime always provides.
    pub mounts: Vec<MountSpec>,
    /// Capabilities, seccomp and related hardening.
    pub security: SecuritySpec,
    /// cgroup limits.
    pub resources: ResourceSpec,
    /// The cgroup v1 path, e.g. `/skiff/<node>/pod<uid>/<id>`.
    pub cgroups_path: String,
    /// Full directory under the cgroup v2 mount that the init process is moved into (hybrid
    /// hosts); `None` on pure v2 hosts and in tests.
    pub cgroup_v2_path: Option<PathBuf>,
    /// Where the CRI-format log is written.
    pub log_path: PathBuf,
    /// Keep a stdin FIFO open for the container instead of `/dev/null`.
    pub stdin: bool,
    /// Run under a terminal whose master the daemon holds (stdout and stderr merged into it;
    /// with `stdin`, attached clients type into it).
    pub tty: bool,
}

/// The numeric identity of the container's process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSpec {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
}

/// Which namespaces the container joins. `Some(path)` joins that namespace, `None` stays in
/// the host's. PID and mount namespaces are always new and private to the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNamespaces {
    /// Network namespace (`None` = hostNetwork).
    pub net: Option<PathBuf>,
    /// IPC namespace (`None` = hostIPC).
    pub ipc: Option<PathBuf>,
    /// UTS namespace (`None` = host's hostname).
    pub uts: Option<PathBuf>,
}

/// One mount the caller adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Absolute path inside the container.
    pub destination: String,
    /// Host path for binds; ignored for tmpfs.
    pub source: PathBuf,
    /// Mount read-only.
    pub read_only: bool,
    /// Bind or tmpfs.
    pub kind: MountKind,
}

impl MountSpec {
    /// A recursive bind of the host's `source` at `destination`.
    #[must_use]
    pub fn bind(destination: String, source: PathBuf, read_only: bool) -> Self {
        Self {
            destination,
            source,
            read_only,
            kind: MountKind::Bind,
        }
    }
}

/// The kind of a caller mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// A recursive bind of `source`.
    Bind,
    /// A fresh tmpfs, optionally size-limited in bytes.
    Tmpfs {
        /// Size limit in bytes.
        size: Option<u64>,
    },
}

/// Security settings of the container's process.
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent switches, each a field of the Kubernetes securityContext"
)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecuritySpec {
    /// All capabilities, no seccomp, no masked paths, all devices.
    pub privileged: bool,
    /// Capabilities added to Docker's default set (with or without `CAP_`).
    pub capabilities_add: Vec<String>,
    /// Capabilities removed from the default set; `ALL` drops every one.
    pub capabilities_drop: Vec<String>,
    /// Mount the root filesystem read-only.
    pub read_only_rootfs: bool,
    /// Set `no_new_privs` on the process.
    pub no_new_privileges: bool,
    /// Which seccomp profile applies (ignored when privileged).
    pub seccomp: SeccompMode,
    /// Mask `/proc/kcore` and friends and make `/proc/sys` etc. read-only (ignored when
    /// privileged).
    pub masked_paths: bool,
}

/// The seccomp profile of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// skiff's deny-list profile (see `spec::runtime_default_seccomp`).
    #[default]
    RuntimeDefault,
    /// No filter.
    Unconfined,
}

/// cgroup limits, all optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceSpec {
    /// `cpu.shares`.
    pub cpu_shares: Option<u64>,
    /// `cpu.cfs_quota_us`.
    pub cpu_quota: Option<i64>,
    /// `cpu.cfs_period_us`.
    pub cpu_period: Option<u64>,
    /// `memory.limit_in_bytes`.
    pub memory_limit: Option<i64>,
    /// `pids.max`.
    pub pids_limit: Option<i64>,
}

/// How the CRI log of each container is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// Rotate once the current file would grow past this many bytes.
    pub max_bytes: u64,
    /// Files kept, counting the current one (`<path>`, `<path>.1`, ...).
    pub max_files: u32,
}

impl Default for LogRotation {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}
