//! Events (core/v1) for what the control plane does, folded into one object per repeat.
//!
//! Like client-go's event correlator: the same object, reason and message within the
//! dedup window bump `count` and `lastTimestamp` on the existing Event instead of writing a
//! new one, so a crash loop or a pod that never fits leaves one line in `kubectl describe`.

use std::{
    collections::HashMap,
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

/// How long a repeated event keeps folding into the same object.
const DEDUP_WINDOW: Duration = Duration::from_mins(10);
/// Bound on the correlation cache; older entries are forgotten first.
const CACHE_LIMIT: usize = 4096;

/// Whether an event is routine or needs attention (`type` of the Event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Routine progress (`Normal`).
    Normal,
    /// Something went wrong or cannot proceed (`Warning`).
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

#[derive(Debug)]
struct Seen {
    name: String,
    namespace: String,
    count: i32,
    at: Instant,
}

/// Writes Events on behalf of one component (`deployment-controller`, `default-scheduler`).
pub struct Recorder {
    client: Client,
    component: String,
    seen: Mutex<HashMap<(String, String, String), Seen>>,
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
            seen: Mutex::new(HashMap::new()),
        }
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
        let uid = involved.uid.clone().unwrap_or_default();
        let key = (uid, reason.to_owned(), message.to_owned());
        let now = Timestamp::now();
        let previous = {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            seen.retain(|_, s| s.at.elapsed() < DEDUP_WINDOW);
            seen.get_mut(&key).map(|s| {
                s.count += 1;
                s.at = Instant::now();
                (s.name.clone(), s.namespace.clone(), s.count)
            })
        };
        if let Some((name, namespace, count)) = previous {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            let patch = serde_json::json!({
                "count": count,
                "lastTimestamp": Time(now),
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return,
                // The event was deleted (TTL, namespace gone): write a fresh one.
                Err(err) => tracing::debug!(event = %name, ?err, "event patch failed"),
            }
        }
        let namespace = involved
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", involved.name.as_deref().unwrap_or("event"))),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: involved.clone(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
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
                let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
                if seen.len() >= CACHE_LIMIT {
                    // Drop the oldest half rather than one entry per insert.
                    let mut ages: Vec<Instant> = seen.values().map(|s| s.at).collect();
                    ages.sort_unstable();
                    let cutoff = ages[ages.len() / 2];
                    seen.retain(|_, s| s.at > cutoff);
                }
                seen.insert(
                    key,
                    Seen {
                        name: created.name_any(),
                        namespace,
                        count: 1,
                        at: Instant::now(),
                    },
                );
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
