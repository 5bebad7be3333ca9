//! Background scrub: re-hashes every stored chunk at a bounded rate, one pass every
//! `scrub_interval` (or at once when the coordinator asks). A chunk whose bytes no longer
//! match its id is quarantined by the store and reported to the coordinator with the next
//! heartbeat, which then restores the copy from another replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use collective_chunkstore::{ChunkStore, StoreError};
use collective_core::{ChunkId, Worker, unix_ms_now};
use collective_proto::v1::ScrubStatus;
use tokio::sync::Notify;

use crate::metrics::NodeMetrics;

pub struct Scrubber {
    store: Arc<ChunkStore>,
    metrics: NodeMetrics,
    /// Bytes re-hashed per second at most.
    rate: u64,
    running: AtomicBool,
    wake: Notify,
    status: std::sync::Mutex<ScrubStatus>,
    /// Corrupt chunks found (by scrubs or reads) not yet reported to the coordinator.
    found: std::sync::Mutex<Vec<ChunkId>>,
    /// The scrub as a worker (`collective workers`): paused, a pass stops at the next chunk.
    pub worker: Arc<Worker>,
    /// A pass was stopped by a pause; resuming starts it again.
    interrupted: AtomicBool,
}

impl Scrubber {
    pub fn new(store: Arc<ChunkStore>, metrics: NodeMetrics, rate: u64) -> Scrubber {
        Scrubber {
            store,
            metrics,
            rate: rate.max(1),
            running: AtomicBool::new(false),
            wake: Notify::new(),
            status: std::sync::Mutex::new(ScrubStatus {
                rate_bytes_per_sec: rate,
                ..Default::default()
            }),
            found: std::sync::Mutex::new(Vec::new()),
            worker: Worker::new("scrub", format!("{}/s", collective_core::format_bytes(rate.max(1)))),
            interrupted: AtomicBool::new(false),
        }
    }

    /// Pauses or resumes the scrub; a pass a pause stopped starts again on resume.
    pub fn set_paused(&self, paused: bool) -> bool {
        let changed = self.worker.set_paused(paused);
        if !paused && self.interrupted.swap(false, Ordering::Relaxed) {
            self.start();
        }
        changed
    }

    pub fn status(&self) -> ScrubStatus {
        let mut s = *self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.running = self.running.load(Ordering::Relaxed);
        s
    }

    /// Starts a pass now unless one is running.
    pub fn start(&self) {
        self.running.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Records a corrupt chunk for the coordinator.
    pub fn report(&self, id: ChunkId) {
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        if !found.contains(&id) {
            found.push(id);
        }
    }

    /// Corrupt chunks to send with the next heartbeat.
    pub fn unreported(&self) -> Vec<ChunkId> {
        self.found.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The coordinator has these reports; forget them.
    pub fn reported(&self, ids: &[ChunkId]) {
        self.found.lock().unwrap_or_else(|p| p.into_inner()).retain(|id| !ids.contains(id));
    }

    /// Runs passes forever: every `interval`, or when woken.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.wake.notified() => {}
            }
            if self.worker.paused() {
                self.running.store(false, Ordering::Relaxed);
                self.interrupted.store(true, Ordering::Relaxed);
                continue;
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.pass()).await;
        }
    }

    fn update(&self, f: impl FnOnce(&mut ScrubStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// One pass over every chunk, paced to the configured rate.
    fn pass(&self) {
        self.running.store(true, Ordering::Relaxed);
        let total = self.store.chunk_count();
        self.update(|s| {
            s.pass_chunks_done = 0;
            s.pass_chunks_total = total;
        });
        let run = self.worker.begin(total);
        let started = Instant::now();
        let mut bytes = 0u64;
        let mut corrupt = 0u64;
        let mut stopped = false;
        let r = self.store.for_each_id(&mut |id| {
            if self.worker.paused() {
                stopped = true;
                return false;
            }
            let size = std::fs::metadata(self.store.path_of(&id)).map(|m| m.len()).unwrap_or(0);
            match self.store.verify(&id) {
                Ok(true) => {}
                Ok(false) => {
                    corrupt += 1;
                    self.update(|s| s.corrupt_found += 1);
                    self.metrics.verification_failures.inc();
                    tracing::error!(chunk = %id, "scrub found a corrupt chunk; quarantined it and reporting it for repair");
                    self.report(id);
                }
                // Deleted since the listing: nothing to check.
                Err(StoreError::NotFound(_)) => {}
                Err(e) => tracing::warn!(chunk = %id, "scrub could not read a chunk: {e}"),
            }
            bytes += size;
            self.metrics.scrubbed_bytes.inc_by(size);
            self.update(|s| {
                s.pass_chunks_done += 1;
                s.chunks_checked += 1;
                s.bytes_checked += size;
            });
            run.advance(1);
            // Pace: never ahead of `rate` bytes per second since the pass began.
            let due = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            true
        });
        if let Err(e) = r {
            tracing::warn!("scrub pass stopped: {e}");
            run.fail(format!("the pass stopped: {e}"));
        }
        drop(run);
        if stopped {
            self.running.store(false, Ordering::Relaxed);
            self.interrupted.store(true, Ordering::Relaxed);
            tracing::info!(chunks = total, "scrub paused; the pass starts again when resumed");
            return;
        }
        self.update(|s| {
            s.passes += 1;
            s.last_pass_ms = unix_ms_now() as i64;
        });
        self.running.store(false, Ordering::Relaxed);
        tracing::info!(
            chunks = total,
            bytes,
            corrupt,
            secs = started.elapsed().as_secs_f64(),
            "scrub pass finished"
        );
    }
}
