//! Turns a [`ContainerConfig`] into the OCI runtime spec libcontainer reads from the
//! bundle's `config.json`: default mounts, namespaces joined by path, Docker's default
//! capabilities, skiff's seccomp deny-list and cgroup limits.

use std::collections::BTreeSet;

use oci_spec::runtime::Spec;
use serde_json::{Value, json};

use super::config::{ContainerConfig, MountKind, SeccompMode};

/// Errors turning a container configuration into an OCI spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The command line is empty.
    #[error("container {id} has no command")]
    NoCommand {
        /// The container.
        id: String,
    },
    /// A capability name is not one Linux knows.
    #[error("unknown capability {name}")]
    UnknownCapability {
        /// The name as given.
        name: String,
    },
    /// The assembled document is not a valid OCI spec.
    #[error("invalid oci spec: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// Docker's default capability set, which Kubernetes containers start from.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the OCI spec (and so libcontainer) knows, for privileged containers and
/// `add: [ALL]`.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETGID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
];

/// Syscalls the `RuntimeDefault` profile answers with `EPERM`.
///
/// The profile is a deny-list (default action allow), unlike Docker's allow-list: it keeps
/// the calls Docker's default profile refuses to unprivileged containers that matter most
/// for host safety (kernel modules, kexec, reboot, swap, BPF and perf, the kernel keyring,
/// clock and accounting changes, `userfaultfd`, old `uselib`/`sysfs` style calls). Calls
/// Docker allows conditionally on a capability (`mount`, `unshare`, `ptrace` on >= 4.8
/// kernels) stay allowed: the capability set already guards them.
pub const DENIED_SYSCALLS: [&str; 27] = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "init_module",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "query_module",
    "reboot",
    "request_key",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "uselib",
    "userfaultfd",
    "vm86",
];

/// Paths hidden from unprivileged containers (bind of `/dev/null` or an empty tmpfs).
const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Paths unprivileged containers see read-only.
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Size of the private `/dev/shm` (Docker's and the kubelet's default).
const SHM_BYTES: u64 = 64 * 1024 * 1024;

/// Builds the OCI spec for `config`.
///
/// # Errors
/// If the command is empty, a capability name is unknown or the result is not a valid spec.
pub fn build_spec(config: &ContainerConfig) -> Result<Spec, SpecError> {
    if config.args.is_empty() {
        return Err(SpecError::NoCommand {
            id: config.id.clone(),
        });
    }
    let security = &config.security;
    let privileged = security.privileged;
    let caps: Vec<String> = capabilities(
        privileged,
        &security.capabilities_add,
        &security.capabilities_drop,
    )?
    .into_iter()
    .collect();

    let mut process = json!({
        // The init opens the terminal and sends its master to the daemon's console socket.
        "terminal": config.tty,
        "user": {
            "uid": config.user.uid,
            "gid": config.user.gid,
            "additionalGids": config.user.additional_gids,
        },
        "args": config.args,
        "env": config.env,
        "cwd": if config.cwd.is_empty() { "/" } else { config.cwd.as_str() },
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
        },
    });
    // libcontainer 0.7 decides when to load seccomp by whether this field is present, not
    // by its value: present means "after dropping capabilities", which without
    // no_new_privs fails with EACCES. So it is only written when true.
    if security.no_new_privileges {
        process["noNewPrivileges"] = json!(true);
    }

    let mut linux = json!({
        "cgroupsPath": config.cgroups_path,
        "namespaces": namespaces(config),
        "resources": resources(config),
    });
    if !privileged {
        if security.masked_paths {
            linux["maskedPaths"] = json!(MASKED_PATHS);
            linux["readonlyPaths"] = json!(READONLY_PATHS);
        }
        if security.seccomp == SeccompMode::RuntimeDefault {
            linux["seccomp"] = runtime_default_seccomp();
        }
    }

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "root": { "path": config.rootfs, "readonly": security.read_only_rootfs },
        "process": process.take(),
        "mounts": mounts(config),
        "linux": linux,
    });
    if let (Some(hostname), Some(_)) = (&config.hostname, &config.namespaces.uts) {
        spec["hostname"] = json!(hostname);
    }
    Ok(serde_json::from_value(spec)?)
}

