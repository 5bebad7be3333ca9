//! One open file's content while the mount has it open: the committed version's chunks,
//! what was written since (in a local overlay file), and how it becomes a new version.
//!
//! The content is a list of segments covering `[0, end)`, each one chunk: a chunk of the
//! committed version (bytes from the cache or its nodes) or a chunk written through this
//! mount (bytes still in the overlay at the same offsets). Bytes written and not yet cut
//! into chunks are "dirty": in the overlay and marked in a range set.
//!
//! A file written front to back is cut into chunks as it grows and they are uploaded in
//! the background, so closing it only sends the last few. A commit (on flush or fsync)
//! re-chunks only the runs of segments that writes or a truncate touched, plus the tail,
//! and keeps every other chunk as it is: an overwrite in the middle of a large file
//! uploads a few chunks, never the whole file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use collective_client::writeback::WriteBehind;
use collective_client::{Client, ClientError, LARGE_FILE, SEAL_LEN, chunk_params, prepare_chunk};
use collective_core::ChunkId;
use collective_proto::v1::{ChunkLocation, ChunkRef, FileAttr, FileKind};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::cache::ChunkCache;
use crate::errno::ContentError;
use crate::ranges::RangeSet;

/// A dirty run this long at the end of the chunks is cut and uploaded while writing, with
/// the chunk sizes of a file this large (so it dedups with the same file stored by `put`).
const STREAM_AFTER: u64 = LARGE_FILE;
/// How much of the overlay is read and cut at once (at least twice the largest chunk).
const WINDOW: usize = 16 << 20;
/// Read tokens last 15 minutes; plans older than this are refreshed before use.
const PLAN_FRESH: Duration = Duration::from_secs(600);

/// What a chunk written through this mount became once stored.
pub(crate) struct Stored {
    id: ChunkId,
    seal: Option<[u8; SEAL_LEN]>,
    /// The nodes holding it.
    on: Vec<String>,
}

/// The sealing, hashing and upload of a batch of chunks, shared by their segments. It runs
/// in the background: a write only cuts the bytes into chunks and goes on.
type Batch = Shared<BoxFuture<'static, Result<Arc<Vec<Stored>>, ContentError>>>;

#[derive(Clone)]
pub(crate) enum Seg {
    /// A chunk of the committed version.
    Base(ChunkLocation),
    /// A chunk written through this mount; its bytes are in the overlay.
    New { batch: Batch, index: usize },
}

#[derive(Clone)]
pub(crate) struct Segment {
    pub start: u64,
    pub len: u64,
    pub seg: Seg,
}

impl Segment {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Where the bytes of one piece of a read come from.
enum Piece {
    Overlay(u64, u64),
    Chunk(ChunkLocation, u64, u64),
    Zero(u64),
}

pub(crate) struct OpenFile {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub mtime_ms: i64,
    pub owner: String,
    /// Committed version this content started from (0: not committed yet).
    pub version: u64,
    segs: Vec<Segment>,
    plan_at: Instant,
    overlay: Option<File>,
    /// Streamed parts of the overlay go to disk and leave the page cache.
    behind: WriteBehind,
    dirty: RangeSet,
    /// Something to commit: writes, a truncate, or a file created and never committed.
    pub changed: bool,
    /// The datastore's encryption secret, once known (Some(None): not encrypted).
    secret: Option<Option<[u8; 32]>>,
    /// Unlinked or replaced while open: keep serving reads, never commit.
    pub unlinked: bool,
    /// Where the overlay file is made.
    dir: PathBuf,
}

fn now_ms() -> i64 {
    collective_core::unix_ms_now() as i64
}

impl OpenFile {
    /// The committed file at `path`, from its read plan.
    pub async fn open(client: &Client, path: &str, dir: &Path) -> Result<OpenFile, ClientError> {
        let plan = client.read_plan(path).await?;
        let attr = plan.attr.unwrap_or_default();
        let segs = plan
            .chunks
            .into_iter()
            .map(|c| Segment {
                start: c.offset,
                len: c.size,
                seg: Seg::Base(c),
            })
            .collect();
        Ok(OpenFile {
            path: path.to_string(),
            size: attr.size,
            mode: attr.mode,
            mtime_ms: attr.mtime_ms,
            owner: attr.owner,
            version: attr.version,
            segs,
            plan_at: Instant::now(),
            overlay: None,
            behind: WriteBehind::new(),
            dirty: RangeSet::default(),
            changed: false,
            secret: None,
            unlinked: false,
            dir: dir.to_path_buf(),
        })
    }

