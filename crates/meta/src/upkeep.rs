//! What the self-healing loops change: replica sets (repair, drain, trimming extra copies,
//! reconciling a returning node), garbage collection of unreferenced chunks and abandoned
//! uploads, nodes that are draining or removed, and releasing chunks hosted for others.
//! Each change is one transaction that re-checks what it depends on, so a loop working
//! from a slightly old scan can never drop a chunk a concurrent commit just referenced.

use collective_core::{ChunkId, unix_ms_now};

use crate::engine::Table;
use crate::hosting::HostedRecord;
use crate::records::{ChunkRecord, PendingRecord, decode, encode};
use crate::{MetaError, MetaStore, abort, put_totals, totals_in};

const DRAIN_PREFIX: &[u8] = b"drain:";
const REMOVED_PREFIX: &[u8] = b"removed:";

impl MetaStore {
    /// Adds `add` to a chunk's replicas and drops `remove`, keeping the physical-bytes
    /// total exact. Returns the new replica set, or None when the chunk is gone.
    pub fn change_replicas(&self, id: &ChunkId, add: &[String], remove: &[String]) -> Result<Option<Vec<String>>, MetaError> {
        self.engine.transact(|t| {
            let Some(v) = t.get(Table::Chunks, id.as_bytes())? else {
                return Ok(None);
            };
            let mut rec = decode::<ChunkRecord>(&v).map_err(abort)?;
            let before = rec.replicas.len() as u64;
            rec.replicas.retain(|n| !remove.contains(n));
            for n in add {
                if !rec.replicas.contains(n) {
                    rec.replicas.push(n.clone());
                }
            }
            let after = rec.replicas.len() as u64;
            if after != before {
                let mut totals = totals_in(t)?;
                totals.physical_bytes = (totals.physical_bytes + after * rec.size).saturating_sub(before * rec.size);
                put_totals(t, &totals)?;
            }
            t.insert(Table::Chunks, id.as_bytes(), encode(&rec))?;
            Ok(Some(rec.replicas))
        })
    }

    /// Restarts the grace period of an unreferenced chunk a new upload is about to reuse,
    /// so garbage collection leaves it alone until the upload commits.
    pub fn touch_unreferenced(&self, id: &ChunkId) -> Result<(), MetaError> {
        self.engine.transact(|t| {
            if let Some(v) = t.get(Table::Chunks, id.as_bytes())? {
                let mut rec = decode::<ChunkRecord>(&v).map_err(abort)?;
                if rec.refs == 0 {
                    rec.unreferenced_since_ms = unix_ms_now();
                    t.insert(Table::Chunks, id.as_bytes(), encode(&rec))?;
                }
            }
            Ok(())
        })
    }

    /// Forgets a chunk that has had no reference since before `cutoff_ms`.
    /// Returns its record so its copies can be deleted; None when it is referenced again,
    /// became unreferenced later, or is gone.
    pub fn collect_chunk(&self, id: &ChunkId, cutoff_ms: u64) -> Result<Option<ChunkRecord>, MetaError> {
        self.engine.transact(|t| {
            let Some(v) = t.get(Table::Chunks, id.as_bytes())? else {
                return Ok(None);
            };
            let rec = decode::<ChunkRecord>(&v).map_err(abort)?;
            if rec.refs > 0 || rec.unreferenced_since_ms > cutoff_ms {
                return Ok(None);
            }
            // No file references it, so no datastore holds a seal for it any more.
            t.remove(Table::Chunks, id.as_bytes())?;
            let mut totals = totals_in(t)?;
            totals.unique_chunks = totals.unique_chunks.saturating_sub(1);
            totals.unique_bytes = totals.unique_bytes.saturating_sub(rec.size);
            totals.physical_bytes = totals.physical_bytes.saturating_sub(rec.size * rec.replicas.len() as u64);
            put_totals(t, &totals)?;
            Ok(Some(rec))
        })
    }

