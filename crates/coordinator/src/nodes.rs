//! The node registry: this member's storage nodes, whether each is up, and the control
//! clients that reach them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use collective_pki::TlsIdentity;
use collective_proto::v1::node_control_client::NodeControlClient;
use collective_proto::v1::{NodeAddr, NodeUsage};

use crate::error::Error;
use tonic::transport::Channel;

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

/// This member's storage nodes as the coordinator sees them: registrations, last
/// reports, bytes planned onto each, and cached control clients. It knows nothing of
/// chunks, access or the federation.
pub struct Nodes {
    table: Mutex<HashMap<String, NodeEntry>>,
    controls: Mutex<HashMap<String, NodeControlClient<Channel>>>,
    /// A node silent for this long is down.
    timeout: Duration,
    identity: TlsIdentity,
}

impl Nodes {
    pub fn new(table: HashMap<String, NodeEntry>, timeout: Duration, identity: TlsIdentity) -> Nodes {
        Nodes {
            table: Mutex::new(table),
            controls: Mutex::new(HashMap::new()),
            timeout,
            identity,
        }
    }

    pub fn is_up(&self, e: &NodeEntry) -> bool {
        e.last_seen.map(|t| t.elapsed() < self.timeout).unwrap_or(false) && e.usage.healthy
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeEntry>> {
        // A panic while holding the lock cannot leave the table inconsistent (plain data).
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `bytes` against each node's free space until its next report.
    pub fn note_planned(&self, chosen: &[String], bytes: u64) {
        let mut nodes = self.lock();
        for n in chosen {
            if let Some(e) = nodes.get_mut(n) {
                e.planned_bytes += bytes;
            }
        }
    }

    /// Addresses for a list of nodes, reachable ones first (stable otherwise).
    pub fn addrs(&self, names: &[String]) -> Vec<NodeAddr> {
        let nodes = self.lock();
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
    pub fn control(&self, node: &str) -> Result<NodeControlClient<Channel>, Error> {
        let mut controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = controls.get(node) {
            return Ok(c.clone());
        }
        let addr = self
            .lock()
            .get(node)
            .map(|e| e.grpc_addr.clone())
            .ok_or_else(|| Error::UnknownNode(node.to_string()))?;
        let principal = node.parse().map_err(|e| Error::Invalid(format!("{node}: {e}")))?;
        let channel = collective_rpc::channel(&self.identity, &addr, &principal).map_err(|e| Error::Node {
            node: node.to_string(),
            detail: e.to_string(),
        })?;
        let client = NodeControlClient::new(channel);
        controls.insert(node.to_string(), client.clone());
        Ok(client)
    }
}
