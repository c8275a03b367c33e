//! The etcd backend: the same keys and semantics on an etcd cluster, for control planes that
//! span machines (and, later, leader election between them).

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, EventType, GetOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use crate::{
    Event, EventKind, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream,
};

/// Keys read per etcd range request, well below its 4 MiB message limit for our objects.
const LIST_PAGE: usize = 500;

/// A store on an etcd cluster (v3 API).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

fn kv(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: kv.key_str().map_err(backend)?.to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

/// The first key after every key that starts with `prefix` (etcd's range end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

impl EtcdStore {
    /// Connects to the given endpoints (e.g. `http://127.0.0.1:2379`).
    ///
    /// # Errors
    /// When no endpoint answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let client = Client::connect(endpoints, None).await.map_err(backend)?;
        let store = Self { client };
        // Fail now, not on the first request, if nobody is there.
        store.current_revision().await?;
        Ok(store)
    }

    /// Maps etcd's revision errors onto the store's.
    async fn revision_error(&self, err: etcd_client::Error, requested: Revision) -> StoreError {
        let message = err.to_string();
        if message.contains("required revision has been compacted") {
            match self.compacted_revision().await {
                Ok(compacted) => StoreError::Compacted {
                    requested,
                    compacted,
                },
                Err(other) => other,
            }
        } else if message.contains("future revision") {
            StoreError::FutureRevision(requested)
        } else {
            backend(message)
        }
    }

    /// Reads `key` inside an `or_else` branch to explain why a compare failed.
    fn failure(
        key: &str,
        expected: Revision,
        responses: &[TxnOpResponse],
    ) -> Result<StoreError, StoreError> {
        let current = responses.iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map(kv)),
            _ => None,
        });
        Ok(match current {
            Some(Some(found)) => StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual: found?.mod_revision,
            },
            _ => StoreError::NotFound(key.to_owned()),
        })
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .client
            .clone()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(backend)?;
        resp.header()
            .map(etcd_client::ResponseHeader::revision)
            .ok_or_else(|| backend("etcd answered without a header"))
    }

    async fn get(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>, StoreError> {
        let mut opts = GetOptions::new();
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        match self.client.clone().get(key, Some(opts)).await {
            Ok(resp) => resp.kvs().first().map(kv).transpose(),
            Err(err) => Err(self.revision_error(err, revision).await),
        }
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let mut start: Vec<u8> = match &opts.start_after {
            Some(after) if after.as_str() >= prefix => {
                let mut s = after.as_bytes().to_vec();
                s.push(0);
                s
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let mut revision = opts.revision;
        let mut items: Vec<KeyValue> = Vec::new();
        // etcd answers at most a gRPC message (4 MiB) at a time: read in pages pinned to one
        // revision until the caller's limit (or the prefix) is exhausted.
        loop {
            let want = if opts.limit > 0 {
                (opts.limit - items.len()).min(LIST_PAGE)
            } else {
                LIST_PAGE
            };
            let mut get = GetOptions::new()
                .with_range(prefix_end(prefix))
                .with_limit(i64::try_from(want).unwrap_or(i64::MAX));
            if revision > 0 {
                get = get.with_revision(revision);
            }
            let resp = match self.client.clone().get(start.clone(), Some(get)).await {
                Ok(resp) => resp,
                Err(err) => return Err(self.revision_error(err, revision).await),
            };
            if revision == 0 {
                revision = resp
                    .header()
                    .map(etcd_client::ResponseHeader::revision)
                    .ok_or_else(|| backend("etcd answered without a header"))?;
            }
            for kv_ in resp.kvs() {
                items.push(kv(kv_)?);
            }
            let done = opts.limit > 0 && items.len() >= opts.limit;
            if !resp.more() || done {
                return Ok(ListResult {
                    items,
                    revision,
                    more: resp.more(),
                });
            }
            let Some(last) = items.last() else {
                return Ok(ListResult {
                    items,
                    revision,
                    more: false,
                });
            };
            start = last.key.as_bytes().to_vec();
            start.push(0);
        }
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.clone(), None)]);
        let resp = self.client.clone().txn(txn).await.map_err(backend)?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists(key.to_owned()));
        }
        let revision = resp
            .header()
            .map(etcd_client::ResponseHeader::revision)
            .ok_or_else(|| backend("etcd answered without a header"))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(
                key,
                value.clone(),
                Some(etcd_client::PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.clone().txn(txn).await.map_err(backend)?;
        let responses = resp.op_responses();
        if !resp.succeeded() {
            return Err(Self::failure(key, expected, &responses)?);
        }
        let revision = resp
            .header()
            .map(etcd_client::ResponseHeader::revision)
            .ok_or_else(|| backend("etcd answered without a header"))?;
        let create_revision = responses
            .iter()
            .find_map(|r| match r {
                TxnOpResponse::Put(put) => {
                    put.prev_key().map(etcd_client::KeyValue::create_revision)
                }
                _ => None,
            })
            .unwrap_or(revision);
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        let compare = match expected {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.clone().txn(txn).await.map_err(backend)?;
        let responses = resp.op_responses();
        if !resp.succeeded() {
            return Err(Self::failure(key, expected.unwrap_or(0), &responses)?);
        }
        let revision = resp
            .header()
            .map(etcd_client::ResponseHeader::revision)
            .ok_or_else(|| backend("etcd answered without a header"))?;
        let prev = responses
            .iter()
            .find_map(|r| match r {
                TxnOpResponse::Delete(del) => del.prev_kvs().first().map(kv),
                _ => None,
            })
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))??;
        Ok(KeyValue {
            mod_revision: revision,
            ..prev
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let compacted = self.compacted_revision().await?;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let opts = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(after + 1)
            .with_prev_key();
        let stream = self
            .client
            .clone()
            .watch(prefix, Some(opts))
            .await
            .map_err(backend)?;
        // Each etcd response may carry several events; flatten them in order.
        let events = futures::stream::unfold(Some(stream), move |stream| async move {
            let mut stream = stream?;
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            let err = StoreError::Compacted {
                                requested: after,
                                compacted: resp.compact_revision(),
                            };
                            return Some((vec![Err(err)], None));
                        }
                        if resp.canceled() {
                            let err = backend(format!(
                                "etcd cancelled the watch: {}",
                                resp.cancel_reason()
                            ));
                            return Some((vec![Err(err)], None));
                        }
                        if resp.events().is_empty() {
                            continue;
                        }
                        let batch = resp.events().iter().map(convert).collect();
                        return Some((batch, Some(stream)));
                    }
                    Ok(None) => return None,
                    Err(err) => return Some((vec![Err(backend(err))], None)),
                }
            }
        });
        Ok(events.flat_map(futures::stream::iter).boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self
            .client
            .clone()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
        {
            Ok(_) => Ok(()),
            // Compacting to where it already is: the intent holds.
            Err(err)
                if err
                    .to_string()
                    .contains("required revision has been compacted") =>
            {
                Ok(())
            }
            Err(err) if err.to_string().contains("future revision") => {
                Err(StoreError::FutureRevision(revision))
            }
            Err(err) => Err(backend(err)),
        }
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        // etcd does not report it directly; a read at revision r fails iff r < compacted,
        // so the smallest readable revision is the compacted one.
        let current = self.current_revision().await?;
        let readable = |rev: Revision| {
            let mut client = self.client.clone();
            async move {
                match client
                    .get(
                        "/",
                        Some(GetOptions::new().with_revision(rev).with_count_only()),
                    )
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(err)
                        if err
                            .to_string()
                            .contains("required revision has been compacted") =>
                    {
                        Ok(false)
                    }
                    Err(err) => Err(backend(err)),
                }
            }
        };
        if current <= 1 || readable(1).await? {
            return Ok(0);
        }
        let (mut lo, mut hi) = (1, current);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if readable(mid).await? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(hi)
    }

    async fn snapshot(&self) -> Result<Vec<u8>, StoreError> {
        let mut stream = self.client.clone().snapshot().await.map_err(backend)?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(backend)? {
            out.extend_from_slice(chunk.blob());
        }
        Ok(out)
    }
}

fn convert(event: &etcd_client::Event) -> Result<Event, StoreError> {
    let current = event
        .kv()
        .ok_or_else(|| backend("etcd event without a key value"))?;
    let prev = event.prev_kv().map(kv).transpose()?;
    match event.event_type() {
        EventType::Put => Ok(Event {
            kind: EventKind::Put,
            kv: kv(current)?,
            prev,
        }),
        EventType::Delete => {
            let last = prev
                .clone()
                .ok_or_else(|| backend("etcd delete event without its prior value"))?;
            Ok(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    mod_revision: current.mod_revision(),
                    ..last
                },
                prev,
            })
        }
    }
}
