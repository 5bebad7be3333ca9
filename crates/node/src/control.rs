//! The gRPC control service: only this member's coordinator may call it.

use std::sync::Arc;

use collective_core::{ChunkId, Role};
use collective_proto::v1::node_control_server::NodeControl;
use collective_proto::v1::{DeleteChunksRequest, DeleteChunksResponse, NodeUsage, UsageRequest, VerifyChunkRequest, VerifyChunkResponse};
use tonic::{Request, Response, Status};

use crate::service::NodeState;

pub struct Control {
    pub state: Arc<NodeState>,
}

impl Control {
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = collective_rpc::authorize(req, &self.state.domain, &[Role::Coordinator])?;
        if caller.principal.to_string() != self.state.coordinator {
            return Err(Status::permission_denied(format!(
                "{} is not this node's coordinator ({})",
                caller.principal, self.state.coordinator
            )));
        }
        Ok(())
    }
}

fn chunk_id(b: &[u8]) -> Result<ChunkId, Status> {
    ChunkId::from_slice(b).ok_or_else(|| Status::invalid_argument("malformed chunk id: expected 32 bytes"))
}

#[tonic::async_trait]
impl NodeControl for Control {
    async fn usage(&self, req: Request<UsageRequest>) -> Result<Response<NodeUsage>, Status> {
        self.check(&req)?;
        Ok(Response::new(self.state.usage()))
    }

    async fn verify_chunk(&self, req: Request<VerifyChunkRequest>) -> Result<Response<VerifyChunkResponse>, Status> {
        self.check(&req)?;
        let id = chunk_id(&req.get_ref().chunk_id)?;
        let store = self.state.store.clone();
        let present = store.contains(&id);
        let intact = tokio::task::spawn_blocking(move || store.verify(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let intact = match intact {
            Ok(v) => v,
            Err(collective_chunkstore::StoreError::NotFound(_)) => false,
            Err(e) => return Err(Status::internal(e.to_string())),
        };
        if present && !intact {
            self.state.metrics.verification_failures.inc();
        }
        Ok(Response::new(VerifyChunkResponse { present, intact }))
    }

    async fn delete_chunks(&self, req: Request<DeleteChunksRequest>) -> Result<Response<DeleteChunksResponse>, Status> {
        self.check(&req)?;
        let ids = req.get_ref().chunk_ids.iter().map(|b| chunk_id(b)).collect::<Result<Vec<_>, _>>()?;
        let store = self.state.store.clone();
        let (deleted, freed) = tokio::task::spawn_blocking(move || {
            let (mut n, mut bytes) = (0u64, 0u64);
            for id in ids {
                let f = store.delete(&id)?;
                if f > 0 {
                    n += 1;
                    bytes += f;
                }
            }
            Ok::<_, collective_chunkstore::StoreError>((n, bytes))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(DeleteChunksResponse {
            deleted,
            freed_bytes: freed,
        }))
    }
}
