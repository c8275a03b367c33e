//! The scheduler inside the real `control` binary, against Node objects this test writes
//! straight into the API (capacity, labels, taints), with the controllers off so nothing
//! but the scheduler acts on pods: placement by resources, the Unschedulable condition and
//! `FailedScheduling` event with kube-scheduler's message, a retry when a node joins, node
//! selectors, taints, cordons, anti-affinity, topology spread, other schedulers' pods, and
//! preemption.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use skiff_tests::{
    control::ControlPlane,
    sim::{condition, get_json, items, wait_for},
};

const WAIT: Duration = Duration::from_secs(30);

/// A control plane whose only actor is the scheduler.
fn start(dir: &std::path::Path) -> Result<ControlPlane> {
    ControlPlane::start_with(dir, &["--no-controllers", "--leader-elect=false"])
}

fn send(cp: &ControlPlane, method: &str, path: &str, body: &Value) -> Result<Value> {
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let (code, text) = cp.http(method, path, content_type, body.to_string().as_bytes())?;
    if !(200..300).contains(&code) {
        bail!("{method} {path}: {code}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A Node with `cpu` cores, 8Gi, 110 pod slots, and the given labels and spec.
#[expect(
    clippy::needless_pass_by_value,
    reason = "callers write the spec inline with json!"
)]
fn node(
    cp: &ControlPlane,
    name: &str,
    cpu: &str,
    labels: &[(&str, &str)],
    spec: Value,
) -> Result<()> {
    let mut all: BTreeMap<&str, &str> = labels.iter().copied().collect();
    all.insert("kubernetes.io/hostname", name);
    let resources = json!({"cpu": cpu, "memory": "8Gi", "pods": "110"});
    send(
        cp,
        "POST",
        "/api/v1/nodes",
        &json!({
            "metadata": {"name": name, "labels": all},
            "spec": spec,
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }),
    )?;
    Ok(())
}

/// A pod in `default` asking for `cpu`, with `extra` merged into its spec.
fn pod(
    cp: &ControlPlane,
    name: &str,
    cpu: &str,
    labels: &[(&str, &str)],
    extra: Value,
) -> Result<()> {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let mut spec = json!({
        "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}],
    });
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    send(
        cp,
        "POST",
        "/api/v1/namespaces/default/pods",
        &json!({"metadata": {"name": name, "labels": labels}, "spec": spec}),
    )?;
    Ok(())
}

fn get_pod(cp: &ControlPlane, name: &str) -> Result<Value> {
    get_json(cp, &format!("/api/v1/namespaces/default/pods/{name}"))
}

fn node_of(pod: &Value) -> Option<String> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// Waits until `name` is bound and returns its node.
fn bound(cp: &ControlPlane, name: &str) -> Result<String> {
    wait_for(&format!("{name} bound"), WAIT, || {
        Ok(node_of(&get_pod(cp, name)?))
    })
}

/// Waits until `name` is marked unschedulable with a message `expected` accepts; returns
/// the message.
fn unschedulable(cp: &ControlPlane, name: &str, expected: impl Fn(&str) -> bool) -> Result<String> {
    let mut last = String::new();
    let found = wait_for(&format!("{name} unschedulable"), WAIT, || {
        let pod = get_pod(cp, name)?;
        let condition = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
            .cloned();
        let Some(condition) = condition else {
            return Ok(None);
        };
        ensure!(condition["reason"] == "Unschedulable", "{condition}");
        condition["message"]
            .as_str()
            .unwrap_or_default()
            .clone_into(&mut last);
        Ok(expected(&last).then(|| last.clone()))
    });
    found.with_context(|| format!("last PodScheduled message: {last:?}"))
}

/// Waits until the scheduler has seen every node created so far. Nodes and pods come
/// through separate watches, so a pod created right after a node may otherwise be tried
/// before the node is known. A probe pod pinned to the newest node proves it (one watch
/// delivers nodes in order); deleting the probe before the test's pods (one watch again)
/// leaves nothing behind.
fn nodes_seen(cp: &ControlPlane, newest: &str) -> Result<()> {
    let probe = format!("probe-{newest}");
    pod(
        cp,
        &probe,
        "0",
        &[],
        json!({
            "nodeSelector": {"kubernetes.io/hostname": newest},
            "tolerations": [{"operator": "Exists"}],
        }),
    )?;
    bound(cp, &probe)?;
    delete_now(cp, &probe)
}

/// Deletes a pod at once, as its kubelet does once the pod has stopped.
fn delete_now(cp: &ControlPlane, name: &str) -> Result<()> {
    let (code, body) = cp.http(
        "DELETE",
        &format!("/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0"),
        "application/json",
        b"",
    )?;
    ensure!(code == 200 || code == 404, "DELETE {name}: {code} {body}");
    Ok(())
}

/// Messages of the events with `reason` about pod `name`.
fn events(cp: &ControlPlane, name: &str, reason: &str) -> Result<Vec<String>> {
    let list = get_json(
        cp,
        &format!(
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name},reason%3D{reason}"
        ),
    )?;
    Ok(items(&list)
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn pods_spread_over_nodes_by_free_resources() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    for n in ["n1", "n2", "n3"] {
        node(&cp, n, "4", &[], json!({}))?;
    }
    nodes_seen(&cp, "n3")?;
    for i in 0..6 {
        pod(&cp, &format!("p{i}"), "1", &[], json!({}))?;
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        *per_node.entry(bound(&cp, &format!("p{i}"))?).or_default() += 1;
    }
    ensure!(
        per_node.values().all(|n| *n == 2) && per_node.len() == 3,
        "least-allocated scoring should put two pods on each node: {per_node:?}"
    );
    let node = bound(&cp, "p0")?;
    let scheduled = wait_for("the Scheduled event", WAIT, || {
        Ok(events(&cp, "p0", "Scheduled")?.into_iter().next())
    })?;
    ensure!(
        scheduled == format!("Successfully assigned default/p0 to {node}"),
        "{scheduled}"
    );
    let pod = get_pod(&cp, "p0")?;
    ensure!(condition(&pod, "PodScheduled") == Some("True"), "{pod}");
    Ok(())
}

#[test]
fn a_pod_that_fits_nowhere_waits_until_a_node_that_fits_joins() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    for n in ["small-1", "small-2", "small-3"] {
        node(&cp, n, "1", &[], json!({}))?;
    }
    nodes_seen(&cp, "small-3")?;
    pod(&cp, "big", "2", &[], json!({}))?;
    let expected = "0/3 nodes are available: 3 Insufficient cpu.";
    unschedulable(&cp, "big", |m| m == expected)?;
    let failed = wait_for("the FailedScheduling event", WAIT, || {
        Ok(events(&cp, "big", "FailedScheduling")?.into_iter().next())
    })?;
    ensure!(failed == expected, "{failed}");
    let pod = get_pod(&cp, "big")?;
    ensure!(node_of(&pod).is_none(), "{pod}");
    ensure!(
        pod.pointer("/status/phase") == Some(&json!("Pending")),
        "{pod}"
    );
    // The parked pod is retried on the node event, not after the 5-minute flush.
    node(&cp, "large", "4", &[], json!({}))?;
    ensure!(bound(&cp, "big")? == "large");
    Ok(())
}

