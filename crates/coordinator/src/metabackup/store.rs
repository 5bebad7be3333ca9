//! Storing backup pieces: a file cut into content-defined chunks, each sealed and placed
//! like a `backup` datastore's (other members first), uploaded by the coordinator itself,
//! and the chunks no kept backup names any more released.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use collective_core::{ChunkId, Run};
use collective_dataplane::{ChunkClient, NodeTarget};
use collective_proto::v1::federation_client::FederationClient;
use collective_proto::v1::{
    BackupBlob, BackupChunk, BackupManifest, BackupProgress, DeleteChunksRequest, NodeAddr, ReleaseChunksRequest, TokenOp,
};
use prost::Message;

use super::manifest_chunks;
use crate::hosting::{Policy, member_of};
use crate::state::State;

/// Content-defined chunk sizes of backup pieces: small, so a snapshot that changed in a
/// few places shares most chunks with the one before.
const MIN_CHUNK: usize = 16 << 10;
pub(super) const AVG_CHUNK: usize = 64 << 10;
const MAX_CHUNK: usize = 256 << 10;
/// Chunks placed per round of placement, and cut ahead of it at most: what a backup holds
/// in memory (a few MiB whatever the store's size).
const BATCH: usize = 32;
/// Uploads in flight at once.
const PARALLEL: usize = 4;
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

const CHUNK_PREFIX: &[u8] = b"c/";
const MANIFEST_PREFIX: &[u8] = b"m/";

pub(crate) fn chunk_key(id: &ChunkId) -> Vec<u8> {
    let mut k = CHUNK_PREFIX.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn manifest_key(id: &ChunkId) -> Vec<u8> {
    let mut k = MANIFEST_PREFIX.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// One sealed piece on its way to the nodes.
struct Piece {
    id: ChunkId,
    seal: Vec<u8>,
    data: Bytes,
}

/// Cuts `path` into sealed chunks, handing them on one at a time; returns the plaintext's
/// length and BLAKE3 hash. Runs on a blocking thread.
fn cut(path: &Path, key: [u8; 32], tx: tokio::sync::mpsc::Sender<Piece>) -> Result<(u64, [u8; 32]), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    for c in fastcdc::v2020::StreamCDC::new(file, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let c = c.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        hasher.update(&c.data);
        total += c.length as u64;
        let mut data = c.data;
        let seal = collective_pki::sealing::seal(&key, &mut data).map_err(|e| e.to_string())?;
        let piece = Piece {
            id: ChunkId::of(&data),
            seal: seal.to_vec(),
            data: Bytes::from(data),
        };
        if tx.blocking_send(piece).is_err() {
            return Err("the backup stopped".into());
        }
    }
    Ok((total, *hasher.finalize().as_bytes()))
}

/// The sealed chunks `path` is cut into: (id, stored size), in order.
pub(super) fn cut_ids(path: &Path, key: [u8; 32]) -> Result<Vec<(ChunkId, u64)>, String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(BATCH);
    let p = path.to_path_buf();
    let cutter = std::thread::spawn(move || cut(&p, key, tx));
    let mut out = Vec::new();
    while let Some(piece) = rx.blocking_recv() {
        out.push((piece.id, piece.data.len() as u64));
    }
    cutter.join().map_err(|_| "the chunker failed".to_string())??;
    Ok(out)
}

impl State {
    /// The QUIC client the coordinator uploads backup chunks with (made once).
    async fn backup_client(&self) -> Result<Arc<ChunkClient>, String> {
        self.backup
            .client
            .get_or_try_init(|| async { ChunkClient::new(&self.identity).map(Arc::new).map_err(|e| e.to_string()) })
            .await
            .cloned()
    }

    /// Stores the file at `path` as sealed chunks; returns its blob (chunks, length, hash).
    pub(super) async fn store_blob(self: &Arc<Self>, path: &Path, key: &[u8; 32], run: &Run<'_>) -> Result<BackupBlob, String> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(BATCH);
        let (p, k) = (path.to_path_buf(), *key);
        let cutter = tokio::task::spawn_blocking(move || cut(&p, k, tx));
        let mut blob = BackupBlob::default();
        let mut batch: Vec<Piece> = Vec::with_capacity(BATCH);
        let mut failed: Option<String> = None;
        while let Some(piece) = rx.recv().await {
            batch.push(piece);
            if batch.len() >= BATCH
                && let Err(e) = self.store_pieces(std::mem::take(&mut batch), &mut blob, run).await
            {
                failed = Some(e);
                break;
            }
        }
        drop(rx);
        if failed.is_none() && !batch.is_empty() {
            failed = self.store_pieces(batch, &mut blob, run).await.err();
        }
        let cut = cutter.await.map_err(|e| e.to_string())?;
        if let Some(e) = failed {
            return Err(e);
        }
        let (length, hash) = cut?;
        blob.length = length;
        blob.hash = hash.to_vec().into();
        Ok(blob)
    }

