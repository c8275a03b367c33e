//! The scheduling queue: pods waiting to be placed in priority order, then creation time
//! (active), pods waiting out a per-pod exponential back-off (backoff), and pods that fit
//! nowhere, parked until a cluster event may let them fit (unschedulable). Events move
//! parked pods; nothing polls them, except a flush of pods parked for long.

use std::{
    cmp::{Ordering, Reverse},
    collections::{BinaryHeap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::pod_info::PodInfo;

/// Where a queued pod waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Unschedulable,
    /// Popped and being scheduled; not in any heap.
    InFlight,
}

#[derive(Debug)]
struct Queued {
    pod: Arc<PodInfo>,
    attempts: u32,
    place: Place,
    /// Bumped on every move so stale heap entries can be told apart.
    seq: u64,
    backoff_until: Instant,
    parked_at: Instant,
    /// Seconds since the epoch of `metadata.creationTimestamp`.
    created: i64,
}

#[derive(Debug, PartialEq, Eq)]
struct ActiveEntry {
    priority: i32,
    created: i64,
    seq: u64,
    uid: String,
}

impl Ord for ActiveEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Higher priority first, then older pods, then first come first served.
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.created.cmp(&self.created))
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

/// A cluster change that may let parked pods fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A node appeared or changed labels, taints, cordon or capacity.
    NodeChanged,
    /// A placed pod went away or finished: resources, ports and anti-affinity freed.
    PodGone,
    /// A pod was placed: only pods waiting for other pods (affinity, spread) may fit now.
    PodPlaced,
    /// A claim, volume or `StorageClass` appeared or changed.
    StorageChanged,
}

/// The three queues.
#[derive(Debug, Default)]
pub struct Queue {
    pods: HashMap<String, Queued>,
    active: BinaryHeap<ActiveEntry>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    /// Parked pods: all of them, and those that wait for other pods.
    unschedulable: HashSet<String>,
    unschedulable_on_pods: HashSet<String>,
    next_seq: u64,
    limits: Backoff,
}

