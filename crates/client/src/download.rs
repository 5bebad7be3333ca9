//! The read path: plan, fetch chunks in parallel with read-ahead, verify every chunk, fall
//! back to another replica (and report the bad one); write in order (`cat`, a buffer) or
//! each chunk at its offset as it arrives (`get` to a file, whole blocks with direct I/O).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use collective_core::{ChunkId, validate_path};
use collective_dataplane::{ChunkClient, NodeTarget};
use collective_proto::v1::metadata_client::MetadataClient;
use collective_proto::v1::{ChunkLocation, FileAttr, FileKind, FilePlan, NodeAddr, PathRequest, ReadPlanRequest, ReportBadReplicaRequest};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tonic::transport::Channel;

use crate::ClientError;
use crate::localtree::{self, LocalTree, Place};
use crate::session::{Client, Progress};

/// Files whose plans are fetched in one coordinator call.
const PLAN_BATCH: usize = 256;
/// Files up to this size are gathered in memory and written in one call.
const SMALL_FILE_BYTES: u64 = 1 << 20;

/// Chunks from this size on are worth a prefetch: nodes keep smaller ones in their page
/// cache (see `collective_chunkstore::KEEP_CACHED_BELOW`), larger ones come from disk.
const PREFETCH_FROM: u64 = 256 * 1024;

/// What a get did.
#[derive(Debug, Default, Clone)]
pub struct GetReport {
    pub files: u64,
    pub bytes: u64,
}

impl Client {
    pub(crate) async fn plans(&self, paths: Vec<String>) -> Result<Vec<FilePlan>, ClientError> {
        Ok(self
            .meta()
            .read_plan(ReadPlanRequest { paths })
            .await
            .map_err(ClientError::status)?
            .into_inner()
            .files)
    }

