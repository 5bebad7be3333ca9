//! Continuous backup of this member's metadata into the federation, so that a member whose
//! coordinator disk dies, or whose house burns, comes back from its recovery kit alone.
//!
//! Every `metadata_backup_interval` the worker takes what is new and stores it where our
//! coordinator's disk is not:
//!
//! - a **snapshot** (a consistent export of the whole store, `collective_meta::snapshot`)
//!   when there is none yet, the last is older than `metadata_backup_snapshot_every`, its
//!   change log has grown long, or one of its chunks lost copies; otherwise
//! - a **segment**: the changes committed since the last backup, from the store's change
//!   log (kept on for good while backups run, trimmed once backed up).
//!
//! Both are cut into content-defined chunks (unchanged parts of a snapshot are the same
//! chunks as before and are not stored again), each sealed under a key derived from the
//! member's recovery secret, and placed like a `backup` datastore's: other members first,
//! our own nodes when we are alone. A **manifest** lists the snapshot and the segments after
//! it; sealed too, it is one more chunk. The newest manifests (24 hourly and 7 daily by
//! default) are the **heads** of a recovery record, signed by this coordinator with its
//! chain and pushed to every peer coordinator and every one of our nodes. The record also
//! carries the member's identity (CA, root when held, coordinator key) sealed under the
//! secret, and the public key that proves a fetch comes from the kit's holder.
//!
//! A record is pushed only once every chunk it names is stored, so a crash at any point
//! leaves the keepers with the previous, complete backup. What this worker stores is kept
//! apart from the data (`Table::Backup`, hosted chunks under `<member>#metadata`) and is
//! never itself a change to back up.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use collective_core::{Worker, crash_point, unix_ms_now};
use collective_pki::{RecoverySecret, TlsFiles};
use collective_proto::v1::{
    BackupBlob, BackupHead, BackupManifest, BackupProgress, IdentityFile, MetadataBackupStatus, NodeLocation, RecoveryIdentity,
    RecoveryRecord, SignedRecoveryRecord,
};
use prost::Message;
use tokio::sync::Notify;

use crate::state::State;

mod bench;
mod keep;
mod store;

pub use bench::{BackupBench, bench_backup};

pub(crate) use store::{chunk_key, manifest_key};

/// What the keys derived from the recovery secret are for.
pub const MANIFEST_PURPOSE: &str = "metadata-backup-manifest-v1";
pub const CHUNK_PURPOSE: &str = "metadata-backup-chunks-v1";
pub const IDENTITY_PURPOSE: &str = "metadata-backup-identity-v1";

/// A snapshot is taken instead of one more segment once this many segments follow it.
const MAX_SEGMENTS: usize = 120;
/// Keepers are sent the record again after this long even when nothing changed (a keeper
/// that restarted from an old disk, or a new member, gets it).
const REPUBLISH_EVERY: Duration = Duration::from_secs(600);
/// The export's write buffer: the coordinator's memory counts, its throughput hardly.
const WRITE_BUFFER: usize = 64 << 10;
/// How often other members are asked what they still hold of the newest backup.
const AUDIT_COPIES_EVERY: Duration = Duration::from_secs(3600);
/// Largest identity file carried (certificates, keys, the names register, revocations).
const MAX_IDENTITY_FILE: u64 = 1 << 20;

pub(crate) const PROGRESS_KEY: &[u8] = b"progress";

/// Parsed `metadata_backup_*` settings.
#[derive(Debug, Clone)]
pub struct BackupSettings {
    /// Zero: no backups.
    pub interval: Duration,
    pub snapshot_every: Duration,
    pub keep_hourly: usize,
    pub keep_daily: usize,
    /// Bytes per second uploads may use.
    pub rate: u64,
}

impl BackupSettings {
    /// No backups (until the configuration says otherwise).
    pub fn off() -> BackupSettings {
        BackupSettings {
            interval: Duration::ZERO,
            snapshot_every: Duration::from_secs(3600),
            keep_hourly: 24,
            keep_daily: 7,
            rate: 32 << 20,
        }
    }

