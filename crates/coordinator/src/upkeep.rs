//! Self-healing: a loop that keeps every chunk at its replication factor and the disks
//! clean. Each round scans the chunk table once and then:
//!
//! - **repairs** chunks with too few live copies (a node or member down past the grace
//!   period, a copy found corrupt, a node draining) by copying node-to-node from a
//!   surviving replica, verified by the receiving node, throttled to `repair_rate`;
//! - **trims** copies beyond what a chunk needs (a node came back after its copies were
//!   replaced, a hot chunk cooled down, a drained node's copies were moved);
//! - **collects** chunks unreferenced for longer than `gc_grace`, and uploads that were
//!   planned but never committed;
//! - **reconciles** a node that registers again: it drops what is no longer needed and
//!   reports what it still has.
//!
//! Reads never wait for any of this: they use whatever copies are up.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use collective_core::{ChunkId, parse_duration, parse_size, unix_ms_now};
use collective_gossip::PeerState;
use collective_meta::ChunkRecord;
use collective_proto::v1::federation_client::FederationClient;
use collective_proto::v1::{
    ChunkDesc, CollectUnknownResponse, CopyChunkRequest, DeleteChunksRequest, HostChunksRequest, ListChunksRequest, ReadTokensRequest,
    ReleaseChunksRequest, RepairStatusResponse, TokenOp,
};
use futures::StreamExt;
use tokio::sync::Notify;

use crate::config::UpkeepConfig;
use crate::hosting::member_of;
use crate::state::State;

/// Chunks repaired per round at most, so status and garbage collection keep up while a
/// large repair runs (the next round goes on).
const MAX_JOBS_PER_ROUND: usize = 2_000;
/// Chunks whose reads are counted at most (about 100 bytes each).
const HEAT_CAP: usize = 100_000;
/// Chunk ids per delete call.
const DELETE_BATCH: usize = 1024;
/// How long a short control call to one of our nodes may take (a hung node must not stall
/// the loop).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one node-to-node copy may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(60);

/// Parsed `[upkeep]` settings.
#[derive(Debug, Clone)]
pub struct UpkeepSettings {
    pub scan_interval: Duration,
    pub grace: Duration,
    pub rate: u64,
    pub parallel: usize,
    pub gc_grace: Duration,
    pub hot_threshold: f64,
    pub hot_half_life: Duration,
    pub hot_max_extra: u32,
}

impl UpkeepSettings {
    pub fn from_config(c: &UpkeepConfig) -> Result<UpkeepSettings, String> {
        let dur = |k: &str, v: &str| parse_duration(v).map_err(|e| format!("upkeep.{k}: {e}"));
        let hot_half_life = dur("hot_half_life", &c.hot_half_life)?;
        if hot_half_life.is_zero() {
            return Err("upkeep.hot_half_life must be more than 0".into());
        }
        if c.hot_threshold.is_nan() || c.hot_threshold <= 0.0 {
            return Err("upkeep.hot_threshold must be more than 0".into());
        }
        Ok(UpkeepSettings {
            scan_interval: dur("scan_interval", &c.scan_interval)?.max(Duration::from_millis(100)),
            grace: dur("repair_grace", &c.repair_grace)?,
            rate: parse_size(&c.repair_rate).map_err(|e| format!("upkeep.repair_rate: {e}"))?.max(1),
            parallel: c.repair_parallel.clamp(1, 64) as usize,
            gc_grace: dur("gc_grace", &c.gc_grace)?,
            hot_threshold: c.hot_threshold,
            hot_half_life,
            hot_max_extra: c.hot_max_extra.min(8),
        })
    }
}

/// Reads of one chunk, decayed exponentially.
#[derive(Debug, Clone, Copy)]
struct Heat {
    score: f64,
    at: Instant,
}

impl Heat {
    fn value(&self, half_life: Duration) -> f64 {
        self.value_at(half_life, Instant::now())
    }

    fn value_at(&self, half_life: Duration, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.at);
        self.score * 0.5f64.powf(age.as_secs_f64() / half_life.as_secs_f64())
    }
}

/// Is a copy on this node usable?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    Up,
    /// Down, within the grace period: still counted, not readable now.
    Waiting,
    /// Down past the grace period (or unknown): its copies are replaced.
    Lost,
}

/// When a repair run began, and the repair counters at that moment.
struct RepairRun {
    began: Instant,
    chunks: u64,
    bytes: u64,
    failed: u64,
    unplaced: u64,
}

#[derive(Default)]
pub struct Counters {
    pub repaired_chunks: AtomicU64,
    pub repaired_bytes: AtomicU64,
    pub failed_copies: AtomicU64,
    /// Of the failed attempts, those that found no node to copy to.
    pub unplaced_copies: AtomicU64,
    pub collected_chunks: AtomicU64,
    pub collected_bytes: AtomicU64,
    pub scrub_repaired: AtomicU64,
    pub trimmed: AtomicU64,
}

