//! Circuit breakers, one per peer: after a failure the peer is skipped (calls fail at once)
//! for a backoff that doubles with each further failure, with jitter so many clients do not
//! probe in step; when the backoff ends one call probes the peer, and success closes the
//! breaker again. Pure bookkeeping: the caller passes the clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest and longest time a breaker stays open.
pub const BREAKER_MIN: Duration = Duration::from_millis(500);
pub const BREAKER_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Failing fast until the given instant.
    Open,
    /// One probe is in flight.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// Breakers for a set of peers, plus counts for metrics.
#[derive(Debug, Default)]
pub struct Breakers {
    peers: Mutex<HashMap<String, Entry>>,
    /// Calls refused because the peer's breaker was open.
    pub rejected: std::sync::atomic::AtomicU64,
    /// Times a breaker opened.
    pub opened: std::sync::atomic::AtomicU64,
}

/// A factor in [0.75, 1.25) from the peer, the attempt and the clock.
fn jitter(peer: &str, failures: u32) -> f64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in peer.bytes().chain(failures.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    // Mix in the clock and the process so clients that failed together spread out.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    h ^= u64::from(nanos) ^ (u64::from(std::process::id()) << 32);
    h = h.wrapping_mul(0x9e3779b97f4a7c15);
    0.75 + ((h >> 11) as f64 / (1u64 << 53) as f64) * 0.5
}

/// `d` spread by ±25 %, so peers retrying after the same failure do not retry in step.
pub fn jittered(d: Duration, seed: &str) -> Duration {
    d.mul_f64(jitter(seed, 0))
}

/// How long a breaker stays open after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (BREAKER_MIN * 2u32.pow(exp)).min(BREAKER_MAX)
}

impl Breakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a call to `peer` go ahead now? Err carries how long until the next probe.
    pub fn check(&self, peer: &str, now: Instant) -> Result<(), Duration> {
        let mut peers = self.lock();
        let Some(e) = peers.get_mut(peer) else { return Ok(()) };
        match e.open_until {
            None => Ok(()),
            Some(until) if now < until => {
                self.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(until - now)
            }
            Some(_) if e.probing => {
                self.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(BREAKER_MIN)
            }
            Some(_) => {
                e.probing = true;
                Ok(())
            }
        }
    }

    /// The call succeeded: close the breaker.
    pub fn success(&self, peer: &str) {
        let mut peers = self.lock();
        if peers.contains_key(peer) {
            peers.remove(peer);
        }
    }

    /// The call failed for a reason that says the peer is unreachable: open (again).
    pub fn failure(&self, peer: &str, now: Instant) -> Duration {
        let mut peers = self.lock();
        let e = peers.entry(peer.to_string()).or_insert(Entry {
            failures: 0,
            open_until: None,
            probing: false,
        });
        e.failures += 1;
        e.probing = false;
        let wait = backoff(e.failures).mul_f64(jitter(peer, e.failures));
        e.open_until = Some(now + wait);
        self.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        wait
    }

    pub fn state(&self, peer: &str, now: Instant) -> BreakerState {
        match self.lock().get(peer) {
            None => BreakerState::Closed,
            Some(e) if e.probing => BreakerState::HalfOpen,
            Some(Entry { open_until: Some(u), .. }) if now < *u => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Peers whose breaker is not closed, with their state.
    pub fn snapshot(&self, now: Instant) -> Vec<(String, BreakerState)> {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        let mut out: Vec<(String, BreakerState)> = names.into_iter().map(|n| (n.clone(), self.state(&n, now))).collect();
        out.sort();
        out
    }
}

impl PartialOrd for BreakerState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BreakerState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_opens_the_breaker_and_a_probe_after_the_backoff_closes_it() {
        let b = Breakers::default();
        let t0 = Instant::now();
        assert!(b.check("n", t0).is_ok());
        let wait = b.failure("n", t0);
        assert!(wait >= BREAKER_MIN.mul_f64(0.75) && wait < BREAKER_MIN.mul_f64(1.25), "{wait:?}");
        assert_eq!(b.state("n", t0), BreakerState::Open);
        assert!(b.check("n", t0 + wait / 2).is_err(), "open: fail fast");
        // After the backoff one probe goes through, the others still fail fast.
        let later = t0 + wait + Duration::from_millis(1);
        assert!(b.check("n", later).is_ok());
        assert!(b.check("n", later).is_err());
        assert_eq!(b.state("n", later), BreakerState::HalfOpen);
        b.success("n");
        assert_eq!(b.state("n", later), BreakerState::Closed);
        assert_eq!(b.rejected.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), BREAKER_MIN);
        assert_eq!(backoff(2), BREAKER_MIN * 2);
        assert_eq!(backoff(3), BREAKER_MIN * 4);
        assert_eq!(backoff(40), BREAKER_MAX);
        let b = Breakers::default();
        let t0 = Instant::now();
        let first = b.failure("n", t0);
        let second = b.failure("n", t0);
        assert!(second > first, "{first:?} then {second:?}");
    }
}
