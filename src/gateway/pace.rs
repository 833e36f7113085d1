//! How fast a request body must arrive (`[proxy] client_body_timeout_ms` and
//! `client_body_min_rate`): at most the timeout between two reads, and past the first timeout
//! an average of at least the minimum rate. A client trickling a body to hold a connection
//! and an upstream slot (a slow-POST attack) falls behind and is cut with 408.
//!
//! On HTTP/1 the time left becomes the read timeout of the next body read, so a client that
//! stops sending is cut the moment it falls behind. HTTP/2 reads have no timeout in pingora,
//! so there the pace is checked as each DATA frame arrives; a client sending nothing at all is
//! ended by the upstream read timeout (`read_timeout_ms`), as the upstream waits for the body.

use std::time::{Duration, Instant};

/// Past this no deadline is kept: a body that slow is far beyond any timeout anyway.
const LONGEST: Duration = Duration::from_secs(86_400 * 365);

/// The pace of one request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// When the body could start: the request header went upstream.
    started: Instant,
    /// The last time body bytes arrived (or `started`).
    last_read: Instant,
    /// The longest wait between two reads, and the grace before the rate counts.
    timeout: Duration,
    /// Bytes per second; 0: no rate, only the wait between reads.
    min_rate: u64,
    /// Body bytes received so far.
    received: u64,
}

impl BodyPace {
    /// A body that may start arriving from `now`.
    pub fn start(now: Instant, timeout: Duration, min_rate: u64) -> Self {
        Self {
            started: now,
            last_read: now,
            timeout,
            min_rate,
            received: 0,
        }
    }

    /// `bytes` more arrived at `now`. `None` when they came too late: the client fell behind
    /// before sending them. Otherwise how long the next read may wait.
    pub fn arrived(&mut self, bytes: u64, now: Instant) -> Option<Duration> {
        // Checked with what had arrived before: the client had to send these bytes by then.
        self.left(now)?;
        self.received = self.received.saturating_add(bytes);
        self.last_read = now;
        self.left(now)
    }

    /// How long the next read may wait at `now`; `None` if the client is already behind.
    pub fn left(&self, now: Instant) -> Option<Duration> {
        let gap = (self.last_read + self.timeout).checked_duration_since(now)?;
        if gap.is_zero() {
            return None;
        }
        let Some(earned) = self.earned() else {
            return Some(gap);
        };
        let overall = (self.started + self.timeout + earned).checked_duration_since(now)?;
        if overall.is_zero() {
            return None;
        }
        Some(gap.min(overall))
    }

    /// The time the bytes received so far bought at the minimum rate; `None` without a rate.
    fn earned(&self) -> Option<Duration> {
        if self.min_rate == 0 {
            return None;
        }
        let nanos = u128::from(self.received) * 1_000_000_000 / u128::from(self.min_rate);
        Some(
            u64::try_from(nanos)
                .map(Duration::from_nanos)
                .unwrap_or(LONGEST)
                .min(LONGEST),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_read_may_take_the_whole_timeout() {
        let t0 = Instant::now();
        let pace = BodyPace::start(t0, 10 * S, 500);
        assert_eq!(pace.left(t0), Some(10 * S));
        assert_eq!(pace.left(t0 + 4 * S), Some(6 * S));
        assert_eq!(pace.left(t0 + 10 * S), None);
    }

    #[test]
    fn each_read_is_limited_by_the_wait_between_reads() {
        let t0 = Instant::now();
        // A fast body: plenty earned, so the wait between reads is what limits.
        let mut pace = BodyPace::start(t0, 10 * S, 1);
        assert_eq!(pace.arrived(1_000_000, t0 + S), Some(10 * S));
        assert_eq!(
            pace.left(t0 + 11 * S),
            None,
            "a stall after a burst is still cut"
        );
    }

    #[test]
    fn a_trickle_below_the_rate_falls_behind_after_the_grace() {
        let t0 = Instant::now();
        let mut pace = BodyPace::start(t0, 10 * S, 100);
        let mut now = t0;
        let mut cut_at = None;
        // One byte every 9 s: always within the wait between reads, far below 100 B/s.
        for _ in 0..10 {
            now += 9 * S;
            if pace.arrived(1, now).is_none() {
                cut_at = Some(now - t0);
                break;
            }
        }
        assert_eq!(
            cut_at,
            Some(18 * S),
            "behind once 10 s + 1 byte's 10 ms had passed"
        );
    }

    #[test]
    fn a_body_at_the_rate_never_falls_behind() {
        let t0 = Instant::now();
        let mut pace = BodyPace::start(t0, 10 * S, 500);
        let mut now = t0;
        // 500 bytes a second for an hour, in pieces a second apart.
        for _ in 0..3600 {
            now += S;
            assert!(pace.arrived(500, now).is_some(), "cut at {:?}", now - t0);
        }
        // It earned its 10 s grace on top: a pause of 9 s is fine, 11 s is not.
        assert!(pace.left(now + 9 * S).is_some());
        assert_eq!(pace.left(now + 11 * S), None);
    }

    #[test]
    fn without_a_rate_only_the_wait_between_reads_counts() {
        let t0 = Instant::now();
        let mut pace = BodyPace::start(t0, 10 * S, 0);
        let mut now = t0;
        for _ in 0..1000 {
            now += 9 * S;
            assert_eq!(pace.arrived(1, now), Some(10 * S));
        }
        assert_eq!(pace.arrived(1, now + 10 * S), None);
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let t0 = Instant::now();
        let mut pace = BodyPace::start(t0, 10 * S, 1);
        assert_eq!(pace.arrived(u64::MAX, t0 + S), Some(10 * S));
        assert_eq!(pace.arrived(u64::MAX, t0 + 2 * S), Some(10 * S));
    }
}