    /// Stores an already sealed piece whole (a manifest); returns its id and nodes.
    pub(super) async fn store_sealed(self: &Arc<Self>, sealed: Vec<u8>, run: &Run<'_>) -> Result<(ChunkId, Vec<String>), String> {
        let piece = Piece {
            id: ChunkId::of(&sealed),
            seal: vec![],
            data: Bytes::from(sealed),
        };
        let id = piece.id;
        let mut blob = BackupBlob::default();
        self.store_pieces(vec![piece], &mut blob, run).await?;
        let nodes = blob.chunks.into_iter().next().map(|c| c.nodes).unwrap_or_default();
        Ok((id, nodes))
    }

    /// Live copies of a backup chunk we stored before.
    fn live_copies(&self, c: &BackupChunk) -> usize {
        c.nodes
            .iter()
            .filter(|n| matches!(self.liveness(n), crate::upkeep::Live::Up | crate::upkeep::Live::Waiting))
            .count()
    }

    /// Places and uploads what of `pieces` is not stored well enough already; adds every
    /// piece to `blob`, in order.
    async fn store_pieces(self: &Arc<Self>, pieces: Vec<Piece>, blob: &mut BackupBlob, run: &Run<'_>) -> Result<(), String> {
        let want = self.backup_replicas();
        let places = self.backup_places().max(1);
        // What is stored already with enough live copies is named again, not sent again.
        let mut known: Vec<Option<BackupChunk>> = Vec::with_capacity(pieces.len());
        for p in &pieces {
            let rec = match self.meta.backup_get(&chunk_key(&p.id)).map_err(|e| e.to_string())? {
                Some(v) => BackupChunk::decode(v.as_slice()).ok(),
                None => None,
            };
            known.push(rec.filter(|c| self.live_copies(c) >= want.min(places)));
        }
        let todo: Vec<usize> = (0..pieces.len()).filter(|i| known[*i].is_none()).collect();
        if !todo.is_empty() {
            let chunks: Vec<(ChunkId, u64)> = todo.iter().map(|&i| (pieces[i].id, pieces[i].data.len() as u64)).collect();
            let policy = Policy {
                replicas: want,
                spread: self.links.fed().is_some(),
                datastore: None,
            };
            let placed = self
                .spread(&chunks, &policy, &self.principal, true)
                .await
                .map_err(|s| format!("no place for the backup's chunks: {}", s.message()))?;
            let client = self.backup_client().await?;
            let pace = crate::throttle::Pacer::new(self.backup.settings.rate);
            let uploads: Vec<_> = todo
                .into_iter()
                .zip(placed)
                .map(|(i, (local, remote))| {
                    let piece = &pieces[i];
                    let client = client.clone();
                    let pace = &pace;
                    async move {
                        let size = piece.data.len() as u64;
                        let token = self
                            .signer
                            .sign(TokenOp::Put, &piece.id, &local, &self.principal, size, self.token_ttl);
                        let mut targets: Vec<NodeAddr> = self.nodes.addrs(&local);
                        targets.extend(remote);
                        // Throttle: each chunk books its share of the rate, every copy counted.
                        pace.wait(size * targets.len() as u64).await;
                        let sends = targets.into_iter().map(|t| {
                            let client = client.clone();
                            let token = if t.token.is_empty() { token.clone() } else { t.token.to_vec() };
                            let data = [piece.data.clone()];
                            async move {
                                let addr = t.quic_addr.parse().map_err(|_| format!("{} has no usable address", t.node))?;
                                let target = NodeTarget {
                                    node: t.node.clone(),
                                    addr,
                                };
                                match tokio::time::timeout(UPLOAD_TIMEOUT, client.put(&target, &piece.id, &data, &token)).await {
                                    Ok(Ok(())) => Ok(t.node.clone()),
                                    Ok(Err(e)) => Err(format!("{}: {e}", t.node)),
                                    Err(_) => Err(format!("{}: no answer within {UPLOAD_TIMEOUT:?}", t.node)),
                                }
                            }
                        });
                        let mut stored = Vec::new();
                        let mut errors = Vec::new();
                        for r in futures::future::join_all(sends).await {
                            match r {
                                Ok(n) => stored.push(n),
                                Err(e) => errors.push(e),
                            }
                        }
                        if stored.is_empty() {
                            return Err(format!(
                                "chunk {} of the backup could not be stored anywhere ({})",
                                piece.id.short(),
                                errors.join("; ")
                            ));
                        }
                        if !errors.is_empty() {
                            tracing::debug!(chunk = %piece.id.short(), "some copies of a backup chunk failed: {}", errors.join("; "));
                        }
                        Ok((i, stored))
                    }
                })
                .collect();
            let mut done = futures::stream::iter(uploads).buffer_unordered(PARALLEL);
            use futures::StreamExt;
            while let Some(r) = done.next().await {
                let (i, stored) = r?;
                let p = &pieces[i];
                self.note_own_copies(&p.id, p.data.len() as u64, &stored)?;
                let rec = BackupChunk {
                    id: p.id.0.to_vec().into(),
                    size: p.data.len() as u64,
                    seal: p.seal.clone().into(),
                    nodes: stored,
                };
                self.meta
                    .backup_put(&chunk_key(&p.id), rec.encode_to_vec())
                    .map_err(|e| e.to_string())?;
                known[i] = Some(rec);
                run.advance(1);
            }
        }
        for (p, rec) in pieces.iter().zip(known) {
            let mut rec = rec.ok_or_else(|| format!("chunk {} of the backup was not stored", p.id.short()))?;
            // Same bytes, same seal: the piece's own is the one to name.
            rec.seal = p.seal.clone().into();
            blob.chunks.push(rec);
        }
        Ok(())
    }

