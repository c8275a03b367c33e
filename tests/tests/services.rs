//! Services end to end, on each Service datapath in turn (the eBPF socket load balancer,
//! then the nftables mode): one multi-host cluster per mode (three real nodes in
//! network-namespace hosts on one switch) shared by every trial, with a `web` Deployment
//! (busybox httpd answering its pod name) and a `client` Deployment, one pod of each per
//! node. Clients are real processes: Python in a client pod's network namespace, moved into
//! the node's own cgroup v2 subtree (where the node's socket hooks are, as its containers
//! are), or in a node's host namespace for node ports. Trials run one at a time in order;
//! the cluster is removed after the last one, and a final check fails the run if any test
//! packet left through the machine's uplink.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Value, json};
use skiff_tests::{
    cluster::{Cluster, ClusterConfig, PodAt, wait_for},
    netns::in_netns,
    process::ChildGuard,
};

/// The addresses `control` gives `LoadBalancer` Services: on the switch's subnet, which
/// exists only inside the test's namespaces, clear of every host (control .10, nodes .20+,
/// client .100, router .254) and of the external IP trial's .201.
const LB_RANGE: &str = "192.168.50.220-192.168.50.223";

/// The busybox image every node gets by `ctl image import`.
const IMAGE: &str = "example.org/skiff/busybox:services";

/// The client: joins the cgroup whose `cgroup.procs` is argv[1] (so the node's socket hooks
/// see it), then makes `count` TCP requests or UDP exchanges to ip:port and prints one JSON
/// list of results: the peer its socket reports, the answer, or the error's errno name, and
/// the time each took. Mode `udpc` exchanges over a connected UDP socket (which sees ICMP
/// errors). Mode `until` connects every few milliseconds until it succeeds and prints when
/// (Unix time), and when it was first refused (the Service there, its endpoints not yet).
/// Mode `loop` makes TCP requests every few milliseconds until its stdin closes (at most
/// `count` seconds). Mode `rounds` makes `count` rounds, `idle` seconds apart, of `burst`
/// TCP requests from each of the `sources` addresses (argv: burst idle sources...) and
/// prints one `{source: [result...]}` per round.
const CLIENT: &str = r#"
import errno, json, os, select, socket, sys, time
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
mode, ip, port, count = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def tcp(timeout, source=None):
    s = socket.create_connection((ip, port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    try:
        peer = "%s:%d" % s.getpeername()
        s.sendall(b"GET / HTTP/1.0\r\nHost: skiff\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return {"peer": peer, "body": data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()}
    finally:
        s.close()

def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(b"ping", (ip, port))
        data, addr = s.recvfrom(4096)
        return {"peer": "%s:%d" % addr, "body": data.decode(errors="replace")}
    finally:
        s.close()

def udp_connected():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.connect((ip, port))
        s.send(b"ping")
        data = s.recv(4096)
        return {"peer": "%s:%d" % s.getpeername(), "body": data.decode(errors="replace")}
    finally:
        s.close()

def timed(call):
    start = time.monotonic()
    try:
        r = call()
    except OSError as e:
        r = {"error": errno.errorcode.get(e.errno, str(e))}
    r["ms"] = (time.monotonic() - start) * 1000
    return r

if mode == "loop":
    out = []
    deadline = time.time() + count
    while time.time() < deadline and not select.select([sys.stdin], [], [], 0)[0]:
        out.append(timed(lambda: tcp(3)))
        time.sleep(0.005)
    print(json.dumps(out))
    sys.exit(0)

if mode == "rounds":
    burst, idle, sources = int(sys.argv[6]), float(sys.argv[7]), sys.argv[8:]
    rounds = []
    for n in range(count):
        if n:
            time.sleep(idle)
        rounds.append({src: [timed(lambda: tcp(3, src)) for _ in range(burst)] for src in sources})
    print(json.dumps(rounds))
    sys.exit(0)

if mode == "until":
    refused = None
    deadline = time.time() + count
    while time.time() < deadline:
        try:
            tcp(0.02)
            print(json.dumps({"at": time.time(), "refused_at": refused}))
            sys.exit(0)
        except OSError as e:
            if e.errno == errno.ECONNREFUSED and refused is None:
                refused = time.time()
            time.sleep(0.001)
    print(json.dumps({"error": "never connected"}))
    sys.exit(0)

calls = {"tcp": lambda: tcp(3), "udp": udp, "udpc": udp_connected}
print(json.dumps([timed(calls[mode]) for _ in range(count)]))
"#;

/// The cluster with its `web` and `client` pods, one of each per node.
struct Fixture {
    cluster: Cluster,
    clients: Vec<PodAt>,
    python: PathBuf,
}

/// The Service datapaths the trials run against: one shared cluster each, in turn (the
/// first is dropped before the second starts), with the node flags that choose it. The
/// first mode's trials keep their plain names; the others' are prefixed `<mode>::`.
const MODES: &[(&str, &[&str])] = &[("ebpf", &[]), ("nftables", &["--proxy-mode", "nftables"])];

/// Trials that check what only the eBPF datapath does, with why: in the other modes they
/// are ignored, or a stand-in with the same name checks the rest (later trials rely on
/// what these leave behind).
const EBPF_ONLY: &[(&str, &str, Option<Body>)] = &[
    (
        "a_resolver_pinned_to_a_replaced_udp_backend_is_destroyed_and_reconnects_to_the_new_one",
        "the socket load balancer pins a connected UDP socket to its backend and destroys it \
         (ECONNABORTED); nftables keeps the socket on the Service address and moves the flow \
         by deleting its conntrack entry (with the conntrack tool, which the test machine \
         lacks)",
        None,
    ),
    (
        "a_service_without_endpoints_refuses_at_once",
        "its UDP half: the socket hook refuses at sendto; nftables rejects with an ICMP port \
         unreachable, which an unconnected UDP socket never sees. The stand-in checks the TCP \
         half",
        Some(refuses_tcp_without_endpoints),
    ),
    (
        "a_killed_node_keeps_serving_and_drops_services_deleted_while_it_was_down",
        "its last check reads the eBPF loader's line about finding its pinned maps; the \
         stand-in runs the trial and checks instead that the restarted node found and \
         adopted its nftables table",
        Some(killed_node_adopts_its_table),
    ),
];

/// The TCP half of `no_endpoints_refuses_at_once`, on the same Service (the metrics trial
/// counts its refusals).
fn refuses_tcp_without_endpoints(f: &Fixture) -> Result<()> {
    let ip = service(
        &f.cluster,
        "empty",
        "app: nobody",
        "",
        "[{name: http, port: 80}]",
    )?;
    wait_for(
        "two refused connections to a Service without endpoints",
        Duration::from_secs(20),
        || {
            let r = request(f, 0, &f.clients[0].netns, "tcp", (&ip, 80), 2)?;
            Ok(r.iter().all(|r| r.error == "ECONNREFUSED").then_some(()))
        },
    )
}

/// `killed_node_keeps_serving_and_drops_what_was_deleted` with its eBPF-only last check
/// replaced: the restarted node found its table.
fn killed_node_adopts_its_table(f: &Fixture) -> Result<()> {
    const EBPF_CHECK: &str = "the restarted node did not find its pinned maps";
    match killed_node_keeps_serving_and_drops_what_was_deleted(f) {
        Err(err) if err.to_string().starts_with(EBPF_CHECK) => {}
        Err(err) => return Err(err),
        Ok(()) => bail!("the restarted node logged the eBPF loader's line in nftables mode"),
    }
    let log = f.cluster.node(1).log();
    ensure!(
        log.lines()
            .map(without_colours)
            .filter(|l| l.contains("Service proxy in nftables mode"))
            .any(|l| l.contains("found=true")),
        "the restarted node did not find its nftables table"
    );
    Ok(())
}

/// The index in [`MODES`] of the cluster being run, and the cluster (or why it did not
/// start).
type Current = Option<(usize, Result<Arc<Fixture>, String>)>;

/// The cluster of the mode being run, started by its first trial.
struct Shared {
    current: Mutex<Current>,
    /// Packets that left through the machine's uplink, per dropped cluster.
    escaped: Mutex<Vec<String>>,
}

impl Shared {
    fn get(&self, mode: usize) -> Result<Arc<Fixture>, Failed> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|(m, _)| *m != mode) {
            self.drop_cluster(current.take());
        }
        let (_, fixture) = current.get_or_insert_with(|| {
            let started = start(MODES[mode].1).map_err(|err| format!("{err:#}"));
            (mode, started.map(Arc::new))
        });
        fixture.clone().map_err(|err| {
            Failed::from(format!(
                "the {} test cluster did not start: {err}",
                MODES[mode].0
            ))
        })
    }

    /// Checks that nothing escaped, then drops the cluster (nodes, control, hosts).
    fn drop_cluster(&self, current: Current) {
        if let Some((mode, Ok(f))) = current
            && let Err(err) = f.cluster.check_nothing_escaped()
        {
            self.escaped
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(format!("{}: {err:#}", MODES[mode].0));
        }
    }
}

fn start(node_args: &[&str]) -> Result<Fixture> {
    let c = Cluster::start(&ClusterConfig {
        control_args: vec!["--loadbalancer-ip-range".into(), LB_RANGE.into()],
        node_args: node_args.iter().map(|a| (*a).to_owned()).collect(),
        ..ClusterConfig::one_switch(3)
    })?;
    let pods = (|| {
        deploy(&c, "web", 3, true, &httpd("8080", "http"))?;
        deploy(&c, "client", 3, true, "command: [sleep, '3600']")?;
        // The image goes in once pods that use it are bound: a node whose disk is fuller
        // than the kubelet's image GC threshold removes an image no pod uses at once.
        wait_for("six pods bound", Duration::from_mins(1), || {
            let list = c.get_json("/api/v1/namespaces/default/pods")?;
            let bound = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["spec"]["nodeName"].is_string())
                .count();
            Ok((bound == 6).then_some(()))
        })?;
        c.import_busybox(IMAGE)?;
        let clients = running(&c, "app%3Dclient", 3)?;
        running(&c, "app%3Dweb", 3)?;
        anyhow::Ok(clients)
    })();
    let clients = match pods {
        Ok(clients) => clients,
        Err(err) => {
            let pods = c
                .get_json("/api/v1/namespaces/default/pods")
                .unwrap_or_default();
            bail!("{err:#}\npods: {pods:#}\n{}", c.logs());
        }
    };
    // The shim pyenv puts on PATH is a script: the client must be python itself, whose
    // own PID joins the cgroup.
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("running python3")?;
    let python = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    Ok(Fixture {
        cluster: c,
        clients,
        python,
    })
}

