//! Group commit: the writes that queue up while one transaction is being made durable share
//! the next redb transaction and its one fsync, each with its own revision and its own
//! compare-and-swap check.

use std::{
    sync::{Arc, atomic::Ordering, mpsc},
    thread::JoinHandle,
};

use redb::{ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use super::{HISTORY, Inner, LATEST, LOG, META, Record, backend};
use crate::{Event, EventKind, KeyValue, Revision, StoreError};

/// The most writes one transaction takes; the rest wait for the next one.
const MAX_BATCH: usize = 1_024;

/// One write as the caller asked for it.
#[derive(Debug)]
pub(super) enum Write {
    /// Create `key`; refused if it exists.
    Create { key: String, value: Vec<u8> },
    /// Replace `key` if its mod revision is `expected`.
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    /// Delete `key` (at `expected` if set).
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl Write {
    fn key(&self) -> &str {
        match self {
            Self::Create { key, .. } | Self::Update { key, .. } | Self::Delete { key, .. } => key,
        }
    }
}

/// What became of one write: its key value and the event to publish, or why it was refused.
type Outcome = Result<(KeyValue, Event), StoreError>;

/// A queued write and where its answer goes.
struct Pending {
    write: Write,
    reply: oneshot::Sender<Result<KeyValue, StoreError>>,
}

/// The thread that owns every write to the file, and the queue that feeds it.
#[derive(Debug)]
pub(super) struct Committer {
    // `None` only while dropping: closing the queue is what stops the thread.
    queue: Option<mpsc::Sender<Pending>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    pub(super) fn start(inner: Arc<Inner>) -> Result<Self, StoreError> {
        let (queue, pending) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || run(&inner, &pending))
            .map_err(backend)?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `write` and waits until it is on disk (or refused).
    pub(super) async fn submit(&self, write: Write) -> Result<KeyValue, StoreError> {
        let stopped = || StoreError::Backend("the store's commit thread has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.queue
            .as_ref()
            .ok_or_else(stopped)?
            .send(Pending { write, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // The thread ends once the queue is closed and drained; waiting for it means the file
        // is closed when the last store handle is gone, so it can be opened again at once.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the store's commit thread panicked");
        }
    }
}

fn run(inner: &Inner, pending: &mpsc::Receiver<Pending>) {
    while let Ok(first) = pending.recv() {
        commit(inner, first, || pending.try_recv().ok());
    }
}

/// Writes `first` and what `more` has queued behind it (up to [`MAX_BATCH`]) in one
/// transaction, then publishes their events in revision order and answers every writer.
fn commit(inner: &Inner, first: Pending, mut more: impl FnMut() -> Option<Pending>) {
    // Drained only once the lock is held: whatever queued while a snapshot or compaction held
    // it joins this transaction.
    let guard = inner.write.lock();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH
        && let Some(next) = more()
    {
        batch.push(next);
    }
    let (writes, replies): (Vec<Write>, Vec<_>) =
        batch.into_iter().map(|p| (p.write, p.reply)).unzip();
    let outcome = match &guard {
        Ok(_) => apply(inner, writes),
        Err(err) => Err(backend(err)),
    };
    drop(guard);
    match outcome {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let answer = outcome.map(|(kv, event)| {
                    // No receiver is fine: nobody watches.
                    let _ = inner.events.send(Arc::new(event));
                    kv
                });
                // A writer that stopped waiting still had its write done, as with etcd.
                let _ = reply.send(answer);
            }
        }
        Err(err) => {
            tracing::error!(%err, writes = replies.len(), "store commit failed");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Backend(err.to_string())));
            }
        }
    }
}

/// The tables one batch writes.
struct Tables<'t> {
    history: Table<'t, (&'static str, i64), &'static [u8]>,
    latest: Table<'t, &'static str, (i64, i64)>,
}

/// Applies `writes` in order in one transaction and commits it. The outer error fails the
/// whole batch (nothing was written); each inner one refuses only its own write, which then
/// takes no revision.
fn apply(inner: &Inner, writes: Vec<Write>) -> Result<Vec<Outcome>, StoreError> {
    let txn = inner.db.begin_write().map_err(backend)?;
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut written = false;
    let last = {
        let mut meta = txn.open_table(META).map_err(backend)?;
        let mut log = txn.open_table(LOG).map_err(backend)?;
        let mut tables = Tables {
            history: txn.open_table(HISTORY).map_err(backend)?,
            latest: txn.open_table(LATEST).map_err(backend)?,
        };
        let mut revision = meta
            .get("revision")
            .map_err(backend)?
            .map_or(0, |v| v.value());
        for write in writes {
            let next = revision + 1;
            let key = write.key().to_owned();
            // Earlier writes of this batch are already in the tables, so each check sees them.
            let outcome = tables.apply(write, next)?;
            if outcome.is_ok() {
                log.insert(next, key.as_str()).map_err(backend)?;
                revision = next;
                written = true;
            }
            outcomes.push(outcome);
        }
        if written {
            meta.insert("revision", revision).map_err(backend)?;
        }
        revision
    };
    finish(txn, written)?;
    if written {
        inner.commits.fetch_add(1, Ordering::Relaxed);
        inner.revision.store(last, Ordering::Release);
    }
    Ok(outcomes)
}

