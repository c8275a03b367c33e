//! The garbage collector: deletes objects whose owners are all gone, and carries out
//! Foreground (dependents first, then the owner) and Orphan (dependents released, owner
//! deleted) propagation for owners being deleted.
//!
//! It keeps an ownership graph of every served kind from metadata watches; every change
//! queues the object and its owners (deletions also queue the dependents), and a worker
//! checks each queued object against the graph, asking the API server before it believes
//! an owner is gone.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PropagationPolicy},
    core::{DynamicObject, ObjectMeta},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::Notify;

use crate::kinds::{self, Kind};

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

/// One object in the graph.
#[derive(Clone, Debug)]
struct Item {
    kind: usize,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

#[derive(Debug, Default)]
struct Graph {
    items: HashMap<String, Item>,
    dependents: HashMap<String, HashSet<String>>,
    queue: VecDeque<String>,
    queued: HashSet<String>,
}

impl Graph {
    fn enqueue(&mut self, uid: &str) {
        if self.queued.insert(uid.to_owned()) {
            self.queue.push_back(uid.to_owned());
        }
    }

    fn upsert(&mut self, uid: &str, item: Item) {
        self.unlink(uid);
        for owner in &item.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.to_owned());
            self.enqueue(&owner.uid);
        }
        let interesting = !item.owners.is_empty() || item.deleting;
        self.items.insert(uid.to_owned(), item);
        if interesting {
            self.enqueue(uid);
        }
    }

    fn remove(&mut self, uid: &str) {
        self.unlink(uid);
        self.items.remove(uid);
        let dependents: Vec<String> = self
            .dependents
            .get(uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for d in dependents {
            self.enqueue(&d);
        }
    }

    fn unlink(&mut self, uid: &str) {
        if let Some(old) = self.items.get(uid) {
            for owner in old.owners.clone() {
                if let Some(set) = self.dependents.get_mut(&owner.uid) {
                    set.remove(uid);
                    if set.is_empty() {
                        self.dependents.remove(&owner.uid);
                    }
                }
                self.enqueue(&owner.uid);
            }
        }
    }
}

struct Gc {
    client: Client,
    kinds: Vec<Kind>,
    graph: Mutex<Graph>,
    wake: Notify,
}

impl Gc {
    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn api(&self, kind: usize, namespace: Option<&str>) -> Api<DynamicObject> {
        let k = &self.kinds[kind];
        match namespace {
            Some(ns) if k.namespaced => Api::namespaced_with(self.client.clone(), ns, &k.resource),
            _ => Api::all_with(self.client.clone(), &k.resource),
        }
    }
}

fn item(kind: usize, meta: &ObjectMeta) -> Item {
    Item {
        kind,
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        owners: meta.owner_references.clone().unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
    }
}

async fn watch_kind(gc: Arc<Gc>, kind: usize) {
    let api: Api<DynamicObject> = Api::all_with(gc.client.clone(), &gc.kinds[kind].resource);
    let mut events =
        std::pin::pin!(watcher(api, watcher::Config::default().any_semantic()).default_backoff());
    while let Some(event) = events.next().await {
        let Ok(event) = event else {
            continue;
        };
        let mut graph = gc.graph();
        match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                if let Some(uid) = obj.metadata.uid.clone() {
                    graph.upsert(&uid, item(kind, &obj.metadata));
                }
            }
            watcher::Event::Delete(obj) => {
                if let Some(uid) = obj.metadata.uid.as_deref() {
                    graph.remove(uid);
                }
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
        drop(graph);
        gc.wake.notify_one();
    }
}