/// A busybox httpd answering its pod name on `port`, the container port named `name`.
fn httpd(port: &str, name: &str) -> String {
    format!(
        "command: [sh, -c, 'mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p {port} -h /tmp/www']
        ports: [{{name: {name}, containerPort: {port}}}]"
    )
}

/// A Deployment `name` (label `app: name`, plus `tier: name`'s prefix before `-`), one
/// container of the busybox image with `container` (YAML at the container's indentation).
fn deploy(c: &Cluster, name: &str, replicas: usize, spread: bool, container: &str) -> Result<()> {
    let affinity = if spread {
        format!(
            "affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - topologyKey: kubernetes.io/hostname
            labelSelector: {{matchLabels: {{app: {name}}}}}"
        )
    } else {
        String::new()
    };
    deploy_pods(c, name, replicas, &affinity, container)
}

/// [`deploy`] with `pod` (YAML at the pod spec's indentation) in the pod spec.
fn deploy_pods(c: &Cluster, name: &str, replicas: usize, pod: &str, container: &str) -> Result<()> {
    let tier = name.split('-').next().unwrap_or(name);
    let manifest = format!(
        r"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, tier: {tier}}}}}
    spec:
      {pod}
      containers:
      - name: main
        image: '{IMAGE}'
        imagePullPolicy: Never
        {container}
"
    );
    c.kubectl(&["apply", "-f", "-"], Some(&manifest))?;
    Ok(())
}

/// The `count` running pods the label selector (URL-encoded) picks, by node.
fn running(c: &Cluster, selector: &str, count: usize) -> Result<Vec<PodAt>> {
    wait_for(
        &format!("{count} running pods {selector}"),
        Duration::from_mins(2),
        || {
            let list = c.get_json(&format!(
                "/api/v1/namespaces/default/pods?labelSelector={selector}"
            ))?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let up: Vec<&Value> = items
                .iter()
                .filter(|p| {
                    p["status"]["phase"] == "Running"
                        && p["status"]["podIP"].is_string()
                        && p["metadata"]["deletionTimestamp"].is_null()
                        && p["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .collect();
            if up.len() != count || items.len() != count {
                return Ok(None);
            }
            let mut out = Vec::new();
            for p in up {
                out.push(c.pod_at(p)?);
            }
            out.sort_by_key(|p| p.node);
            Ok(Some(out))
        },
    )
}

/// `cgroup.procs` of a cgroup inside node `node`'s socket load balancer subtree, for test
/// clients (removed with the node's cgroups when the cluster goes).
fn clients_cgroup(c: &Cluster, node: usize) -> Result<PathBuf> {
    let dir = c.node(node).socket_lb_cgroup().join("test-clients");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join("cgroup.procs"))
}

/// The client command in network namespace `netns`, hooked by node `node`.
fn client_command(f: &Fixture, node: usize, netns: &Path, args: &[&str]) -> Result<Command> {
    let procs = clients_cgroup(&f.cluster, node)?;
    Ok(python_client(f, netns, &procs, args))
}

/// The client command in network namespace `netns`, writing its PID to `procs`.
fn python_client(f: &Fixture, netns: &Path, procs: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(&f.python)
        .args(["-c", CLIENT])
        .arg(procs)
        .args(args);
    cmd
}

/// One result of the client.
#[derive(Debug, Clone)]
struct Reply {
    peer: String,
    body: String,
    error: String,
    ms: f64,
}

/// Runs the client `count` times against `ip:port` over `mode` (`tcp`, `udp`).
fn request(
    f: &Fixture,
    node: usize,
    netns: &Path,
    mode: &str,
    target: (&str, u16),
    count: usize,
) -> Result<Vec<Reply>> {
    let procs = clients_cgroup(&f.cluster, node)?;
    run_client(f, netns, &procs, mode, target, count)
}

/// Runs the client from the outside client host, which no node's socket hooks see.
fn from_outside(f: &Fixture, mode: &str, target: (&str, u16), count: usize) -> Result<Vec<Reply>> {
    let netns = f.cluster.client().netns_path();
    // Its PID goes nowhere: it stays in the test's own cgroup.
    run_client(f, &netns, Path::new("/dev/null"), mode, target, count)
}

fn run_client(
    f: &Fixture,
    netns: &Path,
    procs: &Path,
    mode: &str,
    target: (&str, u16),
    count: usize,
) -> Result<Vec<Reply>> {
    let out = python_client(
        f,
        netns,
        procs,
        &[mode, target.0, &target.1.to_string(), &count.to_string()],
    )
    .output()
    .context("running the client")?;
    ensure!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "client output {:?} {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(replies(&list))
}

/// The client's JSON list of results.
fn replies(list: &Value) -> Vec<Reply> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|r| Reply {
            peer: r["peer"].as_str().unwrap_or_default().to_owned(),
            body: r["body"].as_str().unwrap_or_default().to_owned(),
            error: r["error"].as_str().unwrap_or_default().to_owned(),
            ms: r["ms"].as_f64().unwrap_or_default(),
        })
        .collect()
}

/// Waits until a request from the client pod on `node` succeeds, and returns it.
fn served(f: &Fixture, node: usize, mode: &str, target: (&str, u16)) -> Result<Reply> {
    let pod = &f.clients[node];
    wait_for(
        &format!("{mode} {}:{} from {}", target.0, target.1, pod.name),
        Duration::from_secs(20),
        || {
            let r = request(f, node, &pod.netns, mode, target, 1)?.remove(0);
            Ok(r.error.is_empty().then_some(r))
        },
    )
}

/// Creates (or replaces) objects from YAML.
fn apply(c: &Cluster, yaml: &str) -> Result<()> {
    c.kubectl(&["apply", "-f", "-"], Some(yaml))?;
    Ok(())
}

/// The Service's cluster IP.
fn cluster_ip(c: &Cluster, name: &str) -> Result<String> {
    let svc = c.get_json(&format!("/api/v1/namespaces/default/services/{name}"))?;
    svc["spec"]["clusterIP"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("service {name} has no clusterIP: {svc}"))
}

fn service(c: &Cluster, name: &str, selector: &str, extra: &str, ports: &str) -> Result<String> {
    apply(
        c,
        &format!(
            "
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{{selector}}}
  {extra}
  ports: {ports}
"
        ),
    )?;
    cluster_ip(c, name)
}

fn bodies(replies: &[Reply]) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for r in replies {
        ensure!(r.error.is_empty(), "a request failed: {r:?}");
        out.insert(r.body.clone());
    }
    Ok(out)
}

fn cluster_ip_from_every_node(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let ip = service(c, "web", "app: web", "", "[{port: 80, targetPort: 8080}]")?;
    let mut seen = BTreeSet::new();
    for node in 0..c.node_count() {
        let first = served(f, node, "tcp", (&ip, 80))?;
        ensure!(
            first.peer == format!("{ip}:80"),
            "getpeername shows {}, not the Service address",
            first.peer
        );
        let replies = request(f, node, &f.clients[node].netns, "tcp", (&ip, 80), 12)?;
        for r in &replies {
            ensure!(r.peer == format!("{ip}:80"), "peer {} in {r:?}", r.peer);
        }
        let names = bodies(&replies)?;
        ensure!(
            names.iter().all(|n| n.starts_with("web-")),
            "answers from something else than web pods: {names:?}"
        );
        seen.extend(names);
    }
    ensure!(
        seen.len() == 3,
        "36 connections reached {seen:?}, not all three web pods"
    );
    Ok(())
}

/// A container's own process (busybox wget), not a test client, reaches the Service: the
/// node puts containers where its socket hooks are.
fn container_reaches_cluster_ip(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let ip = cluster_ip(c, "web")?;
    apply(
        c,
        &format!(
            "
apiVersion: v1
kind: Pod
metadata: {{name: wget}}
spec:
  containers:
  - name: main
    image: '{IMAGE}'
    imagePullPolicy: Never
    command: [sh, -c, 'until wget -O- http://{ip}:80/; do sleep 0.2; done; sleep 3600']
"
        ),
    )?;
    let logs = || c.kubectl(&["logs", "wget"], None).unwrap_or_default();
    let answer = wait_for(
        "the wget container's answer",
        Duration::from_mins(1),
        || {
            Ok(logs()
                .lines()
                .find(|l| l.starts_with("web-"))
                .map(str::to_owned))
        },
    )
    .with_context(|| format!("the container's log:\n{}", logs()));
    c.kubectl(&["delete", "pod", "wget", "--wait=false"], None)?;
    answer?;
    Ok(())
}

/// Service `name` (UDP 53 -> 5353) without selector over the one endpoint `backend`, in
/// the EndpointSlice `<name>-by-hand` (replaced when applied again).
fn udp_service_by_hand(c: &Cluster, name: &str, backend: &PodAt) -> Result<()> {
    apply(
        c,
        &format!(
            "
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  ports: [{{name: dns, port: 53, protocol: UDP, targetPort: 5353}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-by-hand
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: dns, port: 5353, protocol: UDP}}]
endpoints:
- addresses: ['{}']
  nodeName: {}
  conditions: {{ready: true}}
",
            backend.ip,
            c.node_hosts()[backend.node].label()
        ),
    )
}

fn udp_cluster_ip_answers_from_the_service_address(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    // The backend is a socket of this test in the client pod on node 1, behind a Service
    // without selector and an EndpointSlice written by hand.
    let backend = &f.clients[1];
    udp_service_by_hand(c, "dns", backend)?;
    let ip = cluster_ip(c, "dns")?;
    let server = in_netns(&backend.netns, || UdpSocket::bind((backend.ip, 5353)))??;
    server.set_read_timeout(Some(Duration::from_millis(200)))?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (reply, sources) = std::thread::scope(|s| {
        let echo = s.spawn(|| {
            let mut sources = BTreeSet::new();
            let mut buf = [0; 64];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, peer)) = server.recv_from(&mut buf)
                    && &buf[..n] == b"ping"
                {
                    sources.insert(peer.ip());
                    let _ = server.send_to(b"pong", peer);
                }
            }
            sources
        });
        let reply = served(f, 0, "udp", (&ip, 53));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sources = echo.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (reply, sources)
    });
    let reply = reply?;
    ensure!(reply.body == "pong", "answer {reply:?}");
    ensure!(
        reply.peer == format!("{ip}:53"),
        "recvfrom shows {}, not the Service address {ip}:53",
        reply.peer
    );
    let client_ip = std::net::IpAddr::V4(f.clients[0].ip);
    ensure!(
        sources.contains(&client_ip),
        "the backend saw {sources:?}, not the client pod's own address {client_ip}"
    );
    Ok(())
}

