//! Pods bound to the simulated nodes, all driven by one task: one watch of every bound pod,
//! a timer heap for startup delays and container exits, and a queue of status updates and
//! deletions sent a bounded number at a time. Nothing runs per pod or per node.
//!
//! A pod is started (Running and Ready) after the startup delay, ends or restarts as the
//! `skiff.io/sim-*` annotations and its restart policy say, and once marked for deletion
//! has its containers reported terminated and is deleted for good (grace period 0), as a
//! kubelet does once the containers are gone.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream::FuturesUnordered};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    Sim, SimError,
    addresses::{PodIps, node_ip},
    api_code,
    pod_status::{Exit, Facts, Shape},
};

/// Pause before a failed request is tried again; doubled per failure up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Pause before a pod whose node has no free address tries again.
const NO_ADDRESS_RETRY: Duration = Duration::from_secs(5);
/// A container that is restarted runs at least this long, so one that exits at once
/// cannot turn into a storm of status updates.
const MIN_RUN_BEFORE_RESTART: Duration = Duration::from_secs(1);
/// How often pods of nodes deleted from the API are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

type Uid = Arc<str>;

/// Where the pod's containers are.
#[derive(Debug)]
enum State {
    /// Not started yet.
    Pending,
    /// Running since `since`, after `restarts` restarts.
    Running { since: Timestamp, restarts: i32 },
    /// Ended for good (reported Succeeded or Failed).
    Finished { restarts: i32 },
}

/// A request a pod needs.
#[derive(Debug)]
enum Job {
    /// Report the containers running.
    Start,
    /// Report the containers exited and started again.
    Restart(Exit),
    /// Report the containers exited for good.
    Finish(Exit),
    /// Report running containers terminated, then delete the pod with grace period 0.
    Delete,
}

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The startup delay is over.
    Start,
    /// The containers exit now.
    Exit,
    /// Try the pod's job again.
    Retry,
}

/// A pod bound to one of the process's nodes.
#[derive(Debug)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent per-pod flags of the driver's bookkeeping, not a state machine"
)]
struct Tracked {
    namespace: String,
    name: String,
    node: usize,
    shape: Shape,
    /// When the node first saw the pod (`status.startTime`).
    start_time: Timestamp,
    add_scheduled: bool,
    ip: Option<Ipv4Addr>,
    state: State,
    /// Marked for deletion: only the Delete job runs from now on.
    deleting: bool,
    /// The final delete was accepted; kept until the watch says the pod is gone, so late
    /// events for it change nothing.
    deleted: bool,
    /// The sequence number of the one timer that counts (0: none).
    timer: u64,
    job: Option<Job>,
    queued: bool,
    busy: bool,
    retry: Duration,
    /// The last (re-)list that saw it.
    epoch: u64,
}

/// The result of one request: the pod, the job, when it was built, and how it went.
type Outcome = (Uid, Job, Timestamp, Result<(), kube::Error>);

struct Driver {
    sim: Arc<Sim>,
    pods: HashMap<Uid, Tracked>,
    ips: PodIps,
    timers: BinaryHeap<Reverse<(Instant, u64, Uid, Timer)>>,
    timer_seq: u64,
    queue: VecDeque<Uid>,
    epoch: u64,
}

/// Watches every bound pod and drives those on this process's nodes.
pub(super) async fn drive(sim: Arc<Sim>) -> Result<(), SimError> {
    let api: Api<Pod> = Api::all(sim.client.clone());
    // Only bound pods: the ones still waiting for the scheduler are nobody's yet.
    let config = watcher::Config::default()
        .any_semantic()
        .fields("spec.nodeName!=");
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut driver = Driver {
        sim,
        pods: HashMap::new(),
        ips: PodIps::default(),
        timers: BinaryHeap::new(),
        timer_seq: 0,
        queue: VecDeque::new(),
        epoch: 0,
    };
    let mut in_flight = FuturesUnordered::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let bound = driver.sim.config.concurrency.max(1);
    loop {
        while in_flight.len() < bound {
            let Some(request) = driver.next_request() else {
                break;
            };
            in_flight.push(request);
        }
        let next_timer = driver.timers.peek().map(|Reverse((at, ..))| *at);
        tokio::select! {
            event = events.next() => match event {
                Some(event) => driver.on_event(event),
                None => return Err(SimError::WatchEnded("pod")),
            },
            Some(outcome) = in_flight.next(), if !in_flight.is_empty() => driver.on_outcome(outcome),
            () = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                driver.fire_timers(Instant::now());
            }
            _ = sweep.tick() => driver.sweep(),
        }
    }
}