    pub fn from_config(c: &crate::config::CoordinatorConfig) -> Result<BackupSettings, crate::CoordinatorError> {
        use crate::CoordinatorError::Config;
        let dur = |k: &str, v: &str| collective_core::parse_duration(v).map_err(|e| Config(format!("{k}: {e}")));
        let snapshot_every = dur("metadata_backup_snapshot_every", &c.metadata_backup_snapshot_every)?;
        if snapshot_every.is_zero() {
            return Err(Config("metadata_backup_snapshot_every must be more than 0".into()));
        }
        let rate = collective_core::parse_size(&c.metadata_backup_rate).map_err(|e| Config(format!("metadata_backup_rate: {e}")))?;
        if rate == 0 {
            return Err(Config("metadata_backup_rate must be more than 0".into()));
        }
        // "0" (no unit) is how the configuration says "never".
        let interval = match c.metadata_backup_interval.trim() {
            "0" => Duration::ZERO,
            v => dur("metadata_backup_interval", v)?,
        };
        Ok(BackupSettings {
            interval,
            snapshot_every,
            keep_hourly: c.metadata_backup_keep_hourly as usize,
            keep_daily: c.metadata_backup_keep_daily as usize,
            rate,
        })
    }
}

/// Where the identity the record carries is read from.
#[derive(Debug, Clone, Default)]
pub struct IdentitySources {
    pub ca_dir: PathBuf,
    pub root_dir: PathBuf,
    pub tls: TlsFiles,
    /// The coordinator's settings as TOML (recovery writes them back, with new paths).
    pub config_toml: String,
}

