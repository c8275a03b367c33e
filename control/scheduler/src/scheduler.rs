//! The scheduling loop: watches feed the cache and the queue; the loop pops pods and
//! decides under one lock (no copy of the cluster), assumes each pod on its node at once
//! and binds in the background, several bindings in flight; events and status writes
//! never hold up the next decision.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod},
    scheduling::v1::PriorityClass,
    storage::v1::StorageClass,
};
use kube::{Client, ResourceExt, runtime::watcher::Event};
use skiff_control_runtime::{Informers, Recorder};
use tokio::sync::{Notify, Semaphore};

use crate::{
    Config, Error,
    binder::{self, Nomination},
    cache::Cache,
    events::Events,
    framework::{Cursor, Framework},
    plugins::{default_framework, volume_binding},
    pod_info::PodInfo,
    preemption::{self, Preemption},
    queue::{Backoff, ClusterEvent, Queue},
};

/// Pods decided per lock hold, so watch events get the lock between batches.
const BATCH: usize = 64;
/// How often parked pods are checked for the unschedulable flush.
const FLUSH_CHECK: Duration = Duration::from_secs(30);
/// Concurrent status writes and evictions (bindings have their own limit).
const PARALLEL_WRITES: usize = 8;
/// Concurrent event writers: one, as client-go's broadcaster has, so events take a small
/// share of the API server while bindings are in flight (a binding's `Scheduled` event is a
/// write as dear as the binding itself).
const EVENT_WRITERS: usize = 1;

/// Which informers finished their initial list.
#[derive(Debug, Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one flag per informer, read together"
)]
struct Synced {
    pods: bool,
    nodes: bool,
    classes: bool,
    namespaces: bool,
    claims: bool,
    volumes: bool,
    storage_classes: bool,
}

impl Synced {
    fn all(&self) -> bool {
        self.pods
            && self.nodes
            && self.classes
            && self.namespaces
            && self.claims
            && self.volumes
            && self.storage_classes
    }
}

/// A PriorityClass as pods use it: value and preemption policy.
type Class = (i32, Option<String>);

#[derive(Debug)]
struct State {
    cache: Cache,
    queue: Queue,
    /// Pods assumed on a node while their binding is in flight: uid -> node.
    assumed: HashMap<String, String>,
    classes: HashMap<String, Class>,
    /// The globalDefault class, if any.
    default_class: Option<Class>,
    synced: Synced,
    /// Objects seen during a re-list, to drop what vanished meanwhile.
    relist_pods: Option<HashSet<String>>,
    relist_nodes: Option<HashSet<String>>,
    cursor: Cursor,
    preempt_start: usize,
}

type Shared = Arc<(Mutex<State>, Notify)>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The scheduler over the process's shared informers (pods, nodes, `PriorityClasses` and
/// namespaces); the returned future schedules until dropped.
///
/// # Errors
/// The future fails when an informer's stream ends (the process is going down).
pub fn run(
    informers: &Informers,
    config: Config,
) -> impl Future<Output = Result<(), Error>> + Send + use<> {
    run_as(informers, informers.client(), config)
}

