//! How a controller runs: kube-runtime's `Controller` (one reconcile per object at a time,
//! requeues merged) over a [`Context`], with a per-object exponential back-off for failed
//! reconciles that is forgotten on the first success, as client-go's per-item rate
//! limiter.

use std::{
    collections::HashMap,
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::{StreamExt, TryFuture, TryFutureExt};
use kube::{
    Client, Resource, ResourceExt,
    runtime::{Controller, controller::Action},
};

use crate::{clock::Clock, events::Recorder, informers::Informers};

/// First retry delay after a failed reconcile.
pub const BASE_DELAY: Duration = Duration::from_secs(1);
/// Longest retry delay: a reconcile that keeps failing is still retried this often.
pub const MAX_DELAY: Duration = Duration::from_mins(5);

/// Consecutive failures per object, and the delay they earn.
#[derive(Debug)]
pub struct Backoff {
    controller: &'static str,
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The back-off of `controller` (named in its log lines): 1 s doubling to 5 min.
    #[must_use]
    pub fn new(controller: &'static str) -> Self {
        Self::with_limits(controller, BASE_DELAY, MAX_DELAY)
    }

    /// A back-off from `base` doubling up to `max`.
    #[must_use]
    pub fn with_limits(controller: &'static str, base: Duration, max: Duration) -> Self {
        Self {
            controller,
            base,
            max,
            failures: Mutex::default(),
        }
    }

    /// The delay after the `failures`-th consecutive failure (the first waits `base`).
    #[must_use]
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// Counts a failed reconcile of `key`, logs it and returns when to retry.
    pub fn failed_key(&self, key: &str, err: &(dyn std::error::Error + 'static)) -> Action {
        let failures = {
            let mut all = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            let n = all.entry(key.to_owned()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = self.delay(failures);
        tracing::warn!(
            controller = self.controller,
            object = key,
            failures,
            retry_in = ?delay,
            error = %ErrorChain(err),
            "reconcile failed"
        );
        Action::requeue(delay)
    }

    /// Counts a failed reconcile of `obj` (see [`Self::failed_key`]).
    pub fn failed<K>(&self, obj: &K, err: &(dyn std::error::Error + 'static)) -> Action
    where
        K: Resource,
    {
        self.failed_key(&key_of(obj), err)
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded_key(&self, key: &str) {
        let mut all = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if !all.is_empty() {
            all.remove(key);
        }
    }

    /// How many failures in a row `key` has now.
    #[must_use]
    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// `namespace/name`, or `name` for cluster-scoped objects.
#[must_use]
pub fn key_of<K: Resource>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", obj.name_any()),
        _ => obj.name_any(),
    }
}

/// An error and its sources on one line (`a: b: c`).
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

/// What every controller's reconcile reaches: the client, its event recorder, its
/// back-off, the clock, and the controller's own caches and bookkeeping (`state`).
pub struct Context<S> {
    /// The API client.
    pub client: Client,
    /// Events signed with the controller's component name.
    pub recorder: Recorder,
    /// Per-object back-off of failed reconciles.
    pub backoff: Backoff,
    /// The time plans are made at.
    pub clock: Arc<dyn Clock>,
    /// The controller's own caches and bookkeeping.
    pub state: S,
}

impl<S: Debug> Debug for Context<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("recorder", &self.recorder)
            .field("backoff", &self.backoff)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<S> Context<S> {
    /// The context of the controller `component` (its events' source, its log name).
    #[must_use]
    pub fn new(
        informers: &Informers,
        component: &'static str,
        clock: Arc<dyn Clock>,
        state: S,
    ) -> Arc<Self> {
        Arc::new(Self {
            client: informers.client(),
            recorder: Recorder::new(informers.client(), component),
            backoff: Backoff::new(component),
            clock,
            state,
        })
    }
}

/// The error policy of every controller: log the failure and retry the object after its
/// back-off.
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
pub fn error_policy<K, E, S>(obj: Arc<K>, err: &E, ctx: Arc<Context<S>>) -> Action
where
    K: Resource,
    E: std::error::Error + 'static,
{
    ctx.backoff.failed(obj.as_ref(), err)
}

/// Runs `controller` until dropped: `reconcile` for every object that changed or asked to
/// be requeued, [`error_policy`] when it fails; a success forgets the object's failures.
pub async fn run<K, S, F, Fut>(controller: Controller<K>, mut reconcile: F, ctx: Arc<Context<S>>)
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Debug + Eq + Hash + Clone + Unpin,
    S: Send + Sync + 'static,
    F: FnMut(Arc<K>, Arc<Context<S>>) -> Fut,
    Fut: TryFuture<Ok = Action> + Send + 'static,
    Fut::Error: std::error::Error + Send + 'static,
{
    controller
        .run(
            move |obj: Arc<K>, ctx: Arc<Context<S>>| {
                let key = key_of(obj.as_ref());
                reconcile(obj, ctx.clone()).map_ok(move |action| {
                    ctx.backoff.succeeded_key(&key);
                    action
                })
            },
            error_policy::<K, Fut::Error, S>,
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    #[test]
    fn delays_double_from_the_base_up_to_the_cap() {
        let b = Backoff::with_limits("t", Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn failures_count_per_object_and_a_success_forgets_them() {
        let b = Backoff::new("t");
        assert_eq!(
            b.failed_key("ns/a", &Boom),
            Action::requeue(Duration::from_secs(1))
        );
        assert_eq!(
            b.failed_key("ns/a", &Boom),
            Action::requeue(Duration::from_secs(2))
        );
        // Another object starts from the base.
        assert_eq!(
            b.failed_key("ns/b", &Boom),
            Action::requeue(Duration::from_secs(1))
        );
        b.succeeded_key("ns/a");
        assert_eq!(b.failures("ns/a"), 0);
        assert_eq!(b.failures("ns/b"), 1);
        assert_eq!(
            b.failed_key("ns/a", &Boom),
            Action::requeue(Duration::from_secs(1))
        );
    }
}
