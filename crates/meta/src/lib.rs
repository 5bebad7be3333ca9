//! A coordinator's metadata: the namespace (directories, files and their manifests),
//! chunk reference counts and replica locations, pending uploads, registered nodes, running
//! totals and an audit log of every mutating operation.
//!
//! Every multi-key change is one atomic transaction (see `engine`, the only module that
//! knows the engine is sled), so a crash at any point leaves one of the two valid states.
//! Callers flush before telling a client it succeeded. This crate does no networking.

mod access;
mod audit;
mod check;
mod engine;
mod hosting;
mod migrate;
mod namespace;
mod records;
mod snapshot;
mod unknown;
mod upkeep;

use std::path::Path;

use collective_core::{ChunkId, PathError, RemotePath};

pub use access::{DatastoreRecord, InviteKind, InviteRecord, InviteRefusal};
pub use audit::{AuditEntry, AuditQuery};
pub use check::CheckReport;
pub use engine::{DATA_TABLES, Table};
use engine::{Engine, Txn};
pub use hosting::{BACKUP_GUEST_SUFFIX, HostedRecord, SEAL_LEN, backup_guest};
pub use namespace::{Attr, FileCommitIn};
pub use records::{ChunkRecord, ChunkRef, Kind, NodeRecord, PendingRecord, ROOT_INODE, SCHEMA_VERSION, Totals};
use records::{decode, encode};
pub use snapshot::{ExportInfo, import, import_chain};
pub use unknown::UnknownChunk;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("{0} is a directory")]
    IsADirectory(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("cannot make the link {0}: {1}")]
    BadLink(String, String),
    #[error("{0} is a symbolic link to {1}")]
    IsASymlink(String, String),
    #[error("{0} is not empty; remove its contents first or use -r")]
    NotEmpty(String),
    #[error("chunk {0} of {1} was never uploaded (or its upload plan expired); retry the upload")]
    ChunkNotUploaded(String, String),
    #[error("invalid manifest for {0}: {1}")]
    BadManifest(String, String),
    #[error("cannot move {0} to {1}: {2}")]
    BadRename(String, String, String),
    #[error(
        "chunk {0} of {1} was not uploaded by this write, and no file of its datastore that the writer may read holds it; upload the data (a current client does)"
    )]
    ChunkNotYours(String, String),
    #[error(
        "{0} already holds files, and a datastore starts empty (its files are placed and sealed its way); create the datastore under another name and copy the files into it"
    )]
    NotEmptyDatastore(String),
    #[error(
        "cannot move {0} to {1}: they are in different datastores (each has its own placement and keys); copy instead (`collective get` then `put`, or `cp` in the mount) and remove the original"
    )]
    CrossDatastore(String, String),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("metadata is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot open the metadata database at {0}: {1}")]
    Open(String, String),
    #[error("metadata database error: {0}")]
    Db(String),
    #[error("metadata at {0} has schema version {1}; this program understands version {SCHEMA_VERSION}")]
    Schema(String, u32),
    #[error("the capacity this member contributes to the federation is full ({used} of {quota} bytes hosted)")]
    QuotaFull { used: u64, quota: u64 },
    #[error("{0}")]
    Placement(String),
}

pub struct MetaStore {
    engine: Engine,
    /// Held by the export under way (one at a time), and by a trim of the change log.
    exporting: std::sync::Mutex<()>,
    /// The change log is on for good (the metadata backup follows it): exports leave it
    /// alone and only [`MetaStore::trim_log`] shortens it.
    log_kept: std::sync::atomic::AtomicBool,
}

const META_SCHEMA: &[u8] = b"schema";
const META_NEXT_INODE: &[u8] = b"next_inode";
const META_TOTALS: &[u8] = b"totals";

