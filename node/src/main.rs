//! The node daemon. By default it is a real node: it runs the pods bound to `--name`
//! through libcontainer (root needed). `--simulate N` serves N simulated nodes instead (no
//! containers, no root) for scheduler and controller tests at scale.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser};
use skiff_kubelet::node::capacity::Reservations;
use skiff_node_sim::{self as simulate, KUBELET_VERSION, SimConfig, SimTaint};
use tracing_subscriber::{EnvFilter, prelude::*};

use crate::daemon::run::NodeConfig;

mod daemon;
mod join;

#[derive(Debug, Parser)]
#[command(
    name = "node",
    about = "skiff's node daemon",
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    real: RealArgs,
    #[command(flatten)]
    simulate: SimulateArgs,
}

/// The real node: its name, its slice of the host, and its endpoint.
#[derive(Debug, Args)]
#[command(next_help_heading = "Real node")]
#[expect(
    clippy::struct_excessive_bools,
    reason = "each is a command-line switch of its own"
)]
struct RealArgs {
    /// The Node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// The node's `InternalIP`: where the API server and other nodes reach it (default: the
    /// address of --pod-network-iface, else of the default route's interface).
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// The interface that carries pod traffic to other nodes, on multi-homed hosts
    /// (default: the one holding --node-ip, else the default route's).
    #[arg(long, value_name = "IFACE")]
    pod_network_iface: Option<String>,
    /// How other nodes' pods are reached: `host-gw` (a direct route via the peer; peers
    /// must share a link), `vxlan` (a tunnel) or `auto` (direct where the peer is on the
    /// link, the tunnel elsewhere).
    #[arg(long, default_value = "auto")]
    pod_network: skiff_node_net::peers::Mode,
    /// Port of the node endpoint (logs, exec, attach, stats), bound on --node-ip.
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// State directory: images, containers, pod records, network state
    /// (default /var/lib/skiff/node/<name>).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Container logs (default <state-dir>/logs).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Where the built-in local-path provisioner makes volumes, a directory each
    /// (default <state-dir>/storage).
    #[arg(long, value_name = "DIR")]
    storage_dir: Option<PathBuf>,
    /// cgroup parent of every pod (default /skiff/<name>).
    #[arg(long)]
    cgroup_parent: Option<String>,
    /// The pod bridge.
    #[arg(long, default_value = "skiff0")]
    bridge: String,
    /// The pod CIDR; without it the one the control plane assigns (`spec.podCIDR`).
    #[arg(long)]
    pod_cidr: Option<skiff_types::Ipv4Cidr>,
    /// Pods this node takes.
    #[arg(long, default_value_t = 110)]
    max_pods: u64,
    /// Spare pod sandboxes (network namespace, veth on the bridge, address) kept ready so
    /// a starting pod claims one instead of waiting for the kernel to build it; rebuilt in
    /// the background after each claim. 0 disables the pool. Default: enough for a burst
    /// of pods, bounded so that spares never take the addresses --max-pods needs.
    #[arg(long, value_name = "N")]
    sandbox_pool: Option<usize>,
    /// CPU reserved for the system, in millicores.
    #[arg(long, default_value_t = 0)]
    reserved_cpu_millis: u64,
    /// Memory reserved for the system, in bytes.
    #[arg(long, default_value_t = 0)]
    reserved_memory: u64,
    /// A registry reached over plain HTTP (`host:port`); repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Registry mirrors and per-registry credentials and TLS, in k3s's `registries.yaml`
    /// form (default: /etc/skiff/registries.yaml when it exists).
    #[arg(long, value_name = "FILE")]
    registry_config: Option<PathBuf>,
    /// Pull a registry that has mirrors from its mirrors only, never from the registry
    /// itself (air-gapped hosts; k3s's --disable-default-registry-endpoint).
    #[arg(long)]
    disable_default_registry_endpoint: bool,
    /// On exit, stop every container and remove sandboxes, the bridge and the rules
    /// (otherwise containers keep running and the next start adopts them).
    #[arg(long)]
    cleanup_on_exit: bool,
    /// The cgroup v2 directory whose processes reach Services through the socket load
    /// balancer: pods and, in production, host processes (default: the cgroup v2 root).
    /// Several nodes on one machine each give their own subtree.
    #[arg(long, value_name = "DIR")]
    socket_lb_cgroup: Option<PathBuf>,
    /// Where the Service datapath's programs and maps are pinned, so a restarted node
    /// finds them (default /sys/fs/bpf/skiff/<name>).
    #[arg(long, value_name = "DIR")]
    bpf_pin_dir: Option<PathBuf>,
    /// The Service datapath: `ebpf` (socket load balancer and TC programs; when the kernel
    /// lacks what they need, the node says why and uses `nftables`) or `nftables` (a table
    /// of the node's own in kube-proxy's nftables layout).
    #[arg(long, value_enum, default_value_t = daemon::services::ProxyMode::Ebpf)]
    proxy_mode: daemon::services::ProxyMode,
    /// Run without the Service proxy (no eBPF programs, Services unreachable from here).
    #[arg(long)]
    no_service_proxy: bool,
    /// The cluster domain: pods' search path, the names the node's DNS answers.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The `kube-system/kube-dns` Service's address, the nameserver of `ClusterFirst` pods.
    #[arg(long, default_value = "10.96.0.10")]
    cluster_dns: Ipv4Addr,
    /// A resolver for names outside the cluster (`addr` or `addr:port`), repeatable
    /// (default: the nameservers of the host's /etc/resolv.conf).
    #[arg(long = "dns-upstream", value_name = "ADDR", value_parser = parse_upstream)]
    dns_upstreams: Vec<std::net::SocketAddr>,
    /// Serve no cluster DNS on this node; `ClusterFirst` pods get the host's resolver.
    #[arg(long)]
    no_cluster_dns: bool,
}

