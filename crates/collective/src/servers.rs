//! `collective coordinator` and `collective node`: load config, apply flags, run until
//! SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use collective_coordinator::CoordinatorConfig;
use collective_node::NodeConfig;

use crate::config::{load_toml, rebase, rebase_tls};

/// `collective coordinator`: run a coordinator (with `--config`), or back up and restore
/// its metadata.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CoordinatorCli {
    #[command(subcommand)]
    pub command: Option<CoordinatorCommand>,
    #[command(flatten)]
    pub run: CoordinatorArgs,
}

#[derive(clap::Subcommand)]
pub enum CoordinatorCommand {
    /// Take a consistent backup of a running coordinator's metadata (it keeps serving)
    Backup {
        /// The coordinator's coordinator.toml (its address and certificate)
        #[arg(long)]
        config: PathBuf,
        /// The file to write (replaced only once the backup is complete and verified)
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a coordinator's metadata directory from a backup; then start the coordinator
    /// with `data_dir` set to it
    Restore {
        /// A file written by `collective coordinator backup`
        #[arg(long)]
        from: PathBuf,
        /// The new metadata directory (must not exist, or be empty)
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
pub struct CoordinatorArgs {
    /// coordinator.toml
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    grpc_listen: Option<String>,
    #[arg(long)]
    http_listen: Option<String>,
    /// Copies of every chunk
    #[arg(long)]
    replication: Option<u32>,
    /// Do not start: check the metadata of this (stopped) coordinator for consistency and
    /// exit non-zero if anything is wrong
    #[arg(long)]
    check: bool,
}

/// `collective node`: run a node (with `--config`), or manage one of this member's nodes.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeCli {
    #[command(subcommand)]
    pub command: Option<NodeCommand>,
    #[command(flatten)]
    pub run: NodeArgs,
}

#[derive(clap::Subcommand)]
pub enum NodeCommand {
    /// Move every chunk off a node (before removing it); follows progress until done
    Drain {
        /// Node name, e.g. node-02 (or its full principal)
        node: String,
        /// Start the drain and return at once
        #[arg(long)]
        no_wait: bool,
        /// Stop draining: the node takes new data again
        #[arg(long)]
        cancel: bool,
        #[arg(long)]
        json: bool,
    },
    /// Forget a node; refused while it holds the only copy of anything
    Rm {
        /// Node name, e.g. node-02 (or its full principal)
        node: String,
        /// Remove it even if chunks drop below their copies (never when it holds the only one)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct NodeArgs {
    /// node.toml
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// e.g. 100GiB
    #[arg(long)]
    capacity: Option<String>,
    #[arg(long)]
    grpc_listen: Option<String>,
    #[arg(long)]
    quic_listen: Option<String>,
    #[arg(long)]
    http_listen: Option<String>,
    /// Coordinator gRPC address
    #[arg(long)]
    coordinator: Option<String>,
}

/// Resolves when the process is asked to stop.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stop requested");
}

/// A coordinator.toml with its relative paths made relative to the file.
fn coordinator_config(p: &std::path::Path) -> Result<CoordinatorConfig> {
    let mut cfg: CoordinatorConfig = load_toml(p)?;
    rebase(p, &mut cfg.data_dir);
    rebase_tls(p, &mut cfg.tls);
    for dir in [&mut cfg.ca_dir, &mut cfg.federation.root_dir] {
        if !dir.as_os_str().is_empty() {
            rebase(p, dir);
        }
    }
    Ok(cfg)
}

pub async fn coordinator_cli(c: CoordinatorCli) -> Result<()> {
    match c.command {
        None => coordinator(c.run).await,
        Some(CoordinatorCommand::Backup { config, out }) => backup(&config, &out).await,
        Some(CoordinatorCommand::Restore { from, data_dir }) => {
            let info = tokio::task::spawn_blocking(move || collective_coordinator::restore(&from, &data_dir).map(|i| (i, data_dir)))
                .await?
                .context("restore failed")?;
            let (info, dir) = info;
            println!(
                "restored {} entries and {} later change sets (backup of {}) into {}; start the coordinator with data_dir = \"{}\"",
                info.entries,
                info.changes,
                collective_core::format_time_ms(info.created_ms as i64),
                dir.display(),
                dir.display()
            );
            Ok(())
        }
    }
}

/// `collective coordinator backup`: as the coordinator's own certificate, stream its
/// metadata into a temporary file beside `out`, then put it in place.
async fn backup(config: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let cfg = coordinator_config(config)?;
    let identity = cfg
        .tls
        .load()
        .with_context(|| format!("cannot load the coordinator's certificate named in {}", config.display()))?;
    let addr = local_address(&cfg.grpc_listen);
    let me = identity.principal.clone();
    let tmp = out.with_extension("partial");
    // It holds every datastore's key: readable by its owner only.
    let mut file = std::io::BufWriter::new({
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?
    });
    let summary = collective_client::backup_metadata(&identity, &addr, &me, &mut file).await;
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(anyhow::anyhow!(e)).with_context(|| format!("cannot back up the coordinator at {addr}; is it running?"));
        }
    };
    let file = file
        .into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    file.sync_all().with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot put the backup in place at {}", out.display()))?;
    println!(
        "backed up {} entries ({} changed during the backup) of {me} into {} ({}); restore with `collective coordinator restore --from {} --data-dir DIR`",
        summary.entries,
        summary.changes,
        out.display(),
        collective_core::format_bytes(summary.bytes),
        out.display()
    );
    Ok(())
}

