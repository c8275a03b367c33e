//! `cargo xtask bench dns`: queries per second and latency of the node-local cluster DNS
//! from a pod, beside the same queries sent straight to an upstream resolver, in one run.
//!
//! A one-node cluster of the multi-host test harness, a busybox pod and an `api` Service.
//! The upstream is the tests' stand-in resolver ([`skiff_tests::dns::Upstream`]) in the
//! client namespace; the node forwards other names there (`--dns-upstream`), never to the
//! machine's resolver. The load comes from a child of this process that enters the pod's
//! network namespace and the node's socket load balancer cgroup (as the pod's own
//! processes are), so queries to 10.96.0.10 take the `kube-dns` Service path to the node's
//! server. Each of `--concurrency` threads keeps one query in flight on its own connected
//! UDP socket for `--seconds`; every round trip is timed. Three rows, taking turns for
//! `--rounds`:
//!
//! - a cluster name (`api.default.svc.cluster.local`) at the `kube-dns` address;
//! - a name outside the cluster at the `kube-dns` address (forwarded upstream);
//! - the cluster name at the upstream directly (the reference: one hop, a map lookup).
//!
//! At the end the harness's counter on the machine's uplink must show that no packet left.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};
use serde_json::{Value, json};
use skiff_tests::{
    bench::percentile,
    cluster::{Cluster, ClusterConfig, Subnet, wait_for},
    dns::Upstream,
};

const IMAGE: &str = "bench.local/busybox:dns";
const CLUSTER_NAME: &str = "api.default.svc.cluster.local.";
const OUTSIDE_NAME: &str = "outside.example.";
const KUBE_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

