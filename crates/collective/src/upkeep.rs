//! `collective repair|scrub|node drain|node rm`: watching and steering self-healing.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Subcommand;
use collective_client::Client;
use collective_core::format_bytes;
use collective_proto::v1::{DrainStatus, NodeHealth, RepairStatusResponse, ScrubReport};
use serde_json::json;

use crate::config::{ClientOverrides, client_config};

fn connect(o: &ClientOverrides) -> Result<Client> {
    Ok(Client::connect(&client_config(o)?)?)
}

#[derive(Subcommand)]
pub enum RepairCommand {
    /// Chunks and bytes at risk, repair progress and an estimate
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Delete chunks on this member's nodes that the metadata has no record of (see
    /// `repair status`), once you are sure they are garbage: only those first seen longer
    /// ago than --older-than (never less than upkeep.gc_grace) and still unknown
    CollectUnknown {
        /// Only chunks first seen at least this long ago, e.g. 7d
        #[arg(long, default_value = "0s")]
        older_than: String,
        /// Count what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ScrubCommand {
    /// Ask every node to re-hash its chunks now
    Start {
        /// Follow the scrub until every node has finished and found copies are repaired
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Chunks checked, corrupt copies found and repaired, per node
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub fn duration_str(secs: i64) -> String {
    match secs {
        s if s < 0 => "unknown (no copy made recently)".into(),
        0 => "nothing to do".into(),
        s if s < 120 => format!("about {s} s"),
        s if s < 7200 => format!("about {} min", s / 60),
        s => format!("about {:.1} h", s as f64 / 3600.0),
    }
}

/// "blocked", "about 3 min", "unknown (…)", "nothing to do".
pub fn estimate_str(r: &RepairStatusResponse) -> String {
    if !r.blocked_reason.is_empty() && r.under_replicated_chunks + r.unreadable_chunks > 0 {
        "blocked".into()
    } else {
        duration_str(r.estimate_seconds)
    }
}

fn repair_json(r: &RepairStatusResponse) -> serde_json::Value {
    json!({
        "under_replicated_chunks": r.under_replicated_chunks,
        "bytes_at_risk": r.bytes_at_risk,
        "unreadable_chunks": r.unreadable_chunks,
        "unreadable_bytes": r.unreadable_bytes,
        "chunks": r.chunks,
        "repaired_chunks": r.repaired_chunks,
        "repaired_bytes": r.repaired_bytes,
        "failed_copies": r.failed_copies,
        "queued_chunks": r.queued_chunks,
        "rate_bytes_per_sec": r.rate_bytes_per_sec,
        "estimate_seconds": if r.estimate_seconds >= 0 { json!(r.estimate_seconds) } else { json!(null) },
        "estimate": estimate_str(r),
        "blocked_reason": r.blocked_reason,
        "blocked_chunks": r.blocked_chunks,
        "unknown_chunks": r.unknown_chunks,
        "unknown_collectable": r.unknown_collectable,
        "unknown_nodes": r.unknown_nodes,
        "lost_nodes": r.lost_nodes,
        "waiting_nodes": r.waiting_nodes,
        "draining_nodes": r.draining_nodes,
        "grace_seconds": r.grace_seconds,
        "hot_chunks": r.hot_chunks,
        "extra_replicas": r.extra_replicas,
        "reclaimable_chunks": r.reclaimable_chunks,
        "reclaimable_bytes": r.reclaimable_bytes,
        "collected_chunks": r.collected_chunks,
        "collected_bytes": r.collected_bytes,
        "lost_file_count": r.lost_files,
        "lost_files": r.lost_paths,
        "lost_chunks": r.lost_chunks,
    })
}

fn print_repair(r: &RepairStatusResponse) {
    if r.under_replicated_chunks == 0 && r.unreadable_chunks == 0 {
        println!("every chunk has its copies ({} chunks checked)", r.chunks);
    } else {
        println!(
            "at risk: {} chunk(s) under-replicated ({}), {} unreadable ({})",
            r.under_replicated_chunks,
            format_bytes(r.bytes_at_risk),
            r.unreadable_chunks,
            format_bytes(r.unreadable_bytes)
        );
        println!("estimate: {}", estimate_str(r));
    }
    if !r.blocked_reason.is_empty() {
        println!("blocked: {} ({} chunk(s) in the last round)", r.blocked_reason, r.blocked_chunks);
    }
    if r.unknown_chunks > 0 {
        println!("unknown: {}", collective_client::status::unknown_line(r));
    }
    if r.lost_files > 0 {
        println!(
            "lost: {} file(s) have a chunk with no copy left anywhere; they cannot be read (`--json` lists them under lost_files){}",
            r.lost_files,
            if r.lost_paths.len() as u64 == r.lost_files {
                String::new()
            } else {
                format!(", the first {} of them", r.lost_paths.len())
            }
        );
        for p in r.lost_paths.iter().take(10) {
            println!("  {p}");
        }
    }
    for n in &r.waiting_nodes {
        println!(
            "waiting: {n} is down; its copies are replaced if it is not back within {} s",
            r.grace_seconds
        );
    }
    for n in &r.lost_nodes {
        if r.blocked_reason.is_empty() {
            println!("lost: {n} has been down past the grace period; its copies are being replaced");
        } else {
            println!("lost: {n} has been down past the grace period; its copies cannot be replaced yet (see blocked)");
        }
    }
    for n in &r.draining_nodes {
        println!("draining: {n}");
    }
    println!(
        "repaired since start: {} chunk(s), {} ({} failed copies); now {}/s",
        r.repaired_chunks,
        format_bytes(r.repaired_bytes),
        r.failed_copies,
        format_bytes(r.rate_bytes_per_sec as u64)
    );
    if r.hot_chunks > 0 {
        println!("hot: {} chunk(s) hold {} extra copies", r.hot_chunks, r.extra_replicas);
    }
    println!(
        "garbage: {} reclaimable in {} chunk(s); {} collected since start",
        format_bytes(r.reclaimable_bytes),
        r.reclaimable_chunks,
        format_bytes(r.collected_bytes)
    );
}

pub async fn repair(o: &ClientOverrides, c: RepairCommand) -> Result<()> {
    let json = match c {
        RepairCommand::Status { json } => json,
        RepairCommand::CollectUnknown { older_than, dry_run, json } => return collect_unknown(o, &older_than, dry_run, json).await,
    };
    let r = connect(o)?.repair_status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&repair_json(&r))?);
    } else {
        print_repair(&r);
    }
    Ok(())
}

