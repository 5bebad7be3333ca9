//! Capacity shared between members: datastores whose strategy spreads replicas (backup,
//! hybrid) keep one copy on our own nodes and put the others on other members' nodes, one
//! member per copy when there are enough, within what each member contributes. The member
//! whose nodes hold a chunk signs the tokens for it (`Federation.HostChunks` and
//! `Federation.ReadTokens`); its coordinator never learns a file name or a key.

use std::collections::HashMap;
use std::time::Duration;

use collective_core::{ChunkId, Principal};
use collective_meta::DatastoreRecord;
use collective_placement::{Request as PlaceRequest, Strategy};
use collective_proto::v1::federation_client::FederationClient;
use collective_proto::v1::{
    ChunkDesc, ChunkPlacement, HostChunksRequest, HostChunksResponse, HostedReplicas, NodeAddr, ReadTokensRequest, ReadTokensResponse,
    TokenOp,
};
use tonic::{Request, Response, Status};

use crate::access::top_of;
use crate::state::{State, meta_status};

const USAGE_REFRESH: Duration = Duration::from_secs(30);
const USAGE_REFRESH_STALE: Duration = Duration::from_secs(2);
/// How long a plan or read waits for another member before going on without it.
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How a datastore's chunks are placed.
#[derive(Debug, Clone)]
pub struct Policy {
    pub replicas: usize,
    /// Copies beyond the first go to other members when they can (backup, hybrid).
    pub spread: bool,
    pub datastore: Option<DatastoreRecord>,
}

impl Policy {
    /// Chunks that may land on another member's nodes are encrypted on the client.
    pub fn encrypt(&self) -> bool {
        self.spread
    }
}

/// The user a token is for (tokens name the principal that will present them).
fn parse_user(user: &str) -> Result<String, Status> {
    user.parse::<Principal>()
        .map(|p| p.to_string())
        .map_err(|e| Status::invalid_argument(format!("bad user principal '{user}': {e}")))
}

/// Chunk descriptions for a request to another member.
fn descs<'a>(chunks: impl Iterator<Item = (&'a ChunkId, u64)>) -> Vec<ChunkDesc> {
    chunks
        .map(|(id, size)| ChunkDesc {
            id: id.0.to_vec().into(),
            size,
        })
        .collect()
}

