//! The POSIX-like namespace: path resolution, directories, atomic file commits, removal
//! and rename, each one transaction that also keeps chunk references and totals exact.

use collective_core::{ChunkId, RemotePath, Strategy, unix_ms_now, validate_path};

use crate::engine::{Abort, Table, Txn};
use std::collections::HashSet;

use crate::hosting::SEAL_LEN;
use crate::records::{
    ChunkRecord, ChunkRef, Inode, Kind, LinkTarget, Manifest, PendingRecord, ScopeRecord, decode, dirent_key, encode, read_u64, scope_key,
    u64_key,
};
use crate::{MetaError, MetaStore, ROOT_INODE, abort, alloc_inode, audit, put_totals, totals_in};

/// Longest symbolic link target (as Linux's PATH_MAX).
pub const MAX_LINK_TARGET: usize = 4096;

/// What a client sees of a file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub path: String,
    pub inode: u64,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub mtime_ms: i64,
    pub owner: String,
    /// Files: chunks in the manifest. Directories: entries.
    pub count: u64,
    pub version: u64,
    /// Symbolic links: where they point ("" for files and directories).
    pub target: String,
}

/// A file to make visible, with its complete manifest.
#[derive(Debug, Clone)]
pub struct FileCommitIn {
    pub path: RemotePath,
    pub size: u64,
    pub mode: u32,
    pub mtime_ms: i64,
    pub chunks: Vec<ChunkRef>,
    /// For each chunk, the nodes that acknowledged it in this upload (empty when the
    /// chunk was already stored).
    pub stored_on: Vec<Vec<String>>,
    pub parents: bool,
    /// Copies the file's datastore asks for (kept per chunk, for repair).
    pub replicas: u32,
    /// How the file's datastore spreads copies (kept per chunk, for repair).
    pub strategy: Strategy,
    /// For each chunk, the seal the writer made (encrypted datastores). Kept only when the
    /// chunk is new to the file's datastore; a seal already there is never replaced.
    pub seals: Vec<Option<[u8; SEAL_LEN]>>,
    /// The writer may read the whole datastore: any chunk already in it may be named.
    pub reads_datastore: bool,
    /// The writer may read this file: the chunks of its current version may be named.
    pub reads_file: bool,
}

/// The datastore whose chunks a path's are counted and sealed with: its top-level name
/// when that is a datastore, "" for everything else.
fn scope_of(t: &Txn<'_>, path: &RemotePath) -> Result<String, Abort> {
    let top = path.as_str().trim_start_matches('/').split('/').next().unwrap_or_default();
    if top.is_empty() || t.get(Table::Datastores, top.as_bytes())?.is_none() {
        return Ok(String::new());
    }
    Ok(top.to_string())
}

fn attr(path: &str, ino: u64, n: &Inode) -> Attr {
    Attr {
        path: path.to_string(),
        inode: ino,
        kind: n.kind,
        size: n.size,
        mode: n.mode,
        mtime_ms: n.mtime_ms,
        owner: n.owner.clone(),
        count: n.count,
        version: n.version,
        target: String::new(),
    }
}

fn link_target(t: &Txn<'_>, ino: u64) -> Result<String, Abort> {
    match t.get(Table::Links, &u64_key(ino))? {
        Some(v) => decode::<LinkTarget>(&v).map(|l| l.0).map_err(abort),
        None => Err(abort(MetaError::Corrupt(format!("symbolic link {ino} has no target")))),
    }
}

/// `attr` with a symbolic link's target filled in.
fn attr_in(t: &Txn<'_>, path: &str, ino: u64, n: &Inode) -> Result<Attr, Abort> {
    let mut a = attr(path, ino, n);
    if n.kind == Kind::Symlink {
        a.target = link_target(t, ino)?;
    }
    Ok(a)
}

pub(crate) fn get_inode(t: &Txn<'_>, ino: u64) -> Result<Inode, Abort> {
    match t.get(Table::Inodes, &u64_key(ino))? {
        Some(v) => decode(&v).map_err(abort),
        None => Err(abort(MetaError::Corrupt(format!("inode {ino} is referenced but missing")))),
    }
}

fn put_inode(t: &Txn<'_>, ino: u64, n: &Inode) -> Result<(), Abort> {
    t.insert(Table::Inodes, &u64_key(ino), encode(n))
}

fn lookup(t: &Txn<'_>, parent: u64, name: &str) -> Result<Option<u64>, Abort> {
    t.get(Table::Dirents, &dirent_key(parent, name))?
        .map(|v| read_u64(&v).map_err(abort))
        .transpose()
}

/// Resolves `path` to its inode; `NotFound`/`NotADirectory` name the failing prefix.
fn resolve(t: &Txn<'_>, path: &RemotePath) -> Result<u64, Abort> {
    let mut ino = ROOT_INODE;
    let mut so_far = String::new();
    for name in path.components() {
        let node = get_inode(t, ino)?;
        if node.kind != Kind::Dir {
            return Err(abort(MetaError::NotADirectory(if so_far.is_empty() { "/".into() } else { so_far })));
        }
        so_far.push('/');
        so_far.push_str(name);
        ino = lookup(t, ino, name)?.ok_or_else(|| abort(MetaError::NotFound(so_far.clone())))?;
    }
    Ok(ino)
}

fn new_dir(owner: &str, parent: u64, name: &str, mode: u32) -> Inode {
    Inode {
        kind: Kind::Dir,
        parent,
        name: name.to_string(),
        size: 0,
        mode,
        mtime_ms: unix_ms_now() as i64,
        owner: owner.to_string(),
        count: 0,
        version: 1,
    }
}

/// Links `child` under `parent` as `name` and bumps the parent's entry count.
fn link(t: &Txn<'_>, parent: u64, name: &str, child: u64) -> Result<(), Abort> {
    t.insert(Table::Dirents, &dirent_key(parent, name), u64_key(child).to_vec())?;
    let mut p = get_inode(t, parent)?;
    p.count += 1;
    p.mtime_ms = unix_ms_now() as i64;
    put_inode(t, parent, &p)
}

fn unlink(t: &Txn<'_>, parent: u64, name: &str) -> Result<(), Abort> {
    t.remove(Table::Dirents, &dirent_key(parent, name))?;
    let mut p = get_inode(t, parent)?;
    p.count = p.count.saturating_sub(1);
    p.mtime_ms = unix_ms_now() as i64;
    put_inode(t, parent, &p)
}

