//! The read path: where each chunk of a file can be read (with tokens and seals), and
//! reports of bad copies from readers.

use super::*;

impl MetadataService {
    pub(super) async fn handle_read_plan(&self, req: Request<ReadPlanRequest>) -> Result<Response<ReadPlanResponse>, Status> {
        let (who, call) = self.begin("read_plan", &req, req.get_ref().paths.first().map(String::as_str).unwrap_or(""))?;
        if let Some(first) = req.get_ref().paths.first() {
            let first = path_arg(first)?;
            forward_to_owner!(self, call, who, &first, req, read_plan);
        }
        let caller = who.to_string();
        let r = async {
            let mut files = Vec::new();
            for p in &req.get_ref().paths {
                let path = path_arg(p)?;
                self.state.require(&who, &path, Rights::READ)?;
                let (attr, manifest) = self.state.meta.manifest(&path).map_err(meta_status)?;
                let scope = self.state.meta.scope(&path).map_err(meta_status)?;
                self.state.upkeep.note_reads(manifest.iter().map(|c| ChunkId(c.id)));
                // (id, stored size, replica names, addresses with tokens)
                let mut chunks = Vec::with_capacity(manifest.len());
                for c in &manifest {
                    let id = ChunkId(c.id);
                    chunks.push((id, c.size, self.replicas(&id)?, Vec::new()));
                }
                self.state.add_remote_replicas(&mut chunks, &caller).await;
                let mut locations = Vec::with_capacity(manifest.len());
                // Bytes of this plan each node is asked first for.
                let mut load: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
                for (i, (c, (id, _, replicas, remote))) in manifest.into_iter().zip(chunks).enumerate() {
                    let local: Vec<String> = replicas.into_iter().filter(|n| member_of(n) == self.state.domain).collect();
                    // Nodes we know are down go last: tried only if every live copy fails.
                    let (mut local, down): (Vec<String>, Vec<String>) = {
                        let nodes = self.state.nodes.lock();
                        local
                            .into_iter()
                            .partition(|n| nodes.get(n).is_some_and(|e| self.state.nodes.is_up(e)))
                    };
                    // First the replica with the least of this file so far, so that every
                    // stretch of the file is read from all nodes evenly (ties rotate).
                    if !local.is_empty() {
                        let n = local.len();
                        local.rotate_left(i % n);
                        let first = (0..n).min_by_key(|&k| load.get(&local[k]).copied().unwrap_or(0)).unwrap_or(0);
                        local[..=first].rotate_right(1);
                        *load.entry(local[0].clone()).or_default() += c.size;
                    }
                    local.extend(down.iter().cloned());
                    let token = self
                        .state
                        .signer
                        .sign(TokenOp::Get, &id, &local, &caller, c.size, self.state.token_ttl);
                    // Live copies (ours, then other members'), then ours we know are down.
                    let up = local.len() - down.len();
                    let mut addrs = self.state.nodes.addrs(&local[..up]);
                    addrs.extend(remote);
                    addrs.extend(self.state.nodes.addrs(&down));
                    let seal = self.state.meta.seal_in(&scope, &id).map_err(meta_status)?;
                    locations.push(ChunkLocation {
                        id: id.0.to_vec().into(),
                        offset: c.offset,
                        size: c.size,
                        replicas: addrs,
                        token: token.into(),
                        seal: seal.map(|s| s.to_vec().into()).unwrap_or_default(),
                    });
                }
                files.push(FilePlan {
                    attr: Some(to_proto(attr)),
                    chunks: locations,
                });
            }
            Ok(ReadPlanResponse { files })
        }
        .await;
        call.done(r)
    }

    pub(super) async fn handle_report_bad_replica(
        &self,
        req: Request<ReportBadReplicaRequest>,
    ) -> Result<Response<ReportBadReplicaResponse>, Status> {
        let (who, call) = self.begin("report_bad_replica", &req, &req.get_ref().node)?;
        if let Err(e) = self.state.throttles.check(&who, crate::throttle::Costly::Rehash) {
            return call.done(Err(e));
        }
        let node_domain = req.get_ref().node.split_once('@').map(|(_, d)| d.to_string()).unwrap_or_default();
        if node_domain != self.state.domain && self.state.links.fed().is_some() && !node_domain.is_empty() {
            let r = async {
                let mut peer = MetadataClient::new(self.state.links.channel(&node_domain)?);
                peer.report_bad_replica(forwarded(req.into_inner(), &who))
                    .await
                    .map(Response::into_inner)
            }
            .await;
            return call.done(r);
        }
        let caller = who.to_string();
        let q = req.into_inner();
        let r = async {
            let id = chunk_arg(&q.id)?;
            self.state.metrics.corrupt_reports.inc();
            tracing::warn!(chunk = %id.short(), node = %q.node, reporter = %caller, reason = %q.reason, "bad replica reported");
            // Trust the node's own verification, not the report: ask it to re-hash.
            let mut control = self.state.nodes.control(&q.node)?;
            let mut verify = Request::new(VerifyChunkRequest { chunk_id: q.id.clone() });
            verify.set_timeout(crate::upkeep::CONTROL_TIMEOUT);
            let verdict = control.verify_chunk(verify).await;
            let bad = match verdict {
                Ok(v) => !v.get_ref().present || !v.get_ref().intact,
                Err(s) => {
                    tracing::warn!(node = %q.node, "cannot verify reported replica: {}", s.message());
                    false
                }
            };
            let removed = if bad {
                let removed = self.state.meta.remove_replica(&id, &q.node).map_err(meta_status)?;
                self.flush().await?;
                self.state.events.emit(
                    "corruption-found",
                    &q.node,
                    crate::events::Severity::Critical,
                    format!(
                        "a client could not read chunk {} from node {}, which confirms the copy is missing or corrupt; it is repaired from other copies",
                        id.short(),
                        q.node
                    ),
                );
                removed
            } else {
                false
            };
            Ok(ReportBadReplicaResponse { removed })
        }
        .await;
        call.done(r)
    }
}
