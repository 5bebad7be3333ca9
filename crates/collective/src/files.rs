//! Client subcommands: put, get, cat, write, ls, mkdir, rm, mv, stat, status.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use collective_client::{Client, Progress, Source, status};
use collective_core::{RemotePath, format_bytes, format_time_ms, validate_path};
use collective_proto::v1::{CertificateStatus, FileAttr, FileKind, MemberHealth, NodeHealth, StatusResponse};
use serde_json::json;

use crate::config::{ClientOverrides, client_config};

#[derive(Args)]
pub struct PutArgs {
    /// Copy directories recursively
    #[arg(short, long)]
    recursive: bool,
    /// Local files (and with -r, directories), then the remote destination
    #[arg(required = true, num_args = 2..)]
    paths: Vec<String>,
}

#[derive(Args)]
pub struct GetArgs {
    /// Copy a remote directory recursively
    #[arg(short, long)]
    recursive: bool,
    remote: String,
    local: PathBuf,
}

#[derive(Args)]
pub struct PathArg {
    path: String,
}

#[derive(Args)]
pub struct LsArgs {
    /// Long listing: mode, owner, size, modification time
    #[arg(short, long)]
    long: bool,
    #[arg(long)]
    json: bool,
    #[arg(default_value = "/")]
    path: String,
}

#[derive(Args)]
pub struct MkdirArgs {
    /// Make parent directories as needed; no error if it exists
    #[arg(short, long)]
    parents: bool,
    path: String,
}

#[derive(Args)]
pub struct RmArgs {
    /// Remove directories and their contents
    #[arg(short, long)]
    recursive: bool,
    path: String,
}

#[derive(Args)]
pub struct MvArgs {
    src: String,
    dst: String,
}

#[derive(Args)]
pub struct StatArgs {
    #[arg(long)]
    json: bool,
    path: String,
}

#[derive(Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
    /// Refresh every N seconds until interrupted
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<u64>,
}

fn connect(o: &ClientOverrides) -> Result<Client> {
    let cfg = client_config(o)?;
    Ok(Client::connect(&cfg)?)
}

fn remote(p: &str) -> Result<RemotePath> {
    validate_path(p).with_context(|| format!("bad remote path '{}'", p.escape_debug()))
}

/// A progress bar on stderr when it is a terminal.
fn progress_bar(total: Option<u64>) -> (Option<Progress>, Option<indicatif::ProgressBar>) {
    if !std::io::stderr().is_terminal() {
        return (None, None);
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {bytes_per_sec} {wide_bar} {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    let b = bar.clone();
    (Some(Arc::new(move |n| b.inc(n)) as Progress), Some(bar))
}

fn mbps(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        "-".into()
    } else {
        format!("{:.1} MB/s", bytes as f64 / 1e6 / secs)
    }
}

fn is_dir(a: &FileAttr) -> bool {
    a.kind == FileKind::Dir as i32
}

fn base_name(p: &Path) -> Result<String> {
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} has no file name", p.display()))
}

/// Adds every file below `dir` (and each empty directory) to the upload list.
fn walk_local(dir: &Path, dest: &RemotePath, items: &mut Vec<(Source, RemotePath)>, empty_dirs: &mut Vec<RemotePath>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    if entries.is_empty() {
        empty_dirs.push(dest.clone());
    }
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let target = dest
            .join(&name)
            .with_context(|| format!("{} cannot be stored under that name", e.path().display()))?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk_local(&e.path(), &target, items, empty_dirs)?;
        } else if ft.is_file() || (ft.is_symlink() && e.path().is_file()) {
            items.push((Source::File(e.path()), target));
        } else {
            eprintln!("skipping {} (not a regular file)", e.path().display());
        }
    }
    Ok(())
}

