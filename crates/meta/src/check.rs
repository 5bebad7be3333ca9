//! A full consistency check of the metadata: the namespace is a tree whose every entry
//! and inode agree, every file's manifest is there, and every chunk's reference count is
//! the number of manifests entries that name it. Crash tests run it after every injected
//! crash, and operators run it with `collective coordinator --config FILE --check`.

use std::collections::HashMap;

use collective_core::ChunkId;

use crate::engine::Table;
use crate::records::{ChunkRecord, Inode, Kind, Manifest, ROOT_INODE, ScopeRecord, decode, read_u64, scope_key};
use crate::{MetaError, MetaStore};

/// What [`MetaStore::check`] found.
#[derive(Debug, Default, Clone)]
pub struct CheckReport {
    pub directories: u64,
    pub files: u64,
    pub symlinks: u64,
    pub chunks: u64,
    /// Chunk references held by manifests.
    pub references: u64,
    /// Chunks no file references (collected once their grace period is over).
    pub unreferenced_chunks: u64,
    /// Everything that is wrong, one sentence each.
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

/// At most this many problems are listed (the count of further ones is added).
const MAX_LISTED: usize = 100;

impl MetaStore {
    /// Reads the whole metadata and reports every inconsistency. Reads a consistent
    /// snapshot only when nothing writes meanwhile (run it on a stopped coordinator).
    pub fn check(&self) -> Result<CheckReport, MetaError> {
        let mut r = CheckReport::default();
        let mut more = 0usize;
        let mut problem = |r: &mut CheckReport, p: String| {
            if r.problems.len() < MAX_LISTED {
                r.problems.push(p);
            } else {
                more += 1;
            }
        };

        // Inodes, and the entries that name them.
        let mut inodes: HashMap<u64, Inode> = HashMap::new();
        for kv in self.engine.scan_from(Table::Inodes, &[]) {
            let (k, v) = kv?;
            let ino = read_u64(&k)?;
            inodes.insert(ino, decode(&v)?);
        }
        let mut children: HashMap<u64, u64> = HashMap::new();
        for kv in self.engine.scan_from(Table::Dirents, &[]) {
            let (k, v) = kv?;
            if k.len() < 8 {
                problem(&mut r, format!("a directory entry has a damaged key ({} bytes)", k.len()));
                continue;
            }
            let parent = read_u64(&k[..8])?;
            let name = String::from_utf8_lossy(&k[8..]).into_owned();
            let child = read_u64(&v)?;
            *children.entry(parent).or_default() += 1;
            match inodes.get(&child) {
                None => problem(
                    &mut r,
                    format!("entry {name:?} of directory {parent} names inode {child}, which does not exist"),
                ),
                Some(i) if i.parent != parent || i.name != name => problem(
                    &mut r,
                    format!(
                        "entry {name:?} of directory {parent} names inode {child}, which says it is {:?} in {}",
                        i.name, i.parent
                    ),
                ),
                Some(_) => {}
            }
            if !matches!(inodes.get(&parent), Some(i) if i.kind == Kind::Dir) {
                problem(&mut r, format!("entry {name:?} sits in inode {parent}, which is not a directory"));
            }
        }
        for (&ino, i) in &inodes {
            match i.kind {
                Kind::Dir => r.directories += 1,
                Kind::File => r.files += 1,
                Kind::Symlink => r.symlinks += 1,
            }
            if ino == ROOT_INODE {
                continue;
            }
            let named = self
                .engine
                .get(Table::Dirents, &crate::records::dirent_key(i.parent, &i.name))?
                .map(|v| read_u64(&v))
                .transpose()?;
            if named != Some(ino) {
                problem(
                    &mut r,
                    format!("inode {ino} ({:?} in {}) is not reachable from its directory", i.name, i.parent),
                );
            }
            if i.kind == Kind::Dir && children.get(&ino).copied().unwrap_or(0) != i.count {
                problem(
                    &mut r,
                    format!(
                        "directory inode {ino} ({:?}) counts {} entries but has {}",
                        i.name,
                        i.count,
                        children.get(&ino).copied().unwrap_or(0)
                    ),
                );
            }
        }

        // Manifests: one per file, and the references they hold (in all, and per datastore).
        let mut refs: HashMap<[u8; 32], u64> = HashMap::new();
        let mut scoped: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut scope_memo: HashMap<u64, String> = HashMap::new();
        for kv in self.engine.scan_from(Table::Manifests, &[]) {
            let (k, v) = kv?;
            let ino = read_u64(&k)?;
            let chunks = decode::<Manifest>(&v)?.0;
            match inodes.get(&ino) {
                Some(i) if i.kind == Kind::File => {
                    if i.count != chunks.len() as u64 {
                        problem(
                            &mut r,
                            format!(
                                "file inode {ino} ({:?}) counts {} chunks but its manifest has {}",
                                i.name,
                                i.count,
                                chunks.len()
                            ),
                        );
                    }
                    let end = chunks.last().map(|c| c.offset + c.size).unwrap_or(0);
                    if end > i.size {
                        problem(
                            &mut r,
                            format!("file inode {ino} ({:?}) is {} bytes but its chunks reach {end}", i.name, i.size),
                        );
                    }
                }
                _ => problem(&mut r, format!("a manifest belongs to inode {ino}, which is not a file")),
            }
            let scope = self.scope_of_inode(ino, &inodes, &mut scope_memo)?;
            for c in &chunks {
                *refs.entry(c.id).or_default() += 1;
                *scoped.entry(scope_key(&c.id, &scope)).or_default() += 1;
                r.references += 1;
            }
        }
        for (&ino, i) in &inodes {
            if i.kind == Kind::File && i.count > 0 && self.engine.get(Table::Manifests, &crate::records::u64_key(ino))?.is_none() {
                problem(&mut r, format!("file inode {ino} ({:?}) has no manifest", i.name));
            }
        }

        // Chunks: reference counts match the manifests, and every referenced chunk is known.
        for kv in self.engine.scan_from(Table::Chunks, &[]) {
            let (k, v) = kv?;
            let Ok(id) = <[u8; 32]>::try_from(k.as_slice()) else {
                problem(&mut r, format!("a chunk record has a damaged key ({} bytes)", k.len()));
                continue;
            };
            let rec = decode::<ChunkRecord>(&v)?;
            r.chunks += 1;
            let counted = refs.remove(&id).unwrap_or(0);
            if rec.refs != counted {
                problem(
                    &mut r,
                    format!(
                        "chunk {} counts {} references but manifests hold {counted}",
                        ChunkId(id).short(),
                        rec.refs
                    ),
                );
            }
            if counted == 0 {
                r.unreferenced_chunks += 1;
                if rec.unreferenced_since_ms == 0 {
                    problem(
                        &mut r,
                        format!("chunk {} is unreferenced but not marked for collection", ChunkId(id).short()),
                    );
                }
            }
            if rec.replicas.is_empty() && counted > 0 {
                problem(
                    &mut r,
                    format!("chunk {} is referenced but has no recorded copy", ChunkId(id).short()),
                );
            }
        }
        for (id, n) in refs {
            problem(
                &mut r,
                format!("{n} manifest entries name chunk {}, which has no chunk record", ChunkId(id).short()),
            );
        }

        // Per datastore: each chunk's count there matches the manifests of its files.
        let shown = |k: &[u8]| {
            let (id, scope) = k.split_at(32.min(k.len()));
            let id = <[u8; 32]>::try_from(id).map(|i| ChunkId(i).short()).unwrap_or_default();
            let scope = String::from_utf8_lossy(scope);
            let scope = if scope.is_empty() {
                "(outside datastores)".to_string()
            } else {
                format!("/{scope}")
            };
            (id, scope)
        };
        for kv in self.engine.scan_from(Table::ChunkScopes, &[]) {
            let (k, v) = kv?;
            let rec = decode::<ScopeRecord>(&v)?;
            let counted = scoped.remove(&k).unwrap_or(0);
            if rec.refs != counted {
                let (id, scope) = shown(&k);
                problem(
                    &mut r,
                    format!(
                        "chunk {id} counts {} references in {scope} but its manifests there hold {counted}",
                        rec.refs
                    ),
                );
            }
        }
        for (k, n) in scoped {
            let (id, scope) = shown(&k);
            problem(
                &mut r,
                format!("{n} manifest entries in {scope} name chunk {id}, which that datastore does not count"),
            );
        }
        if more > 0 {
            r.problems.push(format!("... and {more} more problems"));
        }
        Ok(r)
    }

    /// The datastore a file inode's chunks count in ("" outside any), from the inode table.
    fn scope_of_inode(&self, ino: u64, inodes: &HashMap<u64, Inode>, memo: &mut HashMap<u64, String>) -> Result<String, MetaError> {
        let mut at = ino;
        let mut seen = Vec::new();
        let top = loop {
            if let Some(s) = memo.get(&at) {
                break s.clone();
            }
            let Some(i) = inodes.get(&at) else { break String::new() };
            if at == ROOT_INODE || seen.len() > 4096 {
                break String::new();
            }
            seen.push(at);
            if i.parent == ROOT_INODE {
                break if self.engine.get(Table::Datastores, i.name.as_bytes())?.is_some() {
                    i.name.clone()
                } else {
                    String::new()
                };
            }
            at = i.parent;
        };
        for i in seen {
            memo.insert(i, top.clone());
        }
        Ok(top)
    }
}