/// [`run`], writing (bindings, pod status, events, preemption) through `client` instead of
/// the informers' own: the scheduler's identity, when the informers read as another
/// component's.
///
/// # Errors
/// The future fails when an informer's stream ends (the process is going down).
pub fn run_as(
    informers: &Informers,
    client: kube::Client,
    config: Config,
) -> impl Future<Output = Result<(), Error>> + Send + use<> {
    let pod_informer = informers.get::<Pod>();
    let pods = pod_informer.events();
    let nodes = informers.get::<Node>().events();
    let classes = informers.get::<PriorityClass>().events();
    let namespaces = informers.get::<Namespace>().events();
    let claims = informers.get::<PersistentVolumeClaim>().events();
    let volumes = informers.get::<PersistentVolume>().events();
    let storage_classes = informers.get::<StorageClass>().events();
    async move {
        let shared: Shared = Arc::new((
            Mutex::new(State {
                cache: Cache::default(),
                queue: Queue::new(Backoff {
                    initial: config.initial_backoff,
                    max: config.max_backoff,
                }),
                assumed: HashMap::new(),
                classes: HashMap::new(),
                default_class: None,
                synced: Synced::default(),
                relist_pods: None,
                relist_nodes: None,
                cursor: Cursor::default(),
                preempt_start: 0,
            }),
            Notify::new(),
        ));
        tracing::info!(scheduler = %config.scheduler_name, "scheduler started");
        let ours = config.scheduler_name.clone();
        tokio::select! {
            r = feed(pods, shared.clone(), "pods", move |s, e| {
                on_pod_event(s, e, &ours, pod_informer.cached());
            }) => r,
            r = feed(nodes, shared.clone(), "nodes", on_node_event) => r,
            r = feed(classes, shared.clone(), "priorityclasses", on_class_event) => r,
            r = feed(namespaces, shared.clone(), "namespaces", on_namespace_event) => r,
            r = feed(claims, shared.clone(), "persistentvolumeclaims", |s, e| {
                let done = matches!(e, Event::InitDone);
                let changed = s.cache.storage.claims.apply(e);
                on_storage(s, changed, done, |d| d.claims = true);
            }) => r,
            r = feed(volumes, shared.clone(), "persistentvolumes", |s, e| {
                let done = matches!(e, Event::InitDone);
                let changed = s.cache.storage.volumes.apply(e);
                on_storage(s, changed, done, |d| d.volumes = true);
            }) => r,
            r = feed(storage_classes, shared.clone(), "storageclasses", |s, e| {
                let done = matches!(e, Event::InitDone);
                let changed = s.cache.storage.classes.apply(e);
                on_storage(s, changed, done, |d| d.storage_classes = true);
            }) => r,
            () = schedule_loop(client, shared, config) => Ok(()),
        }
    }
}

/// Events applied per lock hold, so a burst of watch events takes the lock once per batch
/// and the scheduling loop gets it between batches.
const FEED_BATCH: usize = 256;

/// Applies one informer's events to the state under the lock, waking the loop after each
/// batch.
async fn feed<K>(
    events: impl Stream<Item = Event<Arc<K>>>,
    shared: Shared,
    what: &'static str,
    apply: impl Fn(&mut State, Event<Arc<K>>),
) -> Result<(), Error> {
    let mut batches = std::pin::pin!(events.ready_chunks(FEED_BATCH));
    while let Some(batch) = batches.next().await {
        let mut state = lock(&shared);
        for event in batch {
            apply(&mut state, event);
        }
        drop(state);
        shared.1.notify_one();
    }
    Err(Error::WatchEnded(what))
}

/// A pod's priority and whether it may preempt: its own fields, else its PriorityClass,
/// else the global default class (the API server's Priority admission may not have run).
fn priority_of(state: &State, pod: &Pod) -> (i32, bool) {
    let spec = pod.spec.as_ref();
    let class = spec
        .and_then(|s| s.priority_class_name.as_deref())
        .and_then(|name| state.classes.get(name))
        .or(state.default_class.as_ref());
    let priority = spec
        .and_then(|s| s.priority)
        .or(class.map(|c| c.0))
        .unwrap_or(0);
    let policy = spec
        .and_then(|s| s.preemption_policy.as_deref())
        .or(class.and_then(|c| c.1.as_deref()));
    (priority, policy != Some("Never"))
}

/// `shared`: the informer's cache holds the same pod objects, so keeping one whole costs
/// nothing.
fn on_pod_event(state: &mut State, event: Event<Arc<Pod>>, ours: &str, shared: bool) {
    match event {
        Event::Init => state.relist_pods = Some(HashSet::new()),
        Event::InitApply(pod) => {
            if let Some(seen) = state.relist_pods.as_mut() {
                seen.insert(pod.uid().unwrap_or_default());
            }
            on_pod(state, pod, ours, shared);
        }
        Event::InitDone => {
            if let Some(seen) = state.relist_pods.take() {
                let gone: Vec<String> = state
                    .cache
                    .pod_uids()
                    .into_iter()
                    .filter(|uid| !seen.contains(uid) && !state.assumed.contains_key(uid))
                    .collect();
                for uid in gone {
                    on_pod_gone(state, &uid);
                }
                state.queue.retain(|uid| seen.contains(uid));
            }
            state.synced.pods = true;
        }
        Event::Apply(pod) => on_pod(state, pod, ours, shared),
        Event::Delete(pod) => on_pod_gone(state, &pod.uid().unwrap_or_default()),
    }
}

