//! `cargo xtask bench pod-start`: how fast the real node daemon starts pods and how little
//! memory it needs, measured in one run beside the reference runtime.
//!
//! 1. Container start: the same OCI bundle (Debian's busybox-static, `echo`) started through
//!    youki's libcontainer in this process and by `runc run`, timed from the start of the
//!    create to the first byte of the container's output.
//! 2. Pods: the real `control` and `node` binaries in a network namespace this harness
//!    creates, the busybox image loaded with `ctl image import`; 1, 10 and 100 pods created
//!    at once, timed from each create's response to the watch event that shows the pod
//!    `Running`.
//! 3. The node daemon's resident memory idle (spare sandboxes built) and with 100 pods running.

use std::{
    collections::HashMap,
    fs,
    io::Read,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use libcontainer::{container::builder::ContainerBuilder, syscall::syscall::SyscallType};
use serde_json::{Value, json};
use skiff_tests::{
    bench::percentile,
    control::ControlPlane,
    http::{Http, list_revision, send, watch_lines},
    netns::Netns,
    node::NodeDaemon,
    process::{cpu_seconds, rss_mib},
};

const IMAGE: &str = "bench.local/busybox:1";
const NODE: &str = "bench-node";
const CONCURRENCY: usize = 16;

#[derive(Parser)]
#[command(about = "pod start latency and node memory against the real node daemon")]
struct Args {
    /// Pod counts, comma-separated, each created at once on the one node.
    #[arg(long, default_value = "1,10,100", value_delimiter = ',')]
    pods: Vec<usize>,
    /// Containers started per runtime for the container-start comparison.
    #[arg(long, default_value_t = 30)]
    starts: usize,
    /// Copy the node daemon's log here at the end.
    #[arg(long)]
    node_log: Option<PathBuf>,
    /// The node's spare sandboxes (`node --sandbox-pool`; its default is 100). Each round
    /// starts once the pool is full again, as on a node between bursts.
    #[arg(long, default_value_t = 100)]
    sandbox_pool: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---- container start: libcontainer in-process vs runc ----

/// A bundle directory with the busybox root filesystem and a `runc spec` config running
/// `echo`, its cgroups under `cgroup_parent`.
fn make_bundle(dir: &Path, cgroup_parent: &str) -> Result<PathBuf> {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    let layer = skiff_tests::image::busybox_layer()?;
    tar::Archive::new(&layer[..])
        .unpack(&rootfs)
        .context("unpacking busybox")?;
    let out = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .output()
        .context("runc spec (Debian package runc)")?;
    if !out.status.success() {
        bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&fs::read(&path)?)?;
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["echo", "hi"]);
    spec["linux"]["cgroupsPath"] = json!(cgroup_parent);
    fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(bundle)
}

/// Points the bundle's cgroup at `<parent>/<id>` for the next container.
fn set_cgroup(bundle: &Path, parent: &str, id: &str) -> Result<()> {
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&fs::read(&path)?)?;
    spec["linux"]["cgroupsPath"] = json!(format!("{parent}/{id}"));
    fs::write(&path, serde_json::to_vec(&spec)?)?;
    Ok(())
}

