//! The gRPC control service: only this member's coordinator may call it.

use std::sync::Arc;

use collective_core::{ChunkId, Role};
use collective_dataplane::NodeTarget;
use collective_proto::v1::node_control_server::NodeControl;
use collective_proto::v1::{
    ChunkIdBatch, CopyChunkRequest, CopyChunkResponse, DeleteChunksRequest, DeleteChunksResponse, KeepRecoveryResponse, ListChunksRequest,
    NodeUsage, ScrubStatus, SignedRecoveryRecord, StartScrubRequest, SteerWorkerRequest, UsageRequest, VerifyChunkRequest,
    VerifyChunkResponse, WorkerInfo, WorkersRequest, WorkersResponse,
};
use tonic::{Request, Response, Status};

/// Chunk ids per `ListChunks` message.
const LIST_BATCH: usize = 4096;

type IdStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<ChunkIdBatch, Status>> + Send>>;

fn target(node: &str, addr: &str) -> Result<NodeTarget, Status> {
    let addr = addr
        .parse()
        .map_err(|_| Status::invalid_argument(format!("bad QUIC address '{addr}' for {node}")))?;
    Ok(NodeTarget {
        node: node.to_string(),
        addr,
    })
}

use crate::service::NodeState;

pub struct Control {
    pub state: Arc<NodeState>,
    /// Where the member's recovery record is kept.
    pub record: crate::recovery::RecordFile,
}

impl Control {
    fn workers_response(&self) -> WorkersResponse {
        WorkersResponse {
            workers: vec![WorkerInfo::of(self.state.scrub.worker.report(), &self.state.principal)],
            unreachable: vec![],
        }
    }

    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = collective_rpc::authorize(req, self.state.identity.revocations(), &self.state.domain, &[Role::Coordinator])?;
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
    type ListChunksStream = IdStream;

    async fn keep_recovery(&self, req: Request<SignedRecoveryRecord>) -> Result<Response<KeepRecoveryResponse>, Status> {
        self.check(&req)?;
        let control = Control {
            state: self.state.clone(),
            record: self.record.clone(),
        };
        let signed = req.into_inner();
        tokio::task::spawn_blocking(move || control.keep_record(signed))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }

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
            self.state.scrub.report(id);
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

    async fn copy_chunk(&self, req: Request<CopyChunkRequest>) -> Result<Response<CopyChunkResponse>, Status> {
        self.check(&req)?;
        let q = req.into_inner();
        let id = chunk_id(&q.chunk_id)?;
        let state = &self.state;
        let push = q.from_node == state.principal;
        if !push && q.to_node != state.principal {
            return Err(Status::invalid_argument(format!(
                "a copy must start or end at this node ({}), not {} -> {}",
                state.principal, q.from_node, q.to_node
            )));
        }
        let direction = if push { "push" } else { "pull" };
        let result = if push {
            // Read (and verify) our copy, then send it; the receiver verifies again.
            let store = state.store.clone();
            let data = tokio::task::spawn_blocking(move || store.get(&id))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            match data {
                Ok(data) => {
                    let n = data.len() as u64;
                    let to = target(&q.to_node, &q.to_addr)?;
                    state
                        .peers
                        .put(&to, &id, std::slice::from_ref(&data), &q.to_token)
                        .await
                        .map(|_| n)
                        .map_err(|e| Status::unavailable(format!("sending chunk {} to {}: {e}", id.short(), q.to_node)))
                }
                Err(e @ collective_chunkstore::StoreError::Corrupt { .. }) => {
                    state.scrub.report(id);
                    Err(Status::data_loss(e.to_string()))
                }
                Err(e @ collective_chunkstore::StoreError::NotFound(_)) => Err(Status::not_found(e.to_string())),
                Err(e) => Err(Status::internal(e.to_string())),
            }
        } else {
            let from = target(&q.from_node, &q.from_addr)?;
            match state.peers.get(&from, &id, &q.from_token).await {
                Ok(data) => {
                    let n = data.len() as u64;
                    let store = state.store.clone();
                    tokio::task::spawn_blocking(move || store.put(&id, &data))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?
                        .map(|_| n)
                        .map_err(|e| match e {
                            e @ collective_chunkstore::StoreError::NoSpace { .. } => Status::resource_exhausted(e.to_string()),
                            e => Status::internal(e.to_string()),
                        })
                }
                Err(e) => Err(Status::unavailable(format!(
                    "fetching chunk {} from {}: {e}",
                    id.short(),
                    q.from_node
                ))),
            }
        };
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        state.metrics.copies.with_label_values(&[direction, outcome]).inc();
        result.map(|bytes| Response::new(CopyChunkResponse { bytes }))
    }

    async fn list_chunks(&self, req: Request<ListChunksRequest>) -> Result<Response<Self::ListChunksStream>, Status> {
        self.check(&req)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ChunkIdBatch, Status>>(4);
        let store = self.state.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(LIST_BATCH);
            let r = store.for_each_id(&mut |id| {
                batch.push(id.0.to_vec().into());
                if batch.len() == LIST_BATCH {
                    let ids = std::mem::replace(&mut batch, Vec::with_capacity(LIST_BATCH));
                    return tx.blocking_send(Ok(ChunkIdBatch { ids })).is_ok();
                }
                true
            });
            let last = match r {
                Ok(()) => Ok(ChunkIdBatch { ids: batch }),
                Err(e) => Err(Status::internal(e.to_string())),
            };
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as IdStream))
    }

    async fn start_scrub(&self, req: Request<StartScrubRequest>) -> Result<Response<ScrubStatus>, Status> {
        self.check(&req)?;
        self.state.scrub.start();
        Ok(Response::new(self.state.scrub.status()))
    }

    async fn workers(&self, req: Request<WorkersRequest>) -> Result<Response<WorkersResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(self.workers_response()))
    }

    async fn steer_worker(&self, req: Request<SteerWorkerRequest>) -> Result<Response<WorkersResponse>, Status> {
        self.check(&req)?;
        let q = req.into_inner();
        if q.name != self.state.scrub.worker.name() {
            return Err(Status::not_found(format!(
                "{} has no worker named '{}'; its workers: {}",
                self.state.principal,
                q.name,
                self.state.scrub.worker.name()
            )));
        }
        if self.state.scrub.set_paused(q.pause) {
            tracing::info!(worker = %q.name, "{}", if q.pause { "worker paused" } else { "worker resumed" });
        }
        Ok(Response::new(self.workers_response()))
    }
}
