//! What crosses member boundaries: the seals (key and tag) of encrypted chunks, which only
//! the owning member holds, and the chunks this member hosts for others, with what they
//! count against its contribution.

use collective_core::{ChunkId, RemotePath};
use serde::{Deserialize, Serialize};

use crate::abort;
use crate::engine::Table;
use crate::records::{ScopeRecord, decode, encode, scope_key};
use crate::{MetaError, MetaStore};

/// A seal: the 32-byte convergent key of an encrypted chunk, then its 16-byte AEAD tag.
pub const SEAL_LEN: usize = 48;

/// Picks our node for a hosted chunk (id, size, nodes already holding it), or says why not.
/// The last argument is the node the guest's placement would like ("" for none).
pub type PlaceHosted<'a> = dyn Fn(&ChunkId, u64, &[String], &str) -> Result<String, MetaError> + 'a;

/// A chunk this member stores for another member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostedRecord {
    pub size: u64,
    /// Our nodes that were given a token for it.
    pub nodes: Vec<String>,
    /// When a node was last given a token for it (the record was made, or a copy added).
    pub created_ms: u64,
}

impl crate::records::Record for HostedRecord {
    const NAME: &'static str = "hosted chunk";
}

/// Chunks of a member's metadata backups are hosted under its domain with this suffix:
/// kept apart from its files' chunks, and never logged (see `engine::logged`).
pub const BACKUP_GUEST_SUFFIX: &str = "#metadata";

/// The guest name a member's metadata-backup chunks are hosted under.
pub fn backup_guest(member: &str) -> String {
    format!("{member}{BACKUP_GUEST_SUFFIX}")
}

/// Whether a key of the hosted table is one of a metadata-backup chunk.
pub(crate) fn is_backup_key(key: &[u8]) -> bool {
    let guest = key.split(|b| *b == 0).next().unwrap_or_default();
    guest.ends_with(BACKUP_GUEST_SUFFIX.as_bytes())
}

