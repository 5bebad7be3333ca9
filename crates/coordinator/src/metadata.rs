//! The `Metadata` service: what clients call. Every call checks the caller holds a client
//! certificate of this member; every path is validated before it reaches the store.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use collective_core::{ChunkId, RemotePath, validate_path};
use collective_core::{Principal, Rights};
use collective_meta::{Attr, ChunkRef, FileCommitIn, Kind, SEAL_LEN};
use collective_proto::v1::PlacementStrategy;
use collective_proto::v1::metadata_client::MetadataClient;
use collective_proto::v1::metadata_server::Metadata;
use collective_proto::v1::{
    ChunkLocation, ChunkPlacement, CommitFilesRequest, CommitFilesResponse, DirEntry, FileAttr, FileKind, FilePlan, ListRequest,
    ListResponse, MkdirRequest, PathRequest, PlanWriteRequest, PlanWriteResponse, ReadPlanRequest, ReadPlanResponse, RemoveRequest,
    RemoveResponse, RenameRequest, ReplaceTargetRequest, ReportBadReplicaRequest, ReportBadReplicaResponse, SetAttrRequest, StatusRequest,
    StatusResponse, SymlinkRequest, TokenOp, VerifyChunkRequest, WalkBatch, WritePolicyResponse,
};
use collective_rpc::forwarded;
use futures::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::access::top_of;
use crate::hosting::member_of;
use crate::state::{State, meta_status};

const LIST_PAGE_DEFAULT: usize = 1000;
const LIST_PAGE_MAX: usize = 10_000;
const WALK_BATCH: usize = 512;
const MAX_PLAN_CHUNKS: usize = 10_000;
const REMOTE_LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends a call about another member's datastore to that member's coordinator, naming the
/// end user (the owner checks its grants), and returns its answer from the enclosing RPC;
/// for a path of our own it does nothing and the RPC goes on locally.
macro_rules! forward_to_owner {
    ($svc:expr, $call:expr, $who:expr, $path:expr, $req:ident, $method:ident) => {
        if let Some(mut peer) = $svc.remote($path)? {
            return $call.done(peer.$method(forwarded($req.into_inner(), &$who)).await.map(Response::into_inner));
        }
    };
}

pub struct MetadataService {
    pub state: Arc<State>,
}

fn to_proto(a: Attr) -> FileAttr {
    FileAttr {
        path: a.path,
        inode: a.inode,
        kind: match a.kind {
            Kind::File => FileKind::File as i32,
            Kind::Dir => FileKind::Dir as i32,
            Kind::Symlink => FileKind::Symlink as i32,
        },
        size: a.size,
        mode: a.mode,
        mtime_ms: a.mtime_ms,
        owner: a.owner,
        chunks: a.count,
        version: a.version,
        target: a.target,
        ..Default::default()
    }
}

