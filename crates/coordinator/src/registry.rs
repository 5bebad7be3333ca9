//! The `Registry` service: storage nodes register and report.

use std::sync::Arc;
use std::time::Instant;

use collective_core::{Role, unix_ms_now};
use collective_meta::NodeRecord;
use collective_proto::v1::registry_server::Registry;
use collective_proto::v1::{HeartbeatRequest, HeartbeatResponse, RegisterNodeRequest, RegisterNodeResponse};
use tonic::{Request, Response, Status};

use crate::state::{NodeEntry, State, meta_status};

pub struct RegistryService {
    pub state: Arc<State>,
}

impl RegistryService {
    fn node_caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        collective_rpc::authorize(req, self.state.identity.revocations(), &self.state.domain, &[Role::Node])
            .map(|c| c.principal.to_string())
            .inspect_err(|_| self.state.metrics.denials.inc())
    }

    /// The certificates our CA revoked, which nodes refuse too.
    fn revoked(&self) -> Vec<bytes::Bytes> {
        let fps = self.state.identity.revocations().fingerprints();
        fps.into_iter().map(|f| bytes::Bytes::copy_from_slice(&f)).collect()
    }
}

impl RegistryService {
    /// A node's scrub found (and quarantined) corrupt copies: forget them, so repair makes
    /// new copies from the other replicas.
    async fn forget_corrupt(&self, node: &str, ids: &[bytes::Bytes]) -> Result<(), Status> {
        self.state.events.emit(
            "corruption-found",
            node,
            crate::events::Severity::Critical,
            format!(
                "node {node} found {} corrupt chunk copies; they are repaired from other copies",
                ids.len()
            ),
        );
        for b in ids {
            let Some(id) = collective_core::ChunkId::from_slice(b) else {
                continue;
            };
            self.state.metrics.scrub_corrupt.inc();
            let removed = self.state.meta.remove_replica(&id, node).map_err(meta_status)?;
            tracing::error!(chunk = %id.short(), %node, removed, "node reports a corrupt copy; repairing it from another replica");
            if removed {
                self.state.upkeep.note_corrupt(id);
            }
        }
        self.state.meta.flush().await.map_err(meta_status)
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register_node(&self, req: Request<RegisterNodeRequest>) -> Result<Response<RegisterNodeResponse>, Status> {
        let node = self.node_caller(&req)?;
        let r = req.into_inner();
        for (what, a) in [("grpc_addr", &r.grpc_addr), ("quic_addr", &r.quic_addr)] {
            collective_rpc::resolve(a).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))?;
        }
        let usage = r.usage.unwrap_or_default();
        if self.state.meta.was_removed(&node).map_err(meta_status)? {
            if usage.chunks > 0 {
                return Err(Status::failed_precondition(format!(
                    "{node} was removed with `collective node rm` and still holds {} chunk(s); stop it, or empty its data directory to add it back as a new node",
                    usage.chunks
                )));
            }
            self.state.meta.forget_removal(&node).map_err(meta_status)?;
        }
        let (rec_capacity, quic) = (usage.capacity_bytes, r.quic_addr.clone());
        let rec = NodeRecord {
            grpc_addr: r.grpc_addr.clone(),
            quic_addr: r.quic_addr.clone(),
            capacity: usage.capacity_bytes,
            registered_ms: unix_ms_now(),
        };
        let meta = self.state.meta.clone();
        let name = node.clone();
        tokio::task::spawn_blocking(move || meta.upsert_node(&name, &rec).and_then(|_| meta.flush_blocking()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(meta_status)?;
        self.state.nodes.lock().insert(
            node.clone(),
            NodeEntry {
                grpc_addr: r.grpc_addr,
                quic_addr: r.quic_addr,
                usage,
                last_seen: Some(Instant::now()),
                last_seen_ms: unix_ms_now() as i64,
                planned_bytes: 0,
            },
        );
        self.state.nodes.forget_control(&node);
        self.state.upkeep.queue_reconcile(&node);
        self.state.audit(&node, "node-register", &node, &Ok::<_, Status>(()), |_| {
            format!("{} capacity, chunks at {}", collective_core::format_bytes(rec_capacity), quic)
        });
        self.state.events.emit(
            "node-registered",
            &node,
            crate::events::Severity::Info,
            format!("node {node} registered ({} capacity)", collective_core::format_bytes(rec_capacity)),
        );
        Ok(Response::new(RegisterNodeResponse {
            token_public_key: self.state.signer.public_key().to_vec().into(),
            coordinator: self.state.principal.clone(),
            heartbeat_interval_ms: 2000,
            revoked: self.revoked(),
            removed_members: self.state.identity.revocations().removed_members(),
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let node = self.node_caller(&req)?;
        let q = req.into_inner();
        if !q.corrupt.is_empty() && self.state.nodes.lock().contains_key(&node) {
            self.forget_corrupt(&node, &q.corrupt).await?;
        }
        let usage = q.usage.unwrap_or_default();
        let mut nodes = self.state.nodes.lock();
        // The first report since this coordinator started: what the node holds may have
        // changed while we were down (uploads we never recorded, deletes it never got), so
        // reconcile it as if it had just registered.
        let mut first_since_start = false;
        let known = match nodes.get_mut(&node) {
            Some(e) => {
                first_since_start = e.last_seen.is_none();
                e.usage = usage;
                e.last_seen = Some(Instant::now());
                e.last_seen_ms = unix_ms_now() as i64;
                e.planned_bytes = 0;
                true
            }
            None => false,
        };
        drop(nodes);
        if first_since_start {
            self.state.upkeep.queue_reconcile(&node);
        }
        Ok(Response::new(HeartbeatResponse {
            known,
            revoked: self.revoked(),
            removed_members: self.state.identity.revocations().removed_members(),
        }))
    }
}
