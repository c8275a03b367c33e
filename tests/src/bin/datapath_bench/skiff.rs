//! skiff's modes: a one-node cluster of the multi-host test harness per proxy mode, its
//! Services and EndpointSlices written through the API.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    sync::atomic::Ordering,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use skiff_tests::{
    bench::percentile,
    cluster::{Cluster, ClusterConfig, PodAt, wait_for},
    many_services::{
        BACKEND_TCP, BACKEND_UDP, NODE_PORTS, Svc, TCP_PORT, UDP_PORT, create, services,
        set_endpoints,
    },
    process::ChildGuard,
};

use crate::{
    Args, BACKENDS, Changes, INTERRUPTED, Launcher, Results, measure as measure_mode,
    not_interrupted, now, seen, settled, spawn_server, tune_client, watch_lines,
};

const IMAGE: &str = "bench.local/busybox:datapath";
/// What the node logs once its Service maps equal the API.
const SYNCED: &str = "Service datapath in sync with the API";

/// Whether the node binary has `--proxy-mode` (the nftables mode).
///
/// # Errors
/// If the node binary cannot run.
pub fn has_proxy_mode() -> Result<bool> {
    let out = Command::new(skiff_tests::bin("node"))
        .arg("--help")
        .output()
        .context("running node --help")?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--proxy-mode"))
}

/// Measures one proxy mode (`ebpf` gives modes 1-3, `nftables` mode 4).
///
/// # Errors
/// If the cluster or a measurement fails.
pub fn measure(
    args: &Args,
    mode: &str,
    load: &Path,
    scratch: &Path,
    results: &mut Results,
) -> Result<()> {
    eprintln!("datapath bench: {mode}: starting a one-node cluster ...");
    let mut config = ClusterConfig::one_switch(1);
    if mode != "ebpf" {
        config.node_args = vec!["--proxy-mode".into(), mode.into()];
    }
    let c = Cluster::start(&config)?;
    let result = run(args, mode, load, scratch, &c, results);
    if result.is_err() && !INTERRUPTED.load(Ordering::SeqCst) {
        let logs = c.logs();
        let tail: Vec<&str> = logs.lines().rev().take(80).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    if result.is_ok() {
        c.check_nothing_escaped()?;
    }
    result
}

fn create_pods(c: &Cluster) -> Result<Vec<PodAt>> {
    let mut yaml = String::new();
    let names: Vec<String> = (0..BACKENDS)
        .map(|i| format!("backend-{i}"))
        .chain(["client".to_owned()])
        .collect();
    for name in &names {
        let _ = write!(
            yaml,
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: idle, image: '{IMAGE}', imagePullPolicy: Never, command: [sleep, '36000']}}
",
            node = c.node_hosts()[0].label()
        );
    }
    c.kubectl(&["apply", "-f", "-"], Some(&yaml))?;
    let mut pods = Vec::new();
    for name in &names {
        let pod = wait_for(
            &format!("pod {name} Running"),
            Duration::from_mins(2),
            || {
                not_interrupted()?;
                let p = c.get_json(&format!("/api/v1/namespaces/default/pods/{name}"))?;
                let up = p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string();
                Ok(up.then_some(p))
            },
        )?;
        pods.push(c.pod_at(&pod)?);
    }
    Ok(pods)
}

/// Times `args.changes` switches of Service 0 between two single backends, each from the
/// request to the first connection that lands on the new backend.
fn change_latency(
    c: &Cluster,
    client: &Launcher,
    svcs: &[Svc],
    backends: &[Ipv4Addr],
    label: &str,
    args: &Args,
) -> Result<Changes> {
    let svc = &svcs[0];
    let (a, b) = (backends[0], backends[1]);
    set_endpoints(c, 0, &[a])?;
    let mut watcher = client.watch(SocketAddr::from((svc.vip, TCP_PORT)), args)?;
    let rx = watch_lines(&mut watcher)?;
    settled(&rx, a)?;
    let mut out = Changes {
        mode: label.to_owned(),
        services: svcs.len(),
        ..Changes::default()
    };
    for k in 0..args.changes {
        not_interrupted()?;
        let target = if k % 2 == 0 { b } else { a };
        let sent = now();
        set_endpoints(c, 0, &[target])?;
        let accepted = now();
        let t = seen(&rx, target, sent)?;
        out.live_ms.push((t - sent) * 1000.0);
        out.apply_ms.push((accepted - sent) * 1000.0);
        settled(&rx, target)?;
    }
    drop(watcher);
    set_endpoints(c, 0, &svc.endpoints)?;
    // Printed as measured, so a run cut off later still shows it.
    if !out.live_ms.is_empty() {
        eprintln!(
            "datapath bench: {label}, {}: slice change to the new backend p50 {:.1} ms p99 {:.1} ms ({} changes)",
            svcs.len(),
            percentile(&out.live_ms, 0.5),
            percentile(&out.live_ms, 0.99),
            out.live_ms.len()
        );
    }
    Ok(out)
}

