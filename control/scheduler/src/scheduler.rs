//! The scheduling loop: watches feed the cache and the queue; the loop pops pods, decides
//! under one lock (no copy of the cluster), assumes the pod on its node at once and binds
//! in the background, several bindings in flight.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Pod},
    scheduling::v1::PriorityClass,
};
use kube::{
    Api, Client, ResourceExt,
    api::DeleteParams,
    runtime::{WatchStreamExt, watcher},
};
use skiff_controllers::events::Recorder;
use tokio::sync::{Notify, Semaphore};

use crate::{
    Config, Error, binder,
    cache::Cache,
    framework::{Decision, Framework, PodInfo, nodes_to_find},
    plugins::default_framework,
    preemption,
    queue::{Backoff, Queue},
};

/// Pods decided per lock hold, so watch events get the lock between batches.
const BATCH: usize = 64;

#[derive(Debug)]
struct State {
    cache: Cache,
    queue: Queue,
    /// Pods assumed on a node while their binding is in flight: uid -> node.
    assumed: HashMap<String, String>,
    /// PriorityClass name -> (value, preemptionPolicy).
    classes: HashMap<String, (i32, Option<String>)>,
    /// The globalDefault class, if any.
    default_class: Option<(i32, Option<String>)>,
    pods_synced: bool,
    nodes_synced: bool,
    /// Objects seen during a re-list, to drop what vanished meanwhile.
    relist_pods: Option<HashSet<String>>,
    relist_nodes: Option<HashSet<String>>,
    start: usize,
    tie: u64,
}

type Shared = Arc<(Mutex<State>, Notify)>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the scheduler until the future is dropped.
///
/// # Errors
/// When a watch ends for good (it retries with back-off otherwise).
pub async fn run(client: Client, config: Config) -> Result<(), Error> {
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
            pods_synced: false,
            nodes_synced: false,
            relist_pods: None,
            relist_nodes: None,
            start: 0,
            tie: 0x9e37_79b9_7f4a_7c15,
        }),
        Notify::new(),
    ));
    tracing::info!(scheduler = %config.scheduler_name, "scheduler started");
    tokio::select! {
        r = watch_pods(client.clone(), shared.clone(), config.scheduler_name.clone()) => r,
        r = watch_nodes(client.clone(), shared.clone()) => r,
        r = watch_classes(client.clone(), shared.clone()) => r,
        () = schedule_loop(client, shared, config) => Ok(()),
    }
}

fn priority_of(state: &State, pod: &Pod) -> (i32, Option<String>) {
    let spec = pod.spec.as_ref();
    let class = spec
        .and_then(|s| s.priority_class_name.as_deref())
        .and_then(|name| state.classes.get(name).cloned())
        .or_else(|| state.default_class.clone());
    let priority = spec
        .and_then(|s| s.priority)
        .or(class.as_ref().map(|c| c.0))
        .unwrap_or(0);
    let policy = spec
        .and_then(|s| s.preemption_policy.clone())
        .or(class.and_then(|c| c.1));
    (priority, policy)
}

fn on_pod(state: &mut State, pod: Pod, ours: &str) {
    let uid = pod.uid().unwrap_or_default();
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    if terminal {
        state.assumed.remove(&uid);
        state.queue.remove(&uid);
        if state.cache.node_of(&uid).is_some() {
            state.cache.remove_pod(&uid);
            state.queue.move_unschedulable();
        }
        return;
    }
    if let Some(node) = node {
        state.assumed.remove(&uid);
        state.queue.remove(&uid);
        state.cache.add_pod(Arc::new(pod), &node);
        return;
    }
    let scheduler = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or("default-scheduler");
    if pod.metadata.deletion_timestamp.is_some() || scheduler != ours {
        state.queue.remove(&uid);
        return;
    }
    if state.assumed.contains_key(&uid) {
        return;
    }
    let (priority, policy) = priority_of(state, &pod);
    let mut pod = pod;
    if let Some(spec) = pod.spec.as_mut() {
        spec.priority = Some(priority);
        if spec.preemption_policy.is_none() {
            spec.preemption_policy = policy;
        }
    }
    state.queue.add(Arc::new(pod), priority);
}

fn on_pod_gone(state: &mut State, uid: &str) {
    state.assumed.remove(uid);
    state.queue.remove(uid);
    if state.cache.node_of(uid).is_some() {
        state.cache.remove_pod(uid);
        state.queue.move_unschedulable();
    }
}

