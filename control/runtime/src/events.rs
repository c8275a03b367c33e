//! Events (core/v1) for what the control plane does, correlated as client-go's
//! `EventCorrelator` does before anything reaches the API server:
//!
//! - a spam filter: each object gets a bucket of 25 events, refilled by one every five
//!   minutes; events beyond it are dropped;
//! - aggregation: once ten events with the same object, type and reason but different
//!   messages arrive within ten minutes, further ones are written as one
//!   "(combined from similar events): ..." Event;
//! - deduplication: an event identical to one written within ten minutes bumps that
//!   Event's `count` and `lastTimestamp` instead of writing a new one,
//!
//! so a crash loop, a pod that never fits or a ReplicaSet creating 500 pods leaves a few
//! lines in `kubectl describe`, not thousands of objects.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
pub use skiff_types::EventType;

/// How long similar and identical events keep folding together.
pub const WINDOW: Duration = Duration::from_mins(10);
/// Distinct messages for one object and reason before further ones are combined.
pub const AGGREGATE_AFTER: usize = 10;
/// Events an object may get at once before the spam filter drops them.
pub const BURST: u32 = 25;
/// How often the spam filter gives an object one more event.
pub const REFILL: Duration = Duration::from_mins(5);
/// Bound on each correlation cache; the oldest half is forgotten when it is reached.
const CACHE_LIMIT: usize = 4096;
/// What client-go prefixes combined messages with.
const COMBINED: &str = "(combined from similar events): ";

/// What to do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Correlated {
    /// The object has had too many events lately: write nothing.
    Drop,
    /// Write a new Event with this message, then [`Correlator::created`] with `key`.
    Create {
        /// The message to write (combined when aggregated).
        message: String,
        /// The deduplication key to remember the new Event under.
        key: String,
    },
    /// Bump the existing Event `namespace/name` to `count`, with `message`.
    Update {
        /// Namespace of the existing Event.
        namespace: String,
        /// Name of the existing Event.
        name: String,
        /// The new count.
        count: i32,
        /// The message to write (combined messages change with each event).
        message: String,
        /// The deduplication key, to forget if the Event turns out to be gone.
        key: String,
    },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Similar {
    messages: HashSet<String>,
    since: Instant,
}

#[derive(Debug)]
struct Written {
    namespace: String,
    name: String,
    count: i32,
    at: Instant,
}

/// The correlation state of one recorder; every decision takes the time it is made at.
#[derive(Debug, Default)]
pub struct Correlator {
    buckets: HashMap<String, Bucket>,
    similar: HashMap<String, Similar>,
    written: HashMap<String, Written>,
}

fn object_key(o: &ObjectReference) -> String {
    let part = |s: &Option<String>| s.clone().unwrap_or_default();
    format!(
        "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
        part(&o.api_version),
        part(&o.kind),
        part(&o.namespace),
        part(&o.name),
        part(&o.uid)
    )
}

/// Keeps `map` under the cache limit by dropping its older half.
fn bound<V>(map: &mut HashMap<String, V>, at: impl Fn(&V) -> Instant) {
    if map.len() < CACHE_LIMIT {
        return;
    }
    let mut ages: Vec<Instant> = map.values().map(&at).collect();
    ages.sort_unstable();
    let cutoff = ages[ages.len() / 2];
    map.retain(|_, v| at(v) > cutoff);
}

impl Correlator {
    /// Decides what an event about `involved` becomes at `now`.
    pub fn correlate(
        &mut self,
        involved: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
        now: Instant,
    ) -> Correlated {
        let object = object_key(involved);
        // Spam filter: a token bucket per object.
        bound(&mut self.buckets, |b| b.at);
        let bucket = self.buckets.entry(object.clone()).or_insert(Bucket {
            tokens: f64::from(BURST),
            at: now,
        });
        let refilled =
            now.saturating_duration_since(bucket.at).as_secs_f64() / REFILL.as_secs_f64();
        bucket.tokens = (bucket.tokens + refilled).min(f64::from(BURST));
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Correlated::Drop;
        }
        bucket.tokens -= 1.0;

