//! The write path: chunk, hash, dedup, stream to R nodes, commit atomically.
//!
//! A blocking reader thread chunks the inputs (FastCDC) and hashes them (BLAKE3); every
//! chunk first takes its size from the client's memory budget, which it gives back once
//! stored, so memory stays flat whatever the input size. The async side plans chunks in
//! batches, uploads them to their targets concurrently (asking for substitutes when a
//! node fails), and commits finished files in batches. A file becomes visible only at its
//! commit, after every chunk has R acknowledged copies.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use collective_core::{ChunkId, RemotePath};
use collective_dataplane::NodeTarget;
use collective_proto::v1::{
    ChunkDesc, ChunkPlacement, ChunkRef, CommitFilesRequest, FileAttr, FileCommit, NodeAddr, PlanWriteRequest, ReplaceTargetRequest,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::ClientError;
use crate::chunking::{Chunker, chunk_params};
use crate::sealing::{self, SEAL_LEN};
use crate::session::{Client, Progress};

/// Chunks planned in one coordinator call.
const PLAN_BATCH: usize = 256;
/// Files committed in one coordinator call.
const COMMIT_BATCH: usize = 256;
/// Rounds of substitute targets before a chunk upload gives up.
const MAX_UPLOAD_ROUNDS: usize = 4;

/// Where the bytes of a file come from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Stdin,
}

/// What a put did.
#[derive(Debug, Default, Clone)]
pub struct PutReport {
    pub files: u64,
    pub bytes: u64,
    pub chunks: u64,
    /// Chunks sent to nodes (the rest were already stored: dedup).
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    pub committed: Vec<FileAttr>,
}

enum Msg {
    Chunk {
        file: usize,
        seq: usize,
        offset: u64,
        id: ChunkId,
        /// The chunk's bytes, in the pieces they were read into.
        data: Vec<Bytes>,
        seal: Option<[u8; SEAL_LEN]>,
        permit: OwnedSemaphorePermit,
    },
    FileDone {
        file: usize,
        size: u64,
        chunks: usize,
        mode: u32,
        mtime_ms: i64,
    },
    Failed(ClientError),
}

struct FileState {
    remote: RemotePath,
    refs: Vec<Option<ChunkRef>>,
    waiting: usize,
    done: Option<(u64, u32, i64)>,
}

enum ChunkState {
    /// Being uploaded; these (file, seq, offset, size) wait for it.
    Uploading(Vec<(usize, usize, u64, u64)>),
    /// Stored on these nodes in this session (empty: it was stored before).
    Stored(Arc<Vec<String>>),
}

fn target(a: &NodeAddr) -> Result<NodeTarget, ClientError> {
    let addr: SocketAddr = a.quic_addr.parse().map_err(|_| {
        ClientError::Other(format!(
            "the coordinator gave {} the address '{}', which is not usable",
            a.node, a.quic_addr
        ))
    })?;
    Ok(NodeTarget {
        node: a.node.clone(),
        addr,
    })
}

fn now_ms() -> i64 {
    collective_core::unix_ms_now() as i64
}

