//! Typed operations on self-healing: repair status, unknown chunks, scrubs, draining and
//! removing nodes, and what is at risk if a member leaves. All of them need an admin of
//! this member; the coordinator checks.

use std::time::Duration;

use collective_proto::v1::{
    CollectUnknownRequest, CollectUnknownResponse, DrainStatus, NodeRequest, RemoveNodeResponse, RepairStatusRequest, RepairStatusResponse,
    RiskReport, RiskRequest, ScrubReport, StartScrubRequest, SteerWorkerRequest, WorkersRequest, WorkersResponse,
};

use crate::error::Answer;
use crate::{Client, ClientError};

impl Client {
    /// Chunks and bytes at risk, repair progress, its estimate or why it is blocked, and
    /// chunks on the nodes the metadata does not know.
    pub async fn repair_status(&self) -> Result<RepairStatusResponse, ClientError> {
        self.upkeep().repair_status(RepairStatusRequest {}).await.answer()
    }

    /// Deletes chunks unknown to the metadata first seen at least `min_age` ago (never
    /// less than the coordinator's `gc_grace`); with `dry_run`, only counts them.
    pub async fn collect_unknown(&self, min_age: Duration, dry_run: bool) -> Result<CollectUnknownResponse, ClientError> {
        self.upkeep()
            .collect_unknown(CollectUnknownRequest {
                min_age_ms: min_age.as_millis() as u64,
                dry_run,
            })
            .await
            .answer()
    }

    /// Every node's scrub progress and what it found.
    pub async fn scrub_report(&self) -> Result<ScrubReport, ClientError> {
        self.upkeep().scrub_report(StartScrubRequest {}).await.answer()
    }

    /// Asks every node to re-hash its chunks now.
    pub async fn start_scrub(&self) -> Result<ScrubReport, ClientError> {
        self.upkeep().start_scrub(StartScrubRequest {}).await.answer()
    }

    /// Starts draining `node` (or, with `cancel`, stops a drain).
    pub async fn drain_node(&self, node: &str, cancel: bool) -> Result<DrainStatus, ClientError> {
        self.upkeep()
            .drain_node(NodeRequest {
                node: node.to_string(),
                cancel,
                force: false,
            })
            .await
            .answer()
    }

    /// How far the drain of `node` is.
    pub async fn drain_status(&self, node: &str) -> Result<DrainStatus, ClientError> {
        self.upkeep()
            .drain_status(NodeRequest {
                node: node.to_string(),
                ..Default::default()
            })
            .await
            .answer()
    }

    /// Forgets `node`; refused while it holds the only copy of anything, and (without
    /// `force`) while chunks would fall below their copies.
    pub async fn remove_node(&self, node: &str, force: bool) -> Result<RemoveNodeResponse, ClientError> {
        self.upkeep()
            .remove_node(NodeRequest {
                node: node.to_string(),
                cancel: false,
                force,
            })
            .await
            .answer()
    }

    /// What would become unreadable or under-replicated, for every member that answers,
    /// if `member` left now.
    pub async fn risk(&self, member: &str) -> Result<RiskReport, ClientError> {
        self.upkeep()
            .risk(RiskRequest {
                member: member.to_string(),
                local_only: false,
            })
            .await
            .answer()
    }

    /// The background workers of the coordinator and of its nodes (nodes that did not
    /// answer are listed in `unreachable`).
    pub async fn workers(&self) -> Result<WorkersResponse, ClientError> {
        self.upkeep().workers(WorkersRequest {}).await.answer()
    }

    /// Pauses (`pause`) or resumes the worker `name`: the coordinator's, or a node
    /// worker's on `node` (`None`: on every node). Returns the workers it steered.
    pub async fn steer_worker(&self, name: &str, node: Option<&str>, pause: bool) -> Result<WorkersResponse, ClientError> {
        self.upkeep()
            .steer_worker(SteerWorkerRequest {
                name: name.to_string(),
                node: node.unwrap_or_default().to_string(),
                pause,
            })
            .await
            .answer()
    }
}
