//! The load generator of `cargo xtask bench datapath`: one tokio process per side, started by
//! the harness inside the network namespace it measures from or serves in (`nsenter --net`).
//!
//! `server` answers on one TCP and one UDP port. A TCP connection whose first byte is `?`
//! gets the address it arrived on (which backend served it) and is closed; one whose first
//! byte is `!` is a bulk stream: the server reads to the end and answers the byte count;
//! anything else is echoed back as it arrives. UDP datagrams are echoed.
//!
//! `client` runs one test for `--seconds` against targets chosen at random per connection
//! (or per datagram) from `--targets` (one `ip:port` a line) and prints one JSON object:
//! `crr` (connect, one request and answer of `--message` bytes, close; netperf's `TCP_CRR`),
//! `rr` (request and answer on kept-alive connections; `TCP_RR`), `udp` (request and answer
//! datagrams), `stream` (one bulk TCP stream). `watch` dials its one target in a loop and
//! prints a line (Unix time, backend address) whenever the backend that answers changes;
//! `who` asks every target once and prints the list of answers (backend address, or the
//! error).
//! With `--cgroup-procs` the client first joins that cgroup, where a node's socket hooks see
//! it.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
};

/// Bytes per write of the bulk stream.
const CHUNK: usize = 128 * 1024;
/// How long one operation may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(about = "the datapath bench's load generator and backend")]
struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Answers TCP on `--tcp` and UDP on `--udp` (all addresses).
    Server {
        #[arg(long, default_value_t = 8080)]
        tcp: u16,
        #[arg(long, default_value_t = 8053)]
        udp: u16,
    },
    /// Runs one test and prints its figures as JSON.
    Client {
        #[arg(long, value_enum)]
        test: Test,
        /// A file of `ip:port` lines; each connection or datagram picks one at random.
        #[arg(long)]
        targets: PathBuf,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Connections (or UDP sockets) in flight at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        #[arg(long, default_value_t = 64)]
        message: usize,
        /// A `cgroup.procs` file to join first.
        #[arg(long)]
        cgroup_procs: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Test {
    Crr,
    Rr,
    Udp,
    Stream,
    Watch,
    Who,
}

/// A small xorshift generator: the choice of target needs no more.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos().into());
        Self((t ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % n as u64).unwrap_or(0)
    }
}

async fn serve_tcp(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    loop {
        let (mut s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; CHUNK];
            let Ok(n) = s.read(&mut buf).await else {
                return;
            };
            match buf.first() {
                _ if n == 0 => {}
                Some(b'?') => {
                    if let Ok(local) = s.local_addr() {
                        let _ = s.write_all(local.ip().to_string().as_bytes()).await;
                    }
                }
                Some(b'!') => {
                    let mut total = (n - 1) as u64;
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = s.write_all(&total.to_be_bytes()).await;
                }
                _ => {
                    let mut n = n;
                    loop {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(m) => n = m,
                        }
                    }
                }
            }
        });
    }
}

async fn serve_udp(port: u16) -> Result<()> {
    let socket = UdpSocket::bind(("0.0.0.0", port)).await?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let _ = socket.send_to(&buf[..n], from).await;
    }
}

