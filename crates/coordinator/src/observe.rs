//! The `Observe` service (cluster events and the audit log, for clients of this member)
//! and the audit helpers every mutating call uses.

use std::pin::Pin;
use std::sync::Arc;

use collective_meta::{AuditEntry, AuditQuery};
use collective_proto::v1::observe_server::Observe;
use collective_proto::v1::{AuditRequest, AuditResponse, ClusterEvent, EventsRequest};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::events::Severity;
use crate::state::{State, meta_status};

/// Entries `collective audit` returns when the caller sets no limit.
const DEFAULT_AUDIT_LIMIT: usize = 1000;
/// Entries one audit call returns at most (a caller pages with `since_ms`).
const MAX_AUDIT_LIMIT: usize = 10_000;

fn result_of(s: &Status) -> &'static str {
    match s.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => "denied",
        _ => "failed",
    }
}

impl State {
    /// Records a mutating operation that no metadata transaction records itself: a
    /// success with `detail`, or the refusal or failure with its message.
    pub fn audit<T>(&self, who: &str, op: &str, target: &str, r: &Result<T, Status>, detail: impl FnOnce(&T) -> String) {
        let entry = match r {
            Ok(v) => AuditEntry::new(who, op, target, "ok", detail(v)),
            Err(s) => {
                crate::metadata::log_failure(who, op, target, s);
                AuditEntry::new(who, op, target, result_of(s), s.message().to_string())
            }
        };
        self.write_audit(&entry);
    }

    /// Records the refusal or failure of an operation whose success the metadata
    /// transaction records.
    pub fn audit_failure<T>(&self, who: &str, op: &str, target: &str, r: &Result<T, Status>) {
        if let Err(s) = r {
            // Metadata calls log their failures themselves (`Call::done`).
            self.write_audit(&AuditEntry::new(who, op, target, result_of(s), s.message().to_string()));
        }
    }

    fn write_audit(&self, entry: &AuditEntry) {
        if let Err(e) = self.meta.record_audit(entry) {
            tracing::error!(principal = %entry.principal, op = %entry.op, target = %entry.target, "cannot record the audit entry: {e}");
        }
    }
}