    /// Our own nodes' copies of a backup chunk are hosted under `<member>#metadata`, so
    /// reconciling and collecting unknown chunks leave them alone.
    fn note_own_copies(&self, id: &ChunkId, size: u64, stored: &[String]) -> Result<(), String> {
        let guest = collective_meta::backup_guest(&self.domain);
        for node in stored.iter().filter(|n| member_of(n) == self.domain) {
            let place = |_: &ChunkId, _: u64, _: &[String], prefer: &str| Ok(prefer.to_string());
            self.meta
                .host_chunks(&guest, &[(*id, size)], std::slice::from_ref(node), u64::MAX, &place)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Asks every member holding copies of the newest backup's chunks which it still has,
    /// and forgets the others: a host that lost them (a disk, a restore of its own
    /// metadata) or dropped them makes the next backup a snapshot that places them again.
    pub(super) async fn audit_backup_copies(&self, m: &BackupManifest) {
        let mut asks: BTreeMap<String, Vec<(ChunkId, u64)>> = BTreeMap::new();
        for c in manifest_chunks(m) {
            let Some(id) = ChunkId::from_slice(&c.id) else { continue };
            let mut seen = HashSet::new();
            for n in &c.nodes {
                let member = member_of(n);
                if member != self.domain && seen.insert(member.to_string()) {
                    asks.entry(member.to_string()).or_default().push((id, c.size));
                }
            }
        }
        for (member, chunks) in asks {
            if !self.member_up(&member) {
                continue;
            }
            let Ok(channel) = self.links.channel(&member) else { continue };
            for batch in chunks.chunks(256) {
                let req = collective_proto::v1::ReadTokensRequest {
                    user: self.principal.clone(),
                    chunks: batch
                        .iter()
                        .map(|(id, size)| collective_proto::v1::ChunkDesc {
                            id: id.0.to_vec().into(),
                            size: *size,
                        })
                        .collect(),
                    metadata_backup: true,
                };
                let answer = tokio::time::timeout(Duration::from_secs(10), FederationClient::new(channel.clone()).read_tokens(req)).await;
                let Ok(Ok(r)) = answer else { break };
                for ((id, _), hosted) in batch.iter().zip(r.into_inner().chunks) {
                    let held: HashSet<String> = hosted.replicas.into_iter().map(|a| a.node).collect();
                    let key = chunk_key(id);
                    let Ok(Some(v)) = self.meta.backup_get(&key) else { continue };
                    let Ok(mut rec) = BackupChunk::decode(v.as_slice()) else { continue };
                    let before = rec.nodes.len();
                    rec.nodes.retain(|n| member_of(n) != member || held.contains(n));
                    if rec.nodes.len() != before {
                        tracing::warn!(%member, chunk = %id.short(), "a copy of a metadata backup chunk is gone; the next backup places it again");
                        let _ = self.meta.backup_put(&key, rec.encode_to_vec());
                    }
                }
            }
        }
    }

    /// Keeps a manifest we stored (plaintext, in our own store) until its head is dropped.
    pub(super) fn keep_manifest(&self, id: &ChunkId, m: &BackupManifest) -> Result<(), String> {
        self.meta
            .backup_put(&manifest_key(id), m.encode_to_vec())
            .map_err(|e| e.to_string())
    }

    /// Releases the chunks no kept head names any more: other members' copies through
    /// their coordinators, ours from our nodes. Failures are retried after the next backup.
    pub(super) async fn collect_backup_chunks(&self, progress: &BackupProgress) {
        let kept_heads: HashSet<Vec<u8>> = progress.heads.iter().map(|h| h.manifest.to_vec()).collect();
        let mut needed: HashSet<Vec<u8>> = kept_heads.clone();
        let mut dropped_manifests = Vec::new();
        for r in self.meta.backup_scan(MANIFEST_PREFIX) {
            let Ok((k, v)) = r else { continue };
            let id = k[MANIFEST_PREFIX.len()..].to_vec();
            if !kept_heads.contains(&id) {
                dropped_manifests.push(k);
                continue;
            }
            if let Ok(m) = BackupManifest::decode(v.as_slice()) {
                needed.extend(manifest_chunks(&m).map(|c| c.id.to_vec()));
            }
        }
        let mut remote: BTreeMap<String, Vec<ChunkId>> = BTreeMap::new();
        let mut local: BTreeMap<String, Vec<ChunkId>> = BTreeMap::new();
        let mut gone: Vec<(Vec<u8>, ChunkId)> = Vec::new();
        for r in self.meta.backup_scan(CHUNK_PREFIX) {
            let Ok((k, v)) = r else { continue };
            let raw = &k[CHUNK_PREFIX.len()..];
            if needed.contains(raw) {
                continue;
            }
            let (Some(id), Ok(rec)) = (ChunkId::from_slice(raw), BackupChunk::decode(v.as_slice())) else {
                continue;
            };
            for n in &rec.nodes {
                let m = member_of(n);
                if m == self.domain {
                    local.entry(n.clone()).or_default().push(id);
                } else {
                    let e = remote.entry(m.to_string()).or_default();
                    if e.last() != Some(&id) {
                        e.push(id);
                    }
                }
            }
            gone.push((k, id));
        }
        if gone.is_empty() && dropped_manifests.is_empty() {
            return;
        }
        // What each release reached: members that released their copies, our nodes that
        // deleted theirs (or are down: they are forgotten). A record keeps only the copies
        // not released, so a later try asks only those.
        let mut released_members = HashSet::new();
        let mut released_nodes = HashSet::new();
        for (member, ids) in remote {
            // A member that is down is not waited for: asked again after a later backup.
            if !self.member_up(&member) {
                continue;
            }
            let Ok(channel) = self.links.channel(&member) else { continue };
            let req = ReleaseChunksRequest {
                ids: ids.iter().map(|i| i.0.to_vec().into()).collect(),
                metadata_backup: true,
            };
            match tokio::time::timeout(Duration::from_secs(10), FederationClient::new(channel).release_chunks(req)).await {
                Ok(Ok(_)) => {
                    released_members.insert(member);
                }
                Ok(Err(s)) => tracing::debug!(%member, "releasing backup chunks failed: {}", s.message()),
                Err(_) => tracing::debug!(%member, "releasing backup chunks timed out"),
            }
        }
        let guest = collective_meta::backup_guest(&self.domain);
        for (node, ids) in local {
            if let Err(e) = self.meta.release_hosted(&guest, &ids) {
                tracing::debug!("cannot release backup chunks: {e}");
            }
            // A node that is down keeps them; should it come back, they are chunks its
            // coordinator does not know (kept, and listed by `repair status`).
            let up = self.nodes.lock().get(&node).is_some_and(|e| self.nodes.is_up(e));
            if !up {
                released_nodes.insert(node);
                continue;
            }
            let Ok(mut control) = self.nodes.control(&node) else { continue };
            let mut req = tonic::Request::new(DeleteChunksRequest {
                chunk_ids: ids.iter().map(|i| i.0.to_vec().into()).collect(),
            });
            req.set_timeout(crate::upkeep::CONTROL_TIMEOUT);
            if control.delete_chunks(req).await.is_ok() {
                released_nodes.insert(node);
            }
        }
        for (k, _) in gone {
            let Ok(Some(v)) = self.meta.backup_get(&k) else { continue };
            let Ok(mut rec) = BackupChunk::decode(v.as_slice()) else { continue };
            rec.nodes
                .retain(|n| !released_nodes.contains(n) && !released_members.contains(member_of(n)));
            let _ = if rec.nodes.is_empty() {
                self.meta.backup_remove(&k)
            } else {
                self.meta.backup_put(&k, rec.encode_to_vec())
            };
        }
        for k in dropped_manifests {
            let _ = self.meta.backup_remove(&k);
        }
    }
}
