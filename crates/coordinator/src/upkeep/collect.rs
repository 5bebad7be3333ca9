//! Deleting copies: retiring replaced or surplus copies, garbage collection of
//! unreferenced chunks and abandoned uploads, and the unknown chunks an admin collects.

use super::*;

impl State {
    /// Forgets copies of a chunk and deletes them where they are.
    pub(super) async fn retire(&self, id: &ChunkId, nodes: &[String]) {
        match self.meta.change_replicas(id, &[], nodes) {
            Ok(_) => {
                self.upkeep.counters.trimmed.fetch_add(nodes.len() as u64, Ordering::Relaxed);
                self.delete_copies(id, nodes).await;
            }
            Err(e) => tracing::error!(chunk = %id.short(), "forgetting copies failed: {e}"),
        }
    }

    /// Deletes copies of chunks from our live nodes, and releases them on other members
    /// (which delete them and free the room). Copies on nodes that are down are deleted
    /// when those nodes come back (reconcile).
    pub(super) async fn delete_copies(&self, id: &ChunkId, nodes: &[String]) {
        let mut per_node: HashMap<String, Vec<ChunkId>> = HashMap::new();
        for n in nodes {
            per_node.entry(n.clone()).or_default().push(*id);
        }
        self.delete_many(per_node).await;
    }

    pub(crate) async fn delete_many(&self, per_node: HashMap<String, Vec<ChunkId>>) {
        let mut per_member: HashMap<String, Vec<ChunkId>> = HashMap::new();
        for (node, ids) in per_node {
            let member = member_of(&node).to_string();
            if member != self.domain {
                per_member.entry(member).or_default().extend(ids);
                continue;
            }
            let Ok(mut control) = self.nodes.control(&node) else { continue };
            if !self.nodes.lock().get(&node).is_some_and(|e| self.nodes.is_up(e)) {
                continue;
            }
            for batch in ids.chunks(DELETE_BATCH) {
                let req = DeleteChunksRequest {
                    chunk_ids: batch.iter().map(|i| i.0.to_vec().into()).collect(),
                };
                let mut req = tonic::Request::new(req);
                req.set_timeout(CONTROL_TIMEOUT);
                if let Err(s) = control.delete_chunks(req).await {
                    tracing::warn!(%node, "deleting chunks failed: {}", s.message());
                    break;
                }
            }
        }
        for (member, mut ids) in per_member {
            // A member still holding another copy of the chunk keeps it.
            ids.retain(|id| {
                self.meta
                    .chunk(id)
                    .ok()
                    .flatten()
                    .is_none_or(|rec| !rec.replicas.iter().any(|r| member_of(r) == member))
            });
            if ids.is_empty() {
                continue;
            }
            let Ok(channel) = self.links.channel(&member) else { continue };
            let req = ReleaseChunksRequest {
                ids: ids.iter().map(|i| i.0.to_vec().into()).collect(),
                metadata_backup: false,
            };
            match tokio::time::timeout(Duration::from_secs(10), FederationClient::new(channel).release_chunks(req)).await {
                Ok(Ok(_)) => self.links.elsewhere_changed(),
                Ok(Err(s)) => tracing::warn!(%member, "releasing hosted chunks failed: {}", s.message()),
                Err(_) => tracing::warn!(%member, "releasing hosted chunks timed out"),
            }
        }
    }

    /// Deletes chunks unreferenced for longer than the grace period.
    pub(super) async fn collect(&self, ids: Vec<ChunkId>, run: &collective_core::Run<'_>) {
        if ids.is_empty() {
            return;
        }
        let up = &self.upkeep;
        let cutoff = unix_ms_now().saturating_sub(up.settings.gc_grace.as_millis() as u64);
        let mut per_node: HashMap<String, Vec<ChunkId>> = HashMap::new();
        let (mut n, mut bytes) = (0u64, 0u64);
        for id in ids {
            // A planned upload may be about to reference it again.
            if self.meta.is_pending(&id).unwrap_or(true) {
                continue;
            }
            match self.meta.collect_chunk(&id, cutoff) {
                Ok(Some(rec)) => {
                    n += 1;
                    bytes += rec.size * rec.replicas.len() as u64;
                    for r in rec.replicas {
                        per_node.entry(r).or_default().push(id);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(chunk = %id.short(), "garbage collection failed: {e}"),
            }
            run.advance(1);
        }
        if let Err(e) = self.meta.flush().await {
            tracing::error!("flushing after garbage collection failed: {e}");
            run.fail(format!("flushing the metadata failed: {e}"));
            return;
        }
        self.delete_many(per_node).await;
        up.counters.collected_chunks.fetch_add(n, Ordering::Relaxed);
        up.counters.collected_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.collected_bytes.inc_by(bytes);
        if n > 0 {
            tracing::info!(chunks = n, bytes, "garbage-collected unreferenced chunks");
        }
    }

    /// Uploads planned long ago and never committed leave copies nobody references.
    pub(super) async fn collect_abandoned_uploads(&self) {
        let up = &self.upkeep;
        let age = (self.token_ttl * 2).max(up.settings.gc_grace);
        let cutoff = unix_ms_now().saturating_sub(age.as_millis() as u64);
        let Ok(stale) = self.meta.stale_pending(cutoff, 10_000) else {
            return;
        };
        let mut per_node: HashMap<String, Vec<ChunkId>> = HashMap::new();
        for (id, _) in stale {
            match self.meta.drop_pending(&id, cutoff) {
                Ok(nodes) => {
                    for n in nodes {
                        per_node.entry(n).or_default().push(id);
                    }
                }
                Err(e) => tracing::warn!(chunk = %id.short(), "dropping an abandoned upload failed: {e}"),
            }
        }
        if !per_node.is_empty() {
            self.delete_many(per_node).await;
        }
    }

    /// Copies we host for other members whose upload never came stop counting against the
    /// hosting quota: once per [`HOSTING_AUDIT_EVERY`], each node given a hosting token
    /// since the last pass (and whose token has long expired) lists what it holds, and the
    /// copies it lacks are dropped.
    pub(super) async fn audit_hosting(&self) {
        let up = &self.upkeep;
        let cutoff = self.hosting_cutoff();
        let after = {
            let audit = lock(&up.hosting_audit);
            if audit.1.is_some_and(|t| t.elapsed() < HOSTING_AUDIT_EVERY) {
                return;
            }
            audit.0
        };
        let nodes: BTreeSet<String> = self
            .meta
            .hosted_all()
            .filter_map(|r| r.ok())
            .filter(|(_, _, rec)| rec.created_ms > after && rec.created_ms <= cutoff)
            .flat_map(|(_, _, rec)| rec.nodes)
            .collect();
        let mut complete = true;
        for node in nodes {
            let held = match self.node_chunks(&node).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(%node, "cannot check hosted copies now: {e}");
                    complete = false;
                    continue;
                }
            };
            match self.meta.prune_hosted(&node, &held, after, cutoff) {
                Ok((0, _)) => {}
                Ok((copies, bytes)) => tracing::info!(
                    %node,
                    copies,
                    bytes,
                    "hosted copies whose upload never came no longer count against the hosting quota"
                ),
                Err(e) => {
                    tracing::warn!(%node, "checking hosted copies failed: {e}");
                    complete = false;
                }
            }
        }
        let mut audit = lock(&up.hosting_audit);
        if complete {
            audit.0 = cutoff;
        }
        audit.1 = Some(Instant::now());
    }