    /// Memory for fetching one chunk out of the client's budget. While it waits for chunks
    /// ahead of it to free theirs, the chunk's node is asked to read it from disk, so the
    /// wait for memory hides the wait for the disk.
    async fn reserve(&self, loc: &ChunkLocation) -> Result<OwnedSemaphorePermit, ClientError> {
        let kib = (loc.size.div_ceil(1024) as u32).clamp(1, self.budget_kib);
        if let Ok(permit) = self.budget.clone().try_acquire_many_owned(kib) {
            return Ok(permit);
        }
        if loc.size >= PREFETCH_FROM {
            let (chunks, loc) = (self.chunks.clone(), loc.clone());
            tokio::spawn(async move { prefetch_first(&chunks, &loc).await });
        }
        self.budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| ClientError::Other("client is shutting down".into()))
    }

    /// Streams a planned file into `out` in order, `parallel` chunks ahead.
    async fn write_plan<S: Sink>(
        &self,
        plan: &FilePlan,
        out: &mut S,
        progress: &Option<Progress>,
        parallel: usize,
    ) -> Result<u64, ClientError> {
        let path = plan.attr.as_ref().map(|a| a.path.clone()).unwrap_or_default();
        // Each fetch runs as its own task, so fetching goes on while earlier chunks are
        // being written; the memory budget bounds how far ahead it runs.
        let mut stream = futures::stream::iter(plan.chunks.iter().cloned())
            .map(|loc| {
                let (chunks, meta, path) = (self.chunks.clone(), self.meta(), path.clone());
                async move {
                    let permit = self.reserve(&loc).await?;
                    let task = tokio::spawn(async move { fetch_chunk(&chunks, &meta, &loc, &path).await.map(|d| (d, permit)) });
                    task.await.map_err(|e| ClientError::Other(format!("chunk fetch failed: {e}")))?
                }
            })
            .buffered(parallel);
        let mut written = 0u64;
        while let Some((data, permit)) = stream.try_next().await? {
            let len = data.len() as u64;
            out.put(data)
                .await
                .map_err(|e| ClientError::Other(format!("writing {path}: {e}")))?;
            written += len;
            if let Some(p) = progress {
                p(len);
            }
            drop(permit);
        }
        Ok(written)
    }

    /// Fetches a planned file into `file`, `parallel` chunks ahead, writing each chunk at
    /// its offset as soon as it arrives. Unlike [`Self::write_plan`], a chunk that is slow
    /// to come does not keep the memory of those after it until its turn: every chunk frees
    /// its share of the budget once written, and fetching goes on around the slow one.
    async fn fetch_into(
        &self,
        plan: &FilePlan,
        file: Arc<std::fs::File>,
        progress: &Option<Progress>,
        parallel: usize,
    ) -> Result<u64, ClientError> {
        let path = plan.attr.as_ref().map(|a| a.path.clone()).unwrap_or_default();
        let placed = plan.chunks.iter().scan(0u64, |offset, loc| {
            let at = *offset;
            *offset += loc.size;
            Some((at, loc.clone()))
        });
        futures::stream::iter(placed)
            .map(|(at, loc)| {
                let (chunks, meta, path, file) = (self.chunks.clone(), self.meta(), path.clone(), file.clone());
                async move {
                    // Plain chunks are written as they come; sealed ones must be whole to be
                    // opened.
                    let streamed = loc.seal.is_empty();
                    let mut permit = self.reserve(&loc).await?;
                    let task = tokio::spawn(async move {
                        let len = if streamed {
                            stream_chunk(&chunks, &meta, &loc, &path, &file, at, &mut permit).await?
                        } else {
                            let data = fetch_chunk(&chunks, &meta, &loc, &path).await?;
                            let len = data.len() as u64;
                            tokio::task::spawn_blocking(move || write_all_at(&file, at, &[data]))
                                .await
                                .map_err(std::io::Error::other)
                                .and_then(|r| r)
                                .map_err(|e| ClientError::Other(format!("writing {path}: {e}")))?;
                            len
                        };
                        drop(permit);
                        Ok::<u64, ClientError>(len)
                    });
                    task.await.map_err(|e| ClientError::Other(format!("chunk fetch failed: {e}")))?
                }
            })
            .buffer_unordered(parallel)
            .try_fold(0u64, |total, len| async move {
                if let Some(p) = progress {
                    p(len);
                }
                Ok(total + len)
            })
            .await
    }

    /// Streams a remote file to `out`; returns its attributes.
    pub async fn read_to<W: AsyncWrite + Unpin + Send>(
        &self,
        path: &str,
        out: &mut W,
        progress: Option<Progress>,
    ) -> Result<FileAttr, ClientError> {
        let path = validate_path(path)?;
        let plan = self
            .plans(vec![path.to_string()])
            .await?
            .pop()
            .ok_or_else(|| ClientError::Other("the coordinator returned no plan".into()))?;
        self.write_plan(&plan, &mut Writer(&mut *out), &progress, self.parallel).await?;
        out.flush().await.map_err(|e| ClientError::Other(format!("writing output: {e}")))?;
        plan.attr
            .ok_or_else(|| ClientError::Other("the coordinator returned no attributes".into()))
    }

    /// Downloads a planned file to `local` through a temporary file, so a failed download
    /// never leaves a partial file behind. Small files are gathered in memory and written
    /// with one blocking call; large ones are streamed.
    async fn save_plan(&self, plan: &FilePlan, place: &Place, progress: &Option<Progress>, parallel: usize) -> Result<u64, ClientError> {
        let mode = plan
            .attr
            .as_ref()
            .map(|a| if a.mode & 0o777 == 0 { 0o644 } else { a.mode & 0o777 })
            .unwrap_or(0o644);
        let size = plan.attr.as_ref().map(|a| a.size).unwrap_or(u64::MAX);
        if size <= SMALL_FILE_BYTES {
            let mut data = Vec::with_capacity(size as usize);
            self.write_plan(plan, &mut Writer(&mut data), progress, parallel).await?;
            let place = place.clone();
            return tokio::task::spawn_blocking(move || write_file_atomically(&place, &data, mode))
                .await
                .map_err(|e| ClientError::Other(format!("writing a file: {e}")))?;
        }
        let place2 = place.clone();
        let f = tokio::task::spawn_blocking(move || place2.create_temp(mode))
            .await
            .map_err(|e| ClientError::Other(format!("writing {}: {e}", place.shown.display())))??;
        let file = Arc::new(f);
        let result = async {
            let n = self.fetch_into(plan, file.clone(), progress, parallel).await?;
            // The exact mode (creating it was subject to the umask).
            use std::os::unix::fs::PermissionsExt;
            let _ = file.set_permissions(std::fs::Permissions::from_mode(mode));
            place.commit()?;
            Ok(n)
        }
        .await;
        if result.is_err() {
            place.discard();
        }
        result
    }

    /// Downloads one remote file to a local path.
    pub async fn get_file(&self, path: &str, local: &Path, progress: Option<Progress>) -> Result<FileAttr, ClientError> {
        let path = validate_path(path)?;
        let plan = self
            .plans(vec![path.to_string()])
            .await?
            .pop()
            .ok_or_else(|| ClientError::Other("the coordinator returned no plan".into()))?;
        let place = Place::for_path(local)?;
        self.save_plan(&plan, &place, &progress, self.parallel).await?;
        plan.attr
            .ok_or_else(|| ClientError::Other("the coordinator returned no attributes".into()))
    }

    /// Downloads every file below `remote` into `local`, recreating the tree.
    pub async fn get_tree(&self, remote: &str, local: &Path, progress: Option<Progress>) -> Result<GetReport, ClientError> {
        let remote = validate_path(remote)?;
        let prefix = if remote.is_root() { "/".to_string() } else { format!("{remote}/") };
        let mut walk = self
            .meta()
            .walk(PathRequest { path: remote.to_string() })
            .await
            .map_err(ClientError::status)?
            .into_inner();
        let tree = LocalTree::open(local)?;
        let mut report = GetReport::default();
        let mut pending: Vec<(String, Vec<String>)> = Vec::new();
        loop {
            let batch = walk.message().await.map_err(ClientError::status)?;
            let end = batch.is_none();
            for attr in batch.map(|b| b.entries).unwrap_or_default() {
                // Every path is checked before anything is written (localtree.rs).
                let parts = if attr.path == remote.as_str() {
                    let name = attr.path.rsplit('/').next().unwrap_or_default();
                    localtree::relative_parts("", name)?
                } else {
                    localtree::relative_parts(&prefix, &attr.path)?
                };
                if attr.kind == FileKind::Symlink as i32 {
                    // Links are recreated as links, pointing where they pointed; nothing
                    // is ever written through one.
                    tree.place(&parts)?.symlink(&attr.target)?;
                    report.files += 1;
                    continue;
                }
                if attr.kind == FileKind::Dir as i32 {
                    continue;
                }
                pending.push((attr.path.clone(), parts));
            }
            while pending.len() >= PLAN_BATCH || (end && !pending.is_empty()) {
                let take: Vec<(String, Vec<String>)> = pending.drain(..pending.len().min(PLAN_BATCH)).collect();
                let plans = self.plans(take.iter().map(|(p, _)| p.clone()).collect()).await?;
                let jobs = plans.iter().zip(take.iter()).map(|(plan, (_, parts))| {
                    let progress = progress.clone();
                    let tree = &tree;
                    async move {
                        let place = tree.place(parts)?;
                        self.save_plan(plan, &place, &progress, 4).await
                    }
                });
                let sizes: Vec<u64> = futures::stream::iter(jobs).buffer_unordered(self.parallel).try_collect().await?;
                report.files += sizes.len() as u64;
                report.bytes += sizes.iter().sum::<u64>();
            }
            if end {
                return Ok(report);
            }
        }
    }
}

