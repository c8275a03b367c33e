//! The Service proxy on a real node: the socket load balancer attached to the node's cgroup
//! subtree and the TC programs to its uplink (or, in the nftables mode, the node's nftables
//! table), one watch of Services and one of EndpointSlices (all namespaces) keeping the
//! datapath equal to them, one changed Service at a time, and the health check node ports
//! of local-traffic load balancers.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::{
    api::{
        core::v1::{Event, EventSource, ObjectReference, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt as _, watcher},
};
use skiff_node_net::PodNetwork;
use skiff_node_proxy::{
    AttachConfig, Datapath, DatapathHandle, Mirror, NodeView, Occupancy, ProxyTable, ServiceRef,
    ServiceTable, Synced, Uplink, Warning,
    ebpf::{
        DatapathStats as _, EbpfMaps, Features, LoadError, MapStats, NetlinkReaper, ProbeError,
        cookie,
    },
    metrics,
    nft::{self, Nft as _, NftCli, NftError, NftTable},
};
use skiff_types::EventType;

use super::{health::HealthServers, nft_counters::NftCounters};

/// Pause before a failed write is tried again, and before chains a sync emptied are
/// deleted.
const RETRY: Duration = Duration::from_secs(1);

/// Which datapath translates Services on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    /// The eBPF socket load balancer and TC programs (falls back to `nftables` when the
    /// kernel lacks what they need).
    #[default]
    Ebpf,
    /// An nftables table of the node's own, in kube-proxy's nftables layout.
    Nftables,
}

