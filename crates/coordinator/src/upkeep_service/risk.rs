//! What is at risk if a member leaves: our own view, per owner, for `federation risk`.

use super::*;

pub(super) fn add_risk(report: &mut RiskReport, r: MemberRisk) {
    report.files_under_replicated += r.files_under_replicated;
    report.bytes_under_replicated += r.bytes_under_replicated;
    report.files_unreadable += r.files_unreadable;
    report.bytes_unreadable += r.bytes_unreadable;
    report.owners.push(r);
}

/// What one chunk would be without a member.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Fine,
    Under,
    Gone,
}

impl State {
    /// `bob` or `bob.collective.local` → a member domain of this federation.
    pub fn member_arg(&self, name: &str) -> Result<String, Status> {
        let full = if name.contains('.') {
            name.to_string()
        } else {
            match self.links.fed() {
                Some(f) => format!("{name}.{}", f.domain),
                None => format!(
                    "{name}.{}",
                    self.domain.split_once('.').map(|(_, d)| d).unwrap_or("collective.local")
                ),
            }
        };
        let known = full == self.domain || self.links.fed().is_some_and(|f| f.gossip.state_of(&full).is_some());
        if !known {
            return Err(Status::not_found(format!(
                "{full} is not a member of this federation (see `collective federation peers`)"
            )));
        }
        Ok(full)
    }

    /// Our files that would fall below their replication factor, or become unreadable, if
    /// `member` left now.
    pub fn risk_of(&self, member: &str) -> Result<MemberRisk, Status> {
        let mut out = MemberRisk {
            owner: self.domain.clone(),
            ..Default::default()
        };
        let leaving_self = member == self.domain;
        let mut fates: HashMap<ChunkId, Fate> = HashMap::new();
        let mut files: Vec<Attr> = Vec::new();
        self.meta
            .walk_files(&RemotePath::root(), &mut |_, a| {
                files.push(a);
                true
            })
            .map_err(meta_status)?;
        for a in files {
            if leaving_self {
                // The namespace leaves with its coordinator.
                out.files_unreadable += 1;
                out.bytes_unreadable += a.size;
                continue;
            }
            let Ok(path) = collective_core::validate_path(&a.path) else {
                continue;
            };
            let Ok((_, manifest)) = self.meta.manifest(&path) else { continue };
            let mut worst = Fate::Fine;
            for c in manifest {
                let id = ChunkId(c.id);
                let fate = match fates.get(&id) {
                    Some(f) => *f,
                    None => {
                        let f = self.chunk_fate(&id, member)?;
                        fates.insert(id, f);
                        f
                    }
                };
                if fate == Fate::Gone {
                    worst = Fate::Gone;
                    break;
                }
                if fate == Fate::Under {
                    worst = Fate::Under;
                }
            }
            match worst {
                Fate::Gone => {
                    out.files_unreadable += 1;
                    out.bytes_unreadable += a.size;
                }
                Fate::Under => {
                    out.files_under_replicated += 1;
                    out.bytes_under_replicated += a.size;
                }
                Fate::Fine => {}
            }
        }
        Ok(out)
    }

    fn chunk_fate(&self, id: &ChunkId, member: &str) -> Result<Fate, Status> {
        let Some(rec) = self.meta.chunk(id).map_err(meta_status)? else {
            return Ok(Fate::Gone);
        };
        let want = self.wanted(&rec);
        let left = rec
            .replicas
            .iter()
            .filter(|n| member_of(n) != member && self.liveness(n) != Live::Lost)
            .count();
        Ok(if left == 0 {
            Fate::Gone
        } else if left < want {
            Fate::Under
        } else {
            Fate::Fine
        })
    }

    /// `Federation.ReleaseChunks`: the guest no longer needs these chunks here.
    pub async fn release_chunks(&self, req: Request<ReleaseChunksRequest>) -> Result<Response<ReleaseChunksResponse>, Status> {
        let guest = self.authorize_peer(&req)?.domain;
        let guest = if req.get_ref().metadata_backup {
            collective_meta::backup_guest(&guest)
        } else {
            guest
        };
        let ids: Vec<ChunkId> = req.get_ref().ids.iter().filter_map(|b| ChunkId::from_slice(b)).collect();
        let released = self.meta.release_hosted(&guest, &ids).map_err(meta_status)?;
        self.meta.flush().await.map_err(meta_status)?;
        let mut per_node: HashMap<String, Vec<ChunkId>> = HashMap::new();
        let mut freed = 0u64;
        // Another guest may have the same chunk hosted here (the same ciphertext).
        let still_hosted: std::collections::HashSet<ChunkId> = if released.is_empty() {
            Default::default()
        } else {
            self.meta.hosted_all().filter_map(|r| r.ok()).map(|(_, id, _)| id).collect()
        };
        for (id, rec) in &released {
            freed += rec.size;
            if still_hosted.contains(id) {
                continue;
            }
            for n in &rec.nodes {
                per_node.entry(n.clone()).or_default().push(*id);
            }
        }
        self.delete_many(per_node).await;
        Ok(Response::new(ReleaseChunksResponse {
            released: released.len() as u64,
            freed_bytes: freed,
        }))
    }

    /// `Federation.Risk` for another member: our own files only.
    pub async fn peer_risk(self: &Arc<Self>, req: Request<RiskRequest>) -> Result<Response<RiskReport>, Status> {
        let peer = self.authorize_peer(&req)?;
        self.throttles.check(&peer, crate::throttle::Costly::Risk)?;
        let member = req.get_ref().member.clone();
        let state = self.clone();
        let m = member.clone();
        let own = tokio::task::spawn_blocking(move || state.risk_of(&m))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        let mut report = RiskReport {
            member,
            ..Default::default()
        };
        add_risk(&mut report, own);
        Ok(Response::new(report))
    }
}