pub async fn put(o: &ClientOverrides, a: PutArgs) -> Result<()> {
    let (locals, dest) = a.paths.split_at(a.paths.len() - 1);
    let dest_raw = &dest[0];
    let dest = remote(dest_raw)?;
    let client = connect(o)?;
    let dest_is_dir = match client.stat(dest.as_str()).await {
        Ok(attr) => is_dir(&attr),
        Err(_) => false,
    };
    let into_dir = dest_is_dir || locals.len() > 1 || dest_raw.ends_with('/');
    let mut items = Vec::new();
    let mut empty_dirs = Vec::new();
    for l in locals {
        let p = PathBuf::from(l);
        let meta = std::fs::metadata(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let target = if into_dir { dest.join(&base_name(&p)?)? } else { dest.clone() };
        if meta.is_dir() {
            if !a.recursive {
                bail!("{} is a directory; use `collective put -r` to copy it", p.display());
            }
            walk_local(&p, &target, &mut items, &mut empty_dirs)?;
        } else {
            items.push((Source::File(p), target));
        }
    }
    let total: u64 = items
        .iter()
        .filter_map(|(s, _)| {
            if let Source::File(p) = s {
                std::fs::metadata(p).ok().map(|m| m.len())
            } else {
                None
            }
        })
        .sum();
    for d in &empty_dirs {
        client.mkdir(d.as_str(), true).await?;
    }
    let (progress, bar) = progress_bar(Some(total));
    let started = Instant::now();
    let report = client.put_files(items, true, progress).await;
    client.close().await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = report?;
    let secs = started.elapsed().as_secs_f64();
    let dedup = match report.chunks - report.chunks_sent {
        0 => format!("all {} chunks sent", report.chunks),
        n => format!("{} of {} chunks sent, {n} were already stored", report.chunks_sent, report.chunks),
    };
    if report.files == 1 {
        if let Some(f) = report.committed.first() {
            println!(
                "stored {} ({}) in {secs:.2} s, {}; {dedup}",
                f.path,
                format_bytes(report.bytes),
                mbps(report.bytes, secs)
            );
        }
    } else {
        println!(
            "stored {} files ({}) in {secs:.2} s, {}, {:.0} files/s; {dedup}",
            report.files,
            format_bytes(report.bytes),
            mbps(report.bytes, secs),
            report.files as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

pub async fn get(o: &ClientOverrides, a: GetArgs) -> Result<()> {
    let src = remote(&a.remote)?;
    let client = connect(o)?;
    let attr = client.stat(src.as_str()).await?;
    let local_is_dir = a.local.is_dir();
    let started = Instant::now();
    if is_dir(&attr) {
        if !a.recursive {
            bail!("{src} is a directory; use `collective get -r` to copy it");
        }
        let dest = if local_is_dir && !src.is_root() {
            a.local.join(src.split_last()?.1)
        } else {
            a.local.clone()
        };
        let (progress, bar) = progress_bar(Some(0));
        let report = client.get_tree(src.as_str(), &dest, progress).await;
        client.close().await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let report = report?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "fetched {} files ({}) into {} in {secs:.2} s, {}, {:.0} files/s",
            report.files,
            format_bytes(report.bytes),
            dest.display(),
            mbps(report.bytes, secs),
            report.files as f64 / secs.max(1e-9)
        );
        return Ok(());
    }
    let dest = if local_is_dir {
        a.local.join(src.split_last()?.1)
    } else {
        a.local.clone()
    };
    let (progress, bar) = progress_bar(Some(attr.size));
    let r = client.get_file(src.as_str(), &dest, progress).await;
    client.close().await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let got = r?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fetched {} ({}) to {} in {secs:.2} s, {}",
        got.path,
        format_bytes(got.size),
        dest.display(),
        mbps(got.size, secs)
    );
    Ok(())
}

pub async fn cat(o: &ClientOverrides, a: PathArg) -> Result<()> {
    let src = remote(&a.path)?;
    let client = connect(o)?;
    let mut out = tokio::io::stdout();
    let r = client.read_to(src.as_str(), &mut out, None).await;
    client.close().await;
    r?;
    Ok(())
}

pub async fn write(o: &ClientOverrides, a: PathArg) -> Result<()> {
    let dest = remote(&a.path)?;
    let client = connect(o)?;
    let report = client.put_files(vec![(Source::Stdin, dest)], true, None).await;
    client.close().await;
    let report = report?;
    if let Some(f) = report.committed.first() {
        eprintln!("stored {} ({})", f.path, format_bytes(f.size));
    }
    Ok(())
}

fn is_link(a: &FileAttr) -> bool {
    a.kind == FileKind::Symlink as i32
}

fn kind_str(a: &FileAttr) -> &'static str {
    match (is_dir(a), is_link(a)) {
        (true, _) => "dir",
        (_, true) => "symlink",
        _ => "file",
    }
}

fn mode_str(a: &FileAttr) -> String {
    let mut s = String::from(match (is_dir(a), is_link(a)) {
        (true, _) => "d",
        (_, true) => "l",
        _ => "-",
    });
    for shift in [6, 3, 0] {
        let bits = (a.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn attr_json(a: &FileAttr) -> serde_json::Value {
    json!({
        "path": a.path,
        "name": a.path.rsplit('/').next().unwrap_or(""),
        "type": kind_str(a),
        "size": a.size,
        "mode": format!("{:o}", a.mode),
        "mtime": format_time_ms(a.mtime_ms),
        "owner": a.owner,
        "chunks": if is_dir(a) { 0 } else { a.chunks },
        "entries": if is_dir(a) { a.chunks } else { 0 },
        "version": a.version,
        "target": if is_link(a) { Some(a.target.as_str()) } else { None },
    })
}

pub async fn ls(o: &ClientOverrides, a: LsArgs) -> Result<()> {
    let path = remote(&a.path)?;
    let client = connect(o)?;
    let entries = client.list(path.as_str()).await?;
    let attrs: Vec<FileAttr> = entries.into_iter().filter_map(|e| e.attr).collect();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "path": path.as_str(), "entries": attrs.iter().map(attr_json).collect::<Vec<_>>() }))?
        );
        return Ok(());
    }
    for e in &attrs {
        let name = e.path.rsplit('/').next().unwrap_or("");
        let suffix = if is_dir(e) {
            "/".to_string()
        } else if is_link(e) && a.long {
            format!(" -> {}", e.target)
        } else {
            String::new()
        };
        if a.long {
            println!(
                "{} {:<28} {:>12} {} {name}{suffix}",
                mode_str(e),
                e.owner,
                e.size,
                format_time_ms(e.mtime_ms)
            );
        } else {
            println!("{name}{suffix}");
        }
    }
    Ok(())
}

