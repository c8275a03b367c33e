//! `cargo xtask bench scheduler`: scheduling throughput and creation-to-binding latency of
//! the real `control` binary (API server plus its scheduler) on fake nodes, like
//! kube-scheduler's `scheduler_perf`: 1,000 and 5,000 nodes of 32 cpu / 256 Gi / 110 pods
//! over 10 zones, then 10,000 and 50,000 pods with mixed requests, a tenth of them with
//! inter-pod anti-affinity or a zone topology spread constraint, created by 32 clients.
//!
//! Two more rows separate the scheduler from the API server it shares two cores with: a
//! backlog of pods created while no scheduler runs, then bound by `skiff_scheduler::run`
//! started in this process on informers of its own; and the scheduling decisions alone on
//! an in-memory cache.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::Deserialize;
use serde_json::{Value, json};
use skiff_tests::{
    bench::percentile,
    control::ControlPlane,
    etcd::Etcd,
    http::{Http, list_revision, send, watch_lines},
    process::{cpu_seconds, rss_mib},
};

const CONCURRENCY: usize = 32;
const ZONES: usize = 10;
const NAMESPACE: &str = "sched-bench";
/// Give up when no pod got bound for this long.
const STALL: Duration = Duration::from_mins(2);

#[derive(Parser)]
#[command(about = "scheduler throughput against the real control binary")]
struct Args {
    /// Runs as `NODESxPODS`, comma-separated.
    #[arg(long, default_value = "1000x10000,5000x50000", value_delimiter = ',')]
    runs: Vec<String>,
    /// Also run on a real etcd (when /usr/bin/etcd exists).
    #[arg(long)]
    etcd: bool,
    /// Which measurements: e2e (create while the control binary schedules), backlog
    /// (bind pods created beforehand), memory (decisions alone), comma-separated.
    #[arg(long, default_value = "e2e,backlog,memory", value_delimiter = ',')]
    only: Vec<String>,
}

struct Figures {
    nodes: usize,
    pods: usize,
    create_per_s: f64,
    scheduled_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// CPU time `control` spent per pod (API server and scheduler together), which other
    /// load on the machine does not inflate the way it does wall-clock rates.
    cpu_ms_per_pod: f64,
    rss_mib: f64,
    /// `Scheduled` events the API server holds once binding is done (the scheduler drops
    /// events rather than fall behind, as client-go's broadcaster does).
    scheduled_events: usize,
}

fn node(i: usize) -> Value {
    let resources =
        json!({"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    json!({
        "metadata": {
            "name": format!("node-{i}"),
            "labels": {
                "kubernetes.io/hostname": format!("node-{i}"),
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/zone": format!("zone-{}", i % ZONES),
            },
        },
        "spec": {},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    })
}

/// A small deterministic generator, so every run asks for the same pods.
fn mix(i: usize) -> u64 {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

fn selector(app: &str) -> Value {
    json!({"matchLabels": {"app": app}})
}

/// Pod `i`: 100m..2 cpu and 128Mi..4Gi; one in ten carries a required host anti-affinity,
/// a preferred zone anti-affinity or a zone spread constraint against its group.
fn pod(i: usize) -> Value {
    let r = mix(i);
    let cpu = 100 * (1 + r % 20);
    let memory = 128 * (1 + (r >> 8) % 32);
    let group = (i / 30) % 40;
    let (app, extra) = match i % 30 {
        0 => {
            let app = format!("anti-{group}");
            let affinity = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": selector(&app), "topologyKey": "kubernetes.io/hostname"}]}});
            (app, json!({"affinity": affinity}))
        }
        10 => {
            let app = format!("pref-{group}");
            let affinity = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"labelSelector": selector(&app), "topologyKey": "topology.kubernetes.io/zone"}}]}});
            (app, json!({"affinity": affinity}))
        }
        20 => {
            let app = format!("spread-{group}");
            let spread = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": selector(&app)}]);
            (app, json!({"topologySpreadConstraints": spread}))
        }
        _ => ("plain".to_owned(), json!({})),
    };
    let mut spec = json!({
        "containers": [{
            "name": "c",
            "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": format!("{cpu}m"), "memory": format!("{memory}Mi")}},
        }],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"metadata": {"name": format!("pod-{i}"), "labels": {"app": app}}, "spec": spec})
}

