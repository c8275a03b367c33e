//! The simulated Nodes: registration of all of them (listing first, so a restarted process
//! adopts what it left), each with the kubelet's own registration, Lease and pod dispatch;
//! one Node watch for all of them (pod CIDRs, conditions someone else changed, deletions);
//! and pacing loops that spread Lease renewals and status checks over their periods.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::{StreamExt, stream, stream::FuturesUnordered};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, ResourceExt,
    api::ListParams,
    runtime::{WatchStreamExt, watcher},
};
use skiff_kubelet::{
    api::KubePodApi,
    node::{
        lease::NodeLease,
        register::{CHECK_EVERY, Identity, RegisterError, Registration},
    },
    pod::{
        backoff,
        dispatch::{Dispatch, NoHousekeeping, PodEvent},
        records::StatusRecords,
        worker::WorkerConfig,
    },
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{Sim, SimError, SimTaint, addresses::node_ip, host::SimHost, pace::Pacer, transient};

/// Volumes are never refreshed on a simulated node (it has none): the workers wake only for
/// what their pods do.
const NO_VOLUME_REFRESH: Duration = Duration::from_hours(1);

/// One registered simulated node: the kubelet's registration and Lease, and the channel to
/// its pod dispatch.
pub(crate) struct NodeState {
    index: usize,
    registration: tokio::sync::Mutex<Registration>,
    lease: NodeLease,
    pods: mpsc::UnboundedSender<PodEvent>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl NodeState {
    /// Hands a pod event to the node's dispatch.
    pub(crate) fn send(&self, event: PodEvent) {
        let _ = self.pods.send(event);
    }

    /// Stops the node's pod dispatch (its workers are left alone).
    fn stop(&self) {
        if let Some(stop) = self
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = stop.send(());
        }
    }
}

/// Who node `index` is.
fn identity(sim: &Sim, index: usize) -> Identity {
    let name = sim.naming.name(index);
    let mut labels = BTreeMap::from([
        ("type".to_owned(), "simulated".to_owned()),
        (
            "topology.kubernetes.io/zone".to_owned(),
            format!("zone-{}", index % sim.config.zones.max(1)),
        ),
    ]);
    labels.extend(sim.config.labels.clone());
    Identity {
        address: node_ip(sim.config.node_ip_base, index),
        port: 10250,
        labels,
        annotations: BTreeMap::from([("kwok.x-k8s.io/node".to_owned(), "fake".to_owned())]),
        taints: sim.config.taints.iter().map(SimTaint::to_taint).collect(),
        pod_cidr: None,
        provider_id: Some(format!("skiff-sim://{name}")),
        name,
    }
}

fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn pod_cidr(node: &Node) -> Option<String> {
    node.spec.as_ref().and_then(|s| s.pod_cidr.clone())
}

/// Every existing Node that is one of this process's, by index.
async fn existing(sim: &Sim) -> Result<Vec<Option<Node>>, SimError> {
    let api: Api<Node> = Api::all(sim.client.clone());
    let mut found = vec![None; sim.config.count];
    let mut params = ListParams::default().limit(500);
    loop {
        let page = retry("list nodes", api_code, || async {
            let _permit = sim.inflight.permit().await;
            api.list(&params).await
        })
        .await
        .map_err(SimError::ListNodes)?;
        for node in page.items {
            if let Some(index) = sim.naming.index_of(&node.name_any()) {
                found[index] = Some(node);
            }
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(found),
        }
    }
}

/// Why a node's registration failed.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error("lease: {0}")]
    Lease(#[from] kube::Error),
}

impl Failed {
    fn code(&self) -> Option<u16> {
        match self {
            Self::Register(err) => err.code(),
            Self::Lease(err) => api_code(err),
        }
    }
}

/// Registers (or adopts) node `index`, makes sure its Lease exists, and starts its pods'
/// dispatch.
async fn register(sim: &Arc<Sim>, index: usize, existing: Option<Node>) -> Result<(), Failed> {
    let id = identity(sim, index);
    let name = id.name.clone();
    let host_ip = id.address.to_string();
    let mut registration = Registration::new(
        sim.client.clone(),
        id,
        Box::new(SimHost::new(&name, &sim.config.capacity)),
        sim.inflight.clone(),
    );
    let node = match existing {
        Some(node) => registration.adopt(node, Ok(())).await?,
        None => registration.register(Ok(())).await?,
    };
    let lease = NodeLease {
        name: name.clone(),
        node_uid: node.uid().unwrap_or_default(),
        duration: sim.config.lease_duration,
    };
    lease.ensure(&sim.client, &sim.inflight).await?;
    sim.backend.set_pod_cidr(index, pod_cidr(&node));
    let backoff = sim.config.restart_backoff;
    let config = Arc::new(WorkerConfig {
        host_ip,
        records: Arc::new(StatusRecords),
        volume_refresh: NO_VOLUME_REFRESH,
        backoff: backoff::Policy {
            initial: backoff,
            max: backoff,
            reset_after: backoff::RESET_AFTER,
        },
    });
    let api = Arc::new(KubePodApi::new(
        sim.client.clone(),
        &name,
        sim.inflight.clone(),
        false,
    ));
    let dispatch = Dispatch::new(sim.backend.clone(), api, config);
    let (pods, events) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(dispatch.run(events, &NoHousekeeping, async {
        let _ = stopped.await;
    }));
    let state = Arc::new(NodeState {
        index,
        registration: tokio::sync::Mutex::new(registration),
        lease,
        pods,
        stop: Mutex::new(Some(stop)),
    });
    let mut nodes = sim.nodes.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(slot) = nodes.get_mut(index) {
        *slot = Some(state);
    }
    Ok(())
}

/// Runs `attempt` until it succeeds, fails for good, or failed six times, pausing longer
/// after each failure.
async fn retry<T, E, F, Fut>(
    what: &str,
    code: impl Fn(&E) -> Option<u16>,
    mut attempt: F,
) -> Result<T, E>
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    const TRIES: u32 = 6;
    let mut pause = Duration::from_millis(200);
    let mut tried = 1;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if tried < TRIES && transient(code(&err)) => {
                tracing::warn!(what, tried, ?err, "request failed, trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                tried += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Registers every node, `concurrency` at a time.
pub(crate) async fn register_all(sim: &Arc<Sim>) -> Result<(), SimError> {
    let existing = existing(sim).await?;
    let adopted = existing.iter().filter(|n| n.is_some()).count();
    if adopted > 0 {
        tracing::info!(adopted, "adopting nodes registered by an earlier run");
    }
    let mut results = stream::iter(existing.into_iter().enumerate())
        .map(|(index, node)| async move {
            retry("register node", Failed::code, || {
                register(sim, index, node.clone())
            })
            .await
            .map_err(|source| SimError::Register {
                node: sim.naming.name(index),
                source: Box::new(source),
            })
        })
        .buffer_unordered(sim.config.concurrency.max(1));
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

/// Renews every live node's Lease once per interval, node `i` at `i / count` of the way
/// through it. A renewal still in flight when its node comes round again is not doubled.
pub(crate) async fn renew_leases(sim: Arc<Sim>) {
    let interval = sim.config.lease_renew_interval;
    // Registration just created or renewed every Lease.
    let mut pacer = Pacer::new(sim.config.count, interval, Instant::now() + interval);
    paced(&sim, &mut pacer, |sim, node| async move {
        if let Err(err) = node.lease.renew(&sim.client, &sim.inflight).await {
            tracing::warn!(node = %node.lease.name, ?err, "lease renewal failed");
        }
    })
    .await;
}

/// Works out every live node's status once per [`CHECK_EVERY`], spread over it; the
/// kubelet's registration sends it only when it changed, when someone else changed it,
/// or every five minutes.
pub(crate) async fn report_status(sim: Arc<Sim>) {
    let mut pacer = Pacer::new(sim.config.count, CHECK_EVERY, Instant::now() + CHECK_EVERY);
    paced(&sim, &mut pacer, |_, node| async move {
        let mut registration = node.registration.lock().await;
        if let Err(err) = registration.report(Ok(()), false).await {
            tracing::warn!(node = %registration.name(), %err, "node status not reported");
        }
    })
    .await;
}

/// Runs `work` for each live node as `pacer` makes it due, skipping a node whose last
/// round is still in flight.
async fn paced<F, Fut>(sim: &Arc<Sim>, pacer: &mut Pacer, work: F)
where
    F: Fn(Arc<Sim>, Arc<NodeState>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut in_flight = FuturesUnordered::new();
    let mut busy = HashSet::new();
    loop {
        tokio::select! {
            due = pacer.due() => {
                for index in due {
                    let Some(node) = sim.node(index) else { continue };
                    if !busy.insert(index) {
                        tracing::debug!(node = index, "previous round still in flight, skipping");
                        continue;
                    }
                    let done = work(sim.clone(), node);
                    in_flight.push(async move {
                        done.await;
                        index
                    });
                }
            }
            Some(index) = in_flight.next(), if !in_flight.is_empty() => {
                busy.remove(&index);
            }
        }
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Stops simulating node `index`: it was deleted from the API.
fn forget(sim: &Sim, index: usize) {
    let gone = sim
        .nodes
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(index)
        .and_then(Option::take);
    if let Some(node) = gone {
        node.stop();
        sim.backend.forget_node(node.index);
        tracing::info!(node = %sim.naming.name(index), "node deleted from the API, no longer simulated");
    }
}

/// Follows the process's Nodes until the watch ends: pod CIDRs node IPAM assigns,
/// conditions someone else changed (reported again at the next check), deletions.
pub(crate) async fn follow(sim: Arc<Sim>) -> Result<(), SimError> {
    let api: Api<Node> = Api::all(sim.client.clone());
    let mut events =
        std::pin::pin!(watcher(api, watcher::Config::default().any_semantic()).default_backoff());
    // Nodes seen in a re-list; the others were deleted while the watch was down.
    let mut relisted: Option<HashSet<usize>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                let Some(index) = sim.naming.index_of(&node.name_any()) else {
                    continue;
                };
                let Some(state) = sim.node(index) else {
                    continue;
                };
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(index);
                }
                sim.backend.set_pod_cidr(index, pod_cidr(&node));
                if !is_ready(&node) {
                    // The node lifecycle controller marked it while Leases lapsed.
                    tokio::spawn(async move {
                        state.registration.lock().await.observe(&node);
                    });
                }
            }
            Ok(watcher::Event::Delete(node)) => {
                if let Some(index) = sim.naming.index_of(&node.name_any()) {
                    forget(&sim, index);
                }
            }
            Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = relisted.take() {
                    for index in (0..sim.config.count).filter(|i| !seen.contains(i)) {
                        forget(&sim, index);
                    }
                }
            }
            Err(err) => tracing::warn!(?err, "node watch failed, retrying"),
        }
    }
    Err(SimError::WatchEnded("node"))
}