/// Failures setting the Service proxy up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The cgroup directory could not be made.
    #[error("socket load balancer cgroup {path}")]
    Cgroup {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The node's network namespace cookie could not be read.
    #[error("reading the node's network namespace cookie (Linux 5.14+)")]
    Cookie(#[source] std::io::Error),
    /// The programs could not be loaded or attached.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The maps of an earlier run could not be read back.
    #[error("reading back the pinned Service maps")]
    Adopt(#[source] skiff_node_proxy::MapsError),
    /// The nftables table could not be read or set up.
    #[error("setting the nftables Service table up")]
    Nft(#[from] NftError),
}

/// How the node's Service proxy is set up.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The datapath asked for.
    pub mode: ProxyMode,
    /// The cgroup v2 directory whose processes get the socket hooks; `None` is the cgroup
    /// v2 root (every process on the host).
    pub cgroup: Option<PathBuf>,
    /// Where the programs' links and maps are pinned.
    pub pin_dir: PathBuf,
}

/// The mirror over the datapath in use, with what cleans stale UDP flows up after it.
#[derive(Debug)]
enum Datapaths {
    Ebpf {
        mirror: Box<Mirror<ServiceTable<EbpfMaps>>>,
        reaper: NetlinkReaper,
    },
    Nft {
        mirror: Box<Mirror<NftTable<NftCli>>>,
        conntrack: Option<PathBuf>,
    },
}

/// The attached proxy, before its watches start.
#[derive(Debug)]
pub struct Proxy {
    datapath: Datapaths,
    metrics: Arc<ProxyMetrics>,
    health: HealthServers,
}

impl Proxy {
    /// What the node's `/metrics` serves of the proxy.
    #[must_use]
    pub fn metrics(&self) -> Arc<ProxyMetrics> {
        self.metrics.clone()
    }
}

/// What keeps the datapath in place, removed on a clean-up exit.
#[derive(Debug)]
pub enum ProxyHandle {
    /// The pinned programs and maps.
    Ebpf(DatapathHandle),
    /// The nftables table.
    Nft(NftCli),
}

impl ProxyHandle {
    /// Removes the datapath: the pins, or the table.
    ///
    /// # Errors
    /// When the pins or the table cannot be removed.
    pub fn remove(self) -> anyhow::Result<()> {
        match self {
            Self::Ebpf(handle) => Ok(handle.remove()?),
            Self::Nft(mut nft) => Ok(nft.delete_table()?),
        }
    }
}

/// What the sync loop last knew, for `/metrics`.
#[derive(Debug, Default)]
struct SyncState {
    owners: BTreeMap<u32, ServiceRef>,
    occupancy: Occupancy,
    last_sync: Duration,
}

/// Where the per-Service counters come from.
#[derive(Debug)]
enum Counting {
    /// The eBPF counter map, by group.
    Ebpf(Box<MapStats>),
    /// The nftables table's chain counters.
    Nft(NftCounters),
}

/// The proxy's metrics: the kernel's counters read at scrape time, the table's state as
/// the last sync left it.
#[derive(Debug)]
pub struct ProxyMetrics {
    counting: Counting,
    state: Mutex<SyncState>,
}

impl ProxyMetrics {
    fn synced(
        &self,
        owner_changes: Vec<(u32, Option<ServiceRef>)>,
        occupancy: Occupancy,
        took: Duration,
    ) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (group, owner) in owner_changes {
            match owner {
                Some(service) => state.owners.insert(group, service),
                None => state.owners.remove(&group),
            };
        }
        state.occupancy = occupancy;
        state.last_sync = took;
    }

    /// The Prometheus text.
    ///
    /// # Errors
    /// When the kernel's maps or table cannot be read.
    pub fn render(&self) -> anyhow::Result<String> {
        let (counters, owners, fill) = match &self.counting {
            Counting::Ebpf(stats) => {
                let counters = stats.counters()?.into_iter().collect();
                let owners = self
                    .state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .owners
                    .clone();
                (counters, owners, stats.fill()?)
            }
            Counting::Nft(nft) => {
                // One made-up group per Service: the counters are summed per Service.
                let per_service = nft.per_service()?;
                let mut counters = BTreeMap::new();
                let mut owners = BTreeMap::new();
                for (id, (service, counts)) in (0u32..).zip(per_service) {
                    counters.insert(id, counts);
                    owners.insert(id, service);
                }
                (counters, owners, Vec::new())
            }
        };
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(metrics::render(&metrics::Snapshot {
            counters,
            owners,
            occupancy: state.occupancy,
            fill,
            last_sync: state.last_sync,
        }))
    }
}

/// The addresses node ports are served on: the node's own, unless it runs on loopback
/// (then 127.0.0.1 serves them already).
fn node_view(name: &str, address: Ipv4Addr) -> NodeView {
    NodeView {
        name: name.to_owned(),
        addresses: if address.is_loopback() {
            Vec::new()
        } else {
            vec![address]
        },
        loopback_node_ports: true,
    }
}

/// The uplinks that get the TC programs: the pod network's interface, when there is one
/// and the kernel can run them; otherwise none, said in one line (Services stay reachable
/// through the socket load balancer, only traffic from outside the node is not translated).
fn tc_uplinks(features: &Features, uplink: Option<Uplink>) -> Vec<Uplink> {
    let Some(uplink) = uplink else {
        tracing::info!(
            "node on loopback: no uplink for NodePort, externalIPs and LoadBalancer traffic \
             from outside"
        );
        return Vec::new();
    };
    match features.require_uplink_programs() {
        Ok(()) => vec![uplink],
        Err(err) => {
            tracing::warn!(
                uplink = %uplink.interface,
                "traffic from outside the node to NodePort, externalIPs and LoadBalancer \
                 addresses is not translated ({err}); the socket load balancer still serves \
                 pods and host processes"
            );
            Vec::new()
        }
    }
}

/// Sets the Service proxy up in the mode `config` asks for: the eBPF datapath when the
/// kernel can run it (otherwise the node says why in one line and uses nftables), or the
/// nftables table.
///
/// # Errors
/// When the chosen datapath cannot be set up.
pub fn attach(
    name: &str,
    address: Ipv4Addr,
    uplink: Option<Uplink>,
    config: &ProxyConfig,
) -> Result<(Proxy, ProxyHandle), ProxyError> {
    if config.mode == ProxyMode::Ebpf {
        let features = Features::probe();
        tracing::info!("{}", features.summary());
        match ebpf_cgroup(&features, config.cgroup.as_deref()) {
            Ok(cgroup) => {
                remove_nft_table(name);
                return attach_ebpf(name, address, uplink, config, &features, cgroup);
            }
            Err(err) => tracing::warn!(
                "the kernel cannot run the eBPF Service proxy ({err}); using the nftables mode"
            ),
        }
    }
    attach_nft(name, address, uplink.as_ref())
}

/// The cgroup the socket hooks go to, or why this kernel cannot run the eBPF datapath.
fn ebpf_cgroup(features: &Features, configured: Option<&Path>) -> Result<PathBuf, ProbeError> {
    features.require_socket_lb()?;
    match configured {
        Some(dir) => Ok(dir.to_owned()),
        None => features.cgroup2.clone().ok_or(ProbeError::NoCgroup2),
    }
}

/// A table an earlier nftables-mode run left would translate before the eBPF programs.
fn remove_nft_table(name: &str) {
    let mut nft = NftCli::new(&nft::table_name(name));
    if let Ok(true) = nft.exists() {
        match nft.delete_table() {
            Ok(()) => tracing::info!("removed the nftables Service table of an earlier run"),
            Err(err) => tracing::warn!(%err, "the nftables Service table of an earlier run stays"),
        }
    }
}

/// The nftables mode: the node's table, adopted when an earlier run left it.
fn attach_nft(
    name: &str,
    address: Ipv4Addr,
    uplink: Option<&Uplink>,
) -> Result<(Proxy, ProxyHandle), ProxyError> {
    // As kube-proxy: node ports on 127.0.0.1 are DNATed to pods, which the kernel routes
    // only with route_localnet (in the node's own network namespace).
    if let Err(err) = std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1") {
        tracing::warn!(%err, "route_localnet not set: node ports on 127.0.0.1 reach local pods only");
    }
    let table_name = nft::table_name(name);
    let table = NftTable::open(
        NftCli::new(&table_name),
        &table_name,
        uplink.map(|u| u.interface.as_str()),
    )?;
    let conntrack = nft::conntrack::tool();
    if conntrack.is_none() {
        tracing::info!(
            "no conntrack tool: UDP flows to a removed backend expire on their own instead of \
             being deleted"
        );
    }
    tracing::info!(table = %table_name, found = table.found(), "Service proxy in nftables mode");
    Ok((
        Proxy {
            datapath: Datapaths::Nft {
                mirror: Box::new(Mirror::new(table, node_view(name, address))),
                conntrack,
            },
            metrics: Arc::new(ProxyMetrics {
                counting: Counting::Nft(NftCounters::new(NftCli::new(&table_name))),
                state: Mutex::default(),
            }),
            health: HealthServers::new(address),
        },
        ProxyHandle::Nft(NftCli::new(&table_name)),
    ))
}