    /// Uploads planned before `cutoff_ms` and never committed.
    pub fn stale_pending(&self, cutoff_ms: u64, limit: usize) -> Result<Vec<(ChunkId, PendingRecord)>, MetaError> {
        let mut out = Vec::new();
        for r in self.engine.scan_prefix(Table::Pending, b"", None) {
            let (k, v) = r?;
            let rec: PendingRecord = decode(&v)?;
            if rec.created_ms < cutoff_ms
                && let Some(id) = ChunkId::from_slice(&k)
            {
                out.push((id, rec));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Drops an abandoned upload plan unless it was renewed after `cutoff_ms`. Returns the
    /// nodes that may hold a copy nobody references (those not holding the committed chunk).
    pub fn drop_pending(&self, id: &ChunkId, cutoff_ms: u64) -> Result<Vec<String>, MetaError> {
        self.engine.transact(|t| {
            let Some(v) = t.get(Table::Pending, id.as_bytes())? else {
                return Ok(vec![]);
            };
            let rec: PendingRecord = decode(&v).map_err(abort)?;
            if rec.created_ms >= cutoff_ms {
                return Ok(vec![]);
            }
            t.remove(Table::Pending, id.as_bytes())?;
            let kept: Vec<String> = match t.get(Table::Chunks, id.as_bytes())? {
                Some(c) => decode::<ChunkRecord>(&c).map_err(abort)?.replicas,
                None => vec![],
            };
            Ok(rec.nodes.into_iter().filter(|n| !kept.contains(n)).collect())
        })
    }

    /// Whether an upload of `id` is planned (its copies must not be collected).
    pub fn is_pending(&self, id: &ChunkId) -> Result<bool, MetaError> {
        Ok(self.engine.get(Table::Pending, id.as_bytes())?.is_some())
    }

    /// Marks a node as draining (its chunks move elsewhere; nothing new is placed on it).
    pub fn set_draining(&self, node: &str, draining: bool) -> Result<(), MetaError> {
        let key = [DRAIN_PREFIX, node.as_bytes()].concat();
        self.engine.transact(|t| {
            if draining {
                t.insert(Table::Meta, &key, unix_ms_now().to_be_bytes().to_vec())
            } else {
                t.remove(Table::Meta, &key)
            }
        })
    }

    pub fn draining(&self) -> Result<Vec<String>, MetaError> {
        self.engine
            .scan_prefix(Table::Meta, DRAIN_PREFIX, None)
            .map(|r| r.map(|(k, _)| String::from_utf8_lossy(&k[DRAIN_PREFIX.len()..]).into_owned()))
            .collect()
    }

    /// Forgets a node: its registration, its drain mark, and every replica it was listed
    /// for. Returns how many chunks lost a listed copy.
    pub fn remove_node(&self, node: &str) -> Result<u64, MetaError> {
        let mut listed = Vec::new();
        for r in self.chunks() {
            let (id, rec) = r?;
            if rec.replicas.iter().any(|n| n == node) {
                listed.push(id);
            }
        }
        let gone = [node.to_string()];
        for id in &listed {
            self.change_replicas(id, &[], &gone)?;
        }
        self.engine.transact(|t| {
            t.remove(Table::Nodes, node.as_bytes())?;
            t.remove(Table::Meta, &[DRAIN_PREFIX, node.as_bytes()].concat())?;
            t.insert(
                Table::Meta,
                &[REMOVED_PREFIX, node.as_bytes()].concat(),
                unix_ms_now().to_be_bytes().to_vec(),
            )
        })?;
        // What it held unknown to us left with it.
        self.set_unknown(node, &[], unix_ms_now())?;
        Ok(listed.len() as u64)
    }

    /// Whether a node was removed (it may come back only with an empty store).
    pub fn was_removed(&self, node: &str) -> Result<bool, MetaError> {
        Ok(self.engine.get(Table::Meta, &[REMOVED_PREFIX, node.as_bytes()].concat())?.is_some())
    }

    /// A removed node came back empty: it is a new node now.
    pub fn forget_removal(&self, node: &str) -> Result<(), MetaError> {
        self.engine
            .transact(|t| t.remove(Table::Meta, &[REMOVED_PREFIX, node.as_bytes()].concat()))
    }

    /// Stops hosting chunks for `guest`: returns the nodes that held each one (to delete
    /// the copies there) and gives the room back to the contribution.
    pub fn release_hosted(&self, guest: &str, ids: &[ChunkId]) -> Result<Vec<(ChunkId, HostedRecord)>, MetaError> {
        self.engine.transact(|t| {
            let mut total = crate::hosting::read_total(t)?;
            let mut out = Vec::new();
            for id in ids {
                let key = crate::hosting::hosted_key(guest, id);
                if let Some(v) = t.get(Table::Hosted, &key)? {
                    let rec: HostedRecord = decode(&v).map_err(abort)?;
                    total = total.saturating_sub(rec.size * rec.nodes.len() as u64);
                    t.remove(Table::Hosted, &key)?;
                    out.push((*id, rec));
                }
            }
            crate::hosting::write_total(t, total)?;
            Ok(out)
        })
    }

    /// Records that a hosted chunk of `guest` now lives on `nodes` (after a repair here).
    pub fn set_hosted_nodes(&self, guest: &str, id: &ChunkId, nodes: &[String]) -> Result<(), MetaError> {
        self.engine.transact(|t| {
            let key = crate::hosting::hosted_key(guest, id);
            if let Some(v) = t.get(Table::Hosted, &key)? {
                let mut rec: HostedRecord = decode(&v).map_err(abort)?;
                // The quota counts each copy: follow the number of nodes.
                let total = crate::hosting::read_total(t)?;
                let total = total.saturating_sub(rec.size * rec.nodes.len() as u64) + rec.size * nodes.len() as u64;
                crate::hosting::write_total(t, total)?;
                rec.nodes = nodes.to_vec();
                t.insert(Table::Hosted, &key, encode(&rec))?;
            }
            Ok(())
        })
    }

    /// Every chunk hosted here for others: (guest, id, record).
    pub fn hosted_all(&self) -> impl Iterator<Item = Result<(String, ChunkId, HostedRecord), MetaError>> + '_ {
        self.engine.scan_prefix(Table::Hosted, b"", None).map(|r| {
            let (k, v) = r?;
            let split = k
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| MetaError::Corrupt("bad hosted key".into()))?;
            let guest = String::from_utf8_lossy(&k[..split]).into_owned();
            let id = ChunkId::from_slice(&k[split + 1..]).ok_or_else(|| MetaError::Corrupt("bad hosted key".into()))?;
            Ok((guest, id, decode(&v)?))
        })
    }
}

#[cfg(test)]
mod tests {

