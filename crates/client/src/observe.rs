//! Typed operations on what happened: the coordinator's event stream and its audit log.

use collective_proto::v1::{AuditEntry, AuditRequest, ClusterEvent, EventsRequest};

use crate::{Client, ClientError};

/// Which audit entries to fetch.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries at or after this time (ms since the epoch; 0: all kept).
    pub since_ms: i64,
    /// Only this principal's entries (`None`: everyone the caller may see).
    pub principal: Option<String>,
    /// At most this many, the most recent (0: the coordinator's default).
    pub limit: u32,
}

/// The coordinator's events, oldest first; with `follow`, new ones as they happen.
pub struct Events {
    stream: tonic::Streaming<ClusterEvent>,
}

impl Events {
    /// The next event; `None` when the history is exhausted (without `follow`) or the
    /// coordinator ended the stream.
    pub async fn next(&mut self) -> Result<Option<ClusterEvent>, ClientError> {
        self.stream.message().await.map_err(ClientError::status)
    }
}

impl Client {
    /// Opens the event stream: the kept history after `after_seq` (0: all of it), then,
    /// with `follow`, every new event.
    pub async fn events(&self, follow: bool, after_seq: u64) -> Result<Events, ClientError> {
        let stream = self
            .observe()
            .events(EventsRequest { follow, after_seq })
            .await
            .map_err(ClientError::status)?
            .into_inner();
        Ok(Events { stream })
    }

    /// Audited operations, oldest first. Admins see everyone's; others only their own.
    pub async fn audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, ClientError> {
        Ok(self
            .observe()
            .audit(AuditRequest {
                since_ms: q.since_ms,
                principal: q.principal.unwrap_or_default(),
                limit: q.limit,
            })
            .await
            .map_err(ClientError::status)?
            .into_inner()
            .entries)
    }
}
