//! `collective coordinator` and `collective node`: load config, apply flags, run until
//! SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use collective_coordinator::CoordinatorConfig;
use collective_node::NodeConfig;

use crate::config::{load_toml, rebase, rebase_tls};

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

pub async fn coordinator(a: CoordinatorArgs) -> Result<()> {
    let mut cfg = CoordinatorConfig::default();
    if let Some(p) = &a.config {
        cfg = load_toml(p)?;
        rebase(p, &mut cfg.data_dir);
        rebase_tls(p, &mut cfg.tls);
        for dir in [&mut cfg.ca_dir, &mut cfg.federation.root_dir] {
            if !dir.as_os_str().is_empty() {
                rebase(p, dir);
            }
        }
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