fn parse_upstream(text: &str) -> Result<std::net::SocketAddr, String> {
    skiff_node_dns::upstream::parse(text).ok_or_else(|| format!("{text:?} is not an address"))
}

/// Where the node's DNS forwards other names: the operator's resolvers, else the host's.
fn dns_upstreams(given: Vec<std::net::SocketAddr>) -> Vec<std::net::SocketAddr> {
    if !given.is_empty() {
        return given;
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    skiff_node_dns::upstream::from_resolv_conf(&text)
}

/// How to reach the API server.
#[derive(Debug, Args)]
#[command(next_help_heading = "API server")]
struct ApiArgs {
    /// API server URL (`https://127.0.0.1:6443`), joined with --token and --ca-file;
    /// without it the kubeconfig is used.
    #[arg(long, conflicts_with = "kubeconfig", requires_all = ["token", "ca_file"])]
    server: Option<String>,
    /// Bootstrap token (control's `<data-dir>/node-token`): the node asks for a client
    /// certificate of its own with it and keeps it in `<state-dir>/pki`.
    #[arg(long, requires = "server")]
    token: Option<String>,
    /// The cluster CA to trust (control's `<data-dir>/pki/ca.crt`).
    #[arg(long, requires = "server")]
    ca_file: Option<PathBuf>,
    /// Kubeconfig to reach the API server (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

/// Simulated nodes: Node objects, Leases and pod status without running anything.
#[derive(Debug, Args)]
#[command(next_help_heading = "Simulated nodes")]
struct SimulateArgs {
    /// Serve this many simulated nodes instead of running real pods.
    #[arg(long, value_name = "N")]
    simulate: Option<usize>,
    /// Simulated node names are `<prefix><index>`; a second process needs another prefix.
    #[arg(long, default_value = "sim-")]
    name_prefix: String,
    /// CPU capacity (and allocatable) of each simulated node.
    #[arg(long, default_value = "32")]
    cpu: String,
    /// Memory capacity of each simulated node.
    #[arg(long, default_value = "256Gi")]
    memory: String,
    /// How many pods each simulated node takes.
    #[arg(long, default_value = "110")]
    pods: String,
    /// Ephemeral storage of each simulated node.
    #[arg(long, default_value = "100Gi")]
    ephemeral_storage: String,
    /// Extra labels, `k=v,k2=v2`.
    #[arg(long, value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Taints to register with, `key=value:Effect,key:Effect`.
    #[arg(long, value_delimiter = ',', value_parser = parse_taint)]
    taints: Vec<SimTaint>,
    /// Spread the nodes over this many zones (`topology.kubernetes.io/zone=zone-<i % N>`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    zones: u16,
    /// Lease duration written into each node's Lease.
    #[arg(long, default_value_t = 40)]
    lease_duration_seconds: u32,
    /// How often each node's Lease is renewed (the renewals of all nodes are spread over
    /// this interval).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    lease_renew_interval_seconds: u64,
    /// Delay between a pod being bound and its containers starting (the time its sandbox
    /// takes).
    #[arg(long, default_value_t = 0)]
    pod_startup_ms: u64,
    /// How long the containers of a Job's pods run before they exit 0, when the pod has no
    /// `skiff.io/sim-run-seconds` annotation.
    #[arg(long, default_value_t = 1000)]
    job_run_ms: u64,
    /// Restart back-off of simulated containers (instead of the kubelet's 10 s doubling to
    /// 5 min).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    restart_backoff_ms: u64,
    /// `InternalIP` of node 0; node i reports this address plus i. Text in status only: no
    /// traffic goes there.
    #[arg(long, default_value = "127.64.0.1")]
    node_ip_base: Ipv4Addr,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("label {text:?} needs the form key=value"))?;
    if key.is_empty() {
        return Err(format!("label {text:?} has an empty key"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_taint(text: &str) -> Result<SimTaint, String> {
    let (kv, effect) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("taint {text:?} needs the form key=value:Effect"))?;
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        return Err(format!("taint {text:?} has an empty key"));
    }
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "taint {text:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    Ok(SimTaint {
        key: key.to_owned(),
        value: value.to_owned(),
        effect: effect.to_owned(),
    })
}

impl SimulateArgs {
    fn config(&self, count: usize) -> SimConfig {
        SimConfig {
            count,
            prefix: self.name_prefix.clone(),
            capacity: BTreeMap::from([
                ("cpu".to_owned(), self.cpu.clone()),
                ("memory".to_owned(), self.memory.clone()),
                ("pods".to_owned(), self.pods.clone()),
                (
                    "ephemeral-storage".to_owned(),
                    self.ephemeral_storage.clone(),
                ),
            ]),
            labels: self.labels.iter().cloned().collect(),
            taints: self.taints.clone(),
            zones: usize::from(self.zones),
            lease_duration: Duration::from_secs(u64::from(self.lease_duration_seconds)),
            lease_renew_interval: Duration::from_secs(self.lease_renew_interval_seconds),
            pod_startup: Duration::from_millis(self.pod_startup_ms),
            job_run: Duration::from_millis(self.job_run_ms),
            restart_backoff: Duration::from_millis(self.restart_backoff_ms),
            node_ip_base: self.node_ip_base,
            concurrency: usize::try_from(self.concurrency).unwrap_or(32),
        }
    }
}

/// A client to the API server that says it is the kubelet `version`, and the CAs it trusts
/// (the cluster CA, which also signs the client certificates the node endpoint accepts).
/// With `--server` it authenticates as node `name` with the certificate kept in `pki_dir`,
/// joining with the bootstrap token first if there is none.
async fn client(
    api: &ApiArgs,
    version: &str,
    identity: Option<(&str, &std::path::Path)>,
) -> Result<(kube::Client, Vec<Vec<u8>>)> {
    let mut config = if let (Some(server), Some(token), Some(ca_file)) =
        (&api.server, &api.token, &api.ca_file)
    {
        let (name, pki_dir) =
            identity.context("--server with --token joins a real node (use --kubeconfig)")?;
        let ca_pem = std::fs::read_to_string(ca_file)
            .with_context(|| format!("reading {}", ca_file.display()))?;
        let bootstrap = join::Bootstrap {
            server,
            ca_pem: &ca_pem,
            token: token.trim(),
        };
        let identity = join::identity(&bootstrap, name, pki_dir).await?;
        let mut config = join::config(server, &ca_pem)?;
        join::authenticate(&mut config, &identity);
        config
    } else {
        let options = kube::config::KubeConfigOptions::default();
        match &api.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .context("loading the kubeconfig")?
            }
            None => kube::Config::from_kubeconfig(&options)
                .await
                .context("loading the kubeconfig")?,
        }
    };
    // Writes are recorded (field managers, event sources) as the kubelet's.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&format!("kubelet/{version}")).context("user agent")?,
    ));
    let cas = config.root_cert.clone().unwrap_or_default();
    Ok((
        kube::Client::try_from(config).context("building the API client")?,
        cas,
    ))
}

