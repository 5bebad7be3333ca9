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
            let mut control = self.state.nodes.control(node).map_err(|e| e.to_string())?;
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
        let verb = if q.pause { "pause" } else { "resume" };
        let one = !q.node.is_empty();
        // Every node that is up (one named node: that one, up or not, so the error says why).
        let (targets, mut unreachable): (Vec<String>, Vec<String>) = if one {
            (vec![self.node_arg(&q.node)?], vec![])
        } else {
            let nodes = self.state.nodes.lock();
            let mut up = Vec::new();
            let mut down = Vec::new();
            for (n, e) in nodes.iter() {
                if self.state.nodes.is_up(e) {
                    up.push(n.clone());
                } else {
                    down.push(format!("{n}: down"));
                }
            }
            (up, down)
        };
        let (name, pause) = (&q.name, q.pause);
        let steer = |node: String| async move {
            let mut control = self.state.nodes.control(&node)?;
            let mut req = Request::new(SteerWorkerRequest {
                name: name.clone(),
                node: String::new(),
                pause,
            });
            req.set_timeout(crate::upkeep::CONTROL_TIMEOUT);
            control.steer_worker(req).await.map(|_| node)
        };
        let answers = futures::future::join_all(targets.iter().cloned().map(steer)).await;
        let mut steered = Vec::new();
        for (node, a) in targets.iter().zip(answers) {
            match a {
                Ok(n) => steered.push(n),
                Err(s) => unreachable.push(format!("{node}: {}", s.message())),
            }
        }
        if steered.is_empty() {
            return Err(Status::unavailable(format!(
                "could not {verb} the scrub on any node ({}); try again when they are up",
                if unreachable.is_empty() {
                    "no node is registered".to_string()
                } else {
                    unreachable.join("; ")
                }
            )));
        }
        // The nodes it reached, and (without --node) those it did not, for the caller.
        let mut out = self.workers_everywhere(Some(&steered)).await;
        out.unreachable.extend(unreachable);
        Ok(out)
    }
}