/// Sends one pod's request: the status (with the pod's uid, so a pod recreated under the
/// same name is left alone), then for a deletion the final delete.
async fn send(
    sim: Arc<Sim>,
    uid: Uid,
    namespace: String,
    name: String,
    job: Job,
    at: Timestamp,
    status: Option<Value>,
) -> Outcome {
    let api: Api<Pod> = Api::namespaced(sim.client.clone(), &namespace);
    let _permit = sim.permit().await;
    let mut result = Ok(());
    if let Some(status) = status {
        let patch = json!({"metadata": {"uid": &*uid}, "status": status});
        result = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map(drop);
    }
    if matches!(job, Job::Delete) && result.is_ok() {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        result = api.delete(&name, &params).await.map(drop);
    }
    (uid, job, at, result)
}

fn has_condition(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == type_))
}

/// The running state a previous run of this process reported, if it did.
fn running_state(pod: &Pod) -> Option<State> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let containers = status.container_statuses.as_ref()?;
    let mut since = None;
    let mut restarts = 0;
    for c in containers {
        let started = c.state.as_ref()?.running.as_ref()?.started_at.as_ref()?.0;
        since = Some(since.map_or(started, |s: Timestamp| s.min(started)));
        restarts = restarts.max(c.restart_count);
    }
    Some(State::Running {
        since: since?,
        restarts,
    })
}

/// How long until `since + run_for`, from now.
fn remaining(since: Timestamp, run_for: Duration) -> Duration {
    let ran = Duration::try_from(Timestamp::now().duration_since(since)).unwrap_or_default();
    run_for.saturating_sub(ran)
}

