//! One node's pods: a worker per pod bound to the node, fed by the events of a pod watch
//! through a channel, so a real node's own watch and the one watch all simulated nodes of
//! a process share drive the same code.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{
    backend::PodBackend,
    worker::{self, WorkerConfig, WorkerHandle},
};
use crate::api::PodApi;

/// An event of a pod watch.
pub type PodEvent = watcher::Event<Pod>;

/// The pods a node runs, by UID, shared with whoever serves them (the node endpoint).
pub type PodMap = Arc<Mutex<HashMap<String, Arc<Pod>>>>;

/// How often finished workers are dropped (and [`Housekeeping::tick`] runs).
pub const TICK: Duration = Duration::from_secs(5);

/// What a node does beside running its pods' workers.
#[async_trait]
pub trait Housekeeping: Send + Sync {
    /// After the first complete list of the node's pods: `known` holds every listed UID,
    /// so what no known pod owns can go.
    async fn first_sync(&self, _known: &HashSet<String>) {}
    /// Every [`TICK`], with the pods the node runs.
    async fn tick(&self, _pods: &[Arc<Pod>]) {}
}

/// No housekeeping (simulated nodes own nothing on the host).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHousekeeping;

impl Housekeeping for NoHousekeeping {}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The workers of one node's pods.
pub struct Dispatch {
    backend: Arc<dyn PodBackend>,
    api: Arc<dyn PodApi>,
    config: Arc<WorkerConfig>,
    workers: HashMap<String, WorkerHandle>,
    pods: PodMap,
    /// UIDs seen since the watch last (re)listed.
    seen: HashSet<String>,
    /// The first list has not completed yet.
    initial: bool,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Dispatch {
    /// Workers over `backend` and `api`, configured by `config`.
    #[must_use]
    pub fn new(
        backend: Arc<dyn PodBackend>,
        api: Arc<dyn PodApi>,
        config: Arc<WorkerConfig>,
    ) -> Self {
        Self {
            backend,
            api,
            config,
            workers: HashMap::new(),
            pods: PodMap::default(),
            seen: HashSet::new(),
            initial: true,
        }
    }

    /// The pods this node runs, kept current as events arrive.
    #[must_use]
    pub fn pods(&self) -> PodMap {
        self.pods.clone()
    }

    fn snapshot(&self) -> Vec<Arc<Pod>> {
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Hands one watch event to the worker it concerns, starting or stopping workers.
    pub async fn handle(&mut self, event: PodEvent, housekeeping: &dyn Housekeeping) {
        match event {
            watcher::Event::Init => self.seen.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => self.apply(pod).await,
            watcher::Event::Delete(pod) => {
                if let Some(w) = self.workers.get(&uid_of(&pod)) {
                    w.gone();
                }
            }
            watcher::Event::InitDone => {
                // Pods missing from the new list were deleted while the watch was down.
                for (uid, w) in &self.workers {
                    if !self.seen.contains(uid) {
                        w.gone();
                    }
                }
                if self.initial {
                    self.initial = false;
                    housekeeping.first_sync(&self.seen).await;
                }
            }
        }
    }

    async fn apply(&mut self, pod: Pod) {
        let uid = uid_of(&pod);
        self.seen.insert(uid.clone());
        let pod = Arc::new(pod);
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uid.clone(), pod.clone());
        if let Some(w) = self.workers.get(&uid) {
            w.update(pod);
        } else if terminal(&pod) && !self.config.records.contains(&uid) {
            // Finished before this kubelet knew it: nothing to run again.
            if pod.metadata.deletion_timestamp.is_some()
                && let Err(err) = self.api.delete_pod(&pod).await
            {
                tracing::warn!(pod = ?pod.metadata.name, %uid, %err, "final delete failed");
            }
        } else {
            tracing::debug!(pod = ?pod.metadata.name, %uid, "pod bound here");
            let worker = worker::spawn(
                pod,
                self.backend.clone(),
                self.api.clone(),
                self.config.clone(),
            );
            self.workers.insert(uid, worker);
        }
    }

    /// Drops the workers that finished (their pods are stopped and deleted).
    pub fn reap(&mut self) {
        let pods = &self.pods;
        self.workers.retain(|uid, w| {
            let keep = !w.finished();
            if !keep {
                pods.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(uid);
            }
            keep
        });
    }

    /// Stops every worker without touching its containers (a later kubelet adopts them).
    pub fn detach(&mut self) {
        for (_, w) in self.workers.drain() {
            w.detach();
        }
    }

    /// Runs the node's pods from `events` until the channel closes or `stop` resolves,
    /// then detaches the workers.
    pub async fn run(
        mut self,
        mut events: UnboundedReceiver<PodEvent>,
        housekeeping: &dyn Housekeeping,
        stop: impl Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = tick.tick() => {
                    self.reap();
                    housekeeping.tick(&self.snapshot()).await;
                }
                event = events.recv() => match event {
                    Some(event) => self.handle(event, housekeeping).await,
                    None => break,
                },
            }
        }
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{PodSpec, PodStatus},
        apimachinery::pkg::apis::meta::v1::Time,
        jiff::Timestamp,
    };
    use tokio::sync::mpsc;

    use super::*;
    use crate::pod::{
        backoff,
        records::StatusRecords,
        worker::tests::{Fake, container, pod, settle},
    };

    fn dispatch(fake: &Arc<Fake>) -> Dispatch {
        let config = Arc::new(WorkerConfig {
            host_ip: "192.0.2.1".into(),
            records: Arc::new(StatusRecords),
            volume_refresh: Duration::from_secs(10),
            backoff: backoff::Policy::default(),
        });
        Dispatch::new(fake.clone(), fake.clone(), config)
    }

    fn named(name: &str) -> Pod {
        let mut p = pod(PodSpec {
            containers: vec![container("app")],
            ..PodSpec::default()
        });
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<usize>>);

    #[async_trait]
    impl Housekeeping for Recorder {
        async fn first_sync(&self, known: &HashSet<String>) {
            self.0.lock().unwrap().push(known.len());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pods_get_workers_and_a_relist_stops_the_ones_deleted_meanwhile() {
        let fake = Arc::new(Fake::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let recorder = Arc::new(Recorder::default());
        let d = dispatch(&fake);
        let pods = d.pods();
        let housekeeping = recorder.clone();
        let running = tokio::spawn(async move {
            d.run(rx, housekeeping.as_ref(), std::future::pending())
                .await;
        });
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(named("a")),
            watcher::Event::InitApply(named("b")),
            watcher::Event::InitDone,
        ] {
            tx.send(event).unwrap();
        }
        settle(Duration::from_secs(1)).await;
        assert_eq!(fake.starts_of("app").len(), 2);
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [2],
            "the first list is announced once"
        );
        assert_eq!(pods.lock().unwrap().len(), 2);
        // The watch lost its place; `b` was deleted meanwhile.
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(named("a")),
            watcher::Event::InitDone,
        ] {
            tx.send(event).unwrap();
        }
        settle(Duration::from_secs(40)).await;
        assert_eq!(*recorder.0.lock().unwrap(), [2]);
        assert!(
            !*fake.deleted.lock().unwrap(),
            "a pod gone from the API is not deleted again"
        );
        assert_eq!(
            pods.lock().unwrap().len(),
            1,
            "b's finished worker was reaped"
        );
        drop(tx);
        running.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_finished_elsewhere_is_only_deleted_when_marked() {
        let fake = Arc::new(Fake::default());
        let mut d = dispatch(&fake);
        let mut done = named("done");
        done.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..PodStatus::default()
        });
        d.handle(watcher::Event::Apply(done.clone()), &NoHousekeeping)
            .await;
        assert!(!*fake.deleted.lock().unwrap());
        done.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        d.handle(watcher::Event::Apply(done), &NoHousekeeping).await;
        assert!(*fake.deleted.lock().unwrap());
        assert!(fake.starts_of("app").is_empty(), "nothing runs again");
        assert_eq!(d.workers.len(), 0);
    }
}