/// Attaches the socket hooks to `cgroup` and the TC programs to `uplink` (the pod
/// network's interface and the node's address on it), and opens (or adopts) the maps. The
/// handle keeps the programs attached and removes them on a clean-up exit. A kernel that
/// refuses the TC programs leaves the socket path working.
fn attach_ebpf(
    name: &str,
    address: Ipv4Addr,
    uplink: Option<Uplink>,
    config: &ProxyConfig,
    features: &Features,
    cgroup: PathBuf,
) -> Result<(Proxy, ProxyHandle), ProxyError> {
    if config.cgroup.is_some() && !cgroup.exists() {
        std::fs::create_dir_all(&cgroup).map_err(|source| ProxyError::Cgroup {
            path: cgroup.clone(),
            source,
        })?;
    }
    let host_netns = cookie::current_netns_cookie().map_err(ProxyError::Cookie)?;
    let attach = AttachConfig {
        cgroup,
        // Either the operator named the directory, or it is the documented default (the
        // root, so host processes reach Services too).
        allow_cgroup_root: true,
        pin_dir: Some(config.pin_dir.clone()),
        host_netns,
    };
    let uplinks = tc_uplinks(features, uplink);
    let datapath = match Datapath::attach_with_uplinks(&attach, &uplinks) {
        Err(LoadError::Tc(err)) if !uplinks.is_empty() => {
            tracing::warn!(
                "the uplink's TC programs were refused ({:#}); traffic from outside the node to \
                 NodePort, externalIPs and LoadBalancer addresses is not translated",
                anyhow::Error::new(err)
            );
            Datapath::attach(&attach)?
        }
        other => other?,
    };
    let table = if datapath.handle.restarted() {
        ServiceTable::adopt(datapath.maps).map_err(ProxyError::Adopt)?
    } else {
        ServiceTable::new(datapath.maps)
    };
    Ok((
        Proxy {
            datapath: Datapaths::Ebpf {
                mirror: Box::new(Mirror::new(table, node_view(name, address))),
                reaper: datapath.reaper,
            },
            metrics: Arc::new(ProxyMetrics {
                counting: Counting::Ebpf(Box::new(datapath.stats)),
                state: Mutex::default(),
            }),
            health: HealthServers::new(address),
        },
        ProxyHandle::Ebpf(datapath.handle),
    ))
}

