//! The claims, `PersistentVolumes` and `StorageClasses` the `VolumeBinding` filter reads, kept
//! from watch events; a re-list replaces a table whole once it is complete, so a decision
//! never sees a half-filled one.

use std::{collections::HashMap, sync::Arc};

use k8s_openapi::api::{
    core::v1::{PersistentVolume, PersistentVolumeClaim},
    storage::v1::StorageClass,
};
use kube::{ResourceExt, runtime::watcher::Event};

/// Objects of one kind by key, and the table a re-list is filling.
#[derive(Debug)]
pub struct Table<K> {
    items: HashMap<String, Arc<K>>,
    relist: Option<HashMap<String, Arc<K>>>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Self {
            items: HashMap::new(),
            relist: None,
        }
    }
}

/// `namespace/name` for namespaced objects, `name` for the others.
fn key<K: ResourceExt>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

impl<K: ResourceExt> Table<K> {
    /// Applies a watch event; returns whether the table may have changed.
    pub fn apply(&mut self, event: Event<Arc<K>>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            Event::InitApply(obj) => {
                match self.relist.as_mut() {
                    Some(fresh) => fresh.insert(key(obj.as_ref()), obj),
                    None => self.items.insert(key(obj.as_ref()), obj),
                };
                false
            }
            Event::InitDone => {
                if let Some(fresh) = self.relist.take() {
                    self.items = fresh;
                }
                true
            }
            Event::Apply(obj) => {
                self.items.insert(key(obj.as_ref()), obj);
                true
            }
            Event::Delete(obj) => self.items.remove(&key(obj.as_ref())).is_some(),
        }
    }

    /// The object with this key.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Arc<K>> {
        self.items.get(key)
    }

    /// Every object.
    pub fn values(&self) -> impl Iterator<Item = &Arc<K>> {
        self.items.values()
    }
}

/// The storage objects scheduling looks at.
#[derive(Debug, Default)]
pub struct Storage {
    /// Claims by `namespace/name`.
    pub claims: Table<PersistentVolumeClaim>,
    /// Volumes by name.
    pub volumes: Table<PersistentVolume>,
    /// `StorageClasses` by name.
    pub classes: Table<StorageClass>,
}

impl Storage {
    /// The claim `name` in `namespace`.
    #[must_use]
    pub fn claim(&self, namespace: &str, name: &str) -> Option<&Arc<PersistentVolumeClaim>> {
        self.claims.get(&format!("{namespace}/{name}"))
    }
}
