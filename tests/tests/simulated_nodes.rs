//! Simulated nodes (`node --simulate`) against a real `control` whose scheduler and
//! controllers are off, so every change seen here is the simulated nodes' own: Node
//! registration, Lease renewal, pods driven through their phases, deletion, adoption
//! after a restart. No root needed.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use skiff_tests::{
    control::ControlPlane,
    sim::{SimNodes, condition, get_json, items, name, wait_for},
};

const WAIT: Duration = Duration::from_secs(20);
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
const PODS: &str = "/api/v1/namespaces/default/pods";

/// A control plane with nothing but the API server acting.
fn api_only(dir: &std::path::Path) -> Result<ControlPlane> {
    ControlPlane::start_with(dir, &["--no-scheduler", "--no-controllers"])
}

fn send(
    cp: &ControlPlane,
    method: &str,
    path: &str,
    content_type: &str,
    body: &Value,
) -> Result<Value> {
    let (code, text) = cp.http(method, path, content_type, body.to_string().as_bytes())?;
    ensure!(
        (200..300).contains(&code),
        "{method} {path} answered {code}: {text}"
    );
    serde_json::from_str(&text).with_context(|| format!("{method} {path}: {text}"))
}

/// A pod bound to `node` at creation (no scheduler involved).
fn pod(name: &str, node: &str, restart_policy: &str, annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "restartPolicy": restart_policy,
            "containers": [{"name": "c", "image": "busybox"}],
        },
    })
}

fn create_pod(cp: &ControlPlane, pod: &Value) -> Result<Value> {
    send(cp, "POST", PODS, "application/json", pod)
}

fn get_pod(cp: &ControlPlane, name: &str) -> Result<Value> {
    get_json(cp, &format!("{PODS}/{name}"))
}

fn wait_pod(
    cp: &ControlPlane,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    wait_for(&format!("pod {name} {what}"), WAIT, || {
        let pod = get_pod(cp, name)?;
        Ok(done(&pod).then_some(pod))
    })
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn text<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn renew_time(cp: &ControlPlane, node: &str) -> Result<String> {
    let lease = get_json(cp, &format!("{LEASES}/{node}"))?;
    Ok(text(&lease, "/spec/renewTime").to_owned())
}

/// Seconds into the day of an RFC 3339 time (`...T19:13:39.048520Z`).
fn seconds_of_day(time: &str) -> Result<f64> {
    let clock = time
        .split_once('T')
        .map(|(_, c)| c.trim_end_matches('Z'))
        .with_context(|| format!("not a time: {time}"))?;
    let mut parts = clock.split(':');
    let mut next = || -> Result<f64> { Ok(parts.next().context("short time")?.parse()?) };
    Ok(next()? * 3600.0 + next()? * 60.0 + next()?)
}

#[test]
fn nodes_register_with_the_capacity_labels_and_taints_asked() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = api_only(dir.path())?;
    let nodes = SimNodes::start(
        &cp,
        3,
        "sim-",
        &[
            "--cpu",
            "8",
            "--memory",
            "16Gi",
            "--pods",
            "50",
            "--ephemeral-storage",
            "20Gi",
            "--labels",
            "team=blue,tier=batch",
            "--taints",
            "dedicated=sim:NoSchedule,spot:PreferNoSchedule",
            "--zones",
            "2",
        ],
    )?;
    for (i, node_name) in nodes.names().iter().enumerate() {
        let node = get_json(&cp, &format!("/api/v1/nodes/{node_name}"))?;
        for part in ["capacity", "allocatable"] {
            let got = &node["status"][part];
            ensure!(
                got["cpu"] == "8"
                    && got["memory"] == "16Gi"
                    && got["pods"] == "50"
                    && got["ephemeral-storage"] == "20Gi",
                "{node_name} {part}: {got}"
            );
        }
        let labels = &node["metadata"]["labels"];
        let zone = format!("zone-{}", i % 2);
        for (key, value) in [
            ("kubernetes.io/hostname", node_name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("type", "simulated"),
            ("topology.kubernetes.io/zone", zone.as_str()),
            ("team", "blue"),
            ("tier", "batch"),
        ] {
            ensure!(labels[key] == value, "{node_name} label {key}: {labels}");
        }
        let taints = &node["spec"]["taints"];
        ensure!(
            *taints
                == json!([
                    {"key": "dedicated", "value": "sim", "effect": "NoSchedule"},
                    {"key": "spot", "effect": "PreferNoSchedule"},
                ]),
            "{node_name} taints: {taints}"
        );
        ensure!(condition(&node, "Ready") == Some("True"), "{node}");
        for pressure in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            ensure!(
                condition(&node, pressure) == Some("False"),
                "{pressure}: {node}"
            );
        }
        let ready = node["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .context("Ready condition")?;
        ensure!(ready["reason"] == "KubeletReady", "{ready}");
        ensure!(
            node["status"]["nodeInfo"]["kubeletVersion"] == "v1.33.0-skiff-sim",
            "{node}"
        );
        let internal = format!("127.64.0.{}", i + 1);
        ensure!(
            node["status"]["addresses"]
                == json!([
                    {"type": "InternalIP", "address": internal},
                    {"type": "Hostname", "address": node_name},
                ]),
            "{node_name} addresses: {}",
            node["status"]["addresses"]
        );
    }
    let table = cp.ok(&["get", "nodes"], None)?;
    for node_name in nodes.names() {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(node_name.as_str()))
            .with_context(|| format!("{node_name} missing from:\n{table}"))?;
        let columns: Vec<&str> = row.split_whitespace().collect();
        ensure!(
            columns.get(1) == Some(&"Ready") && columns.last() == Some(&"v1.33.0-skiff-sim"),
            "row for {node_name}: {row}\n{table}"
        );
    }
    Ok(())
}