/// Reads and chunks every input in order; runs on a blocking thread.
/// `secrets[i]`: the key to encrypt file i's chunks with, when its datastore spreads them
/// to other members.
fn produce(
    items: Vec<Source>,
    secrets: Vec<Option<[u8; 32]>>,
    budget: Arc<tokio::sync::Semaphore>,
    budget_kib: u32,
    tx: mpsc::Sender<Msg>,
    progress: Option<Progress>,
) {
    let rt = tokio::runtime::Handle::current();
    for (file, src) in items.into_iter().enumerate() {
        let secret = secrets.get(file).copied().flatten();
        let (reader, size, mode, mtime_ms): (Box<dyn Read>, Option<u64>, u32, i64) = match &src {
            Source::Stdin => (Box::new(std::io::stdin()), None, 0o644, now_ms()),
            Source::File(p) => {
                let f = match File::open(p) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.blocking_send(Msg::Failed(ClientError::Local {
                            path: p.clone(),
                            source: e,
                        }));
                        return;
                    }
                };
                let (size, mode, mtime) = match f.metadata() {
                    Ok(m) => {
                        use std::os::unix::fs::MetadataExt;
                        (m.len(), m.mode() & 0o7777, m.mtime() * 1000 + m.mtime_nsec() / 1_000_000)
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Msg::Failed(ClientError::Local {
                            path: p.clone(),
                            source: e,
                        }));
                        return;
                    }
                };
                (Box::new(f), Some(size), mode, mtime)
            }
        };
        let params = chunk_params(size);
        let mut total = 0u64;
        let mut seq = 0usize;
        for chunk in Chunker::new(reader, params, size) {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let path = match &src {
                        Source::File(p) => p.clone(),
                        Source::Stdin => PathBuf::from("<stdin>"),
                    };
                    let _ = tx.blocking_send(Msg::Failed(ClientError::Local { path, source: e }));
                    return;
                }
            };
            let (offset, length) = (chunk.offset, chunk.len());
            let (segments, seal) = match &secret {
                // Sealing encrypts the chunk in place, as one buffer.
                Some(secret) => {
                    let mut data = chunk.into_contiguous();
                    match sealing::seal(secret, &mut data) {
                        Ok(s) => (vec![data], Some(s)),
                        Err(e) => {
                            let _ = tx.blocking_send(Msg::Failed(e));
                            return;
                        }
                    }
                }
                None => (chunk.data, None),
            };
            let id = ChunkId::of_pieces(segments.iter().map(Vec::as_slice));
            // The memory the chunk holds is its segments (the last one maybe partly used).
            let held: usize = segments.iter().map(Vec::capacity).sum();
            let kib = (held.div_ceil(1024) as u32).clamp(1, budget_kib);
            let Ok(permit) = rt.block_on(budget.clone().acquire_many_owned(kib)) else {
                return;
            };
            total += length as u64;
            if let Some(p) = &progress {
                p(length as u64);
            }
            let msg = Msg::Chunk {
                file,
                seq,
                offset,
                id,
                data: segments.into_iter().map(collective_core::buffers::into_bytes).collect(),
                seal,
                permit,
            };
            if tx.blocking_send(msg).is_err() {
                return;
            }
            seq += 1;
        }
        if tx
            .blocking_send(Msg::FileDone {
                file,
                size: total,
                chunks: seq,
                mode,
                mtime_ms,
            })
            .is_err()
        {
            return;
        }
    }
}

struct Uploaded {
    id: ChunkId,
    result: Result<Vec<String>, ClientError>,
}

