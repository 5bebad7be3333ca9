//! Persisted record types. Every value starts with a format byte so a later version can
//! read (and migrate) what an earlier one wrote.

use collective_core::Strategy;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::MetaError;

/// Format of the first version of every record.
pub const RECORD_FORMAT_V1: u8 = 1;
/// Layout of the whole store; checked at open. Version 2: every chunk record carries the
/// strategy of the datastores that reference it (filled in when a version-1 store opens).
/// Version 3: seals and reference counts are kept per datastore and chunk
/// ([`ScopeRecord`]), no longer one seal per chunk for the whole member.
pub const SCHEMA_VERSION: u32 = 4;
pub const ROOT_INODE: u64 = 1;

/// A persisted type. Every value starts with a format byte: a record is written in its
/// current `FORMAT` and read from any earlier one through `upgrade`, which decodes the
/// older shape and converts it step by step (format 1 into 2, 2 into 3, ...), so each
/// change of a record adds one small conversion and the old ones stay as they were.
pub trait Record: Sized + Serialize + DeserializeOwned {
    /// What the record is called in errors ("chunk", "inode").
    const NAME: &'static str;
    /// The format this version writes.
    const FORMAT: u8 = RECORD_FORMAT_V1;

    /// Reads a record that an earlier version wrote in `format` (`body` follows the
    /// format byte). Types that never changed keep this default, which refuses.
    fn upgrade(format: u8, body: &[u8]) -> Result<Self, MetaError> {
        let _ = body;
        Err(unknown_format(Self::NAME, format))
    }
}

fn unknown_format(name: &str, format: u8) -> MetaError {
    MetaError::Corrupt(format!("{name} record has unknown format {format}"))
}

/// Decodes the body of a record in an older (or the current) shape `T`.
pub fn body<T: DeserializeOwned>(name: &str, body: &[u8]) -> Result<T, MetaError> {
    postcard::from_bytes(body).map_err(|e| MetaError::Corrupt(format!("{name} record: {e}")))
}

pub fn encode<T: Record>(v: &T) -> Vec<u8> {
    let mut out = vec![T::FORMAT];
    // Serialising plain structs into a Vec cannot fail.
    out.extend(postcard::to_allocvec(v).unwrap_or_default());
    out
}

pub fn decode<T: Record>(b: &[u8]) -> Result<T, MetaError> {
    match b.split_first() {
        Some((&f, rest)) if f == T::FORMAT => body(T::NAME, rest),
        Some((&f, rest)) if f != 0 && f < T::FORMAT => T::upgrade(f, rest),
        Some((&f, _)) => Err(unknown_format(T::NAME, f)),
        None => Err(MetaError::Corrupt(format!("empty {} record", T::NAME))),
    }
}

/// Encodes `v` as format `format` of a record: how tests write what earlier versions did.
#[cfg(test)]
pub(crate) fn encode_as<T: Serialize>(format: u8, v: &T) -> Vec<u8> {
    let mut out = vec![format];
    out.extend(postcard::to_allocvec(v).unwrap_or_default());
    out
}

/// The target of a symbolic link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LinkTarget(pub String);

/// A file's chunks, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Manifest(pub Vec<ChunkRef>);

/// Who an invite created, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    pub created_ms: u64,
    pub invite: [u8; 16],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    /// A symbolic link; its target is in the links table, its size is the target's length.
    Symlink,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inode {
    pub kind: Kind,
    pub parent: u64,
    pub name: String,
    pub size: u64,
    pub mode: u32,
    pub mtime_ms: i64,
    pub owner: String,
    /// Directories: number of entries. Files: number of chunks in the manifest.
    pub count: u64,
    /// Bumped on every commit of a file.
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: [u8; 32],
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub size: u64,
    pub refs: u64,
    /// Principals of the nodes that hold a verified copy.
    pub replicas: Vec<String>,
    /// When `refs` last dropped to zero (for garbage collection after a grace period).
    pub unreferenced_since_ms: u64,
    /// Copies the datastores referencing it ask for (the largest); 0: the coordinator's
    /// default (records written before this field existed).
    pub want: u32,
    /// How its copies are spread: the widest strategy of the datastores referencing it.
    pub strategy: Strategy,
}

/// Format 2: before `strategy`.
#[derive(Deserialize)]
struct ChunkRecordV2 {
    size: u64,
    refs: u64,
    replicas: Vec<String>,
    unreferenced_since_ms: u64,
    want: u32,
}

impl From<ChunkRecordV2> for ChunkRecord {
    /// The strategy is not known from the record alone: opening a store of schema 1 fills
    /// it in from the datastores (`MetaStore::open`); `media` until then.
    fn from(v2: ChunkRecordV2) -> ChunkRecord {
        ChunkRecord {
            size: v2.size,
            refs: v2.refs,
            replicas: v2.replicas,
            unreferenced_since_ms: v2.unreferenced_since_ms,
            want: v2.want,
            strategy: Strategy::Media,
        }
    }
}

/// Format 1: before `want`.
#[derive(Deserialize)]
struct ChunkRecordV1 {
    size: u64,
    refs: u64,
    replicas: Vec<String>,
    unreferenced_since_ms: u64,
}

