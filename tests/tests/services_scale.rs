//! Services at scale: a node with 10,000 Services programmed still serves one more that is
//! added, and a change of one's endpoints, to a client in a pod (issue 12's "10,000 Services
//! programmed and one more added or changed"; the time it takes is `cargo xtask bench
//! datapath`'s to measure, not this test's). A debug build's API server creates about 25
//! Services (with their slices) a second on a loaded 2-core machine, so debug builds use
//! 1,000 Services to stay near two minutes; `SKIFF_SCALE_SERVICES` sets the count.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use skiff_tests::{
    cluster::{Cluster, ClusterConfig, PodAt, wait_for},
    many_services::{TCP_PORT, create, services, set_endpoints},
    process::ChildGuard,
};

const IMAGE: &str = "example.org/skiff/busybox:services-scale";
const LOAD: &str = env!("CARGO_BIN_EXE_datapath_load");

/// Never set: the test has no Ctrl-C handling of its own.
static STOP: AtomicBool = AtomicBool::new(false);

fn pods(c: &Cluster, names: &[&str]) -> Result<Vec<PodAt>> {
    let mut yaml = String::new();
    for name in names {
        let _ = write!(
            yaml,
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: node-0
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: idle, image: '{IMAGE}', imagePullPolicy: Never, command: [sleep, '3600']}}
"
        );
    }
    c.kubectl(&["apply", "-f", "-"], Some(&yaml))?;
    names
        .iter()
        .map(|name| {
            let pod = wait_for(
                &format!("pod {name} Running"),
                Duration::from_mins(2),
                || {
                    let p = c.get_json(&format!("/api/v1/namespaces/default/pods/{name}"))?;
                    let up = p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string();
                    Ok(up.then_some(p))
                },
            )?;
            c.pod_at(&pod)
        })
        .collect()
}

/// Which backend answers each target, asked from `client` (a pod joined to the node's
/// cgroup, where the socket load balancer sees it); errors as `error:...`.
fn who(client: &PodAt, procs: &Path, targets: &[SocketAddr], dir: &Path) -> Result<Vec<String>> {
    let file = dir.join("targets");
    let text: Vec<String> = targets.iter().map(ToString::to_string).collect();
    std::fs::write(&file, text.join("\n"))?;
    let out = Command::new("nsenter")
        .arg(format!("--net={}", client.netns.display()))
        .args(["--", LOAD, "client", "--test", "who", "--targets"])
        .arg(&file)
        .arg("--cgroup-procs")
        .arg(procs)
        .output()
        .context("running the client")?;
    ensure!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn answered_by(
    what: &str,
    ask: impl Fn() -> Result<Vec<String>>,
    want: impl Fn(&[String]) -> bool,
) -> Result<()> {
    wait_for(what, Duration::from_mins(5), || {
        let answers = ask()?;
        Ok(want(&answers).then_some(()))
    })
}

#[test]
fn with_many_services_programmed_one_more_added_or_changed_is_served() -> Result<()> {
    if !skiff_tests::require_root("services_scale") {
        return Ok(());
    }
    let count: usize = std::env::var("SKIFF_SCALE_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            1_000
        } else {
            10_000
        });
    let c = Cluster::start(&ClusterConfig::one_switch(1))?;
    let result = scale(&c, count);
    if result.is_err() {
        let logs = c.logs();
        let tail: Vec<&str> = logs.lines().rev().take(60).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    result?;
    c.check_nothing_escaped()
}

fn scale(c: &Cluster, count: usize) -> Result<()> {
    c.import_busybox(IMAGE)?;
    let all = pods(c, &["backend-0", "backend-1", "client"])?;
    let (backends, client) = (&all[..2], &all[2]);
    let _servers: Vec<ChildGuard> = backends
        .iter()
        .map(|p| {
            ChildGuard::spawn(
                Command::new("nsenter")
                    .arg(format!("--net={}", p.netns.display()))
                    .args(["--", LOAD, "server"])
                    .stdout(Stdio::null()),
            )
        })
        .collect::<Result<_>>()?;
    let ips: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
    let cgroup: PathBuf = c.node(0).socket_lb_cgroup().join("test-clients");
    std::fs::create_dir_all(&cgroup)?;
    let procs = cgroup.join("cgroup.procs");
    let svcs = services(count + 1, &ips);
    let began = Instant::now();
    create(c, &svcs[..count], &STOP)?;
    eprintln!(
        "services_scale: {count} Services created in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let target = |i: usize| SocketAddr::from((svcs[i].vip, TCP_PORT));
    let ask = |targets: &[SocketAddr]| who(client, &procs, targets, c.dir());
    let served = |answers: &[String]| answers.iter().all(|a| !a.starts_with("error"));
    answered_by(
        &format!("the first and last of {count} Services served"),
        || ask(&[target(0), target(count - 1)]),
        served,
    )?;
    eprintln!(
        "services_scale: {count} Services programmed {:.1} s after the first request",
        began.elapsed().as_secs_f64()
    );
    // One more Service.
    create(c, &svcs[count..], &STOP)?;
    answered_by("the added Service served", || ask(&[target(count)]), served)?;
    // One Service's endpoints changed to the second backend only: every new connection
    // lands there.
    set_endpoints(c, 0, &ips[1..])?;
    let only = ips[1].to_string();
    answered_by(
        "the changed Service served by its new endpoint only",
        || ask(&[target(0); 8]),
        |answers| answers.iter().all(|a| *a == only),
    )?;
    Ok(())
}
