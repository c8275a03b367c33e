//! One resource's cache: the current objects, already decoded and encoded, and a ring of the
//! latest events for watchers that resume from a recent resourceVersion.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, OnceLock, RwLock},
};

use bytes::Bytes;
use once_cell::race::OnceBox;
use serde_json::{Value, json};
use skiff_machinery::status::StatusError;
use skiff_resources::{ResourceInfo, wire};
use skiff_store::{Event, EventKind, KeyValue};
use tokio::sync::watch;

use crate::objects;

/// How many events a cache keeps for watchers that resume; older ones are served by the store.
pub const RING: usize = 10_000;

/// The fields a cached object keeps beside its encoding, for field selectors (kube's
/// selectable fields of its built-in kinds); a selector on any other field decodes the
/// object.
const SELECTABLE: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.restartPolicy",
    "spec.unschedulable",
    "spec.signerName",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
    "type",
    "reason",
    "reportingComponent",
    "source",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
];

/// One object as the cache holds it: encoded once for every reader, and what selectors read.
/// The decoded form is not kept up front: as a `serde_json::Value` an object takes several
/// times the memory of its encoding, and only Table and protobuf answers and unusual field
/// selectors need it. Admission reads of small kinds keep it once asked ([`Cached::shared`]).
#[derive(Debug)]
pub struct Cached {
    /// The object (with `apiVersion`, `kind` and `resourceVersion`) as the Go apiserver
    /// writes it, without the trailing newline: a view into `line`.
    pub json: Bytes,
    /// The watch line most likely sent for it (ADDED for a new object, MODIFIED for a
    /// changed one, DELETED for a deleted one), so that the event costs no second copy.
    line: Bytes,
    /// The type `line` carries.
    seen: Seen,
    /// `metadata.labels`.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// The [`SELECTABLE`] fields the object has, as field selectors compare them.
    fields: Box<[(&'static str, Box<str>)]>,
    /// The decoded object, filled by the first [`Cached::shared`]. A `OnceBox` is one word
    /// where a `OnceLock` takes two: objects of big kinds, which never fill it, pay no
    /// more than that.
    decoded: OnceBox<Arc<Value>>,
}

impl Cached {
    fn new(info: &ResourceInfo, kv: &KeyValue, seen: Seen) -> Result<Self, StatusError> {
        let mut obj = objects::decode(info, kv)?;
        obj["apiVersion"] = json!(info.api_version);
        obj["kind"] = json!(info.kind);
        Ok(Self::of(&obj, seen))
    }

    /// The cached form of `obj`, with its watch line of type `seen`.
    pub fn of(obj: &Value, seen: Seen) -> Self {
        let encoded = wire::encode(obj);
        let object = encoded.strip_suffix(b"\n").unwrap_or(&encoded);
        let line = watch_line(seen.name(), object);
        // The object is what the line holds before its closing `}` and newline.
        let end = line.len() - 2;
        let json = line.slice(end - object.len()..end);
        let labels = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.as_str().into(), v.as_str().unwrap_or("").into()))
                    .collect()
            })
            .unwrap_or_default();
        let fields = SELECTABLE
            .iter()
            .filter_map(|f| Some((*f, objects::field_value(obj, f)?.into_boxed_str())))
            .collect();
        Self {
            json,
            line,
            seen,
            labels,
            fields,
            decoded: OnceBox::new(),
        }
    }

    /// The object, decoded from its encoding.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or_else(|err| {
            // The cache wrote these bytes from a value: they always decode.
            tracing::error!(%err, "cached object does not decode");
            Value::Null
        })
    }

    /// The object decoded once and shared by every later reader, for reads of small kinds
    /// that come often (the namespace and service account every pod create checks): the
    /// decoded form stays as long as this cached object, so big kinds use
    /// [`Cached::value`].
    pub fn shared(&self) -> Arc<Value> {
        // Two first readers may both decode; one result is kept, the same for everyone.
        Arc::clone(
            self.decoded
                .get_or_init(|| Box::new(Arc::new(self.value()))),
        )
    }

    /// `metadata.labels`.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A field as a field selector compares it (`Some(None)`: absent), or `None` when the
    /// cache does not keep that field.
    #[expect(
        clippy::option_option,
        reason = "not kept and not there are different answers"
    )]
    pub fn field(&self, field: &str) -> Option<Option<String>> {
        SELECTABLE.contains(&field).then(|| {
            self.fields
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, v)| v.to_string())
        })
    }
}