/// The default pin directory of node `name`.
#[must_use]
pub fn default_pin_dir(name: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/skiff").join(name)
}

/// Where the two watches are in their first list.
#[derive(Default)]
struct Listing {
    services: Option<Vec<Service>>,
    slices: Option<Vec<EndpointSlice>>,
    services_done: bool,
    slices_done: bool,
}

/// What differs between the datapaths once a sync is written: cleaning stale UDP flows up
/// and naming each counter group's Service.
trait Cleanup<T> {
    /// Cleans up after UDP backends that left (or, after a restart, every flow).
    fn stale_udp(
        &mut self,
        mirror: &mut Mirror<T>,
        everything: bool,
    ) -> impl Future<Output = ()> + Send;

    /// The counter groups given to a Service (`Some`) or freed since the last call.
    fn owner_changes(&self, mirror: &mut Mirror<T>) -> Vec<(u32, Option<ServiceRef>)>;
}

/// The eBPF mode: connected UDP sockets pinned to a gone backend are destroyed, in the
/// node's namespace and every pod sandbox's.
struct SocketCleanup {
    reaper: NetlinkReaper,
    network: Arc<dyn PodNetwork>,
}

impl Cleanup<ServiceTable<EbpfMaps>> for SocketCleanup {
    async fn stale_udp(&mut self, mirror: &mut Mirror<ServiceTable<EbpfMaps>>, everything: bool) {
        reap_stale_udp(mirror, &mut self.reaper, self.network.as_ref(), everything).await;
    }

    fn owner_changes(
        &self,
        mirror: &mut Mirror<ServiceTable<EbpfMaps>>,
    ) -> Vec<(u32, Option<ServiceRef>)> {
        mirror.table_mut().take_owner_changes()
    }
}

/// The nftables mode: conntrack entries of UDP flows to a gone backend are deleted.
struct ConntrackCleanup {
    tool: Option<PathBuf>,
}

impl Cleanup<NftTable<NftCli>> for ConntrackCleanup {
    async fn stale_udp(&mut self, mirror: &mut Mirror<NftTable<NftCli>>, _everything: bool) {
        let removed = mirror.table_mut().take_removed_udp();
        let Some(tool) = &self.tool else {
            return;
        };
        if removed.is_empty() {
            return;
        }
        match tokio::task::block_in_place(|| nft::conntrack::forget_udp(tool, &removed)) {
            Ok(n) => tracing::info!(
                backends = n,
                "deleted the conntrack entries of UDP flows to removed backends"
            ),
            Err(err) => tracing::warn!(
                "stale UDP conntrack entries not deleted: {:#}",
                anyhow::Error::new(err)
            ),
        }
    }

