//! A pool of spare pod sandboxes, made ahead of time so that a pod's sandbox is claimed
//! rather than built while the pod waits.
//!
//! Building a sandbox means a new network namespace and a veth pair, and both take the
//! kernel's rtnl lock: with many pods starting at once every pod queues on that lock, and
//! that queue is most of a burst's start time. A spare is a complete sandbox (namespaces,
//! the veth on the bridge with the pod side configured, an address) that belongs to no pod
//! yet; claiming one writes records and sets the hostname, without a netlink request.
//!
//! This module holds the policy (how many spares, when to build, when to stop) over the
//! [`Spares`] trait; `BridgeNetwork` supplies the real builds.

use std::{
    collections::VecDeque,
    fmt,
    pin::pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{debug, warn};

use super::{NetworkError, Sandbox};

/// How many spares are built at once. A build mostly waits on the kernel (namespace
/// creation, netlink answers), so two overlap those waits without crowding a small node.
const BUILDERS: usize = 2;

/// How long after the last claim refills begin: the pods of a burst claim their spares
/// within moments and then start their containers, and builds started meanwhile would take
/// the CPU and the rtnl lock from them.
const QUIET: Duration = Duration::from_millis(500);

/// The first pause after a failed build; it doubles up to [`MAX_BACKOFF`]. A failing build
/// (the pod range exhausted, the bridge gone) must not spin.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The longest pause between failing builds.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the pool needs from the network.
#[async_trait::async_trait]
pub(crate) trait Spares: Send + Sync + 'static {
    /// Builds spare `id` completely and records it; leaves nothing behind on failure.
    async fn make(&self, id: &str) -> Result<Sandbox, NetworkError>;
    /// Removes spare `id` (what is left of it) and releases its address; idempotent.
    async fn discard(&self, id: &str) -> Result<(), NetworkError>;
}

#[derive(Debug, Default)]
struct State {
    /// Finished spares, oldest first; a spare's `uid` is its id.
    ready: VecDeque<Sandbox>,
    /// Builds under way.
    building: usize,
    /// Sandboxes being built on demand for pods (the pool was empty): refills wait for them,
    /// since they queue on the same kernel lock the waiting pods need.
    demand: usize,
    /// The last build failed (cleared by a success).
    failing: bool,
    /// When a pod last claimed a spare.
    last_claim: Option<Instant>,
    /// Refilling has begun (`launch`), so adoption has happened.
    launched: bool,
    /// The pool was closed: no more builds; finished spares go back to the caller.
    closed: bool,
}

/// Spare sandboxes kept at `target`, refilled in the background after each claim.
pub(crate) struct Pool<S> {
    spares: Arc<S>,
    target: usize,
    state: Mutex<State>,
    /// Wakes the builders (a claim, the end of an on-demand build, closing).
    wake: Notify,
    /// Bumped after every finished build and claim, for whoever waits for the pool to fill.
    progress: watch::Sender<u64>,
    /// Set when the pool closes: cuts a failing builder's pause short.
    closing: watch::Sender<bool>,
    builders: Mutex<Vec<JoinHandle<()>>>,
}

impl<S> Pool<S> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S> fmt::Debug for Pool<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Pool")
            .field("target", &self.target)
            .field("ready", &state.ready.len())
            .field("building", &state.building)
            .finish_non_exhaustive()
    }
}

/// Counts an on-demand build while it lasts (see [`Pool::on_demand`]).
pub(crate) struct DemandGuard<'a, S: Spares> {
    pool: &'a Pool<S>,
}

impl<S: Spares> Drop for DemandGuard<'_, S> {
    fn drop(&mut self) {
        self.pool.lock().demand -= 1;
        self.pool.wake.notify_waiters();
    }
}

impl<S: Spares> Pool<S> {
    /// A pool keeping `target` spares built by `spares`; 0 disables it. Nothing is built
    /// before [`Pool::launch`].
    pub(crate) fn new(spares: Arc<S>, target: usize) -> Self {
        Self {
            spares,
            target,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            progress: watch::Sender::new(0),
            closing: watch::Sender::new(false),
            builders: Mutex::new(Vec::new()),
        }
    }

    /// The number of spares the pool keeps.
    pub(crate) fn target(&self) -> usize {
        self.target
    }

    /// Whether [`Pool::launch`] has run.
    pub(crate) fn launched(&self) -> bool {
        self.lock().launched
    }

