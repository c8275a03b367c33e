//! The Pod Security Standards' checks, one function each, named and ordered by Kubernetes'
//! check IDs so the reasons come out in the order kube lists them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ContainerPort, PodSpec, SELinuxOptions, SecurityContext};

use super::{Level, Violation};

/// Capabilities baseline lets a container add (the container runtimes' defaults).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls namespaced to the pod and harmless to the node.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_wmem",
];

/// Volume types restricted allows (besides these, only persistent volume claims reach storage).
const RESTRICTED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The `SELinux` types baseline allows.
const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/";

/// The pod as the checks see it.
struct Pod<'a> {
    annotations: &'a BTreeMap<String, String>,
    spec: &'a PodSpec,
    containers: Vec<Ctr<'a>>,
}

impl Pod<'_> {
    fn windows(&self) -> bool {
        self.spec.os.as_ref().is_some_and(|os| os.name == "windows")
    }

    fn names_where(&self, f: impl Fn(&SecurityContext) -> bool) -> Vec<&str> {
        self.containers
            .iter()
            .filter(|c| c.sc.is_some_and(&f))
            .map(|c| c.name)
            .collect()
    }
}

/// A container of any of the three kinds.
struct Ctr<'a> {
    name: &'a str,
    sc: Option<&'a SecurityContext>,
    ports: &'a [ContainerPort],
}

/// Which evaluations a check takes part in, as Kubernetes groups them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Baseline and restricted.
    Baseline,
    /// Baseline only: a restricted check covers the same fields more strictly.
    Overlapping,
    /// Restricted only.
    Restricted,
}

type CheckFn = fn(&Pod) -> Option<Violation>;

/// The checks in the order Kubernetes runs them (baseline, then overlapping baseline or
/// restricted; each group by check ID), which is the order of the reasons in its messages.
const CHECKS: &[(Group, CheckFn)] = &[
    (Group::Baseline, app_armor_profile),
    (Group::Baseline, capabilities_baseline),
    (Group::Baseline, host_namespaces),
    (Group::Baseline, host_ports),
    (Group::Baseline, privileged),
    (Group::Baseline, proc_mount),
    (Group::Baseline, se_linux_options),
    (Group::Baseline, sysctls),
    (Group::Baseline, windows_host_process),
    (Group::Overlapping, host_path_volumes),
    (Group::Overlapping, seccomp_profile_baseline),
    (Group::Restricted, allow_privilege_escalation),
    (Group::Restricted, capabilities_restricted),
    (Group::Restricted, restricted_volumes),
    (Group::Restricted, run_as_non_root),
    (Group::Restricted, run_as_user),
    (Group::Restricted, seccomp_profile_restricted),
];

/// Every check of `level` (and the levels below it) that the pod with `annotations` and
/// `spec` fails, in Kubernetes' order.
pub fn check(
    level: Level,
    annotations: &BTreeMap<String, String>,
    spec: &PodSpec,
) -> Vec<Violation> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let mut containers: Vec<Ctr> = Vec::new();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        containers.push(Ctr {
            name: &c.name,
            sc: c.security_context.as_ref(),
            ports: c.ports.as_deref().unwrap_or_default(),
        });
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        containers.push(Ctr {
            name: &c.name,
            sc: c.security_context.as_ref(),
            ports: c.ports.as_deref().unwrap_or_default(),
        });
    }
    let pod = Pod {
        annotations,
        spec,
        containers,
    };
    let wanted = |group: Group| match group {
        Group::Baseline => true,
        Group::Overlapping => level == Level::Baseline,
        Group::Restricted => level == Level::Restricted,
    };
    CHECKS
        .iter()
        .filter(|(group, _)| wanted(*group))
        .filter_map(|(_, run)| run(&pod))
        .collect()
}

fn violation(reason: &str, details: &[String]) -> Option<Violation> {
    (!details.is_empty()).then(|| Violation {
        reason: reason.to_owned(),
        detail: details.join("; "),
    })
}

/// `"a", "b"`.
fn quoted<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("{:?}", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_named(names: &[&str]) -> String {
    let noun = if names.len() == 1 {
        "container"
    } else {
        "containers"
    };
    format!("{noun} {}", quoted(names))
}

/// Who sets something: `pod`, `container "a"`, or `pod and containers "a", "b"`.
fn setters(pod: bool, names: &[&str]) -> String {
    match (pod, names.is_empty()) {
        (true, true) => "pod".to_owned(),
        (false, _) => containers_named(names),
        (true, false) => format!("pod and {}", containers_named(names)),
    }
}

fn allow_privilege_escalation(pod: &Pod) -> Option<Violation> {
    if pod.windows() {
        return None;
    }
    let bad: Vec<&str> = pod
        .containers
        .iter()
        .filter(|c| c.sc.and_then(|sc| sc.allow_privilege_escalation) != Some(false))
        .map(|c| c.name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        &[format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_named(&bad)
        )],
    )
}

