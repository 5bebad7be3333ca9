//! Federation between members: publishing our state through gossip, anti-entropy with a
//! random member, finding which member owns a datastore, and the channels used to forward
//! calls to other members' coordinators (mTLS chained to the federation root).

use std::sync::Arc;
use std::time::Duration;

use collective_core::{Principal, Role};
use collective_gossip::{MemberState, PeerState};
use collective_proto::v1::PlacementStrategy;
use collective_proto::v1::federation_client::FederationClient;
use collective_proto::v1::federation_server::Federation;
use collective_proto::v1::{
    CatalogEntry, ExchangeRequest, ExchangeResponse, HostChunksRequest, HostChunksResponse, NodeSummary, ReadTokensRequest,
    ReadTokensResponse,
};
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::state::State;

/// How often our own state is re-published (node usage changes continuously).
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// Member states one anti-entropy exchange may carry.
const MAX_EXCHANGED_STATES: usize = 512;
/// Rounds of asking every member at once start at most this often.
pub const CONVERGE_EVERY: Duration = Duration::from_millis(100);
/// How long one member has to answer such a round.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(2);

impl State {
    /// Whether the top-level name `top` lives in this member's namespace.
    pub fn is_local_top(&self, top: &str) -> Result<bool, Error> {
        if self.meta.datastore(top)?.is_some() {
            return Ok(true);
        }
        let path = collective_core::validate_path(&format!("/{top}")).map_err(collective_meta::MetaError::from)?;
        Ok(self.meta.stat(&path).is_ok())
    }

    /// The member that owns datastore `top` as far as we know now, when it is another
    /// member's. A name in our own namespace is ours; of two members claiming one name, the
    /// one gossip settled on (`collective_gossip::claims`).
    pub fn remote_owner(&self, top: &str) -> Result<Option<String>, Error> {
        let Some(fed) = self.links.fed() else { return Ok(None) };
        if self.is_local_top(top)? {
            return Ok(None);
        }
        Ok(fed.gossip.owner_of(top).filter(|m| *m != self.domain))
    }

    /// The member that owns datastore `top`, when it is another member's. A name that is
    /// neither ours nor known to be another member's may be a datastore created a moment
    /// ago that gossip has not brought yet: we ask every reachable member first, so that a
    /// write meant for it never lands in our own namespace.
    pub async fn route(&self, top: &str) -> Result<Option<String>, Error> {
        let Some(fed) = self.links.fed() else { return Ok(None) };
        if self.is_local_top(top)? {
            return Ok(None);
        }
        let owner = || fed.gossip.owner_of(top).filter(|m| *m != self.domain);
        if let Some(member) = owner() {
            return Ok(Some(member));
        }
        self.converge().await;
        Ok(owner())
    }

    /// One anti-entropy round with every member gossip does not hold down, all at once,
    /// begun after this call: callers that arrive while a round runs share the next one,
    /// and rounds start at most one per [`CONVERGE_EVERY`].
    pub async fn converge(&self) {
        let Some(fed) = self.links.fed() else { return };
        let arrived = self.clock.now_ms();
        let mut last_start = self.links.converged_ms.lock().await;
        if *last_start > arrived {
            return;
        }
        let since = self.clock.now_ms().saturating_sub(*last_start);
        let spacing = CONVERGE_EVERY.as_millis() as u64;
        if since < spacing {
            tokio::time::sleep(Duration::from_millis(spacing - since)).await;
        }
        *last_start = self.clock.now_ms().max(arrived + 1);
        let members = reachable(fed);
        futures::future::join_all(
            members
                .iter()
                .map(|m| tokio::time::timeout(CONVERGE_TIMEOUT, exchange_with(self, m))),
        )
        .await;
    }