/// The capability set after `add` and `drop` (names with or without `CAP_`, any case; `ALL`
/// in either list means every capability).
///
/// # Errors
/// If a name is not a known capability.
pub fn capabilities(
    privileged: bool,
    add: &[String],
    drop: &[String],
) -> Result<BTreeSet<String>, SpecError> {
    if privileged {
        return Ok(ALL_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect());
    }
    let mut set: BTreeSet<String> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    for name in drop {
        match normalize_capability(name)? {
            None => set.clear(),
            Some(cap) => {
                set.remove(&cap);
            }
        }
    }
    // Kubernetes applies adds after drops, so `drop: [ALL], add: [NET_ADMIN]` keeps one.
    for name in add {
        match normalize_capability(name)? {
            None => set.extend(ALL_CAPABILITIES.iter().map(|c| (*c).to_owned())),
            Some(cap) => {
                set.insert(cap);
            }
        }
    }
    Ok(set)
}

/// `net_admin` / `CAP_NET_ADMIN` -> `Some("CAP_NET_ADMIN")`; `ALL` -> `None`.
fn normalize_capability(name: &str) -> Result<Option<String>, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" || upper == "CAP_ALL" {
        return Ok(None);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL_CAPABILITIES.contains(&full.as_str()) {
        Ok(Some(full))
    } else {
        Err(SpecError::UnknownCapability {
            name: name.to_owned(),
        })
    }
}

fn namespaces(config: &ContainerConfig) -> Value {
    let mut list = vec![json!({ "type": "pid" }), json!({ "type": "mount" })];
    let shared = [
        ("network", &config.namespaces.net),
        ("ipc", &config.namespaces.ipc),
        ("uts", &config.namespaces.uts),
    ];
    for (kind, path) in shared {
        if let Some(path) = path {
            list.push(json!({ "type": kind, "path": path }));
        }
    }
    Value::Array(list)
}

fn resources(config: &ContainerConfig) -> Value {
    let r = &config.resources;
    // Unprivileged containers get the runtime's default device allow-list on top of this
    // deny-all; privileged ones may use every device.
    let mut resources = json!({
        "devices": [{ "allow": config.security.privileged, "access": "rwm" }],
    });
    let mut cpu = serde_json::Map::new();
    if let Some(shares) = r.cpu_shares {
        cpu.insert("shares".into(), json!(shares));
    }
    if let Some(quota) = r.cpu_quota {
        cpu.insert("quota".into(), json!(quota));
    }
    if let Some(period) = r.cpu_period {
        cpu.insert("period".into(), json!(period));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(limit) = r.memory_limit {
        resources["memory"] = json!({ "limit": limit });
    }
    if let Some(limit) = r.pids_limit {
        resources["pids"] = json!({ "limit": limit });
    }
    resources
}

fn mounts(config: &ContainerConfig) -> Value {
    let privileged = config.security.privileged;
    let sys_mode = if privileged { "rw" } else { "ro" };
    let mut list = vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc",
                "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] }),
        json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={SHM_BYTES}")] }),
        json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", sys_mode] }),
        json!({ "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", sys_mode] }),
    ];
    for m in &config.mounts {
        let mut options: Vec<String> = Vec::new();
        let (kind, source) = match m.kind {
            MountKind::Bind => {
                options.extend(["rbind".into(), "rprivate".into()]);
                ("bind", m.source.to_string_lossy().into_owned())
            }
            MountKind::Tmpfs { size } => {
                options.extend(["nosuid".into(), "nodev".into()]);
                if let Some(size) = size {
                    options.push(format!("size={size}"));
                }
                ("tmpfs", "tmpfs".to_owned())
            }
        };
        options.push(if m.read_only { "ro" } else { "rw" }.into());
        list.push(json!({
            "destination": m.destination,
            "type": kind,
            "source": source,
            "options": options,
        }));
    }
    Value::Array(list)
}

