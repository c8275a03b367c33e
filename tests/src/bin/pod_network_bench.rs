//! `cargo xtask bench pod-network`: what the pod network costs, measured against the bare
//! host namespaces in the same run.
//!
//! Per backend, a cluster of the multi-host test harness: two node hosts, real `node`
//! daemons started with `--pod-network <backend>`, three busybox pods (two on `node-0`, one
//! on `node-1`). For `host-gw` both nodes share the control plane's switch; for `vxlan` they
//! sit on the two subnets, one router hop apart, where a tunnel is what a cluster needs.
//! Three paths are measured per cluster:
//!
//! - host -> host: between the namespaces of `node-0` and `node-1` (their `eth0`s, through
//!   the switch, and for `vxlan` the router), no pod network at all: the reference;
//! - pod -> pod, same node: through `node-0`'s bridge;
//! - pod -> pod, across nodes: `node-0` to `node-1` through the backend under test.
//!
//! Both ends are sockets of this process opened inside the namespaces (no container
//! process is involved; the pods only provide the network namespaces skiff made). Every
//! connection checks that the receiver sees the sender's own address (no NAT). Per path and
//! round: one TCP stream writing 128 KiB chunks for `--seconds` (throughput as the bytes
//! the receiver read between its first and last read), then a TCP ping-pong of
//! `--message` bytes each way with `TCP_NODELAY` for `--seconds` (every round trip timed;
//! p50 and p99 over all rounds' samples). The paths take turns round by round, so a burst
//! of other work on the machine weighs on all of them alike. At the end the harness's
//! counter on the machine's uplink must show that no packet left, or the bench fails.
//! Ctrl-C (or SIGTERM) stops the measurement; the cluster is removed as on any failure.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::{Value, json};
use skiff_tests::{
    cluster::{Cluster, ClusterConfig, Subnet, wait_for},
    netns::in_netns,
};

const IMAGE: &str = "bench.local/busybox:pod-network";
/// Bytes per write in the throughput stream (iperf3's default for TCP).
const CHUNK: usize = 128 * 1024;
/// Round trips at the start of every ping-pong that are not counted.
const WARM_UP: usize = 200;
const CONNECT: Duration = Duration::from_secs(5);
/// How long a socket waits on its peer before the bench gives up on a path (a path that
/// stops carrying traffic fails the bench instead of hanging it).
const STALL: Duration = Duration::from_secs(15);

/// Set by SIGINT or SIGTERM: the measurement stops and the cluster is removed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fails once Ctrl-C or SIGTERM arrived, so the caller unwinds and the cluster's drop
/// removes everything.
fn not_interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(())
}

#[derive(Parser)]
#[command(about = "pod-to-pod TCP throughput and latency beside the bare host namespaces")]
struct Args {
    /// Seconds each throughput and each latency measurement runs, per path and round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds: every path is measured this many times, the paths taking turns.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Bytes of each request and each answer in the ping-pong.
    #[arg(long, default_value_t = 64)]
    message: usize,
    /// The pod network backends, each in a cluster of its own (`host-gw` on one switch,
    /// the others across the router, where `auto` picks VXLAN too).
    #[arg(
        long,
        default_value = "host-gw,vxlan",
        value_delimiter = ',',
        value_parser = ["host-gw", "vxlan", "auto"]
    )]
    backends: Vec<String>,
}

/// One end of a path: an address and the network namespace that holds it.
#[derive(Debug, Clone)]
struct End {
    ip: Ipv4Addr,
    netns: PathBuf,
}

/// A measured path and what was measured on it.
struct Measured {
    name: &'static str,
    from: End,
    to: End,
    /// Gbit/s of every round.
    gbits: Vec<f64>,
    /// Round trips of every round, in nanoseconds.
    round_trips: Vec<u64>,
}

/// A backend's figures and what its cluster looked like.
struct Backend {
    name: String,
    paths: Vec<Measured>,
    /// Where the two nodes are: one switch, or two subnets behind the router.
    layout: &'static str,
    /// The device `node-0` routes `node-1`'s pods through.
    route_dev: String,
    pod_mtu: u32,
}

