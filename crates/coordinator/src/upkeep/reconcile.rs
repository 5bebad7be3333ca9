//! Reconciling a node that registers again: what it holds against what we list for it.

use super::*;

impl State {
    /// Every chunk `node` holds, as it lists them.
    pub(super) async fn node_chunks(&self, node: &str) -> Result<HashSet<ChunkId>, Error> {
        let mut control = self.nodes.control(node)?;
        let mut stream = control
            .list_chunks(ListChunksRequest {})
            .await
            .map_err(|s| Error::node(node, &s))?
            .into_inner();
        let mut held: HashSet<ChunkId> = HashSet::new();
        while let Some(batch) = stream.message().await.map_err(|s| Error::node(node, &s))? {
            held.extend(batch.ids.iter().filter_map(|b| ChunkId::from_slice(b)));
        }
        Ok(held)
    }

    /// A node registered again: compare what it holds with what we list for it.
    pub(super) async fn reconcile(&self, node: &str) -> Result<(), Error> {
        let up = &self.upkeep;
        let held = self.node_chunks(node).await?;
        // Hosted copies it was given a token for and never received stop counting.
        let (copies, bytes) = self.meta.prune_hosted(node, &held, 0, self.hosting_cutoff())?;
        if copies > 0 {
            tracing::info!(%node, copies, bytes, "hosted copies whose upload never came no longer count against the hosting quota");
        }
        // Chunks we host for other members live on our nodes too, outside our chunk table.
        let hosted: HashSet<ChunkId> = self
            .meta
            .hosted_all()
            .filter_map(|r| r.ok())
            .filter(|(_, _, rec)| rec.nodes.iter().any(|n| n == node))
            .map(|(_, id, _)| id)
            .collect();
        let (mut adopted, mut missing) = (0u64, 0u64);
        let mut unneeded: Vec<ChunkId> = Vec::new();
        let mut unknown: Vec<ChunkId> = Vec::new();
        for id in &held {
            if hosted.contains(id) {
                continue;
            }
            // Pending first: a commit turns a pending upload into a chunk record in one
            // transaction, so reading in this order never takes a chunk being committed
            // right now for an unknown one.
            let pending = self.meta.is_pending(id).unwrap_or(true);
            let rec = self.meta.chunk(id)?;
            match rec {
                Some(rec) if rec.replicas.iter().any(|r| r == node) => {}
                Some(rec) if rec.refs > 0 => {
                    let want = self.wanted(&rec) + up.extra(id) as usize;
                    let live = rec.replicas.iter().filter(|r| self.liveness(r) != Live::Lost).count();
                    if live < want {
                        self.meta.change_replicas(id, &[node.to_string()], &[])?;
                        adopted += 1;
                    } else {
                        unneeded.push(*id);
                    }
                }
                Some(_) => unneeded.push(*id),
                None if pending => {}
                None => unknown.push(*id),
            }
        }
        // Copies we list on the node that it no longer has.
        let mut listed: Vec<ChunkId> = self
            .meta
            .chunks()
            .filter_map(|r| r.ok())
            .filter(|(id, rec)| rec.replicas.iter().any(|r| r == node) && !held.contains(id))
            .map(|(id, _)| id)
            .collect();
        // A chunk uploaded after the listing and committed before the scan above looks
        // missing: ask the node once more, and drop only copies absent both times (a commit
        // records a copy only once the node has stored it, so it is in the second listing).
        if !listed.is_empty() {
            let again = self.node_chunks(node).await?;
            listed.retain(|id| !again.contains(id));
        }
        for id in &listed {
            self.meta.change_replicas(id, &[], &[node.to_string()])?;
            missing += 1;
        }
        // Chunks nothing here knows are never deleted on sight: after a restore of an older
        // metadata copy they are the files stored since. They are kept and reported until an
        // admin collects them (`repair collect-unknown`).
        let fresh = self.meta.set_unknown(node, &unknown, unix_ms_now())?;
        if fresh > 0 {
            self.events.emit(
                "unknown-chunks",
                node,
                crate::events::Severity::Warning,
                format!(
                    "{node} holds {} chunk(s) this coordinator's metadata has no record of ({fresh} new); they are kept. \
                     If the metadata directory was restored from an older copy they may belong to files stored since; \
                     `collective repair collect-unknown` deletes them once you are sure they are garbage",
                    unknown.len()
                ),
            );
        }
        let dropped = unneeded.len();
        if !unneeded.is_empty() {
            self.delete_many(HashMap::from([(node.to_string(), unneeded)])).await;
        }
        self.meta.flush().await?;
        tracing::info!(%node, held = held.len(), adopted, dropped, missing, unknown = unknown.len(), "reconciled a returning node");
        if adopted > 0 || missing > 0 {
            up.wake.notify_one();
        }
        Ok(())
    }
}