#[test]
fn leases_are_renewed_spread_over_the_interval_and_owned_by_their_nodes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = api_only(dir.path())?;
    let nodes = SimNodes::start(
        &cp,
        4,
        "sim-",
        &[
            "--lease-duration-seconds",
            "7",
            "--lease-renew-interval-seconds",
            "2",
        ],
    )?;
    for node_name in nodes.names() {
        let node = get_json(&cp, &format!("/api/v1/nodes/{node_name}"))?;
        let lease = get_json(&cp, &format!("{LEASES}/{node_name}"))?;
        ensure!(
            lease["spec"]["holderIdentity"] == node_name.as_str(),
            "{lease}"
        );
        ensure!(lease["spec"]["leaseDurationSeconds"] == 7, "{lease}");
        let owner = &lease["metadata"]["ownerReferences"][0];
        ensure!(
            owner["kind"] == "Node"
                && owner["name"] == node_name.as_str()
                && owner["uid"] == node["metadata"]["uid"],
            "lease owner {owner} for node uid {}",
            node["metadata"]["uid"]
        );
        // Micro-second precision, as the kubelet's MicroTime.
        let renewed = text(&lease, "/spec/renewTime");
        ensure!(
            renewed.len() == "2026-01-01T00:00:00.000000Z".len(),
            "{renewed}"
        );
    }
    let before: Vec<String> = nodes
        .names()
        .iter()
        .map(|n| renew_time(&cp, n))
        .collect::<Result<_>>()?;
    let after = wait_for("every lease renewed", Duration::from_secs(10), || {
        let now: Vec<String> = nodes
            .names()
            .iter()
            .map(|n| renew_time(&cp, n))
            .collect::<Result<_>>()?;
        Ok(now.iter().zip(&before).all(|(a, b)| a > b).then_some(now))
    })?;
    // Four nodes renewing every 2 s are renewed half a second apart, not all at once.
    let mut phases: Vec<f64> = after
        .iter()
        .map(|t| seconds_of_day(t).map(|s| s % 2.0))
        .collect::<Result<_>>()?;
    phases.sort_by(f64::total_cmp);
    let spread = phases.last().copied().unwrap_or_default() - phases[0];
    ensure!(spread > 0.5, "renewals bunched together: {after:?}");
    Ok(())
}

