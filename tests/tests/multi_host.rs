//! End-to-end behaviours of clusters of several hosts (network namespaces joined by
//! switches), each cluster shared by the trials that use it: `control` in its own host,
//! three real nodes, an outside client. "flat" has every host on one switch; "routed" has
//! `node-2` and the client on a second subnet behind a router, so its pods are reached
//! through the VXLAN tunnel. Trials run one at a time in the order below (later ones kill
//! and delete nodes); the clusters are removed after the last one, and a final check fails
//! the run if any test packet left through the machine's uplink. A StatefulSet keeps its
//! local-path volume across a pod deletion on the flat cluster.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Command, ExitCode},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use libtest_mimic::{Arguments, Failed, Trial};
use skiff_tests::{
    cluster::{Cluster, ClusterConfig, PodAt, wait_for},
    netns::in_netns,
};

#[path = "multi_host/streams.rs"]
mod streams;

/// The busybox image every node gets by `ctl image import`.
const IMAGE: &str = "example.org/skiff/busybox:multi-host";
/// How long a connection attempt may take.
const CONNECT: Duration = Duration::from_secs(5);

/// A cluster started by the first trial that needs it, with its image imported.
struct Shared {
    config: ClusterConfig,
    cluster: OnceLock<Result<Cluster, String>>,
}

impl Shared {
    fn new(config: ClusterConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            cluster: OnceLock::new(),
        })
    }

    fn get(&self) -> Result<&Cluster, Failed> {
        self.cluster
            .get_or_init(|| start(&self.config).map_err(|err| format!("{err:#}")))
            .as_ref()
            .map_err(|err| Failed::from(format!("the test cluster did not start: {err}")))
    }
}

fn start(config: &ClusterConfig) -> Result<Cluster> {
    let c = Cluster::start(config)?;
    c.import_busybox(IMAGE)?;
    Ok(c)
}

