//! What a controller has just created or deleted but its cache has not shown yet, so that a
//! reconcile running on a stale cache does not create (or delete) the same pods twice.
//!
//! Like the Go `ControllerExpectations`, but keyed by the names created and the uids
//! deleted, and checked against the cache itself: an expectation is met once every created
//! name is in the cache and every deleted uid is gone or terminating. It expires after a
//! timeout so a lost watch event cannot block a controller forever.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::clock::{Clock, SystemClock};

/// How long an unmet expectation holds a controller back.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Pending {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

/// Expectations of one controller, per owner key (`namespace/name`).
#[derive(Debug)]
pub struct Expectations {
    clock: Arc<dyn Clock>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Default for Expectations {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl Expectations {
    /// Expectations that expire by `clock`.
    #[must_use]
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            pending: Mutex::default(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers that `name` was created for `key`.
    pub fn created(&self, key: &str, name: &str) {
        let now = self.clock.instant();
        let mut pending = self.pending();
        let entry = pending.entry(key.to_owned()).or_default();
        entry.creates.insert(name.to_owned());
        entry.since.get_or_insert(now);
    }

    /// Remembers that the object with `uid` was deleted for `key`.
    pub fn deleted(&self, key: &str, uid: &str) {
        let now = self.clock.instant();
        let mut pending = self.pending();
        let entry = pending.entry(key.to_owned()).or_default();
        entry.deletes.insert(uid.to_owned());
        entry.since.get_or_insert(now);
    }

    /// Whether the cache has caught up with what was done for `key`: `seen(name)` tells
    /// whether a created name is cached, `present(uid)` whether a deleted uid still is (and
    /// not terminating). Met or expired expectations are forgotten.
    pub fn satisfied(
        &self,
        key: &str,
        seen: impl Fn(&str) -> bool,
        present: impl Fn(&str) -> bool,
    ) -> bool {
        let now = self.clock.instant();
        let mut pending = self.pending();
        let Some(entry) = pending.get_mut(key) else {
            return true;
        };
        entry.creates.retain(|name| !seen(name));
        entry.deletes.retain(|uid| present(uid));
        let expired = entry
            .since
            .is_some_and(|t| now.saturating_duration_since(t) > TIMEOUT);
        if (entry.creates.is_empty() && entry.deletes.is_empty()) || expired {
            pending.remove(key);
            return true;
        }
        false
    }

    /// Drops what was expected for `key` (a create failed, or the owner is gone).
    pub fn forget(&self, key: &str) {
        self.pending().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    #[test]
    fn unmet_until_the_cache_shows_creations_and_deletions() {
        let e = Expectations::default();
        e.created("ns/a", "a-1");
        e.deleted("ns/a", "uid-9");
        assert!(!e.satisfied("ns/a", |_| false, |_| true));
        assert!(!e.satisfied("ns/a", |n| n == "a-1", |_| true));
        assert!(e.satisfied("ns/a", |n| n == "a-1", |_| false));
        // Forgotten once met.
        assert!(e.satisfied("ns/a", |_| false, |_| true));
    }

    #[test]
    fn other_keys_are_independent() {
        let e = Expectations::default();
        e.created("ns/a", "a-1");
        assert!(e.satisfied("ns/b", |_| false, |_| true));
        e.forget("ns/a");
        assert!(e.satisfied("ns/a", |_| false, |_| true));
    }

    #[test]
    fn an_unmet_expectation_expires_after_the_timeout() {
        let clock = Arc::new(FakeClock::at_second(0));
        let e = Expectations::new(clock.clone());
        e.created("ns/a", "lost");
        clock.advance(TIMEOUT);
        assert!(!e.satisfied("ns/a", |_| false, |_| true));
        clock.advance(Duration::from_secs(1));
        assert!(e.satisfied("ns/a", |_| false, |_| true));
    }
}
