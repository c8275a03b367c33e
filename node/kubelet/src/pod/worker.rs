//! One task per pod, as the kubelet's pod worker: sandbox, volumes, init containers in
//! order, app containers, restarts with back-off, probes, hooks, graceful termination, the
//! pod's status, and a record on disk so a restarted daemon adopts what still runs.

use std::{collections::HashMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, EphemeralContainer, Pod, PodSpec, PodStatus},
    jiff::Timestamp,
};
use skiff_types::{ContainerRestartPolicy, EventType, RestartPolicy, namespace};
use tokio::{
    sync::mpsc::{self, UnboundedReceiver, UnboundedSender},
    task::JoinHandle,
    time::Instant,
};

use super::{
    backend::{BackendError, Exit, ImageInfo, PodBackend, Run, SandboxInfo},
    backoff::{self, Backoff},
    probe::{self, Check, ProbeKind, ProbeResult, Target},
    records::{RecordStore, Saved},
    status::{
        PodRecord, Record, State, Terminated, initialized, phase, pod_status, restart_policy,
    },
};
use crate::api::PodApi;

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;
/// The least time a stop gives a container between SIGTERM and SIGKILL, as the kubelet's
/// `minimumGracePeriodInSeconds`, so sidecars stopped after slow app containers still get
/// their SIGTERM handled.
const MIN_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for a process after SIGKILL before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Retry delay after a sandbox, volume or status failure.
const RETRY: Duration = Duration::from_secs(2);
/// How long a failed image pull or container creation waits before the next try.
const START_RETRY_MAX: Duration = Duration::from_mins(5);

/// Settings shared by every pod worker of a node.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The node's address, for `status.hostIP`.
    pub host_ip: String,
    /// Where the workers keep what a restarted daemon needs.
    pub records: Arc<dyn RecordStore>,
    /// How often configMap, secret and downward API volumes are refreshed.
    pub volume_refresh: Duration,
    /// The restart back-off's delays.
    pub backoff: backoff::Policy,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("host_ip", &self.host_ip)
            .field("volume_refresh", &self.volume_refresh)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// What the daemon tells a worker.
#[derive(Debug)]
enum Message {
    Pod(Arc<Pod>),
    Gone,
    Exit {
        name: String,
        id: String,
        exit: Exit,
    },
    Probe(ProbeResult),
    HookFailed {
        name: String,
        id: String,
        message: String,
    },
}

/// The daemon's handle on a pod's worker.
#[derive(Debug)]
pub struct WorkerHandle {
    tx: UnboundedSender<Message>,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Hands the worker a newer version of its pod.
    pub fn update(&self, pod: Arc<Pod>) {
        let _ = self.tx.send(Message::Pod(pod));
    }

    /// The pod object is gone from the API: stop its containers without writing to it.
    pub fn gone(&self) {
        let _ = self.tx.send(Message::Gone);
    }

    /// Whether the worker has finished (its pod is stopped and deleted).
    #[must_use]
    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the worker without touching its containers (daemon shutdown: a later daemon
    /// adopts them).
    pub fn detach(self) {
        self.task.abort();
    }
}

/// Starts the worker of a pod.
#[must_use]
pub fn spawn(
    pod: Arc<Pod>,
    backend: Arc<dyn PodBackend>,
    api: Arc<dyn PodApi>,
    config: Arc<WorkerConfig>,
) -> WorkerHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = Worker::new(pod, backend, api, config, tx.clone(), rx);
    let task = tokio::spawn(worker.run());
    WorkerHandle { tx, task }
}

/// What a container is to its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An init container: runs to completion before the next one starts.
    Init,
    /// A native sidecar (an init container with `restartPolicy: Always`): started in order
    /// with the init containers, then kept running beside the app containers.
    Sidecar,
    /// An app container.
    App,
    /// An ephemeral container (`kubectl debug`): started once in the running pod, never
    /// restarted.
    Ephemeral,
}