pub async fn mkdir(o: &ClientOverrides, a: MkdirArgs) -> Result<()> {
    let path = remote(&a.path)?;
    connect(o)?.mkdir(path.as_str(), a.parents).await?;
    Ok(())
}

pub async fn rm(o: &ClientOverrides, a: RmArgs) -> Result<()> {
    let path = remote(&a.path)?;
    let r = connect(o)?.remove(path.as_str(), a.recursive).await?;
    if a.recursive {
        println!("removed {} files and {} directories", r.files, r.dirs);
    }
    Ok(())
}

pub async fn mv(o: &ClientOverrides, a: MvArgs) -> Result<()> {
    let (src, mut dst) = (remote(&a.src)?, remote(&a.dst)?);
    let client = connect(o)?;
    // Like mv(1): moving onto an existing directory moves into it.
    if let Ok(attr) = client.stat(dst.as_str()).await
        && is_dir(&attr)
        && !src.is_root()
        && src != dst
    {
        dst = dst.join(src.split_last()?.1)?;
    }
    client.rename(src.as_str(), dst.as_str()).await?;
    Ok(())
}

pub async fn stat(o: &ClientOverrides, a: StatArgs) -> Result<()> {
    let path = remote(&a.path)?;
    let attr = connect(o)?.stat(path.as_str()).await?;
    if a.json {
        let mut v = attr_json(&attr);
        if !is_dir(&attr) {
            v["copies"] = json!(attr.min_copies);
            v["wanted_copies"] = json!(attr.wanted_copies);
            v["hot_chunks"] = json!(attr.hot_chunks);
            v["reads"] = json!(attr.reads);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("path:     {}", attr.path);
    println!("type:     {}", kind_str(&attr));
    println!("size:     {} ({})", attr.size, format_bytes(attr.size));
    println!("mode:     {} ({:o})", mode_str(&attr), attr.mode);
    println!("owner:    {}", attr.owner);
    println!("modified: {}", format_time_ms(attr.mtime_ms));
    if is_dir(&attr) {
        println!("entries:  {}", attr.chunks);
    } else {
        println!("chunks:   {}", attr.chunks);
        println!("version:  {}", attr.version);
        println!(
            "copies:   {} live of {} wanted (its least-replicated chunk)",
            attr.min_copies, attr.wanted_copies
        );
        if attr.hot_chunks > 0 {
            println!(
                "hot:      {} chunk(s) hold extra copies ({:.0} recent reads)",
                attr.hot_chunks, attr.reads
            );
        } else {
            println!("reads:    {:.0} recent", attr.reads);
        }
    }
    Ok(())
}

/// Days until `ms` (negative when past).
fn days_until(ms: i64) -> i64 {
    status::days_until(ms, collective_core::unix_ms_now())
}

fn certificates(s: &StatusResponse, mine: &Option<CertificateStatus>) -> Vec<CertificateStatus> {
    status::certificates(s, mine.as_ref())
}

fn warnings(s: &StatusResponse, mine: &Option<CertificateStatus>) -> Vec<String> {
    status::warnings(s, mine.as_ref(), collective_core::unix_ms_now())
}

fn status_json(s: &StatusResponse, mine: &Option<CertificateStatus>) -> serde_json::Value {
    let healthy = s.unique_chunks.saturating_sub(s.under_replicated_chunks + s.unreadable_chunks);
    let repair = s.repair.clone().unwrap_or_default();
    json!({
        "coordinator": s.coordinator,
        "member": s.member,
        "version": s.version,
        "replication": s.replication,
        "nodes": s.nodes.iter().map(|n| json!({
            "node": n.node,
            "state": n.state().name(),
            "address": n.quic_addr,
            "capacity_bytes": n.capacity_bytes,
            "used_bytes": n.used_bytes,
            "free_bytes": n.free_bytes,
            "chunks": n.chunks,
            "last_seen": if n.last_seen_ms > 0 { json!(format_time_ms(n.last_seen_ms)) } else { json!(null) },
            "message": n.message,
        })).collect::<Vec<_>>(),
        "data": {
            "files": s.files,
            "directories": s.dirs,
            "logical_bytes": s.logical_bytes,
            "unique_bytes": s.unique_bytes,
            "physical_bytes": s.physical_bytes,
            "dedup_ratio": if s.unique_bytes > 0 { s.logical_bytes as f64 / s.unique_bytes as f64 } else { 1.0 },
        },
        "replication_state": {
            "chunks": s.unique_chunks,
            "healthy_chunks": healthy,
            "under_replicated_chunks": s.under_replicated_chunks,
            "unreadable_chunks": s.unreadable_chunks,
            "bad_replica_reports": s.corrupt_reports,
            "bytes_at_risk": s.bytes_at_risk,
        },
        "repair": {
            "repaired_chunks": repair.repaired_chunks,
            "repaired_bytes": repair.repaired_bytes,
            "failed_copies": repair.failed_copies,
            "rate_bytes_per_sec": repair.rate_bytes_per_sec,
            "estimate_seconds": if repair.estimate_seconds >= 0 { json!(repair.estimate_seconds) } else { json!(null) },
            "estimate": crate::upkeep::estimate_str(&repair),
            "blocked_reason": repair.blocked_reason,
            "unknown_chunks": repair.unknown_chunks,
        },
        "garbage": {
            "reclaimable_chunks": s.reclaimable_chunks,
            "reclaimable_bytes": s.reclaimable_bytes,
        },
        "members": s.members.iter().map(|m| json!({
            "member": m.member,
            "state": m.state().name(),
            "last_seen": if m.last_seen_ms > 0 { json!(format_time_ms(m.last_seen_ms)) } else { json!(null) },
        })).collect::<Vec<_>>(),
        "metadata_backup": s.metadata_backup.as_ref().map(|b| json!({
            "enabled": b.enabled,
            "off_reason": b.off_reason,
            "last_success": if b.last_success_ms > 0 { json!(format_time_ms(b.last_success_ms as i64)) } else { json!(null) },
            "age_s": b.age_s,
            "pending_changes": b.pending_changes,
            "sequence": b.sequence,
            "keepers": b.keepers,
            "backups_kept": b.backups_kept,
            "last_error": b.last_error,
        })),
        "contested_datastores": s.contested.iter().map(|c| json!({
            "path": format!("/{}", c.name),
            "owner": c.owner,
            "others": c.others,
        })).collect::<Vec<_>>(),
        "certificates": certificates(s, mine).iter().map(|c| json!({
            "principal": c.principal,
            "role": c.role,
            "not_after": format_time_ms(c.not_after_ms),
            "days_to_expiry": days_until(c.not_after_ms),
        })).collect::<Vec<_>>(),
        "warnings": warnings(s, mine),
    })
}

fn print_status(s: &StatusResponse, mine: &Option<CertificateStatus>) {
    println!("coordinator {} (member {}, version {})", s.coordinator, s.member, s.version);
    println!();
    if !s.members.is_empty() {
        let alive = s.members.iter().filter(|m| m.state() == MemberHealth::Alive).count();
        println!("members ({alive} of {} others alive):", s.members.len());
        for m in &s.members {
            let seen = if m.last_seen_ms > 0 {
                format_time_ms(m.last_seen_ms)
            } else {
                "never".into()
            };
            println!("  {:<36} {:<8} last heard {seen}", m.member, m.state().name());
        }
        println!();
    }
    println!(
        "nodes ({} up of {}):",
        s.nodes.iter().filter(|n| n.state() == NodeHealth::Up).count(),
        s.nodes.len()
    );
    println!(
        "  {:<36} {:<5} {:>10} {:>10} {:>10} {:>8}",
        "NODE", "STATE", "CAPACITY", "USED", "FREE", "CHUNKS"
    );
    for n in &s.nodes {
        println!(
            "  {:<36} {:<5} {:>10} {:>10} {:>10} {:>8}",
            n.node,
            n.state().name(),
            format_bytes(n.capacity_bytes),
            format_bytes(n.used_bytes),
            format_bytes(n.free_bytes),
            n.chunks
        );
    }
    println!();
    let dedup = if s.unique_bytes > 0 {
        s.logical_bytes as f64 / s.unique_bytes as f64
    } else {
        1.0
    };
    println!(
        "data: {} files, {} directories, {} logical, {} unique ({dedup:.2}x dedup), {} stored with copies",
        s.files,
        s.dirs,
        format_bytes(s.logical_bytes),
        format_bytes(s.unique_bytes),
        format_bytes(s.physical_bytes)
    );
    let healthy = s.unique_chunks.saturating_sub(s.under_replicated_chunks + s.unreadable_chunks);
    println!(
        "replication (x{}): {healthy} chunks healthy, {} under-replicated, {} unreadable",
        s.replication, s.under_replicated_chunks, s.unreadable_chunks
    );
    if let Some(r) = s.repair.as_ref().filter(|_| s.under_replicated_chunks + s.unreadable_chunks > 0) {
        let eta = format!(", estimate {}", crate::upkeep::estimate_str(r));
        println!(
            "repair: {} at risk; {} chunk(s) ({}) copied so far at {}/s{eta}",
            format_bytes(s.bytes_at_risk),
            r.repaired_chunks,
            format_bytes(r.repaired_bytes),
            format_bytes(r.rate_bytes_per_sec as u64)
        );
    }
    let soon: Vec<String> = certificates(s, mine)
        .iter()
        .map(|c| (c, days_until(c.not_after_ms)))
        .filter(|(_, d)| *d < 60)
        .map(|(c, d)| format!("{} in {d} day(s)", c.principal))
        .collect();
    if !soon.is_empty() {
        println!("certificates expiring within 60 days: {}", soon.join(", "));
    }
    if s.reclaimable_chunks > 0 {
        println!(
            "reclaimable: {} in {} unreferenced chunk(s), deleted after the garbage-collection grace period",
            format_bytes(s.reclaimable_bytes),
            s.reclaimable_chunks
        );
    }
    if let Some(b) = s.metadata_backup.as_ref().filter(|b| b.enabled) {
        let last = if b.last_success_ms > 0 {
            format!("last {} ({}s ago)", format_time_ms(b.last_success_ms as i64), b.age_s)
        } else {
            "none yet".into()
        };
        println!(
            "metadata backup: {last}, {} change(s) pending, {} kept, {} keeper(s) hold the newest",
            b.pending_changes, b.backups_kept, b.keepers
        );
    }
    let w = warnings(s, mine);
    println!();
    if w.is_empty() {
        println!("all data is safe: every chunk has its {} copies", s.replication);
    } else {
        for line in w {
            println!("warning: {line}");
        }
    }
}

/// The caller's own certificate, for the expiry warnings of `status`.
fn own_certificate(o: &ClientOverrides) -> Option<CertificateStatus> {
    let cfg = client_config(o).ok()?;
    let pem = std::fs::read_to_string(&cfg.cert).ok()?;
    let info = collective_pki::CertInfo::from_pem(&pem).ok()?;
    Some(CertificateStatus {
        principal: info.principal().map(|p| p.to_string()).unwrap_or_else(|_| info.common_name.clone()),
        role: "client".into(),
        not_after_ms: (info.not_after.unix_timestamp_nanos() / 1_000_000) as i64,
    })
}

pub async fn status(o: &ClientOverrides, a: StatusArgs) -> Result<()> {
    let client = connect(o)?;
    let mine = own_certificate(o);
    loop {
        let s = match (client.status().await, a.watch) {
            (Ok(s), _) => s,
            (Err(e), None) => return Err(e.into()),
            // Watching outlives a restart of the coordinator: say so and keep trying.
            (Err(e), Some(secs)) => {
                println!("{e}; trying again in {} s", secs.max(1));
                tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))).await;
                continue;
            }
        };
        if a.watch.is_some() && std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H");
        }
        if a.json {
            println!("{}", serde_json::to_string_pretty(&status_json(&s, &mine))?);
        } else {
            print_status(&s, &mine);
        }
        match a.watch {
            Some(secs) => tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))).await,
            None => return Ok(()),
        }
    }
}