    fn owner_changes(
        &self,
        _mirror: &mut Mirror<NftTable<NftCli>>,
    ) -> Vec<(u32, Option<ServiceRef>)> {
        // Read with the counters, from the chains' names.
        Vec::new()
    }
}

/// Keeps the datapath equal to the API's Services and EndpointSlices until dropped; after
/// each sync, what UDP flows are pinned to a backend their Service lost is cleaned up
/// (sockets in the eBPF mode, across the pods in `network`'s sandboxes; conntrack entries
/// in the nftables mode).
pub async fn run(client: Client, node: String, proxy: Proxy, network: Arc<dyn PodNetwork>) {
    let Proxy {
        datapath,
        metrics,
        health,
    } = proxy;
    match datapath {
        Datapaths::Ebpf { mirror, reaper } => {
            let cleanup = SocketCleanup { reaper, network };
            drive(client, node, *mirror, metrics, health, cleanup).await;
        }
        Datapaths::Nft { mirror, conntrack } => {
            let cleanup = ConntrackCleanup { tool: conntrack };
            drive(client, node, *mirror, metrics, health, cleanup).await;
        }
    }
}

/// The sync loop over either datapath.
async fn drive<T: ProxyTable + Send, C: Cleanup<T> + Send>(
    client: Client,
    node: String,
    mut mirror: Mirror<T>,
    metrics: Arc<ProxyMetrics>,
    mut health: HealthServers,
    mut cleanup: C,
) {
    let mut services = std::pin::pin!(
        watcher(
            Api::<Service>::all(client.clone()),
            super::informer::cached_list()
        )
        .default_backoff()
    );
    let mut slices = std::pin::pin!(
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            super::informer::cached_list()
        )
        .default_backoff()
    );
    let mut listing = Listing::default();
    let mut adopted = false;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut due = false;
        tokio::select! {
            event = services.next() => match event {
                Some(event) => service_event(&mut mirror, &mut listing, event),
                None => return,
            },
            event = slices.next() => match event {
                Some(event) => slice_event(&mut mirror, &mut listing, event),
                None => return,
            },
            () = retry => {
                retry_at = None;
                due = true;
            }
        }
        // Everything already delivered goes into the same sync.
        loop {
            let more = futures::select_biased! {
                e = services.next().fuse() => e.map(|e| service_event(&mut mirror, &mut listing, e)),
                e = slices.next().fuse() => e.map(|e| slice_event(&mut mirror, &mut listing, e)),
                default => None,
            };
            if more.is_none() {
                break;
            }
        }
        // Nothing is written until both first lists are in: a restarted node must not
        // remove the entries of Services whose slices it has not seen yet. The first sync
        // runs even with nothing to write, to remove what a previous run left.
        let listed = listing.services_done && listing.slices_done;
        if !listed || (adopted && !mirror.is_dirty() && !due) {
            continue;
        }
        health.update(mirror.health_checks());
        let started = Instant::now();
        let synced = mirror.sync();
        // The datapath's own time: the socket clean-up below runs after the writes are
        // live.
        let took = started.elapsed();
        // What was written is what clients see, even when some writes failed; after a
        // restart every connected UDP socket is checked, as backends may have gone while
        // the node was down.
        cleanup.stale_udp(&mut mirror, !adopted).await;
        match synced {
            Ok(synced) => {
                metrics.synced(cleanup.owner_changes(&mut mirror), mirror.occupancy(), took);
                report(&client, &node, &synced, took).await;
                if !adopted {
                    match mirror.finish_adoption() {
                        Ok(removed) => {
                            adopted = true;
                            let o = mirror.occupancy();
                            tracing::info!(
                                stale_removed = removed,
                                services = o.services,
                                frontends = o.frontends,
                                backends = o.backends,
                                "Service datapath in sync with the API"
                            );
                        }
                        Err(err) => tracing::warn!(%err, "stale Service entries not removed"),
                    }
                }
                // Chains a sync emptied are deleted by a later one.
                if mirror.has_deferred() && retry_at.is_none() {
                    retry_at = Some(tokio::time::Instant::now() + RETRY);
                }
            }
            Err(err) => {
                tracing::warn!(%err, "Service datapath not fully written; trying again");
                retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }
}

