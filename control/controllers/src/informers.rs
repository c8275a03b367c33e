//! One watch per kind shared by every controller: a local cache (reflector store) plus a
//! fan-out of every change, deletions included, to each controller that subscribed.
//!
//! kube-runtime's shared reflector does not pass deletions on, and a ReplicaSet must hear of
//! its pod's deletion to replace it; so the fan-out is done here from the raw watch events.

use std::{
    fmt::Debug,
    sync::{Arc, Mutex, PoisonError},
};

use futures::{Stream, StreamExt};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

type Subscribers<K> = Arc<Mutex<Vec<mpsc::UnboundedSender<K>>>>;

/// A cache of every object of kind `K` and the controllers listening to it.
pub struct Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store: Store<K>,
    writer: Option<Writer<K>>,
    subscribers: Subscribers<K>,
    api: Api<K>,
}

impl<K> Debug for Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("kind", &K::kind(&()))
            .finish_non_exhaustive()
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// An informer over `api` (cluster-wide); nothing is watched until [`Self::run`].
    #[must_use]
    pub fn new(api: Api<K>) -> Self {
        let writer = Writer::default();
        Self {
            store: writer.as_reader(),
            writer: Some(writer),
            subscribers: Arc::default(),
            api,
        }
    }

    /// The local cache (complete once [`Store::wait_until_ready`] returns).
    #[must_use]
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A stream of every object that changed or went away, for `Controller::owns_stream`
    /// and `watches_stream`.
    pub fn subscribe(&self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + use<K> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok)
    }

    /// Watches forever, feeding the cache and the subscribers. Call once.
    ///
    /// # Panics
    /// If called twice.
    pub async fn run(&mut self) {
        let mut writer = self.writer.take().expect("informer already running");
        let subscribers = self.subscribers.clone();
        let config = watcher::Config::default().any_semantic();
        let mut events = std::pin::pin!(watcher(self.api.clone(), config).default_backoff());
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    tracing::debug!(kind = %K::kind(&()), ?err, "watch failed; retrying");
                    continue;
                }
            };
            writer.apply_watcher_event(&event);
            let changed = match event {
                watcher::Event::Apply(obj)
                | watcher::Event::Delete(obj)
                | watcher::Event::InitApply(obj) => obj,
                watcher::Event::Init | watcher::Event::InitDone => continue,
            };
            let mut subscribers = subscribers.lock().unwrap_or_else(PoisonError::into_inner);
            subscribers.retain(|tx| tx.send(changed.clone()).is_ok());
        }
    }
}
