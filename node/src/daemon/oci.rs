//! A pod's container as the runtime's [`ContainerConfig`]: the user from the security
//! contexts and the image's passwd file, capabilities and seccomp, cgroup limits from
//! requests and limits, namespaces, hostname, cgroup and log paths. Pure, apart from reading
//! the image's `/etc/passwd` and `/etc/group`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use skiff_kubelet::pod::{
    backend::{BackendError, Run},
    volume::VolumeMount,
};
use skiff_node_runtime::{
    ContainerConfig, MountSpec, PodNamespaces, ResourceSpec, SeccompMode, SecuritySpec, UserSpec,
};

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

/// cgroup settings from requests and limits, as the kubelet maps them: CPU shares from the
/// request (the limit when only a limit is set, 2 when neither), a CFS quota from the CPU
/// limit, the memory limit in bytes.
#[must_use]
pub fn resources(container: &Container) -> ResourceSpec {
    const PERIOD: u64 = 100_000;
    let cpu_limit = milli(container, "limits", "cpu");
    let cpu_request = milli(container, "requests", "cpu").or(cpu_limit);
    let memory = milli(container, "limits", "memory").map(|m| m / 1000);
    ResourceSpec {
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

/// An entry of the image's `/etc/passwd` or `/etc/group` as (id, primary group), found by
/// `key`: the name, or (`by_id`) the numeric id.
fn passwd_lookup(rootfs: &Path, file: &str, key: &str, by_id: bool) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(rootfs.join("etc").join(file)).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let field = if by_id { fields.get(2) } else { fields.first() };
        (field == Some(&key)).then(|| {
            let id = fields.get(2)?.parse().ok()?;
            let gid = fields.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
            Some((id, gid))
        })?
    })
}

fn config_error(message: impl Into<String>) -> BackendError {
    BackendError::new("CreateContainerConfigError", message)
}

/// The user a container runs as: its securityContext, the pod's, then the image's `USER`
/// (a name or uid, with an optional group, looked up in the image's passwd and group
/// files). `runAsNonRoot` refuses uid 0.
///
/// # Errors
/// `CreateContainerConfigError` for an image user the passwd file does not know, or a
/// container that would run as root under `runAsNonRoot`.
pub fn user(
    pod: &Pod,
    container: &Container,
    image_user: Option<&str>,
    rootfs: &Path,
) -> Result<UserSpec, BackendError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let (mut uid, mut gid) = (0_u32, 0_u32);
    if let Some(spec) = image_user.filter(|u| !u.is_empty()) {
        let (u, g) = spec
            .split_once(':')
            .map_or((spec, None), |(u, g)| (u, Some(g)));
        if let Ok(n) = u.parse() {
            // A numeric user's primary group is the one its passwd entry names, if any.
            uid = n;
            gid = passwd_lookup(rootfs, "passwd", u, true).map_or(0, |(_, g)| g);
        } else if let Some((n, g)) = passwd_lookup(rootfs, "passwd", u, false) {
            (uid, gid) = (n, g);
        } else {
            return Err(config_error(format!(
                "unable to find user {u}: no matching entries in passwd file"
            )));
        }
        if let Some(g) = g {
            gid = g
                .parse()
                .ok()
                .or_else(|| passwd_lookup(rootfs, "group", g, false).map(|(n, _)| n))
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
        return Err(config_error(
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
    Ok(UserSpec {
        uid,
        gid,
        additional_gids: additional,
    })
}

/// Capabilities, seccomp and hardening from the container's securityContext (the pod's for
/// the seccomp profile when the container sets none). Privileged containers get everything.
#[must_use]
pub fn security(pod: &Pod, container: &Container) -> SecuritySpec {
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
    SecuritySpec {
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
            SeccompMode::Unconfined
        } else {
            SeccompMode::RuntimeDefault
        },
        masked_paths: !privileged,
    }
}

/// Where one run of a container lives on the node.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The runtime ID.
    pub id: String,
    /// `<state>/containers/<id>`: the bundle goes in `bundle/` below it.
    pub dir: PathBuf,
    /// The mounted root filesystem.
    pub rootfs: PathBuf,
    /// The v1 cgroup parent of every pod (`/skiff/<node>`).
    pub cgroup_parent: String,
    /// The v2 directory the inits also join, on hybrid hosts.
    pub cgroup_v2_parent: Option<PathBuf>,
    /// The run's CRI log file.
    pub log_path: PathBuf,
}

/// What was resolved for the run before its configuration: command, environment and the
/// volume mounts.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// The command line.
    pub args: Vec<String>,
    /// The environment, in order.
    pub env: Vec<(String, String)>,
    /// The pod's volumes (and `/etc` files) as this container mounts them.
    pub mounts: Vec<VolumeMount>,
    /// The user.
    pub user: UserSpec,
}

