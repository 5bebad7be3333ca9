//! The kernel's requests, answered from the coordinator (metadata), the chunk cache and
//! nodes (file bytes) and the open files' local state (writes not committed yet).
//!
//! Each request runs on one of fuser's threads and blocks on the client's async runtime.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use collective_client::{Client, ClientError};
use collective_proto::v1::{FileAttr, FileKind};
use fuser::{
    Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::cache::ChunkCache;
use crate::errno::{ContentError, errno_of};
use crate::file::OpenFile;
use crate::inodes::{Inodes, child_path};

/// How long the kernel (and this mount) may trust attributes and names.
const TTL: Duration = Duration::from_secs(1);
/// Directory entries fetched per coordinator call.
const LIST_PAGE: u32 = 1000;
/// Read-ahead grows from this to `READ_AHEAD_MAX` while a handle reads sequentially.
const READ_AHEAD_MIN: u64 = 4 << 20;
const READ_AHEAD_MAX: u64 = 64 << 20;
/// How long a datastore's write policy (and the right to write) is remembered.
const POLICY_TTL: Duration = Duration::from_secs(30);
/// I/O size suggested to programs (st_blksize): one kernel write request.
const BLOCK: u32 = 1 << 20;

type Shared = Arc<tokio::sync::Mutex<OpenFile>>;
/// May the user write in a datastore: its encryption secret, or the errno writing gives.
type WriteVerdict = Result<Option<[u8; 32]>, Errno>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct FileHandleState {
    file: Shared,
    ino: u64,
    next_offset: u64,
    ahead: u64,
    write: bool,
}

struct DirHandle {
    path: String,
    entries: Vec<(String, FileAttr)>,
    after: String,
    complete: bool,
}

pub struct MountSettings {
    /// Remote path shown at the mount point ("/" or a datastore).
    pub root: String,
    pub read_only: bool,
    /// Where open files keep their uncommitted writes.
    pub overlay_dir: PathBuf,
}

pub struct CollectiveFs {
    rt: Handle,
    client: Arc<Client>,
    cache: Arc<ChunkCache>,
    settings: MountSettings,
    uid: u32,
    gid: u32,
    inodes: Mutex<Inodes>,
    /// Open (or locally created) files by inode, with their number of handles.
    files: Mutex<HashMap<u64, (Shared, usize)>>,
    handles: Mutex<HashMap<u64, FileHandleState>>,
    dirs: Mutex<HashMap<u64, DirHandle>>,
    next_fh: AtomicU64,
    /// Datastore → (encryption secret, or the errno writing there gives), when checked.
    policies: Mutex<HashMap<String, (WriteVerdict, Instant)>>,
    statfs: Mutex<Option<(Instant, [u64; 3])>>,
}

fn system_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH
    }
}

