//! Changes to the layout of a whole store, run once when an older store opens. Changes to
//! single records are `Record::upgrade`; these are the ones that need more than one record.

use std::collections::HashMap;

use collective_core::Strategy;

use crate::MetaError;
use crate::access::DatastoreRecord;
use crate::engine::{Engine, Table};
use crate::records::{ChunkRecord, Inode, Manifest, ROOT_INODE, decode, encode, read_u64};

/// Schema 1 to 2: every chunk record learns the strategy of the datastores whose files
/// reference it (the widest, when several do). Chunks outside any datastore stay `media`.
/// Safe to run again: it computes everything from the manifests.
pub(crate) fn chunk_strategies(engine: &Engine) -> Result<(), MetaError> {
    let mut top_of: HashMap<u64, String> = HashMap::new();
    let mut strategy_of: HashMap<String, Strategy> = HashMap::new();
    let mut wanted: HashMap<[u8; 32], Strategy> = HashMap::new();
    for kv in engine.scan_from(Table::Manifests, &[]) {
        let (k, v) = kv?;
        let ino = read_u64(&k)?;
        // A manifest whose inode or parents are missing is damage `check` reports; it must
        // not keep the store from opening.
        let top = match top_level(engine, ino, &mut top_of) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(inode = ino, "skipping a manifest while filling in chunk strategies: {e}");
                continue;
            }
        };
        let strategy = match strategy_of.get(&top) {
            Some(s) => *s,
            None => {
                let s = match engine.get(Table::Datastores, top.as_bytes())? {
                    Some(d) => decode::<DatastoreRecord>(&d)?.strategy,
                    None => Strategy::Media,
                };
                strategy_of.insert(top.clone(), s);
                s
            }
        };
        for c in decode::<Manifest>(&v)?.0 {
            let e = wanted.entry(c.id).or_insert(Strategy::Media);
            *e = e.wider(strategy);
        }
    }
    let mut changed = 0u64;
    for (id, strategy) in wanted {
        let Some(v) = engine.get(Table::Chunks, &id)? else { continue };
        let mut rec: ChunkRecord = decode(&v)?;
        rec.strategy = strategy;
        engine.insert(Table::Chunks, &id, encode(&rec))?;
        changed += 1;
    }
    // Records no file references (waiting for collection) are rewritten in the current
    // format too, as `media`: nothing will repair them.
    let rest: Vec<(Vec<u8>, Vec<u8>)> = engine
        .scan_from(Table::Chunks, &[])
        .filter(|kv| {
            kv.as_ref()
                .map_or(true, |(_, v)| v.first() != Some(&<ChunkRecord as crate::records::Record>::FORMAT))
        })
        .collect::<Result<_, _>>()?;
    for (k, v) in rest {
        let rec: ChunkRecord = decode(&v)?;
        engine.insert(Table::Chunks, &k, encode(&rec))?;
    }
    tracing::debug!(chunks = changed, "chunk strategies filled in");
    Ok(())
}

/// The name of the top-level directory `ino` lives under ("" for the root itself).
fn top_level(engine: &Engine, ino: u64, memo: &mut HashMap<u64, String>) -> Result<String, MetaError> {
    let mut path = vec![ino];
    let mut at = ino;
    let top = loop {
        if let Some(t) = memo.get(&at) {
            break t.clone();
        }
        let raw = engine
            .get(Table::Inodes, &at.to_be_bytes())?
            .ok_or_else(|| MetaError::Corrupt(format!("inode {at} is referenced but missing")))?;
        let node: Inode = decode(&raw)?;
        if at == ROOT_INODE {
            break String::new();
        }
        if node.parent == ROOT_INODE {
            break node.name;
        }
        if path.len() > 4096 {
            return Err(MetaError::Corrupt(format!("inode {ino} has no way up to the root")));
        }
        at = node.parent;
        path.push(at);
    };
    for i in path {
        memo.insert(i, top.clone());
    }
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::tests::{commit, p, store};
    use crate::records::{Record, encode_as};
    use crate::{MetaStore, SCHEMA_VERSION};
    use collective_core::ChunkId;
    use serde::Serialize;

    /// A chunk record as schema 1 wrote it (format 2, no strategy).
    #[derive(Serialize)]
    struct V2 {
        size: u64,
        refs: u64,
        replicas: Vec<String>,
        unreferenced_since_ms: u64,
        want: u32,
    }

    fn datastore(m: &MetaStore, name: &str, strategy: Strategy) {
        let rec = DatastoreRecord {
            name: name.into(),
            owner: "u@a.collective.local".into(),
            strategy,
            replicas: 2,
            created_ms: 0,
            secret: [1; 32],
        };
        m.create_datastore(&p(&format!("/{name}")), &rec).unwrap();
    }

    #[test]
    fn a_schema_1_store_opens_with_each_chunk_carrying_the_widest_strategy_of_the_files_using_it() {
        let (m, dir) = store("migrate-strategies");
        datastore(&m, "vault", Strategy::Backup);
        datastore(&m, "mixed", Strategy::Hybrid);
        commit(&m, "/vault/deep/a", &[b"only-backup", b"shared"]).unwrap();
        commit(&m, "/mixed/b", &[b"only-hybrid", b"shared"]).unwrap();
        commit(&m, "/loose", &[b"only-media"]).unwrap();
        // Turn the store back into schema 1: chunk records of format 2.
        for kv in m.engine.scan_from(Table::Chunks, &[]).collect::<Vec<_>>() {
            let (k, v) = kv.unwrap();
            let rec: ChunkRecord = decode(&v).unwrap();
            let old = V2 {
                size: rec.size,
                refs: rec.refs,
                replicas: rec.replicas,
                unreferenced_since_ms: rec.unreferenced_since_ms,
                want: rec.want,
            };
            m.engine.insert(Table::Chunks, &k, encode_as(2, &old)).unwrap();
        }
        m.engine.insert(Table::Meta, b"schema", 1u64.to_be_bytes().to_vec()).unwrap();
        m.engine.flush().unwrap();
        drop(m);

        let m = crate::namespace::tests::reopen(&dir);
        let strategy = |d: &[u8]| m.chunk(&ChunkId::of(d)).unwrap().unwrap().strategy;
        assert_eq!(strategy(b"only-backup"), Strategy::Backup);
        assert_eq!(strategy(b"only-hybrid"), Strategy::Hybrid);
        assert_eq!(strategy(b"shared"), Strategy::Backup, "the widest of backup and hybrid");
        assert_eq!(strategy(b"only-media"), Strategy::Media);
        let schema = m.engine.get(Table::Meta, b"schema").unwrap().unwrap();
        assert_eq!(read_u64(&schema).unwrap(), u64::from(SCHEMA_VERSION));
        for kv in m.engine.scan_from(Table::Chunks, &[]) {
            assert_eq!(
                kv.unwrap().1[0],
                ChunkRecord::FORMAT,
                "every record rewritten in the current format"
            );
        }
        assert!(m.check().unwrap().is_consistent());
        drop(m);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
