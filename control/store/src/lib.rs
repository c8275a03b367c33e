//! skiff-store is the control plane's memory: a key-value [`Store`] with etcd's semantics
//! (one global revision that becomes every object's `resourceVersion`, compare-and-swap
//! writes on an object's mod revision, watches that resume from a revision, compaction),
//! with an embedded single-file backend and an etcd backend behind the same trait. Only the
//! API server talks to it.

#![forbid(unsafe_code)]

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

mod embedded;
mod etcd;

pub use embedded::{DEFAULT_CACHE_BYTES, RedbOptions, RedbStore};
pub use etcd::EtcdStore;

/// A store revision: etcd's `int64` revision, which the API server shows as `resourceVersion`.
pub type Revision = i64;

/// One stored key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, e.g. `/registry/pods/default/web-0`.
    pub key: String,
    /// The stored bytes (the API server stores JSON).
    pub value: Vec<u8>,
    /// The revision at which this key was last created.
    pub create_revision: Revision,
    /// The revision of the last write to this key; for a deletion, the deletion's revision.
    pub mod_revision: Revision,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Deleted; the event's value is the last value before deletion.
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// For a put, the new value; for a delete, the last value with `mod_revision` set to
    /// the deletion's revision.
    pub kv: KeyValue,
    /// The value before this change, if there was one.
    pub prev: Option<KeyValue>,
}

/// Options for [`Store::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Read at this revision; 0 means the current one.
    pub revision: Revision,
    /// Start strictly after this key (for `continue` paging).
    pub start_after: Option<String>,
    /// At most this many items; 0 means no limit.
    pub limit: usize,
}

/// The answer of [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// Items in key order.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: Revision,
    /// Whether more items follow the last one returned.
    pub more: bool,
}

/// A stream of watch events in revision order.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send>>;

/// Errors every backend reports the same way.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` found the key already present.
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// The key does not exist (at the requested revision).
    #[error("key {0} not found")]
    NotFound(String),
    /// A compare-and-swap saw another mod revision than expected.
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        /// The key written.
        key: String,
        /// The mod revision the caller expected.
        expected: Revision,
        /// The key's current mod revision.
        actual: Revision,
    },
    /// The revision asked for has been compacted away.
    #[error("revision {requested} is compacted (oldest kept {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The newest compacted revision.
        compacted: Revision,
    },
    /// The revision asked for is newer than the store's current one.
    #[error("revision {0} is in the future")]
    FutureRevision(Revision),
    /// The backend does not support this operation.
    #[error("{0} is not supported by this backend")]
    Unsupported(&'static str),
    /// The backend failed (disk, network, corruption).
    #[error("storage backend: {0}")]
    Backend(String),
}

/// A key-value store with etcd's semantics.
///
/// Every write advances one global revision by one. Keys are plain UTF-8 strings; prefix
/// reads use byte order.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The newest revision.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// The key's value at `revision` (0: current), or `None` if absent there.
    async fn get(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>, StoreError>;

    /// Keys starting with `prefix`, in key order.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError>;

    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if present.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError>;

    /// Replaces `key` if its mod revision is `expected`; returns the new key value.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError>;

    /// Deletes `key` (if `expected` is set, only at that mod revision). Returns the last
    /// value with `mod_revision` set to the deletion's revision.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError>;

    /// Events for keys under `prefix` with a revision greater than `after`, in order, and
    /// then live. Fails with [`StoreError::Compacted`] if `after` is below the compacted
    /// revision (events it needs are gone). A watcher that falls too far behind gets a
    /// [`StoreError::Backend`] item and the stream ends: re-list and watch again.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// Forgets history older than `revision`: reads at revisions below it, and watches
    /// that need events at or below it, then fail with [`StoreError::Compacted`].
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The revision of the last compaction (0 if none).
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;

    /// A consistent copy of the whole store in the backend's own format, for backups.
    async fn snapshot(&self) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Unsupported("snapshot"))
    }
}