/// Runs `count` requests built by `make` with `CONCURRENCY` clients; returns when each
/// finished, by index.
async fn create_all(
    http: &Http,
    base: &str,
    path: &str,
    count: usize,
    make: fn(usize) -> Value,
) -> Result<Vec<Instant>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, base, next, path) =
            (http.clone(), base.to_owned(), next.clone(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                send(&http, &base, "POST", &path, Some(&make(i))).await?;
                done.push((i, Instant::now()));
            }
            Ok::<_, anyhow::Error>(done)
        }));
    }
    let mut at = vec![Instant::now(); count];
    for t in tasks {
        for (i, when) in t.await?? {
            at[i] = when;
        }
    }
    Ok(at)
}

#[derive(Deserialize)]
struct WatchEvent<'a> {
    #[serde(borrow)]
    object: WatchedPod<'a>,
}

#[derive(Deserialize)]
struct WatchedPod<'a> {
    #[serde(borrow)]
    metadata: WatchedMeta<'a>,
    #[serde(borrow, default)]
    spec: Option<WatchedSpec<'a>>,
}

#[derive(Deserialize)]
struct WatchedMeta<'a> {
    #[serde(borrow, default)]
    name: Option<&'a str>,
}

#[derive(Deserialize)]
struct WatchedSpec<'a> {
    #[serde(borrow, default, rename = "nodeName")]
    node_name: Option<&'a str>,
}

/// When the watch first saw each pod bound, by pod index.
type Bound = Arc<Mutex<HashMap<usize, Instant>>>;

/// Starts watching the namespace's pods from now on; the watch records when each pod's
/// `spec.nodeName` first shows up.
async fn watch_bindings(
    http: &Http,
    base: &str,
) -> Result<(Bound, tokio::task::JoinHandle<Result<()>>)> {
    let rv = list_revision(
        http,
        base,
        &format!("/api/v1/namespaces/{NAMESPACE}/pods?limit=1"),
    )
    .await?;
    let bound = Bound::default();
    let watch = tokio::spawn(follow_bindings(
        http.clone(),
        base.to_owned(),
        rv,
        bound.clone(),
    ));
    Ok((bound, watch))
}

async fn follow_bindings(http: Http, base: String, rv: String, bound: Bound) -> Result<()> {
    let url = format!("{base}/api/v1/namespaces/{NAMESPACE}/pods?watch=true&resourceVersion={rv}");
    watch_lines(&http, &url, |line| {
        let Ok(event) = serde_json::from_slice::<WatchEvent>(line) else {
            return;
        };
        let node = event
            .object
            .spec
            .and_then(|s| s.node_name)
            .is_some_and(|n| !n.is_empty());
        let index = event
            .object
            .metadata
            .name
            .and_then(|n| n.strip_prefix("pod-"))
            .and_then(|n| n.parse::<usize>().ok());
        if let (true, Some(i)) = (node, index) {
            bound
                .lock()
                .expect("bound")
                .entry(i)
                .or_insert_with(Instant::now);
        }
    })
    .await
}

