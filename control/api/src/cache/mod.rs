//! The watch cache (kube-apiserver's cacher): per resource, the current objects decoded and
//! encoded once and a ring of recent events, fed by one store watch, so that lists, gets and
//! watches are served from memory and each watch event is encoded once for all watchers.
//!
//! One store watch over every key feeds all caches, so the feed knows the newest revision it
//! has delivered; a consistent read (`resourceVersion=""`) asks the store for its current
//! revision and is served from the cache once the feed has delivered it (KEP-2340). A cache
//! is made the first time its resource is read; until its first list is in, and for what it
//! cannot answer (an exact old revision, a watch from before its ring), the store serves.

mod resource;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use futures::StreamExt;
pub use resource::{Cached, CachedEvent, Gap, Read, ResourceCache, Seen, Snapshot, watch_line};
use skiff_resources::ResourceInfo;
use skiff_store::{ListOptions, Store};
use tokio::sync::watch;

use crate::objects;

/// How long a read waits for the feed to deliver the revision it must see before the store
/// serves it instead.
const CATCH_UP: Duration = Duration::from_secs(1);
/// How long the feed waits before watching again after the store watch failed.
const RETRY: Duration = Duration::from_millis(200);

/// The caches of every resource read so far, and the feed that keeps them current.
pub struct WatchCache {
    store: Arc<dyn Store>,
    inner: Arc<Shared>,
}

impl std::fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCache").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// By store prefix of the resource (`/registry/<group>/<plural>/`); several versions of
    /// one resource share it.
    caches: Mutex<HashMap<String, Vec<Arc<ResourceCache>>>>,
    /// The feed: `None` until the first read starts it.
    feed: Mutex<Option<watch::Receiver<i64>>>,
}

impl WatchCache {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            inner: Arc::default(),
        }
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<ResourceCache>>>> {
        self.inner
            .caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest revision the feed has delivered, starting the feed on first use.
    fn seen(&self) -> watch::Receiver<i64> {
        let mut feed = self
            .inner
            .feed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        feed.get_or_insert_with(|| {
            let (tx, rx) = watch::channel(0);
            tokio::spawn(run_feed(
                Arc::clone(&self.store),
                Arc::downgrade(&self.inner),
                tx,
            ));
            rx
        })
        .clone()
    }

    /// The ready cache of `info`, or `None` (and its loading started) when the store must
    /// serve this read.
    pub fn cache(&self, info: &'static ResourceInfo) -> Option<Arc<ResourceCache>> {
        let seen = self.seen();
        // Until the feed has its starting revision, a cache could miss events.
        if *seen.borrow() == 0 {
            return None;
        }
        let prefix = objects::prefix(info, None);
        let mut caches = self.caches();
        let versions = caches.entry(prefix.clone()).or_default();
        if let Some(cache) = versions.iter().find(|c| std::ptr::eq(c.info, info)) {
            return cache.ready().then(|| Arc::clone(cache));
        }
        let cache = Arc::new(ResourceCache::loading(info));
        versions.push(Arc::clone(&cache));
        drop(caches);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            match store.list(&prefix, ListOptions::default()).await {
                Ok(list) => cache.loaded(&list.items, list.revision),
                Err(err) => {
                    tracing::warn!(%err, %prefix, "watch cache not loaded");
                    cache.close();
                }
            }
        });
        None
    }

    /// The revision a consistent read must see (the store's current one), once the feed has
    /// delivered it; `None` when the store must serve.
    pub async fn consistent_revision(&self) -> Option<i64> {
        let current = self.store.current_revision().await.ok()?;
        self.delivered(current).await.then_some(current)
    }

    /// Waits (a bounded time) until the feed has delivered `revision`.
    pub async fn delivered(&self, revision: i64) -> bool {
        let mut seen = self.seen();
        tokio::time::timeout(CATCH_UP, seen.wait_for(|s| *s >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The newest revision the feed has delivered.
    pub fn seen_now(&self) -> i64 {
        *self.seen().borrow()
    }
}

/// Watches every key from the store's current revision and hands each event to the caches
/// of its resource; when the watch fails, drops every cache (their watchers re-watch) and
/// starts again. Ends once the caches are gone.
async fn run_feed(store: Arc<dyn Store>, shared: Weak<Shared>, seen: watch::Sender<i64>) {
    loop {
        match feed_once(store.as_ref(), &shared, &seen).await {
            Ok(()) => return,
            Err(err) => tracing::warn!(%err, "watch cache feed restarts"),
        }
        let Some(live) = shared.upgrade() else {
            return;
        };
        let dropped: Vec<_> = live
            .caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .flat_map(|(_, v)| v)
            .collect();
        drop(live);
        for cache in dropped {
            cache.close();
        }
        tokio::select! {
            () = seen.closed() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Feeds the caches until the store watch fails (`Err`) or the caches are gone (`Ok`).
async fn feed_once(
    store: &dyn Store,
    shared: &Weak<Shared>,
    seen: &watch::Sender<i64>,
) -> Result<(), skiff_store::StoreError> {
    let from = store.current_revision().await?;
    let mut events = store.watch("/", from).await?;
    seen.send_modify(|s| *s = (*s).max(from).max(1));
    loop {
        let event = tokio::select! {
            () = seen.closed() => return Ok(()),
            event = events.next() => event,
        };
        let Some(event) = event else {
            return Err(skiff_store::StoreError::Backend(
                "the store watch ended".into(),
            ));
        };
        let event = event?;
        let revision = event.kv.mod_revision;
        if let Some(prefix) = resource_prefix(&event.kv.key) {
            let Some(live) = shared.upgrade() else {
                return Ok(());
            };
            let caches = live
                .caches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(prefix)
                .cloned()
                .unwrap_or_default();
            for cache in caches {
                cache.apply(&event);
            }
        }
        seen.send_modify(|s| *s = (*s).max(revision));
    }
}

/// `/registry/<group>/<plural>/` of an object's key.
fn resource_prefix(key: &str) -> Option<&str> {
    let mut slashes = key.match_indices('/').map(|(i, _)| i);
    let end = slashes.nth(3)?;
    key.starts_with("/registry/").then(|| &key[..=end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_prefix_is_group_and_plural() {
        assert_eq!(
            resource_prefix("/registry/core/pods/default/web"),
            Some("/registry/core/pods/")
        );
        assert_eq!(
            resource_prefix("/registry/core/nodes/n1"),
            Some("/registry/core/nodes/")
        );
        assert_eq!(resource_prefix("/registry/core"), None);
        assert_eq!(resource_prefix("/other/a/b/c"), None);
    }
}