impl Driver {
    fn on_event(&mut self, event: Result<watcher::Event<Pod>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => self.on_pod(&pod),
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = pod.uid() {
                    self.forget(&uid);
                }
            }
            Ok(watcher::Event::Init) => self.epoch += 1,
            Ok(watcher::Event::InitDone) => {
                // Pods not in the new list were deleted while the watch was down.
                let gone: Vec<Uid> = self
                    .pods
                    .iter()
                    .filter(|(_, t)| t.epoch != self.epoch)
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in gone {
                    self.forget(&uid);
                }
            }
            Err(err) => tracing::warn!(?err, "pod watch failed, retrying"),
        }
    }

    fn on_pod(&mut self, pod: &Pod) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            return;
        };
        let Some((index, live)) = self.sim.live(node) else {
            return;
        };
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        let marked = pod.metadata.deletion_timestamp.is_some();
        if let Some(t) = self.pods.get_mut(uid) {
            // Every other change is an echo of this process's own writes.
            t.epoch = self.epoch;
            if marked && !t.deleting {
                self.begin_delete(&Uid::from(uid));
            }
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let terminal = matches!(phase, Some("Succeeded" | "Failed"));
        if terminal && !marked {
            return;
        }
        let shape = Shape::of(pod);
        let state = if terminal {
            State::Finished { restarts: 0 }
        } else {
            running_state(pod).unwrap_or(State::Pending)
        };
        let mut ip = None;
        if let State::Running { .. } = state
            && !shape.host_network
            && let Some(found) = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|s| s.parse().ok())
        {
            // A previous run started it: keep its address.
            self.ips.reserve(index, live.pod_cidr.as_deref(), found);
            ip = Some(found);
        }
        let uid = Uid::from(uid);
        let tracked = Tracked {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            node: index,
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map_or_else(Timestamp::now, |t| t.0),
            add_scheduled: !has_condition(pod, "PodScheduled"),
            ip,
            state,
            deleting: false,
            deleted: false,
            timer: 0,
            job: None,
            queued: false,
            busy: false,
            retry: FIRST_RETRY,
            epoch: self.epoch,
            shape,
        };
        let run_for = tracked.shape.run_for;
        let exit_in = match &tracked.state {
            State::Running { since, .. } => run_for.map(|r| remaining(*since, r)),
            _ => None,
        };
        let pending = matches!(tracked.state, State::Pending);
        self.pods.insert(uid.clone(), tracked);
        if marked {
            self.begin_delete(&uid);
        } else if pending {
            let startup = self.sim.config.pod_startup;
            if startup.is_zero() {
                self.enqueue(&uid, Job::Start);
            } else {
                self.schedule(&uid, Instant::now() + startup, Timer::Start);
            }
        } else if let Some(after) = exit_in {
            self.schedule(&uid, Instant::now() + after, Timer::Exit);
        }
    }

    fn begin_delete(&mut self, uid: &Uid) {
        if let Some(t) = self.pods.get_mut(uid) {
            t.deleting = true;
            t.timer = 0;
            self.enqueue(uid, Job::Delete);
        }
    }

    /// Drops a pod that is gone, giving its address back.
    fn forget(&mut self, uid: &str) {
        if let Some(t) = self.pods.remove(uid)
            && let Some(ip) = t.ip
            && !t.shape.host_network
        {
            self.ips.release(t.node, ip);
        }
    }

    fn enqueue(&mut self, uid: &Uid, job: Job) {
        let Some(t) = self.pods.get_mut(uid) else {
            return;
        };
        if t.deleted || (t.deleting && !matches!(job, Job::Delete)) {
            return;
        }
        t.job = Some(job);
        if !t.queued && !t.busy {
            t.queued = true;
            self.queue.push_back(uid.clone());
        }
    }

    fn schedule(&mut self, uid: &Uid, at: Instant, timer: Timer) {
        let Some(t) = self.pods.get_mut(uid) else {
            return;
        };
        self.timer_seq += 1;
        t.timer = self.timer_seq;
        self.timers
            .push(Reverse((at, self.timer_seq, uid.clone(), timer)));
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, seq, _, _))) = self.timers.peek()
            && *at <= now
        {
            let seq = *seq;
            let Some(Reverse((_, _, uid, timer))) = self.timers.pop() else {
                break;
            };
            let Some(t) = self.pods.get_mut(&uid) else {
                continue;
            };
            if t.timer != seq {
                continue;
            }
            t.timer = 0;
            match timer {
                Timer::Start => self.enqueue(&uid, Job::Start),
                Timer::Retry => {
                    if !t.queued && !t.busy && t.job.is_some() {
                        t.queued = true;
                        self.queue.push_back(uid);
                    }
                }
                Timer::Exit => {
                    let State::Running { since, .. } = t.state else {
                        continue;
                    };
                    let exit = Exit {
                        code: t.shape.exit_code,
                        started: since,
                        finished: Timestamp::now(),
                    };
                    let job = if t.shape.restart_policy.restarts_after(exit.code) {
                        Job::Restart(exit)
                    } else {
                        Job::Finish(exit)
                    };
                    self.enqueue(&uid, job);
                }
            }
        }
    }

    /// The next queued request, with its status document built now.
    fn next_request(&mut self) -> Option<impl Future<Output = Outcome> + use<>> {
        while let Some(uid) = self.queue.pop_front() {
            let Some(t) = self.pods.get_mut(&uid) else {
                continue;
            };
            t.queued = false;
            if t.busy {
                // Queued again when the request in flight ends.
                continue;
            }
            let Some(job) = t.job.take() else {
                continue;
            };
            let Some((_, live)) = self.sim.live(&self.sim.name(t.node)) else {
                // The node was deleted from the API: its pods are nobody's now.
                self.forget(&uid);
                continue;
            };
            let host_ip = node_ip(self.sim.config.node_ip_base, t.node);
            if t.shape.host_network {
                t.ip = Some(host_ip);
            } else if matches!(job, Job::Start) && t.ip.is_none() {
                t.ip = self.ips.allocate(t.node, live.pod_cidr.as_deref());
                if t.ip.is_none() {
                    tracing::warn!(pod = %t.name, namespace = %t.namespace, node = %self.sim.name(t.node),
                        "no free pod address on the node, pod stays pending");
                    t.job = Some(job);
                    self.schedule(&uid, Instant::now() + NO_ADDRESS_RETRY, Timer::Retry);
                    continue;
                }
            }
            let at = Timestamp::now();
            let facts = Facts {
                uid: &uid,
                shape: &t.shape,
                host_ip,
                pod_ip: t.ip,
                start_time: t.start_time,
                add_scheduled: t.add_scheduled,
            };
            let status = match (&job, &t.state) {
                (Job::Start, _) => Some(facts.running(at, 0, None)),
                (Job::Restart(exit), State::Running { restarts, .. }) => {
                    Some(facts.running(at, restarts + 1, Some(exit)))
                }
                (Job::Finish(exit), State::Running { restarts, .. }) => {
                    Some(facts.ended(exit, *restarts))
                }
                // The containers stop (exit 0, as a container that handles SIGTERM).
                (
                    Job::Delete,
                    State::Running {
                        since, restarts, ..
                    },
                ) => Some(facts.ended(
                    &Exit {
                        code: 0,
                        started: *since,
                        finished: at,
                    },
                    *restarts,
                )),
                (Job::Delete, _) => None,
                (Job::Restart(_) | Job::Finish(_), _) => continue,
            };
            t.busy = true;
            return Some(send(
                self.sim.clone(),
                uid.clone(),
                t.namespace.clone(),
                t.name.clone(),
                job,
                at,
                status,
            ));
        }
        None
    }

    fn on_outcome(&mut self, (uid, job, at, result): Outcome) {
        let Some(t) = self.pods.get_mut(&uid) else {
            return;
        };
        t.busy = false;
        match result {
            Ok(()) => {
                t.retry = FIRST_RETRY;
                self.done(&uid, &job, at);
            }
            Err(err) => {
                let code = api_code(&err);
                // 404: the pod is gone. 409 on a delete: its uid precondition failed,
                // so a new pod took the name and ours is gone too.
                let gone = code == Some(404) || (code == Some(409) && matches!(job, Job::Delete));
                if gone {
                    self.forget(&uid);
                    return;
                }
                let permanent = code.is_some_and(|c| (400..500).contains(&c) && c != 429);
                tracing::warn!(pod = %t.name, namespace = %t.namespace, ?job, ?err, permanent,
                    "pod update failed");
                if permanent {
                    return;
                }
                // A newer job (a deletion) wins over the failed one.
                if t.job.is_none() {
                    t.job = Some(job);
                }
                let delay = t.retry;
                t.retry = (t.retry * 2).min(MAX_RETRY);
                self.schedule(&uid, Instant::now() + delay, Timer::Retry);
                return;
            }
        }
        if let Some(t) = self.pods.get_mut(&uid)
            && t.job.is_some()
            && !t.queued
        {
            t.queued = true;
            self.queue.push_back(uid);
        }
    }

    /// Moves a pod on after its request succeeded.
    fn done(&mut self, uid: &Uid, job: &Job, at: Timestamp) {
        let Some(t) = self.pods.get_mut(uid) else {
            return;
        };
        let restarts = match &t.state {
            State::Running { restarts, .. } | State::Finished { restarts } => *restarts,
            State::Pending => 0,
        };
        match job {
            Job::Start => {
                t.state = State::Running {
                    since: at,
                    restarts: 0,
                };
            }
            Job::Restart(_) => {
                t.state = State::Running {
                    since: at,
                    restarts: restarts + 1,
                };
            }
            Job::Finish(_) => {
                t.state = State::Finished { restarts };
                if let Some(ip) = t.ip.take()
                    && !t.shape.host_network
                {
                    self.ips.release(t.node, ip);
                }
                return;
            }
            Job::Delete => {
                t.deleted = true;
                if let Some(ip) = t.ip.take()
                    && !t.shape.host_network
                {
                    self.ips.release(t.node, ip);
                }
                return;
            }
        }
        if t.deleting {
            return;
        }
        if let Some(run_for) = t.shape.run_for {
            let run_for = if t.shape.restart_policy.restarts_after(t.shape.exit_code) {
                run_for.max(MIN_RUN_BEFORE_RESTART)
            } else {
                run_for
            };
            self.schedule(uid, Instant::now() + run_for, Timer::Exit);
        }
    }

    /// Forgets the pods of nodes deleted from the API.
    fn sweep(&mut self) {
        let orphaned: Vec<Uid> = self
            .pods
            .iter()
            .filter(|(_, t)| !self.sim.is_live(t.node))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in orphaned {
            if let Some(t) = self.pods.remove(&uid) {
                self.ips.forget(t.node);
            }
        }
    }
}