/// Where to reach a coordinator from its own machine: its listen address, with an
/// unspecified host (`0.0.0.0`, `[::]`) replaced by loopback.
fn local_address(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let ip: std::net::IpAddr = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            std::net::SocketAddr::new(ip, a.port()).to_string()
        }
        _ => listen.to_string(),
    }
}

pub async fn coordinator(a: CoordinatorArgs) -> Result<()> {
    let mut cfg = CoordinatorConfig::default();
    if let Some(p) = &a.config {
        cfg = coordinator_config(p)?;
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = a.grpc_listen {
        cfg.grpc_listen = v;
    }
    if let Some(v) = a.http_listen {
        cfg.http_listen = v;
    }
    if let Some(v) = a.replication {
        cfg.replication = v;
    }
    if a.check {
        return check_metadata(cfg).await;
    }
    collective_coordinator::run(cfg, stop_signal()).await.context("coordinator failed")
}

async fn check_metadata(cfg: CoordinatorConfig) -> Result<()> {
    let dir = cfg.data_dir.clone();
    let r = tokio::task::spawn_blocking(move || collective_coordinator::check(&cfg))
        .await?
        .with_context(|| format!("cannot check the metadata in {}", dir.display()))?;
    println!(
        "{} directories, {} files, {} symlinks; {} chunks ({} unreferenced, awaiting collection), {} references",
        r.directories, r.files, r.symlinks, r.chunks, r.unreferenced_chunks, r.references
    );
    if r.is_consistent() {
        println!("metadata in {} is consistent", dir.display());
        return Ok(());
    }
    for p in &r.problems {
        println!("problem: {p}");
    }
    anyhow::bail!(
        "the metadata in {} has {} problem(s); keep a copy of the directory and report them",
        dir.display(),
        r.problems.len()
    )
}

pub async fn node(a: NodeArgs) -> Result<()> {
    let mut cfg = NodeConfig::default();
    if let Some(p) = &a.config {
        cfg = load_toml(p)?;
        rebase(p, &mut cfg.data_dir);
        rebase_tls(p, &mut cfg.tls);
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = a.capacity {
        cfg.capacity = v;
    }
    if let Some(v) = a.grpc_listen {
        cfg.grpc_listen = v;
    }
    if let Some(v) = a.quic_listen {
        cfg.quic_listen = v;
    }
    if let Some(v) = a.http_listen {
        cfg.http_listen = v;
    }
    if let Some(v) = a.coordinator {
        cfg.coordinator = v;
    }
    collective_node::run(cfg, stop_signal()).await.context("node failed")
}