#[derive(Parser)]
#[command(about = "node-local cluster DNS from a pod beside an upstream resolver")]
struct Args {
    /// Seconds each row runs per round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds: the rows take turns this many times.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Queries in flight at once (one thread and socket each).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

/// One row's samples over every round.
struct Row {
    name: &'static str,
    target: SocketAddr,
    query: &'static str,
    answered: u64,
    failed: u64,
    elapsed: f64,
    micros: Vec<f64>,
}

impl Row {
    fn new(name: &'static str, target: SocketAddr, query: &'static str) -> Self {
        Self {
            name,
            target,
            query,
            answered: 0,
            failed: 0,
            elapsed: 0.0,
            micros: Vec::new(),
        }
    }
}

/// The child: joins the cgroup whose `cgroup.procs` is `procs`, then queries `target`
/// for `name` from `concurrency` threads for `seconds`; prints one JSON object.
fn client(
    procs: &Path,
    target: SocketAddr,
    name: &str,
    seconds: u64,
    concurrency: usize,
) -> Result<()> {
    std::fs::write(procs, std::process::id().to_string()).context("joining the cgroup")?;
    let name = Name::from_ascii(name)?;
    let run = Duration::from_secs(seconds);
    let results: Vec<(u64, u64, Vec<f64>)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..concurrency)
            .map(|t| {
                let name = name.clone();
                s.spawn(move || -> Result<(u64, u64, Vec<f64>)> {
                    let socket = UdpSocket::bind("0.0.0.0:0")?;
                    socket.connect(target)?;
                    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
                    let (mut ok, mut failed, mut micros) = (0, 0, Vec::new());
                    let mut buf = [0u8; 1500];
                    let began = Instant::now();
                    let mut id = u16::try_from(t * 1000).unwrap_or(0);
                    while began.elapsed() < run {
                        id = id.wrapping_add(1);
                        let mut q = Message::new(id, MessageType::Query, OpCode::Query);
                        q.metadata.recursion_desired = true;
                        q.add_query(Query::query(name.clone(), RecordType::A));
                        let bytes = q.to_vec()?;
                        let sent = Instant::now();
                        socket.send(&bytes)?;
                        loop {
                            match socket.recv(&mut buf) {
                                Ok(n) if n >= 2 && buf[..2] == id.to_be_bytes() => {
                                    let reply = Message::from_vec(&buf[..n])?;
                                    if reply.answers.is_empty() {
                                        failed += 1;
                                    } else {
                                        ok += 1;
                                        micros.push(sent.elapsed().as_secs_f64() * 1e6);
                                    }
                                    break;
                                }
                                Ok(_) => {}
                                Err(_) => {
                                    failed += 1;
                                    break;
                                }
                            }
                        }
                    }
                    Ok((ok, failed, micros))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Result<Vec<_>>>()
    })?;
    let answered: u64 = results.iter().map(|r| r.0).sum();
    let failed: u64 = results.iter().map(|r| r.1).sum();
    let micros: Vec<f64> = results.into_iter().flat_map(|r| r.2).collect();
    println!(
        "{}",
        json!({"answered": answered, "failed": failed, "seconds": run.as_secs_f64(), "micros": micros})
    );
    Ok(())
}

/// Runs one round of `row` from the pod's namespace `netns`.
fn measure(row: &mut Row, netns: &Path, procs: &Path, args: &Args) -> Result<()> {
    let exe = std::env::current_exe()?;
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(exe)
        .arg("client")
        .arg(procs)
        .arg(row.target.to_string())
        .arg(row.query)
        .arg(args.seconds.to_string())
        .arg(args.concurrency.to_string())
        .output()
        .context("running the client")?;
    ensure!(
        out.status.success(),
        "client for {}: {}",
        row.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).context("client output")?;
    row.answered += v["answered"].as_u64().unwrap_or(0);
    row.failed += v["failed"].as_u64().unwrap_or(0);
    row.elapsed += v["seconds"].as_f64().unwrap_or(0.0);
    row.micros.extend(
        v["micros"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64),
    );
    Ok(())
}

fn bench(args: &Args) -> Result<Vec<Row>> {
    let upstream_ip = Subnet::A.host(100);
    let mut config = ClusterConfig::one_switch(1);
    config.node_args = vec!["--dns-upstream".into(), format!("{upstream_ip}:53")];
    let cluster = Cluster::start(&config)?;
    cluster.import_busybox(IMAGE)?;
    let socket = cluster
        .client()
        .run(|| UdpSocket::bind((upstream_ip, 53)))
        .context("binding the stand-in upstream")?;
    let upstream = Upstream::serve(
        socket,
        HashMap::from([
            (CLUSTER_NAME.to_owned(), Ipv4Addr::new(10, 96, 1, 1)),
            (OUTSIDE_NAME.to_owned(), Ipv4Addr::new(192, 0, 2, 44)),
        ]),
    )?;
    let manifest = format!(
        r"
apiVersion: v1
kind: Service
metadata: {{name: api}}
spec:
  selector: {{app: bench}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: bench, labels: {{app: bench}}}}
spec:
  containers:
  - name: c
    image: '{IMAGE}'
    imagePullPolicy: Never
    command: [httpd, -f, -p, '8080', -h, /etc]
"
    );
    cluster.kubectl(&["apply", "-f", "-"], Some(&manifest))?;
    let pod = wait_for("the bench pod running", Duration::from_mins(2), || {
        let pod = cluster.get_json("/api/v1/namespaces/default/pods/bench")?;
        Ok(
            (pod["status"]["phase"] == "Running" && pod["status"]["podIP"].is_string())
                .then_some(pod),
        )
    })?;
    let at = cluster.pod_at(&pod)?;
    let dir = cluster.node(0).socket_lb_cgroup().join("bench-clients");
    std::fs::create_dir_all(&dir)?;
    let procs = dir.join("cgroup.procs");
    let kube_dns = SocketAddr::from((KUBE_DNS, 53));
    let mut rows = vec![
        Row::new(
            "cluster name via kube-dns (node-local)",
            kube_dns,
            CLUSTER_NAME,
        ),
        Row::new(
            "outside name via kube-dns (forwarded)",
            kube_dns,
            OUTSIDE_NAME,
        ),
        Row::new(
            "same name to the upstream directly",
            upstream.addr(),
            CLUSTER_NAME,
        ),
    ];
    // The zone fills from the watches within moments of the pod's start.
    let warm = Args {
        seconds: 1,
        rounds: 1,
        concurrency: 1,
    };
    wait_for(
        "the node's DNS answering the Service",
        Duration::from_secs(30),
        || {
            let mut probe = Row {
                micros: Vec::new(),
                answered: 0,
                failed: 0,
                elapsed: 0.0,
                ..rows[0]
            };
            measure(&mut probe, &at.netns, &procs, &warm)?;
            Ok((probe.answered > 0 && probe.failed == 0).then_some(()))
        },
    )?;
    for _ in 0..args.rounds {
        for row in &mut rows {
            measure(row, &at.netns, &procs, args)?;
        }
    }
    ensure!(upstream.queries() > 0, "the upstream was never asked");
    cluster.check_nothing_escaped()?;
    Ok(rows)
}

fn report(args: &Args, rows: &[Row]) {
    let qps = |r: &Row| {
        #[expect(clippy::cast_precision_loss, reason = "counts of a few million")]
        let answered = r.answered as f64;
        answered / r.elapsed.max(f64::EPSILON)
    };
    let reference = rows.last().map_or(f64::NAN, qps);
    println!(
        "\ncluster DNS from a pod: {} thread(s), {} s x {} round(s) per row\n",
        args.concurrency, args.seconds, args.rounds
    );
    println!(
        "| path | queries/s | p50 (us) | p99 (us) | failed | qps vs upstream |\n|---|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {} | {:.2} |",
            r.name,
            qps(r),
            percentile(&r.micros, 0.5),
            percentile(&r.micros, 0.99),
            r.failed,
            qps(r) / reference
        );
    }
}

fn main() -> Result<()> {
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some("client") {
        let [_, _, procs, target, name, seconds, concurrency] = raw.as_slice() else {
            bail!("client PROCS TARGET NAME SECONDS CONCURRENCY");
        };
        return client(
            Path::new(procs),
            target.parse()?,
            name,
            seconds.parse()?,
            concurrency.parse()?,
        );
    }
    let args = Args::parse();
    if !skiff_tests::is_root() {
        bail!("dns bench: needs root (network namespaces, containers, cgroups)");
    }
    ensure!(
        args.rounds > 0 && args.concurrency > 0,
        "--rounds and --concurrency must be at least 1"
    );
    let rows = bench(&args)?;
    report(&args, &rows);
    Ok(())
}
