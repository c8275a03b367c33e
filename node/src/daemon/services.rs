//! The Service proxy on a real node: the socket load balancer attached to the node's cgroup
//! subtree and the TC programs to its uplink, one watch of Services and one of
//! EndpointSlices (all namespaces) keeping its maps equal to them, one changed Service at a
//! time, and the health check node ports of local-traffic load balancers.

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
    AttachConfig, Datapath, DatapathHandle, Mirror, NodeView, Occupancy, ServiceRef, ServiceTable,
    Synced, Uplink, Warning,
    ebpf::{
        DatapathStats as _, EbpfMaps, Features, LoadError, MapStats, NetlinkReaper, ProbeError,
        cookie,
    },
    metrics,
};
use skiff_types::EventType;

use super::health::HealthServers;

/// Pause before a failed map write is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Failures setting the Service proxy up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The kernel lacks what the socket load balancer needs.
    #[error(transparent)]
    Probe(#[from] ProbeError),
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
}

/// How the node's Service proxy is set up.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The cgroup v2 directory whose processes get the socket hooks; `None` is the cgroup
    /// v2 root (every process on the host).
    pub cgroup: Option<PathBuf>,
    /// Where the programs' links and maps are pinned.
    pub pin_dir: PathBuf,
}

/// The attached proxy, before its watches start.
#[derive(Debug)]
pub struct Proxy {
    mirror: Mirror<EbpfMaps>,
    metrics: Arc<ProxyMetrics>,
    health: HealthServers,
    reaper: NetlinkReaper,
}

impl Proxy {
    /// What the node's `/metrics` serves of the proxy.
    #[must_use]
    pub fn metrics(&self) -> Arc<ProxyMetrics> {
        self.metrics.clone()
    }
}

/// What the sync loop last knew, for `/metrics`.
#[derive(Debug, Default)]
struct SyncState {
    owners: BTreeMap<u32, ServiceRef>,
    occupancy: Occupancy,
    last_sync: Duration,
}

/// The proxy's metrics: the kernel's counters read at scrape time, the table's state as
/// the last sync left it.
#[derive(Debug)]
pub struct ProxyMetrics {
    stats: MapStats,
    state: Mutex<SyncState>,
}

impl ProxyMetrics {
    fn synced(&self, mirror: &Mirror<EbpfMaps>, took: Duration) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.owners = mirror.table().group_owners().into_iter().collect();
        state.occupancy = mirror.occupancy();
        state.last_sync = took;
    }

    /// The Prometheus text.
    ///
    /// # Errors
    /// When the kernel's maps cannot be read.
    pub fn render(&self) -> Result<String, skiff_node_proxy::MapsError> {
        let counters = self.stats.counters()?.into_iter().collect();
        let fill = self.stats.fill()?;
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(metrics::render(&metrics::Snapshot {
            counters,
            owners: state.owners.clone(),
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

/// Probes the kernel, attaches the socket hooks to the configured cgroup and the TC
/// programs to `uplink` (the pod network's interface and the node's address on it), and
/// opens (or adopts) the maps. The handle keeps the programs attached and removes them on a
/// clean-up exit. A kernel that refuses the TC programs leaves the socket path working.
///
/// # Errors
/// When the kernel lacks a feature, the cgroup or pins are unusable, or the socket programs
/// are refused.
pub fn attach(
    name: &str,
    address: Ipv4Addr,
    uplink: Option<Uplink>,
    config: &ProxyConfig,
) -> Result<(Proxy, DatapathHandle), ProxyError> {
    let features = Features::probe();
    tracing::info!("{}", features.summary());
    features.require_socket_lb()?;
    let cgroup = match &config.cgroup {
        Some(dir) => {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|source| ProxyError::Cgroup {
                    path: dir.clone(),
                    source,
                })?;
            }
            dir.clone()
        }
        None => features.cgroup2.clone().ok_or(ProbeError::NoCgroup2)?,
    };
    let host_netns = cookie::current_netns_cookie().map_err(ProxyError::Cookie)?;
    let attach = AttachConfig {
        cgroup,
        // Either the operator named the directory, or it is the documented default (the
        // root, so host processes reach Services too).
        allow_cgroup_root: true,
        pin_dir: Some(config.pin_dir.clone()),
        host_netns,
    };
    let uplinks = tc_uplinks(&features, uplink);
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
            mirror: Mirror::new(table, node_view(name, address)),
            metrics: Arc::new(ProxyMetrics {
                stats: datapath.stats,
                state: Mutex::default(),
            }),
            health: HealthServers::new(address),
            reaper: datapath.reaper,
        },
        datapath.handle,
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

/// Keeps the maps equal to the API's Services and EndpointSlices until dropped; connected
/// UDP sockets of the node and of the pods in `network`'s sandboxes that are pinned to a
/// backend their Service lost are destroyed after each sync.
pub async fn run(client: Client, node: String, proxy: Proxy, network: Arc<dyn PodNetwork>) {
    let Proxy {
        mut mirror,
        metrics,
        mut health,
        mut reaper,
    } = proxy;
    let mut services = std::pin::pin!(
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default()
        )
        .default_backoff()
    );
    let mut slices = std::pin::pin!(
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default()
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
        tokio::select! {
            event = services.next() => match event {
                Some(event) => service_event(&mut mirror, &mut listing, event),
                None => return,
            },
            event = slices.next() => match event {
                Some(event) => slice_event(&mut mirror, &mut listing, event),
                None => return,
            },
            () = retry => retry_at = None,
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
        if !listed || (adopted && !mirror.is_dirty()) {
            continue;
        }
        health.update(mirror.health_checks());
        let started = Instant::now();
        let synced = mirror.sync();
        // What was written is what clients see, even when some writes failed; after a
        // restart every connected UDP socket is checked, as backends may have gone while
        // the node was down.
        reap_stale_udp(&mut mirror, &mut reaper, network.as_ref(), !adopted).await;
        match synced {
            Ok(synced) => {
                let took = started.elapsed();
                metrics.synced(&mirror, took);
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
                                "Service maps in sync with the API"
                            );
                        }
                        Err(err) => tracing::warn!(%err, "stale Service entries not removed"),
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%err, "Service maps not fully written; trying again");
                retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }
}

/// Destroys the connected UDP sockets pinned to a backend their frontend no longer offers,
/// in the node's namespace and every pod sandbox's.
async fn reap_stale_udp(
    mirror: &mut Mirror<EbpfMaps>,
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

fn service_event(
    mirror: &mut Mirror<EbpfMaps>,
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

fn slice_event(
    mirror: &mut Mirror<EbpfMaps>,
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
    fn a_kernel_without_tcx_keeps_the_socket_path_only() {
        let old = Features {
            kernel: "6.1.0".into(),
            tc: Some(true),
            ..Features::default()
        };
        assert!(tc_uplinks(&old, Some(eth0())).is_empty());
    }
}