    use crate::FileCommitIn;
    use crate::records::ChunkRef;

    use super::*;

    fn store(name: &str) -> MetaStore {
        let d = std::env::temp_dir().join(format!("collective-meta-upkeep-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        MetaStore::open(&d).unwrap()
    }

    fn commit(m: &MetaStore, path: &str, id: ChunkId, nodes: &[&str]) {
        let nodes: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        m.add_pending(&id, 10, &nodes, "u@m").unwrap();
        let c = FileCommitIn {
            path: collective_core::validate_path(path).unwrap(),
            size: 10,
            mode: 0o644,
            mtime_ms: 0,
            chunks: vec![ChunkRef {
                id: id.0,
                offset: 0,
                size: 10,
            }],
            stored_on: vec![nodes],
            parents: true,
            replicas: 2,
            strategy: collective_core::Strategy::Media,
            seals: vec![None],
            reads_datastore: true,
            reads_file: true,
        };
        m.commit_files(&[c], "u@m", 1).unwrap();
    }

    #[test]
    fn replicas_change_and_totals_follow() {
        let m = store("replicas");
        let id = ChunkId([1; 32]);
        commit(&m, "/a", id, &["n1", "n2"]);
        assert_eq!(m.totals().unwrap().physical_bytes, 20);
        let now = m.change_replicas(&id, &["n3".into()], &["n1".into()]).unwrap().unwrap();
        assert_eq!(now, vec!["n2", "n3"]);
        assert_eq!(m.totals().unwrap().physical_bytes, 20);
        m.change_replicas(&id, &[], &["n2".into()]).unwrap();
        assert_eq!(m.totals().unwrap().physical_bytes, 10);
        assert_eq!(m.chunk(&id).unwrap().unwrap().want, 2);
        assert!(m.change_replicas(&ChunkId([9; 32]), &["x".into()], &[]).unwrap().is_none());
    }

    #[test]
    fn only_chunks_unreferenced_for_the_whole_grace_period_are_collected() {
        let m = store("gc");
        let (a, b) = (ChunkId([1; 32]), ChunkId([2; 32]));
        commit(&m, "/a", a, &["n1"]);
        commit(&m, "/b", b, &["n1"]);
        // Still referenced: kept.
        assert!(m.collect_chunk(&a, u64::MAX).unwrap().is_none());
        m.remove(&collective_core::validate_path("/a").unwrap(), false, "u@m").unwrap();
        // Unreferenced only now: not before the cutoff.
        assert!(m.collect_chunk(&a, 1).unwrap().is_none());
        // A reuse restarts the clock.
        let since = m.chunk(&a).unwrap().unwrap().unreferenced_since_ms;
        std::thread::sleep(std::time::Duration::from_millis(5));
        m.touch_unreferenced(&a).unwrap();
        assert!(m.collect_chunk(&a, since).unwrap().is_none());
        let rec = m.collect_chunk(&a, u64::MAX).unwrap().unwrap();
        assert_eq!(rec.replicas, vec!["n1"]);
        assert!(m.chunk(&a).unwrap().is_none());
        let t = m.totals().unwrap();
        assert_eq!((t.unique_chunks, t.unique_bytes, t.physical_bytes), (1, 10, 10));
    }

    #[test]
    fn draining_marks_persist_and_removing_a_node_forgets_its_copies() {
        let m = store("drain");
        let id = ChunkId([3; 32]);
        commit(&m, "/a", id, &["n1", "n2"]);
        m.set_draining("n1", true).unwrap();
        assert_eq!(m.draining().unwrap(), vec!["n1"]);
        assert_eq!(m.remove_node("n1").unwrap(), 1);
        assert!(m.draining().unwrap().is_empty());
        assert_eq!(m.chunk(&id).unwrap().unwrap().replicas, vec!["n2"]);
        assert!(m.was_removed("n1").unwrap() && !m.was_removed("n2").unwrap());
        m.forget_removal("n1").unwrap();
        assert!(!m.was_removed("n1").unwrap());
    }

    #[test]
    fn abandoned_uploads_are_dropped_with_the_nodes_to_clean() {
        let m = store("pending");
        let id = ChunkId([4; 32]);
        m.add_pending(&id, 10, &["n1".into(), "n2".into()], "u").unwrap();
        assert_eq!(m.stale_pending(u64::MAX, 10).unwrap().len(), 1);
        assert!(m.drop_pending(&id, 0).unwrap().is_empty(), "renewed after the cutoff: kept");
        let mut nodes = m.drop_pending(&id, u64::MAX).unwrap();
        nodes.sort();
        assert_eq!(nodes, vec!["n1", "n2"]);
        assert!(!m.is_pending(&id).unwrap());
    }
}
