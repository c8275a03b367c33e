//! The garbage collector: deletes objects whose owners are all gone, and carries out
//! Foreground (dependents first, then the owner) and Orphan (dependents released, owner
//! deleted) propagation for owners being deleted.
//!
//! It keeps an ownership graph ([`graph`]) from the metadata of every served kind, read
//! through the process's informers; every change queues the object and its owners
//! (deletions also queue the dependents), and a worker decides about each queued object
//! ([`plan`]), asking the API server before it believes an owner the graph does not hold
//! is gone.

pub mod graph;
pub mod plan;

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
    core::DynamicObject,
    runtime::watcher::Event,
};
use skiff_control_runtime::Informers;
use tokio::sync::Notify;

use self::{
    graph::{Graph, Item},
    plan::{FOREGROUND, Owner, Step},
};
use crate::kinds::{self, Kind};

/// How often every object with owners is looked at again, events or not.
const RESYNC: Duration = Duration::from_mins(1);
/// Pause before a failed step is retried.
const RETRY: Duration = Duration::from_millis(200);

struct Gc {
    client: Client,
    kinds: Vec<Kind>,
    graph: Mutex<Graph>,
    wake: Notify,
}

impl Gc {
    fn graph(&self) -> MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn api(&self, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if kind.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &kind.resource)
            }
            _ => Api::all_with(self.client.clone(), &kind.resource),
        }
    }
}

/// The garbage collector over the process's informers (one per served kind); runs until
/// dropped.
pub fn start(informers: &Informers) -> impl Future<Output = ()> + Send + use<> {
    let kinds = kinds::all();
    let streams: Vec<_> = kinds.iter().map(|k| (k.metadata)(informers)).collect();
    let gc = Arc::new(Gc {
        client: informers.client(),
        kinds,
        graph: Mutex::default(),
        wake: Notify::new(),
    });
    async move {
        let feeds =
            futures::future::join_all(streams.into_iter().enumerate().map(|(kind, mut events)| {
                let gc = gc.clone();
                async move {
                    while let Some(event) = events.next().await {
                        let mut graph = gc.graph();
                        match event {
                            Event::Apply(meta) | Event::InitApply(meta) => {
                                if let Some(uid) = meta.uid.as_deref() {
                                    graph.upsert(uid, Item::new(kind, &meta));
                                }
                            }
                            Event::Delete(meta) => {
                                if let Some(uid) = meta.uid.as_deref() {
                                    graph.remove(uid);
                                }
                            }
                            Event::Init | Event::InitDone => {}
                        }
                        drop(graph);
                        gc.wake.notify_one();
                    }
                }
            }));
        let resync = async {
            loop {
                tokio::time::sleep(RESYNC).await;
                gc.graph().enqueue_all();
                gc.wake.notify_one();
            }
        };
        let work = async {
            loop {
                let next = gc.graph().pop();
                match next {
                    Some(uid) => {
                        if let Err(err) = process(&gc, &uid).await {
                            tracing::debug!(%uid, ?err, "garbage collection step failed; retrying");
                            tokio::time::sleep(RETRY).await;
                            gc.graph().enqueue(&uid);
                        }
                    }
                    None => gc.wake.notified().await,
                }
            }
        };
        tokio::join!(feeds, resync, work);
    }
}

/// What is known of `owner` of a dependent in `namespace`: the graph first, the API server
/// when the graph does not hold it (it may not have been seen yet).
async fn resolve(
    gc: &Gc,
    owner: &OwnerReference,
    namespace: Option<&str>,
) -> Result<Owner, kube::Error> {
    if let Some(item) = gc.graph().items.get(&owner.uid) {
        return Ok(if item.name == owner.name {
            Owner::Alive {
                foreground: item.deleting && item.has_finalizer(FOREGROUND),
            }
        } else {
            Owner::Gone
        });
    }
    let Some(kind) = kinds::find(&owner.api_version, &owner.kind) else {
        // A kind this server does not serve cannot exist.
        return Ok(Owner::Gone);
    };
    let found = match gc.api(&kind, namespace).get_opt(&owner.name).await {
        Ok(found) => found,
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(err) => return Err(err),
    };
    Ok(match found {
        Some(o) if o.metadata.uid.as_deref() == Some(owner.uid.as_str()) => {
            let item = Item::new(0, &o.metadata);
            Owner::Alive {
                foreground: item.deleting && item.has_finalizer(FOREGROUND),
            }
        }
        _ => Owner::Gone,
    })
}

async fn process(gc: &Gc, uid: &str) -> Result<(), kube::Error> {
    let (item, dependents) = {
        let graph = gc.graph();
        let Some(item) = graph.items.get(uid).cloned() else {
            return Ok(());
        };
        (item, graph.dependents_of(uid))
    };
    if let Some(steps) = plan::owner_steps(uid, &item, &dependents) {
        for step in steps {
            apply(gc, step).await?;
        }
        return Ok(());
    }
    if !plan::is_live_dependent(&item) {
        return Ok(());
    }
    let mut owners = Vec::with_capacity(item.owners.len());
    for owner in &item.owners {
        owners.push(resolve(gc, owner, item.namespace.as_deref()).await?);
    }
    if let Some(step) = plan::dependent_step(&item, &owners) {
        if matches!(step, Step::Delete(..)) {
            tracing::debug!(name = %item.name, kind = %gc.kinds[item.kind].resource.kind, "collecting an object whose owners are gone or going");
        }
        apply(gc, step).await?;
    }
    Ok(())
}

async fn apply(gc: &Gc, step: Step) -> Result<(), kube::Error> {
    let (target, result) = match step {
        Step::Delete(target, policy) => {
            let params = DeleteParams {
                propagation_policy: Some(policy),
                ..DeleteParams::default()
            };
            let api = gc.api(&gc.kinds[target.kind], target.namespace.as_deref());
            let result = api.delete(&target.name, &params).await.map(|_| ());
            (target, result)
        }
        Step::SetFinalizers(target, finalizers) => {
            let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
            let result = patch_meta(gc, &target, &patch).await;
            (target, result)
        }
        Step::SetOwners(target, owners) => {
            let patch = serde_json::json!({"metadata": {"ownerReferences": owners}});
            let result = patch_meta(gc, &target, &patch).await;
            (target, result)
        }
    };
    match result {
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::debug!(name = %target.name, "already gone");
            Ok(())
        }
        other => other,
    }
}

async fn patch_meta(gc: &Gc, target: &Item, patch: &serde_json::Value) -> Result<(), kube::Error> {
    gc.api(&gc.kinds[target.kind], target.namespace.as_deref())
        .patch(&target.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
}
