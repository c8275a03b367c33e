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
//! objects (kube-scheduler strips it the same way). When the kind is cached, subscribers
//! get the cache's own `Arc`, so an object a subscriber keeps (the scheduler keeps every
//! pod) is held once, not once in the cache and once in the subscriber.

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
        reflector::{ObjectRef, Store, store::Writer},
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

    /// Whether the local cache is kept (someone asked for [`Self::store`]); its objects
    /// are then the very `Arc`s subscribers receive.
    #[must_use]
    pub fn cached(&self) -> bool {
        self.keep_store.load(Ordering::Relaxed)
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
async fn watch<K: Kind>(api: Api<K>, writer: Writer<K>, informer: Informer<K>) {
    informer.started.store(true, Ordering::Relaxed);
    let mut outlet = Outlet {
        writer: informer.cached().then_some(writer),
        informer,
        listed: Vec::new(),
    };
    let kind = K::kind(&());
    let config = watcher::Config::default().any_semantic();
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut unserved = false;
    // Each (re-)list starts with `Init`; it is passed on with the list's first answer, so
    // an unserved kind's retries do not reach subscribers as re-lists that never end.
    let mut held_init = false;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(Event::Init) => {
                held_init = true;
                continue;
            }
            Ok(event) => event,
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if status.code == 404 =>
            {
                held_init = false;
                // A kind the API server does not serve (yet) must not hold its readers back
                // forever: it counts as listed and empty, and the watch keeps trying.
                if !unserved {
                    tracing::warn!(%kind, "not served by the API server; treating it as empty");
                    unserved = true;
                    outlet.pass(Event::Init);
                    outlet.pass(Event::InitDone);
                }
                continue;
            }
            Err(err) => {
                tracing::debug!(%kind, ?err, "watch failed; retrying");
                continue;
            }
        };
        if std::mem::take(&mut held_init) {
            if std::mem::take(&mut unserved) {
                tracing::info!(%kind, "served by the API server now");
            }
            outlet.pass(Event::Init);
        }
        outlet.pass(strip(event));
    }
}

/// Where one kind's watch events go: its cache, when someone reads it, and every
/// subscriber.
struct Outlet<K: Kind> {
    informer: Informer<K>,
    /// The cache's writer, when the cache is kept.
    writer: Option<Writer<K>>,
    /// Keys of the re-list under way (see [`Self::pass`]).
    listed: Vec<ObjectRef<K>>,
}