#[test]
fn node_selectors_taints_and_cordons_are_honoured() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    node(&cp, "ssd", "4", &[("disk", "ssd")], json!({}))?;
    node(
        &cp,
        "gpu",
        "4",
        &[],
        json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
    )?;
    node(
        &cp,
        "cordoned",
        "4",
        &[("disk", "ssd")],
        json!({"unschedulable": true}),
    )?;
    nodes_seen(&cp, "cordoned")?;
    pod(
        &cp,
        "wants-ssd",
        "1",
        &[],
        json!({"nodeSelector": {"disk": "ssd"}}),
    )?;
    ensure!(bound(&cp, "wants-ssd")? == "ssd");
    pod(
        &cp,
        "wants-gpu",
        "1",
        &[],
        json!({"nodeSelector": {"kubernetes.io/hostname": "gpu"}}),
    )?;
    unschedulable(&cp, "wants-gpu", |m| {
        m == "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
              1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable."
    })?;
    pod(
        &cp,
        "tolerates-gpu",
        "1",
        &[],
        json!({
            "nodeSelector": {"kubernetes.io/hostname": "gpu"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
        }),
    )?;
    ensure!(bound(&cp, "tolerates-gpu")? == "gpu");
    // A pod that only fits the cordoned node waits, and runs once the cordon is lifted
    // (a node event, which moves parked pods at once).
    pod(
        &cp,
        "wants-cordoned",
        "1",
        &[],
        json!({"nodeSelector": {"kubernetes.io/hostname": "cordoned"}}),
    )?;
    unschedulable(&cp, "wants-cordoned", |m| {
        m.starts_with("0/3 nodes are available") && m.contains("1 node(s) were unschedulable")
    })?;
    send(
        &cp,
        "PATCH",
        "/api/v1/nodes/cordoned",
        &json!({"spec": {"unschedulable": null}}),
    )?;
    ensure!(bound(&cp, "wants-cordoned")? == "cordoned");
    Ok(())
}