/// Resolves the parent directory of `path`, creating missing directories when `parents`.
fn parent_dir(t: &Txn<'_>, path: &RemotePath, parents: bool, owner: &str) -> Result<u64, Abort> {
    let (parent_path, _) = path.split_last().map_err(|e| abort(e.into()))?;
    if !parents {
        let ino = resolve(t, &parent_path)?;
        if get_inode(t, ino)?.kind != Kind::Dir {
            return Err(abort(MetaError::NotADirectory(parent_path.to_string())));
        }
        return Ok(ino);
    }
    mkdir_all(t, &parent_path, owner)
}

pub(crate) fn mkdir_all(t: &Txn<'_>, path: &RemotePath, owner: &str) -> Result<u64, Abort> {
    let mut ino = ROOT_INODE;
    let mut so_far = String::new();
    for name in path.components() {
        so_far.push('/');
        so_far.push_str(name);
        ino = match lookup(t, ino, name)? {
            Some(child) => {
                if get_inode(t, child)?.kind != Kind::Dir {
                    return Err(abort(MetaError::NotADirectory(so_far.clone())));
                }
                child
            }
            None => {
                let child = alloc_inode(t)?;
                put_inode(t, child, &new_dir(owner, ino, name, 0o755))?;
                link(t, ino, name, child)?;
                let mut totals = totals_in(t)?;
                totals.dirs += 1;
                put_totals(t, &totals)?;
                child
            }
        };
    }
    Ok(ino)
}

fn load_manifest(t: &Txn<'_>, ino: u64) -> Result<Vec<ChunkRef>, Abort> {
    match t.get(Table::Manifests, &u64_key(ino))? {
        Some(v) => decode::<Manifest>(&v).map(|m| m.0).map_err(abort),
        None => Ok(Vec::new()),
    }
}

/// Drops one reference to each chunk of a manifest.
fn release_chunks(t: &Txn<'_>, chunks: &[ChunkRef], scope: &str) -> Result<(), Abort> {
    let now = unix_ms_now();
    for c in chunks {
        let key = scope_key(&c.id, scope);
        if let Some(v) = t.get(Table::ChunkScopes, &key)? {
            let mut s: ScopeRecord = decode(&v).map_err(abort)?;
            s.refs = s.refs.saturating_sub(1);
            if s.refs == 0 {
                t.remove(Table::ChunkScopes, &key)?;
            } else {
                t.insert(Table::ChunkScopes, &key, encode(&s))?;
            }
        }
        if let Some(v) = t.get(Table::Chunks, &c.id)? {
            let mut rec: ChunkRecord = decode::<ChunkRecord>(&v).map_err(abort)?;
            rec.refs = rec.refs.saturating_sub(1);
            if rec.refs == 0 {
                rec.unreferenced_since_ms = now;
            }
            t.insert(Table::Chunks, &c.id, encode(&rec))?;
        }
    }
    Ok(())
}

/// What one commit has already settled: the (chunk, datastore) pairs it named, and the
/// chunks the writer's own plans asked for.
#[derive(Default)]
struct Seen {
    named: HashSet<Vec<u8>>,
    planned: HashSet<[u8; 32]>,
}

/// Takes one reference to each chunk. A chunk not stored before becomes stored on the
/// nodes that acknowledged it, provided they were issued a token for it and there are at
/// least `min_replicas` of them.
///
/// A chunk id is not a capability: `owner` may name a chunk only if its own write plan
/// asked for the upload, it is already named by this commit, or the file's datastore holds
/// it and `owner` may read it there (the whole datastore, or this file's current version,
/// `old`). The first file of a datastore to name a chunk brings its seal; later ones
/// never replace it.
fn acquire_chunks(t: &Txn<'_>, c: &FileCommitIn, owner: &str, min_replicas: usize, old: &[ChunkRef], seen: &mut Seen) -> Result<(), Abort> {
    let no_nodes = Vec::new();
    let scope = scope_of(t, &c.path)?;
    let old: HashSet<[u8; 32]> = if c.reads_file && !c.reads_datastore {
        old.iter().map(|o| o.id).collect()
    } else {
        HashSet::new()
    };
    for (i, r) in c.chunks.iter().enumerate() {
        let reported = c.stored_on.get(i).unwrap_or(&no_nodes);
        let skey = scope_key(&r.id, &scope);
        let scoped: Option<ScopeRecord> = t.get(Table::ChunkScopes, &skey)?.map(|v| decode(&v)).transpose().map_err(abort)?;
        let pending: Option<PendingRecord> = t.get(Table::Pending, &r.id)?.map(|v| decode(&v)).transpose().map_err(abort)?;
        let planned = seen.planned.contains(&r.id) || pending.as_ref().is_some_and(|p| p.planned_by.iter().any(|b| b == owner));
        let readable = scoped.is_some() && (c.reads_datastore || old.contains(&r.id));
        let known = t.get(Table::Chunks, &r.id)?;
        if !(planned || readable || seen.named.contains(&skey)) {
            let short = ChunkId(r.id).short();
            return Err(abort(if known.is_some() || pending.is_some() {
                MetaError::ChunkNotYours(short, c.path.to_string())
            } else {
                MetaError::ChunkNotUploaded(short, c.path.to_string())
            }));
        }
        seen.named.insert(skey.clone());
        if planned {
            // The commit takes the pending record away; the plan still counts for the
            // rest of this commit (the same data in another datastore's file).
            seen.planned.insert(r.id);
        }
        let scoped = match scoped {
            Some(mut s) => {
                s.refs += 1;
                s
            }
            None => ScopeRecord {
                refs: 1,
                seal: c.seals.get(i).copied().flatten().map(|s| s.to_vec()).unwrap_or_default(),
            },
        };
        t.insert(Table::ChunkScopes, &skey, encode(&scoped))?;
        if let Some(v) = known {
            let mut rec: ChunkRecord = decode::<ChunkRecord>(&v).map_err(abort)?;
            rec.refs += 1;
            rec.unreferenced_since_ms = 0;
            rec.want = rec.want.max(c.replicas);
            rec.strategy = rec.strategy.wider(c.strategy);
            // New copies of a known chunk (uploaded again because its copies were lost,
            // or by a writer who had to show it holds the data) count when they were planned.
            if !reported.is_empty()
                && let Some(pending) = &pending
            {
                let mut added = 0u64;
                for n in reported.iter().filter(|n| pending.nodes.contains(n)) {
                    if !rec.replicas.contains(n) {
                        rec.replicas.push(n.clone());
                        added += 1;
                    }
                }
                if added > 0 {
                    let mut totals = totals_in(t)?;
                    totals.physical_bytes += rec.size * added;
                    put_totals(t, &totals)?;
                }
            }
            t.insert(Table::Chunks, &r.id, encode(&rec))?;
            continue;
        }
        let short = ChunkId(r.id).short();
        let Some(pending) = pending else {
            return Err(abort(MetaError::ChunkNotUploaded(short, c.path.to_string())));
        };
        if pending.size != r.size {
            return Err(abort(MetaError::BadManifest(
                c.path.to_string(),
                format!("chunk {short} has size {} but was planned with size {}", r.size, pending.size),
            )));
        }
        let mut nodes: Vec<String> = reported.iter().filter(|n| pending.nodes.contains(n)).cloned().collect();
        nodes.sort();
        nodes.dedup();
        if nodes.len() < min_replicas {
            return Err(abort(MetaError::BadManifest(
                c.path.to_string(),
                format!("chunk {short} has {} acknowledged copies, {min_replicas} are required", nodes.len()),
            )));
        }
        let rec = ChunkRecord {
            size: r.size,
            refs: 1,
            replicas: nodes,
            unreferenced_since_ms: 0,
            want: c.replicas,
            strategy: c.strategy,
        };
        t.remove(Table::Pending, &r.id)?;
        t.insert(Table::Chunks, &r.id, encode(&rec))?;
        let mut totals = totals_in(t)?;
        totals.unique_chunks += 1;
        totals.unique_bytes += r.size;
        totals.physical_bytes += r.size * rec.replicas.len() as u64;
        put_totals(t, &totals)?;
    }
    Ok(())
}