pub struct ObserveService {
    pub state: Arc<State>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ClusterEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Observe for ObserveService {
    type EventsStream = EventStream;

    async fn events(&self, req: Request<EventsRequest>) -> Result<Response<EventStream>, Status> {
        let who = self.state.end_user(&req)?;
        self.state.metrics.rpcs.with_label_values(&["events"]).inc();
        let q = req.into_inner();
        let (past, rx) = self.state.events.subscribe(q.after_seq);
        let follow = q.follow;
        tracing::debug!(principal = %who, follow, "events subscriber");
        // Another member's principal sees what its grants cover, nothing of our nodes,
        // repairs or invites.
        let sees = {
            let state = self.state.clone();
            let who = who.clone();
            move |e: &ClusterEvent| state.event_visible_to(&who, e)
        };
        let past: Vec<ClusterEvent> = past.into_iter().filter(|e| sees(e)).collect();
        let past = futures::stream::iter(past.into_iter().map(Ok));
        let live = futures::stream::unfold((rx, q.after_seq, follow), move |(mut rx, last, follow)| {
            let sees = sees.clone();
            async move {
                if !follow {
                    return None;
                }
                loop {
                    match rx.recv().await {
                        Ok(e) if e.seq > last && !sees(&e) => {}
                        Ok(e) if e.seq > last => {
                            let seq = e.seq;
                            return Some((Ok(e), (rx, seq, true)));
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let err = Status::resource_exhausted(format!(
                                "this follower fell {n} events behind and was dropped; run `collective events --follow` again"
                            ));
                            return Some((Err(err), (rx, last, false)));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        let stream = futures::StreamExt::chain(past, live);
        let what = if follow { "events follower" } else { "events listing" };
        let stream = collective_rpc::until_shutdown(
            stream,
            self.state.stopping.subscribe(),
            &self.state.busy,
            what,
            &self.state.principal,
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn audit(&self, req: Request<AuditRequest>) -> Result<Response<AuditResponse>, Status> {
        let who = self.state.end_user(&req)?;
        self.state.metrics.rpcs.with_label_values(&["audit"]).inc();
        let q = req.into_inner();
        let me = who.to_string();
        let principal = if self.state.is_admin(&who) {
            Some(q.principal).filter(|p| !p.is_empty())
        } else if q.principal.is_empty() || q.principal == me {
            Some(me)
        } else {
            self.state.metrics.denials.inc();
            return Err(Status::permission_denied(format!(
                "{who} may only read its own audit entries; an admin of {} can read {}'s",
                self.state.domain, q.principal
            )));
        };
        let query = AuditQuery {
            since_ms: q.since_ms.max(0) as u64,
            principal,
            limit: if q.limit == 0 {
                DEFAULT_AUDIT_LIMIT
            } else {
                (q.limit as usize).min(MAX_AUDIT_LIMIT)
            },
        };
        let state = self.state.clone();
        let entries = tokio::task::spawn_blocking(move || state.meta.audit(&query))
            .await
            .map_err(|e| Status::internal(format!("worker failed: {e}")))?
            .map_err(meta_status)?;
        Ok(Response::new(AuditResponse {
            entries: entries
                .into_iter()
                .map(|e| collective_proto::v1::AuditEntry {
                    at_ms: e.at_ms as i64,
                    principal: e.principal,
                    op: e.op,
                    target: e.target,
                    result: e.result,
                    detail: e.detail,
                })
                .collect(),
        }))
    }
}

impl State {
    /// Whether `who` may see event `e`: everything for our own principals; for another
    /// member's, the membership changes gossip tells everyone anyway, and grant changes on
    /// a datastore it may share (the grants `datastore ls` would show it).
    pub fn event_visible_to(&self, who: &collective_core::Principal, e: &ClusterEvent) -> bool {
        if who.domain == self.domain {
            return true;
        }
        match e.kind.as_str() {
            "member-alive" | "member-suspect" | "member-down" | "member-stopped" | "member-removed" => true,
            "grant-changed" => {
                let top = e.subject.trim_start_matches('/').split('/').next().unwrap_or("");
                !top.is_empty()
                    && self
                        .rights(who, &format!("/{top}"))
                        .is_ok_and(|r| r.contains(collective_core::Rights::SHARE))
            }
            _ => false,
        }
    }
}

/// Watches nodes' heartbeats and members' gossip states and emits an event on each change.
pub async fn watch(state: Arc<State>) {
    let tick = (state.node_timeout / 4).clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(1));
    let mut nodes = crate::events::Transitions::new(state.node_timeout);
    let mut members = crate::events::Transitions::new(state.node_timeout);
    loop {
        let seen: Vec<(String, bool, Option<std::time::Duration>, String)> = {
            let table = state.nodes.lock();
            table
                .iter()
                .map(|(name, e)| {
                    let msg = e.usage.health_message.clone();
                    (name.clone(), state.nodes.is_up(e), e.last_seen.map(|t| t.elapsed()), msg)
                })
                .collect()
        };
        for (name, up, since, health) in &seen {
            if !nodes.changed(name, if *up { "up" } else { "down" }, "up") {
                continue;
            }
            if *up {
                state.events.emit("node-up", name, Severity::Info, format!("node {name} is up"));
                continue;
            }
            let why = match since {
                None => "has not reported since the coordinator started".to_string(),
                Some(d) if *d >= state.node_timeout => format!("missed its heartbeats for {} s", d.as_secs()),
                Some(_) => format!("reports itself unhealthy: {health}"),
            };
            state
                .events
                .emit("node-down", name, Severity::Warning, format!("node {name} is down: it {why}"));
        }
        nodes.retain(&seen.into_iter().map(|s| s.0).collect::<Vec<_>>());
        if let Some(fed) = state.links.fed() {
            let peers = fed.gossip.peers();
            for p in &peers {
                let st = p.label();
                // A clean stop is the member's own word, never a start-up guess: reported on
                // first sight, like a member alive.
                let first_sight = if st == "stopped" { st } else { "alive" };
                if !members.changed(&p.member, st, first_sight) {
                    continue;
                }
                let (kind, severity, text) = match p.state {
                    collective_gossip::PeerState::Down if p.stopped_ms > 0 => (
                        "member-stopped",
                        Severity::Warning,
                        "stopped: its coordinator shut down cleanly; its datastores are unreachable until it is back",
                    ),
                    collective_gossip::PeerState::Alive => ("member-alive", Severity::Info, "is alive"),
                    collective_gossip::PeerState::Suspect => {
                        ("member-suspect", Severity::Warning, "is suspected down (missed gossip probes)")
                    }
                    collective_gossip::PeerState::Down => ("member-down", Severity::Critical, "is down (gossip declared it dead)"),
                };
                state.events.emit(kind, &p.member, severity, format!("member {} {text}", p.member));
            }
            members.retain(&peers.into_iter().map(|p| p.member).collect::<Vec<_>>());
        }
        tokio::time::sleep(tick).await;
    }
}
