//! Federation links: what this coordinator knows of the federation it belongs to (gossip,
//! the root when it holds it), the verified channels to other members' coordinators with
//! one circuit breaker each, the member removals it enforces, and the count of our bytes
//! held elsewhere. It knows nothing of files, access or our own nodes; the services decide
//! what to ask other members, this part only says whether and how they can be reached.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use collective_core::{BreakerState, Breakers, Principal};
use collective_gossip::PeerState;
use collective_pki::TlsIdentity;
use collective_proto::v1::MemberRemoval;
use tonic::transport::Channel;

use crate::error::Error;

/// What a coordinator knows about the federation it belongs to (None when standalone).
pub struct Federated {
    /// The federation domain, e.g. `collective.local`.
    pub domain: String,
    pub gossip: collective_gossip::Gossip,
    pub gossip_addr: String,
    /// The federation root, when this coordinator may sign new members' CAs.
    pub root: Option<collective_pki::FederationRoot>,
    pub contribution: u64,
}

/// This member's links to the other members.
pub struct Links {
    /// Our own member domain.
    domain: String,
    identity: TlsIdentity,
    federation: OnceLock<Federated>,
    channels: Mutex<HashMap<String, Channel>>,
    /// One circuit breaker per other member's coordinator.
    breakers: Breakers,
    /// Members removed from the federation, by domain (see `removal.rs`).
    removals: Mutex<BTreeMap<String, MemberRemoval>>,
    /// Bytes of our chunks on other members' nodes, and when that was counted.
    elsewhere: Mutex<Option<(Instant, u64)>>,
    elsewhere_stale: AtomicBool,
    /// When we last asked every member for its state at once (ms, our clock); held while
    /// asking, so that concurrent callers wait for one round instead of starting theirs.
    pub converged_ms: tokio::sync::Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic while holding the lock cannot leave it inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Links {
    pub fn new(domain: &str, identity: TlsIdentity) -> Links {
        Links {
            domain: domain.to_string(),
            identity,
            federation: OnceLock::new(),
            channels: Mutex::new(HashMap::new()),
            breakers: Breakers::default(),
            removals: Mutex::new(BTreeMap::new()),
            elsewhere: Mutex::new(None),
            elsewhere_stale: AtomicBool::new(false),
            converged_ms: tokio::sync::Mutex::new(0),
        }
    }

    /// The federation, once joined (None for a standalone member).
    pub fn fed(&self) -> Option<&Federated> {
        self.federation.get()
    }

    /// Joins the federation; a coordinator joins once, at start-up.
    pub fn join(&self, fed: Federated) -> Result<(), Error> {
        self.federation
            .set(fed)
            .map_err(|_| Error::Stuck("this coordinator already joined its federation".into()))
    }

    /// A gRPC channel to another member's coordinator, verified to be that coordinator.
    pub fn channel(&self, member: &str) -> Result<Channel, Error> {
        let fed = self.fed().ok_or(Error::NotFederated)?;
        if let Some(r) = lock(&self.removals).get(&self.domain) {
            return Err(Error::Removed {
                member: self.domain.clone(),
                detail: format!("{}; the other members no longer accept it", r.reason),
            });
        }
        if self.identity.revocations().is_member_removed(member) {
            return Err(Error::Removed {
                member: member.to_string(),
                detail: "its coordinator is no longer called".into(),
            });
        }
        // Checked before any cached channel: a dead member's old connection only gives a
        // transport error that does not say who is missing.
        if fed.gossip.peer_state(member) == Some(PeerState::Down) {
            return Err(Error::Peer {
                member: member.to_string(),
                detail: "down (its coordinator stopped answering gossip); try again when `collective federation peers` shows it alive"
                    .into(),
            });
        }
        if let Some(c) = lock(&self.channels).get(member) {
            return Ok(c.clone());
        }
        let unknown = |detail: String| Error::Peer {
            member: member.to_string(),
            detail,
        };
        let state = fed
            .gossip
            .state_of(member)
            .ok_or_else(|| unknown("not known in the federation yet".into()))?;
        let principal: Principal = state
            .coordinator
            .parse()
            .map_err(|e| unknown(format!("gossip named a bad coordinator for it: {e}")))?;
        if principal.domain != member {
            return Err(unknown(format!("gossip named {principal} as its coordinator")));
        }
        let channel = collective_rpc::channel(&self.identity, &state.grpc_addr, &principal).map_err(|e| unknown(e.to_string()))?;
        lock(&self.channels).insert(member.to_string(), channel.clone());
        Ok(channel)
    }

    /// A call to `member` failed: forget the cached channel (it may have restarted at a new
    /// address) and open its circuit breaker, so plans and reads skip it for a while.
    pub fn failed(&self, member: &str) {
        lock(&self.channels).remove(member);
        let wait = self.breakers.failure(member, Instant::now());
        tracing::debug!(%member, "skipping it for {:.1} s (circuit breaker open)", wait.as_secs_f64());
    }

    /// A call to `member` succeeded: close its breaker.
    pub fn succeeded(&self, member: &str) {
        self.breakers.success(member);
    }

    /// Whether plans and reads should skip `member` now (its breaker is open).
    pub fn skipped(&self, member: &str) -> bool {
        self.breakers.state(member, Instant::now()) == BreakerState::Open
    }

    /// The breakers, for metrics.
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// Err with the wait when `member`'s breaker is open.
    pub fn check(&self, member: &str) -> Result<(), Error> {
        self.breakers.check(member, Instant::now()).map_err(|wait| Error::Peer {
            member: member.to_string(),
            detail: format!("failed moments ago; skipped for {:.1} s (circuit breaker open)", wait.as_secs_f64()),
        })
    }

    /// The removals this coordinator enforces, by member (see `removal.rs`).
    pub fn removals(&self) -> MutexGuard<'_, BTreeMap<String, MemberRemoval>> {
        lock(&self.removals)
    }

    /// Stops calling the removed `members` (their cached channels are dropped).
    pub fn drop_channels(&self, members: &[String]) {
        lock(&self.channels).retain(|m, _| !members.contains(m));
    }

    /// The cached count of our bytes held elsewhere, when fresher than `max_age` (or than
    /// `max_age_stale` once something placed or removed copies elsewhere).
    pub fn elsewhere(&self, max_age: std::time::Duration, max_age_stale: std::time::Duration, count: impl FnOnce() -> u64) -> u64 {
        let mut cache = lock(&self.elsewhere);
        let stale = self.elsewhere_stale.load(Ordering::Relaxed);
        if let Some((at, v)) = *cache
            && at.elapsed() < if stale { max_age_stale } else { max_age }
        {
            return v;
        }
        self.elsewhere_stale.store(false, Ordering::Relaxed);
        let v = count();
        *cache = Some((Instant::now(), v));
        v
    }

    /// Copies of our chunks were placed on or removed from other members.
    pub fn elsewhere_changed(&self) {
        self.elsewhere_stale.store(true, Ordering::Relaxed);
    }
}