/// The node endpoint bound on `listen`, secured.
async fn node_endpoint(
    listen: std::net::SocketAddr,
    endpoint: Arc<daemon::endpoint::Endpoint>,
    security: skiff_node_server::Security,
) -> Result<skiff_node_server::NodeServer> {
    Ok(skiff_node_server::NodeServer::bind(listen, endpoint)
        .await
        .with_context(|| format!("binding the node endpoint on {listen}"))?
        .secured(security))
}

/// HTTPS for the node endpoint with a self-signed serving certificate for the node's name
/// and address (the kubelet's default), client certificates of `cas`, and every request
/// authorized by the API server.
fn endpoint_security(
    client: &kube::Client,
    name: &str,
    address: std::net::Ipv4Addr,
    cas: &[Vec<u8>],
) -> Result<skiff_node_server::Security> {
    use skiff_node_server::auth::{ApiReviewer, CachingReviewer};
    anyhow::ensure!(
        !cas.is_empty(),
        "the node endpoint needs the cluster CA (certificate-authority in the kubeconfig, or --ca-file)"
    );
    let mut names = vec![name.to_owned(), address.to_string()];
    names.dedup();
    let serving = skiff_pki::ca::self_signed_server(&format!("{name}@skiff"), &names)
        .context("the node endpoint's serving certificate")?;
    let cas: Vec<_> = cas
        .iter()
        .map(|der| rustls_pki_types::CertificateDer::from(der.clone()))
        .collect();
    let tls = skiff_node_server::tls::server_config(&cas, &serving.cert_pem, &serving.key_pem)
        .context("the node endpoint's TLS settings")?;
    let reviewer = ApiReviewer::new(client.clone(), name.to_owned());
    Ok(skiff_node_server::Security {
        tls,
        reviewer: Arc::new(CachingReviewer::new(Arc::new(reviewer))),
    })
}