/// The node's `/metrics` text.
fn metrics(c: &Cluster) -> Result<String> {
    c.node_endpoint_get(0, "/metrics")
}

/// The memlock bytes of the BPF maps process `pid` holds, and how many maps.
fn bpf_maps(pid: u32) -> (usize, u64) {
    let mut seen = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
            seen.insert(id, bytes);
        }
    }
    (seen.len(), seen.values().sum())
}

/// Seconds of the day of a log line's RFC 3339 timestamp (colours stripped).
fn log_time_of_day(line: &str) -> Option<f64> {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(ch);
        }
    }
    let stamp = plain.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Restarts the node with `restart` and returns the seconds from the restart to its log
/// saying its Service maps equal the API.
fn time_to_sync(c: &Cluster, restart: impl FnOnce() -> Result<()>) -> Result<f64> {
    let count = || c.node(0).log().matches(SYNCED).count();
    let before = count();
    let started = now();
    restart()?;
    wait_for(
        "the node's Service sync after its start",
        Duration::from_mins(5),
        || {
            not_interrupted()?;
            Ok((count() > before).then_some(()))
        },
    )?;
    let log = c.node(0).log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(SYNCED))
        .context("no sync line")?;
    let at = log_time_of_day(line).with_context(|| format!("no time in {line:?}"))?;
    let mut took = at - started.rem_euclid(86_400.0);
    if took < 0.0 {
        took += 86_400.0;
    }
    Ok(took)
}