/// A TCP connection from `from` to a listener at `to`, checking that the receiver sees
/// the sender's own address; returns (sender side, receiver side).
fn connect(from: &End, to: &End) -> Result<(TcpStream, TcpStream)> {
    let listener = in_netns(&to.netns, || TcpListener::bind((to.ip, 0)))??;
    let addr: SocketAddr = listener.local_addr()?;
    let sender = in_netns(&from.netns, || TcpStream::connect_timeout(&addr, CONNECT))?
        .with_context(|| format!("connecting from {} to {addr}", from.ip))?;
    // The handshake is done: the connection waits in the backlog.
    let (receiver, peer) = listener.accept()?;
    for s in [&sender, &receiver] {
        s.set_read_timeout(Some(STALL))?;
        s.set_write_timeout(Some(STALL))?;
    }
    ensure!(
        peer.ip() == IpAddr::V4(from.ip),
        "{addr} saw the connection from {peer}, not from {}",
        from.ip
    );
    Ok((sender, receiver))
}

/// One stream for `run`; Gbit/s the receiver read between its first and last read.
fn throughput(from: &End, to: &End, run: Duration) -> Result<f64> {
    let (mut tx, mut rx) = connect(from, to)?;
    std::thread::scope(|s| {
        let reading = s.spawn(move || -> Result<(u64, Duration)> {
            let mut buf = vec![0; CHUNK];
            let mut first = None;
            let mut bytes = 0u64;
            loop {
                let n = rx.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                // What the first read returns arrived before the clock started.
                match first {
                    None => first = Some(Instant::now()),
                    Some(_) => bytes += n as u64,
                }
            }
            let first = first.context("the stream carried nothing")?;
            Ok((bytes, first.elapsed()))
        });
        let chunk = vec![0x5a; CHUNK];
        let began = Instant::now();
        let sent = (|| {
            while began.elapsed() < run && !INTERRUPTED.load(Ordering::Relaxed) {
                tx.write_all(&chunk)?;
            }
            tx.shutdown(Shutdown::Write)
        })();
        let received = reading
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        sent.context("sending")?;
        let (bytes, took) = received.context("receiving")?;
        not_interrupted()?;
        #[expect(clippy::cast_precision_loss, reason = "bytes in a few seconds")]
        Ok(bytes as f64 * 8.0 / took.as_secs_f64() / 1e9)
    })
}

/// A ping-pong of `size` bytes each way for `run`; every round trip in nanoseconds,
/// without the warm-up.
fn round_trips(from: &End, to: &End, size: usize, run: Duration) -> Result<Vec<u64>> {
    let (mut client, mut server) = connect(from, to)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    std::thread::scope(|s| {
        let echo = s.spawn(move || -> Result<()> {
            let mut buf = vec![0; size];
            loop {
                match server.read_exact(&mut buf) {
                    Ok(()) => server.write_all(&buf)?,
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        });
        let mut samples = Vec::new();
        let asked = (|| {
            let mut buf = vec![0x5a; size];
            let began = Instant::now();
            while began.elapsed() < run && !INTERRUPTED.load(Ordering::Relaxed) {
                let t = Instant::now();
                client.write_all(&buf)?;
                client.read_exact(&mut buf)?;
                samples.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            client.shutdown(Shutdown::Write)
        })();
        let echoed = echo.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        asked.context("ping")?;
        echoed.context("echo")?;
        not_interrupted()?;
        ensure!(
            samples.len() > WARM_UP,
            "only {} round trips in {run:?}",
            samples.len()
        );
        Ok(samples.split_off(WARM_UP))
    })
}

/// The `p` quantile of `sorted` (nearest rank).
fn quantile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into at most millions of samples"
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds of one round trip")]
    let v = sorted[i] as f64;
    v
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

/// Starts a cluster of two nodes using `backend`, with the busybox image on both: on one
/// switch for `host-gw`, on the two subnets behind the router otherwise.
fn start_cluster(backend: &str) -> Result<Cluster> {
    let mut config = ClusterConfig::one_switch(2);
    if backend != "host-gw" {
        config.nodes = vec![Subnet::A, Subnet::B];
    }
    config.node_args = vec!["--pod-network".into(), backend.into()];
    let c = Cluster::start(&config)?;
    not_interrupted()?;
    c.import_busybox(IMAGE)?;
    Ok(c)
}

/// Creates a sleeping busybox pod bound to `node`.
fn create_pod(c: &Cluster, name: &str, node: &str) -> Result<()> {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "pod-network"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "idle",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"]
            }]
        }
    });
    let body = serde_json::to_vec(&pod)?;
    let (code, answer) = c.control_host().run(|| {
        c.control().http(
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            &body,
        )
    })?;
    ensure!(code == 201, "creating pod {name}: {code} {answer}");
    Ok(())
}

