//! The read path: plan, fetch chunks in parallel with read-ahead, verify every chunk, fall
//! back to another replica (and report the bad one); write in order (`cat`, a buffer) or
//! each chunk at its offset as it arrives (`get` to a file, whole blocks with direct I/O).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use collective_core::{ChunkId, validate_path};
use collective_dataplane::{ChunkClient, NodeTarget};
use collective_proto::v1::metadata_client::MetadataClient;
use collective_proto::v1::{ChunkLocation, FileAttr, FileKind, FilePlan, PathRequest, ReadPlanRequest, ReportBadReplicaRequest};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tonic::transport::Channel;

use crate::ClientError;
use crate::session::{Client, Progress};
use crate::writeback::WriteBehind;

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
                    let task = tokio::spawn(async move { fetch_chunk(&chunks, &meta, &loc, &path, None).await.map(|d| (d, permit)) });
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
        file: Arc<PlacedFile>,
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
                            // Placed in memory as it goes in the file, so its whole blocks
                            // can be written directly.
                            let data = fetch_chunk(&chunks, &meta, &loc, &path, Some(file.phase_of(at))).await?;
                            let len = data.len() as u64;
                            tokio::task::spawn_blocking(move || file.write_at(at, &data))
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
    async fn save_plan(&self, plan: &FilePlan, local: &Path, progress: &Option<Progress>, parallel: usize) -> Result<u64, ClientError> {
        let tmp = tmp_path(local);
        let mode = plan
            .attr
            .as_ref()
            .map(|a| if a.mode & 0o777 == 0 { 0o644 } else { a.mode & 0o777 })
            .unwrap_or(0o644);
        let size = plan.attr.as_ref().map(|a| a.size).unwrap_or(u64::MAX);
        if size <= SMALL_FILE_BYTES {
            let mut data = Vec::with_capacity(size as usize);
            self.write_plan(plan, &mut Writer(&mut data), progress, parallel).await?;
            let dest = local.to_path_buf();
            return tokio::task::spawn_blocking(move || write_file_atomically(&tmp, &dest, &data, mode))
                .await
                .map_err(|e| ClientError::Other(format!("writing {}: {e}", local.display())))?;
        }
        let f = tokio::fs::File::create(&tmp).await.map_err(ClientError::local(&tmp))?;
        let direct = tokio::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&tmp)
            .await
            .ok();
        let direct = match direct {
            Some(d) => Some(d.into_std().await),
            None => None,
        };
        let file = Arc::new(PlacedFile::new(f.into_std().await, direct));
        let result = async {
            let n = self.fetch_into(plan, file, progress, parallel).await?;
            use std::os::unix::fs::PermissionsExt;
            let _ = tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).await;
            tokio::fs::rename(&tmp, local).await.map_err(ClientError::local(local))?;
            Ok(n)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
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
        self.save_plan(&plan, local, &progress, self.parallel).await?;
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
        tokio::fs::create_dir_all(local).await.map_err(ClientError::local(local))?;
        let mut report = GetReport::default();
        let mut pending: Vec<(String, PathBuf)> = Vec::new();
        loop {
            let batch = walk.message().await.map_err(ClientError::status)?;
            let end = batch.is_none();
            for attr in batch.map(|b| b.entries).unwrap_or_default() {
                let rel = attr.path.strip_prefix(&prefix).unwrap_or(&attr.path).to_string();
                let rel = if rel.is_empty() || attr.path == remote.as_str() {
                    attr.path.rsplit('/').next().unwrap_or("file").to_string()
                } else {
                    rel
                };
                if attr.kind == FileKind::Symlink as i32 {
                    // Links are recreated as links, pointing where they pointed.
                    let dest = local.join(rel);
                    if let Some(parent) = dest.parent() {
                        tokio::fs::create_dir_all(parent).await.map_err(ClientError::local(parent))?;
                    }
                    let _ = tokio::fs::remove_file(&dest).await;
                    tokio::fs::symlink(&attr.target, &dest).await.map_err(ClientError::local(&dest))?;
                    report.files += 1;
                    continue;
                }
                pending.push((attr.path.clone(), local.join(rel)));
            }
            while pending.len() >= PLAN_BATCH || (end && !pending.is_empty()) {
                let take: Vec<(String, PathBuf)> = pending.drain(..pending.len().min(PLAN_BATCH)).collect();
                let plans = self.plans(take.iter().map(|(p, _)| p.clone()).collect()).await?;
                let jobs = plans.iter().zip(take.iter()).map(|(plan, (_, dest))| {
                    let progress = progress.clone();
                    async move {
                        if let Some(parent) = dest.parent() {
                            tokio::fs::create_dir_all(parent).await.map_err(ClientError::local(parent))?;
                        }
                        self.save_plan(plan, dest, &progress, 4).await
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

/// Fetches one chunk and decrypts it when sealed; `phase` as in [`fetch_stored`].
async fn fetch_chunk(
    chunks: &ChunkClient,
    meta: &MetadataClient<Channel>,
    loc: &ChunkLocation,
    file: &str,
    phase: Option<usize>,
) -> Result<Bytes, ClientError> {
    let stored = fetch_stored(chunks, meta, loc, file, phase).await?;
    open_chunk(loc, stored, file)
}

/// The plaintext of a chunk's stored (verified) bytes: as is, or decrypted with its seal.
pub fn open_chunk(loc: &ChunkLocation, stored: Bytes, file: &str) -> Result<Bytes, ClientError> {
    if loc.seal.is_empty() {
        return Ok(stored);
    }
    crate::sealing::open(&loc.seal, stored).map_err(|detail| ClientError::Unreadable {
        chunk: ChunkId::from_slice(&loc.id).map(|i| i.short()).unwrap_or_default(),
        file: file.to_string(),
        detail,
    })
}

/// Asks the replica [`fetch_stored`] will try first to start reading the chunk from disk.
/// A hint only: whatever goes wrong, the get itself finds out and deals with it.
async fn prefetch_first(chunks: &ChunkClient, loc: &ChunkLocation) {
    let Some(id) = ChunkId::from_slice(&loc.id) else { return };
    let Some((replica, addr)) = loc.replicas.iter().find_map(|r| Some((r, r.quic_addr.parse().ok()?))) else {
        return;
    };
    let target = NodeTarget {
        node: replica.node.clone(),
        addr,
    };
    let token = if replica.token.is_empty() { &loc.token } else { &replica.token };
    if let Err(e) = chunks.prefetch(&target, &id, token).await {
        tracing::debug!(chunk = %id.short(), node = %replica.node, "prefetch failed: {e}");
    }
}

/// Fetches one chunk's stored bytes (verified against its id), trying each replica in
/// turn; reports replicas that are corrupt or missing so the coordinator can repair them.
/// With a `phase`, the bytes start that far past a 4 KiB boundary in memory (see
/// [`ChunkClient::get_placed`]).
pub(crate) async fn fetch_stored(
    chunks: &ChunkClient,
    meta: &MetadataClient<Channel>,
    loc: &ChunkLocation,
    file: &str,
    phase: Option<usize>,
) -> Result<Bytes, ClientError> {
    let id = ChunkId::from_slice(&loc.id).ok_or_else(|| ClientError::Other("the coordinator sent a malformed chunk id".into()))?;
    let mut errors = Vec::new();
    for replica in &loc.replicas {
        let Ok(addr) = replica.quic_addr.parse() else {
            errors.push(format!("{}: no known address", replica.node));
            continue;
        };
        let target = NodeTarget {
            node: replica.node.clone(),
            addr,
        };
        let token = if replica.token.is_empty() { &loc.token } else { &replica.token };
        let got = match phase {
            Some(phase) => chunks.get_placed(&target, &id, token, phase).await,
            None => chunks.get(&target, &id, token).await,
        };
        match got {
            Ok(data) if data.len() as u64 == loc.size => return Ok(data),
            Ok(data) => errors.push(format!("{}: returned {} bytes, expected {}", replica.node, data.len(), loc.size)),
            Err(e) => replica_failed(meta, loc, &id, &replica.node, e, &mut errors),
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
    tracing::warn!(chunk = %id.short(), node = %node, "chunk read failed: {e}");
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

/// Fetches one plain (unsealed) chunk into `file` at `at` as it arrives: its pieces are
/// gathered into stages placed in memory like their bytes in the file (so their whole
/// blocks go to disk directly), and each full stage is written while the next ones fill.
/// `budget`, the chunk's memory, is given back stage by stage as they reach the file,
/// so later chunks can start while this one is still being written. Only the end of the
/// stream says whether the bytes match the chunk's id; a replica that fails, or whose
/// bytes do not match, is reported, and the next replica's bytes are written over the same
/// range (the file is a temporary one until every chunk has arrived, so unverified bytes
/// are never visible). Returns the bytes written.
async fn stream_chunk(
    chunks: &ChunkClient,
    meta: &MetadataClient<Channel>,
    loc: &ChunkLocation,
    file_name: &str,
    file: &Arc<PlacedFile>,
    at: u64,
    budget: &mut OwnedSemaphorePermit,
) -> Result<u64, ClientError> {
    let id = ChunkId::from_slice(&loc.id).ok_or_else(|| ClientError::Other("the coordinator sent a malformed chunk id".into()))?;
    let mut errors = Vec::new();
    for replica in &loc.replicas {
        let Ok(addr) = replica.quic_addr.parse() else {
            errors.push(format!("{}: no known address", replica.node));
            continue;
        };
        let target = NodeTarget {
            node: replica.node.clone(),
            addr,
        };
        let token = if replica.token.is_empty() { &loc.token } else { &replica.token };
        match stream_from(chunks, &target, &id, token, loc.size, file, at, budget).await {
            Ok(()) => return Ok(loc.size),
            Err(Streamed::Replica(e)) => replica_failed(meta, loc, &id, &replica.node, e, &mut errors),
            Err(Streamed::Size(n)) => errors.push(format!("{}: announced {n} bytes, expected {}", replica.node, loc.size)),
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
    file: &Arc<PlacedFile>,
    at: u64,
    budget: &mut OwnedSemaphorePermit,
) -> Result<(), Streamed> {
    let mut incoming = chunks.get_stream(target, id, token).await.map_err(Streamed::Replica)?;
    if incoming.size() != size {
        return Err(Streamed::Size(incoming.size()));
    }
    let end = at + size;
    let mut stage = Stage::new(at, end);
    let mut writing = std::collections::VecDeque::new();
    let received = async {
        while let Some(piece) = incoming.next(stage.room()).await.map_err(Streamed::Replica)? {
            stage.buf.extend_from_slice(&piece);
            if stage.room() == 0 && stage.end > stage.start {
                if writing.len() >= STAGES_IN_FLIGHT {
                    written(writing.pop_front()).await?;
                }
                let next = Stage::new(stage.end, end);
                let full = std::mem::replace(&mut stage, next);
                // The stage's share of the chunk's memory goes back once it is written.
                let kib = ((full.end - full.start) / 1024) as usize;
                let share = budget.split(kib.min(budget.num_permits().saturating_sub(1)));
                writing.push_back(full.write(file.clone(), share));
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
    collective_core::buffers::give(stage.buf);
    received.and(last)
}

/// Waits for a stage's write, if there is one.
async fn written(writing: Option<tokio::task::JoinHandle<std::io::Result<()>>>) -> Result<(), Streamed> {
    match writing {
        None => Ok(()),
        Some(w) => w.await.map_err(std::io::Error::other).and_then(|r| r).map_err(Streamed::Local),
    }
}

/// The bytes of `[start, end)` of a file, gathered in memory that starts at the phase of
/// `start` within a block.
struct Stage {
    buf: Vec<u8>,
    /// Where in `buf` the bytes start.
    pad: usize,
    start: u64,
    end: u64,
}

impl Stage {
    /// The stage from `start`: [`STAGE`] bytes at most, ending on a block boundary unless
    /// it ends at `limit` (the chunk's end), so that every stage after the first starts on
    /// one.
    fn new(start: u64, limit: u64) -> Stage {
        let block = BLOCK as u64;
        let end = if limit - start <= STAGE as u64 {
            limit
        } else {
            (start + STAGE as u64) / block * block
        };
        let len = (end - start) as usize;
        let mut buf = collective_core::buffers::take(len + BLOCK - 1);
        let pad = ((start % block) as usize + BLOCK - buf.as_ptr() as usize % BLOCK) % BLOCK;
        buf.resize(pad, 0);
        Stage { buf, pad, start, end }
    }

    /// Bytes still missing.
    fn room(&self) -> usize {
        self.pad + (self.end - self.start) as usize - self.buf.len()
    }

    /// Writes the (full) stage at its place, on a blocking thread; `share` (of the memory
    /// budget) is given back with the stage's memory once it is written.
    fn write(self, file: Arc<PlacedFile>, share: Option<OwnedSemaphorePermit>) -> tokio::task::JoinHandle<std::io::Result<()>> {
        tokio::task::spawn_blocking(move || {
            let r = file.write_at(self.start, &self.buf[self.pad..]);
            collective_core::buffers::give(self.buf);
            drop(share);
            r
        })
    }
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

/// Pieces at least this large have their whole blocks written with direct I/O.
const DIRECT_FROM: usize = 64 * 1024;
/// The block of direct I/O; pieces come placed in memory at their file offset's phase of it.
const BLOCK: usize = collective_dataplane::PLACEMENT_BLOCK;

/// A local file written in pieces at their offsets, in any order. The whole blocks of a
/// large piece go straight to the disk (`O_DIRECT`), past the page cache: copying them into
/// fresh cache pages, writing those back and dropping them again was a third of the
/// client's CPU in a get. The few bytes at a piece's edges, and every piece where the file
/// system refuses direct I/O, go through the cache, with write-behind on the part written
/// without gaps, so a large download does not fill it (see [`crate::writeback`]).
struct PlacedFile {
    file: std::fs::File,
    /// The same file opened with `O_DIRECT`, where the file system allows that.
    direct: Option<std::fs::File>,
    /// Cleared for good when a direct write is refused (EINVAL).
    direct_on: std::sync::atomic::AtomicBool,
    written: std::sync::Mutex<Written>,
    behind: std::sync::Mutex<WriteBehind>,
}

/// What has reached a [`PlacedFile`]: everything below `upto`, and the pieces beyond it
/// (start to end).
#[derive(Default)]
struct Written {
    upto: u64,
    beyond: std::collections::BTreeMap<u64, u64>,
}

impl PlacedFile {
    /// `direct`: the same file opened again with `O_DIRECT`, if that worked.
    fn new(file: std::fs::File, direct: Option<std::fs::File>) -> PlacedFile {
        PlacedFile {
            file,
            direct,
            direct_on: std::sync::atomic::AtomicBool::new(true),
            written: Default::default(),
            behind: Default::default(),
        }
    }

    /// Where in a block of memory a piece for offset `at` should start, so that its whole
    /// blocks can be written directly.
    fn phase_of(&self, at: u64) -> usize {
        (at % BLOCK as u64) as usize
    }

    /// Whether whole blocks still go to the disk directly.
    fn is_direct(&self) -> bool {
        self.direct.is_some() && self.direct_on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The part of `data` (to go at `at`) that can be written directly: from its first to
    /// the end of its last whole block, when it is large enough and placed in memory at
    /// the phase of `at`.
    fn direct_span(&self, at: u64, data: &[u8]) -> Option<(usize, usize, &std::fs::File)> {
        let direct = self.direct.as_ref().filter(|_| self.is_direct())?;
        if data.len() < DIRECT_FROM {
            return None;
        }
        let start = (BLOCK - self.phase_of(at)) % BLOCK;
        if !(data.as_ptr() as usize + start).is_multiple_of(BLOCK) {
            return None;
        }
        let end = start + (data.len() - start) / BLOCK * BLOCK;
        Some((start, end, direct))
    }

    /// Writes `data` at `at`. Blocks: call it on a blocking thread.
    fn write_at(&self, at: u64, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        match self.direct_span(at, data) {
            Some((start, end, direct)) => {
                self.file.write_all_at(&data[..start], at)?;
                if let Err(e) = direct.write_all_at(&data[start..end], at + start as u64) {
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        return Err(e);
                    }
                    tracing::debug!("direct write refused ({e}); writing through the page cache");
                    self.direct_on.store(false, std::sync::atomic::Ordering::Relaxed);
                    self.file.write_all_at(&data[start..end], at + start as u64)?;
                }
                self.file.write_all_at(&data[end..], at + end as u64)?;
            }
            None => self.file.write_all_at(data, at)?,
        }
        {
            let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
            let Written { upto, beyond } = &mut *w;
            beyond.insert(at, at + data.len() as u64);
            while let Some(end) = beyond.remove(upto) {
                *upto = end;
            }
        }
        // One writer at a time hands windows to writeback (which may wait for the disk);
        // the others go on, and whoever comes next catches up with what they wrote.
        if let Ok(mut behind) = self.behind.try_lock() {
            let upto = self.written.lock().unwrap_or_else(|p| p.into_inner()).upto;
            behind.wrote_up_to(&self.file, upto);
        }
        Ok(())
    }
}

/// Writes `data` to `tmp`, sets its mode and renames it to `local`.
fn write_file_atomically(tmp: &Path, local: &Path, data: &[u8], mode: u32) -> Result<u64, ClientError> {
    use std::os::unix::fs::OpenOptionsExt;
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(tmp)
            .map_err(ClientError::local(tmp))?;
        std::io::Write::write_all(&mut f, data).map_err(ClientError::local(tmp))?;
        std::fs::rename(tmp, local).map_err(ClientError::local(local))?;
        Ok(data.len() as u64)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

fn tmp_path(local: &Path) -> PathBuf {
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    local.with_file_name(format!(".{name}.collective-part"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_written_out_of_order_make_the_whole_file_and_advance_past_each_gap_once_filled() {
        let dir = std::env::temp_dir().join(format!("collective-placed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        let placed = PlacedFile::new(std::fs::File::create(&path).unwrap(), None);
        // Pieces of 1 KiB to 3 MiB, so windows of write-behind are crossed on the way.
        let sizes = [1024usize, 3 << 20, 5000, 2 << 20, 1, 7 << 20, 4096];
        let data: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i * 7 % 251) as u8).collect();
        let mut starts = vec![0usize];
        for s in &sizes {
            starts.push(starts.last().unwrap() + s);
        }
        let upto = |p: &PlacedFile| p.written.lock().unwrap().upto;
        for i in [3, 1, 6, 2, 0, 5, 4] {
            placed.write_at(starts[i] as u64, &data[starts[i]..starts[i + 1]]).unwrap();
            match i {
                3 | 1 | 6 | 2 => assert_eq!(upto(&placed), 0, "nothing is contiguous before the first piece"),
                0 => assert_eq!(upto(&placed), starts[4] as u64, "the first piece joins the three after it"),
                5 => assert_eq!(upto(&placed), starts[4] as u64, "piece 4 is still missing"),
                _ => assert_eq!(upto(&placed), data.len() as u64),
            }
        }
        assert!(placed.written.lock().unwrap().beyond.is_empty());
        assert!(std::fs::read(&path).unwrap() == data);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `data` copied into memory that starts `phase` bytes past a 4 KiB boundary.
    fn at_phase(data: &[u8], phase: usize) -> (Vec<u8>, usize) {
        let mut v = Vec::with_capacity(data.len() + BLOCK);
        let pad = (phase % BLOCK + BLOCK - v.as_ptr() as usize % BLOCK) % BLOCK;
        v.resize(pad, 0);
        v.extend_from_slice(data);
        (v, pad)
    }

    #[test]
    fn whole_blocks_of_placed_pieces_go_to_disk_directly_and_the_file_reads_back_exactly() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir().join(format!("collective-placed-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        let file = std::fs::File::create(&path).unwrap();
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .ok();
        let opened_direct = direct.is_some();
        let placed = PlacedFile::new(file, direct);
        // Pieces that start and end anywhere in a block, some too small to go directly.
        let sizes = [100_000usize, 4096, 1 << 20, 70_001, 3 << 20, 65_535, 5 * 4096, 2_000_001];
        let data: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i * 11 % 249) as u8).collect();
        let mut starts = vec![0usize];
        for s in &sizes {
            starts.push(starts.last().unwrap() + s);
        }
        for i in [4, 0, 7, 2, 1, 6, 3, 5] {
            let (at, piece) = (starts[i], &data[starts[i]..starts[i + 1]]);
            if i == 6 {
                // One piece not placed at its phase: it is written through the cache.
                let (buf, pad) = at_phase(piece, at + 1);
                assert!(placed.direct_span(at as u64, &buf[pad..]).is_none());
                placed.write_at(at as u64, &buf[pad..]).unwrap();
                continue;
            }
            let (buf, pad) = at_phase(piece, placed.phase_of(at as u64));
            let span = placed.direct_span(at as u64, &buf[pad..]);
            assert_eq!(span.is_some(), opened_direct && piece.len() >= DIRECT_FROM, "piece {i}");
            placed.write_at(at as u64, &buf[pad..]).unwrap();
        }
        assert_eq!(placed.written.lock().unwrap().upto, data.len() as u64);
        if opened_direct {
            assert!(placed.is_direct(), "this file system took every direct write");
        } else {
            eprintln!("{} refuses O_DIRECT: only the content was checked", dir.display());
        }
        drop(placed);
        assert!(std::fs::read(&path).unwrap() == data);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
