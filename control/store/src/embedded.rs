//! The embedded backend: every revision of every key in one redb file, so a single-machine
//! control plane needs no etcd and still gets etcd's revisions, history and watches.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use futures::StreamExt;
use redb::{Builder, Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use crate::{
    Event, EventKind, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream,
};

mod committer;

use committer::{Committer, Write};

/// (key, revision) -> record; a record is a put (value) or a tombstone.
const HISTORY: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("history");
/// key -> (create revision, mod revision) of its live value; absent once deleted.
const LATEST: TableDefinition<&str, (i64, i64)> = TableDefinition::new("latest");
/// revision -> the key written at that revision, for watch replay.
const LOG: TableDefinition<i64, &str> = TableDefinition::new("log");
/// `revision` and `compacted`.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

const FILE: &str = "store.redb";
/// How many events a live watcher may trail the writers by before it is cut off.
const WATCH_BUFFER: usize = 16_384;

const PUT: u8 = 0;
const TOMBSTONE: u8 = 1;

/// redb's page cache when the caller does not choose: the branch pages and a batch's writes.
/// Lists, gets and watches are served by the API server's watch cache, so the store reads
/// little besides the one record each write checks; pages beyond the cache are read through
/// the kernel's page cache. redb's own default (1 GiB) would let the cache alone grow past
/// the control plane's memory goal, and 64 MiB filled up at 50,000 pods: with 16 MiB,
/// `control` held 621 MiB instead of 672 MiB after the scheduler bench's 5,000 nodes and
/// 50,000 pods, at 1.35 ms of CPU per pod instead of 1.46 ms.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

/// How the embedded store is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedbOptions {
    /// Bytes of redb's page cache (read cache and write buffer together).
    pub cache_bytes: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// The embedded store: one redb file under a data directory.
///
/// Writes go through one commit thread: the writes that queue while a transaction is being
/// made durable share the next transaction and its one fsync, and each is acknowledged only
/// after that fsync.
#[derive(Clone, Debug)]
pub struct RedbStore {
    inner: Arc<Inner>,
    // Dropped with the last handle, which stops the commit thread and closes the file.
    committer: Arc<Committer>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    path: PathBuf,
    // Held by each commit, by compaction and by snapshots, so a snapshot never sees a
    // commit half done.
    write: Mutex<()>,
    /// Shared, not cloned per receiver: every watcher sees every event, and most drop it
    /// for not matching their prefix.
    events: broadcast::Sender<Arc<Event>>,
    /// Write transactions made durable by the commit thread (one fsync each).
    commits: AtomicU64,
    /// The revision of the last durable commit, so asking for it (every consistent read
    /// does) costs no read transaction.
    revision: AtomicI64,
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// A record as stored in `HISTORY`.
struct Record {
    tombstone: bool,
    create_revision: Revision,
    value: Vec<u8>,
}

impl Record {
    fn encode(tombstone: bool, create_revision: Revision, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + value.len());
        out.push(if tombstone { TOMBSTONE } else { PUT });
        out.extend_from_slice(&create_revision.to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() < 9 {
            return Err(StoreError::Backend("corrupt history record".into()));
        }
        let mut rev = [0u8; 8];
        rev.copy_from_slice(&bytes[1..9]);
        Ok(Self {
            tombstone: bytes[0] == TOMBSTONE,
            create_revision: i64::from_le_bytes(rev),
            value: bytes[9..].to_vec(),
        })
    }

    fn into_kv(self, key: &str, mod_revision: Revision) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value,
            create_revision: self.create_revision,
            mod_revision,
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// When the directory or file cannot be created or is not a skiff store.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &RedbOptions::default())
    }

    /// Opens (or creates) the store in `dir` with `options`.
    ///
    /// # Errors
    /// When the directory or file cannot be created or is not a skiff store.
    pub fn open_with(dir: &Path, options: &RedbOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let path = dir.join(FILE);
        let db = Builder::new()
            .set_cache_size(options.cache_bytes)
            .create(&path)
            .map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        let revision = {
            txn.open_table(HISTORY).map_err(backend)?;
            txn.open_table(LATEST).map_err(backend)?;
            txn.open_table(LOG).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            for name in ["revision", "compacted"] {
                if meta.get(name).map_err(backend)?.is_none() {
                    meta.insert(name, 0).map_err(backend)?;
                }
            }
            meta.get("revision")
                .map_err(backend)?
                .map_or(0, |v| v.value())
        };
        txn.commit().map_err(backend)?;
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let inner = Arc::new(Inner {
            db,
            path,
            write: Mutex::new(()),
            events,
            commits: AtomicU64::new(0),
            revision: AtomicI64::new(revision),
        });
        let committer = Arc::new(Committer::start(Arc::clone(&inner))?);
        Ok(Self { inner, committer })
    }

    /// Creates a store in `dir` from a [`Store::snapshot`] taken earlier.
    ///
    /// # Errors
    /// When `dir` already holds a store, or the snapshot is not a skiff store.
    pub fn restore(snapshot: &[u8], dir: &Path) -> Result<Self, StoreError> {
        Self::restore_with(snapshot, dir, &RedbOptions::default())
    }

    /// [`RedbStore::restore`], then opens the store with `options`.
    ///
    /// # Errors
    /// When `dir` already holds a store, or the snapshot is not a skiff store.
    pub fn restore_with(
        snapshot: &[u8],
        dir: &Path,
        options: &RedbOptions,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let path = dir.join(FILE);
        if path.exists() {
            return Err(StoreError::Backend(format!(
                "{} already holds a store; restore into an empty directory",
                dir.display()
            )));
        }
        let partial = dir.join(format!("{FILE}.restoring"));
        std::fs::write(&partial, snapshot).map_err(backend)?;
        // Check it really is a store before it takes the real name.
        {
            let db = Database::open(&partial).map_err(backend)?;
            let txn = db.begin_read().map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
        }
        std::fs::rename(&partial, &path).map_err(backend)?;
        Self::open_with(dir, options)
    }

    /// How many write transactions the commit thread has made durable: with writers in
    /// parallel, fewer than the writes, as several share one transaction and its fsync.
    #[must_use]
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(backend)?
    }
}