fn trial(name: &str, shared: &Arc<Shared>, body: fn(&Cluster) -> Result<()>) -> Trial {
    let shared = shared.clone();
    Trial::test(name, move || {
        let c = shared.get()?;
        body(c).map_err(|err| Failed::from(format!("{err:#}\n{}", c.logs())))
    })
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    if !args.list && !skiff_tests::require_root("multi_host") {
        return ExitCode::SUCCESS;
    }
    // The trials share clusters and some kill or delete nodes: one at a time, in order.
    args.test_threads = Some(1);
    let mut flat = ClusterConfig::one_switch(3);
    // Autoscalers sync every 5 s instead of 15 s, so the autoscaling trial is short.
    flat.control_args = vec![
        "--horizontal-pod-autoscaler-sync-period-seconds".into(),
        "5".into(),
    ];
    let flat = Shared::new(flat);
    let routed = Shared::new(ClusterConfig::two_subnets());
    let trials = vec![
        trial(
            "every_node_registers_with_its_host_address_and_a_pod_cidr_of_its_own",
            &flat,
            nodes_register_with_host_addresses,
        ),
        trial(
            "pods_on_every_node_reach_each_other_over_tcp_udp_and_icmp_with_their_own_source_ip",
            &flat,
            pods_reach_each_other,
        ),
        trial(
            "a_container_fetches_a_page_from_a_pod_on_another_node",
            &flat,
            container_fetches_from_another_node,
        ),
        trial(
            "nodes_reach_every_pod_and_pods_reach_every_node",
            &flat,
            nodes_and_pods_reach_each_other,
        ),
        trial(
            "without_an_address_range_a_load_balancer_answers_on_every_node_address",
            &flat,
            load_balancer_on_node_addresses,
        ),
        trial(
            "kubectl_top_shows_the_cpu_a_busy_pod_burns_and_every_node",
            &flat,
            top_shows_a_busy_pod,
        ),
        trial(
            "kubectl_port_forward_reaches_pods_deployments_and_services",
            &flat,
            streams::port_forward_reaches_pods_deployments_and_services,
        ),
        trial(
            "kubectl_cp_round_trips_a_file_both_ways",
            &flat,
            streams::kubectl_cp_round_trips_a_file_both_ways,
        ),
        trial(
            "kubectl_autoscale_scales_a_cpu_burning_deployment_up_and_back_down",
            &flat,
            autoscaler_follows_cpu_load,
        ),
        trial(
            "kubectl_debug_runs_an_ephemeral_container_in_a_running_pod",
            &flat,
            debug_adds_an_ephemeral_container,
        ),
        trial(
            "a_statefulset_keeps_its_local_path_volume_across_a_pod_deletion",
            &flat,
            statefulset_keeps_its_volume,
        ),
        trial(
            "a_node_killed_and_restarted_keeps_traffic_to_its_pods_flowing",
            &flat,
            killed_node_keeps_traffic_flowing,
        ),
        trial(
            "a_deleted_node_loses_its_routes_on_the_other_nodes",
            &flat,
            deleted_node_loses_its_routes,
        ),
        trial(
            "across_subnets_pods_are_reached_through_the_tunnel_and_on_the_link_directly",
            &routed,
            routed_cluster_uses_tunnel_and_direct_routes,
        ),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    let mut failed = conclusion.has_failed();
    for shared in [&flat, &routed] {
        if let Some(Ok(c)) = shared.cluster.get()
            && let Err(err) = c.check_nothing_escaped()
        {
            eprintln!("multi_host: {err:#}");
            failed = true;
        }
    }
    // The trials are done and dropped: this drops the clusters (nodes, control, hosts).
    drop((flat, routed));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One pod of an `httpd` Deployment on every node (required anti-affinity by hostname).
fn spread(c: &Cluster, app: &str) -> Result<Vec<PodAt>> {
    let count = c.node_count();
    let manifest = format!(
        r"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {app}}}
spec:
  replicas: {count}
  selector: {{matchLabels: {{app: {app}}}}}
  template:
    metadata: {{labels: {{app: {app}}}}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - topologyKey: kubernetes.io/hostname
            labelSelector: {{matchLabels: {{app: {app}}}}}
      containers:
      - name: web
        image: '{IMAGE}'
        imagePullPolicy: Never
        command: [httpd, -f, -p, '8080', -h, /etc]
"
    );
    c.kubectl(&["apply", "-f", "-"], Some(&manifest))?;
    let pods = wait_for(
        &format!("{count} running {app} pods, one per node"),
        Duration::from_mins(2),
        || {
            let list = c.get_json(&format!(
                "/api/v1/namespaces/default/pods?labelSelector=app%3D{app}"
            ))?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let running: Vec<&serde_json::Value> = items
                .iter()
                .filter(|p| {
                    p["status"]["phase"] == "Running"
                        && p["status"]["podIP"].is_string()
                        && p["metadata"]["deletionTimestamp"].is_null()
                })
                .collect();
            if running.len() != count {
                return Ok(None);
            }
            let mut out = Vec::new();
            for p in running {
                out.push(c.pod_at(p)?);
            }
            out.sort_by_key(|p| p.node);
            Ok(Some(out))
        },
    )?;
    let nodes: std::collections::BTreeSet<usize> = pods.iter().map(|p| p.node).collect();
    ensure!(nodes.len() == count, "pods share nodes: {pods:?}");
    Ok(pods)
}

/// Accepts one connection on `listener` within `timeout`; returns the peer's address.
fn accept_within(listener: &TcpListener, timeout: Duration) -> Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(timeout))?;
                let mut token = [0; 5];
                stream.read_exact(&mut token)?;
                ensure!(&token == b"skiff", "unexpected bytes {token:?}");
                stream.write_all(b"ok")?;
                return Ok(peer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no connection within {timeout:?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A TCP connection from a thread in `from` (a namespace file, or the calling thread's
/// namespace when `None`) to a listener in `to` at `to_ip`; returns the source address the
/// listener saw.
fn tcp(from: Option<&PathBuf>, to: Option<&PathBuf>, to_ip: Ipv4Addr) -> Result<Ipv4Addr> {
    let bind = || TcpListener::bind((to_ip, 0));
    let listener = match to {
        Some(ns) => in_netns(ns, bind)??,
        None => bind()?,
    };
    let port = listener.local_addr()?.port();
    let connect = || -> Result<()> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((to_ip, port)), CONNECT)
            .with_context(|| format!("connecting to {to_ip}:{port}"))?;
        s.set_read_timeout(Some(CONNECT))?;
        s.write_all(b"skiff")?;
        let mut answer = [0; 2];
        s.read_exact(&mut answer)?;
        ensure!(&answer == b"ok", "unexpected answer {answer:?}");
        Ok(())
    };
    std::thread::scope(|s| {
        let server = s.spawn(|| accept_within(&listener, CONNECT));
        let sent = match from {
            Some(ns) => in_netns(ns, connect).and_then(|r| r),
            None => connect(),
        };
        let seen = server
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        sent?;
        match seen?.ip() {
            std::net::IpAddr::V4(ip) => Ok(ip),
            other @ std::net::IpAddr::V6(_) => bail!("IPv6 peer {other}"),
        }
    })
}

/// A UDP datagram from `from` to `to` and the answer back; returns the source address the
/// receiver saw.
fn udp(from: &PodAt, to: &PodAt) -> Result<Ipv4Addr> {
    let server = in_netns(&to.netns, || UdpSocket::bind((to.ip, 0)))??;
    server.set_read_timeout(Some(CONNECT))?;
    let port = server.local_addr()?.port();
    let client = in_netns(&from.netns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    client.set_read_timeout(Some(CONNECT))?;
    client.send_to(b"skiff", (to.ip, port))?;
    let mut buf = [0; 16];
    let (n, peer) = server.recv_from(&mut buf).context("no datagram arrived")?;
    ensure!(&buf[..n] == b"skiff");
    server.send_to(b"ok", peer)?;
    let (n, answerer) = client.recv_from(&mut buf).context("no answer arrived")?;
    ensure!(&buf[..n] == b"ok");
    ensure!(
        answerer.ip() == std::net::IpAddr::V4(to.ip),
        "the answer came from {answerer}, not {}",
        to.ip
    );
    match peer.ip() {
        std::net::IpAddr::V4(ip) => Ok(ip),
        other @ std::net::IpAddr::V6(_) => bail!("IPv6 peer {other}"),
    }
}

/// One ICMP echo from `from`'s namespace to `to`.
fn ping(from: &PodAt, to: Ipv4Addr) -> Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", from.netns.display()))
        .args(["--", "busybox", "ping", "-c", "1", "-W", "3"])
        .arg(to.to_string())
        .output()
        .context("running busybox ping")?;
    ensure!(
        out.status.success(),
        "ping {to} from {}: {}{}",
        from.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Every pod reaches every other pod over TCP, UDP and ICMP, and TCP and UDP receivers
/// see the sender's own pod IP.
fn full_mesh(pods: &[PodAt]) -> Result<()> {
    for from in pods {
        for to in pods {
            if from.name == to.name {
                continue;
            }
            let what = format!(
                "{} (node {}) -> {} (node {})",
                from.ip, from.node, to.ip, to.node
            );
            let seen = tcp(Some(&from.netns), Some(&to.netns), to.ip)
                .with_context(|| format!("TCP {what}"))?;
            ensure!(seen == from.ip, "TCP {what}: the receiver saw {seen}");
            let seen = udp(from, to).with_context(|| format!("UDP {what}"))?;
            ensure!(seen == from.ip, "UDP {what}: the receiver saw {seen}");
            ping(from, to.ip).with_context(|| format!("ICMP {what}"))?;
        }
    }
    Ok(())
}

fn nodes_register_with_host_addresses(c: &Cluster) -> Result<()> {
    let nodes = wait_for(
        "three Ready nodes with pod CIDRs",
        Duration::from_secs(30),
        || {
            let list = c.get_json("/api/v1/nodes")?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let ready = items.iter().all(|n| {
                n["spec"]["podCIDR"].is_string()
                    && n["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            Ok((items.len() == 3 && ready).then_some(items))
        },
    )?;
    let mut cidrs = std::collections::BTreeSet::new();
    for host in c.node_hosts() {
        let node = nodes
            .iter()
            .find(|n| n["metadata"]["name"] == host.label())
            .with_context(|| format!("node {} is not registered", host.label()))?;
        let internal = node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .unwrap_or_default()
            .to_owned();
        ensure!(
            internal == host.address().to_string(),
            "node {} reports InternalIP {internal:?}, its host has {}",
            host.label(),
            host.address()
        );
        cidrs.insert(
            node["spec"]["podCIDR"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ensure!(cidrs.len() == 3, "pod CIDRs are not distinct: {cidrs:?}");
    Ok(())
}

fn pods_reach_each_other(c: &Cluster) -> Result<()> {
    let pods = spread(c, "mesh")?;
    // Routes follow the Nodes within moments; the first round may race them.
    wait_for(
        "the first cross-node TCP connection",
        Duration::from_secs(20),
        || Ok(tcp(Some(&pods[0].netns), Some(&pods[1].netns), pods[1].ip).ok()),
    )?;
    full_mesh(&pods)
}

fn container_fetches_from_another_node(c: &Cluster) -> Result<()> {
    let pods = spread(c, "mesh")?;
    let (from, to) = (&pods[0], &pods[2]);
    let page = c.kubectl(
        &[
            "exec",
            &from.name,
            "--",
            "wget",
            "-qO-",
            &format!("http://{}:8080/hostname", to.ip),
        ],
        None,
    )?;
    ensure!(
        page.trim() == to.name,
        "pod {} on node {} served {page:?}, expected its hostname {}",
        to.ip,
        to.node,
        to.name
    );
    Ok(())
}

fn nodes_and_pods_reach_each_other(c: &Cluster) -> Result<()> {
    let pods = spread(c, "mesh")?;
    for (i, host) in c.node_hosts().iter().enumerate() {
        for pod in &pods {
            host.run(|| tcp(None, Some(&pod.netns), pod.ip))
                .with_context(|| format!("node {i} -> pod {} (node {})", pod.ip, pod.node))?;
            let address = host.address();
            host.run(|| {
                let listener = TcpListener::bind((address, 0))?;
                let port = listener.local_addr()?.port();
                std::thread::scope(|s| {
                    let server = s.spawn(|| accept_within(&listener, CONNECT));
                    in_netns(&pod.netns, || -> Result<()> {
                        let mut s = TcpStream::connect_timeout(
                            &SocketAddr::from((address, port)),
                            CONNECT,
                        )?;
                        s.write_all(b"skiff")?;
                        let mut ok = [0; 2];
                        s.set_read_timeout(Some(CONNECT))?;
                        s.read_exact(&mut ok)?;
                        Ok(())
                    })??;
                    server
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p))
                        .map(|_| ())
                })
            })
            .with_context(|| format!("pod {} (node {}) -> node {i}", pod.ip, pod.node))?;
        }
    }
    Ok(())
}

/// An HTTP/1.0 GET of `path` from the outside client host; the body.
fn get_from_outside(c: &Cluster, ip: Ipv4Addr, port: u16, path: &str) -> Result<String> {
    c.client().run(|| {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), CONNECT)
            .with_context(|| format!("connecting to {ip}:{port}"))?;
        s.set_read_timeout(Some(CONNECT))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.trim().to_owned())
            .unwrap_or_default())
    })
}

/// A GET over TLS without a client certificate from outside the cluster; the whole answer.
fn anonymous_tls_get(c: &Cluster, ip: Ipv4Addr, port: u16, path: &str) -> Result<String> {
    c.client().run(|| {
        let client = skiff_api::kubelet_client::KubeletClient::default();
        Ok(
            skiff_tests::tls::node_get_blocking(&client, &format!("{ip}:{port}"), path)?
                .trim()
                .to_owned(),
        )
    })
}

/// `control` runs without `--loadbalancer-ip-range` here: a `LoadBalancer` Service gets the
/// node addresses (k3s `ServiceLB`), and its port answers on each of them from outside; a
/// port the nodes' own endpoint uses is refused with a reason instead.
fn load_balancer_on_node_addresses(c: &Cluster) -> Result<()> {
    let pods = spread(c, "mesh")?;
    let manifest = |name: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: LoadBalancer\n  selector: {{app: mesh}}\n  ports: [{{port: {port}, targetPort: 8080}}]\n"
        )
    };
    c.kubectl(&["apply", "-f", "-"], Some(&manifest("mesh-lb", 8081)))?;
    // The harness gives every node endpoint a port of its own: ask for node-0's.
    let node0 = c.get_json(&format!("/api/v1/nodes/{}", c.node(0).name()))?;
    let endpoint = node0["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("no node endpoint port: {node0}"))?;
    c.kubectl(
        &["apply", "-f", "-"],
        Some(&manifest("mesh-lb-kubelet", endpoint)),
    )?;
    let mut wanted: Vec<String> = c
        .node_hosts()
        .iter()
        .map(|h| h.address().to_string())
        .collect();
    wanted.sort();
    let ingress = wait_for(
        "the node addresses in the Service's status",
        Duration::from_secs(20),
        || {
            let svc = c.get_json("/api/v1/namespaces/default/services/mesh-lb")?;
            let mut ips: Vec<String> = svc["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().map(str::to_owned))
                .collect();
            ips.sort();
            Ok((ips == wanted).then_some(ips))
        },
    )?;
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    for ip in &ingress {
        let ip: Ipv4Addr = ip.parse()?;
        let body = wait_for(
            &format!("an answer on {ip}:8081 from the outside client"),
            Duration::from_secs(20),
            || Ok(get_from_outside(c, ip, 8081, "/hostname").ok()),
        )?;
        ensure!(
            names.contains(&body.as_str()),
            "{ip}:8081 answered {body:?}"
        );
    }
    let refusal = wait_for(
        "a PortInUse event on the Service asking for the node endpoint's port",
        Duration::from_secs(20),
        || {
            let events = c.get_json(
                "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dmesh-lb-kubelet",
            )?;
            Ok(events["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["reason"] == "PortInUse")
                .map(|e| e["message"].as_str().unwrap_or_default().to_owned()))
        },
    )?;
    ensure!(refusal.contains("node endpoint"), "{refusal}");
    let held = c.get_json("/api/v1/namespaces/default/services/mesh-lb-kubelet")?;
    ensure!(
        held["status"]["loadBalancer"]["ingress"].is_null(),
        "the refused Service has addresses: {held}"
    );
    // The node endpoint still answers on its port (httpd in the pods would not speak TLS
    // and answer an anonymous caller 401): the Service did not capture it.
    let node = c.node_hosts()[0].address();
    let health = anonymous_tls_get(c, node, endpoint, "/healthz")
        .with_context(|| format!("the node endpoint at {node}:{endpoint}"))?;
    ensure!(
        health.starts_with("HTTP/1.1 401") && health.ends_with("Unauthorized"),
        "{node}:{endpoint}/healthz answered {health:?}"
    );
    c.kubectl(&["delete", "service", "mesh-lb", "mesh-lb-kubelet"], None)?;
    Ok(())
}

/// `kubectl top` reads the metrics API, which reads the nodes' cgroup statistics: a pod
/// spinning a shell loop shows most of a core, an idle one next to nothing.
fn top_shows_a_busy_pod(c: &Cluster) -> Result<()> {
    let node = c.node(0).name().to_owned();
    let manifest = format!(
        r"
apiVersion: v1
kind: Pod
metadata: {{name: burner, labels: {{top: busy}}}}
spec:
  nodeName: {node}
  containers:
  - {{name: spin, image: '{IMAGE}', imagePullPolicy: Never, command: [sh, -c, 'while :; do :; done']}}
---
apiVersion: v1
kind: Pod
metadata: {{name: idler, labels: {{top: idle}}}}
spec:
  nodeName: {node}
  containers:
  - {{name: rest, image: '{IMAGE}', imagePullPolicy: Never, command: [sleep, '3600']}}
"
    );
    c.kubectl(&["apply", "-f", "-"], Some(&manifest))?;
    // Millicores of `pod` in `kubectl top pod` output.
    let millicores = |out: &str, pod: &str| -> Option<u64> {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(pod))?;
        line.split_whitespace()
            .nth(1)?
            .strip_suffix('m')?
            .parse()
            .ok()
    };
    let out = wait_for(
        "kubectl top pod to show the burner busy",
        Duration::from_mins(1),
        || {
            let Ok(out) = c.kubectl(&["top", "pod", "--no-headers"], None) else {
                return Ok(None);
            };
            Ok(millicores(&out, "burner")
                .is_some_and(|m| m >= 300)
                .then_some(out))
        },
    )
    .with_context(|| {
        c.kubectl(&["top", "pod"], None)
            .unwrap_or_else(|e| format!("{e:#}"))
    })?;
    let idle = millicores(&out, "idler").with_context(|| out.clone())?;
    ensure!(idle < 100, "the idle pod shows {idle}m: {out}");
    // A label selector picks the pods, as metrics-server's does.
    let selected = c.kubectl(&["top", "pod", "-l", "top=busy", "--no-headers"], None)?;
    ensure!(
        selected.lines().count() == 1 && selected.starts_with("burner"),
        "{selected}"
    );
    let nodes = c.kubectl(&["top", "node", "--no-headers"], None)?;
    for i in 0..c.node_count() {
        let name = c.node(i).name().to_owned();
        ensure!(
            nodes
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name.as_str())),
            "{name} missing from kubectl top node: {nodes}"
        );
    }
    c.kubectl(
        &[
            "delete",
            "pod",
            "burner",
            "idler",
            "--grace-period=0",
            "--force",
        ],
        None,
    )?;
    Ok(())
}

/// `kubectl autoscale` makes a `HorizontalPodAutoscaler` (autoscaling/v1 from kubectl 1.32)
/// that the controller reads as v2: a Deployment whose pods burn twice the CPU they
/// request grows to its maximum, and once its pods idle (a new template) shrinks back after
/// the short scale-down window its `behavior` sets; `kubectl get hpa` prints the targets.
fn autoscaler_follows_cpu_load(c: &Cluster) -> Result<()> {
    c.kubectl(
        &["apply", "-f", "-"],
        Some(&hpa_deployment("while :; do :; done")),
    )?;
    let made = c.kubectl(
        &[
            "autoscale",
            "deployment",
            "hpa-burner",
            "--cpu-percent=50",
            "--min=1",
            "--max=3",
        ],
        None,
    )?;
    ensure!(made.contains("hpa-burner autoscaled"), "{made}");
    // The v1 object read and patched as v2: a 5 s scale-down window instead of 300 s.
    c.kubectl(
        &[
            "patch",
            "hpa.v2.autoscaling",
            "hpa-burner",
            "--type=merge",
            "-p",
            r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":5}}}}"#,
        ],
        None,
    )?;
    wait_for(
        "the autoscaler to scale up to 3",
        Duration::from_mins(2),
        || Ok((hpa_replicas(c)? == Some(3)).then_some(())),
    )
    .with_context(|| hpa_state(c))?;
    let table = c.kubectl(&["get", "hpa", "hpa-burner", "--no-headers"], None)?;
    let cells: Vec<&str> = table.split_whitespace().collect();
    ensure!(
        cells.get(1) == Some(&"Deployment/hpa-burner") && cells.get(2) == Some(&"cpu:"),
        "{table}"
    );
    let current: u32 = cells
        .get(3)
        .and_then(|t| t.strip_suffix("/50%"))
        .and_then(|t| t.strip_suffix('%'))
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("no current utilisation in {table}"))?;
    ensure!(
        current > 55,
        "the burners show {current}% of their request: {table}"
    );
    let events = c.kubectl(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=hpa-burner,reason=SuccessfulRescale",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        None,
    )?;
    ensure!(
        events.contains(
            "New size: 3; reason: cpu resource utilization (percentage of request) above target"
        ),
        "{events}"
    );
    // Idle pods: the autoscaler goes back to its minimum once the window has passed.
    c.kubectl(&["apply", "-f", "-"], Some(&hpa_deployment("sleep 3600")))?;
    wait_for(
        "the autoscaler to scale down to 1",
        Duration::from_mins(2),
        || Ok((hpa_replicas(c)? == Some(1)).then_some(())),
    )
    .with_context(|| hpa_state(c))?;
    let limited = c.kubectl(
        &[
            "get",
            "hpa.v2.autoscaling",
            "hpa-burner",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="ScalingActive")].reason}"#,
        ],
        None,
    )?;
    ensure!(limited == "ValidMetricFound", "{}", hpa_state(c));
    let described = c.kubectl(&["describe", "hpa", "hpa-burner"], None)?;
    ensure!(
        described.contains("New size: 1; reason: All metrics below target"),
        "{described}"
    );
    c.kubectl(&["delete", "hpa", "hpa-burner"], None)?;
    c.kubectl(&["delete", "deployment", "hpa-burner"], None)?;
    Ok(())
}