/// Fetches one chunk and decrypts it when sealed.
async fn fetch_chunk(
    chunks: &Arc<ChunkClient>,
    meta: &MetadataClient<Channel>,
    loc: &ChunkLocation,
    file: &str,
) -> Result<Bytes, ClientError> {
    let stored = fetch_stored(chunks, meta, loc, file).await?;
    open_chunk(loc, stored, file)
}

/// The plaintext of a chunk's stored (verified) bytes: as is, or decrypted with its seal.
pub fn open_chunk(loc: &ChunkLocation, stored: Bytes, file: &str) -> Result<Bytes, ClientError> {
    if loc.seal.is_empty() {
        return Ok(stored);
    }
    crate::sealing::open(&loc.seal, stored).map_err(|e| ClientError::Unreadable {
        chunk: ChunkId::from_slice(&loc.id).map(|i| i.short()).unwrap_or_default(),
        file: file.to_string(),
        detail: e.to_string(),
    })
}

/// Asks the replica [`fetch_stored`] will try first to start reading the chunk from disk.
/// A hint only: whatever goes wrong, the get itself finds out and deals with it.
async fn prefetch_first(chunks: &ChunkClient, loc: &ChunkLocation) {
    let Some(id) = ChunkId::from_slice(&loc.id) else { return };
    let Some((target, token)) = loc.replicas.iter().find_map(|r| replica_target(loc, r)) else {
        return;
    };
    if let Err(e) = chunks.prefetch(&target, &id, token).await {
        tracing::debug!(chunk = %id.short(), node = %target.node, "prefetch failed: {e}");
    }
}

