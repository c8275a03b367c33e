//! skiff-scheduler places pods on nodes like kube-scheduler: it follows pods, nodes,
//! `PriorityClasses`, namespaces, claims, `PersistentVolumes` and `StorageClasses` through the process's shared informers
//! (skiff-control-runtime) into an incrementally kept cache, runs each unscheduled
//! pod through filter and score plugins, binds it to the best node through
//! `pods/binding`, and preempts lower-priority pods when nothing fits.

#![forbid(unsafe_code)]

pub mod binder;
pub mod cache;
pub mod events;
pub mod framework;
pub mod plugins;
pub mod pod_info;
pub mod preemption;
pub mod queue;
pub mod resources;
mod scheduler;
pub mod storage;

use std::time::Duration;

pub use scheduler::{run, run_as};

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Pods whose `spec.schedulerName` is this are ours; others are left alone.
    pub scheduler_name: String,
    /// Share of nodes to find feasible before scoring (0: kube-scheduler's adaptive rule).
    pub percentage_of_nodes_to_score: u8,
    /// Bindings in flight at once: enough for the store's group commit to put many
    /// bindings in one transaction and one fsync (kube-scheduler binds each pod in a
    /// goroutine of its own, bounded only by its client's rate limit).
    pub parallel_bindings: usize,
    /// First back-off after a failed attempt.
    pub initial_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// Unschedulable pods are retried after this long even if nothing changed.
    pub unschedulable_flush: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scheduler_name: "default-scheduler".to_owned(),
            percentage_of_nodes_to_score: 0,
            parallel_bindings: 64,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            unschedulable_flush: Duration::from_mins(5),
        }
    }
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An informer's stream ended (its informers were dropped).
    #[error("watch of {0} ended")]
    WatchEnded(&'static str),
}