    /// A new, empty file that exists only here until its first commit.
    pub fn created(path: &str, mode: u32, owner: &str, dir: &Path) -> OpenFile {
        OpenFile {
            path: path.to_string(),
            size: 0,
            mode,
            mtime_ms: now_ms(),
            owner: owner.to_string(),
            version: 0,
            segs: Vec::new(),
            plan_at: Instant::now(),
            overlay: None,
            behind: WriteBehind::new(),
            dirty: RangeSet::default(),
            changed: true,
            secret: None,
            unlinked: false,
            dir: dir.to_path_buf(),
        }
    }

    /// Attributes as this mount sees them (size and time include uncommitted writes).
    pub fn attr(&self, inode: u64) -> FileAttr {
        FileAttr {
            path: self.path.clone(),
            inode,
            kind: FileKind::File as i32,
            size: self.size,
            mode: self.mode,
            mtime_ms: self.mtime_ms,
            owner: self.owner.clone(),
            version: self.version,
            ..Default::default()
        }
    }

    /// Remembers the datastore's encryption secret (asked once, before the first write).
    pub fn needs_secret(&self) -> bool {
        self.secret.is_none()
    }

    pub fn set_secret(&mut self, secret: Option<[u8; 32]>) {
        self.secret = Some(secret);
    }

    fn overlay(&mut self) -> std::io::Result<&File> {
        if self.overlay.is_none() {
            // Anonymous: unlinked at once, so nothing is left behind whatever happens.
            let f = tempfile_in(&self.dir)?;
            self.overlay = Some(f);
        }
        self.overlay.as_ref().ok_or_else(|| std::io::Error::other("overlay missing"))
    }

