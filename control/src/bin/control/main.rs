//! The control-plane process: the API server on the embedded store or etcd, plus the
//! scheduler and the controllers, which reach the API like any client and act only while
//! this process holds the leader Lease (each part can be switched off).

mod csr_signer;
mod pki;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use skiff_api::{
    AuditPolicy, Auditor, Config, Server,
    encryption::{EncryptedStore, EncryptionConfig},
};
use skiff_control_runtime::{
    Informers,
    leader::{Elector, LeaderConfig},
};
use skiff_store::{EtcdStore, RedbOptions, RedbStore, Store};
use skiff_types::Ipv4Cidr;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one switch per part of the process, as kube-controller-manager's flags"
)]
#[command(
    name = "control",
    about = "skiff's control plane: API server, scheduler and controllers"
)]
struct Args {
    /// Address to serve the Kubernetes API on (HTTPS only).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: std::net::SocketAddr,
    /// The address pods reach this server at through the `kubernetes` Service (its
    /// endpoint, on the --listen port). Default: the --listen address, unless it is loopback
    /// or unspecified; then the Service has no endpoints.
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// Directory of the embedded store (unused with --etcd), the cluster CA (`pki/`) and the
    /// admin kubeconfig (`admin.kubeconfig`).
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Serving certificate (PEM chain) instead of the one issued by the cluster CA.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// Key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// CA bundle whose client certificates authenticate callers, besides the cluster CA.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Static bearer tokens, kube-apiserver's CSV: `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Audiences ServiceAccount tokens are accepted for (default: the issuer,
    /// `https://kubernetes.default.svc.cluster.local`).
    #[arg(long, value_delimiter = ',')]
    api_audiences: Vec<String>,
    /// Use an etcd cluster instead of the embedded store (comma-separated URLs).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// The Service cluster IP range.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// MiB of page cache for the embedded store; colder pages are read through the kernel's
    /// page cache.
    #[arg(
        long,
        env = "SKIFF_STORE_CACHE_MIB",
        default_value_t = skiff_store::DEFAULT_CACHE_BYTES >> 20
    )]
    store_cache_mib: usize,
    /// Restore the embedded store from this backup (made by `ctl backup`) before starting.
    #[arg(long)]
    restore: Option<PathBuf>,
    /// Encrypt resources at rest as this kube-apiserver `EncryptionConfiguration`
    /// (apiserver.config.k8s.io/v1) says: aesgcm, secretbox or identity providers, the first
    /// one writes, every listed key reads (rotate by adding a new first key and rewriting).
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// Write audit.k8s.io/v1 Event JSON lines to this file (`-`: standard output).
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// The audit.k8s.io/v1 Policy deciding each request's level (`None`, `Metadata`,
    /// `Request`, `RequestResponse`). Without it, with --audit-log-path, every request is
    /// logged at `Metadata`.
    #[arg(long, requires = "audit_log_path")]
    audit_policy_file: Option<PathBuf>,
    /// Read-only requests served at once (watches, logs, exec and other long-running
    /// requests not counted); beyond, requests queue per user and are served fairly, or
    /// refused 429. 0: no limit.
    #[arg(long, default_value_t = 400)]
    max_requests_inflight: usize,
    /// Mutating requests served at once, as --max-requests-inflight. 0: no limit.
    #[arg(long, default_value_t = 200)]
    max_mutating_requests_inflight: usize,
    /// Requests one user may have waiting for a seat (per read-only or mutating pool);
    /// more are refused 429 (APF's queueLengthLimit; skiff's flag).
    #[arg(long, default_value_t = 50)]
    max_queued_requests_per_user: usize,
    /// Watches one user may hold open; more are refused 429 (skiff's flag; system:masters,
    /// nodes, the scheduler and the controller manager are not capped). 0: no limit.
    #[arg(long, default_value_t = 200)]
    max_watches_per_user: usize,
    /// Largest request body accepted; larger ones are refused 413 (also the bytes a JSON
    /// patch may copy).
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    max_request_body_bytes: usize,
    /// Compact store history every this many seconds.
    #[arg(long, default_value_t = 300)]
    compaction_interval_seconds: u64,
    /// Revisions of history compaction keeps (for watches that resume).
    #[arg(long, default_value_t = 10_000)]
    compaction_keep_revisions: i64,
    /// Do not run the scheduler in this process.
    #[arg(long)]
    no_scheduler: bool,
    /// Do not run the controllers in this process.
    #[arg(long)]
    no_controllers: bool,
    /// Run the scheduler and controllers only while holding the `skiff-control-plane`
    /// Lease in kube-system (needed when several control processes share one etcd).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long the leader Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    leader_elect_lease_duration_seconds: u64,
    /// How long the leader keeps trying to renew before it steps down.
    #[arg(long, default_value_t = 10)]
    leader_elect_renew_deadline_seconds: u64,
    /// Pause between leader election attempts.
    #[arg(long, default_value_t = 2)]
    leader_elect_retry_period_seconds: u64,
    /// A node whose Lease is this old is marked `Ready=Unknown` and tainted unreachable.
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period_seconds: u64,
    /// Seconds pods tolerate the not-ready/unreachable taints unless they say otherwise.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: i64,
    /// The pod network node IPAM splits into one `spec.podCIDR` per node (`""` turns node
    /// IPAM off; nodes then need `--pod-cidr` of their own).
    #[arg(long, default_value = skiff_controllers::DEFAULT_CLUSTER_CIDR)]
    cluster_cidr: String,
    /// Give nodes pod CIDRs from --cluster-cidr (`false`: nodes bring their own).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    allocate_node_cidrs: bool,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// The addresses `type: LoadBalancer` Services get, as a CIDR (192.168.1.240/28) or a
    /// range (192.168.1.240-192.168.1.250), announced by one node each on its link. Off
    /// by default: which addresses are free on the nodes' link only the operator knows,
    /// so without it `LoadBalancer` Services get no address and an Event on each says why.
    #[arg(long)]
    loadbalancer_ip_range: Option<skiff_controllers::service_lb::IpRange>,
    /// How often each `HorizontalPodAutoscaler` is synced (kube-controller-manager's
    /// `--horizontal-pod-autoscaler-sync-period`).
    #[arg(long, default_value_t = 15)]
    horizontal_pod_autoscaler_sync_period_seconds: u64,
    /// How long a `HorizontalPodAutoscaler` without its own scale-down window looks back on
    /// higher recommendations before scaling down
    /// (`--horizontal-pod-autoscaler-downscale-stabilization`).
    #[arg(long, default_value_t = 300)]
    horizontal_pod_autoscaler_downscale_stabilization_seconds: u64,
}

