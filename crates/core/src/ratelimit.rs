//! Token buckets by key, for calls that cost a server much more than they cost the caller
//! (walking every file, re-hashing a chunk, starting a scrub).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use crate::SharedClock;

/// Keys kept at most; beyond, buckets that have refilled are forgotten first.
const MAX_KEYS: usize = 10_000;

/// `burst` calls at once per key, then one more per `every`.
pub struct RateLimiter<K> {
    burst: u32,
    every: Duration,
    clock: SharedClock,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// Calls available, in thousandths.
    milli: u64,
    at_ms: u64,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    pub fn new(burst: u32, every: Duration, clock: SharedClock) -> RateLimiter<K> {
        RateLimiter {
            burst: burst.max(1),
            every: every.max(Duration::from_millis(1)),
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn full(&self) -> u64 {
        u64::from(self.burst) * 1000
    }

    fn refilled(&self, b: Bucket, now: u64) -> u64 {
        let every = self.every.as_millis().max(1) as u64;
        let gained = now.saturating_sub(b.at_ms).saturating_mul(1000) / every;
        b.milli.saturating_add(gained).min(self.full())
    }

    /// Takes one call for `key`; when none is left, how long until one is.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let now = self.clock.now_ms();
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_KEYS && !m.contains_key(key) {
            let full = self.full();
            m.retain(|_, b| self.refilled(*b, now) < full);
            if m.len() >= MAX_KEYS {
                m.clear();
            }
        }
        let b = m.get(key).copied().unwrap_or(Bucket {
            milli: self.full(),
            at_ms: now,
        });
        let have = self.refilled(b, now);
        if have < 1000 {
            let every = self.every.as_millis() as u64;
            let wait_ms = (1000 - have).saturating_mul(every).div_ceil(1000);
            return Err(Duration::from_millis(wait_ms.max(1)));
        }
        m.insert(
            key.clone(),
            Bucket {
                milli: have - 1000,
                at_ms: now,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn a_key_gets_its_burst_then_one_call_per_period_and_other_keys_are_not_affected() {
        let clock = ManualClock::at(1_000_000);
        let l = RateLimiter::new(2, Duration::from_secs(10), clock.clone());
        assert!(l.check(&"bob").is_ok());
        assert!(l.check(&"bob").is_ok());
        let wait = l.check(&"bob").unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));
        assert!(l.check(&"carol").is_ok(), "another key has its own bucket");
        clock.advance(Duration::from_secs(4));
        assert_eq!(l.check(&"bob").unwrap_err(), Duration::from_secs(6));
        clock.advance(Duration::from_secs(6));
        assert!(l.check(&"bob").is_ok());
        assert!(l.check(&"bob").is_err());
        // A long pause refills to the burst, never beyond.
        clock.advance(Duration::from_secs(3600));
        assert!(l.check(&"bob").is_ok());
        assert!(l.check(&"bob").is_ok());
        assert!(l.check(&"bob").is_err());
    }
}
