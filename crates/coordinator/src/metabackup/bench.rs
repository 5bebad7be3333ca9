//! `collective dev bench-metadata`: what the metadata backup costs for a namespace of a
//! given size, on a store of its own (no cluster): the time of a snapshot (the consistent
//! export, cut and sealed as the worker does; the upload is paced by
//! `metadata_backup_rate`), its size, and what one backup after a number of small changes
//! adds to the federation (the new chunks of its change segment and its manifest).

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use collective_core::{ChunkId, RemotePath, Strategy};
use collective_meta::{ChunkRef, FileCommitIn, MetaStore};
use collective_pki::RecoverySecret;
use collective_proto::v1::{BackupBlob, BackupChunk, BackupManifest};
use prost::Message;

use super::store::cut_ids;
use super::{CHUNK_PURPOSE, MANIFEST_PURPOSE};

/// The figures `make bench` records.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupBench {
    pub files: u64,
    /// A snapshot: export, cut and seal.
    pub meta_snapshot_s: f64,
    pub meta_snapshot_bytes: u64,
    pub meta_snapshot_chunks: u64,
    pub changes: u64,
    /// The next backup after `changes` small changes: new chunk bytes plus its manifest.
    pub meta_backup_delta_bytes: u64,
    pub meta_segment_bytes: u64,
    pub meta_manifest_bytes: u64,
}

const NODES: [&str; 2] = ["node-01@bench.collective.local", "node-02@bench.collective.local"];
const OWNER: &str = "bench@bench.collective.local";

fn path(p: &str) -> Result<RemotePath, String> {
    collective_core::validate_path(p).map_err(|e| e.to_string())
}

/// Commits files `from..to` (a few hundred bytes each, one chunk), 256 per transaction.
fn commit_range(meta: &MetaStore, from: u64, to: u64) -> Result<(), String> {
    let mut i = from;
    while i < to {
        let end = (i + 256).min(to);
        let mut batch = Vec::new();
        for n in i..end {
            let id = ChunkId::of(format!("bench file {n}").as_bytes());
            let size = 200 + n % 300;
            meta.add_pending(&id, size, &NODES.map(String::from), OWNER)
                .map_err(|e| e.to_string())?;
            batch.push(FileCommitIn {
                path: path(&format!("/bench/d{:03}/file-{n:06}.txt", n % 1000))?,
                size,
                mode: 0o644,
                mtime_ms: 1_700_000_000_000 + n as i64,
                chunks: vec![ChunkRef { id: id.0, offset: 0, size }],
                stored_on: vec![NODES.map(String::from).to_vec()],
                parents: true,
                replicas: 2,
                strategy: Strategy::Media,
                seals: vec![None],
                reads_datastore: true,
                reads_file: true,
            });
        }
        meta.commit_files(&batch, OWNER, 1).map_err(|e| e.to_string())?;
        i = end;
    }
    Ok(())
}

fn blob(chunks: &[(ChunkId, u64)]) -> BackupBlob {
    BackupBlob {
        chunks: chunks
            .iter()
            .map(|(id, size)| BackupChunk {
                id: id.0.to_vec().into(),
                size: *size,
                seal: vec![0u8; collective_pki::sealing::SEAL_LEN].into(),
                nodes: NODES.map(String::from).to_vec(),
            })
            .collect(),
        length: chunks.iter().map(|c| c.1).sum(),
        hash: vec![0u8; 32].into(),
        ..Default::default()
    }
}

/// Runs the benchmark in `dir` (made, and left for the caller to remove).
pub fn bench_backup(dir: &Path, files: u64, changes: u64) -> Result<BackupBench, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let meta = MetaStore::open(&dir.join("metadata")).map_err(|e| e.to_string())?;
    meta.keep_change_log(true).map_err(|e| e.to_string())?;
    commit_range(&meta, 0, files)?;
    let secret = RecoverySecret::generate().map_err(|e| e.to_string())?;
    let key = secret.derive(CHUNK_PURPOSE);

    let snap = dir.join("snapshot");
    let started = Instant::now();
    let out = std::fs::File::create(&snap).map_err(|e| e.to_string())?;
    let info = meta
        .export(std::io::BufWriter::with_capacity(1 << 20, out))
        .map_err(|e| e.to_string())?;
    let snapshot = cut_ids(&snap, key)?;
    let meta_snapshot_s = started.elapsed().as_secs_f64();
    meta.trim_log(info.seq).map_err(|e| e.to_string())?;

    // Small changes: half new files, half files removed.
    let added = changes / 2;
    commit_range(&meta, files, files + added)?;
    for n in 0..changes - added {
        let p = path(&format!("/bench/d{:03}/file-{:06}.txt", (n * 7) % 1000, n * 7))?;
        let _ = meta.remove(&p, false, OWNER);
    }
    let mark = meta.mark().map_err(|e| e.to_string())?;
    let seg = dir.join("segment");
    let out = std::fs::File::create(&seg).map_err(|e| e.to_string())?;
    let seg_info = meta
        .export_changes(info.seq, mark, std::io::BufWriter::with_capacity(1 << 20, out))
        .map_err(|e| e.to_string())?;
    let segment = cut_ids(&seg, key)?;
    let known: HashSet<ChunkId> = snapshot.iter().map(|c| c.0).collect();
    let new_bytes: u64 = segment.iter().filter(|c| !known.contains(&c.0)).map(|c| c.1).sum();
    let manifest = BackupManifest {
        member: "bench.collective.local".into(),
        seq: mark,
        created_ms: collective_core::unix_ms_now(),
        snapshot: Some(blob(&snapshot)),
        segments: vec![blob(&segment)],
    };
    let manifest_bytes = secret
        .seal_blob(MANIFEST_PURPOSE, &manifest.encode_to_vec())
        .map_err(|e| e.to_string())?
        .len() as u64;
    Ok(BackupBench {
        files,
        meta_snapshot_s,
        meta_snapshot_bytes: info.bytes,
        meta_snapshot_chunks: snapshot.len() as u64,
        changes,
        meta_backup_delta_bytes: new_bytes + manifest_bytes,
        meta_segment_bytes: seg_info.bytes,
        meta_manifest_bytes: manifest_bytes,
    })
}