/// The autoscaled Deployment, its container running `command`.
fn hpa_deployment(command: &str) -> String {
    format!(
        r"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: hpa-burner}}
spec:
  # No replicas: the autoscaler owns them, and a re-apply must not reset them.
  selector: {{matchLabels: {{app: hpa-burner}}}}
  template:
    metadata: {{labels: {{app: hpa-burner}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: spin
        image: '{IMAGE}'
        imagePullPolicy: Never
        command: [sh, -c, '{command}']
        resources: {{requests: {{cpu: 100m}}, limits: {{cpu: 200m}}}}
"
    )
}

/// The autoscaled Deployment's `spec.replicas`.
fn hpa_replicas(c: &Cluster) -> Result<Option<u32>> {
    let out = c.kubectl(
        &[
            "get",
            "deployment",
            "hpa-burner",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        None,
    )?;
    Ok(out.trim().parse().ok())
}

/// The autoscaler as `kubectl get` prints it and in full, for failure messages.
fn hpa_state(c: &Cluster) -> String {
    let table = c
        .kubectl(&["get", "hpa", "hpa-burner"], None)
        .unwrap_or_else(|e| format!("{e:#}"));
    let yaml = c
        .kubectl(&["get", "hpa", "hpa-burner", "-o", "yaml"], None)
        .unwrap_or_else(|e| format!("{e:#}"));
    format!("{table}\n{yaml}")
}

/// `kubectl debug` adds an ephemeral container to a running pod through
/// `pods/ephemeralcontainers`; its node runs it in the pod's namespaces (it sees the pod's
/// hostname and address) and reports it in `ephemeralContainerStatuses`, and its log reads
/// like any container's.
fn debug_adds_an_ephemeral_container(c: &Cluster) -> Result<()> {
    c.kubectl(
        &[
            "run",
            "dbg-target",
            &format!("--image={IMAGE}"),
            "--image-pull-policy=Never",
            "--restart=Never",
            "--",
            "sleep",
            "3600",
        ],
        None,
    )?;
    c.kubectl(
        &[
            "wait",
            "--for=condition=Ready",
            "pod/dbg-target",
            "--timeout=60s",
        ],
        None,
    )?;
    let ip = c.kubectl(
        &["get", "pod", "dbg-target", "-o", "jsonpath={.status.podIP}"],
        None,
    )?;
    let made = c.kubectl(
        &[
            "debug",
            "dbg-target",
            &format!("--image={IMAGE}"),
            "--image-pull-policy=Never",
            "--container=debugger",
            "--",
            "sh",
            "-c",
            "echo debugged from $(hostname); ip -4 addr",
        ],
        None,
    )?;
    let status = || {
        c.kubectl(
            &[
                "get",
                "pod",
                "dbg-target",
                "-o",
                "jsonpath={.status.ephemeralContainerStatuses[0].state.terminated.exitCode}",
            ],
            None,
        )
    };
    wait_for(
        "the ephemeral container to run to completion",
        Duration::from_mins(1),
        || Ok((status()?.trim() == "0").then_some(())),
    )
    .with_context(|| {
        let pod = c
            .kubectl(&["get", "pod", "dbg-target", "-o", "yaml"], None)
            .unwrap_or_else(|e| format!("{e:#}"));
        format!("kubectl debug said: {made}\n{pod}")
    })?;
    let log = c.kubectl(&["logs", "dbg-target", "-c", "debugger"], None)?;
    ensure!(log.contains("debugged from dbg-target"), "{log}");
    ensure!(
        log.contains(ip.trim()),
        "the debugger is not in the pod's network namespace ({ip}): {log}"
    );
    c.kubectl(
        &["delete", "pod", "dbg-target", "--grace-period=0", "--force"],
        None,
    )?;
    Ok(())
}

/// The `kubectl get` row of `name` in `out`, split into cells.
fn row<'a>(out: &'a str, name: &str) -> Option<Vec<&'a str>> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
}

/// A pod whose claim does not exist waits with kube-scheduler's words.
fn claimless_pod_is_unschedulable(c: &Cluster) -> Result<()> {
    c.kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            r"
apiVersion: v1
kind: Pod
metadata: {{name: claimless}}
spec:
  containers:
  - {{name: c, image: '{IMAGE}', imagePullPolicy: Never, command: [sleep, '3600'], volumeMounts: [{{name: d, mountPath: /d}}]}}
  volumes:
  - {{name: d, persistentVolumeClaim: {{claimName: nope}}}}
"
        )),
    )?;
    wait_for(
        "the claimless pod to be unschedulable",
        Duration::from_secs(30),
        || {
            let pod = c.get_json("/api/v1/namespaces/default/pods/claimless")?;
            let message = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|cond| cond["type"] == "PodScheduled")
                .and_then(|cond| cond["message"].as_str())
                .unwrap_or_default()
                .to_owned();
            Ok(message
                .contains("persistentvolumeclaim \"nope\" not found")
                .then_some(()))
        },
    )?;
    c.kubectl(
        &["delete", "pod", "claimless", "--grace-period=0", "--force"],
        None,
    )?;
    Ok(())
}

