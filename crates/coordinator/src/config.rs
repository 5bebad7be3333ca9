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
    pub tls: TlsFiles,
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
            tls: TlsFiles::default(),
        }
    }
}