        // Aggregation: many different messages for one object and reason become one.
        let aggregate = format!("{object}\u{0}{kind}\u{0}{reason}");
        bound(&mut self.similar, |s| s.since);
        let similar = self
            .similar
            .entry(aggregate.clone())
            .or_insert_with(|| Similar {
                messages: HashSet::new(),
                since: now,
            });
        if now.saturating_duration_since(similar.since) > WINDOW {
            similar.messages.clear();
            similar.since = now;
        }
        similar.messages.insert(message.to_owned());
        let (message, key) = if similar.messages.len() < AGGREGATE_AFTER {
            (message.to_owned(), format!("{aggregate}\u{0}{message}"))
        } else {
            (format!("{COMBINED}{message}"), aggregate)
        };

        // Deduplication: the same event again bumps the count of the one written.
        self.written
            .retain(|_, w| now.saturating_duration_since(w.at) < WINDOW);
        match self.written.get_mut(&key) {
            Some(w) => {
                w.count += 1;
                w.at = now;
                Correlated::Update {
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                    count: w.count,
                    message,
                    key,
                }
            }
            None => Correlated::Create { message, key },
        }
    }

    /// Remembers the Event written for `key`, for later repeats to update.
    pub fn created(&mut self, key: String, namespace: String, name: String, now: Instant) {
        bound(&mut self.written, |w| w.at);
        self.written.insert(
            key,
            Written {
                namespace,
                name,
                count: 1,
                at: now,
            },
        );
    }

    /// Forgets the Event written for `key` (it was deleted: TTL, namespace gone).
    pub fn forget(&mut self, key: &str) {
        self.written.remove(key);
    }
}

/// Writes Events on behalf of one component (`deployment-controller`, `default-scheduler`).
pub struct Recorder {
    client: Client,
    component: String,
    correlator: Mutex<Correlator>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder that signs its events with `component` as `source.component` and
    /// `reportingComponent`.
    #[must_use]
    pub fn new(client: Client, component: &str) -> Self {
        Self {
            client,
            component: component.to_owned(),
            correlator: Mutex::default(),
        }
    }

    fn correlator(&self) -> std::sync::MutexGuard<'_, Correlator> {
        self.correlator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a `Normal` event about `obj`.
    pub async fn normal<K>(&self, obj: &K, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        self.record(&reference(obj), EventType::Normal, reason, message)
            .await;
    }

    /// Records a `Warning` event about `obj`.
    pub async fn warning<K>(&self, obj: &K, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        self.record(&reference(obj), EventType::Warning, reason, message)
            .await;
    }

    /// Records an event about the object `involved` refers to. Failures are logged, never
    /// returned: an event is a courtesy and must not fail the action it reports.
    pub async fn record(
        &self,
        involved: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let decision = self
            .correlator()
            .correlate(involved, kind, reason, message, Instant::now());
        let now = Timestamp::now();
        let (message, key) = match decision {
            Correlated::Drop => return,
            Correlated::Create { message, key } => (message, key),
            Correlated::Update {
                namespace,
                name,
                count,
                message,
                key,
            } => {
                let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
                let patch = serde_json::json!({
                    "count": count,
                    "message": message,
                    "lastTimestamp": Time(now),
                });
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => return,
                    Err(err) => {
                        // Gone (TTL, namespace deleted): write a fresh one.
                        tracing::debug!(event = %name, ?err, "event update failed");
                        self.correlator().forget(&key);
                        (message, key)
                    }
                }
            }
        };
        let namespace = involved
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| skiff_types::namespace::DEFAULT.to_owned());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", involved.name.as_deref().unwrap_or("event"))),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: involved.clone(),
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(kind.as_str().to_owned()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            action: Some(reason.to_owned()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => {
                self.correlator()
                    .created(key, namespace, created.name_any(), Instant::now());
            }
            Err(err) => {
                tracing::warn!(reason, object = ?involved.name, ?err, "could not record an event");
            }
        }
    }
}