/// Destroys the connected UDP sockets pinned to a backend their frontend no longer offers,
/// in the node's namespace and every pod sandbox's.
async fn reap_stale_udp(
    mirror: &mut Mirror<ServiceTable<EbpfMaps>>,
    reaper: &mut NetlinkReaper,
    network: &dyn PodNetwork,
    everything: bool,
) {
    if !everything && !mirror.udp_backends_removed() {
        return;
    }
    match network.list_sandboxes().await {
        Ok(sandboxes) => {
            reaper.set_pod_namespaces(sandboxes.into_iter().map(|s| s.netns).collect());
        }
        // The node's own namespace and the pods known last time are still searched.
        Err(err) => tracing::warn!(%err, "pod sandboxes not listed for the UDP socket reaper"),
    }
    // Blocking netlink calls, a short-lived thread per pod namespace.
    let done = tokio::task::block_in_place(|| mirror.reap_stale_udp(reaper, everything));
    for (socket, frontend) in &done.destroyed {
        tracing::info!(
            %frontend,
            backend = %socket.peer,
            local = %socket.local,
            netns = socket.netns,
            "destroyed a connected UDP socket pinned to a backend its Service no longer has"
        );
    }
    for err in done.errors {
        tracing::warn!(
            "stale UDP sockets not all destroyed: {:#}",
            anyhow::Error::new(err)
        );
    }
}

fn service_event<T: ProxyTable>(
    mirror: &mut Mirror<T>,
    listing: &mut Listing,
    event: Result<watcher::Event<Service>, watcher::Error>,
) {
    match event {
        Ok(watcher::Event::Init) => listing.services = Some(Vec::new()),
        Ok(watcher::Event::InitApply(s)) => {
            if let Some(list) = listing.services.as_mut() {
                list.push(s);
            }
        }
        Ok(watcher::Event::InitDone) => {
            if let Some(list) = listing.services.take() {
                mirror.services_listed(list);
                listing.services_done = true;
            }
        }
        Ok(watcher::Event::Apply(s)) => mirror.service_applied(s),
        Ok(watcher::Event::Delete(s)) => mirror.service_deleted(&s),
        Err(err) => tracing::warn!(%err, "Service watch"),
    }
}

fn slice_event<T: ProxyTable>(
    mirror: &mut Mirror<T>,
    listing: &mut Listing,
    event: Result<watcher::Event<EndpointSlice>, watcher::Error>,
) {
    match event {
        Ok(watcher::Event::Init) => listing.slices = Some(Vec::new()),
        Ok(watcher::Event::InitApply(s)) => {
            if let Some(list) = listing.slices.as_mut() {
                list.push(s);
            }
        }
        Ok(watcher::Event::InitDone) => {
            if let Some(list) = listing.slices.take() {
                mirror.slices_listed(list);
                listing.slices_done = true;
            }
        }
        Ok(watcher::Event::Apply(s)) => mirror.slice_applied(s),
        Ok(watcher::Event::Delete(s)) => mirror.slice_deleted(&s),
        Err(err) => tracing::warn!(%err, "EndpointSlice watch"),
    }
}