fn on_pod(state: &mut State, pod: Arc<Pod>, ours: &str, shared: bool) {
    // The informer hands pods out without managedFields, the biggest part of a pod.
    let uid = pod.uid().unwrap_or_default();
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if terminal {
        on_pod_gone(state, &uid);
        return;
    }
    let (priority, may_preempt) = priority_of(state, &pod);
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    if let Some(node) = node {
        state.assumed.remove(&uid);
        state.queue.remove(&uid);
        state.cache.clear_nomination(&uid);
        let new = state.cache.node_of(&uid).is_none();
        let info = PodInfo::new(pod, priority, may_preempt);
        let info = if shared { info } else { info.placed() };
        state.cache.add_pod(Arc::new(info), &node);
        if new {
            state.queue.on_event(ClusterEvent::PodPlaced);
        }
        return;
    }
    let scheduler = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or("default-scheduler");
    if pod.metadata.deletion_timestamp.is_some() || scheduler != ours {
        state.queue.remove(&uid);
        state.cache.clear_nomination(&uid);
        return;
    }
    if state.assumed.contains_key(&uid) {
        // An older version of a pod whose binding is in flight.
        return;
    }
    let info = Arc::new(PodInfo::new(pod, priority, may_preempt));
    if let Some(node) = info.nominated_node() {
        let node = node.to_owned();
        state.cache.nominate(info.clone(), &node);
    }
    state.queue.add(info);
}

fn on_pod_gone(state: &mut State, uid: &str) {
    state.assumed.remove(uid);
    state.queue.remove(uid);
    state.cache.clear_nomination(uid);
    if state.cache.remove_pod(uid).is_some() {
        state.queue.on_event(ClusterEvent::PodGone);
    }
}

fn on_node_event(state: &mut State, event: Event<Arc<Node>>) {
    match event {
        Event::Init => state.relist_nodes = Some(HashSet::new()),
        Event::InitApply(node) => {
            if let Some(seen) = state.relist_nodes.as_mut() {
                seen.insert(node.name_any());
            }
            on_node(state, node);
        }
        Event::InitDone => {
            if let Some(seen) = state.relist_nodes.take() {
                let gone: Vec<String> = state
                    .cache
                    .nodes()
                    .map(|n| n.name().to_owned())
                    .filter(|n| !seen.contains(n))
                    .collect();
                for name in gone {
                    state.cache.remove_node(&name);
                }
            }
            state.synced.nodes = true;
        }
        Event::Apply(node) => on_node(state, node),
        Event::Delete(node) => state.cache.remove_node(&node.name_any()),
    }
}

fn on_node(state: &mut State, node: Arc<Node>) {
    if state.cache.upsert_node(node) {
        state.queue.on_event(ClusterEvent::NodeChanged);
    }
}

fn on_class_event(state: &mut State, event: Event<Arc<PriorityClass>>) {
    match event {
        Event::Init => {}
        Event::InitDone => state.synced.classes = true,
        Event::Apply(pc) | Event::InitApply(pc) => {
            let class = (pc.value, pc.preemption_policy.clone());
            let name = pc.name_any();
            if pc.global_default == Some(true) {
                state.default_class = Some(class.clone());
            }
            state.classes.insert(name, class);
        }
        Event::Delete(pc) => {
            state.classes.remove(&pc.name_any());
            if pc.global_default == Some(true) {
                state.default_class = None;
            }
        }
    }
}

/// After a storage event: pods waiting on their claims may fit now.
fn on_storage(state: &mut State, changed: bool, init_done: bool, synced: fn(&mut Synced)) {
    if init_done {
        synced(&mut state.synced);
    }
    if changed {
        state.queue.on_event(ClusterEvent::StorageChanged);
    }
}

fn on_namespace_event(state: &mut State, event: Event<Arc<Namespace>>) {
    match event {
        Event::Init => {}
        Event::InitDone => state.synced.namespaces = true,
        Event::Apply(ns) | Event::InitApply(ns) => {
            let labels = ns.metadata.labels.clone().unwrap_or_default();
            state.cache.upsert_namespace(ns.name_any(), labels);
        }
        Event::Delete(ns) => state.cache.remove_namespace(&ns.name_any()),
    }
}