#[test]
fn a_pod_bound_at_creation_becomes_running_and_ready_with_an_address() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = api_only(dir.path())?;
    let _nodes = SimNodes::start(&cp, 2, "sim-", &["--pod-startup-ms", "1500"])?;
    let mut web = pod("web", "sim-1", "Always", &[]);
    web["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox"}]);
    web["spec"]["containers"] = json!([
        {"name": "app", "image": "nginx:1.27"},
        {"name": "log", "image": "busybox"},
    ]);
    create_pod(&cp, &web)?;
    // The startup delay holds it Pending first.
    let early = get_pod(&cp, "web")?;
    ensure!(phase(&early) == "Pending", "{early}");
    ensure!(early.pointer("/status/podIP").is_none(), "{early}");
    let web = wait_pod(&cp, "web", "Running", |p| phase(p) == "Running")?;
    let ip = text(&web, "/status/podIP");
    ensure!(ip.starts_with("10.244.1."), "pod IP {ip}");
    ensure!(web["status"]["podIPs"] == json!([{"ip": ip}]), "{web}");
    ensure!(text(&web, "/status/hostIP") == "127.64.0.2", "{web}");
    ensure!(!text(&web, "/status/startTime").is_empty(), "{web}");
    for type_ in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        ensure!(condition(&web, type_) == Some("True"), "{type_}: {web}");
    }
    let statuses = web["status"]["containerStatuses"]
        .as_array()
        .context("containerStatuses")?;
    let names: Vec<&str> = statuses.iter().map(|c| text(c, "/name")).collect();
    ensure!(names == ["app", "log"], "{names:?}");
    for c in statuses {
        ensure!(
            c["ready"] == true && c["started"] == true && c["restartCount"] == 0,
            "{c}"
        );
        ensure!(c["state"]["running"]["startedAt"].is_string(), "{c}");
        ensure!(text(c, "/containerID").starts_with("sim://"), "{c}");
        ensure!(!text(c, "/imageID").is_empty(), "{c}");
    }
    ensure!(statuses[0]["image"] == "nginx:1.27", "{}", statuses[0]);
    let init = &web["status"]["initContainerStatuses"][0];
    ensure!(init["name"] == "setup", "{init}");
    ensure!(
        init["state"]["terminated"]["reason"] == "Completed",
        "{init}"
    );
    ensure!(init["state"]["terminated"]["exitCode"] == 0, "{init}");

    // Another pod on the same node gets another address from the same range.
    create_pod(&cp, &pod("second", "sim-1", "Always", &[]))?;
    let second = wait_pod(&cp, "second", "Running", |p| phase(p) == "Running")?;
    let second_ip = text(&second, "/status/podIP");
    ensure!(
        second_ip.starts_with("10.244.1.") && second_ip != ip,
        "{second_ip} vs {ip}"
    );

    // A running pod is left alone: nothing rewrites it while nothing happens.
    let version = text(&web, "/metadata/resourceVersion").to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let later = get_pod(&cp, "web")?;
    ensure!(
        text(&later, "/metadata/resourceVersion") == version,
        "rewritten: {later}"
    );
    Ok(())
}

fn last_exit(pod: &Value) -> Option<i64> {
    pod.pointer("/status/containerStatuses/0/lastState/terminated/exitCode")
        .and_then(Value::as_i64)
}

fn restarts(pod: &Value) -> i64 {
    pod.pointer("/status/containerStatuses/0/restartCount")
        .and_then(Value::as_i64)
        .unwrap_or_default()
}