/// A resolver: joins the cgroup whose `cgroup.procs` is argv[1], connects one UDP socket to
/// ip:port and asks once (`reply=<answer> peer=<getpeername>`); then for each line on stdin
/// asks again on the same socket (`reply=<answer>`), or, when the socket has an error
/// (`SO_ERROR`, as a resolver blocked in recv sees it) or fails, prints `error=<errno name>`,
/// connects again and asks (`again=<answer>`).
const RESOLVER: &str = r#"
import errno, os, socket, sys
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
ip, port = sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((ip, port))

def ask():
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
    s.send(b"ping")
    return s.recv(4096).decode(errors="replace")

def name(e):
    return errno.errorcode.get(e.errno, str(e))

try:
    print("reply=%s peer=%s:%d" % ((ask(),) + s.getpeername()), flush=True)
except OSError as e:
    print("error=" + name(e), flush=True)
for _ in sys.stdin:
    try:
        print("reply=" + ask(), flush=True)
    except OSError as e:
        print("error=" + name(e), flush=True)
        try:
            s.connect((ip, port))
            print("again=" + ask(), flush=True)
        except OSError as e:
            print("again-error=" + name(e), flush=True)
"#;

/// Answers every datagram on `server` with `token` until `stop`.
fn answer_udp(server: &UdpSocket, token: &str, stop: &AtomicBool) {
    let mut buf = [0; 64];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = server.recv_from(&mut buf) {
            let _ = server.send_to(token.as_bytes(), peer);
        }
    }
}

fn resolver_reconnects_after_its_backend_is_replaced(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    // Two backends: sockets of this test in the client pods of nodes 1 and 2; the resolver
    // in the client pod of node 0.
    let (old, new) = (&f.clients[1], &f.clients[2]);
    let bind = |pod: &PodAt| -> Result<UdpSocket> {
        let socket = in_netns(&pod.netns, || UdpSocket::bind((pod.ip, 5353)))??;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(socket)
    };
    let (old_server, new_server) = (bind(old)?, bind(new)?);
    udp_service_by_hand(c, "resolver", old)?;
    let ip = cluster_ip(c, "resolver")?;
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| answer_udp(&old_server, "old", &stop));
        s.spawn(|| answer_udp(&new_server, "new", &stop));
        let result = resolver_trial(f, &ip, new);
        stop.store(true, Ordering::Relaxed);
        result
    });
    c.kubectl(
        &[
            "delete",
            "service/resolver",
            "endpointslice/resolver-by-hand",
        ],
        None,
    )?;
    result
}

fn resolver_trial(f: &Fixture, ip: &str, new: &PodAt) -> Result<()> {
    let c = &f.cluster;
    served(f, 0, "udp", (ip, 53))?;
    let procs = clients_cgroup(c, 0)?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", f.clients[0].netns.display()))
        .arg("--")
        .arg(&f.python)
        .args(["-c", RESOLVER])
        .arg(&procs)
        .args([ip, "53"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut resolver = ChildGuard::spawn(&mut cmd)?;
    let mut stdin = resolver
        .child_mut()
        .stdin
        .take()
        .context("resolver stdin")?;
    let stdout = resolver
        .child_mut()
        .stdout
        .take()
        .context("resolver stdout")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut next = move || -> Result<String> { Ok(lines.next().context("the resolver exited")??) };
    let first = next()?;
    ensure!(first == format!("reply=old peer={ip}:53"), "first: {first}");

    udp_service_by_hand(c, "resolver", new)?;
    // Until the node syncs, the pinned socket still reaches the old backend (it is up);
    // then its socket is destroyed and a new connect reaches the new one.
    let (error, again) = wait_for(
        "the resolver's socket destroyed",
        Duration::from_secs(20),
        || {
            writeln!(stdin)?;
            let line = next()?;
            if line == "reply=old" {
                return Ok(None);
            }
            Ok(Some((line, next()?)))
        },
    )?;
    ensure!(error == "error=ECONNABORTED", "the resolver saw {error:?}");
    ensure!(again == "again=new", "after connecting again: {again:?}");
    Ok(())
}

fn no_endpoints_refuses_at_once(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let ip = service(
        c,
        "empty",
        "app: nobody",
        "",
        "[{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]",
    )?;
    let tcp = wait_for(
        "a refused connection to a Service without endpoints",
        Duration::from_secs(20),
        || {
            let r = request(f, 0, &f.clients[0].netns, "tcp", (&ip, 80), 1)?.remove(0);
            Ok((r.error == "ECONNREFUSED").then_some(r))
        },
    )?;
    let udp = request(f, 0, &f.clients[0].netns, "udp", (&ip, 53), 1)?.remove(0);
    ensure!(udp.error == "ECONNREFUSED", "UDP sendto: {udp:?}");
    eprintln!(
        "services: refused at connect after {:.2} ms (TCP), at sendto after {:.2} ms (UDP)",
        tcp.ms, udp.ms
    );
    Ok(())
}

fn scale_to_zero_and_back(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let ip = service(
        c,
        "scaled",
        "app: scaled",
        "",
        "[{port: 80, targetPort: 8080}]",
    )?;
    deploy(c, "scaled", 2, false, &httpd("8080", "http"))?;
    running(c, "app%3Dscaled", 2)?;
    served(f, 2, "tcp", (&ip, 80))?;
    c.kubectl(&["scale", "deployment", "scaled", "--replicas=0"], None)?;
    wait_for(
        "refused connections once scaled to 0",
        Duration::from_mins(1),
        || {
            let r = request(f, 2, &f.clients[2].netns, "tcp", (&ip, 80), 1)?.remove(0);
            Ok((r.error == "ECONNREFUSED").then_some(()))
        },
    )?;
    c.kubectl(&["scale", "deployment", "scaled", "--replicas=1"], None)?;
    let pods = running(c, "app%3Dscaled", 1)?;
    let r = served(f, 2, "tcp", (&ip, 80))?;
    ensure!(
        r.body == pods[0].name,
        "answer {r:?} from a pod not running"
    );
    Ok(())
}

fn named_target_port_per_pod(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    // Two Deployments name their port "web" on different numbers: each endpoint gets its
    // own.
    deploy(c, "named-a", 1, false, &httpd("8081", "web"))?;
    deploy(c, "named-b", 1, false, &httpd("9090", "web"))?;
    running(c, "tier%3Dnamed", 2)?;
    let ip = service(
        c,
        "named",
        "tier: named",
        "",
        "[{port: 80, targetPort: web}]",
    )?;
    let names = wait_for(
        "both named-port Deployments answering",
        Duration::from_secs(20),
        || {
            let replies = request(f, 1, &f.clients[1].netns, "tcp", (&ip, 80), 16)?;
            let names = bodies(&replies)?;
            Ok((names.len() == 2).then_some(names))
        },
    )?;
    ensure!(
        names.iter().any(|n| n.starts_with("named-a-"))
            && names.iter().any(|n| n.starts_with("named-b-")),
        "{names:?}"
    );
    Ok(())
}

fn client_ip_affinity(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let ip = service(
        c,
        "sticky",
        "app: web",
        "sessionAffinity: ClientIP",
        "[{port: 80, targetPort: 8080}]",
    )?;
    served(f, 0, "tcp", (&ip, 80))?;
    for node in 0..c.node_count() {
        let replies = request(f, node, &f.clients[node].netns, "tcp", (&ip, 80), 12)?;
        let names = bodies(&replies)?;
        ensure!(
            names.len() == 1,
            "the client on node {node} reached {names:?} through a ClientIP Service"
        );
    }
    // The same backends without affinity spread (so one backend above is affinity's work).
    let web = cluster_ip(c, "web")?;
    let spread = bodies(&request(f, 0, &f.clients[0].netns, "tcp", (&web, 80), 12)?)?;
    ensure!(spread.len() > 1, "without affinity: {spread:?}");
    Ok(())
}

/// The node port the API server gave port `index` of Service `name`.
fn node_port(c: &Cluster, name: &str, index: usize) -> Result<u16> {
    let svc = c.get_json(&format!("/api/v1/namespaces/default/services/{name}"))?;
    svc["spec"]["ports"][index]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("no nodePort: {svc}"))
}

fn node_port_from_host_processes(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    service(
        c,
        "web-np",
        "app: web",
        "type: NodePort",
        "[{port: 80, targetPort: 8080}]",
    )?;
    let node_port = node_port(c, "web-np", 0)?;
    let host = &c.node_hosts()[0];
    let address = host.address().to_string();
    for target in ["127.0.0.1", address.as_str()] {
        let r = wait_for(
            &format!("NodePort {target}:{node_port} from node-0's host"),
            Duration::from_secs(20),
            || {
                let r = request(f, 0, &host.netns_path(), "tcp", (target, node_port), 1)?.remove(0);
                Ok(r.error.is_empty().then_some(r))
            },
        )?;
        ensure!(r.body.starts_with("web-"), "{target}: {r:?}");
        ensure!(
            r.peer == format!("{target}:{node_port}"),
            "{target}: getpeername shows {}",
            r.peer
        );
    }
    // 127.0.0.1 is the host's only: a pod's loopback stays its own.
    let r = request(
        f,
        0,
        &f.clients[0].netns,
        "tcp",
        ("127.0.0.1", node_port),
        1,
    )?
    .remove(0);
    ensure!(
        r.error == "ECONNREFUSED",
        "a pod's own 127.0.0.1:{node_port} answered: {r:?}"
    );
    Ok(())
}

fn unsupported_protocol_event(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let ip = service(
        c,
        "signalling",
        "app: web",
        "",
        "[{name: sig, port: 3868, protocol: SCTP, targetPort: 3868}, {name: http, port: 80, targetPort: 8080}]",
    )?;
    let message = wait_for(
        "an UnsupportedProtocol event on the Service",
        Duration::from_secs(20),
        || {
            let events = c.get_json("/api/v1/namespaces/default/events")?;
            Ok(events["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| {
                    e["involvedObject"]["name"] == "signalling"
                        && e["reason"] == "UnsupportedProtocol"
                        && e["type"] == "Warning"
                })
                .and_then(|e| e["message"].as_str().map(str::to_owned)))
        },
    )?;
    ensure!(message.contains("SCTP"), "{message}");
    // The TCP port is still served.
    served(f, 0, "tcp", (&ip, 80))?;
    Ok(())
}

