//! Time, passed in. Code that needs "now" takes a [`Clock`], so tests move time instead of
//! sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Time since the Unix epoch.
    fn now(&self) -> Duration;

    /// Whole seconds since the Unix epoch.
    fn unix_secs(&self) -> u64 {
        self.now().as_secs()
    }

    /// The current time as a UTC date-time.
    fn now_utc(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp_nanos(self.now().as_nanos() as i128)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        // A clock before 1970 is a broken host; treating it as the epoch keeps every
        // expiry check conservative (everything looks old, nothing looks fresh forever).
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `start` since the epoch.
    pub fn at(start: Duration) -> Self {
        let clock = Self::default();
        clock.set(start);
        clock
    }

    /// Move the clock forward.
    pub fn advance(&self, by: Duration) {
        self.millis
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Put the clock at `at` since the epoch.
    pub fn set(&self, at: Duration) {
        self.millis.store(at.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::at(Duration::from_secs(100));
        assert_eq!(clock.unix_secs(), 100);
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.unix_secs(), 105);
    }
}