fn app_armor_profile(pod: &Pod) -> Option<Violation> {
    let allowed = |t: &str| matches!(t, "RuntimeDefault" | "Localhost");
    let mut details = Vec::new();
    let mut count = 0;
    if let Some(p) = pod
        .spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.app_armor_profile.as_ref())
        .filter(|p| !allowed(&p.type_))
    {
        count += 1;
        details.push(format!(
            "pod must not set securityContext.appArmorProfile.type to {:?}",
            p.type_
        ));
    }
    for c in &pod.containers {
        if let Some(p) =
            c.sc.and_then(|sc| sc.app_armor_profile.as_ref())
                .filter(|p| !allowed(&p.type_))
        {
            count += 1;
            details.push(format!(
                "container {:?} must not set securityContext.appArmorProfile.type to {:?}",
                c.name, p.type_
            ));
        }
    }
    let annotated: Vec<String> = pod
        .annotations
        .iter()
        .filter(|(k, v)| {
            k.starts_with(APPARMOR_ANNOTATION)
                && !(v.is_empty() || *v == "runtime/default" || v.starts_with("localhost/"))
        })
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    count += annotated.len();
    if !annotated.is_empty() {
        details.push(annotated.join(", "));
    }
    let reason = if count == 1 {
        "forbidden AppArmor profile"
    } else {
        "forbidden AppArmor profiles"
    };
    violation(reason, &details)
}

fn capabilities_baseline(pod: &Pod) -> Option<Violation> {
    let mut names = Vec::new();
    let mut caps = BTreeSet::new();
    for c in &pod.containers {
        let added = c.sc.and_then(|sc| sc.capabilities.as_ref()?.add.as_ref());
        let bad: Vec<&String> = added
            .into_iter()
            .flatten()
            .filter(|cap| !BASELINE_CAPABILITIES.contains(&cap.as_str()))
            .collect();
        if !bad.is_empty() {
            names.push(c.name);
            caps.extend(bad);
        }
    }
    if names.is_empty() {
        return None;
    }
    let caps: Vec<&String> = caps.into_iter().collect();
    violation(
        "non-default capabilities",
        &[format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_named(&names),
            quoted(&caps)
        )],
    )
}

fn capabilities_restricted(pod: &Pod) -> Option<Violation> {
    if pod.windows() {
        return None;
    }
    let mut no_drop = Vec::new();
    let mut adders = Vec::new();
    let mut added = BTreeSet::new();
    for c in &pod.containers {
        let caps = c.sc.and_then(|sc| sc.capabilities.as_ref());
        if !caps
            .and_then(|caps| caps.drop.as_ref())
            .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        {
            no_drop.push(c.name);
        }
        let bad: Vec<&String> = caps
            .and_then(|caps| caps.add.as_ref())
            .into_iter()
            .flatten()
            .filter(|cap| *cap != "NET_BIND_SERVICE")
            .collect();
        if !bad.is_empty() {
            adders.push(c.name);
            added.extend(bad);
        }
    }
    let mut details = Vec::new();
    if !no_drop.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_named(&no_drop)
        ));
    }
    if !adders.is_empty() {
        let added: Vec<&String> = added.into_iter().collect();
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_named(&adders),
            quoted(&added)
        ));
    }
    violation("unrestricted capabilities", &details)
}

fn host_namespaces(pod: &Pod) -> Option<Violation> {
    let s = pod.spec;
    let set: Vec<&str> = [
        (s.host_network, "hostNetwork=true"),
        (s.host_pid, "hostPID=true"),
        (s.host_ipc, "hostIPC=true"),
    ]
    .into_iter()
    .filter(|(on, _)| *on == Some(true))
    .map(|(_, what)| what)
    .collect();
    (!set.is_empty()).then(|| Violation {
        reason: "host namespaces".to_owned(),
        detail: set.join(", "),
    })
}

