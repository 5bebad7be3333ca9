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
    pub created_ms: u64,
}

impl crate::records::Record for HostedRecord {
    const NAME: &'static str = "hosted chunk";
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

    /// Reserves room for chunks of `guest` on our nodes, all or nothing: each chunk not
    /// hosted yet counts against `quota` (bytes hosted for every member together).
    /// `place` picks the node for a new chunk. Returns the nodes of each chunk, in order.
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
                    Some(v) => decode::<HostedRecord>(&v).map_err(abort)?,
                    None => {
                        if total + size > quota {
                            return Err(abort(MetaError::QuotaFull { used: total, quota }));
                        }
                        total += size;
                        HostedRecord {
                            size: *size,
                            nodes: vec![],
                            created_ms: collective_core::unix_ms_now(),
                        }
                    }
                };
                let preferred = prefer.get(i).map(String::as_str).unwrap_or("");
                let node = place(id, *size, &rec.nodes, preferred).map_err(abort)?;
                if !rec.nodes.contains(&node) {
                    rec.nodes.push(node);
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
            let guest = String::from_utf8_lossy(k.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
            let rec: HostedRecord = decode(&v)?;
            match per.last_mut() {
                Some((g, n)) if *g == guest => *n += rec.size,
                _ => per.push((guest, rec.size)),
            }
        }
        Ok((total, per))
    }
}

const HOSTED_TOTAL: &[u8] = b"hosted-total";

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
}
