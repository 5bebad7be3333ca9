//! Chunks a node holds that this metadata has no record of. They appear when the metadata
//! directory was restored from an older copy (files stored since then are on the nodes but
//! not here), or when a node comes back from another time. They are never deleted on sight:
//! they are kept here with when they were first seen, reported, and deleted only when an
//! administrator decides so (`collective repair collect-unknown`).

use collective_core::ChunkId;

use serde::{Deserialize, Serialize};

use crate::engine::Table;
use crate::records::{self, Record};
use crate::{MetaError, MetaStore};

pub(crate) const UNKNOWN_PREFIX: &[u8] = b"unknown:";

/// The value of an unknown-chunk key: when it was first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Sighting {
    first_seen_ms: u64,
}

impl Record for Sighting {
    const NAME: &'static str = "unknown-chunk";
    /// Format 2: postcard like every record (format 1 was the time as 8 big-endian bytes).
    const FORMAT: u8 = 2;
    fn upgrade(format: u8, b: &[u8]) -> Result<Self, MetaError> {
        match (format, <[u8; 8]>::try_from(b)) {
            (1, Ok(ms)) => Ok(Sighting {
                first_seen_ms: u64::from_be_bytes(ms),
            }),
            _ => Err(MetaError::Corrupt(format!("an unknown-chunk record of format {format}"))),
        }
    }
}

/// One chunk on one node that nothing here references or plans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownChunk {
    pub node: String,
    pub id: ChunkId,
    pub first_seen_ms: u64,
}

fn node_prefix(node: &str) -> Vec<u8> {
    [UNKNOWN_PREFIX, node.as_bytes(), &[0]].concat()
}

fn key(node: &str, id: &ChunkId) -> Vec<u8> {
    [node_prefix(node).as_slice(), id.as_bytes()].concat()
}

pub(crate) fn decode(k: &[u8], v: &[u8]) -> Result<UnknownChunk, MetaError> {
    let bad = || MetaError::Corrupt("an unknown-chunk record".into());
    let rest = k.strip_prefix(UNKNOWN_PREFIX).ok_or_else(bad)?;
    if rest.len() < 33 || rest[rest.len() - 33] != 0 {
        return Err(bad());
    }
    let node = String::from_utf8_lossy(&rest[..rest.len() - 33]).into_owned();
    let id = ChunkId::from_slice(&rest[rest.len() - 32..]).ok_or_else(bad)?;
    let seen: Sighting = records::decode(v)?;
    Ok(UnknownChunk {
        node,
        id,
        first_seen_ms: seen.first_seen_ms,
    })
}

impl MetaStore {
    /// Replaces what `node` is recorded to hold unknown with `ids`, keeping when each was
    /// first seen. Returns how many were not recorded before.
    pub fn set_unknown(&self, node: &str, ids: &[ChunkId], now_ms: u64) -> Result<u64, MetaError> {
        let before = self.unknown_on(node)?;
        let wanted: std::collections::HashSet<&ChunkId> = ids.iter().collect();
        let known: std::collections::HashSet<&ChunkId> = before.iter().map(|u| &u.id).collect();
        let fresh: Vec<&ChunkId> = ids.iter().filter(|id| !known.contains(id)).collect();
        let gone: Vec<&ChunkId> = before.iter().map(|u| &u.id).filter(|id| !wanted.contains(id)).collect();
        let value = records::encode(&Sighting { first_seen_ms: now_ms });
        self.engine.transact(|t| {
            for id in &fresh {
                t.insert(Table::Meta, &key(node, id), value.clone())?;
            }
            for id in &gone {
                t.remove(Table::Meta, &key(node, id))?;
            }
            Ok(())
        })?;
        Ok(fresh.len() as u64)
    }

    /// Unknown chunks recorded on `node`.
    pub fn unknown_on(&self, node: &str) -> Result<Vec<UnknownChunk>, MetaError> {
        let prefix = node_prefix(node);
        self.engine
            .scan_prefix(Table::Meta, &prefix, None)
            .map(|r| r.and_then(|(k, v)| decode(&k, &v)))
            .collect()
    }

    /// Every unknown chunk recorded, node by node.
    pub fn unknown_chunks(&self) -> impl Iterator<Item = Result<UnknownChunk, MetaError>> + '_ {
        self.engine
            .scan_prefix(Table::Meta, UNKNOWN_PREFIX, None)
            .map(|r| r.and_then(|(k, v)| decode(&k, &v)))
    }

    /// Forgets one unknown chunk (deleted, or found to be known after all).
    pub fn forget_unknown(&self, node: &str, id: &ChunkId) -> Result<(), MetaError> {
        self.engine.remove(Table::Meta, &key(node, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_chunks_keep_when_first_seen_and_drop_what_a_node_no_longer_holds() {
        let dir = std::env::temp_dir().join(format!("collective-meta-unknown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = MetaStore::open(&dir).unwrap();
        let (a, b, c) = (ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32]));
        assert_eq!(m.set_unknown("n1@x.y", &[a, b], 100).unwrap(), 2);
        assert_eq!(m.set_unknown("n2@x.y", &[a], 150).unwrap(), 1);
        // Seen again later with one gone and one new: the survivor keeps its first sighting.
        assert_eq!(m.set_unknown("n1@x.y", &[b, c], 200).unwrap(), 1);
        let mut all: Vec<UnknownChunk> = m.unknown_chunks().collect::<Result<_, _>>().unwrap();
        all.sort_by_key(|u| (u.node.clone(), u.id.0));
        let got: Vec<(&str, u8, u64)> = all.iter().map(|u| (u.node.as_str(), u.id.0[0], u.first_seen_ms)).collect();
        assert_eq!(got, vec![("n1@x.y", 2, 100), ("n1@x.y", 3, 200), ("n2@x.y", 1, 150)]);
        m.forget_unknown("n1@x.y", &b).unwrap();
        assert_eq!(m.unknown_on("n1@x.y").unwrap().len(), 1);
        // A node whose name is a prefix of another's sees only its own.
        assert_eq!(m.unknown_on("n1@x.").unwrap().len(), 0);
        drop(m);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sightings_of_the_first_format_read_as_the_same_time() {
        let mut old = vec![1u8];
        old.extend_from_slice(&1234u64.to_be_bytes());
        let k = key("n1@x.y", &ChunkId([4; 32]));
        assert_eq!(decode(&k, &old).unwrap().first_seen_ms, 1234);
        assert_eq!(
            decode(&k, &records::encode(&Sighting { first_seen_ms: 99 })).unwrap().first_seen_ms,
            99
        );
        assert!(decode(&k, &[1, 0, 0]).is_err());
    }
}