/// skiff's `RuntimeDefault` seccomp profile: allow everything except [`DENIED_SYSCALLS`],
/// which fail with `EPERM` for the native architecture and its 32-bit companions.
#[must_use]
pub fn runtime_default_seccomp() -> Value {
    let architectures: &[&str] = if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    };
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures,
        "syscalls": [{
            "names": DENIED_SYSCALLS,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
        }],
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use oci_spec::runtime::{Capability, LinuxNamespaceType, LinuxSeccompAction};

    use super::*;
    use crate::config::{MountSpec, PodNamespaces, ResourceSpec, SecuritySpec};

    fn config() -> ContainerConfig {
        ContainerConfig {
            id: "pod-c-0".into(),
            bundle_dir: "/state/containers/pod-c-0".into(),
            rootfs: "/state/rootfs/pod-c-0".into(),
            args: vec!["sleep".into(), "1".into()],
            env: vec!["A=b".into()],
            cwd: String::new(),
            cgroups_path: "/skiff/n/podx/pod-c-0".into(),
            security: SecuritySpec {
                masked_paths: true,
                ..SecuritySpec::default()
            },
            ..ContainerConfig::default()
        }
    }

    fn caps(spec: &Spec) -> Vec<Capability> {
        let set = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.bounding().clone())
            .unwrap_or_default();
        let mut v: Vec<_> = set.into_iter().collect();
        v.sort_by_key(ToString::to_string);
        v
    }

    #[test]
    fn default_container_gets_dockers_fourteen_capabilities() {
        let spec = build_spec(&config()).unwrap();
        assert_eq!(caps(&spec).len(), 14);
        assert!(caps(&spec).contains(&Capability::NetBindService));
        assert!(!caps(&spec).contains(&Capability::SysAdmin));
    }

    #[test]
    fn capabilities_accept_names_with_or_without_prefix() {
        let set = capabilities(
            false,
            &["net_admin".into()],
            &["CAP_CHOWN".into(), "kill".into()],
        )
        .unwrap();
        assert!(set.contains("CAP_NET_ADMIN"));
        assert!(!set.contains("CAP_CHOWN"));
        assert!(!set.contains("CAP_KILL"));
        assert_eq!(set.len(), 13);
    }

    #[test]
    fn drop_all_then_add_keeps_only_the_added() {
        let set = capabilities(false, &["NET_BIND_SERVICE".into()], &["ALL".into()]).unwrap();
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            ["CAP_NET_BIND_SERVICE"]
        );
    }

    #[test]
    fn add_all_grants_every_capability() {
        let set = capabilities(false, &["ALL".into()], &[]).unwrap();
        assert_eq!(set.len(), ALL_CAPABILITIES.len());
    }

    #[test]
    fn unknown_capability_is_rejected() {
        let err = capabilities(false, &["FLY".into()], &[]).unwrap_err();
        assert!(matches!(err, SpecError::UnknownCapability { .. }));
    }

    #[test]
    fn privileged_gets_all_caps_no_seccomp_no_masks_and_all_devices() {
        let mut c = config();
        c.security.privileged = true;
        let spec = build_spec(&c).unwrap();
        assert_eq!(caps(&spec).len(), ALL_CAPABILITIES.len());
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert!(linux.masked_paths().as_ref().is_none_or(Vec::is_empty));
        let devices = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(devices[0].allow());
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"rw".to_owned()));
    }

    #[test]
    fn unprivileged_gets_masked_paths_deny_all_devices_and_seccomp() {
        let spec = build_spec(&config()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_owned())
        );
        assert!(
            linux
                .readonly_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/sys".to_owned())
        );
        let seccomp = linux.seccomp().as_ref().unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
        let rule = &seccomp.syscalls().as_ref().unwrap()[0];
        assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno);
        assert!(rule.names().contains(&"kexec_load".to_owned()));
        let devices = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(!devices[0].allow());
    }

    #[test]
    fn unconfined_seccomp_has_no_filter() {
        let mut c = config();
        c.security.seccomp = SeccompMode::Unconfined;
        let spec = build_spec(&c).unwrap();
        assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
    }

    #[test]
    fn read_only_rootfs_sets_root_readonly() {
        let mut c = config();
        c.security.read_only_rootfs = true;
        let spec = build_spec(&c).unwrap();
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.readonly(), Some(true));
        assert_eq!(root.path(), &PathBuf::from("/state/rootfs/pod-c-0"));
    }

    #[test]
    fn namespaces_join_pod_paths_and_keep_pid_and_mount_private() {
        let mut c = config();
        c.namespaces = PodNamespaces {
            net: Some("/run/netns/pod".into()),
            ipc: None,
            uts: Some("/proc/7/ns/uts".into()),
        };
        c.hostname = Some("web-0".into());
        let spec = build_spec(&c).unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let find = |t| ns.iter().find(|n| n.typ() == t);
        assert!(find(LinuxNamespaceType::Pid).unwrap().path().is_none());
        assert!(find(LinuxNamespaceType::Mount).unwrap().path().is_none());
        assert_eq!(
            find(LinuxNamespaceType::Network).unwrap().path(),
            &Some(PathBuf::from("/run/netns/pod"))
        );
        assert!(find(LinuxNamespaceType::Ipc).is_none(), "host ipc");
        assert_eq!(spec.hostname().as_deref(), Some("web-0"));
    }

    #[test]
    fn hostname_is_skipped_without_a_uts_namespace() {
        let mut c = config();
        c.hostname = Some("web-0".into());
        let spec = build_spec(&c).unwrap();
        assert!(spec.hostname().is_none());
    }

    #[test]
    fn resources_become_linux_resources() {
        let mut c = config();
        c.resources = ResourceSpec {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(16 << 20),
            pids_limit: Some(100),
        };
        let spec = build_spec(&c).unwrap();
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        let cpu = r.cpu().clone().unwrap();
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(r.memory().unwrap().limit(), Some(16 << 20));
        assert_eq!(r.pids().unwrap().limit(), 100);
        assert_eq!(
            spec.linux().as_ref().unwrap().cgroups_path(),
            &Some(PathBuf::from("/skiff/n/podx/pod-c-0"))
        );
    }

    #[test]
    fn caller_mounts_follow_the_defaults() {
        let mut c = config();
        c.mounts = vec![
            MountSpec::bind("/etc/hosts".into(), "/state/pods/x/hosts".into(), true),
            MountSpec {
                destination: "/scratch".into(),
                source: PathBuf::new(),
                read_only: false,
                kind: MountKind::Tmpfs { size: Some(1024) },
            },
        ];
        let spec = build_spec(&c).unwrap();
        let mounts = spec.mounts().clone().unwrap();
        let dests: Vec<_> = mounts.iter().map(|m| m.destination().clone()).collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
        ] {
            assert!(dests.contains(&PathBuf::from(d)), "{d}");
        }
        let hosts = &mounts[mounts.len() - 2];
        assert_eq!(hosts.typ().as_deref(), Some("bind"));
        assert_eq!(hosts.source(), &Some(PathBuf::from("/state/pods/x/hosts")));
        let opts = hosts.options().clone().unwrap();
        assert!(opts.contains(&"rbind".to_owned()) && opts.contains(&"ro".to_owned()));
        let scratch = mounts.last().unwrap();
        assert_eq!(scratch.typ().as_deref(), Some("tmpfs"));
        assert!(
            scratch
                .options()
                .clone()
                .unwrap()
                .contains(&"size=1024".to_owned())
        );
    }

    #[test]
    fn process_carries_user_env_and_default_cwd() {
        let mut c = config();
        c.user.uid = 1000;
        c.user.gid = 1000;
        c.user.additional_gids = vec![5];
        c.security.no_new_privileges = true;
        let spec = build_spec(&c).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.user().additional_gids().clone().unwrap(), vec![5]);
        assert_eq!(p.cwd(), &PathBuf::from("/"));
        assert_eq!(p.env().clone().unwrap(), vec!["A=b".to_owned()]);
        assert_eq!(p.no_new_privileges(), Some(true));
    }

    #[test]
    fn no_new_privileges_is_absent_when_false() {
        let spec = build_spec(&config()).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().no_new_privileges(), None);
    }

    #[test]
    fn empty_command_is_rejected() {
        let mut c = config();
        c.args.clear();
        assert!(matches!(build_spec(&c), Err(SpecError::NoCommand { .. })));
    }
}