fn host_path_volumes(pod: &Pod) -> Option<Violation> {
    let names: Vec<&str> = pod
        .spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.host_path.is_some())
        .map(|v| v.name.as_str())
        .collect();
    if names.is_empty() {
        return None;
    }
    let noun = if names.len() == 1 {
        "volume"
    } else {
        "volumes"
    };
    violation("hostPath volumes", &[format!("{noun} {}", quoted(&names))])
}

fn host_ports(pod: &Pod) -> Option<Violation> {
    let mut names = Vec::new();
    let mut ports = BTreeSet::new();
    for c in &pod.containers {
        let mine: Vec<String> = c
            .ports
            .iter()
            .filter_map(|p| p.host_port.filter(|h| *h != 0))
            .map(|h| h.to_string())
            .collect();
        if !mine.is_empty() {
            names.push(c.name);
            ports.extend(mine);
        }
    }
    if names.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.into_iter().collect();
    let verb = if names.len() == 1 { "uses" } else { "use" };
    let noun = if ports.len() == 1 {
        "hostPort"
    } else {
        "hostPorts"
    };
    violation(
        "hostPort",
        &[format!(
            "{} {verb} {noun} {}",
            containers_named(&names),
            ports.join(", ")
        )],
    )
}

fn privileged(pod: &Pod) -> Option<Violation> {
    let names = pod.names_where(|sc| sc.privileged == Some(true));
    if names.is_empty() {
        return None;
    }
    violation(
        "privileged",
        &[format!(
            "{} must not set securityContext.privileged=true",
            containers_named(&names)
        )],
    )
}

fn proc_mount(pod: &Pod) -> Option<Violation> {
    let mut names = Vec::new();
    let mut values = BTreeSet::new();
    for c in &pod.containers {
        if let Some(m) =
            c.sc.and_then(|sc| sc.proc_mount.as_deref())
                .filter(|m| *m != "Default")
        {
            names.push(c.name);
            values.insert(m);
        }
    }
    if names.is_empty() {
        return None;
    }
    let values: Vec<&str> = values.into_iter().collect();
    violation(
        "procMount",
        &[format!(
            "{} must not set securityContext.procMount to {}",
            containers_named(&names),
            quoted(&values)
        )],
    )
}

fn restricted_volumes(pod: &Pod) -> Option<Violation> {
    let mut names = Vec::new();
    let mut types = BTreeSet::new();
    for v in pod.spec.volumes.iter().flatten() {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(v) else {
            continue;
        };
        let bad: Vec<String> = fields
            .keys()
            .filter(|k| *k != "name" && !RESTRICTED_VOLUME_TYPES.contains(&k.as_str()))
            .cloned()
            .collect();
        if !bad.is_empty() {
            names.push(v.name.as_str());
            types.extend(bad);
        }
    }
    if names.is_empty() {
        return None;
    }
    let types: Vec<String> = types.into_iter().collect();
    let detail = if names.len() == 1 {
        format!("volume {}", quoted(&names))
    } else {
        format!("volumes {}", quoted(&names))
    };
    let (verb, noun) = match (names.len(), types.len()) {
        (1, 1) => ("uses", "type"),
        (1, _) => ("uses", "types"),
        (_, 1) => ("use", "type"),
        _ => ("use", "types"),
    };
    violation(
        "restricted volume types",
        &[format!(
            "{detail} {verb} restricted volume {noun} {}",
            quoted(&types)
        )],
    )
}

// Kubernetes relaxes runAsNonRoot, runAsUser and procMount for pods with `hostUsers:
// false`; skiff's nodes do not run pods in their own user namespace, so root there would be
// root on the node, and the relaxation is not taken.
fn run_as_non_root(pod: &Pod) -> Option<Violation> {
    let pod_setting = pod
        .spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.run_as_non_root);
    let explicit = pod.names_where(|sc| sc.run_as_non_root == Some(false));
    if pod_setting == Some(false) || !explicit.is_empty() {
        return violation(
            "runAsNonRoot != true",
            &[format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters(pod_setting == Some(false), &explicit)
            )],
        );
    }
    if pod_setting == Some(true) {
        return None;
    }
    let implicit: Vec<&str> = pod
        .containers
        .iter()
        .filter(|c| c.sc.and_then(|sc| sc.run_as_non_root).is_none())
        .map(|c| c.name)
        .collect();
    if implicit.is_empty() {
        return None;
    }
    violation(
        "runAsNonRoot != true",
        &[format!(
            "pod or {} must set securityContext.runAsNonRoot=true",
            containers_named(&implicit)
        )],
    )
}