async fn watch_pods(client: Client, shared: Shared, ours: String) -> Result<(), Error> {
    let api: Api<Pod> = Api::all(client);
    let mut events =
        std::pin::pin!(watcher(api, watcher::Config::default().any_semantic()).default_backoff());
    while let Some(event) = events.next().await {
        let Ok(event) = event else {
            continue;
        };
        let mut state = lock(&shared);
        match event {
            watcher::Event::Init => state.relist_pods = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(seen) = state.relist_pods.as_mut() {
                    seen.insert(pod.uid().unwrap_or_default());
                }
                on_pod(&mut state, pod, &ours);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = state.relist_pods.take() {
                    let gone: Vec<String> = state
                        .cache
                        .pod_uids()
                        .into_iter()
                        .filter(|uid| !seen.contains(uid) && !state.assumed.contains_key(uid))
                        .collect();
                    for uid in gone {
                        on_pod_gone(&mut state, &uid);
                    }
                }
                state.pods_synced = true;
            }
            watcher::Event::Apply(pod) => on_pod(&mut state, pod, &ours),
            watcher::Event::Delete(pod) => on_pod_gone(&mut state, &pod.uid().unwrap_or_default()),
        }
        drop(state);
        shared.1.notify_one();
    }
    Err(Error::WatchEnded("pods"))
}

/// Whether a node change can make a parked pod fit.
fn node_changed(old: &Node, new: &Node) -> bool {
    let spec = |n: &Node| n.spec.as_ref().map(|s| (s.unschedulable, s.taints.clone()));
    let alloc = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    old.metadata.labels != new.metadata.labels || spec(old) != spec(new) || alloc(old) != alloc(new)
}

fn on_node(state: &mut State, node: Node) {
    let changed = state
        .cache
        .node(&node.name_any())
        .is_none_or(|info| node_changed(&info.node, &node));
    state.cache.upsert_node(node);
    if changed {
        state.queue.move_unschedulable();
    }
}

async fn watch_nodes(client: Client, shared: Shared) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client);
    let mut events =
        std::pin::pin!(watcher(api, watcher::Config::default().any_semantic()).default_backoff());
    while let Some(event) = events.next().await {
        let Ok(event) = event else {
            continue;
        };
        let mut state = lock(&shared);
        match event {
            watcher::Event::Init => state.relist_nodes = Some(HashSet::new()),
            watcher::Event::InitApply(node) => {
                if let Some(seen) = state.relist_nodes.as_mut() {
                    seen.insert(node.name_any());
                }
                on_node(&mut state, node);
            }
            watcher::Event::InitDone => {
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
                state.nodes_synced = true;
            }
            watcher::Event::Apply(node) => on_node(&mut state, node),
            watcher::Event::Delete(node) => state.cache.remove_node(&node.name_any()),
        }
        drop(state);
        shared.1.notify_one();
    }
    Err(Error::WatchEnded("nodes"))
}

async fn watch_classes(client: Client, shared: Shared) -> Result<(), Error> {
    let api: Api<PriorityClass> = Api::all(client);
    let mut events =
        std::pin::pin!(watcher(api, watcher::Config::default().any_semantic()).default_backoff());
    while let Some(event) = events.next().await {
        let Ok(event) = event else {
            continue;
        };
        let mut state = lock(&shared);
        match event {
            watcher::Event::Init | watcher::Event::InitDone => {}
            watcher::Event::Apply(pc) | watcher::Event::InitApply(pc) => {
                let entry = (pc.value, pc.preemption_policy.clone());
                if pc.global_default == Some(true) {
                    state.default_class = Some(entry.clone());
                }
                state.classes.insert(pc.name_any(), entry);
            }
            watcher::Event::Delete(pc) => {
                state.classes.remove(&pc.name_any());
                if pc.global_default == Some(true) {
                    state.default_class = None;
                }
            }
        }
    }
    Err(Error::WatchEnded("priorityclasses"))
}

/// What the loop must do after deciding, outside the lock.
enum Outcome {
    Bind(Arc<Pod>, String),
    Unschedulable(Arc<Pod>, String),
    Preempt(Arc<Pod>, String, Vec<Arc<Pod>>),
}