fn runc_start(bundle: &Path, root: &Path, id: &str) -> Result<Duration> {
    let began = Instant::now();
    let mut child = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting runc")?;
    let mut stdout = child.stdout.take().context("runc stdout")?;
    let mut first = [0u8; 1];
    let n = stdout.read(&mut first)?;
    let took = began.elapsed();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest)?;
    let out = child.wait_with_output()?;
    if n == 0 || !out.status.success() {
        bail!("runc run: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

fn libcontainer_start(bundle: &Path, root: &Path, id: &str) -> Result<Duration> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let null: OwnedFd = fs::File::open("/dev/null")?.into();
    let began = Instant::now();
    let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(root)
        .context("root path")?
        .with_stdin(null)
        .with_stdout(write)
        .validate_id()
        .context("validate id")?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .context("libcontainer create")?;
    container.start().context("libcontainer start")?;
    let mut reader = fs::File::from(read);
    let mut first = [0u8; 1];
    let n = reader.read(&mut first)?;
    let took = began.elapsed();
    if let Some(pid) = container.pid() {
        // The init is our child (libcontainer clones it with CLONE_PARENT): reap it.
        // libcontainer's `Pid` comes from its own nix version.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid.as_raw()), None);
    }
    container.delete(true).context("libcontainer delete")?;
    if n == 0 {
        bail!("libcontainer container wrote nothing");
    }
    Ok(took)
}

struct StartFigures {
    libcontainer: Vec<f64>,
    runc: Vec<f64>,
}

fn container_starts(dir: &Path, starts: usize) -> Result<StartFigures> {
    let parent = format!("/skiff-bench-{}", std::process::id());
    let bundle = make_bundle(dir, &parent)?;
    let lc_root = dir.join("libcontainer-state");
    let runc_root = dir.join("runc-state");
    let mut figures = StartFigures {
        libcontainer: Vec::new(),
        runc: Vec::new(),
    };
    let result = (|| {
        // Interleaved, so that anything else the machine does weighs on both alike; the
        // first of each warms the page cache and is not counted.
        for i in 0..=starts {
            let id = format!("lc-{i}");
            set_cgroup(&bundle, &parent, &id)?;
            let lc = libcontainer_start(&bundle, &lc_root, &id)?;
            let id = format!("runc-{i}");
            set_cgroup(&bundle, &parent, &id)?;
            let runc = runc_start(&bundle, &runc_root, &id)?;
            if i > 0 {
                figures.libcontainer.push(ms(lc));
                figures.runc.push(ms(runc));
            }
        }
        Ok::<_, anyhow::Error>(())
    })();
    for root in skiff_tests::node::cgroup_roots() {
        let top = root.join(parent.trim_start_matches('/'));
        if let Ok(entries) = fs::read_dir(&top) {
            for e in entries.flatten() {
                let _ = fs::remove_dir(e.path());
            }
        }
        let _ = fs::remove_dir(top);
    }
    result?;
    Ok(figures)
}

// ---- pods through the real control plane and node ----

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "pod-start"}},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"]
            }]
        }
    })
}

/// When the watch first saw each pod `Running`, by name.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

async fn watch_running(http: Http, base: String, rv: String, seen: Seen) -> Result<()> {
    let url = format!("{base}/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}");
    watch_lines(&http, &url, |line| {
        let Ok(event) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        let pod = &event["object"];
        if pod["status"]["phase"] == "Running"
            && let Some(name) = pod["metadata"]["name"].as_str()
        {
            seen.lock()
                .expect("seen")
                .entry(name.to_owned())
                .or_insert_with(Instant::now);
        }
    })
    .await
}

struct PodFigures {
    pods: usize,
    /// How long the round waited for the node's spare sandboxes to be rebuilt.
    pool_wait: Duration,
    all_running: Duration,
    latencies: Vec<f64>,
    delete_all: Duration,
    /// CPU time the node daemon and `control` spent per pod while the pods started.
    node_cpu_ms: f64,
    control_cpu_ms: f64,
}