/// The runtime configuration of one run of a container.
#[must_use]
pub fn container_config(run: Run<'_>, resolved: Resolved, place: Placement) -> ContainerConfig {
    let uid = run.pod.metadata.uid.as_deref().unwrap_or_default();
    let private_uts = run.sandbox.utsns.is_some();
    let pod_cgroup = format!("pod{uid}");
    ContainerConfig {
        bundle_dir: place.dir.join("bundle"),
        rootfs: place.rootfs,
        args: resolved.args,
        env: resolved
            .env
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        cwd: run
            .container
            .working_dir
            .clone()
            .or_else(|| run.image.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_owned()),
        user: resolved.user,
        hostname: private_uts.then(|| hostname(run.pod)),
        namespaces: PodNamespaces {
            net: run.sandbox.netns.clone(),
            ipc: run.sandbox.ipcns.clone(),
            uts: run.sandbox.utsns.clone(),
        },
        mounts: resolved
            .mounts
            .into_iter()
            .map(|m| MountSpec::bind(m.destination, m.source, m.read_only))
            .collect(),
        security: security(run.pod, run.container),
        resources: resources(run.container),
        cgroups_path: format!("{}/{pod_cgroup}/{}", place.cgroup_parent, place.id),
        cgroup_v2_path: place
            .cgroup_v2_parent
            .map(|p| p.join(&pod_cgroup).join(&place.id)),
        log_path: place.log_path,
        stdin: run.container.stdin.unwrap_or(false),
        tty: run.container.tty.unwrap_or(false),
        id: place.id,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::core::v1::{
            Capabilities, PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile,
            SecurityContext,
        },
        apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
    };
    use skiff_kubelet::pod::backend::{ImageInfo, SandboxInfo};

    use super::*;

    fn pod(security: Option<PodSecurityContext>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                uid: Some("0b5c2f5e-7a43-4d7f-9a65-0c3c3d9b1e21".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                security_context: security,
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    fn container(security: Option<SecurityContext>) -> Container {
        Container {
            name: "app".into(),
            security_context: security,
            ..Container::default()
        }
    }

    /// An image root with a passwd and a group file.
    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:\napp:x:1001:\n",
        )
        .unwrap();
        dir
    }

    fn ids(u: &UserSpec) -> (u32, u32) {
        (u.uid, u.gid)
    }

    #[test]
    fn the_image_user_is_resolved_through_its_passwd_and_group_files() {
        let root = rootfs();
        let (p, c) = (pod(None), container(None));
        let of = |image_user: Option<&str>| user(&p, &c, image_user, root.path());
        assert_eq!(ids(&of(None).unwrap()), (0, 0));
        assert_eq!(ids(&of(Some("app")).unwrap()), (1000, 1001));
        // A numeric user takes its primary group from its passwd entry, if it has one.
        assert_eq!(ids(&of(Some("1000")).unwrap()), (1000, 1001));
        assert_eq!(ids(&of(Some("4242")).unwrap()), (4242, 0));
        assert_eq!(ids(&of(Some("app:staff")).unwrap()), (1000, 50));
        assert_eq!(ids(&of(Some("app:7")).unwrap()), (1000, 7));
        let unknown = of(Some("nobody-here")).unwrap_err();
        assert_eq!(unknown.reason, "CreateContainerConfigError");
        assert!(unknown.message.contains("nobody-here"), "{unknown}");
    }

    #[test]
    fn run_as_user_and_group_win_container_first_then_pod() {
        let root = rootfs();
        let p = pod(Some(PodSecurityContext {
            run_as_user: Some(2000),
            run_as_group: Some(3000),
            supplemental_groups: Some(vec![10, 11]),
            fs_group: Some(12),
            ..PodSecurityContext::default()
        }));
        let from_pod = user(&p, &container(None), Some("app"), root.path()).unwrap();
        assert_eq!(ids(&from_pod), (2000, 3000));
        assert_eq!(from_pod.additional_gids, [10, 11, 12]);
        let c = container(Some(SecurityContext {
            run_as_user: Some(2001),
            ..SecurityContext::default()
        }));
        assert_eq!(
            ids(&user(&p, &c, Some("app"), root.path()).unwrap()),
            (2001, 3000)
        );
    }

    #[test]
    fn run_as_non_root_refuses_uid_zero_only() {
        let root = rootfs();
        let non_root = |run_as_user: Option<i64>| {
            container(Some(SecurityContext {
                run_as_non_root: Some(true),
                run_as_user,
                ..SecurityContext::default()
            }))
        };
        let p = pod(None);
        let refused = user(&p, &non_root(None), Some("root"), root.path()).unwrap_err();
        assert_eq!(refused.reason, "CreateContainerConfigError");
        assert!(refused.message.contains("runAsNonRoot"), "{refused}");
        assert!(user(&p, &non_root(None), None, root.path()).is_err());
        assert!(user(&p, &non_root(Some(0)), Some("app"), root.path()).is_err());
        assert_eq!(
            user(&p, &non_root(None), Some("app"), root.path())
                .unwrap()
                .uid,
            1000
        );
        assert_eq!(
            user(&p, &non_root(Some(5)), Some("root"), root.path())
                .unwrap()
                .uid,
            5
        );
        // Set on the pod, it holds for every container.
        let p = pod(Some(PodSecurityContext {
            run_as_non_root: Some(true),
            ..PodSecurityContext::default()
        }));
        assert!(user(&p, &container(None), None, root.path()).is_err());
    }

    #[test]
    fn capabilities_are_added_and_dropped_as_the_container_says() {
        let c = container(Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }));
        let s = security(&pod(None), &c);
        assert_eq!(s.capabilities_add, ["NET_ADMIN"]);
        assert_eq!(s.capabilities_drop, ["ALL"]);
        assert!(s.no_new_privileges && s.read_only_rootfs && s.masked_paths);
        assert!(!s.privileged);
        let plain = security(&pod(None), &container(None));
        assert!(plain.capabilities_add.is_empty() && plain.capabilities_drop.is_empty());
        assert!(!plain.no_new_privileges);
    }

    #[test]
    fn seccomp_is_the_runtime_default_unless_unconfined_or_privileged() {
        let profile = |type_: &str| {
            Some(SeccompProfile {
                type_: type_.into(),
                localhost_profile: None,
            })
        };
        let plain = security(&pod(None), &container(None));
        assert_eq!(plain.seccomp, SeccompMode::RuntimeDefault);
        let pod_unconfined = pod(Some(PodSecurityContext {
            seccomp_profile: profile("Unconfined"),
            ..PodSecurityContext::default()
        }));
        assert_eq!(
            security(&pod_unconfined, &container(None)).seccomp,
            SeccompMode::Unconfined
        );
        // The container's own profile wins over the pod's.
        let c = container(Some(SecurityContext {
            seccomp_profile: profile("RuntimeDefault"),
            ..SecurityContext::default()
        }));
        assert_eq!(
            security(&pod_unconfined, &c).seccomp,
            SeccompMode::RuntimeDefault
        );
        let privileged = container(Some(SecurityContext {
            privileged: Some(true),
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        }));
        let s = security(&pod(None), &privileged);
        assert_eq!(s.seccomp, SeccompMode::Unconfined);
        assert!(s.privileged && !s.masked_paths && !s.no_new_privileges);
    }

    fn limited(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        let map = |pairs: &[(&str, &str)]| {
            (!pairs.is_empty()).then(|| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        Container {
            resources: Some(ResourceRequirements {
                requests: map(requests),
                limits: map(limits),
                ..ResourceRequirements::default()
            }),
            ..container(None)
        }
    }

    #[test]
    fn requests_and_limits_become_shares_quota_and_memory_limit() {
        let r = resources(&limited(
            &[("cpu", "250m")],
            &[("cpu", "2"), ("memory", "64Mi")],
        ));
        assert_eq!(r.cpu_shares, Some(256));
        assert_eq!((r.cpu_quota, r.cpu_period), (Some(200_000), Some(100_000)));
        assert_eq!(r.memory_limit, Some(64 * 1024 * 1024));
        // A limit alone is the request too.
        let r = resources(&limited(&[], &[("cpu", "500m")]));
        assert_eq!(r.cpu_shares, Some(512));
        // Best effort: the kernel's minimum share, no quota, no memory limit.
        let r = resources(&container(None));
        assert_eq!(r.cpu_shares, Some(2));
        assert_eq!((r.cpu_quota, r.memory_limit), (None, None));
        // The smallest quota the kernel takes is 1 ms per period.
        assert_eq!(
            resources(&limited(&[], &[("cpu", "1m")])).cpu_quota,
            Some(1000)
        );
    }

    #[test]
    fn the_config_joins_the_sandbox_and_places_cgroups_and_log() {
        let p = pod(None);
        let c = Container {
            stdin: Some(true),
            ..container(None)
        };
        let sandbox = SandboxInfo {
            ip: Some("10.244.0.5".into()),
            netns: Some("/run/netns/x".into()),
            ipcns: Some("/state/ipc".into()),
            utsns: Some("/state/uts".into()),
        };
        let image = ImageInfo {
            working_dir: Some("/srv".into()),
            ..ImageInfo::default()
        };
        let run = Run {
            pod: &p,
            sandbox: &sandbox,
            container: &c,
            image: &image,
            restart: 2,
        };
        let config = container_config(
            run,
            Resolved {
                args: vec!["httpd".into()],
                env: vec![("A".into(), "1".into())],
                mounts: vec![VolumeMount {
                    destination: "/data".into(),
                    source: "/state/pods/v".into(),
                    read_only: true,
                }],
                user: UserSpec::default(),
            },
            Placement {
                id: "id-app-2".into(),
                dir: "/state/containers/id-app-2".into(),
                rootfs: "/state/containers/id-app-2/rootfs".into(),
                cgroup_parent: "/skiff/n1".into(),
                cgroup_v2_parent: Some("/sys/fs/cgroup/unified/skiff/n1".into()),
                log_path: "/logs/app/2.log".into(),
            },
        );
        let uid = "0b5c2f5e-7a43-4d7f-9a65-0c3c3d9b1e21";
        assert_eq!(config.id, "id-app-2");
        assert_eq!(
            config.bundle_dir,
            Path::new("/state/containers/id-app-2/bundle")
        );
        assert_eq!(config.cgroups_path, format!("/skiff/n1/pod{uid}/id-app-2"));
        assert_eq!(
            config.cgroup_v2_path,
            Some(PathBuf::from(format!(
                "/sys/fs/cgroup/unified/skiff/n1/pod{uid}/id-app-2"
            )))
        );
        assert_eq!(config.env, ["A=1"]);
        assert_eq!(config.cwd, "/srv");
        assert_eq!(config.hostname.as_deref(), Some("web-0"));
        assert_eq!(config.namespaces.net, Some(PathBuf::from("/run/netns/x")));
        assert!(config.mounts[0].read_only && config.stdin && !config.tty);
        // Without a UTS namespace of its own (hostNetwork), the host's name stays.
        let host = SandboxInfo::default();
        let run = Run {
            sandbox: &host,
            ..run
        };
        let placement = Placement {
            id: "x".into(),
            dir: "/d".into(),
            rootfs: "/r".into(),
            cgroup_parent: "/p".into(),
            cgroup_v2_parent: None,
            log_path: "/l".into(),
        };
        let config = container_config(run, Resolved::default(), placement);
        assert_eq!(config.hostname, None);
        assert_eq!(config.cgroup_v2_path, None);
    }
}