/// The watch event types a watcher may see for one change (a change can enter or leave
/// its selection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
}

impl Seen {
    pub fn name(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change of the resource, with its watch lines encoded at most once per type for all
/// watchers.
#[derive(Debug)]
pub struct CachedEvent {
    pub revision: i64,
    pub kind: EventKind,
    /// The object after the change (for a deletion, the last value at the deletion's
    /// revision).
    pub obj: Arc<Cached>,
    /// The object before the change, if there was one.
    pub prev: Option<Arc<Cached>>,
    lines: [OnceLock<Bytes>; 3],
}

impl CachedEvent {
    /// The JSON watch line (`{"type":...,"object":...}` and a newline) of this change seen as
    /// `seen`.
    pub fn line(&self, seen: Seen) -> Bytes {
        if seen == self.obj.seen {
            return self.obj.line.clone();
        }
        self.lines[seen as usize]
            .get_or_init(|| watch_line(seen.name(), &self.obj.json))
            .clone()
    }
}

/// `{"type":"<kind>","object":<object>}` and a newline, as `metav1.WatchEvent` is written.
pub fn watch_line(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + kind.len() + 24);
    line.extend_from_slice(br#"{"type":""#);
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(br#"","object":"#);
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// Why a cache cannot serve a watch from a revision.
#[derive(Debug, PartialEq, Eq)]
pub enum Gap {
    /// Events after the revision have left the ring.
    TooOld,
    /// The cache was dropped (its feed restarted): watch again.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Arc<Cached>>,
    /// Every event of this resource up to here is applied.
    revision: i64,
    ring: VecDeque<Arc<CachedEvent>>,
    /// The ring holds every event of this resource after this revision.
    ring_from: i64,
    /// While the first list is read: the events that arrived meanwhile.
    loading: Option<Vec<Event>>,
    closed: bool,
}

/// The cache of one resource (one version of it: objects are held as that version shows
/// them).
#[derive(Debug)]
pub struct ResourceCache {
    pub info: &'static ResourceInfo,
    state: RwLock<State>,
    changed: watch::Sender<u64>,
}

/// A read of the cache: matching objects in key order, at one revision.
#[derive(Debug)]
pub struct Snapshot {
    pub items: Vec<Arc<Cached>>,
    /// The revision the items are the state at.
    pub revision: i64,
    /// The last key returned, when more matching items follow it.
    pub more_after: Option<String>,
}

/// What to read from a cache.
pub struct Read<'a> {
    /// The store key prefix (resource, and namespace if any).
    pub prefix: &'a str,
    /// Start strictly after this key.
    pub start_after: Option<&'a str>,
    /// At most this many items; 0 means all.
    pub limit: usize,
    /// The selection.
    pub matches: &'a dyn Fn(&Cached) -> bool,
}

impl ResourceCache {
    /// A cache that is still loading: events given to [`ResourceCache::apply`] are kept
    /// until [`ResourceCache::loaded`].
    pub fn loading(info: &'static ResourceInfo) -> Self {
        Self {
            info,
            state: RwLock::new(State {
                loading: Some(Vec::new()),
                ..State::default()
            }),
            changed: watch::channel(0).0,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fills the cache from a list read at `revision`, then applies what arrived meanwhile.
    pub fn loaded(&self, items: &[KeyValue], revision: i64) {
        let mut state = self.write();
        for kv in items {
            match Cached::new(self.info, kv, Seen::Added) {
                Ok(c) => {
                    state.objects.insert(kv.key.clone(), Arc::new(c));
                }
                Err(err) => tracing::warn!(key = %kv.key, %err.message, "not cached"),
            }
        }
        state.revision = revision;
        state.ring_from = revision;
        for event in state.loading.take().unwrap_or_default() {
            self.apply_locked(&mut state, &event);
        }
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Whether the first list is in.
    pub fn ready(&self) -> bool {
        let state = self.read();
        state.loading.is_none() && !state.closed
    }

    /// Stops serving: watchers end and re-watch.
    pub fn close(&self) {
        self.write().closed = true;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Applies one store event of this resource (kept for later while loading).
    pub fn apply(&self, event: &Event) {
        let mut state = self.write();
        if let Some(pending) = state.loading.as_mut() {
            pending.push(event.clone());
            return;
        }
        if self.apply_locked(&mut state, event) {
            drop(state);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn apply_locked(&self, state: &mut State, event: &Event) -> bool {
        let revision = event.kv.mod_revision;
        if revision <= state.revision {
            return false;
        }
        // The line most watchers will be sent: a watcher whose selection the change enters
        // or leaves gets another.
        let seen = match event.kind {
            EventKind::Delete => Seen::Deleted,
            EventKind::Put if state.objects.contains_key(&event.kv.key) => Seen::Modified,
            EventKind::Put => Seen::Added,
        };
        let obj = match Cached::new(self.info, &event.kv, seen) {
            Ok(c) => Arc::new(c),
            Err(err) => {
                tracing::warn!(key = %event.kv.key, %err.message, "event not cached");
                state.revision = revision;
                return false;
            }
        };
        let prev = match event.kind {
            EventKind::Put => state.objects.insert(event.kv.key.clone(), Arc::clone(&obj)),
            EventKind::Delete => state.objects.remove(&event.kv.key),
        };
        state.revision = revision;
        if state.ring.len() == RING
            && let Some(oldest) = state.ring.pop_front()
        {
            state.ring_from = oldest.revision;
        }
        state.ring.push_back(Arc::new(CachedEvent {
            revision,
            kind: event.kind,
            obj,
            prev,
            lines: Default::default(),
        }));
        true
    }

    /// The revision the cache is current at, given that the feed has delivered every event
    /// up to `seen`.
    fn at(state: &State, seen: i64) -> i64 {
        state.revision.max(seen)
    }

    /// The matching objects now; `None` while loading or closed.
    pub fn list(&self, read: &Read<'_>, seen: i64) -> Option<Snapshot> {
        let state = self.read();
        if state.loading.is_some() || state.closed {
            return None;
        }
        Some(Self::snapshot(&state, read, Self::at(&state, seen)))
    }

    /// The object under `key` now (`Some(None)`: absent); `None` while loading or closed.
    #[expect(
        clippy::option_option,
        reason = "not cached and not there are different answers"
    )]
    pub fn get(&self, key: &str) -> Option<Option<Arc<Cached>>> {
        let state = self.read();
        if state.loading.is_some() || state.closed {
            return None;
        }
        Some(state.objects.get(key).cloned())
    }

    /// The matching objects as they were at `revision`, if the cache can tell: when no event
    /// of this resource happened since.
    pub fn list_at(&self, read: &Read<'_>, revision: i64, seen: i64) -> Option<Snapshot> {
        let state = self.read();
        if state.loading.is_some()
            || state.closed
            || state.revision > revision
            || Self::at(&state, seen) < revision
        {
            return None;
        }
        Some(Self::snapshot(&state, read, revision))
    }

    fn snapshot(state: &State, read: &Read<'_>, revision: i64) -> Snapshot {
        let start = match read.start_after {
            Some(after) if after >= read.prefix => std::ops::Bound::Excluded(after.to_owned()),
            _ => std::ops::Bound::Included(read.prefix.to_owned()),
        };
        let mut items = Vec::new();
        let mut last_key: Option<&String> = None;
        let mut more_after = None;
        for (key, obj) in state.objects.range((start, std::ops::Bound::Unbounded)) {
            if !key.starts_with(read.prefix) {
                break;
            }
            if !(read.matches)(obj) {
                continue;
            }
            if read.limit > 0 && items.len() == read.limit {
                more_after = last_key.cloned();
                break;
            }
            items.push(Arc::clone(obj));
            last_key = Some(key);
        }
        Snapshot {
            items,
            revision,
            more_after,
        }
    }

    /// The events after `revision`, in order, and where the watcher continues from.
    pub fn events_after(&self, revision: i64) -> Result<Vec<Arc<CachedEvent>>, Gap> {
        let state = self.read();
        if state.closed {
            return Err(Gap::Closed);
        }
        if state.loading.is_some() || revision < state.ring_from {
            return Err(Gap::TooOld);
        }
        let from = state.ring.partition_point(|e| e.revision <= revision);
        Ok(state.ring.range(from..).cloned().collect())
    }

    /// Whether a watch from `revision` can start here: the ring covers it and it is not in
    /// the future of what the cache holds.
    pub fn covers(&self, revision: i64, seen: i64) -> bool {
        let state = self.read();
        state.loading.is_none()
            && !state.closed
            && revision >= state.ring_from
            && revision <= Self::at(&state, seen)
    }

    /// Woken on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use skiff_resources::wire::Untyped;

    use super::*;

    fn configmaps() -> &'static ResourceInfo {
        skiff_resources::by_kind("v1", "ConfigMap").expect("configmaps")
    }

    fn kv(name: &str, data: &str, create: i64, revision: i64) -> KeyValue {
        KeyValue {
            key: format!("/registry/core/configmaps/default/{name}"),
            value: serde_json::to_vec(&json!({
                "metadata": {"name": name, "namespace": "default", "labels": {"app": data}},
                "data": {"k": data},
            }))
            .expect("json"),
            create_revision: create,
            mod_revision: revision,
        }
    }

    fn put(kv: KeyValue) -> Event {
        Event {
            kind: EventKind::Put,
            kv,
            prev: None,
        }
    }

    fn everything() -> impl Fn(&Cached) -> bool {
        |_| true
    }

    fn every_configmap(matches: &dyn Fn(&Cached) -> bool) -> Read<'_> {
        Read {
            prefix: "/registry/core/configmaps/",
            start_after: None,
            limit: 0,
            matches,
        }
    }

    fn names(snapshot: &Snapshot) -> Vec<String> {
        snapshot
            .items
            .iter()
            .map(|c| objects::name_of(&c.value()).to_owned())
            .collect()
    }

    #[test]
    fn a_watch_line_is_the_watch_event_the_wire_encoder_writes() {
        let cached = Cached::new(configmaps(), &kv("a", "x<y", 3, 3), Seen::Added).expect("cached");
        let expected = wire::encode_as(
            &json!({"type": "MODIFIED", "object": cached.value()}),
            Untyped::WatchEvent,
        );
        assert_eq!(
            watch_line("MODIFIED", &cached.json).as_ref(),
            expected.as_slice()
        );
        assert_eq!(
            cached.line.as_ref(),
            watch_line("ADDED", &cached.json).as_ref(),
            "the kept line holds the object it was made with"
        );
    }

    #[test]
    fn events_that_arrive_while_loading_apply_only_after_the_listed_revision() {
        let cache = ResourceCache::loading(configmaps());
        assert!(!cache.ready());
        // Already in the list read at 5: skipped; 6 is newer: applied.
        cache.apply(&put(kv("a", "1", 4, 4)));
        cache.apply(&put(kv("b", "2", 6, 6)));
        cache.loaded(&[kv("a", "1", 4, 4), kv("c", "3", 5, 5)], 5);
        assert!(cache.ready());
        let all = everything();
        let read = every_configmap(&all);
        let snapshot = cache.list(&read, 0).expect("ready");
        assert_eq!(names(&snapshot), ["a", "b", "c"]);
        assert_eq!(snapshot.revision, 6);
        let events = cache.events_after(5).expect("in the ring");
        assert_eq!(events.iter().map(|e| e.revision).collect::<Vec<_>>(), [6]);
        assert_eq!(cache.events_after(4).map(|v| v.len()), Err(Gap::TooOld));
    }

    #[test]
    fn pages_follow_the_selection_and_a_change_ends_serving_the_pinned_revision() {
        let cache = ResourceCache::loading(configmaps());
        let items: Vec<KeyValue> = (0..5)
            .map(|i| {
                kv(
                    &format!("o{i}"),
                    if i % 2 == 0 { "even" } else { "odd" },
                    i + 1,
                    i + 1,
                )
            })
            .collect();
        cache.loaded(&items, 5);
        let even = |obj: &Cached| obj.value()["data"]["k"] == "even";
        let first = Read {
            prefix: "/registry/core/configmaps/default/",
            start_after: None,
            limit: 2,
            matches: &even,
        };
        let page = cache.list(&first, 9).expect("ready");
        assert_eq!(names(&page), ["o0", "o2"]);
        assert_eq!(page.revision, 9, "the feed delivered up to 9");
        let after = page.more_after.clone().expect("o4 follows");
        let next = Read {
            start_after: Some(&after),
            ..first
        };
        let rest = cache.list_at(&next, 9, 9).expect("unchanged since 9");
        assert_eq!(names(&rest), ["o4"]);
        assert!(rest.more_after.is_none());
        cache.apply(&put(kv("o5", "even", 10, 10)));
        assert!(
            cache.list_at(&next, 9, 10).is_none(),
            "changed since 9: the store serves revision 9"
        );
    }

    #[test]
    fn an_event_is_encoded_once_for_every_watcher_and_deletions_carry_the_last_value() {
        let cache = ResourceCache::loading(configmaps());
        cache.loaded(&[kv("a", "1", 2, 2)], 2);
        cache.apply(&Event {
            kind: EventKind::Delete,
            kv: kv("a", "1", 2, 3),
            prev: None,
        });
        let events = cache.events_after(2).expect("in the ring");
        let [deleted] = events.as_slice() else {
            panic!("one event: {events:?}");
        };
        assert_eq!(deleted.kind, EventKind::Delete);
        assert_eq!(deleted.obj.value()["metadata"]["resourceVersion"], "3");
        assert!(deleted.prev.is_some());
        let (one, two) = (deleted.line(Seen::Deleted), deleted.line(Seen::Deleted));
        assert_eq!(one.as_ptr(), two.as_ptr(), "the same bytes, not a copy");
        let all = everything();
        let read = every_configmap(&all);
        assert!(cache.list(&read, 3).expect("ready").items.is_empty());
    }

    #[test]
    fn a_shared_object_is_decoded_once_and_a_change_is_decoded_afresh() {
        let cache = ResourceCache::loading(configmaps());
        cache.loaded(&[kv("a", "1", 2, 2)], 2);
        let key = "/registry/core/configmaps/default/a";
        let cached = cache.get(key).flatten().expect("cached");
        let (one, two) = (cached.shared(), cached.shared());
        assert!(
            Arc::ptr_eq(&one, &two),
            "one decoded value for every reader"
        );
        assert_eq!(*one, cached.value());
        cache.apply(&put(kv("a", "2", 2, 3)));
        let changed = cache.get(key).flatten().expect("cached").shared();
        assert_eq!(changed["data"]["k"], "2");
        assert_eq!(changed["metadata"]["resourceVersion"], "3");
        assert_eq!(one["data"]["k"], "1", "a reader keeps what it read");
    }

    #[test]
    fn a_closed_cache_ends_its_watchers_and_serves_nothing() {
        let cache = ResourceCache::loading(configmaps());
        cache.loaded(&[], 1);
        cache.close();
        assert_eq!(cache.events_after(1).map(|v| v.len()), Err(Gap::Closed));
        assert!(cache.get("/registry/core/configmaps/default/a").is_none());
    }
}
