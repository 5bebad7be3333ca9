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
/// `creating`: the call may create a top-level name, so one unknown to us is looked up
/// with every member first (`State::route`).
macro_rules! forward_to_owner {
    ($svc:expr, $call:expr, $who:expr, $path:expr, $req:ident, $method:ident) => {
        if let Some(mut peer) = $svc.remote($path, false).await? {
            return $call.done(peer.$method(forwarded($req.into_inner(), &$who)).await.map(Response::into_inner));
        }
    };
    (creating; $svc:expr, $call:expr, $who:expr, $path:expr, $req:ident, $method:ident) => {
        if let Some(mut peer) = $svc.remote($path, true).await? {
            return $call.done(peer.$method(forwarded($req.into_inner(), &$who)).await.map(Response::into_inner));
        }
    };
}

// After the macro: the submodules use it.
mod read;
mod write;

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
    /// With `creating`, a top-level name unknown to us is first looked up with every
    /// member (a datastore created a moment ago elsewhere); reads do not wait for that.
    async fn remote(&self, path: &RemotePath, creating: bool) -> Result<Option<MetadataClient<Channel>>, Status> {
        let Some(top) = top_of(path.as_str()) else { return Ok(None) };
        let owner = if creating {
            self.state.route(top).await?
        } else {
            self.state.remote_owner(top)?
        };
        match owner {
            Some(member) => Ok(Some(
                MetadataClient::new(self.state.links.channel(&member)?)
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
        self.state.nodes.note_planned(&chosen, size);
        self.state.meta.add_pending(id, size, &chosen, caller).map_err(meta_status)?;
        let token = self
            .state
            .signer
            .sign(TokenOp::Put, id, &chosen, caller, size, self.state.token_ttl);
        Ok(ChunkPlacement {
            id: id.0.to_vec().into(),
            stored: false,
            targets: self.state.nodes.addrs(&chosen),
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
        if let Some(fed) = self.state.links.fed() {
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
                    let mut peer = MetadataClient::new(self.state.links.channel(&m)?);
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
        forward_to_owner!(creating; self, call, who, &path, req, mkdir);
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
        let (rs, rd) = (self.remote(&src, false).await?, self.remote(&dst, true).await?);
        if top_of(src.as_str()) != top_of(dst.as_str()) && (rs.is_some() || rd.is_some()) {
            return call.done(Err(meta_status(collective_meta::MetaError::CrossDatastore(
                src.to_string(),
                dst.to_string(),
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
        forward_to_owner!(creating; self, call, who, &path, req, symlink);
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

    async fn walk(&self, req: Request<PathRequest>) -> Result<Response<Self::WalkStream>, Status> {
        let (who, call) = self.begin("walk", &req, &req.get_ref().path)?;
        let path = match path_arg(&req.get_ref().path) {
            Ok(p) => p,
            Err(e) => return call.done(Err(e)),
        };
        if let Some(mut peer) = self.remote(&path, false).await? {
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

    async fn plan_write(&self, req: Request<PlanWriteRequest>) -> Result<Response<PlanWriteResponse>, Status> {
        self.handle_plan_write(req).await
    }

    async fn replace_target(&self, req: Request<ReplaceTargetRequest>) -> Result<Response<ChunkPlacement>, Status> {
        self.handle_replace_target(req).await
    }

    async fn commit_files(&self, req: Request<CommitFilesRequest>) -> Result<Response<CommitFilesResponse>, Status> {
        self.handle_commit_files(req).await
    }

    async fn write_policy(&self, req: Request<PathRequest>) -> Result<Response<WritePolicyResponse>, Status> {
        self.handle_write_policy(req).await
    }

    async fn read_plan(&self, req: Request<ReadPlanRequest>) -> Result<Response<ReadPlanResponse>, Status> {
        self.handle_read_plan(req).await
    }

    async fn report_bad_replica(&self, req: Request<ReportBadReplicaRequest>) -> Result<Response<ReportBadReplicaResponse>, Status> {
        self.handle_report_bad_replica(req).await
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let (who, call) = self.begin("status", &req, "")?;
        // Node names, addresses, capacities and certificates are this member's business.
        if who.domain != self.state.domain {
            self.state.metrics.denials.inc();
            return call.done(Err(Status::permission_denied(format!(
                "the status of {} is for its own principals, not {who}; ask your own member's coordinator (`collective status`)",
                self.state.domain
            ))));
        }
        let state = self.state.clone();
        let r = blocking(move || Ok(crate::status::status_report(&state))).await.and_then(|r| r);
        call.done(r)
    }
}
