//! Capacity shared between members: datastores whose strategy spreads replicas (backup,
//! hybrid) keep one copy on our own nodes and put the others on other members' nodes, one
//! member per copy when there are enough, within what each member contributes. The member
//! whose nodes hold a chunk signs the tokens for it (`Federation.HostChunks` and
//! `Federation.ReadTokens`); its coordinator never learns a file name or a key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use collective_core::{ChunkId, Principal};
use collective_gossip::PeerState;
use collective_meta::DatastoreRecord;
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
        let spread = self.fed().is_some() && ds.as_ref().is_some_and(|d| d.strategy == "backup" || d.strategy == "hybrid");
        Ok(Policy {
            replicas,
            spread,
            datastore: ds,
        })
    }

    /// Other members that could host a chunk of `size`, best first for this chunk
    /// (rendezvous order on the chunk id, so a file's chunks spread over all of them).
    fn hosts_for(&self, id: &ChunkId, size: u64, exclude: &[String]) -> Vec<String> {
        let Some(fed) = self.fed() else { return vec![] };
        let mut hosts: Vec<(u64, String)> = fed
            .gossip
            .states()
            .into_iter()
            .filter(|s| s.member != self.domain && !exclude.contains(&s.member))
            // A suspect member may well answer (a missed probe under load); if it does
            // not, its chunks fall back to another member or to our own nodes.
            .filter(|s| matches!(fed.gossip.peer_state(&s.member), Some(PeerState::Alive | PeerState::Suspect)))
            .filter(|s| s.contribution_bytes.saturating_sub(s.hosted_bytes) >= size)
            .filter(|s| s.nodes.iter().any(|n| n.healthy && n.free_bytes >= size))
            .map(|s| {
                let h = ChunkId::of(&[id.as_bytes().as_slice(), s.member.as_bytes()].concat());
                let score = u64::from_be_bytes(h.0[..8].try_into().unwrap_or_default());
                (score, s.member)
            })
            .collect();
        hosts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        hosts.into_iter().map(|(_, m)| m).collect()
    }

    /// Places new chunks under a spreading policy: one copy here, the others on distinct
    /// other members (our own nodes make up for members that are missing, full or fail).
    pub async fn plan_spread(&self, chunks: &[(ChunkId, u64)], policy: &Policy, user: &str) -> Result<Vec<ChunkPlacement>, Status> {
        let wanted_remote = policy.replicas.saturating_sub(1);
        // Which members host which chunks.
        let mut remote: Vec<Vec<NodeAddr>> = vec![Vec::new(); chunks.len()];
        let mut failed_members: Vec<String> = Vec::new();
        for _round in 0..3 {
            let mut asks: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, (id, size)) in chunks.iter().enumerate() {
                let have: Vec<String> = remote[i].iter().map(|a| member_of(&a.node).to_string()).collect();
                let need = wanted_remote.saturating_sub(have.len());
                let mut exclude = failed_members.clone();
                exclude.extend(have);
                for m in self.hosts_for(id, *size, &exclude).into_iter().take(need) {
                    asks.entry(m).or_default().push(i);
                }
            }
            if asks.is_empty() {
                break;
            }
            for (member, idx) in asks {
                let req = HostChunksRequest {
                    user: user.to_string(),
                    chunks: descs(idx.iter().map(|&i| (&chunks[i].0, chunks[i].1))),
                    avoid: vec![],
                };
                match self.ask_host(&member, req).await {
                    Ok(targets) if targets.len() == idx.len() => {
                        for (i, t) in idx.into_iter().zip(targets) {
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
        let mut out = Vec::with_capacity(chunks.len());
        for (i, (id, size)) in chunks.iter().enumerate() {
            let local_count = policy.replicas - remote[i].len().min(wanted_remote);
            let local = collective_placement::place(&self.candidates(), local_count, *size, &[])
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            self.note_planned(&local, *size);
            let mut all = local.clone();
            all.extend(remote[i].iter().map(|a| a.node.clone()));
            self.meta.add_pending(id, *size, &all).map_err(meta_status)?;
            let token = self.signer.sign(TokenOp::Put, id, &local, user, *size, self.token_ttl);
            let mut targets = self.addrs(&local);
            targets.append(&mut remote[i]);
            out.push(ChunkPlacement {
                id: id.0.to_vec().into(),
                stored: false,
                targets,
                token: token.into(),
            });
        }
        Ok(out)
    }

    async fn ask_host(&self, member: &str, req: HostChunksRequest) -> Result<Vec<NodeAddr>, Status> {
        let channel = self.peer_channel(member)?;
        let r = tokio::time::timeout(PEER_CALL_TIMEOUT, FederationClient::new(channel).host_chunks(req))
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "{member} did not answer within {PEER_CALL_TIMEOUT:?}"
                )))
            });
        if r.is_err() {
            self.forget_peer(member);
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
        for (member, idx) in asks {
            let req = ReadTokensRequest {
                user: user.to_string(),
                chunks: descs(idx.iter().map(|&i| (&chunks[i].0, chunks[i].1))),
            };
            let answer = match self.peer_channel(&member) {
                Ok(channel) => tokio::time::timeout(PEER_CALL_TIMEOUT, FederationClient::new(channel).read_tokens(req))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "{member} did not answer within {PEER_CALL_TIMEOUT:?}"
                        )))
                    }),
                Err(e) => Err(e),
            };
            match answer {
                Ok(r) => {
                    let r = r.into_inner();
                    for (i, hosted) in idx.into_iter().zip(r.chunks) {
                        chunks[i].3.extend(hosted.replicas);
                    }
                }
                Err(e) => {
                    tracing::warn!(%member, "no read tokens from there: {}", e.message());
                    self.forget_peer(&member);
                }
            }
        }
    }

    /// [`State::used_elsewhere`], counted again when stale (a commit placed chunks on other
    /// members) and a few seconds old, or every 30 s (counting reads every chunk).
    pub fn used_elsewhere_cached(&self) -> u64 {
        let mut cache = self.used_elsewhere.lock().unwrap_or_else(|p| p.into_inner());
        let stale = self.used_elsewhere_stale.load(std::sync::atomic::Ordering::Relaxed);
        if let Some((at, v)) = *cache
            && at.elapsed() < if stale { USAGE_REFRESH_STALE } else { USAGE_REFRESH }
        {
            return v;
        }
        self.used_elsewhere_stale.store(false, std::sync::atomic::Ordering::Relaxed);
        let v = self.used_elsewhere();
        *cache = Some((Instant::now(), v));
        v
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
        let fed = self.fed().ok_or_else(|| Status::failed_precondition("not federated"))?;
        let q = req.into_inner();
        let user = parse_user(&q.user)?;
        let mut chunks = Vec::with_capacity(q.chunks.len());
        for c in &q.chunks {
            let id = ChunkId::from_slice(&c.id).ok_or_else(|| Status::invalid_argument("malformed chunk id"))?;
            chunks.push((id, c.size));
        }
        let candidates = self.candidates();
        let avoid = q.avoid.clone();
        let place = |_: &ChunkId, size: u64, have: &[String]| -> Result<String, String> {
            // An already hosted chunk goes back to a node that holds it, if still up.
            if let Some(n) = have
                .iter()
                .find(|n| candidates.iter().any(|c| &c.node == *n && c.healthy && !avoid.contains(n)))
            {
                return Ok(n.clone());
            }
            collective_placement::place(&candidates, 1, size, &avoid)
                .map(|mut v| v.remove(0))
                .map_err(|e| format!("{} cannot host a copy: {e}", self.domain))
        };
        let nodes = self
            .meta
            .host_chunks(&guest, &chunks, fed.contribution, &place)
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
            self.note_planned(std::slice::from_ref(&node), *size);
            let token = self
                .signer
                .sign(TokenOp::Put, id, std::slice::from_ref(&node), &user, *size, self.token_ttl);
            let mut addr = self.addrs(std::slice::from_ref(&node)).remove(0);
            addr.token = token.into();
            targets.push(addr);
        }
        Ok(Response::new(HostChunksResponse { targets }))
    }

    /// `Federation.ReadTokens` for `guest`: where its chunks are, with get tokens.
    pub async fn read_tokens(&self, req: Request<ReadTokensRequest>) -> Result<Response<ReadTokensResponse>, Status> {
        let guest = self.guest(&req)?;
        let q = req.into_inner();
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