fn ms_of(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn name_of(name: &OsStr) -> Result<&str, Errno> {
    name.to_str().ok_or(Errno::EINVAL)
}

/// The datastore (first component) of a remote path.
fn datastore_of(path: &str) -> String {
    path.trim_start_matches('/').split('/').next().unwrap_or("").to_string()
}

impl CollectiveFs {
    pub fn new(rt: Handle, client: Arc<Client>, cache: Arc<ChunkCache>, settings: MountSettings, root_attr: FileAttr) -> CollectiveFs {
        // SAFETY: plain getters without preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        CollectiveFs {
            rt,
            client,
            cache,
            inodes: Mutex::new(Inodes::new(&settings.root, root_attr)),
            settings,
            uid,
            gid,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            policies: Mutex::new(HashMap::new()),
            statfs: Mutex::new(None),
        }
    }

    fn fuse_attr(&self, ino: u64, a: &FileAttr) -> fuser::FileAttr {
        let (kind, default_mode, nlink) = if a.kind == FileKind::Dir as i32 {
            (FileType::Directory, 0o755, 2)
        } else if a.kind == FileKind::Symlink as i32 {
            (FileType::Symlink, 0o777, 1)
        } else {
            (FileType::RegularFile, 0o644, 1)
        };
        let mode = if a.mode & 0o7777 == 0 { default_mode } else { a.mode & 0o7777 };
        let t = system_time(a.mtime_ms);
        fuser::FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: mode as u16,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK,
            flags: 0,
        }
    }

    fn path_of(&self, ino: INodeNo) -> Result<String, Errno> {
        lock(&self.inodes).path(ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        let parent = self.path_of(parent)?;
        Ok(child_path(&parent, name_of(name)?))
    }

    fn open_file(&self, ino: u64) -> Option<Shared> {
        lock(&self.files).get(&ino).map(|(f, _)| f.clone())
    }

    /// The open file behind a handle.
    fn handle_file(&self, fh: u64) -> Result<(Shared, u64), Errno> {
        lock(&self.handles).get(&fh).map(|h| (h.file.clone(), h.ino)).ok_or(Errno::EBADF)
    }

    fn add_handle(&self, fh: u64, file: Shared, ino: u64, write: bool) {
        lock(&self.handles).insert(
            fh,
            FileHandleState {
                file,
                ino,
                next_offset: 0,
                ahead: 0,
                write,
            },
        );
    }

    /// Logs a failure with the path and operation, and returns its errno.
    fn fail(&self, op: &str, path: &str, e: &ClientError) -> Errno {
        let errno = errno_of(e);
        match errno {
            Errno::ENOENT | Errno::EEXIST | Errno::ENOTEMPTY => tracing::debug!(%path, op, "{e}"),
            _ => tracing::warn!(%path, op, "{e}"),
        }
        errno
    }

    fn fail_content(&self, op: &str, path: &str, e: &ContentError) -> Errno {
        tracing::warn!(%path, op, "{e}");
        e.errno()
    }

    /// Current attributes of an inode: open files' local view first, then the cache, then
    /// the coordinator.
    fn attr_of(&self, ino: u64) -> Result<FileAttr, Errno> {
        if let Some(f) = self.open_file(ino) {
            let f = self.rt.block_on(f.lock());
            return Ok(f.attr(ino));
        }
        if let Some(a) = lock(&self.inodes).fresh(ino, TTL) {
            return Ok(a);
        }
        let path = lock(&self.inodes).path(ino).ok_or(Errno::ENOENT)?;
        let attr = self
            .rt
            .block_on(self.client.stat(&path))
            .map_err(|e| self.fail("getattr", &path, &e))?;
        lock(&self.inodes).remember(&path, attr.clone(), false);
        Ok(attr)
    }

    /// The datastore's encryption secret; fails with EACCES when the user may not write.
    fn write_secret(&self, path: &str) -> Result<Option<[u8; 32]>, Errno> {
        if self.settings.read_only {
            return Err(Errno::EROFS);
        }
        let ds = datastore_of(path);
        if let Some((r, at)) = lock(&self.policies).get(&ds)
            && at.elapsed() < POLICY_TTL
        {
            return *r;
        }
        let r = match self.rt.block_on(self.client.secret_for(path)) {
            Ok(s) => Ok(s),
            // Not a verdict on the right to write: ask again next time.
            Err(e) if errno_of(&e) == Errno::EIO => return Err(self.fail("write", path, &e)),
            Err(e) => Err(self.fail("write", path, &e)),
        };
        lock(&self.policies).insert(ds, (r, Instant::now()));
        r
    }

    /// Commits the file behind a handle (flush and fsync).
    fn commit_handle(&self, fh: u64, op: &str, reply: ReplyEmpty) {
        let r = match self.handle_file(fh) {
            Ok((f, _)) => self.commit(&f, op),
            Err(_) => Ok(()),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Commits a file's changes; returns the errno on failure.
    fn commit(&self, f: &Shared, op: &str) -> Result<(), Errno> {
        let mut g = self.rt.block_on(f.lock());
        match self.rt.block_on(g.commit(&self.client, &self.cache)) {
            Ok(Some(attr)) => {
                let path = g.path.clone();
                drop(g);
                lock(&self.inodes).remember(&path, attr, false);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(self.fail_content(op, &g.path, &e)),
        }
    }

    /// Commits every file with uncommitted changes (at unmount).
    pub fn commit_all(&self) {
        let files: Vec<Shared> = lock(&self.files).values().map(|(f, _)| f.clone()).collect();
        for f in files {
            let _ = self.commit(&f, "unmount");
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, path: &str, attr: FileAttr) {
        let ino = lock(&self.inodes).remember(path, attr.clone(), true);
        reply.entry(&TTL, &self.fuse_attr(ino, &attr), Generation(0));
    }

    fn lookup_path(&self, path: &str) -> Result<FileAttr, Errno> {
        // A file created here and not committed yet.
        if let Some(ino) = lock(&self.inodes).ino_of(path)
            && let Some(f) = self.open_file(ino)
        {
            let f = self.rt.block_on(f.lock());
            if !f.unlinked {
                return Ok(f.attr(ino));
            }
        }
        self.rt.block_on(self.client.stat(path)).map_err(|e| self.fail("lookup", path, &e))
    }

    /// Loads the next page of a directory listing into its handle.
    fn fill_dir(&self, fh: u64) -> Result<(), Errno> {
        let (path, after) = match lock(&self.dirs).get(&fh) {
            Some(d) if !d.complete => (d.path.clone(), d.after.clone()),
            _ => return Ok(()),
        };
        let page = self
            .rt
            .block_on(self.client.list_page(&path, &after, LIST_PAGE))
            .map_err(|e| self.fail("readdir", &path, &e))?;
        let mut dirs = lock(&self.dirs);
        let Some(d) = dirs.get_mut(&fh) else { return Ok(()) };
        if let Some(last) = page.entries.last() {
            d.after = last.name.clone();
        }
        for e in page.entries {
            let attr = e.attr.unwrap_or_default();
            d.entries.push((e.name, attr));
        }
        if !page.more {
            d.complete = true;
            // Files created here that are not committed yet.
            let prefix = if path == "/" { "/".to_string() } else { format!("{path}/") };
            let local: Vec<(u64, Shared)> = lock(&self.files).iter().map(|(i, (f, _))| (*i, f.clone())).collect();
            for (ino, f) in local {
                if let Ok(g) = f.try_lock()
                    && g.version == 0
                    && !g.unlinked
                    && let Some(name) = g.path.strip_prefix(&prefix)
                    && !name.contains('/')
                    && !d.entries.iter().any(|(n, _)| n == name)
                {
                    d.entries.push((name.to_string(), g.attr(ino)));
                }
            }
        }
        Ok(())
    }

    /// Entry `index` of a directory handle (loading pages as needed).
    fn dir_entry(&self, fh: u64, index: usize) -> Result<Option<(String, FileAttr)>, Errno> {
        loop {
            {
                let dirs = lock(&self.dirs);
                let Some(d) = dirs.get(&fh) else { return Err(Errno::EBADF) };
                if let Some(e) = d.entries.get(index) {
                    return Ok(Some(e.clone()));
                }
                if d.complete {
                    return Ok(None);
                }
            }
            self.fill_dir(fh)?;
        }
    }

    fn statfs_values(&self) -> Result<[u64; 3], Errno> {
        if let Some((at, v)) = *lock(&self.statfs)
            && at.elapsed() < Duration::from_secs(5)
        {
            return Ok(v);
        }
        let s = self
            .rt
            .block_on(self.client.status())
            .map_err(|e| self.fail("statfs", &self.settings.root, &e))?;
        let copies = u64::from(s.replication.max(1));
        let up = s.nodes.iter().filter(|n| n.state() == collective_proto::v1::NodeHealth::Up);
        let (cap, free) = up.fold((0u64, 0u64), |(c, f), n| (c + n.capacity_bytes, f + n.free_bytes));
        // What can still be stored at the replication factor, not raw disk bytes.
        let v = [cap / copies, free / copies, s.files + s.dirs];
        *lock(&self.statfs) = Some((Instant::now(), v));
        Ok(v)
    }

    fn do_setattr(&self, ino: u64, mode: Option<u32>, size: Option<u64>, mtime: Option<i64>) -> Result<FileAttr, Errno> {
        let path = lock(&self.inodes).path(ino).ok_or(Errno::ENOENT)?;
        if self.settings.read_only {
            return Err(Errno::EROFS);
        }
        let open = self.open_file(ino);
        if let Some(size) = size {
            let secret = self.write_secret(&path)?;
            // Truncating a file nobody has open: open it here, truncate, commit.
            let (f, temporary) = match open.clone() {
                Some(f) => (f, false),
                None => {
                    let f = self
                        .rt
                        .block_on(OpenFile::open(&self.client, &path, &self.settings.overlay_dir))
                        .map_err(|e| self.fail("truncate", &path, &e))?;
                    (Arc::new(tokio::sync::Mutex::new(f)), true)
                }
            };
            {
                let mut g = self.rt.block_on(f.lock());
                if g.needs_secret() {
                    g.set_secret(secret);
                }
                g.truncate(size).map_err(|e| self.fail_content("truncate", &path, &e))?;
                if let Some(m) = mode {
                    g.mode = m & 0o7777;
                }
                if let Some(t) = mtime {
                    g.mtime_ms = t;
                }
            }
            if temporary {
                self.commit(&f, "truncate")?;
                let g = self.rt.block_on(f.lock());
                return Ok(g.attr(ino));
            }
            let g = self.rt.block_on(f.lock());
            return Ok(g.attr(ino));
        }
        if mode.is_none() && mtime.is_none() {
            return self.attr_of(ino);
        }
        if let Some(f) = open {
            let mut g = self.rt.block_on(f.lock());
            if g.version == 0 || g.changed {
                // Not committed yet (or about to be): the commit carries them.
                if let Some(m) = mode {
                    g.mode = m & 0o7777;
                }
                if let Some(t) = mtime {
                    g.mtime_ms = t;
                }
                return Ok(g.attr(ino));
            }
        }
        let attr = self
            .rt
            .block_on(self.client.set_attr(&path, mode.map(|m| m & 0o7777), mtime))
            .map_err(|e| self.fail("setattr", &path, &e))?;
        if let Some(f) = self.open_file(ino) {
            let mut g = self.rt.block_on(f.lock());
            g.mode = attr.mode;
            g.mtime_ms = attr.mtime_ms;
        }
        lock(&self.inodes).remember(&path, attr.clone(), false);
        Ok(attr)
    }

    /// Opens (or joins) the shared state of a file for a new handle.
    fn open_shared(&self, ino: u64, path: &str) -> Result<Shared, Errno> {
        if let Some((f, n)) = lock(&self.files).get_mut(&ino) {
            *n += 1;
            return Ok(f.clone());
        }
        let f = self
            .rt
            .block_on(OpenFile::open(&self.client, path, &self.settings.overlay_dir))
            .map_err(|e| self.fail("open", path, &e))?;
        let shared = Arc::new(tokio::sync::Mutex::new(f));
        let mut files = lock(&self.files);
        // Another thread may have opened it meanwhile: join that one.
        let (f, n) = files.entry(ino).or_insert((shared, 0));
        *n += 1;
        Ok(f.clone())
    }

    fn do_read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let (f, _) = self.handle_file(fh)?;
        // Sequential reads widen the read-ahead window; a seek resets it.
        let ahead = {
            let mut handles = lock(&self.handles);
            let h = handles.get_mut(&fh).ok_or(Errno::EBADF)?;
            h.ahead = if h.next_offset == offset {
                (h.ahead * 2).clamp(READ_AHEAD_MIN, READ_AHEAD_MAX)
            } else {
                0
            };
            h.next_offset = offset + u64::from(size);
            h.ahead
        };
        let (job, path, prefetch) = {
            let mut g = self.rt.block_on(f.lock());
            if g.stale() {
                let _ = self.rt.block_on(g.refresh(&self.client));
            }
            let job = g
                .start_read(offset, u64::from(size))
                .map_err(|e| self.fail_content("read", &g.path, &ContentError::local("reading the local overlay", e)))?;
            let prefetch = if ahead > 0 {
                g.chunks_in(offset + u64::from(size), ahead)
            } else {
                Vec::new()
            };
            (job, g.path.clone(), prefetch)
        };
        for loc in &prefetch {
            let _guard = self.rt.enter();
            self.cache.prefetch(loc, &path);
        }
        let mut out = Vec::with_capacity(size as usize);
        self.rt
            .block_on(job.finish_into(&self.cache, &mut out))
            .map_err(|e| self.fail_content("read", &path, &e))?;
        Ok(out)
    }

    fn do_write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let (f, _) = self.handle_file(fh)?;
        let mut g = self.rt.block_on(f.lock());
        let path = g.path.clone();
        if g.needs_secret() {
            let s = self.write_secret(&path)?;
            g.set_secret(s);
        }
        self.rt
            .block_on(g.write(&self.client, offset, data))
            .map_err(|e| self.fail_content("write", &path, &e))
    }

    fn do_release(&self, fh: u64) -> Result<(), Errno> {
        let Some(h) = lock(&self.handles).remove(&fh) else { return Ok(()) };
        let last = match lock(&self.files).get_mut(&h.ino) {
            Some((_, n)) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if !last {
            return Ok(());
        }
        // The entry stays while committing, so an open meanwhile joins this content
        // instead of reading the version before it.
        let r = self.commit(&h.file, "release");
        let mut files = lock(&self.files);
        if files.get(&h.ino).is_some_and(|(f, n)| *n == 0 && Arc::ptr_eq(f, &h.file)) {
            files.remove(&h.ino);
            drop(files);
            lock(&self.inodes).invalidate(h.ino);
        }
        r
    }

    fn do_unlink(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        if self.settings.read_only {
            return Err(Errno::EROFS);
        }
        let path = self.child(parent, name)?;
        let ino = lock(&self.inodes).ino_of(&path);
        // A file created here and never committed exists only here.
        if !dir
            && let Some(ino) = ino
            && let Some(f) = self.open_file(ino)
        {
            let mut g = self.rt.block_on(f.lock());
            if g.version == 0 {
                g.unlinked = true;
                drop(g);
                lock(&self.inodes).unlink(&path);
                return Ok(());
            }
        }
        let attr = self.lookup_path(&path)?;
        let is_dir = attr.kind == FileKind::Dir as i32;
        if dir && !is_dir {
            return Err(Errno::ENOTDIR);
        }
        if !dir && is_dir {
            return Err(Errno::EISDIR);
        }
        self.rt
            .block_on(self.client.remove(&path, false))
            .map_err(|e| self.fail(if dir { "rmdir" } else { "unlink" }, &path, &e))?;
        if let Some(ino) = ino
            && let Some(f) = self.open_file(ino)
        {
            // Still open: keeps reading what it had, never commits again.
            self.rt.block_on(f.lock()).unlinked = true;
        }
        let mut inodes = lock(&self.inodes);
        inodes.unlink(&path);
        inodes.invalidate(parent.0);
        Ok(())
    }

    fn do_rename(&self, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags) -> Result<(), Errno> {
        if self.settings.read_only {
            return Err(Errno::EROFS);
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let src = self.child(parent, name)?;
        let dst = self.child(newparent, newname)?;
        if flags.contains(RenameFlags::RENAME_NOREPLACE) && self.lookup_path(&dst).is_ok() {
            return Err(Errno::EEXIST);
        }
        let src_ino = lock(&self.inodes).ino_of(&src);
        // Changes not committed yet go first, so the name moves with its content.
        if let Some(ino) = src_ino
            && let Some(f) = self.open_file(ino)
        {
            self.commit(&f, "rename")?;
        }
        self.rt
            .block_on(self.client.rename(&src, &dst))
            .map_err(|e| self.fail("rename", &src, &e))?;
        // A file open under the replaced name keeps its content but no longer commits.
        let replaced = lock(&self.inodes).ino_of(&dst);
        if let Some(old) = replaced
            && Some(old) != src_ino
            && let Some(f) = self.open_file(old)
        {
            self.rt.block_on(f.lock()).unlinked = true;
        }
        lock(&self.inodes).rename(&src, &dst);
        let moved: Vec<Shared> = lock(&self.files).values().map(|(f, _)| f.clone()).collect();
        let prefix = format!("{src}/");
        for f in moved {
            let mut g = self.rt.block_on(f.lock());
            if g.path == src {
                g.path = dst.clone();
            } else if let Some(rest) = g.path.strip_prefix(&prefix) {
                g.path = format!("{dst}/{rest}");
            }
        }
        Ok(())
    }
}

impl fuser::Filesystem for CollectiveFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Attributes with every directory entry (`ls -l` in one round trip per page),
        // parallel lookups, and 1 MiB requests.
        for flag in [InitFlags::FUSE_DO_READDIRPLUS, InitFlags::FUSE_PARALLEL_DIROPS] {
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_write(BLOCK);
        let _ = config.set_max_readahead(BLOCK);
        Ok(())
    }

    fn destroy(&mut self) {
        self.commit_all();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.lookup_path(&path) {
            Ok(attr) => self.reply_entry(reply, &path, attr),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Ok(a) => reply.attr(&TTL, &self.fuse_attr(ino.0, &a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Everything belongs to the mounting user; other owners cannot be represented.
        if uid.is_some_and(|u| u != self.uid) || gid.is_some_and(|g| g != self.gid) {
            return reply.error(Errno::EPERM);
        }
        match self.do_setattr(ino.0, mode, size, mtime.map(ms_of)) {
            Ok(a) => reply.attr(&TTL, &self.fuse_attr(ino.0, &a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.attr_of(ino.0) {
            Ok(a) if a.kind == FileKind::Symlink as i32 => reply.data(a.target.as_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, _rdev: u32, reply: ReplyEntry) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Devices, pipes and sockets have no place in a chunk store.
            return reply.error(Errno::EPERM);
        }
        let r = (|| {
            let path = self.child(parent, name)?;
            let (_, fh) = self.create_file(req, &path, mode, umask)?;
            self.do_release(fh)?;
            self.lookup_path(&path).map(|a| (path, a))
        })();
        match r {
            Ok((path, attr)) => self.reply_entry(reply, &path, attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let r = (|| {
            if self.settings.read_only {
                return Err(Errno::EROFS);
            }
            let path = self.child(parent, name)?;
            let attr = self
                .rt
                .block_on(self.client.mkdir_with(&path, false, (mode & !umask) & 0o7777))
                .map_err(|e| self.fail("mkdir", &path, &e))?;
            lock(&self.inodes).invalidate(parent.0);
            Ok((path, attr))
        })();
        match r {
            Ok((path, attr)) => self.reply_entry(reply, &path, attr),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let r = (|| {
            if self.settings.read_only {
                return Err(Errno::EROFS);
            }
            let path = self.child(parent, link_name)?;
            let target = target.to_str().ok_or(Errno::EINVAL)?;
            let attr = self
                .rt
                .block_on(self.client.symlink(&path, target))
                .map_err(|e| self.fail("symlink", &path, &e))?;
            Ok((path, attr))
        })();
        match r {
            Ok((path, attr)) => self.reply_entry(reply, &path, attr),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        // Hard links: a path names exactly one file here.
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let path = self.path_of(ino)?;
            let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
            let secret = if write { Some(self.write_secret(&path)?) } else { None };
            let f = self.open_shared(ino.0, &path)?;
            if let Some(s) = secret {
                let mut g = self.rt.block_on(f.lock());
                if g.needs_secret() {
                    g.set_secret(s);
                }
            }
            let fh = self.new_fh();
            self.add_handle(fh, f, ino.0, write);
            Ok(fh)
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _ = ino;
        match self.do_read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if !lock(&self.handles).get(&fh.0).is_some_and(|h| h.write) {
            return reply.error(Errno::EBADF);
        }
        let _ = ino;
        match self.do_write(fh.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.commit_handle(fh.0, "flush", reply);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.commit_handle(fh.0, "fsync", reply);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _ = ino;
        match self.do_release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let fh = self.new_fh();
        lock(&self.dirs).insert(
            fh,
            DirHandle {
                path,
                entries: Vec::new(),
                after: String::new(),
                complete: false,
            },
        );
        // The first page now, so errors (no right to read) show at opendir.
        match self.fill_dir(fh) {
            Ok(()) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => {
                lock(&self.dirs).remove(&fh);
                reply.error(e)
            }
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        // Offsets: 1 is ".", 2 is "..", 3 + i is entry i.
        let mut next = offset;
        loop {
            let (name, kind, child) = match next {
                0 => (".".to_string(), FileType::Directory, ino.0),
                1 => ("..".to_string(), FileType::Directory, ino.0),
                n => match self.dir_entry(fh.0, (n - 2) as usize) {
                    Ok(Some((name, attr))) => {
                        let path = match self.path_of(ino) {
                            Ok(p) => child_path(&p, &name),
                            Err(e) => return reply.error(e),
                        };
                        let child = lock(&self.inodes).remember(&path, attr.clone(), false);
                        let kind = self.fuse_attr(child, &attr).kind;
                        (name, kind, child)
                    }
                    Ok(None) => break,
                    Err(e) => return reply.error(e),
                },
            };
            if reply.add(INodeNo(child), next + 1, kind, &name) {
                break;
            }
            next += 1;
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let dir_path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let mut next = offset;
        loop {
            if next < 2 {
                let name = if next == 0 { "." } else { ".." };
                let attr = match self.attr_of(ino.0) {
                    Ok(a) => a,
                    Err(e) => return reply.error(e),
                };
                if reply.add(ino, next + 1, name, &TTL, &self.fuse_attr(ino.0, &attr), Generation(0)) {
                    break;
                }
                next += 1;
                continue;
            }
            let (name, attr) = match self.dir_entry(fh.0, (next - 2) as usize) {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => return reply.error(e),
            };
            let path = child_path(&dir_path, &name);
            let child = lock(&self.inodes).remember(&path, attr.clone(), false);
            let attr = match self.open_file(child) {
                Some(f) => self.rt.block_on(f.lock()).attr(child),
                None => attr,
            };
            if reply.add(INodeNo(child), next + 1, &name, &TTL, &self.fuse_attr(child, &attr), Generation(0)) {
                break;
            }
            // The kernel now holds a reference to the entry.
            lock(&self.inodes).remember(&path, attr, true);
            next += 1;
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Directory changes are committed (and flushed by the coordinator) as they happen.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.statfs_values() {
            Ok([cap, free, files]) => {
                let bsize = 4096u64;
                reply.statfs(
                    cap / bsize,
                    free / bsize,
                    free / bsize,
                    files,
                    u64::MAX / 2,
                    bsize as u32,
                    255,
                    bsize as u32,
                )
            }
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        // Extended attributes are not stored; ENOSYS makes the kernel stop asking and
        // answer EOPNOTSUPP itself.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _value: &[u8], _flags: i32, _position: u32, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, _flags: i32, reply: ReplyCreate) {
        let r = (|| {
            let path = self.child(parent, name)?;
            let (ino, fh) = self.create_file(req, &path, mode, umask)?;
            let attr = self
                .open_file(ino)
                .map(|f| self.rt.block_on(f.lock()).attr(ino))
                .ok_or(Errno::EIO)?;
            // The reply gives the kernel a reference to the new entry.
            lock(&self.inodes).remember(&path, attr.clone(), true);
            Ok((ino, fh, attr))
        })();
        match r {
            Ok((ino, fh, attr)) => reply.created(
                &TTL,
                &self.fuse_attr(ino, &attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }
}

impl CollectiveFs {
    /// A new file, open for writing, existing only here until its first commit.
    fn create_file(&self, _req: &Request, path: &str, mode: u32, umask: u32) -> Result<(u64, u64), Errno> {
        let secret = self.write_secret(path)?;
        let mut f = OpenFile::created(path, (mode & !umask) & 0o7777, &self.client.principal, &self.settings.overlay_dir);
        f.set_secret(secret);
        let ino = lock(&self.inodes).remember(path, f.attr(0), false);
        let attr = f.attr(ino);
        lock(&self.inodes).remember(path, attr, false);
        let shared = Arc::new(tokio::sync::Mutex::new(f));
        // A file of the same name still open here (unlinked or replaced) keeps its state
        // through its handles; the name now means this new file.
        lock(&self.files).insert(ino, (shared.clone(), 1));
        let fh = self.new_fh();
        self.add_handle(fh, shared, ino, true);
        Ok((ino, fh))
    }
}