/// Runs the garbage collector until dropped.
pub async fn run(client: Client) {
    let gc = Arc::new(Gc {
        client,
        kinds: kinds::all(),
        graph: Mutex::new(Graph::default()),
        wake: Notify::new(),
    });
    let watches = futures::future::join_all((0..gc.kinds.len()).map(|k| watch_kind(gc.clone(), k)));
    let resync = async {
        loop {
            tokio::time::sleep(Duration::from_mins(1)).await;
            let mut graph = gc.graph();
            let all: Vec<String> = graph
                .items
                .iter()
                .filter(|(_, i)| !i.owners.is_empty() || i.deleting)
                .map(|(uid, _)| uid.clone())
                .collect();
            for uid in all {
                graph.enqueue(&uid);
            }
            drop(graph);
            gc.wake.notify_one();
        }
    };
    let work = async {
        loop {
            let next = {
                let mut graph = gc.graph();
                let next = graph.queue.pop_front();
                if let Some(uid) = &next {
                    graph.queued.remove(uid);
                }
                next
            };
            match next {
                Some(uid) => {
                    if let Err(err) = process(&gc, &uid).await {
                        tracing::debug!(%uid, ?err, "garbage collection step failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        gc.graph().enqueue(&uid);
                    }
                }
                None => gc.wake.notified().await,
            }
        }
    };
    tokio::join!(watches, resync, work);
}

/// Whether the owner `owner` of a dependent in `namespace` exists (with that uid).
async fn owner_exists(
    gc: &Gc,
    owner: &OwnerReference,
    namespace: Option<&str>,
) -> Result<bool, kube::Error> {
    if let Some(item) = gc.graph().items.get(&owner.uid) {
        return Ok(item.name == owner.name);
    }
    let Some(kind) = kinds::find(&owner.api_version, &owner.kind) else {
        // A kind this server does not serve cannot exist.
        return Ok(false);
    };
    let api = match namespace {
        Some(ns) if kind.namespaced => {
            Api::<DynamicObject>::namespaced_with(gc.client.clone(), ns, &kind.resource)
        }
        _ => Api::<DynamicObject>::all_with(gc.client.clone(), &kind.resource),
    };
    Ok(api
        .get_opt(&owner.name)
        .await?
        .is_some_and(|o| o.metadata.uid.as_deref() == Some(owner.uid.as_str())))
}

async fn delete(gc: &Gc, item: &Item, policy: PropagationPolicy) -> Result<(), kube::Error> {
    let params = DeleteParams {
        propagation_policy: Some(policy),
        ..DeleteParams::default()
    };
    match gc
        .api(item.kind, item.namespace.as_deref())
        .delete(&item.name, &params)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(err) => Err(err),
    }
}

async fn set_finalizers(gc: &Gc, item: &Item, finalizers: Vec<String>) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
    match gc
        .api(item.kind, item.namespace.as_deref())
        .patch(&item.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(err) => Err(err),
    }
}

async fn set_owners(gc: &Gc, item: &Item, owners: Vec<OwnerReference>) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"metadata": {"ownerReferences": owners}});
    match gc
        .api(item.kind, item.namespace.as_deref())
        .patch(&item.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(err) => Err(err),
    }
}

async fn process(gc: &Gc, uid: &str) -> Result<(), kube::Error> {
    let (item, dependents) = {
        let graph = gc.graph();
        let Some(item) = graph.items.get(uid).cloned() else {
            return Ok(());
        };
        let dependents: Vec<(String, Item)> = graph
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| graph.items.get(d).map(|i| (d.clone(), i.clone())))
            .collect();
        (item, dependents)
    };
    // An owner being deleted in the foreground: dependents first.
    if item.deleting && item.finalizers.iter().any(|f| f == FOREGROUND) {
        let mut blocking = 0;
        for (_, dependent) in &dependents {
            let blocks = dependent
                .owners
                .iter()
                .any(|o| o.uid == uid && o.block_owner_deletion == Some(true));
            if blocks {
                blocking += 1;
            }
            if !dependent.deleting {
                delete(gc, dependent, PropagationPolicy::Foreground).await?;
            }
        }
        if blocking == 0 {
            let rest: Vec<String> = item
                .finalizers
                .iter()
                .filter(|f| *f != FOREGROUND)
                .cloned()
                .collect();
            set_finalizers(gc, &item, rest).await?;
        }
        return Ok(());
    }
    // An owner deleted with Orphan: release the dependents, then let it go.
    if item.deleting && item.finalizers.iter().any(|f| f == ORPHAN) {
        for (_, dependent) in &dependents {
            let owners: Vec<OwnerReference> = dependent
                .owners
                .iter()
                .filter(|o| o.uid != uid)
                .cloned()
                .collect();
            set_owners(gc, dependent, owners).await?;
        }
        let rest: Vec<String> = item
            .finalizers
            .iter()
            .filter(|f| *f != ORPHAN)
            .cloned()
            .collect();
        set_finalizers(gc, &item, rest).await?;
        return Ok(());
    }
    // A dependent: collect it when every owner is gone; drop references to owners that
    // are gone while others remain.
    if item.owners.is_empty() || item.deleting {
        return Ok(());
    }
    let mut alive = Vec::new();
    let mut foreground_owner = false;
    for owner in &item.owners {
        if owner_exists(gc, owner, item.namespace.as_deref()).await? {
            alive.push(owner.clone());
            let owner_item = gc.graph().items.get(&owner.uid).cloned();
            foreground_owner |= owner_item
                .is_some_and(|o| o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND));
        }
    }
    if alive.is_empty() {
        tracing::debug!(name = %item.name, kind = %gc.kinds[item.kind].resource.kind, "collecting an object whose owners are gone");
        delete(gc, &item, PropagationPolicy::Background).await?;
    } else if alive.len() < item.owners.len() {
        set_owners(gc, &item, alive).await?;
    } else if foreground_owner {
        delete(gc, &item, PropagationPolicy::Foreground).await?;
    }
    Ok(())
}
