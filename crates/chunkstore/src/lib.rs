//! The content-addressed chunk store of a storage node.
//!
//! A chunk is stored under the BLAKE3 hash of its bytes, in a two-level directory fan-out
//! (`chunks/ab/cd/abcd…`, 65,536 leaf directories, so millions of chunks keep directories
//! small). Writes are verified before they become visible and made durable (temp file,
//! fdatasync, rename, directory fsync); reads verify again, and a chunk that no longer
//! matches its name is moved to `quarantine/` instead of being served. Large chunks are
//! written and read with direct I/O, past the page cache. A configured capacity is
//! enforced. The store knows nothing about networking or tokens.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use collective_core::{ChunkId, format_bytes};

/// Written to `STORE_VERSION`; a store of another version is refused, never guessed at.
pub const STORE_FORMAT: &str = "collective-chunkstore 1";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {0} is not stored here")]
    NotFound(ChunkId),
    #[error("chunk {id} is corrupt on disk (its bytes hash to {actual}); it was quarantined")]
    Corrupt { id: ChunkId, actual: String },
    #[error("the uploaded bytes do not match chunk id {0}")]
    HashMismatch(ChunkId),
    #[error("no space for a {} chunk: {} free of {} capacity; add capacity or remove data", format_bytes(*.needed), format_bytes(*.free), format_bytes(*.capacity))]
    NoSpace { needed: u64, free: u64, capacity: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} holds a chunk store of format '{1}', this program reads '{STORE_FORMAT}'")]
    Format(PathBuf, String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Outcome of a put.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    Stored,
    AlreadyPresent,
}

pub struct ChunkStore {
    root: PathBuf,
    capacity: u64,
    used: AtomicU64,
    count: AtomicU64,
    tmp_seq: AtomicU64,
    /// Large chunks are written with `O_DIRECT` (see [`DirectStage`]) until the file
    /// system refuses it once.
    direct: AtomicBool,
    /// Leaf directories made but whose entries are not yet known to be durable.
    young: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

fn fsync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path).and_then(|d| d.sync_all()).map_err(io_err(path))
}