/// Where to reach one replica of a chunk, and the token to show it (its own, or the
/// chunk's); `None` if it has no usable address.
fn replica_target<'a>(loc: &'a ChunkLocation, replica: &'a NodeAddr) -> Option<(NodeTarget, &'a [u8])> {
    let addr = replica.quic_addr.parse().ok()?;
    let target = NodeTarget {
        node: replica.node.clone(),
        addr,
    };
    let token = if replica.token.is_empty() { &loc.token } else { &replica.token };
    Some((target, token))
}

/// A chunk's replicas that have an address, with their tokens, in the order to try them
/// (see [`ChunkClient::hedged_order`]); those without one are noted in `errors`.
async fn replicas_in_order<'a>(chunks: &Arc<ChunkClient>, loc: &'a ChunkLocation, errors: &mut Vec<String>) -> Vec<(NodeTarget, &'a [u8])> {
    let mut usable = Vec::with_capacity(loc.replicas.len());
    for replica in &loc.replicas {
        match replica_target(loc, replica) {
            Some(t) => usable.push(t),
            None => errors.push(format!("{}: no known address", replica.node)),
        }
    }
    let targets: Vec<NodeTarget> = usable.iter().map(|(t, _)| t.clone()).collect();
    let order = chunks.hedged_order(&targets).await;
    let mut slots: Vec<Option<(NodeTarget, &[u8])>> = usable.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots.get_mut(i).and_then(Option::take)).collect()
}

/// How long a whole-chunk read waits for its first replica before it asks a second one
/// too: the hedge delay plus the time the chunk takes at a slow disk's pace.
fn hedge_after(size: u64) -> std::time::Duration {
    collective_dataplane::HEDGE_AFTER + std::time::Duration::from_secs_f64(size as f64 / HEDGE_SLOW_BYTES_PER_SEC)
}

/// The pace below which a replica counts as slow (a disk in trouble, a busy node).
const HEDGE_SLOW_BYTES_PER_SEC: f64 = 20e6;

