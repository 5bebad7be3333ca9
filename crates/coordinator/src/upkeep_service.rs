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

    /// The coordinator's workers, then each node's (`only`: just those nodes); nodes that
    /// are down or do not answer are listed as unreachable.
    async fn workers_everywhere(&self, only: Option<&[String]>) -> WorkersResponse {
        let mut out = WorkersResponse {
            workers: self
                .state
                .upkeep
                .workers
                .reports()
                .into_iter()
                .map(|r| WorkerInfo::of(r, ""))
                .collect(),
            unreachable: vec![],
        };
        let mut nodes: Vec<(String, bool)> = {
            let nodes = self.state.lock_nodes();
            nodes.iter().map(|(n, e)| (n.clone(), self.state.is_up(e))).collect()
        };
        nodes.sort();
        if let Some(only) = only {
            nodes.retain(|(n, _)| only.contains(n));
        }
        let asks = nodes.iter().map(|(node, up)| async move {
            if !up {
                return Err(format!("{node}: down"));
            }
            let mut control = self.state.control(node).map_err(|s| format!("{node}: {}", s.message()))?;
            let mut req = Request::new(WorkersRequest {});
            req.set_timeout(crate::upkeep::CONTROL_TIMEOUT);
            control
                .workers(req)
                .await
                .map(|r| r.into_inner().workers)
                .map_err(|s| format!("{node}: {}", s.message()))
        });
        for answer in futures::future::join_all(asks).await {
            match answer {
                Ok(w) => out.workers.extend(w),
                Err(e) => out.unreachable.push(e),
            }
        }
        out
    }

    async fn steer_worker_inner(&self, q: SteerWorkerRequest) -> Result<WorkersResponse, Status> {
        let up = &self.state.upkeep;
        let known = || {
            let mut names: Vec<&str> = up.workers.names();
            names.push("scrub");
            names.join(", ")
        };
        if let Some(w) = up.workers.find(&q.name) {
            if !q.node.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "'{}' runs on the coordinator, not on a node; leave out --node",
                    q.name
                )));
            }
            if w.set_paused(q.pause) {
                tracing::info!(worker = %q.name, "{}", if q.pause { "worker paused" } else { "worker resumed" });
                up.wake.notify_one();
            }
            return Ok(self.workers_everywhere(Some(&[])).await);
        }
        if q.name != "scrub" {
            return Err(Status::not_found(format!(
                "there is no worker named '{}'; workers: {}",
                q.name,
                known()
            )));
        }
        let nodes: Vec<String> = if q.node.is_empty() {
            let nodes = self.state.lock_nodes();
            nodes.keys().cloned().collect()
        } else {
            vec![self.node_arg(&q.node)?]
        };
        let mut failed = Vec::new();
        for node in &nodes {
            let r = async {
                let mut control = self.state.control(node)?;
                let mut req = Request::new(SteerWorkerRequest {
                    name: q.name.clone(),
                    node: String::new(),
                    pause: q.pause,
                });
                req.set_timeout(crate::upkeep::CONTROL_TIMEOUT);
                control.steer_worker(req).await
            }
            .await;
            if let Err(s) = r {
                failed.push(format!("{node}: {}", s.message()));
            }
        }
        if !failed.is_empty() {
            return Err(Status::unavailable(format!(
                "could not {} the scrub on {} of {} node(s): {}; try again when they are up",
                if q.pause { "pause" } else { "resume" },
                failed.len(),
                nodes.len(),
                failed.join("; ")
            )));
        }
        Ok(self.workers_everywhere(Some(&nodes)).await)
    }

    /// `node-02` or `node-02@alice.collective.local` → the registered node's principal.
    fn node_arg(&self, name: &str) -> Result<String, Status> {
        let full = if name.contains('@') {
            name.to_string()
        } else {
            format!("{name}@{}", self.state.domain)
        };
        if self.state.lock_nodes().contains_key(&full) {
            return Ok(full);
        }
        let mut known: Vec<String> = self.state.lock_nodes().keys().cloned().collect();
        known.sort();
        Err(Status::not_found(format!(
            "{full} is not a node of {} (registered: {})",
            self.state.domain,
            if known.is_empty() { "none".into() } else { known.join(", ") }
        )))
    }

    fn drain_status(&self, node: &str) -> Result<DrainStatus, Status> {
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
        let nodes = self.state.lock_nodes();
        let mut out = ScrubReport::default();
        let mut names: Vec<&String> = nodes.keys().collect();
        names.sort();
        for name in names {
            let e = &nodes[name];
            let scrub = e.usage.scrub.unwrap_or_default();
            out.chunks_checked += scrub.chunks_checked;
            out.corrupt_found += scrub.corrupt_found;
            out.running |= scrub.running && self.state.is_up(e);
            out.nodes.push(NodeScrub {
                node: name.clone(),
                state: if self.state.is_up(e) { NodeHealth::Up } else { NodeHealth::Down } as i32,
                scrub: Some(scrub),
            });
        }
        out.repaired = self.state.upkeep.counters.scrub_repaired.load(std::sync::atomic::Ordering::Relaxed);
        out
    }
}

