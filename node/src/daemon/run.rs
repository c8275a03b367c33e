//! The real node's main loop: set up the node's slice of the host, register, renew the
//! Lease, report status, run a worker per bound pod, and clean up what no pod owns.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Taint};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use skiff_kubelet::{
    api::{Inflight, KubePodApi},
    node::{
        capacity::Reservations,
        host::ProcHost,
        lease::NodeLease,
        register::{CHECK_EVERY, Identity, RegisterError, Registration},
    },
    pod::{
        backend::PodBackend,
        backoff,
        command::NodeLimits,
        dispatch::{Dispatch, Housekeeping, PodEvent},
        records::DiskRecords,
        volume::{SystemMounter, VolumeManager},
        worker::WorkerConfig,
    },
};
use skiff_node_net::{BridgeNetwork, NetworkConfig, NetworkError, PodNetwork};
use skiff_node_proxy::arp::ArpResponder;
use skiff_node_runtime::{
    ContainerRuntime, Libcontainer,
    image::{ImageStore, Registries},
};
use skiff_types::{CidrError, ContainerId, Ipv4Cidr};
use tokio::sync::mpsc::{self, UnboundedSender};

use super::{
    backend::{Layout, LocalBackend},
    cgroups,
    sources::ApiSources,
};

/// What a node without a pod CIDR waits for, in its log and its Ready condition.
pub const WAITING_FOR_POD_CIDR: &str =
    "waiting for spec.podCIDR from node IPAM; pass --pod-cidr or start control with --cluster-cidr";
/// How often a node that still waits says so again.
const SAY_AGAIN: Duration = Duration::from_secs(30);

