use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Value, json};

use super::*;

fn spec(v: &Value) -> PodSpec {
    serde_json::from_value(v.clone()).expect("pod spec")
}

/// A pod that passes restricted: every check's failing case below changes one thing.
fn compliant() -> Value {
    json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "c",
            "image": "busybox",
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]}
            }
        }]
    })
}

fn with(pointer: &str, value: Value) -> Value {
    let mut pod = compliant();
    let (parent, field) = pointer.rsplit_once('/').expect("pointer");
    let mut at = &mut pod;
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        at = if let Ok(i) = part.parse::<usize>() {
            &mut at[i]
        } else {
            if at.get(part).is_none() {
                at[part] = json!({});
            }
            &mut at[part]
        };
    }
    at[field] = value;
    pod
}

fn violations(level: Level, pod: &Value) -> Vec<(String, String)> {
    check(level, &BTreeMap::new(), &spec(pod))
        .into_iter()
        .map(|v| (v.reason, v.detail))
        .collect()
}

#[test]
fn a_hardened_pod_passes_restricted() {
    assert_eq!(violations(Level::Restricted, &compliant()), vec![]);
}

#[test]
fn privileged_allows_anything() {
    let pod = with("/hostNetwork", json!(true));
    assert_eq!(violations(Level::Privileged, &pod), vec![]);
}