impl Client {
    /// Stores each source at its remote path. Files become visible one commit batch at a
    /// time, each atomically and only complete; on error, files not yet committed stay
    /// invisible (and an older version stays in place).
    pub async fn put_files(
        &self,
        items: Vec<(Source, RemotePath)>,
        parents: bool,
        progress: Option<Progress>,
    ) -> Result<PutReport, ClientError> {
        let (tx, mut rx) = mpsc::channel::<Msg>(64);
        let mut files: Vec<FileState> = items
            .iter()
            .map(|(_, r)| FileState {
                remote: r.clone(),
                refs: Vec::new(),
                waiting: 0,
                done: None,
            })
            .collect();
        let sources: Vec<Source> = items.into_iter().map(|(s, _)| s).collect();
        let secrets = self.secrets(&files).await?;
        let budget = self.budget.clone();
        let budget_kib = self.budget_kib;
        let producer = tokio::task::spawn_blocking(move || produce(sources, secrets, budget, budget_kib, tx, progress));
        let mut seals: HashMap<ChunkId, [u8; SEAL_LEN]> = HashMap::new();

        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Uploaded>();
        let mut chunks: HashMap<ChunkId, ChunkState> = HashMap::new();
        let mut ready: Vec<usize> = Vec::new();
        let mut report = PutReport::default();
        let mut in_flight = 0usize;
        let mut producing = true;
        let result: Result<(), ClientError> = async {
            while producing || in_flight > 0 {
                tokio::select! {
                    msg = rx.recv(), if producing => {
                        let Some(first) = msg else { producing = false; continue };
                        let mut batch = vec![first];
                        while batch.len() < PLAN_BATCH {
                            match rx.try_recv() {
                                Ok(m) => batch.push(m),
                                Err(_) => break,
                            }
                        }
                        let mut to_plan: Vec<ToPlan> = Vec::new();
                        for m in batch {
                            match m {
                                Msg::Failed(e) => return Err(e),
                                Msg::FileDone { file, size, chunks: n, mode, mtime_ms } => {
                                    let f = &mut files[file];
                                    f.refs.resize(n, None);
                                    f.done = Some((size, mode, mtime_ms));
                                    report.bytes += size;
                                    if f.waiting == 0 {
                                        ready.push(file);
                                    }
                                }
                                Msg::Chunk { file, seq, offset, id, data, seal, permit } => {
                                    report.chunks += 1;
                                    if let Some(seal) = seal {
                                        seals.insert(id, seal);
                                    }
                                    let f = &mut files[file];
                                    if f.refs.len() <= seq {
                                        f.refs.resize(seq + 1, None);
                                    }
                                    let size = payload_len(&data);
                                    match chunks.get_mut(&id) {
                                        Some(ChunkState::Stored(nodes)) => {
                                            f.refs[seq] = Some(ChunkRef { id: id.0.to_vec().into(), offset, size, stored_on: nodes.to_vec(), seal: Default::default() });
                                        }
                                        Some(ChunkState::Uploading(waiters)) => {
                                            waiters.push((file, seq, offset, size));
                                            f.waiting += 1;
                                        }
                                        None => {
                                            chunks.insert(id, ChunkState::Uploading(vec![(file, seq, offset, size)]));
                                            f.waiting += 1;
                                            to_plan.push((id, data, permit, file));
                                        }
                                    }
                                }
                            }
                        }
                        // One plan per datastore: it decides placement, owner and rights.
                        let mut groups: Vec<(String, Vec<ToPlan>)> = Vec::new();
                        for item in to_plan {
                            let remote = files[item.3].remote.to_string();
                            let top = datastore_of(&remote);
                            match groups.iter_mut().find(|(p, _)| datastore_of(p) == top) {
                                Some((_, g)) => g.push(item),
                                None => groups.push((remote, vec![item])),
                            }
                        }
                        for (path, to_plan) in groups {
                            let req = PlanWriteRequest {
                                chunks: to_plan.iter().map(|(id, d, _, _)| ChunkDesc { id: id.0.to_vec().into(), size: payload_len(d) }).collect(),
                                path,
                            };
                            let plan = self.meta().plan_write(req).await.map_err(ClientError::status)?.into_inner();
                            if plan.placements.len() != to_plan.len() {
                                return Err(ClientError::Other("the coordinator answered a write plan for a different number of chunks".into()));
                            }
                            for ((id, data, permit, file), placement) in to_plan.into_iter().zip(plan.placements) {
                                if placement.stored {
                                    drop(permit);
                                    settle(&mut files, &mut chunks, &mut ready, id, Arc::new(Vec::new()));
                                    continue;
                                }
                                in_flight += 1;
                                report.chunks_sent += 1;
                                report.bytes_sent += payload_len(&data);
                                let client = self.chunks.clone();
                                let meta = self.meta();
                                let done_tx = done_tx.clone();
                                let label = files[file].remote.to_string();
                                tokio::spawn(async move {
                                    let result = store_chunk(&client, meta, id, &data, placement, &label).await;
                                    drop(permit);
                                    let _ = done_tx.send(Uploaded { id, result });
                                });
                            }
                        }
                    }
                    Some(up) = done_rx.recv(), if in_flight > 0 => {
                        in_flight -= 1;
                        let nodes = up.result?;
                        settle(&mut files, &mut chunks, &mut ready, up.id, Arc::new(nodes));
                    }
                }
                // Commit in large batches (one transaction and one flush each) and at the end.
                if !ready.is_empty() && (ready.len() >= COMMIT_BATCH || (!producing && in_flight == 0)) {
                    let batch: Vec<usize> = std::mem::take(&mut ready);
                    report.committed.extend(self.commit(&mut files, &batch, parents, &seals).await?);
                    report.files += batch.len() as u64;
                }
            }
            if !ready.is_empty() {
                let batch: Vec<usize> = std::mem::take(&mut ready);
                report.committed.extend(self.commit(&mut files, &batch, parents, &seals).await?);
                report.files += batch.len() as u64;
            }
            Ok(())
        }
        .await;
        drop(rx);
        let _ = producer.await;
        result.map(|_| report)
    }

    /// The encryption secret of each file's datastore (None: stored as is).
    async fn secrets(&self, files: &[FileState]) -> Result<Vec<Option<[u8; 32]>>, ClientError> {
        let mut by_datastore: HashMap<String, Option<[u8; 32]>> = HashMap::new();
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let path = f.remote.to_string();
            let top = datastore_of(&path).to_string();
            if !path.trim_start_matches('/').contains('/') {
                out.push(None);
                continue;
            }
            if let Some(s) = by_datastore.get(&top) {
                out.push(*s);
                continue;
            }
            let secret = self.secret_for(&path).await?;
            by_datastore.insert(top, secret);
            out.push(secret);
        }
        Ok(out)
    }

    async fn commit(
        &self,
        files: &mut [FileState],
        batch: &[usize],
        parents: bool,
        seals: &HashMap<ChunkId, [u8; SEAL_LEN]>,
    ) -> Result<Vec<FileAttr>, ClientError> {
        let mut commits = Vec::with_capacity(batch.len());
        for &i in batch {
            let f = &mut files[i];
            let (size, mode, mtime_ms) = f.done.unwrap_or((0, 0o644, now_ms()));
            let mut chunks: Vec<ChunkRef> = std::mem::take(&mut f.refs)
                .into_iter()
                .map(|r| r.ok_or_else(|| ClientError::Other(format!("internal error: a chunk of {} was never stored", f.remote))))
                .collect::<Result<_, _>>()?;
            for c in &mut chunks {
                if let Some(seal) = ChunkId::from_slice(&c.id).and_then(|id| seals.get(&id)) {
                    c.seal = seal.to_vec().into();
                }
            }
            commits.push(FileCommit {
                path: f.remote.to_string(),
                size,
                mode,
                mtime_ms,
                chunks,
                parents,
            });
        }
        let resp = self
            .meta()
            .commit_files(CommitFilesRequest { files: commits })
            .await
            .map_err(ClientError::status)?;
        Ok(resp.into_inner().files)
    }
}

