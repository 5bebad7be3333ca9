//! Shared coordinator state: metadata, the live node table, the token signer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collective_meta::{MetaError, MetaStore};
use collective_pki::{TlsIdentity, TokenSigner};
use collective_placement::{Cluster, Node as PlacementNode};
use collective_proto::v1::node_control_client::NodeControlClient;
use collective_proto::v1::{NodeAddr, NodeUsage};
use tonic::Status;
use tonic::transport::Channel;

use crate::metrics::CoordinatorMetrics;

/// What the coordinator knows of one node.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub grpc_addr: String,
    pub quic_addr: String,
    pub usage: NodeUsage,
    /// None until the node has reported since this coordinator started.
    pub last_seen: Option<Instant>,
    pub last_seen_ms: i64,
    /// Bytes planned onto the node since its last report.
    pub planned_bytes: u64,
}

/// What a coordinator knows about the federation it belongs to (None when standalone).
pub struct Federated {
    /// The federation domain, e.g. `collective.local`.
    pub domain: String,
    pub gossip: collective_gossip::Gossip,
    pub gossip_addr: String,
    /// The federation root, when this coordinator may sign new members' CAs.
    pub root: Option<collective_pki::FederationRoot>,
    pub contribution: u64,
}

pub struct State {
    pub principal: String,
    pub domain: String,
    /// Who may do what in this member's namespace (admins and grants).
    pub access: crate::access::Access,
    /// The member CA, when configured (signs certificates for redeemed user invites).
    pub ca: Option<collective_pki::MemberCa>,
    /// The gRPC address others reach us at.
    pub advertise_grpc: String,
    pub federation: std::sync::OnceLock<Federated>,
    /// The metadata directory (gossip remembers peers there).
    pub meta_dir: std::path::PathBuf,
    pub(crate) peer_channels: Mutex<HashMap<String, Channel>>,
    pub meta: Arc<MetaStore>,
    pub signer: TokenSigner,
    pub replication: usize,
    pub node_timeout: Duration,
    pub token_ttl: Duration,
    pub nodes: Mutex<HashMap<String, NodeEntry>>,
    pub metrics: CoordinatorMetrics,
    pub identity: TlsIdentity,
    controls: Mutex<HashMap<String, NodeControlClient<Channel>>>,
    /// Bytes of our chunks on other members' nodes, and when that was counted.
    pub used_elsewhere: Mutex<Option<(Instant, u64)>>,
    pub used_elsewhere_stale: std::sync::atomic::AtomicBool,
    /// Repair, garbage collection, hot copies, drains.
    pub upkeep: crate::upkeep::Upkeep,
    /// One circuit breaker per other member's coordinator.
    pub peer_breakers: collective_core::Breakers,
    /// Cluster events for `collective events`.
    pub events: crate::events::Events,
    /// Members removed from the federation, by domain (see `removal.rs`).
    pub(crate) removals: Mutex<std::collections::BTreeMap<String, collective_proto::v1::MemberRemoval>>,
    /// Turns true when the coordinator is asked to stop: streams end, loops wind down.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Calls in flight and streams open, for the shutdown log.
    pub busy: collective_rpc::Busy,
    /// The time of day for grant and invite expiry and gossip (tests drive it).
    pub clock: collective_core::SharedClock,
}