/// Errors that stop the node daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A directory of the state could not be made.
    #[error("state directory {path}: {source}")]
    State {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image store could not be opened.
    #[error("image store: {0}")]
    Images(String),
    /// Registration failed.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The watch of the Node ended, which the watcher's back-off never lets happen.
    #[error("the watch of node {0} ended")]
    NodeWatchEnded(String),
    /// The Node's `spec.podCIDR` is not an IPv4 network.
    #[error("spec.podCIDR: {0}")]
    PodCidr(#[from] CidrError),
    /// The pod network could not be set up.
    #[error("pod network: {0}")]
    Network(#[from] NetworkError),
}

/// What the node daemon is told at start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Node's name.
    pub name: String,
    /// Its `InternalIP`, where the API server reaches its endpoint.
    pub address: Ipv4Addr,
    /// How it joins the pod network of the cluster (address, uplink, backend).
    pub pod_network: super::peers::PodNetwork,
    /// The node endpoint's port (reported as the kubelet endpoint).
    pub port: u16,
    /// State: images, containers, pod records, network state.
    pub state_dir: PathBuf,
    /// Container logs.
    pub log_dir: PathBuf,
    /// Where local-path volumes are made, a directory each.
    pub storage_dir: PathBuf,
    /// The v1 cgroup parent of every pod (`/skiff/<name>`).
    pub cgroup_parent: String,
    /// The pod bridge's name.
    pub bridge: String,
    /// The pod CIDR, when the control plane does not assign one.
    pub pod_cidr: Option<Ipv4Cidr>,
    /// Extra node labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Taints to register with.
    pub taints: Vec<Taint>,
    /// Reservations and limits.
    pub reserved: Reservations,
    /// Where images are pulled from: mirrors, credentials, TLS, plain-HTTP hosts.
    pub registries: Registries,
    /// On exit, stop every container and remove sandboxes, the bridge and the rules.
    pub cleanup_on_exit: bool,
    /// The cluster domain (pods' search path and `/etc/hosts` names).
    pub cluster_domain: String,
    /// The nameserver of `ClusterFirst` pods, when the node serves cluster DNS.
    pub cluster_dns: Option<Ipv4Addr>,
    /// Spare pod sandboxes kept ready (`None`: [`sandbox_pool_size`]'s default).
    pub sandbox_pool: Option<usize>,
}

/// The spare sandboxes a node keeps unless told otherwise: what a burst of pods on one node
/// claims at once (a Deployment scaled up, a node drained onto this one). Each spare costs
/// a network namespace and a veth pair in the kernel and one address of the pod CIDR.
pub const DEFAULT_SANDBOX_POOL: usize = 100;

/// The pool size for a node with `cidr` taking `max_pods`: `requested`, else the default,
/// never more than the addresses the node's pods leave free (so spares can never make a pod
/// wait for an address).
#[must_use]
pub fn sandbox_pool_size(requested: Option<usize>, cidr: Ipv4Cidr, max_pods: u64) -> usize {
    // Network, gateway and broadcast are never a pod's.
    let hosts = cidr.size().saturating_sub(3);
    let free = usize::try_from(hosts.saturating_sub(max_pods)).unwrap_or(usize::MAX);
    requested.unwrap_or(DEFAULT_SANDBOX_POOL).min(free)
}

/// A node set up and registered, not running pods yet.
pub struct Node {
    /// The pod backend (runtime, images, logs), which the endpoint serves too.
    pub backend: Arc<LocalBackend>,
    /// The pods' workers; [`Dispatch::pods`] is what the endpoint serves.
    pub dispatch: Dispatch,
    /// The Node's Lease and status reports, running since registration.
    pub heartbeat: Heartbeat,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Cidr,
}

/// What keeps the Node alive in the API while the node sets up and runs: its Lease and
/// its status reports, whose Ready condition says what the node waits for.
#[derive(Debug)]
pub struct Heartbeat {
    lease: tokio::task::JoinHandle<()>,
    status: tokio::task::JoinHandle<()>,
    ready: tokio::sync::watch::Sender<Result<(), String>>,
}

impl Heartbeat {
    /// Starts renewing the Lease and reporting status for `registration`, not Ready
    /// because of `waiting`.
    fn start(client: &Client, registration: Registration, waiting: &str) -> Self {
        let lease = NodeLease::new(registration.name(), registration.uid().unwrap_or_default());
        let (ready, said) = tokio::sync::watch::channel(Err(waiting.to_owned()));
        Self {
            lease: tokio::spawn(lease.renew_forever(client.clone())),
            status: tokio::spawn(report_forever(client.clone(), registration, said)),
            ready,
        }
    }

    /// The node is Ready (`Ok`) or waits for something.
    fn set(&self, ready: Result<(), String>) {
        let _ = self.ready.send_replace(ready);
    }

    fn stop(self) {
        self.lease.abort();
        self.status.abort();
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", &self.backend.layout.node)
            .finish_non_exhaustive()
    }
}

fn dir(path: &Path) -> Result<PathBuf, DaemonError> {
    std::fs::create_dir_all(path).map_err(|source| DaemonError::State {
        path: path.to_owned(),
        source,
    })?;
    Ok(path.to_owned())
}

fn limits(node: &k8s_openapi::api::core::v1::Node) -> NodeLimits {
    let get = |k: &str| {
        node.status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get(k))
            .and_then(|q| skiff_machinery::quantity::parse_milli(&q.0))
            .unwrap_or(0)
    };
    NodeLimits {
        cpu_milli: get("cpu"),
        memory_bytes: get("memory") / 1000,
        ephemeral_bytes: get("ephemeral-storage") / 1000,
    }
}

/// The cgroup v2 directory the containers' inits join: on a hybrid host the unified
/// hierarchy sits beside the v1 controllers libcontainer uses.
fn v2_parent(cgroup_parent: &str) -> Option<PathBuf> {
    let unified = Path::new("/sys/fs/cgroup/unified");
    unified
        .join("cgroup.procs")
        .exists()
        .then(|| unified.join(cgroup_parent.trim_start_matches('/')))
}

