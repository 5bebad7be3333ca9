//! `collective workers`: the coordinator's workers and its nodes', and steering them.

use super::*;

impl UpkeepService {
    /// The coordinator's workers, then each node's (`only`: just those nodes); nodes that
    /// are down or do not answer are listed as unreachable.
    pub(super) async fn workers_everywhere(&self, only: Option<&[String]>) -> WorkersResponse {
        let mut out = WorkersResponse {
            workers: self
                .state
                .upkeep
                .workers
                .reports()
                .into_iter()
                .map(|r| WorkerInfo::of(r, ""))
                .collect(),
            unreachable: vec![],
        };
        let mut nodes: Vec<(String, bool)> = {
            let nodes = self.state.nodes.lock();
            nodes.iter().map(|(n, e)| (n.clone(), self.state.nodes.is_up(e))).collect()
        };
        nodes.sort();
        if let Some(only) = only {
            nodes.retain(|(n, _)| only.contains(n));
        }
        let asks = nodes.iter().map(|(node, up)| async move {
            if !up {
                return Err(format!("{node}: down"));
            }
            let mut control = self.state.nodes.control(node).map_err(|s| format!("{node}: {}", s.message()))?;
            let mut req = Request::new(WorkersRequest {});
            req.set_timeout(crate::upkeep::CONTROL_TIMEOUT);
            control
                .workers(req)
                .await
                .map(|r| r.into_inner().workers)
                .map_err(|s| format!("{node}: {}", s.message()))
        });
        for answer in futures::future::join_all(asks).await {
            match answer {
                Ok(w) => out.workers.extend(w),
                Err(e) => out.unreachable.push(e),
            }
        }
        out
    }

    pub(super) async fn steer_worker_inner(&self, q: SteerWorkerRequest) -> Result<WorkersResponse, Status> {
        let up = &self.state.upkeep;
        let known = || {
            let mut names: Vec<&str> = up.workers.names();
            names.push("scrub");
            names.join(", ")
        };
        if let Some(w) = up.workers.find(&q.name) {
            if !q.node.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "'{}' runs on the coordinator, not on a node; leave out --node",
                    q.name
                )));
            }
            if w.set_paused(q.pause) {
                tracing::info!(worker = %q.name, "{}", if q.pause { "worker paused" } else { "worker resumed" });
                up.wake.notify_one();
            }
            return Ok(self.workers_everywhere(Some(&[])).await);
        }
        if q.name != "scrub" {
            return Err(Status::not_found(format!(
                "there is no worker named '{}'; workers: {}",
                q.name,
                known()
            )));
        }
        let nodes: Vec<String> = if q.node.is_empty() {
            let nodes = self.state.nodes.lock();
            nodes.keys().cloned().collect()
        } else {
            vec![self.node_arg(&q.node)?]
        };
        let mut failed = Vec::new();
        for node in &nodes {
            let r = async {
                let mut control = self.state.nodes.control(node)?;
                let mut req = Request::new(SteerWorkerRequest {
                    name: q.name.clone(),
                    node: String::new(),
                    pause: q.pause,
                });
                req.set_timeout(crate::upkeep::CONTROL_TIMEOUT);
                control.steer_worker(req).await
            }
            .await;
            if let Err(s) = r {
                failed.push(format!("{node}: {}", s.message()));
            }
        }
        if !failed.is_empty() {
            return Err(Status::unavailable(format!(
                "could not {} the scrub on {} of {} node(s): {}; try again when they are up",
                if q.pause { "pause" } else { "resume" },
                failed.len(),
                nodes.len(),
                failed.join("; ")
            )));
        }
        Ok(self.workers_everywhere(Some(&nodes)).await)
    }
}