impl State {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: TlsIdentity,
        admins: Vec<collective_core::Subject>,
        ca: Option<collective_pki::MemberCa>,
        advertise_grpc: String,
        meta_dir: std::path::PathBuf,
        meta: Arc<MetaStore>,
        signer: TokenSigner,
        replication: usize,
        node_timeout: Duration,
        token_ttl: Duration,
        metrics: CoordinatorMetrics,
        upkeep: crate::upkeep::UpkeepSettings,
    ) -> Result<State, MetaError> {
        let draining = meta.draining()?;
        let mut nodes = HashMap::new();
        for (name, rec) in meta.nodes()? {
            nodes.insert(
                name,
                NodeEntry {
                    grpc_addr: rec.grpc_addr,
                    quic_addr: rec.quic_addr,
                    usage: NodeUsage {
                        capacity_bytes: rec.capacity,
                        ..Default::default()
                    },
                    last_seen: None,
                    last_seen_ms: 0,
                    planned_bytes: 0,
                },
            );
        }
        let domain = identity.principal.domain.clone();
        let clock = collective_core::system_clock();
        Ok(State {
            principal: identity.principal.to_string(),
            access: crate::access::Access::new(&domain, admins, meta.clone(), clock.clone(), metrics.denials.clone()),
            domain,
            ca,
            advertise_grpc,
            federation: std::sync::OnceLock::new(),
            meta_dir,
            peer_channels: Mutex::new(HashMap::new()),
            meta,
            signer,
            replication,
            node_timeout,
            token_ttl,
            nodes: Mutex::new(nodes),
            events: crate::events::Events::new(metrics.events.clone()),
            removals: Mutex::new(std::collections::BTreeMap::new()),
            metrics,
            identity,
            controls: Mutex::new(HashMap::new()),
            used_elsewhere: Mutex::new(None),
            used_elsewhere_stale: std::sync::atomic::AtomicBool::new(false),
            upkeep: crate::upkeep::Upkeep::new(upkeep, draining),
            peer_breakers: collective_core::Breakers::default(),
            stopping: tokio::sync::watch::channel(false).0,
            busy: collective_rpc::Busy::default(),
            clock,
        })
    }

    pub fn is_up(&self, e: &NodeEntry) -> bool {
        e.last_seen.map(|t| t.elapsed() < self.node_timeout).unwrap_or(false) && e.usage.healthy
    }

    pub fn lock_nodes(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeEntry>> {
        // A panic while holding the lock cannot leave the table inconsistent (plain data).
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What placement chooses from: our nodes (draining ones count as unhealthy), and with
    /// `remote`, the nodes of every other member that is up, within what it contributes.
    pub fn placement_cluster(&self, remote: bool) -> Cluster {
        let mut out = Cluster::default();
        {
            let nodes = self.lock_nodes();
            for (name, e) in nodes.iter() {
                out.nodes.push(PlacementNode {
                    id: name.clone(),
                    member: self.domain.clone(),
                    latency_ms: 0,
                    capacity: e.usage.capacity_bytes,
                    free: e.usage.free_bytes.saturating_sub(e.planned_bytes),
                    healthy: self.is_up(e) && !self.upkeep.is_draining(name),
                    load: (e.planned_bytes >> 22).min(u64::from(u32::MAX)) as u32,
                });
            }
        }
        if remote && let Some(fed) = self.fed() {
            for s in fed.gossip.states() {
                if s.member == self.domain {
                    continue;
                }
                let up = self.member_up(&s.member) && !self.peer_skipped(&s.member);
                out.room
                    .insert(s.member.clone(), s.contribution_bytes.saturating_sub(s.hosted_bytes));
                for n in s.nodes {
                    out.nodes.push(PlacementNode {
                        id: n.node,
                        member: s.member.clone(),
                        latency_ms: 10,
                        capacity: n.capacity_bytes,
                        free: n.free_bytes,
                        healthy: up && n.healthy,
                        load: 0,
                    });
                }
            }
        }
        out.nodes.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Counts `bytes` against each node's free space until its next report.
    pub fn note_planned(&self, chosen: &[String], bytes: u64) {
        let mut nodes = self.lock_nodes();
        for n in chosen {
            if let Some(e) = nodes.get_mut(n) {
                e.planned_bytes += bytes;
            }
        }
    }

    /// Addresses for a list of nodes, reachable ones first (stable otherwise).
    pub fn addrs(&self, names: &[String]) -> Vec<NodeAddr> {
        let nodes = self.lock_nodes();
        let mut out: Vec<(bool, NodeAddr)> = names
            .iter()
            .map(|n| match nodes.get(n) {
                Some(e) => (
                    self.is_up(e),
                    NodeAddr {
                        node: n.clone(),
                        quic_addr: e.quic_addr.clone(),
                        ..Default::default()
                    },
                ),
                None => (
                    false,
                    NodeAddr {
                        node: n.clone(),
                        ..Default::default()
                    },
                ),
            })
            .collect();
        out.sort_by_key(|(up, _)| !*up);
        out.into_iter().map(|(_, a)| a).collect()
    }

    /// Drops a cached control client (the node re-registered, maybe at a new address).
    pub fn forget_control(&self, node: &str) {
        self.controls.lock().unwrap_or_else(|p| p.into_inner()).remove(node);
    }

    /// A control client for one of our nodes.
    pub fn control(&self, node: &str) -> Result<NodeControlClient<Channel>, Status> {
        let mut controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = controls.get(node) {
            return Ok(c.clone());
        }
        let addr = self
            .lock_nodes()
            .get(node)
            .map(|e| e.grpc_addr.clone())
            .ok_or_else(|| Status::not_found(format!("{node} is not a registered node")))?;
        let principal = node.parse().map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let channel = collective_rpc::channel(&self.identity, &addr, &principal).map_err(|e| Status::internal(e.to_string()))?;
        let client = NodeControlClient::new(channel);
        controls.insert(node.to_string(), client.clone());
        Ok(client)
    }
}

pub use crate::error::meta_status;