fn check_manifest(c: &FileCommitIn) -> Result<(), MetaError> {
    let mut offset = 0u64;
    for r in &c.chunks {
        if r.offset != offset || r.size == 0 {
            return Err(MetaError::BadManifest(
                c.path.to_string(),
                format!(
                    "chunk at offset {} does not follow the previous one (expected offset {offset})",
                    r.offset
                ),
            ));
        }
        offset += r.size;
    }
    if offset != c.size {
        return Err(MetaError::BadManifest(
            c.path.to_string(),
            format!("chunks cover {offset} bytes but the file is {} bytes", c.size),
        ));
    }
    Ok(())
}

/// Commits one file inside a transaction: new or replacing an older version atomically.
fn commit_one(t: &Txn<'_>, c: &FileCommitIn, owner: &str, min_replicas: usize, seen: &mut Seen) -> Result<Attr, Abort> {
    let (_, name) = c.path.split_last().map_err(|e| abort(e.into()))?;
    let parent = parent_dir(t, &c.path, c.parents, owner)?;
    let existing = lookup(t, parent, name)?;
    let (ino, version, totals, old_chunks) = match existing {
        Some(ino) => {
            let old = get_inode(t, ino)?;
            match old.kind {
                Kind::Dir => return Err(abort(MetaError::IsADirectory(c.path.to_string()))),
                // A file written over a symbolic link replaces the link.
                Kind::Symlink => {
                    t.remove(Table::Links, &u64_key(ino))?;
                    let mut totals = totals_in(t)?;
                    totals.files += 1;
                    let at = Place {
                        parent,
                        name,
                        ino,
                        version: old.version + 1,
                    };
                    return commit_into(t, c, owner, min_replicas, at, totals, &[], seen);
                }
                Kind::File => {}
            }
            let old_chunks = load_manifest(t, ino)?;
            let mut totals = totals_in(t)?;
            totals.logical_bytes = totals.logical_bytes.saturating_sub(old.size);
            (ino, old.version + 1, totals, old_chunks)
        }
        None => {
            let ino = alloc_inode(t)?;
            link(t, parent, name, ino)?;
            let mut totals = totals_in(t)?;
            totals.files += 1;
            (ino, 1, totals, Vec::new())
        }
    };
    let at = Place {
        parent,
        name,
        ino,
        version,
    };
    let attr = commit_into(t, c, owner, min_replicas, at, totals, &old_chunks, seen)?;
    // The old version lets go only now: chunks both versions name keep their count and
    // their seal in between.
    release_chunks(t, &old_chunks, &scope_of(t, &c.path)?)?;
    Ok(attr)
}

/// Where a commit writes: the inode, its entry, and its new version.
struct Place<'a> {
    parent: u64,
    name: &'a str,
    ino: u64,
    version: u64,
}

/// Writes the new version of a file at `at` (`old`: the chunks of the version it replaces).
#[allow(clippy::too_many_arguments)]
fn commit_into(
    t: &Txn<'_>,
    c: &FileCommitIn,
    owner: &str,
    min_replicas: usize,
    at: Place<'_>,
    mut totals: crate::Totals,
    old: &[ChunkRef],
    seen: &mut Seen,
) -> Result<Attr, Abort> {
    let Place {
        parent,
        name,
        ino,
        version,
    } = at;
    totals.logical_bytes += c.size;
    put_totals(t, &totals)?;
    acquire_chunks(t, c, owner, min_replicas, old, seen)?;
    let node = Inode {
        kind: Kind::File,
        parent,
        name: name.to_string(),
        size: c.size,
        mode: c.mode & 0o7777,
        mtime_ms: c.mtime_ms,
        owner: owner.to_string(),
        count: c.chunks.len() as u64,
        version,
    };
    put_inode(t, ino, &node)?;
    t.insert(Table::Manifests, &u64_key(ino), encode(&Manifest(c.chunks.clone())))?;
    audit(
        t,
        owner,
        "commit",
        &c.path,
        format!("{} bytes, {} chunks, version {version}", c.size, c.chunks.len()),
    )?;
    Ok(attr(c.path.as_str(), ino, &node))
}

fn remove_one(t: &Txn<'_>, path: &RemotePath, who: &str) -> Result<Kind, Abort> {
    let (_, name) = path.split_last().map_err(|e| abort(e.into()))?;
    let ino = resolve(t, path)?;
    let node = get_inode(t, ino)?;
    let mut totals = totals_in(t)?;
    match node.kind {
        Kind::Dir => {
            if node.count > 0 {
                return Err(abort(MetaError::NotEmpty(path.to_string())));
            }
            totals.dirs = totals.dirs.saturating_sub(1);
        }
        Kind::File => {
            let chunks = load_manifest(t, ino)?;
            release_chunks(t, &chunks, &scope_of(t, path)?)?;
            t.remove(Table::Manifests, &u64_key(ino))?;
            totals.files = totals.files.saturating_sub(1);
            totals.logical_bytes = totals.logical_bytes.saturating_sub(node.size);
        }
        Kind::Symlink => {
            t.remove(Table::Links, &u64_key(ino))?;
        }
    }
    put_totals(t, &totals)?;
    unlink(t, node.parent, name)?;
    t.remove(Table::Inodes, &u64_key(ino))?;
    audit(t, who, "remove", path, String::new())?;
    Ok(node.kind)
}