/// Records that `id` is stored on `nodes` and completes every reference waiting for it.
fn settle(
    files: &mut [FileState],
    chunks: &mut HashMap<ChunkId, ChunkState>,
    ready: &mut Vec<usize>,
    id: ChunkId,
    nodes: Arc<Vec<String>>,
) {
    let waiters = match chunks.insert(id, ChunkState::Stored(nodes.clone())) {
        Some(ChunkState::Uploading(w)) => w,
        _ => Vec::new(),
    };
    for (file, seq, offset, size) in waiters {
        let f = &mut files[file];
        f.refs[seq] = Some(ChunkRef {
            id: id.0.to_vec().into(),
            offset,
            size,
            stored_on: nodes.to_vec(),
            seal: Default::default(),
        });
        f.waiting -= 1;
        if f.waiting == 0 && f.done.is_some() {
            ready.push(file);
        }
    }
}

/// Puts one chunk on all its targets, asking for substitutes for nodes that fail.
/// Returns the nodes that acknowledged it.
pub(crate) async fn store_chunk(
    client: &collective_dataplane::ChunkClient,
    mut meta: collective_proto::v1::metadata_client::MetadataClient<tonic::transport::Channel>,
    id: ChunkId,
    data: &[Bytes],
    placement: ChunkPlacement,
    file: &str,
) -> Result<Vec<String>, ClientError> {
    let wanted = placement.targets.len();
    let mut targets = placement.targets;
    let mut token = placement.token;
    let mut stored: Vec<String> = Vec::new();
    let mut avoid: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut out_of_space = false;
    for _round in 0..MAX_UPLOAD_ROUNDS {
        let puts = targets.iter().map(|t| {
            let token = token.clone();
            async move {
                // Another member's node comes with its own token, signed by its coordinator.
                let token = if t.token.is_empty() { token } else { t.token.clone() };
                let r = match target(t) {
                    Ok(tg) => client.put(&tg, &id, data, &token).await.map_err(ClientError::from),
                    Err(e) => Err(e),
                };
                (t.node.clone(), r)
            }
        });
        for (node, r) in futures::future::join_all(puts).await {
            match r {
                Ok(()) => stored.push(node.clone()),
                Err(e) => {
                    tracing::warn!(chunk = %id.short(), %node, "chunk upload failed: {e}");
                    out_of_space |= matches!(e, ClientError::Data(collective_dataplane::DataError::NoSpace { .. }));
                    errors.push(e.to_string());
                }
            }
            avoid.push(node);
        }
        if stored.len() >= wanted {
            return Ok(stored);
        }
        let req = ReplaceTargetRequest {
            id: id.0.to_vec().into(),
            size: payload_len(data),
            avoid: avoid.clone(),
            count: (wanted - stored.len()) as u32,
            path: file.to_string(),
        };
        match meta.replace_target(req).await {
            Ok(p) => {
                let p = p.into_inner();
                targets = p.targets;
                token = p.token;
            }
            Err(s) => {
                out_of_space |= collective_rpc::error_kind(&s) == Some(collective_rpc::ErrorKind::NoSpace);
                errors.push(collective_rpc::explain_status("the coordinator", &s));
                break;
            }
        }
    }
    Err(ClientError::Replication {
        chunk: id.short(),
        file: file.to_string(),
        wanted,
        detail: errors.join("; "),
        out_of_space,
    })
}

/// The first component of a remote path (its datastore), e.g. `/media/a/b` → `media`.
fn datastore_of(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or("")
}

/// A chunk waiting for a write plan: id, bytes, its memory permit, index of its file.
type ToPlan = (ChunkId, Vec<Bytes>, OwnedSemaphorePermit, usize);

/// Length of a chunk held in pieces.
fn payload_len(data: &[Bytes]) -> u64 {
    data.iter().map(|b| b.len() as u64).sum()
}