fn internal_traffic_policy_local(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let web = running(c, "app%3Dweb", 3)?;
    let ip = service(
        c,
        "web-local",
        "app: web",
        "internalTrafficPolicy: Local",
        "[{port: 80, targetPort: 8080}]",
    )?;
    served(f, 0, "tcp", (&ip, 80))?;
    for node in 0..c.node_count() {
        let names = bodies(&request(
            f,
            node,
            &f.clients[node].netns,
            "tcp",
            (&ip, 80),
            8,
        )?)?;
        let local: BTreeSet<String> = web
            .iter()
            .filter(|p| p.node == node)
            .map(|p| p.name.clone())
            .collect();
        ensure!(
            names == local,
            "node {node}'s client reached {names:?}, its local web pods are {local:?}"
        );
    }
    Ok(())
}

fn external_ip_from_host_processes(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    // An address on the test switch's subnet that no host has: untranslated, a packet to
    // it would stay on the switch.
    service(
        c,
        "web-ext",
        "app: web",
        "externalIPs: ['192.168.50.200']",
        "[{port: 8000, targetPort: 8080}]",
    )?;
    let host = &c.node_hosts()[2];
    let r = wait_for(
        "externalIP 192.168.50.200:8000 from node-2's host",
        Duration::from_secs(20),
        || {
            let r =
                request(f, 2, &host.netns_path(), "tcp", ("192.168.50.200", 8000), 1)?.remove(0);
            Ok(r.error.is_empty().then_some(r))
        },
    )?;
    ensure!(r.body.starts_with("web-"), "{r:?}");
    ensure!(
        r.peer == "192.168.50.200:8000",
        "getpeername shows {}",
        r.peer
    );
    Ok(())
}

/// The port the peer echo servers listen on, TCP and UDP, in the client pods.
const ECHO_PORT: u16 = 9000;

