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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collective_core::{ChunkId, Worker, Workers, parse_duration, parse_size, unix_ms_now};
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
use crate::error::Error;
use crate::hosting::member_of;
use crate::repair_plan::{ChunkFacts, Replica, Risk};
use crate::state::State;

mod collect;
mod reconcile;
mod repair;

/// Chunks repaired per round at most, so status and garbage collection keep up while a
/// large repair runs (the next round goes on).
const MAX_JOBS_PER_ROUND: usize = 2_000;
/// Chunks whose reads are counted at most (about 100 bytes each).
const HEAT_CAP: usize = 100_000;
/// Chunk ids per delete call.
const DELETE_BATCH: usize = 1024;
/// How often copies hosted for other members are checked against their node.
const HOSTING_AUDIT_EVERY: Duration = Duration::from_secs(600);
/// Past its token's expiry, how long a hosted upload may still be running (a node cuts
/// every stream long before).
const HOSTED_UPLOAD_MARGIN: Duration = Duration::from_secs(600);
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
    pub fn from_config(c: &UpkeepConfig) -> Result<UpkeepSettings, crate::CoordinatorError> {
        use crate::CoordinatorError::Config;
        let dur = |k: &str, v: &str| parse_duration(v).map_err(|e| Config(format!("upkeep.{k}: {e}")));
        let hot_half_life = dur("hot_half_life", &c.hot_half_life)?;
        if hot_half_life.is_zero() {
            return Err(Config("upkeep.hot_half_life must be more than 0".into()));
        }
        if c.hot_threshold.is_nan() || c.hot_threshold <= 0.0 {
            return Err(Config("upkeep.hot_threshold must be more than 0".into()));
        }
        Ok(UpkeepSettings {
            scan_interval: dur("scan_interval", &c.scan_interval)?.max(Duration::from_millis(100)),
            grace: dur("repair_grace", &c.repair_grace)?,
            rate: parse_size(&c.repair_rate)
                .map_err(|e| Config(format!("upkeep.repair_rate: {e}")))?
                .max(1),
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

pub use crate::repair_plan::Live;

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
    /// The loop's parts as workers (`collective workers`), in the order they run.
    pub workers: Workers,
    w_reconcile: Arc<Worker>,
    w_heat: Arc<Worker>,
    w_repair: Arc<Worker>,
    w_gc: Arc<Worker>,
    /// Hosted copies given a token up to this time (ms) were checked against their node;
    /// and when that check last ran.
    hosting_audit: Mutex<(u64, Option<Instant>)>,
    /// The chunks with no copy left that the lost files were last found for, and those
    /// files (looked for again only when the chunks change).
    lost: Mutex<(Vec<ChunkId>, Vec<String>, u64)>,
}

/// `90 s`, `2 h`: a duration for a throttle line.
fn format_secs(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upkeep {
    pub fn new(settings: UpkeepSettings, draining: Vec<String>) -> Upkeep {
        let mut workers = Workers::default();
        let w_reconcile = workers.add(Worker::new("reconcile", ""));
        let w_heat = workers.add(Worker::new("heat", format!("half-life {}", format_secs(settings.hot_half_life))));
        let w_repair = workers.add(Worker::new(
            "repair",
            format!("{}/s, {} at once", collective_core::format_bytes(settings.rate), settings.parallel),
        ));
        let w_gc = workers.add(Worker::new("gc", format!("after {}", format_secs(settings.gc_grace))));
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
            workers,
            w_reconcile,
            w_heat,
            w_repair,
            w_gc,
            hosting_audit: Mutex::new((0, None)),
            lost: Mutex::new((Vec::new(), Vec::new(), 0)),
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
        if self.w_heat.paused() {
            // Paused: the hot set stays as it is (no copies granted or taken back), and
            // cold read counts are not forgotten.
            let hot = lock(&self.hot);
            return (hot.len() as u64, hot.values().map(|e| u64::from(*e)).sum());
        }
        let _run = self.w_heat.begin(0);
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
    fn id(&self) -> &ChunkId {
        &self.facts.id
    }

    fn size(&self) -> u64 {
        self.facts.size
    }

    /// Copies go to other members too (backup and hybrid datastores).
    fn spread(&self) -> bool {
        self.facts.strategy.spreads_over_members()
    }

    /// The chunk as other members' coordinators are asked about it.
    fn desc(&self) -> Vec<ChunkDesc> {
        vec![ChunkDesc {
            id: self.facts.id.0.to_vec().into(),
            size: self.facts.size,
        }]
    }
}

/// A chunk that needs more copies: what the planner decided, and the facts it decided on.
struct Job {
    facts: crate::repair_plan::ChunkFacts,
    plan: crate::repair_plan::Repair,
}

impl std::ops::Deref for Job {
    type Target = crate::repair_plan::Repair;
    fn deref(&self) -> &Self::Target {
        &self.plan
    }
}

impl State {
    /// Copies a chunk's datastores ask for (records older than `want` use our default).
    pub fn wanted(&self, rec: &ChunkRecord) -> usize {
        if rec.want > 0 { rec.want as usize } else { self.replication }
    }

    /// Whether gossip says another member is up (alive, or suspect but not yet down).
    pub fn member_up(&self, member: &str) -> bool {
        self.links
            .fed()
            .is_some_and(|f| matches!(f.gossip.peer_state(member), Some(PeerState::Alive | PeerState::Suspect)))
    }

    /// Whether the copy on `node` counts, is waiting out the grace period, or is lost.
    pub fn liveness(&self, node: &str) -> Live {
        let up = &self.upkeep;
        let member = member_of(node);
        if member == self.domain {
            let nodes = self.nodes.lock();
            let Some(e) = nodes.get(node) else { return Live::Lost };
            if self.nodes.is_up(e) {
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
        let Some(fed) = self.links.fed() else { return Live::Lost };
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
        let free: HashMap<String, u64> = self.nodes.lock().iter().map(|(k, e)| (k.clone(), e.usage.free_bytes)).collect();
        let gc_cutoff = unix_ms_now().saturating_sub(up.settings.gc_grace.as_millis() as u64);
        let mut lost_chunks: Vec<ChunkId> = Vec::new();
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
            // Only sealed (client-encrypted) chunks ever leave this member.
            let sealed = rec.strategy.spreads_over_members() && self.meta.sealed_anywhere(&id).unwrap_or(false);
            let strategy = crate::repair_plan::effective_strategy(rec.strategy, sealed);
            let facts = ChunkFacts {
                id,
                size: rec.size,
                want,
                target: want + up.extra(&id) as usize,
                strategy,
                replicas: rec
                    .replicas
                    .iter()
                    .map(|n| Replica {
                        node: n.clone(),
                        live: *live.entry(n.clone()).or_insert_with(|| self.liveness(n)),
                        draining: draining.contains(n),
                        free: free.get(n).copied().unwrap_or(u64::MAX),
                    })
                    .collect(),
            };
            if facts.replicas.iter().all(|r| r.live == Live::Lost) {
                lost_chunks.push(id);
            }
            let plan = crate::repair_plan::plan(&facts);
            match plan.risk {
                Risk::Unreadable => {
                    st.unreadable_chunks += 1;
                    st.unreadable_bytes += rec.size;
                }
                Risk::UnderReplicated => {
                    st.under_replicated_chunks += 1;
                    st.bytes_at_risk += rec.size;
                }
                Risk::Healthy => {}
            }
            if let Some(repair) = plan.repair
                && round.repairs.len() < MAX_JOBS_PER_ROUND
            {
                round.repairs.push(Job { facts, plan: repair });
            }
            if !plan.drop.is_empty() {
                round.drops.push((id, plan.drop));
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
        let ours: Vec<String> = self.nodes.lock().keys().cloned().collect();
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
        self.find_lost_files(lost_chunks, st);
        st.last_scan_ms = unix_ms_now() as i64;
        round
    }

    /// The files whose chunks include one with no copy left: found again only when those
    /// chunks change (a walk of every file).
    fn find_lost_files(&self, mut chunks: Vec<ChunkId>, st: &mut RepairStatusResponse) {
        const MAX_PATHS: usize = 10_000;
        chunks.sort();
        let mut lost = lock(&self.upkeep.lost);
        if lost.0 != chunks {
            let set: HashSet<ChunkId> = chunks.iter().copied().collect();
            let mut paths = Vec::new();
            let mut count = 0u64;
            if !set.is_empty() {
                let mut files = Vec::new();
                let walked = self.meta.walk_files(&collective_core::RemotePath::root(), &mut |_, a| {
                    files.push(a.path);
                    true
                });
                if let Err(e) = walked {
                    tracing::warn!("cannot look for lost files: {e}");
                    return;
                }
                for f in files {
                    let Ok(path) = collective_core::validate_path(&f) else { continue };
                    let Ok((_, manifest)) = self.meta.manifest(&path) else { continue };
                    if manifest.iter().any(|c| set.contains(&ChunkId(c.id))) {
                        count += 1;
                        if paths.len() < MAX_PATHS {
                            paths.push(f);
                        }
                    }
                }
            }
            *lost = (chunks, paths, count);
        }
        st.lost_chunks = lost.0.len() as u64;
        st.lost_files = lost.2;
        st.lost_paths = lost.1.clone();
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
            if !up.w_reconcile.paused() {
                self.reconcile_queued().await;
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
            if !up.w_repair.paused() {
                let run = up.w_repair.begin((repairs.len() + drops.len()) as u64);
                self.note_repair_run(&repairs);
                self.run_repairs(repairs, &run).await;
                self.note_blocked(lock(&up.round_blocked).take());
                for (id, nodes) in drops {
                    if up.w_repair.paused() {
                        break;
                    }
                    self.retire(&id, &nodes).await;
                    run.advance(1);
                }
            }
            if !up.w_gc.paused() {
                let run = up.w_gc.begin(collect.len() as u64);
                self.collect(collect, &run).await;
                self.collect_abandoned_uploads().await;
                self.audit_hosting().await;
            }
        }
    }

    /// Reconciles the nodes that came back (their chunks against the metadata); a node
    /// that fails is tried again next round while it is up.
    async fn reconcile_queued(&self) {
        let up = &self.upkeep;
        let queued: Vec<String> = std::mem::take(&mut *lock(&up.reconcile));
        let run = up.w_reconcile.begin(queued.len() as u64);
        let mut failed = Vec::new();
        for node in queued {
            if let Err(e) = self.reconcile(&node).await {
                tracing::warn!(%node, "reconciling a returning node failed: {e}");
                failed.push(format!("{node}: {e}"));
                // Try again next round while it is up (it registers again otherwise).
                if self.nodes.lock().get(&node).is_some_and(|e| self.nodes.is_up(e)) {
                    lock(&up.reconcile).push(node);
                }
            }
            run.advance(1);
        }
        if !failed.is_empty() {
            run.fail(failed.join("; "));
        }
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
        assert!(UpkeepSettings::from_config(&c).unwrap_err().to_string().contains("hot_threshold"));
        c = UpkeepConfig {
            repair_grace: "soon".into(),
            ..UpkeepConfig::default()
        };
        assert!(UpkeepSettings::from_config(&c).unwrap_err().to_string().contains("repair_grace"));
    }
}