impl<K: Kind> Outlet<K> {
    /// Applies `event` to the cache, if kept, and hands subscribers the cache's `Arc` of
    /// the object. Objects of a re-list reach the cache when the list is done, so their
    /// `InitApply` events are held back until then (`listed` keeps their keys);
    /// subscribers still see every `InitApply` before the `InitDone`.
    fn pass(&mut self, event: Event<K>) {
        let Some(writer) = self.writer.as_mut() else {
            self.informer.publish(&share(event));
            return;
        };
        writer.apply_watcher_event(&event);
        let informer = &self.informer;
        match event {
            Event::Apply(obj) => {
                let cached = informer.store.get(&ObjectRef::from_obj(&obj));
                informer.publish(&Event::Apply(cached.unwrap_or_else(|| Arc::new(obj))));
            }
            Event::InitApply(obj) => self.listed.push(ObjectRef::from_obj(&obj)),
            Event::InitDone => {
                for key in self.listed.drain(..) {
                    if let Some(obj) = informer.store.get(&key) {
                        informer.publish(&Event::InitApply(obj));
                    }
                }
                informer.publish(&Event::InitDone);
            }
            Event::Init => {
                self.listed.clear();
                informer.publish(&Event::Init);
            }
            Event::Delete(obj) => informer.publish(&Event::Delete(Arc::new(obj))),
        }
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
    use std::{
        convert::Infallible,
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
    use hyper::{Request, Response, body::Frame, service::service_fn};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use k8s_openapi::{
        api::core::v1::{Pod, ReplicationController},
        apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta},
    };
    use kube::ResourceExt;
    use serde_json::json;

    use super::*;

    fn pod_json(name: &str, rv: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "resourceVersion": rv, "managedFields": [{"manager": "kubectl"}]},
        })
    }

    /// A loopback API server with one pod listed, whose pod watch sends a new pod and the
    /// deletion of the listed one, then stays open; `ReplicationControllers` are not served.
    /// Counts the pod lists and watches it answers.
    struct FakeApi {
        url: String,
        lists: Arc<AtomicUsize>,
        watches: Arc<AtomicUsize>,
    }

    type Body = BoxBody<Bytes, Infallible>;

    fn answer(
        req: &Request<hyper::body::Incoming>,
        lists: &AtomicUsize,
        watches: &AtomicUsize,
    ) -> Response<Body> {
        let query = req.uri().query().unwrap_or_default();
        let full = |code: u16, body: serde_json::Value| {
            Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())).boxed())
                .expect("a response")
        };
        if req.uri().path() != "/api/v1/pods" {
            return full(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "NotFound", "code": 404, "message": "not served"}),
            );
        }
        if !query.contains("watch=true") {
            lists.fetch_add(1, Ordering::SeqCst);
            return full(
                200,
                json!({"kind": "PodList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": "10"}, "items": [pod_json("a", "9")]}),
            );
        }
        watches.fetch_add(1, Ordering::SeqCst);
        let lines = [
            json!({"type": "ADDED", "object": pod_json("b", "11")}),
            json!({"type": "DELETED", "object": pod_json("a", "12")}),
        ];
        let frames = lines
            .into_iter()
            .map(|l| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{l}\n")))));
        // Sent, then the watch stays open.
        let body = futures::stream::iter(frames).chain(futures::stream::pending());
        Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(body)))
            .expect("a response")
    }

    impl FakeApi {
        async fn start() -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback port");
            let url = format!("http://{}", listener.local_addr().expect("an address"));
            let (lists, watches) = (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
            let (l, w) = (lists.clone(), watches.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (l, w) = (l.clone(), w.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let response = answer(&req, &l, &w);
                            async move { Ok::<_, Infallible>(response) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Self {
                url,
                lists,
                watches,
            }
        }

        fn client(&self) -> Client {
            let uri: http::Uri = self.url.parse().expect("a URL");
            Client::try_from(kube::Config::new(uri)).expect("a client")
        }
    }

    async fn next<T>(stream: &mut (impl Stream<Item = T> + Unpin)) -> T {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
    }

    #[tokio::test]
    async fn one_watch_per_kind_feeds_every_subscriber_and_the_cache() {
        let api = FakeApi::start().await;
        let informers = Arc::new(Informers::new(api.client()));
        let store = informers.get::<Pod>().store();
        let mut events = informers.get::<Pod>().events();
        let mut changes = informers.get::<Pod>().changes();
        let running = informers.clone();
        let task = tokio::spawn(async move { running.run().await });

        let mut seen = Vec::new();
        let mut applied_b = None;
        while seen.last().map(String::as_str) != Some("delete a") {
            seen.push(match next(&mut events).await {
                Event::Init => "init".to_owned(),
                Event::InitApply(p) => format!("list {}", p.name_any()),
                Event::InitDone => "listed".to_owned(),
                Event::Apply(p) => {
                    applied_b = Some(p.clone());
                    format!("apply {}", p.name_any())
                }
                Event::Delete(p) => format!("delete {}", p.name_any()),
            });
        }
        assert_eq!(seen, ["init", "list a", "listed", "apply b", "delete a"]);
        let applied_b = applied_b.expect("b applied");
        let triggers: Vec<String> = [
            next(&mut changes).await,
            next(&mut changes).await,
            next(&mut changes).await,
        ]
        .iter()
        .map(|p| p.name_any())
        .collect();
        assert_eq!(triggers, ["a", "b", "a"], "deletions are passed on too");
        store.wait_until_ready().await.expect("the cache fills");
        let cached: Vec<String> = store.state().iter().map(|p| p.name_any()).collect();
        assert_eq!(cached, ["b"]);
        assert!(store.state()[0].metadata.managed_fields.is_none());
        assert!(
            Arc::ptr_eq(&store.state()[0], &applied_b),
            "subscribers hold the cache's own copy"
        );
        assert_eq!(
            api.lists.load(Ordering::SeqCst),
            1,
            "one list for three readers"
        );
        assert_eq!(
            api.watches.load(Ordering::SeqCst),
            1,
            "one watch for three readers"
        );
        task.abort();
    }

    #[tokio::test]
    async fn subscribers_hold_the_caches_own_copies_after_a_relist_too() {
        let writer = Writer::<Pod>::default();
        let informer = Informer {
            store: writer.as_reader(),
            keep_store: Arc::new(AtomicBool::new(true)),
            started: Arc::default(),
            subscribers: Arc::default(),
        };
        let mut events = informer.events();
        let pod =
            |name: &str| -> Pod { serde_json::from_value(pod_json(name, "1")).expect("a pod") };
        let mut outlet = Outlet {
            informer: informer.clone(),
            writer: Some(writer),
            listed: Vec::new(),
        };
        for event in [
            Event::Init,
            Event::InitApply(pod("a")),
            Event::InitApply(pod("b")),
            Event::InitDone,
            Event::Apply(pod("c")),
        ] {
            outlet.pass(event);
        }
        let cached = |p: &Arc<Pod>| {
            let key = ObjectRef::from_obj(p.as_ref());
            informer.store.get(&key).is_some_and(|c| Arc::ptr_eq(&c, p))
        };
        assert!(matches!(next(&mut events).await, Event::Init));
        for name in ["a", "b"] {
            let Event::InitApply(p) = next(&mut events).await else {
                panic!("{name} listed before the list is done");
            };
            assert_eq!(p.name_any(), name);
            assert!(cached(&p), "{name} is the cache's copy");
        }
        assert!(matches!(next(&mut events).await, Event::InitDone));
        let Event::Apply(c) = next(&mut events).await else {
            panic!("c applied");
        };
        assert!(cached(&c), "an applied object is the cache's copy");
    }

    #[tokio::test]
    async fn an_unserved_kind_counts_as_listed_and_empty() {
        let api = FakeApi::start().await;
        let informers = Arc::new(Informers::new(api.client()));
        let informer = informers.get::<ReplicationController>();
        let store = informer.store();
        let mut events = informer.events();
        let running = informers.clone();
        let task = tokio::spawn(async move { running.run().await });
        assert!(matches!(next(&mut events).await, Event::Init));
        assert!(matches!(next(&mut events).await, Event::InitDone));
        tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready())
            .await
            .expect("ready within 10 s")
            .expect("the cache is ready");
        assert!(store.state().is_empty());
        task.abort();
    }

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
