//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several control processes
//! sharing one store only one schedules and reconciles.
//!
//! As client-go's leaderelection: a candidate takes the Lease when it is free or when its
//! record has not changed for a whole lease duration *as observed locally* (no trust in
//! other machines' clocks), renews it every retry period, and gives up leadership when it
//! could not renew within the renew deadline. Writes are compare-and-swap on the Lease's
//! resourceVersion, so two candidates can never both win the same round. [`Candidate`]
//! decides each round from what it read and the time; [`Elector`] reads and writes.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};

use crate::clock::{Clock, SystemClock};

/// What a candidate needs to know to take part in an election.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Namespace of the Lease (`kube-system`).
    pub namespace: String,
    /// Name of the Lease (`skiff-control-plane`).
    pub name: String,
    /// This candidate's identity, unique per process.
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// kube-controller-manager's defaults: 15 s lease, 10 s renew deadline, 2 s retries.
    #[must_use]
    pub fn new(name: &str, identity: &str) -> Self {
        Self {
            namespace: skiff_types::namespace::KUBE_SYSTEM.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Errors of one election round.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API server refused or could not be reached.
    #[error("lease request failed")]
    Api(#[from] kube::Error),
}

/// The last Lease record seen and when (locally) it was first seen unchanged.
#[derive(Debug, Clone)]
struct Observed {
    holder: Option<String>,
    renew: Option<Timestamp>,
    at: Instant,
}

/// What a candidate does in one round.
#[derive(Debug, Clone, PartialEq)]
pub enum Round {
    /// No Lease yet: create this one.
    Create(Lease),
    /// Take or renew: replace the Lease with this (it carries the resourceVersion read).
    Update(Lease),
    /// Someone else holds a live Lease.
    Follow,
}

/// One candidate's view of the election, deciding each round from the Lease it read.
#[derive(Debug)]
pub struct Candidate {
    config: LeaderConfig,
    observed: Option<Observed>,
}

impl Candidate {
    /// A candidate that has seen nothing yet.
    #[must_use]
    pub fn new(config: LeaderConfig) -> Self {
        Self {
            config,
            observed: None,
        }
    }

    /// Decides a round: `lease` is what the API server returned, `now` the wall clock
    /// written into the Lease, `local` the monotonic clock that times other holders.
    #[must_use]
    pub fn round(&mut self, lease: Option<Lease>, now: Timestamp, local: Instant) -> Round {
        let me = self.config.identity.clone();
        let duration = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = lease else {
            return Round::Create(Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            });
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew = spec.renew_time.as_ref().map(|t| t.0);
        if holder.as_deref() != Some(me.as_str()) {
            let unchanged = self
                .observed
                .as_ref()
                .is_some_and(|o| o.holder == holder && o.renew == renew);
            if !unchanged {
                self.observed = Some(Observed {
                    holder: holder.clone(),
                    renew,
                    at: local,
                });
            }
            let held_for = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(duration)).unwrap_or(0),
            );
            let expired = self
                .observed
                .as_ref()
                .is_some_and(|o| local.saturating_duration_since(o.at) >= held_for);
            if holder.is_some() && !expired {
                return Round::Follow;
            }
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(MicroTime(now));
            spec.holder_identity = Some(me);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration);
        Round::Update(lease)
    }

    /// The Lease to write when stepping down cleanly, if this candidate holds `lease`.
    #[must_use]
    pub fn release(&self, mut lease: Lease) -> Option<Lease> {
        let spec = lease.spec.as_mut()?;
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return None;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        Some(lease)
    }
}

/// A candidate in one election, talking to the API server.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    candidate: Candidate,
    clock: Arc<dyn Clock>,
}