#[test]
fn exit_code_annotations_end_or_restart_containers_as_the_restart_policy_says() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = api_only(dir.path())?;
    let _nodes = SimNodes::start(&cp, 1, "sim-", &[])?;
    let run = |code: &'static str| {
        [
            ("skiff.io/sim-run-seconds", "1"),
            ("skiff.io/sim-exit-code", code),
        ]
    };
    create_pod(&cp, &pod("never-ok", "sim-0", "Never", &run("0")))?;
    create_pod(&cp, &pod("never-fails", "sim-0", "Never", &run("3")))?;
    create_pod(&cp, &pod("onfailure-ok", "sim-0", "OnFailure", &run("0")))?;
    create_pod(
        &cp,
        &pod("onfailure-fails", "sim-0", "OnFailure", &run("3")),
    )?;
    create_pod(&cp, &pod("always-ok", "sim-0", "Always", &run("0")))?;
    create_pod(&cp, &pod("never-forever", "sim-0", "Never", &[]))?;

    let terminated = "/status/containerStatuses/0/state/terminated";
    let ok = wait_pod(&cp, "never-ok", "Succeeded", |p| phase(p) == "Succeeded")?;
    ensure!(
        text(&ok, &format!("{terminated}/reason")) == "Completed",
        "{ok}"
    );
    ensure!(
        ok.pointer(&format!("{terminated}/exitCode")) == Some(&json!(0)),
        "{ok}"
    );
    ensure!(condition(&ok, "Ready") == Some("False"), "{ok}");

    let failed = wait_pod(&cp, "never-fails", "Failed", |p| phase(p) == "Failed")?;
    ensure!(
        text(&failed, &format!("{terminated}/reason")) == "Error",
        "{failed}"
    );
    ensure!(
        failed.pointer(&format!("{terminated}/exitCode")) == Some(&json!(3)),
        "{failed}"
    );
    ensure!(restarts(&failed) == 0, "{failed}");

    let done = wait_pod(&cp, "onfailure-ok", "Succeeded", |p| {
        phase(p) == "Succeeded"
    })?;
    ensure!(restarts(&done) == 0, "{done}");

    let crashing = wait_pod(&cp, "onfailure-fails", "restarted twice", |p| {
        restarts(p) >= 2
    })?;
    ensure!(phase(&crashing) == "Running", "{crashing}");
    ensure!(last_exit(&crashing) == Some(3), "{crashing}");
    ensure!(
        text(
            &crashing,
            "/status/containerStatuses/0/lastState/terminated/reason"
        ) == "Error",
        "{crashing}"
    );

    let server = wait_pod(&cp, "always-ok", "restarted", |p| restarts(p) >= 1)?;
    ensure!(
        phase(&server) == "Running" && last_exit(&server) == Some(0),
        "{server}"
    );

    // Without annotations a container runs until deleted, whatever the policy.
    let forever = get_pod(&cp, "never-forever")?;
    ensure!(
        phase(&forever) == "Running" && restarts(&forever) == 0,
        "{forever}"
    );
    Ok(())
}

#[test]
fn a_jobs_pod_completes_without_an_annotation_and_a_sidecar_runs_beside_the_app() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = api_only(dir.path())?;
    let _nodes = SimNodes::start(&cp, 1, "sim-", &["--job-run-ms", "500"])?;
    let mut job_pod = pod("job-pod", "sim-0", "Never", &[]);
    job_pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "batch/v1", "kind": "Job", "name": "j",
        "uid": "6f1c3e1a-2b7d-4c55-9a0e-1d2f3a4b5c6d", "controller": true,
    }]);
    job_pod["spec"]["initContainers"] =
        json!([{"name": "proxy", "image": "envoy", "restartPolicy": "Always"}]);
    create_pod(&cp, &job_pod)?;
    // Succeeded once the app is done; the sidecar is stopped then, reported a moment later.
    let done = wait_pod(&cp, "job-pod", "Succeeded with its sidecar stopped", |p| {
        phase(p) == "Succeeded"
            && p["status"]["initContainerStatuses"][0]["state"]["terminated"].is_object()
    })?;
    ensure!(
        done.pointer("/status/containerStatuses/0/state/terminated/exitCode") == Some(&json!(0)),
        "{done}"
    );
    // The sidecar did not hold the pod back, and was stopped once the app was done.
    let proxy = &done["status"]["initContainerStatuses"][0];
    ensure!(proxy["name"] == "proxy", "{done}");
    ensure!(proxy["state"]["terminated"].is_object(), "{proxy}");

    // Not a Job's: runs until deleted, its sidecar started and ready beside it.
    let mut server = pod("server", "sim-0", "Always", &[]);
    server["spec"]["initContainers"] =
        json!([{"name": "proxy", "image": "envoy", "restartPolicy": "Always"}]);
    create_pod(&cp, &server)?;
    let running = wait_pod(&cp, "server", "Running", |p| phase(p) == "Running")?;
    let proxy = &running["status"]["initContainerStatuses"][0];
    ensure!(
        proxy["state"]["running"].is_object() && proxy["ready"] == true && proxy["started"] == true,
        "{proxy}"
    );
    ensure!(condition(&running, "Ready") == Some("True"), "{running}");
    Ok(())
}

