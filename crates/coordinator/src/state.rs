//! The coordinator's composition root: the parts (nodes, access, links, upkeep, events)
//! and the few facts they share (principal, domain, metadata store, token signer, clock).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use collective_meta::{MetaError, MetaStore};
use collective_pki::{TlsIdentity, TokenSigner};
use collective_placement::{Cluster, Node as PlacementNode};
use collective_proto::v1::NodeUsage;

use crate::metrics::CoordinatorMetrics;

pub struct State {
    pub principal: String,
    pub domain: String,
    /// Who may do what in this member's namespace (admins and grants).
    pub access: crate::access::Access,
    /// Limits on expensive calls, per principal.
    pub throttles: crate::throttle::Throttles,
    /// The member CA, when configured (signs certificates for redeemed user invites).
    pub ca: Option<collective_pki::MemberCa>,
    /// The gRPC address others reach us at.
    pub advertise_grpc: String,
    /// The other members: gossip, channels to their coordinators, removals.
    pub links: crate::links::Links,
    /// The metadata directory (gossip remembers peers there).
    pub meta_dir: std::path::PathBuf,
    pub meta: Arc<MetaStore>,
    pub signer: TokenSigner,
    pub replication: usize,
    pub node_timeout: Duration,
    pub token_ttl: Duration,
    /// This member's storage nodes: the live table and control clients.
    pub nodes: crate::nodes::Nodes,
    pub metrics: CoordinatorMetrics,
    pub identity: TlsIdentity,
    /// Repair, garbage collection, hot copies, drains.
    pub upkeep: crate::upkeep::Upkeep,
    /// Cluster events for `collective events`.
    pub events: crate::events::Events,
    /// Turns true when the coordinator is asked to stop: streams end, loops wind down.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Calls in flight and streams open, for the shutdown log.
    pub busy: collective_rpc::Busy,
    /// The time of day for grant and invite expiry and gossip (tests drive it).
    pub clock: collective_core::SharedClock,
    /// The metadata backup into the federation (off until `server` configures it).
    pub backup: crate::metabackup::MetaBackup,
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
            throttles: crate::throttle::Throttles::new(&domain, clock.clone()),
            links: crate::links::Links::new(&domain, identity.clone()),
            domain,
            ca,
            advertise_grpc,
            meta_dir,
            meta,
            signer,
            replication,
            node_timeout,
            token_ttl,
            nodes: crate::nodes::Nodes::new(nodes, node_timeout, identity.clone()),
            events: crate::events::Events::new(metrics.events.clone()),
            metrics,
            identity,
            upkeep: crate::upkeep::Upkeep::new(upkeep, draining),
            stopping: tokio::sync::watch::channel(false).0,
            busy: collective_rpc::Busy::default(),
            clock,
            backup: crate::metabackup::MetaBackup::new(crate::metabackup::BackupSettings::off(), Default::default()),
        })
    }

    /// What placement chooses from: our nodes (draining ones count as unhealthy), and with
    /// `remote`, the nodes of every other member that is up, within what it contributes.
    pub fn placement_cluster(&self, remote: bool) -> Cluster {
        let mut out = Cluster::default();
        {
            let nodes = self.nodes.lock();
            for (name, e) in nodes.iter() {
                out.nodes.push(PlacementNode {
                    id: name.clone(),
                    member: self.domain.clone(),
                    latency_ms: 0,
                    capacity: e.usage.capacity_bytes,
                    free: e.usage.free_bytes.saturating_sub(e.planned_bytes),
                    healthy: self.nodes.is_up(e) && !self.upkeep.is_draining(name),
                    load: (e.planned_bytes >> 22).min(u64::from(u32::MAX)) as u32,
                });
            }
        }
        if remote && let Some(fed) = self.links.fed() {
            for s in fed.gossip.states() {
                if s.member == self.domain {
                    continue;
                }
                let up = self.member_up(&s.member) && !self.links.skipped(&s.member);
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
}

pub use crate::error::meta_status;
pub use crate::nodes::NodeEntry;
