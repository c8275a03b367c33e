//! The scheduling queue: pods waiting to be placed, in priority order (active), pods
//! waiting out a back-off after an error (backoff), and pods that fit nowhere until the
//! cluster changes (unschedulable).

use std::{
    cmp::{Ordering, Reverse},
    collections::{BinaryHeap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;

/// Where a queued pod waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Unschedulable,
}

#[derive(Debug)]
struct Queued {
    pod: Arc<Pod>,
    priority: i32,
    attempts: u32,
    place: Place,
    /// Bumped on every move so stale heap entries can be told apart.
    seq: u64,
    backoff_until: Instant,
    since: Instant,
}

#[derive(Debug, PartialEq, Eq)]
struct ActiveEntry {
    priority: i32,
    seq: u64,
    uid: String,
}

impl Ord for ActiveEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Higher priority first, then first come first served.
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ActiveEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Back-off bounds.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// First back-off.
    pub initial: Duration,
    /// Longest back-off.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
        }
    }
}

/// The three queues.
#[derive(Debug, Default)]
pub struct Queue {
    pods: HashMap<String, Queued>,
    active: BinaryHeap<ActiveEntry>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    next_seq: u64,
    limits: Backoff,
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// Whether an update changed what scheduling looks at (not just status or bookkeeping).
fn spec_changed(old: &Pod, new: &Pod) -> bool {
    old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || old.metadata.annotations != new.metadata.annotations
}

impl Queue {
    /// An empty queue with these back-off bounds.
    #[must_use]
    pub fn new(limits: Backoff) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn push_active(&mut self, uid: &str) {
        let seq = self.seq();
        if let Some(q) = self.pods.get_mut(uid) {
            q.place = Place::Active;
            q.seq = seq;
            self.active.push(ActiveEntry {
                priority: q.priority,
                seq,
                uid: uid.to_owned(),
            });
        }
    }

    /// Adds a new unscheduled pod, or refreshes a queued one (an unschedulable pod whose
    /// spec changed gets another try at once).
    pub fn add(&mut self, pod: Arc<Pod>, priority: i32) {
        let uid = uid_of(&pod);
        if let Some(q) = self.pods.get_mut(&uid) {
            let retry = q.place == Place::Unschedulable && spec_changed(&q.pod, &pod);
            q.pod = pod;
            q.priority = priority;
            if retry {
                self.push_active(&uid);
            }
            return;
        }
        self.pods.insert(
            uid.clone(),
            Queued {
                pod,
                priority,
                attempts: 0,
                place: Place::Active,
                seq: 0,
                backoff_until: Instant::now(),
                since: Instant::now(),
            },
        );
        self.push_active(&uid);
    }

    /// Forgets a pod (bound, deleted, or handed to another scheduler).
    pub fn remove(&mut self, uid: &str) {
        self.pods.remove(uid);
    }

