//! Keeps the API server's answers for a while, so a burst of requests (a followed log, a
//! metrics scrape every few seconds) costs one review.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;

use super::{ALLOWED_TTL, Attributes, Caller, DENIED_TTL, ReviewError, Reviewer};

/// Answers at most this many distinct questions from memory; beyond, the cache is emptied.
const MAX_ENTRIES: usize = 4096;

type Key = (Caller, Attributes);

/// A [`Reviewer`] that remembers allowed answers for one time and denials for another.
pub struct CachingReviewer {
    inner: Arc<dyn Reviewer>,
    allowed_ttl: Duration,
    denied_ttl: Duration,
    answers: Mutex<HashMap<Key, (bool, Instant)>>,
}

impl std::fmt::Debug for CachingReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingReviewer")
            .field("allowed_ttl", &self.allowed_ttl)
            .field("denied_ttl", &self.denied_ttl)
            .finish_non_exhaustive()
    }
}

impl CachingReviewer {
    /// `inner` with the kubelet's times ([`ALLOWED_TTL`], [`DENIED_TTL`]).
    #[must_use]
    pub fn new(inner: Arc<dyn Reviewer>) -> Self {
        Self::with_ttls(inner, ALLOWED_TTL, DENIED_TTL)
    }

    /// `inner` with the given times.
    #[must_use]
    pub fn with_ttls(
        inner: Arc<dyn Reviewer>,
        allowed_ttl: Duration,
        denied_ttl: Duration,
    ) -> Self {
        Self {
            inner,
            allowed_ttl,
            denied_ttl,
            answers: Mutex::new(HashMap::new()),
        }
    }

    fn remembered(&self, key: &Key) -> Option<bool> {
        let answers = self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        answers
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(allowed, _)| *allowed)
    }
}

#[async_trait]
impl Reviewer for CachingReviewer {
    async fn allowed(&self, caller: &Caller, attrs: &Attributes) -> Result<bool, ReviewError> {
        let key = (caller.clone(), attrs.clone());
        if let Some(allowed) = self.remembered(&key) {
            return Ok(allowed);
        }
        let allowed = self.inner.allowed(caller, attrs).await?;
        let ttl = if allowed {
            self.allowed_ttl
        } else {
            self.denied_ttl
        };
        if !ttl.is_zero() {
            let mut answers = self
                .answers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if answers.len() >= MAX_ENTRIES {
                answers.clear();
            }
            answers.insert(key, (allowed, Instant::now() + ttl));
        }
        Ok(allowed)
    }
}