    fn read_overlay(&self, start: u64, end: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
        let from = out.len();
        out.resize(from + (end - start) as usize, 0);
        let Some(f) = &self.overlay else { return Ok(()) };
        let mut done = 0usize;
        let buf = &mut out[from..];
        while done < buf.len() {
            match f.read_at(&mut buf[done..], start + done as u64) {
                Ok(0) => break, // beyond the overlay's end: zeros
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The pieces `[start, end)` is made of.
    fn pieces(&self, start: u64, end: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut pos = start;
        while pos < end {
            if let Some((_, e)) = self.dirty.containing(pos) {
                let to = e.min(end);
                out.push(Piece::Overlay(pos, to));
                pos = to;
                continue;
            }
            let stop = self.dirty.next_from(pos).map(|(s, _)| s.min(end)).unwrap_or(end);
            let i = self.segs.partition_point(|s| s.end() <= pos);
            match self.segs.get(i).filter(|s| s.start <= pos) {
                Some(s) => {
                    let to = stop.min(s.end());
                    match &s.seg {
                        Seg::Base(loc) => out.push(Piece::Chunk(loc.clone(), pos - s.start, to - s.start)),
                        Seg::New { .. } => out.push(Piece::Overlay(pos, to)),
                    }
                    pos = to;
                }
                None => {
                    out.push(Piece::Zero(stop - pos));
                    pos = stop;
                }
            }
        }
        out
    }

    /// The chunks of the committed version that a read of `[start, start+len)` would use,
    /// for read-ahead.
    pub fn chunks_in(&self, start: u64, len: u64) -> Vec<ChunkLocation> {
        let end = (start + len).min(self.size);
        let i = self.segs.partition_point(|s| s.end() <= start);
        self.segs[i.min(self.segs.len())..]
            .iter()
            .take_while(|s| s.start < end)
            .filter_map(|s| match &s.seg {
                Seg::Base(loc) if !self.dirty.overlaps(s.start, s.end()) => Some(loc.clone()),
                _ => None,
            })
            .collect()
    }

    /// Starts a read: overlay bytes are read now (under the file's lock); chunk bytes are
    /// fetched by [`ReadJob::finish`] without it.
    pub fn start_read(&self, offset: u64, len: u64) -> std::io::Result<ReadJob> {
        let end = (offset + len).min(self.size);
        let mut parts = Vec::new();
        if offset < end {
            for p in self.pieces(offset, end) {
                match p {
                    Piece::Overlay(s, e) => {
                        let mut b = Vec::new();
                        self.read_overlay(s, e, &mut b)?;
                        parts.push(Part::Bytes(b));
                    }
                    Piece::Zero(n) => parts.push(Part::Bytes(vec![0; n as usize])),
                    Piece::Chunk(loc, s, e) => parts.push(Part::Chunk(loc, s as usize, e as usize)),
                }
            }
        }
        Ok(ReadJob {
            parts,
            path: self.path.clone(),
        })
    }

    /// Whether read tokens may have expired (refresh with [`Self::refresh`]).
    pub fn stale(&self) -> bool {
        self.plan_at.elapsed() > PLAN_FRESH && self.segs.iter().any(|s| matches!(s.seg, Seg::Base(_)))
    }

    /// Fresh read tokens for the committed chunks, when the file is still at our version.
    pub async fn refresh(&mut self, client: &Client) -> Result<(), ClientError> {
        let plan = client.read_plan(&self.path).await?;
        self.plan_at = Instant::now();
        if plan.attr.as_ref().map(|a| a.version) != Some(self.version) {
            tracing::info!(path = %self.path, "the file changed elsewhere while open here; this mount keeps the version it opened");
            return Ok(());
        }
        let fresh: std::collections::HashMap<Vec<u8>, ChunkLocation> = plan.chunks.into_iter().map(|c| (c.id.to_vec(), c)).collect();
        for s in &mut self.segs {
            if let Seg::Base(loc) = &mut s.seg
                && let Some(f) = fresh.get(loc.id.as_ref())
            {
                *loc = f.clone();
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset`. A long dirty run at the end is cut into chunks and sent
    /// to nodes in the background.
    pub async fn write(&mut self, client: &Arc<Client>, offset: u64, data: &[u8]) -> Result<(), ContentError> {
        let end = offset + data.len() as u64;
        if offset > self.size {
            // A sparse write: the gap reads as zeros (the overlay holds nothing there).
            self.dirty.insert(self.size, offset);
        }
        let dir = self.dir.clone();
        self.overlay()
            .and_then(|f| f.write_all_at(data, offset))
            .map_err(|e| ContentError::local(format!("writing the local overlay in {}", dir.display()), e))?;
        self.dirty.insert(offset, end);
        self.size = self.size.max(end);
        self.mtime_ms = now_ms();
        self.changed = true;
        self.stream(client).await
    }

    /// Cuts and uploads the dirty run that continues the chunks, when it is long enough.
    async fn stream(&mut self, client: &Arc<Client>) -> Result<(), ContentError> {
        if self.secret.is_none() {
            // Not known yet whether to encrypt: cut everything at commit.
            return Ok(());
        }
        let seg_end = self.segs.last().map(|s| s.end()).unwrap_or(0);
        let Some((s, e)) = self.dirty.containing(seg_end) else {
            return Ok(());
        };
        if s > seg_end || e - seg_end < STREAM_AFTER || seg_end >= self.size {
            return Ok(());
        }
        // Chunk sizes for a file of unknown final size; the last piece waits for more data.
        let p = chunk_params(None);
        let take = (e - seg_end).min(WINDOW.max(2 * p.max) as u64);
        let mut buf = Vec::with_capacity(take as usize);
        self.read_overlay(seg_end, seg_end + take, &mut buf)
            .map_err(|e| ContentError::local("reading the local overlay", e))?;
        let mut cuts: Vec<(usize, usize)> = fastcdc::v2020::FastCDC::new(&buf, p.min, p.avg, p.max)
            .map(|c| (c.offset, c.length))
            .collect();
        cuts.pop();
        if cuts.is_empty() {
            return Ok(());
        }
        let emitted: u64 = cuts.iter().map(|(_, l)| *l as u64).sum();
        // The uncut rest is read again with the next window; hold only what goes out.
        buf.truncate(emitted as usize);
        // Those bytes are now read only if the upload fails or the program reads them
        // back before closing: the overlay keeps them on disk, not in memory.
        if let Some(f) = &self.overlay {
            self.behind.release(f, seg_end, seg_end + emitted);
        }
        self.upload(client, seg_end, buf, cuts).await;
        self.dirty.remove(seg_end, seg_end + emitted);
        Ok(())
    }

    /// Appends segments for the chunks `cuts` (offset, length) makes of `buf`, which starts
    /// at file offset `start`, and seals, hashes and uploads them in the background (on the
    /// blocking pool, then the network), holding their size in the client's memory budget
    /// until stored. Only waiting for that budget holds the caller up.
    async fn upload(&mut self, client: &Arc<Client>, start: u64, buf: Vec<u8>, cuts: Vec<(usize, usize)>) {
        let bytes: u64 = cuts.iter().map(|(_, l)| *l as u64).sum();
        let (budget, max_kib) = client.budget();
        let kib = (bytes.div_ceil(1024) as u32).clamp(1, max_kib);
        let permit = budget.acquire_many_owned(kib).await.ok();
        let mut pos = start;
        let (c, path, secret, lens) = (client.clone(), self.path.clone(), self.secret.flatten(), cuts.clone());
        let batch: Batch = async move {
            let prepared = tokio::task::spawn_blocking(move || {
                let buf = Bytes::from(buf);
                cuts.iter()
                    .map(|(o, l)| prepare_chunk(buf.slice(*o..*o + *l), secret.as_ref()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| ContentError::Inconsistent(format!("preparing chunks: {e}")))?
            .map_err(ContentError::from)?;
            let on = c.store_chunks(&path, &prepared).await.map_err(ContentError::from);
            drop(permit);
            Ok(Arc::new(
                prepared
                    .into_iter()
                    .zip(on?)
                    .map(|(p, on)| Stored {
                        id: p.id,
                        seal: p.seal,
                        on,
                    })
                    .collect(),
            ))
        }
        .boxed()
        .shared();
        // Start it now; the segments wait for it when committing.
        tokio::spawn(batch.clone());
        for (index, (_, len)) in lens.into_iter().enumerate() {
            let len = len as u64;
            self.segs.push(Segment {
                start: pos,
                len,
                seg: Seg::New {
                    batch: batch.clone(),
                    index,
                },
            });
            pos += len;
        }
    }

    /// Sets the size: drops what lies beyond, or extends with zeros.
    pub fn truncate(&mut self, size: u64) -> Result<(), ContentError> {
        if size < self.size {
            self.dirty.remove(size, u64::MAX);
            self.segs.retain(|s| s.start < size);
            if let Some(f) = &self.overlay {
                f.set_len(size)
                    .map_err(|e| ContentError::local("truncating the local overlay", e))?;
            }
        } else if size > self.size {
            // The overlay holds nothing past the old size (truncated above), so it reads
            // back as zeros there.
            if let Some(f) = &self.overlay
                && f.metadata().map(|m| m.len() > self.size).unwrap_or(false)
            {
                f.set_len(self.size)
                    .map_err(|e| ContentError::local("truncating the local overlay", e))?;
            }
            self.dirty.insert(self.size, size);
        }
        self.size = size;
        self.mtime_ms = now_ms();
        self.changed = true;
        Ok(())
    }

    fn affected(&self, s: &Segment) -> bool {
        s.end() > self.size || self.dirty.overlaps(s.start, s.end())
    }

    /// Makes the content a new committed version: re-chunks what changed, waits for every
    /// upload, commits the manifest in one transaction. Returns the new attributes, or
    /// None when there was nothing to commit.
    pub async fn commit(&mut self, client: &Arc<Client>, cache: &Arc<ChunkCache>) -> Result<Option<FileAttr>, ContentError> {
        if self.unlinked || !self.changed {
            return Ok(None);
        }
        if self.stale() {
            self.refresh(client).await.map_err(ContentError::from)?;
        }
        if self.needs_secret() {
            let s = client.secret_for(&self.path).await.map_err(ContentError::from)?;
            self.set_secret(s);
        }
        // Chunks whose background upload failed (a node died, say) are cut and sent again:
        // their bytes are still in the overlay.
        let mut failed = Vec::new();
        for s in &self.segs {
            if let Seg::New { batch, .. } = &s.seg
                && let Err(e) = batch.clone().await
            {
                tracing::info!(path = %self.path, "retrying chunks whose upload failed: {e}");
                failed.push((s.start, s.end()));
            }
        }
        for (s, e) in failed {
            self.dirty.insert(s, e);
        }
        let old = self.segs.clone();
        let result = self.rebuild(client, cache, &old).await;
        let new = match result {
            Ok(new) => new,
            Err(e) => {
                self.segs = old;
                return Err(e);
            }
        };
        // Every chunk stored: the manifest.
        let mut refs = Vec::with_capacity(new.len());
        for s in &new {
            let (id, stored_on, seal) = match &s.seg {
                Seg::Base(loc) => (loc.id.to_vec(), Vec::new(), loc.seal.to_vec()),
                Seg::New { batch, index } => {
                    let all = match batch.clone().await {
                        Ok(all) => all,
                        Err(e) => {
                            self.segs = old;
                            return Err(e);
                        }
                    };
                    let Some(c) = all.get(*index) else {
                        self.segs = old;
                        return Err(ContentError::Inconsistent(format!(
                            "lost track of a chunk of {} while storing it",
                            self.path
                        )));
                    };
                    (c.id.0.to_vec(), c.on.clone(), c.seal.map(|s| s.to_vec()).unwrap_or_default())
                }
            };
            refs.push(ChunkRef {
                id: id.into(),
                offset: s.start,
                size: s.len,
                stored_on,
                seal: seal.into(),
            });
        }
        match client.commit_file(&self.path, self.size, self.mode, self.mtime_ms, refs).await {
            Ok(attr) => {
                self.segs = new;
                self.dirty.clear();
                self.changed = false;
                self.version = attr.version;
                self.owner = attr.owner.clone();
                Ok(Some(attr))
            }
            Err(e) => {
                self.segs = old;
                Err(ContentError::from(e))
            }
        }
    }

    /// The segment list of the new version: untouched segments kept, touched runs (and the
    /// tail) re-chunked and uploaded.
    async fn rebuild(&mut self, client: &Arc<Client>, cache: &Arc<ChunkCache>, old: &[Segment]) -> Result<Vec<Segment>, ContentError> {
        // `pieces` reads through self.segs, which still holds the old segments here.
        let mut out: Vec<Segment> = Vec::new();
        let mut i = 0;
        while i < old.len() {
            if !self.affected(&old[i]) {
                out.push(old[i].clone());
                i += 1;
                continue;
            }
            let mut j = i;
            while j < old.len() && self.affected(&old[j]) {
                j += 1;
            }
            let start = old[i].start;
            let end = if j == old.len() {
                self.size
            } else {
                old[j - 1].end().min(self.size)
            };
            let pieces = self.rechunk(client, cache, start, end).await?;
            out.extend(pieces);
            i = j;
        }
        let covered = out.last().map(|s| s.end()).unwrap_or(0);
        if covered < self.size {
            let tail = self.rechunk(client, cache, covered, self.size).await?;
            out.extend(tail);
        }
        self.segs = Vec::new();
        Ok(out)
    }

    /// Cuts `[start, end)` into new chunks and starts their upload.
    async fn rechunk(&mut self, client: &Arc<Client>, cache: &Arc<ChunkCache>, start: u64, end: u64) -> Result<Vec<Segment>, ContentError> {
        let p = chunk_params(Some(self.size));
        let window = WINDOW.max(2 * p.max);
        let mut out = Vec::new();
        let mut carry: Vec<u8> = Vec::new();
        let mut pos = start;
        let mut chunk_start = start;
        while pos < end {
            let take = ((window - carry.len()) as u64).min(end - pos);
            let job = self
                .start_read(pos, take)
                .map_err(|e| ContentError::local("reading the local overlay", e))?;
            let from = carry.len();
            job.finish_into(cache, &mut carry).await?;
            // The new chunks' bytes must all be in the overlay, also those that came
            // from chunks of the old version.
            self.overlay()
                .and_then(|f| f.write_all_at(&carry[from..], pos))
                .map_err(|e| ContentError::local("writing the local overlay", e))?;
            pos += take;
            let last = pos >= end;
            let mut cuts: Vec<(usize, usize)> = fastcdc::v2020::FastCDC::new(&carry, p.min, p.avg, p.max)
                .map(|c| (c.offset, c.length))
                .collect();
            if !last {
                cuts.pop();
            }
            let used = cuts.last().map(|(o, l)| o + l).unwrap_or(0);
            // Uploads append to self.segs; take them into this run's list.
            let before = self.segs.len();
            if !cuts.is_empty() {
                let rest = carry.split_off(used);
                self.upload(client, chunk_start, std::mem::replace(&mut carry, rest), cuts).await;
            }
            out.extend(self.segs.drain(before..));
            chunk_start += used as u64;
        }
        Ok(out)
    }
}

enum Part {
    Bytes(Vec<u8>),
    Chunk(ChunkLocation, usize, usize),
}

/// A read waiting for chunk bytes.
pub(crate) struct ReadJob {
    parts: Vec<Part>,
    path: String,
}

impl ReadJob {
    /// Fetches the chunks (in parallel) and appends the bytes in order to `out`.
    pub async fn finish_into(self, cache: &Arc<ChunkCache>, out: &mut Vec<u8>) -> Result<(), ContentError> {
        let path = self.path.as_str();
        let fetches = self.parts.iter().map(|p| async move {
            match p {
                Part::Chunk(loc, ..) => cache.get(loc, path).await.map(Some),
                Part::Bytes(_) => Ok::<Option<Bytes>, ContentError>(None),
            }
        });
        let fetched = futures::future::join_all(fetches).await;
        for (p, f) in self.parts.iter().zip(fetched) {
            match (p, f?) {
                (Part::Bytes(b), _) => out.extend_from_slice(b),
                (Part::Chunk(_, s, e), Some(data)) => {
                    let slice = data
                        .get(*s..*e)
                        .ok_or_else(|| ContentError::Inconsistent(format!("a chunk of {} is shorter than its manifest says", self.path)))?;
                    out.extend_from_slice(slice);
                }
                (Part::Chunk(..), None) => {}
            }
        }
        Ok(())
    }
}

/// An anonymous temporary file in `dir` (O_TMPFILE where supported, else created and
/// unlinked at once).
fn tempfile_in(dir: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir);
    if let Ok(f) = tmp {
        return Ok(f);
    }
    let name = dir.join(format!(".overlay-{}-{}", std::process::id(), collective_core::unix_ms_now()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&name)?;
    std::fs::remove_file(&name)?;
    Ok(f)
}
