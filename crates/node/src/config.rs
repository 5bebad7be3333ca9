//! `node.toml`: every key has a default that works for a local demo.

use std::path::PathBuf;

use collective_pki::TlsFiles;
use serde::{Deserialize, Serialize};

/// Certificate files of a server or client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Where chunks live.
    pub data_dir: PathBuf,
    /// Most bytes of chunk data this node will store, e.g. "100GiB".
    pub capacity: String,
    /// gRPC control endpoint (mTLS).
    pub grpc_listen: String,
    /// QUIC chunk endpoint (UDP, mTLS).
    pub quic_listen: String,
    /// Plain-HTTP metrics and health endpoint.
    pub http_listen: String,
    /// Host other machines use to reach this node; default: the listen address.
    pub advertise_host: Option<String>,
    /// gRPC address of this member's coordinator.
    pub coordinator: String,
    /// Principal name of the coordinator within this member (its certificate name).
    pub coordinator_name: String,
    /// How often the node reports capacity and health, e.g. "2s".
    pub heartbeat_interval: String,
    /// Background scrub: bytes re-hashed per second at most, e.g. "32MiB".
    pub scrub_rate: String,
    /// Time between scrub passes, e.g. "7d" (`collective scrub start` runs one now).
    pub scrub_interval: String,
    pub tls: TlsFiles,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("node-data"),
            capacity: "10GiB".into(),
            grpc_listen: "127.0.0.1:7101".into(),
            quic_listen: "127.0.0.1:7101".into(),
            http_listen: "127.0.0.1:9101".into(),
            advertise_host: None,
            coordinator: "127.0.0.1:7000".into(),
            coordinator_name: "coordinator".into(),
            heartbeat_interval: "2s".into(),
            scrub_rate: "32MiB".into(),
            scrub_interval: "7d".into(),
            tls: TlsFiles::default(),
        }
    }
}