impl Inner {
    fn meta(txn: &ReadTransaction, name: &str) -> Result<i64, StoreError> {
        let meta = txn.open_table(META).map_err(backend)?;
        Ok(meta.get(name).map_err(backend)?.map_or(0, |v| v.value()))
    }

    fn check_revision(txn: &ReadTransaction, revision: Revision) -> Result<Revision, StoreError> {
        let current = Self::meta(txn, "revision")?;
        if revision == 0 {
            return Ok(current);
        }
        if revision > current {
            return Err(StoreError::FutureRevision(revision));
        }
        let compacted = Self::meta(txn, "compacted")?;
        if revision < compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted,
            });
        }
        Ok(revision)
    }

    /// The newest record of `key` at or below `revision`.
    fn at(
        txn: &ReadTransaction,
        key: &str,
        revision: Revision,
    ) -> Result<Option<(Revision, Record)>, StoreError> {
        let history = txn.open_table(HISTORY).map_err(backend)?;
        let last = history
            .range((key, i64::MIN)..=(key, revision))
            .map_err(backend)?
            .next_back();
        match last {
            Some(entry) => {
                let (k, v) = entry.map_err(backend)?;
                Ok(Some((k.value().1, Record::decode(v.value())?)))
            }
            None => Ok(None),
        }
    }

    fn get(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let revision = Self::check_revision(&txn, revision)?;
        Ok(Self::at(&txn, key, revision)?
            .filter(|(_, r)| !r.tombstone)
            .map(|(rev, r)| r.into_kv(key, rev)))
    }

    fn list(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let current = Self::meta(&txn, "revision")?;
        let revision = Self::check_revision(&txn, opts.revision)?;
        let start = match &opts.start_after {
            Some(after) if after.as_str() >= prefix => after.as_str(),
            _ => prefix,
        };
        let mut items = Vec::new();
        let mut more = false;
        let mut push = |kv: KeyValue| {
            if opts.limit > 0 && items.len() == opts.limit {
                more = true;
                return false;
            }
            items.push(kv);
            true
        };
        let skip = |key: &str| opts.start_after.as_deref().is_some_and(|a| key <= a);
        if revision == current {
            let latest = txn.open_table(LATEST).map_err(backend)?;
            let history = txn.open_table(HISTORY).map_err(backend)?;
            for entry in latest.range(start..).map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let key = k.value();
                if !key.starts_with(prefix) {
                    break;
                }
                if skip(key) {
                    continue;
                }
                let (_, mod_rev) = v.value();
                let record = history
                    .get((key, mod_rev))
                    .map_err(backend)?
                    .ok_or_else(|| StoreError::Backend(format!("history of {key} is missing")))?;
                if !push(Record::decode(record.value())?.into_kv(key, mod_rev)) {
                    break;
                }
            }
        } else {
            let history = txn.open_table(HISTORY).map_err(backend)?;
            // Walk keys in order; for each, the newest record at or below `revision`.
            let mut pending: Option<(String, Revision, Vec<u8>)> = None;
            let mut flush = |p: Option<(String, Revision, Vec<u8>)>| -> Result<bool, StoreError> {
                let Some((key, rev, bytes)) = p else {
                    return Ok(true);
                };
                let record = Record::decode(&bytes)?;
                if record.tombstone || skip(&key) {
                    return Ok(true);
                }
                Ok(push(record.into_kv(&key, rev)))
            };
            for entry in history.range((start, i64::MIN)..).map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let (key, rev) = k.value();
                if !key.starts_with(prefix) {
                    break;
                }
                if pending.as_ref().is_some_and(|(p, _, _)| p != key) && !flush(pending.take())? {
                    break;
                }
                if rev <= revision {
                    pending = Some((key.to_owned(), rev, v.value().to_vec()));
                }
            }
            flush(pending.take())?;
        }
        Ok(ListResult {
            items,
            revision,
            more,
        })
    }

    /// The events under `prefix` after `after`, from history, and the revision read up to.
    fn replay(&self, prefix: &str, after: Revision) -> Result<(Vec<Event>, Revision), StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let current = Self::meta(&txn, "revision")?;
        let compacted = Self::meta(&txn, "compacted")?;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let log = txn.open_table(LOG).map_err(backend)?;
        let mut events = Vec::new();
        for entry in log.range(after + 1..=current).map_err(backend)? {
            let (rev, key) = entry.map_err(backend)?;
            let (rev, key) = (rev.value(), key.value());
            if !key.starts_with(prefix) {
                continue;
            }
            let (_, record) = Self::at(&txn, key, rev)?
                .ok_or_else(|| StoreError::Backend(format!("history of {key} is missing")))?;
            let prev = Self::at(&txn, key, rev - 1)?
                .filter(|(_, r)| !r.tombstone)
                .map(|(prev_rev, r)| r.into_kv(key, prev_rev));
            events.push(if record.tombstone {
                let last = prev.clone().ok_or_else(|| {
                    StoreError::Backend(format!("deletion of {key} has no prior value"))
                })?;
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        mod_revision: rev,
                        ..last
                    },
                    prev,
                }
            } else {
                Event {
                    kind: EventKind::Put,
                    kv: record.into_kv(key, rev),
                    prev,
                }
            });
        }
        Ok((events, current))
    }

    fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let _guard = self.write.lock().map_err(backend)?;
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let current = meta
                .get("revision")
                .map_err(backend)?
                .map_or(0, |v| v.value());
            let compacted = meta
                .get("compacted")
                .map_err(backend)?
                .map_or(0, |v| v.value());
            if revision > current {
                return Err(StoreError::FutureRevision(revision));
            }
            if revision <= compacted {
                return Ok(());
            }
            meta.insert("compacted", revision).map_err(backend)?;
        }
        {
            let mut history = txn.open_table(HISTORY).map_err(backend)?;
            // Per key, keep every record above `revision` and the newest at or below it,
            // unless that one is a tombstone (the key is simply absent there).
            let mut doomed: Vec<(String, i64)> = Vec::new();
            let mut below: Vec<(String, i64, bool)> = Vec::new();
            let mut settle = |below: &mut Vec<(String, i64, bool)>| {
                if let Some((key, rev, true)) = below.pop() {
                    doomed.push((key, rev));
                }
                doomed.extend(below.drain(..).map(|(k, r, _)| (k, r)));
            };
            for entry in history.iter().map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let (key, rev) = k.value();
                if below.last().is_some_and(|(p, _, _)| p != key) {
                    settle(&mut below);
                }
                if rev <= revision {
                    below.push((key.to_owned(), rev, v.value().first() == Some(&TOMBSTONE)));
                }
            }
            settle(&mut below);
            for (key, rev) in doomed {
                history.remove((key.as_str(), rev)).map_err(backend)?;
            }
            let mut log = txn.open_table(LOG).map_err(backend)?;
            log.retain_in(..=revision, |_, _| false).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.revision.load(Ordering::Acquire))
    }

    async fn get(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner| inner.get(&key, revision)).await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |inner| inner.list(&prefix, &opts)).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let key = key.to_owned();
        self.committer.submit(Write::Create { key, value }).await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let key = key.to_owned();
        self.committer
            .submit(Write::Update {
                key,
                value,
                expected,
            })
            .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        let key = key.to_owned();
        self.committer.submit(Write::Delete { key, expected }).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before reading history so no event falls between the two; live events
        // the replay already covered are skipped by revision.
        let live = self.inner.events.subscribe();
        let owned = prefix.to_owned();
        let (replayed, upto) = self
            .blocking(move |inner| inner.replay(&owned, after))
            .await?;
        let seen = upto.max(after);
        let prefix = prefix.to_owned();
        let history = futures::stream::iter(replayed.into_iter().map(Ok));
        let tail = futures::stream::unfold(Some(live), move |rx| {
            let prefix = prefix.clone();
            async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok(event) => {
                            if event.kv.mod_revision > seen && event.kv.key.starts_with(&prefix) {
                                return Some((Ok(Arc::unwrap_or_clone(event)), Some(rx)));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let err = StoreError::Backend(format!(
                                "watch fell {n} events behind; re-list and watch again"
                            ));
                            return Some((Err(err), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(history.chain(tail).boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.blocking(move |inner| inner.compact(revision)).await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.blocking(|inner| {
            let txn = inner.db.begin_read().map_err(backend)?;
            Inner::meta(&txn, "compacted")
        })
        .await
    }

    async fn snapshot(&self) -> Result<Vec<u8>, StoreError> {
        self.blocking(|inner| {
            // With no write in flight the committed file is the consistent whole.
            let _guard = inner.write.lock().map_err(backend)?;
            std::fs::read(&inner.path).map_err(backend)
        })
        .await
    }
}
