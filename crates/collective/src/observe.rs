//! `collective events` and `collective audit`: what happened in the cluster, and who
//! changed what.

use anyhow::{Context, Result};
use clap::Args;
use collective_client::{AuditQuery, Client};
use collective_core::{format_time_ms, parse_duration, unix_ms_now};
use collective_proto::v1::ClusterEvent;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{ClientOverrides, client_config};

#[derive(Args)]
pub struct EventsArgs {
    /// Keep running and print new events as they happen
    #[arg(long, short = 'f')]
    follow: bool,
    /// One JSON object per line
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only entries newer than this: a duration (30m, 1h, 7d) or an RFC 3339 time
    #[arg(long)]
    since: Option<String>,
    /// Only entries of this principal (name@domain)
    #[arg(long)]
    principal: Option<String>,
    /// At most this many entries, the most recent
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// A JSON array
    #[arg(long)]
    json: bool,
}

fn event_json(e: &ClusterEvent) -> serde_json::Value {
    json!({
        "seq": e.seq,
        "time": format_time_ms(e.at_ms),
        "kind": e.kind,
        "severity": e.severity,
        "subject": e.subject,
        "message": e.message,
    })
}

pub async fn events(o: &ClientOverrides, a: EventsArgs) -> Result<()> {
    let client = Client::connect(&client_config(o)?)?;
    let mut stream = client.events(a.follow, 0).await?;
    let mut any = false;
    while let Some(e) = stream.next().await? {
        any = true;
        if a.json {
            println!("{}", event_json(&e));
        } else {
            println!("{}  {:<8} {:<17} {}", format_time_ms(e.at_ms), e.severity, e.kind, e.message);
        }
    }
    if !any && !a.json {
        eprintln!("no events since the coordinator started");
    }
    Ok(())
}

/// `--since`: a duration back from now, or an RFC 3339 time.
fn since_ms(s: &str) -> Result<i64> {
    time_ms("--since", s)
}

/// A time given to `flag`: a duration back from now (`2h`), or an RFC 3339 time.
pub(crate) fn time_ms(flag: &str, s: &str) -> Result<i64> {
    if let Ok(d) = parse_duration(s) {
        return Ok(unix_ms_now().saturating_sub(d.as_millis() as u64) as i64);
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).with_context(|| {
        format!("{flag} '{s}' is neither a duration back from now (2h, 7d) nor an RFC 3339 time (2026-12-07T14:00:00Z)")
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

pub async fn audit(o: &ClientOverrides, a: AuditArgs) -> Result<()> {
    let since = a.since.as_deref().map(since_ms).transpose()?.unwrap_or(0);
    let client = Client::connect(&client_config(o)?)?;
    let entries = client
        .audit(AuditQuery {
            since_ms: since,
            principal: a.principal,
            limit: a.limit,
        })
        .await?;
    if a.json {
        let v: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "time": format_time_ms(e.at_ms),
                    "principal": e.principal,
                    "op": e.op,
                    "target": e.target,
                    "result": e.result,
                    "detail": e.detail,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if entries.is_empty() {
        eprintln!("no audit entries match");
        return Ok(());
    }
    for e in &entries {
        let detail = if e.detail.is_empty() {
            String::new()
        } else {
            format!("  ({})", e.detail)
        };
        println!(
            "{}  {:<36} {:<16} {:<6} {}{detail}",
            format_time_ms(e.at_ms),
            e.principal,
            e.op,
            e.result,
            e.target
        );
    }
    Ok(())
}
