//! The Collective client library: everything the CLI and the FUSE mount do.
//!
//! It talks to its member's coordinator over gRPC for metadata and plans, and straight to
//! storage nodes over QUIC for chunk bytes. Writes chunk the input with FastCDC, hash with
//! BLAKE3, skip chunks already stored, stream the rest to R nodes with a bounded memory
//! budget and commit the manifest only when every chunk has R verified copies. Reads fetch
//! chunks in parallel with read-ahead, verify each, and fall back to another replica
//! (reporting the bad one) on error.

mod admin;
mod blocks;
mod chunking;
mod config;
pub mod contexts;
mod download;
pub mod enrol;
mod error;
pub mod localtree;
mod metabackup;
mod observe;
mod sealing;
mod session;
pub mod status;
mod upkeep;
mod upload;
pub mod writeback;

pub use admin::InviteFor;
pub use blocks::{PreparedChunk, prepare_chunk};
pub use chunking::{ChunkParams, LARGE_FILE, chunk_params};
pub use collective_dataplane::DataError;
pub use collective_rpc::ErrorKind;
pub use config::ClientConfig;
pub use download::GetReport;
pub use download::open_chunk;
pub use error::ClientError;
pub use metabackup::{BackupSummary, backup_metadata};
pub use observe::{AuditQuery, Events};
pub use sealing::SEAL_LEN;
pub use session::{Client, Progress};
pub use upload::{PutReport, Source};
