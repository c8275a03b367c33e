//! `cargo xtask bench datapath`: the Service data path of skiff against the floor and against
//! kube-proxy, side by side in one run, at 1, 1,000 and 10,000 Services.
//!
//! Modes: (1) direct to a pod IP; (2) skiff's eBPF socket load balancer (a client in a pod,
//! joined to the node's cgroup, to cluster IPs); (3) skiff's eBPF TC path (the cluster's
//! outside client host to node ports); (4) skiff's nftables mode, ClusterIP and NodePort, when
//! the node binary has `--proxy-mode` (else "not available in this build"); (5) kube-proxy's
//! iptables mode, its rules generated for the same Services and applied with
//! `iptables-restore` in a node namespace of its own ([`iptables`]); (6) IPVS when the kernel
//! and `ipvsadm` have it (else said so). skiff runs as a cluster of the multi-host test harness
//! with one node; the Services are selector-less with EndpointSlices the bench writes (2-4
//! endpoints each, among four backend pods), created by parallel API requests. Backends are
//! busybox pods that sleep, with the load tool's server (`datapath_load server`) started in
//! each pod's network namespace; the kube-proxy node's backends are namespaces running the
//! same server. Every connection (and datagram) goes to a Service chosen at random among
//! all of them. Per mode and Service count: TCP connect-request-close rate and latency,
//! request/response latency on kept-alive connections, UDP request/response, one bulk TCP
//! stream, and machine softirq plus node daemon CPU per 1,000 connections. Then the time
//! from an EndpointSlice change to the first connection on the new backend (100 changes), the
//! time to program all Services on a node restart and from nothing, and the memory of the
//! maps (eBPF: memlock of the node's maps) or rules. Output: a table on stdout, CSV and an
//! SVG chart (hand-written) in `target/bench/datapath/`. Ctrl-C removes everything.

mod iptables;
mod report;
mod skiff;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::Value;
use skiff_tests::process::ChildGuard;

/// Backend pods every Service's endpoints come from.
const BACKENDS: usize = 4;

/// Set by SIGINT or SIGTERM: the measurement stops and everything is removed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn not_interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(())
}

#[derive(Parser, Clone, Debug)]
#[command(about = "Service data path: eBPF, nftables, iptables, against pod IPs")]
pub struct Args {
    /// The Service counts measured, ascending.
    #[arg(long, default_value = "1,1000,10000", value_delimiter = ',')]
    services: Vec<usize>,
    /// Seconds per test and mode.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Bytes of every request and answer.
    #[arg(long, default_value_t = 64)]
    message: usize,
    /// EndpointSlice changes timed per Service count.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Which data paths to measure: `ebpf` (with the direct pod-IP floor), `nftables`,
    /// `iptables`.
    #[arg(long, default_value = "ebpf,nftables,iptables", value_delimiter = ',')]
    modes: Vec<String>,
    /// Where the CSV and chart go.
    #[arg(long, default_value = "target/bench/datapath")]
    out: PathBuf,
}