/// The Node's registration, with the host's facts and the configured identity.
fn registration(client: Client, config: &NodeConfig, state: &Path) -> Registration {
    let id = Identity {
        name: config.name.clone(),
        address: config.address,
        port: config.port,
        labels: config.labels.clone(),
        annotations: std::collections::BTreeMap::new(),
        taints: config.taints.clone(),
        pod_cidr: config.pod_cidr,
        provider_id: None,
    };
    Registration::new(
        client,
        id,
        Box::new(ProcHost::new(state, config.reserved)),
        Inflight::unbounded(),
    )
}

fn pod_cidr_of(node: &k8s_openapi::api::core::v1::Node) -> Result<Option<Ipv4Cidr>, CidrError> {
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .map(str::parse)
        .transpose()
}

/// The Node's `spec.podCIDR` from `node` or, once the control plane assigns it, from the
/// Node's watch `updates`. Waits as long as it takes, saying so every [`SAY_AGAIN`].
async fn wait_for_pod_cidr(
    name: &str,
    node: &k8s_openapi::api::core::v1::Node,
    updates: impl futures::Stream<Item = k8s_openapi::api::core::v1::Node>,
) -> Result<Ipv4Cidr, DaemonError> {
    if let Some(cidr) = pod_cidr_of(node)? {
        return Ok(cidr);
    }
    let started = tokio::time::Instant::now();
    tracing::warn!(node = %name, "{WAITING_FOR_POD_CIDR}");
    let mut again = tokio::time::interval_at(started + SAY_AGAIN, SAY_AGAIN);
    let mut updates = std::pin::pin!(updates);
    loop {
        tokio::select! {
            _ = again.tick() => {
                let waited_s = started.elapsed().as_secs();
                tracing::warn!(node = %name, waited_s, "{WAITING_FOR_POD_CIDR}");
            }
            node = updates.next() => match node {
                Some(node) => if let Some(cidr) = pod_cidr_of(&node)? {
                    tracing::info!(node = %name, pod_cidr = %cidr, "pod CIDR assigned");
                    return Ok(cidr);
                },
                None => return Err(DaemonError::NodeWatchEnded(name.to_owned())),
            },
        }
    }
}

/// The Node's own versions as they change.
fn own_node(
    client: &Client,
    name: &str,
) -> impl futures::Stream<Item = k8s_openapi::api::core::v1::Node> + use<> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let own = watcher::Config::default().fields(&format!("metadata.name={name}"));
    watcher(api, own)
        .default_backoff()
        .applied_objects()
        .filter_map(|node| async move {
            node.inspect_err(|err| tracing::debug!(%err, "node watch"))
                .ok()
        })
}

