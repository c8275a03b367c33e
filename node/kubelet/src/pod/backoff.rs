//! Restart back-off per container: 10 s doubling to 5 min, reset after a container ran
//! cleanly for 10 min, as the kubelet's `CrashLoopBackOff` (simulated nodes use shorter
//! delays through [`Policy`]).

use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;

/// The first delay.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The longest delay.
pub const MAX: Duration = Duration::from_mins(5);
/// A container that ran this long before exiting starts over at [`INITIAL`].
pub const RESET_AFTER: Duration = Duration::from_mins(10);

/// The delays of a node's back-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// A container that ran this long before exiting starts over at `initial`.
    pub reset_after: Duration,
}

impl Default for Policy {
    /// The kubelet's.
    fn default() -> Self {
        Self {
            initial: INITIAL,
            max: MAX,
            reset_after: RESET_AFTER,
        }
    }
}

/// One container's back-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    delay: Duration,
    until: Instant,
}

/// Back-off of every container of one pod, by container name.
#[derive(Debug, Default)]
pub struct Backoff {
    policy: Policy,
    entries: HashMap<String, Entry>,
}

impl Backoff {
    /// Back-off with `policy`'s delays.
    #[must_use]
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
        }
    }

    /// Records that `container` exited at `now` after running `ran`; returns when it may
    /// start again.
    pub fn exited(&mut self, container: &str, ran: Duration, now: Instant) -> Instant {
        let delay = match self.entries.get(container) {
            Some(e) if ran < self.policy.reset_after => (e.delay * 2).min(self.policy.max),
            _ => self.policy.initial,
        };
        let until = now + delay;
        self.entries
            .insert(container.to_owned(), Entry { delay, until });
        until
    }

    /// When `container` may start again, if it is backing off at `now`.
    #[must_use]
    pub fn waiting(&self, container: &str, now: Instant) -> Option<Instant> {
        self.entries
            .get(container)
            .map(|e| e.until)
            .filter(|until| *until > now)
    }

    /// The delay last chosen for `container`.
    #[must_use]
    pub fn delay(&self, container: &str) -> Option<Duration> {
        self.entries.get(container).map(|e| e.delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_ten_seconds_up_to_five_minutes() {
        let mut b = Backoff::default();
        let now = Instant::now();
        let delays: Vec<u64> = (0..8)
            .map(|_| {
                b.exited("c", Duration::from_secs(1), now);
                b.delay("c").unwrap().as_secs()
            })
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn a_long_clean_run_resets_the_delay() {
        let mut b = Backoff::default();
        let now = Instant::now();
        b.exited("c", Duration::from_secs(1), now);
        b.exited("c", Duration::from_secs(1), now);
        assert_eq!(b.delay("c"), Some(Duration::from_secs(20)));
        b.exited("c", Duration::from_mins(11), now);
        assert_eq!(b.delay("c"), Some(INITIAL));
    }

    #[test]
    fn a_policy_sets_the_delays() {
        let second = Duration::from_secs(1);
        let mut b = Backoff::new(Policy {
            initial: second,
            max: second,
            reset_after: second,
        });
        let now = Instant::now();
        b.exited("c", Duration::ZERO, now);
        b.exited("c", Duration::ZERO, now);
        assert_eq!(b.delay("c"), Some(second));
    }

    #[test]
    fn waiting_ends_when_the_delay_passed() {
        let mut b = Backoff::default();
        let now = Instant::now();
        let until = b.exited("c", Duration::ZERO, now);
        assert_eq!(b.waiting("c", now), Some(until));
        assert_eq!(b.waiting("c", until), None);
        assert_eq!(b.waiting("other", now), None);
    }
}
