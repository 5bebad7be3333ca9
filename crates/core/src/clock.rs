//! Wall-clock time that tests can drive. Whatever decides by the time of day (grant and
//! invite expiry, token lifetimes, gossip state versions and envelope freshness) asks a
//! `Clock` instead of the system, so a test can move time forward (or back) instead of
//! sleeping. Durations measured within one process keep using `Instant`, passed in
//! explicitly where tests need it (circuit breakers, heat decay).

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::unix_ms_now;

/// A source of the time of day.
pub trait Clock: Send + Sync + Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// A clock shared by the parts of one process.
pub type SharedClock = Arc<dyn Clock>;

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        unix_ms_now()
    }
}

/// The system's clock, shared.
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `ms` since the epoch.
    pub fn at(ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock { ms: AtomicU64::new(ms) })
    }

    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    /// Sets the time, backwards too (a clock stepped back by NTP).
    pub fn set(&self, ms: u64) {
        self.ms.store(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_can_go_back() {
        let c = ManualClock::at(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now_ms(), 3_000);
        c.set(500);
        assert_eq!(c.now_ms(), 500);
        let shared: SharedClock = c;
        assert_eq!(shared.now_ms(), 500);
        assert!(system_clock().now_ms() > 1_700_000_000_000);
    }
}