/// Sets the node up: state, images, runtime, registration, pod CIDR, network.
///
/// # Errors
/// Anything that leaves the node unable to run pods.
pub async fn prepare(client: Client, config: &NodeConfig) -> Result<Node, DaemonError> {
    let state = dir(&config.state_dir)?;
    let images = ImageStore::open(&dir(&state.join("images"))?, config.registries.clone())
        .map_err(|e| DaemonError::Images(e.to_string()))?;
    let runtime_state = dir(&state.join("containers-state"))?;
    let runtime = Arc::new(Libcontainer::new(
        runtime_state.clone(),
        PathBuf::from("/sys/fs/cgroup"),
    ));
    let mut registration = registration(client.clone(), config, &state);
    let waiting = if config.pod_cidr.is_some() {
        "the pod network is being set up"
    } else {
        WAITING_FOR_POD_CIDR
    };
    let mut node = registration.register(Err(waiting.to_owned())).await?;
    // Alive in the API from now on, and saying what it waits for.
    let heartbeat = Heartbeat::start(&client, registration, waiting);
    let cidr = if let Some(cidr) = config.pod_cidr {
        cidr
    } else {
        let updates = own_node(&client, &config.name);
        let mut latest = node.clone();
        let cidr = wait_for_pod_cidr(
            &config.name,
            &node,
            updates.inspect(|n| latest.clone_from(n)),
        )
        .await?;
        node = latest;
        cidr
    };
    heartbeat.set(Err("the pod network is being set up".to_owned()));
    let network = Arc::new(
        BridgeNetwork::new(NetworkConfig {
            bridge: config.bridge.clone(),
            pod_cidr: cidr,
            state_dir: dir(&state.join("network"))?,
            masquerade: true,
            mtu: config.pod_network.pod_mtu(),
        })
        .with_sandbox_pool(sandbox_pool_size(
            config.sandbox_pool,
            cidr,
            config.reserved.max_pods,
        )),
    );
    network.setup().await?;
    let sources: Arc<ApiSources> = Arc::new(ApiSources::new(client.clone()));
    let node_limits = limits(&node);
    let pods_dir = dir(&state.join("pods"))?;
    let volumes = VolumeManager::new(
        pods_dir.clone(),
        sources.clone(),
        Arc::new(SystemMounter),
        node_limits,
    )
    .with_cluster_domain(&config.cluster_domain)
    .with_cluster_dns(config.cluster_dns);
    let backend = Arc::new(LocalBackend {
        layout: Layout {
            node: config.name.clone(),
            host_ip: config.address.to_string(),
            containers: dir(&state.join("containers"))?,
            logs: dir(&config.log_dir)?,
            cgroup_parent: config.cgroup_parent.clone(),
            cgroup_v2_parent: v2_parent(&config.cgroup_parent),
            runtime_state,
        },
        network,
        images,
        runtime,
        volumes,
        sources,
        limits: node_limits,
    });
    let worker_config = Arc::new(WorkerConfig {
        host_ip: config.address.to_string(),
        records: Arc::new(DiskRecords::new(&pods_dir)),
        volume_refresh: Duration::from_secs(10),
        backoff: backoff::Policy::default(),
    });
    let api = Arc::new(KubePodApi::new(
        client,
        &config.name,
        Inflight::unbounded(),
        true,
    ));
    let dispatch = Dispatch::new(backend.clone(), api, worker_config);
    Ok(Node {
        backend,
        dispatch,
        heartbeat,
        pod_cidr: cidr,
    })
}