/// Servers in pods that answer every TCP connection and UDP datagram with
/// `<pod name> <the address they saw the client at>`; stopped on drop.
struct PeerEcho {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl PeerEcho {
    fn start(pods: &[PodAt]) -> Result<Self> {
        let mut echo = Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for pod in pods {
            let tcp = in_netns(&pod.netns, || TcpListener::bind((pod.ip, ECHO_PORT)))??;
            let udp = in_netns(&pod.netns, || UdpSocket::bind((pod.ip, ECHO_PORT)))??;
            tcp.set_nonblocking(true)?;
            udp.set_read_timeout(Some(Duration::from_millis(50)))?;
            let (name, stop) = (pod.name.clone(), echo.stop.clone());
            echo.threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((mut conn, peer)) => {
                            // The request is read before the answer and the close, so the
                            // close is a FIN, not a reset over unread data.
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                            let mut buf = [0; 512];
                            let _ = conn.read(&mut buf);
                            let _ = conn.write_all(format!("{name} {}", peer.ip()).as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
            let (name, stop) = (pod.name.clone(), echo.stop.clone());
            echo.threads.push(std::thread::spawn(move || {
                let mut buf = [0; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
                    }
                }
            }));
        }
        Ok(echo)
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A Service `name` without selector, TCP and UDP on [`ECHO_PORT`], its endpoints the given
/// pods (written by hand, with their nodes), and `extra` in its spec. Returns the node port
/// of TCP and of UDP.
fn echo_service(c: &Cluster, name: &str, extra: &str, pods: &[&PodAt]) -> Result<(u16, u16)> {
    let mut endpoints = String::new();
    for p in pods {
        writeln!(
            endpoints,
            "- addresses: ['{}']\n  nodeName: {}\n  conditions: {{ready: true}}",
            p.ip,
            c.node_hosts()[p.node].label()
        )?;
    }
    apply(
        c,
        &format!(
            "
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  {extra}
  ports:
  - {{name: tcp, port: {ECHO_PORT}, protocol: TCP, targetPort: {ECHO_PORT}}}
  - {{name: udp, port: {ECHO_PORT}, protocol: UDP, targetPort: {ECHO_PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-by-hand
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports:
- {{name: tcp, port: {ECHO_PORT}, protocol: TCP}}
- {{name: udp, port: {ECHO_PORT}, protocol: UDP}}
endpoints:
{endpoints}"
        ),
    )?;
    Ok((node_port(c, name, 0)?, node_port(c, name, 1)?))
}

/// Splits an echo answer into the pod that gave it and the address it saw.
fn echoed(r: &Reply) -> Result<(String, String)> {
    ensure!(r.error.is_empty(), "a request failed: {r:?}");
    let (pod, seen) = r
        .body
        .split_once(' ')
        .with_context(|| format!("answer {r:?}"))?;
    Ok((pod.to_owned(), seen.to_owned()))
}

/// Waits until the outside client host gets an answer from `target`.
fn served_outside(f: &Fixture, mode: &str, target: (&str, u16)) -> Result<Reply> {
    wait_for(
        &format!("{mode} {}:{} from the client host", target.0, target.1),
        Duration::from_secs(20),
        || {
            let r = from_outside(f, mode, target, 1)?.remove(0);
            Ok(r.error.is_empty().then_some(r))
        },
    )
}

/// From the outside client host, every node's address and node port reaches the backends on
/// every node, over TCP and UDP: a local backend sees the client, one on another node sees
/// the node the client dialled (SNAT), and the answers come from the node port.
fn node_port_from_outside(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let _echo = PeerEcho::start(&f.clients)?;
    let pods: Vec<&PodAt> = f.clients.iter().collect();
    let (tcp, udp) = echo_service(c, "echo-np", "type: NodePort", &pods)?;
    let outside = c.client().address().to_string();
    for (node, host) in c.node_hosts().iter().enumerate() {
        let address = host.address().to_string();
        for (mode, port) in [("tcp", tcp), ("udp", udp)] {
            served_outside(f, mode, (&address, port))?;
            let replies = from_outside(f, mode, (&address, port), 30)?;
            let mut reached = BTreeSet::new();
            for r in &replies {
                let (pod, seen) = echoed(r)?;
                ensure!(
                    r.peer == format!("{address}:{port}"),
                    "{mode} to node-{node}: the answer came from {}",
                    r.peer
                );
                let local = f.clients.iter().any(|p| p.name == pod && p.node == node);
                let expect = if local { &outside } else { &address };
                ensure!(
                    &seen == expect,
                    "{mode} to node-{node}: {pod} saw the client at {seen}, not {expect}"
                );
                reached.insert(pod);
            }
            ensure!(
                reached.len() == f.clients.len(),
                "{mode} to node-{node}:{port} reached only {reached:?}"
            );
        }
    }
    Ok(())
}

/// `externalTrafficPolicy: Local`: only nodes with an endpoint of their own answer from
/// outside, always with a local one, and the backend sees the client host's address.
fn external_traffic_policy_local_from_outside(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let _echo = PeerEcho::start(&f.clients)?;
    // Endpoints on node-0 and node-1; node-2 has none.
    let pods: Vec<&PodAt> = f.clients.iter().filter(|p| p.node < 2).collect();
    let (tcp, udp) = echo_service(
        c,
        "echo-local",
        "type: NodePort\n  externalTrafficPolicy: Local",
        &pods,
    )?;
    let outside = c.client().address().to_string();
    for (node, host) in c.node_hosts().iter().enumerate().take(2) {
        let address = host.address().to_string();
        for (mode, port) in [("tcp", tcp), ("udp", udp)] {
            served_outside(f, mode, (&address, port))?;
            for r in from_outside(f, mode, (&address, port), 6)? {
                let (pod, seen) = echoed(&r)?;
                ensure!(
                    f.clients.iter().any(|p| p.name == pod && p.node == node),
                    "{mode} to node-{node} reached {pod}, not node-{node}'s own endpoint"
                );
                ensure!(
                    seen == outside,
                    "{mode} to node-{node}: the backend saw {seen}, not the client {outside}"
                );
            }
        }
    }
    let address = c.node_hosts()[2].address().to_string();
    for r in from_outside(f, "tcp", (&address, tcp), 3)? {
        ensure!(
            !r.error.is_empty(),
            "node-2 has no local endpoint, yet answered {r:?}"
        );
    }
    Ok(())
}

/// A NodePort Service without endpoints refuses a connection from outside at once (a TCP
/// reset from the node's uplink program, not a timeout).
fn node_port_without_endpoints_refuses_outside(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    service(
        c,
        "empty-np",
        "app: nobody",
        "type: NodePort",
        "[{port: 80, targetPort: 8080}]",
    )?;
    let port = node_port(c, "empty-np", 0)?;
    let address = c.node_hosts()[1].address().to_string();
    let r = wait_for(
        "a refused connection from outside to a NodePort without endpoints",
        Duration::from_secs(20),
        || {
            let r = from_outside(f, "tcp", (&address, port), 1)?.remove(0);
            Ok((r.error == "ECONNREFUSED").then_some(r))
        },
    )?;
    eprintln!(
        "services: a NodePort without endpoints refused the outside client after {:.2} ms",
        r.ms
    );
    Ok(())
}

/// `GET /` on `address:port` from the outside client host: the status code and the body.
fn get_from_outside(c: &Cluster, address: Ipv4Addr, port: u16) -> Result<(u16, String)> {
    let resp = c.client().run(|| -> Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((address, port)),
            Duration::from_secs(3),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        Ok(resp)
    })?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("answer {resp:?}"))?;
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// A `LoadBalancer` with `externalTrafficPolicy: Local` gets a health check node port from
/// the API server, and every node answers on it: 200 and its local endpoint count where it
/// has endpoints, 503 where it has none, following the endpoints as they change.
fn health_check_node_port_answers(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let extra = "type: LoadBalancer\n  externalTrafficPolicy: Local";
    let on = |nodes: &[usize]| -> Vec<&PodAt> {
        f.clients
            .iter()
            .filter(|p| nodes.contains(&p.node))
            .collect()
    };
    echo_service(c, "echo-lb", extra, &on(&[0, 1]))?;
    let svc = c.get_json("/api/v1/namespaces/default/services/echo-lb")?;
    let port = svc["spec"]["healthCheckNodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("no healthCheckNodePort: {svc}"))?;
    let expect = |node: usize, status: u16, count: u64| -> Result<()> {
        let address = c.node_hosts()[node].address();
        let (code, body) = wait_for(
            &format!("{status} from node-{node}'s health check port {port}"),
            Duration::from_secs(20),
            || {
                let answer = get_from_outside(c, address, port).ok();
                Ok(answer.filter(|(code, _)| *code == status))
            },
        )?;
        let json: Value =
            serde_json::from_str(&body).with_context(|| format!("{code} body {body:?}"))?;
        ensure!(
            json["service"] == json!({"namespace": "default", "name": "echo-lb"})
                && json["localEndpoints"] == count,
            "node-{node} answered {code} {json}"
        );
        Ok(())
    };
    expect(0, 200, 1)?;
    expect(1, 200, 1)?;
    expect(2, 503, 0)?;
    // node-1's endpoint goes: it turns unhealthy.
    echo_service(c, "echo-lb", extra, &on(&[0]))?;
    expect(1, 503, 0)?;
    expect(0, 200, 1)?;
    Ok(())
}

/// Removes a route from a host when dropped.
struct RouteGuard<'a> {
    host: &'a skiff_tests::cluster::Host,
    to: String,
}

impl Drop for RouteGuard<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.host.ip(&["route", "del", &self.to]) {
            eprintln!("cleanup: {err:#}");
        }
    }
}

/// An externalIP routed to a node by the outside client host reaches the backends.
fn external_ip_from_outside(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    // An address on the switch's subnet no host has; the client host routes it via node-0
    // (inside the test's namespaces only).
    let ip = "192.168.50.201";
    service(
        c,
        "web-ext-out",
        "app: web",
        &format!("externalIPs: ['{ip}']"),
        "[{port: 8001, targetPort: 8080}]",
    )?;
    let client = c.client();
    let via = c.node_hosts()[0].address().to_string();
    let to = format!("{ip}/32");
    client.ip(&["route", "add", &to, "via", &via])?;
    let _route = RouteGuard { host: client, to };
    let r = served_outside(f, "tcp", (ip, 8001))?;
    ensure!(r.body.starts_with("web-"), "{r:?}");
    ensure!(
        r.peer == format!("{ip}:8001"),
        "getpeername shows {}",
        r.peer
    );
    let names = bodies(&from_outside(f, "tcp", (ip, 8001), 24)?)?;
    ensure!(names.len() > 1, "the externalIP reached only {names:?}");
    Ok(())
}

/// SIGKILL a node: its pinned datapath keeps serving while it is down (the socket path to a
/// cluster IP, and the uplink's TC programs to a node port from outside); a Service deleted
/// meanwhile is gone from its maps once it is back, and the others stay.
fn killed_node_keeps_serving_and_drops_what_was_deleted(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let survivor = service(
        c,
        "survivor",
        "app: web",
        "type: NodePort",
        "[{port: 80, targetPort: 8080}]",
    )?;
    let node_port = node_port(c, "survivor", 0)?;
    let node_address = c.node_hosts()[1].address().to_string();
    let doomed = service(
        c,
        "doomed",
        "app: web",
        "",
        "[{port: 80, targetPort: 8080}]",
    )?;
    served(f, 1, "tcp", (&survivor, 80))?;
    served(f, 1, "tcp", (&doomed, 80))?;
    served_outside(f, "tcp", (&node_address, node_port))?;
    c.kill_node(1);
    let down = request(f, 1, &f.clients[1].netns, "tcp", (&survivor, 80), 4);
    let down_outside = from_outside(f, "tcp", (&node_address, node_port), 4);
    c.kubectl(&["delete", "service", "doomed"], None)?;
    let restarted = c.restart_node(1);
    let down = down?;
    ensure!(
        bodies(&down).is_ok_and(|b| b.iter().all(|n| n.starts_with("web-"))),
        "with its node daemon dead, the client got {down:?}"
    );
    let down_outside = down_outside?;
    ensure!(
        bodies(&down_outside).is_ok_and(|b| b.iter().all(|n| n.starts_with("web-"))),
        "with its node daemon dead, the node port from outside gave {down_outside:?}"
    );
    restarted?;
    let gone = wait_for(
        "the deleted Service's address to stop answering on node-1",
        Duration::from_secs(30),
        || {
            let r = request(f, 1, &f.clients[1].netns, "tcp", (&doomed, 80), 1)?.remove(0);
            Ok((!r.error.is_empty()).then_some(r))
        },
    )?;
    ensure!(
        gone.error != "ECONNREFUSED",
        "a deleted Service should be no frontend at all, not one without endpoints: {gone:?}"
    );
    served(f, 1, "tcp", (&survivor, 80))?;
    served_outside(f, "tcp", (&node_address, node_port))?;
    let log = c.node(1).log();
    ensure!(
        log.lines()
            .map(without_colours)
            .filter(|l| l.contains("socket load balancer attached"))
            .any(|l| l.contains("restarted=true") && l.contains("uplinks=[\"eth0\"]")),
        "the restarted node did not find its pinned maps, or left its uplink"
    );
    Ok(())
}

/// The `LoadBalancer` address of Service `name`, once `control` has given it one, with its
/// `ipMode`.
fn load_balancer_ip(c: &Cluster, name: &str) -> Result<(String, String)> {
    wait_for(
        &format!("an address for {name}"),
        Duration::from_secs(30),
        || {
            let svc = c.get_json(&format!("/api/v1/namespaces/default/services/{name}"))?;
            let ingress = &svc["status"]["loadBalancer"]["ingress"][0];
            Ok(ingress["ip"].as_str().map(|ip| {
                let mode = ingress["ipMode"].as_str().unwrap_or_default();
                (ip.to_owned(), mode.to_owned())
            }))
        },
    )
}

/// The node holding the announcement Lease of `ip`, if one does.
fn announcer(c: &Cluster, ip: &str) -> Option<String> {
    let lease = c.get_json(&format!(
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-lb-{}",
        ip.replace('.', "-")
    ));
    lease
        .ok()
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

/// The Ethernet address the client host has for `ip` in its neighbour table (it resolves
/// `ip` by ARP on the switch).
fn client_neighbour(c: &Cluster, ip: &str) -> Result<String> {
    let out = c.client().output("ip", &["-j", "neigh", "show", ip])?;
    let json: Value = serde_json::from_slice(&out.stdout)?;
    Ok(json[0]["lladdr"].as_str().unwrap_or_default().to_owned())
}

/// The Ethernet address of node `node`'s `eth0`.
fn node_mac(c: &Cluster, node: usize) -> Result<String> {
    let out = c.node_hosts()[node].output("ip", &["-j", "link", "show", "eth0"])?;
    let json: Value = serde_json::from_slice(&out.stdout)?;
    Ok(json[0]["address"].as_str().unwrap_or_default().to_owned())
}

/// A `LoadBalancer` Service gets an address from `--loadbalancer-ip-range`; the client
/// host on the switch resolves it by ARP to the one node holding its Lease and reaches the
/// backends through that node's TC path; SIGKILL that node and another takes the Lease,
/// tells the switch by gratuitous ARP, and serves; deleting the Service frees the address
/// for the next Service that asks for it.
fn load_balancer_address_announced_and_moved(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    service(
        c,
        "web-lb",
        "app: web",
        "type: LoadBalancer",
        "[{port: 80, targetPort: 8080}]",
    )?;
    let (ip, mode) = load_balancer_ip(c, "web-lb")?;
    let last: u8 = ip.rsplit('.').next().unwrap_or_default().parse()?;
    ensure!(
        ip.starts_with("192.168.50.") && (220..=223).contains(&last) && mode == "VIP",
        "web-lb got {ip} ({mode}), not a VIP from {LB_RANGE}"
    );
    let reply = served_outside(f, "tcp", (&ip, 80))?;
    ensure!(reply.body.starts_with("web-"), "{ip}:80 answered {reply:?}");
    let names: Vec<String> = (0..c.node_count())
        .map(|i| c.node(i).name().to_owned())
        .collect();
    let holder = wait_for(
        "a node to announce the address",
        Duration::from_secs(20),
        || Ok(announcer(c, &ip)),
    )?;
    let first = names
        .iter()
        .position(|n| *n == holder)
        .with_context(|| format!("the Lease holder {holder} is no node"))?;
    let mac = client_neighbour(c, &ip)?;
    ensure!(
        mac == node_mac(c, first)?,
        "the client resolved {ip} to {mac}, not to the announcing node-{first}"
    );
    c.kill_node(first);
    let moved = (|| {
        let next = wait_for(
            "another node to take the address",
            Duration::from_secs(30),
            || Ok(announcer(c, &ip).filter(|h| *h != holder)),
        )?;
        let next = names
            .iter()
            .position(|n| *n == next)
            .context("no node holds it")?;
        let mac = node_mac(c, next)?;
        // The gratuitous ARP of the new holder, not a timeout, moves the client over.
        wait_for(
            "the client to learn the new announcer",
            Duration::from_secs(10),
            || Ok((client_neighbour(c, &ip)? == mac).then_some(())),
        )?;
        let reply = served_outside(f, "tcp", (&ip, 80))?;
        ensure!(
            reply.body.starts_with("web-"),
            "after the move {ip}:80 answered {reply:?}"
        );
        anyhow::Ok(())
    })();
    let restarted = c.restart_node(first);
    moved?;
    restarted?;
    c.kubectl(&["delete", "service", "web-lb"], None)?;
    service(
        c,
        "web-lb-again",
        "app: web",
        &format!("type: LoadBalancer\n  loadBalancerIP: {ip}"),
        "[{port: 80, targetPort: 8080}]",
    )?;
    let (again, _) = load_balancer_ip(c, "web-lb-again")?;
    ensure!(
        again == ip,
        "the freed {ip} was not given again, {again} was"
    );
    served_outside(f, "tcp", (&ip, 80))?;
    c.kubectl(&["delete", "service", "web-lb-again"], None)?;
    Ok(())
}

/// A log line without the terminal colour codes its fields carry.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // `ESC [ ... m`
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The node's `/metrics` after the trials above: per-Service translations and refusals.
fn metrics_count_per_service(f: &Fixture) -> Result<()> {
    let text = f.cluster.node_endpoint_get(0, "/metrics")?;
    let value = |name: &str, service: &str| -> Option<u64> {
        let prefix = format!("{name}{{namespace=\"default\",service=\"{service}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    };
    let web = value("skiff_proxy_translations_total", "web");
    ensure!(
        web.is_some_and(|n| n >= 12),
        "web translations {web:?}:\n{text}"
    );
    let refused = value("skiff_proxy_no_endpoint_refusals_total", "empty");
    ensure!(
        refused.is_some_and(|n| n >= 2),
        "empty refusals {refused:?}:\n{text}"
    );
    ensure!(
        text.contains("skiff_proxy_last_sync_seconds "),
        "no sync duration:\n{text}"
    );
    Ok(())
}

/// The time from the API accepting a new Service to a client's first connection through
/// it, printed (not asserted: performance is for benchmarks).
fn new_service_latency(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    // A fixed address in the Service range, so the client can dial it before it exists.
    let ip = "10.111.222.33";
    let mut client = ChildGuard::spawn(
        client_command(f, 0, &f.clients[0].netns, &["until", ip, "80", "30"])?
            .stdout(Stdio::piped()),
    )?;
    // Let it start dialling first: its start-up is not part of the measure.
    std::thread::sleep(Duration::from_millis(500));
    let body = serde_json::to_vec(&json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "fresh"},
        "spec": {"clusterIP": ip, "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))?;
    let sent = now();
    let (code, answer) = c.control_host().run(|| {
        c.control().http(
            "POST",
            "/api/v1/namespaces/default/services",
            "application/json",
            &body,
        )
    })?;
    let accepted = now();
    ensure!(code == 201, "creating the Service: {code} {answer}");
    let mut out = String::new();
    client
        .child_mut()
        .stdout
        .take()
        .context("the client's output")?
        .read_to_string(&mut out)?;
    let result: Value =
        serde_json::from_str(&out).with_context(|| format!("client output {out:?}"))?;
    let Some(at) = result["at"].as_f64() else {
        bail!("the client never connected: {result}");
    };
    let ms = |t: f64| (t - accepted) * 1000.0;
    let refused = result["refused_at"]
        .as_f64()
        .map_or_else(|| "never".to_owned(), |t| format!("{:.1} ms", ms(t)));
    eprintln!(
        "services: after the API accepted a new Service (the request took {:.1} ms), its \
         address refused connections (no endpoints yet) from {refused} and answered from \
         {:.1} ms (the client redials every ~1 ms)",
        (accepted - sent) * 1000.0,
        ms(at)
    );
    Ok(())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Waits until `target` stops answering the client pod on `node` (any error will do: the
/// address is no frontend any more).
fn stops_answering(f: &Fixture, node: usize, target: (&str, u16)) -> Result<Reply> {
    wait_for(
        &format!(
            "{}:{} to stop answering node-{node}'s client",
            target.0, target.1
        ),
        Duration::from_secs(20),
        || {
            let r = request(f, node, &f.clients[node].netns, "tcp", target, 1)?.remove(0);
            Ok((!r.error.is_empty()).then_some(r))
        },
    )
}

/// Waits until `target` stops answering the outside client host.
fn stops_answering_outside(f: &Fixture, target: (&str, u16)) -> Result<Reply> {
    wait_for(
        &format!(
            "{}:{} to stop answering the client host",
            target.0, target.1
        ),
        Duration::from_secs(30),
        || {
            let r = from_outside(f, "tcp", target, 1)?.remove(0);
            Ok((!r.error.is_empty()).then_some(r))
        },
    )
}

/// Service `morph` over the web pods as `kind` (`extra` for its spec), applied as a user
/// changes a manifest.
fn morph(c: &Cluster, extra: &str) -> Result<()> {
    apply(
        c,
        &format!(
            "
apiVersion: v1
kind: Service
metadata: {{name: morph}}
spec:
  selector: {{app: web}}
  {extra}
  ports: [{{port: 80, targetPort: 8080}}]
"
        ),
    )
}

/// Changing a Service's type with `kubectl apply`, `ClusterIP` -> `NodePort` ->
/// `LoadBalancer` -> `ExternalName` -> `ClusterIP`, changes what answers each time: the
/// cluster IP, then also the node port from outside, then also the load balancer address
/// from outside; as an `ExternalName` none of them; back to `ClusterIP` a (new) cluster IP.
fn type_changes_update_the_data_path(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    morph(c, "")?;
    let ip = cluster_ip(c, "morph")?;
    served(f, 0, "tcp", (&ip, 80))?;

    morph(c, "type: NodePort")?;
    ensure!(
        cluster_ip(c, "morph")? == ip,
        "the cluster IP changed with the type"
    );
    let port = node_port(c, "morph", 0)?;
    let address = c.node_hosts()[1].address().to_string();
    let r = served_outside(f, "tcp", (&address, port))?;
    ensure!(r.body.starts_with("web-"), "node port answered {r:?}");
    served(f, 0, "tcp", (&ip, 80))?;

    morph(c, "type: LoadBalancer")?;
    ensure!(
        node_port(c, "morph", 0)? == port,
        "the node port changed from NodePort to LoadBalancer"
    );
    let (lb, _) = load_balancer_ip(c, "morph")?;
    let r = served_outside(f, "tcp", (&lb, 80))?;
    ensure!(r.body.starts_with("web-"), "{lb}:80 answered {r:?}");
    served_outside(f, "tcp", (&address, port))?;

    morph(c, "type: ExternalName\n  externalName: web.example.org")?;
    let svc = c.get_json("/api/v1/namespaces/default/services/morph")?;
    ensure!(
        svc["spec"]["clusterIP"].is_null() && svc["spec"]["ports"][0]["nodePort"].is_null(),
        "an ExternalName Service kept its cluster IP or node port: {svc}"
    );
    stops_answering(f, 0, (&ip, 80))?;
    stops_answering_outside(f, (&address, port))?;
    stops_answering_outside(f, (&lb, 80))?;

    morph(c, "")?;
    let again = cluster_ip(c, "morph")?;
    let r = served(f, 0, "tcp", (&again, 80))?;
    ensure!(r.body.starts_with("web-"), "{again}:80 answered {r:?}");
    let svc = c.get_json("/api/v1/namespaces/default/services/morph")?;
    ensure!(
        svc["spec"]["ports"][0]["nodePort"].is_null(),
        "back to ClusterIP, the Service kept a node port: {svc}"
    );
    c.kubectl(&["delete", "service", "morph"], None)?;
    Ok(())
}

/// A pod reaches itself through a Service whose only endpoint it is (hairpin), from a
/// process of its own container (`kubectl exec`).
fn hairpin_pod_reaches_itself(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let web = running(c, "app%3Dweb", 3)?;
    let me = &web[1];
    apply(
        c,
        &format!(
            "
apiVersion: v1
kind: Service
metadata: {{name: hairpin}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hairpin-by-hand
  labels: {{kubernetes.io/service-name: hairpin}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: ['{}']
  nodeName: {}
  conditions: {{ready: true}}
",
            me.ip,
            c.node_hosts()[me.node].label()
        ),
    )?;
    let ip = cluster_ip(c, "hairpin")?;
    let url = format!("http://{ip}:80/");
    let answer = wait_for(
        &format!("{} reaching itself at {url}", me.name),
        Duration::from_secs(20),
        || {
            // (This busybox's wget crashes on `-T`: the connect has the kernel's timeout.)
            let out = c.kubectl(&["exec", &me.name, "--", "wget", "-q", "-O-", &url], None)?;
            Ok(Some(out.trim().to_owned()).filter(|o| !o.is_empty()))
        },
    )?;
    ensure!(answer == me.name, "{} reached {answer:?} at {url}", me.name);
    c.kubectl(
        &["delete", "service/hairpin", "endpointslice/hairpin-by-hand"],
        None,
    )?;
    Ok(())
}

/// A web server as users write it for zero-downtime rollouts: ready once it answers, and a
/// `preStop` pause so that it still serves while the proxies drop it.
fn zero_downtime_httpd(pause: u32) -> String {
    format!(
        "{}
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
        lifecycle: {{preStop: {{exec: {{command: [sleep, '{pause}']}}}}}}",
        httpd("8080", "http")
    )
}

/// A client looping over TCP requests until [`Looping::finish`].
struct Looping {
    child: ChildGuard,
    what: String,
}

impl Looping {
    fn start(mut cmd: Command, what: &str) -> Result<Self> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        Ok(Self {
            child: ChildGuard::spawn(&mut cmd)?,
            what: what.to_owned(),
        })
    }

    /// Stops the loop and returns every result.
    fn finish(mut self) -> Result<Vec<Reply>> {
        drop(self.child.child_mut().stdin.take());
        let mut out = String::new();
        self.child
            .child_mut()
            .stdout
            .take()
            .context("the loop's output")?
            .read_to_string(&mut out)?;
        let list: Value =
            serde_json::from_str(&out).with_context(|| format!("{} output {out:?}", self.what))?;
        Ok(replies(&list))
    }
}

/// `kubectl rollout restart` of a Deployment with a readiness probe and a `preStop` pause,
/// while a pod (socket path) and the outside client host (node port, TC path) connect in a
/// loop: not one connection is refused, reset or timed out, and the loops reach the new
/// pods.
fn rolling_update_loses_no_connection(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    deploy_pods(
        c,
        "rolling",
        2,
        "terminationGracePeriodSeconds: 5",
        &zero_downtime_httpd(2),
    )?;
    let old: BTreeSet<String> = running(c, "app%3Drolling", 2)?
        .into_iter()
        .map(|p| p.name)
        .collect();
    let ip = service(
        c,
        "rolling",
        "app: rolling",
        "type: NodePort",
        "[{port: 80, targetPort: 8080}]",
    )?;
    let port = node_port(c, "rolling", 0)?;
    let address = c.node_hosts()[1].address().to_string();
    served(f, 0, "tcp", (&ip, 80))?;
    served_outside(f, "tcp", (&address, port))?;
    let inside = Looping::start(
        client_command(f, 0, &f.clients[0].netns, &["loop", &ip, "80", "120"])?,
        "the pod's loop",
    )?;
    let outside_netns = c.client().netns_path();
    let outside = Looping::start(
        python_client(
            f,
            &outside_netns,
            Path::new("/dev/null"),
            &["loop", &address, &port.to_string(), "120"],
        ),
        "the outside loop",
    )?;
    let rolled = (|| {
        c.kubectl(&["rollout", "restart", "deployment/rolling"], None)?;
        c.kubectl(
            &["rollout", "status", "deployment/rolling", "--timeout=90s"],
            None,
        )?;
        // Until the old pods are gone: their termination is part of the rollout.
        let new = running(c, "app%3Drolling", 2)?;
        anyhow::Ok(new.into_iter().map(|p| p.name).collect::<BTreeSet<_>>())
    })();
    let inside = inside.finish();
    let outside = outside.finish();
    let new = rolled?;
    ensure!(new.is_disjoint(&old), "the rollout left {old:?} in {new:?}");
    for (what, replies) in [("the pod", inside?), ("the outside client", outside?)] {
        let failed: Vec<&Reply> = replies
            .iter()
            .filter(|r| !r.error.is_empty() || !r.body.starts_with("rolling-"))
            .collect();
        ensure!(
            failed.is_empty(),
            "{what} saw {} of {} requests fail during the rollout: {failed:?}",
            failed.len(),
            replies.len()
        );
        let reached: BTreeSet<String> = replies.iter().map(|r| r.body.clone()).collect();
        ensure!(
            reached.iter().any(|n| new.contains(n)),
            "{what}'s loop never reached a new pod ({reached:?}, new {new:?}): it did not span \
             the rollout"
        );
    }
    c.kubectl(&["delete", "deployment/rolling", "service/rolling"], None)?;
    Ok(())
}

/// The endpoints of Service `name` as its EndpointSlices list them: (ready, serving,
/// terminating) each.
fn endpoint_conditions(c: &Cluster, name: &str) -> Result<Vec<(bool, bool, bool)>> {
    let slices = c.get_json(&format!(
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{name}"
    ))?;
    let flag = |e: &Value, field: &str| e["conditions"][field].as_bool().unwrap_or(false);
    Ok(slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .map(|e| (flag(e, "ready"), flag(e, "serving"), flag(e, "terminating")))
        .collect())
}

/// KEP-1669: when every endpoint of a Service is terminating but still serving (scaled to 0,
/// pods in a long `preStop`), the Service still answers, from those pods.
fn fallback_to_terminating_endpoints(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    deploy_pods(
        c,
        "draining",
        2,
        "terminationGracePeriodSeconds: 120",
        &zero_downtime_httpd(120),
    )?;
    let pods: BTreeSet<String> = running(c, "app%3Ddraining", 2)?
        .into_iter()
        .map(|p| p.name)
        .collect();
    let ip = service(
        c,
        "draining",
        "app: draining",
        "",
        "[{port: 80, targetPort: 8080}]",
    )?;
    served(f, 0, "tcp", (&ip, 80))?;
    c.kubectl(&["scale", "deployment", "draining", "--replicas=0"], None)?;
    let result = (|| {
        wait_for(
            "both endpoints terminating and serving",
            Duration::from_secs(30),
            || {
                let e = endpoint_conditions(c, "draining")?;
                Ok((e.len() == 2 && e.iter().all(|&(r, s, t)| !r && s && t)).then_some(()))
            },
        )?;
        let replies = request(f, 0, &f.clients[0].netns, "tcp", (&ip, 80), 20)?;
        let reached = bodies(&replies)?;
        ensure!(
            reached.is_subset(&pods),
            "with every endpoint terminating, {ip}:80 answered {reached:?}, not from {pods:?}"
        );
        anyhow::Ok(())
    })();
    c.kubectl(&["delete", "deployment/draining", "service/draining"], None)?;
    c.kubectl(
        &[
            "delete",
            "pod",
            "-l",
            "app=draining",
            "--grace-period=0",
            "--force",
        ],
        None,
    )?;
    result
}

/// `publishNotReadyAddresses: true` reaches a pod that is not ready; a Service without it,
/// on the same pod, refuses.
fn publish_not_ready_addresses_reaches_an_unready_pod(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    deploy(
        c,
        "unready",
        1,
        false,
        &format!(
            "{}\n        readinessProbe: {{exec: {{command: ['false']}}, periodSeconds: 1}}",
            httpd("8080", "http")
        ),
    )?;
    let pod = wait_for("a running unready pod", Duration::from_mins(1), || {
        let list = c.get_json("/api/v1/namespaces/default/pods?labelSelector=app%3Dunready")?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned)))
    })?;
    let published = service(
        c,
        "unready-published",
        "app: unready",
        "publishNotReadyAddresses: true",
        "[{port: 80, targetPort: 8080}]",
    )?;
    let plain = service(
        c,
        "unready-plain",
        "app: unready",
        "",
        "[{port: 80, targetPort: 8080}]",
    )?;
    let result = (|| {
        let r = served(f, 0, "tcp", (&published, 80))?;
        ensure!(
            r.body == pod,
            "the published Service answered {r:?}, not {pod}"
        );
        let r = wait_for(
            "the plain Service to refuse",
            Duration::from_secs(20),
            || {
                let r = request(f, 0, &f.clients[0].netns, "tcp", (&plain, 80), 1)?.remove(0);
                ensure!(
                    !r.error.is_empty(),
                    "a Service without publishNotReadyAddresses reached the unready pod: {r:?}"
                );
                Ok((r.error == "ECONNREFUSED").then_some(r))
            },
        )?;
        // It stays so: the pod is still not ready.
        let status = c.get_json(&format!("/api/v1/namespaces/default/pods/{pod}"))?;
        let ready = status["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ensure!(!ready, "the pod turned ready: {status}");
        // The slices say so too, as Kubernetes writes them: ready for the Service that
        // publishes not-ready addresses (DNS and other readers of slices follow it), not
        // serving for either.
        for (name, expect) in [
            ("unready-published", (true, false, false)),
            ("unready-plain", (false, false, false)),
        ] {
            let conditions = endpoint_conditions(c, name)?;
            ensure!(
                conditions == [expect],
                "{name}'s endpoints (ready, serving, terminating): {conditions:?}"
            );
        }
        anyhow::Ok(r)
    })();
    c.kubectl(
        &[
            "delete",
            "deployment/unready",
            "service/unready-published",
            "service/unready-plain",
        ],
        None,
    )?;
    result.map(drop)
}

/// One Service with named ports to different container ports: TCP 80 and 81 to two httpd
/// (8080, 8081) in one container, UDP 80 and 81 to two sockets in the same pod (5301,
/// 5302); each Service port reaches its own.
fn multiport_service_reaches_each_ports_own_target(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    deploy(
        c,
        "multi",
        1,
        false,
        "command: [sh, -c, 'mkdir -p /tmp/a /tmp/b && echo \"a $(hostname)\" > /tmp/a/index.html && echo \"b $(hostname)\" > /tmp/b/index.html && httpd -p 8080 -h /tmp/a && exec httpd -f -p 8081 -h /tmp/b']
        ports: [{name: http-a, containerPort: 8080}, {name: http-b, containerPort: 8081}]",
    )?;
    let pod = running(c, "app%3Dmulti", 1)?.remove(0);
    let bind = |port: u16| -> Result<UdpSocket> {
        let socket = in_netns(&pod.netns, || UdpSocket::bind((pod.ip, port)))??;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(socket)
    };
    let (udp_a, udp_b) = (bind(5301)?, bind(5302)?);
    let ip = service(
        c,
        "multi",
        "app: multi",
        "",
        "[{name: a, port: 80, targetPort: http-a}, {name: b, port: 81, targetPort: http-b}, \
         {name: udp-a, port: 80, protocol: UDP, targetPort: 5301}, \
         {name: udp-b, port: 81, protocol: UDP, targetPort: 5302}]",
    )?;
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| answer_udp(&udp_a, "udp-a", &stop));
        s.spawn(|| answer_udp(&udp_b, "udp-b", &stop));
        let result = (|| {
            for (mode, port, expect) in [
                ("tcp", 80, format!("a {}", pod.name)),
                ("tcp", 81, format!("b {}", pod.name)),
                ("udp", 80, "udp-a".to_owned()),
                ("udp", 81, "udp-b".to_owned()),
            ] {
                served(f, 2, mode, (&ip, port))?;
                let got = bodies(&request(f, 2, &f.clients[2].netns, mode, (&ip, port), 4)?)?;
                ensure!(
                    got == BTreeSet::from([expect.clone()]),
                    "{mode} {ip}:{port} answered {got:?}, not {expect:?}"
                );
            }
            anyhow::Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        result
    });
    c.kubectl(&["delete", "deployment/multi", "service/multi"], None)?;
    result
}

/// A UDP node port without endpoints answers an outside client with ICMP port unreachable
/// (its connected socket gets ECONNREFUSED), not silence: even with a socket of the node's
/// own bound on that port, which would otherwise take the datagram and stay silent.
fn udp_node_port_without_endpoints_is_port_unreachable(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    service(
        c,
        "empty-udp-np",
        "app: nobody",
        "type: NodePort",
        "[{name: dns, port: 53, protocol: UDP, targetPort: 5353}]",
    )?;
    let port = node_port(c, "empty-udp-np", 0)?;
    let host = &c.node_hosts()[1];
    let address = host.address().to_string();
    let decoy = host
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
        .with_context(|| format!("binding node-1's own UDP socket on {port}"))?;
    decoy.set_nonblocking(true)?;
    let result = (|| {
        wait_for(
            "the UDP node port without endpoints to refuse",
            Duration::from_secs(30),
            || {
                let r = from_outside(f, "udpc", (&address, port), 1)?.remove(0);
                Ok((r.error == "ECONNREFUSED").then_some(r))
            },
        )?;
        // What the node's socket took before the proxy had the Service does not count.
        let mut buf = [0; 64];
        while decoy.recv_from(&mut buf).is_ok() {}
        let replies = from_outside(f, "udpc", (&address, port), 5)?;
        ensure!(
            replies.iter().all(|r| r.error == "ECONNREFUSED"),
            "the outside client got {replies:?}"
        );
        ensure!(
            decoy.recv_from(&mut buf).is_err(),
            "a datagram to the node port reached the node's own socket"
        );
        anyhow::Ok(())
    })();
    c.kubectl(&["delete", "service", "empty-udp-np"], None)?;
    result
}

/// Adds addresses to the outside client host's `eth0`, removed when dropped.
struct ExtraAddresses<'a> {
    host: &'a skiff_tests::cluster::Host,
    added: Vec<String>,
}

impl<'a> ExtraAddresses<'a> {
    fn add(host: &'a skiff_tests::cluster::Host, addresses: &[Ipv4Addr]) -> Result<Self> {
        let mut out = Self {
            host,
            added: Vec::new(),
        };
        for a in addresses {
            let cidr = format!("{a}/24");
            host.ip(&["addr", "add", &cidr, "dev", "eth0"])?;
            out.added.push(cidr);
        }
        Ok(out)
    }
}

impl Drop for ExtraAddresses<'_> {
    fn drop(&mut self) {
        for cidr in &self.added {
            if let Err(err) = self.host.ip(&["addr", "del", cidr, "dev", "eth0"]) {
                eprintln!("cleanup: {err:#}");
            }
        }
    }
}

/// The backends each source reached in each round of the `rounds` client.
type Rounds = Vec<BTreeMap<String, BTreeSet<String>>>;

/// Runs the `rounds` client from the outside client host against `target`.
fn rounds_from_outside(
    f: &Fixture,
    target: (&str, u16),
    rounds: usize,
    burst: usize,
    idle_seconds: u32,
    sources: &[String],
) -> Result<Rounds> {
    let netns = f.cluster.client().netns_path();
    let (port, rounds, burst, idle) = (
        target.1.to_string(),
        rounds.to_string(),
        burst.to_string(),
        idle_seconds.to_string(),
    );
    let mut args = vec!["rounds", target.0, &port, &rounds, &burst, &idle];
    args.extend(sources.iter().map(String::as_str));
    let out = python_client(f, &netns, Path::new("/dev/null"), &args)
        .output()
        .context("running the client")?;
    ensure!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<BTreeMap<String, Value>> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("client output {:?}", String::from_utf8_lossy(&out.stdout)))?;
    list.iter()
        .map(|round| {
            round
                .iter()
                .map(|(source, results)| Ok((source.clone(), bodies(&replies(results))?)))
                .collect()
        })
        .collect()
}

/// The `timeoutSeconds` of the affinity trial: short, so that clients idle past it.
const AFFINITY_TIMEOUT: u32 = 2;

/// `sessionAffinity: ClientIP` on a node port, from outside: a client sticks to one backend;
/// with affinity switched off it spreads, on again it sticks; and once a client has been
/// idle past `timeoutSeconds` it may get another backend.
fn node_port_affinity_switches_and_expires(f: &Fixture) -> Result<()> {
    let c = &f.cluster;
    let sticky = format!(
        "type: NodePort\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {AFFINITY_TIMEOUT}}}}}"
    );
    let ports = "[{port: 80, targetPort: 8080}]";
    service(c, "sticky-np", "app: web", &sticky, ports)?;
    let port = node_port(c, "sticky-np", 0)?;
    let address = c.node_hosts()[0].address().to_string();
    let target = (address.as_str(), port);
    served_outside(f, "tcp", target)?;
    let stuck = bodies(&from_outside(f, "tcp", target, 12)?)?;
    ensure!(stuck.len() == 1, "with affinity: {stuck:?}");

    service(c, "sticky-np", "app: web", "type: NodePort", ports)?;
    // 30 connections over 3 backends all on one: 3 * 3^-30 by chance.
    let spread = wait_for(
        "connections to spread with affinity off",
        Duration::from_secs(20),
        || {
            let names = bodies(&from_outside(f, "tcp", target, 30)?)?;
            Ok((names.len() > 1).then_some(names))
        },
    )?;
    ensure!(spread.len() > 1, "{spread:?}");

    service(c, "sticky-np", "app: web", &sticky, ports)?;
    wait_for("affinity on again", Duration::from_secs(20), || {
        let names = bodies(&from_outside(f, "tcp", target, 12)?)?;
        Ok((names.len() == 1).then_some(names))
    })?;

    // Six clients (addresses of the outside host), three rounds of four requests each,
    // idle past the timeout between rounds. Within a round each sticks (without affinity:
    // 3^-3 per client and round); across rounds at least one changes (with a working
    // timeout, all 6 * 2 changes miss with probability 3^-12, about 2e-6).
    let sources: Vec<Ipv4Addr> = (101..=106).map(|n| c.client().subnet().host(n)).collect();
    let _added = ExtraAddresses::add(c.client(), &sources)?;
    let sources: Vec<String> = sources.iter().map(ToString::to_string).collect();
    let rounds = rounds_from_outside(f, target, 3, 4, AFFINITY_TIMEOUT + 1, &sources)?;
    let mut changed = false;
    for (n, round) in rounds.iter().enumerate() {
        for (source, names) in round {
            ensure!(
                names.len() == 1,
                "round {n}: {source} reached {names:?} within the affinity timeout"
            );
            if n > 0 && rounds[n - 1].get(source) != Some(names) {
                changed = true;
            }
        }
    }
    ensure!(
        changed,
        "no client got another backend after idling past the {AFFINITY_TIMEOUT} s timeout: {rounds:?}"
    );
    c.kubectl(&["delete", "service", "sticky-np"], None)?;
    Ok(())
}

/// A trial's body.
type Body = fn(&Fixture) -> Result<()>;

/// The trials, in the order they run (the killed node last: it restarts a node).
const TRIALS: &[(&str, Body)] = &[
    (
        "a_cluster_ip_reaches_every_backend_from_a_pod_on_every_node",
        cluster_ip_from_every_node,
    ),
    (
        "a_containers_own_process_reaches_a_cluster_ip",
        container_reaches_cluster_ip,
    ),
    (
        "a_udp_cluster_ip_answers_an_unconnected_sendto_from_the_service_address",
        udp_cluster_ip_answers_from_the_service_address,
    ),
    (
        "a_resolver_pinned_to_a_replaced_udp_backend_is_destroyed_and_reconnects_to_the_new_one",
        resolver_reconnects_after_its_backend_is_replaced,
    ),
    (
        "a_service_without_endpoints_refuses_at_once",
        no_endpoints_refuses_at_once,
    ),
    (
        "scaling_to_zero_refuses_and_scaling_back_serves_again",
        scale_to_zero_and_back,
    ),
    (
        "a_named_target_port_resolves_to_each_pods_own_port",
        named_target_port_per_pod,
    ),
    (
        "client_ip_affinity_keeps_a_client_on_one_backend",
        client_ip_affinity,
    ),
    (
        "a_node_port_answers_host_processes_on_loopback_and_the_node_address",
        node_port_from_host_processes,
    ),
    (
        "an_sctp_port_gets_a_warning_event_and_the_other_ports_are_served",
        unsupported_protocol_event,
    ),
    (
        "internal_traffic_policy_local_keeps_clients_on_their_nodes_endpoints",
        internal_traffic_policy_local,
    ),
    (
        "an_external_ip_answers_host_processes",
        external_ip_from_host_processes,
    ),
    (
        "a_node_port_from_outside_reaches_backends_on_every_node_over_tcp_and_udp",
        node_port_from_outside,
    ),
    (
        "external_traffic_policy_local_answers_on_nodes_with_endpoints_and_keeps_the_client_ip",
        external_traffic_policy_local_from_outside,
    ),
    (
        "a_node_port_without_endpoints_refuses_outside_clients_at_once",
        node_port_without_endpoints_refuses_outside,
    ),
    (
        "an_external_ip_routed_to_a_node_answers_outside_clients",
        external_ip_from_outside,
    ),
    (
        "a_local_load_balancers_health_check_node_port_answers_with_the_local_endpoint_count",
        health_check_node_port_answers,
    ),
    (
        "changing_the_type_clusterip_nodeport_loadbalancer_externalname_clusterip_updates_the_data_path",
        type_changes_update_the_data_path,
    ),
    (
        "a_pod_reaches_itself_through_a_service_whose_only_endpoint_it_is",
        hairpin_pod_reaches_itself,
    ),
    (
        "a_rolling_update_with_readiness_and_prestop_refuses_no_connection_of_a_looping_client",
        rolling_update_loses_no_connection,
    ),
    (
        "a_service_whose_endpoints_are_all_terminating_still_answers_from_them",
        fallback_to_terminating_endpoints,
    ),
    (
        "publish_not_ready_addresses_reaches_an_unready_pod_and_a_plain_service_refuses",
        publish_not_ready_addresses_reaches_an_unready_pod,
    ),
    (
        "a_multiport_service_reaches_each_ports_own_target_over_tcp_and_udp",
        multiport_service_reaches_each_ports_own_target,
    ),
    (
        "a_udp_node_port_without_endpoints_answers_outside_clients_port_unreachable",
        udp_node_port_without_endpoints_is_port_unreachable,
    ),
    (
        "node_port_client_ip_affinity_switches_off_and_on_and_expires_after_its_timeout",
        node_port_affinity_switches_and_expires,
    ),
    (
        "the_nodes_metrics_count_translations_and_refusals_per_service",
        metrics_count_per_service,
    ),
    (
        "a_new_service_is_reached_moments_after_the_api_accepts_it",
        new_service_latency,
    ),
    (
        "a_killed_node_keeps_serving_and_drops_services_deleted_while_it_was_down",
        killed_node_keeps_serving_and_drops_what_was_deleted,
    ),
    (
        "a_load_balancer_address_from_the_range_is_announced_by_one_node_and_moves_when_it_dies",
        load_balancer_address_announced_and_moved,
    ),
];

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    if !args.list && !skiff_tests::require_root("services") {
        return ExitCode::SUCCESS;
    }
    // The trials share one cluster per mode: one at a time, in order.
    args.test_threads = Some(1);
    let shared = Arc::new(Shared {
        current: Mutex::new(None),
        escaped: Mutex::new(Vec::new()),
    });
    let trial = |mode: usize, name: &str, body: Body| {
        let shared = shared.clone();
        let full = if mode == 0 {
            name.to_owned()
        } else {
            format!("{}::{name}", MODES[mode].0)
        };
        let (body, ignored) = match EBPF_ONLY.iter().find(|(n, ..)| *n == name) {
            Some((_, _, Some(stand_in))) if mode != 0 => (*stand_in, false),
            Some((_, _, None)) if mode != 0 => (body, true),
            _ => (body, false),
        };
        Trial::test(full, move || {
            let f = shared.get(mode)?;
            body(&f).map_err(|err| Failed::from(format!("{err:#}\n{}", f.cluster.logs())))
        })
        .with_ignored_flag(ignored)
    };
    let trials = (0..MODES.len())
        .flat_map(|mode| TRIALS.iter().map(move |(name, body)| (mode, name, body)))
        .map(|(mode, name, body)| trial(mode, name, *body))
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let mut failed = conclusion.has_failed();
    let last = shared
        .current
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    shared.drop_cluster(last);
    for err in shared
        .escaped
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        eprintln!("services: {err}");
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