impl MetaStore {
    /// Opens (or creates) the metadata database in `dir`.
    pub fn open(dir: &Path) -> Result<MetaStore, MetaError> {
        let engine = Engine::open(dir)?;
        match engine.get(Table::Meta, META_SCHEMA)? {
            Some(v) => match records::read_u64(&v)? as u32 {
                SCHEMA_VERSION => {}
                v @ (1..=3) => {
                    if v == 1 {
                        migrate::chunk_strategies(&engine)?;
                    }
                    if v <= 2 {
                        migrate::chunk_scopes(&engine)?;
                    }
                    migrate::hosted_total(&engine)?;
                    // The rewritten records are durable before the store says its new schema.
                    engine.flush()?;
                    engine.insert(Table::Meta, META_SCHEMA, (SCHEMA_VERSION as u64).to_be_bytes().to_vec())?;
                    engine.flush()?;
                    tracing::info!(
                        "metadata upgraded to schema {SCHEMA_VERSION}: chunk records carry their strategy, seals are kept per datastore, \
                         hosting counts every copy"
                    );
                }
                v => return Err(MetaError::Schema(dir.display().to_string(), v)),
            },
            None => {
                engine.transact(|t| {
                    t.insert(Table::Meta, META_SCHEMA, (SCHEMA_VERSION as u64).to_be_bytes().to_vec())?;
                    t.insert(Table::Meta, META_NEXT_INODE, (ROOT_INODE + 1).to_be_bytes().to_vec())?;
                    t.insert(Table::Meta, META_TOTALS, encode(&Totals::default()))?;
                    let root = records::Inode {
                        kind: Kind::Dir,
                        parent: ROOT_INODE,
                        name: String::new(),
                        size: 0,
                        mode: 0o755,
                        mtime_ms: collective_core::unix_ms_now() as i64,
                        owner: String::new(),
                        count: 0,
                        version: 1,
                    };
                    t.insert(Table::Inodes, &records::u64_key(ROOT_INODE), encode(&root))?;
                    Ok(())
                })?;
                engine.flush()?;
            }
        }
        // The total hosted is not logged (see `engine::logged`): counted again here, so a
        // store brought back from a backup starts from the right figure.
        migrate::hosted_total(&engine)?;
        let store = MetaStore {
            engine,
            exporting: std::sync::Mutex::new(()),
            log_kept: std::sync::atomic::AtomicBool::new(false),
        };
        store.migrate_audit_keys()?;
        Ok(store)
    }

    /// Makes every committed change durable; call before acknowledging a client.
    pub async fn flush(&self) -> Result<(), MetaError> {
        self.engine.flush_async().await
    }

    pub fn flush_blocking(&self) -> Result<(), MetaError> {
        self.engine.flush()
    }

    pub fn totals(&self) -> Result<Totals, MetaError> {
        match self.engine.get(Table::Meta, META_TOTALS)? {
            Some(v) => decode(&v),
            None => Ok(Totals::default()),
        }
    }

    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, MetaError> {
        self.engine
            .get(Table::Chunks, id.as_bytes())?
            .map(|v| decode::<ChunkRecord>(&v))
            .transpose()
    }

    /// Records that `by` plans to upload `id` to `nodes` (added to the nodes of earlier
    /// plans, which other clients may still be using).
    pub fn add_pending(&self, id: &ChunkId, size: u64, nodes: &[String], by: &str) -> Result<(), MetaError> {
        self.extend_pending(id, size, nodes, by).map(|_| ())
    }

    /// Adds `new` to the nodes a pending upload may use (nodes of earlier plans stay
    /// allowed: other clients may be using them), and `by` to who planned it. Returns all
    /// nodes.
    pub fn extend_pending(&self, id: &ChunkId, size: u64, new: &[String], by: &str) -> Result<Vec<String>, MetaError> {
        self.engine.transact(|t| {
            let mut rec: PendingRecord = match t.get(Table::Pending, id.as_bytes())? {
                Some(v) => decode(&v).map_err(abort)?,
                None => PendingRecord {
                    size,
                    nodes: vec![],
                    created_ms: collective_core::unix_ms_now(),
                    planned_by: vec![],
                },
            };
            rec.created_ms = collective_core::unix_ms_now();
            if !rec.planned_by.iter().any(|b| b == by) {
                rec.planned_by.push(by.to_string());
            }
            for n in new {
                if !rec.nodes.contains(n) {
                    rec.nodes.push(n.clone());
                }
            }
            t.insert(Table::Pending, id.as_bytes(), encode(&rec))?;
            Ok(rec.nodes.clone())
        })
    }

    /// Forgets that `node` holds `id` (it reported the copy missing or corrupt).
    /// Returns whether the replica was listed.
    pub fn remove_replica(&self, id: &ChunkId, node: &str) -> Result<bool, MetaError> {
        self.engine.transact(|t| {
            let Some(v) = t.get(Table::Chunks, id.as_bytes())? else {
                return Ok(false);
            };
            let mut rec: ChunkRecord = decode::<ChunkRecord>(&v).map_err(abort)?;
            let before = rec.replicas.len();
            rec.replicas.retain(|n| n != node);
            if rec.replicas.len() == before {
                return Ok(false);
            }
            let mut totals = totals_in(t)?;
            totals.physical_bytes = totals.physical_bytes.saturating_sub(rec.size);
            put_totals(t, &totals)?;
            t.insert(Table::Chunks, id.as_bytes(), encode(&rec))?;
            Ok(true)
        })
    }

