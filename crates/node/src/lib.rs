//! The storage node server: serves the chunk store over the QUIC chunk protocol (token
//! checked on every operation), answers its coordinator's control calls over gRPC (usage,
//! verify, delete, list, copy a chunk to or from another node, start a scrub), scrubs its
//! store in the background, registers and sends heartbeats (with corrupt chunks found),
//! and exposes metrics and health over HTTP.
//!
//! It trusts only principals of its own member; control calls only from its coordinator;
//! chunk operations only with an unexpired token signed by that coordinator naming the
//! chunk, this node and the caller.

mod config;
mod control;
mod metrics;
mod recovery;
mod scrub;
mod server;
mod service;

pub use collective_pki::TlsFiles;
pub use config::NodeConfig;
pub use server::{NodeError, run};
