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

impl State {
    /// Whether the top-level name `top` lives in this member's namespace.
    pub fn is_local_top(&self, top: &str) -> Result<bool, Error> {
        if self.meta.datastore(top)?.is_some() {
            return Ok(true);
        }
        let path = collective_core::validate_path(&format!("/{top}")).map_err(collective_meta::MetaError::from)?;
        Ok(self.meta.stat(&path).is_ok())
    }

    /// The member that owns datastore `top`, when it is another member's.
    pub fn remote_owner(&self, top: &str) -> Result<Option<String>, Error> {
        let Some(fed) = self.links.fed() else { return Ok(None) };
        if self.is_local_top(top)? {
            return Ok(None);
        }
        Ok(fed
            .gossip
            .states()
            .into_iter()
            .find(|s| s.member != self.domain && s.datastores.iter().any(|d| d.name == top))
            .map(|s| s.member))
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
                let alive: Vec<String> = fed
                    .gossip
                    .peers()
                    .into_iter()
                    .filter(|p| p.state != PeerState::Down)
                    .map(|p| p.member)
                    .collect();
                if alive.is_empty() {
                    continue;
                }
                let pick = &alive[(collective_core::unix_ms_now() as usize) % alive.len()];
                exchange_with(&state, pick).await;
            }
        }
    }
}

/// One anti-entropy round with `member`: both sides end up with the newer of each state.
async fn exchange_with(state: &State, member: &str) {
    let Some(fed) = state.links.fed() else { return };
    let Ok(channel) = state.links.channel(member) else { return };
    let req = ExchangeRequest {
        states: fed.gossip.states(),
    };
    match FederationClient::new(channel).exchange(req).await {
        Ok(r) => {
            state.links.succeeded(member);
            let news = fed.gossip.merge(r.into_inner().states);
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
        fed.gossip.merge(req.into_inner().states);
        Ok(Response::new(ExchangeResponse {
            states: fed.gossip.states(),
        }))
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
}