/// Removes containers, sandboxes and pod directories no known pod owns.
async fn collect_orphans(backend: &LocalBackend, known: &HashSet<String>) {
    let owner = |id: &str| ContainerId::owner_of(id).to_owned();
    if let Ok(containers) = backend.runtime.list().await {
        for c in containers {
            if !known.contains(&owner(&c.id)) {
                tracing::info!(id = %c.id, "removing a container no pod owns");
                let _ = backend.runtime.kill(&c.id, 9).await;
                if let Err(err) = backend.remove_container(&c.id).await {
                    tracing::warn!(id = %c.id, %err, "orphan container not removed");
                }
            }
        }
    }
    if let Ok(sandboxes) = backend.network.list_sandboxes().await {
        for s in sandboxes {
            if !known.contains(&s.uid) {
                tracing::info!(uid = %s.uid, "removing a sandbox no pod owns");
                if let Err(err) = backend.remove_sandbox(&s.uid).await {
                    tracing::warn!(uid = %s.uid, %err, "orphan sandbox not removed");
                }
            }
        }
    }
    let pods_dir = backend.volumes.pods_dir().to_owned();
    if let Ok(entries) = std::fs::read_dir(&pods_dir) {
        for e in entries.flatten() {
            let uid = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&uid) {
                let _ = backend.volumes.teardown(&uid).await;
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Disk use (percent of the state directory's filesystem) above which unused images go,
/// the kubelet's `imageGCHighThresholdPercent`.
const IMAGE_GC_HIGH_PERCENT: u64 = 85;

/// How long an image stays after it was last used or first seen, the kubelet's
/// `--minimum-image-ttl-duration`: an image imported for pods not created yet survives a
/// disk that is already over [`IMAGE_GC_HIGH_PERCENT`].
const IMAGE_MIN_AGE: Duration = Duration::from_mins(2);

/// Notes when each listed image was last used (or first seen) and returns the ids that
/// were in use within [`IMAGE_MIN_AGE`] of `now`; images no longer listed are forgotten.
fn recently_used(
    last_used: &mut HashMap<String, Instant>,
    listed: &HashSet<String>,
    in_use: &HashSet<String>,
    now: Instant,
) -> HashSet<String> {
    last_used.retain(|id, _| listed.contains(id));
    for id in listed {
        let seen = last_used.entry(id.clone()).or_insert(now);
        if in_use.contains(id) {
            *seen = now;
        }
    }
    last_used
        .iter()
        .filter(|(_, seen)| now.saturating_duration_since(**seen) < IMAGE_MIN_AGE)
        .map(|(id, _)| id.clone())
        .collect()
}

/// Removes images no pod of this node used for [`IMAGE_MIN_AGE`] when the disk is fuller
/// than [`IMAGE_GC_HIGH_PERCENT`].
fn collect_images(
    backend: &LocalBackend,
    pods: &[Arc<Pod>],
    state_dir: &Path,
    last_used: &mut HashMap<String, Instant>,
) {
    let in_use: HashSet<String> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .filter_map(|c| backend.images.lookup(c.image.as_deref()?))
        .map(|i| i.id)
        .collect();
    let listed: HashSet<String> = backend.images.list().into_iter().map(|i| i.id).collect();
    // Noted on every tick, so an image's age is known when the disk crosses the threshold.
    let keep = recently_used(last_used, &listed, &in_use, Instant::now());
    let Ok(fs) = nix::sys::statvfs::statvfs(state_dir) else {
        return;
    };
    let total = fs.blocks();
    if total == 0 {
        return;
    }
    let used_percent = (total - fs.blocks_available()) * 100 / total;
    if used_percent < IMAGE_GC_HIGH_PERCENT {
        return;
    }
    match backend.images.gc(&keep) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(used_percent, ?removed, "removed unused images");
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "image garbage collection failed"),
    }
}

/// Stops every container and removes every sandbox, then the bridge and the rules.
pub async fn clean_up(backend: &LocalBackend) {
    if let Ok(containers) = backend.runtime.list().await {
        for c in containers {
            let _ = backend.runtime.kill(&c.id, 9).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), backend.runtime.wait(&c.id)).await;
            if let Err(err) = backend.remove_container(&c.id).await {
                tracing::warn!(id = %c.id, %err, "container not removed");
            }
        }
    }
    collect_orphans(backend, &HashSet::new()).await;
    if let Err(err) = backend.network.teardown().await {
        tracing::warn!(%err, "network not torn down");
    }
    cgroups::remove_node_cgroups(&backend.layout.cgroup_parent);
}

/// Reports the Node's status every [`CHECK_EVERY`] (sent when it changed), at once when
/// the node's readiness changes, and when the Node's own watch shows someone else changed
/// its conditions.
async fn report_forever(
    client: Client,
    mut registration: Registration,
    mut ready: tokio::sync::watch::Receiver<Result<(), String>>,
) {
    let mut nodes = std::pin::pin!(own_node(&client, registration.name()));
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = ready.changed() => if changed.is_err() {
                return;
            },
            node = nodes.next() => match node {
                Some(node) => registration.observe(&node),
                None => return,
            },
        }
        let now = ready.borrow_and_update().clone();
        if let Err(err) = registration.report(now, false).await {
            tracing::warn!(%err, "node status not reported");
        }
    }
}