impl MetaStore {
    pub fn stat(&self, path: &RemotePath) -> Result<Attr, MetaError> {
        self.engine.transact(|t| {
            let ino = resolve(t, path)?;
            attr_in(t, path.as_str(), ino, &get_inode(t, ino)?)
        })
    }

    /// A file's attributes and manifest, read in one consistent snapshot.
    pub fn manifest(&self, path: &RemotePath) -> Result<(Attr, Vec<ChunkRef>), MetaError> {
        self.engine.transact(|t| {
            let ino = resolve(t, path)?;
            let node = get_inode(t, ino)?;
            match node.kind {
                Kind::Dir => return Err(abort(MetaError::IsADirectory(path.to_string()))),
                Kind::Symlink => return Err(abort(MetaError::IsASymlink(path.to_string(), link_target(t, ino)?))),
                Kind::File => {}
            }
            Ok((attr(path.as_str(), ino, &node), load_manifest(t, ino)?))
        })
    }

    /// Up to `limit` entries of a directory in name order, after `after`; and whether more follow.
    pub fn list(&self, path: &RemotePath, after: Option<&str>, limit: usize) -> Result<(Vec<Attr>, bool), MetaError> {
        let dir = self.stat(path)?;
        if dir.kind != Kind::Dir {
            return Ok((vec![dir], false));
        }
        let prefix = u64_key(dir.inode);
        let after_key = after.map(|a| dirent_key(dir.inode, a));
        let mut out = Vec::new();
        for r in self.engine.scan_prefix(Table::Dirents, &prefix, after_key.as_deref()) {
            let (k, v) = r?;
            if out.len() == limit {
                return Ok((out, true));
            }
            let name = String::from_utf8_lossy(&k[8..]).into_owned();
            let ino = read_u64(&v)?;
            let Some(raw) = self.engine.get(Table::Inodes, &u64_key(ino))? else {
                continue;
            };
            let node: Inode = decode(&raw)?;
            let child = path.join(&name)?;
            let mut a = attr(child.as_str(), ino, &node);
            if node.kind == Kind::Symlink {
                let raw = self.engine.get(Table::Links, &u64_key(ino))?.unwrap_or_default();
                a.target = decode::<LinkTarget>(&raw)?.0;
            }
            out.push(a);
        }
        Ok((out, false))
    }