/// Waits until pod `name` runs; returns its address and network namespace file.
fn pod_end(c: &Cluster, name: &str, node: usize) -> Result<End> {
    let pod = wait_for(
        &format!("pod {name} Running with an IP"),
        Duration::from_mins(2),
        || {
            not_interrupted()?;
            let pod = c.get_json(&format!("/api/v1/namespaces/default/pods/{name}"))?;
            let running = pod["status"]["phase"] == "Running" && pod["status"]["podIP"].is_string();
            Ok(running.then_some(pod))
        },
    )?;
    let uid = pod["metadata"]["uid"].as_str().context("pod without uid")?;
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    Ok(End {
        ip,
        netns: skiff_tests::cluster::pod_netns(&c.node(node).state_dir().join("network"), uid),
    })
}

/// Runs `ip -j ARGS` in the namespace at `netns` and parses its answer.
fn ip_json(netns: &Path, args: &[&str]) -> Result<Value> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "ip", "-j"])
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn measure_backend(args: &Args, backend: &str) -> Result<Backend> {
    eprintln!("pod-network bench: {backend}: starting a cluster of two nodes ...");
    let c = start_cluster(backend)?;
    let result = measure_cluster(args, backend, &c);
    // After Ctrl-C the daemons' logs say nothing about the failure: they got it too.
    if result.is_err() && !INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("{}", c.logs());
    }
    result
}

fn measure_cluster(args: &Args, backend: &str, c: &Cluster) -> Result<Backend> {
    let hosts = c.node_hosts();
    let host = |i: usize| End {
        ip: hosts[i].address(),
        netns: hosts[i].netns_path(),
    };
    let placement = [("bench-a", 0), ("bench-b", 0), ("bench-c", 1)];
    for (name, node) in placement {
        create_pod(c, name, hosts[node].label())?;
    }
    let mut pods = Vec::new();
    for (name, node) in placement {
        pods.push(pod_end(c, name, node)?);
    }
    let [a, b, remote] = <[End; 3]>::try_from(pods).map_err(|_| anyhow::anyhow!("three pods"))?;
    // Routes to the other node's pod CIDR follow its Node object within moments.
    wait_for(
        "a first connection from node-0's pod to node-1's",
        Duration::from_secs(30),
        || {
            not_interrupted()?;
            Ok(connect(&a, &remote).ok().map(drop))
        },
    )?;
    let route = ip_json(
        &hosts[0].netns_path(),
        &["route", "get", &remote.ip.to_string()],
    )?;
    let route_dev = route[0]["dev"].as_str().unwrap_or("?").to_owned();
    let expected = if backend == "host-gw" {
        "eth0"
    } else {
        "skiff-vxlan"
    };
    ensure!(
        route_dev == expected,
        "{backend}: node-0 routes node-1's pods through {route_dev}, not {expected}: {route}"
    );
    let links = ip_json(&a.netns, &["link", "show"])?;
    let pod_mtu = links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["ifname"] != "lo")
        .and_then(|l| l["mtu"].as_u64())
        .and_then(|m| u32::try_from(m).ok())
        .context("the pod has no interface besides lo")?;

    let mut paths = vec![
        Measured::new("host -> host (bare)", host(0), host(1)),
        Measured::new("pod -> pod, same node", a.clone(), b),
        Measured::new("pod -> pod, across nodes", a, remote),
    ];
    let run = Duration::from_secs(args.seconds);
    for round in 1..=args.rounds {
        for path in &mut paths {
            eprintln!(
                "pod-network bench: {backend}: round {round}/{}: {} ...",
                args.rounds, path.name
            );
            let gbits = throughput(&path.from, &path.to, run)
                .with_context(|| format!("{backend}: throughput {}", path.name))?;
            path.gbits.push(gbits);
            let mut samples = round_trips(&path.from, &path.to, args.message, run)
                .with_context(|| format!("{backend}: round trips {}", path.name))?;
            path.round_trips.append(&mut samples);
        }
    }
    for path in &mut paths {
        path.round_trips.sort_unstable();
    }
    c.check_nothing_escaped()?;
    Ok(Backend {
        name: backend.to_owned(),
        paths,
        layout: if backend == "host-gw" {
            "nodes on one switch"
        } else {
            "nodes on two subnets, one router hop apart"
        },
        route_dev,
        pod_mtu,
    })
}