#[test]
fn anti_affinity_and_topology_spread_are_honoured() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    // Zone a has three big nodes, zone b one small one: resource scores alone would pack
    // zone a, so an even split can only come from the spread constraint.
    let zone = "topology.kubernetes.io/zone";
    for n in ["a1", "a2", "a3"] {
        node(&cp, n, "16", &[(zone, "a")], json!({}))?;
    }
    node(&cp, "b1", "2", &[(zone, "b")], json!({}))?;
    nodes_seen(&cp, "b1")?;
    let spread = json!({"topologySpreadConstraints": [{
        "maxSkew": 1,
        "topologyKey": zone,
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "spread"}},
    }]});
    let mut zones: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..4 {
        // One at a time, so each placement sees the previous ones.
        pod(
            &cp,
            &format!("s{i}"),
            "500m",
            &[("app", "spread")],
            spread.clone(),
        )?;
        let node = bound(&cp, &format!("s{i}"))?;
        let zone = if node.starts_with('a') { "a" } else { "b" };
        *zones.entry(zone.to_owned()).or_default() += 1;
    }
    ensure!(
        zones.get("a") == Some(&2) && zones.get("b") == Some(&2),
        "{zones:?}"
    );
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"app": "web"}},
        "topologyKey": "kubernetes.io/hostname",
    }]}}});
    let mut hosts = std::collections::BTreeSet::new();
    for i in 0..4 {
        pod(
            &cp,
            &format!("w{i}"),
            "100m",
            &[("app", "web")],
            anti.clone(),
        )?;
        hosts.insert(bound(&cp, &format!("w{i}"))?);
    }
    ensure!(hosts.len() == 4, "one web pod per host: {hosts:?}");
    pod(&cp, "w4", "100m", &[("app", "web")], anti)?;
    unschedulable(&cp, "w4", |m| {
        m == "0/4 nodes are available: 4 node(s) didn't match pod anti-affinity rules."
    })?;
    // A plain pod labelled like them is kept off their hosts by their anti-affinity.
    pod(&cp, "w5", "100m", &[("app", "web")], json!({}))?;
    unschedulable(&cp, "w5", |m| {
        m == "0/4 nodes are available: 4 node(s) didn't satisfy existing pods anti-affinity rules."
    })?;
    // Deleting one of them frees its host for a parked pod.
    delete_now(&cp, "w0")?;
    wait_for("a parked web pod bound", WAIT, || {
        let w4 = node_of(&get_pod(&cp, "w4")?);
        let w5 = node_of(&get_pod(&cp, "w5")?);
        Ok(w4.or(w5))
    })?;
    Ok(())
}

#[test]
fn a_pod_for_another_scheduler_is_left_alone() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    node(&cp, "n1", "4", &[], json!({}))?;
    nodes_seen(&cp, "n1")?;
    pod(
        &cp,
        "theirs",
        "100m",
        &[],
        json!({"schedulerName": "my-scheduler"}),
    )?;
    pod(&cp, "ours", "100m", &[], json!({}))?;
    bound(&cp, "ours")?;
    // Give the scheduler every chance to touch it.
    std::thread::sleep(Duration::from_secs(2));
    let theirs = get_pod(&cp, "theirs")?;
    ensure!(node_of(&theirs).is_none(), "{theirs}");
    ensure!(condition(&theirs, "PodScheduled").is_none(), "{theirs}");
    ensure!(events(&cp, "theirs", "FailedScheduling")?.is_empty());
    Ok(())
}

#[test]
fn a_higher_priority_pod_preempts_and_never_policy_waits() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = start(dir.path())?;
    for (name, value, policy) in [
        ("high", 1000, "PreemptLowerPriority"),
        ("polite", 2000, "Never"),
    ] {
        send(
            &cp,
            "POST",
            "/apis/scheduling.k8s.io/v1/priorityclasses",
            &json!({"metadata": {"name": name}, "value": value, "preemptionPolicy": policy}),
        )?;
    }
    node(&cp, "n1", "2", &[], json!({}))?;
    nodes_seen(&cp, "n1")?;
    pod(&cp, "low", "1500m", &[], json!({}))?;
    ensure!(bound(&cp, "low")? == "n1");
    // A pod that may not preempt waits, and nobody is evicted for it.
    pod(
        &cp,
        "polite",
        "1500m",
        &[],
        json!({"priorityClassName": "polite"}),
    )?;
    unschedulable(&cp, "polite", |m| {
        m == "0/1 nodes are available: 1 Insufficient cpu."
    })?;
    let low = get_pod(&cp, "low")?;
    ensure!(
        low.pointer("/metadata/deletionTimestamp").is_none(),
        "{low}"
    );
    delete_now(&cp, "polite")?;
    // The preemptor evicts the low-priority pod gracefully, waits for it on its node,
    // then runs there.
    pod(
        &cp,
        "vip",
        "1500m",
        &[],
        json!({"priorityClassName": "high"}),
    )?;
    wait_for("low terminating", WAIT, || {
        let pod = get_pod(&cp, "low")?;
        Ok(pod.pointer("/metadata/deletionTimestamp").map(|_| ()))
    })?;
    let vip = get_pod(&cp, "vip")?;
    ensure!(
        node_of(&vip).is_none(),
        "the victim still holds the node: {vip}"
    );
    ensure!(
        vip.pointer("/status/nominatedNodeName") == Some(&json!("n1")),
        "the preemptor is nominated to the node it freed: {vip}"
    );
    let uid = vip["metadata"]["uid"]
        .as_str()
        .context("vip uid")?
        .to_owned();
    let preempted = wait_for("the Preempted event", WAIT, || {
        Ok(events(&cp, "low", "Preempted")?.into_iter().next())
    })?;
    ensure!(
        preempted == format!("Preempted by pod {uid} on node n1"),
        "{preempted}"
    );
    // The kubelet's part: the stopped victim goes away.
    delete_now(&cp, "low")?;
    ensure!(bound(&cp, "vip")? == "n1");
    Ok(())
}