impl ChunkStore {
    /// Opens (or creates) the store at `root`, counting what it holds.
    pub fn open(root: &Path, capacity: u64) -> Result<ChunkStore, StoreError> {
        for sub in ["chunks", "tmp", "quarantine"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let vpath = root.join("STORE_VERSION");
        match fs::read_to_string(&vpath) {
            Ok(v) if v.trim() == STORE_FORMAT => {}
            Ok(v) => return Err(StoreError::Format(root.to_path_buf(), v.trim().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::write(&vpath, format!("{STORE_FORMAT}\n")).map_err(io_err(&vpath))?;
            }
            Err(e) => return Err(StoreError::Io { path: vpath, source: e }),
        }
        // Leftovers of writes interrupted by a crash.
        let tmp = root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let (mut used, mut count) = (0u64, 0u64);
        let chunks = root.join("chunks");
        // All 256 top-level fan-out directories, made (and made durable) once, so that a
        // chunk's publication only ever adds a leaf directory.
        let mut made = false;
        for b in 0..=255u8 {
            let l1 = chunks.join(format!("{b:02x}"));
            match fs::create_dir(&l1) {
                Ok(()) => made = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::Io { path: l1, source: e }),
            }
        }
        if made {
            fsync_dir(&chunks)?;
            fsync_dir(root)?;
        }
        for l1 in fs::read_dir(&chunks).map_err(io_err(&chunks))?.flatten() {
            for l2 in fs::read_dir(l1.path()).map_err(io_err(&l1.path()))?.flatten() {
                for f in fs::read_dir(l2.path()).map_err(io_err(&l2.path()))?.flatten() {
                    if let Ok(m) = f.metadata() {
                        used += m.len();
                        count += 1;
                    }
                }
            }
        }
        Ok(ChunkStore {
            root: root.to_path_buf(),
            capacity,
            used: AtomicU64::new(used),
            count: AtomicU64::new(count),
            tmp_seq: AtomicU64::new(0),
            direct: AtomicBool::new(true),
            young: Default::default(),
        })
    }

    /// Where a chunk lives on disk.
    pub fn path_of(&self, id: &ChunkId) -> PathBuf {
        let h = id.to_hex();
        self.root.join("chunks").join(&h[0..2]).join(&h[2..4]).join(h)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn chunk_count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Free bytes: what capacity allows, bounded by what the filesystem has.
    pub fn free(&self) -> u64 {
        let by_capacity = self.capacity.saturating_sub(self.used());
        by_capacity.min(fs_available(&self.root).unwrap_or(u64::MAX))
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.path_of(id).exists()
    }

    /// Starts writing a chunk of `size` bytes that arrives in pieces; space is reserved
    /// now and given back if the write does not complete.
    pub fn writer(&self, id: ChunkId, size: u64) -> Result<ChunkWriter<'_>, StoreError> {
        let dest = self.path_of(&id);
        if dest.exists() {
            return Ok(ChunkWriter {
                store: self,
                id,
                size,
                dest,
                tmp: None,
                hasher: RunHasher::default(),
                written: 0,
                present: true,
                stage: None,
            });
        }
        self.reserve(size)?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self.root.join("tmp").join(format!("{}-{seq}", std::process::id()));
        let direct = size >= KEEP_CACHED_BELOW && self.direct.load(Ordering::Relaxed);
        let (file, direct) = match create_tmp(&tmp_path, direct) {
            Ok(f) => (Ok(f), direct),
            // The file system has no direct I/O (tmpfs before Linux 6.6, some FUSE ones).
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct.store(false, Ordering::Relaxed);
                (create_tmp(&tmp_path, false), false)
            }
            Err(e) => (Err(e), false),
        };
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                self.used.fetch_sub(size, Ordering::SeqCst);
                return Err(StoreError::Io { path: tmp_path, source: e });
            }
        };
        Ok(ChunkWriter {
            store: self,
            id,
            size,
            dest,
            tmp: Some((tmp_path, file)),
            hasher: RunHasher::default(),
            written: 0,
            present: false,
            stage: direct.then(DirectStage::new),
        })
    }

    /// Counts `len` bytes against capacity and the filesystem's free space.
    fn reserve(&self, len: u64) -> Result<(), StoreError> {
        let before = self.used.fetch_add(len, Ordering::SeqCst);
        let fs_free = fs_available(&self.root).unwrap_or(u64::MAX);
        if before + len > self.capacity || len > fs_free {
            self.used.fetch_sub(len, Ordering::SeqCst);
            return Err(StoreError::NoSpace {
                needed: len,
                free: self.free(),
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Verifies `data` hashes to `id` and stores it durably.
    pub fn put(&self, id: &ChunkId, data: &[u8]) -> Result<Put, StoreError> {
        let mut w = self.writer(*id, data.len() as u64)?;
        w.write(data)?;
        w.finish()
    }

    /// Makes a fully written temp file durable and moves it into place.
    fn publish(&self, f: File, tmp: &Path, dest: &Path, size: u64) -> Result<(), StoreError> {
        f.sync_data().map_err(io_err(tmp))?;
        if size >= KEEP_CACHED_BELOW {
            drop_cached(&f);
        }
        drop(f);
        let dir = dest.parent().unwrap_or(&self.root);
        // The top-level fan-out directories exist from `open` on; a leaf is made when its
        // first chunk arrives, and its own entry is made durable after the chunk's (where
        // the file system journals metadata, one flush then covers both). Until then the
        // leaf is young: a chunk published into it meanwhile makes the entry durable too.
        let mut made = false;
        if !dir.exists() {
            // Made and marked young under the lock: whoever finds the leaf and then checks
            // whether it is young sees it so.
            let mut young = self.young_leaves();
            match fs::create_dir(dir) {
                Ok(()) => {
                    young.insert(dir.to_path_buf());
                    made = true;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(StoreError::Io {
                        path: dir.to_path_buf(),
                        source: e,
                    });
                }
            }
        }
        let published = fs::rename(tmp, dest)
            .map_err(io_err(dest))
            .and_then(|()| fsync_dir(dir))
            .and_then(|()| match dir.parent() {
                Some(parent) if made || self.young_leaves().contains(dir) => fsync_dir(parent),
                _ => Ok(()),
            });
        if made && published.is_ok() {
            self.young_leaves().remove(dir);
        }
        published
    }

    fn young_leaves(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<PathBuf>> {
        self.young.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The size of a stored chunk (`None` if it is not here). Where large chunks are read
    /// through the page cache (a file system without direct I/O), the kernel is also told
    /// to start reading a large one from disk now: a reader that then waits its turn for
    /// memory finds it in the cache. Direct reads bypass the cache, so then it is not.
    pub fn prefetch(&self, id: &ChunkId) -> Option<u64> {
        let path = self.path_of(id);
        let size = fs::metadata(&path).ok()?.len();
        if size >= KEEP_CACHED_BELOW
            && !self.direct.load(Ordering::Relaxed)
            && let Ok(f) = File::open(&path)
        {
            advise(&f, libc::POSIX_FADV_WILLNEED);
        }
        Some(size)
    }

    /// Reads a chunk, verifying it. A corrupt chunk is quarantined and reported.
    pub fn get(&self, id: &ChunkId) -> Result<Bytes, StoreError> {
        let path = self.path_of(id);
        let data = match read_pooled(&path, self.direct.load(Ordering::Relaxed)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound(*id)),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let actual = ChunkId::of(&data);
        if actual != *id {
            self.quarantine(id, data.len() as u64)?;
            return Err(StoreError::Corrupt {
                id: *id,
                actual: actual.short(),
            });
        }
        Ok(data)
    }

    /// Opens a stored chunk to be read front to back in pieces ([`ChunkReader`]), so it can
    /// be sent on while the rest is still on disk. A large chunk is read with direct I/O,
    /// as [`Self::get`] reads it.
    pub fn reader(&self, id: &ChunkId) -> Result<ChunkReader, StoreError> {
        let path = self.path_of(id);
        let open = |direct: bool| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut o = fs::OpenOptions::new();
            o.read(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&path)
        };
        let opened = open(false).and_then(|f| Ok((f.metadata()?.len(), f)));
        let (len, file) = match opened {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound(*id)),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        // Direct reads where the store uses them and the file system takes them (an open
        // it refuses leaves the page cache).
        let direct = (len >= KEEP_CACHED_BELOW && self.direct.load(Ordering::Relaxed))
            .then(|| open(true).ok())
            .flatten();
        Ok(ChunkReader {
            id: *id,
            path,
            file,
            direct,
            len,
            pos: 0,
            hasher: blake3::Hasher::new(),
        })
    }

    /// Ends a [`ChunkReader`] that read the whole chunk: `Ok` if its bytes were the chunk's;
    /// a corrupt chunk is quarantined and reported as [`StoreError::Corrupt`].
    pub fn finish_read(&self, reader: ChunkReader) -> Result<(), StoreError> {
        let actual = ChunkId(*reader.hasher.finalize().as_bytes());
        if reader.pos != reader.len {
            return Err(StoreError::Io {
                path: reader.path,
                source: io::Error::other(format!("only {} of the chunk's {} bytes were read", reader.pos, reader.len)),
            });
        }
        if actual != reader.id {
            self.quarantine(&reader.id, reader.len)?;
            return Err(StoreError::Corrupt {
                id: reader.id,
                actual: actual.short(),
            });
        }
        Ok(())
    }

    /// Re-hashes a stored chunk: `Ok(true)` intact, `Ok(false)` corrupt (now quarantined).
    pub fn verify(&self, id: &ChunkId) -> Result<bool, StoreError> {
        match self.get(id) {
            Ok(_) => Ok(true),
            Err(StoreError::Corrupt { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn quarantine(&self, id: &ChunkId, len: u64) -> Result<(), StoreError> {
        let from = self.path_of(id);
        let to = self.root.join("quarantine").join(id.to_hex());
        fs::rename(&from, &to).map_err(io_err(&from))?;
        self.used.fetch_sub(len.min(self.used()), Ordering::SeqCst);
        self.count.fetch_sub(1, Ordering::Relaxed);
        tracing::warn!(chunk = %id, "corrupt chunk quarantined to {}", to.display());
        Ok(())
    }

    /// Calls `visit` with every stored chunk id, leaf directory by leaf directory (memory
    /// stays small however many chunks there are); stops early when `visit` returns false.
    pub fn for_each_id(&self, visit: &mut dyn FnMut(ChunkId) -> bool) -> Result<(), StoreError> {
        let chunks = self.root.join("chunks");
        let mut l1: Vec<PathBuf> = fs::read_dir(&chunks)
            .map_err(io_err(&chunks))?
            .flatten()
            .map(|e| e.path())
            .collect();
        l1.sort();
        for a in l1 {
            let Ok(rd) = fs::read_dir(&a) else { continue };
            let mut l2: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            l2.sort();
            for b in l2 {
                let Ok(rd) = fs::read_dir(&b) else { continue };
                for f in rd.flatten() {
                    if let Some(id) = f.file_name().to_str().and_then(ChunkId::from_hex)
                        && !visit(id)
                    {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes a chunk; returns the bytes freed (0 when it was not there).
    pub fn delete(&self, id: &ChunkId) -> Result<u64, StoreError> {
        let path = self.path_of(id);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        fs::remove_file(&path).map_err(io_err(&path))?;
        self.used.fetch_sub(len.min(self.used()), Ordering::SeqCst);
        self.count.fetch_sub(1, Ordering::Relaxed);
        Ok(len)
    }
}

/// A chunk being written piece by piece: hashed as it arrives, published only if the
/// bytes match the id. Dropping it unfinished removes the temp file and frees the space.
pub struct ChunkWriter<'a> {
    store: &'a ChunkStore,
    id: ChunkId,
    size: u64,
    dest: PathBuf,
    tmp: Option<(PathBuf, File)>,
    hasher: RunHasher,
    written: u64,
    /// The chunk is already stored; incoming bytes are only verified.
    present: bool,
    /// Set when the temp file was opened for direct I/O.
    stage: Option<DirectStage>,
}

impl ChunkWriter<'_> {
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.write_pieces(&[data])
    }

    /// Writes several pieces in order with one system call where the kernel allows (the
    /// pieces of a chunk as they came off the network, without gathering them first).
    /// A chunk written with direct I/O gathers them into its stage instead, and writes the
    /// stage each time it fills: hand its pieces over as they come.
    pub fn write_pieces(&mut self, pieces: &[&[u8]]) -> Result<(), StoreError> {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        self.written += len as u64;
        if self.written > self.size {
            return Err(StoreError::HashMismatch(self.id));
        }
        let Some((path, f)) = &mut self.tmp else {
            for piece in pieces {
                self.hasher.update(piece);
            }
            return Ok(());
        };
        let Some(stage) = &mut self.stage else {
            for piece in pieces {
                self.hasher.update(piece);
            }
            return write_all_vectored(f, pieces).map_err(|e| map_write_error(path, e, self.size, self.store));
        };
        for mut piece in pieces.iter().copied() {
            while !piece.is_empty() {
                piece = stage.fill(piece);
                if stage.is_full() {
                    stage
                        .write_out(f, &mut self.hasher, false, &self.store.direct)
                        .map_err(|e| map_write_error(path, e, self.size, self.store))?;
                }
            }
        }
        Ok(())
    }

    /// Whether this chunk goes to disk with direct I/O (so the caller need not gather its
    /// pieces: the writer copies them into its own stage).
    pub fn is_direct(&self) -> bool {
        self.stage.is_some()
    }

    /// Verifies the whole chunk arrived and matches its id, then publishes it durably.
    pub fn finish(mut self) -> Result<Put, StoreError> {
        if let (Some(stage), Some((path, f))) = (&mut self.stage, &mut self.tmp) {
            stage
                .write_out(f, &mut self.hasher, true, &self.store.direct)
                .map_err(|e| map_write_error(path, e, self.size, self.store))?;
        }
        if self.written != self.size || ChunkId(*self.hasher.finalize().as_bytes()) != self.id {
            return Err(StoreError::HashMismatch(self.id));
        }
        let Some((tmp, f)) = self.tmp.take() else {
            return Ok(Put::AlreadyPresent);
        };
        match self.store.publish(f, &tmp, &self.dest, self.size) {
            Ok(()) => {
                self.store.count.fetch_add(1, Ordering::Relaxed);
                Ok(Put::Stored)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                self.store.used.fetch_sub(self.size, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

impl Drop for ChunkWriter<'_> {
    fn drop(&mut self) {
        if let Some(stage) = self.stage.take() {
            collective_core::buffers::give(stage.buf);
        }
        if let Some((tmp, _)) = self.tmp.take() {
            let _ = fs::remove_file(&tmp);
            if !self.present {
                self.store.used.fetch_sub(self.size, Ordering::SeqCst);
            }
        }
    }
}

/// Alignment of memory, file offsets and lengths for direct I/O: the page size, a multiple
/// of the logical block size of the disks in use.
const DIRECT_ALIGN: usize = 4096;
/// Bytes of a chunk gathered before each direct write: a multiple of [`DIRECT_ALIGN`] and
/// of [`HASH_RUN`].
const DIRECT_STAGE: usize = 512 * 1024;

/// Large chunks go to disk with `O_DIRECT`, from an aligned buffer. Through the page cache,
/// a node copied every byte into freshly allocated cache pages, tracked them (buffer heads,
/// delayed allocation), wrote them back at the fdatasync and then dropped them again: a
/// third of a node's CPU in a large put (docs/benchmarks.md). Direct I/O costs one copy
/// into this stage, which stays hot in the CPU's cache for the hash that follows. The
/// stage's bytes are hashed when it is written out, in whole runs.
struct DirectStage {
    /// Holds `pad` bytes of padding, then the staged bytes, which so start aligned.
    buf: Vec<u8>,
    pad: usize,
    /// Where in the file the stage's first byte goes.
    offset: u64,
}

impl DirectStage {
    fn new() -> DirectStage {
        let mut buf = collective_core::buffers::take(DIRECT_STAGE + DIRECT_ALIGN);
        let pad = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        buf.resize(pad, 0);
        DirectStage { buf, pad, offset: 0 }
    }

    fn staged(&self) -> usize {
        self.buf.len() - self.pad
    }

    fn is_full(&self) -> bool {
        self.staged() == DIRECT_STAGE
    }

    /// Copies as much of `piece` as fits; returns the rest.
    fn fill<'p>(&mut self, piece: &'p [u8]) -> &'p [u8] {
        let take = (DIRECT_STAGE - self.staged()).min(piece.len());
        // Within the capacity reserved in `new`: the buffer never moves.
        self.buf.extend_from_slice(&piece[..take]);
        &piece[take..]
    }

    /// Hashes and writes the staged bytes at their offset, directly as far as they fill
    /// whole blocks. `last`: the chunk ends here, and the tail short of a block goes
    /// through the page cache. If the file system refuses a direct write, the rest of this
    /// chunk and every later one is written through the page cache.
    fn write_out(&mut self, f: &File, hasher: &mut RunHasher, last: bool, direct_ok: &AtomicBool) -> io::Result<()> {
        let data = &self.buf[self.pad..];
        hasher.update(data);
        let whole = data.len() - data.len() % DIRECT_ALIGN;
        match f.write_all_at(&data[..whole], self.offset) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                direct_ok.store(false, Ordering::Relaxed);
                set_direct(f, false)?;
                f.write_all_at(&data[..whole], self.offset)?;
            }
            r => r?,
        }
        if last && whole < data.len() {
            set_direct(f, false)?;
            f.write_all_at(&data[whole..], self.offset + whole as u64)?;
        }
        self.offset += data.len() as u64;
        self.buf.truncate(self.pad);
        Ok(())
    }
}

/// Creates a chunk's temp file, for direct I/O if `direct`.
fn create_tmp(path: &Path, direct: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

/// Turns direct I/O on or off for an open file.
fn set_direct(f: &File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes BLAKE3 hashes at full SIMD width in one go: 16 of its 1 KiB chunks (AVX-512 lanes).
const HASH_RUN: usize = 16 * 1024;

/// BLAKE3 fed in whole runs of [`HASH_RUN`] bytes. Pieces as they come off the network
/// (about 64,000 bytes) end mid-run, and BLAKE3 then hashes the runs after them at
/// reduced width until its chunk counter realigns: 28 % slower than aligned input
/// (1 GiB: 0.27 s against 0.20 s here). The bytes up to the next run boundary are copied
/// aside and hashed once the run is whole.
#[derive(Default)]
struct RunHasher {
    hasher: blake3::Hasher,
    carry: Vec<u8>,
}

impl RunHasher {
    fn update(&mut self, mut data: &[u8]) {
        if !self.carry.is_empty() {
            let take = (HASH_RUN - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < HASH_RUN {
                return;
            }
            self.hasher.update(&self.carry);
            self.carry.clear();
        }
        let whole = data.len() - data.len() % HASH_RUN;
        self.hasher.update(&data[..whole]);
        self.carry.extend_from_slice(&data[whole..]);
    }

    fn finalize(&mut self) -> blake3::Hash {
        self.hasher.update(&self.carry);
        self.carry.clear();
        self.hasher.finalize()
    }
}

/// Chunks smaller than this go through the page cache and stay there once written: a read
/// of a small chunk from disk costs a whole device round trip for little data, and small
/// chunks (small files) are the ones read back soon and often. Larger chunks are written
/// and read with direct I/O; where the file system has none, they are dropped from the
/// cache once written.
pub const KEEP_CACHED_BELOW: u64 = 256 * 1024;

/// Lets the kernel drop a durable file's pages from its cache at once. A node is not a
/// cache for large chunks: they are read rarely, and soon after being written only by
/// chance, while a page cache grown by every write keeps taking fresh memory, which costs far more than reusing
/// pages just freed (in a VM, several times the CPU of the write itself; see
/// docs/benchmarks.md). Advice only: a failure changes nothing.
fn drop_cached(f: &File) {
    advise(f, libc::POSIX_FADV_DONTNEED);
}

/// `posix_fadvise` for the whole file.
fn advise(f: &File, advice: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; `f` is an open descriptor.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, advice);
    }
}

/// A stored chunk being read in pieces ([`ChunkStore::reader`]), each hashed as it is
/// read; only [`ChunkStore::finish_read`] says whether they were the chunk.
pub struct ChunkReader {
    id: ChunkId,
    path: PathBuf,
    file: File,
    /// The same file opened with `O_DIRECT`, while the file system takes direct reads.
    direct: Option<File>,
    len: u64,
    pos: u64,
    hasher: blake3::Hasher,
}

impl ChunkReader {
    /// The chunk's size on disk.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the chunk is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every byte has been read.
    pub fn is_done(&self) -> bool {
        self.pos >= self.len
    }

    /// Reads the next piece: `max` bytes (a multiple of 4 KiB, so direct reads stay
    /// aligned), fewer at the end. Blocks: call it on a blocking thread.
    pub fn next_piece(&mut self, max: usize) -> Result<Bytes, StoreError> {
        let want = usize::try_from(self.len - self.pos).unwrap_or(usize::MAX).min(max);
        let piece = match self.direct.as_ref().map(|f| read_direct_at(f, self.pos, want)) {
            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = None;
                read_buffered_at(&self.file, self.pos, want)
            }
            Some(r) => r,
            None => read_buffered_at(&self.file, self.pos, want),
        }
        .map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.pos += want as u64;
        self.hasher.update(&piece);
        Ok(piece)
    }
}

/// Exactly `len` bytes of `f` from `at`, through the page cache.
fn read_buffered_at(f: &File, at: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = collective_core::buffers::take(len);
    buf.resize(len, 0);
    f.read_exact_at(&mut buf, at)?;
    Ok(collective_core::buffers::into_bytes(buf))
}

/// Exactly `len` bytes of `f` (opened with `O_DIRECT`) from the block-aligned offset `at`,
/// read into an aligned buffer.
fn read_direct_at(f: &File, at: u64, len: usize) -> io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let whole = len.next_multiple_of(DIRECT_ALIGN);
    let mut buf = collective_core::buffers::take(whole + DIRECT_ALIGN);
    let pad = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
    buf.resize(pad, 0);
    let mut got = 0usize;
    while got < len {
        let spare = &mut buf.spare_capacity_mut()[..whole - got];
        let off = libc::off_t::try_from(at + got as u64).map_err(io::Error::other)?;
        // SAFETY: `spare` is writable, unused capacity of `buf` of the length given; the
        // kernel writes at most that many bytes into it and returns how many.
        let n = unsafe { libc::pread(f.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), off) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // A short read is the end of the file; past a partial block, it is a file that
        // shrank while being read.
        if n == 0 || (got + (n as usize) < len && !(n as usize).is_multiple_of(DIRECT_ALIGN)) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the chunk file ended {} bytes early (it changed while being read)", len - got),
            ));
        }
        // SAFETY: the kernel initialised the `n` bytes after the current length.
        unsafe { buf.set_len(buf.len() + n as usize) };
        got += n as usize;
    }
    Ok(collective_core::buffers::into_bytes(buf).slice(pad..pad + len))
}

/// A whole file, read into a buffer from `collective_core::buffers`: a large one with
/// direct I/O if `direct` (see [`read_direct`]).
fn read_pooled(path: &Path, direct: bool) -> io::Result<Bytes> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let len = usize::try_from(f.metadata()?.len()).unwrap_or(usize::MAX);
    if direct && len as u64 >= KEEP_CACHED_BELOW {
        match read_direct(path, len) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            r => return r,
        }
    }
    let mut data = collective_core::buffers::take(len);
    f.read_to_end(&mut data)?;
    Ok(collective_core::buffers::into_bytes(data))
}

/// Reads a large chunk with `O_DIRECT`, straight from the disk into an aligned buffer:
/// large chunks are rarely in the page cache (they leave it once written), and reading
/// one through it took fresh cache pages, a copy out of them, and the pages' upkeep —
/// half of a node's CPU in a large get (docs/benchmarks.md).
fn read_direct(path: &Path, len: usize) -> io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path)?;
    let whole = len.next_multiple_of(DIRECT_ALIGN);
    let mut buf = collective_core::buffers::take(whole + DIRECT_ALIGN);
    let pad = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
    buf.resize(pad, 0);
    let mut got = 0usize;
    // A short read means the end of the file (or a file that shrank): stop there.
    while got < len && got.is_multiple_of(DIRECT_ALIGN) {
        let spare = &mut buf.spare_capacity_mut()[..whole - got];
        // SAFETY: `spare` is writable, unused capacity of `buf` of the length given; the
        // kernel writes at most that many bytes into it and returns how many.
        let n = unsafe { libc::pread(f.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), got as libc::off_t) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        // SAFETY: the kernel initialised the `n` bytes after the current length.
        unsafe { buf.set_len(buf.len() + n as usize) };
        got += n as usize;
    }
    if got != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read {got} of the chunk's {len} bytes (the file changed while being read)"),
        ));
    }
    Ok(collective_core::buffers::into_bytes(buf).slice(pad..pad + len))
}

