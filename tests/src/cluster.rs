//! A multi-host cluster on one machine for end-to-end tests: every "host" is a network
//! namespace the test makes, joined to a switch (a bridge in a namespace of its own), with a
//! router namespace between two subnets; `control` runs in a host of its own, a real `node`
//! daemon in each node host, and one more host runs nothing (the outside client). Nothing
//! is linked to the machine's own namespace, and an nftables counter on the machine's
//! uplink proves that no test packet left. Everything is removed on drop, after a failure
//! or a panic too; leftovers of test processes that were killed are swept at the next start.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Mutex, MutexGuard, PoisonError},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{control::ControlPlane, netns::Netns, node::NodeDaemon};

/// Prefix of every namespace, link-less name and nft table a cluster makes, followed by
/// the test process's PID (see [`crate::unique_name`]), so leftovers of dead processes are
/// recognised.
const PREFIX: &str = "skc";
/// Subnets of the two switches: hosts on the same switch share a link; the router joins
/// the two.
const SUBNETS: [[u8; 3]; 2] = [[192, 168, 50], [192, 168, 60]];
/// The router's host number on each subnet (every host's default gateway).
const ROUTER: u8 = 254;
/// The pod network `control` hands node pod CIDRs from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The Service range (`control`'s default).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// One of the two switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subnet {
    /// `192.168.50.0/24`, where the control plane lives.
    A,
    /// `192.168.60.0/24`, one router hop from A.
    B,
}

impl Subnet {
    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }

    /// The address of host number `n` on this subnet.
    #[must_use]
    pub fn host(self, n: u8) -> Ipv4Addr {
        let [a, b, c] = SUBNETS[self.index()];
        Ipv4Addr::new(a, b, c, n)
    }

    /// The subnet in CIDR notation.
    #[must_use]
    pub fn cidr(self) -> String {
        format!("{}/24", self.host(0))
    }
}

/// What cluster to build.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The subnet of each node host (the length is the number of nodes).
    pub nodes: Vec<Subnet>,
    /// The subnet of the outside client host.
    pub client: Subnet,
    /// Extra flags for `control`.
    pub control_args: Vec<String>,
    /// Extra flags for every `node`.
    pub node_args: Vec<String>,
}

impl ClusterConfig {
    /// Three nodes on two subnets joined by the router: `node-0` and `node-1` beside the
    /// control plane on A, `node-2` and the client on B.
    #[must_use]
    pub fn two_subnets() -> Self {
        Self {
            nodes: vec![Subnet::A, Subnet::A, Subnet::B],
            client: Subnet::B,
            control_args: Vec::new(),
            node_args: Vec::new(),
        }
    }

    /// `count` nodes on one switch with the control plane and the client.
    #[must_use]
    pub fn one_switch(count: usize) -> Self {
        Self {
            nodes: vec![Subnet::A; count],
            client: Subnet::A,
            control_args: Vec::new(),
            node_args: Vec::new(),
        }
    }
}

/// A test host: a network namespace with one interface, `eth0`, on a switch.
#[derive(Debug)]
pub struct Host {
    ns: Netns,
    label: String,
    address: Ipv4Addr,
    subnet: Subnet,
}

impl Host {
    /// What the test calls it (`control`, `node-0`, `client`).
    #[must_use]
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its address on its switch.
    #[must_use]
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The switch it is on.
    #[must_use]
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The namespace's name (`ip netns` name).
    #[must_use]
    pub fn netns(&self) -> &str {
        self.ns.name()
    }

    /// The namespace file, for `nsenter --net=`.
    #[must_use]
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.ns.name())
    }

    /// A command that runs `program` in the host (`nsenter --net`, which, unlike
    /// `ip netns exec`, keeps the machine's `/sys` and so its cgroups).
    #[must_use]
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `program args` in the host and returns its output.
    ///
    /// # Errors
    /// If it cannot be started.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.label))
    }

    /// Runs `f` on a thread inside the host: sockets it opens and processes it spawns
    /// live there.
    ///
    /// # Panics
    /// If the thread cannot enter the namespace, or `f` panics.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.ns
                    .enter()
                    .unwrap_or_else(|err| panic!("entering host {}: {err:#}", self.label));
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `ip -n <host> ...`.
    ///
    /// # Errors
    /// If `ip` fails.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        self.ns.ip(args)
    }
}