impl Args {
    /// Where pods reach this server: --advertise-address on the listen port, or the listen
    /// address itself when pods can reach it (not loopback, not a wildcard).
    fn advertised(&self) -> Option<std::net::SocketAddr> {
        let port = self.listen.port();
        match self.advertise_address {
            Some(ip) => Some(std::net::SocketAddr::new(ip, port)),
            None if self.listen.ip().is_loopback() || self.listen.ip().is_unspecified() => None,
            None => Some(self.listen),
        }
    }

    /// The cluster CIDR node IPAM splits, if it is on; refuses a range that cannot hold
    /// one node's CIDR or that overlaps the Service range.
    fn node_ipam(&self) -> Result<Option<Ipv4Cidr>> {
        if !self.allocate_node_cidrs || self.cluster_cidr.trim().is_empty() {
            return Ok(None);
        }
        let cluster = Ipv4Cidr::parse_masked(&self.cluster_cidr).context("--cluster-cidr")?;
        let services = Ipv4Cidr::parse_masked(&self.service_cluster_ip_range)
            .context("--service-cluster-ip-range")?;
        if cluster.overlaps(&services) {
            bail!(
                "--cluster-cidr {cluster} overlaps --service-cluster-ip-range {services}; pick                  disjoint ranges"
            );
        }
        if cluster.subnet_count(self.node_cidr_mask_size) == 0 {
            bail!(
                "--node-cidr-mask-size {} does not fit in --cluster-cidr {cluster}: it must be                  between {} and 32",
                self.node_cidr_mask_size,
                cluster.prefix()
            );
        }
        Ok(Some(cluster))
    }
}

fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/lib/skiff/control")
    } else {
        PathBuf::from("skiff-data")
    }
}

fn data_dir(args: &Args) -> PathBuf {
    args.data_dir.clone().unwrap_or_else(default_data_dir)
}

async fn open_store(args: &Args) -> Result<Arc<dyn Store>> {
    if !args.etcd.is_empty() {
        if args.restore.is_some() {
            bail!(
                "--restore works with the embedded store; restore etcd with etcdctl snapshot restore"
            );
        }
        let store = EtcdStore::connect(&args.etcd)
            .await
            .with_context(|| format!("connecting to etcd at {}", args.etcd.join(",")))?;
        tracing::info!(endpoints = ?args.etcd, "using etcd");
        return Ok(Arc::new(store));
    }
    let dir = data_dir(args);
    let options = RedbOptions {
        cache_bytes: args.store_cache_mib << 20,
    };
    if let Some(backup) = &args.restore {
        let bytes = std::fs::read(backup)
            .with_context(|| format!("reading backup {}", backup.display()))?;
        let restored = RedbStore::restore_with(&bytes, &dir, &options)
            .with_context(|| format!("restoring {} into {}", backup.display(), dir.display()))?;
        // Closed before the open below takes the file.
        drop(restored);
        tracing::info!(backup = %backup.display(), dir = %dir.display(), "restored the store");
    }
    let store = RedbStore::open_with(&dir, &options)
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "using the embedded store");
    Ok(Arc::new(store))
}

impl Args {
    /// The API server's settings from the flags, writing audit events to `audit`.
    fn api_config(&self, audit: Option<Arc<Auditor>>) -> Config {
        Config {
            audit,
            listen: self.listen,
            advertise: self.advertised(),
            service_cidr: self.service_cluster_ip_range.clone(),
            compaction_interval: Duration::from_secs(self.compaction_interval_seconds.max(1)),
            compaction_keep: self.compaction_keep_revisions,
            limits: skiff_api::flowcontrol::Limits {
                max_requests_inflight: self.max_requests_inflight,
                max_mutating_requests_inflight: self.max_mutating_requests_inflight,
                queue_length_limit: self.max_queued_requests_per_user,
                max_watches_per_user: self.max_watches_per_user,
                ..skiff_api::flowcontrol::Limits::default()
            },
            max_request_body_bytes: self.max_request_body_bytes,
            ..Config::default()
        }
    }
}

