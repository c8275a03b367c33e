//! Counts each user's open watches, so one client cannot hold the server's memory and
//! tasks with thousands of them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

/// Open watches per user, up to a limit.
#[derive(Debug)]
pub struct Watches {
    /// 0: no limit.
    limit: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl Watches {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more watch of `user`, or none when they hold the limit.
    pub fn acquire(this: &Arc<Self>, user: &str) -> Option<WatchSlot> {
        let mut open = this.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(user.to_owned()).or_default();
        if this.limit != 0 && *n >= this.limit {
            if *n == 0 {
                open.remove(user);
            }
            return None;
        }
        *n += 1;
        Some(WatchSlot {
            watches: Arc::clone(this),
            user: user.to_owned(),
        })
    }
}

/// One open watch; dropped when the watch ends.
#[derive(Debug)]
pub struct WatchSlot {
    watches: Arc<Watches>,
    user: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self
            .watches
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_up_to_the_limit_and_a_closed_watch_frees_its_slot() {
        let w = Arc::new(Watches::new(2));
        let a1 = Watches::acquire(&w, "a").unwrap();
        let _a2 = Watches::acquire(&w, "a").unwrap();
        assert!(Watches::acquire(&w, "a").is_none());
        assert!(Watches::acquire(&w, "b").is_some());
        drop(a1);
        assert!(Watches::acquire(&w, "a").is_some());
    }
}
