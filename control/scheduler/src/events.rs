//! The scheduler's Events (`Scheduled`, `FailedScheduling`, `Preempted`), written off the
//! scheduling path behind a bounded queue as client-go's event broadcaster writes them: one
//! writer, a queue of 1,000, and a burst that overflows the queue drops events rather than
//! taking the API server's time from the bindings.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use k8s_openapi::api::core::v1::Pod;
use skiff_control_runtime::events::{EventType, Recorder, reference};
use tokio::sync::{Semaphore, mpsc};

/// Events waiting to be written before new ones are dropped: client-go's
/// `maxQueuedEvents`. A deeper queue only moves the cost of a burst's events into the
/// bindings that follow it (each event is a write as dear as a binding).
const QUEUE: usize = 1_000;

struct Note {
    pod: Arc<Pod>,
    kind: EventType,
    reason: &'static str,
    message: String,
}

/// A handle to queue events; writers stop when every handle is gone.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Note>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Events {
    /// Starts `writers` concurrent writers through `recorder`.
    #[must_use]
    pub fn start(recorder: Recorder, writers: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<Note>(QUEUE);
        let recorder = Arc::new(recorder);
        let slots = Arc::new(Semaphore::new(writers.max(1)));
        tokio::spawn(async move {
            while let Some(note) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    recorder
                        .record(
                            &reference(note.pod.as_ref()),
                            note.kind,
                            note.reason,
                            &note.message,
                        )
                        .await;
                    drop(permit);
                });
            }
        });
        Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    fn send(&self, pod: &Arc<Pod>, kind: EventType, reason: &'static str, message: String) {
        let note = Note {
            pod: pod.clone(),
            kind,
            reason,
            message,
        };
        if self.tx.try_send(note).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "event queue full; dropping scheduler events");
            }
        }
    }

    /// Queues a `Normal` event about `pod`.
    pub fn normal(&self, pod: &Arc<Pod>, reason: &'static str, message: String) {
        self.send(pod, EventType::Normal, reason, message);
    }

    /// Queues a `Warning` event about `pod`.
    pub fn warning(&self, pod: &Arc<Pod>, reason: &'static str, message: String) {
        self.send(pod, EventType::Warning, reason, message);
    }
}