/// mimalloc asks for transparent huge pages for its arenas, and a 2 MiB page is resident as
/// soon as one byte of it is touched: without them `control` held 536-565 MiB instead of
/// 582-601 MiB at 50,000 pods in the scheduler bench.
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's address space.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        tracing::warn!(
            err = %std::io::Error::last_os_error(),
            "could not switch transparent huge pages off"
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    no_huge_pages();
    let args = Args::parse();
    let cluster_cidr = args.node_ipam()?;
    if !args.no_controllers {
        if let Some(cidr) = cluster_cidr {
            tracing::info!(
                cluster_cidr = %cidr,
                node_cidr_mask_size = args.node_cidr_mask_size,
                "node IPAM gives nodes pod CIDRs from the cluster CIDR"
            );
        } else {
            tracing::info!("node IPAM is off: each node needs --pod-cidr");
        }
    }
    let mut store = open_store(&args).await?;
    let service_cidr = Ipv4Cidr::parse_masked(&args.service_cluster_ip_range)
        .context("--service-cluster-ip-range")?;
    let pki = pki::prepare(
        &data_dir(&args),
        &pki::serving_names(args.listen, args.advertised(), service_cidr),
        &format!("https://{}", pki::reachable(args.listen)),
        &pki::Flags {
            tls_cert_file: args.tls_cert_file.clone(),
            tls_private_key_file: args.tls_private_key_file.clone(),
            client_ca_file: args.client_ca_file.clone(),
            token_auth_file: args.token_auth_file.clone(),
            api_audiences: args.api_audiences.clone(),
        },
    )
    .context("preparing certificates")?;
    tracing::info!(
        kubeconfig = %pki.admin_kubeconfig.display(),
        "wrote the admin kubeconfig (export KUBECONFIG=...)"
    );
    tracing::info!(
        token = %pki.node_token.display(),
        "nodes join with: node --server URL --token \"$(cat TOKEN)\" --ca-file <data-dir>/pki/ca.crt"
    );
    if let Some(path) = &args.encryption_provider_config {
        let encryption =
            EncryptionConfig::load(path).with_context(|| format!("loading {}", path.display()))?;
        tracing::info!(config = %path.display(), "encrypting resources at rest");
        store = Arc::new(EncryptedStore::new(store, encryption));
    }
    let audit = match &args.audit_log_path {
        None => None,
        Some(path) => {
            let policy = match &args.audit_policy_file {
                Some(file) => AuditPolicy::load(file)
                    .with_context(|| format!("loading {}", file.display()))?,
                None => AuditPolicy::metadata(),
            };
            tracing::info!(log = %path.display(), "auditing requests");
            Some(Arc::new(Auditor::start(path, policy)?))
        }
    };
    let config = args.api_config(audit);
    let server = Server::bind(store, config, pki.security.clone())
        .await
        .context("starting the API server")?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, "serving the Kubernetes API over HTTPS");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(server.serve(async move {
        shutdown().await;
        let _ = stop_tx.send(true);
    }));
    let client = pki::self_client(
        addr,
        &pki,
        &pki.control_plane,
        "kube-controller-manager/v1.33.0-skiff",
    )?;
    let scheduler_client =
        pki::self_client(addr, &pki, &pki.scheduler, "kube-scheduler/v1.33.0-skiff")?;
    // Nodes join through it whatever else runs here: it is control's part of the bootstrap
    // token (as k3s' supervisor), not one of the controllers --no-controllers switches off.
    let signer = tokio::spawn(csr_signer::run(client.clone(), Arc::clone(&pki.ca)));
    if args.no_scheduler && args.no_controllers {
        serving.await.context("API server task")?;
    } else {
        let stopped = {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        tokio::select! {
            () = act(client, scheduler_client, &args, cluster_cidr, pki.ca.cert_pem().to_owned(), stop_rx) => {}
            () = stopped => {}
        }
        serving.await.context("API server task")?;
    }
    signer.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Runs the scheduler and the controllers, under leader election unless it is off; returns
/// when the process is told to stop (after handing the Lease back). Each term of
/// leadership starts the process's informers afresh, shared by the scheduler and every
/// controller (one watch per kind).
async fn act(
    client: kube::Client,
    scheduler_client: kube::Client,
    args: &Args,
    cluster_cidr: Option<Ipv4Cidr>,
    root_ca: String,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let controllers = skiff_controllers::Config {
        node_monitor_grace_period: Duration::from_secs(args.node_monitor_grace_period_seconds),
        default_toleration_seconds: args.default_toleration_seconds,
        cluster_cidr,
        node_cidr_mask_size: args.node_cidr_mask_size,
        loadbalancer_ip_range: args.loadbalancer_ip_range,
        autoscaling: skiff_controllers::podautoscaler::Settings {
            sync_period: Duration::from_secs(args.horizontal_pod_autoscaler_sync_period_seconds),
            downscale_stabilization: Duration::from_secs(
                args.horizontal_pod_autoscaler_downscale_stabilization_seconds,
            ),
        },
        root_ca: Some(root_ca),
    };
    let (run_scheduler, run_controllers) = (!args.no_scheduler, !args.no_controllers);
    let elector_client = client.clone();
    let work = move || {
        let informers = Informers::new(client.clone());
        let scheduler = run_scheduler.then(|| {
            skiff_scheduler::run_as(
                &informers,
                scheduler_client.clone(),
                skiff_scheduler::Config::default(),
            )
        });
        let reconcilers = run_controllers.then(|| skiff_controllers::run(&informers, &controllers));
        let mut stop = stop.clone();
        async move {
            let scheduler = async {
                match scheduler {
                    Some(scheduler) => {
                        if let Err(err) = scheduler.await {
                            tracing::error!(?err, "scheduler stopped");
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let reconcilers = async {
                match reconcilers {
                    Some(reconcilers) => Box::pin(reconcilers).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = informers.run() => {}
                () = scheduler => {}
                () = reconcilers => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
        }
    };
    if !args.leader_elect {
        Box::pin(work()).await;
        return;
    }
    let identity = format!(
        "{}_{}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "control".to_owned(), |h| h.trim().to_owned()),
        uuid::Uuid::new_v4()
    );
    let mut config = LeaderConfig::new("skiff-control-plane", &identity);
    config.lease_duration = Duration::from_secs(args.leader_elect_lease_duration_seconds);
    config.renew_deadline = Duration::from_secs(args.leader_elect_renew_deadline_seconds);
    config.retry_period = Duration::from_secs(args.leader_elect_retry_period_seconds);
    tracing::info!(%identity, "campaigning for the control-plane Lease");
    Box::pin(Elector::new(elector_client, config).run(work)).await;
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cluster_cidr_is_k3s_and_clear_of_the_default_service_range() {
        let args = Args::parse_from(["control"]);
        let cidr = args.node_ipam().unwrap().expect("node IPAM on by default");
        assert_eq!(cidr.to_string(), "10.42.0.0/16");
        assert_eq!(cidr.subnet_count(args.node_cidr_mask_size), 256);
    }

    #[test]
    fn load_balancer_addresses_are_off_unless_a_cidr_or_range_is_given() {
        assert_eq!(Args::parse_from(["control"]).loadbalancer_ip_range, None);
        for text in ["192.168.1.240/28", "192.168.1.240-192.168.1.255"] {
            let args = Args::parse_from(["control", "--loadbalancer-ip-range", text]);
            let range = args.loadbalancer_ip_range.expect("a range");
            assert_eq!(range.to_string(), "192.168.1.240-192.168.1.255");
        }
        assert!(
            Args::try_parse_from(["control", "--loadbalancer-ip-range", "10.0.0.5/24"]).is_err()
        );
    }

    #[test]
    fn an_empty_cluster_cidr_or_allocate_false_turns_node_ipam_off() {
        let off = Args::parse_from(["control", "--cluster-cidr", ""]);
        assert_eq!(off.node_ipam().unwrap(), None);
        let off = Args::parse_from(["control", "--allocate-node-cidrs=false"]);
        assert_eq!(off.node_ipam().unwrap(), None);
    }

    #[test]
    fn overlapping_or_too_small_ranges_are_refused() {
        let overlap = Args::parse_from(["control", "--cluster-cidr", "10.96.0.0/16"]);
        assert!(
            overlap
                .node_ipam()
                .unwrap_err()
                .to_string()
                .contains("overlaps")
        );
        let small = Args::parse_from(["control", "--cluster-cidr", "10.42.0.0/25"]);
        assert!(small.node_ipam().is_err());
        let bad = Args::parse_from(["control", "--cluster-cidr", "10.42.0.0"]);
        assert!(bad.node_ipam().is_err());
    }
}