/// Fetches one chunk's stored bytes (verified against its id). The replica most likely to
/// answer goes first; when it is slow a second one is asked too (one extra request at
/// most) and the first good answer wins; then the rest in turn. Reports replicas that are
/// corrupt or missing so the coordinator can repair them.
pub(crate) async fn fetch_stored(
    chunks: &Arc<ChunkClient>,
    meta: &MetadataClient<Channel>,
    loc: &ChunkLocation,
    file: &str,
) -> Result<Bytes, ClientError> {
    let id = ChunkId::from_slice(&loc.id).ok_or_else(|| ClientError::Other("the coordinator sent a malformed chunk id".into()))?;
    let mut errors = Vec::new();
    let replicas = replicas_in_order(chunks, loc, &mut errors).await;
    let size_ok = |node: &str, data: Bytes, errors: &mut Vec<String>| {
        if data.len() as u64 == loc.size {
            Some(data)
        } else {
            errors.push(format!("{node}: returned {} bytes, expected {}", data.len(), loc.size));
            None
        }
    };
    let mut rest = replicas.iter();
    if let Some((first, token)) = rest.next() {
        let a = chunks.get(first, &id, token);
        tokio::pin!(a);
        // The second replica is asked only when the first is slow; an early answer, good
        // or bad, leaves the rest to the loop below.
        let (a_result, second) = match tokio::time::timeout(hedge_after(loc.size), &mut a).await {
            Ok(r) => (Some(r), None),
            Err(_) => match rest.next() {
                Some(second) => (None, Some(second)),
                None => (Some((&mut a).await), None),
            },
        };
        if let Some(r) = a_result {
            match r {
                Ok(data) => {
                    if let Some(d) = size_ok(&first.node, data, &mut errors) {
                        return Ok(d);
                    }
                }
                Err(e) => replica_failed(meta, loc, &id, &first.node, e, &mut errors),
            }
        }
        if let Some((second, token2)) = second {
            tracing::debug!(chunk = %id.short(), slow = %first.node, also = %second.node, "slow replica: asking another");
            let b = chunks.get(second, &id, token2);
            tokio::pin!(b);
            let (mut a_done, mut b_done) = (false, false);
            while !(a_done && b_done) {
                let (node, r) = tokio::select! {
                    r = &mut a, if !a_done => { a_done = true; (&first.node, r) }
                    r = &mut b, if !b_done => { b_done = true; (&second.node, r) }
                };
                match r {
                    Ok(data) => {
                        if let Some(d) = size_ok(node, data, &mut errors) {
                            return Ok(d);
                        }
                    }
                    Err(e) => replica_failed(meta, loc, &id, node, e, &mut errors),
                }
            }
        }
    }
    for (target, token) in rest {
        match chunks.get(target, &id, token).await {
            Ok(data) => {
                if let Some(d) = size_ok(&target.node, data, &mut errors) {
                    return Ok(d);
                }
            }
            Err(e) => replica_failed(meta, loc, &id, &target.node, e, &mut errors),
        }
    }
    Err(unreadable(loc, &id, file, errors))
}

/// Notes why a replica could not be read; one that is bad itself (corrupt, missing) is
/// reported to the coordinator so it can be repaired.
fn replica_failed(
    meta: &MetadataClient<Channel>,
    loc: &ChunkLocation,
    id: &ChunkId,
    node: &str,
    e: collective_dataplane::DataError,
    errors: &mut Vec<String>,
) {
    // A node that cannot be reached is logged once, by its circuit breaker, not per chunk.
    if matches!(
        e,
        collective_dataplane::DataError::Connect { .. } | collective_dataplane::DataError::Skipped { .. }
    ) {
        tracing::debug!(chunk = %id.short(), node = %node, "chunk read failed: {e}");
    } else {
        tracing::warn!(chunk = %id.short(), node = %node, "chunk read failed: {e}");
    }
    if e.is_bad_replica() {
        let mut meta = meta.clone();
        let req = ReportBadReplicaRequest {
            id: loc.id.clone(),
            node: node.to_string(),
            reason: e.to_string(),
        };
        tokio::spawn(async move {
            let _ = meta.report_bad_replica(req).await;
        });
    }
    errors.push(e.to_string());
}

/// The error for a chunk no replica could give.
fn unreadable(loc: &ChunkLocation, id: &ChunkId, file: &str, mut errors: Vec<String>) -> ClientError {
    if loc.replicas.is_empty() {
        errors.push("no replica is recorded".into());
    }
    ClientError::Unreadable {
        chunk: id.short(),
        file: file.to_string(),
        detail: errors.join("; "),
    }
}

