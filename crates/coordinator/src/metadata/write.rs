//! The write path: planning where new chunks go, replacing a failed target, committing
//! files, and the policy a writer must follow (replicas, encryption).

use super::*;

impl MetadataService {
    pub(super) async fn handle_plan_write(&self, req: Request<PlanWriteRequest>) -> Result<Response<PlanWriteResponse>, Status> {
        let (who, call) = self.begin("plan_write", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(creating; self, call, who, &path, req, plan_write);
        let q = req.into_inner();
        let caller = who.to_string();
        let r = async {
            self.state.require(&who, &path, Rights::WRITE)?;
            if q.chunks.len() > MAX_PLAN_CHUNKS {
                return Err(Status::invalid_argument(format!("at most {MAX_PLAN_CHUNKS} chunks per plan")));
            }
            let policy = self.state.policy(path.as_str())?;
            // Which chunks this writer may take as stored: those its datastore holds, when
            // it may read the datastore (or the file it replaces holds them). Anything else
            // is planned as an upload, so the answer says nothing of other datastores.
            let (reads_datastore, reads_file) = self.reads(&who, &path)?;
            let own: std::collections::HashSet<[u8; 32]> = if reads_file && !reads_datastore {
                match self.state.meta.manifest(&path) {
                    Ok((_, chunks)) => chunks.into_iter().map(|c| c.id).collect(),
                    Err(_) => Default::default(),
                }
            } else {
                Default::default()
            };
            let scope = self.state.meta.scope(&path).map_err(meta_status)?;
            let mut placements: Vec<Option<ChunkPlacement>> = Vec::with_capacity(q.chunks.len());
            let mut new: Vec<(usize, ChunkId, u64)> = Vec::new();
            for (i, c) in q.chunks.iter().enumerate() {
                let id = chunk_arg(&c.id)?;
                check_chunk_size(&id, c.size)?;
                let reusable = (reads_datastore || own.contains(&id.0)) && self.state.meta.scope_holds(&scope, &id).map_err(meta_status)?;
                let Some(rec) = self
                    .state
                    .meta
                    .chunk(&id)
                    .map_err(meta_status)?
                    .filter(|r| reusable && !r.replicas.is_empty())
                else {
                    placements.push(None);
                    new.push((i, id, c.size));
                    continue;
                };
                if rec.refs == 0 {
                    // Reused before garbage collection took it: give the commit time.
                    self.state.meta.touch_unreferenced(&id).map_err(meta_status)?;
                }
                let existing = rec.replicas;
                // Already stored. When copies were lost, this write tops them up on our
                // nodes if it can; otherwise the chunk stays as it is (repair's job).
                let missing = policy.replicas.saturating_sub(existing.len());
                let topped_up = (missing > 0)
                    .then(|| self.placement(&id, c.size, missing, &existing, &[], &caller).ok())
                    .flatten();
                placements.push(Some(topped_up.unwrap_or(ChunkPlacement {
                    id: c.id.clone(),
                    stored: true,
                    targets: vec![],
                    token: Default::default(),
                })));
            }
            if policy.spread {
                let chunks: Vec<(ChunkId, u64)> = new.iter().map(|(_, id, size)| (*id, *size)).collect();
                for ((i, _, _), p) in new.iter().zip(self.state.plan_spread(&chunks, &policy, &caller).await?) {
                    placements[*i] = Some(p);
                }
            } else {
                let mut previous: Vec<String> = Vec::new();
                for (i, id, size) in &new {
                    let p = self.placement(id, *size, policy.replicas, &[], &previous, &caller)?;
                    previous = p.targets.first().map(|t| vec![t.node.clone()]).unwrap_or_default();
                    placements[*i] = Some(p);
                }
            }
            Ok(PlanWriteResponse {
                placements: placements.into_iter().flatten().collect(),
            })
        }
        .await;
        call.done(r)
    }

    pub(super) async fn handle_replace_target(&self, req: Request<ReplaceTargetRequest>) -> Result<Response<ChunkPlacement>, Status> {
        let (who, call) = self.begin("replace_target", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(self, call, who, &path, req, replace_target);
        let q = req.into_inner();
        let caller = who.to_string();
        let r = (|| {
            self.state.require(&who, &path, Rights::WRITE)?;
            let id = chunk_arg(&q.id)?;
            check_chunk_size(&id, q.size)?;
            let count = (q.count as usize).clamp(1, self.state.policy(path.as_str())?.replicas);
            let req = collective_placement::Request {
                chunk: &id,
                size: q.size,
                count,
                strategy: collective_placement::Strategy::Media,
                owner: &self.state.domain,
                reader: &self.state.domain,
                existing: &q.avoid,
                exclude: &[],
                previous: &[],
            };
            let new = collective_placement::place(&self.state.placement_cluster(false), &req).map_err(placement_status)?;
            self.state.nodes.note_planned(&new, q.size);
            self.state.meta.extend_pending(&id, q.size, &new, &caller).map_err(meta_status)?;
            let token = self
                .state
                .signer
                .sign(TokenOp::Put, &id, &new, &caller, q.size, self.state.token_ttl);
            Ok(ChunkPlacement {
                id: q.id.clone(),
                stored: false,
                targets: self.state.nodes.addrs(&new),
                token: token.into(),
            })
        })();
        call.done(r)
    }

    pub(super) async fn handle_commit_files(&self, req: Request<CommitFilesRequest>) -> Result<Response<CommitFilesResponse>, Status> {
        let (who, call) = self.begin(
            "commit_files",
            &req,
            req.get_ref().files.first().map(|f| f.path.as_str()).unwrap_or(""),
        )?;
        let first = match req.get_ref().files.first() {
            Some(f) => path_arg(&f.path)?,
            None => return call.done(Ok(CommitFilesResponse { files: vec![] })),
        };
        forward_to_owner!(creating; self, call, who, &first, req, commit_files);
        let q = req.into_inner();
        let target = if q.files.len() > 1 {
            format!("{first} (and {} more)", q.files.len() - 1)
        } else {
            first.to_string()
        };
        let caller = who.to_string();
        let r = async {
            let mut files = Vec::with_capacity(q.files.len());
            let mut min_replicas = usize::MAX;
            for f in q.files {
                let path = path_arg(&f.path)?;
                if top_of(path.as_str()) != top_of(first.as_str()) && self.remote(&path, true).await?.is_some() {
                    return Err(Status::invalid_argument(
                        "one commit may not span members; commit each member's files separately",
                    ));
                }
                self.state.require(&who, &path, Rights::WRITE)?;
                let policy = self.state.policy(path.as_str())?;
                min_replicas = min_replicas.min(policy.replicas);
                if policy.spread {
                    self.state.links.elsewhere_changed();
                }
                let mut seals = Vec::with_capacity(f.chunks.len());
                for c in &f.chunks {
                    seals.push(if c.seal.is_empty() {
                        None
                    } else {
                        Some(
                            <[u8; SEAL_LEN]>::try_from(c.seal.as_ref())
                                .map_err(|_| Status::invalid_argument(format!("a chunk seal of {path} is not {SEAL_LEN} bytes")))?,
                        )
                    });
                }
                let (reads_datastore, reads_file) = self.reads(&who, &path)?;
                let chunks = f
                    .chunks
                    .iter()
                    .map(|c| {
                        Ok(ChunkRef {
                            id: chunk_arg(&c.id)?.0,
                            offset: c.offset,
                            size: c.size,
                        })
                    })
                    .collect::<Result<Vec<_>, Status>>()?;
                let stored_on = f.chunks.into_iter().map(|c| c.stored_on).collect();
                files.push(FileCommitIn {
                    path,
                    size: f.size,
                    mode: if f.mode == 0 { 0o644 } else { f.mode },
                    mtime_ms: f.mtime_ms,
                    chunks,
                    stored_on,
                    parents: f.parents,
                    replicas: policy.replicas as u32,
                    strategy: policy.datastore.as_ref().map_or(collective_core::Strategy::Media, |d| d.strategy),
                    seals,
                    reads_datastore,
                    reads_file,
                });
            }
            let meta = self.state.meta.clone();
            // Every file needs the copies its own datastore asks for; one commit may hold
            // files of several datastores, so the smallest count is checked here (each
            // chunk was planned with its own).
            let replication = if min_replicas == usize::MAX {
                self.state.replication
            } else {
                min_replicas
            };
            let attrs = blocking(move || meta.commit_files(&files, &caller, replication).map_err(meta_status)).await?;
            self.flush().await?;
            collective_core::crash_point("commit:after-flush");
            Ok(CommitFilesResponse {
                files: attrs.into_iter().map(to_proto).collect(),
            })
        }
        .await;
        self.state.audit_failure(&who.to_string(), "commit", &target, &r);
        call.done(r)
    }

    /// Whether `who` may read the datastore of `path` (its root) and the file at `path`:
    /// what decides which stored chunks a write may name without uploading them.
    fn reads(&self, who: &Principal, path: &RemotePath) -> Result<(bool, bool), Status> {
        let root = match top_of(path.as_str()) {
            Some(top) if !self.state.meta.scope(path).map_err(meta_status)?.is_empty() => format!("/{top}"),
            _ => "/".to_string(),
        };
        let datastore = self.state.rights(who, &root)?.contains(Rights::READ);
        let file = datastore || self.state.rights(who, path.as_str())?.contains(Rights::READ);
        Ok((datastore, file))
    }

    pub(super) async fn handle_write_policy(&self, req: Request<PathRequest>) -> Result<Response<WritePolicyResponse>, Status> {
        let (who, call) = self.begin("write_policy", &req, &req.get_ref().path)?;
        let path = path_arg(&req.get_ref().path)?;
        forward_to_owner!(creating; self, call, who, &path, req, write_policy);
        let r = (|| {
            self.state.require(&who, &path, Rights::WRITE)?;
            let policy = self.state.policy(path.as_str())?;
            let encrypt = policy.encrypt();
            Ok(match policy.datastore {
                Some(d) => WritePolicyResponse {
                    datastore: d.name,
                    strategy: PlacementStrategy::from(d.strategy) as i32,
                    replicas: policy.replicas as u32,
                    encrypt,
                    secret: if encrypt { d.secret.to_vec().into() } else { Default::default() },
                },
                None => WritePolicyResponse {
                    replicas: policy.replicas as u32,
                    ..Default::default()
                },
            })
        })();
        call.done(r)
    }
}