async fn collect_unknown(o: &ClientOverrides, older_than: &str, dry_run: bool, json: bool) -> Result<()> {
    let age = collective_core::parse_duration(older_than)?;
    let r = connect(o)?.collect_unknown(age, dry_run).await?;
    if json {
        let v = json!({
            "deleted_chunks": r.deleted_chunks,
            "kept_chunks": r.kept_chunks,
            "nodes": r.nodes,
            "failed_chunks": r.failed_chunks,
            "errors": r.errors,
            "dry_run": dry_run,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        if r.failed_chunks > 0 {
            bail!("{} unknown chunk(s) could not be deleted; they stay recorded", r.failed_chunks);
        }
        return Ok(());
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!(
        "{verb} {} unknown chunk(s){}; kept {} (too recent, known again, or on a node that is down)",
        r.deleted_chunks,
        if r.nodes.is_empty() {
            String::new()
        } else {
            format!(" from {}", r.nodes.join(", "))
        },
        r.kept_chunks
    );
    if r.failed_chunks > 0 {
        bail!(
            "{} unknown chunk(s) could not be deleted and stay recorded ({}); run it again once the node answers",
            r.failed_chunks,
            r.errors.join("; ")
        );
    }
    Ok(())
}

fn scrub_json(r: &ScrubReport) -> serde_json::Value {
    json!({
        "running": r.running,
        "chunks_checked": r.chunks_checked,
        "corrupt_found": r.corrupt_found,
        "repaired": r.repaired,
        "nodes": r.nodes.iter().map(|n| {
            let s = n.scrub.unwrap_or_default();
            json!({
                "node": n.node,
                "state": n.state().name(),
                "running": s.running,
                "passes": s.passes,
                "chunks_checked": s.chunks_checked,
                "bytes_checked": s.bytes_checked,
                "corrupt_found": s.corrupt_found,
                "pass_done": s.pass_chunks_done,
                "pass_total": s.pass_chunks_total,
                "rate_bytes_per_sec": s.rate_bytes_per_sec,
            })
        }).collect::<Vec<_>>(),
    })
}

fn print_scrub(r: &ScrubReport) {
    println!(
        "scrub: {}; {} chunks checked, {} corrupt found, {} repaired",
        if r.running { "running" } else { "idle" },
        r.chunks_checked,
        r.corrupt_found,
        r.repaired
    );
    for n in &r.nodes {
        let s = n.scrub.unwrap_or_default();
        let progress = if s.running {
            format!("running {}/{}", s.pass_chunks_done, s.pass_chunks_total)
        } else {
            format!("{} pass(es) done", s.passes)
        };
        println!(
            "  {:<36} {:<5} {:<22} checked {:>8}  corrupt {:>4}  at {}/s",
            n.node,
            n.state().name(),
            progress,
            s.chunks_checked,
            s.corrupt_found,
            format_bytes(s.rate_bytes_per_sec)
        );
    }
}

pub async fn scrub(o: &ClientOverrides, c: ScrubCommand) -> Result<()> {
    let client = connect(o)?;
    let (report, json, wait) = match c {
        ScrubCommand::Start { wait, json } => {
            let before = client.scrub_report().await?;
            let passes: Vec<(String, u64)> = before
                .nodes
                .iter()
                .map(|n| (n.node.clone(), n.scrub.as_ref().map(|s| s.passes).unwrap_or(0)))
                .collect();
            let r = client.start_scrub().await?;
            if !wait { (r, json, None) } else { (r, json, Some(passes)) }
        }
        ScrubCommand::Status { json } => (client.scrub_report().await?, json, None),
    };
    let Some(passes) = wait else {
        if json {
            println!("{}", serde_json::to_string_pretty(&scrub_json(&report))?);
        } else {
            print_scrub(&report);
        }
        return Ok(());
    };
    // Follow: every node that was up has finished a pass since, and what was found is repaired.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = client.scrub_report().await?;
        let finished = r.nodes.iter().filter(|n| n.state() == NodeHealth::Up).all(|n| {
            let done = n.scrub.as_ref().map(|s| s.passes).unwrap_or(0);
            let start = passes.iter().find(|(p, _)| *p == n.node).map(|(_, v)| *v).unwrap_or(0);
            done > start
        });
        if !json && std::io::stdout().is_terminal() {
            print!(
                "\r{} chunks checked, {} corrupt, {} repaired   ",
                r.chunks_checked, r.corrupt_found, r.repaired
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        if finished && r.repaired >= r.corrupt_found {
            if json {
                println!("{}", serde_json::to_string_pretty(&scrub_json(&r))?);
            } else {
                println!();
                print_scrub(&r);
            }
            return Ok(());
        }
    }
}

fn drain_json(d: &DrainStatus) -> serde_json::Value {
    json!({
        "node": d.node,
        "draining": d.draining,
        "chunks_left": d.chunks_left,
        "bytes_left": d.bytes_left,
        "chunks_total": d.chunks_total,
        "done": d.done,
        "blocked": d.blocked,
    })
}

pub async fn drain(o: &ClientOverrides, node: String, no_wait: bool, cancel: bool, json: bool) -> Result<()> {
    let client = connect(o)?;
    let mut d = client.drain_node(&node, cancel).await?;
    if cancel {
        println!("{}: drain cancelled; it takes new data again", d.node);
        return Ok(());
    }
    if !no_wait {
        let tty = std::io::stdout().is_terminal() && !json;
        // Copies that cannot go anywhere for this long end the wait with the reason.
        let mut blocked_since: Option<std::time::Instant> = None;
        while !d.done {
            if d.blocked.is_empty() {
                blocked_since = None;
            } else if blocked_since.get_or_insert_with(std::time::Instant::now).elapsed() > Duration::from_secs(15) {
                bail!(
                    "the drain of {} cannot finish: {}\nit stays draining (no new data goes there) and goes on by itself once there is room; stop it with `collective node drain {node} --cancel`",
                    d.node,
                    d.blocked
                );
            }
            if tty {
                print!(
                    "\rdraining {}: {} of {} chunk(s) left ({})   ",
                    d.node,
                    d.chunks_left,
                    d.chunks_total,
                    format_bytes(d.bytes_left)
                );
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            d = client.drain_status(&node).await?;
            if !d.draining {
                bail!("the drain of {} was cancelled", d.node);
            }
        }
        if tty {
            println!();
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&drain_json(&d))?);
    } else if d.done {
        let short = d.node.split('@').next().unwrap_or(&d.node).to_string();
        println!(
            "{} is drained: it holds no chunk anyone needs; remove it with `collective node rm {short}`",
            d.node
        );
    } else {
        println!(
            "draining {}: {} chunk(s) ({}) to move; follow with `collective node drain {node}`",
            d.node,
            d.chunks_left,
            format_bytes(d.bytes_left)
        );
    }
    Ok(())
}

pub async fn remove(o: &ClientOverrides, node: String, force: bool) -> Result<()> {
    let r = connect(o)?.remove_node(&node, force).await?;
    println!(
        "removed {}; stop its process (it may not register again while it holds data)",
        r.node
    );
    if r.chunks_forgotten > 0 {
        println!(
            "{} chunk(s) had a copy there; repair makes new copies on the other nodes (follow with `collective repair status`)",
            r.chunks_forgotten
        );
    }
    Ok(())
}