/// What every task of a test collects.
#[derive(Default)]
struct Samples {
    nanos: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Samples {
    fn record<T>(&mut self, began: Instant, result: Result<T>) {
        match result {
            Ok(_) => self
                .nanos
                .push(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX)),
            Err(err) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }

    fn merge(&mut self, other: Self) {
        self.nanos.extend(other.nanos);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

async fn timed<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .context("timed out")?
}

async fn one_crr(target: SocketAddr, msg: &mut [u8]) -> Result<()> {
    let mut s = TcpStream::connect(target).await?;
    s.set_nodelay(true)?;
    s.write_all(msg).await?;
    s.read_exact(msg).await?;
    Ok(())
}

async fn one_udp(socket: &UdpSocket, target: SocketAddr, msg: &mut [u8]) -> Result<()> {
    socket.send_to(msg, target).await?;
    // A late answer to an earlier, timed-out request is not this one's.
    loop {
        let (n, _) = socket.recv_from(msg).await?;
        if n == msg.len() {
            return Ok(());
        }
    }
}

async fn stream(target: SocketAddr, run: Duration) -> Result<f64> {
    let mut s = TcpStream::connect(target).await?;
    let began = Instant::now();
    s.write_all(b"!").await?;
    let chunk = vec![0x5a; CHUNK];
    while began.elapsed() < run {
        s.write_all(&chunk).await?;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    #[expect(clippy::cast_precision_loss, reason = "bytes in a few seconds")]
    let bytes = u64::from_be_bytes(count) as f64;
    Ok(bytes * 8.0 / began.elapsed().as_secs_f64() / 1e9)
}

/// The backend that answers a connection to `target`, or the error.
async fn who(target: SocketAddr) -> String {
    timed(async {
        let mut s = TcpStream::connect(target).await?;
        s.write_all(b"?").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    })
    .await
    .unwrap_or_else(|err| format!("error:{err:#}"))
}

async fn watch(target: SocketAddr) -> Result<()> {
    let mut last = String::new();
    let mut printed = Instant::now();
    loop {
        let answer = who(target).await;
        // A line every 100 ms even without a change: a reader waiting for an answer after
        // a point in time is not left waiting when the answer had flipped before it.
        if answer != last || printed.elapsed() > Duration::from_millis(100) {
            printed = Instant::now();
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
            let mut out = std::io::stdout().lock();
            writeln!(out, "{now:.6} {answer}")?;
            out.flush()?;
            last = answer;
        }
    }
}

fn quantile_us(sorted: &[u64], p: f64) -> f64 {
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
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds of one operation")]
    let v = sorted[i] as f64 / 1000.0;
    v
}

async fn client(
    test: Test,
    targets: Arc<Vec<SocketAddr>>,
    run: Duration,
    parallel: usize,
    message: usize,
) -> Result<serde_json::Value> {
    match test {
        Test::Watch => {
            watch(targets[0]).await?;
            return Ok(json!({}));
        }
        Test::Who => {
            let mut answers = Vec::new();
            for t in targets.iter() {
                answers.push(who(*t).await);
            }
            return Ok(json!(answers));
        }
        Test::Stream => {
            let target = targets[Rng::new(0).below(targets.len())];
            let gbits = stream(target, run).await?;
            return Ok(json!({"gbits": gbits}));
        }
        _ => {}
    }
    // The connections of `rr` are opened before the clock starts.
    let mut kept = Vec::new();
    if test == Test::Rr {
        let mut rng = Rng::new(7);
        for _ in 0..parallel {
            let target = targets[rng.below(targets.len())];
            let s = timed(async { Ok(TcpStream::connect(target).await?) })
                .await
                .with_context(|| format!("connecting to {target}"))?;
            s.set_nodelay(true)?;
            kept.push(Some(s));
        }
    }
    let ops = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..parallel {
        let targets = targets.clone();
        let ops = ops.clone();
        let conn = kept.get_mut(i).and_then(Option::take);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(i as u64 + 1);
            let mut msg = vec![0x5au8; message];
            let mut samples = Samples::default();
            let udp = if test == Test::Udp {
                Some(UdpSocket::bind("0.0.0.0:0").await?)
            } else {
                None
            };
            let mut conn = conn;
            while began.elapsed() < run {
                let target = targets[rng.below(targets.len())];
                let t = Instant::now();
                let result = match (test, &udp, &mut conn) {
                    (Test::Udp, Some(socket), _) => timed(one_udp(socket, target, &mut msg)).await,
                    (Test::Rr, _, Some(s)) => {
                        timed(async {
                            s.write_all(&msg).await?;
                            s.read_exact(&mut msg).await?;
                            Ok(())
                        })
                        .await
                    }
                    _ => timed(one_crr(target, &mut msg)).await,
                };
                let failed = result.is_err();
                samples.record(t, result);
                ops.fetch_add(1, Ordering::Relaxed);
                if failed && test == Test::Rr {
                    break;
                }
            }
            anyhow::Ok(samples)
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.merge(t.await??);
    }
    let secs = began.elapsed().as_secs_f64();
    all.nanos.sort_unstable();
    #[expect(clippy::cast_precision_loss, reason = "a count of operations")]
    let rate = all.nanos.len() as f64 / secs;
    Ok(json!({
        "ops": all.nanos.len(),
        "rate": rate,
        "secs": secs,
        "p50_us": quantile_us(&all.nanos, 0.5),
        "p99_us": quantile_us(&all.nanos, 0.99),
        "errors": all.errors,
        "first_error": all.first_error,
    }))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.role {
        Role::Server { tcp, udp } => rt.block_on(async {
            tokio::try_join!(serve_tcp(tcp), serve_udp(udp))?;
            Ok(())
        }),
        Role::Client {
            test,
            targets,
            seconds,
            parallel,
            message,
            cgroup_procs,
        } => {
            if let Some(procs) = cgroup_procs {
                std::fs::write(&procs, std::process::id().to_string())
                    .with_context(|| format!("joining {}", procs.display()))?;
            }
            let text = std::fs::read_to_string(&targets)
                .with_context(|| format!("reading {}", targets.display()))?;
            let list: Vec<SocketAddr> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.trim().parse().with_context(|| format!("target {l:?}")))
                .collect::<Result<_>>()?;
            if list.is_empty() {
                bail!("no targets in {}", targets.display());
            }
            let run = Duration::from_secs_f64(seconds);
            let out = rt.block_on(client(test, Arc::new(list), run, parallel.max(1), message))?;
            println!("{out}");
            Ok(())
        }
    }
}
