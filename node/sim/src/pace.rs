//! Spreads a round of per-node work (Lease renewals, status reports) evenly over a period,
//! so thousands of nodes make a steady trickle of requests instead of one burst per round.

use std::time::Duration;

use tokio::time::Instant;

/// Wakes no more often than this: due slots are gathered into batches in between.
const MIN_TICK: Duration = Duration::from_millis(5);

/// Slot `i` of `count` is due at `round start + period * i / count`, round after round.
#[derive(Debug)]
pub(super) struct Pacer {
    count: usize,
    period: Duration,
    round_start: Instant,
    next: usize,
    last_wake: Instant,
}

impl Pacer {
    /// A pacer whose first round starts at `first_round`.
    pub(super) fn new(count: usize, period: Duration, first_round: Instant) -> Self {
        Self {
            count,
            period: period.max(Duration::from_millis(1)),
            round_start: first_round,
            next: 0,
            last_wake: first_round,
        }
    }

    fn slot_time(&self, slot: usize) -> Instant {
        let count = u128::try_from(self.count.max(1)).unwrap_or(u128::MAX);
        let slot = u128::try_from(slot).unwrap_or(u128::MAX);
        let offset = self.period.as_nanos() * slot / count;
        self.round_start + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// Waits until a slot is due and returns every slot due by then, in order.
    /// Cancel-safe: nothing changes until the wait is over.
    pub(super) async fn due(&mut self) -> Vec<usize> {
        if self.count == 0 {
            return std::future::pending().await;
        }
        let at = self.slot_time(self.next).max(self.last_wake + MIN_TICK);
        tokio::time::sleep_until(at).await;
        self.take_due(Instant::now())
    }

    /// The slots due by `now`, advancing into later rounds as they come.
    fn take_due(&mut self, now: Instant) -> Vec<usize> {
        self.last_wake = now;
        // A process that stalled for more than a round starts a fresh one rather than
        // sending every missed slot at once.
        if now.saturating_duration_since(self.slot_time(self.next)) > self.period {
            self.round_start = now;
            self.next = 0;
        }
        let mut due = Vec::new();
        loop {
            while self.next < self.count && self.slot_time(self.next) <= now {
                due.push(self.next);
                self.next += 1;
            }
            if self.next < self.count {
                return due;
            }
            self.round_start += self.period;
            self.next = 0;
            if self.round_start > now {
                return due;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spread_evenly_over_the_period() {
        let start = Instant::now();
        let mut pacer = Pacer::new(1000, Duration::from_secs(10), start);
        // 10 ms into the round: slot 0 (at 0 ms) and slot 1 (at 10 ms) are due.
        assert_eq!(
            pacer.take_due(start + Duration::from_millis(10)),
            vec![0, 1]
        );
        assert_eq!(
            pacer.take_due(start + Duration::from_millis(55)),
            vec![2, 3, 4, 5]
        );
        // Nothing more is due until the next slot's time.
        assert!(pacer.take_due(start + Duration::from_millis(59)).is_empty());
    }

    #[test]
    fn a_round_wraps_into_the_next_one() {
        let start = Instant::now();
        let mut pacer = Pacer::new(4, Duration::from_secs(4), start);
        assert_eq!(
            pacer.take_due(start + Duration::from_millis(3500)),
            vec![0, 1, 2, 3]
        );
        assert_eq!(pacer.take_due(start + Duration::from_secs(5)), vec![0, 1]);
    }

    #[test]
    fn a_stall_longer_than_a_round_does_not_send_a_burst() {
        let start = Instant::now();
        let mut pacer = Pacer::new(100, Duration::from_secs(1), start);
        let due = pacer.take_due(start + Duration::from_secs(30));
        assert_eq!(due, vec![0]);
    }
}
