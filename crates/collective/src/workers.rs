//! `collective workers [pause|resume NAME]`: the background work of the coordinator and its
//! nodes (repair, garbage collection, reconciliation, heat decay, scrubs), and steering it.

use anyhow::Result;
use clap::{Args, Subcommand};
use collective_client::Client;
use collective_core::format_time_ms;
use collective_proto::v1::{WorkerInfo, WorkersResponse};
use serde_json::json;

use crate::config::{ClientOverrides, client_config};
use crate::table::{Align, Table};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkersCli {
    #[command(subcommand)]
    command: Option<WorkersCommand>,
    /// One JSON object: `workers` (name, node, state, error, done, total, throttle, runs,
    /// last_run) and `unreachable`
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum WorkersCommand {
    /// Stop a worker until resumed (its runs are skipped; a scrub pass stops at the next
    /// chunk)
    Pause(SteerArgs),
    /// Let a paused worker run again
    Resume(SteerArgs),
}

#[derive(Args)]
pub struct SteerArgs {
    /// repair, gc, reconcile, heat, metadata-backup (the coordinator's) or scrub (the nodes')
    name: String,
    /// Only on this node (node workers; default: every node)
    #[arg(long)]
    node: Option<String>,
    #[arg(long)]
    json: bool,
}

fn progress(w: &WorkerInfo) -> String {
    match (w.total, w.done) {
        (0, 0) => "-".into(),
        (0, d) => d.to_string(),
        (t, d) => format!("{d}/{t}"),
    }
}

fn state(w: &WorkerInfo) -> String {
    let s = w.state().name();
    if w.error.is_empty() {
        s.to_string()
    } else {
        format!("{s}: {}", w.error)
    }
}

fn worker_json(w: &WorkerInfo) -> serde_json::Value {
    json!({
        "name": w.name,
        "node": if w.node.is_empty() { serde_json::Value::Null } else { json!(w.node) },
        "state": w.state().name(),
        "error": if w.error.is_empty() { serde_json::Value::Null } else { json!(w.error) },
        "done": w.done,
        "total": w.total,
        "throttle": w.throttle,
        "runs": w.runs,
        "last_run": if w.last_run_ms > 0 { json!(format_time_ms(w.last_run_ms)) } else { serde_json::Value::Null },
    })
}

fn print(r: &WorkersResponse, as_json: bool) -> Result<()> {
    if as_json {
        let v = json!({
            "workers": r.workers.iter().map(worker_json).collect::<Vec<_>>(),
            "unreachable": r.unreachable,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut t = Table::new(&[
        ("WORKER", Align::Left),
        ("WHERE", Align::Left),
        ("STATE", Align::Left),
        ("PROGRESS", Align::Right),
        ("RUNS", Align::Right),
        ("LAST RUN", Align::Left),
        ("THROTTLE", Align::Left),
    ]);
    for w in &r.workers {
        t.row(vec![
            w.name.clone(),
            if w.node.is_empty() { "coordinator".into() } else { w.node.clone() },
            state(w),
            progress(w),
            w.runs.to_string(),
            if w.last_run_ms > 0 {
                format_time_ms(w.last_run_ms)
            } else {
                "-".into()
            },
            if w.throttle.is_empty() { "-".into() } else { w.throttle.clone() },
        ]);
    }
    t.print();
    for u in &r.unreachable {
        eprintln!("not listed: {u}");
    }
    Ok(())
}

pub async fn workers(o: &ClientOverrides, cli: WorkersCli) -> Result<()> {
    let client = Client::connect(&client_config(o)?)?;
    match cli.command {
        None => print(&client.workers().await?, cli.json),
        Some(WorkersCommand::Pause(a)) => steer(&client, a, true).await,
        Some(WorkersCommand::Resume(a)) => steer(&client, a, false).await,
    }
}

async fn steer(client: &Client, a: SteerArgs, pause: bool) -> Result<()> {
    let r = client.steer_worker(&a.name, a.node.as_deref(), pause).await?;
    if a.json {
        return print(&r, true);
    }
    let steered: Vec<&WorkerInfo> = r.workers.iter().filter(|w| w.name == a.name).collect();
    let places: Vec<String> = steered
        .iter()
        .map(|w| {
            if w.node.is_empty() {
                "the coordinator".to_string()
            } else {
                w.node.clone()
            }
        })
        .collect();
    println!(
        "{} {} on {}",
        a.name,
        if pause { "paused" } else { "resumed" },
        if places.is_empty() { "-".into() } else { places.join(", ") }
    );
    for u in &r.unreachable {
        eprintln!("not {}: {u}", if pause { "paused" } else { "resumed" });
    }
    Ok(())
}