/// Where k3s users keep theirs is `/etc/rancher/k3s/registries.yaml`; skiff's own.
const DEFAULT_REGISTRY_CONFIG: &str = "/etc/skiff/registries.yaml";

/// The registries config: `--registry-config` (which must exist), else the default file
/// when there is one, plus `--insecure-registry` hosts.
fn registries(
    file: Option<&std::path::Path>,
    insecure: Vec<String>,
    mirrors_only: bool,
) -> Result<skiff_node_runtime::image::Registries> {
    let only = |r: skiff_node_runtime::image::Registries| {
        if mirrors_only { r.mirrors_only() } else { r }
    };
    let default = std::path::Path::new(DEFAULT_REGISTRY_CONFIG);
    let Some(path) = file.or_else(|| default.exists().then_some(default)) else {
        return Ok(only(insecure.into()));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the registry config {}", path.display()))?;
    let registries = skiff_node_runtime::image::Registries::from_yaml(&text, insecure)
        .with_context(|| format!("in {}", path.display()))?;
    tracing::info!(file = %path.display(), ?registries, "registry mirrors and settings");
    Ok(only(registries))
}

async fn shutdown() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("listening for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// The node's DNS server, unless it is off or the node runs on loopback (pods reach the
/// server at the node's address, which loopback is not for them).
fn dns_config(
    off: bool,
    domain: &str,
    upstreams: Vec<std::net::SocketAddr>,
    address: Ipv4Addr,
) -> Option<daemon::dns::DnsConfig> {
    if off {
        return None;
    }
    if address.is_loopback() {
        tracing::info!("node on loopback: no cluster DNS; pods get the host's resolver");
        return None;
    }
    Some(daemon::dns::DnsConfig {
        listen: std::net::SocketAddr::from((address, skiff_node_dns::upstream::PORT)),
        domain: domain.to_owned(),
        upstreams: dns_upstreams(upstreams),
    })
}

async fn start_dns(
    client: &kube::Client,
    node: &str,
    config: Option<daemon::dns::DnsConfig>,
) -> Result<Option<daemon::dns::Dns>> {
    let Some(config) = config else {
        return Ok(None);
    };
    let listen = config.listen;
    // A port 53 some other server holds costs this node's pods cluster names, not the
    // node: it still runs pods and Services, and says why names fail.
    match daemon::dns::start(client.clone(), node.to_owned(), config).await {
        Ok(dns) => Ok(Some(dns)),
        Err(err) => {
            tracing::error!(
                %listen,
                %err,
                "cluster DNS not served on this node: its pods cannot resolve cluster names \
                 (free the port, or pass --no-cluster-dns to give pods the host's resolver)"
            );
            Ok(None)
        }
    }
}

/// `--name`, else the host name in lower case.
fn node_name(name: Option<String>) -> Result<String> {
    Ok(match name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("reading the host name")?
            .to_string_lossy()
            .to_lowercase(),
    })
}

/// The state, log and storage directories, absolute: libcontainer changes the process's
/// working directory for moments.
fn directories(
    state_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    storage_dir: Option<PathBuf>,
    name: &str,
) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let state_dir = std::path::absolute(
        state_dir.unwrap_or_else(|| PathBuf::from("/var/lib/skiff/node").join(name)),
    )
    .context("resolving --state-dir")?;
    let log_dir = std::path::absolute(log_dir.unwrap_or_else(|| state_dir.join("logs")))
        .context("resolving --log-dir")?;
    let storage_dir = std::path::absolute(storage_dir.unwrap_or_else(|| state_dir.join("storage")))
        .context("resolving --storage-dir")?;
    Ok((state_dir, log_dir, storage_dir))
}