/// The metadata backup's settings, worker and live status.
pub struct MetaBackup {
    pub settings: BackupSettings,
    pub sources: IdentitySources,
    pub worker: Arc<Worker>,
    /// Wakes the loop early (a test, or a shutdown).
    pub wake: Notify,
    status: Mutex<Live>,
    client: tokio::sync::OnceCell<Arc<collective_dataplane::ChunkClient>>,
    started_ms: u64,
    /// The change log was off at some point since the last backup (set at start): the next
    /// backup is a whole snapshot.
    pub log_broken: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Live {
    /// When other members were last asked what they still hold of the newest backup.
    audited: Option<std::time::Instant>,
    /// When a run last found every committed change already backed up (and the record
    /// with its keepers): the backup is as current then as after a new one.
    confirmed_ms: u64,
    last_error: String,
    keepers: u32,
    /// Per keeper, the record version it took.
    pushed: HashMap<String, u64>,
    pushed_at_ms: u64,
}

impl MetaBackup {
    pub fn new(settings: BackupSettings, sources: IdentitySources) -> MetaBackup {
        let throttle = format!(
            "every {}s, {}/s",
            settings.interval.as_secs(),
            collective_core::format_bytes(settings.rate)
        );
        MetaBackup {
            settings,
            sources,
            worker: Worker::new("metadata-backup", throttle),
            wake: Notify::new(),
            status: Mutex::new(Live::default()),
            client: tokio::sync::OnceCell::new(),
            started_ms: unix_ms_now(),
            log_broken: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why backups cannot run here ("" when they can).
    pub fn off_reason(&self) -> String {
        if self.settings.interval.is_zero() {
            return "metadata_backup_interval is 0".into();
        }
        if self.sources.ca_dir.as_os_str().is_empty() {
            return "no ca_dir is configured, so there is no recovery secret to seal backups with".into();
        }
        String::new()
    }

    /// When a backup last reached the federation, or when this coordinator started.
    pub fn age_from_ms(&self, last_success_ms: u64) -> u64 {
        if last_success_ms > 0 { last_success_ms } else { self.started_ms }
    }
}

/// Removes a file when dropped (on every way out of a backup).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Which heads to keep: every one of the hour before the newest (they share their chunks
/// but for one manifest each), then the newest of each of the last `hourly` hours and of
/// the last `daily` days that have one. `heads` is newest first; so is the result.
pub fn retain(heads: Vec<BackupHead>, hourly: usize, daily: usize) -> Vec<BackupHead> {
    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 24 * HOUR;
    let mut heads = heads;
    heads.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.seq.cmp(&a.seq)));
    let newest = heads.first().map_or(0, |h| h.created_ms);
    let mut keep: Vec<bool> = heads.iter().map(|h| newest.saturating_sub(h.created_ms) < HOUR).collect();
    for (period, count) in [(HOUR, hourly), (DAY, daily)] {
        let mut seen: BTreeSet<u64> = BTreeSet::new();
        for (i, h) in heads.iter().enumerate() {
            let bucket = h.created_ms / period;
            if seen.contains(&bucket) {
                continue;
            }
            if seen.len() >= count {
                break;
            }
            seen.insert(bucket);
            keep[i] = true;
        }
    }
    heads.into_iter().zip(keep).filter(|(_, k)| *k).map(|(h, _)| h).collect()
}

/// Every chunk a manifest names (snapshot and segments).
pub(crate) fn manifest_chunks(m: &BackupManifest) -> impl Iterator<Item = &collective_proto::v1::BackupChunk> {
    m.snapshot.iter().chain(m.segments.iter()).flat_map(|b| b.chunks.iter())
}

/// The member's identity as files, for the record (sealed before it leaves).
fn identity_files(sources: &IdentitySources) -> Result<RecoveryIdentity, String> {
    let mut files = Vec::new();
    let mut add_dir = |place: &str, dir: &Path| -> Result<(), String> {
        if dir.as_os_str().is_empty() {
            return Ok(());
        }
        let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || meta.len() > MAX_IDENTITY_FILE || name == collective_pki::RECOVERY_SECRET_FILE {
                continue;
            }
            let data = std::fs::read(entry.path()).map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
            files.push(IdentityFile {
                place: place.into(),
                name,
                data: data.into(),
            });
        }
        Ok(())
    };
    add_dir("ca", &sources.ca_dir)?;
    add_dir("root", &sources.root_dir)?;
    for (path, name) in [
        (&sources.tls.cert, "coordinator.crt"),
        (&sources.tls.key, "coordinator.key"),
        (&sources.tls.ca, "trust.crt"),
    ] {
        let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        files.push(IdentityFile {
            place: "tls".into(),
            name: name.into(),
            data: data.into(),
        });
    }
    files.push(IdentityFile {
        place: "config".into(),
        name: "coordinator.toml".into(),
        data: sources.config_toml.clone().into_bytes().into(),
    });
    Ok(RecoveryIdentity { files })
}

impl State {
    /// The backup's saved progress (none yet: a default one).
    fn backup_progress(&self) -> Result<BackupProgress, String> {
        match self.meta.backup_get(PROGRESS_KEY).map_err(|e| e.to_string())? {
            Some(v) => BackupProgress::decode(v.as_slice()).map_err(|e| format!("the backup's saved progress is damaged: {e}")),
            None => Ok(BackupProgress::default()),
        }
    }

    /// What `status` shows of the backups (and the metrics say).
    pub fn backup_status(&self) -> MetadataBackupStatus {
        let b = &self.backup;
        let off = b.off_reason();
        let progress = self.backup_progress().unwrap_or_default();
        let pending = if off.is_empty() { self.meta.changes_after(progress.seq) } else { 0 };
        let last_success_ms = progress.last_success_ms.max(b.live().confirmed_ms);
        let age_s = unix_ms_now().saturating_sub(b.age_from_ms(last_success_ms)) / 1000;
        self.metrics.metadata_backup_age.set(age_s as i64);
        self.metrics.metadata_backup_pending.set(pending as i64);
        let live = b.live();
        MetadataBackupStatus {
            enabled: off.is_empty(),
            off_reason: off,
            last_success_ms,
            age_s,
            pending_changes: pending,
            sequence: progress.seq,
            last_error: live.last_error.clone(),
            keepers: live.keepers,
            backups_kept: progress.heads.len() as u32,
        }
    }