/// Counts the `Scheduled` events in the bench namespace, waiting up to a minute for the
/// scheduler's event writers, which trail the bindings in a burst, to catch up.
async fn scheduled_events(http: &Http, base: &str, pods: usize) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let list = send(
            http,
            base,
            "GET",
            &format!("/api/v1/namespaces/{NAMESPACE}/events?fieldSelector=reason%3DScheduled"),
            None,
        )
        .await?;
        let n = list["items"].as_array().map_or(0, Vec::len);
        if n >= pods || Instant::now() > deadline {
            return Ok(n);
        }
        // Listing tens of thousands of events is itself load: look rarely.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn run(cp: &ControlPlane, nodes: usize, pods: usize) -> Result<Figures> {
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY + 2)
        .build(skiff_tests::http::connector(cp)?);
    let base = cp.url();
    send(
        &http,
        &base,
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"metadata": {"name": NAMESPACE}})),
    )
    .await?;
    let t = Instant::now();
    create_all(&http, &base, "/api/v1/nodes", nodes, node).await?;
    eprintln!(
        "  {nodes} nodes created in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (bound, watch) = watch_bindings(&http, &base).await?;
    let pid = cp.pid().context("control is running")?;
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    let created = create_all(
        &http,
        &base,
        &format!("/api/v1/namespaces/{NAMESPACE}/pods"),
        pods,
        pod,
    )
    .await?;
    let create_secs = started.elapsed().as_secs_f64();
    eprintln!("  {pods} pods created in {create_secs:.1} s");
    let (mut seen, mut progress) = (0, Instant::now());
    loop {
        let now = bound.lock().expect("bound").len();
        if now >= pods {
            break;
        }
        if watch.is_finished() {
            watch.await??;
            bail!("the pod watch stopped");
        }
        if now > seen {
            (seen, progress) = (now, Instant::now());
        } else if progress.elapsed() > STALL {
            bail!("only {now} of {pods} pods were bound; none for {STALL:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    let cpu = cpu_seconds(pid)? - cpu_before;
    // Before listing events, whose large responses raise the high-water mark.
    let rss = rss_mib(pid)?;
    let events = scheduled_events(&http, &base, pods).await?;
    let bound = bound.lock().expect("bound");
    let last = bound.values().max().copied().unwrap_or(started);
    let latencies: Vec<f64> = bound
        .iter()
        .map(|(i, at)| at.saturating_duration_since(created[*i]).as_secs_f64() * 1e3)
        .collect();
    #[expect(
        clippy::cast_precision_loss,
        reason = "counts of at most tens of thousands"
    )]
    let (create_per_s, scheduled_per_s) = (
        pods as f64 / create_secs,
        pods as f64 / last.duration_since(started).as_secs_f64(),
    );
    Ok(Figures {
        nodes,
        pods,
        create_per_s,
        scheduled_per_s,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: percentile(&latencies, 1.0),
        #[expect(clippy::cast_precision_loss, reason = "a pod count")]
        cpu_ms_per_pod: cpu * 1e3 / pods as f64,
        rss_mib: rss,
        scheduled_events: events,
    })
}

/// Throughput of binding a backlog: `pods` pending pods created with no scheduler running,
/// then `skiff_scheduler::run` started in this process; from its start to the last
/// binding, its initial list of every pod included.
async fn run_backlog(cp: &ControlPlane, nodes: usize, pods: usize) -> Result<(f64, f64)> {
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY + 2)
        .build(skiff_tests::http::connector(cp)?);
    let base = cp.url();
    send(
        &http,
        &base,
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"metadata": {"name": NAMESPACE}})),
    )
    .await?;
    create_all(&http, &base, "/api/v1/nodes", nodes, node).await?;
    let t = Instant::now();
    create_all(
        &http,
        &base,
        &format!("/api/v1/namespaces/{NAMESPACE}/pods"),
        pods,
        pod,
    )
    .await?;
    eprintln!(
        "  {pods} pending pods created in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (bound, watch) = watch_bindings(&http, &base).await?;
    let client = cp.kube_client().await?;
    let pid = cp.pid().context("control is running")?;
    let cpu_before = cpu_seconds(pid)? + cpu_seconds(std::process::id())?;
    let started = Instant::now();
    // The scheduler over informers of its own, as `control` runs it.
    let informers = skiff_control_runtime::Informers::new(client);
    let schedule = skiff_scheduler::run(&informers, skiff_scheduler::Config::default());
    let scheduler = tokio::spawn(async move {
        tokio::select! {
            () = informers.run() => Ok(()),
            result = schedule => result,
        }
    });
    let (mut seen, mut progress) = (0, Instant::now());
    loop {
        let now = bound.lock().expect("bound").len();
        if now >= pods {
            break;
        }
        if watch.is_finished() || scheduler.is_finished() {
            bail!("the watch or the scheduler stopped with {now} of {pods} pods bound");
        }
        if now > seen {
            (seen, progress) = (now, Instant::now());
        } else if progress.elapsed() > STALL {
            bail!("only {now} of {pods} pods were bound; none for {STALL:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    scheduler.abort();
    watch.abort();
    let cpu = cpu_seconds(pid)? + cpu_seconds(std::process::id())? - cpu_before;
    let last = bound
        .lock()
        .expect("bound")
        .values()
        .max()
        .copied()
        .unwrap_or(started);
    #[expect(clippy::cast_precision_loss, reason = "a pod count")]
    let pods_f = pods as f64;
    Ok((
        pods_f / last.duration_since(started).as_secs_f64(),
        cpu * 1e3 / pods_f,
    ))
}

/// Decisions per second of the default plugins on an in-memory cache: each pod filtered,
/// scored and assumed on its node, no API server involved.
fn run_memory(nodes: usize, pods: usize) -> Result<(f64, usize)> {
    let mut cache = skiff_scheduler::cache::Cache::default();
    for i in 0..nodes {
        cache.upsert_node(serde_json::from_value::<k8s_openapi::api::core::v1::Node>(
            node(i),
        )?);
    }
    let infos: Vec<skiff_scheduler::pod_info::PodInfo> = (0..pods)
        .map(|i| {
            let mut value = pod(i);
            value["metadata"]["uid"] = json!(format!("uid-{i}"));
            value["metadata"]["namespace"] = json!(NAMESPACE);
            Ok(skiff_scheduler::pod_info::PodInfo::plain(
                serde_json::from_value(value)?,
            ))
        })
        .collect::<Result<_>>()?;
    let framework = skiff_scheduler::plugins::default_framework();
    let mut cursor = skiff_scheduler::framework::Cursor::default();
    let mut unschedulable = 0;
    let started = Instant::now();
    for info in infos {
        match framework.schedule(&info, &cache, &mut cursor, 0) {
            Ok(node) => cache.add_pod(Arc::new(info), &node),
            Err(_) => unschedulable += 1,
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "a pod count")]
    let rate = pods as f64 / started.elapsed().as_secs_f64();
    Ok((rate, unschedulable))
}

fn parse_run(run: &str) -> Result<(usize, usize)> {
    let (nodes, pods) = run
        .split_once('x')
        .with_context(|| format!("{run:?}: expected NODESxPODS"))?;
    Ok((nodes.parse()?, pods.parse()?))
}

/// Prints the tables: e2e rows, backlog rows (nodes, pods, pods/s, CPU ms/pod) and memory
/// rows (nodes, pods, decisions/s, unschedulable).
fn report(
    load: &str,
    rows: &[(&str, Figures)],
    backlog: &[(usize, usize, f64, f64)],
    memory: &[(usize, usize, f64, usize)],
) {
    println!(
        "\nload average before the runs: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "fake nodes 32 cpu/256Gi/110 pods over {ZONES} zones; pods 100m-2 cpu, 128Mi-4Gi, \
         1 in 10 with anti-affinity or zone spread; {CONCURRENCY} creating clients"
    );
    if !rows.is_empty() {
        println!(
            "\ne2e: pods created while the scheduler inside the control binary (--no-controllers) places them\n"
        );
        println!(
            "{:<16} {:>6} {:>7} {:>10} {:>12} {:>26} {:>13} {:>9} {:>9}",
            "backend",
            "nodes",
            "pods",
            "created/s",
            "scheduled/s",
            "create->bound p50/p99/max",
            "control CPU",
            "RSS",
            "Scheduled"
        );
        for (name, f) in rows {
            println!(
                "{:<16} {:>6} {:>7} {:>10.0} {:>12.0} {:>9.0}/{:>6.0}/{:>6.0} ms {:>7.2} ms/pod {:>5.0} MiB {:>9}",
                name,
                f.nodes,
                f.pods,
                f.create_per_s,
                f.scheduled_per_s,
                f.p50_ms,
                f.p99_ms,
                f.max_ms,
                f.cpu_ms_per_pod,
                f.rss_mib,
                f.scheduled_events
            );
        }
        println!(
            "\nscheduled/s: pods bound per second from the first create to the last binding seen by a watch;\n\
             latency: from the create's response to the watch event carrying spec.nodeName;\n\
             control CPU: user+system time of the control process over the pod phase, per pod;\n\
             Scheduled: Scheduled events stored within a minute of the last binding (they trail the bindings)."
        );
    }
    if !backlog.is_empty() {
        println!(
            "\nbacklog: pending pods created first (control --no-scheduler), then skiff_scheduler::run in-process, embedded store\n"
        );
        println!(
            "{:>6} {:>7} {:>12} {:>22}",
            "nodes", "pods", "scheduled/s", "CPU (control+bench)"
        );
        for (nodes, pods, rate, cpu) in backlog {
            println!("{nodes:>6} {pods:>7} {rate:>12.0} {cpu:>14.2} ms/pod");
        }
    }
    if !memory.is_empty() {
        println!(
            "\nmemory: the default plugins deciding and assuming on an in-memory cache, one thread\n"
        );
        println!(
            "{:>6} {:>7} {:>12} {:>14}",
            "nodes", "pods", "decisions/s", "unschedulable"
        );
        for (nodes, pods, rate, unschedulable) in memory {
            println!("{nodes:>6} {pods:>7} {rate:>12.0} {unschedulable:>14}");
        }
    }
    println!("\nreference: kube-scheduler_perf CI floor 680 pods/s at 5000 nodes");
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let runs: Vec<(usize, usize)> = args
        .runs
        .iter()
        .map(|r| parse_run(r))
        .collect::<Result<_>>()?;
    let dir = tempfile::tempdir()?;
    let wanted = |what: &str| args.only.iter().any(|o| o == what);
    // Controllers off: nothing but the API server and the scheduler competes for the two
    // cores, and no node lifecycle controller taints fake nodes that never renew a Lease.
    let flags = ["--no-controllers", "--leader-elect=false"];
    let mut rows = Vec::new();
    let mut backlog = Vec::new();
    let mut memory = Vec::new();
    for (n, (nodes, pods)) in runs.iter().copied().enumerate() {
        if wanted("e2e") {
            let cp = ControlPlane::start_with(&dir.path().join(format!("embedded-{n}")), &flags)?;
            eprintln!("scheduler bench: embedded store (redb), {nodes} nodes, {pods} pods ...");
            rows.push(("embedded (redb)", run(&cp, nodes, pods).await?));
        }
        if wanted("e2e") && args.etcd {
            if std::path::Path::new(skiff_tests::etcd::ETCD).exists() {
                let etcd = Etcd::start()?;
                let mut with_etcd = flags.to_vec();
                with_etcd.extend(["--etcd", etcd.url()]);
                let cp =
                    ControlPlane::start_with(&dir.path().join(format!("etcd-{n}")), &with_etcd)?;
                eprintln!("scheduler bench: etcd, {nodes} nodes, {pods} pods ...");
                rows.push(("etcd 3.4", run(&cp, nodes, pods).await?));
            } else {
                eprintln!(
                    "scheduler bench: no {}, etcd rows skipped",
                    skiff_tests::etcd::ETCD
                );
            }
        }
        if wanted("backlog") {
            let mut no_scheduler = flags.to_vec();
            no_scheduler.push("--no-scheduler");
            let cp =
                ControlPlane::start_with(&dir.path().join(format!("backlog-{n}")), &no_scheduler)?;
            eprintln!("scheduler bench: backlog of {pods} pods on {nodes} nodes ...");
            let (rate, cpu) = run_backlog(&cp, nodes, pods).await?;
            backlog.push((nodes, pods, rate, cpu));
        }
        if wanted("memory") {
            eprintln!("scheduler bench: in-memory decisions, {nodes} nodes, {pods} pods ...");
            let (rate, unschedulable) = run_memory(nodes, pods)?;
            memory.push((nodes, pods, rate, unschedulable));
        }
    }
    report(&load, &rows, &backlog, &memory);
    Ok(())
}