impl Measured {
    fn new(name: &'static str, from: End, to: End) -> Self {
        Self {
            name,
            from,
            to,
            gbits: Vec::new(),
            round_trips: Vec::new(),
        }
    }

    fn gbits(&self) -> f64 {
        median(&self.gbits)
    }

    fn p50_us(&self) -> f64 {
        quantile(&self.round_trips, 0.5) / 1000.0
    }

    fn p99_us(&self) -> f64 {
        quantile(&self.round_trips, 0.99) / 1000.0
    }
}

fn report(args: &Args, load: (&str, &str), backends: &[Backend]) {
    println!(
        "\n## pod network: TCP between namespaces, {} round(s) of {} s per figure\n",
        args.rounds, args.seconds
    );
    println!(
        "{:<8} {:<25} {:>7} {:>6} {:>6}   {:>7} {:>6} {:>6}   {:>7} {:>6} {:>6} {:>9}",
        "backend",
        "path",
        "Gbit/s",
        "/host",
        "/same",
        "p50 us",
        "/host",
        "/same",
        "p99 us",
        "/host",
        "/same",
        "rtts"
    );
    for b in backends {
        let [bare, same, ..] = b.paths.as_slice() else {
            continue;
        };
        for p in &b.paths {
            let ratios = |f: fn(&Measured) -> f64| (f(p), f(p) / f(bare), f(p) / f(same));
            let (g, gh, gs) = ratios(Measured::gbits);
            let (m, mh, ms) = ratios(Measured::p50_us);
            let (t, th, ts) = ratios(Measured::p99_us);
            println!(
                "{:<8} {:<25} {g:>7.2} {gh:>5.2}x {gs:>5.2}x   {m:>7.1} {mh:>5.2}x {ms:>5.2}x   \
                 {t:>7.1} {th:>5.2}x {ts:>5.2}x {:>9}",
                b.name,
                p.name,
                p.round_trips.len()
            );
        }
    }
    println!(
        "\nGbit/s: one TCP stream, 128 KiB writes, median of the rounds; p50/p99: {}-byte \
         request and answer over one TCP connection (TCP_NODELAY), all rounds' round trips \
         (rtts); /host: ratio to the bare host -> host figure of the same cluster, /same: \
         to pod -> pod on one node (throughput below 1x and latency above 1x are slower)",
        args.message
    );
    for b in backends {
        let rounds: Vec<String> = b
            .paths
            .iter()
            .map(|p| {
                let each: Vec<String> = p.gbits.iter().map(|g| format!("{g:.2}")).collect();
                format!("{}: {}", p.name, each.join(" / "))
            })
            .collect();
        println!(
            "{}: {}, node-0 reaches node-1's pods through {}, pod MTU {}, no packet on \
             the machine's uplink; Gbit/s per round: {}",
            b.name,
            b.layout,
            b.route_dev,
            b.pod_mtu,
            rounds.join("; ")
        );
    }
    println!(
        "load average before: {}, after: {}",
        load.0.trim(),
        load.1.trim()
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !skiff_tests::is_root() {
        bail!("pod-network bench: needs root (network namespaces, containers, cgroups)");
    }
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    // SAFETY: installing a handler that only stores to an atomic, which is signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut backends = Vec::new();
    for backend in &args.backends {
        match measure_backend(&args, backend) {
            Ok(b) => backends.push(b),
            Err(err) if INTERRUPTED.load(Ordering::SeqCst) => {
                bail!("pod-network bench: interrupted; its cluster is removed ({err:#})")
            }
            Err(err) => return Err(err),
        }
    }
    let after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    report(&args, (&before, &after), &backends);
    Ok(())
}