/// Creates `count` pods at once and waits until all are Running; returns the figures so far
/// and the pod names.
async fn start_pods(
    http: &Http,
    base: &str,
    round: usize,
    count: usize,
) -> Result<(PodFigures, Vec<String>)> {
    let rv = list_revision(http, base, "/api/v1/namespaces/default/pods").await?;
    let seen: Seen = Arc::default();
    let watch = tokio::spawn(watch_running(
        http.clone(),
        base.to_owned(),
        rv,
        seen.clone(),
    ));
    let names: Vec<String> = (0..count).map(|i| format!("start-{round}-{i}")).collect();
    let began = Instant::now();
    let created = Arc::new(Mutex::new(HashMap::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY.min(count) {
        let (http, base, next, names, created) = (
            http.clone(),
            base.to_owned(),
            next.clone(),
            names.clone(),
            created.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { break };
                send(
                    &http,
                    &base,
                    "POST",
                    "/api/v1/namespaces/default/pods",
                    Some(&pod(name)),
                )
                .await?;
                created
                    .lock()
                    .expect("created")
                    .insert(name.clone(), Instant::now());
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let deadline = Instant::now() + Duration::from_mins(5);
    loop {
        let running = seen.lock().expect("seen").len();
        if running >= count {
            break;
        }
        if watch.is_finished() {
            watch.await??;
            bail!("the pod watch stopped");
        }
        if Instant::now() > deadline {
            bail!("only {running} of {count} pods Running after 5 min");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watch.abort();
    let seen = seen.lock().expect("seen").clone();
    let created = created.lock().expect("created").clone();
    let last_seen = seen.values().max().copied().unwrap_or(began);
    let latencies = names
        .iter()
        .filter_map(|n| Some(ms(seen.get(n)?.saturating_duration_since(*created.get(n)?))))
        .collect();
    let figures = PodFigures {
        pods: count,
        pool_wait: Duration::ZERO,
        all_running: last_seen - began,
        latencies,
        delete_all: Duration::ZERO,
        node_cpu_ms: f64::NAN,
        control_cpu_ms: f64::NAN,
    };
    Ok((figures, names))
}

/// Deletes the round's pods and waits until the node has removed them (their containers
/// stopped, the objects gone).
async fn delete_pods(
    http: &Http,
    base: &str,
    (mut figures, names): (PodFigures, Vec<String>),
) -> Result<PodFigures> {
    let deleting = Instant::now();
    for name in &names {
        send(
            http,
            base,
            "DELETE",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            None,
        )
        .await?;
    }
    let deadline = Instant::now() + Duration::from_mins(5);
    loop {
        let list = send(http, base, "GET", "/api/v1/namespaces/default/pods", None).await?;
        let left = list["items"].as_array().map_or(0, Vec::len);
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{left} pods still there 5 min after deletion");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    figures.delete_all = deleting.elapsed();
    Ok(figures)
}

struct Memory {
    idle: f64,
    /// Pods, RSS once they all run and settled, peak RSS while they started.
    loaded: Option<(usize, f64, f64)>,
    control: f64,
}

/// Samples a process's RSS every 50 ms until dropped and keeps the highest.
struct PeakRss {
    peak: Arc<Mutex<f64>>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(Mutex::new(0.0_f64));
        let task = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(rss) = rss_mib(pid) {
                        let mut max = peak.lock().expect("rss");
                        *max = max.max(rss);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Self { peak, task }
    }

    fn stop(self) -> f64 {
        self.task.abort();
        *self.peak.lock().expect("rss")
    }
}

/// Waits until the node holds `spares` finished spare sandboxes (their records in its state
/// directory), 2 minutes at most; returns how long that took.
async fn pool_filled(node: &NodeDaemon, spares: usize) -> Result<Duration> {
    let dir = node.state_dir().join("network/spares");
    let began = Instant::now();
    loop {
        let ready = fs::read_dir(&dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        });
        if ready >= spares {
            return Ok(began.elapsed());
        }
        if began.elapsed() > Duration::from_mins(2) {
            bail!("only {ready} of {spares} spare sandboxes after 2 min");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pods_and_memory(
    cp: &ControlPlane,
    node: &NodeDaemon,
    counts: &[usize],
    spares: usize,
) -> Result<(Vec<PodFigures>, Memory)> {
    let http: Http = Client::builder(TokioExecutor::new()).build(skiff_tests::http::connector(cp)?);
    let base = cp.url();
    let node_pid = node.pid().context("node pid")?;
    // Idle means idle: the spare sandboxes built and the node's first malloc trim (5 s
    // after its start) done, as on a node that has been up a while.
    pool_filled(node, spares).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut memory = Memory {
        idle: rss_mib(node_pid)?,
        loaded: None,
        control: 0.0,
    };
    let largest = counts.iter().copied().max().unwrap_or(0);
    let mut rows = Vec::new();
    for (round, &count) in counts.iter().enumerate() {
        let pool_wait = pool_filled(node, spares).await?;
        eprintln!(
            "pod-start bench: {count} pods (spare sandboxes ready after {:.2} s) ...",
            pool_wait.as_secs_f64()
        );
        let peak = PeakRss::start(node_pid);
        let control_pid = cp.pid().context("control pid")?;
        let cpu_before = (cpu_seconds(node_pid)?, cpu_seconds(control_pid)?);
        let mut started = start_pods(&http, &base, round, count)
            .await
            .with_context(|| format!("starting {count} pods"))?;
        started.0.pool_wait = pool_wait;
        #[expect(clippy::cast_precision_loss, reason = "a pod count")]
        let per_pod = 1000.0 / count as f64;
        started.0.node_cpu_ms = (cpu_seconds(node_pid)? - cpu_before.0) * per_pod;
        started.0.control_cpu_ms = (cpu_seconds(control_pid)? - cpu_before.1) * per_pod;
        if count == largest && memory.loaded.is_none() {
            // What a node holding `count` running pods keeps resident, once the start-up
            // burst has settled.
            tokio::time::sleep(Duration::from_secs(5)).await;
            memory.loaded = Some((count, rss_mib(node_pid)?, peak.stop()));
        } else {
            peak.stop();
        }
        rows.push(
            delete_pods(&http, &base, started)
                .await
                .with_context(|| format!("deleting {count} pods"))?,
        );
    }
    memory.control = cp.pid().map_or(Ok(f64::NAN), rss_mib)?;
    Ok((rows, memory))
}

fn report(load: &str, starts: &StartFigures, rows: &[PodFigures], memory: &Memory) {
    println!("\n## container start: create to first output, same bundle (busybox echo)\n");
    println!(
        "{:<34} {:>6} {:>9} {:>9} {:>9}",
        "runtime", "runs", "p50 ms", "p90 ms", "mean ms"
    );
    let mean = |v: &[f64]| {
        #[expect(clippy::cast_precision_loss, reason = "a count of a few dozen")]
        let n = v.len() as f64;
        v.iter().sum::<f64>() / n
    };
    for (name, v) in [
        ("libcontainer in-process (skiff)", &starts.libcontainer),
        ("runc run", &starts.runc),
    ] {
        println!(
            "{:<34} {:>6} {:>9.1} {:>9.1} {:>9.1}",
            name,
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.9),
            mean(v)
        );
    }
    println!(
        "ratio runc / libcontainer (p50): {:.2}x",
        percentile(&starts.runc, 0.5) / percentile(&starts.libcontainer, 0.5)
    );

    println!("\n## pods: creation to Running on one node (image present, imagePullPolicy Never)\n");
    println!(
        "{:>5} {:>12} {:>14} {:>9} {:>9} {:>9} {:>10} {:>14} {:>12} {:>15}",
        "pods",
        "pool wait s",
        "all running s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "pods/s",
        "all deleted s",
        "node cpu ms",
        "control cpu ms"
    );
    for r in rows {
        #[expect(clippy::cast_precision_loss, reason = "a pod count")]
        let rate = r.pods as f64 / r.all_running.as_secs_f64();
        println!(
            "{:>5} {:>12.2} {:>14.2} {:>9.0} {:>9.0} {:>9.0} {:>10.1} {:>14.2} {:>12.1} {:>15.1}",
            r.pods,
            r.pool_wait.as_secs_f64(),
            r.all_running.as_secs_f64(),
            percentile(&r.latencies, 0.5),
            percentile(&r.latencies, 0.99),
            percentile(&r.latencies, 1.0),
            rate,
            r.delete_all.as_secs_f64(),
            r.node_cpu_ms,
            r.control_cpu_ms
        );
    }
    println!(
        "latency: from each create's response to the watch event showing the pod Running; \
         cpu ms: per pod, while the pods started; pool wait: before the round, until the \
         node's spare sandboxes were all rebuilt"
    );
    println!("reference: Kubernetes pod startup SLO p99 <= 5 s (image pull excluded)");

    println!("\n## resident memory (VmRSS)\n");
    println!(
        "node daemon, 0 pods:    {:>7.1} MiB (spare sandboxes built, 6 s later; goal < 32 MiB)",
        memory.idle
    );
    if let Some((n, rss, peak)) = memory.loaded {
        println!(
            "node daemon, {n} pods:  {rss:>7.1} MiB (peak while starting them: {peak:.1} MiB)"
        );
    }
    println!(
        "control (API server, scheduler, controllers, embedded store): {:>7.1} MiB",
        memory.control
    );
    println!("reference: k3s agent about 275 MB (k3s docs)");
    println!("\nload average at start: {}", load.trim());
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !skiff_tests::is_root() {
        eprintln!("pod-start bench: needs root (containers, cgroups, a network namespace)");
        std::process::exit(1);
    }
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let dir = tempfile::tempdir()?;
    // Every thread this process starts from here on, and every child, lives in the
    // namespace: the control plane and node listen on its loopback.
    let ns = Netns::new("skb-pod")?;
    ns.enter()?;

    eprintln!(
        "pod-start bench: {} container starts each through libcontainer and runc ...",
        args.starts
    );
    let starts = container_starts(&dir.path().join("starts"), args.starts)?;

    let cp = ControlPlane::start_with(
        &dir.path().join("control"),
        &["--cluster-cidr", "10.244.0.0/16"],
    )?;
    let pool = args.sandbox_pool.to_string();
    let node = NodeDaemon::start(
        &cp,
        &dir.path().join("node"),
        NODE,
        &["--sandbox-pool", &pool],
    )?;
    let tar = skiff_tests::image::busybox_oci_layout(dir.path(), IMAGE)?;
    let out = Command::new(skiff_tests::bin("ctl"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["image", "import"])
        .arg(&tar)
        .output()?;
    if !out.status.success() {
        bail!("ctl image import: {}", String::from_utf8_lossy(&out.stderr));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(pods_and_memory(&cp, &node, &args.pods, args.sandbox_pool));
    let log = node.log();
    drop(node);
    if let Some(path) = &args.node_log {
        fs::write(path, log)?;
    }
    drop(cp);
    let (rows, memory) = result?;
    report(&load, &starts, &rows, &memory);
    drop(ns);
    Ok(())
}