impl From<ChunkRecordV1> for ChunkRecordV2 {
    fn from(v1: ChunkRecordV1) -> ChunkRecordV2 {
        ChunkRecordV2 {
            size: v1.size,
            refs: v1.refs,
            replicas: v1.replicas,
            unreferenced_since_ms: v1.unreferenced_since_ms,
            want: 0,
        }
    }
}

impl Record for ChunkRecord {
    const NAME: &'static str = "chunk";
    /// Format 2 added `want`, format 3 `strategy`.
    const FORMAT: u8 = 3;
    fn upgrade(format: u8, b: &[u8]) -> Result<Self, MetaError> {
        match format {
            1 => Ok(ChunkRecordV2::from(body::<ChunkRecordV1>(Self::NAME, b)?).into()),
            2 => Ok(body::<ChunkRecordV2>(Self::NAME, b)?.into()),
            f => Err(unknown_format(Self::NAME, f)),
        }
    }
}

/// A chunk a client was told to upload but has not committed yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRecord {
    pub size: u64,
    pub nodes: Vec<String>,
    pub created_ms: u64,
    /// Principals whose write plans asked for this upload: only they may commit the chunk
    /// into a datastore that does not hold it yet (format 2).
    pub planned_by: Vec<String>,
}

impl Record for PendingRecord {
    const NAME: &'static str = "pending";
    const FORMAT: u8 = 2;

    fn upgrade(format: u8, b: &[u8]) -> Result<Self, MetaError> {
        #[derive(Deserialize)]
        struct V1 {
            size: u64,
            nodes: Vec<String>,
            created_ms: u64,
        }
        match format {
            // Uploads planned before the upgrade name nobody: they are planned again.
            RECORD_FORMAT_V1 => body::<V1>(Self::NAME, b).map(|v| PendingRecord {
                size: v.size,
                nodes: v.nodes,
                created_ms: v.created_ms,
                planned_by: Vec::new(),
            }),
            f => Err(unknown_format(Self::NAME, f)),
        }
    }
}

/// One datastore's hold on a chunk: how many of its files reference the chunk, and the
/// seal (key and tag, empty for plaintext) that the commit which first referenced it there
/// wrote. A later writer never replaces the seal, and another datastore's seal is never
/// given out for it: a chunk id known from elsewhere opens nothing here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeRecord {
    pub refs: u64,
    pub seal: Vec<u8>,
}

/// Key of a [`ScopeRecord`]: the chunk id, then the datastore's name ("" for paths outside
/// any datastore), so that every scope of one chunk is one prefix.
pub fn scope_key(id: &[u8; 32], scope: &str) -> Vec<u8> {
    let mut k = id.to_vec();
    k.extend_from_slice(scope.as_bytes());
    k
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub grpc_addr: String,
    pub quic_addr: String,
    pub capacity: u64,
    pub registered_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at_ms: u64,
    pub principal: String,
    pub op: String,
    pub path: String,
    pub detail: String,
}

/// Totals kept up to date inside every transaction, so status is O(1).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub logical_bytes: u64,
    pub unique_chunks: u64,
    pub unique_bytes: u64,
    /// Sum over chunks of size × replicas.
    pub physical_bytes: u64,
}

macro_rules! first_format {
    ($($t:ty => $name:literal),* $(,)?) => {
        $(impl Record for $t {
            const NAME: &'static str = $name;
        })*
    };
}

first_format! {
    Inode => "inode",
    Manifest => "manifest",
    LinkTarget => "link",
    ScopeRecord => "chunk scope",
    NodeRecord => "node",
    Totals => "totals",
    PrincipalRecord => "principal",
    collective_core::Grant => "grant",
}

pub fn dirent_key(parent: u64, name: &str) -> Vec<u8> {
    let mut k = parent.to_be_bytes().to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn read_u64(b: &[u8]) -> Result<u64, MetaError> {
    <[u8; 8]>::try_from(b)
        .map(u64::from_be_bytes)
        .map_err(|_| MetaError::Corrupt("bad 8-byte value".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_records_of_format_1_read_with_the_default_copy_count() {
        #[derive(Serialize)]
        struct V1 {
            size: u64,
            refs: u64,
            replicas: Vec<String>,
            unreferenced_since_ms: u64,
        }
        let old = encode_as(
            RECORD_FORMAT_V1,
            &V1 {
                size: 7,
                refs: 2,
                replicas: vec!["n1".into()],
                unreferenced_since_ms: 0,
            },
        );
        let rec: ChunkRecord = decode(&old).unwrap();
        assert_eq!((rec.size, rec.refs, rec.want, rec.strategy), (7, 2, 0, Strategy::Media));
        assert_eq!(rec.replicas, vec!["n1"]);
        let again: ChunkRecord = decode(&encode(&ChunkRecord {
            want: 3,
            strategy: Strategy::Hybrid,
            ..rec
        }))
        .unwrap();
        assert_eq!((again.want, again.strategy), (3, Strategy::Hybrid));
        assert!(decode::<ChunkRecord>(&[9, 1, 2]).is_err());
        assert!(decode::<ChunkRecord>(&[]).is_err());
    }
}
