//! Cluster events: node up/down, members' gossip state, repair, corruption, invites and
//! grants. Kept in a bounded in-memory history so a late subscriber sees the recent past,
//! and broadcast to every `collective events --follow`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use collective_proto::v1::ClusterEvent;
use prometheus::IntCounterVec;
use tokio::sync::broadcast;

/// How many events the history keeps.
pub const HISTORY: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

struct Inner {
    history: VecDeque<ClusterEvent>,
    next_seq: u64,
}

pub struct Events {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<ClusterEvent>,
    counts: IntCounterVec,
}

impl Events {
    pub fn new(counts: IntCounterVec) -> Events {
        Events {
            inner: Mutex::new(Inner {
                history: VecDeque::with_capacity(HISTORY),
                next_seq: 1,
            }),
            tx: broadcast::channel(HISTORY).0,
            counts,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event, logs it and sends it to every follower.
    pub fn emit(&self, kind: &'static str, subject: &str, severity: Severity, message: String) {
        match severity {
            Severity::Info => tracing::info!(event = kind, %subject, "{message}"),
            _ => tracing::warn!(event = kind, %subject, "{message}"),
        }
        self.counts.with_label_values(&[kind]).inc();
        let mut inner = self.lock();
        let e = ClusterEvent {
            seq: inner.next_seq,
            at_ms: collective_core::unix_ms_now() as i64,
            kind: kind.into(),
            subject: subject.into(),
            message,
            severity: severity.as_str().into(),
        };
        inner.next_seq += 1;
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(e.clone());
        // Sent under the lock so a subscriber never misses or repeats an event between its
        // history and its stream. No receiver is fine.
        let _ = self.tx.send(e);
    }

    /// The kept history after `after_seq`, and a receiver of everything that follows.
    pub fn subscribe(&self, after_seq: u64) -> (Vec<ClusterEvent>, broadcast::Receiver<ClusterEvent>) {
        let inner = self.lock();
        let past = inner.history.iter().filter(|e| e.seq > after_seq).cloned().collect();
        (past, self.tx.subscribe())
    }
}

/// A time for people: RFC 3339 in UTC, in milliseconds (as the CLI prints them).
pub fn time_str(ms: u64) -> String {
    collective_core::format_time_ms(ms.min(i64::MAX as u64) as i64)
}

/// Turns periodic observations ("node n is up") into events on changes.
pub struct Transitions {
    started: Instant,
    /// After this long, something never seen in a good state counts as a change to bad.
    grace: Duration,
    last: HashMap<String, &'static str>,
}

impl Transitions {
    pub fn new(grace: Duration) -> Transitions {
        Transitions {
            started: Instant::now(),
            grace,
            last: HashMap::new(),
        }
    }

    /// Records `state` for `name`; returns true when it differs from the last one seen.
    /// A first observation is a change when it is `good`, or once the grace has passed.
    pub fn changed(&mut self, name: &str, state: &'static str, good: &'static str) -> bool {
        match self.last.get(name) {
            Some(prev) if *prev == state => false,
            Some(_) => {
                self.last.insert(name.to_string(), state);
                true
            }
            None if state == good || self.started.elapsed() >= self.grace => {
                self.last.insert(name.to_string(), state);
                true
            }
            None => false,
        }
    }

    /// Forgets names no longer present.
    pub fn retain(&mut self, present: &[String]) {
        self.last.retain(|k, _| present.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Events {
        Events::new(IntCounterVec::new(prometheus::Opts::new("t_events_total", "t"), &["kind"]).unwrap())
    }

    #[test]
    fn a_late_subscriber_gets_the_bounded_history_then_live_events_without_gaps() {
        let ev = events();
        for i in 0..HISTORY + 5 {
            ev.emit("node-up", &format!("n{i}"), Severity::Info, "up".into());
        }
        let (past, mut rx) = ev.subscribe(0);
        assert_eq!(past.len(), HISTORY);
        assert_eq!(past[0].seq, 6);
        let (after, _) = ev.subscribe(past[HISTORY - 2].seq);
        assert_eq!(after.len(), 1);
        ev.emit("node-down", "n0", Severity::Warning, "down".into());
        let live = rx.try_recv().unwrap();
        assert_eq!(
            (live.seq, live.kind.as_str(), live.severity.as_str()),
            (HISTORY as u64 + 6, "node-down", "warning")
        );
    }

    #[test]
    fn transitions_report_changes_and_a_first_bad_state_only_after_the_grace() {
        let mut t = Transitions::new(Duration::from_secs(3600));
        assert!(!t.changed("a", "down", "up"), "never seen up, still in grace");
        assert!(t.changed("b", "up", "up"));
        assert!(!t.changed("b", "up", "up"));
        assert!(t.changed("b", "down", "up"));
        let mut t = Transitions::new(Duration::ZERO);
        assert!(t.changed("a", "down", "up"));
    }
}