    pub fn upsert_node(&self, principal: &str, rec: &NodeRecord) -> Result<(), MetaError> {
        self.engine.transact(|t| t.insert(Table::Nodes, principal.as_bytes(), encode(rec)))
    }

    pub fn nodes(&self) -> Result<Vec<(String, NodeRecord)>, MetaError> {
        self.engine
            .scan_prefix(Table::Nodes, b"", None)
            .map(|r| r.and_then(|(k, v)| Ok((String::from_utf8_lossy(&k).into_owned(), decode(&v)?))))
            .collect()
    }

    /// Every chunk id with its record (for inspection and tests).
    pub fn chunks(&self) -> impl Iterator<Item = Result<(ChunkId, ChunkRecord), MetaError>> + '_ {
        self.engine.scan_prefix(Table::Chunks, b"", None).map(|r| {
            let (k, v) = r?;
            let id = ChunkId::from_slice(&k).ok_or_else(|| MetaError::Corrupt("bad chunk key".into()))?;
            Ok((id, decode::<ChunkRecord>(&v)?))
        })
    }
}

pub(crate) fn abort(e: MetaError) -> engine::Abort {
    engine::Abort::Abort(e)
}

pub(crate) fn totals_in(t: &Txn<'_>) -> Result<Totals, engine::Abort> {
    match t.get(Table::Meta, META_TOTALS)? {
        Some(v) => decode(&v).map_err(abort),
        None => Ok(Totals::default()),
    }
}

pub(crate) fn put_totals(t: &Txn<'_>, totals: &Totals) -> Result<(), engine::Abort> {
    t.insert(Table::Meta, META_TOTALS, encode(totals))
}

pub(crate) fn alloc_inode(t: &Txn<'_>) -> Result<u64, engine::Abort> {
    let next = match t.get(Table::Meta, META_NEXT_INODE)? {
        Some(v) => records::read_u64(&v).map_err(abort)?,
        None => ROOT_INODE + 1,
    };
    t.insert(Table::Meta, META_NEXT_INODE, (next + 1).to_be_bytes().to_vec())?;
    Ok(next)
}

pub(crate) fn audit(t: &Txn<'_>, principal: &str, op: &str, path: &RemotePath, detail: String) -> Result<(), engine::Abort> {
    audit::audit_in(t, principal, op, path.as_str(), detail)
}

/// Decodes one stored value of `table` the way the store reads it, and nothing more: what
/// the fuzzers feed with arbitrary bytes (a damaged record must be an error, never a crash).
pub fn decode_record(table: Table, key: &[u8], value: &[u8]) -> Result<(), MetaError> {
    use records::{Inode, decode, read_u64};
    match table {
        Table::Meta => match key {
            META_TOTALS => decode::<Totals>(value).map(drop),
            k if k.starts_with(unknown::UNKNOWN_PREFIX) => unknown::decode(key, value).map(drop),
            _ => read_u64(value).map(drop),
        },
        Table::Inodes => decode::<Inode>(value).map(drop),
        Table::Dirents => read_u64(value).map(drop),
        Table::Manifests => decode::<records::Manifest>(value).map(drop),
        Table::Chunks => decode::<ChunkRecord>(value).map(drop),
        Table::Pending => decode::<PendingRecord>(value).map(drop),
        Table::Nodes => decode::<NodeRecord>(value).map(drop),
        Table::Audit => decode::<audit::AuditEntry>(value).map(drop),
        Table::Datastores => decode::<DatastoreRecord>(value).map(drop),
        Table::Grants => decode::<collective_core::Grant>(value).map(drop),
        Table::Invites => decode::<InviteRecord>(value).map(drop),
        Table::Principals => decode::<records::PrincipalRecord>(value).map(drop),
        // Schema 2's seals, emptied by the move to schema 3.
        Table::ChunkSeals if value.len() == SEAL_LEN => Ok(()),
        Table::ChunkSeals => Err(MetaError::Corrupt(format!("a chunk seal of {} bytes", value.len()))),
        Table::ChunkScopes => decode::<records::ScopeRecord>(value).map(drop),
        Table::Hosted => decode::<HostedRecord>(value).map(drop),
        Table::Links => decode::<records::LinkTarget>(value).map(drop),
        Table::Changes => postcard::from_bytes::<engine::ChangeSet>(value)
            .map(drop)
            .map_err(|e| MetaError::Corrupt(format!("a change log entry: {e}"))),
        // Opaque to this crate: the metadata backup reads its own records.
        Table::Backup => Ok(()),
    }
}