fn run_as_user(pod: &Pod) -> Option<Violation> {
    let pod_root = pod
        .spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.run_as_user)
        == Some(0);
    let names = pod.names_where(|sc| sc.run_as_user == Some(0));
    if !pod_root && names.is_empty() {
        return None;
    }
    violation(
        "runAsUser=0",
        &[format!(
            "{} must not set runAsUser=0",
            setters(pod_root, &names)
        )],
    )
}

fn se_linux_options(pod: &Pod) -> Option<Violation> {
    let mut types = BTreeSet::new();
    let (mut user, mut role) = (false, false);
    let mut judge = |o: Option<&SELinuxOptions>| {
        let Some(o) = o else { return false };
        let t = o.type_.as_deref().unwrap_or("");
        let bad_type = !SELINUX_TYPES.contains(&t);
        if bad_type {
            types.insert(t.to_owned());
        }
        let has_user = o.user.as_deref().is_some_and(|u| !u.is_empty());
        let has_role = o.role.as_deref().is_some_and(|r| !r.is_empty());
        user |= has_user;
        role |= has_role;
        bad_type || has_user || has_role
    };
    let pod_bad = judge(
        pod.spec
            .security_context
            .as_ref()
            .and_then(|sc| sc.se_linux_options.as_ref()),
    );
    let names: Vec<&str> = pod
        .containers
        .iter()
        .filter(|c| judge(c.sc.and_then(|sc| sc.se_linux_options.as_ref())))
        .map(|c| c.name)
        .collect();
    if !pod_bad && names.is_empty() {
        return None;
    }
    let mut what = Vec::new();
    if !types.is_empty() {
        let noun = if types.len() == 1 { "type" } else { "types" };
        let types: Vec<String> = types.into_iter().collect();
        what.push(format!("{noun} {}", quoted(&types)));
    }
    // Kubernetes names these only next to a bad type; they are named here either way.
    if user {
        what.push("user may not be set".to_owned());
    }
    if role {
        what.push("role may not be set".to_owned());
    }
    violation(
        "seLinuxOptions",
        &[format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters(pod_bad, &names),
            what.join("; ")
        )],
    )
}

fn seccomp_profile_baseline(pod: &Pod) -> Option<Violation> {
    seccomp(pod, |t| t != "Unconfined", false)
}

fn seccomp_profile_restricted(pod: &Pod) -> Option<Violation> {
    if pod.windows() {
        return None;
    }
    seccomp(pod, |t| matches!(t, "RuntimeDefault" | "Localhost"), true)
}

/// The seccomp checks: a profile type `valid` refuses, and with `required`, containers
/// left without a profile when the pod sets no valid one either.
fn seccomp(pod: &Pod, valid: fn(&str) -> bool, required: bool) -> Option<Violation> {
    let mut values = BTreeSet::new();
    let pod_type = pod
        .spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    let pod_bad = pod_type.is_some_and(|t| !valid(t));
    if let Some(t) = pod_type.filter(|_| pod_bad) {
        values.insert(t);
    }
    let mut explicit: Vec<&str> = Vec::new();
    let mut implicit: Vec<&str> = Vec::new();
    for c in &pod.containers {
        match c.sc.and_then(|sc| sc.seccomp_profile.as_ref()) {
            Some(p) if !valid(&p.type_) => {
                explicit.push(c.name);
                values.insert(p.type_.as_str());
            }
            Some(_) => {}
            None if pod_type.is_some() && !pod_bad => {}
            None => implicit.push(c.name),
        }
    }
    if pod_bad || !explicit.is_empty() {
        let values: Vec<&str> = values.into_iter().collect();
        return violation(
            "seccompProfile",
            &[format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters(pod_bad, &explicit),
                quoted(&values)
            )],
        );
    }
    if !required || implicit.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        &[format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_named(&implicit)
        )],
    )
}

fn sysctls(pod: &Pod) -> Option<Violation> {
    let bad: Vec<&str> = pod
        .spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.sysctls.as_ref())
        .into_iter()
        .flatten()
        .map(|s| s.name.as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .collect();
    (!bad.is_empty()).then(|| Violation {
        reason: "forbidden sysctls".to_owned(),
        detail: bad.join(", "),
    })
}

fn windows_host_process(pod: &Pod) -> Option<Violation> {
    let pod_set = pod
        .spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.windows_options.as_ref()?.host_process)
        == Some(true);
    let names = pod
        .names_where(|sc| sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true));
    if !pod_set && names.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        &[format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters(pod_set, &names)
        )],
    )
}
