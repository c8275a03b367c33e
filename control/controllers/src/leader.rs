//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several control processes
//! sharing one store only one schedules and reconciles.
//!
//! As client-go's leaderelection: a candidate takes the Lease when it is free or when its
//! record has not changed for a whole lease duration *as observed locally* (no trust in
//! other machines' clocks), renews it every retry period, and gives up leadership when it
//! could not renew within the renew deadline. Writes are compare-and-swap on the Lease's
//! resourceVersion, so two candidates can never both win the same round.

use std::{
    future::Future,
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
            namespace: "kube-system".to_owned(),
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

/// The last Lease record seen and when it was first seen unchanged.
#[derive(Debug)]
struct Observed {
    holder: Option<String>,
    renew: Option<Timestamp>,
    at: Instant,
}

/// A candidate in one election.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    observed: Option<Observed>,
}

impl Elector {
    /// A candidate for the Lease `config` names.
    #[must_use]
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
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
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => return,
                Err(err) => tracing::debug!(?err, "lease renewal failed"),
            }
            if last_renewal.elapsed() >= self.config.renew_deadline {
                return;
            }
        }
    }

    /// One round: takes or renews the Lease. `Ok(false)` when someone else holds it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = Timestamp::now();
        let me = self.config.identity.clone();
        let duration = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
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
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(err.into()),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew = spec.renew_time.as_ref().map(|t| t.0);
        let held_by_me = holder.as_deref() == Some(me.as_str());
        if !held_by_me {
            let unchanged = self
                .observed
                .as_ref()
                .is_some_and(|o| o.holder == holder && o.renew == renew);
            if !unchanged {
                self.observed = Some(Observed {
                    holder: holder.clone(),
                    renew,
                    at: Instant::now(),
                });
            }
            let held_for = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(duration)).unwrap_or(0),
            );
            let expired = self
                .observed
                .as_ref()
                .is_some_and(|o| o.at.elapsed() >= held_for);
            if holder.is_some() && !expired {
                return Ok(false);
            }
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(MicroTime(now));
            spec.holder_identity = Some(me);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration);
        let name = lease.name_any();
        // `replace` carries the resourceVersion we read: a competing write makes it 409.
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Hands the Lease over at once on a clean stop instead of letting it expire.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        let name = lease.name_any();
        if let Err(err) = self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(?err, "lease release failed");
        }
    }
}