/// Whether an update changed what scheduling looks at (not just status or bookkeeping).
fn spec_changed(old: &PodInfo, new: &PodInfo) -> bool {
    old.pod.spec != new.pod.spec
        || old.pod.metadata.labels != new.pod.metadata.labels
        || old.pod.metadata.annotations != new.pod.metadata.annotations
        || old.priority != new.priority
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

    fn leave_unschedulable(&mut self, uid: &str) {
        self.unschedulable.remove(uid);
        self.unschedulable_on_pods.remove(uid);
    }

    fn push_active(&mut self, uid: &str) {
        let seq = self.seq();
        self.leave_unschedulable(uid);
        if let Some(q) = self.pods.get_mut(uid) {
            q.place = Place::Active;
            q.seq = seq;
            self.active.push(ActiveEntry {
                priority: q.pod.priority,
                created: q.created,
                seq,
                uid: uid.to_owned(),
            });
        }
    }

    fn push_backoff(&mut self, uid: &str, until: Instant) {
        let seq = self.seq();
        self.leave_unschedulable(uid);
        if let Some(q) = self.pods.get_mut(uid) {
            q.place = Place::Backoff;
            q.seq = seq;
            q.backoff_until = until;
            self.backoff.push(Reverse((until, seq, uid.to_owned())));
        }
    }

    /// Adds a new unscheduled pod, or refreshes a queued one: a parked pod whose spec
    /// changed gets another try (after its back-off).
    pub fn add(&mut self, pod: Arc<PodInfo>) {
        let uid = pod.uid.clone();
        if let Some(q) = self.pods.get_mut(&uid) {
            let retry = q.place == Place::Unschedulable && spec_changed(&q.pod, &pod);
            let reorder = q.place == Place::Active && q.pod.priority != pod.priority;
            q.pod = pod;
            if retry {
                let until = q.backoff_until;
                if until <= Instant::now() {
                    self.push_active(&uid);
                } else {
                    self.push_backoff(&uid, until);
                }
            } else if reorder {
                self.push_active(&uid);
            }
            return;
        }
        let created = pod
            .pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        let now = Instant::now();
        self.pods.insert(
            uid.clone(),
            Queued {
                pod,
                attempts: 0,
                place: Place::Active,
                seq: 0,
                backoff_until: now,
                parked_at: now,
                created,
            },
        );
        self.push_active(&uid);
    }

    /// Forgets a pod (bound, deleted, or handed to another scheduler).
    pub fn remove(&mut self, uid: &str) {
        self.pods.remove(uid);
        self.leave_unschedulable(uid);
    }

    /// Keeps only the pods `keep` accepts (after a re-list, the ones still there).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<String> = self.pods.keys().filter(|uid| !keep(uid)).cloned().collect();
        for uid in gone {
            self.remove(&uid);
        }
    }

    /// Whether the pod is queued anywhere.
    #[must_use]
    pub fn contains(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// Takes the next pod to schedule (moving expired back-offs to active first). The pod
    /// stays known to the queue, in flight, until [`Self::remove`] or a requeue.
    pub fn pop(&mut self) -> Option<Arc<PodInfo>> {
        self.flush_backoff(Instant::now());
        while let Some(entry) = self.active.pop() {
            let Some(q) = self.pods.get_mut(&entry.uid) else {
                continue;
            };
            if q.place != Place::Active || q.seq != entry.seq {
                continue;
            }
            q.place = Place::InFlight;
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
        self.push_backoff(uid, until);
    }

    /// Parks a pod that fits nowhere until a cluster event may let it fit.
    pub fn requeue_unschedulable(&mut self, uid: &str) {
        let Some(attempts) = self.pods.get(uid).map(|q| q.attempts) else {
            return;
        };
        let until = Instant::now() + self.backoff_for(attempts);
        let Some(q) = self.pods.get_mut(uid) else {
            return;
        };
        q.place = Place::Unschedulable;
        q.seq = 0;
        q.backoff_until = until;
        q.parked_at = Instant::now();
        let on_pods = q.pod.depends_on_pods();
        self.unschedulable.insert(uid.to_owned());
        if on_pods {
            self.unschedulable_on_pods.insert(uid.to_owned());
        }
    }

    /// Moves the parked pods `event` may help back to active (or to backoff while their
    /// back-off lasts); returns how many moved.
    pub fn on_event(&mut self, event: ClusterEvent) -> usize {
        let moving: Vec<String> = match event {
            ClusterEvent::NodeChanged | ClusterEvent::PodGone | ClusterEvent::StorageChanged => {
                self.unschedulable.iter().cloned().collect()
            }
            ClusterEvent::PodPlaced => self.unschedulable_on_pods.iter().cloned().collect(),
        };
        let now = Instant::now();
        for uid in &moving {
            let Some(until) = self.pods.get(uid).map(|q| q.backoff_until) else {
                self.leave_unschedulable(uid);
                continue;
            };
            if until <= now {
                self.push_active(uid);
            } else {
                self.push_backoff(uid, until);
            }
        }
        moving.len()
    }

    /// Retries pods parked longer than `age` even without a cluster event.
    pub fn flush_unschedulable(&mut self, age: Duration) {
        let stale: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|uid| {
                self.pods
                    .get(*uid)
                    .is_some_and(|q| q.parked_at.elapsed() >= age)
            })
            .cloned()
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

    /// Pods per place: (active, backoff, unschedulable), for logs and tests.
    #[must_use]
    pub fn sizes(&self) -> (usize, usize, usize) {
        let mut sizes = (0, 0, 0);
        for q in self.pods.values() {
            match q.place {
                Place::Active => sizes.0 += 1,
                Place::Backoff => sizes.1 += 1,
                Place::Unschedulable => sizes.2 += 1,
                Place::InFlight => {}
            }
        }
        sizes
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Pod, PodSpec, TopologySpreadConstraint},
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
        jiff::Timestamp,
    };

    use super::*;

    fn pod_at(uid: &str, priority: i32, created: i64) -> Arc<PodInfo> {
        Arc::new(PodInfo::plain(Pod {
            metadata: ObjectMeta {
                uid: Some(uid.to_owned()),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                priority: Some(priority),
                ..PodSpec::default()
            }),
            status: None,
        }))
    }

    fn pod(uid: &str) -> Arc<PodInfo> {
        pod_at(uid, 0, 1_700_000_000)
    }

    fn instant() -> Queue {
        Queue::new(Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        })
    }

    fn popped(q: &mut Queue) -> Option<String> {
        q.pop().map(|p| p.uid.clone())
    }

    #[test]
    fn higher_priority_first_then_creation_time_then_arrival() {
        let mut q = Queue::default();
        q.add(pod_at("new", 0, 200));
        q.add(pod_at("vip", 10, 300));
        q.add(pod_at("old", 0, 100));
        q.add(pod_at("old-too", 0, 100));
        let order: Vec<String> = std::iter::from_fn(|| popped(&mut q)).collect();
        assert_eq!(order, ["vip", "old", "old-too", "new"]);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_cluster_event() {
        let mut q = instant();
        q.add(pod("a"));
        let a = q.pop().unwrap();
        q.requeue_unschedulable(&a.uid);
        assert!(q.pop().is_none(), "parked pods are not retried by polling");
        assert_eq!(q.sizes(), (0, 0, 1));
        assert_eq!(q.on_event(ClusterEvent::NodeChanged), 1);
        assert_eq!(popped(&mut q).as_deref(), Some("a"));
    }

    #[test]
    fn a_placed_pod_only_wakes_pods_that_wait_for_pods() {
        let mut q = instant();
        let spread = PodInfo::plain(Pod {
            metadata: ObjectMeta {
                uid: Some("spread".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: "zone".into(),
                    when_unsatisfiable: "DoNotSchedule".into(),
                    ..TopologySpreadConstraint::default()
                }]),
                ..PodSpec::default()
            }),
            status: None,
        });
        q.add(Arc::new(spread));
        q.add(pod("plain"));
        while let Some(p) = q.pop() {
            q.requeue_unschedulable(&p.uid);
        }
        assert_eq!(q.on_event(ClusterEvent::PodPlaced), 1);
        assert_eq!(popped(&mut q).as_deref(), Some("spread"));
        assert!(q.pop().is_none());
        assert_eq!(q.on_event(ClusterEvent::PodGone), 1);
        assert_eq!(popped(&mut q).as_deref(), Some("plain"));
    }

    #[test]
    fn a_parked_pod_in_back_off_waits_it_out_after_an_event() {
        let mut q = Queue::new(Backoff {
            initial: Duration::from_mins(1),
            max: Duration::from_mins(1),
        });
        q.add(pod("a"));
        let a = q.pop().unwrap();
        q.requeue_unschedulable(&a.uid);
        q.on_event(ClusterEvent::NodeChanged);
        assert_eq!(q.sizes(), (0, 1, 0));
        assert!(q.pop().is_none());
        assert!(q.next_backoff().is_some());
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
    fn a_failed_binding_retries_after_its_back_off() {
        let mut q = instant();
        q.add(pod("a"));
        let a = q.pop().unwrap();
        q.requeue_backoff(&a.uid);
        assert_eq!(popped(&mut q).as_deref(), Some("a"));
    }

    #[test]
    fn stale_parked_pods_are_flushed() {
        let mut q = instant();
        q.add(pod("a"));
        let a = q.pop().unwrap();
        q.requeue_unschedulable(&a.uid);
        q.flush_unschedulable(Duration::from_mins(5));
        assert!(q.pop().is_none());
        q.flush_unschedulable(Duration::ZERO);
        assert_eq!(popped(&mut q).as_deref(), Some("a"));
    }

    #[test]
    fn a_spec_change_retries_a_parked_pod() {
        let mut q = instant();
        q.add(pod("a"));
        let a = q.pop().unwrap();
        q.requeue_unschedulable(&a.uid);
        q.add(pod("a"));
        assert!(q.pop().is_none(), "a status-only update changes nothing");
        q.add(pod_at("a", 5, 1_700_000_000));
        assert_eq!(popped(&mut q).as_deref(), Some("a"));
    }

    #[test]
    fn removed_pods_are_never_popped() {
        let mut q = Queue::default();
        q.add(pod("a"));
        q.remove("a");
        assert!(q.pop().is_none());
        assert!(!q.contains("a"));
    }
}
