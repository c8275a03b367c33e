//! Two `control` processes on one real etcd: both serve the API, only the Lease holder
//! schedules and reconciles, and killing it hands over without any pod made twice.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Result, ensure};
use serde_json::Value;
use skiff_tests::{
    control::ControlPlane,
    etcd::Etcd,
    require_program,
    sim::{SimNodes, get_json, items, name, ready_pods, wait_for},
};

const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-control-plane";

fn holder(cp: &ControlPlane) -> Result<Option<String>> {
    let lease = get_json(cp, LEASE)?;
    Ok(lease
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .map(str::to_owned))
}

#[test]
fn killing_the_leader_hands_over_without_creating_a_pod_twice() -> Result<()> {
    if !require_program(
        "killing_the_leader_hands_over_without_creating_a_pod_twice",
        "etcd",
    ) {
        return Ok(());
    }
    let etcd = Etcd::start()?;
    let flags = [
        "--etcd",
        etcd.url(),
        "--leader-elect-lease-duration-seconds",
        "4",
        "--leader-elect-renew-deadline-seconds",
        "3",
        "--leader-elect-retry-period-seconds",
        "1",
    ];
    let (dir1, dir2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut first = ControlPlane::start_with(dir1.path(), &flags)?;
    let leader = wait_for("the first process to lead", Duration::from_secs(30), || {
        holder(&first)
    })?;
    let second = ControlPlane::start_with(dir2.path(), &flags)?;
    let _nodes = SimNodes::start(&second, 2, "sim-", &[])?;

    // Both serve the API; only the first acts.
    let manifest = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: busybox}]
";
    second.ok(&["apply", "-f", "-"], Some(manifest))?;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut observe = |cp: &ControlPlane| -> Result<usize> {
        let pods = items(&get_json(
            cp,
            "/api/v1/namespaces/default/pods?labelSelector=app=web",
        )?);
        seen.extend(pods.iter().map(|p| name(p).to_owned()));
        Ok(pods.len())
    };
    wait_for("four ready pods", Duration::from_mins(1), || {
        observe(&second)?;
        Ok((ready_pods(&second, "default", "app=web")?.len() == 4).then_some(()))
    })?;
    ensure!(first.log().contains("became the leader"), "first never led");
    ensure!(
        !second.log().contains("became the leader"),
        "both processes acted"
    );
    ensure!(
        holder(&second)? == Some(leader.clone()),
        "lease moved without a failure"
    );

    // The leader dies; the other takes over within the lease duration and carries on.
    first.kill();
    second.ok(&["scale", "deployment/web", "--replicas=8"], None)?;
    wait_for(
        "eight ready pods under the new leader",
        Duration::from_mins(1),
        || {
            observe(&second)?;
            Ok((ready_pods(&second, "default", "app=web")?.len() == 8).then_some(()))
        },
    )?;
    let new_holder = holder(&second)?;
    ensure!(
        new_holder.is_some() && new_holder != Some(leader),
        "lease not handed over: {new_holder:?}"
    );
    ensure!(
        second.log().contains("became the leader"),
        "second never led"
    );
    // Nothing is created twice, now or a moment later.
    for _ in 0..20 {
        ensure!(observe(&second)? == 8, "pod count left 8");
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        seen.len() == 8,
        "pods were created more than once: {seen:?}"
    );
    let sets = items(&get_json(
        &second,
        "/apis/apps/v1/namespaces/default/replicasets",
    )?);
    ensure!(sets.len() == 1, "{} replica sets", sets.len());
    Ok(())
}
