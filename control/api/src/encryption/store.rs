//! A [`Store`] that encrypts on the way in and decrypts on the way out, so the verbs,
//! watches and the authorizer's feed see plaintext while the backend (and its snapshots,
//! hence backups) holds only ciphertext.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt as _;
use skiff_store::{KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream};

use super::EncryptionConfig;

/// `inner` seen through an [`EncryptionConfig`].
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    config: Arc<EncryptionConfig>,
}

impl std::fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EncryptedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, config: EncryptionConfig) -> Self {
        Self {
            inner,
            config: Arc::new(config),
        }
    }
}

fn open(config: &EncryptionConfig, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
    kv.value = config
        .open(&kv.key, std::mem::take(&mut kv.value))
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(kv)
}

/// The value a write returns is the one the caller wrote, not the ciphertext.
fn written(mut kv: KeyValue, plain: Vec<u8>) -> KeyValue {
    kv.value = plain;
    kv
}

#[async_trait]
impl Store for EncryptedStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    async fn get(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>, StoreError> {
        self.inner
            .get(key, revision)
            .await?
            .map(|kv| open(&self.config, kv))
            .transpose()
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let mut result = self.inner.list(prefix, opts).await?;
        result.items = result
            .items
            .into_iter()
            .map(|kv| open(&self.config, kv))
            .collect::<Result<_, _>>()?;
        Ok(result)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let sealed = self
            .config
            .seal(key, value.clone())
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(written(self.inner.create(key, sealed).await?, value))
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let sealed = self
            .config
            .seal(key, value.clone())
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(written(
            self.inner.update(key, sealed, expected).await?,
            value,
        ))
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        open(&self.config, self.inner.delete(key, expected).await?)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let config = Arc::clone(&self.config);
        let events = self.inner.watch(prefix, after).await?;
        Ok(Box::pin(events.map(move |event| {
            let mut event = event?;
            event.kv = open(&config, event.kv)?;
            event.prev = event.prev.map(|kv| open(&config, kv)).transpose()?;
            Ok(event)
        })))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }

    async fn snapshot(&self) -> Result<Vec<u8>, StoreError> {
        self.inner.snapshot().await
    }
}