fn finish(txn: WriteTransaction, written: bool) -> Result<(), StoreError> {
    if written {
        txn.commit().map_err(backend)
    } else {
        // Every write was refused: there is nothing to make durable.
        txn.abort().map_err(backend)
    }
}

impl Tables<'_> {
    /// The live value of `key` as of the writes applied so far.
    fn latest(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let Some((_, mod_rev)) = self.latest.get(key).map_err(backend)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let record = self
            .history
            .get((key, mod_rev))
            .map_err(backend)?
            .ok_or_else(|| StoreError::Backend(format!("history of {key} is missing")))?;
        Ok(Some(Record::decode(record.value())?.into_kv(key, mod_rev)))
    }

    fn put(
        &mut self,
        key: &str,
        value: &[u8],
        create_revision: Revision,
        revision: Revision,
    ) -> Result<(), StoreError> {
        self.history
            .insert(
                (key, revision),
                Record::encode(false, create_revision, value).as_slice(),
            )
            .map_err(backend)?;
        self.latest
            .insert(key, (create_revision, revision))
            .map_err(backend)?;
        Ok(())
    }

    /// The live value of `key`, if its mod revision is `expected` (any, if `None`).
    fn expect(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        let prev = self
            .latest(key)?
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
        match expected {
            Some(expected) if prev.mod_revision != expected => Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual: prev.mod_revision,
            }),
            _ => Ok(prev),
        }
    }

    /// Applies one write at `revision`: the outer error is the backend's, the inner one the
    /// write's refusal, in which case nothing was written.
    fn apply(&mut self, write: Write, revision: Revision) -> Result<Outcome, StoreError> {
        let refused = |err: StoreError| match err {
            StoreError::Backend(_) => Err(err),
            other => Ok(Err(other)),
        };
        let (kv, prev, kind) = match write {
            Write::Create { key, value } => {
                if self.latest(&key)?.is_some() {
                    return Ok(Err(StoreError::AlreadyExists(key)));
                }
                self.put(&key, &value, revision, revision)?;
                let kv = KeyValue {
                    key,
                    value,
                    create_revision: revision,
                    mod_revision: revision,
                };
                (kv, None, EventKind::Put)
            }
            Write::Update {
                key,
                value,
                expected,
            } => {
                let prev = match self.expect(&key, Some(expected)) {
                    Ok(prev) => prev,
                    Err(err) => return refused(err),
                };
                self.put(&key, &value, prev.create_revision, revision)?;
                let kv = KeyValue {
                    key,
                    value,
                    create_revision: prev.create_revision,
                    mod_revision: revision,
                };
                (kv, Some(prev), EventKind::Put)
            }
            Write::Delete { key, expected } => {
                let prev = match self.expect(&key, expected) {
                    Ok(prev) => prev,
                    Err(err) => return refused(err),
                };
                self.history
                    .insert(
                        (key.as_str(), revision),
                        Record::encode(true, prev.create_revision, &[]).as_slice(),
                    )
                    .map_err(backend)?;
                self.latest.remove(key.as_str()).map_err(backend)?;
                let kv = KeyValue {
                    mod_revision: revision,
                    ..prev.clone()
                };
                (kv, Some(prev), EventKind::Delete)
            }
        };
        let event = Event {
            kind,
            kv: kv.clone(),
            prev,
        };
        Ok(Ok((kv, event)))
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;

    use super::*;
    use crate::RedbStore;

    /// Commits `writes` as one batch, as the commit thread would, and returns each answer.
    fn one_batch(inner: &Inner, writes: Vec<Write>) -> Vec<Result<KeyValue, StoreError>> {
        let (pending, answers): (Vec<_>, Vec<_>) = writes
            .into_iter()
            .map(|write| {
                let (reply, answer) = oneshot::channel();
                (Pending { write, reply }, answer)
            })
            .unzip();
        let mut pending = pending.into_iter();
        let first = pending.next().expect("a write");
        commit(inner, first, || pending.next());
        answers
            .into_iter()
            .map(|mut answer| answer.try_recv().expect("answered"))
            .collect()
    }

    fn create(key: &str, value: &str) -> Write {
        Write::Create {
            key: key.into(),
            value: value.into(),
        }
    }

    fn update(key: &str, value: &str, expected: Revision) -> Write {
        Write::Update {
            key: key.into(),
            value: value.into(),
            expected,
        }
    }

    fn revision(inner: &Inner) -> Revision {
        let txn = inner.db.begin_read().expect("read");
        Inner::meta(&txn, "revision").expect("revision")
    }

    #[test]
    fn each_write_of_a_batch_is_checked_against_the_writes_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        let inner = store.inner.as_ref();
        let base = revision(inner);
        let mut events = inner.events.subscribe();
        let answers = one_batch(
            inner,
            vec![
                create("/a", "1"),
                create("/a", "again"),
                update("/a", "2", base + 1),
                update("/a", "stale", base + 1),
                create("/b", "b"),
                Write::Delete {
                    key: "/b".into(),
                    expected: Some(base + 3),
                },
                Write::Delete {
                    key: "/b".into(),
                    expected: None,
                },
            ],
        );
        let revisions: Vec<Option<Revision>> = answers
            .iter()
            .map(|a| a.as_ref().ok().map(|kv| kv.mod_revision))
            .collect();
        assert_eq!(
            revisions,
            [
                Some(base + 1),
                None,
                Some(base + 2),
                None,
                Some(base + 3),
                Some(base + 4),
                None
            ]
        );
        assert!(matches!(answers[1], Err(StoreError::AlreadyExists(_))));
        assert!(
            matches!(answers[3], Err(StoreError::Conflict { actual, .. }) if actual == base + 2)
        );
        assert!(matches!(answers[6], Err(StoreError::NotFound(_))));
        assert_eq!(revision(inner), base + 4, "refused writes take no revision");

        let published: Vec<(EventKind, String, Revision)> =
            std::iter::from_fn(|| events.try_recv().ok())
                .map(|e| (e.kind, e.kv.key.clone(), e.kv.mod_revision))
                .collect();
        assert_eq!(
            published,
            [
                (EventKind::Put, "/a".to_owned(), base + 1),
                (EventKind::Put, "/a".to_owned(), base + 2),
                (EventKind::Put, "/b".to_owned(), base + 3),
                (EventKind::Delete, "/b".to_owned(), base + 4),
            ]
        );
        let a = inner.get("/a", 0).expect("get").expect("present");
        assert_eq!(
            (a.value.as_slice(), a.create_revision),
            (b"2".as_slice(), base + 1)
        );
        assert!(inner.get("/b", 0).expect("get").is_none());
    }

    #[test]
    fn concurrent_updates_of_one_key_in_one_batch_let_the_first_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        let inner = store.inner.as_ref();
        let created = one_batch(inner, vec![create("/k", "0")])
            .remove(0)
            .expect("created");
        let answers = one_batch(
            inner,
            (0..8)
                .map(|i| update("/k", &i.to_string(), created.mod_revision))
                .collect(),
        );
        let winner = answers[0].as_ref().expect("the first update wins");
        assert_eq!(winner.mod_revision, created.mod_revision + 1);
        for lost in &answers[1..] {
            assert!(
                matches!(lost, Err(StoreError::Conflict { actual, .. }) if *actual == winner.mod_revision),
                "{lost:?}"
            );
        }
        assert_eq!(inner.get("/k", 0).expect("get").as_ref(), Some(winner));
        assert_eq!(revision(inner), winner.mod_revision);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_queued_behind_a_commit_share_one_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        let before = store.commits();
        // Hold the commit lock, as a commit being made durable does, while the writers queue.
        let guard = store.inner.write.lock().expect("lock");
        let writers: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    crate::Store::create(&store, &format!("/k/{i}"), b"v".to_vec()).await
                })
            })
            .collect();
        // Not awaiting while the lock is held: the writers run on the runtime's workers.
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(guard);
        let mut revisions = Vec::new();
        for w in writers {
            revisions.push(w.await.expect("joined").expect("created").mod_revision);
        }
        revisions.sort_unstable();
        let first = revisions[0];
        assert_eq!(revisions, (first..first + 64).collect::<Vec<_>>());
        let commits = store.commits() - before;
        assert!(
            (1..64).contains(&commits),
            "64 writers in {commits} transactions"
        );
    }

    #[test]
    fn a_batch_of_refused_writes_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        let inner = store.inner.as_ref();
        one_batch(inner, vec![create("/k", "0")])
            .remove(0)
            .expect("created");
        let before = revision(inner);
        let mut events = inner.events.subscribe();
        let answers = one_batch(
            inner,
            vec![
                create("/k", "again"),
                update("/k", "stale", before + 7),
                update("/missing", "x", 1),
            ],
        );
        assert!(answers.iter().all(Result::is_err), "{answers:?}");
        assert_eq!(revision(inner), before);
        assert!(events.try_recv().is_err(), "no event for a refused write");
    }
}
