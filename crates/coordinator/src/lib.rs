//! The coordinator server of one member: metadata (namespace, manifests, chunk references,
//! in `collective-meta`), the node registry with heartbeats, placement of new chunks, the
//! signing of chunk tokens, and the upkeep loop that keeps every chunk at its number of
//! copies (repair, drain, hot copies, garbage collection, reconciling returning nodes).
//! Clients and nodes reach it over gRPC with mutual TLS; the role in each caller's
//! certificate decides which calls it may make.

mod access;
mod admin;
mod bootstrap;
mod config;
mod error;
mod events;
mod federation;
mod hosting;
mod links;
mod metabackup;
mod metadata;
mod metrics;
mod nodes;
mod observe;
mod recover;
mod registry;
mod removal;
mod repair_plan;
mod server;
mod state;
mod status;
mod throttle;
mod upkeep;
mod upkeep_service;

pub use collective_meta::CheckReport;
pub use collective_pki::TlsFiles;
pub use config::{CoordinatorConfig, FederationConfig, UpkeepConfig};
pub use metabackup::{BackupBench, bench_backup};
pub use recover::{RecoverOptions, Recovered, recover};
pub use server::{CoordinatorError, run};

/// Opens the metadata of a stopped coordinator and checks it (see
/// [`collective_meta::MetaStore::check`]).
pub fn check(cfg: &CoordinatorConfig) -> Result<CheckReport, CoordinatorError> {
    // Opening would create an empty store, which is consistent but not what was asked about.
    if !cfg.data_dir.join("db").exists() && !cfg.data_dir.join("conf").exists() {
        return Err(CoordinatorError::Config(format!(
            "{} holds no coordinator metadata; name the data_dir of the coordinator to check",
            cfg.data_dir.display()
        )));
    }
    let meta = collective_meta::MetaStore::open(&cfg.data_dir).map_err(|e| match e {
        collective_meta::MetaError::Open(..) => CoordinatorError::Config(format!("{e}; if a coordinator is running on it, stop it first")),
        e => e.into(),
    })?;
    Ok(meta.check()?)
}

/// Makes the metadata directory `data_dir` (new, or empty) from a backup file taken by
/// `collective coordinator backup`, checking every byte against the backup's hash first;
/// a damaged backup leaves nothing behind. Start a coordinator on `data_dir` afterwards.
pub fn restore(from: &std::path::Path, data_dir: &std::path::Path) -> Result<collective_meta::ExportInfo, CoordinatorError> {
    let file = std::fs::File::open(from).map_err(|e| CoordinatorError::Io(format!("cannot read the backup {}: {e}", from.display())))?;
    let info = collective_meta::import(data_dir, std::io::BufReader::with_capacity(1 << 20, file))?;
    Ok(info)
}
