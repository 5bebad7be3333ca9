//! Changes to the layout of a whole store, run once when an older store opens. Changes to
//! single records are `Record::upgrade`; these are the ones that need more than one record.

use std::collections::HashMap;

use collective_core::Strategy;

use crate::MetaError;
use crate::access::DatastoreRecord;
use crate::engine::{Engine, Table};
use crate::records::{ChunkRecord, Inode, Manifest, ROOT_INODE, ScopeRecord, decode, encode, read_u64, scope_key};

/// Schema 3 to 4: the bytes hosted for other members count each copy (a chunk on two of
/// our nodes counts twice), as the quota now does. Safe to run again.
pub(crate) fn hosted_total(engine: &Engine) -> Result<(), MetaError> {
    let mut total = 0u64;
    for kv in engine.scan_from(Table::Hosted, &[]) {
        let (_, v) = kv?;
        let rec: crate::hosting::HostedRecord = decode(&v)?;
        total = total.saturating_add(rec.size.saturating_mul(rec.nodes.len() as u64));
    }
    engine.insert(Table::Meta, crate::hosting::HOSTED_TOTAL, total.to_be_bytes().to_vec())?;
    Ok(())
}

/// Schema 1 to 2: every chunk record learns the strategy of the datastores whose files
/// reference it (the widest, when several do). Chunks outside any datastore stay `media`.
/// Safe to run again: it computes everything from the manifests.
pub(crate) fn chunk_strategies(engine: &Engine) -> Result<(), MetaError> {
    let mut strategy_of: HashMap<String, Strategy> = HashMap::new();
    let mut wanted: HashMap<[u8; 32], Strategy> = HashMap::new();
    each_manifest(engine, "filling in chunk strategies", |top, manifest| {
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
        for c in manifest.0 {
            let e = wanted.entry(c.id).or_insert(Strategy::Media);
            *e = e.wider(strategy);
        }
        Ok(())
    })?;
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

/// Schema 2 to 3: seals and references per datastore and chunk. Each chunk's references
/// are counted per scope (its files' datastore, or "" outside any) from the manifests;
/// each scope takes the member-wide seal the chunk had, which is what its files were read
/// with until now. The member-wide seals are then dropped. Safe to run again: it
/// computes everything from the manifests (and keeps a seal already moved).
pub(crate) fn chunk_scopes(engine: &Engine) -> Result<(), MetaError> {
    let mut scope_of: HashMap<String, String> = HashMap::new();
    let mut refs: HashMap<([u8; 32], String), u64> = HashMap::new();
    each_manifest(engine, "moving seals to datastores", |top, manifest| {
        let scope = match scope_of.get(&top) {
            Some(s) => s.clone(),
            None => {
                let s = if engine.get(Table::Datastores, top.as_bytes())?.is_some() {
                    top.clone()
                } else {
                    String::new()
                };
                scope_of.insert(top, s.clone());
                s
            }
        };
        for c in manifest.0 {
            *refs.entry((c.id, scope.clone())).or_default() += 1;
        }
        Ok(())
    })?;
    for ((id, scope), n) in &refs {
        let key = scope_key(id, scope);
        let seal = match engine.get(Table::ChunkScopes, &key)? {
            Some(v) => decode::<ScopeRecord>(&v)?.seal,
            None => engine.get(Table::ChunkSeals, id)?.unwrap_or_default(),
        };
        engine.insert(Table::ChunkScopes, &key, encode(&ScopeRecord { refs: *n, seal }))?;
    }
    let old: Vec<Vec<u8>> = engine
        .scan_from(Table::ChunkSeals, &[])
        .map(|kv| kv.map(|(k, _)| k))
        .collect::<Result<_, _>>()?;
    for k in old {
        engine.remove(Table::ChunkSeals, &k)?;
    }
    tracing::debug!(scopes = refs.len(), "seals moved to their datastores");
    Ok(())
}

/// Calls `f` with every manifest and the top-level name its file lives under. A manifest
/// whose inode or parents are missing is damage `check` reports; it must not keep the store
/// from opening, so it is skipped with a warning saying `while`.
fn each_manifest(engine: &Engine, while_: &str, mut f: impl FnMut(String, Manifest) -> Result<(), MetaError>) -> Result<(), MetaError> {
    let mut top_of: HashMap<u64, String> = HashMap::new();
    for kv in engine.scan_from(Table::Manifests, &[]) {
        let (k, v) = kv?;
        let ino = read_u64(&k)?;
        match top_level(engine, ino, &mut top_of) {
            Ok(top) => f(top, decode::<Manifest>(&v)?)?,
            Err(e) => tracing::warn!(inode = ino, "skipping a manifest while {while_}: {e}"),
        }
    }
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

    #[test]
    fn a_schema_2_store_opens_with_each_datastore_counting_its_chunks_and_keeping_the_old_seal() {
        let (m, dir) = store("migrate-scopes");
        datastore(&m, "vault", Strategy::Backup);
        datastore(&m, "photos", Strategy::Media);
        commit(&m, "/vault/a", &[b"sealed", b"shared"]).unwrap();
        commit(&m, "/vault/b", &[b"shared"]).unwrap();
        commit(&m, "/photos/c", &[b"shared"]).unwrap();
        commit(&m, "/loose", &[b"shared"]).unwrap();
        // Back to schema 2: one seal per chunk for the whole member, no per-datastore counts.
        let sealed = ChunkId::of(b"sealed");
        let keys: Vec<Vec<u8>> = m.engine.scan_from(Table::ChunkScopes, &[]).map(|kv| kv.unwrap().0).collect();
        for k in keys {
            m.engine.remove(Table::ChunkScopes, &k).unwrap();
        }
        m.engine.insert(Table::ChunkSeals, sealed.as_bytes(), vec![7; 48]).unwrap();
        m.engine.insert(Table::Meta, b"schema", 2u64.to_be_bytes().to_vec()).unwrap();
        m.engine.flush().unwrap();
        drop(m);

        let m = crate::namespace::tests::reopen(&dir);
        let count = |id: &[u8], scope: &str| {
            m.engine
                .get(Table::ChunkScopes, &scope_key(&ChunkId::of(id).0, scope))
                .unwrap()
                .map(|v| decode::<ScopeRecord>(&v).unwrap().refs)
        };
        assert_eq!(count(b"shared", "vault"), Some(2));
        assert_eq!(count(b"shared", "photos"), Some(1));
        assert_eq!(count(b"shared", ""), Some(1), "files outside datastores count together");
        assert_eq!(m.seal_in("vault", &sealed).unwrap(), Some([7; 48]));
        assert_eq!(
            m.engine.scan_from(Table::ChunkSeals, &[]).count(),
            0,
            "the member-wide seals are gone"
        );
        let schema = m.engine.get(Table::Meta, b"schema").unwrap().unwrap();
        assert_eq!(read_u64(&schema).unwrap(), u64::from(SCHEMA_VERSION));
        assert!(m.check().unwrap().is_consistent());
        drop(m);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