async fn real(cli: Cli) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("a real node runs containers and needs root (use --simulate N without root)");
    }
    let args = cli.real;
    let name = node_name(args.name)?;
    let (state_dir, log_dir, storage_dir) =
        directories(args.state_dir, args.log_dir, args.storage_dir, &name)?;
    let pod_network =
        daemon::peers::PodNetwork::choose(args.node_ip, args.pod_network_iface, args.pod_network)
            .await
            .context("choosing the node's address")?;
    let proxy = (!args.no_service_proxy).then(|| daemon::services::ProxyConfig {
        mode: args.proxy_mode,
        cgroup: args.socket_lb_cgroup,
        pin_dir: args
            .bpf_pin_dir
            .unwrap_or_else(|| daemon::services::default_pin_dir(&name)),
    });
    let dns = dns_config(
        args.no_cluster_dns,
        &args.cluster_domain,
        args.dns_upstreams,
        pod_network.address,
    );
    let config = NodeConfig {
        storage_dir,
        cluster_domain: args.cluster_domain,
        cluster_dns: dns.is_some().then_some(args.cluster_dns),
        log_dir,
        cgroup_parent: args
            .cgroup_parent
            .unwrap_or_else(|| format!("/skiff/{name}")),
        name,
        address: pod_network.address,
        pod_network,
        port: args.port,
        state_dir,
        bridge: args.bridge,
        pod_cidr: args.pod_cidr,
        labels: cli.simulate.labels.iter().cloned().collect(),
        taints: cli.simulate.taints.iter().map(SimTaint::to_taint).collect(),
        reserved: Reservations {
            cpu_millis: args.reserved_cpu_millis,
            memory: args.reserved_memory,
            max_pods: args.max_pods,
            ..Reservations::default()
        },
        registries: registries(
            args.registry_config.as_deref(),
            args.insecure_registries,
            args.disable_default_registry_endpoint,
        )?,
        cleanup_on_exit: args.cleanup_on_exit,
        sandbox_pool: args.sandbox_pool,
    };
    let (client, cas) = client(
        &cli.api,
        skiff_kubelet::node::host::KUBELET_VERSION,
        Some((&config.name, &config.state_dir.join("pki"))),
    )
    .await?;
    let node = daemon::run::prepare(client.clone(), &config)
        .await
        .context("setting the node up")?;
    let listen = std::net::SocketAddr::from((config.address, config.port));
    let proxy = proxy
        .map(|p| attach_proxy(&config, &p))
        .transpose()
        .context("setting the Service proxy up")?;
    let endpoint = Arc::new(daemon::endpoint::Endpoint::new(
        node.backend.clone(),
        node.dispatch.pods(),
        proxy.as_ref().map(|(p, _)| p.metrics()),
    ));
    let security = endpoint_security(&client, &config.name, config.address, &cas)?;
    let server = node_endpoint(listen, endpoint, security).await?;
    let serving = tokio::spawn(server.serve(std::future::pending()));
    let dns = start_dns(&client, &config.name, dns).await?;
    tracing::info!(node = %config.name, %listen, "node running");
    let trimming = tokio::spawn(release_freed_memory());
    let result = Box::pin(daemon::run::run(client, config, node, proxy, async {
        if let Err(err) = shutdown().await {
            tracing::error!(?err, "signal handling");
        }
    }))
    .await;
    serving.abort();
    trimming.abort();
    drop(dns);
    result.context("node daemon")
}