#[expect(
    clippy::too_many_lines,
    reason = "one mode's measurement, step by step"
)]
fn run(
    args: &Args,
    mode: &str,
    load: &Path,
    scratch: &Path,
    c: &Cluster,
    results: &mut Results,
) -> Result<()> {
    c.import_busybox(IMAGE)?;
    let pods = create_pods(c)?;
    let (backend_pods, client_pod) = pods.split_at(BACKENDS);
    let client_pod = &client_pod[0];
    let _servers: Vec<ChildGuard> = backend_pods
        .iter()
        .map(|p| spawn_server(&p.netns, load))
        .collect::<Result<_>>()?;
    let backends: Vec<Ipv4Addr> = backend_pods.iter().map(|p| p.ip).collect();
    tune_client(&client_pod.netns)?;
    tune_client(&c.client().netns_path())?;
    let cgroup = c.node(0).socket_lb_cgroup().join("bench-clients");
    std::fs::create_dir_all(&cgroup)?;
    let inside = Launcher {
        load: load.to_owned(),
        netns: client_pod.netns.clone(),
        procs: Some(cgroup.join("cgroup.procs")),
        scratch: scratch.to_owned(),
    };
    let outside = Launcher {
        netns: c.client().netns_path(),
        procs: None,
        ..inside.clone()
    };
    let node_ip = c.node_hosts()[0].address();
    let max = args.services.last().copied().unwrap_or(1);
    let all = services(max, &backends);
    let (cluster_ip, node_port) = if mode == "ebpf" {
        ("2 eBPF socket LB, ClusterIP", "3 eBPF TC, NodePort")
    } else {
        ("4 nftables, ClusterIP", "4 nftables, NodePort")
    };
    let mut created = 0;
    for &n in &args.services {
        let began = std::time::Instant::now();
        create(c, &all[created..n], &INTERRUPTED)?;
        eprintln!(
            "datapath bench: {mode}: created Services {created}..{n} in {:.1} s",
            began.elapsed().as_secs_f64()
        );
        created = n;
        let svcs = &all[..n];
        let ports = n.min(NODE_PORTS);
        let probe: Vec<SocketAddr> = [0, n / 2, n - 1]
            .iter()
            .map(|&i| SocketAddr::from((svcs[i].vip, TCP_PORT)))
            .collect();
        let last_port = SocketAddr::from((node_ip, 30000 + u16::try_from(ports - 1)?));
        wait_for(
            &format!("{n} Services answering"),
            Duration::from_mins(3),
            || {
                not_interrupted()?;
                inside.all_answer(&probe, args).context("ClusterIP")?;
                outside.all_answer(&[last_port], args).context("NodePort")?;
                Ok(Some(()))
            },
        )?;
        eprintln!(
            "datapath bench: {mode}: {n} Services created and answering after {:.1} s",
            began.elapsed().as_secs_f64()
        );
        let node_pid = c.node(0).pid();
        let tcp: Vec<SocketAddr> = svcs.iter().map(|s| (s.vip, TCP_PORT).into()).collect();
        let udp: Vec<SocketAddr> = svcs.iter().map(|s| (s.vip, UDP_PORT).into()).collect();
        let np: Vec<SocketAddr> = svcs[..ports]
            .iter()
            .filter_map(|s| s.node_ports.map(|(t, _)| (node_ip, t).into()))
            .collect();
        if mode == "ebpf" {
            let d_tcp: Vec<SocketAddr> =
                backends.iter().map(|b| (*b, BACKEND_TCP).into()).collect();
            let d_udp: Vec<SocketAddr> =
                backends.iter().map(|b| (*b, BACKEND_UDP).into()).collect();
            let f = measure_mode(
                "1 direct pod IP",
                n,
                &inside,
                &d_tcp,
                &d_udp,
                node_pid,
                args,
            )?;
            results.figures.push(f);
        }
        let f = measure_mode(cluster_ip, n, &inside, &tcp, &udp, node_pid, args)?;
        results.figures.push(f);
        let f = measure_mode(node_port, n, &outside, &np, &[], node_pid, args)?;
        results.figures.push(f);
        let changes = change_latency(c, &inside, svcs, &backends, cluster_ip, args)?;
        results.changes.push(changes);
    }
    let label = if mode == "ebpf" { "eBPF" } else { "nftables" };
    if let Some(pid) = c.node(0).pid().filter(|_| mode == "ebpf") {
        let (maps, bytes) = bpf_maps(pid);
        #[expect(clippy::cast_precision_loss, reason = "bytes of maps")]
        let mib = bytes as f64 / 1_048_576.0;
        results.note(
            label,
            &format!("BPF maps held by the node at {max} Services"),
            format!("{maps} maps, {mib:.1} MiB memlock"),
        );
    }
    if mode != "ebpf" {
        let out = c.node_hosts()[0].output("nft", &["list", "ruleset"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        #[expect(clippy::cast_precision_loss, reason = "bytes of a listing")]
        let mib = out.stdout.len() as f64 / 1_048_576.0;
        results.note(
            label,
            &format!("the node's nftables ruleset at {max} Services"),
            format!(
                "{} lines, {mib:.1} MiB as `nft list ruleset` text",
                text.lines().count()
            ),
        );
    }
    let synced = time_to_sync(c, || c.restart_node(0))?;
    results.note(
        label,
        &format!("node SIGKILLed and restarted: start to all {max} Services in sync"),
        format!("{synced:.2} s"),
    );
    let synced = time_to_sync(c, || {
        c.stop_node(0);
        c.restart_node(0)
    })?;
    results.note(
        label,
        &format!(
            "node stopped (datapath removed) and started: start to all {max} Services programmed"
        ),
        format!("{synced:.2} s"),
    );
    let text = metrics(c).unwrap_or_default();
    if let Some(v) = text
        .lines()
        .find_map(|l| l.strip_prefix("skiff_proxy_last_sync_seconds "))
    {
        results.note(
            label,
            "map writes of that first sync (skiff_proxy_last_sync_seconds)",
            format!("{v} s"),
        );
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
