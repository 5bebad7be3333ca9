//! Persisted record types. Every value starts with a format byte so a later version can
//! read (and migrate) what an earlier one wrote.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::MetaError;

/// Format of every record this version writes.
pub const RECORD_FORMAT_V1: u8 = 1;
/// Layout of the whole store; checked at open.
pub const SCHEMA_VERSION: u32 = 1;
pub const ROOT_INODE: u64 = 1;

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![RECORD_FORMAT_V1];
    // Serialising plain structs into a Vec cannot fail.
    out.extend(postcard::to_allocvec(v).unwrap_or_default());
    out
}

pub fn decode<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, MetaError> {
    match b.split_first() {
        Some((&RECORD_FORMAT_V1, rest)) => postcard::from_bytes(rest).map_err(|e| MetaError::Corrupt(format!("{what} record: {e}"))),
        Some((v, _)) => Err(MetaError::Corrupt(format!("{what} record has unknown format {v}"))),
        None => Err(MetaError::Corrupt(format!("empty {what} record"))),
    }
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
}

/// Chunk records gained `want` in format 2; format 1 records read as `want = 0`.
const CHUNK_FORMAT_V2: u8 = 2;

#[derive(Deserialize)]
struct ChunkRecordV1 {
    size: u64,
    refs: u64,
    replicas: Vec<String>,
    unreferenced_since_ms: u64,
}

pub fn encode_chunk(rec: &ChunkRecord) -> Vec<u8> {
    let mut out = vec![CHUNK_FORMAT_V2];
    out.extend(postcard::to_allocvec(rec).unwrap_or_default());
    out
}

pub fn decode_chunk(b: &[u8]) -> Result<ChunkRecord, MetaError> {
    match b.split_first() {
        Some((&CHUNK_FORMAT_V2, rest)) => postcard::from_bytes(rest).map_err(|e| MetaError::Corrupt(format!("chunk record: {e}"))),
        Some((&RECORD_FORMAT_V1, _)) => {
            let v1: ChunkRecordV1 = decode("chunk", b)?;
            Ok(ChunkRecord {
                size: v1.size,
                refs: v1.refs,
                replicas: v1.replicas,
                unreferenced_since_ms: v1.unreferenced_since_ms,
                want: 0,
            })
        }
        Some((v, _)) => Err(MetaError::Corrupt(format!("chunk record has unknown format {v}"))),
        None => Err(MetaError::Corrupt("empty chunk record".into())),
    }
}

/// A chunk a client was told to upload but has not committed yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRecord {
    pub size: u64,
    pub nodes: Vec<String>,
    pub created_ms: u64,
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
        let old = encode(&V1 {
            size: 7,
            refs: 2,
            replicas: vec!["n1".into()],
            unreferenced_since_ms: 0,
        });
        let rec = decode_chunk(&old).unwrap();
        assert_eq!((rec.size, rec.refs, rec.want), (7, 2, 0));
        assert_eq!(rec.replicas, vec!["n1"]);
        let again = decode_chunk(&encode_chunk(&ChunkRecord { want: 3, ..rec })).unwrap();
        assert_eq!(again.want, 3);
        assert!(decode_chunk(&[9, 1, 2]).is_err());
    }
}
