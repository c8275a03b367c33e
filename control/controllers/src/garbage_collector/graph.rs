//! The ownership graph the garbage collector keeps from every kind's metadata: objects by
//! uid, who depends on whom, and the queue of uids to look at.

use std::collections::{HashMap, HashSet, VecDeque};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// One object in the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Index into [`crate::kinds::all`].
    pub kind: usize,
    /// Its namespace.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its owner references.
    pub owners: Vec<OwnerReference>,
    /// Being deleted.
    pub deleting: bool,
    /// Its finalizers.
    pub finalizers: Vec<String>,
}

impl Item {
    /// The graph's view of an object of `kind` with `meta`.
    #[must_use]
    pub fn new(kind: usize, meta: &ObjectMeta) -> Self {
        Self {
            kind,
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
        }
    }

    /// Whether it carries `finalizer`.
    #[must_use]
    pub fn has_finalizer(&self, finalizer: &str) -> bool {
        self.finalizers.iter().any(|f| f == finalizer)
    }
}

/// Objects, their dependents and the work queue.
#[derive(Debug, Default)]
pub struct Graph {
    /// Every object, by uid.
    pub items: HashMap<String, Item>,
    dependents: HashMap<String, HashSet<String>>,
    queue: VecDeque<String>,
    queued: HashSet<String>,
}

impl Graph {
    /// Queues `uid` (once).
    pub fn enqueue(&mut self, uid: &str) {
        if self.queued.insert(uid.to_owned()) {
            self.queue.push_back(uid.to_owned());
        }
    }

    /// The next uid to look at.
    pub fn pop(&mut self) -> Option<String> {
        let uid = self.queue.pop_front()?;
        self.queued.remove(&uid);
        Some(uid)
    }

    /// An object appeared or changed: it and its owners (old and new) are queued.
    pub fn upsert(&mut self, uid: &str, item: Item) {
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

    /// An object went away: its dependents are queued.
    pub fn remove(&mut self, uid: &str) {
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

    /// The objects that name `uid` as an owner.
    #[must_use]
    pub fn dependents_of(&self, uid: &str) -> Vec<Item> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.items.get(d).cloned())
            .collect()
    }

    /// Queues every object with owners or being deleted (the periodic resync).
    pub fn enqueue_all(&mut self) {
        let all: Vec<String> = self
            .items
            .iter()
            .filter(|(_, i)| !i.owners.is_empty() || i.deleting)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in all {
            self.enqueue(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned_by(name: &str, owners: &[&str]) -> Item {
        Item {
            kind: 0,
            namespace: Some("default".into()),
            name: name.into(),
            owners: owners
                .iter()
                .map(|uid| OwnerReference {
                    uid: (*uid).into(),
                    ..OwnerReference::default()
                })
                .collect(),
            deleting: false,
            finalizers: Vec::new(),
        }
    }

    fn drain(g: &mut Graph) -> Vec<String> {
        std::iter::from_fn(|| g.pop()).collect()
    }

    #[test]
    fn a_dependent_queues_itself_and_its_owner_once() {
        let mut g = Graph::default();
        g.upsert("rs", owned_by("rs", &[]));
        assert!(drain(&mut g).is_empty(), "an orphan alive is nothing to do");
        g.upsert("pod", owned_by("pod", &["rs"]));
        g.upsert("pod", owned_by("pod", &["rs"]));
        assert_eq!(drain(&mut g), ["rs", "pod"]);
        assert_eq!(g.dependents_of("rs"), [owned_by("pod", &["rs"])]);
    }

    #[test]
    fn an_owner_going_away_queues_its_dependents() {
        let mut g = Graph::default();
        g.upsert("rs", owned_by("rs", &[]));
        g.upsert("pod", owned_by("pod", &["rs"]));
        drain(&mut g);
        g.remove("rs");
        assert_eq!(drain(&mut g), ["pod"]);
        g.upsert("pod", owned_by("pod", &[]));
        assert!(g.dependents_of("rs").is_empty(), "released");
    }
}