    /// The loop: one backup per interval (sooner when woken), until the coordinator stops.
    pub async fn metadata_backup_loop(self: Arc<Self>) {
        let off = self.backup.off_reason();
        if !off.is_empty() {
            tracing::warn!("metadata backups are off: {off}");
            return;
        }
        let mut stopping = self.stopping.subscribe();
        // A first backup soon after start (a restarted coordinator catches up at once).
        let mut wait = Duration::from_secs(2);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.backup.wake.notified() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            wait = self.backup.settings.interval;
            if self.backup.worker.paused() {
                continue;
            }
            match self.back_up_once().await {
                Ok(()) => {
                    let was = std::mem::take(&mut self.backup.live().last_error);
                    if !was.is_empty() {
                        self.events.emit(
                            "metadata-backup-resumed",
                            &self.domain,
                            crate::events::Severity::Info,
                            "the metadata backup into the federation works again".into(),
                        );
                    }
                }
                Err(e) => {
                    let first = {
                        let mut live = self.backup.live();
                        let first = live.last_error.is_empty();
                        live.last_error = e.clone();
                        first
                    };
                    if first {
                        self.events.emit(
                            "metadata-backup-failed",
                            &self.domain,
                            crate::events::Severity::Warning,
                            format!("the metadata backup failed: {e}"),
                        );
                    } else {
                        tracing::warn!("the metadata backup failed again: {e}");
                    }
                }
            }
        }
    }

    /// One backup: a snapshot or a segment when there is something new, then the record to
    /// every keeper that lacks it.
    pub async fn back_up_once(self: &Arc<Self>) -> Result<(), String> {
        let ca_dir = self.backup.sources.ca_dir.clone();
        let secret = tokio::task::spawn_blocking(move || collective_pki::existing_recovery_secret(&ca_dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read the recovery secret: {e}"))?
            .ok_or_else(|| {
                format!(
                    "{} holds no recovery secret yet; make one with `collective member recovery-kit --out FILE`, then print the kit",
                    self.backup.sources.ca_dir.display()
                )
            })?;
        let mut progress = self.backup_progress()?;
        // Once an hour, what other members still hold of the newest backup.
        let audit_due = self.backup.live().audited.is_none_or(|t| t.elapsed() >= AUDIT_COPIES_EVERY);
        if audit_due && let Some(m) = &progress.current {
            self.audit_backup_copies(m).await;
            self.backup.live().audited = Some(std::time::Instant::now());
            // The manifest names the nodes as placed; its chunk records say what is left.
            if let Some(m) = progress.current.as_mut() {
                for blob in m.snapshot.iter_mut().chain(m.segments.iter_mut()) {
                    for c in blob.chunks.iter_mut() {
                        if let Some(id) = collective_core::ChunkId::from_slice(&c.id)
                            && let Ok(Some(v)) = self.meta.backup_get(&chunk_key(&id))
                            && let Ok(rec) = collective_proto::v1::BackupChunk::decode(v.as_slice())
                        {
                            c.nodes = rec.nodes;
                        }
                    }
                }
            }
        }
        let mark = self.meta.mark().map_err(|e| e.to_string())?;
        let pending = self.meta.changes_after(progress.seq);
        let now = unix_ms_now();
        let current = progress.current.clone();
        // Changes may be missing from the log (it was off): only a whole snapshot is sure.
        let broken = self.backup.log_broken.load(std::sync::atomic::Ordering::SeqCst);
        let snapshot_due = match &current {
            _ if broken => true,
            None => true,
            Some(m) => {
                now.saturating_sub(m.snapshot.as_ref().map_or(0, |s| s.created_ms))
                    >= self.backup.settings.snapshot_every.as_millis() as u64
                    || m.segments.len() >= MAX_SEGMENTS
                    || self.backup_under_replicated(m)
            }
        };
        if !snapshot_due && pending == 0 {
            self.publish_record(&secret, &progress, false).await?;
            if !progress.heads.is_empty() {
                self.backup.live().confirmed_ms = now;
            }
            return Ok(());
        }
        let key = secret.derive(CHUNK_PURPOSE);
        // The piece is plaintext metadata: in a directory of the coordinator's own, removed
        // whatever happens.
        let work = self.meta_dir.with_extension("backup-work");
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&work)
                .map_err(|e| format!("cannot create {}: {e}", work.display()))?;
        }
        let file = work.join("piece");
        let _piece = RemoveOnDrop(file.clone());
        let (run, manifest) = if snapshot_due {
            let meta = self.meta.clone();
            let f = file.clone();
            let info = tokio::task::spawn_blocking(move || -> Result<collective_meta::ExportInfo, String> {
                let out = std::fs::File::create(&f).map_err(|e| format!("cannot write {}: {e}", f.display()))?;
                meta.export(std::io::BufWriter::with_capacity(WRITE_BUFFER, out))
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
            let run = self.backup.worker.begin(info.bytes / store::AVG_CHUNK as u64 + 2);
            let blob = self.store_blob(&file, &key, &run).await?;
            (
                run,
                BackupManifest {
                    member: self.domain.clone(),
                    seq: info.seq,
                    created_ms: info.created_ms,
                    snapshot: Some(BackupBlob {
                        upto: info.seq,
                        created_ms: info.created_ms,
                        ..blob
                    }),
                    segments: vec![],
                },
            )
        } else {
            let mut m = current.clone().unwrap_or_default();
            let meta = self.meta.clone();
            let (f, after) = (file.clone(), progress.seq);
            let info = tokio::task::spawn_blocking(move || -> Result<collective_meta::ExportInfo, String> {
                let out = std::fs::File::create(&f).map_err(|e| format!("cannot write {}: {e}", f.display()))?;
                meta.export_changes(after, mark, std::io::BufWriter::with_capacity(WRITE_BUFFER, out))
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
            let run = self.backup.worker.begin(info.bytes / store::AVG_CHUNK as u64 + 2);
            let blob = self.store_blob(&file, &key, &run).await?;
            m.segments.push(BackupBlob {
                after: progress.seq,
                upto: mark,
                created_ms: info.created_ms,
                ..blob
            });
            m.seq = mark;
            m.created_ms = info.created_ms;
            (run, m)
        };
        crash_point("metadata-backup:after-chunks");
        // The manifest: sealed (not convergent: it names every key), one more chunk.
        let sealed = secret
            .seal_blob(MANIFEST_PURPOSE, &manifest.encode_to_vec())
            .map_err(|e| e.to_string())?;
        let (manifest_id, manifest_nodes) = self.store_sealed(sealed.clone(), &run).await?;
        crash_point("metadata-backup:after-manifest");
        let head = BackupHead {
            seq: manifest.seq,
            created_ms: manifest.created_ms,
            manifest: manifest_id.0.to_vec().into(),
            manifest_size: sealed.len() as u64,
            manifest_nodes,
        };
        let mut heads = progress.heads.clone();
        heads.push(head);
        progress.heads = retain(heads, self.backup.settings.keep_hourly, self.backup.settings.keep_daily);
        progress.seq = manifest.seq;
        progress.last_success_ms = unix_ms_now();
        progress.current_manifest_size = sealed.len() as u64;
        self.keep_manifest(&manifest_id, &manifest)?;
        progress.current = Some(manifest);
        self.meta
            .backup_put(PROGRESS_KEY, progress.encode_to_vec())
            .and_then(|_| self.meta.flush_blocking())
            .map_err(|e| e.to_string())?;
        crash_point("metadata-backup:after-progress");
        if snapshot_due {
            self.backup.log_broken.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        self.meta.trim_log(progress.seq).map_err(|e| e.to_string())?;
        drop(run);
        self.publish_record(&secret, &progress, true).await?;
        crash_point("metadata-backup:after-record");
        self.collect_backup_chunks(&progress).await;
        Ok(())
    }

    /// Whether any chunk of the newest backup has fewer live copies than it should.
    fn backup_under_replicated(&self, m: &BackupManifest) -> bool {
        let want = self.backup_replicas().min(self.backup_places());
        manifest_chunks(m).any(|c| {
            c.nodes
                .iter()
                .filter(|n| matches!(self.liveness(n), crate::upkeep::Live::Up | crate::upkeep::Live::Waiting))
                .count()
                < want
        })
    }

    /// Copies each backup chunk gets: the coordinator's replication, at least two.
    pub(crate) fn backup_replicas(&self) -> usize {
        self.replication.max(2)
    }

    /// How many distinct places (our nodes, other members) can hold a copy now.
    fn backup_places(&self) -> usize {
        let own = {
            let nodes = self.nodes.lock();
            nodes.values().filter(|e| self.nodes.is_up(e)).count()
        };
        let others = self
            .links
            .fed()
            .map(|f| {
                f.gossip
                    .states()
                    .iter()
                    .filter(|s| s.member != self.domain && self.member_up(&s.member))
                    .count()
            })
            .unwrap_or(0);
        own + others
    }

    /// The record naming our heads, signed, with our identity sealed inside.
    fn backup_record(&self, secret: &RecoverySecret, progress: &BackupProgress) -> Result<SignedRecoveryRecord, String> {
        let identity = identity_files(&self.backup.sources)?;
        let sealed = secret
            .seal_blob(IDENTITY_PURPOSE, &identity.encode_to_vec())
            .map_err(|e| e.to_string())?;
        let nodes = {
            let nodes = self.nodes.lock();
            let mut v: Vec<NodeLocation> = nodes
                .iter()
                .map(|(n, e)| NodeLocation {
                    node: n.clone(),
                    grpc_addr: e.grpc_addr.clone(),
                    quic_addr: e.quic_addr.clone(),
                    gossip_addr: String::new(),
                })
                .collect();
            v.sort_by(|a, b| a.node.cmp(&b.node));
            v
        };
        let record = RecoveryRecord {
            member: self.domain.clone(),
            version: unix_ms_now(),
            recovery_key: secret.fetch_public_key().to_vec().into(),
            identity: sealed.into(),
            heads: progress.heads.clone(),
            grpc_addr: self.advertise_grpc.clone(),
            nodes,
        };
        Ok(collective_pki::sign_record(&self.signer, &self.identity, record.encode_to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(created_ms: u64) -> BackupHead {
        BackupHead {
            seq: created_ms,
            created_ms,
            ..Default::default()
        }
    }

    #[test]
    fn retention_keeps_the_newest_then_one_per_hour_and_one_per_day() {
        const MIN: u64 = 60_000;
        const HOUR: u64 = 60 * MIN;
        let now = 400 * 24 * HOUR;
        // A backup every 10 minutes for 10 days.
        let heads: Vec<BackupHead> = (0..10 * 24 * 6).map(|i| head(now - i * 10 * MIN)).collect();
        let kept = retain(heads, 24, 7);
        assert_eq!(kept[0].created_ms, now, "the newest is kept");
        let hours: BTreeSet<u64> = kept.iter().map(|h| h.created_ms / HOUR).collect();
        let days: BTreeSet<u64> = kept.iter().map(|h| h.created_ms / (24 * HOUR)).collect();
        assert!(hours.len() >= 24 && kept.len() <= 6 + 24 + 7, "{}", kept.len());
        assert_eq!(
            kept.iter().filter(|h| h.created_ms > now - HOUR).count(),
            6,
            "the last hour's are all kept"
        );
        assert_eq!(days.len(), 7);
        assert!(kept.windows(2).all(|w| w[0].created_ms > w[1].created_ms), "newest first");
        // Nothing older than the seventh day back.
        assert!(kept.iter().all(|h| h.created_ms > now - 7 * 24 * HOUR));
        // Keeping nothing hourly or daily still keeps the last hour's.
        assert_eq!(retain(vec![head(5), head(9)], 0, 0).len(), 2);
        assert_eq!(retain(vec![head(5), head(9 + HOUR)], 0, 0).len(), 1);
    }
}
