//! `cargo xtask bench api`: create throughput, list latency, watch delivery latency with
//! 1,000 watchers, and resident memory of the real `control` binary, on the embedded store
//! and on a real etcd, printed as one table with issue 16's goals beside it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};
use skiff_tests::{
    bench::percentile,
    control::ControlPlane,
    etcd::Etcd,
    http::{Http, list_revision, send},
    process::{cpu_seconds, rss_mib},
};

const NAMESPACES: usize = 10;
const PER_NAMESPACE: usize = 1_000;
const CONCURRENCY: usize = 32;
const WATCHERS: usize = 1_000;
const WATCH_EVENTS: usize = 100;
/// Issue 16's goals: list of 10,000 objects p99, watch fan-out p99 (ms).
const GOAL_LIST_10K_P99_MS: f64 = 100.0;
const GOAL_WATCH_P99_MS: f64 = 10.0;

struct Figures {
    cm_per_s: f64,
    pod_per_s: f64,
    create_p99_ms: f64,
    list_ns: ListFigures,
    list_all: ListFigures,
    watch: WatchFigures,
    rss_mib: f64,
}

/// Watch fan-out: delivery delay p50/p99 (ms), and CPU per event (ms) spent by `control`
/// and by this client's watchers while the events went out, which bounds the delay on a
/// machine both share.
struct WatchFigures {
    delay: (f64, f64),
    control_cpu_ms: f64,
    client_cpu_ms: f64,
}

/// Creates `PER_NAMESPACE` objects per namespace with `CONCURRENCY` clients; returns
/// objects per second and each request's latency in ms.
async fn create_all(
    http: &Http,
    base: &str,
    plural: &str,
    make: fn(&str) -> Value,
) -> Result<(f64, Vec<f64>)> {
    let jobs: Vec<(usize, usize)> = (0..NAMESPACES)
        .flat_map(|n| (0..PER_NAMESPACE).map(move |i| (n, i)))
        .collect();
    let queue = Arc::new(Mutex::new(jobs));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, base, queue) = (http.clone(), base.to_owned(), Arc::clone(&queue));
        let plural = plural.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some((n, i)) = queue.lock().expect("queue").pop() else {
                    break;
                };
                let t = Instant::now();
                send(
                    &http,
                    &base,
                    "POST",
                    &format!("/api/v1/namespaces/bench-{n}/{plural}"),
                    Some(&make(&format!("obj-{i}"))),
                )
                .await?;
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "a count of at most tens of thousands"
    )]
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, all))
}

/// List latency p50/p99 twice: until the response's last byte arrived (what the API server
/// delivers, as kube-apiserver's request-duration metric counts it), and until this client
/// also decoded it into a JSON tree (a client cost, which grows with the list alone).
async fn list_latency(http: &Http, base: &str, path: &str, rounds: usize) -> Result<ListFigures> {
    let mut received = Vec::new();
    let mut parsed = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let req = hyper::Request::builder()
            .method("GET")
            .uri(format!("{base}{path}"))
            .body(Full::new(Bytes::new()))?;
        let resp = http.request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        received.push(t.elapsed().as_secs_f64() * 1e3);
        if !status.is_success() {
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        let list: Value = serde_json::from_slice(&bytes)?;
        parsed.push(t.elapsed().as_secs_f64() * 1e3);
        if list["items"].as_array().map_or(0, Vec::len) == 0 {
            bail!("{path} listed nothing");
        }
    }
    Ok(ListFigures {
        received: (percentile(&received, 0.5), percentile(&received, 0.99)),
        parsed: (percentile(&parsed, 0.5), percentile(&parsed, 0.99)),
    })
}

/// p50/p99 in ms of one list, received and received then decoded.
struct ListFigures {
    received: (f64, f64),
    parsed: (f64, f64),
}

/// `WATCHERS` watchers on one namespace; each event's delay from just before its create was sent.
async fn watch_latency(http: &Http, base: &str, control: u32) -> Result<WatchFigures> {
    send(
        http,
        base,
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"metadata": {"name": "bench-watch"}})),
    )
    .await?;
    let rv = list_revision(http, base, "/api/v1/namespaces/bench-watch/configmaps").await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let req = hyper::Request::get(format!(
            "{base}/api/v1/namespaces/bench-watch/configmaps?watch=true&resourceVersion={rv}"
        ))
        .body(Full::new(Bytes::new()))?;
        let resp = http.request(req).await?;
        let sent = Arc::clone(&sent);
        watchers.push(tokio::spawn(async move {
            let mut body = resp.into_body().into_data_stream();
            let mut buf = Vec::new();
            let mut delays = Vec::new();
            while delays.len() < WATCH_EVENTS {
                let Some(chunk) = body.next().await else {
                    break;
                };
                buf.extend_from_slice(&chunk?);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let event: Value = serde_json::from_slice(&line)?;
                    let name = event["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    if let Some(t) = sent.lock().expect("sent").get(&name) {
                        delays.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            Ok::<_, anyhow::Error>(delays)
        }));
    }
    let cpu_before = (cpu_seconds(control)?, cpu_seconds(std::process::id())?);
    for i in 0..WATCH_EVENTS {
        let name = format!("w-{i}");
        sent.lock()
            .expect("sent")
            .insert(name.clone(), Instant::now());
        send(
            http,
            base,
            "POST",
            "/api/v1/namespaces/bench-watch/configmaps",
            Some(&json!({"metadata": {"name": name}})),
        )
        .await?;
    }
    let mut all = Vec::new();
    for w in watchers {
        let delays = tokio::time::timeout(Duration::from_mins(1), w)
            .await
            .context("watchers timed out")???;
        all.extend(delays);
    }
    #[expect(clippy::cast_precision_loss, reason = "a count of 100 events")]
    let per_event = |before: f64, after: f64| (after - before) * 1e3 / WATCH_EVENTS as f64;
    let control_cpu_ms = per_event(cpu_before.0, cpu_seconds(control)?);
    let client_cpu_ms = per_event(cpu_before.1, cpu_seconds(std::process::id())?);
    if all.len() < WATCHERS * WATCH_EVENTS {
        bail!(
            "watchers saw {} of {} events",
            all.len(),
            WATCHERS * WATCH_EVENTS
        );
    }
    Ok(WatchFigures {
        delay: (percentile(&all, 0.5), percentile(&all, 0.99)),
        control_cpu_ms,
        client_cpu_ms,
    })
}