#[test]
fn deleting_a_bound_pod_removes_it_once_its_containers_stopped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = api_only(dir.path())?;
    let _nodes = SimNodes::start(&cp, 1, "sim-", &[])?;
    create_pod(&cp, &pod("plain", "sim-0", "Always", &[]))?;
    let mut held = pod("held", "sim-0", "Always", &[]);
    held["metadata"]["finalizers"] = json!(["skiff.io/test-hold"]);
    create_pod(&cp, &held)?;
    for p in ["plain", "held"] {
        wait_pod(&cp, p, "Running", |p| phase(p) == "Running")?;
    }

    // kubectl waits for the pod to be gone, which only the node's final delete does
    // (nothing else runs, and the default grace period is 30 s).
    let started = Instant::now();
    cp.ok(&["delete", "pod", "plain", "--timeout=15s"], None)?;
    ensure!(get_pod(&cp, "plain")?.is_null(), "still there");
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    // A finalizer keeps the object: the containers are seen stopped first.
    let (code, body) = cp.http("DELETE", &format!("{PODS}/held"), "application/json", b"")?;
    ensure!(code == 200 || code == 202, "{code}: {body}");
    let stopped = wait_pod(&cp, "held", "stopped", |p| {
        p.pointer("/status/containerStatuses/0/state/terminated")
            .is_some()
    })?;
    ensure!(
        stopped.pointer("/metadata/deletionTimestamp").is_some(),
        "{stopped}"
    );
    ensure!(condition(&stopped, "Ready") == Some("False"), "{stopped}");
    send(
        &cp,
        "PATCH",
        &format!("{PODS}/held"),
        "application/merge-patch+json",
        &json!({"metadata": {"finalizers": null}}),
    )?;
    wait_for("the held pod to be gone", WAIT, || {
        Ok(get_pod(&cp, "held")?.is_null().then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_restarted_process_adopts_its_nodes_and_running_pods() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = api_only(dir.path())?;
    let mut first = SimNodes::start(&cp, 2, "sim-", &[])?;
    create_pod(&cp, &pod("keep", "sim-0", "Always", &[]))?;
    create_pod(
        &cp,
        &pod(
            "timed",
            "sim-1",
            "Never",
            &[("skiff.io/sim-run-seconds", "5")],
        ),
    )?;
    let keep = wait_pod(&cp, "keep", "Running", |p| phase(p) == "Running")?;
    wait_pod(&cp, "timed", "Running", |p| phase(p) == "Running")?;
    let node_uid = get_json(&cp, "/api/v1/nodes/sim-0")?["metadata"]["uid"].clone();
    first.kill();

    let _second = SimNodes::start(&cp, 2, "sim-", &[])?;
    ensure!(
        get_json(&cp, "/api/v1/nodes/sim-0")?["metadata"]["uid"] == node_uid,
        "sim-0 was registered anew instead of adopted"
    );
    let renewed = renew_time(&cp, "sim-0")?;
    wait_for("the adopted lease renewed", WAIT, || {
        Ok((renew_time(&cp, "sim-0")? > renewed).then_some(()))
    })?;
    // The running pod is not started again: same object, same address.
    std::thread::sleep(Duration::from_millis(1500));
    let kept = get_pod(&cp, "keep")?;
    ensure!(
        kept["metadata"]["resourceVersion"] == keep["metadata"]["resourceVersion"],
        "rewritten after the restart: {kept}"
    );
    // The container that was running on: it still ends when its time is up.
    wait_pod(&cp, "timed", "Succeeded", |p| phase(p) == "Succeeded")?;
    // Its address stays taken.
    create_pod(&cp, &pod("new", "sim-0", "Always", &[]))?;
    let new = wait_pod(&cp, "new", "Running", |p| phase(p) == "Running")?;
    ensure!(
        new["status"]["podIP"] != keep["status"]["podIP"],
        "address {} handed out twice",
        keep["status"]["podIP"]
    );
    Ok(())
}

#[test]
fn a_node_deleted_from_the_api_is_no_longer_simulated() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = api_only(dir.path())?;
    let _nodes = SimNodes::start(&cp, 2, "sim-", &[])?;
    let (code, body) = cp.http("DELETE", "/api/v1/nodes/sim-1", "application/json", b"")?;
    ensure!(code == 200, "{code}: {body}");
    // Give the node watch a moment, then the Lease must stand still.
    std::thread::sleep(Duration::from_secs(1));
    let last = renew_time(&cp, "sim-1")?;
    std::thread::sleep(Duration::from_millis(2500));
    ensure!(
        renew_time(&cp, "sim-1")? == last,
        "sim-1's lease is still renewed"
    );
    ensure!(
        get_json(&cp, "/api/v1/nodes/sim-1")?.is_null(),
        "sim-1 came back"
    );
    create_pod(&cp, &pod("orphan", "sim-1", "Always", &[]))?;
    create_pod(&cp, &pod("fine", "sim-0", "Always", &[]))?;
    wait_pod(&cp, "fine", "Running", |p| phase(p) == "Running")?;
    std::thread::sleep(Duration::from_secs(1));
    let orphan = get_pod(&cp, "orphan")?;
    ensure!(phase(&orphan) == "Pending", "{orphan}");
    Ok(())
}

#[test]
fn two_processes_with_different_prefixes_drive_only_their_own_nodes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = api_only(dir.path())?;
    let _a = SimNodes::start(&cp, 2, "a-", &[])?;
    let mut b = SimNodes::start(&cp, 1, "b-", &["--node-ip-base", "127.65.0.1"])?;
    create_pod(&cp, &pod("on-a", "a-1", "Always", &[]))?;
    create_pod(&cp, &pod("on-b", "b-0", "Always", &[]))?;
    wait_pod(&cp, "on-a", "Running", |p| phase(p) == "Running")?;
    let on_b = wait_pod(&cp, "on-b", "Running", |p| phase(p) == "Running")?;
    ensure!(text(&on_b, "/status/hostIP") == "127.65.0.1", "{on_b}");

    b.kill();
    let (a_before, b_before) = (renew_time(&cp, "a-0")?, renew_time(&cp, "b-0")?);
    std::thread::sleep(Duration::from_millis(2500));
    ensure!(renew_time(&cp, "a-0")? > a_before, "a-0 stopped renewing");
    ensure!(
        renew_time(&cp, "b-0")? == b_before,
        "b-0 renewed after its process died"
    );
    create_pod(&cp, &pod("late", "b-0", "Always", &[]))?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        phase(&get_pod(&cp, "late")?) == "Pending",
        "a dead node started a pod"
    );
    let names: BTreeSet<String> = items(&get_json(&cp, "/api/v1/nodes")?)
        .iter()
        .map(|n| name(n).to_owned())
        .collect();
    ensure!(
        names == BTreeSet::from(["a-0".into(), "a-1".into(), "b-0".into()]),
        "{names:?}"
    );
    Ok(())
}