/// The node's Service proxy on its uplink (node ports are served there).
fn attach_proxy(
    config: &NodeConfig,
    proxy: &daemon::services::ProxyConfig,
) -> Result<(daemon::services::Proxy, daemon::services::ProxyHandle), daemon::services::ProxyError>
{
    let uplink = config
        .pod_network
        .uplink
        .as_ref()
        .map(|u| skiff_node_proxy::Uplink {
            interface: u.name.clone(),
            address: u.address,
        });
    daemon::services::attach(&config.name, config.address, uplink, proxy)
}

/// When the daemon hands the pages malloc keeps free back to the kernel: once start-up has
/// settled, then now and then.
const TRIM_FIRST: Duration = Duration::from_secs(5);
const TRIM_EVERY: Duration = Duration::from_mins(1);

/// Hands the pages glibc keeps free back to the kernel. Start-up (joining, TLS, loading the
/// Service datapath, the first lists and syncs) frees more than the idle daemon then holds,
/// and glibc keeps those pages resident in the arena of whichever thread freed them, as it
/// does after a burst of pod starts. Measured on an idle node 8 s after start: 29-31 MiB of
/// anonymous memory, 18 MiB after a trim. A trim walks malloc's free chunks, once a minute.
async fn release_freed_memory() {
    tokio::time::sleep(TRIM_FIRST).await;
    let mut every = tokio::time::interval(TRIM_EVERY);
    loop {
        every.tick().await;
        // SAFETY: malloc_trim only returns free pages of malloc's own arenas to the kernel.
        unsafe {
            nix::libc::malloc_trim(0);
        }
    }
}

fn main() -> Result<()> {
    // Container inits are clones of this process and run libcontainer's logging before they
    // exec: they must not write to stderr, whose lock another daemon thread may have held at
    // the moment of the clone.
    tracing_subscriber::registry()
        .with(skiff_node_runtime::libcontainer::daemon_process_only())
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    let cli = Cli::parse();
    if cli.simulate.simulate.is_none() {
        // Before the first thread, while the process is small: see the forkserver's docs.
        if let Err(err) = skiff_node_runtime::forkserver::start() {
            tracing::warn!(%err, "no forkserver: each container create forks the whole daemon");
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let Some(count) = cli.simulate.simulate else {
        return Box::pin(real(cli)).await;
    };
    let (client, _) = client(&cli.api, KUBELET_VERSION, None).await?;
    tokio::select! {
        r = simulate::run(client, cli.simulate.config(count)) => r.context("simulated nodes")?,
        r = shutdown() => r?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_take_key_value_and_effect() {
        let t = parse_taint("dedicated=gpu:NoSchedule").expect("a taint");
        assert_eq!(
            (t.key.as_str(), t.value.as_str(), t.effect.as_str()),
            ("dedicated", "gpu", "NoSchedule")
        );
        let t = parse_taint("spot:PreferNoSchedule").expect("a taint without value");
        assert_eq!((t.key.as_str(), t.value.as_str()), ("spot", ""));
        assert!(parse_taint("spot").is_err());
        assert!(parse_taint("a=b:Sometimes").is_err());
    }

    #[test]
    fn a_later_flag_overrides_an_earlier_one() {
        let cli = Cli::try_parse_from([
            "node",
            "--simulate",
            "2",
            "--lease-renew-interval-seconds",
            "1",
            "--lease-renew-interval-seconds",
            "3",
            "--labels",
            "a=1,b=2",
        ])
        .expect("flags");
        let config = cli.simulate.config(2);
        assert_eq!(config.lease_renew_interval, Duration::from_secs(3));
        assert_eq!(config.labels.get("b").map(String::as_str), Some("2"));
    }
}