/// A reference to `obj` for `involvedObject`.
#[must_use]
pub fn reference<K>(obj: &K) -> ObjectReference
where
    K: Resource<DynamicType = ()>,
{
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some("default".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    /// Feeds one event and, when it is to be created, remembers it as written.
    fn feed(c: &mut Correlator, obj: &str, reason: &str, message: &str, at: Instant) -> Correlated {
        let decision = c.correlate(&pod(obj), EventType::Warning, reason, message, at);
        if let Correlated::Create { key, .. } = &decision {
            c.created(
                key.clone(),
                "default".into(),
                format!("{obj}.{}", c.written.len()),
                at,
            );
        }
        decision
    }

    #[test]
    fn a_repeated_event_bumps_the_count_of_the_one_written() {
        let mut c = Correlator::default();
        let t = Instant::now();
        assert!(matches!(
            feed(&mut c, "p", "BackOff", "restarting", t),
            Correlated::Create { .. }
        ));
        let again = feed(
            &mut c,
            "p",
            "BackOff",
            "restarting",
            t + Duration::from_secs(1),
        );
        let Correlated::Update {
            count,
            message,
            name,
            ..
        } = again
        else {
            panic!("not an update: {again:?}");
        };
        assert_eq!(
            (count, message.as_str(), name.as_str()),
            (2, "restarting", "p.0")
        );
        let third = feed(
            &mut c,
            "p",
            "BackOff",
            "restarting",
            t + Duration::from_secs(2),
        );
        assert!(matches!(third, Correlated::Update { count: 3, .. }));
        // Another object, or another reason, is another Event.
        assert!(matches!(
            feed(&mut c, "q", "BackOff", "restarting", t),
            Correlated::Create { .. }
        ));
        assert!(matches!(
            feed(&mut c, "p", "Failed", "restarting", t),
            Correlated::Create { .. }
        ));
    }

    #[test]
    fn a_repeat_after_the_window_is_a_new_event() {
        let mut c = Correlator::default();
        let t = Instant::now();
        feed(&mut c, "p", "BackOff", "restarting", t);
        let later = feed(
            &mut c,
            "p",
            "BackOff",
            "restarting",
            t + WINDOW + Duration::from_secs(1),
        );
        assert!(matches!(later, Correlated::Create { .. }), "{later:?}");
    }

    #[test]
    fn the_tenth_different_message_is_combined_and_later_ones_fold_into_it() {
        let mut c = Correlator::default();
        let t = Instant::now();
        for i in 0..AGGREGATE_AFTER - 1 {
            let d = feed(
                &mut c,
                "rs",
                "SuccessfulCreate",
                &format!("Created pod: p{i}"),
                t,
            );
            assert!(
                matches!(d, Correlated::Create { ref message, .. } if !message.starts_with(COMBINED))
            );
        }
        let tenth = feed(&mut c, "rs", "SuccessfulCreate", "Created pod: p9", t);
        let Correlated::Create { message, .. } = tenth else {
            panic!("{tenth:?}");
        };
        assert_eq!(message, "(combined from similar events): Created pod: p9");
        let eleventh = feed(&mut c, "rs", "SuccessfulCreate", "Created pod: p10", t);
        let Correlated::Update { count, message, .. } = eleventh else {
            panic!("{eleventh:?}");
        };
        assert_eq!(count, 2);
        assert_eq!(message, "(combined from similar events): Created pod: p10");
    }

    #[test]
    fn an_object_beyond_its_burst_is_dropped_until_the_bucket_refills() {
        let mut c = Correlator::default();
        let t = Instant::now();
        for i in 0..BURST {
            let d = feed(&mut c, "p", "R", &format!("m{}", i % 3), t);
            assert_ne!(d, Correlated::Drop, "event {i}");
        }
        assert_eq!(feed(&mut c, "p", "R", "m0", t), Correlated::Drop);
        // Other objects have buckets of their own.
        assert_ne!(feed(&mut c, "q", "R", "m0", t), Correlated::Drop);
        // One more after a refill period, then dropped again.
        let later = t + REFILL;
        assert_ne!(feed(&mut c, "p", "R", "m0", later), Correlated::Drop);
        assert_eq!(feed(&mut c, "p", "R", "m0", later), Correlated::Drop);
    }

    #[test]
    fn a_forgotten_event_is_written_anew() {
        let mut c = Correlator::default();
        let t = Instant::now();
        feed(&mut c, "p", "R", "m", t);
        let Correlated::Update { key, .. } = feed(&mut c, "p", "R", "m", t) else {
            panic!("not an update");
        };
        c.forget(&key);
        assert!(matches!(
            feed(&mut c, "p", "R", "m", t),
            Correlated::Create { .. }
        ));
    }
}