async fn run(cp: &ControlPlane) -> Result<Figures> {
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY)
        .build(skiff_tests::http::connector(cp)?);
    let base = cp.url();
    for n in 0..NAMESPACES {
        send(
            &http,
            &base,
            "POST",
            "/api/v1/namespaces",
            Some(&json!({"metadata": {"name": format!("bench-{n}")}})),
        )
        .await?;
    }
    let (cm_per_s, mut cm_lat) = create_all(&http, &base, "configmaps", |name| {
        json!({"metadata": {"name": name, "labels": {"bench": "yes"}}, "data": {"key": "value", "other": "x".repeat(64)}})
    })
    .await?;
    let (pod_per_s, pod_lat) = create_all(&http, &base, "pods", |name| {
        json!({"metadata": {"name": name, "labels": {"app": "bench"}},
               "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"],
                         "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
    })
    .await?;
    cm_lat.extend(pod_lat);
    let create_p99_ms = percentile(&cm_lat, 0.99);
    let list_ns = list_latency(&http, &base, "/api/v1/namespaces/bench-0/pods", 50).await?;
    let list_all = list_latency(&http, &base, "/api/v1/pods", 20).await?;
    let pid = cp.pid().context("control is running")?;
    let watch = watch_latency(&http, &base, pid).await?;
    Ok(Figures {
        cm_per_s,
        pod_per_s,
        create_p99_ms,
        list_ns,
        list_all,
        watch,
        rss_mib: rss_mib(pid)?,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    {
        let cp = ControlPlane::start(&dir.path().join("embedded"))?;
        eprintln!("api bench: embedded store (redb) ...");
        rows.push(("embedded (redb)", run(&cp).await?));
    }
    if std::path::Path::new(skiff_tests::etcd::ETCD).exists() {
        let etcd = Etcd::start()?;
        let cp = ControlPlane::start_with(&dir.path().join("etcd"), &["--etcd", etcd.url()])?;
        eprintln!("api bench: etcd ...");
        rows.push(("etcd 3.4", run(&cp).await?));
    } else {
        eprintln!("api bench: no /usr/bin/etcd, etcd row skipped");
    }
    println!(
        "\n{NAMESPACES}x{PER_NAMESPACE} ConfigMaps and Pods, {CONCURRENCY} concurrent clients; {WATCHERS} watchers x {WATCH_EVENTS} events\n"
    );
    println!(
        "{:<16} {:>10} {:>10} {:>12} {:>18} {:>18} {:>18} {:>18} {:>9}",
        "backend",
        "cm/s",
        "pod/s",
        "create p99",
        "list 1k p50/p99",
        "list 10k p50/p99",
        "+decode p50/p99",
        "watch p50/p99",
        "RSS"
    );
    for (name, f) in &rows {
        println!(
            "{:<16} {:>10.0} {:>10.0} {:>9.1} ms {:>8.1}/{:>6.1} ms {:>8.1}/{:>6.1} ms {:>8.1}/{:>6.1} ms {:>8.2}/{:>6.2} ms {:>5.0} MiB",
            name,
            f.cm_per_s,
            f.pod_per_s,
            f.create_p99_ms,
            f.list_ns.received.0,
            f.list_ns.received.1,
            f.list_all.received.0,
            f.list_all.received.1,
            f.list_all.parsed.0,
            f.list_all.parsed.1,
            f.watch.delay.0,
            f.watch.delay.1,
            f.rss_mib
        );
    }
    println!(
        "list: GET of all pods (10k) or one namespace's (1k) until the last byte arrived; +decode: until this client also decoded the 10k list into a JSON tree"
    );
    if let Some((_, embedded)) = rows.first() {
        println!("\ngoals (issue 16), embedded store:");
        if let Some((_, etcd)) = rows.get(1) {
            println!(
                "  ConfigMap creates >= etcd's: {:.0}/s vs {:.0}/s, ratio {:.2}",
                embedded.cm_per_s,
                etcd.cm_per_s,
                embedded.cm_per_s / etcd.cm_per_s
            );
        }
        println!(
            "  list 10k p99 < {GOAL_LIST_10K_P99_MS:.0} ms: {:.1} ms received ({:.1} ms with this client's JSON decode)",
            embedded.list_all.received.1, embedded.list_all.parsed.1
        );
        println!(
            "  watch fan-out to {WATCHERS} watchers p99 < {GOAL_WATCH_P99_MS:.0} ms: {:.2} ms",
            embedded.watch.delay.1
        );
        println!(
            "  CPU per watch event ({WATCHERS} deliveries): control {:.2} ms, this bench's watchers {:.2} ms (2 cores shared)",
            embedded.watch.control_cpu_ms, embedded.watch.client_cpu_ms
        );
    }
    println!(
        "\nreference: Kubernetes API SLO, mutating call p99 <= 1000 ms; k3s server about 1.6 GB with a workload"
    );
    Ok(())
}