pub struct Upkeep {
    pub settings: UpkeepSettings,
    started: Instant,
    pub wake: Notify,
    pub draining: Mutex<BTreeSet<String>>,
    heat: Mutex<HashMap<ChunkId, Heat>>,
    /// Extra copies granted to hot chunks.
    hot: Mutex<HashMap<ChunkId, u32>>,
    pub snapshot: Mutex<RepairStatusResponse>,
    pub counters: Counters,
    /// Chunks that lost a copy to corruption and wait for repair.
    corrupt: Mutex<HashSet<ChunkId>>,
    reconcile: Mutex<Vec<String>>,
    /// When a remote node or member was first seen down.
    down_since: Mutex<HashMap<String, Instant>>,
    /// Chunks on a draining node when its drain began.
    pub drain_total: Mutex<HashMap<String, u64>>,
    /// Recent repair throughput: (when, bytes) of the last copies.
    recent: Mutex<Vec<(Instant, u64)>>,
    /// Why the last round could not place some copies (None: it could).
    pub blocked: Mutex<Option<crate::repair_plan::Blocked>>,
    /// Chunks the last round could not place a copy of.
    pub blocked_chunks: AtomicU64,
    /// The same, for the round under way: the first reason met and how many chunks it
    /// stopped.
    round_blocked: Mutex<Option<(crate::repair_plan::Blocked, u64)>>,
    /// The repair run under way: when it began and the counters then.
    run: Mutex<Option<RepairRun>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upkeep {
    pub fn new(settings: UpkeepSettings, draining: Vec<String>) -> Upkeep {
        Upkeep {
            settings,
            started: Instant::now(),
            wake: Notify::new(),
            draining: Mutex::new(draining.into_iter().collect()),
            heat: Mutex::new(HashMap::new()),
            hot: Mutex::new(HashMap::new()),
            snapshot: Mutex::new(RepairStatusResponse {
                estimate_seconds: -1,
                ..Default::default()
            }),
            counters: Counters::default(),
            corrupt: Mutex::new(HashSet::new()),
            reconcile: Mutex::new(Vec::new()),
            down_since: Mutex::new(HashMap::new()),
            drain_total: Mutex::new(HashMap::new()),
            recent: Mutex::new(Vec::new()),
            blocked: Mutex::new(None),
            run: Mutex::new(None),
            blocked_chunks: AtomicU64::new(0),
            round_blocked: Mutex::new(None),
        }
    }

    /// Counts one read of each chunk.
    pub fn note_reads(&self, ids: impl Iterator<Item = ChunkId>) {
        let half = self.settings.hot_half_life;
        let now = Instant::now();
        let mut heat = lock(&self.heat);
        for id in ids {
            // Bounded memory: a full table only counts chunks it already tracks (a chunk
            // becomes hot by being read again and again, so it is in there early).
            if heat.len() >= HEAT_CAP && !heat.contains_key(&id) {
                continue;
            }
            let h = heat.entry(id).or_insert(Heat { score: 0.0, at: now });
            h.score = h.value_at(half, now) + 1.0;
            h.at = now;
        }
    }

    /// The decayed read count of a chunk.
    pub fn reads(&self, id: &ChunkId) -> f64 {
        lock(&self.heat)
            .get(id)
            .map(|h| h.value(self.settings.hot_half_life))
            .unwrap_or(0.0)
    }

    /// Extra copies a chunk currently has a right to.
    pub fn extra(&self, id: &ChunkId) -> u32 {
        lock(&self.hot).get(id).copied().unwrap_or(0)
    }

    /// Re-decides which chunks are hot (with hysteresis: a chunk keeps its extra copies
    /// until its reads fall below half the threshold) and forgets cold read counts.
    fn update_hot(&self) -> (u64, u64) {
        let s = &self.settings;
        let mut heat = lock(&self.heat);
        let mut hot = lock(&self.hot);
        // Forget cold counts; when the table fills up, keep only chunks read more than once.
        let floor = if heat.len() > HEAT_CAP / 2 { 1.5 } else { 0.5 };
        heat.retain(|_, h| h.value(s.hot_half_life) >= floor);
        for (id, h) in heat.iter() {
            let v = h.value(s.hot_half_life);
            // One extra copy at the threshold, another at 4x, …
            let mut want = 0u32;
            let mut level = s.hot_threshold;
            while v >= level && want < s.hot_max_extra {
                want += 1;
                level *= 4.0;
            }
            let had = hot.get(id).copied().unwrap_or(0);
            if want > had {
                hot.insert(*id, want);
            } else if had > 0 && v < s.hot_threshold / 2.0 {
                hot.remove(id);
            }
        }
        hot.retain(|id, _| heat.contains_key(id));
        (hot.len() as u64, hot.values().map(|v| u64::from(*v)).sum())
    }

    pub fn note_corrupt(&self, id: ChunkId) {
        lock(&self.corrupt).insert(id);
        self.wake.notify_one();
    }

    pub fn queue_reconcile(&self, node: &str) {
        let mut q = lock(&self.reconcile);
        if !q.iter().any(|n| n == node) {
            q.push(node.to_string());
        }
        self.wake.notify_one();
    }

    pub fn is_draining(&self, node: &str) -> bool {
        lock(&self.draining).contains(node)
    }

    fn note_copied(&self, bytes: u64) {
        let mut r = lock(&self.recent);
        r.push((Instant::now(), bytes));
        let keep_from = r.len().saturating_sub(256);
        r.drain(..keep_from);
    }

    /// Bytes per second over the last minute of copies.
    fn rate(&self) -> f64 {
        let r = lock(&self.recent);
        let window = Duration::from_secs(60);
        let recent: Vec<&(Instant, u64)> = r.iter().filter(|(t, _)| t.elapsed() < window).collect();
        let (Some(first), true) = (recent.first(), recent.len() > 1) else {
            return 0.0;
        };
        let secs = first.0.elapsed().as_secs_f64().max(1.0);
        recent.iter().map(|(_, b)| *b as f64).sum::<f64>() / secs
    }
}

/// Work found by one scan.
#[derive(Default)]
struct Round {
    repairs: Vec<Job>,
    /// (chunk, copies to forget and delete: lost, drained or surplus).
    drops: Vec<(ChunkId, Vec<String>)>,
    collect: Vec<ChunkId>,
    status: RepairStatusResponse,
}

impl Job {
    /// The chunk as other members' coordinators are asked about it.
    fn desc(&self) -> Vec<ChunkDesc> {
        vec![ChunkDesc {
            id: self.id.0.to_vec().into(),
            size: self.size,
        }]
    }
}

/// A chunk that needs more copies.
struct Job {
    id: ChunkId,
    size: u64,
    need: usize,
    /// Spread over members (encrypted chunks of backup and hybrid datastores).
    spread: bool,
    /// Copies that can be read now (sources).
    sources: Vec<String>,
    /// Every listed copy (never chosen as a target).
    holders: Vec<String>,
    /// Copies to forget once the new ones exist (lost or draining nodes).
    retire: Vec<String>,
}

impl State {
    /// Copies a chunk's datastores ask for (records older than `want` use our default).
    pub fn wanted(&self, rec: &ChunkRecord) -> usize {
        if rec.want > 0 { rec.want as usize } else { self.replication }
    }

