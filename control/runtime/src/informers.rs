//! One watch per kind for the whole `control` process, shared by the scheduler and every
//! controller, as client-go's shared informer factory: each kind's watch feeds a local
//! cache (a kube-runtime reflector store, kept only when someone reads it) and fans every
//! event out to each subscriber, deletions and re-lists included.
//!
//! kube-runtime's own shared reflector passes neither deletions nor re-lists on, and a
//! ReplicaSet must hear of its pod's deletion to replace it while the scheduler must drop
//! pods that vanished during a re-list; so the fan-out is done here from the raw watch
//! events. Objects are handed out as `Arc`s, copied once per event whoever listens, and
//! without `managedFields`, which nothing here reads and which is the largest part of most
//! objects (kube-scheduler strips it the same way).

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    fmt::Debug,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::{Stream, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{Store, store::Writer},
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};

type Subscribers<K> = Arc<Mutex<Vec<mpsc::UnboundedSender<Event<Arc<K>>>>>>;

/// The bounds a kind needs to be watched and cached.
pub trait Kind:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Kind for K where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}

/// The cache of every object of kind `K` and the streams of its changes; a cheap handle.
pub struct Informer<K: Kind> {
    store: Store<K>,
    keep_store: Arc<AtomicBool>,
    started: Arc<AtomicBool>,
    subscribers: Subscribers<K>,
}

impl<K: Kind> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            keep_store: self.keep_store.clone(),
            started: self.started.clone(),
            subscribers: self.subscribers.clone(),
        }
    }
}

impl<K: Kind> Debug for Informer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("kind", &K::kind(&()))
            .finish_non_exhaustive()
    }
}

impl<K: Kind> Informer<K> {
    /// The local cache, complete once [`Store::wait_until_ready`] returns. Ask for it
    /// before [`Informers::run`] starts: a cache asked for later is never filled.
    #[must_use]
    pub fn store(&self) -> Store<K> {
        debug_assert!(
            !self.started.load(Ordering::Relaxed),
            "the {} store was asked for after its watch started",
            K::kind(&())
        );
        self.keep_store.store(true, Ordering::Relaxed);
        self.store.clone()
    }

    /// Every watch event from now on, re-lists (`Init`, `InitApply`, `InitDone`) included.
    pub fn events(&self) -> impl Stream<Item = Event<Arc<K>>> + Send + use<K> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.subscribers).push(tx);
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
    }

    /// Every object that changed, appeared in a re-list or went away: the triggers of
    /// kube-runtime's `Controller::for_shared_stream`, `owns_shared_stream` and
    /// `watches_shared_stream`.
    pub fn changes(&self) -> impl Stream<Item = Arc<K>> + Send + use<K> {
        self.events().filter_map(|event| {
            futures::future::ready(match event {
                Event::Apply(obj) | Event::Delete(obj) | Event::InitApply(obj) => Some(obj),
                Event::Init | Event::InitDone => None,
            })
        })
    }

    fn publish(&self, event: &Event<Arc<K>>) {
        lock(&self.subscribers).retain(|tx| tx.send(event.clone()).is_ok());
    }
}

/// The cached objects of namespace `ns` (controllers look at one namespace at a time).
#[must_use]
pub fn in_namespace<K: Kind>(store: &Store<K>, ns: &str) -> Vec<Arc<K>> {
    store
        .state()
        .into_iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns))
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The informers of one process: [`Self::get`] hands out the one informer of a kind,
/// [`Self::run`] drives every watch.
pub struct Informers {
    client: Client,
    kinds: Mutex<HashMap<TypeId, Box<dyn Any + Send>>>,
    pending: Mutex<Vec<BoxFuture<'static, ()>>>,
    added: Notify,
}

impl Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informers")
            .field("kinds", &lock(&self.kinds).len())
            .finish_non_exhaustive()
    }
}

impl Informers {
    /// No informers yet; they watch through `client`.
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self {
            client,
            kinds: Mutex::default(),
            pending: Mutex::default(),
            added: Notify::new(),
        }
    }

    /// The client the watches use.
    #[must_use]
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The informer of kind `K` over every namespace, made on first use.
    pub fn get<K: Kind>(&self) -> Informer<K> {
        let mut kinds = lock(&self.kinds);
        if let Some(informer) = kinds
            .get(&TypeId::of::<K>())
            .and_then(|any| any.downcast_ref::<Informer<K>>())
        {
            return informer.clone();
        }
        let writer = Writer::default();
        let informer = Informer {
            store: writer.as_reader(),
            keep_store: Arc::default(),
            started: Arc::default(),
            subscribers: Arc::default(),
        };
        kinds.insert(TypeId::of::<K>(), Box::new(informer.clone()));
        drop(kinds);
        let api = Api::<K>::all(self.client.clone());
        lock(&self.pending).push(Box::pin(watch(api, writer, informer.clone())));
        self.added.notify_one();
        informer
    }

    /// Drives every informer's watch, including those made while it runs, until dropped.
    pub async fn run(&self) {
        let mut running = FuturesUnordered::new();
        loop {
            running.extend(lock(&self.pending).drain(..));
            tokio::select! {
                Some(()) = running.next(), if !running.is_empty() => {}
                () = self.added.notified() => {}
            }
        }
    }
}

/// Feeds one kind's watch into its cache and subscribers, forever.
async fn watch<K: Kind>(api: Api<K>, mut writer: Writer<K>, informer: Informer<K>) {
    informer.started.store(true, Ordering::Relaxed);
    let keep_store = informer.keep_store.load(Ordering::Relaxed);
    let kind = K::kind(&());
    let config = watcher::Config::default().any_semantic();
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut unserved = false;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if status.code == 404 =>
            {
                // A kind the API server does not serve (yet) must not hold its readers back
                // forever: it counts as listed and empty, and the watch keeps trying.
                if !unserved {
                    tracing::warn!(%kind, "not served by the API server; treating it as empty");
                    unserved = true;
                    for event in [Event::Init, Event::InitDone] {
                        if keep_store {
                            writer.apply_watcher_event(&event);
                        }
                        informer.publish(&share(event));
                    }
                }
                continue;
            }
            Err(err) => {
                tracing::debug!(%kind, ?err, "watch failed; retrying");
                continue;
            }
        };
        unserved = false;
        let event = strip(event);
        if keep_store {
            writer.apply_watcher_event(&event);
        }
        informer.publish(&share(event));
    }
}

fn strip<K: Resource>(event: Event<K>) -> Event<K> {
    let strip = |mut obj: K| {
        obj.meta_mut().managed_fields = None;
        obj
    };
    match event {
        Event::Apply(obj) => Event::Apply(strip(obj)),
        Event::InitApply(obj) => Event::InitApply(strip(obj)),
        other => other,
    }
}

fn share<K>(event: Event<K>) -> Event<Arc<K>> {
    match event {
        Event::Apply(obj) => Event::Apply(Arc::new(obj)),
        Event::Delete(obj) => Event::Delete(Arc::new(obj)),
        Event::InitApply(obj) => Event::InitApply(Arc::new(obj)),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::Pod,
        apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta},
    };

    use super::*;

    #[test]
    fn managed_fields_are_dropped_from_what_is_cached_and_handed_out() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        let Event::Apply(pod) = strip(Event::Apply(pod)) else {
            panic!("not an apply");
        };
        assert!(pod.metadata.managed_fields.is_none());
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
    }
}