/// Resident set size and CPU time of a process, from /proc.
fn usage(pid: u32) -> Result<(f64, f64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("{key} in /proc/{pid}/status"))?;
        let value: f64 = line.split_whitespace().nth(1).context("value")?.parse()?;
        Ok(value / 1024.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })?;
    let cpu = Duration::from_millis(ticks * 1000 / per_second.max(1));
    Ok((kib("VmRSS:")?, kib("VmHWM:")?, cpu))
}

/// Creates `count` pods bound round-robin to `nodes` nodes `scale-<i>`, 32 requests at a
/// time over kept-alive connections.
fn create_bound_pods(cp: &ControlPlane, count: usize, nodes: usize) -> Result<()> {
    use bytes::Bytes;
    use futures::{StreamExt, TryStreamExt};
    use http_body_util::{BodyExt, Full};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client: Client<_, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(skiff_tests::http::connector(cp)?);
        let url = cp.url();
        let url = url.as_str();
        futures::stream::iter(0..count)
            .map(|i| {
                let client = client.clone();
                async move {
                    let body = pod(
                        &format!("scale-{i}"),
                        &format!("scale-{}", i % nodes),
                        "Always",
                        &[],
                    );
                    let request = hyper::Request::post(format!("{url}{PODS}"))
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())))?;
                    let response = client.request(request).await?;
                    let code = response.status();
                    let text = response.into_body().collect().await?.to_bytes();
                    if !code.is_success() {
                        bail!(
                            "creating pod {i}: {code}: {}",
                            String::from_utf8_lossy(&text)
                        );
                    }
                    Ok(())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    })
}