    /// Whether gossip says another member is up (alive, or suspect but not yet down).
    pub fn member_up(&self, member: &str) -> bool {
        self.fed()
            .is_some_and(|f| matches!(f.gossip.peer_state(member), Some(PeerState::Alive | PeerState::Suspect)))
    }

    /// Whether the copy on `node` counts, is waiting out the grace period, or is lost.
    pub fn liveness(&self, node: &str) -> Live {
        let up = &self.upkeep;
        let member = member_of(node);
        if member == self.domain {
            let nodes = self.lock_nodes();
            let Some(e) = nodes.get(node) else { return Live::Lost };
            if self.is_up(e) {
                return Live::Up;
            }
            // The grace period starts when the node is noticed down (missed heartbeats).
            let down_for = e.last_seen.map(|t| t.elapsed()).unwrap_or_else(|| up.started.elapsed());
            return if down_for < self.node_timeout + up.settings.grace {
                Live::Waiting
            } else {
                Live::Lost
            };
        }
        let Some(fed) = self.fed() else { return Live::Lost };
        let node_up = self.member_up(member)
            && fed
                .gossip
                .state_of(member)
                .is_some_and(|s| s.nodes.iter().any(|n| n.node == node && n.healthy));
        let mut since = lock(&up.down_since);
        if node_up {
            since.remove(node);
            return Live::Up;
        }
        let first = *since.entry(node.to_string()).or_insert_with(Instant::now);
        if first.elapsed() < up.settings.grace {
            Live::Waiting
        } else {
            Live::Lost
        }
    }