/// A container run in progress.
struct Live {
    id: String,
    kind: Kind,
    since: Instant,
    /// A stop (preStop, SIGTERM, SIGKILL) is under way.
    stopping: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Worker {
    backend: Arc<dyn PodBackend>,
    api: Arc<dyn PodApi>,
    config: Arc<WorkerConfig>,
    pod: Arc<Pod>,
    uid: String,
    record: PodRecord,
    sandbox: Option<SandboxInfo>,
    live: HashMap<String, Live>,
    images: HashMap<String, ImageInfo>,
    backoff: Backoff,
    /// Per container: when a failed pull or create may be tried again, and the last delay.
    start_retry: HashMap<String, (Instant, Duration)>,
    retry_at: Option<Instant>,
    /// Extra wake-ups (a failed pull turns into `ImagePullBackOff` a moment later).
    wake: Vec<Instant>,
    volumes_at: Option<Instant>,
    published: Option<PodStatus>,
    gone: bool,
    tx: UnboundedSender<Message>,
    rx: UnboundedReceiver<Message>,
}

fn name_of(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata
            .namespace
            .as_deref()
            .unwrap_or(namespace::DEFAULT),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether an init container is a native sidecar.
/// An ephemeral container as the container it runs as (the same fields, less its target).
fn as_container(ephemeral: &EphemeralContainer) -> Container {
    Container {
        name: ephemeral.name.clone(),
        image: ephemeral.image.clone(),
        image_pull_policy: ephemeral.image_pull_policy.clone(),
        command: ephemeral.command.clone(),
        args: ephemeral.args.clone(),
        env: ephemeral.env.clone(),
        env_from: ephemeral.env_from.clone(),
        working_dir: ephemeral.working_dir.clone(),
        stdin: ephemeral.stdin,
        stdin_once: ephemeral.stdin_once,
        tty: ephemeral.tty,
        security_context: ephemeral.security_context.clone(),
        volume_mounts: ephemeral.volume_mounts.clone(),
        termination_message_path: ephemeral.termination_message_path.clone(),
        termination_message_policy: ephemeral.termination_message_policy.clone(),
        ..Container::default()
    }
}

pub(crate) fn is_sidecar(container: &Container) -> bool {
    ContainerRestartPolicy::from_field(container.restart_policy.as_deref())
        .is_ok_and(ContainerRestartPolicy::is_sidecar)
}

fn terminated(exit: &Exit, started_at: Option<Timestamp>, id: Option<String>) -> Terminated {
    let exit_code = exit
        .code
        .or_else(|| exit.signal.map(|s| 128 + s))
        .unwrap_or(137);
    let reason = if exit.oom_killed {
        "OOMKilled"
    } else if exit.code.is_none() && exit.signal.is_none() {
        "ContainerStatusUnknown"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    Terminated {
        exit_code,
        signal: exit.signal,
        reason: reason.to_owned(),
        message: (reason == "ContainerStatusUnknown")
            .then(|| "The container could not be located when the pod was terminated".to_owned()),
        started_at,
        finished_at: exit.finished_at,
        container_id: id,
    }
}

impl Worker {
    fn new(
        pod: Arc<Pod>,
        backend: Arc<dyn PodBackend>,
        api: Arc<dyn PodApi>,
        config: Arc<WorkerConfig>,
        tx: UnboundedSender<Message>,
        rx: UnboundedReceiver<Message>,
    ) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let record = PodRecord {
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| Record {
                    sidecar: is_sidecar(c),
                    ..Record::new(
                        &c.name,
                        c.image.as_deref().unwrap_or_default(),
                        "PodInitializing",
                    )
                })
                .collect(),
            containers: spec
                .containers
                .iter()
                .map(|c| {
                    let reason = if spec.init_containers.as_ref().is_some_and(|i| !i.is_empty()) {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    };
                    Record::new(&c.name, c.image.as_deref().unwrap_or_default(), reason)
                })
                .collect(),
            host_ip: Some(config.host_ip.clone()),
            start_time: Some(Timestamp::now()),
            ..PodRecord::default()
        };
        Self {
            backoff: Backoff::new(config.backoff),
            backend,
            api,
            config,
            pod,
            uid,
            record,
            sandbox: None,
            live: HashMap::new(),
            images: HashMap::new(),
            start_retry: HashMap::new(),
            retry_at: None,
            wake: Vec::new(),
            volumes_at: None,
            published: None,
            gone: false,
            tx,
            rx,
        }
    }

    fn save(&self) {
        if !self.config.records.persists() {
            return;
        }
        let saved = Saved {
            record: self.record.clone(),
            sandbox: self.sandbox.clone(),
            live: self
                .live
                .iter()
                .map(|(n, l)| (n.clone(), l.id.clone()))
                .collect(),
        };
        self.config.records.save(&self.uid, &saved);
    }

    /// Takes back what an earlier daemon left: the record, and the containers still running.
    async fn restore(&mut self) {
        let Some(saved) = self.config.records.load(&self.pod) else {
            return;
        };
        // Containers of the spec keep their order; the saved states fill them in.
        for r in saved.record.init.into_iter().chain(saved.record.containers) {
            if let Some(mine) = self
                .record
                .init
                .iter_mut()
                .chain(self.record.containers.iter_mut())
                .find(|m| m.name == r.name)
            {
                *mine = r;
            }
        }
        self.record.pod_ip = saved.record.pod_ip;
        self.record.start_time = saved.record.start_time.or(self.record.start_time);
        self.record.failed = saved.record.failed;
        self.sandbox = saved.sandbox;
        self.record.sandbox_ready = self.sandbox.is_some();
        if let Some(sandbox) = &self.sandbox {
            self.backend.adopt_sandbox(&self.pod, sandbox).await;
        }
        for (name, id) in saved.live {
            let Some((_, kind)) = self.spec_container(&name) else {
                continue;
            };
            if self.backend.adopt_container(&self.pod, &id).await {
                tracing::info!(pod = %name_of(&self.pod), container = %name, %id, "adopted running container");
                self.watch(&name, &id, kind);
            } else {
                let exit = Exit {
                    code: None,
                    signal: None,
                    oom_killed: false,
                    finished_at: Timestamp::now(),
                };
                // A placeholder so `exited` finds the run it ends.
                self.live.insert(
                    name.clone(),
                    Live {
                        id: id.clone(),
                        kind,
                        since: Instant::now(),
                        stopping: false,
                        tasks: Vec::new(),
                    },
                );
                self.exited(&name, &id, exit).await;
            }
        }
    }

    async fn run(mut self) {
        // The steps are boxed so that a waiting worker (most of them, most of the time, and
        // 50,000 on a simulated fleet) holds only this loop's small state, not the largest
        // step's.
        Box::pin(self.restore()).await;
        loop {
            if self.gone || self.pod.metadata.deletion_timestamp.is_some() {
                Box::pin(self.terminate()).await;
                return;
            }
            Box::pin(self.sync()).await;
            Box::pin(self.publish()).await;
            self.save();
            let wake = self.next_wake();
            let message = tokio::select! {
                m = self.rx.recv() => m,
                () = tokio::time::sleep_until(wake) => None,
            };
            if let Some(m) = message {
                Box::pin(self.handle(m)).await;
            }
            while let Ok(m) = self.rx.try_recv() {
                Box::pin(self.handle(m)).await;
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_mins(1);
        let mut consider = |t: Instant| {
            if t < wake {
                wake = t.max(now);
            }
        };
        if let Some(t) = self.retry_at {
            consider(t);
        }
        for t in &self.wake {
            consider(*t);
        }
        if let Some(t) = self.volumes_at {
            consider(t);
        }
        for r in self
            .record
            .init
            .iter()
            .chain(&self.record.containers)
            .chain(&self.record.ephemeral)
        {
            if let Some(t) = self.backoff.waiting(&r.name, now) {
                consider(t);
            }
            if let Some((t, _)) = self.start_retry.get(&r.name) {
                consider(*t);
            }
        }
        if let Some(deadline) = self.active_deadline() {
            consider(deadline);
        }
        wake
    }

    fn active_deadline(&self) -> Option<Instant> {
        let seconds = self.pod.spec.as_ref()?.active_deadline_seconds?;
        let start = self.record.start_time?;
        let elapsed = Timestamp::now().duration_since(start);
        let left = seconds.saturating_sub(elapsed.as_secs());
        Some(Instant::now() + Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Pod(pod) => self.pod = pod,
            Message::Gone => self.gone = true,
            Message::Exit { name, id, exit } => self.exited(&name, &id, exit).await,
            Message::Probe(result) => self.probed(result).await,
            Message::HookFailed { name, id, message } => {
                if self.live.get(&name).is_some_and(|l| l.id == id) {
                    self.event(
                        EventType::Warning,
                        "FailedPostStartHook",
                        &format!("PostStartHook failed: {message}"),
                    )
                    .await;
                    self.kill(&name, self.grace());
                }
            }
        }
    }

    fn record_mut(&mut self, name: &str) -> Option<&mut Record> {
        self.record
            .init
            .iter_mut()
            .chain(self.record.containers.iter_mut())
            .chain(self.record.ephemeral.iter_mut())
            .find(|r| r.name == name)
    }

    fn spec_container(&self, name: &str) -> Option<(Container, Kind)> {
        let spec = self.pod.spec.as_ref()?;
        spec.init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .map(|c| {
                let kind = if is_sidecar(c) {
                    Kind::Sidecar
                } else {
                    Kind::Init
                };
                (c.clone(), kind)
            })
            .or_else(|| {
                spec.containers
                    .iter()
                    .find(|c| c.name == name)
                    .map(|c| (c.clone(), Kind::App))
            })
            .or_else(|| {
                let ephemeral = spec
                    .ephemeral_containers
                    .iter()
                    .flatten()
                    .find(|c| c.name == name)?;
                Some((as_container(ephemeral), Kind::Ephemeral))
            })
    }

    fn policy(&self) -> RestartPolicy {
        restart_policy(self.pod.spec.as_ref())
    }

    fn grace(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| self.pod.spec.as_ref()?.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
    }

    async fn event(&self, type_: EventType, reason: &str, message: &str) {
        if !self.gone {
            self.api.event(&self.pod, type_, reason, message).await;
        }
    }

    /// Watches a run: its exit, and its probes (sidecars and app containers have them).
    fn watch(&mut self, name: &str, id: &str, kind: Kind) {
        let mut tasks = Vec::new();
        let backend = self.backend.clone();
        let tx = self.tx.clone();
        let (n, i) = (name.to_owned(), id.to_owned());
        tasks.push(tokio::spawn(async move {
            let exit = backend.wait_container(&i).await;
            let _ = tx.send(Message::Exit {
                name: n,
                id: i,
                exit,
            });
        }));
        self.live.insert(
            name.to_owned(),
            Live {
                id: id.to_owned(),
                kind,
                since: Instant::now(),
                stopping: false,
                tasks,
            },
        );
        if kind != Kind::Init {
            let started = self.record_mut(name).is_some_and(|r| r.started);
            if started {
                self.start_probes(name, &[ProbeKind::Liveness, ProbeKind::Readiness]);
            } else {
                self.start_probes(name, &[ProbeKind::Startup]);
            }
        }
    }

    fn start_probes(&mut self, name: &str, kinds: &[ProbeKind]) {
        let Some((container, _)) = self.spec_container(name) else {
            return;
        };
        let Some(id) = self.live.get(name).map(|l| l.id.clone()) else {
            return;
        };
        let target = Target {
            ip: self.target_ip(),
            id,
            ports: container.ports.clone().unwrap_or_default(),
        };
        let mut tasks = Vec::new();
        for kind in kinds {
            let probe = match kind {
                ProbeKind::Startup => container.startup_probe.clone(),
                ProbeKind::Liveness => container.liveness_probe.clone(),
                ProbeKind::Readiness => container.readiness_probe.clone(),
            };
            let Some(probe) = probe else { continue };
            let (ptx, mut prx) = mpsc::unbounded_channel();
            tasks.push(probe::spawn(
                self.backend.clone(),
                target.clone(),
                name.to_owned(),
                *kind,
                probe,
                ptx,
            ));
            let tx = self.tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(r) = prx.recv().await {
                    if tx.send(Message::Probe(r)).is_err() {
                        return;
                    }
                }
            }));
        }
        if let Some(live) = self.live.get_mut(name) {
            live.tasks.extend(tasks);
        }
    }