    /// Takes the spares found from an earlier run (`adopted`, complete and checked by the
    /// caller) and starts refilling up to the target. Returns the spares beyond the target,
    /// for the caller to discard; a second call adopts nothing and returns `adopted`.
    pub(crate) fn launch(self: &Arc<Self>, adopted: Vec<Sandbox>) -> Vec<Sandbox> {
        let mut state = self.lock();
        if state.launched || state.closed {
            return adopted;
        }
        state.launched = true;
        let mut excess = adopted;
        let keep = excess.len().min(self.target);
        state.ready.extend(excess.drain(..keep));
        drop(state);
        if self.target > 0 {
            let mut builders = self.builders.lock().unwrap_or_else(PoisonError::into_inner);
            for _ in 0..BUILDERS.min(self.target) {
                builders.push(tokio::spawn(Arc::clone(self).build_forever()));
            }
        }
        excess
    }

    /// A spare for a pod, if one is ready; a builder starts its replacement.
    pub(crate) fn take(&self) -> Option<Sandbox> {
        let spare = {
            let mut state = self.lock();
            let spare = state.ready.pop_front();
            if spare.is_some() {
                state.last_claim = Some(Instant::now());
            }
            spare
        };
        if spare.is_some() {
            self.wake.notify_waiters();
            self.progress.send_modify(|n| *n += 1);
        }
        spare
    }

