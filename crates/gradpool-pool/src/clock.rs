//! The pool's clock: every time the pool reads (leases, billing, proofs'
//! deadlines, bookings, timestamps) comes from the [`Clock`] in its
//! [`PoolConfig`](crate::PoolConfig), so tests move time forward instead of
//! sleeping on the wall clock.
//!
//! Only waiting is left to tokio's timer (how long a long-poll is held,
//! how often the reaper looks): those are about the wall clock by nature,
//! and the work they trigger reads the pool's clock.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Where the pool reads the time.
pub trait Clock: Send + Sync + Debug {
    /// Now, in unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let now = time::OffsetDateTime::now_utc();
        (now.unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// A clock that moves only when told to (for tests).
#[derive(Debug)]
pub struct ManualClock {
    ms: AtomicI64,
}

impl ManualClock {
    /// A clock standing at the system's time now.
    pub fn now() -> ManualClock {
        ManualClock::at(SystemClock.now_ms())
    }

    /// A clock standing at `ms` (unix milliseconds).
    pub fn at(ms: i64) -> ManualClock {
        ManualClock {
            ms: AtomicI64::new(ms),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(Duration::from_millis(250));
        assert_eq!(c.now_ms(), 1_250);
        assert!(SystemClock.now_ms() > 1_700_000_000_000);
    }
}
