//! Repair: makes the copies a chunk is missing, node to node and throttled, and says
//! when it cannot (see `repair_plan`).

use super::*;

impl State {
    /// Emits `repair-started` when a round first finds chunks to repair and
    /// `repair-finished` at the first round after that finds none.
    pub(super) fn note_repair_run(&self, repairs: &[Job]) {
        let c = &self.upkeep.counters;
        let counters = || RepairRun {
            began: Instant::now(),
            chunks: c.repaired_chunks.load(Ordering::Relaxed),
            bytes: c.repaired_bytes.load(Ordering::Relaxed),
            failed: c.failed_copies.load(Ordering::Relaxed),
            unplaced: c.unplaced_copies.load(Ordering::Relaxed),
        };
        let mut run = lock(&self.upkeep.run);
        match (run.as_ref(), repairs.is_empty()) {
            (None, false) => {
                let bytes: u64 = repairs.iter().map(|j| j.size() * j.need as u64).sum();
                *run = Some(counters());
                self.events.emit(
                    "repair-started",
                    &self.domain,
                    crate::events::Severity::Warning,
                    format!(
                        "repairing {} chunk(s) with too few copies ({} to copy)",
                        repairs.len(),
                        collective_core::format_bytes(bytes)
                    ),
                );
            }
            (Some(start), true) => {
                let now = counters();
                let (began, chunks, copied, failed) = (
                    start.began,
                    now.chunks - start.chunks,
                    now.bytes - start.bytes,
                    now.failed - start.failed,
                );
                let unplaced = now.unplaced - start.unplaced;
                *run = None;
                self.events.emit(
                    "repair-finished",
                    &self.domain,
                    crate::events::Severity::Info,
                    format!(
                        "repair finished after {} s: {} chunk(s) ({}) copied, {} copy attempt(s) failed{}",
                        began.elapsed().as_secs(),
                        chunks,
                        collective_core::format_bytes(copied),
                        failed,
                        if unplaced > 0 {
                            format!(" ({unplaced} of them found no node to copy to)")
                        } else {
                            String::new()
                        }
                    ),
                );
            }
            _ => {}
        }
    }

    /// Takes the reason the round just ended could not place copies (None: it could), and
    /// says so once when it changes: a log line and an event, not one per chunk and round.
    pub(super) fn note_blocked(&self, now: Option<(crate::repair_plan::Blocked, u64)>) {
        let up = &self.upkeep;
        let mut blocked = lock(&up.blocked);
        match (&*blocked, &now) {
            (old, Some((b, chunks))) if old.as_ref().is_none_or(|o| o.kind != b.kind) => {
                self.events.emit(
                    "repair-blocked",
                    &self.domain,
                    crate::events::Severity::Warning,
                    format!("repair is blocked for {chunks} chunk(s): {}", b.reason),
                );
            }
            (Some(_), None) => {
                self.events.emit(
                    "repair-unblocked",
                    &self.domain,
                    crate::events::Severity::Info,
                    "repair can place copies again".into(),
                );
            }
            _ => {}
        }
        up.blocked_chunks.store(now.as_ref().map_or(0, |(_, n)| *n), Ordering::Relaxed);
        *blocked = now.map(|(r, _)| r);
    }

    /// Carries out the repairs of a round, throttled; stops taking new ones once the
    /// repair worker is paused.
    pub(super) async fn run_repairs(&self, jobs: Vec<Job>, run: &collective_core::Run<'_>) {
        let up = &self.upkeep;
        let pace = crate::throttle::Pacer::new(up.settings.rate);
        futures::stream::iter(jobs)
            .for_each_concurrent(up.settings.parallel, |job| {
                let pace = &pace;
                async move {
                    // Throttle: each copy books its share of `repair_rate`.
                    pace.wait(job.size() * job.need as u64).await;
                    if up.w_repair.paused() {
                        return;
                    }
                    self.repair(job).await;
                    run.advance(1);
                }
            })
            .await;
    }

    /// Adds the copies one chunk is missing, then retires what it replaces.
    pub(super) async fn repair(&self, job: Job) {
        let up = &self.upkeep;
        let mut holders = job.holders.clone();
        let mut added: Vec<String> = Vec::new();
        let mut failed: Vec<String> = Vec::new();
        for _attempt in 0..3 {
            let need = job.need - added.len();
            if need == 0 {
                break;
            }
            let mut exclude: Vec<String> = failed.clone();
            exclude.extend(lock(&up.draining).iter().cloned());
            let cluster = self.placement_cluster(job.spread());
            let pending = crate::repair_plan::Repair {
                holders: holders.clone(),
                ..job.plan.clone()
            };
            let targets = match crate::repair_plan::targets(&job.facts, &pending, &cluster, &self.domain, &exclude, need) {
                Ok(t) => t,
                Err(blocked) => {
                    // Logged once per change of reason (note_blocked), not per chunk.
                    tracing::debug!(chunk = %job.id().short(), "cannot repair: {}", blocked.reason);
                    up.counters.failed_copies.fetch_add(1, Ordering::Relaxed);
                    up.counters.unplaced_copies.fetch_add(1, Ordering::Relaxed);
                    let mut b = lock(&up.round_blocked);
                    match b.as_mut() {
                        Some((_, chunks)) => *chunks += 1,
                        None => *b = Some((blocked, 1)),
                    }
                    break;
                }
            };
            for t in targets {
                match tokio::time::timeout(COPY_TIMEOUT, self.copy_to(&job, &t)).await {
                    Ok(Ok(node)) => {
                        holders.push(node.clone());
                        added.push(node);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(chunk = %job.id().short(), target = %t, "repair copy failed: {e}");
                        up.counters.failed_copies.fetch_add(1, Ordering::Relaxed);
                        failed.push(t);
                    }
                    Err(_) => {
                        tracing::warn!(chunk = %job.id().short(), target = %t, "repair copy timed out");
                        up.counters.failed_copies.fetch_add(1, Ordering::Relaxed);
                        failed.push(t);
                    }
                }
            }
        }
        if added.is_empty() {
            return;
        }
        let retire = crate::repair_plan::retire_after(&job.facts, &job.plan, added.len());
        match self.meta.change_replicas(job.id(), &added, &[]) {
            Ok(Some(_)) => {}
            Ok(None) => {
                // Collected meanwhile: the new copies are garbage.
                self.delete_copies(job.id(), &added).await;
                return;
            }
            Err(e) => {
                tracing::error!(chunk = %job.id().short(), "recording repaired copies failed: {e}");
                return;
            }
        }
        let bytes = job.size() * added.len() as u64;
        up.counters.repaired_chunks.fetch_add(1, Ordering::Relaxed);
        up.counters.repaired_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.repaired_bytes.inc_by(bytes);
        up.note_copied(bytes);
        if lock(&up.corrupt).remove(job.id()) {
            up.counters.scrub_repaired.fetch_add(1, Ordering::Relaxed);
        }
        if !retire.is_empty() {
            self.retire(job.id(), &retire).await;
        }
        if job.spread() {
            self.links.elsewhere_changed();
        }
    }