/// Run with release binaries:
/// `cargo build --release --bins && cargo test --release -p skiff-tests --test
/// simulated_nodes -- --ignored --nocapture`.
#[test]
#[ignore = "a scale measurement: 5,000 nodes and 50,000 pods take minutes and most of the machine"]
fn five_thousand_nodes_and_fifty_thousand_pods_in_one_process() -> Result<()> {
    const NODES: usize = 5000;
    const PODS_TOTAL: usize = 50_000;
    const RENEW: u64 = 10;
    let dir = tempfile::tempdir()?;
    let cp = api_only(dir.path())?;
    let control_pid = cp.pid().context("control pid")?;

    let started = Instant::now();
    let nodes = SimNodes::start(
        &cp,
        NODES,
        "scale-",
        &["--lease-renew-interval-seconds", &RENEW.to_string()],
    )?;
    let registered = started.elapsed();
    let pid = nodes.pid().context("node pid")?;
    let (rss_nodes, _, cpu_nodes) = usage(pid)?;

    let started = Instant::now();
    create_bound_pods(&cp, PODS_TOTAL, NODES)?;
    let created = started.elapsed();
    let not_running = format!("{PODS}?fieldSelector=status.phase%21%3DRunning&limit=500");
    wait_for("every pod Running", Duration::from_mins(10), || {
        let list = get_json(&cp, &not_running)?;
        let more = list
            .pointer("/metadata/continue")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty());
        Ok((items(&list).is_empty() && !more).then_some(()))
    })?;
    let all_running = started.elapsed();
    let (rss_pods, _, cpu_pods) = usage(pid)?;

    // Steady state: only Lease renewals (and the odd status heartbeat).
    let window = Duration::from_mins(1);
    let leases_before: Vec<(String, String)> = items(&get_json(&cp, LEASES)?)
        .iter()
        .map(|l| (name(l).to_owned(), text(l, "/spec/renewTime").to_owned()))
        .collect();
    let (_, _, cpu_before) = usage(pid)?;
    let (_, _, control_cpu_before) = usage(control_pid)?;
    std::thread::sleep(window);
    let (rss_steady, hwm, cpu_after) = usage(pid)?;
    let (control_rss, _, control_cpu_after) = usage(control_pid)?;
    let leases_after: Vec<(String, String)> = items(&get_json(&cp, LEASES)?)
        .iter()
        .map(|l| (name(l).to_owned(), text(l, "/spec/renewTime").to_owned()))
        .collect();
    let stale = leases_before
        .iter()
        .filter(|(n, t)| leases_after.iter().any(|(m, u)| m == n && u <= t))
        .count();
    let window_s = window.as_secs_f64();
    let steady_cpu = cpu_after.saturating_sub(cpu_before).as_secs_f64() / window_s * 100.0;
    let control_cpu = control_cpu_after
        .saturating_sub(control_cpu_before)
        .as_secs_f64()
        / window_s
        * 100.0;

    println!(
        "simulated nodes at scale ({NODES} nodes, {PODS_TOTAL} pods, one process, Lease renewal every {RENEW} s):"
    );
    println!(
        "  registration of {NODES} nodes (create + Lease) until all Ready: {:.1} s",
        registered.as_secs_f64()
    );
    println!(
        "  {PODS_TOTAL} bound pods created by 32 clients in {:.1} s, all Running after {:.1} s",
        created.as_secs_f64(),
        all_running.as_secs_f64()
    );
    println!(
        "  node process RSS: {rss_nodes:.0} MiB after registration, {rss_pods:.0} MiB with every pod running, {rss_steady:.0} MiB steady (peak {hwm:.0} MiB)"
    );
    println!(
        "  node process CPU: {:.1} s for registration, {:.1} s for all pods, {steady_cpu:.1} % of a core steady",
        cpu_nodes.as_secs_f64(),
        cpu_pods.saturating_sub(cpu_nodes).as_secs_f64()
    );
    println!(
        "  control (API server only): RSS {control_rss:.0} MiB, {control_cpu:.1} % of a core steady"
    );
    println!(
        "  leases not renewed during the {window_s:.0} s window: {stale} of {}",
        leases_before.len()
    );
    ensure!(
        leases_before.len() == NODES,
        "{} leases",
        leases_before.len()
    );
    ensure!(
        stale == 0,
        "{stale} leases were not renewed in {window_s} s"
    );
    Ok(())
}