    /// Enforces every other member's revocations as its signed state lists them (each
    /// applies only to that member's own certificates). Our own list reaches the others in
    /// our state, so a revoked certificate is refused federation-wide within a few gossip
    /// rounds.
    pub fn learn_revocations(&self) {
        let Some(fed) = self.links.fed() else { return };
        let lists: std::collections::HashMap<String, Vec<[u8; 32]>> = fed
            .gossip
            .states()
            .into_iter()
            .filter(|s| s.member != self.domain)
            .map(|s| {
                let fps = s.revoked.iter().filter_map(|b| <[u8; 32]>::try_from(b.as_ref()).ok()).collect();
                (s.member, fps)
            })
            .collect();
        let revocations = self.identity.revocations();
        if revocations.set_member_revocations(&lists) {
            tracing::info!(
                enforced = revocations.member_revocations(),
                "other members' revocations changed; their revoked certificates are refused here"
            );
        }
    }

    /// Publishes our state now rather than at the next tick (a datastore was created or
    /// deleted: members asking us right away must see it).
    pub fn publish_now(&self) {
        if let Some(fed) = self.links.fed() {
            fed.gossip.publish(self.local_member_state());
        }
    }

    /// What we tell the federation about ourselves.
    pub fn local_member_state(&self) -> MemberState {
        let fed = self.links.fed();
        let nodes = {
            let table = self.nodes.lock();
            let mut v: Vec<NodeSummary> = table
                .iter()
                .map(|(name, e)| NodeSummary {
                    node: name.clone(),
                    capacity_bytes: e.usage.capacity_bytes,
                    free_bytes: e.usage.free_bytes,
                    healthy: self.nodes.is_up(e),
                })
                .collect();
            v.sort_by(|a, b| a.node.cmp(&b.node));
            v
        };
        let datastores = self
            .meta
            .datastores()
            .unwrap_or_default()
            .into_iter()
            .map(|d| CatalogEntry {
                name: d.name,
                owner: d.owner,
                strategy: PlacementStrategy::from(d.strategy) as i32,
                replicas: d.replicas,
                created_ms: d.created_ms,
            })
            .collect();
        MemberState {
            member: self.domain.clone(),
            version: 0,
            coordinator: self.principal.clone(),
            grpc_addr: self.advertise_grpc.clone(),
            gossip_addr: fed.map(|f| f.gossip_addr.clone()).unwrap_or_default(),
            contribution_bytes: fed.map(|f| f.contribution).unwrap_or(0),
            nodes,
            datastores,
            hosted_bytes: self.meta.hosted_usage().map(|(t, _)| t).unwrap_or(0),
            used_elsewhere_bytes: self.used_elsewhere_cached(),
            removals: self.removals(),
            stopped_ms: 0,
            revoked: self
                .identity
                .revocations()
                .fingerprints()
                .into_iter()
                .map(|f| f.to_vec().into())
                .collect(),
        }
    }

    /// Checks the caller is another member's coordinator.
    pub fn authorize_peer<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        if self.links.fed().is_none() {
            return Err(Status::failed_precondition("this coordinator is not part of a federation"));
        }
        let caller = collective_rpc::peer(req, self.identity.revocations())?;
        if caller.role != Role::Coordinator || caller.principal.domain == self.domain {
            self.metrics.denials.inc();
            return Err(Status::permission_denied(format!(
                "{} ({}) may not call the federation API; only other members' coordinators may",
                caller.principal, caller.role
            )));
        }
        Ok(caller.principal)
    }
}

/// Publishes our state and reconciles with a random alive member, until the task is
/// aborted.
pub async fn maintain(state: Arc<State>, anti_entropy: Duration) {
    let mut publish = tokio::time::interval(PUBLISH_EVERY);
    let mut exchange = tokio::time::interval(anti_entropy);
    let mut last: Option<MemberState> = None;
    loop {
        tokio::select! {
            _ = publish.tick() => {
                let Some(fed) = state.links.fed() else { return };
                let s = state.clone();
                let Ok(mine) = tokio::task::spawn_blocking(move || {
                    s.learn_removals();
                    s.learn_revocations();
                    s.local_member_state()
                })
                .await
                else {
                    continue;
                };
                // Re-publish on change, and every minute regardless (Lamport version bump).
                let changed = last.as_ref().is_none_or(|l| {
                    let mut a = l.clone();
                    a.version = 0;
                    a != mine
                });
                if changed || publish_due(&last) {
                    fed.gossip.publish(mine.clone());
                    last = Some(MemberState { version: collective_core::unix_ms_now(), ..mine });
                }
                // A member we hear from but know nothing about (we just restarted, or it
                // just joined): ask it for everything now rather than at the next round.
                let unknown = fed
                    .gossip
                    .peers()
                    .into_iter()
                    .find(|p| p.state == PeerState::Alive && fed.gossip.state_of(&p.member).is_none());
                if let Some(p) = unknown {
                    exchange_with(&state, &p.member).await;
                }
            }
            _ = exchange.tick() => {
                let Some(fed) = state.links.fed() else { return };
                let alive = reachable(fed);
                if alive.is_empty() {
                    continue;
                }
                let pick = &alive[(collective_core::unix_ms_now() as usize) % alive.len()];
                exchange_with(&state, pick).await;
            }
        }
    }
}