    /// Visits every file (and symbolic link) below `path` (depth first, names in order) with its path relative
    /// to `path`; stops early when `visit` returns false. Memory is bounded by tree depth.
    pub fn walk_files(&self, path: &RemotePath, visit: &mut dyn FnMut(&str, Attr) -> bool) -> Result<(), MetaError> {
        let top = self.stat(path)?;
        if top.kind != Kind::Dir {
            let name = path.split_last().map(|(_, n)| n.to_string()).unwrap_or_default();
            visit(&name, top);
            return Ok(());
        }
        const PAGE: usize = 1000;
        // Stack of (directory path, relative prefix, resume-after name).
        let mut stack: Vec<(RemotePath, String, Option<String>)> = vec![(path.clone(), String::new(), None)];
        while let Some((dir, rel, after)) = stack.pop() {
            let (entries, more) = self.list(&dir, after.as_deref(), PAGE)?;
            if more && let Some(last) = entries.last() {
                let last_name = last.path.rsplit('/').next().unwrap_or("").to_string();
                stack.push((dir.clone(), rel.clone(), Some(last_name)));
            }
            let mut subdirs = Vec::new();
            for e in entries {
                let name = e.path.rsplit('/').next().unwrap_or("").to_string();
                let child_rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                match e.kind {
                    Kind::File | Kind::Symlink => {
                        if !visit(&child_rel, e) {
                            return Ok(());
                        }
                    }
                    Kind::Dir => subdirs.push((validate_path(&e.path)?, child_rel, None)),
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    pub fn mkdir(&self, path: &RemotePath, parents: bool, mode: u32, owner: &str) -> Result<Attr, MetaError> {
        self.engine.transact(|t| {
            if path.is_root() {
                return if parents {
                    Ok(attr("/", ROOT_INODE, &get_inode(t, ROOT_INODE)?))
                } else {
                    Err(abort(MetaError::AlreadyExists("/".into())))
                };
            }
            let (_, name) = path.split_last().map_err(|e| abort(e.into()))?;
            let parent = parent_dir(t, path, parents, owner)?;
            if let Some(existing) = lookup(t, parent, name)? {
                let node = get_inode(t, existing)?;
                if parents && node.kind == Kind::Dir {
                    return Ok(attr(path.as_str(), existing, &node));
                }
                return Err(abort(MetaError::AlreadyExists(path.to_string())));
            }
            let ino = alloc_inode(t)?;
            let node = new_dir(owner, parent, name, mode & 0o7777);
            put_inode(t, ino, &node)?;
            link(t, parent, name, ino)?;
            let mut totals = totals_in(t)?;
            totals.dirs += 1;
            put_totals(t, &totals)?;
            audit(t, owner, "mkdir", path, String::new())?;
            Ok(attr(path.as_str(), ino, &node))
        })
    }

    /// Makes a symbolic link at `path` pointing to `target` (stored as given, never
    /// resolved by the metadata service).
    pub fn symlink(&self, path: &RemotePath, target: &str, owner: &str) -> Result<Attr, MetaError> {
        if target.is_empty() || target.len() > MAX_LINK_TARGET || target.contains('\0') {
            return Err(MetaError::BadLink(
                path.to_string(),
                format!("a link target must be 1 to {MAX_LINK_TARGET} bytes without NUL"),
            ));
        }
        self.engine.transact(|t| {
            let (_, name) = path.split_last().map_err(|e| abort(e.into()))?;
            let parent = parent_dir(t, path, false, owner)?;
            if lookup(t, parent, name)?.is_some() {
                return Err(abort(MetaError::AlreadyExists(path.to_string())));
            }
            let ino = alloc_inode(t)?;
            let node = Inode {
                kind: Kind::Symlink,
                parent,
                name: name.to_string(),
                size: target.len() as u64,
                mode: 0o777,
                mtime_ms: unix_ms_now() as i64,
                owner: owner.to_string(),
                count: 0,
                version: 1,
            };
            put_inode(t, ino, &node)?;
            t.insert(Table::Links, &u64_key(ino), encode(&LinkTarget(target.to_string())))?;
            link(t, parent, name, ino)?;
            audit(t, owner, "symlink", path, format!("to {target}"))?;
            attr_in(t, path.as_str(), ino, &node)
        })
    }

    /// Changes the permission bits and/or the modification time of a file, directory or
    /// link; the content (and a file's version) stays as it is.
    pub fn set_attr(&self, path: &RemotePath, mode: Option<u32>, mtime_ms: Option<i64>, who: &str) -> Result<Attr, MetaError> {
        self.engine.transact(|t| {
            let ino = resolve(t, path)?;
            let mut node = get_inode(t, ino)?;
            if let Some(m) = mode {
                node.mode = m & 0o7777;
            }
            if let Some(ms) = mtime_ms {
                node.mtime_ms = ms;
            }
            put_inode(t, ino, &node)?;
            let what = match (mode, mtime_ms) {
                (Some(m), Some(ms)) => format!("mode {m:o}, mtime {ms}"),
                (Some(m), None) => format!("mode {m:o}"),
                (None, Some(ms)) => format!("mtime {ms}"),
                (None, None) => String::new(),
            };
            audit(t, who, "setattr", path, what)?;
            attr_in(t, path.as_str(), ino, &node)
        })
    }

    /// Makes files visible, each with its whole manifest, in one atomic transaction. New
    /// chunks need at least `min_replicas` acknowledged copies.
    pub fn commit_files(&self, files: &[FileCommitIn], owner: &str, min_replicas: usize) -> Result<Vec<Attr>, MetaError> {
        for c in files {
            check_manifest(c)?;
        }
        collective_core::crash_point("commit:before-transaction");
        let done = self.engine.transact(|t| {
            let mut seen = Seen::default();
            let attrs = files.iter().map(|c| commit_one(t, c, owner, min_replicas, &mut seen)).collect();
            collective_core::crash_point("commit:inside-transaction");
            attrs
        });
        if done.is_ok() {
            collective_core::crash_point("commit:after-transaction");
        }
        done
    }

    /// Removes a file or an empty directory; with `recursive`, a whole tree (each entry
    /// atomically, deepest first). Returns (files, directories) removed.
    pub fn remove(&self, path: &RemotePath, recursive: bool, who: &str) -> Result<(u64, u64), MetaError> {
        if path.is_root() {
            return Err(MetaError::Path(collective_core::PathError::Root));
        }
        let top = self.stat(path)?;
        if top.kind == Kind::Dir && recursive && top.count > 0 {
            let (mut files, mut dirs) = (0, 0);
            loop {
                let (entries, _) = self.list(path, None, 1000)?;
                if entries.is_empty() {
                    break;
                }
                for e in entries {
                    let p = validate_path(&e.path)?;
                    let (f, d) = self.remove(&p, true, who)?;
                    files += f;
                    dirs += d;
                }
            }
            self.engine.transact(|t| remove_one(t, path, who))?;
            collective_core::crash_point("remove:after-transaction");
            return Ok((files, dirs + 1));
        }
        let kind = self.engine.transact(|t| remove_one(t, path, who))?;
        collective_core::crash_point("remove:after-transaction");
        Ok(if kind == Kind::Dir { (0, 1) } else { (1, 0) })
    }

    /// Moves `src` to `dst`, replacing a file at `dst` (or an empty directory, when `src`
    /// is a directory). A directory cannot move below itself.
    pub fn rename(&self, src: &RemotePath, dst: &RemotePath, who: &str) -> Result<Attr, MetaError> {
        let bad = |why: &str| abort(MetaError::BadRename(src.to_string(), dst.to_string(), why.to_string()));
        let done = self.engine.transact(|t| {
            let (_, src_name) = src.split_last().map_err(|e| abort(e.into()))?;
            let (dst_parent_path, dst_name) = dst.split_last().map_err(|e| abort(e.into()))?;
            let ino = resolve(t, src)?;
            let mut node = get_inode(t, ino)?;
            if src == dst {
                return attr_in(t, dst.as_str(), ino, &node);
            }
            // Moves stay inside one datastore: its chunks are placed, counted and sealed for it.
            let (from, to) = (scope_of(t, src)?, scope_of(t, dst)?);
            let is_root = |p: &RemotePath| p.as_str().matches('/').count() == 1;
            if (!from.is_empty() && is_root(src)) || (!to.is_empty() && is_root(dst)) {
                return Err(bad(
                    "a datastore's root stays where it is (`collective datastore` manages datastores)",
                ));
            }
            if from != to {
                return Err(abort(MetaError::CrossDatastore(src.to_string(), dst.to_string())));
            }
            let dst_parent = resolve(t, &dst_parent_path)?;
            if get_inode(t, dst_parent)?.kind != Kind::Dir {
                return Err(abort(MetaError::NotADirectory(dst_parent_path.to_string())));
            }
            // Refuse to move a directory below itself.
            let mut up = dst_parent;
            loop {
                if up == ino {
                    return Err(bad("a directory cannot move inside itself"));
                }
                if up == ROOT_INODE {
                    break;
                }
                up = get_inode(t, up)?.parent;
            }
            if let Some(existing) = lookup(t, dst_parent, dst_name)? {
                let target = get_inode(t, existing)?;
                match (node.kind, target.kind) {
                    (Kind::File | Kind::Symlink, Kind::Dir) => return Err(abort(MetaError::IsADirectory(dst.to_string()))),
                    (Kind::Dir, Kind::File | Kind::Symlink) => return Err(abort(MetaError::NotADirectory(dst.to_string()))),
                    (Kind::Dir, Kind::Dir) if target.count > 0 => return Err(abort(MetaError::NotEmpty(dst.to_string()))),
                    _ => {}
                }
                remove_one(t, dst, who)?;
            }
            unlink(t, node.parent, src_name)?;
            link(t, dst_parent, dst_name, ino)?;
            node.parent = dst_parent;
            node.name = dst_name.to_string();
            put_inode(t, ino, &node)?;
            audit(t, who, "rename", src, format!("to {dst}"))?;
            attr_in(t, dst.as_str(), ino, &node)
        });
        if done.is_ok() {
            collective_core::crash_point("rename:after-transaction");
        }
        done
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Opens `dir` again after dropping its store: sled's background flusher may still
    /// hold the lock for a moment.
    pub(crate) fn reopen(dir: &std::path::Path) -> MetaStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match MetaStore::open(dir) {
                Ok(m) => return m,
                Err(MetaError::Open(_, e)) if e.contains("lock") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopening {}: {e}", dir.display()),
            }
        }
    }

    pub(crate) fn store(name: &str) -> (MetaStore, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!("collective-meta-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        (MetaStore::open(&d).unwrap(), d)
    }

    pub(crate) fn p(s: &str) -> RemotePath {
        validate_path(s).unwrap()
    }

    pub(crate) fn commit(m: &MetaStore, path: &str, data: &[&[u8]]) -> Result<Attr, MetaError> {
        let mut chunks = vec![];
        let mut stored_on = vec![];
        let mut off = 0;
        for d in data {
            let id = ChunkId::of(d);
            // The writer's own plan for every chunk (as a client's upload has).
            m.add_pending(
                &id,
                d.len() as u64,
                &["n1@a.collective.local".into(), "n2@a.collective.local".into()],
                "u@a.collective.local",
            )
            .unwrap();
            chunks.push(ChunkRef {
                id: id.0,
                offset: off,
                size: d.len() as u64,
            });
            stored_on.push(vec!["n1@a.collective.local".to_string(), "n2@a.collective.local".to_string()]);
            off += d.len() as u64;
        }
        let c = FileCommitIn {
            path: p(path),
            size: off,
            mode: 0o644,
            mtime_ms: 0,
            seals: vec![None; chunks.len()],
            chunks,
            stored_on,
            parents: true,
            replicas: 1,
            strategy: Strategy::Media,
            reads_datastore: true,
            reads_file: true,
        };
        m.commit_files(&[c], "u@a.collective.local", 2).map(|mut v| v.remove(0))
    }

    #[test]
    fn the_check_passes_after_every_kind_of_change_and_finds_a_wrong_reference_count() {
        let (m, d) = store("check");
        commit(&m, "/a/one", &[b"x", b"shared"]).unwrap();
        commit(&m, "/a/two", &[b"shared", b"y"]).unwrap();
        commit(&m, "/a/one", &[b"z"]).unwrap();
        commit(&m, "/empty", &[]).unwrap();
        m.mkdir(&p("/b/c"), true, 0o755, "u").unwrap();
        m.rename(&p("/a/two"), &p("/b/c/two"), "u").unwrap();
        m.symlink(&p("/b/link"), "/a/one", "u").unwrap();
        m.remove(&p("/a"), true, "u").unwrap();
        let r = m.check().unwrap();
        assert!(r.is_consistent(), "{:?}", r.problems);
        assert_eq!((r.files, r.symlinks), (2, 1));
        assert_eq!(r.references, 2);
        assert!(r.unreferenced_chunks >= 2, "x and z are no longer referenced");

        // Break one reference count behind the namespace's back.
        let id = ChunkId::of(b"shared");
        let mut rec = m.chunk(&id).unwrap().unwrap();
        rec.refs += 1;
        m.engine.insert(Table::Chunks, &id.0, crate::records::encode(&rec)).unwrap();
        let r = m.check().unwrap();
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(
            r.problems[0].contains("counts 2 references but manifests hold 1"),
            "{:?}",
            r.problems
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn commit_replace_and_remove_keep_references_and_totals_exact() {
        let (m, d) = store("refs");
        commit(&m, "/a/b/f", &[b"one", b"two"]).unwrap();
        commit(&m, "/a/g", &[b"two"]).unwrap();
        assert_eq!(m.chunk(&ChunkId::of(b"two")).unwrap().unwrap().refs, 2);
        let t = m.totals().unwrap();
        assert_eq!(
            (t.files, t.dirs, t.logical_bytes, t.unique_chunks, t.unique_bytes, t.physical_bytes),
            (2, 2, 9, 2, 6, 12)
        );
        let v2 = commit(&m, "/a/b/f", &[b"three"]).unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(m.chunk(&ChunkId::of(b"one")).unwrap().unwrap().refs, 0);
        assert_eq!(m.totals().unwrap().logical_bytes, 8);
        m.remove(&p("/a"), true, "u").unwrap();
        let t = m.totals().unwrap();
        assert_eq!((t.files, t.dirs, t.logical_bytes), (0, 0, 0));
        assert_eq!(m.chunk(&ChunkId::of(b"two")).unwrap().unwrap().refs, 0);
        assert!(m.audit_len() >= 4);
        drop(m);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn commit_of_an_unuploaded_chunk_changes_nothing() {
        let (m, d) = store("unuploaded");
        let c = FileCommitIn {
            path: p("/f"),
            size: 3,
            mode: 0o644,
            mtime_ms: 0,
            chunks: vec![ChunkRef {
                id: ChunkId::of(b"abc").0,
                offset: 0,
                size: 3,
            }],
            stored_on: vec![vec![]],
            parents: false,
            replicas: 1,
            strategy: Strategy::Media,
            seals: vec![None],
            reads_datastore: true,
            reads_file: true,
        };
        assert!(matches!(m.commit_files(&[c], "u", 1), Err(MetaError::ChunkNotUploaded(..))));
        assert!(matches!(m.stat(&p("/f")), Err(MetaError::NotFound(_))));
        assert_eq!(m.totals().unwrap(), Default::default());
        drop(m);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_chunk_with_too_few_acknowledged_copies_is_refused() {
        let (m, d) = store("fewcopies");
        let id = ChunkId::of(b"abc");
        m.add_pending(&id, 3, &["n1".into(), "n2".into()], "u").unwrap();
        let c = |nodes: Vec<String>| FileCommitIn {
            path: p("/f"),
            size: 3,
            mode: 0o644,
            mtime_ms: 0,
            chunks: vec![ChunkRef {
                id: id.0,
                offset: 0,
                size: 3,
            }],
            stored_on: vec![nodes],
            parents: false,
            replicas: 1,
            strategy: Strategy::Media,
            seals: vec![None],
            reads_datastore: true,
            reads_file: true,
        };
        assert!(matches!(
            m.commit_files(&[c(vec!["n1".into(), "n9".into()])], "u", 2),
            Err(MetaError::BadManifest(..))
        ));
        assert!(matches!(m.stat(&p("/f")), Err(MetaError::NotFound(_))));
        m.commit_files(&[c(vec!["n1".into(), "n2".into()])], "u", 2).unwrap();
        assert_eq!(m.chunk(&id).unwrap().unwrap().replicas, vec!["n1", "n2"]);
        drop(m);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_chunk_uploaded_again_after_losing_its_copies_gets_them_back() {
        let (m, d) = store("reupload");
        commit(&m, "/a", &[b"data"]).unwrap();
        let id = ChunkId::of(b"data");
        m.remove_replica(&id, "n1@a.collective.local").unwrap();
        m.remove_replica(&id, "n2@a.collective.local").unwrap();
        assert!(m.chunk(&id).unwrap().unwrap().replicas.is_empty());
        m.add_pending(&id, 4, &["n3@a.collective.local".into()], "u").unwrap();
        let c = FileCommitIn {
            path: p("/b"),
            size: 4,
            mode: 0o644,
            mtime_ms: 0,
            chunks: vec![ChunkRef {
                id: id.0,
                offset: 0,
                size: 4,
            }],
            stored_on: vec![vec!["n3@a.collective.local".into(), "n9@a.collective.local".into()]],
            parents: false,
            replicas: 1,
            strategy: Strategy::Media,
            seals: vec![None],
            reads_datastore: true,
            reads_file: true,
        };
        m.commit_files(&[c], "u", 1).unwrap();
        let rec = m.chunk(&id).unwrap().unwrap();
        assert_eq!((rec.refs, rec.replicas), (2, vec!["n3@a.collective.local".to_string()]));
        drop(m);
        std::fs::remove_dir_all(d).unwrap();
    }

    /// A one-chunk file commit as a coordinator makes it.
    fn one_chunk(path: &str, data: &[u8], stored_on: &[&str], seal: u8, reads: (bool, bool)) -> FileCommitIn {
        FileCommitIn {
            path: p(path),
            size: data.len() as u64,
            mode: 0o644,
            mtime_ms: 0,
            chunks: vec![ChunkRef {
                id: ChunkId::of(data).0,
                offset: 0,
                size: data.len() as u64,
            }],
            stored_on: vec![stored_on.iter().map(|s| s.to_string()).collect()],
            parents: false,
            replicas: 1,
            strategy: Strategy::Backup,
            seals: vec![Some([seal; SEAL_LEN])],
            reads_datastore: reads.0,
            reads_file: reads.1,
        }
    }

    #[test]
    fn a_chunk_id_opens_nothing_outside_the_datastores_that_hold_it() {
        let (m, d) = store("scopes");
        for name in ["vault", "drop"] {
            let rec = crate::DatastoreRecord {
                name: name.into(),
                owner: "alice".into(),
                strategy: Strategy::Backup,
                replicas: 1,
                created_ms: 0,
                secret: [3; 32],
            };
            m.create_datastore(&p(&format!("/{name}")), &rec).unwrap();
        }
        let data = b"alice's secret";
        let id = ChunkId::of(data);
        m.add_pending(&id, data.len() as u64, &["n1".into()], "alice").unwrap();
        m.commit_files(&[one_chunk("/vault/f", data, &["n1"], 1, (true, true))], "alice", 1)
            .unwrap();
        let seal_of = |path: &str| m.seal_in(&m.scope(&p(path)).unwrap(), &id).unwrap();
        assert_eq!(seal_of("/vault/f"), Some([1; SEAL_LEN]));

        // bob knows the id (his node hosts the ciphertext) and names it in /drop: refused.
        let stolen = one_chunk("/drop/stolen", data, &[], 9, (true, true));
        let e = m.commit_files(std::slice::from_ref(&stolen), "bob", 1).unwrap_err();
        assert!(matches!(e, MetaError::ChunkNotYours(..)), "{e}");
        assert!(matches!(m.stat(&p("/drop/stolen")), Err(MetaError::NotFound(_))));
        assert_eq!(seal_of("/drop/stolen"), None, "another datastore's seal is never given out");

        // Planned as his own upload, he may name it; his file gets his seal, alice keeps hers.
        m.add_pending(&id, data.len() as u64, &["n1".into()], "bob").unwrap();
        m.commit_files(&[one_chunk("/drop/stolen", data, &["n1"], 9, (true, true))], "bob", 1)
            .unwrap();
        assert_eq!(seal_of("/drop/stolen"), Some([9; SEAL_LEN]));
        assert_eq!(seal_of("/vault/f"), Some([1; SEAL_LEN]));

        // A later writer of the datastore never replaces its seal.
        m.add_pending(&id, data.len() as u64, &["n1".into()], "mallory").unwrap();
        m.commit_files(&[one_chunk("/vault/g", data, &["n1"], 2, (true, true))], "mallory", 1)
            .unwrap();
        assert_eq!(seal_of("/vault/g"), Some([1; SEAL_LEN]));

        // Without a plan: a writer who may read the file it replaces keeps its chunks; one
        // who may read neither the datastore nor the file names nothing held there.
        m.commit_files(&[one_chunk("/vault/f", data, &[], 5, (false, true))], "carol", 1)
            .unwrap();
        let e = m
            .commit_files(&[one_chunk("/vault/h", data, &[], 5, (false, false))], "carol", 1)
            .unwrap_err();
        assert!(matches!(e, MetaError::ChunkNotYours(..)), "{e}");
        assert_eq!(seal_of("/vault/f"), Some([1; SEAL_LEN]));

        // One plan covers the same data in files of two datastores of one commit.
        let both = b"the same bytes twice";
        m.add_pending(&ChunkId::of(both), both.len() as u64, &["n1".into()], "alice")
            .unwrap();
        let pair = [
            one_chunk("/vault/both", both, &["n1"], 3, (true, true)),
            one_chunk("/drop/both", both, &["n1"], 4, (true, true)),
        ];
        m.commit_files(&pair, "alice", 1).unwrap();
        assert_eq!(m.seal_in("drop", &ChunkId::of(both)).unwrap(), Some([4; SEAL_LEN]));

        // Counts stay exact through overwrites and removals, and the last file lets the seal go.
        let report = m.check().unwrap();
        assert!(report.is_consistent(), "{:?}", report.problems);
        for f in ["/vault/f", "/vault/g"] {
            m.remove(&p(f), false, "alice").unwrap();
        }
        assert_eq!(seal_of("/vault/f"), None);
        assert!(m.sealed_anywhere(&id).unwrap(), "/drop still holds it");
        assert!(m.check().unwrap().is_consistent());
        drop(m);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn moves_stay_inside_one_datastore_and_a_datastore_root_stays_put() {
        let (m, d) = store("cross-datastore");
        for name in ["media", "backup"] {
            let rec = crate::DatastoreRecord {
                name: name.into(),
                owner: "u".into(),
                strategy: Strategy::Media,
                replicas: 1,
                created_ms: 0,
                secret: [7; 32],
            };
            m.create_datastore(&p(&format!("/{name}")), &rec).unwrap();
        }
        commit(&m, "/media/a", &[b"x"]).unwrap();
        commit(&m, "/loose", &[b"y"]).unwrap();
        m.mkdir(&p("/media/d"), false, 0o755, "u").unwrap();
        for (src, dst) in [
            ("/media/a", "/backup/a"),
            ("/media/d", "/backup/d"),
            ("/loose", "/media/loose"),
            ("/media/a", "/a"),
        ] {
            let e = m.rename(&p(src), &p(dst), "u").unwrap_err();
            assert!(matches!(e, MetaError::CrossDatastore(..)), "{src} -> {dst}: {e}");
            assert!(e.to_string().contains("copy instead"), "{e}");
        }
        for (src, dst) in [("/media", "/films"), ("/media/d", "/media")] {
            assert!(
                matches!(m.rename(&p(src), &p(dst), "u"), Err(MetaError::BadRename(..))),
                "{src} -> {dst}"
            );
        }
        // Nothing moved; moves inside one datastore, or outside any, still work.
        assert!(m.stat(&p("/media/a")).is_ok() && m.stat(&p("/media")).is_ok());
        m.rename(&p("/media/a"), &p("/media/d/a"), "u").unwrap();
        m.rename(&p("/loose"), &p("/loose2"), "u").unwrap();
        drop(m);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn namespace_errors_name_the_path() {
        let (m, d) = store("errors");
        commit(&m, "/f", &[b"x"]).unwrap();
        m.mkdir(&p("/d"), false, 0o755, "u").unwrap();
        commit(&m, "/d/x", &[b"y"]).unwrap();
        assert!(matches!(m.mkdir(&p("/d"), false, 0o755, "u"), Err(MetaError::AlreadyExists(_))));
        assert!(matches!(m.stat(&p("/f/x")), Err(MetaError::NotADirectory(s)) if s == "/f"));
        assert!(matches!(m.remove(&p("/d"), false, "u"), Err(MetaError::NotEmpty(_))));
        m.mkdir(&p("/d/sub"), false, 0o755, "u").unwrap();
        assert!(matches!(m.rename(&p("/d"), &p("/d/sub/y"), "u"), Err(MetaError::BadRename(..))));
        m.remove(&p("/d/sub"), false, "u").unwrap();
        assert!(matches!(commit(&m, "/d", &[b"z"]), Err(MetaError::IsADirectory(_))));
        m.rename(&p("/f"), &p("/d/x"), "u").unwrap();
        assert!(matches!(m.stat(&p("/f")), Err(MetaError::NotFound(_))));
        assert_eq!(m.stat(&p("/d/x")).unwrap().size, 1);
        assert_eq!(m.totals().unwrap().files, 1);
        let mut seen = vec![];
        m.walk_files(&p("/"), &mut |rel, _| {
            seen.push(rel.to_string());
            true
        })
        .unwrap();
        assert_eq!(seen, vec!["d/x"]);
        drop(m);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn listing_pages_through_large_directories() {
        let (m, d) = store("paging");
        for i in 0..25 {
            m.mkdir(&p(&format!("/dir/e{i:03}")), true, 0o755, "u").unwrap();
        }
        let (first, more) = m.list(&p("/dir"), None, 10).unwrap();
        assert!(more);
        assert_eq!(first.len(), 10);
        let last = first.last().unwrap().path.rsplit('/').next().unwrap().to_string();
        let (second, _) = m.list(&p("/dir"), Some(&last), 100).unwrap();
        assert_eq!(second.len(), 15);
        assert_eq!(second[0].path, "/dir/e010");
        drop(m);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn symlinks_keep_their_target_and_a_commit_replaces_a_link() {
        let (m, d) = store("links");
        m.mkdir(&p("/d"), false, 0o755, "u").unwrap();
        let a = m.symlink(&p("/d/l"), "../target/file", "u").unwrap();
        assert_eq!(a.kind, Kind::Symlink);
        assert_eq!(a.target, "../target/file");
        assert_eq!(a.size, 14);
        assert_eq!(m.stat(&p("/d/l")).unwrap().target, "../target/file");
        let (listed, _) = m.list(&p("/d"), None, 10).unwrap();
        assert_eq!(listed[0].target, "../target/file");
        assert!(matches!(m.manifest(&p("/d/l")), Err(MetaError::IsASymlink(..))));
        assert!(matches!(m.symlink(&p("/d/l"), "x", "u"), Err(MetaError::AlreadyExists(_))));
        assert!(matches!(m.symlink(&p("/d/e"), "", "u"), Err(MetaError::BadLink(..))));
        let moved = m.rename(&p("/d/l"), &p("/d/l2"), "u").unwrap();
        assert_eq!(moved.target, "../target/file");
        let files_before = m.totals().unwrap().files;
        commit(&m, "/d/l2", &[b"now a file"]).unwrap();
        assert_eq!(m.stat(&p("/d/l2")).unwrap().kind, Kind::File);
        assert_eq!(m.totals().unwrap().files, files_before + 1);
        m.symlink(&p("/d/gone"), "x", "u").unwrap();
        m.remove(&p("/d/gone"), false, "u").unwrap();
        assert!(matches!(m.stat(&p("/d/gone")), Err(MetaError::NotFound(_))));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn set_attr_changes_mode_and_time_but_not_the_version() {
        let (m, d) = store("setattr");
        let f = commit(&m, "/f", &[b"content"]).unwrap();
        let a = m.set_attr(&p("/f"), Some(0o100600), None, "u").unwrap();
        assert_eq!(a.mode, 0o600);
        assert_eq!(a.version, f.version);
        assert_eq!(a.mtime_ms, f.mtime_ms);
        let a = m.set_attr(&p("/f"), None, Some(1_000), "u").unwrap();
        assert_eq!((a.mode, a.mtime_ms), (0o600, 1_000));
        m.mkdir(&p("/dir"), false, 0o755, "u").unwrap();
        assert_eq!(m.set_attr(&p("/dir"), Some(0o700), None, "u").unwrap().mode, 0o700);
        assert!(matches!(
            m.set_attr(&p("/nope"), Some(0o700), None, "u"),
            Err(MetaError::NotFound(_))
        ));
        let _ = std::fs::remove_dir_all(d);
    }
}