#[tonic::async_trait]
impl Upkeep for UpkeepService {
    async fn repair_status(&self, req: Request<RepairStatusRequest>) -> Result<Response<RepairStatusResponse>, Status> {
        self.admin(&req)?;
        Ok(Response::new(self.state.repair_status()))
    }

    async fn start_scrub(&self, req: Request<StartScrubRequest>) -> Result<Response<ScrubReport>, Status> {
        self.admin(&req)?;
        let up: Vec<String> = {
            let nodes = self.state.lock_nodes();
            nodes.iter().filter(|(_, e)| self.state.is_up(e)).map(|(n, _)| n.clone()).collect()
        };
        if up.is_empty() {
            return Err(Status::failed_precondition("no node is up to scrub; start the nodes first"));
        }
        for node in &up {
            let mut control = self.state.control(node)?;
            let mut req = Request::new(StartScrubRequest {});
            req.set_timeout(crate::upkeep::CONTROL_TIMEOUT);
            match control.start_scrub(req).await {
                Ok(r) => {
                    if let Some(e) = self.state.lock_nodes().get_mut(node) {
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
            .map_err(Status::internal)
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
            && let Some(fed) = self.state.fed()
        {
            for s in fed.gossip.states() {
                if s.member == self.state.domain {
                    continue;
                }
                let answer = if !self.state.member_up(&s.member) {
                    Err(Status::unavailable("down"))
                } else {
                    match self.state.peer_channel(&s.member) {
                        Ok(ch) => tokio::time::timeout(
                            std::time::Duration::from_secs(20),
                            FederationClient::new(ch).risk(RiskRequest {
                                member: member.clone(),
                                local_only: true,
                            }),
                        )
                        .await
                        .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer"))),
                        Err(e) => Err(e),
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

fn add_risk(report: &mut RiskReport, r: MemberRisk) {
    report.files_under_replicated += r.files_under_replicated;
    report.bytes_under_replicated += r.bytes_under_replicated;
    report.files_unreadable += r.files_unreadable;
    report.bytes_unreadable += r.bytes_unreadable;
    report.owners.push(r);
}

/// What one chunk would be without a member.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Fine,
    Under,
    Gone,
}

impl State {
    /// `bob` or `bob.collective.local` → a member domain of this federation.
    pub fn member_arg(&self, name: &str) -> Result<String, Status> {
        let full = if name.contains('.') {
            name.to_string()
        } else {
            match self.fed() {
                Some(f) => format!("{name}.{}", f.domain),
                None => format!(
                    "{name}.{}",
                    self.domain.split_once('.').map(|(_, d)| d).unwrap_or("collective.local")
                ),
            }
        };
        let known = full == self.domain || self.fed().is_some_and(|f| f.gossip.state_of(&full).is_some());
        if !known {
            return Err(Status::not_found(format!(
                "{full} is not a member of this federation (see `collective federation peers`)"
            )));
        }
        Ok(full)
    }

    /// Our files that would fall below their replication factor, or become unreadable, if
    /// `member` left now.
    pub fn risk_of(&self, member: &str) -> Result<MemberRisk, Status> {
        let mut out = MemberRisk {
            owner: self.domain.clone(),
            ..Default::default()
        };
        let leaving_self = member == self.domain;
        let mut fates: HashMap<ChunkId, Fate> = HashMap::new();
        let mut files: Vec<Attr> = Vec::new();
        self.meta
            .walk_files(&RemotePath::root(), &mut |_, a| {
                files.push(a);
                true
            })
            .map_err(meta_status)?;
        for a in files {
            if leaving_self {
                // The namespace leaves with its coordinator.
                out.files_unreadable += 1;
                out.bytes_unreadable += a.size;
                continue;
            }
            let Ok(path) = collective_core::validate_path(&a.path) else {
                continue;
            };
            let Ok((_, manifest)) = self.meta.manifest(&path) else { continue };
            let mut worst = Fate::Fine;
            for c in manifest {
                let id = ChunkId(c.id);
                let fate = match fates.get(&id) {
                    Some(f) => *f,
                    None => {
                        let f = self.chunk_fate(&id, member)?;
                        fates.insert(id, f);
                        f
                    }
                };
                if fate == Fate::Gone {
                    worst = Fate::Gone;
                    break;
                }
                if fate == Fate::Under {
                    worst = Fate::Under;
                }
            }
            match worst {
                Fate::Gone => {
                    out.files_unreadable += 1;
                    out.bytes_unreadable += a.size;
                }
                Fate::Under => {
                    out.files_under_replicated += 1;
                    out.bytes_under_replicated += a.size;
                }
                Fate::Fine => {}
            }
        }
        Ok(out)
    }

    fn chunk_fate(&self, id: &ChunkId, member: &str) -> Result<Fate, Status> {
        let Some(rec) = self.meta.chunk(id).map_err(meta_status)? else {
            return Ok(Fate::Gone);
        };
        let want = self.wanted(&rec);
        let left = rec
            .replicas
            .iter()
            .filter(|n| member_of(n) != member && self.liveness(n) != Live::Lost)
            .count();
        Ok(if left == 0 {
            Fate::Gone
        } else if left < want {
            Fate::Under
        } else {
            Fate::Fine
        })
    }

    /// `Federation.ReleaseChunks`: the guest no longer needs these chunks here.
    pub async fn release_chunks(&self, req: Request<ReleaseChunksRequest>) -> Result<Response<ReleaseChunksResponse>, Status> {
        let guest = self.authorize_peer(&req)?.domain;
        let ids: Vec<ChunkId> = req.get_ref().ids.iter().filter_map(|b| ChunkId::from_slice(b)).collect();
        let released = self.meta.release_hosted(&guest, &ids).map_err(meta_status)?;
        self.meta.flush().await.map_err(meta_status)?;
        let mut per_node: HashMap<String, Vec<ChunkId>> = HashMap::new();
        let mut freed = 0u64;
        // Another guest may have the same chunk hosted here (the same ciphertext).
        let still_hosted: std::collections::HashSet<ChunkId> = if released.is_empty() {
            Default::default()
        } else {
            self.meta.hosted_all().filter_map(|r| r.ok()).map(|(_, id, _)| id).collect()
        };
        for (id, rec) in &released {
            freed += rec.size;
            if still_hosted.contains(id) {
                continue;
            }
            for n in &rec.nodes {
                per_node.entry(n.clone()).or_default().push(*id);
            }
        }
        self.delete_many(per_node).await;
        Ok(Response::new(ReleaseChunksResponse {
            released: released.len() as u64,
            freed_bytes: freed,
        }))
    }

    /// `Federation.Risk` for another member: our own files only.
    pub async fn peer_risk(self: &Arc<Self>, req: Request<RiskRequest>) -> Result<Response<RiskReport>, Status> {
        self.authorize_peer(&req)?;
        let member = req.get_ref().member.clone();
        let state = self.clone();
        let m = member.clone();
        let own = tokio::task::spawn_blocking(move || state.risk_of(&m))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        let mut report = RiskReport {
            member,
            ..Default::default()
        };
        add_risk(&mut report, own);
        Ok(Response::new(report))
    }
}

impl UpkeepService {
    async fn drain_node_inner(&self, req: Request<NodeRequest>) -> Result<Response<DrainStatus>, Status> {
        let q = req.into_inner();
        let node = self.node_arg(&q.node)?;
        let draining = !q.cancel;
        let meta = self.state.meta.clone();
        let n = node.clone();
        tokio::task::spawn_blocking(move || meta.set_draining(&n, draining).and_then(|_| meta.flush_blocking()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(meta_status)?;
        let status = self.drain_status(&node)?;
        {
            let up = &self.state.upkeep;
            let mut set = up.draining.lock().unwrap_or_else(|p| p.into_inner());
            let mut totals = up.drain_total.lock().unwrap_or_else(|p| p.into_inner());
            if draining {
                set.insert(node.clone());
                totals.insert(node.clone(), status.chunks_left);
            } else {
                set.remove(&node);
                totals.remove(&node);
            }
        }
        tracing::info!(%node, draining, chunks = status.chunks_left, "drain {}", if draining { "started" } else { "cancelled" });
        self.state.upkeep.wake.notify_one();
        Ok(Response::new(DrainStatus { draining, ..status }))
    }

    async fn remove_node_inner(&self, req: Request<NodeRequest>) -> Result<Response<RemoveNodeResponse>, Status> {
        let node = self.node_arg(&req.get_ref().node)?;
        let force = req.get_ref().force;
        let (mut only, mut only_bytes, mut short) = (0u64, 0u64, 0u64);
        for r in self.state.meta.chunks() {
            let (_, rec) = r.map_err(meta_status)?;
            if rec.refs == 0 || !rec.replicas.contains(&node) {
                continue;
            }
            let others = rec
                .replicas
                .iter()
                .filter(|n| **n != node && self.state.liveness(n) == Live::Up)
                .count();
            if others == 0 {
                only += 1;
                only_bytes += rec.size;
            } else if others < self.state.wanted(&rec) {
                short += 1;
            }
        }
        if only > 0 {
            let short = node.split('@').next().unwrap_or(&node).to_string();
            return Err(Status::failed_precondition(format!(
                "{node} still holds the only copy of {only} chunk(s) ({}); move them off first with `collective node drain {short}`, then remove it",
                collective_core::format_bytes(only_bytes)
            )));
        }
        if short > 0 && !force {
            let name = node.split('@').next().unwrap_or(&node).to_string();
            return Err(Status::failed_precondition(format!(
                "removing {node} would leave {short} chunk(s) with fewer copies than their datastores ask for; drain it first (`collective node drain {name}`, which needs room on other nodes), or pass --force to remove it anyway"
            )));
        }
        let meta = self.state.meta.clone();
        let n = node.clone();
        let forgotten = tokio::task::spawn_blocking(move || {
            let forgotten = meta.remove_node(&n)?;
            meta.flush_blocking()?;
            Ok::<_, collective_meta::MetaError>(forgotten)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(meta_status)?;
        self.state.lock_nodes().remove(&node);
        self.state.forget_control(&node);
        self.state.upkeep.draining.lock().unwrap_or_else(|p| p.into_inner()).remove(&node);
        self.state.upkeep.wake.notify_one();
        self.state.events.emit(
            "node-removed",
            &node,
            crate::events::Severity::Info,
            format!("node {node} was removed from the cluster ({forgotten} chunk copies forgotten)"),
        );
        Ok(Response::new(RemoveNodeResponse {
            node,
            chunks_forgotten: forgotten,
        }))
    }
}