/// Other members gossip does not hold down.
fn reachable(fed: &crate::links::Federated) -> Vec<String> {
    fed.gossip
        .peers()
        .into_iter()
        .filter(|p| p.state != PeerState::Down)
        .map(|p| p.member)
        .collect()
}

/// One anti-entropy round with `member`: both sides end up with the newer of each state.
async fn exchange_with(state: &State, member: &str) {
    let Some(fed) = state.links.fed() else { return };
    let Ok(channel) = state.links.channel(member) else { return };
    let req = ExchangeRequest {
        states: fed.gossip.signed_states(),
    };
    match FederationClient::new(channel).exchange(req).await {
        Ok(r) => {
            state.links.succeeded(member);
            let news = fed.gossip.merge(&r.into_inner().states);
            if news > 0 {
                tracing::debug!(peer = %member, news, "anti-entropy brought news");
            }
        }
        Err(e) => {
            tracing::debug!(peer = %member, "anti-entropy failed: {}", e.message());
            state.links.failed(member);
        }
    }
}

fn publish_due(last: &Option<MemberState>) -> bool {
    last.as_ref()
        .is_none_or(|l| collective_core::unix_ms_now().saturating_sub(l.version) > 60_000)
}

pub struct FederationService {
    pub state: Arc<State>,
}

#[tonic::async_trait]
impl Federation for FederationService {
    async fn exchange(&self, req: Request<ExchangeRequest>) -> Result<Response<ExchangeResponse>, Status> {
        self.state.authorize_peer(&req)?;
        let fed = self.state.links.fed().ok_or_else(|| Status::failed_precondition("not federated"))?;
        let states = req.into_inner().states;
        if states.len() > MAX_EXCHANGED_STATES {
            return Err(Status::invalid_argument(format!(
                "{} member states in one exchange; a federation has at most {MAX_EXCHANGED_STATES} members",
                states.len()
            )));
        }
        // Checking signatures is CPU work: off the runtime's threads.
        let gossip = fed.gossip.clone();
        let signed = tokio::task::spawn_blocking(move || {
            gossip.merge(&states);
            gossip.signed_states()
        })
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?;
        Ok(Response::new(ExchangeResponse { states: signed }))
    }

    async fn host_chunks(&self, req: Request<HostChunksRequest>) -> Result<Response<HostChunksResponse>, Status> {
        self.state.host_chunks(req).await
    }

    async fn read_tokens(&self, req: Request<ReadTokensRequest>) -> Result<Response<ReadTokensResponse>, Status> {
        self.state.read_tokens(req).await
    }

    async fn release_chunks(
        &self,
        req: Request<collective_proto::v1::ReleaseChunksRequest>,
    ) -> Result<Response<collective_proto::v1::ReleaseChunksResponse>, Status> {
        self.state.release_chunks(req).await
    }

    async fn risk(&self, req: Request<collective_proto::v1::RiskRequest>) -> Result<Response<collective_proto::v1::RiskReport>, Status> {
        self.state.peer_risk(req).await
    }

    async fn keep_recovery(
        &self,
        req: Request<collective_proto::v1::SignedRecoveryRecord>,
    ) -> Result<Response<collective_proto::v1::KeepRecoveryResponse>, Status> {
        self.state.keep_recovery(req).await
    }
}
