//! The time controllers read, behind a trait so that plans and state machines can be tested
//! on a clock the test moves.

use std::{
    fmt::Debug,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;

/// Wall-clock time (for timestamps written into objects) and monotonic time (for measuring
/// how long something has been observed locally).
pub trait Clock: Debug + Send + Sync {
    /// The wall-clock time.
    fn now(&self) -> Timestamp;
    /// A monotonic instant.
    fn instant(&self) -> Instant;
}

/// The system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to: both readings advance together.
#[derive(Debug)]
pub struct FakeClock {
    wall: Timestamp,
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl FakeClock {
    /// A clock reading `at`.
    #[must_use]
    pub fn new(at: Timestamp) -> Self {
        Self {
            wall: at,
            start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    /// A clock reading `seconds` after the Unix epoch.
    ///
    /// # Panics
    /// If `seconds` is out of `Timestamp`'s range.
    #[must_use]
    pub fn at_second(seconds: i64) -> Self {
        Self::new(Timestamp::from_second(seconds).expect("a timestamp in range"))
    }

    /// Moves both readings forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        self.wall
            .saturating_add(self.elapsed())
            .unwrap_or(self.wall)
    }

    fn instant(&self) -> Instant {
        self.start + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_clock_moves_only_when_advanced_and_both_readings_together() {
        let clock = FakeClock::at_second(1_000);
        let (wall, mono) = (clock.now(), clock.instant());
        assert_eq!(clock.now(), wall);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now().as_second(), 1_090);
        assert_eq!(clock.instant() - mono, Duration::from_secs(90));
    }
}