/// What a streamed chunk is gathered and written in.
const STAGE: usize = 1 << 20;
/// Stages of one chunk being written at once.
const STAGES_IN_FLIGHT: usize = 4;

/// Fetches one plain (unsealed) chunk into `file` at `at` as it arrives: its pieces, as
/// they came off the network, are gathered into stages of [`STAGE`] bytes, and each full
/// stage is written (one vectored write, no copy of ours) while the next ones fill.
/// `budget`, the chunk's memory, is given back stage by stage as they reach the file,
/// so later chunks can start while this one is still being written. Only the end of the
/// stream says whether the bytes match the chunk's id; a replica that fails, or whose
/// bytes do not match, is reported, and the next replica's bytes are written over the same
/// range (the file is a temporary one until every chunk has arrived, so unverified bytes
/// are never visible). Returns the bytes written.
async fn stream_chunk(
    chunks: &Arc<ChunkClient>,
    meta: &MetadataClient<Channel>,
    loc: &ChunkLocation,
    file_name: &str,
    file: &Arc<std::fs::File>,
    at: u64,
    budget: &mut OwnedSemaphorePermit,
) -> Result<u64, ClientError> {
    let id = ChunkId::from_slice(&loc.id).ok_or_else(|| ClientError::Other("the coordinator sent a malformed chunk id".into()))?;
    let mut errors = Vec::new();
    for (target, token) in replicas_in_order(chunks, loc, &mut errors).await {
        match stream_from(chunks, &target, &id, token, loc.size, file, at, budget).await {
            Ok(()) => return Ok(loc.size),
            Err(Streamed::Replica(e)) => replica_failed(meta, loc, &id, &target.node, e, &mut errors),
            Err(Streamed::Size(n)) => errors.push(format!("{}: announced {n} bytes, expected {}", target.node, loc.size)),
            Err(Streamed::Local(e)) => return Err(ClientError::Other(format!("writing {file_name}: {e}"))),
        }
    }
    Err(unreadable(loc, &id, file_name, errors))
}

/// Why streaming a chunk from one replica failed.
enum Streamed {
    /// The replica failed (and another may do).
    Replica(collective_dataplane::DataError),
    /// The replica announced a size other than the chunk's.
    Size(u64),
    /// Writing the local file failed (no other replica helps).
    Local(std::io::Error),
}

/// [`stream_chunk`] from one replica.
#[allow(clippy::too_many_arguments)]
async fn stream_from(
    chunks: &ChunkClient,
    target: &NodeTarget,
    id: &ChunkId,
    token: &[u8],
    size: u64,
    file: &Arc<std::fs::File>,
    at: u64,
    budget: &mut OwnedSemaphorePermit,
) -> Result<(), Streamed> {
    let mut incoming = chunks.get_stream(target, id, token).await.map_err(Streamed::Replica)?;
    if incoming.size() != size {
        return Err(Streamed::Size(incoming.size()));
    }
    let mut stage = Stage {
        at,
        len: 0,
        pieces: Vec::new(),
    };
    let mut writing = std::collections::VecDeque::new();
    let received = async {
        while let Some(piece) = incoming.next(STAGE).await.map_err(Streamed::Replica)? {
            stage.len += piece.len();
            stage.pieces.push(piece);
            if stage.len >= STAGE || stage.at + stage.len as u64 == at + size {
                if writing.len() >= STAGES_IN_FLIGHT {
                    written(writing.pop_front()).await?;
                }
                let next = Stage {
                    at: stage.at + stage.len as u64,
                    len: 0,
                    pieces: Vec::new(),
                };
                let full = std::mem::replace(&mut stage, next);
                // The stage's share of the chunk's memory goes back once it is written.
                let kib = full.len / 1024;
                let share = budget.split(kib.min(budget.num_permits().saturating_sub(1)));
                let file = file.clone();
                writing.push_back(tokio::task::spawn_blocking(move || {
                    let r = write_all_at(&file, full.at, &full.pieces);
                    drop((full, share));
                    r
                }));
            }
        }
        Ok(())
    }
    .await;
    // Whatever happened, every write must be over before another replica's bytes go to
    // the same range.
    let mut last = Ok(());
    while !writing.is_empty() {
        last = last.and(written(writing.pop_front()).await);
    }
    received.and(last)
}