    /// Hosting tokens given before this (ms) have expired long enough ago that an upload
    /// started with one has finished or been cut.
    pub(super) fn hosting_cutoff(&self) -> u64 {
        unix_ms_now()
            .saturating_sub(self.token_ttl.as_millis() as u64)
            .saturating_sub(HOSTED_UPLOAD_MARGIN.as_millis() as u64)
    }

    /// Deletes the unknown chunks first seen at least `min_age` ago (never less than
    /// `gc_grace`) from our live nodes, after checking each is still unknown: nothing
    /// references, plans or hosts it. An admin's explicit decision (`repair collect-unknown`).
    pub(crate) async fn collect_unknown(&self, min_age: Duration, dry_run: bool) -> Result<CollectUnknownResponse, Error> {
        let age = min_age.max(self.upkeep.settings.gc_grace);
        let cutoff = unix_ms_now().saturating_sub(age.as_millis() as u64);
        let mut hosted: HashSet<(String, ChunkId)> = HashSet::new();
        for r in self.meta.hosted_all() {
            let (_, id, rec) = r?;
            hosted.extend(rec.nodes.into_iter().map(|n| (n, id)));
        }
        let still_unknown = |node: &str, id: &ChunkId| -> Result<bool, Error> {
            let pending = self.meta.is_pending(id)?;
            let known = self.meta.chunk(id)?.is_some();
            Ok(!pending && !known && !hosted.contains(&(node.to_string(), *id)))
        };
        let mut out = CollectUnknownResponse::default();
        let mut per_node: std::collections::BTreeMap<String, Vec<ChunkId>> = std::collections::BTreeMap::new();
        for r in self.meta.unknown_chunks() {
            let u = r?;
            if !still_unknown(&u.node, &u.id)? {
                // Known after all: the node's next reconcile decides about it like any copy.
                if !dry_run {
                    self.meta.forget_unknown(&u.node, &u.id)?;
                }
                out.kept_chunks += 1;
                continue;
            }
            let up = self.nodes.lock().get(&u.node).is_some_and(|e| self.nodes.is_up(e));
            if u.first_seen_ms > cutoff || !up {
                out.kept_chunks += 1;
                continue;
            }
            per_node.entry(u.node).or_default().push(u.id);
        }
        if dry_run {
            out.deleted_chunks = per_node.values().map(|v| v.len() as u64).sum();
            out.nodes = per_node.into_keys().collect();
            return Ok(out);
        }
        for (node, ids) in per_node {
            let mut control = match self.nodes.control(&node) {
                Ok(c) => c,
                Err(e) => {
                    out.failed_chunks += ids.len() as u64;
                    out.errors.push(e.to_string());
                    continue;
                }
            };
            let mut deleted_here = 0u64;
            for batch in ids.chunks(DELETE_BATCH) {
                // Checked again just before: an upload may have planned one meanwhile.
                let mut doomed = Vec::with_capacity(batch.len());
                for id in batch {
                    if still_unknown(&node, id)? {
                        doomed.push(*id);
                    } else {
                        out.kept_chunks += 1;
                    }
                }
                let mut req = tonic::Request::new(DeleteChunksRequest {
                    chunk_ids: doomed.iter().map(|i| i.0.to_vec().into()).collect(),
                });
                req.set_timeout(CONTROL_TIMEOUT);
                match control.delete_chunks(req).await {
                    Ok(_) => {
                        // Forgotten only once deleted: a failure leaves them recorded.
                        for id in &doomed {
                            self.meta.forget_unknown(&node, id)?;
                        }
                        deleted_here += doomed.len() as u64;
                    }
                    Err(s) => {
                        out.failed_chunks += doomed.len() as u64;
                        out.errors.push(format!("{node}: {}", s.message()));
                    }
                }
            }
            if deleted_here > 0 {
                out.deleted_chunks += deleted_here;
                out.nodes.push(node.clone());
                tracing::info!(%node, chunks = deleted_here, "deleted chunks unknown to the metadata, as an admin asked");
            }
        }
        self.meta.flush().await?;
        Ok(out)
    }
}