    fn target_ip(&self) -> String {
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            "127.0.0.1".to_owned()
        } else {
            self.record.pod_ip.clone().unwrap_or_default()
        }
    }

    async fn probed(&mut self, r: ProbeResult) {
        if self.live.get(&r.container).is_none_or(|l| l.id != r.id) {
            return;
        }
        if !r.ok {
            self.event(
                EventType::Warning,
                "Unhealthy",
                &format!("{} probe failed: {}", r.kind.word(), r.message),
            )
            .await;
        }
        match (r.kind, r.ok) {
            (ProbeKind::Readiness, ok) => {
                if let Some(rec) = self.record_mut(&r.container) {
                    rec.ready = ok;
                }
            }
            (ProbeKind::Startup, true) => {
                if let Some(rec) = self.record_mut(&r.container) {
                    rec.started = true;
                }
                self.start_probes(&r.container, &[ProbeKind::Liveness, ProbeKind::Readiness]);
            }
            (ProbeKind::Liveness | ProbeKind::Startup, false) => {
                self.event(
                    EventType::Normal,
                    "Killing",
                    &format!(
                        "Container {} failed {} probe, will be restarted",
                        r.container,
                        r.kind.word().to_lowercase()
                    ),
                )
                .await;
                self.kill(&r.container, self.grace());
            }
            (ProbeKind::Liveness, true) => {}
        }
    }

    /// Stops a run in the background: preStop hook, SIGTERM, SIGKILL after `grace`. Its
    /// exit arrives as a message like any other.
    fn kill(&mut self, name: &str, grace: Duration) {
        let Some(live) = self.live.get_mut(name).filter(|l| !l.stopping) else {
            return;
        };
        live.stopping = true;
        let id = live.id.clone();
        let backend = self.backend.clone();
        let pre_stop = self
            .spec_container(name)
            .and_then(|(c, _)| c.lifecycle.and_then(|l| l.pre_stop));
        let target = Target {
            ip: self.target_ip(),
            id: id.clone(),
            ports: self
                .spec_container(name)
                .and_then(|(c, _)| c.ports)
                .unwrap_or_default(),
        };
        let task = tokio::spawn(async move {
            let deadline = Instant::now() + grace;
            if let Some(hook) = pre_stop
                && let Some(check) = Check::of_hook(&hook)
            {
                let _ = tokio::time::timeout(
                    grace,
                    probe::run(backend.as_ref(), &target, check, grace),
                )
                .await;
            }
            let _ = backend.signal_container(&id, SIGTERM).await;
            tokio::time::sleep_until(deadline).await;
            let _ = backend.signal_container(&id, SIGKILL).await;
        });
        // Aborting the run's tasks (probes) must not abort the kill: keep it apart.
        if let Some(live) = self.live.get_mut(name) {
            for t in live.tasks.drain(1..) {
                t.abort();
            }
        }
        drop(task);
    }

    async fn exited(&mut self, name: &str, id: &str, exit: Exit) {
        if self.live.get(name).is_none_or(|l| l.id != id) {
            return;
        }
        let Some(live) = self.live.remove(name) else {
            return;
        };
        let ran = live.since.elapsed();
        let kind = live.kind;
        drop(live);
        let policy = self.policy();
        let Some(rec) = self.record_mut(name) else {
            return;
        };
        let started_at = match rec.state {
            State::Running { started_at } => Some(started_at),
            _ => None,
        };
        let t = terminated(&exit, started_at, rec.container_id.clone());
        let restart = match kind {
            // Restarted whatever the pod's policy, unless the pod is done (sync decides).
            Kind::Sidecar => true,
            Kind::Init => policy.restarts_after(t.exit_code) && t.exit_code != 0,
            Kind::App => policy.restarts_after(t.exit_code),
            Kind::Ephemeral => false,
        };
        tracing::info!(container = %name, %id, code = t.exit_code, reason = %t.reason, "container exited");
        rec.state = State::Terminated(t);
        rec.ready = false;
        if restart {
            self.backoff.exited(name, ran, Instant::now());
        }
        if let Err(err) = self.backend.remove_container(id).await {
            tracing::warn!(container = %name, %id, ?err, "could not remove an exited container");
        }
    }

    #[expect(
        clippy::too_many_lines,
        reason = "the kubelet's sync order (deadline, sandbox, volumes, init, app) reads best in one place"
    )]
    async fn sync(&mut self) {
        let Some(spec) = self.pod.spec.clone() else {
            return;
        };
        let now = Instant::now();
        self.wake.retain(|t| *t > now);
        let done = matches!(phase(&spec, &self.record), "Succeeded" | "Failed");
        if done {
            self.volumes_at = None;
            // Sidecars outlive the app containers only until these are done.
            self.stop_next_sidecar();
            if self.live.is_empty() && self.sandbox.is_some() {
                self.remove_sandbox().await;
            }
            return;
        }
        if self.record.failed.is_none()
            && let Some(deadline) = self.active_deadline()
            && deadline <= now
            && spec.active_deadline_seconds.is_some()
        {
            self.record.failed = Some((
                "DeadlineExceeded".to_owned(),
                "Pod was active on the node longer than the specified deadline".to_owned(),
            ));
            self.event(
                EventType::Normal,
                "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline",
            )
            .await;
            let names: Vec<String> = self.live.keys().cloned().collect();
            for name in names {
                self.kill(&name, self.grace());
            }
            return;
        }
        if self.retry_at.is_some_and(|t| t > now) {
            return;
        }
        self.retry_at = None;
        if self.sandbox.is_none() {
            match self.backend.create_sandbox(&self.pod).await {
                Ok(sandbox) => {
                    self.record.pod_ip.clone_from(&sandbox.ip);
                    self.record.sandbox_ready = true;
                    self.sandbox = Some(sandbox);
                }
                Err(err) => {
                    self.event(
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        &format!("Failed to create pod sandbox: {err}"),
                    )
                    .await;
                    self.retry_at = Some(now + RETRY);
                    return;
                }
            }
        }
        if self.volumes_at.is_none_or(|t| t <= now) {
            let first = self.volumes_at.is_none();
            let sandbox = self.sandbox.clone().unwrap_or_default();
            match self.backend.setup_volumes(&self.pod, &sandbox).await {
                Ok(()) => self.volumes_at = Some(now + self.config.volume_refresh),
                Err(err) => {
                    self.event(EventType::Warning, "FailedMount", &err.message)
                        .await;
                    if first {
                        self.retry_at = Some(now + RETRY);
                        return;
                    }
                    self.volumes_at = Some(now + RETRY);
                }
            }
        }
        let policy = self.policy();
        let initialized = initialized(&self.record);
        // Init containers one at a time and in order; a sidecar holds the next one back only
        // until it has started (past its startup probe), then keeps running.
        for i in 0..self.record.init.len() {
            let name = self.record.init[i].name.clone();
            if self.record.init[i].sidecar {
                if !self.live.contains_key(&name) {
                    self.start(&name, Kind::Sidecar).await;
                }
                let started = self.live.contains_key(&name) && self.record.init[i].started;
                if started || initialized {
                    continue;
                }
                return;
            }
            if initialized {
                continue;
            }
            if self.live.contains_key(&name) {
                return;
            }
            match &self.record.init[i].state {
                State::Terminated(t) if t.exit_code == 0 => {}
                State::Terminated(t) if !policy.restarts_after(t.exit_code) => return,
                _ => {
                    self.start(&name, Kind::Init).await;
                    return;
                }
            }
        }
        for i in 0..self.record.containers.len() {
            let name = self.record.containers[i].name.clone();
            if self.live.contains_key(&name) {
                continue;
            }
            if let State::Terminated(t) = &self.record.containers[i].state
                && !policy.restarts_after(t.exit_code)
            {
                continue;
            }
            self.start(&name, Kind::App).await;
        }
        self.start_ephemeral(&spec).await;
    }

    /// Starts the ephemeral containers added since the last sync, each once.
    async fn start_ephemeral(&mut self, spec: &PodSpec) {
        for c in spec.ephemeral_containers.iter().flatten() {
            if !self.record.ephemeral.iter().any(|r| r.name == c.name) {
                let image = c.image.as_deref().unwrap_or_default();
                self.record
                    .ephemeral
                    .push(Record::new(&c.name, image, "ContainerCreating"));
            }
        }
        for i in 0..self.record.ephemeral.len() {
            let name = self.record.ephemeral[i].name.clone();
            let ran = self.record.ephemeral[i].container_id.is_some();
            if self.live.contains_key(&name) || ran {
                continue;
            }
            self.start(&name, Kind::Ephemeral).await;
        }
    }

    /// Stops the last running sidecar (in spec order) once no other stop is under way:
    /// sidecars go in reverse order, each after the one declared after it.
    fn stop_next_sidecar(&mut self) {
        if self
            .live
            .values()
            .any(|l| l.kind == Kind::Sidecar && l.stopping)
        {
            return;
        }
        let last = self
            .record
            .init
            .iter()
            .rev()
            .find(|r| r.sidecar && self.live.contains_key(&r.name))
            .map(|r| r.name.clone());
        if let Some(name) = last {
            let grace = self.grace();
            self.kill(&name, grace);
        }
    }

    /// Starts the next run of a container unless it is backing off.
    #[expect(
        clippy::too_many_lines,
        reason = "a container start reads best as one sequence"
    )]
    async fn start(&mut self, name: &str, kind: Kind) {
        let now = Instant::now();
        let Some((container, _)) = self.spec_container(name) else {
            return;
        };
        if let Some(until) = self.backoff.waiting(name, now) {
            let delay = self.backoff.delay(name).unwrap_or_default();
            let pod = self.pod.metadata.name.clone().unwrap_or_default();
            let rec = self
                .record_mut(name)
                .expect("the spec's container has a record");
            if let State::Terminated(t) = &rec.state {
                rec.last_state = Some(t.clone());
            }
            rec.state = State::Waiting {
                reason: "CrashLoopBackOff".to_owned(),
                message: Some(format!(
                    "back-off {}s restarting failed container={name} pod={pod}",
                    delay.as_secs()
                )),
            };
            let _ = until;
            return;
        }
        if let Some((until, _)) = self.start_retry.get(name)
            && *until > now
        {
            let rec = self
                .record_mut(name)
                .expect("the spec's container has a record");
            if let State::Waiting { reason, .. } = &mut rec.state
                && reason == "ErrImagePull"
            {
                "ImagePullBackOff".clone_into(reason);
            }
            return;
        }
        let image = match self.images.get(name) {
            Some(image) => image.clone(),
            None => match self.backend.pull_image(&self.pod, &container).await {
                Ok(image) => {
                    self.images.insert(name.to_owned(), image.clone());
                    image
                }
                Err(err) => {
                    self.start_failed(name, err, "Failed").await;
                    return;
                }
            },
        };
        let Some(sandbox) = self.sandbox.clone() else {
            return;
        };
        let (restart, last) = {
            let rec = self
                .record_mut(name)
                .expect("the spec's container has a record");
            let restart = if rec.container_id.is_some() {
                rec.restart_count + 1
            } else {
                0
            };
            let last = match &rec.state {
                State::Terminated(t) => Some(t.clone()),
                _ => rec.last_state.clone(),
            };
            (restart, last)
        };
        let run = Run {
            pod: &self.pod,
            sandbox: &sandbox,
            container: &container,
            image: &image,
            restart,
        };
        let (id, status_id) = match self.backend.start_container(run).await {
            Ok(id) => (id.to_string(), self.backend.status_id(&id)),
            Err(err) => {
                self.start_failed(name, err, "Failed").await;
                return;
            }
        };
        self.start_retry.remove(name);
        let has_startup = container.startup_probe.is_some() && kind != Kind::Init;
        let has_readiness = container.readiness_probe.is_some() && kind != Kind::Init;
        {
            let rec = self
                .record_mut(name)
                .expect("the spec's container has a record");
            rec.container_id = Some(status_id);
            rec.image_id.clone_from(&image.image_ref);
            rec.restart_count = restart;
            rec.last_state = last;
            rec.state = State::Running {
                started_at: Timestamp::now(),
            };
            rec.started = !has_startup;
            rec.ready = !has_readiness;
        }
        self.event(
            EventType::Normal,
            "Started",
            &format!("Started container {name}"),
        )
        .await;
        self.watch(name, &id, kind);
        if let Some(hook) = container.lifecycle.and_then(|l| l.post_start) {
            let backend = self.backend.clone();
            let tx = self.tx.clone();
            let target = Target {
                ip: self.target_ip(),
                id: id.clone(),
                ports: container.ports.unwrap_or_default(),
            };
            let grace = self.grace();
            let (n, i) = (name.to_owned(), id);
            let task = tokio::spawn(async move {
                if let Some(check) = Check::of_hook(&hook)
                    && let Err(message) = probe::run(backend.as_ref(), &target, check, grace).await
                {
                    let _ = tx.send(Message::HookFailed {
                        name: n,
                        id: i,
                        message,
                    });
                }
            });
            if let Some(live) = self.live.get_mut(name) {
                live.tasks.push(task);
            }
        }
    }

    async fn start_failed(&mut self, name: &str, err: BackendError, event: &str) {
        let now = Instant::now();
        let delay = self
            .start_retry
            .get(name)
            .map_or(Duration::from_secs(5), |(_, d)| {
                (*d * 2).min(START_RETRY_MAX)
            });
        self.start_retry
            .insert(name.to_owned(), (now + delay, delay));
        self.wake.push(now + Duration::from_secs(1));
        self.event(EventType::Warning, event, &err.message).await;
        if let Some(rec) = self.record_mut(name) {
            rec.state = State::Waiting {
                reason: err.reason,
                message: Some(err.message),
            };
        }
    }

    async fn remove_sandbox(&mut self) {
        match self.backend.remove_sandbox(&self.uid).await {
            Ok(()) => {
                self.sandbox = None;
                self.record.sandbox_ready = false;
            }
            Err(err) => {
                tracing::warn!(pod = %name_of(&self.pod), ?err, "could not remove the sandbox");
            }
        }
    }

    async fn publish(&mut self) {
        if self.gone {
            return;
        }
        let Some(spec) = self.pod.spec.as_ref() else {
            return;
        };
        // Our last write carries the transition times until the watch brings it back.
        let existing = self.published.as_ref().or(self.pod.status.as_ref());
        let status = pod_status(spec, &self.record, existing, Timestamp::now());
        if self.published.as_ref() == Some(&status) {
            return;
        }
        // A worker taking over a pod whose stored status already says it all writes nothing.
        if self.published.is_none() && self.pod.status.as_ref() == Some(&status) {
            self.published = Some(status);
            return;
        }
        match self.api.patch_status(&self.pod, &status).await {
            Ok(()) => self.published = Some(status),
            Err(err) => {
                tracing::warn!(pod = %name_of(&self.pod), ?err, "status update failed");
                self.retry_at.get_or_insert(Instant::now() + RETRY);
            }
        }
    }

    /// Tells the user a container is being stopped, and stops it within `grace`.
    async fn stop(&mut self, name: &str, grace: Duration) {
        self.event(
            EventType::Normal,
            "Killing",
            &format!("Stopping container {name}"),
        )
        .await;
        self.kill(name, grace);
    }

    /// Handles messages until no run `matches` is left; at `until`, those still there are
    /// given up as killed.
    async fn wait_stopped(&mut self, matches: impl Fn(&str, &Live) -> bool, until: Instant) {
        while self.live.iter().any(|(n, l)| matches(n, l)) {
            let message = tokio::select! {
                m = self.rx.recv() => m,
                () = tokio::time::sleep_until(until) => None,
            };
            match message {
                Some(Message::Exit { name, id, exit }) => self.exited(&name, &id, exit).await,
                Some(Message::Pod(pod)) => self.pod = pod,
                Some(Message::Gone) => self.gone = true,
                Some(_) => {}
                None => {
                    tracing::warn!(pod = %name_of(&self.pod), "containers did not stop in time");
                    let ids: Vec<(String, String)> = self
                        .live
                        .iter()
                        .filter(|(n, l)| matches(n, l))
                        .map(|(n, l)| (n.clone(), l.id.clone()))
                        .collect();
                    for (name, id) in ids {
                        let exit = Exit {
                            code: None,
                            signal: Some(SIGKILL),
                            oom_killed: false,
                            finished_at: Timestamp::now(),
                        };
                        self.exited(&name, &id, exit).await;
                    }
                }
            }
        }
    }

    /// Stops every container within the grace period, removes the sandbox, reports, and
    /// deletes the pod object.
    async fn terminate(&mut self) {
        let grace = self.grace();
        let deadline = Instant::now() + grace;
        // App containers (and an init container still running) first, then the sidecars
        // in reverse order, each with what is left of the grace period.
        let first: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| l.kind != Kind::Sidecar)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &first {
            self.stop(name, grace).await;
        }
        self.wait_stopped(|_, l| l.kind != Kind::Sidecar, deadline + KILL_WAIT)
            .await;
        let sidecars: Vec<String> = self
            .record
            .init
            .iter()
            .rev()
            .filter(|r| r.sidecar)
            .map(|r| r.name.clone())
            .collect();
        for name in sidecars {
            if !self.live.contains_key(&name) {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.stop(&name, left.max(MIN_GRACE)).await;
            self.wait_stopped(|n, _| n == name, deadline + KILL_WAIT)
                .await;
        }
        // Stopped for good: the phase is terminal from now on, as the kubelet reports a
        // deleted pod before it goes.
        self.record.stopped = true;
        // Containers that never ran are reported as never started.
        for rec in self
            .record
            .init
            .iter_mut()
            .chain(self.record.containers.iter_mut())
        {
            rec.ready = false;
        }
        self.remove_sandbox().await;
        self.save();
        if !self.gone {
            self.publish().await;
            if let Err(err) = self.api.delete_pod(&self.pod).await {
                tracing::warn!(pod = %name_of(&self.pod), ?err, "final delete failed");
            }
        }
        self.config.records.remove(&self.uid);
    }
}

#[cfg(test)]
pub(crate) mod tests;
