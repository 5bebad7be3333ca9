//! `coordinator.toml`: every key has a default that works for a local demo.

use std::path::PathBuf;

use collective_pki::TlsFiles;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Where the metadata database lives.
    pub data_dir: PathBuf,
    /// gRPC endpoint for clients and nodes (mTLS).
    pub grpc_listen: String,
    /// Plain-HTTP metrics and health endpoint.
    pub http_listen: String,
    /// Copies of every chunk.
    pub replication: u32,
    /// A node that has not sent a heartbeat for this long is down, e.g. "10s".
    pub node_timeout: String,
    /// How long chunk tokens stay valid, e.g. "15m".
    pub token_ttl: String,
    /// This member's CA directory (`ca.crt`, `ca.key`): lets the coordinator sign
    /// certificates for users who redeem invites. Empty: user invites are unavailable.
    pub ca_dir: PathBuf,
    /// Principals with every right in this member's namespace (create datastores, grant,
    /// invite). Empty: `admin@<member domain>` and `<member>@<member domain>`.
    pub admins: Vec<String>,
    /// The gRPC address other members and invitees use to reach us (default: grpc_listen).
    pub advertise_grpc: String,
    /// How long audit log entries are kept, e.g. "365d".
    pub audit_retention: String,
    /// How often committed metadata changes are backed up into the federation, e.g. "60s"
    /// ("0": never; the member then cannot be recovered from its kit).
    pub metadata_backup_interval: String,
    /// How often a whole snapshot is taken (between them, only the changes are stored).
    pub metadata_backup_snapshot_every: String,
    /// Backups kept for point-in-time recovery: the newest of each of the last N hours
    /// and of the last N days.
    pub metadata_backup_keep_hourly: u32,
    pub metadata_backup_keep_daily: u32,
    /// Most bytes per second the backup uploads, e.g. "32MiB".
    pub metadata_backup_rate: String,
    pub tls: TlsFiles,
    pub federation: FederationConfig,
    pub upkeep: UpkeepConfig,
}

/// `[upkeep]`: repair, garbage collection and hot replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpkeepConfig {
    /// How often replica sets are checked (and after any node or replica change).
    pub scan_interval: String,
    /// How long a node (or member) may be down before its copies are replaced elsewhere.
    /// Short outages (a reboot, an upgrade) should not trigger a full re-replication.
    pub repair_grace: String,
    /// Most bytes per second repair and drain copy between nodes, so users are not starved.
    pub repair_rate: String,
    /// Chunk copies in flight at once.
    pub repair_parallel: u32,
    /// How long an unreferenced chunk stays before it is deleted (a concurrent upload may
    /// still reuse it).
    pub gc_grace: String,
    /// Reads (decayed) above which a chunk gets an extra copy.
    pub hot_threshold: f64,
    /// Half-life of the read count.
    pub hot_half_life: String,
    /// Most extra copies a hot chunk gets.
    pub hot_max_extra: u32,
}

impl Default for UpkeepConfig {
    fn default() -> Self {
        UpkeepConfig {
            scan_interval: "30s".into(),
            repair_grace: "15m".into(),
            repair_rate: "64MiB".into(),
            repair_parallel: 4,
            gc_grace: "1h".into(),
            hot_threshold: 200.0,
            hot_half_life: "10m".into(),
            hot_max_extra: 2,
        }
    }
}

/// `[federation]`: gossip with the other members' coordinators.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// UDP address for SWIM gossip; empty: this member is not federated.
    pub gossip_listen: String,
    /// The gossip address others send to (default: gossip_listen).
    pub gossip_advertise: String,
    /// Gossip addresses of any members to join through.
    pub bootstrap: Vec<String>,
    /// Directory holding the federation root (`root.crt`, `root.key`) when this coordinator
    /// may sign new members' CAs. Empty on every other member.
    pub root_dir: PathBuf,
    /// Bytes of our nodes' capacity offered to other members, e.g. "500GiB".
    pub contribution: String,
    /// How often a random member is probed.
    pub probe_period: String,
    /// How long to wait for a direct probe answer before asking others to probe.
    pub probe_rtt: String,
    /// How long a suspect member has to answer before it is declared down.
    pub suspect_timeout: String,
    /// How often state is reconciled with a random member over gRPC.
    pub anti_entropy: String,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            gossip_listen: String::new(),
            gossip_advertise: String::new(),
            bootstrap: vec![],
            root_dir: PathBuf::new(),
            contribution: "0".into(),
            probe_period: "1s".into(),
            probe_rtt: "400ms".into(),
            suspect_timeout: "4s".into(),
            anti_entropy: "10s".into(),
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            data_dir: PathBuf::from("coordinator-data"),
            grpc_listen: "127.0.0.1:7000".into(),
            http_listen: "127.0.0.1:9100".into(),
            replication: 2,
            node_timeout: "10s".into(),
            token_ttl: "15m".into(),
            ca_dir: PathBuf::new(),
            admins: vec![],
            advertise_grpc: String::new(),
            audit_retention: "365d".into(),
            metadata_backup_interval: "60s".into(),
            metadata_backup_snapshot_every: "1h".into(),
            metadata_backup_keep_hourly: 24,
            metadata_backup_keep_daily: 7,
            metadata_backup_rate: "32MiB".into(),
            tls: TlsFiles::default(),
            federation: FederationConfig::default(),
            upkeep: UpkeepConfig::default(),
        }
    }
}