/// The switches and the router: namespaces with a bridge each, and one with a leg on both.
#[derive(Debug)]
struct Fabric {
    switches: [Netns; 2],
    router: Netns,
    /// Switch ports made so far, for unique port names.
    ports: usize,
}

impl Fabric {
    fn new() -> Result<Self> {
        let switches = [Netns::new(PREFIX)?, Netns::new(PREFIX)?];
        let router = Netns::new(PREFIX)?;
        for (i, sw) in switches.iter().enumerate() {
            sw.ip(&["link", "add", "br0", "type", "bridge"])?;
            sw.ip(&["link", "set", "br0", "up"])?;
            let leg = format!("r{i}");
            sw.veth_to("rt", &router, &leg)?;
            sw.ip(&["link", "set", "rt", "master", "br0", "up"])?;
            let subnet = if i == 0 { Subnet::A } else { Subnet::B };
            let address = format!("{}/24", subnet.host(ROUTER));
            router.ip(&["addr", "add", &address, "dev", &leg])?;
            router.ip(&["link", "set", &leg, "up"])?;
        }
        sysctl(router.name(), "net.ipv4.ip_forward", "1")?;
        Ok(Self {
            switches,
            router,
            ports: 0,
        })
    }

    /// Makes a host on `subnet` with host number `n`.
    fn host(&mut self, label: &str, subnet: Subnet, n: u8) -> Result<Host> {
        let ns = Netns::new(PREFIX)?;
        let sw = &self.switches[subnet.index()];
        let port = format!("p{}", self.ports);
        self.ports += 1;
        sw.veth_to(&port, &ns, "eth0")?;
        sw.ip(&["link", "set", &port, "master", "br0", "up"])?;
        let address = subnet.host(n);
        ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &subnet.host(ROUTER).to_string(),
        ])?;
        Ok(Host {
            ns,
            label: label.to_owned(),
            address,
            subnet,
        })
    }
}

fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(["--", "sysctl", "-qw", &format!("{key}={value}")])
        .output()
        .context("running sysctl")?;
    ensure!(
        out.status.success(),
        "sysctl {key}={value} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// An nftables counter in the machine's own namespace on its uplink (the interface of the
/// default route) for every packet from or to the test ranges; removed on drop.
#[derive(Debug)]
pub struct EscapeWatch {
    table: String,
    uplink: Option<String>,
}

impl EscapeWatch {
    /// Starts counting packets on the uplink from or to any of `ranges` (CIDRs).
    ///
    /// # Errors
    /// If `nft` fails.
    pub fn new(ranges: &[&str]) -> Result<Self> {
        let table = crate::unique_name(&format!("{PREFIX}-escape")).replace('-', "_");
        let Some(uplink) = uplink()? else {
            // No default route: nothing can leave this machine at all.
            return Ok(Self {
                table,
                uplink: None,
            });
        };
        let set = ranges.join(", ");
        let rules = format!(
            "table ip {table} {{\n\
             chain leaving {{ type filter hook postrouting priority 0; policy accept;\n\
             oifname \"{uplink}\" ip saddr {{ {set} }} counter\n\
             oifname \"{uplink}\" ip daddr {{ {set} }} counter\n\
             }}\n\
             chain forwarded {{ type filter hook forward priority 0; policy accept;\n\
             oifname \"{uplink}\" ip saddr {{ {set} }} counter\n\
             }}\n}}\n"
        );
        nft_stdin(&rules)?;
        Ok(Self {
            table,
            uplink: Some(uplink),
        })
    }

    /// Packets counted so far.
    ///
    /// # Errors
    /// If `nft` fails or prints something unexpected.
    pub fn escaped(&self) -> Result<u64> {
        if self.uplink.is_none() {
            return Ok(0);
        }
        let out = Command::new("nft")
            .args(["-j", "list", "table", "ip", &self.table])
            .output()
            .context("running nft")?;
        ensure!(
            out.status.success(),
            "nft list table {}: {}",
            self.table,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mut packets = 0;
        for item in doc["nftables"].as_array().into_iter().flatten() {
            for expr in item["rule"]["expr"].as_array().into_iter().flatten() {
                packets += expr["counter"]["packets"].as_u64().unwrap_or(0);
            }
        }
        Ok(packets)
    }

    /// Fails if any packet was counted.
    ///
    /// # Errors
    /// When a test packet left through the uplink.
    pub fn check(&self) -> Result<()> {
        let n = self.escaped()?;
        ensure!(
            n == 0,
            "{n} test packet(s) left through the machine's uplink {}",
            self.uplink.as_deref().unwrap_or("?")
        );
        Ok(())
    }
}

impl Drop for EscapeWatch {
    fn drop(&mut self) {
        if self.uplink.is_some()
            && let Err(err) = nft(&["delete", "table", "ip", &self.table])
        {
            eprintln!("cleanup: {err:#}");
        }
    }
}

/// The interface of the machine's default route.
fn uplink() -> Result<Option<String>> {
    let out = Command::new("ip")
        .args(["-j", "route", "show", "default"])
        .output()
        .context("running ip route")?;
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Ok(routes
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|r| r["dev"].as_str().map(str::to_owned)))
}

fn nft(args: &[&str]) -> Result<()> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .context("running nft")?;
    ensure!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn nft_stdin(rules: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "nft -f: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Removes namespaces and nft tables that clusters of test processes no longer alive left
/// behind (a test killed by a timeout has no chance to drop its cluster).
fn sweep_leftovers() {
    let dead = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split(['-', '_']).next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name, &format!("{PREFIX}-")) {
                eprintln!("cleanup: removing netns {name} of a test process that is gone");
                let _ = Command::new("ip").args(["netns", "delete", &name]).output();
            }
        }
    }
    let tables = Command::new("nft")
        .args(["-j", "list", "tables", "ip"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .unwrap_or_default();
    for item in tables["nftables"].as_array().into_iter().flatten() {
        if let Some(name) = item["table"]["name"].as_str()
            && dead(name, &format!("{PREFIX}_escape_"))
        {
            let _ = nft(&["delete", "table", "ip", name]);
        }
    }
}

/// A running multi-host cluster. Fields drop in order: nodes first (they clean up their
/// containers and links), then the control plane, the hosts, the fabric, and last the
/// uplink counter.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Mutex<NodeDaemon>>,
    control: ControlPlane,
    node_hosts: Vec<Host>,
    control_host: Host,
    client: Host,
    fabric: Fabric,
    escape: EscapeWatch,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Builds the hosts, starts `control` and a `node` per node host, and waits until every
    /// node is Ready.
    ///
    /// # Errors
    /// If any part does not come up; what was made so far is removed.
    pub fn start(config: &ClusterConfig) -> Result<Self> {
        sweep_leftovers();
        let dir = tempfile::Builder::new()
            .prefix("skiff-cluster-")
            .tempdir()?;
        let mut ranges = vec![CLUSTER_CIDR, SERVICE_CIDR];
        let subnets = [Subnet::A.cidr(), Subnet::B.cidr()];
        ranges.extend(subnets.iter().map(String::as_str));
        let escape = EscapeWatch::new(&ranges)?;
        let mut fabric = Fabric::new()?;
        let control_host = fabric.host("control", Subnet::A, 10)?;
        let client = fabric.host("client", config.client, 100)?;
        let mut node_hosts = Vec::new();
        for (i, subnet) in config.nodes.iter().enumerate() {
            let n = u8::try_from(20 + i).context("too many nodes")?;
            node_hosts.push(fabric.host(&format!("node-{i}"), *subnet, n)?);
        }
        let mut control_args = vec!["--cluster-cidr", CLUSTER_CIDR];
        control_args.extend(config.control_args.iter().map(String::as_str));
        let control_dir = dir.path().join("control");
        let address = control_host.address();
        let control =
            control_host.run(|| ControlPlane::start_on(&control_dir, address, &control_args))?;
        let mut cluster = Self {
            nodes: Vec::new(),
            control,
            node_hosts,
            control_host,
            client,
            fabric,
            escape,
            dir,
        };
        for i in 0..cluster.node_hosts.len() {
            let node = cluster.start_node(i, &config.node_args)?;
            cluster.nodes.push(Mutex::new(node));
        }
        Ok(cluster)
    }

    fn start_node(&self, i: usize, extra: &[String]) -> Result<NodeDaemon> {
        let host = &self.node_hosts[i];
        let address = host.address().to_string();
        let mut args = vec!["--node-ip", address.as_str()];
        // Names outside the cluster go nowhere unless the test starts a resolver of its own:
        // never to the machine's.
        if !extra.iter().any(|a| a == "--dns-upstream") {
            args.extend(["--dns-upstream", "127.0.0.1:1"]);
        }
        args.extend(extra.iter().map(String::as_str));
        let dir = self.dir.path().join(host.label());
        let name = host.label().to_owned();
        host.run(|| NodeDaemon::start(&self.control, &dir, &name, &args))
            .with_context(|| format!("starting node {name}"))
    }

    /// The control plane (its `http*` helpers work from any host's thread, see
    /// [`Host::run`]; [`Self::kubectl`] runs kubectl in the control host).
    #[must_use]
    pub fn control(&self) -> &ControlPlane {
        &self.control
    }

    /// The host `control` runs in.
    #[must_use]
    pub fn control_host(&self) -> &Host {
        &self.control_host
    }

    /// The host that runs no node: the outside client.
    #[must_use]
    pub fn client(&self) -> &Host {
        &self.client
    }

    /// The node hosts, in node order.
    #[must_use]
    pub fn node_hosts(&self) -> &[Host] {
        &self.node_hosts
    }
    /// One GET of `path` on node `i`'s endpoint, from inside its host, as the cluster's
    /// admin: the endpoint serves HTTPS to callers whose certificate the API authorizes.
    /// The whole answer, status line and headers included.
    ///
    /// # Errors
    /// When the endpoint cannot be reached.
    pub fn node_endpoint_get(&self, i: usize, path: &str) -> Result<String> {
        let host = &self.node_hosts()[i];
        let endpoint = format!("{}:{}", host.address(), self.node(i).port());
        let creds = self.control().admin_credentials()?;
        let admin = skiff_api::kubelet_client::KubeletClient::with_identity(
            &creds.cert_pem,
            &creds.key_pem,
        )?;
        host.run(|| -> Result<String> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(crate::tls::node_get(&admin, &endpoint, path))
        })
    }

    /// Node daemon `i` (held while the guard lives).
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn node(&self, i: usize) -> MutexGuard<'_, NodeDaemon> {
        self.nodes[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many nodes the cluster has.
    #[must_use]
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Kills node `i` with SIGKILL, as a crash would: its containers, routes and tunnel
    /// stay.
    pub fn kill_node(&self, i: usize) {
        self.node(i).kill();
    }

    /// Starts node `i` again over the same state, in its host, and waits until it is Ready.
    ///
    /// # Errors
    /// If it does not come back.
    pub fn restart_node(&self, i: usize) -> Result<()> {
        let host = &self.node_hosts[i];
        let mut guard = self.node(i);
        let node: &mut NodeDaemon = &mut guard;
        host.run(|| node.restart(&self.control))
    }

    /// Stops node `i` with SIGTERM (it removes its containers, routes and links).
    pub fn stop_node(&self, i: usize) {
        self.node(i).stop();
    }

    /// Runs kubectl (from the control host) and returns its stdout, failing with its
    /// stderr if it fails.
    ///
    /// # Errors
    /// If kubectl fails.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        self.control_host.run(|| self.control.ok(args, stdin))
    }

    /// A GET to the API server (from the control host), returning the parsed body.
    ///
    /// # Errors
    /// On connection failure or a body that is not JSON.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let body = self.control_host.run(|| self.control.http_get(path))?;
        serde_json::from_str(&body).with_context(|| format!("GET {path}: {body}"))
    }

    /// Fails if any test packet left through the machine's uplink so far.
    ///
    /// # Errors
    /// When one did.
    pub fn check_nothing_escaped(&self) -> Result<()> {
        self.escape.check()
    }

    /// Builds the test busybox image as `image` and imports it onto every node with
    /// `ctl image import --node`, as a user would on hosts that cannot pull.
    ///
    /// # Errors
    /// When the image cannot be built or a node refuses it.
    pub fn import_busybox(&self, image: &str) -> Result<()> {
        let tar = crate::image::busybox_oci_layout(self.dir(), image)?;
        for host in self.node_hosts() {
            let out = self.control_host.run(|| {
                Command::new(crate::bin("ctl"))
                    .arg("--kubeconfig")
                    .arg(self.control.kubeconfig())
                    .args(["image", "import"])
                    .arg(&tar)
                    .args(["--node", host.label()])
                    .output()
            })?;
            ensure!(
                out.status.success(),
                "ctl image import onto {}: {}",
                host.label(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Where a pod (as the API returns it) runs: its node's index and its sandbox's
    /// network namespace file, so a test can open sockets as the pod.
    ///
    /// # Errors
    /// When the pod has no IP yet or is bound to a node that is not one of the cluster's.
    pub fn pod_at(&self, pod: &serde_json::Value) -> Result<PodAt> {
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let node = self
            .node_hosts()
            .iter()
            .position(|h| h.label() == node_name)
            .with_context(|| format!("pod on unknown node {node_name:?}"))?;
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
        Ok(PodAt {
            name: pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            node,
            ip: ip.parse().with_context(|| format!("pod IP {ip:?}"))?,
            netns: pod_netns(&self.node(node).state_dir().join("network"), uid),
        })
    }

    /// The router's namespace name (for tests that look at routing between the subnets).
    #[must_use]
    pub fn router_netns(&self) -> &str {
        self.fabric.router.name()
    }

    /// The cluster's scratch directory (node and control state, logs).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The logs of every process, for a failure message.
    #[must_use]
    pub fn logs(&self) -> String {
        use std::fmt::Write as _;
        let mut text = format!("--- control\n{}", self.control.log());
        for n in &self.nodes {
            let n = n.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = write!(text, "--- node {}\n{}", n.name(), n.log());
        }
        text
    }
}

/// A pod, the index of the node it runs on, and its sandbox's network namespace file.
#[derive(Debug, Clone)]
pub struct PodAt {
    /// The pod's name.
    pub name: String,
    /// The index of its node among [`Cluster::node_hosts`].
    pub node: usize,
    /// Its pod IP.
    pub ip: Ipv4Addr,
    /// Its sandbox's network namespace file under the node's state directory.
    pub netns: PathBuf,
}

/// Waits until `check` returns `Ok(Some(value))`, polling every 200 ms for `timeout`.
///
/// # Errors
/// The last error (or "timed out") when the time is up.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(err) => Some(err),
        };
        if std::time::Instant::now() > deadline {
            match last {
                Some(err) => return Err(err.context(format!("waiting for {what}"))),
                None => bail!("timed out waiting for {what}"),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The network namespace file of pod `uid` under a node's network state directory: the one
/// its sandbox record names (a sandbox claimed from the node's spare pool keeps the spare's
/// files), else the path an on-demand sandbox gets.
#[must_use]
pub fn pod_netns(network: &Path, uid: &str) -> PathBuf {
    std::fs::read(network.join("sandboxes").join(format!("{uid}.json")))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|record| record["netns"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| network.join("netns").join(uid))
}