pub(crate) fn hosted_key(guest: &str, id: &ChunkId) -> Vec<u8> {
    let mut k = guest.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

impl MetaStore {
    /// The datastore a path's chunks are counted and sealed with ("" outside any).
    pub fn scope(&self, path: &RemotePath) -> Result<String, MetaError> {
        let top = path.as_str().trim_start_matches('/').split('/').next().unwrap_or_default();
        if top.is_empty() || self.engine.get(Table::Datastores, top.as_bytes())?.is_none() {
            return Ok(String::new());
        }
        Ok(top.to_string())
    }

    /// The seal of `id` for reading it in datastore `scope` (see [`MetaStore::scope`]): the
    /// one that datastore keeps, never another's.
    pub fn seal_in(&self, scope: &str, id: &ChunkId) -> Result<Option<[u8; SEAL_LEN]>, MetaError> {
        let Some(v) = self.engine.get(Table::ChunkScopes, &scope_key(id.as_bytes(), scope))? else {
            return Ok(None);
        };
        let rec: ScopeRecord = decode(&v)?;
        if rec.seal.is_empty() {
            return Ok(None);
        }
        <[u8; SEAL_LEN]>::try_from(rec.seal.as_slice())
            .map(Some)
            .map_err(|_| MetaError::Corrupt(format!("seal of chunk {} has {} bytes", id.short(), rec.seal.len())))
    }

    /// Whether datastore `scope` holds `id` (some file of it names the chunk).
    pub fn scope_holds(&self, scope: &str, id: &ChunkId) -> Result<bool, MetaError> {
        Ok(self.engine.get(Table::ChunkScopes, &scope_key(id.as_bytes(), scope))?.is_some())
    }

    /// Whether some datastore keeps a seal for `id` (its bytes are ciphertext).
    pub fn sealed_anywhere(&self, id: &ChunkId) -> Result<bool, MetaError> {
        for kv in self.engine.scan_prefix(Table::ChunkScopes, id.as_bytes(), None) {
            let (_, v) = kv?;
            if !decode::<ScopeRecord>(&v)?.seal.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reserves room for chunks of `guest` on our nodes, all or nothing: each copy (a chunk
    /// on one node) counts its size against `quota` (bytes hosted for every member
    /// together), as the node stores it. `place` picks the node for a new copy. Returns the
    /// nodes of each chunk, in order.
    pub fn host_chunks(
        &self,
        guest: &str,
        chunks: &[(ChunkId, u64)],
        prefer: &[String],
        quota: u64,
        place: &PlaceHosted<'_>,
    ) -> Result<Vec<Vec<String>>, MetaError> {
        self.engine.transact(|t| {
            let mut total = read_total(t)?;
            let mut out = Vec::with_capacity(chunks.len());
            for (i, (id, size)) in chunks.iter().enumerate() {
                let key = hosted_key(guest, id);
                let mut rec = match t.get(Table::Hosted, &key)? {
                    Some(v) => {
                        let rec = decode::<HostedRecord>(&v).map_err(abort)?;
                        // Tokens are signed for the size asked; another size than the one
                        // accounted for would store what the quota never counted.
                        if rec.size != *size {
                            return Err(abort(MetaError::Placement(format!(
                                "chunk {} is hosted here as {} bytes, not {size}; a chunk's size never changes",
                                id.short(),
                                rec.size
                            ))));
                        }
                        rec
                    }
                    None => HostedRecord {
                        size: *size,
                        nodes: vec![],
                        created_ms: 0,
                    },
                };
                let preferred = prefer.get(i).map(String::as_str).unwrap_or("");
                let node = place(id, rec.size, &rec.nodes, preferred).map_err(abort)?;
                if !rec.nodes.contains(&node) {
                    if total.saturating_add(rec.size) > quota {
                        return Err(abort(MetaError::QuotaFull { used: total, quota }));
                    }
                    total += rec.size;
                    rec.nodes.push(node);
                    rec.created_ms = collective_core::unix_ms_now();
                }
                t.insert(Table::Hosted, &key, encode(&rec))?;
                out.push(rec.nodes);
            }
            write_total(t, total)?;
            Ok(out)
        })
    }

    /// The nodes holding a chunk we host for `guest` (None: we host no such chunk for it).
    pub fn hosted(&self, guest: &str, id: &ChunkId) -> Result<Option<HostedRecord>, MetaError> {
        self.engine
            .get(Table::Hosted, &hosted_key(guest, id))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Bytes hosted for other members, in total and per member.
    pub fn hosted_usage(&self) -> Result<(u64, Vec<(String, u64)>), MetaError> {
        let total = match self.engine.get(Table::Meta, HOSTED_TOTAL)? {
            Some(v) => crate::records::read_u64(&v)?,
            None => 0,
        };
        let mut per: Vec<(String, u64)> = Vec::new();
        for r in self.engine.scan_prefix(Table::Hosted, b"", None) {
            let (k, v) = r?;
            let guest = String::from_utf8_lossy(k.split(|b| *b == 0).next().unwrap_or_default());
            let guest = guest.trim_end_matches(BACKUP_GUEST_SUFFIX).to_string();
            let rec: HostedRecord = decode(&v)?;
            let stored = rec.size * rec.nodes.len() as u64;
            match per.last_mut() {
                Some((g, n)) if *g == guest => *n += stored,
                _ => per.push((guest, stored)),
            }
        }
        Ok((total, per))
    }
}

impl MetaStore {
    /// Drops the copies `node` was given a token for but does not hold (`held` is what it
    /// lists), among records last given a token in `(after_ms, before_ms]`: an upload that
    /// never came stops counting against the quota once its token has expired. Returns the
    /// copies and bytes released.
    pub fn prune_hosted(
        &self,
        node: &str,
        held: &std::collections::HashSet<ChunkId>,
        after_ms: u64,
        before_ms: u64,
    ) -> Result<(u64, u64), MetaError> {
        let stale: Vec<(String, ChunkId)> = self
            .hosted_all()
            .filter_map(|r| r.ok())
            .filter(|(_, id, rec)| {
                rec.created_ms > after_ms && rec.created_ms <= before_ms && rec.nodes.iter().any(|n| n == node) && !held.contains(id)
            })
            .map(|(guest, id, _)| (guest, id))
            .collect();
        self.engine.transact(|t| {
            let mut total = read_total(t)?;
            let (mut copies, mut bytes) = (0u64, 0u64);
            for (guest, id) in &stale {
                let key = hosted_key(guest, id);
                let Some(v) = t.get(Table::Hosted, &key)? else { continue };
                let mut rec: HostedRecord = decode(&v).map_err(abort)?;
                // Given a token again since we looked: leave it to a later pass.
                if rec.created_ms > before_ms || !rec.nodes.iter().any(|n| n == node) {
                    continue;
                }
                rec.nodes.retain(|n| n != node);
                total = total.saturating_sub(rec.size);
                copies += 1;
                bytes += rec.size;
                if rec.nodes.is_empty() {
                    t.remove(Table::Hosted, &key)?;
                } else {
                    t.insert(Table::Hosted, &key, encode(&rec))?;
                }
            }
            write_total(t, total)?;
            Ok((copies, bytes))
        })
    }
}

pub(crate) const HOSTED_TOTAL: &[u8] = b"hosted-total";

pub(crate) fn write_total(t: &crate::engine::Txn<'_>, total: u64) -> Result<(), crate::engine::Abort> {
    t.insert(Table::Meta, HOSTED_TOTAL, total.to_be_bytes().to_vec())
}

pub(crate) fn read_total(t: &crate::engine::Txn<'_>) -> Result<u64, crate::engine::Abort> {
    match t.get(Table::Meta, HOSTED_TOTAL)? {
        Some(v) => crate::records::read_u64(&v).map_err(abort),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> MetaStore {
        let d = std::env::temp_dir().join(format!("collective-meta-hosting-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        MetaStore::open(&d).unwrap()
    }

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn hosting_is_within_quota_all_or_nothing_and_idempotent() {
        let m = store("quota");
        let place = |_: &ChunkId, _: u64, _: &[String], _: &str| Ok::<_, MetaError>("node-01@alice.collective.local".to_string());
        let got = m
            .host_chunks("bob.collective.local", &[(id(1), 60), (id(2), 30)], &[], 100, &place)
            .unwrap();
        assert_eq!(got, vec![vec!["node-01@alice.collective.local".to_string()]; 2]);
        // Over the quota: refused, and nothing of the batch is kept.
        let err = m
            .host_chunks("carol.collective.local", &[(id(3), 5), (id(4), 20)], &[], 100, &place)
            .unwrap_err();
        assert!(matches!(err, MetaError::QuotaFull { used: 95, quota: 100 }), "{err}");
        assert!(m.hosted("carol.collective.local", &id(3)).unwrap().is_none());
        // Asking again for a hosted chunk costs nothing.
        m.host_chunks("bob.collective.local", &[(id(1), 60)], &[], 100, &place).unwrap();
        let (total, per) = m.hosted_usage().unwrap();
        assert_eq!(total, 90);
        assert_eq!(per, vec![("bob.collective.local".to_string(), 90)]);
    }

    #[test]
    fn each_copy_counts_against_the_quota_and_an_upload_that_never_came_stops_counting() {
        let m = store("copies");
        let node = std::cell::Cell::new(1);
        let place = |_: &ChunkId, _: u64, _: &[String], _: &str| Ok::<_, MetaError>(format!("node-0{}@alice.collective.local", node.get()));
        m.host_chunks("bob.collective.local", &[(id(1), 40)], &[], 100, &place).unwrap();
        // A second copy of the same chunk on another node (a repair asks with `avoid`).
        node.set(2);
        m.host_chunks("bob.collective.local", &[(id(1), 40)], &[], 100, &place).unwrap();
        assert_eq!(m.hosted_usage().unwrap().0, 80, "two copies are stored, two count");
        node.set(3);
        let err = m.host_chunks("bob.collective.local", &[(id(1), 40)], &[], 100, &place).unwrap_err();
        assert!(matches!(err, MetaError::QuotaFull { used: 80, quota: 100 }), "{err}");
        // Asking again with another size (to get a token for more bytes) is refused.
        let err = m
            .host_chunks("bob.collective.local", &[(id(1), 64 << 20)], &[], 1 << 40, &place)
            .unwrap_err();
        assert!(err.to_string().contains("never changes"), "{err}");
        // node-02 never received its upload: once its token expired, the copy is dropped.
        let held: std::collections::HashSet<ChunkId> = std::collections::HashSet::new();
        let now = collective_core::unix_ms_now();
        assert_eq!(
            m.prune_hosted("node-02@alice.collective.local", &held, 0, now - 60_000).unwrap(),
            (0, 0),
            "still within its token"
        );
        assert_eq!(
            m.prune_hosted("node-02@alice.collective.local", &held, 0, now + 1).unwrap(),
            (1, 40)
        );
        assert_eq!(m.hosted_usage().unwrap().0, 40);
        let rec = m.hosted("bob.collective.local", &id(1)).unwrap().unwrap();
        assert_eq!(rec.nodes, vec!["node-01@alice.collective.local".to_string()]);
        // A node that holds its copy keeps it.
        let held: std::collections::HashSet<ChunkId> = [id(1)].into();
        assert_eq!(m.prune_hosted("node-01@alice.collective.local", &held, 0, now + 1).unwrap(), (0, 0));
        // Releasing the chunk frees what its copies counted.
        m.release_hosted("bob.collective.local", &[id(1)]).unwrap();
        assert_eq!(m.hosted_usage().unwrap().0, 0);
    }
}
