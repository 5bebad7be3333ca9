//! Emptying a node (drain) and forgetting it (node rm).

use super::*;

impl UpkeepService {
    pub(super) async fn drain_node_inner(&self, req: Request<NodeRequest>) -> Result<Response<DrainStatus>, Status> {
        let q = req.into_inner();
        let node = self.node_arg(&q.node)?;
        let draining = !q.cancel;
        let meta = self.state.meta.clone();
        let n = node.clone();
        tokio::task::spawn_blocking(move || meta.set_draining(&n, draining).and_then(|_| meta.flush_blocking()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(meta_status)?;
        let status = self.drain_status(&node)?;
        {
            let up = &self.state.upkeep;
            let mut set = up.draining.lock().unwrap_or_else(|p| p.into_inner());
            let mut totals = up.drain_total.lock().unwrap_or_else(|p| p.into_inner());
            if draining {
                set.insert(node.clone());
                totals.insert(node.clone(), status.chunks_left);
            } else {
                set.remove(&node);
                totals.remove(&node);
            }
        }
        tracing::info!(%node, draining, chunks = status.chunks_left, "drain {}", if draining { "started" } else { "cancelled" });
        self.state.upkeep.wake.notify_one();
        Ok(Response::new(DrainStatus { draining, ..status }))
    }

    pub(super) async fn remove_node_inner(&self, req: Request<NodeRequest>) -> Result<Response<RemoveNodeResponse>, Status> {
        let node = self.node_arg(&req.get_ref().node)?;
        let force = req.get_ref().force;
        let (mut only, mut only_bytes, mut short) = (0u64, 0u64, 0u64);
        for r in self.state.meta.chunks() {
            let (_, rec) = r.map_err(meta_status)?;
            if rec.refs == 0 || !rec.replicas.contains(&node) {
                continue;
            }
            let others = rec
                .replicas
                .iter()
                .filter(|n| **n != node && self.state.liveness(n) == Live::Up)
                .count();
            if others == 0 {
                only += 1;
                only_bytes += rec.size;
            } else if others < self.state.wanted(&rec) {
                short += 1;
            }
        }
        if only > 0 {
            let short = node.split('@').next().unwrap_or(&node).to_string();
            return Err(Status::failed_precondition(format!(
                "{node} still holds the only copy of {only} chunk(s) ({}); move them off first with `collective node drain {short}`, then remove it",
                collective_core::format_bytes(only_bytes)
            )));
        }
        if short > 0 && !force {
            let name = node.split('@').next().unwrap_or(&node).to_string();
            return Err(Status::failed_precondition(format!(
                "removing {node} would leave {short} chunk(s) with fewer copies than their datastores ask for; drain it first (`collective node drain {name}`, which needs room on other nodes), or pass --force to remove it anyway"
            )));
        }
        let meta = self.state.meta.clone();
        let n = node.clone();
        let forgotten = tokio::task::spawn_blocking(move || {
            let forgotten = meta.remove_node(&n)?;
            meta.flush_blocking()?;
            Ok::<_, collective_meta::MetaError>(forgotten)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(meta_status)?;
        self.state.nodes.lock().remove(&node);
        self.state.nodes.forget_control(&node);
        self.state.upkeep.draining.lock().unwrap_or_else(|p| p.into_inner()).remove(&node);
        self.state.upkeep.wake.notify_one();
        self.state.events.emit(
            "node-removed",
            &node,
            crate::events::Severity::Info,
            format!("node {node} was removed from the cluster ({forgotten} chunk copies forgotten)"),
        );
        Ok(Response::new(RemoveNodeResponse {
            node,
            chunks_forgotten: forgotten,
        }))
    }
}