fn path_arg(p: &str) -> Result<RemotePath, Status> {
    validate_path(p).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn check_chunk_size(id: &ChunkId, size: u64) -> Result<(), Status> {
    if size == 0 || size > collective_core::MAX_CHUNK_BYTES {
        return Err(Status::invalid_argument(format!("chunk {} has an invalid size {size}", id.short())));
    }
    Ok(())
}

/// A placement failure: out of space (ENOSPC for a mount) or not enough live nodes.
fn placement_status(e: collective_placement::PlacementError) -> Status {
    match e.out_of_space() {
        true => collective_rpc::status_with_kind(tonic::Code::ResourceExhausted, e.to_string(), collective_rpc::ErrorKind::NoSpace),
        false => Status::failed_precondition(e.to_string()),
    }
}

fn chunk_arg(b: &[u8]) -> Result<ChunkId, Status> {
    ChunkId::from_slice(b).ok_or_else(|| Status::invalid_argument("malformed chunk id: expected 32 bytes"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

impl MetadataService {
    /// Finds the end user (a client of this member, or a user of another member named by
    /// its coordinator) and records the call in metrics.
    fn begin<T>(&self, method: &'static str, req: &Request<T>, target: &str) -> Result<(Principal, Call<'_>), Status> {
        self.state.metrics.rpcs.with_label_values(&[method]).inc();
        let user = self.state.end_user(req).inspect_err(|e| {
            self.state.metrics.rpc_errors.with_label_values(&[method]).inc();
            let caller = collective_rpc::peer_name(req);
            tracing::warn!(principal = %caller, op = method, %target, "refused: {}", e.message());
        })?;
        Ok((
            user.clone(),
            Call {
                state: &self.state,
                method,
                started: Instant::now(),
                who: user.to_string(),
                target: target.to_string(),
            },
        ))
    }

    /// The owner's Metadata service, when `path` is in another member's datastore.
    fn remote(&self, path: &RemotePath) -> Result<Option<MetadataClient<Channel>>, Status> {
        let Some(top) = top_of(path.as_str()) else { return Ok(None) };
        match self.state.remote_owner(top)? {
            Some(member) => Ok(Some(
                MetadataClient::new(self.state.peer_channel(&member)?)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            )),
            None => Ok(None),
        }
    }

    async fn flush(&self) -> Result<(), Status> {
        self.state.meta.flush().await.map_err(meta_status)
    }

    /// The nodes recorded as holding a chunk (none when it is unknown).
    fn replicas(&self, id: &ChunkId) -> Result<Vec<String>, Status> {
        Ok(self
            .state
            .meta
            .chunk(id)
            .map_err(meta_status)?
            .map(|r| r.replicas)
            .unwrap_or_default())
    }

    /// Places `count` new copies of a chunk on our nodes (never on `holders`; the first
    /// copy away from `previous`, the nodes of the file's previous chunks) and signs their
    /// token.
    fn placement(
        &self,
        id: &ChunkId,
        size: u64,
        count: usize,
        holders: &[String],
        previous: &[String],
        caller: &str,
    ) -> Result<ChunkPlacement, Status> {
        let req = collective_placement::Request {
            chunk: id,
            size,
            count,
            strategy: collective_placement::Strategy::Media,
            owner: &self.state.domain,
            reader: &self.state.domain,
            existing: holders,
            exclude: &[],
            previous,
        };
        let chosen = collective_placement::place(&self.state.placement_cluster(false), &req).map_err(placement_status)?;
        self.state.note_planned(&chosen, size);
        self.state.meta.add_pending(id, size, &chosen).map_err(meta_status)?;
        let token = self
            .state
            .signer
            .sign(TokenOp::Put, id, &chosen, caller, size, self.state.token_ttl);
        Ok(ChunkPlacement {
            id: id.0.to_vec().into(),
            stored: false,
            targets: self.state.addrs(&chosen),
            token: token.into(),
        })
    }
}

impl MetadataService {
    /// A file's attributes with how its chunks stand: the fewest live copies of any chunk,
    /// what its datastore wants, and how hot it is.
    fn file_health(&self, path: &RemotePath, attr: Attr) -> Result<FileAttr, Status> {
        let (_, manifest) = self.state.meta.manifest(path).map_err(meta_status)?;
        let wanted = self.state.policy(path.as_str())?.replicas as u32;
        let mut out = to_proto(attr);
        out.wanted_copies = wanted;
        out.min_copies = if manifest.is_empty() { wanted } else { u32::MAX };
        for c in &manifest {
            let id = ChunkId(c.id);
            let live = self
                .replicas(&id)?
                .iter()
                .filter(|n| self.state.liveness(n) == crate::upkeep::Live::Up)
                .count() as u32;
            out.min_copies = out.min_copies.min(live);
            if self.state.upkeep.extra(&id) > 0 {
                out.hot_chunks += 1;
            }
            out.reads = out.reads.max(self.state.upkeep.reads(&id));
        }
        Ok(out)
    }

    /// `ls /`: this member's top-level entries the user may see, then every other alive
    /// member's datastores that member lets the user see (each owner decides).
    async fn list_root(&self, who: &Principal, q: &ListRequest) -> Result<ListResponse, Status> {
        let limit = match q.limit as usize {
            0 => LIST_PAGE_DEFAULT,
            n => n.min(LIST_PAGE_MAX),
        };
        let after = (!q.start_after.is_empty()).then_some(q.start_after.as_str());
        let (entries, more) = self.state.meta.list(&RemotePath::root(), after, limit).map_err(meta_status)?;
        let mut out = Vec::new();
        for a in entries {
            let name = a.path.rsplit('/').next().unwrap_or("").to_string();
            if self.state.can_see(who, &name)? {
                out.push(DirEntry {
                    name,
                    attr: Some(to_proto(a)),
                });
            }
        }
        if more {
            return Ok(ListResponse { entries: out, more });
        }
        if let Some(fed) = self.state.fed() {
            let members: Vec<String> = fed
                .gossip
                .states()
                .into_iter()
                .filter(|s| s.member != self.state.domain && !s.datastores.is_empty())
                .filter(|s| fed.gossip.peer_state(&s.member) != Some(collective_gossip::PeerState::Down))
                .map(|s| s.member)
                .collect();
            let asks = members.into_iter().map(|m| {
                let req = ListRequest {
                    path: "/".into(),
                    start_after: String::new(),
                    limit: LIST_PAGE_MAX as u32,
                };
                async move {
                    let mut peer = MetadataClient::new(self.state.peer_channel(&m)?);
                    let r = tokio::time::timeout(REMOTE_LIST_TIMEOUT, peer.list(forwarded(req, who)))
                        .await
                        .map_err(|_| Status::deadline_exceeded(format!("{m} did not answer")))??;
                    Ok::<_, Status>((m, r.into_inner()))
                }
            });
            for r in futures::future::join_all(asks).await {
                match r {
                    Ok((m, list)) => {
                        let catalog = fed.gossip.state_of(&m).map(|s| s.datastores).unwrap_or_default();
                        for e in list.entries {
                            // Only the member's datastores, never a name we have ourselves.
                            if catalog.iter().any(|d| d.name == e.name) && !out.iter().any(|o| o.name == e.name) {
                                out.push(e);
                            }
                        }
                    }
                    Err(e) => tracing::debug!("listing a member's datastores failed: {}", e.message()),
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(ListResponse { entries: out, more: false })
    }
}

/// The directory that holds `path` (the root for the root).
fn parent_of(path: &RemotePath) -> RemotePath {
    path.split_last().map(|(p, _)| p).unwrap_or_else(|_| RemotePath::root())
}

/// Times one call and counts its failure.
struct Call<'a> {
    state: &'a State,
    method: &'static str,
    started: Instant,
    /// Who called and what about, for the log line of a failure.
    who: String,
    target: String,
}

impl Call<'_> {
    fn done<T>(self, r: Result<T, Status>) -> Result<Response<T>, Status> {
        self.state
            .metrics
            .rpc_seconds
            .with_label_values(&[self.method])
            .observe(self.started.elapsed().as_secs_f64());
        if let Err(e) = &r {
            self.state.metrics.rpc_errors.with_label_values(&[self.method]).inc();
            log_failure(&self.who, self.method, &self.target, e);
        }
        r.map(Response::new)
    }
}

/// Logs a failed call with who, what and on which target: server-side faults as errors,
/// refusals as warnings, ordinary answers (not found, exists, not empty) at debug.
pub fn log_failure(who: &str, op: &str, target: &str, e: &Status) {
    use tonic::Code;
    let msg = e.message();
    match e.code() {
        Code::Internal | Code::Unknown | Code::DataLoss | Code::Unavailable | Code::DeadlineExceeded => {
            tracing::error!(principal = %who, %op, %target, code = ?e.code(), "{msg}")
        }
        Code::PermissionDenied | Code::Unauthenticated | Code::ResourceExhausted => {
            tracing::warn!(principal = %who, %op, %target, code = ?e.code(), "{msg}")
        }
        _ => tracing::debug!(principal = %who, %op, %target, code = ?e.code(), "{msg}"),
    }
}

type WalkStream = Pin<Box<dyn Stream<Item = Result<WalkBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Metadata for MetadataService {
    type WalkStream = WalkStream;

    async fn stat(&self, req: Request<PathRequest>) -> Result<Response<FileAttr>, Status> {
        let (who, call) = self.begin("stat", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(self, call, who, &path, req, stat);
        let r = (|| {
            if !path.is_root() {
                self.state.require(&who, &path, Rights::READ)?;
            }
            let attr = self.state.meta.stat(&path).map_err(meta_status)?;
            if attr.kind == Kind::File {
                return self.file_health(&path, attr);
            }
            Ok(to_proto(attr))
        })();
        call.done(r)
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let (who, call) = self.begin("list", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(self, call, who, &path, req, list);
        if path.is_root() {
            let r = self.list_root(&who, req.get_ref()).await;
            return call.done(r);
        }
        let r = (|| {
            let q = req.get_ref();
            self.state.require(&who, &path, Rights::READ)?;
            let limit = match q.limit as usize {
                0 => LIST_PAGE_DEFAULT,
                n => n.min(LIST_PAGE_MAX),
            };
            let after = (!q.start_after.is_empty()).then_some(q.start_after.as_str());
            let (entries, more) = self.state.meta.list(&path, after, limit).map_err(meta_status)?;
            let entries = entries
                .into_iter()
                .map(|a| DirEntry {
                    name: a.path.rsplit('/').next().unwrap_or("").to_string(),
                    attr: Some(to_proto(a)),
                })
                .collect();
            Ok(ListResponse { entries, more })
        })();
        call.done(r)
    }

    async fn mkdir(&self, req: Request<MkdirRequest>) -> Result<Response<FileAttr>, Status> {
        let (who, call) = self.begin("mkdir", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(self, call, who, &path, req, mkdir);
        let q = req.into_inner();
        let target = path.to_string();
        let caller = who.to_string();
        let r = async {
            self.state.require(&who, &parent_of(&path), Rights::WRITE)?;
            let mode = if q.mode == 0 { 0o755 } else { q.mode };
            let a = self.state.meta.mkdir(&path, q.parents, mode, &caller).map_err(meta_status)?;
            self.flush().await?;
            Ok(to_proto(a))
        }
        .await;
        self.state.audit_failure(&who.to_string(), "mkdir", &target, &r);
        call.done(r)
    }

    async fn remove(&self, req: Request<RemoveRequest>) -> Result<Response<RemoveResponse>, Status> {
        let (who, call) = self.begin("remove", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(self, call, who, &path, req, remove);
        let q = req.into_inner();
        let target = path.to_string();
        let caller = who.to_string();
        let r = async {
            self.state.require(&who, &path, Rights::DELETE)?;
            if let Some(top) = top_of(path.as_str())
                && path.components().count() == 1
                && self.state.meta.datastore(top).map_err(meta_status)?.is_some()
            {
                return Err(Status::failed_precondition(format!(
                    "{path} is a datastore; remove what is inside it (`collective rm -r {path}/NAME`), the datastore itself stays"
                )));
            }
            let meta = self.state.meta.clone();
            let (files, dirs) = blocking(move || meta.remove(&path, q.recursive, &caller).map_err(meta_status)).await?;
            self.flush().await?;
            Ok(RemoveResponse { files, dirs })
        }
        .await;
        self.state.audit_failure(&who.to_string(), "remove", &target, &r);
        call.done(r)
    }

    async fn rename(&self, req: Request<RenameRequest>) -> Result<Response<FileAttr>, Status> {
        let (who, call) = self.begin("rename", &req, &req.get_ref().src)?;
        let (src, dst) = (path_arg(&req.get_ref().src)?, path_arg(&req.get_ref().dst)?);
        let (rs, rd) = (self.remote(&src)?, self.remote(&dst)?);
        if top_of(src.as_str()) != top_of(dst.as_str()) && (rs.is_some() || rd.is_some()) {
            return call.done(Err(Status::invalid_argument(format!(
                "cannot move {src} to {dst}: they are in different members' datastores; copy the data instead (get, then put)"
            ))));
        }
        if let Some(mut peer) = rs {
            return call.done(peer.rename(forwarded(req.into_inner(), &who)).await.map(Response::into_inner));
        }
        let target = src.to_string();
        let caller = who.to_string();
        let r = async {
            self.state.require(&who, &src, Rights::DELETE)?;
            self.state.require(&who, &parent_of(&dst), Rights::WRITE)?;
            let a = self.state.meta.rename(&src, &dst, &caller).map_err(meta_status)?;
            self.flush().await?;
            Ok(to_proto(a))
        }
        .await;
        self.state.audit_failure(&who.to_string(), "rename", &target, &r);
        call.done(r)
    }

    async fn symlink(&self, req: Request<SymlinkRequest>) -> Result<Response<FileAttr>, Status> {
        let (who, call) = self.begin("symlink", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(self, call, who, &path, req, symlink);
        let q = req.into_inner();
        let target = path.to_string();
        let caller = who.to_string();
        let r = async {
            self.state.require(&who, &parent_of(&path), Rights::WRITE)?;
            let a = self.state.meta.symlink(&path, &q.target, &caller).map_err(meta_status)?;
            self.flush().await?;
            Ok(to_proto(a))
        }
        .await;
        self.state.audit_failure(&who.to_string(), "symlink", &target, &r);
        call.done(r)
    }

    async fn set_attr(&self, req: Request<SetAttrRequest>) -> Result<Response<FileAttr>, Status> {
        let (who, call) = self.begin("set_attr", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(self, call, who, &path, req, set_attr);
        let q = req.into_inner();
        let target = path.to_string();
        let caller = who.to_string();
        let r = async {
            if path.is_root() {
                return Err(Status::permission_denied("the root directory's attributes cannot be changed"));
            }
            self.state.require(&who, &path, Rights::WRITE)?;
            let a = self.state.meta.set_attr(&path, q.mode, q.mtime_ms, &caller).map_err(meta_status)?;
            self.flush().await?;
            Ok(to_proto(a))
        }
        .await;
        self.state.audit_failure(&who.to_string(), "setattr", &target, &r);
        call.done(r)
    }

    async fn plan_write(&self, req: Request<PlanWriteRequest>) -> Result<Response<PlanWriteResponse>, Status> {
        let (who, call) = self.begin("plan_write", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(self, call, who, &path, req, plan_write);
        let q = req.into_inner();
        let caller = who.to_string();
        let r = async {
            self.state.require(&who, &path, Rights::WRITE)?;
            if q.chunks.len() > MAX_PLAN_CHUNKS {
                return Err(Status::invalid_argument(format!("at most {MAX_PLAN_CHUNKS} chunks per plan")));
            }
            let policy = self.state.policy(path.as_str())?;
            let mut placements: Vec<Option<ChunkPlacement>> = Vec::with_capacity(q.chunks.len());
            let mut new: Vec<(usize, ChunkId, u64)> = Vec::new();
            for (i, c) in q.chunks.iter().enumerate() {
                let id = chunk_arg(&c.id)?;
                check_chunk_size(&id, c.size)?;
                let Some(rec) = self.state.meta.chunk(&id).map_err(meta_status)?.filter(|r| !r.replicas.is_empty()) else {
                    placements.push(None);
                    new.push((i, id, c.size));
                    continue;
                };
                if rec.refs == 0 {
                    // Reused before garbage collection took it: give the commit time.
                    self.state.meta.touch_unreferenced(&id).map_err(meta_status)?;
                }
                let existing = rec.replicas;
                // Already stored. When copies were lost, this write tops them up on our
                // nodes if it can; otherwise the chunk stays as it is (repair's job).
                let missing = policy.replicas.saturating_sub(existing.len());
                let topped_up = (missing > 0)
                    .then(|| self.placement(&id, c.size, missing, &existing, &[], &caller).ok())
                    .flatten();
                placements.push(Some(topped_up.unwrap_or(ChunkPlacement {
                    id: c.id.clone(),
                    stored: true,
                    targets: vec![],
                    token: Default::default(),
                })));
            }
            if policy.spread {
                let chunks: Vec<(ChunkId, u64)> = new.iter().map(|(_, id, size)| (*id, *size)).collect();
                for ((i, _, _), p) in new.iter().zip(self.state.plan_spread(&chunks, &policy, &caller).await?) {
                    placements[*i] = Some(p);
                }
            } else {
                let mut previous: Vec<String> = Vec::new();
                for (i, id, size) in &new {
                    let p = self.placement(id, *size, policy.replicas, &[], &previous, &caller)?;
                    previous = p.targets.first().map(|t| vec![t.node.clone()]).unwrap_or_default();
                    placements[*i] = Some(p);
                }
            }
            Ok(PlanWriteResponse {
                placements: placements.into_iter().flatten().collect(),
            })
        }
        .await;
        call.done(r)
    }

    async fn replace_target(&self, req: Request<ReplaceTargetRequest>) -> Result<Response<ChunkPlacement>, Status> {
        let (who, call) = self.begin("replace_target", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(self, call, who, &path, req, replace_target);
        let q = req.into_inner();
        let caller = who.to_string();
        let r = (|| {
            self.state.require(&who, &path, Rights::WRITE)?;
            let id = chunk_arg(&q.id)?;
            check_chunk_size(&id, q.size)?;
            let count = (q.count as usize).clamp(1, self.state.policy(path.as_str())?.replicas);
            let req = collective_placement::Request {
                chunk: &id,
                size: q.size,
                count,
                strategy: collective_placement::Strategy::Media,
                owner: &self.state.domain,
                reader: &self.state.domain,
                existing: &q.avoid,
                exclude: &[],
                previous: &[],
            };
            let new = collective_placement::place(&self.state.placement_cluster(false), &req).map_err(placement_status)?;
            self.state.note_planned(&new, q.size);
            self.state.meta.extend_pending(&id, q.size, &new).map_err(meta_status)?;
            let token = self
                .state
                .signer
                .sign(TokenOp::Put, &id, &new, &caller, q.size, self.state.token_ttl);
            Ok(ChunkPlacement {
                id: q.id.clone(),
                stored: false,
                targets: self.state.addrs(&new),
                token: token.into(),
            })
        })();
        call.done(r)
    }

    async fn commit_files(&self, req: Request<CommitFilesRequest>) -> Result<Response<CommitFilesResponse>, Status> {
        let (who, call) = self.begin(
            "commit_files",
            &req,
            req.get_ref().files.first().map(|f| f.path.as_str()).unwrap_or(""),
        )?;
        let first = match req.get_ref().files.first() {
            Some(f) => path_arg(&f.path)?,
            None => return call.done(Ok(CommitFilesResponse { files: vec![] })),
        };
        forward_to_owner!(self, call, who, &first, req, commit_files);
        let q = req.into_inner();
        let target = if q.files.len() > 1 {
            format!("{first} (and {} more)", q.files.len() - 1)
        } else {
            first.to_string()
        };
        let caller = who.to_string();
        let r = async {
            let mut files = Vec::with_capacity(q.files.len());
            let mut min_replicas = usize::MAX;
            let mut seals = Vec::new();
            for f in q.files {
                let path = path_arg(&f.path)?;
                if top_of(path.as_str()) != top_of(first.as_str()) && self.remote(&path)?.is_some() {
                    return Err(Status::invalid_argument(
                        "one commit may not span members; commit each member's files separately",
                    ));
                }
                self.state.require(&who, &path, Rights::WRITE)?;
                let policy = self.state.policy(path.as_str())?;
                min_replicas = min_replicas.min(policy.replicas);
                if policy.spread {
                    self.state.used_elsewhere_stale.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                for c in &f.chunks {
                    if !c.seal.is_empty() {
                        let seal = <[u8; SEAL_LEN]>::try_from(c.seal.as_ref())
                            .map_err(|_| Status::invalid_argument(format!("a chunk seal of {path} is not {SEAL_LEN} bytes")))?;
                        seals.push((chunk_arg(&c.id)?, seal));
                    }
                }
                let chunks = f
                    .chunks
                    .iter()
                    .map(|c| {
                        Ok(ChunkRef {
                            id: chunk_arg(&c.id)?.0,
                            offset: c.offset,
                            size: c.size,
                        })
                    })
                    .collect::<Result<Vec<_>, Status>>()?;
                let stored_on = f.chunks.into_iter().map(|c| c.stored_on).collect();
                files.push(FileCommitIn {
                    path,
                    size: f.size,
                    mode: if f.mode == 0 { 0o644 } else { f.mode },
                    mtime_ms: f.mtime_ms,
                    chunks,
                    stored_on,
                    parents: f.parents,
                    replicas: policy.replicas as u32,
                    strategy: policy.datastore.as_ref().map_or(collective_core::Strategy::Media, |d| d.strategy),
                });
            }
            let meta = self.state.meta.clone();
            // Every file needs the copies its own datastore asks for; one commit may hold
            // files of several datastores, so the smallest count is checked here (each
            // chunk was planned with its own).
            let replication = if min_replicas == usize::MAX {
                self.state.replication
            } else {
                min_replicas
            };
            let attrs = blocking(move || {
                meta.put_seals(&seals).map_err(meta_status)?;
                meta.commit_files(&files, &caller, replication).map_err(meta_status)
            })
            .await?;
            self.flush().await?;
            collective_core::crash_point("commit:after-flush");
            Ok(CommitFilesResponse {
                files: attrs.into_iter().map(to_proto).collect(),
            })
        }
        .await;
        self.state.audit_failure(&who.to_string(), "commit", &target, &r);
        call.done(r)
    }

    async fn read_plan(&self, req: Request<ReadPlanRequest>) -> Result<Response<ReadPlanResponse>, Status> {
        let (who, call) = self.begin("read_plan", &req, req.get_ref().paths.first().map(String::as_str).unwrap_or(""))?;
        if let Some(first) = req.get_ref().paths.first() {
            let first = path_arg(first)?;
            forward_to_owner!(self, call, who, &first, req, read_plan);
        }
        let caller = who.to_string();
        let r = async {
            let mut files = Vec::new();
            for p in &req.get_ref().paths {
                let path = path_arg(p)?;
                self.state.require(&who, &path, Rights::READ)?;
                let (attr, manifest) = self.state.meta.manifest(&path).map_err(meta_status)?;
                self.state.upkeep.note_reads(manifest.iter().map(|c| ChunkId(c.id)));
                // (id, stored size, replica names, addresses with tokens)
                let mut chunks = Vec::with_capacity(manifest.len());
                for c in &manifest {
                    let id = ChunkId(c.id);
                    chunks.push((id, c.size, self.replicas(&id)?, Vec::new()));
                }
                self.state.add_remote_replicas(&mut chunks, &caller).await;
                let mut locations = Vec::with_capacity(manifest.len());
                // Bytes of this plan each node is asked first for.
                let mut load: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
                for (i, (c, (id, _, replicas, remote))) in manifest.into_iter().zip(chunks).enumerate() {
                    let local: Vec<String> = replicas.into_iter().filter(|n| member_of(n) == self.state.domain).collect();
                    // Nodes we know are down go last: tried only if every live copy fails.
                    let (mut local, down): (Vec<String>, Vec<String>) = {
                        let nodes = self.state.lock_nodes();
                        local.into_iter().partition(|n| nodes.get(n).is_some_and(|e| self.state.is_up(e)))
                    };
                    // First the replica with the least of this file so far, so that every
                    // stretch of the file is read from all nodes evenly (ties rotate).
                    if !local.is_empty() {
                        let n = local.len();
                        local.rotate_left(i % n);
                        let first = (0..n).min_by_key(|&k| load.get(&local[k]).copied().unwrap_or(0)).unwrap_or(0);
                        local[..=first].rotate_right(1);
                        *load.entry(local[0].clone()).or_default() += c.size;
                    }
                    local.extend(down.iter().cloned());
                    let token = self
                        .state
                        .signer
                        .sign(TokenOp::Get, &id, &local, &caller, c.size, self.state.token_ttl);
                    // Live copies (ours, then other members'), then ours we know are down.
                    let up = local.len() - down.len();
                    let mut addrs = self.state.addrs(&local[..up]);
                    addrs.extend(remote);
                    addrs.extend(self.state.addrs(&down));
                    let seal = self.state.meta.seal(&id).map_err(meta_status)?;
                    locations.push(ChunkLocation {
                        id: id.0.to_vec().into(),
                        offset: c.offset,
                        size: c.size,
                        replicas: addrs,
                        token: token.into(),
                        seal: seal.map(|s| s.to_vec().into()).unwrap_or_default(),
                    });
                }
                files.push(FilePlan {
                    attr: Some(to_proto(attr)),
                    chunks: locations,
                });
            }
            Ok(ReadPlanResponse { files })
        }
        .await;
        call.done(r)
    }

    async fn write_policy(&self, req: Request<PathRequest>) -> Result<Response<WritePolicyResponse>, Status> {
        let (who, call) = self.begin("write_policy", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(self, call, who, &path, req, write_policy);
        let r = (|| {
            self.state.require(&who, &path, Rights::WRITE)?;
            let policy = self.state.policy(path.as_str())?;
            let encrypt = policy.encrypt();
            Ok(match policy.datastore {
                Some(d) => WritePolicyResponse {
                    datastore: d.name,
                    strategy: PlacementStrategy::from(d.strategy) as i32,
                    replicas: policy.replicas as u32,
                    encrypt,
                    secret: if encrypt { d.secret.to_vec().into() } else { Default::default() },
                },
                None => WritePolicyResponse {
                    replicas: policy.replicas as u32,
                    ..Default::default()
                },
            })
        })();
        call.done(r)
    }

    async fn walk(&self, req: Request<PathRequest>) -> Result<Response<Self::WalkStream>, Status> {
        let (who, call) = self.begin("walk", &req, &req.get_ref().path)?;
        let path = match path_arg(&req.get_ref().path) {
            Ok(p) => p,
            Err(e) => return call.done(Err(e)),
        };
        if let Some(mut peer) = self.remote(&path)? {
            let r = peer
                .walk(forwarded(req.into_inner(), &who))
                .await
                .map(|s| Box::pin(s.into_inner()) as WalkStream);
            return call.done(r);
        }
        if let Err(e) = self.state.require(&who, &path, Rights::READ) {
            return call.done(Err(e));
        }
        if let Err(e) = self.state.meta.stat(&path) {
            return call.done(Err(meta_status(e)));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WalkBatch, Status>>(4);
        let meta = self.state.meta.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(WALK_BATCH);
            let r = meta.walk_files(&path, &mut |_, attr| {
                batch.push(to_proto(attr));
                if batch.len() == WALK_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(WALK_BATCH));
                    return tx.blocking_send(Ok(WalkBatch { entries: full })).is_ok();
                }
                true
            });
            match r {
                Ok(()) if !batch.is_empty() => {
                    let _ = tx.blocking_send(Ok(WalkBatch { entries: batch }));
                }
                Ok(()) => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(meta_status(e)));
                }
            }
        });
        call.done(Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as WalkStream))
    }

    async fn report_bad_replica(&self, req: Request<ReportBadReplicaRequest>) -> Result<Response<ReportBadReplicaResponse>, Status> {
        let (who, call) = self.begin("report_bad_replica", &req, &req.get_ref().node)?;
        let node_domain = req.get_ref().node.split_once('@').map(|(_, d)| d.to_string()).unwrap_or_default();
        if node_domain != self.state.domain && self.state.fed().is_some() && !node_domain.is_empty() {
            let r = async {
                let mut peer = MetadataClient::new(self.state.peer_channel(&node_domain)?);
                peer.report_bad_replica(forwarded(req.into_inner(), &who))
                    .await
                    .map(Response::into_inner)
            }
            .await;
            return call.done(r);
        }
        let caller = who.to_string();
        let q = req.into_inner();
        let r = async {
            let id = chunk_arg(&q.id)?;
            self.state.metrics.corrupt_reports.inc();
            tracing::warn!(chunk = %id.short(), node = %q.node, reporter = %caller, reason = %q.reason, "bad replica reported");
            // Trust the node's own verification, not the report: ask it to re-hash.
            let mut control = self.state.control(&q.node)?;
            let mut verify = Request::new(VerifyChunkRequest { chunk_id: q.id.clone() });
            verify.set_timeout(crate::upkeep::CONTROL_TIMEOUT);
            let verdict = control.verify_chunk(verify).await;
            let bad = match verdict {
                Ok(v) => !v.get_ref().present || !v.get_ref().intact,
                Err(s) => {
                    tracing::warn!(node = %q.node, "cannot verify reported replica: {}", s.message());
                    false
                }
            };
            let removed = if bad {
                let removed = self.state.meta.remove_replica(&id, &q.node).map_err(meta_status)?;
                self.flush().await?;
                self.state.events.emit(
                    "corruption-found",
                    &q.node,
                    crate::events::Severity::Critical,
                    format!(
                        "a client could not read chunk {} from node {}, which confirms the copy is missing or corrupt; it is repaired from other copies",
                        id.short(),
                        q.node
                    ),
                );
                removed
            } else {
                false
            };
            Ok(ReportBadReplicaResponse { removed })
        }
        .await;
        call.done(r)
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let (_, call) = self.begin("status", &req, "")?;
        let state = self.state.clone();
        let r = blocking(move || Ok(crate::status::status_report(&state))).await.and_then(|r| r);
        call.done(r)
    }
}