    /// Makes one new copy on `target` (ours, or a node of another member); returns the
    /// node that now holds it.
    pub(super) async fn copy_to(&self, job: &Job, target: &str) -> Result<String, Error> {
        let local_source = job
            .sources
            .iter()
            .find(|n| member_of(n) == self.domain && self.nodes.lock().get(*n).is_some_and(|e| self.nodes.is_up(e)));
        if member_of(target) == self.domain {
            let to_addr = self.quic_addr(target).ok_or_else(|| Error::Node {
                node: target.to_string(),
                detail: "has no known address".into(),
            })?;
            if let Some(src) = local_source {
                // Push from our node: a put token for the target naming the source node.
                let token = self
                    .signer
                    .sign(TokenOp::Put, job.id(), &[target.to_string()], src, job.size(), self.token_ttl);
                let req = CopyChunkRequest {
                    chunk_id: job.id().0.to_vec().into(),
                    size: job.size(),
                    from_node: src.clone(),
                    to_node: target.to_string(),
                    to_addr,
                    to_token: token.into(),
                    ..Default::default()
                };
                self.run_copy(src, req).await?;
                return Ok(target.to_string());
            }
            // Only other members hold it: pull with a read token naming our target node.
            let src = job
                .sources
                .first()
                .ok_or_else(|| Error::Stuck("no live copy to copy from".into()))?;
            let member = member_of(src).to_string();
            let mut fedc = FederationClient::new(self.links.channel(&member)?);
            let answer = fedc
                .read_tokens(ReadTokensRequest {
                    user: target.to_string(),
                    chunks: job.desc(),
                    metadata_backup: false,
                })
                .await
                .map_err(|s| Error::peer(&member, &s))?
                .into_inner();
            let from = answer
                .chunks
                .into_iter()
                .next()
                .and_then(|h| h.replicas.into_iter().next())
                .ok_or_else(|| Error::Peer {
                    member: member.clone(),
                    detail: format!("no longer hosts chunk {}", job.id().short()),
                })?;
            let req = CopyChunkRequest {
                chunk_id: job.id().0.to_vec().into(),
                size: job.size(),
                from_node: from.node,
                from_addr: from.quic_addr,
                from_token: from.token,
                to_node: target.to_string(),
                ..Default::default()
            };
            self.run_copy(target, req).await?;
            return Ok(target.to_string());
        }
        // Another member's node: that member reserves room and signs a put token for our
        // source node, which pushes the copy.
        let src =
            local_source.ok_or_else(|| Error::Stuck("a copy on another member needs a live copy on our own nodes to send from".into()))?;
        let member = member_of(target).to_string();
        let mut fedc = FederationClient::new(self.links.channel(&member)?);
        let placed = fedc
            .host_chunks(HostChunksRequest {
                user: src.clone(),
                chunks: job.desc(),
                avoid: vec![],
                prefer: vec![target.to_string()],
                metadata_backup: false,
            })
            .await
            .map_err(|s| Error::peer(&member, &s))?
            .into_inner();
        let to = placed.targets.into_iter().next().ok_or_else(|| Error::Peer {
            member: member.clone(),
            detail: "returned no target".into(),
        })?;
        let req = CopyChunkRequest {
            chunk_id: job.id().0.to_vec().into(),
            size: job.size(),
            from_node: src.clone(),
            to_node: to.node.clone(),
            to_addr: to.quic_addr,
            to_token: to.token,
            ..Default::default()
        };
        self.run_copy(src, req).await?;
        Ok(to.node)
    }

    /// Asks one of our nodes to make a copy (it pushes or pulls, and the receiver verifies).
    pub(super) async fn run_copy(&self, node: &str, req: CopyChunkRequest) -> Result<(), Error> {
        let mut control = self.nodes.control(node)?;
        control.copy_chunk(req).await.map_err(|s| Error::node(node, &s))?;
        Ok(())
    }

    pub(super) fn quic_addr(&self, node: &str) -> Option<String> {
        self.nodes.lock().get(node).map(|e| e.quic_addr.clone())
    }
}