fn decide(state: &mut State, framework: &Framework, config: &Config) -> Vec<Outcome> {
    let mut out = Vec::new();
    while out.len() < BATCH {
        let Some(pod) = state.queue.pop() else {
            break;
        };
        let info = PodInfo::new(pod.clone());
        let total = state.cache.len();
        let wanted = nodes_to_find(total, config.percentage_of_nodes_to_score);
        // xorshift: cheap, deterministic tie breaking.
        state.tie ^= state.tie << 13;
        state.tie ^= state.tie >> 7;
        state.tie ^= state.tie << 17;
        let decision = framework.schedule(&info, &state.cache, state.start, wanted, state.tie);
        if total > 0 {
            state.start = (state.start + wanted) % total;
        }
        let uid = info.uid().to_owned();
        match decision {
            Decision::Node(node) => {
                let mut bound = (*pod).clone();
                if let Some(spec) = bound.spec.as_mut() {
                    spec.node_name = Some(node.clone());
                }
                state.cache.add_pod(Arc::new(bound), &node);
                state.assumed.insert(uid.clone(), node.clone());
                state.queue.remove(&uid);
                out.push(Outcome::Bind(pod, node));
            }
            Decision::Unschedulable(diagnosis) => {
                state.queue.requeue_unschedulable(&uid);
                let message = diagnosis.message();
                match preemption::find(framework, &info, &state.cache) {
                    Some(candidate) => {
                        out.push(Outcome::Preempt(pod, candidate.node, candidate.victims));
                    }
                    None => out.push(Outcome::Unschedulable(pod, message)),
                }
            }
        }
    }
    out
}

async fn schedule_loop(client: Client, shared: Shared, config: Config) {
    let framework = Arc::new(default_framework());
    let recorder = Arc::new(Recorder::new(client.clone(), &config.scheduler_name));
    let bindings = Arc::new(Semaphore::new(config.parallel_bindings.max(1)));
    let mut last_flush = Instant::now();
    loop {
        let (outcomes, next_backoff) = {
            let mut state = lock(&shared);
            if state.pods_synced && state.nodes_synced {
                if last_flush.elapsed() >= Duration::from_secs(30) {
                    state.queue.flush_unschedulable(config.unschedulable_flush);
                    last_flush = Instant::now();
                }
                (
                    decide(&mut state, &framework, &config),
                    state.queue.next_backoff(),
                )
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
            match outcome {
                Outcome::Bind(pod, node) => {
                    let permit = bindings
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("semaphore closed");
                    let (client, shared, recorder) =
                        (client.clone(), shared.clone(), recorder.clone());
                    tokio::spawn(async move {
                        let result = binder::bind(&client, &pod, &node).await;
                        drop(permit);
                        match result {
                            Ok(()) => binder::scheduled(&recorder, &pod, &node).await,
                            Err(err) => bind_failed(&shared, &pod, &err),
                        }
                    });
                }
                Outcome::Unschedulable(pod, message) => {
                    tracing::debug!(pod = %pod.name_any(), %message, "unschedulable");
                    let (client, recorder) = (client.clone(), recorder.clone());
                    tokio::spawn(async move {
                        binder::unschedulable(&client, &recorder, &pod, &message).await;
                    });
                }
                Outcome::Preempt(pod, node, victims) => {
                    let (client, recorder) = (client.clone(), recorder.clone());
                    tokio::spawn(async move {
                        preempt(&client, &recorder, &pod, &node, &victims).await;
                    });
                }
            }
        }
    }
}

fn bind_failed(shared: &Shared, pod: &Arc<Pod>, err: &binder::BindError) {
    let uid = pod.uid().unwrap_or_default();
    let mut state = lock(shared);
    if state.assumed.remove(&uid).is_some() {
        state.cache.remove_pod(&uid);
    }
    let gone = matches!(err, binder::BindError::Api(kube::Error::Api(s)) if s.code == 404 || s.code == 409);
    if gone {
        // Deleted or already bound: the watch tells the rest.
        return;
    }
    tracing::warn!(pod = %pod.name_any(), ?err, "binding failed; retrying after back-off");
    let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
    state.queue.add(pod.clone(), priority);
    state.queue.requeue_backoff(&uid);
    drop(state);
    shared.1.notify_one();
}

async fn preempt(
    client: &Client,
    recorder: &Recorder,
    pod: &Pod,
    node: &str,
    victims: &[Arc<Pod>],
) {
    tracing::info!(pod = %pod.name_any(), node, victims = victims.len(), "preempting");
    if let Err(err) = binder::nominate(client, pod, node).await {
        tracing::debug!(pod = %pod.name_any(), ?err, "could not nominate");
    }
    for victim in victims {
        let api: Api<Pod> =
            Api::namespaced(client.clone(), &victim.namespace().unwrap_or_default());
        let message = format!(
            "Preempted by pod {} on node {node}",
            pod.uid().unwrap_or_default()
        );
        recorder
            .normal(victim.as_ref(), "Preempted", &message)
            .await;
        if let Err(err) = api
            .delete(&victim.name_any(), &DeleteParams::default())
            .await
        {
            tracing::debug!(victim = %victim.name_any(), ?err, "could not evict");
        }
    }
}