    /// Whether the pod is queued anywhere.
    #[must_use]
    pub fn contains(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// Takes the next pod to schedule (moving expired back-offs to active first). The pod
    /// stays known to the queue until [`Self::remove`] or a requeue.
    pub fn pop(&mut self) -> Option<Arc<Pod>> {
        self.flush_backoff(Instant::now());
        while let Some(entry) = self.active.pop() {
            let Some(q) = self.pods.get_mut(&entry.uid) else {
                continue;
            };
            if q.place != Place::Active || q.seq != entry.seq {
                continue;
            }
            // Popped: not in any heap until it is requeued.
            q.place = Place::Backoff;
            q.seq = 0;
            q.attempts += 1;
            return Some(q.pod.clone());
        }
        None
    }

    fn backoff_for(&self, attempts: u32) -> Duration {
        let factor = 1_u32 << attempts.saturating_sub(1).min(16);
        (self.limits.initial * factor).min(self.limits.max)
    }

    /// Requeues a pod that failed for a transient reason (a binding error) after its
    /// back-off.
    pub fn requeue_backoff(&mut self, uid: &str) {
        let Some(attempts) = self.pods.get(uid).map(|q| q.attempts) else {
            return;
        };
        let until = Instant::now() + self.backoff_for(attempts);
        let seq = self.seq();
        if let Some(q) = self.pods.get_mut(uid) {
            q.place = Place::Backoff;
            q.seq = seq;
            q.backoff_until = until;
            self.backoff.push(Reverse((until, seq, uid.to_owned())));
        }
    }

    /// Parks a pod that fits nowhere until something in the cluster changes.
    pub fn requeue_unschedulable(&mut self, uid: &str) {
        let Some(attempts) = self.pods.get(uid).map(|q| q.attempts) else {
            return;
        };
        let until = Instant::now() + self.backoff_for(attempts);
        if let Some(q) = self.pods.get_mut(uid) {
            q.place = Place::Unschedulable;
            q.seq = 0;
            q.backoff_until = until;
            q.since = Instant::now();
        }
    }

    /// A node or pod change may let parked pods fit: they go back to active (or to
    /// backoff while their back-off lasts).
    pub fn move_unschedulable(&mut self) {
        let now = Instant::now();
        let parked: Vec<(String, Instant)> = self
            .pods
            .iter()
            .filter(|(_, q)| q.place == Place::Unschedulable)
            .map(|(uid, q)| (uid.clone(), q.backoff_until))
            .collect();
        for (uid, until) in parked {
            if until <= now {
                self.push_active(&uid);
            } else {
                let seq = self.seq();
                if let Some(q) = self.pods.get_mut(&uid) {
                    q.place = Place::Backoff;
                    q.seq = seq;
                }
                self.backoff.push(Reverse((until, seq, uid)));
            }
        }
    }

    /// Retries pods parked longer than `age` even without a cluster change.
    pub fn flush_unschedulable(&mut self, age: Duration) {
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, q)| q.place == Place::Unschedulable && q.since.elapsed() >= age)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            self.push_active(&uid);
        }
    }

    fn flush_backoff(&mut self, now: Instant) {
        while let Some(Reverse((until, seq, uid))) = self.backoff.peek().cloned() {
            if until > now {
                break;
            }
            self.backoff.pop();
            let current = self
                .pods
                .get(&uid)
                .is_some_and(|q| q.place == Place::Backoff && q.seq == seq);
            if current {
                self.push_active(&uid);
            }
        }
    }

    /// When the earliest back-off ends, so the loop can sleep until then.
    #[must_use]
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Pods per place: (active, backoff, unschedulable), for metrics and tests.
    #[must_use]
    pub fn sizes(&self) -> (usize, usize, usize) {
        let mut sizes = (0, 0, 0);
        for q in self.pods.values() {
            match q.place {
                Place::Active => sizes.0 += 1,
                Place::Backoff => sizes.1 += 1,
                Place::Unschedulable => sizes.2 += 1,
            }
        }
        sizes
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(uid: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                uid: Some(uid.to_owned()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        })
    }

    fn uid(p: &Arc<Pod>) -> &str {
        p.metadata.uid.as_deref().unwrap()
    }

    #[test]
    fn higher_priority_first_then_arrival_order() {
        let mut q = Queue::default();
        q.add(pod("a"), 0);
        q.add(pod("b"), 10);
        q.add(pod("c"), 0);
        let order: Vec<String> =
            std::iter::from_fn(|| q.pop().map(|p| uid(&p).to_owned())).collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_cluster_change() {
        let mut q = Queue::new(Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        });
        q.add(pod("a"), 0);
        let a = q.pop().unwrap();
        q.requeue_unschedulable(uid(&a));
        assert!(q.pop().is_none(), "parked pods are not retried by polling");
        assert_eq!(q.sizes(), (0, 0, 1));
        q.move_unschedulable();
        assert_eq!(q.pop().map(|p| uid(&p).to_owned()).as_deref(), Some("a"));
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let q = Queue::default();
        assert_eq!(q.backoff_for(1), Duration::from_secs(1));
        assert_eq!(q.backoff_for(2), Duration::from_secs(2));
        assert_eq!(q.backoff_for(4), Duration::from_secs(8));
        assert_eq!(q.backoff_for(9), Duration::from_secs(10));
    }

    #[test]
    fn removed_pods_are_never_popped() {
        let mut q = Queue::default();
        q.add(pod("a"), 0);
        q.remove("a");
        assert!(q.pop().is_none());
    }
}
