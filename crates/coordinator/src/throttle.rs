//! Per-principal limits on the calls that cost this coordinator (or its nodes) far more
//! than they cost the caller: risk walks over every file, re-hash requests for a chunk, and
//! scrub starts. A principal of another member counts as its whole member, because that
//! member's coordinator may name any user of its own.

use std::time::Duration;

use collective_core::{Principal, RateLimiter, SharedClock};
use tonic::Status;

/// A call worth limiting.
#[derive(Debug, Clone, Copy)]
pub enum Costly {
    /// `federation risk`: a walk of every file here.
    Risk,
    /// A reported bad replica: the node reads and hashes the chunk again.
    Rehash,
    /// `scrub start`: every node re-reads everything it holds.
    Scrub,
}

impl Costly {
    fn name(self) -> &'static str {
        match self {
            Costly::Risk => "a risk report",
            Costly::Rehash => "a re-check of a chunk",
            Costly::Scrub => "a scrub",
        }
    }
    /// Calls at once, then one per period.
    fn rate(self) -> (u32, Duration) {
        match self {
            Costly::Risk => (3, Duration::from_secs(20)),
            Costly::Rehash => (20, Duration::from_secs(3)),
            Costly::Scrub => (2, Duration::from_secs(60)),
        }
    }
}

pub struct Throttles {
    domain: String,
    risk: RateLimiter<String>,
    rehash: RateLimiter<String>,
    scrub: RateLimiter<String>,
}

impl Throttles {
    pub fn new(domain: &str, clock: SharedClock) -> Throttles {
        let make = |c: Costly| {
            let (burst, every) = c.rate();
            RateLimiter::new(burst, every, clock.clone())
        };
        Throttles {
            domain: domain.to_string(),
            risk: make(Costly::Risk),
            rehash: make(Costly::Rehash),
            scrub: make(Costly::Scrub),
        }
    }

    /// Takes one `what` for `who`, or says how long to wait.
    pub fn check(&self, who: &Principal, what: Costly) -> Result<(), Status> {
        let key = if who.domain == self.domain {
            who.to_string()
        } else {
            who.domain.clone()
        };
        let limiter = match what {
            Costly::Risk => &self.risk,
            Costly::Rehash => &self.rehash,
            Costly::Scrub => &self.scrub,
        };
        limiter.check(&key).map_err(|wait| {
            let (burst, every) = what.rate();
            Status::resource_exhausted(format!(
                "{key} asked for {} too often ({burst} at once, then one every {} s); try again in {} s",
                what.name(),
                every.as_secs(),
                wait.as_secs().max(1)
            ))
        })
    }
}

/// Paces transfers to a rate: each one books its share of the time, in the order asked.
pub struct Pacer {
    next: tokio::sync::Mutex<std::time::Instant>,
    bytes_per_sec: f64,
}

impl Pacer {
    pub fn new(bytes_per_sec: u64) -> Pacer {
        Pacer {
            next: tokio::sync::Mutex::new(std::time::Instant::now()),
            bytes_per_sec: bytes_per_sec.max(1) as f64,
        }
    }

    /// Waits until `bytes` more may be sent.
    pub async fn wait(&self, bytes: u64) {
        let wait = {
            let mut next = self.next.lock().await;
            let now = std::time::Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            start - now
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_members_users_share_one_budget_and_the_refusal_says_when_to_retry() {
        let clock = collective_core::ManualClock::at(1_000_000);
        let t = Throttles::new("alice.x", clock.clone());
        let p = |s: &str| -> Principal { s.parse().unwrap() };
        for _ in 0..2 {
            t.check(&p("u1@bob.x"), Costly::Scrub).unwrap();
        }
        let e = t.check(&p("u2@bob.x"), Costly::Scrub).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("bob.x asked for a scrub too often") && e.message().contains("try again in 60 s"),
            "{}",
            e.message()
        );
        t.check(&p("me@alice.x"), Costly::Scrub).unwrap();
        t.check(&p("other@alice.x"), Costly::Scrub).unwrap();
        clock.advance(Duration::from_secs(60));
        t.check(&p("u3@bob.x"), Costly::Scrub).unwrap();
    }
}