/// The member domain of a node principal (`node-01@alice.collective.local`).
pub fn member_of(node: &str) -> &str {
    node.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

impl State {
    /// The placement policy of the datastore `path` is in (the coordinator's default
    /// replication outside datastores).
    pub fn policy(&self, path: &str) -> Result<Policy, Status> {
        let ds = match top_of(path) {
            Some(top) => self.meta.datastore(top).map_err(meta_status)?,
            None => None,
        };
        let replicas = ds
            .as_ref()
            .map(|d| d.replicas as usize)
            .filter(|r| *r > 0)
            .unwrap_or(self.replication);
        let spread = self.links.fed().is_some() && ds.as_ref().is_some_and(|d| d.strategy.spreads_over_members());
        Ok(Policy {
            replicas,
            spread,
            datastore: ds,
        })
    }

    /// Places new chunks under a spreading policy (backup: distinct members first; hybrid:
    /// one copy here, the rest on other members). Members that fail or are full are left
    /// out and placement runs again; our own nodes make up for whatever is still missing.
    pub async fn plan_spread(&self, chunks: &[(ChunkId, u64)], policy: &Policy, user: &str) -> Result<Vec<ChunkPlacement>, Status> {
        let placed = self.spread(chunks, policy, user, false).await?;
        let mut out = Vec::with_capacity(chunks.len());
        for ((id, size), (local, mut remote)) in chunks.iter().zip(placed) {
            let mut all = local.clone();
            all.extend(remote.iter().map(|a| a.node.clone()));
            self.meta.add_pending(id, *size, &all, user).map_err(meta_status)?;
            let token = self.signer.sign(TokenOp::Put, id, &local, user, *size, self.token_ttl);
            let mut targets = self.nodes.addrs(&local);
            targets.append(&mut remote);
            out.push(ChunkPlacement {
                id: id.0.to_vec().into(),
                stored: false,
                targets,
                token: token.into(),
            });
        }
        Ok(out)
    }

    /// Where each chunk goes under a spreading policy: our nodes, and other members' nodes
    /// (with their put tokens for `user`). `metadata_backup`: the chunks are our metadata
    /// backup's, which hosts keep apart from our files'.
    pub async fn spread(
        &self,
        chunks: &[(ChunkId, u64)],
        policy: &Policy,
        user: &str,
        metadata_backup: bool,
    ) -> Result<Vec<(Vec<String>, Vec<NodeAddr>)>, Status> {
        let strategy = policy
            .datastore
            .as_ref()
            .map(|d| d.strategy)
            .filter(|s| *s != Strategy::Media)
            .unwrap_or(Strategy::Backup);
        let mut local: Vec<Vec<String>> = vec![Vec::new(); chunks.len()];
        let mut remote: Vec<Vec<NodeAddr>> = vec![Vec::new(); chunks.len()];
        let mut failed_members: Vec<String> = Vec::new();
        for _round in 0..3 {
            let mut cluster = self.placement_cluster(true);
            for n in &mut cluster.nodes {
                if failed_members.contains(&n.member) {
                    n.healthy = false;
                }
            }
            let mut asks: HashMap<String, Vec<(usize, String)>> = HashMap::new();
            for (i, (id, size)) in chunks.iter().enumerate() {
                let mut existing = local[i].clone();
                existing.extend(remote[i].iter().map(|a| a.node.clone()));
                let count = policy.replicas.saturating_sub(existing.len());
                if count == 0 {
                    continue;
                }
                let req = PlaceRequest {
                    chunk: id,
                    size: *size,
                    count,
                    strategy,
                    owner: &self.domain,
                    reader: &self.domain,
                    existing: &existing,
                    exclude: &[],
                    previous: &[],
                };
                // Not enough places anywhere: the fallback below reports it.
                let Ok(targets) = collective_placement::place(&cluster, &req) else {
                    continue;
                };
                for t in targets {
                    if member_of(&t) == self.domain {
                        self.nodes.note_planned(std::slice::from_ref(&t), *size);
                        local[i].push(t);
                    } else {
                        asks.entry(member_of(&t).to_string()).or_default().push((i, t));
                    }
                }
            }
            if asks.is_empty() {
                break;
            }
            for (member, wanted) in asks {
                let req = HostChunksRequest {
                    user: user.to_string(),
                    chunks: descs(wanted.iter().map(|(i, _)| (&chunks[*i].0, chunks[*i].1))),
                    avoid: vec![],
                    prefer: wanted.iter().map(|(_, n)| n.clone()).collect(),
                    metadata_backup,
                };
                match self.ask_host(&member, req).await {
                    Ok(targets) if targets.len() == wanted.len() => {
                        for ((i, _), t) in wanted.into_iter().zip(targets) {
                            remote[i].push(t);
                        }
                    }
                    Ok(_) => {
                        tracing::warn!(%member, "hosting answer did not match the request; not using it");
                        failed_members.push(member);
                    }
                    Err(e) => {
                        tracing::warn!(%member, "cannot host chunks there: {}", e.message());
                        failed_members.push(member);
                    }
                }
            }
        }
        let mut out: Vec<(Vec<String>, Vec<NodeAddr>)> = Vec::with_capacity(chunks.len());
        for (i, (id, size)) in chunks.iter().enumerate() {
            let mut existing = local[i].clone();
            existing.extend(remote[i].iter().map(|a| a.node.clone()));
            let missing = policy.replicas.saturating_sub(existing.len());
            if missing > 0 {
                let req = PlaceRequest {
                    chunk: id,
                    size: *size,
                    count: missing,
                    strategy: Strategy::Media,
                    owner: &self.domain,
                    reader: &self.domain,
                    existing: &existing,
                    exclude: &[],
                    previous: &[],
                };
                let more = collective_placement::place(&self.placement_cluster(false), &req)
                    .map_err(|e| Status::failed_precondition(e.to_string()))?;
                self.nodes.note_planned(&more, *size);
                local[i].extend(more);
            }
            out.push((std::mem::take(&mut local[i]), std::mem::take(&mut remote[i])));
        }
        Ok(out)
    }

    async fn ask_host(&self, member: &str, req: HostChunksRequest) -> Result<Vec<NodeAddr>, Status> {
        self.links.check(member)?;
        let channel = self.links.channel(member)?;
        let r = tokio::time::timeout(PEER_CALL_TIMEOUT, FederationClient::new(channel).host_chunks(req))
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "{member} did not answer within {PEER_CALL_TIMEOUT:?}"
                )))
            });
        match &r {
            Err(s) if s.code() != tonic::Code::ResourceExhausted => self.links.failed(member),
            _ => self.links.succeeded(member),
        }
        Ok(r?.into_inner().targets)
    }

    /// Adds the other members' replicas of each chunk, with their read tokens for `user`,
    /// after our own. A member that cannot answer is left out: its copies are skipped.
    pub async fn add_remote_replicas(&self, chunks: &mut [(ChunkId, u64, Vec<String>, Vec<NodeAddr>)], user: &str) {
        let mut asks: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, (_, _, replicas, _)) in chunks.iter().enumerate() {
            for r in replicas {
                let m = member_of(r);
                if m != self.domain {
                    let e = asks.entry(m.to_string()).or_default();
                    if e.last() != Some(&i) {
                        e.push(i);
                    }
                }
            }
        }
        // Members whose breaker is open are asked only for chunks no one else can serve.
        let mut later: Vec<(String, Vec<usize>)> = Vec::new();
        for (member, idx) in asks {
            // A member gossip has declared down would only cost a timeout.
            if self
                .links
                .fed()
                .is_some_and(|f| f.gossip.peer_state(&member) == Some(collective_gossip::PeerState::Down))
            {
                continue;
            }
            if self.links.skipped(&member) {
                later.push((member, idx));
                continue;
            }
            self.ask_read_tokens(&member, idx, chunks, user).await;
        }
        for (member, idx) in later {
            let domain = &self.domain;
            let orphans: Vec<usize> = idx
                .into_iter()
                .filter(|&i| chunks[i].3.is_empty() && !chunks[i].2.iter().any(|n| member_of(n) == domain))
                .collect();
            if !orphans.is_empty() {
                self.ask_read_tokens(&member, orphans, chunks, user).await;
            }
        }
    }

    /// Read tokens from `member` for the chunks at `idx`, added to their replicas.
    async fn ask_read_tokens(&self, member: &str, idx: Vec<usize>, chunks: &mut [(ChunkId, u64, Vec<String>, Vec<NodeAddr>)], user: &str) {
        let req = ReadTokensRequest {
            user: user.to_string(),
            chunks: descs(idx.iter().map(|&i| (&chunks[i].0, chunks[i].1))),
            metadata_backup: false,
        };
        let answer = match self.links.channel(member) {
            Ok(channel) => tokio::time::timeout(PEER_CALL_TIMEOUT, FederationClient::new(channel).read_tokens(req))
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "{member} did not answer within {PEER_CALL_TIMEOUT:?}"
                    )))
                }),
            Err(e) => Err(Status::from(e)),
        };
        match answer {
            Ok(r) => {
                self.links.succeeded(member);
                for (i, hosted) in idx.into_iter().zip(r.into_inner().chunks) {
                    chunks[i].3.extend(hosted.replicas);
                }
            }
            Err(e) => {
                tracing::warn!(%member, "no read tokens from there: {}", e.message());
                self.links.failed(member);
            }
        }
    }

    /// [`State::used_elsewhere`], counted again when stale (a commit placed chunks on other
    /// members) and a few seconds old, or every 30 s (counting reads every chunk).
    pub fn used_elsewhere_cached(&self) -> u64 {
        self.links.elsewhere(USAGE_REFRESH, USAGE_REFRESH_STALE, || self.used_elsewhere())
    }

    /// Bytes of our chunks that other members hold (one count per remote copy).
    pub fn used_elsewhere(&self) -> u64 {
        let mut total = 0u64;
        for r in self.meta.chunks() {
            let Ok((_, rec)) = r else { continue };
            let remote = rec.replicas.iter().filter(|n| member_of(n) != self.domain).count() as u64;
            total += remote * rec.size;
        }
        total
    }

    /// The member calling the federation API.
    fn guest<T>(&self, req: &Request<T>) -> Result<String, Status> {
        Ok(self.authorize_peer(req)?.domain)
    }

    /// `Federation.HostChunks` for `guest`: reserve room and sign put tokens.
    pub async fn host_chunks(&self, req: Request<HostChunksRequest>) -> Result<Response<HostChunksResponse>, Status> {
        let guest = self.guest(&req)?;
        let fed = self.links.fed().ok_or_else(|| Status::failed_precondition("not federated"))?;
        let q = req.into_inner();
        let guest = if q.metadata_backup {
            collective_meta::backup_guest(&guest)
        } else {
            guest
        };
        let user = parse_user(&q.user)?;
        let mut chunks = Vec::with_capacity(q.chunks.len());
        for c in &q.chunks {
            let id = ChunkId::from_slice(&c.id).ok_or_else(|| Status::invalid_argument("malformed chunk id"))?;
            chunks.push((id, c.size));
        }
        let cluster = self.placement_cluster(false);
        let avoid = q.avoid.clone();
        let usable = |n: &str, size: u64| {
            cluster
                .nodes
                .iter()
                .any(|c| c.id == n && c.healthy && c.free >= size && !avoid.iter().any(|a| a == n))
        };
        let place = |id: &ChunkId, size: u64, have: &[String], prefer: &str| -> Result<String, collective_meta::MetaError> {
            // An already hosted chunk goes back to a node that holds it, if still up;
            // otherwise the node the guest's placement chose, if it can take it.
            if let Some(n) = have.iter().find(|n| usable(n, size)) {
                return Ok(n.clone());
            }
            if !prefer.is_empty() && usable(prefer, size) {
                return Ok(prefer.to_string());
            }
            let req = PlaceRequest {
                chunk: id,
                size,
                count: 1,
                strategy: Strategy::Media,
                owner: &self.domain,
                reader: &self.domain,
                existing: &[],
                exclude: &avoid,
                previous: &[],
            };
            collective_placement::place(&cluster, &req)
                .map(|mut v| v.remove(0))
                .map_err(|e| collective_meta::MetaError::Placement(format!("{} cannot host a copy: {e}", self.domain)))
        };
        let nodes = self
            .meta
            .host_chunks(&guest, &chunks, &q.prefer, fed.contribution, &place)
            .map_err(|e| match e {
                collective_meta::MetaError::QuotaFull { used, quota } => Status::resource_exhausted(format!(
                    "{} has no room left in what it contributes to the federation ({} of {} hosted)",
                    self.domain,
                    collective_core::format_bytes(used),
                    collective_core::format_bytes(quota)
                )),
                e => meta_status(e),
            })?;
        let mut targets = Vec::with_capacity(chunks.len());
        for ((id, size), held) in chunks.iter().zip(nodes) {
            let node = held.last().cloned().unwrap_or_default();
            self.nodes.note_planned(std::slice::from_ref(&node), *size);
            let token = self
                .signer
                .sign(TokenOp::Put, id, std::slice::from_ref(&node), &user, *size, self.token_ttl);
            let mut addr = self.nodes.addrs(std::slice::from_ref(&node)).remove(0);
            addr.token = token.into();
            targets.push(addr);
        }
        Ok(Response::new(HostChunksResponse { targets }))
    }

    /// `Federation.ReadTokens` for `guest`: where its chunks are, with get tokens.
    pub async fn read_tokens(&self, req: Request<ReadTokensRequest>) -> Result<Response<ReadTokensResponse>, Status> {
        let guest = self.guest(&req)?;
        let q = req.into_inner();
        let guest = if q.metadata_backup {
            collective_meta::backup_guest(&guest)
        } else {
            guest
        };
        let user = parse_user(&q.user)?;
        let mut out = Vec::with_capacity(q.chunks.len());
        for c in &q.chunks {
            let id = ChunkId::from_slice(&c.id).ok_or_else(|| Status::invalid_argument("malformed chunk id"))?;
            let Some(rec) = self.meta.hosted(&guest, &id).map_err(meta_status)? else {
                out.push(HostedReplicas { replicas: vec![] });
                continue;
            };
            let token = self.signer.sign(TokenOp::Get, &id, &rec.nodes, &user, rec.size, self.token_ttl);
            let replicas = self
                .nodes
                .addrs(&rec.nodes)
                .into_iter()
                .map(|mut a| {
                    a.token = token.clone().into();
                    a
                })
                .collect();
            out.push(HostedReplicas { replicas });
        }
        Ok(Response::new(ReadTokensResponse { chunks: out }))
    }
}
