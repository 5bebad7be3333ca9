//! The `Upkeep` service (repair and scrub status, node drain and removal, what is at risk
//! if a member leaves) for this member's admins, and the federation calls behind it:
//! releasing hosted chunks and answering another member's risk question.

use std::collections::HashMap;
use std::sync::Arc;

use collective_core::{ChunkId, Principal, RemotePath};
use collective_meta::Attr;
use collective_proto::v1::federation_client::FederationClient;
use collective_proto::v1::upkeep_server::Upkeep;
use collective_proto::v1::{
    CollectUnknownRequest, CollectUnknownResponse, DrainStatus, MemberRisk, NodeHealth, NodeRequest, NodeScrub, ReleaseChunksRequest,
    ReleaseChunksResponse, RemoveNodeResponse, RepairStatusRequest, RepairStatusResponse, RiskReport, RiskRequest, ScrubReport,
    StartScrubRequest, SteerWorkerRequest, WorkerInfo, WorkersRequest, WorkersResponse,
};
use tonic::{Request, Response, Status};

use crate::hosting::member_of;
use crate::state::{State, meta_status};
use crate::upkeep::Live;

mod backup;
mod drain;
mod risk;
mod workers;

use risk::add_risk;

pub struct UpkeepService {
    pub state: Arc<State>,
}

impl UpkeepService {
    /// Only this member's admins run upkeep commands.
    fn admin<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let who = self.state.end_user(req)?;
        if who.domain != self.state.domain || !self.state.is_admin(&who) {
            self.state.metrics.denials.inc();
            return Err(Status::permission_denied(format!(
                "{who} is not an admin of {}; repair, scrub and node commands need an admin certificate (see `admins` in coordinator.toml)",
                self.state.domain
            )));
        }
        Ok(who)
    }

    /// `admin` for a node operation that changes something: a refusal is audited too.
    fn admin_audited(&self, req: &Request<NodeRequest>, op: &str) -> Result<String, Status> {
        self.admin(req).map(|w| w.to_string()).inspect_err(|e| {
            let who = collective_rpc::peer_name(req);
            self.state
                .audit(&who, op, &req.get_ref().node, &Err::<(), _>(e.clone()), |_| String::new());
        })
    }

    /// `node-02` or `node-02@alice.collective.local` → the registered node's principal.
    pub(super) fn node_arg(&self, name: &str) -> Result<String, Status> {
        let full = if name.contains('@') {
            name.to_string()
        } else {
            format!("{name}@{}", self.state.domain)
        };
        if self.state.nodes.lock().contains_key(&full) {
            return Ok(full);
        }
        let mut known: Vec<String> = self.state.nodes.lock().keys().cloned().collect();
        known.sort();
        Err(Status::not_found(format!(
            "{full} is not a node of {} (registered: {})",
            self.state.domain,
            if known.is_empty() { "none".into() } else { known.join(", ") }
        )))
    }

    pub(super) fn drain_status(&self, node: &str) -> Result<DrainStatus, Status> {
        let (mut chunks, mut bytes) = (0u64, 0u64);
        for r in self.state.meta.chunks() {
            let (_, rec) = r.map_err(meta_status)?;
            if rec.replicas.iter().any(|n| n == node) {
                chunks += 1;
                bytes += rec.size;
            }
        }
        let draining = self.state.upkeep.is_draining(node);
        let total = self
            .state
            .upkeep
            .drain_total
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .copied()
            .unwrap_or(chunks)
            .max(chunks);
        Ok(DrainStatus {
            node: node.to_string(),
            draining,
            chunks_left: chunks,
            bytes_left: bytes,
            chunks_total: total,
            done: draining && chunks == 0,
            blocked: if draining && chunks > 0 {
                self.state
                    .upkeep
                    .blocked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|b| b.reason.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            },
        })
    }

    fn scrub_report(&self) -> ScrubReport {
        let nodes = self.state.nodes.lock();
        let mut out = ScrubReport::default();
        let mut names: Vec<&String> = nodes.keys().collect();
        names.sort();
        for name in names {
            let e = &nodes[name];
            let scrub = e.usage.scrub.unwrap_or_default();
            out.chunks_checked += scrub.chunks_checked;
            out.corrupt_found += scrub.corrupt_found;
            out.running |= scrub.running && self.state.nodes.is_up(e);
            out.nodes.push(NodeScrub {
                node: name.clone(),
                state: if self.state.nodes.is_up(e) {
                    NodeHealth::Up
                } else {
                    NodeHealth::Down
                } as i32,
                scrub: Some(scrub),
            });
        }
        out.repaired = self.state.upkeep.counters.scrub_repaired.load(std::sync::atomic::Ordering::Relaxed);
        out
    }
}

#[tonic::async_trait]
impl Upkeep for UpkeepService {
    type BackupMetadataStream = backup::BackupStream;

    async fn backup_metadata(
        &self,
        req: Request<collective_proto::v1::BackupMetadataRequest>,
    ) -> Result<Response<Self::BackupMetadataStream>, Status> {
        self.stream_backup(req).await
    }

    async fn repair_status(&self, req: Request<RepairStatusRequest>) -> Result<Response<RepairStatusResponse>, Status> {
        self.admin(&req)?;
        Ok(Response::new(self.state.repair_status()))
    }