/// Waits for a stage's write, if there is one.
async fn written(writing: Option<tokio::task::JoinHandle<std::io::Result<()>>>) -> Result<(), Streamed> {
    match writing {
        None => Ok(()),
        Some(w) => w.await.map_err(std::io::Error::other).and_then(|r| r).map_err(Streamed::Local),
    }
}

/// Pieces of a chunk that go to its file together, from offset `at`.
struct Stage {
    at: u64,
    len: usize,
    pieces: Vec<Bytes>,
}

/// Writes `pieces`, one after the other, to `f` from offset `at`: vectored writes until
/// every byte is written. Blocks: call it on a blocking thread.
fn write_all_at(f: &std::fs::File, mut at: u64, pieces: &[Bytes]) -> std::io::Result<()> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    /// The most buffers one `pwritev` takes (Linux's `IOV_MAX`).
    const MAX_SLICES: usize = 1024;
    let mut slices: Vec<IoSlice<'_>> = pieces.iter().filter(|p| !p.is_empty()).map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let count = slices.len().min(MAX_SLICES);
        let offset = libc::off_t::try_from(at).map_err(std::io::Error::other)?;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; the first `count`
        // slices are valid buffers that outlive the call, which only reads them.
        let n = unsafe { libc::pwritev(f.as_raw_fd(), slices.as_ptr().cast(), count as libc::c_int, offset) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the file took no more bytes"));
        }
        at += n as u64;
        IoSlice::advance_slices(&mut slices, n as usize);
    }
    Ok(())
}

/// Where a download's bytes go, in order.
trait Sink: Send {
    fn put(&mut self, data: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// Any async writer (standard output, a buffer).
struct Writer<'a, W>(&'a mut W);

impl<W: AsyncWrite + Unpin + Send> Sink for Writer<'_, W> {
    async fn put(&mut self, data: Bytes) -> std::io::Result<()> {
        self.0.write_all(&data).await
    }
}

/// Writes `data` to a temporary file beside `place` (mode `mode`) and renames it there.
fn write_file_atomically(place: &Place, data: &[u8], mode: u32) -> Result<u64, ClientError> {
    let result = (|| {
        let mut f = place.create_temp(mode)?;
        std::io::Write::write_all(&mut f, data).map_err(ClientError::local(&place.shown))?;
        place.commit()?;
        Ok(data.len() as u64)
    })();
    if result.is_err() {
        place.discard();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_written_out_of_order_make_the_whole_file() {
        let dir = std::env::temp_dir().join(format!("collective-stages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        let f = std::fs::File::create(&path).unwrap();
        // Stages of 1 to 3,000 pieces of 1 byte to 64 KiB (more than one vectored write
        // takes), written in an order other than the file's.
        let shapes: [(usize, usize); 5] = [(1, 1), (3000, 7), (40, 65_536), (1500, 1000), (2, 4095)];
        let data: Bytes = (0..shapes.iter().map(|(n, l)| n * l).sum::<usize>())
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        let mut stages = Vec::new();
        let mut at = 0usize;
        for (n, len) in shapes {
            let pieces: Vec<Bytes> = (0..n).map(|k| data.slice(at + k * len..at + (k + 1) * len)).collect();
            stages.push((at as u64, pieces));
            at += n * len;
        }
        for i in [3, 0, 4, 1, 2] {
            write_all_at(&f, stages[i].0, &stages[i].1).unwrap();
        }
        assert!(std::fs::read(&path).unwrap() == data);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