/// The volume bound to `data-keeper-0` and its directory, checked: selected for and pinned
/// to `node`, in that node's storage directory.
fn provisioned_volume(c: &Cluster, node: &str) -> Result<(String, PathBuf)> {
    let claim = c.get_json("/api/v1/namespaces/default/persistentvolumeclaims/data-keeper-0")?;
    let volume = claim["spec"]["volumeName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        claim["spec"]["storageClassName"] == "local-path"
            && claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == node
            && claim["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] == "yes",
        "{claim:#}"
    );
    let pv = c.get_json(&format!("/api/v1/persistentvolumes/{volume}"))?;
    ensure!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
            [0]
            == node,
        "{pv:#}"
    );
    let dir = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap_or_default());
    let index = (0..c.node_count())
        .find(|i| c.node(*i).name() == node)
        .context("the pod's node")?;
    ensure!(
        dir.parent() == Some(c.node(index).state_dir().join("storage").as_path()),
        "{} is not in the node's storage directory",
        dir.display()
    );
    Ok((volume, dir))
}

fn statefulset_keeps_its_volume(c: &Cluster) -> Result<()> {
    let classes = c.kubectl(&["get", "storageclass", "--no-headers"], None)?;
    ensure!(
        classes.contains("local-path (default)")
            && classes.contains("rancher.io/local-path")
            && classes.contains("WaitForFirstConsumer"),
        "{classes}"
    );
    claimless_pod_is_unschedulable(c)?;

    c.kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            r"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: keeper}}
spec:
  serviceName: keeper
  replicas: 1
  selector: {{matchLabels: {{app: keeper}}}}
  template:
    metadata: {{labels: {{app: keeper}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - {{name: c, image: '{IMAGE}', imagePullPolicy: Never, command: [sleep, '3600'], volumeMounts: [{{name: data, mountPath: /data}}]}}
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 16Mi}}}}}}
"
        )),
    )?;
    let running = |not_uid: &str| -> Result<Option<serde_json::Value>> {
        let pod = c.get_json("/api/v1/namespaces/default/pods/keeper-0")?;
        Ok(
            (pod["status"]["phase"] == "Running" && pod["metadata"]["uid"] != not_uid)
                .then_some(pod),
        )
    };
    let first = wait_for("keeper-0 to run", Duration::from_mins(1), || running(""))?;
    let node = first["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (volume, dir) = provisioned_volume(c, &node)?;

    c.kubectl(
        &[
            "exec",
            "keeper-0",
            "--",
            "sh",
            "-c",
            "echo kept > /data/note",
        ],
        None,
    )?;
    ensure!(std::fs::read_to_string(dir.join("note"))? == "kept\n");
    let listed = c.kubectl(&["get", "pv,pvc,sc", "--no-headers"], None)?;
    let volume_row = row(&listed, &format!("persistentvolume/{volume}")).context(listed.clone())?;
    let claim_row = row(&listed, "persistentvolumeclaim/data-keeper-0").context(listed.clone())?;
    ensure!(
        volume_row.contains(&"Bound")
            && volume_row.contains(&"default/data-keeper-0")
            && volume_row.contains(&"Delete")
            && claim_row.contains(&"Bound")
            && claim_row.contains(&volume.as_str())
            && claim_row.contains(&"RWO"),
        "{listed}"
    );

    let uid = first["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    c.kubectl(&["delete", "pod", "keeper-0"], None)?;
    let second = wait_for("keeper-0 to come back", Duration::from_mins(1), || {
        running(&uid)
    })?;
    ensure!(second["spec"]["nodeName"] == node.as_str(), "{second:#}");
    let read = wait_for(
        "the new pod to read the note",
        Duration::from_secs(30),
        || {
            Ok(
                c.kubectl(&["exec", "keeper-0", "--", "cat", "/data/note"], None)
                    .ok(),
            )
        },
    )?;
    ensure!(read == "kept\n", "the recreated pod read {read:?}");

    deleting_the_claim_removes_the_volume(c, &volume, &dir)
}

/// The claim outlives its set; deleting it deletes the volume and its directory.
fn deleting_the_claim_removes_the_volume(
    c: &Cluster,
    volume: &str,
    dir: &std::path::Path,
) -> Result<()> {
    // The claim waits for its pod (pvc-protection) before its volume is released.
    c.kubectl(&["delete", "pvc", "data-keeper-0", "--wait=false"], None)?;
    let claim = c.get_json("/api/v1/namespaces/default/persistentvolumeclaims/data-keeper-0")?;
    ensure!(
        claim["metadata"]["deletionTimestamp"].is_string() && dir.exists(),
        "the claim in use went: {claim:#}"
    );
    c.kubectl(&["delete", "statefulset", "keeper"], None)?;
    wait_for(
        "the claim, the volume and its directory to go",
        Duration::from_secs(45),
        || {
            let gone = c.kubectl(&["get", "pv", volume], None).is_err()
                && c.kubectl(&["get", "pvc", "data-keeper-0"], None).is_err();
            Ok((gone && !dir.exists()).then_some(()))
        },
    )?;
    Ok(())
}

fn killed_node_keeps_traffic_flowing(c: &Cluster) -> Result<()> {
    let pods = spread(c, "mesh")?;
    let victim = 1;
    c.kill_node(victim);
    // The daemon is gone; its pods, routes and bridge are not.
    full_mesh(&pods).context("while the node daemon was dead")?;
    c.restart_node(victim)?;
    let after = spread(c, "mesh")?;
    for (a, b) in pods.iter().zip(&after) {
        ensure!(
            a.name == b.name && a.ip == b.ip,
            "pods changed across the restart: {a:?} -> {b:?}"
        );
    }
    full_mesh(&after).context("after the node daemon restarted")
}

/// The pod CIDRs routed by skiff (route protocol 83) in a host.
fn skiff_routes(c: &Cluster, node: usize) -> Result<Vec<serde_json::Value>> {
    let out = c.node_hosts()[node].output("ip", &["-j", "route", "show", "proto", "83"])?;
    ensure!(
        out.status.success(),
        "ip route: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice::<serde_json::Value>(&out.stdout)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn deleted_node_loses_its_routes(c: &Cluster) -> Result<()> {
    let gone = 2;
    let name = c.node_hosts()[gone].label().to_owned();
    let node = c.get_json(&format!("/api/v1/nodes/{name}"))?;
    let cidr = node["spec"]["podCIDR"]
        .as_str()
        .context("the node has no pod CIDR")?
        .to_owned();
    for other in [0, 1] {
        let routes = skiff_routes(c, other)?;
        ensure!(
            routes.iter().any(|r| r["dst"] == cidr),
            "node {other} has no route to {cidr} before the deletion: {routes:?}"
        );
    }
    c.stop_node(gone);
    c.kubectl(&["delete", "node", &name], None)?;
    for other in [0, 1] {
        wait_for(
            &format!("node {other} to drop its route to {cidr}"),
            Duration::from_secs(20),
            || Ok((!skiff_routes(c, other)?.iter().any(|r| r["dst"] == cidr)).then_some(())),
        )?;
    }
    Ok(())
}

fn routed_cluster_uses_tunnel_and_direct_routes(c: &Cluster) -> Result<()> {
    let pods = spread(c, "mesh")?;
    let cidr_of = |i: usize| -> Result<String> {
        let name = c.node_hosts()[i].label();
        Ok(
            c.get_json(&format!("/api/v1/nodes/{name}"))?["spec"]["podCIDR"]
                .as_str()
                .context("no pod CIDR")?
                .to_owned(),
        )
    };
    let (cidr1, cidr2) = (cidr_of(1)?, cidr_of(2)?);
    let routes = wait_for(
        "node 0's routes to both peers",
        Duration::from_secs(20),
        || {
            let r = skiff_routes(c, 0)?;
            Ok((r.len() == 2).then_some(r))
        },
    )?;
    let to = |cidr: &str| routes.iter().find(|r| r["dst"] == cidr).cloned();
    let direct = to(&cidr1).context("no route to node 1")?;
    ensure!(
        direct["dev"] == "eth0" && direct["gateway"] == c.node_hosts()[1].address().to_string(),
        "node 1 shares node 0's link and should be reached directly: {direct}"
    );
    let tunnel = to(&cidr2).context("no route to node 2")?;
    ensure!(
        tunnel["dev"] == "skiff-vxlan",
        "node 2 is behind the router and should be reached through the tunnel: {tunnel}"
    );
    wait_for(
        "the first tunnelled TCP connection",
        Duration::from_secs(20),
        || Ok(tcp(Some(&pods[0].netns), Some(&pods[2].netns), pods[2].ip).ok()),
    )?;
    full_mesh(&pods)
}