impl Elector {
    /// A candidate for the Lease `config` names.
    #[must_use]
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            candidate: Candidate::new(config.clone()),
            config,
            clock: Arc::new(SystemClock),
        }
    }

    /// Runs `work` whenever this candidate leads, forever: `work()` is started when the Lease
    /// is won and dropped (cancelled) as soon as leadership is lost, then the candidate
    /// campaigns again. If `work` ends by itself, the Lease is released and `run` returns.
    pub async fn run<F, Fut>(mut self, mut work: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            self.acquire().await;
            tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became the leader");
            let lost = self.hold();
            tokio::select! {
                () = work() => {
                    self.release().await;
                    return;
                }
                () = lost => {
                    tracing::warn!(lease = %self.config.name, "lost the lease; stopping the work");
                }
            }
        }
    }

    async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(err) => tracing::debug!(?err, "lease acquisition failed"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews until a renewal could not succeed within the deadline; returns then.
    async fn hold(&mut self) {
        let mut last_renewal = self.clock.instant();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = self.clock.instant(),
                Ok(false) => return,
                Err(err) => tracing::debug!(?err, "lease renewal failed"),
            }
            if self.clock.instant().saturating_duration_since(last_renewal)
                >= self.config.renew_deadline
            {
                return;
            }
        }
    }

    /// One round: takes or renews the Lease. `Ok(false)` when someone else holds it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let lease = self.api.get_opt(&self.config.name).await?;
        let written = match self
            .candidate
            .round(lease, self.clock.now(), self.clock.instant())
        {
            Round::Follow => return Ok(false),
            Round::Create(lease) => self.api.create(&PostParams::default(), &lease).await,
            // `replace` carries the resourceVersion read: a competing write makes it 409.
            Round::Update(lease) => {
                self.api
                    .replace(&lease.name_any(), &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Hands the Lease over at once on a clean stop instead of letting it expire.
    async fn release(&mut self) {
        let Ok(Some(lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(lease) = self.candidate.release(lease) else {
            return;
        };
        if let Err(err) = self
            .api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(?err, "lease release failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn config(identity: &str) -> LeaderConfig {
        LeaderConfig::new("skiff-control-plane", identity)
    }

    fn held_by(holder: &str, renewed: Timestamp, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("skiff-control-plane".into()),
                namespace: Some("kube-system".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed)),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    fn holder_of(round: &Round) -> Option<&str> {
        match round {
            Round::Create(l) | Round::Update(l) => l.spec.as_ref()?.holder_identity.as_deref(),
            Round::Follow => None,
        }
    }

    #[test]
    fn the_first_candidate_creates_the_lease_for_itself() {
        let clock = FakeClock::at_second(100);
        let round = Candidate::new(config("a")).round(None, clock.now(), clock.instant());
        let Round::Create(lease) = &round else {
            panic!("{round:?}");
        };
        let spec = lease.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn a_live_lease_is_followed_until_it_stays_unchanged_for_its_duration() {
        let clock = FakeClock::at_second(100);
        let mut b = Candidate::new(config("b"));
        // The holder's clock is far off: only the local observation counts.
        let lease = held_by("a", Timestamp::from_second(5).unwrap(), 3);
        assert_eq!(
            b.round(Some(lease.clone()), clock.now(), clock.instant()),
            Round::Follow
        );
        clock.advance(Duration::from_secs(14));
        assert_eq!(
            b.round(Some(lease.clone()), clock.now(), clock.instant()),
            Round::Follow
        );
        clock.advance(Duration::from_secs(1));
        let round = b.round(Some(lease), clock.now(), clock.instant());
        assert_eq!(holder_of(&round), Some("b"));
        let Round::Update(taken) = round else {
            panic!("not an update");
        };
        let spec = taken.spec.unwrap();
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(clock.now())));
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn a_renewal_seen_restarts_the_wait() {
        let clock = FakeClock::at_second(100);
        let mut b = Candidate::new(config("b"));
        let first = held_by("a", Timestamp::from_second(1).unwrap(), 0);
        assert_eq!(
            b.round(Some(first), clock.now(), clock.instant()),
            Round::Follow
        );
        clock.advance(Duration::from_secs(10));
        let renewed = held_by("a", Timestamp::from_second(2).unwrap(), 0);
        assert_eq!(
            b.round(Some(renewed.clone()), clock.now(), clock.instant()),
            Round::Follow
        );
        clock.advance(Duration::from_secs(10));
        assert_eq!(
            b.round(Some(renewed.clone()), clock.now(), clock.instant()),
            Round::Follow
        );
        clock.advance(Duration::from_secs(5));
        assert_eq!(
            holder_of(&b.round(Some(renewed), clock.now(), clock.instant())),
            Some("b")
        );
    }

    #[test]
    fn the_holder_renews_and_a_released_lease_is_taken_at_once() {
        let clock = FakeClock::at_second(100);
        let mut a = Candidate::new(config("a"));
        let mine = held_by("a", Timestamp::from_second(90).unwrap(), 2);
        let Round::Update(renewed) = a.round(Some(mine.clone()), clock.now(), clock.instant())
        else {
            panic!("the holder did not renew");
        };
        let spec = renewed.spec.as_ref().unwrap();
        assert_eq!(spec.renew_time, Some(MicroTime(clock.now())));
        assert_eq!(
            spec.lease_transitions,
            Some(2),
            "a renewal is no transition"
        );

        let released = a.release(renewed).expect("the holder may release");
        assert_eq!(released.spec.as_ref().unwrap().holder_identity, None);
        let mut b = Candidate::new(config("b"));
        assert_eq!(
            holder_of(&b.round(Some(released), clock.now(), clock.instant())),
            Some("b")
        );
        assert!(b.release(mine).is_none(), "only the holder releases");
    }
}