/// What the loop must do after deciding, outside the lock.
enum Outcome {
    /// Bind the pod to the node, after marking its delayed claims with the node.
    Bind(Arc<PodInfo>, String, Vec<String>),
    Unschedulable(Arc<PodInfo>, String),
    Preempt {
        pod: Arc<PodInfo>,
        message: String,
        node: String,
        victims: Vec<Arc<PodInfo>>,
        /// Lower-priority pods that were nominated to the node and lose their claim.
        displaced: Vec<Arc<PodInfo>>,
    },
}

fn decide(state: &mut State, framework: &Framework, config: &Config) -> Vec<Outcome> {
    let mut out = Vec::new();
    while out.len() < BATCH {
        let Some(pod) = state.queue.pop() else {
            break;
        };
        let decision = framework.schedule(
            &pod,
            &state.cache,
            &mut state.cursor,
            config.percentage_of_nodes_to_score,
        );
        match decision {
            Ok(node) => {
                let claims = volume_binding::claims_to_select(&pod, &state.cache.storage, &node);
                state.queue.remove(&pod.uid);
                state.cache.clear_nomination(&pod.uid);
                state.cache.add_pod(pod.clone(), &node);
                state.assumed.insert(pod.uid.clone(), node.clone());
                state.queue.on_event(ClusterEvent::PodPlaced);
                out.push(Outcome::Bind(pod, node, claims));
            }
            Err(mut diagnosis) => {
                state.queue.requeue_unschedulable(&pod.uid);
                state.preempt_start = state.preempt_start.wrapping_add(1);
                let preemption = preemption::find(
                    framework,
                    &pod,
                    &state.cache,
                    &diagnosis,
                    state.preempt_start,
                );
                match preemption {
                    Preemption::Evict(candidate) => {
                        let displaced: Vec<Arc<PodInfo>> = state
                            .cache
                            .node(&candidate.node)
                            .map(|n| {
                                n.nominated
                                    .iter()
                                    .filter(|p| p.uid != pod.uid && p.priority < pod.priority)
                                    .cloned()
                                    .collect()
                            })
                            .unwrap_or_default();
                        for p in &displaced {
                            state.cache.clear_nomination(&p.uid);
                        }
                        state.cache.nominate(pod.clone(), &candidate.node);
                        out.push(Outcome::Preempt {
                            message: diagnosis.message(),
                            pod,
                            node: candidate.node,
                            victims: candidate.victims,
                            displaced,
                        });
                    }
                    Preemption::Wait(why) | Preemption::Fail(why) => {
                        diagnosis.post_filter = Some(why);
                        tracing::debug!(pod = %pod.name(), message = %diagnosis.full_message(), "unschedulable");
                        out.push(Outcome::Unschedulable(pod, diagnosis.message()));
                    }
                }
            }
        }
    }
    out
}

/// What the loop shares with the tasks it spawns.
struct Writers {
    client: Client,
    shared: Shared,
    events: Events,
    bindings: Arc<Semaphore>,
    writes: Arc<Semaphore>,
    scheduler: String,
}

async fn schedule_loop(client: Client, shared: Shared, config: Config) {
    let framework = default_framework();
    let writers = Arc::new(Writers {
        events: Events::start(
            Recorder::new(client.clone(), &config.scheduler_name),
            EVENT_WRITERS,
        ),
        client,
        shared: shared.clone(),
        bindings: Arc::new(Semaphore::new(config.parallel_bindings.max(1))),
        writes: Arc::new(Semaphore::new(PARALLEL_WRITES)),
        scheduler: config.scheduler_name.clone(),
    });
    let mut last_flush = Instant::now();
    loop {
        let (outcomes, next_backoff) = {
            let mut state = lock(&shared);
            if state.synced.all() {
                if last_flush.elapsed() >= FLUSH_CHECK {
                    state.queue.flush_unschedulable(config.unschedulable_flush);
                    let (active, backoff, unschedulable) = state.queue.sizes();
                    tracing::debug!(
                        active,
                        backoff,
                        unschedulable,
                        nodes = state.cache.len(),
                        "scheduling queue"
                    );
                    last_flush = Instant::now();
                }
                let outcomes = decide(&mut state, &framework, &config);
                (outcomes, state.queue.next_backoff())
            } else {
                (Vec::new(), None)
            }
        };
        if outcomes.is_empty() {
            let wait = next_backoff
                .map_or(Duration::from_secs(5), |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_secs(5));
            let _ = tokio::time::timeout(wait, shared.1.notified()).await;
            continue;
        }
        for outcome in outcomes {
            carry_out(&writers, outcome).await;
        }
    }
}