    async fn start_scrub(&self, req: Request<StartScrubRequest>) -> Result<Response<ScrubReport>, Status> {
        let who = self.admin(&req)?;
        self.state.throttles.check(&who, crate::throttle::Costly::Scrub)?;
        let up: Vec<String> = {
            let nodes = self.state.nodes.lock();
            nodes
                .iter()
                .filter(|(_, e)| self.state.nodes.is_up(e))
                .map(|(n, _)| n.clone())
                .collect()
        };
        if up.is_empty() {
            return Err(Status::failed_precondition("no node is up to scrub; start the nodes first"));
        }
        for node in &up {
            let mut control = self.state.nodes.control(node)?;
            let mut req = Request::new(StartScrubRequest {});
            req.set_timeout(crate::upkeep::CONTROL_TIMEOUT);
            match control.start_scrub(req).await {
                Ok(r) => {
                    if let Some(e) = self.state.nodes.lock().get_mut(node) {
                        e.usage.scrub = Some(r.into_inner());
                    }
                }
                Err(s) => tracing::warn!(%node, "cannot start a scrub: {}", s.message()),
            }
        }
        Ok(Response::new(self.scrub_report()))
    }

    async fn scrub_report(&self, req: Request<StartScrubRequest>) -> Result<Response<ScrubReport>, Status> {
        self.admin(&req)?;
        Ok(Response::new(self.scrub_report()))
    }

    async fn drain_node(&self, req: Request<NodeRequest>) -> Result<Response<DrainStatus>, Status> {
        let who = self.admin_audited(&req, "node-drain")?;
        let target = req.get_ref().node.clone();
        let r = self.drain_node_inner(req).await;
        self.state.audit(&who, "node-drain", &target, &r, |r| {
            if r.get_ref().draining {
                format!("{} chunk(s) to move", r.get_ref().chunks_left)
            } else {
                "cancelled".into()
            }
        });
        r
    }

    async fn drain_status(&self, req: Request<NodeRequest>) -> Result<Response<DrainStatus>, Status> {
        self.admin(&req)?;
        let node = self.node_arg(&req.get_ref().node)?;
        Ok(Response::new(self.drain_status(&node)?))
    }

    async fn remove_node(&self, req: Request<NodeRequest>) -> Result<Response<RemoveNodeResponse>, Status> {
        let who = self.admin_audited(&req, "node-remove")?;
        let target = req.get_ref().node.clone();
        let r = self.remove_node_inner(req).await;
        self.state.audit(&who, "node-remove", &target, &r, |r| {
            format!("{} chunk copies forgotten", r.get_ref().chunks_forgotten)
        });
        r
    }

    async fn collect_unknown(&self, req: Request<CollectUnknownRequest>) -> Result<Response<CollectUnknownResponse>, Status> {
        let who = self.admin(&req).map(|w| w.to_string()).inspect_err(|e| {
            let who = collective_rpc::peer_name(&req);
            self.state
                .audit(&who, "unknown-collect", "unknown chunks", &Err::<(), _>(e.clone()), |_| {
                    String::new()
                });
        })?;
        let q = req.into_inner();
        let r = self
            .state
            .collect_unknown(std::time::Duration::from_millis(q.min_age_ms), q.dry_run)
            .await
            .map_err(Status::from)
            .map(Response::new);
        if !q.dry_run {
            self.state.audit(&who, "unknown-collect", "unknown chunks", &r, |r| {
                format!("{} deleted, {} kept", r.get_ref().deleted_chunks, r.get_ref().kept_chunks)
            });
        }
        r
    }

    async fn workers(&self, req: Request<WorkersRequest>) -> Result<Response<WorkersResponse>, Status> {
        self.admin(&req)?;
        Ok(Response::new(self.workers_everywhere(None).await))
    }

    async fn steer_worker(&self, req: Request<SteerWorkerRequest>) -> Result<Response<WorkersResponse>, Status> {
        let op = if req.get_ref().pause { "worker-pause" } else { "worker-resume" };
        let target = match req.get_ref().node.as_str() {
            "" => req.get_ref().name.clone(),
            node => format!("{}@{node}", req.get_ref().name),
        };
        let who = self.admin(&req).map(|w| w.to_string()).inspect_err(|e| {
            let who = collective_rpc::peer_name(&req);
            self.state.audit(&who, op, &target, &Err::<(), _>(e.clone()), |_| String::new());
        })?;
        let r = self.steer_worker_inner(req.into_inner()).await.map(Response::new);
        self.state.audit(&who, op, &target, &r, |_| String::new());
        r
    }

    async fn risk(&self, req: Request<RiskRequest>) -> Result<Response<RiskReport>, Status> {
        let who = self.state.end_user(&req)?;
        if who.domain != self.state.domain {
            return Err(Status::permission_denied("ask your own member's coordinator"));
        }
        self.state.throttles.check(&who, crate::throttle::Costly::Risk)?;
        let member = self.state.member_arg(&req.get_ref().member)?;
        let mut report = RiskReport {
            member: member.clone(),
            ..Default::default()
        };
        let state = self.state.clone();
        let m = member.clone();
        let own = tokio::task::spawn_blocking(move || state.risk_of(&m))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        add_risk(&mut report, own);
        if !req.get_ref().local_only
            && let Some(fed) = self.state.links.fed()
        {
            for s in fed.gossip.states() {
                if s.member == self.state.domain {
                    continue;
                }
                let answer = if !self.state.member_up(&s.member) {
                    Err(Status::unavailable("down"))
                } else {
                    match self.state.links.channel(&s.member) {
                        Ok(ch) => tokio::time::timeout(
                            std::time::Duration::from_secs(20),
                            FederationClient::new(ch).risk(RiskRequest {
                                member: member.clone(),
                                local_only: true,
                            }),
                        )
                        .await
                        .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer"))),
                        Err(e) => Err(Status::from(e)),
                    }
                };
                match answer {
                    Ok(r) => {
                        for o in r.into_inner().owners {
                            add_risk(&mut report, o);
                        }
                    }
                    Err(_) => report.unanswered.push(s.member.clone()),
                }
            }
        }
        Ok(Response::new(report))
    }
}