/// Logs what a sync did and tells Services what they asked for and do not get.
async fn report(client: &Client, node: &str, synced: &Synced, took: Duration) {
    tracing::debug!(
        services = synced.services,
        writes = synced.writes,
        took_us = took.as_micros(),
        "Service maps synced"
    );
    let conflicted: BTreeSet<&ServiceRef> = synced.conflicts.iter().map(|(s, ..)| s).collect();
    for service in conflicted {
        let taken: Vec<String> = synced
            .conflicts
            .iter()
            .filter(|(s, ..)| s == service)
            .map(|(_, frontend, holder)| format!("{frontend} (held by {holder})"))
            .collect();
        tracing::warn!(%service, ?taken, "frontends another Service holds are not served");
    }
    for (service, warning) in &synced.warnings {
        tracing::warn!(%service, reason = warning.reason, message = %warning.message, "Service not fully served");
        warn_service(client, node, service, warning).await;
    }
}

/// A Warning Event on the Service.
async fn warn_service(client: &Client, node: &str, service: &ServiceRef, warning: &Warning) {
    let uid = Api::<Service>::namespaced(client.clone(), &service.namespace)
        .get_opt(&service.name)
        .await
        .ok()
        .flatten()
        .and_then(|s| s.metadata.uid);
    let now = Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", service.name)),
            namespace: Some(service.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: Some(service.name.clone()),
            namespace: Some(service.namespace.clone()),
            uid,
            ..ObjectReference::default()
        },
        reason: Some(warning.reason.to_owned()),
        message: Some(warning.message.clone()),
        type_: Some(EventType::Warning.as_str().to_owned()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        source: Some(EventSource {
            component: Some("skiff-proxy".into()),
            host: Some(node.to_owned()),
        }),
        reporting_component: Some("skiff-proxy".into()),
        reporting_instance: Some(node.to_owned()),
        ..Event::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &service.namespace);
    if let Err(err) = api.create(&PostParams::default(), &event).await {
        tracing::warn!(%service, %err, "Service warning event not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_on_loopback_serves_node_ports_on_loopback_only() {
        let view = node_view("n1", Ipv4Addr::LOCALHOST);
        assert!(view.addresses.is_empty() && view.loopback_node_ports);
        let view = node_view("n1", Ipv4Addr::new(192, 168, 50, 20));
        assert_eq!(view.addresses, [Ipv4Addr::new(192, 168, 50, 20)]);
    }

    fn eth0() -> Uplink {
        Uplink {
            interface: "eth0".into(),
            address: Ipv4Addr::new(192, 168, 50, 20),
        }
    }

    #[test]
    fn the_pod_networks_uplink_gets_the_tc_programs_when_the_kernel_runs_them() {
        let able = Features {
            kernel: "6.18.0".into(),
            tc: Some(true),
            ..Features::default()
        };
        assert_eq!(tc_uplinks(&able, Some(eth0())), [eth0()]);
        assert!(tc_uplinks(&able, None).is_empty());
    }

    #[test]
    fn a_kernel_without_cgroup_sock_addr_programs_is_a_reason_for_the_nftables_mode() {
        let lacking = Features {
            kernel: "4.9.0".into(),
            cgroup2: Some("/sys/fs/cgroup".into()),
            sock_addr: Some(false),
            ..Features::default()
        };
        let why = ebpf_cgroup(&lacking, None).unwrap_err().to_string();
        assert!(why.contains("CONFIG_CGROUP_BPF"), "{why}");
        let able = Features {
            sock_addr: Some(true),
            ..lacking
        };
        assert_eq!(
            ebpf_cgroup(&able, None).unwrap(),
            Path::new("/sys/fs/cgroup")
        );
        assert_eq!(
            ebpf_cgroup(&able, Some(Path::new("/skiff/n1"))).unwrap(),
            Path::new("/skiff/n1")
        );
    }

    #[test]
    fn a_kernel_without_tcx_keeps_the_socket_path_only() {
        let old = Features {
            kernel: "6.1.0".into(),
            tc: Some(true),
            ..Features::default()
        };
        assert!(tc_uplinks(&old, Some(eth0())).is_empty());
    }
}