async fn carry_out(writers: &Arc<Writers>, outcome: Outcome) {
    match outcome {
        Outcome::Bind(pod, node, claims) => {
            let Ok(permit) = writers.bindings.clone().acquire_owned().await else {
                return;
            };
            let writers = writers.clone();
            tokio::spawn(async move {
                let mut result = Ok(());
                for claim in &claims {
                    result =
                        binder::select_node(&writers.client, &pod.namespace, claim, &node).await;
                    if result.is_err() {
                        break;
                    }
                }
                if result.is_ok() {
                    result = binder::bind(&writers.client, &pod.pod, &node).await;
                }
                drop(permit);
                match result {
                    Ok(()) => {
                        tracing::debug!(pod = %pod.name(), node, "bound");
                        let message = format!(
                            "Successfully assigned {}/{} to {node}",
                            pod.namespace,
                            pod.name()
                        );
                        writers.events.normal(&pod.pod, "Scheduled", message);
                    }
                    Err(err) => bind_failed(&writers.shared, &pod, &err),
                }
            });
        }
        Outcome::Unschedulable(pod, message) => {
            writers
                .events
                .warning(&pod.pod, "FailedScheduling", message.clone());
            let Ok(permit) = writers.writes.clone().acquire_owned().await else {
                return;
            };
            let writers = writers.clone();
            tokio::spawn(async move {
                let result = binder::mark_unschedulable(
                    &writers.client,
                    &pod.pod,
                    &message,
                    Nomination::Keep,
                )
                .await;
                drop(permit);
                if let Err(err) = result {
                    tracing::debug!(pod = %pod.name(), ?err, "could not mark the pod unschedulable");
                }
            });
        }
        Outcome::Preempt {
            pod,
            message,
            node,
            victims,
            displaced,
        } => {
            tracing::info!(pod = %pod.name(), node, victims = victims.len(), "preempting");
            writers
                .events
                .warning(&pod.pod, "FailedScheduling", message.clone());
            let Ok(permit) = writers.writes.clone().acquire_owned().await else {
                return;
            };
            let writers = writers.clone();
            tokio::spawn(async move {
                preempt(&writers, &pod, &message, &node, &victims, &displaced).await;
                drop(permit);
            });
        }
    }
}

async fn preempt(
    writers: &Writers,
    pod: &PodInfo,
    message: &str,
    node: &str,
    victims: &[Arc<PodInfo>],
    displaced: &[Arc<PodInfo>],
) {
    let client = &writers.client;
    if let Err(err) =
        binder::mark_unschedulable(client, &pod.pod, message, Nomination::Set(node)).await
    {
        tracing::debug!(pod = %pod.name(), ?err, "could not nominate");
    }
    for other in displaced {
        if let Err(err) = binder::clear_nomination(client, &other.object()).await {
            tracing::debug!(pod = %other.name(), ?err, "could not clear a nomination");
        }
    }
    for victim in victims {
        writers.events.normal(
            &victim.object(),
            "Preempted",
            format!("Preempted by pod {} on node {node}", pod.uid),
        );
        if let Err(err) = binder::evict(client, &victim.object(), &writers.scheduler).await {
            tracing::warn!(victim = %victim.name(), ?err, "could not evict a preemption victim");
        }
    }
}

fn bind_failed(shared: &Shared, pod: &Arc<PodInfo>, err: &binder::BindError) {
    let mut state = lock(shared);
    if state.assumed.remove(&pod.uid).is_some() {
        state.cache.remove_pod(&pod.uid);
        state.queue.on_event(ClusterEvent::PodGone);
    }
    if err.is_gone() {
        return;
    }
    // Already bound elsewhere, or a transient failure: retry after the back-off; the
    // watch drops the pod from the queue if it turns out to be bound.
    tracing::warn!(pod = %pod.name(), ?err, "binding failed; retrying after back-off");
    state.queue.add(pod.clone());
    state.queue.requeue_backoff(&pod.uid);
    drop(state);
    shared.1.notify_one();
}