/// Runs `sysctl -w` in the namespace at `netns`.
fn sysctl(netns: &Path, key: &str, value: &str) -> Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "sysctl", "-qw", &format!("{key}={value}")])
        .output()
        .context("running sysctl")?;
    ensure!(
        out.status.success(),
        "sysctl {key}={value}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A client namespace made ready for thousands of short connections: the whole ephemeral
/// port range and reuse of `TIME_WAIT` ports (both per namespace).
fn tune_client(netns: &Path) -> Result<()> {
    sysctl(netns, "net.ipv4.ip_local_port_range", "1024 65000")?;
    sysctl(netns, "net.ipv4.tcp_tw_reuse", "1")
}

/// Starts the load tool's server in the namespace at `netns`.
fn spawn_server(netns: &Path, load: &Path) -> Result<ChildGuard> {
    ChildGuard::spawn(
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg(load)
            .arg("server")
            .stdout(Stdio::null()),
    )
}

/// Where a client runs: a namespace, and for socket-LB clients the cgroup it joins.
#[derive(Debug, Clone)]
pub struct Launcher {
    load: PathBuf,
    netns: PathBuf,
    procs: Option<PathBuf>,
    scratch: PathBuf,
}

impl Launcher {
    fn command(&self, test: &str, targets: &[SocketAddr], args: &Args) -> Result<Command> {
        let list = self.scratch.join(format!("targets-{}", std::process::id()));
        let lines: Vec<String> = targets.iter().map(ToString::to_string).collect();
        std::fs::write(&list, lines.join("\n"))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(&self.load)
            .args(["client", "--test", test, "--targets"])
            .arg(&list)
            .args([
                "--seconds",
                &args.seconds.to_string(),
                "--parallel",
                &args.parallel.to_string(),
                "--message",
                &args.message.to_string(),
            ]);
        if let Some(procs) = &self.procs {
            cmd.arg("--cgroup-procs").arg(procs);
        }
        Ok(cmd)
    }

    /// Runs one test and returns the tool's JSON.
    fn run(&self, test: &str, targets: &[SocketAddr], args: &Args) -> Result<Value> {
        not_interrupted()?;
        let out = self
            .command(test, targets, args)?
            .output()
            .context("running the load client")?;
        ensure!(
            out.status.success(),
            "load client {test}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// One short round of connections to every target: `Ok(true)` when all succeeded,
    /// else the first failure as the error.
    fn all_answer(&self, targets: &[SocketAddr], args: &Args) -> Result<bool> {
        let quick = Args {
            seconds: 0.2,
            parallel: 1,
            ..args.clone()
        };
        let v = self.run("crr", targets, &quick)?;
        ensure!(
            v["errors"].as_u64() == Some(0) && v["ops"].as_u64().unwrap_or(0) > 0,
            "not every target answers: {v}"
        );
        Ok(true)
    }

    /// Starts `watch` on `target`, its stdout piped.
    fn watch(&self, target: SocketAddr, args: &Args) -> Result<ChildGuard> {
        ChildGuard::spawn(
            self.command("watch", &[target], args)?
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
    }
}

/// The figures of one mode at one Service count.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    mode: String,
    services: usize,
    crr_rate: f64,
    crr_p50: f64,
    crr_p99: f64,
    rr_p50: f64,
    rr_p99: f64,
    udp_p50: f64,
    udp_p99: f64,
    gbits: f64,
    /// Machine-wide softirq CPU ms per 1,000 connections during the connection test.
    softirq_ms_per_k: f64,
    /// The node daemon's (or nothing's) CPU ms per 1,000 connections.
    node_ms_per_k: f64,
    errors: u64,
}

/// Softirq jiffies of the whole machine so far.
fn softirq_jiffies() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(7).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Runs every test of one mode.
fn measure(
    mode: &str,
    services: usize,
    client: &Launcher,
    tcp: &[SocketAddr],
    udp: &[SocketAddr],
    node_pid: Option<u32>,
    args: &Args,
) -> Result<Figures> {
    eprintln!("datapath bench: {mode}, {services} Service(s) ...");
    let f64_of = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let node_cpu = || node_pid.and_then(|p| skiff_tests::process::cpu_seconds(p).ok());
    let (soft0, cpu0) = (softirq_jiffies(), node_cpu());
    let crr = client.run("crr", tcp, args)?;
    let (soft1, cpu1) = (softirq_jiffies(), node_cpu());
    let conns = f64_of(&crr, "ops").max(1.0) / 1000.0;
    #[expect(clippy::cast_precision_loss, reason = "jiffies of seconds")]
    let softirq_ms = (soft1.saturating_sub(soft0)) as f64 * 10.0;
    let node_ms = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (b - a) * 1000.0,
        _ => 0.0,
    };
    let rr = client.run("rr", tcp, args)?;
    let (udp_p50, udp_p99, udp_errors) = if udp.is_empty() {
        (f64::NAN, f64::NAN, 0)
    } else {
        let u = client.run("udp", udp, args)?;
        (
            f64_of(&u, "p50_us"),
            f64_of(&u, "p99_us"),
            u["errors"].as_u64().unwrap_or(0),
        )
    };
    let stream = client.run("stream", tcp, args)?;
    let errors =
        crr["errors"].as_u64().unwrap_or(0) + rr["errors"].as_u64().unwrap_or(0) + udp_errors;
    if errors > 0 {
        eprintln!(
            "datapath bench: {mode}: {errors} failed operation(s): {} {} ",
            crr["first_error"], rr["first_error"]
        );
    }
    eprintln!(
        "datapath bench: {mode}, {services}: CRR {:.0}/s p50 {:.1} p99 {:.1} us; RR p50 {:.1} p99 {:.1} us; UDP p50 {udp_p50:.1} p99 {udp_p99:.1} us; {:.2} Gbit/s",
        f64_of(&crr, "rate"),
        f64_of(&crr, "p50_us"),
        f64_of(&crr, "p99_us"),
        f64_of(&rr, "p50_us"),
        f64_of(&rr, "p99_us"),
        f64_of(&stream, "gbits"),
    );
    Ok(Figures {
        mode: mode.to_owned(),
        services,
        crr_rate: f64_of(&crr, "rate"),
        crr_p50: f64_of(&crr, "p50_us"),
        crr_p99: f64_of(&crr, "p99_us"),
        rr_p50: f64_of(&rr, "p50_us"),
        rr_p99: f64_of(&rr, "p99_us"),
        udp_p50,
        udp_p99,
        gbits: f64_of(&stream, "gbits"),
        softirq_ms_per_k: softirq_ms / conns,
        node_ms_per_k: node_ms / conns,
        errors,
    })
}

/// Times of one kind of change: milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    mode: String,
    services: usize,
    /// From the request (or `iptables-restore` start) to the first connection on the new
    /// backend.
    live_ms: Vec<f64>,
    /// The API request alone, or `iptables-restore`'s run.
    apply_ms: Vec<f64>,
}

impl Changes {
    /// From the API's answer (the change committed, its watch event sent) or the end of
    /// `iptables-restore` to the first connection on the new backend: what the datapath
    /// itself adds, change by change.
    fn after_ms(&self) -> Vec<f64> {
        self.live_ms
            .iter()
            .zip(&self.apply_ms)
            .map(|(live, apply)| (live - apply).max(0.0))
            .collect()
    }
}

/// A one-off figure (programming times, memory).
#[derive(Debug, Clone)]
pub struct Note {
    mode: String,
    what: String,
    value: String,
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct Results {
    figures: Vec<Figures>,
    changes: Vec<Changes>,
    notes: Vec<Note>,
}

impl Results {
    fn note(&mut self, mode: &str, what: &str, value: String) {
        eprintln!("datapath bench: {mode}: {what}: {value}");
        self.notes.push(Note {
            mode: mode.to_owned(),
            what: what.to_owned(),
            value,
        });
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Reads the `watch` client's lines on a thread; each is (Unix time, answer).
fn watch_lines(child: &mut ChildGuard) -> Result<std::sync::mpsc::Receiver<(f64, String)>> {
    use std::io::BufRead as _;
    let stdout = child.child_mut().stdout.take().context("watch stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some((t, answer)) = line.split_once(' ')
                && let Ok(t) = t.parse::<f64>()
                && tx.send((t, answer.to_owned())).is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

/// Waits (5 s at most) for the watcher to report `ip` answering at or after `since` (Unix
/// time); returns when it did. Earlier lines (a datapath that flapped between backends after
/// the previous change) do not count.
fn seen(rx: &std::sync::mpsc::Receiver<(f64, String)>, ip: Ipv4Addr, since: f64) -> Result<f64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let want = ip.to_string();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let (t, answer) = rx
            .recv_timeout(left)
            .with_context(|| format!("the watcher never saw {want} answer"))?;
        if answer == want && t >= since {
            return Ok(t);
        }
    }
}

/// Waits (10 s at most: a dial the datapath drops takes the watcher's 2 s timeout, and a
/// dial that meets a stale connection a retransmitted SYN's second, so 20 lines can take
/// more than 5 s) until the watcher's last 20 lines all name `ip` (it prints every
/// flip at once and otherwise a line per 100 ms: 2 s without another backend answering):
/// the datapath holds only that backend (failed dials, which name none, are skipped and
/// reported), so the next change's backend can only be seen
/// once that change is live. (Without it, a datapath still showing an older set that held both backends
/// answered a change "in 0.7 ms".)
fn settled(rx: &std::sync::mpsc::Receiver<(f64, String)>, ip: Ipv4Addr) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let want = ip.to_string();
    let mut run = 0;
    let mut others = std::collections::BTreeMap::<String, usize>::new();
    while run < 20 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let (_, answer) = rx.recv_timeout(left).with_context(|| {
            format!("the watcher never saw only {want} answer (other answers seen: {others:?})")
        })?;
        // A failed dial names no backend: it neither counts nor breaks the run.
        let failed = answer.starts_with("error:");
        run = if answer == want {
            run + 1
        } else if failed {
            run
        } else {
            0
        };
        if answer != want {
            *others.entry(answer).or_default() += 1;
        }
    }
    if !others.is_empty() {
        eprintln!("datapath bench: while settling on {want} the watcher also saw {others:?}");
    }
    Ok(())
}

/// IPVS: present only when the kernel has it and `ipvsadm` is installed.
fn ipvs_status() -> String {
    let kernel = Path::new("/proc/net/ip_vs").exists();
    let tool = Command::new("ipvsadm").arg("--version").output().is_ok();
    match (kernel, tool) {
        (true, true) => "present, but not measured by this bench yet".to_owned(),
        (false, _) => {
            "not measured: this kernel has no IPVS (/proc/net/ip_vs absent, no ip_vs module)"
                .to_owned()
        }
        (true, false) => "not measured: ipvsadm is not installed".to_owned(),
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if !skiff_tests::is_root() {
        bail!("datapath bench: needs root (network namespaces, containers, cgroups)");
    }
    args.services.sort_unstable();
    args.services.dedup();
    ensure!(!args.services.is_empty(), "--services: at least one count");
    // SAFETY: installing a handler that only stores to an atomic, which is signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let load = skiff_tests::bin("datapath_load");
    let scratch = tempfile::Builder::new()
        .prefix("skiff-datapath-")
        .tempdir()?;
    let before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut results = Results::default();
    let wanted = |mode: &str| args.modes.iter().any(|m| m == mode);
    if wanted("ebpf") {
        skiff::measure(&args, "ebpf", &load, scratch.path(), &mut results)?;
    }
    if !wanted("nftables") {
    } else if skiff::has_proxy_mode()? {
        skiff::measure(&args, "nftables", &load, scratch.path(), &mut results)?;
    } else {
        results.note(
            "4 nftables",
            "status",
            "not available in this build (the node has no --proxy-mode)".to_owned(),
        );
    }
    if wanted("iptables") {
        iptables::measure(&args, &load, scratch.path(), &mut results)?;
    }
    results.note("6 IPVS", "status", ipvs_status());
    let after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    report::print(&args, &results, (&before, &after));
    report::write_files(&args, &results)?;
    Ok(())
}