/// `write_all` for several buffers: `writev` until every byte is written.
fn write_all_vectored(f: &mut File, pieces: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = pieces.iter().filter(|p| !p.is_empty()).map(|p| io::IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match f.write_vectored(slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the file accepted no more bytes")),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn map_write_error(path: &Path, e: io::Error, size: u64, store: &ChunkStore) -> StoreError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        StoreError::NoSpace {
            needed: size,
            free: 0,
            capacity: store.capacity,
        }
    } else {
        StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

fn fs_available(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("collective-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn hashing_in_runs_gives_blake3_of_the_whole_whatever_the_pieces() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        for sizes in [vec![200_000], vec![65_000], vec![1], vec![16_383, 1, 16_385, 0, 7], vec![HASH_RUN]] {
            let mut h = RunHasher::default();
            let (mut at, mut i) = (0, 0);
            while at < data.len() {
                let n = sizes[i % sizes.len()].min(data.len() - at);
                h.update(&data[at..at + n]);
                at += n;
                i += 1;
            }
            assert_eq!(h.finalize(), blake3::hash(&data), "pieces of {sizes:?}");
        }
        assert_eq!(RunHasher::default().finalize(), blake3::hash(b""));
    }

    #[test]
    fn top_level_fan_out_exists_from_the_start_and_leaves_are_made_on_demand() {
        let dir = tmpdir("fanout");
        let s = ChunkStore::open(&dir, 1 << 30).unwrap();
        assert_eq!(fs::read_dir(dir.join("chunks")).unwrap().count(), 256);
        // Two chunks that share a leaf, and one more elsewhere.
        let mut ids = Vec::new();
        let mut n = 0u32;
        while ids.len() < 2 {
            let data = n.to_le_bytes();
            let id = ChunkId::of(&data);
            if ids.is_empty() || s.path_of(&id).parent() == s.path_of(&ids[0]).parent() {
                s.put(&id, &data).unwrap();
                ids.push(id);
            }
            n += 1;
        }
        assert_eq!(s.put(&ChunkId::of(b"other"), b"other").unwrap(), Put::Stored);
        for id in &ids {
            assert_eq!(s.get(id).unwrap().len(), 4);
        }
        assert!(
            s.young_leaves().is_empty(),
            "every leaf made is durable once its chunk is published"
        );
        drop(s);
        // Reopening an existing store changes nothing and finds the chunks.
        let s = ChunkStore::open(&dir, 1 << 30).unwrap();
        assert_eq!(s.chunk_count(), 3);
        assert_eq!(fs::read_dir(dir.join("chunks")).unwrap().count(), 256);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn stores_verifies_and_counts_chunks() {
        let dir = tmpdir("basic");
        let s = ChunkStore::open(&dir, 1 << 20).unwrap();
        let data = b"hello chunk".to_vec();
        let id = ChunkId::of(&data);
        assert_eq!(s.put(&id, &data).unwrap(), Put::Stored);
        assert_eq!(s.put(&id, &data).unwrap(), Put::AlreadyPresent);
        assert_eq!(s.get(&id).unwrap(), data);
        assert_eq!(s.prefetch(&id), Some(data.len() as u64), "prefetch tells a stored chunk's size");
        assert_eq!(s.prefetch(&ChunkId::of(b"absent")), None);
        assert_eq!(s.used(), data.len() as u64);
        assert!(matches!(s.put(&ChunkId::of(b"other"), &data), Err(StoreError::HashMismatch(_))));
        drop(s);
        let s = ChunkStore::open(&dir, 1 << 20).unwrap();
        assert_eq!((s.used(), s.chunk_count()), (data.len() as u64, 1));
        assert_eq!(s.delete(&id).unwrap(), data.len() as u64);
        assert!(matches!(s.get(&id), Err(StoreError::NotFound(_))));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_stored_chunk_is_visited_once() {
        let dir = tmpdir("visit");
        let s = ChunkStore::open(&dir, 1 << 20).unwrap();
        let mut ids: Vec<ChunkId> = (0..50u32)
            .map(|i| {
                let d = i.to_le_bytes();
                s.put(&ChunkId::of(&d), &d).unwrap();
                ChunkId::of(&d)
            })
            .collect();
        let mut seen = Vec::new();
        s.for_each_id(&mut |id| {
            seen.push(id);
            true
        })
        .unwrap();
        ids.sort();
        seen.sort();
        assert_eq!(ids, seen);
        let mut n = 0;
        s.for_each_id(&mut |_| {
            n += 1;
            n < 3
        })
        .unwrap();
        assert_eq!(n, 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chunks_written_in_pieces_are_verified_before_they_appear() {
        let dir = tmpdir("pieces");
        let s = ChunkStore::open(&dir, 1 << 20).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let id = ChunkId::of(&data);
        let mut w = s.writer(id, data.len() as u64).unwrap();
        for piece in data.chunks(70_000) {
            w.write(piece).unwrap();
        }
        assert_eq!(w.finish().unwrap(), Put::Stored);
        assert_eq!(s.get(&id).unwrap(), data);
        // Gathered writes of uneven pieces (empty ones too), as they come off the network.
        let more: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let more_id = ChunkId::of(&more);
        let mut w = s.writer(more_id, more.len() as u64).unwrap();
        let (a, rest) = more.split_at(65_507);
        let (b, c) = rest.split_at(1);
        w.write_pieces(&[a, &[], b]).unwrap();
        w.write_pieces(&[c]).unwrap();
        assert!(
            matches!(w.write_pieces(&[b"x"]), Err(StoreError::HashMismatch(_))),
            "more bytes than announced"
        );
        drop(w);
        let mut w = s.writer(more_id, more.len() as u64).unwrap();
        w.write_pieces(&[a, b, c]).unwrap();
        assert_eq!(w.finish().unwrap(), Put::Stored);
        assert_eq!(s.get(&more_id).unwrap(), more);
        assert_eq!(s.delete(&more_id).unwrap(), more.len() as u64);
        // Wrong bytes: nothing appears, space is given back.
        let other = ChunkId::of(b"other");
        let mut w = s.writer(other, 5).unwrap();
        w.write(b"wrong").unwrap();
        assert!(matches!(w.finish(), Err(StoreError::HashMismatch(_))));
        assert!(!s.contains(&other));
        // Abandoned half way: the same.
        let mut w = s.writer(ChunkId::of(b"abandoned"), 9).unwrap();
        w.write(b"aban").unwrap();
        drop(w);
        assert_eq!(s.used(), data.len() as u64);
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn large_chunks_go_to_disk_directly_and_read_back_exactly() {
        let dir = tmpdir("direct");
        let s = ChunkStore::open(&dir, 1 << 30).unwrap();
        let sizes = [
            KEEP_CACHED_BELOW as usize,
            DIRECT_STAGE,
            DIRECT_STAGE + 1,
            2 * DIRECT_STAGE - 1,
            (1 << 20) + DIRECT_ALIGN - 1,
            3 * (1 << 20) + 123,
        ];
        for (n, size) in sizes.into_iter().enumerate() {
            let data = pattern(size, n as u32);
            let id = ChunkId::of(&data);
            let mut w = s.writer(id, size as u64).unwrap();
            assert!(w.is_direct(), "a chunk of {size} bytes is written directly");
            for piece in data.chunks(65_000 + n * 1000) {
                w.write(piece).unwrap();
            }
            assert_eq!(w.finish().unwrap(), Put::Stored);
            assert_eq!(fs::read(s.path_of(&id)).unwrap(), data, "{size} bytes on disk");
            assert_eq!(s.get(&id).unwrap(), data);
        }
        assert!(
            !s.writer(ChunkId::of(b"small"), KEEP_CACHED_BELOW - 1).unwrap().is_direct(),
            "small chunks stay cached"
        );
        // A large chunk read straight from the disk is verified like any other.
        let data = pattern(DIRECT_STAGE + 3, 7);
        let id = ChunkId::of(&data);
        s.put(&id, &data).unwrap();
        let mut on_disk = fs::read(s.path_of(&id)).unwrap();
        on_disk[DIRECT_STAGE + 1] ^= 0x20;
        fs::write(s.path_of(&id), &on_disk).unwrap();
        assert!(matches!(s.get(&id), Err(StoreError::Corrupt { .. })));
        assert!(!s.contains(&id), "quarantined");
        // A wrong byte in the last block short of a whole one is still caught.
        let mut data = pattern(DIRECT_STAGE + 10, 99);
        let id = ChunkId::of(&data);
        data[DIRECT_STAGE + 5] ^= 1;
        let mut w = s.writer(id, data.len() as u64).unwrap();
        w.write(&data).unwrap();
        assert!(matches!(w.finish(), Err(StoreError::HashMismatch(_))));
        assert!(!s.contains(&id));
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Reads a chunk with a [`ChunkReader`] in pieces of `piece` bytes.
    fn read_in_pieces(s: &ChunkStore, id: &ChunkId, piece: usize) -> (Vec<u8>, Result<(), StoreError>) {
        let mut r = s.reader(id).unwrap();
        let mut got = Vec::new();
        while !r.is_done() {
            let p = r.next_piece(piece).unwrap();
            assert!(p.len() <= piece);
            got.extend_from_slice(&p);
        }
        (got, s.finish_read(r))
    }

    #[test]
    fn chunks_read_in_pieces_come_back_exactly_and_a_corrupt_one_is_caught_at_the_end() {
        let dir = tmpdir("piece-reads");
        let s = ChunkStore::open(&dir, 1 << 30).unwrap();
        for (n, size) in [1000usize, KEEP_CACHED_BELOW as usize, (1 << 20) + 1, 3 * (1 << 20) + 4095]
            .into_iter()
            .enumerate()
        {
            let data = pattern(size, 40 + n as u32);
            let id = ChunkId::of(&data);
            s.put(&id, &data).unwrap();
            let r = s.reader(&id).unwrap();
            assert_eq!(r.len(), size as u64);
            assert_eq!(r.direct.is_some(), size as u64 >= KEEP_CACHED_BELOW, "{size} bytes read directly");
            drop(r);
            let (got, end) = read_in_pieces(&s, &id, 1 << 20);
            assert!(end.is_ok(), "{size} bytes: {end:?}");
            assert!(got == data, "{size} bytes read back in pieces");
        }
        // Corruption shows only once every piece has been read, and quarantines the chunk.
        let data = pattern(2 * (1 << 20) + 17, 3);
        let id = ChunkId::of(&data);
        s.put(&id, &data).unwrap();
        let mut on_disk = fs::read(s.path_of(&id)).unwrap();
        on_disk[(1 << 20) + 5] ^= 0x40;
        fs::write(s.path_of(&id), &on_disk).unwrap();
        let (got, end) = read_in_pieces(&s, &id, 1 << 20);
        assert_eq!(got.len(), data.len());
        assert!(matches!(end, Err(StoreError::Corrupt { .. })), "{end:?}");
        assert!(!s.contains(&id), "quarantined");
        assert!(matches!(s.reader(&id), Err(StoreError::NotFound(_))));
        // Pieces that are not whole blocks cannot be read directly: the reader goes on
        // through the page cache.
        let data = pattern(1 << 20, 4);
        let id = ChunkId::of(&data);
        s.put(&id, &data).unwrap();
        let (got, end) = read_in_pieces(&s, &id, 100_000);
        assert!(end.is_ok() && got == data);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_refused_direct_write_falls_back_to_the_page_cache_for_good() {
        let dir = tmpdir("direct-refused");
        let s = ChunkStore::open(&dir, 1 << 30).unwrap();
        let data = pattern(DIRECT_STAGE * 2 + 777, 5);
        let id = ChunkId::of(&data);
        let mut w = s.writer(id, data.len() as u64).unwrap();
        // Misalign the stage's start in memory: the kernel refuses such a direct write
        // (EINVAL), as a file system without direct I/O for these blocks would.
        let stage = w.stage.as_mut().unwrap();
        stage.pad += 1;
        stage.buf.push(0);
        for piece in data.chunks(100_000) {
            w.write(piece).unwrap();
        }
        assert_eq!(w.finish().unwrap(), Put::Stored);
        assert_eq!(s.get(&id).unwrap(), data);
        assert!(
            !s.writer(ChunkId::of(b"next"), DIRECT_STAGE as u64).unwrap().is_direct(),
            "later chunks go through the cache"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_chunks_are_quarantined_not_served() {
        let dir = tmpdir("corrupt");
        let s = ChunkStore::open(&dir, 1 << 20).unwrap();
        let data = vec![7u8; 1000];
        let id = ChunkId::of(&data);
        s.put(&id, &data).unwrap();
        let mut bytes = fs::read(s.path_of(&id)).unwrap();
        bytes[500] ^= 1;
        fs::write(s.path_of(&id), bytes).unwrap();
        assert!(matches!(s.get(&id), Err(StoreError::Corrupt { .. })));
        assert!(!s.contains(&id));
        assert!(dir.join("quarantine").join(id.to_hex()).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn capacity_is_enforced_with_a_clear_error() {
        let dir = tmpdir("full");
        let s = ChunkStore::open(&dir, 1500).unwrap();
        let a = vec![1u8; 1000];
        s.put(&ChunkId::of(&a), &a).unwrap();
        let b = vec![2u8; 1000];
        let err = s.put(&ChunkId::of(&b), &b).unwrap_err();
        assert!(err.to_string().contains("no space"), "{err}");
        assert_eq!(s.used(), 1000);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_of_another_format_is_refused() {
        let dir = tmpdir("format");
        ChunkStore::open(&dir, 10).unwrap();
        fs::write(dir.join("STORE_VERSION"), "collective-chunkstore 99").unwrap();
        assert!(matches!(ChunkStore::open(&dir, 10), Err(StoreError::Format(..))));
        fs::remove_dir_all(&dir).unwrap();
    }
}