    /// Marks a sandbox being built for a pod because no spare was ready; refills wait until
    /// every such build has ended.
    pub(crate) fn on_demand(&self) -> DemandGuard<'_, S> {
        self.lock().demand += 1;
        DemandGuard { pool: self }
    }

    /// The spares ready now.
    pub(crate) fn ready(&self) -> usize {
        self.lock().ready.len()
    }

    /// Waits until the pool holds its target (or no build is under way and the last one
    /// failed, or the pool is closed or disabled). For tests and benchmarks that want a
    /// settled pool.
    pub(crate) async fn filled(&self) {
        let mut progress = self.progress.subscribe();
        loop {
            {
                let state = self.lock();
                let full = state.ready.len() >= self.target;
                let stuck = state.failing && state.building == 0;
                if full || stuck || state.closed || !state.launched {
                    return;
                }
            }
            if progress.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops building, waits for builds under way, and returns every ready spare for the
    /// caller to discard. Later claims find nothing.
    pub(crate) async fn close(&self) -> Vec<Sandbox> {
        self.lock().closed = true;
        self.closing.send_replace(true);
        self.wake.notify_waiters();
        let builders =
            std::mem::take(&mut *self.builders.lock().unwrap_or_else(PoisonError::into_inner));
        for builder in builders {
            let _ = builder.await;
        }
        self.progress.send_modify(|n| *n += 1);
        self.lock().ready.drain(..).collect()
    }

    /// Stops the builders at once (the owner is being dropped): a build cut short leaves
    /// parts that the next start's reconciliation removes.
    pub(crate) fn abort(&self) {
        for builder in self
            .builders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            builder.abort();
        }
    }

    /// Claims a build slot when the pool is short, no pod's sandbox is being built on
    /// demand and no pod claimed a spare for [`QUIET`]; `None` once the pool is closed.
    async fn next_build(&self) -> Option<()> {
        loop {
            let mut notified = pin!(self.wake.notified());
            notified.as_mut().enable();
            let quiet_at = {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                let short = state.ready.len() + state.building < self.target;
                let quiet_at = state
                    .last_claim
                    .map(|t| t + QUIET)
                    .filter(|t| *t > Instant::now());
                if short && state.demand == 0 && quiet_at.is_none() {
                    state.building += 1;
                    return Some(());
                }
                quiet_at.filter(|_| short)
            };
            match quiet_at {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn build_forever(self: Arc<Self>) {
        let mut backoff = Duration::ZERO;
        while self.next_build().await.is_some() {
            let id = new_id();
            let made = self.spares.make(&id).await;
            // Where the spare goes, decided under the lock; the lock is not held across the
            // discard below.
            let closed_spare = {
                let mut state = self.lock();
                state.building -= 1;
                state.failing = made.is_err();
                match made {
                    Ok(spare) if state.closed => Some(spare),
                    Ok(spare) => {
                        debug!(spare = spare.uid, ip = %spare.ip, ready = state.ready.len() + 1, "spare sandbox ready");
                        state.ready.push_back(spare);
                        backoff = Duration::ZERO;
                        None
                    }
                    Err(error) => {
                        backoff = (backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                        warn!(%error, retry_in = ?backoff, "building a spare sandbox");
                        None
                    }
                }
            };
            if let Some(spare) = closed_spare
                && let Err(error) = self.spares.discard(&spare.uid).await
            {
                warn!(spare = spare.uid, %error, "discarding a spare sandbox");
            }
            self.progress.send_modify(|n| *n += 1);
            if !backoff.is_zero() {
                let mut closing = self.closing.subscribe();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = closing.wait_for(|closed| *closed) => {}
                }
            }
        }
    }
}

/// A fresh spare id: 16 hex digits from the clock and a per-process counter, unique across
/// restarts (the directory of an earlier run may still hold spares).
fn new_id() -> String {
    use std::{
        hash::BuildHasher as _,
        sync::atomic::{AtomicU64, Ordering},
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // RandomState is seeded per process, so two daemons never walk the same sequence.
    let hash =
        std::collections::hash_map::RandomState::new().hash_one((now, n, std::process::id()));
    format!("{hash:016x}")
}

/// What [`plan_reconcile`] found in the state directory at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Reconcile {
    /// Spares claimed by a pod before a crash ended the claim: `(spare id, pod uid)`. The
    /// address moves to the pod (if it has not yet) and the spare record goes.
    pub finish_claims: Vec<(String, String)>,
    /// Recorded spares to adopt if they are still intact.
    pub candidates: Vec<String>,
    /// Spares without a record (a build cut short): removed.
    pub remove: Vec<String>,
    /// Addresses held by spares that no longer exist in any form: released.
    pub release: Vec<String>,
}

/// Decides what to do with what earlier runs left of the pool, from the spare directories
/// (`dirs`), the finished spare records (`records`), the sandboxes of pods built from
/// spares (`claimed`: spare id and pod uid) and the spare ids holding addresses
/// (`addresses`).
pub(crate) fn plan_reconcile(
    dirs: &[String],
    records: &[String],
    claimed: &[(String, String)],
    addresses: &[String],
) -> Reconcile {
    let is_claimed = |id: &String| claimed.iter().any(|(c, _)| c == id);
    let mut plan = Reconcile {
        finish_claims: claimed.to_vec(),
        ..Reconcile::default()
    };
    for id in records {
        if !is_claimed(id) {
            plan.candidates.push(id.clone());
        }
    }
    for id in dirs {
        if !is_claimed(id) && !records.contains(id) {
            plan.remove.push(id.clone());
        }
    }
    for id in addresses {
        if !is_claimed(id) && !records.contains(id) && !dirs.contains(id) {
            plan.release.push(id.clone());
        }
    }
    plan.finish_claims.sort();
    plan.finish_claims.dedup();
    for list in [&mut plan.candidates, &mut plan.remove, &mut plan.release] {
        list.sort();
        list.dedup();
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        net::Ipv4Addr,
        sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use super::*;

    /// Spares in memory: records what was made and discarded, fails on request.
    #[derive(Default)]
    struct Fake {
        made: Mutex<Vec<String>>,
        discarded: Mutex<Vec<String>>,
        fail: AtomicBool,
        attempts: AtomicUsize,
        /// Builds wait for this before finishing, when set.
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    fn sandbox(id: &str) -> Sandbox {
        Sandbox {
            uid: id.to_owned(),
            ip: Ipv4Addr::new(10, 0, 0, 2),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            netns: format!("/s/spares/{id}/net").into(),
            ipcns: format!("/s/spares/{id}/ipc").into(),
            utsns: format!("/s/spares/{id}/uts").into(),
            host_veth: format!("veth-{id}"),
        }
    }

    #[async_trait::async_trait]
    impl Spares for Fake {
        async fn make(&self, id: &str) -> Result<Sandbox, NetworkError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("gate").forget();
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(NetworkError::NoBridge("fake".into()));
            }
            self.made.lock().expect("made").push(id.to_owned());
            Ok(sandbox(id))
        }

        async fn discard(&self, id: &str) -> Result<(), NetworkError> {
            self.discarded
                .lock()
                .expect("discarded")
                .push(id.to_owned());
            Ok(())
        }
    }

    fn pool(fake: Fake, target: usize) -> (Arc<Fake>, Arc<Pool<Fake>>) {
        let fake = Arc::new(fake);
        (Arc::clone(&fake), Arc::new(Pool::new(fake, target)))
    }

    #[tokio::test(start_paused = true)]
    async fn fills_to_its_target_and_refills_after_each_claim() {
        let (fake, pool) = pool(Fake::default(), 3);
        assert!(pool.take().is_none(), "nothing before launch");
        assert!(pool.launch(Vec::new()).is_empty());
        pool.filled().await;
        assert_eq!(pool.ready(), 3);
        let claimed = pool.take().expect("a spare");
        assert!(fake.made.lock().expect("made").contains(&claimed.uid));
        pool.filled().await;
        assert_eq!(pool.ready(), 3, "refilled after the claim");
        assert_eq!(fake.made.lock().expect("made").len(), 4);
        let ids: HashSet<String> = fake.made.lock().expect("made").iter().cloned().collect();
        assert_eq!(ids.len(), 4, "every spare has an id of its own");
    }

    #[tokio::test]
    async fn a_target_of_zero_builds_nothing() {
        let (fake, pool) = pool(Fake::default(), 0);
        let excess = pool.launch(vec![sandbox("old")]);
        assert_eq!(
            excess,
            vec![sandbox("old")],
            "adopted spares are all excess"
        );
        pool.filled().await;
        assert!(pool.take().is_none());
        assert_eq!(fake.attempts.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn adopted_spares_count_toward_the_target_and_the_rest_is_returned() {
        let (fake, pool) = pool(Fake::default(), 2);
        let excess = pool.launch(vec![sandbox("a"), sandbox("b"), sandbox("c")]);
        assert_eq!(excess, vec![sandbox("c")]);
        pool.filled().await;
        assert_eq!(pool.ready(), 2);
        assert_eq!(fake.attempts.load(Ordering::SeqCst), 0, "no build needed");
        assert_eq!(pool.take().expect("adopted").uid, "a", "oldest first");
        assert_eq!(
            pool.launch(vec![sandbox("d")]),
            vec![sandbox("d")],
            "launch once"
        );
    }

    #[tokio::test]
    async fn refills_wait_while_a_pods_sandbox_is_built_on_demand() {
        let (fake, pool) = pool(Fake::default(), 2);
        let demand = pool.on_demand();
        pool.launch(Vec::new());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            fake.attempts.load(Ordering::SeqCst),
            0,
            "held back by the pod's build"
        );
        drop(demand);
        pool.filled().await;
        assert_eq!(pool.ready(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_begin_once_claims_have_paused() {
        let (fake, pool) = pool(Fake::default(), 2);
        pool.launch(Vec::new());
        pool.filled().await;
        let built = fake.attempts.load(Ordering::SeqCst);
        let claimed = Instant::now();
        pool.take().expect("a spare");
        tokio::time::sleep(QUIET / 2).await;
        pool.take().expect("a spare");
        tokio::time::sleep(QUIET / 2).await;
        assert_eq!(
            fake.attempts.load(Ordering::SeqCst),
            built,
            "no build while pods are still claiming"
        );
        pool.filled().await;
        assert_eq!(pool.ready(), 2);
        assert!(
            claimed.elapsed() >= QUIET + QUIET / 2,
            "{:?}",
            claimed.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failing_builds_back_off_and_a_success_resumes() {
        let (fake, pool) = pool(Fake::default(), 1);
        fake.fail.store(true, Ordering::SeqCst);
        pool.launch(Vec::new());
        pool.filled().await;
        assert_eq!(pool.ready(), 0, "filled() returns when builds fail");
        let after_first = fake.attempts.load(Ordering::SeqCst);
        assert!(after_first >= 1);
        // The builders sleep between failures instead of spinning (the clock is paused and
        // advances only through those sleeps).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after_a_second = fake.attempts.load(Ordering::SeqCst);
        assert!(
            after_a_second <= after_first + BUILDERS,
            "{after_a_second} attempts"
        );
        fake.fail.store(false, Ordering::SeqCst);
        tokio::time::sleep(MAX_BACKOFF).await;
        pool.filled().await;
        assert_eq!(pool.ready(), 1);
    }

    #[tokio::test]
    async fn closing_waits_for_builds_under_way_and_hands_back_every_spare() {
        let gate = Arc::new(tokio::sync::Semaphore::new(1));
        let (fake, pool) = pool(
            Fake {
                gate: Some(Arc::clone(&gate)),
                ..Fake::default()
            },
            2,
        );
        pool.launch(Vec::new());
        // One build finishes; the other waits at the gate until the pool is closing.
        while pool.ready() < 1 {
            tokio::task::yield_now().await;
        }
        let closing = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.close().await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        let returned = closing.await.expect("close");
        let discarded = fake.discarded.lock().expect("discarded").clone();
        assert_eq!(returned.len(), 1, "the spare ready before closing");
        assert_eq!(
            discarded.len(),
            1,
            "the build that ended after closing is discarded"
        );
        assert_eq!(
            returned.len() + discarded.len(),
            fake.made.lock().expect("made").len()
        );
        assert!(pool.take().is_none());
        let attempts = fake.attempts.load(Ordering::SeqCst);
        tokio::task::yield_now().await;
        assert_eq!(
            fake.attempts.load(Ordering::SeqCst),
            attempts,
            "no build after close"
        );
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn reconcile_finishes_claims_adopts_records_and_removes_the_rest() {
        let plan = plan_reconcile(
            // a: recorded spare; b: claimed by pod p; c: build cut short; d: only an address.
            &ids(&["a", "b", "c"]),
            &ids(&["a", "b"]),
            &[("b".to_owned(), "p".to_owned())],
            &ids(&["a", "b", "c", "d"]),
        );
        assert_eq!(
            plan,
            Reconcile {
                finish_claims: vec![("b".to_owned(), "p".to_owned())],
                candidates: ids(&["a"]),
                remove: ids(&["c"]),
                release: ids(&["d"]),
            }
        );
    }

    #[test]
    fn reconcile_of_an_empty_directory_does_nothing() {
        assert_eq!(plan_reconcile(&[], &[], &[], &[]), Reconcile::default());
    }
}