#[test]
fn each_baseline_check_refuses_its_field_with_kubes_wording() {
    let cases = [
        (
            with("/hostNetwork", json!(true)),
            "host namespaces",
            "hostNetwork=true",
        ),
        (
            with("/hostPID", json!(true)),
            "host namespaces",
            "hostPID=true",
        ),
        (
            with("/containers/0/securityContext/privileged", json!(true)),
            "privileged",
            "container \"c\" must not set securityContext.privileged=true",
        ),
        (
            with(
                "/containers/0/securityContext/capabilities/add",
                json!(["NET_ADMIN", "CHOWN"]),
            ),
            "non-default capabilities",
            "container \"c\" must not include \"NET_ADMIN\" in securityContext.capabilities.add",
        ),
        (
            with(
                "/volumes",
                json!([{"name": "root", "hostPath": {"path": "/"}}]),
            ),
            "hostPath volumes",
            "volume \"root\"",
        ),
        (
            with(
                "/containers/0/ports",
                json!([{"containerPort": 80, "hostPort": 8080}]),
            ),
            "hostPort",
            "container \"c\" uses hostPort 8080",
        ),
        (
            with(
                "/containers/0/securityContext/appArmorProfile",
                json!({"type": "Unconfined"}),
            ),
            "forbidden AppArmor profile",
            "container \"c\" must not set securityContext.appArmorProfile.type to \"Unconfined\"",
        ),
        (
            with("/securityContext/seLinuxOptions", json!({"type": "spc_t"})),
            "seLinuxOptions",
            "pod set forbidden securityContext.seLinuxOptions: type \"spc_t\"",
        ),
        (
            with("/containers/0/securityContext/procMount", json!("Unmasked")),
            "procMount",
            "container \"c\" must not set securityContext.procMount to \"Unmasked\"",
        ),
        (
            with(
                "/securityContext/seccompProfile",
                json!({"type": "Unconfined"}),
            ),
            "seccompProfile",
            "pod must not set securityContext.seccompProfile.type to \"Unconfined\"",
        ),
        (
            with(
                "/securityContext/sysctls",
                json!([{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]),
            ),
            "forbidden sysctls",
            "kernel.msgmax",
        ),
        (
            with(
                "/containers/0/securityContext/windowsOptions",
                json!({"hostProcess": true}),
            ),
            "hostProcess",
            "container \"c\" must not set securityContext.windowsOptions.hostProcess=true",
        ),
    ];
    for (pod, reason, detail) in cases {
        let found = violations(Level::Baseline, &pod);
        assert_eq!(found, vec![(reason.to_owned(), detail.to_owned())], "{pod}");
    }
}

#[test]
fn each_restricted_check_refuses_its_field_with_kubes_wording() {
    let cases = [
        (
            with(
                "/containers/0/securityContext/allowPrivilegeEscalation",
                json!(true),
            ),
            "allowPrivilegeEscalation != false",
            "container \"c\" must set securityContext.allowPrivilegeEscalation=false",
        ),
        (
            with(
                "/containers/0/securityContext/capabilities",
                json!({"add": ["NET_BIND_SERVICE", "CHOWN"]}),
            ),
            "unrestricted capabilities",
            "container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]; container \"c\" must not include \"CHOWN\" in securityContext.capabilities.add",
        ),
        (
            with("/securityContext/runAsNonRoot", json!(false)),
            "runAsNonRoot != true",
            "pod must not set securityContext.runAsNonRoot=false",
        ),
        (
            with("/securityContext/runAsUser", json!(0)),
            "runAsUser=0",
            "pod must not set runAsUser=0",
        ),
        (
            with(
                "/containers/0/securityContext/seccompProfile",
                json!({"type": "Unconfined"}),
            ),
            "seccompProfile",
            "container \"c\" must not set securityContext.seccompProfile.type to \"Unconfined\"",
        ),
        (
            with(
                "/volumes",
                json!([{"name": "data", "nfs": {"server": "s", "path": "/"}}, {"name": "ok", "emptyDir": {}}]),
            ),
            "restricted volume types",
            "volume \"data\" uses restricted volume type \"nfs\"",
        ),
        (
            // Restricted reports a hostPath as a restricted volume type, not twice.
            with(
                "/volumes",
                json!([{"name": "root", "hostPath": {"path": "/"}}]),
            ),
            "restricted volume types",
            "volume \"root\" uses restricted volume type \"hostPath\"",
        ),
    ];
    for (pod, reason, detail) in cases {
        let found = violations(Level::Restricted, &pod);
        assert_eq!(found, vec![(reason.to_owned(), detail.to_owned())], "{pod}");
    }
}

#[test]
fn a_plain_pod_fails_restricted_as_kube_words_it() {
    let pod = json!({"containers": [{"name": "c", "image": "busybox"}]});
    let found = check(Level::Restricted, &BTreeMap::new(), &spec(&pod));
    let level = LevelVersion {
        level: Level::Restricted,
        version: "latest".into(),
    };
    assert_eq!(
        describe(&level, &found),
        "\"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    assert_eq!(violations(Level::Baseline, &pod), vec![]);
}

#[test]
fn init_and_ephemeral_containers_are_checked_and_named_together() {
    let pod = json!({
        "initContainers": [{"name": "init", "image": "i", "securityContext": {"privileged": true}}],
        "containers": [{"name": "c", "image": "i"}],
        "ephemeralContainers": [{"name": "debug", "image": "i", "securityContext": {"privileged": true}}]
    });
    assert_eq!(
        violations(Level::Baseline, &pod),
        vec![(
            "privileged".to_owned(),
            "containers \"init\", \"debug\" must not set securityContext.privileged=true"
                .to_owned()
        )]
    );
}

#[test]
fn apparmor_annotations_other_than_runtime_default_or_localhost_are_refused() {
    let annotations = BTreeMap::from([
        (
            "container.apparmor.security.beta.kubernetes.io/c".to_owned(),
            "unconfined".to_owned(),
        ),
        (
            "container.apparmor.security.beta.kubernetes.io/d".to_owned(),
            "localhost/mine".to_owned(),
        ),
    ]);
    let found = check(Level::Baseline, &annotations, &spec(&compliant()));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].reason, "forbidden AppArmor profile");
    assert_eq!(
        found[0].detail,
        "container.apparmor.security.beta.kubernetes.io/c=\"unconfined\""
    );
}