/// Forwards the events of the watch of pods bound to `node` until the receiver is gone.
async fn watch_pods(client: Client, node: String, tx: UnboundedSender<PodEvent>) {
    let api: Api<Pod> = Api::all(client);
    let bound = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = std::pin::pin!(watcher(api, bound).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if tx.send(event).is_err() {
                    return;
                }
            }
            Err(err) => tracing::warn!(%err, "pod watch"),
        }
    }
}

/// What a real node does beside its pods: it removes what no pod owns after its first
/// list, and collects images when the disk fills.
struct Housekeeper {
    backend: Arc<LocalBackend>,
    state_dir: PathBuf,
    /// Image id -> when a pod last used it (or it was first seen).
    image_last_used: Mutex<HashMap<String, Instant>>,
}

#[async_trait]
impl Housekeeping for Housekeeper {
    async fn first_sync(&self, known: &HashSet<String>) {
        collect_orphans(&self.backend, known).await;
    }

    async fn tick(&self, pods: &[Arc<Pod>]) {
        let mut last_used = self
            .image_last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        collect_images(&self.backend, pods, &self.state_dir, &mut last_used);
    }
}

/// Runs the node until `shutdown` resolves.
///
/// # Errors
/// When the node cannot report its status.
pub async fn run(
    client: Client,
    config: NodeConfig,
    node: Node,
    proxy: Option<(super::services::Proxy, super::services::ProxyHandle)>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let Node {
        backend,
        dispatch,
        heartbeat,
        pod_cidr,
    } = node;
    let (proxy_handle, services) = match proxy {
        Some((proxy, handle)) => {
            let task = tokio::spawn(super::services::run(
                client.clone(),
                config.name.clone(),
                proxy,
                backend.network.clone(),
            ));
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    let announcer = match (&proxy_handle, config.pod_network.uplink.as_ref()) {
        (Some(_), Some(uplink)) => match ArpResponder::open(&uplink.name) {
            Ok(responder) => Some(tokio::spawn(super::announce::run(
                client.clone(),
                config.name.clone(),
                uplink.subnets.clone(),
                responder,
            ))),
            Err(err) => {
                tracing::warn!(
                    ?err,
                    "LoadBalancer addresses are not announced on this node"
                );
                None
            }
        },
        _ => None,
    };
    heartbeat.set(Ok(()));
    let peers = tokio::spawn(super::peers::run(
        client.clone(),
        config.name.clone(),
        config.pod_network.clone(),
        pod_cidr,
        config.bridge.clone(),
    ));
    let storage = tokio::spawn(super::storage::run(
        client.clone(),
        config.name.clone(),
        config.storage_dir.clone(),
    ));
    let (tx, rx) = mpsc::unbounded_channel();
    let watch = tokio::spawn(watch_pods(client, config.name.clone(), tx));
    let housekeeper = Housekeeper {
        backend: backend.clone(),
        state_dir: config.state_dir.clone(),
        image_last_used: Mutex::default(),
    };
    dispatch.run(rx, &housekeeper, shutdown).await;
    watch.abort();
    storage.abort();
    peers.abort();
    if let Some(task) = announcer {
        task.abort();
    }
    if let Some(task) = services {
        task.abort();
        // The task owns the maps: they are closed before the pins go.
        let _ = task.await;
    }
    heartbeat.stop();
    if config.cleanup_on_exit {
        clean_up(&backend).await;
        super::peers::remove().await;
        if let Some(Err(err)) = proxy_handle.map(super::services::ProxyHandle::remove) {
            tracing::warn!("Service datapath not removed: {err:#}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Node as KubeNode, NodeSpec};
    use tokio::sync::mpsc;

    use super::*;

    fn node(cidr: Option<&str>) -> KubeNode {
        KubeNode {
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_owned),
                ..NodeSpec::default()
            }),
            ..KubeNode::default()
        }
    }

    fn ids(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn the_sandbox_pool_never_takes_the_addresses_max_pods_needs() {
        let cidr = |s: &str| s.parse::<Ipv4Cidr>().expect("cidr");
        // A /24 has 253 pod addresses; 110 pods leave 143.
        assert_eq!(
            sandbox_pool_size(None, cidr("10.244.1.0/24"), 110),
            DEFAULT_SANDBOX_POOL
        );
        assert_eq!(
            sandbox_pool_size(Some(500), cidr("10.244.1.0/24"), 110),
            143
        );
        assert_eq!(sandbox_pool_size(Some(0), cidr("10.244.1.0/24"), 110), 0);
        // A /26 (61 addresses) with 50 pods keeps 11 spares; with 61 pods, none.
        assert_eq!(sandbox_pool_size(None, cidr("10.244.1.0/26"), 50), 11);
        assert_eq!(sandbox_pool_size(None, cidr("10.244.1.0/26"), 61), 0);
        assert_eq!(sandbox_pool_size(Some(4), cidr("10.244.1.0/30"), 110), 0);
    }

    #[test]
    fn an_image_is_kept_for_the_minimum_age_after_it_was_first_seen_or_last_used() {
        let mut last_used = HashMap::new();
        let start = Instant::now();
        let listed = ids(&["imported", "used"]);
        let kept = recently_used(&mut last_used, &listed, &ids(&["used"]), start);
        assert_eq!(kept, listed, "a new image is young");

        let later = start + IMAGE_MIN_AGE;
        let kept = recently_used(&mut last_used, &listed, &ids(&["used"]), later);
        assert_eq!(kept, ids(&["used"]), "the unused image aged out");

        // No longer used: it stays for the minimum age after its last use, then goes.
        let kept = recently_used(
            &mut last_used,
            &listed,
            &ids(&[]),
            later + IMAGE_MIN_AGE / 2,
        );
        assert_eq!(kept, ids(&["used"]));
        let kept = recently_used(&mut last_used, &listed, &ids(&[]), later + IMAGE_MIN_AGE);
        assert!(kept.is_empty(), "{kept:?}");
    }

    #[test]
    fn an_image_removed_and_imported_again_is_young_again() {
        let mut last_used = HashMap::new();
        let start = Instant::now();
        recently_used(&mut last_used, &ids(&["a"]), &ids(&[]), start);
        recently_used(&mut last_used, &ids(&[]), &ids(&[]), start + IMAGE_MIN_AGE);
        let kept = recently_used(
            &mut last_used,
            &ids(&["a"]),
            &ids(&[]),
            start + IMAGE_MIN_AGE * 2,
        );
        assert_eq!(kept, ids(&["a"]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_waits_for_its_pod_cidr_as_long_as_it_takes() {
        let (tx, rx) = mpsc::unbounded_channel();
        let updates =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|n| (n, rx)) });
        let waiting =
            tokio::spawn(async move { wait_for_pod_cidr("n1", &node(None), updates).await });
        tx.send(node(None)).unwrap();
        tokio::time::sleep(Duration::from_mins(5)).await;
        assert!(!waiting.is_finished(), "it gave up");
        tx.send(node(Some("10.244.3.0/24"))).unwrap();
        let cidr = waiting.await.unwrap().unwrap();
        assert_eq!(cidr.to_string(), "10.244.3.0/24");
    }

    #[tokio::test]
    async fn a_pod_cidr_already_there_is_taken_at_once_and_a_bad_one_refused() {
        let cidr = wait_for_pod_cidr(
            "n1",
            &node(Some("10.244.1.0/24")),
            futures::stream::pending(),
        )
        .await
        .unwrap();
        assert_eq!(cidr.to_string(), "10.244.1.0/24");
        let bad = wait_for_pod_cidr(
            "n1",
            &node(Some("10.244.1.1/24")),
            futures::stream::pending(),
        )
        .await;
        assert!(matches!(bad, Err(DaemonError::PodCidr(_))), "{bad:?}");
    }
}