    /// One pass over the chunk table: status numbers and the work to do.
    fn scan(&self) -> Round {
        let up = &self.upkeep;
        let (hot_chunks, extra_total) = up.update_hot();
        let mut round = Round::default();
        let mut live: HashMap<String, Live> = HashMap::new();
        let draining = lock(&up.draining).clone();
        let gc_cutoff = unix_ms_now().saturating_sub(up.settings.gc_grace.as_millis() as u64);
        let st = &mut round.status;
        for r in self.meta.chunks() {
            let (id, rec) = match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!("upkeep scan stopped: {e}");
                    break;
                }
            };
            if rec.refs == 0 {
                st.reclaimable_chunks += 1;
                st.reclaimable_bytes += rec.size * rec.replicas.len().max(1) as u64;
                if rec.unreferenced_since_ms <= gc_cutoff {
                    round.collect.push(id);
                }
                continue;
            }
            st.chunks += 1;
            let want = self.wanted(&rec);
            let target = want + up.extra(&id) as usize;
            let mut sources = Vec::new();
            let mut counted = 0usize;
            let mut lost = Vec::new();
            let mut leaving = Vec::new();
            for n in &rec.replicas {
                let l = *live.entry(n.clone()).or_insert_with(|| self.liveness(n));
                match l {
                    Live::Up => sources.push(n.clone()),
                    Live::Waiting => {}
                    Live::Lost => {
                        lost.push(n.clone());
                        continue;
                    }
                }
                if draining.contains(n) {
                    leaving.push(n.clone());
                } else {
                    counted += 1;
                }
            }
            // At risk: fewer readable copies than wanted (a draining node's copy still is).
            if sources.is_empty() {
                st.unreadable_chunks += 1;
                st.unreadable_bytes += rec.size;
            } else if sources.len() < want {
                st.under_replicated_chunks += 1;
                st.bytes_at_risk += rec.size;
            }
            if counted < target {
                if !sources.is_empty() && round.repairs.len() < MAX_JOBS_PER_ROUND {
                    round.repairs.push(Job {
                        id,
                        size: rec.size,
                        need: target - counted,
                        spread: self.meta.seal(&id).ok().flatten().is_some(),
                        sources,
                        holders: rec.replicas.clone(),
                        retire: lost.into_iter().chain(leaving).collect(),
                    });
                }
                continue;
            }
            // Enough copies: retire lost and draining ones, then any surplus (only when
            // every copy is up, so an uncertain copy never makes us delete a good one).
            let mut drop: Vec<String> = lost.into_iter().chain(leaving).collect();
            let up_counted = sources.iter().filter(|n| !draining.contains(*n)).count();
            if counted > target && up_counted == counted && drop.is_empty() {
                drop.extend(self.surplus(&rec, counted - target));
            }
            if !drop.is_empty() {
                round.drops.push((id, drop));
            }
        }
        st.queued_chunks = round.repairs.len() as u64;
        st.hot_chunks = hot_chunks;
        st.extra_replicas = extra_total;
        let mut lost_nodes = Vec::new();
        let mut waiting = Vec::new();
        for (n, l) in &live {
            match l {
                Live::Lost => lost_nodes.push(n.clone()),
                Live::Waiting => waiting.push(n.clone()),
                Live::Up => {}
            }
        }
        // Our own nodes that are down but hold nothing still show.
        let ours: Vec<String> = self.lock_nodes().keys().cloned().collect();
        for n in &ours {
            if !live.contains_key(n) {
                match self.liveness(n) {
                    Live::Lost => lost_nodes.push(n.clone()),
                    Live::Waiting => waiting.push(n.clone()),
                    Live::Up => {}
                }
            }
        }
        lost_nodes.sort();
        waiting.sort();
        st.lost_nodes = lost_nodes;
        st.waiting_nodes = waiting;
        st.draining_nodes = draining.into_iter().collect();
        self.count_unknown(st);
        st.last_scan_ms = unix_ms_now() as i64;
        round
    }

    /// Unknown chunks still kept on our nodes (those known again meanwhile left out).
    fn count_unknown(&self, st: &mut RepairStatusResponse) {
        let cutoff = unix_ms_now().saturating_sub(self.upkeep.settings.gc_grace.as_millis() as u64);
        let mut nodes = BTreeSet::new();
        for r in self.meta.unknown_chunks() {
            let u = match r {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!("cannot read the unknown chunks: {e}");
                    break;
                }
            };
            if self.meta.chunk(&u.id).ok().flatten().is_some() {
                continue;
            }
            st.unknown_chunks += 1;
            if u.first_seen_ms <= cutoff {
                st.unknown_collectable += 1;
            }
            nodes.insert(u.node);
        }
        st.unknown_nodes = nodes.into_iter().collect();
    }

    /// Which `n` copies of a chunk to give up: a second copy on one member before a
    /// member's only copy, the fullest node first.
    fn surplus(&self, rec: &ChunkRecord, n: usize) -> Vec<String> {
        let free: HashMap<String, u64> = self.lock_nodes().iter().map(|(k, e)| (k.clone(), e.usage.free_bytes)).collect();
        let mut per_member: HashMap<&str, usize> = HashMap::new();
        for r in &rec.replicas {
            *per_member.entry(member_of(r)).or_default() += 1;
        }
        let mut order: Vec<&String> = rec.replicas.iter().collect();
        order.sort_by_key(|r| {
            (
                std::cmp::Reverse(per_member.get(member_of(r)).copied().unwrap_or(0)),
                free.get(*r).copied().unwrap_or(u64::MAX),
                (*r).clone(),
            )
        });
        order.into_iter().take(n).cloned().collect()
    }

    /// Runs rounds forever: every `scan_interval`, or sooner when woken.
    pub async fn upkeep_loop(self: std::sync::Arc<Self>) {
        let up = &self.upkeep;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(up.settings.scan_interval) => {}
                _ = up.wake.notified() => {
                    // Let a burst of changes settle into one round.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let queued: Vec<String> = std::mem::take(&mut *lock(&up.reconcile));
            for node in queued {
                if let Err(e) = self.reconcile(&node).await {
                    tracing::warn!(%node, "reconciling a returning node failed: {e}");
                    // Try again next round while it is up (it registers again otherwise).
                    if self.lock_nodes().get(&node).is_some_and(|e| self.is_up(e)) {
                        lock(&up.reconcile).push(node);
                    }
                }
            }
            let me = self.clone();
            let round = match tokio::task::spawn_blocking(move || me.scan()).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("upkeep scan failed: {e}");
                    continue;
                }
            };
            let Round {
                repairs,
                drops,
                collect,
                mut status,
            } = round;
            self.publish_status(&mut status);
            self.note_repair_run(&repairs);
            self.run_repairs(repairs).await;
            self.note_blocked(lock(&up.round_blocked).take());
            for (id, nodes) in drops {
                self.retire(&id, &nodes).await;
            }
            self.collect(collect).await;
            self.collect_abandoned_uploads().await;
        }
    }

    /// Emits `repair-started` when a round first finds chunks to repair and
    /// `repair-finished` at the first round after that finds none.
    fn note_repair_run(&self, repairs: &[Job]) {
        let c = &self.upkeep.counters;
        let counters = || RepairRun {
            began: Instant::now(),
            chunks: c.repaired_chunks.load(Ordering::Relaxed),
            bytes: c.repaired_bytes.load(Ordering::Relaxed),
            failed: c.failed_copies.load(Ordering::Relaxed),
            unplaced: c.unplaced_copies.load(Ordering::Relaxed),
        };
        let mut run = lock(&self.upkeep.run);
        match (run.as_ref(), repairs.is_empty()) {
            (None, false) => {
                let bytes: u64 = repairs.iter().map(|j| j.size * j.need as u64).sum();
                *run = Some(counters());
                self.events.emit(
                    "repair-started",
                    &self.domain,
                    crate::events::Severity::Warning,
                    format!(
                        "repairing {} chunk(s) with too few copies ({} to copy)",
                        repairs.len(),
                        collective_core::format_bytes(bytes)
                    ),
                );
            }
            (Some(start), true) => {
                let now = counters();
                let (began, chunks, copied, failed) = (
                    start.began,
                    now.chunks - start.chunks,
                    now.bytes - start.bytes,
                    now.failed - start.failed,
                );
                let unplaced = now.unplaced - start.unplaced;
                *run = None;
                self.events.emit(
                    "repair-finished",
                    &self.domain,
                    crate::events::Severity::Info,
                    format!(
                        "repair finished after {} s: {} chunk(s) ({}) copied, {} copy attempt(s) failed{}",
                        began.elapsed().as_secs(),
                        chunks,
                        collective_core::format_bytes(copied),
                        failed,
                        if unplaced > 0 {
                            format!(" ({unplaced} of them found no node to copy to)")
                        } else {
                            String::new()
                        }
                    ),
                );
            }
            _ => {}
        }
    }

    /// Takes the reason the round just ended could not place copies (None: it could), and
    /// says so once when it changes: a log line and an event, not one per chunk and round.
    fn note_blocked(&self, now: Option<(crate::repair_plan::Blocked, u64)>) {
        let up = &self.upkeep;
        let mut blocked = lock(&up.blocked);
        match (&*blocked, &now) {
            (old, Some((b, chunks))) if old.as_ref().is_none_or(|o| o.kind != b.kind) => {
                self.events.emit(
                    "repair-blocked",
                    &self.domain,
                    crate::events::Severity::Warning,
                    format!("repair is blocked for {chunks} chunk(s): {}", b.reason),
                );
            }
            (Some(_), None) => {
                self.events.emit(
                    "repair-unblocked",
                    &self.domain,
                    crate::events::Severity::Info,
                    "repair can place copies again".into(),
                );
            }
            _ => {}
        }
        up.blocked_chunks.store(now.as_ref().map_or(0, |(_, n)| *n), Ordering::Relaxed);
        *blocked = now.map(|(r, _)| r);
    }

    fn publish_status(&self, status: &mut RepairStatusResponse) {
        let up = &self.upkeep;
        let c = &up.counters;
        status.repaired_chunks = c.repaired_chunks.load(Ordering::Relaxed);
        status.repaired_bytes = c.repaired_bytes.load(Ordering::Relaxed);
        status.failed_copies = c.failed_copies.load(Ordering::Relaxed);
        status.collected_chunks = c.collected_chunks.load(Ordering::Relaxed);
        status.collected_bytes = c.collected_bytes.load(Ordering::Relaxed);
        status.grace_seconds = up.settings.grace.as_secs() as i64;
        let rate = up.rate();
        status.rate_bytes_per_sec = rate;
        let todo = status.bytes_at_risk + status.unreadable_bytes;
        status.blocked_reason = lock(&up.blocked).as_ref().map(|b| b.reason.clone()).unwrap_or_default();
        status.blocked_chunks = up.blocked_chunks.load(Ordering::Relaxed);
        status.gc_grace_seconds = up.settings.gc_grace.as_secs() as i64;
        status.estimate_seconds = if todo == 0 {
            0
        } else if !status.blocked_reason.is_empty() {
            -1
        } else if rate > 0.0 {
            (todo as f64 / rate).ceil() as i64
        } else {
            -1
        };
        let m = &self.metrics;
        m.under_replicated.set(status.under_replicated_chunks as i64);
        m.unreadable.set(status.unreadable_chunks as i64);
        m.bytes_at_risk.set(status.bytes_at_risk as i64);
        m.reclaimable_bytes.set(status.reclaimable_bytes as i64);
        m.hot_chunks.set(status.hot_chunks as i64);
        m.extra_replicas.set(status.extra_replicas as i64);
        *lock(&up.snapshot) = status.clone();
    }

    /// The current repair numbers (from the last scan, with live counters).
    pub fn repair_status(&self) -> RepairStatusResponse {
        let mut s = lock(&self.upkeep.snapshot).clone();
        self.publish_status(&mut s);
        s
    }

    async fn run_repairs(&self, jobs: Vec<Job>) {
        let up = &self.upkeep;
        let pace = tokio::sync::Mutex::new(Instant::now());
        futures::stream::iter(jobs)
            .for_each_concurrent(up.settings.parallel, |job| {
                let pace = &pace;
                async move {
                    // Throttle: each copy books its share of `repair_rate`.
                    let wait = {
                        let mut next = pace.lock().await;
                        let now = Instant::now();
                        let start = (*next).max(now);
                        *next = start + Duration::from_secs_f64(job.size as f64 * job.need as f64 / up.settings.rate as f64);
                        start - now
                    };
                    tokio::time::sleep(wait).await;
                    self.repair(job).await;
                }
            })
            .await;
    }

    /// Adds the copies one chunk is missing, then retires what it replaces.
    async fn repair(&self, job: Job) {
        let up = &self.upkeep;
        let mut holders = job.holders.clone();
        let mut added: Vec<String> = Vec::new();
        let mut failed: Vec<String> = Vec::new();
        for _attempt in 0..3 {
            let need = job.need - added.len();
            if need == 0 {
                break;
            }
            let mut exclude: Vec<String> = failed.clone();
            exclude.extend(lock(&up.draining).iter().cloned());
            let cluster = self.placement_cluster(job.spread);
            let req = collective_placement::Request {
                chunk: &job.id,
                size: job.size,
                count: need,
                strategy: if job.spread {
                    collective_placement::Strategy::Backup
                } else {
                    collective_placement::Strategy::Media
                },
                owner: &self.domain,
                reader: &self.domain,
                existing: &holders,
                exclude: &exclude,
                previous: &[],
            };
            let targets = match collective_placement::place(&cluster, &req) {
                Ok(t) => t,
                // Fewer places than wanted: make the copies we can.
                Err(_) => match collective_placement::place(&cluster, &collective_placement::Request { count: 1, ..req }) {
                    Ok(t) => t,
                    Err(e) => {
                        // Logged once per change of reason (note_blocked), not per chunk.
                        tracing::debug!(chunk = %job.id.short(), "cannot repair: {e}");
                        up.counters.failed_copies.fetch_add(1, Ordering::Relaxed);
                        up.counters.unplaced_copies.fetch_add(1, Ordering::Relaxed);
                        let mut b = lock(&up.round_blocked);
                        match b.as_mut() {
                            Some((_, chunks)) => *chunks += 1,
                            None => *b = Some((crate::repair_plan::blocked(need, &e), 1)),
                        }
                        break;
                    }
                },
            };
            for t in targets {
                match tokio::time::timeout(COPY_TIMEOUT, self.copy_to(&job, &t)).await {
                    Ok(Ok(node)) => {
                        holders.push(node.clone());
                        added.push(node);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(chunk = %job.id.short(), target = %t, "repair copy failed: {e}");
                        up.counters.failed_copies.fetch_add(1, Ordering::Relaxed);
                        failed.push(t);
                    }
                    Err(_) => {
                        tracing::warn!(chunk = %job.id.short(), target = %t, "repair copy timed out");
                        up.counters.failed_copies.fetch_add(1, Ordering::Relaxed);
                        failed.push(t);
                    }
                }
            }
        }
        if added.is_empty() {
            return;
        }
        let retire: Vec<String> = if added.len() >= job.need { job.retire.clone() } else { vec![] };
        match self.meta.change_replicas(&job.id, &added, &[]) {
            Ok(Some(_)) => {}
            Ok(None) => {
                // Collected meanwhile: the new copies are garbage.
                self.delete_copies(&job.id, &added).await;
                return;
            }
            Err(e) => {
                tracing::error!(chunk = %job.id.short(), "recording repaired copies failed: {e}");
                return;
            }
        }
        let bytes = job.size * added.len() as u64;
        up.counters.repaired_chunks.fetch_add(1, Ordering::Relaxed);
        up.counters.repaired_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.repaired_bytes.inc_by(bytes);
        up.note_copied(bytes);
        if lock(&up.corrupt).remove(&job.id) {
            up.counters.scrub_repaired.fetch_add(1, Ordering::Relaxed);
        }
        if !retire.is_empty() {
            self.retire(&job.id, &retire).await;
        }
        if job.spread {
            self.used_elsewhere_stale.store(true, Ordering::Relaxed);
        }
    }

    /// Makes one new copy on `target` (ours, or a node of another member); returns the
    /// node that now holds it.
    async fn copy_to(&self, job: &Job, target: &str) -> Result<String, String> {
        let local_source = job
            .sources
            .iter()
            .find(|n| member_of(n) == self.domain && self.lock_nodes().get(*n).is_some_and(|e| self.is_up(e)));
        if member_of(target) == self.domain {
            let to_addr = self.quic_addr(target).ok_or_else(|| format!("{target} has no known address"))?;
            if let Some(src) = local_source {
                // Push from our node: a put token for the target naming the source node.
                let token = self
                    .signer
                    .sign(TokenOp::Put, &job.id, &[target.to_string()], src, job.size, self.token_ttl);
                let req = CopyChunkRequest {
                    chunk_id: job.id.0.to_vec().into(),
                    size: job.size,
                    from_node: src.clone(),
                    to_node: target.to_string(),
                    to_addr,
                    to_token: token.into(),
                    ..Default::default()
                };
                self.run_copy(src, req).await?;
                return Ok(target.to_string());
            }
            // Only other members hold it: pull with a read token naming our target node.
            let src = job.sources.first().ok_or("no live copy to copy from")?;
            let member = member_of(src).to_string();
            let mut fedc = FederationClient::new(self.peer_channel(&member).map_err(|s| s.message().to_string())?);
            let answer = fedc
                .read_tokens(ReadTokensRequest {
                    user: target.to_string(),
                    chunks: job.desc(),
                })
                .await
                .map_err(|s| format!("{member}: {}", s.message()))?
                .into_inner();
            let from = answer
                .chunks
                .into_iter()
                .next()
                .and_then(|h| h.replicas.into_iter().next())
                .ok_or_else(|| format!("{member} no longer hosts chunk {}", job.id.short()))?;
            let req = CopyChunkRequest {
                chunk_id: job.id.0.to_vec().into(),
                size: job.size,
                from_node: from.node,
                from_addr: from.quic_addr,
                from_token: from.token,
                to_node: target.to_string(),
                ..Default::default()
            };
            self.run_copy(target, req).await?;
            return Ok(target.to_string());
        }
        // Another member's node: that member reserves room and signs a put token for our
        // source node, which pushes the copy.
        let src = local_source.ok_or("a copy on another member needs a live copy on our own nodes to send from")?;
        let member = member_of(target).to_string();
        let mut fedc = FederationClient::new(self.peer_channel(&member).map_err(|s| s.message().to_string())?);
        let placed = fedc
            .host_chunks(HostChunksRequest {
                user: src.clone(),
                chunks: job.desc(),
                avoid: vec![],
                prefer: vec![target.to_string()],
            })
            .await
            .map_err(|s| format!("{member}: {}", s.message()))?
            .into_inner();
        let to = placed
            .targets
            .into_iter()
            .next()
            .ok_or_else(|| format!("{member} returned no target"))?;
        let req = CopyChunkRequest {
            chunk_id: job.id.0.to_vec().into(),
            size: job.size,
            from_node: src.clone(),
            to_node: to.node.clone(),
            to_addr: to.quic_addr,
            to_token: to.token,
            ..Default::default()
        };
        self.run_copy(src, req).await?;
        Ok(to.node)
    }

    /// Asks one of our nodes to make a copy (it pushes or pulls, and the receiver verifies).
    async fn run_copy(&self, node: &str, req: CopyChunkRequest) -> Result<(), String> {
        let mut control = self.control(node).map_err(|s| s.message().to_string())?;
        control.copy_chunk(req).await.map_err(|s| s.message().to_string())?;
        Ok(())
    }

    fn quic_addr(&self, node: &str) -> Option<String> {
        self.lock_nodes().get(node).map(|e| e.quic_addr.clone())
    }

    /// Forgets copies of a chunk and deletes them where they are.
    async fn retire(&self, id: &ChunkId, nodes: &[String]) {
        match self.meta.change_replicas(id, &[], nodes) {
            Ok(_) => {
                self.upkeep.counters.trimmed.fetch_add(nodes.len() as u64, Ordering::Relaxed);
                self.delete_copies(id, nodes).await;
            }
            Err(e) => tracing::error!(chunk = %id.short(), "forgetting copies failed: {e}"),
        }
    }

    /// Deletes copies of chunks from our live nodes, and releases them on other members
    /// (which delete them and free the room). Copies on nodes that are down are deleted
    /// when those nodes come back (reconcile).
    async fn delete_copies(&self, id: &ChunkId, nodes: &[String]) {
        let mut per_node: HashMap<String, Vec<ChunkId>> = HashMap::new();
        for n in nodes {
            per_node.entry(n.clone()).or_default().push(*id);
        }
        self.delete_many(per_node).await;
    }

    pub(crate) async fn delete_many(&self, per_node: HashMap<String, Vec<ChunkId>>) {
        let mut per_member: HashMap<String, Vec<ChunkId>> = HashMap::new();
        for (node, ids) in per_node {
            let member = member_of(&node).to_string();
            if member != self.domain {
                per_member.entry(member).or_default().extend(ids);
                continue;
            }
            let Ok(mut control) = self.control(&node) else { continue };
            if !self.lock_nodes().get(&node).is_some_and(|e| self.is_up(e)) {
                continue;
            }
            for batch in ids.chunks(DELETE_BATCH) {
                let req = DeleteChunksRequest {
                    chunk_ids: batch.iter().map(|i| i.0.to_vec().into()).collect(),
                };
                let mut req = tonic::Request::new(req);
                req.set_timeout(CONTROL_TIMEOUT);
                if let Err(s) = control.delete_chunks(req).await {
                    tracing::warn!(%node, "deleting chunks failed: {}", s.message());
                    break;
                }
            }
        }
        for (member, mut ids) in per_member {
            // A member still holding another copy of the chunk keeps it.
            ids.retain(|id| {
                self.meta
                    .chunk(id)
                    .ok()
                    .flatten()
                    .is_none_or(|rec| !rec.replicas.iter().any(|r| member_of(r) == member))
            });
            if ids.is_empty() {
                continue;
            }
            let Ok(channel) = self.peer_channel(&member) else { continue };
            let req = ReleaseChunksRequest {
                ids: ids.iter().map(|i| i.0.to_vec().into()).collect(),
            };
            match tokio::time::timeout(Duration::from_secs(10), FederationClient::new(channel).release_chunks(req)).await {
                Ok(Ok(_)) => self.used_elsewhere_stale.store(true, Ordering::Relaxed),
                Ok(Err(s)) => tracing::warn!(%member, "releasing hosted chunks failed: {}", s.message()),
                Err(_) => tracing::warn!(%member, "releasing hosted chunks timed out"),
            }
        }
    }

    /// Deletes chunks unreferenced for longer than the grace period.
    async fn collect(&self, ids: Vec<ChunkId>) {
        if ids.is_empty() {
            return;
        }
        let up = &self.upkeep;
        let cutoff = unix_ms_now().saturating_sub(up.settings.gc_grace.as_millis() as u64);
        let mut per_node: HashMap<String, Vec<ChunkId>> = HashMap::new();
        let (mut n, mut bytes) = (0u64, 0u64);
        for id in ids {
            // A planned upload may be about to reference it again.
            if self.meta.is_pending(&id).unwrap_or(true) {
                continue;
            }
            match self.meta.collect_chunk(&id, cutoff) {
                Ok(Some(rec)) => {
                    n += 1;
                    bytes += rec.size * rec.replicas.len() as u64;
                    for r in rec.replicas {
                        per_node.entry(r).or_default().push(id);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(chunk = %id.short(), "garbage collection failed: {e}"),
            }
        }
        if let Err(e) = self.meta.flush().await {
            tracing::error!("flushing after garbage collection failed: {e}");
            return;
        }
        self.delete_many(per_node).await;
        up.counters.collected_chunks.fetch_add(n, Ordering::Relaxed);
        up.counters.collected_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.collected_bytes.inc_by(bytes);
        if n > 0 {
            tracing::info!(chunks = n, bytes, "garbage-collected unreferenced chunks");
        }
    }

    /// Uploads planned long ago and never committed leave copies nobody references.
    async fn collect_abandoned_uploads(&self) {
        let up = &self.upkeep;
        let age = (self.token_ttl * 2).max(up.settings.gc_grace);
        let cutoff = unix_ms_now().saturating_sub(age.as_millis() as u64);
        let Ok(stale) = self.meta.stale_pending(cutoff, 10_000) else {
            return;
        };
        let mut per_node: HashMap<String, Vec<ChunkId>> = HashMap::new();
        for (id, _) in stale {
            match self.meta.drop_pending(&id, cutoff) {
                Ok(nodes) => {
                    for n in nodes {
                        per_node.entry(n).or_default().push(id);
                    }
                }
                Err(e) => tracing::warn!(chunk = %id.short(), "dropping an abandoned upload failed: {e}"),
            }
        }
        if !per_node.is_empty() {
            self.delete_many(per_node).await;
        }
    }

    /// Deletes the unknown chunks first seen at least `min_age` ago (never less than
    /// `gc_grace`) from our live nodes, after checking each is still unknown: nothing
    /// references, plans or hosts it. An admin's explicit decision (`repair collect-unknown`).
    pub(crate) async fn collect_unknown(&self, min_age: Duration, dry_run: bool) -> Result<CollectUnknownResponse, String> {
        let age = min_age.max(self.upkeep.settings.gc_grace);
        let cutoff = unix_ms_now().saturating_sub(age.as_millis() as u64);
        let mut hosted: HashSet<(String, ChunkId)> = HashSet::new();
        for r in self.meta.hosted_all() {
            let (_, id, rec) = r.map_err(|e| format!("cannot read the chunks hosted for other members: {e}"))?;
            hosted.extend(rec.nodes.into_iter().map(|n| (n, id)));
        }
        let still_unknown = |node: &str, id: &ChunkId| -> Result<bool, String> {
            let pending = self.meta.is_pending(id).map_err(|e| e.to_string())?;
            let known = self.meta.chunk(id).map_err(|e| e.to_string())?.is_some();
            Ok(!pending && !known && !hosted.contains(&(node.to_string(), *id)))
        };
        let mut out = CollectUnknownResponse::default();
        let mut per_node: std::collections::BTreeMap<String, Vec<ChunkId>> = std::collections::BTreeMap::new();
        for r in self.meta.unknown_chunks() {
            let u = r.map_err(|e| e.to_string())?;
            if !still_unknown(&u.node, &u.id)? {
                // Known after all: the node's next reconcile decides about it like any copy.
                if !dry_run {
                    self.meta.forget_unknown(&u.node, &u.id).map_err(|e| e.to_string())?;
                }
                out.kept_chunks += 1;
                continue;
            }
            let up = self.lock_nodes().get(&u.node).is_some_and(|e| self.is_up(e));
            if u.first_seen_ms > cutoff || !up {
                out.kept_chunks += 1;
                continue;
            }
            per_node.entry(u.node).or_default().push(u.id);
        }
        if dry_run {
            out.deleted_chunks = per_node.values().map(|v| v.len() as u64).sum();
            out.nodes = per_node.into_keys().collect();
            return Ok(out);
        }
        for (node, ids) in per_node {
            let mut control = match self.control(&node) {
                Ok(c) => c,
                Err(s) => {
                    out.failed_chunks += ids.len() as u64;
                    out.errors.push(format!("{node}: {}", s.message()));
                    continue;
                }
            };
            let mut deleted_here = 0u64;
            for batch in ids.chunks(DELETE_BATCH) {
                // Checked again just before: an upload may have planned one meanwhile.
                let mut doomed = Vec::with_capacity(batch.len());
                for id in batch {
                    if still_unknown(&node, id)? {
                        doomed.push(*id);
                    } else {
                        out.kept_chunks += 1;
                    }
                }
                let mut req = tonic::Request::new(DeleteChunksRequest {
                    chunk_ids: doomed.iter().map(|i| i.0.to_vec().into()).collect(),
                });
                req.set_timeout(CONTROL_TIMEOUT);
                match control.delete_chunks(req).await {
                    Ok(_) => {
                        // Forgotten only once deleted: a failure leaves them recorded.
                        for id in &doomed {
                            self.meta.forget_unknown(&node, id).map_err(|e| e.to_string())?;
                        }
                        deleted_here += doomed.len() as u64;
                    }
                    Err(s) => {
                        out.failed_chunks += doomed.len() as u64;
                        out.errors.push(format!("{node}: {}", s.message()));
                    }
                }
            }
            if deleted_here > 0 {
                out.deleted_chunks += deleted_here;
                out.nodes.push(node.clone());
                tracing::info!(%node, chunks = deleted_here, "deleted chunks unknown to the metadata, as an admin asked");
            }
        }
        self.meta.flush().await.map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// A node registered again: compare what it holds with what we list for it.
    async fn reconcile(&self, node: &str) -> Result<(), String> {
        let up = &self.upkeep;
        let mut control = self.control(node).map_err(|s| s.message().to_string())?;
        let mut stream = control
            .list_chunks(ListChunksRequest {})
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let mut held: HashSet<ChunkId> = HashSet::new();
        while let Some(batch) = stream.message().await.map_err(|s| s.message().to_string())? {
            held.extend(batch.ids.iter().filter_map(|b| ChunkId::from_slice(b)));
        }
        // Chunks we host for other members live on our nodes too, outside our chunk table.
        let hosted: HashSet<ChunkId> = self
            .meta
            .hosted_all()
            .filter_map(|r| r.ok())
            .filter(|(_, _, rec)| rec.nodes.iter().any(|n| n == node))
            .map(|(_, id, _)| id)
            .collect();
        let (mut adopted, mut missing) = (0u64, 0u64);
        let mut unneeded: Vec<ChunkId> = Vec::new();
        let mut unknown: Vec<ChunkId> = Vec::new();
        for id in &held {
            if hosted.contains(id) {
                continue;
            }
            // Pending first: a commit turns a pending upload into a chunk record in one
            // transaction, so reading in this order never takes a chunk being committed
            // right now for an unknown one.
            let pending = self.meta.is_pending(id).unwrap_or(true);
            let rec = self.meta.chunk(id).map_err(|e| e.to_string())?;
            match rec {
                Some(rec) if rec.replicas.iter().any(|r| r == node) => {}
                Some(rec) if rec.refs > 0 => {
                    let want = self.wanted(&rec) + up.extra(id) as usize;
                    let live = rec.replicas.iter().filter(|r| self.liveness(r) != Live::Lost).count();
                    if live < want {
                        self.meta.change_replicas(id, &[node.to_string()], &[]).map_err(|e| e.to_string())?;
                        adopted += 1;
                    } else {
                        unneeded.push(*id);
                    }
                }
                Some(_) => unneeded.push(*id),
                None if pending => {}
                None => unknown.push(*id),
            }
        }
        // Copies we list on the node that it no longer has.
        let listed: Vec<ChunkId> = self
            .meta
            .chunks()
            .filter_map(|r| r.ok())
            .filter(|(id, rec)| rec.replicas.iter().any(|r| r == node) && !held.contains(id))
            .map(|(id, _)| id)
            .collect();
        for id in &listed {
            self.meta.change_replicas(id, &[], &[node.to_string()]).map_err(|e| e.to_string())?;
            missing += 1;
        }
        // Chunks nothing here knows are never deleted on sight: after a restore of an older
        // metadata copy they are the files stored since. They are kept and reported until an
        // admin collects them (`repair collect-unknown`).
        let fresh = self.meta.set_unknown(node, &unknown, unix_ms_now()).map_err(|e| e.to_string())?;
        if fresh > 0 {
            self.events.emit(
                "unknown-chunks",
                node,
                crate::events::Severity::Warning,
                format!(
                    "{node} holds {} chunk(s) this coordinator's metadata has no record of ({fresh} new); they are kept. \
                     If the metadata directory was restored from an older copy they may belong to files stored since; \
                     `collective repair collect-unknown` deletes them once you are sure they are garbage",
                    unknown.len()
                ),
            );
        }
        let dropped = unneeded.len();
        if !unneeded.is_empty() {
            self.delete_many(HashMap::from([(node.to_string(), unneeded)])).await;
        }
        self.meta.flush().await.map_err(|e| e.to_string())?;
        tracing::info!(%node, held = held.len(), adopted, dropped, missing, unknown = unknown.len(), "reconciled a returning node");
        if adopted > 0 || missing > 0 {
            up.wake.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(threshold: f64, half_life_ms: u64) -> UpkeepSettings {
        UpkeepSettings {
            scan_interval: Duration::from_secs(1),
            grace: Duration::from_secs(1),
            rate: 1 << 20,
            parallel: 1,
            gc_grace: Duration::from_secs(1),
            hot_threshold: threshold,
            hot_half_life: Duration::from_millis(half_life_ms),
            hot_max_extra: 2,
        }
    }

    #[test]
    fn hot_chunks_gain_copies_with_reads_and_lose_them_once_cool() {
        // A long half-life: the counts barely decay while the test runs, however slowly.
        let up = Upkeep::new(settings(10.0, 3_600_000), vec![]);
        let id = ChunkId([1; 32]);
        up.note_reads(std::iter::repeat_n(id, 9));
        up.update_hot();
        assert_eq!(up.extra(&id), 0, "below the threshold");
        up.note_reads(std::iter::repeat_n(id, 3));
        up.update_hot();
        assert_eq!(up.extra(&id), 1);
        up.note_reads(std::iter::repeat_n(id, 40));
        assert_eq!(up.update_hot(), (1, 2), "a second copy at 4x the threshold");
        // A short one: far above the threshold now, cool after twenty half-lives.
        let up = Upkeep::new(settings(10.0, 100), vec![]);
        up.note_reads(std::iter::repeat_n(id, 100_000));
        up.update_hot();
        assert_eq!(up.extra(&id), 2);
        std::thread::sleep(Duration::from_millis(2000));
        up.update_hot();
        assert_eq!(up.extra(&id), 0);
        assert!(up.reads(&id) < 5.0);
    }

    #[test]
    fn upkeep_settings_refuse_nonsense() {
        let mut c = UpkeepConfig::default();
        assert!(UpkeepSettings::from_config(&c).is_ok());
        c.hot_threshold = 0.0;
        assert!(UpkeepSettings::from_config(&c).unwrap_err().contains("hot_threshold"));
        c = UpkeepConfig {
            repair_grace: "soon".into(),
            ..UpkeepConfig::default()
        };
        assert!(UpkeepSettings::from_config(&c).unwrap_err().contains("repair_grace"));
    }
}