#[test]
fn labels_choose_levels_and_versions() {
    let labels = BTreeMap::from([
        (
            "pod-security.kubernetes.io/enforce".to_owned(),
            "baseline".to_owned(),
        ),
        (
            "pod-security.kubernetes.io/enforce-version".to_owned(),
            "v1.30".to_owned(),
        ),
        (
            "pod-security.kubernetes.io/warn".to_owned(),
            "restricted".to_owned(),
        ),
        (
            "pod-security.kubernetes.io/warn-version".to_owned(),
            "latest".to_owned(),
        ),
        (
            "pod-security.kubernetes.io/audit".to_owned(),
            "nonsense".to_owned(),
        ),
    ]);
    let policy = Policy::from_labels(&labels);
    assert_eq!(policy.enforce.to_string(), "baseline:v1.30");
    assert_eq!(policy.warn.to_string(), "restricted:latest");
    assert_eq!(policy.audit.level, Level::Restricted);
    assert!(!policy.is_privileged());
    assert!(Policy::from_labels(&BTreeMap::new()).is_privileged());
}

#[test]
fn existing_pods_are_grouped_by_their_reasons() {
    let v = |r: &str| Violation {
        reason: r.to_owned(),
        detail: String::new(),
    };
    let level = LevelVersion {
        level: Level::Baseline,
        version: "latest".into(),
    };
    let pods = vec![
        ("a".to_owned(), vec![v("privileged")]),
        ("b".to_owned(), vec![]),
        ("c".to_owned(), vec![v("host namespaces"), v("privileged")]),
        ("d".to_owned(), vec![v("privileged")]),
        ("e".to_owned(), vec![v("privileged")]),
    ];
    assert_eq!(
        existing_pod_warnings("ns", &level, &pods),
        vec![
            "existing pods in namespace \"ns\" violate the new PodSecurity enforce level \"baseline:latest\"",
            "a (and 2 other pods): privileged",
            "c: host namespaces, privileged",
        ]
    );
    assert!(existing_pod_warnings("ns", &level, &pods[1..2]).is_empty());
}

#[test]
fn malformed_labels_are_reported_as_kube_reports_them() {
    let labels = BTreeMap::from([
        (
            "pod-security.kubernetes.io/enforce".to_owned(),
            "strict".to_owned(),
        ),
        (
            "pod-security.kubernetes.io/warn-version".to_owned(),
            "v2.0".to_owned(),
        ),
        (
            "pod-security.kubernetes.io/audit-version".to_owned(),
            "v1.31".to_owned(),
        ),
    ]);
    assert_eq!(
        label_errors(&labels),
        vec![
            (
                "pod-security.kubernetes.io/enforce".to_owned(),
                "strict".to_owned(),
                "must be one of privileged, baseline, restricted"
            ),
            (
                "pod-security.kubernetes.io/warn-version".to_owned(),
                "v2.0".to_owned(),
                "must be \"latest\" or \"v1.x\""
            ),
        ]
    );
}

#[test]
fn reasons_come_baseline_first_then_restricted() {
    let pod = json!({
        "hostNetwork": true,
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "securityContext": {"runAsUser": 0},
        "containers": [{"name": "c", "image": "i", "securityContext": {"privileged": true, "runAsNonRoot": false}}]
    });
    let reasons = |level| {
        check(level, &BTreeMap::new(), &spec(&pod))
            .into_iter()
            .map(|v| v.reason)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        reasons(Level::Restricted),
        [
            "host namespaces",
            "privileged",
            "allowPrivilegeEscalation != false",
            "unrestricted capabilities",
            "restricted volume types",
            "runAsNonRoot != true",
            "runAsUser=0",
            "seccompProfile"
        ]
    );
    assert_eq!(
        reasons(Level::Baseline),
        ["host namespaces", "privileged", "hostPath volumes"]
    );
    let found = check(Level::Restricted, &BTreeMap::new(), &spec(&pod));
    assert_eq!(
        found[5].detail,
        "container \"c\" must not set securityContext.runAsNonRoot=false"
    );
    assert_eq!(found[6].detail, "pod must not set runAsUser=0");
}
