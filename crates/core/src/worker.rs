//! One shape for background work (repair, garbage collection, reconciliation, heat decay,
//! scrubs, and later the metadata backup): a name, a state, progress, a throttle, and
//! pause/resume. A worker calls `begin` when a run starts and checks `paused` at its safe
//! points; whoever reports on the workers calls `report`. Std only: the servers drive the
//! loops, this only keeps the shared facts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::unix_ms_now;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Waiting for its next run.
    Idle,
    Running,
    /// Stopped by an operator until resumed; its runs are skipped.
    Paused,
    /// Its last run failed (`WorkerReport::error` says why); it tries again next run.
    Failed,
}

impl WorkerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkerState::Idle => "idle",
            WorkerState::Running => "running",
            WorkerState::Paused => "paused",
            WorkerState::Failed => "failed",
        }
    }
}

/// A worker as reported to people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerReport {
    pub name: String,
    pub state: WorkerState,
    /// Why the last run failed (with `Failed`).
    pub error: Option<String>,
    /// Progress of the current run (or of the last one): items done of total.
    pub done: u64,
    pub total: u64,
    /// The limit it runs under, for people ("32 MiB/s"; "" when it has none).
    pub throttle: String,
    /// Runs finished since the process started.
    pub runs: u64,
    /// When the last run finished (ms since the epoch; 0: none yet).
    pub last_run_ms: u64,
}

/// The shared facts of one background worker.
#[derive(Debug)]
pub struct Worker {
    name: &'static str,
    throttle: String,
    paused: AtomicBool,
    running: AtomicBool,
    done: AtomicU64,
    total: AtomicU64,
    runs: AtomicU64,
    last_run_ms: AtomicU64,
    error: Mutex<Option<String>>,
}

impl Worker {
    pub fn new(name: &'static str, throttle: impl Into<String>) -> Arc<Worker> {
        Arc::new(Worker {
            name,
            throttle: throttle.into(),
            paused: AtomicBool::new(false),
            running: AtomicBool::new(false),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            last_run_ms: AtomicU64::new(0),
            error: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether an operator paused it: skip the run, or stop at the next safe point.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Pauses or resumes it; returns whether that changed anything.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.paused.swap(paused, Ordering::Relaxed) != paused
    }

    /// A run starts with `total` items to do; it ends when the guard is dropped (or
    /// `fail`s). Progress restarts at zero.
    pub fn begin(&self, total: u64) -> Run<'_> {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        self.running.store(true, Ordering::Relaxed);
        Run {
            worker: self,
            failed: Mutex::new(None),
        }
    }

    fn lock_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.error.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn report(&self) -> WorkerReport {
        let error = self.lock_error().clone();
        let state = if self.paused() {
            WorkerState::Paused
        } else if self.running.load(Ordering::Relaxed) {
            WorkerState::Running
        } else if error.is_some() {
            WorkerState::Failed
        } else {
            WorkerState::Idle
        };
        WorkerReport {
            name: self.name.to_string(),
            state,
            error,
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            throttle: self.throttle.clone(),
            runs: self.runs.load(Ordering::Relaxed),
            last_run_ms: self.last_run_ms.load(Ordering::Relaxed),
        }
    }
}

/// One run of a worker, from `Worker::begin` until dropped.
pub struct Run<'a> {
    worker: &'a Worker,
    failed: Mutex<Option<String>>,
}

impl Run<'_> {
    /// `done` more items are finished.
    pub fn advance(&self, done: u64) {
        self.worker.done.fetch_add(done, Ordering::Relaxed);
    }

    /// The run ends in failure: the worker shows `failed` with `error` until a later run
    /// succeeds.
    pub fn fail(&self, error: impl Into<String>) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.into());
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        let w = self.worker;
        *w.lock_error() = self.failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        w.runs.fetch_add(1, Ordering::Relaxed);
        w.last_run_ms.store(unix_ms_now(), Ordering::Relaxed);
        w.running.store(false, Ordering::Relaxed);
    }
}

/// The workers of one process, in a fixed order.
#[derive(Debug, Clone, Default)]
pub struct Workers(Vec<Arc<Worker>>);

impl Workers {
    pub fn add(&mut self, w: Arc<Worker>) -> Arc<Worker> {
        self.0.push(w.clone());
        w
    }

    pub fn find(&self, name: &str) -> Option<&Arc<Worker>> {
        self.0.iter().find(|w| w.name == name)
    }

    pub fn reports(&self) -> Vec<WorkerReport> {
        self.0.iter().map(|w| w.report()).collect()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|w| w.name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_reports_running_progress_then_idle_failed_and_paused_as_they_happen() {
        let w = Worker::new("repair", "64 MiB/s");
        assert_eq!(w.report().state, WorkerState::Idle);
        let run = w.begin(10);
        run.advance(3);
        let r = w.report();
        assert_eq!((r.state, r.done, r.total, r.runs), (WorkerState::Running, 3, 10, 0));
        run.fail("node-01 did not answer");
        drop(run);
        let r = w.report();
        assert_eq!(
            (r.state, r.error.as_deref(), r.runs),
            (WorkerState::Failed, Some("node-01 did not answer"), 1)
        );
        assert!(r.last_run_ms > 0);
        drop(w.begin(0));
        assert_eq!(w.report().state, WorkerState::Idle, "a good run clears the failure");
        assert!(w.set_paused(true));
        assert!(!w.set_paused(true), "pausing twice changes nothing");
        assert_eq!(w.report().state, WorkerState::Paused);
        assert!(w.set_paused(false));
        assert_eq!(w.report().state, WorkerState::Idle);
    }

    #[test]
    fn workers_are_found_by_name_in_the_order_they_were_added() {
        let mut all = Workers::default();
        all.add(Worker::new("reconcile", ""));
        all.add(Worker::new("repair", ""));
        assert_eq!(all.names(), ["reconcile", "repair"]);
        assert!(all.find("repair").is_some() && all.find("nope").is_none());
    }
}
