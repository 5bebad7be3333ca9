//! `collective federation|invite|member|datastore …`: the federation root, invites, joining
//! a federation, datastores and grants.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use collective_client::enrol::{self, Invite};
use collective_client::{Client, InviteFor};
use collective_core::{Rights, Strategy, parse_duration, unix_ms_now};
use collective_pki::{FederationRoot, InviteCodeKind};
use collective_proto::v1::{DatastoreInfo, GrantInfo, InviteInfo, PeerInfo, PeersResponse};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{ClientOverrides, client_config};
use crate::table::{Align, Table};

fn connect(o: &ClientOverrides) -> Result<Client> {
    Ok(Client::connect(&client_config(o)?)?)
}

/// A time, or `-` for never/unknown (0).
fn time_str(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    collective_core::format_time_ms(ms)
}

// ---------------------------------------------------------------- federation

#[derive(Subcommand)]
pub enum FederationCommand {
    /// Make the federation root CA (root.crt, root.key 0600); its key never leaves this machine
    Init {
        /// Federation domain, e.g. collective.local
        #[arg(long)]
        domain: String,
        /// Directory to write the root into
        #[arg(long)]
        out: PathBuf,
        /// Also make your own member NAME (the founder): its CA signed by the new root,
        /// certificates, OUT/coordinator.toml (holding the root) and OUT/client.toml
        #[arg(long)]
        member: Option<String>,
        #[command(flatten)]
        addrs: crate::setup::ServerAddrs,
        /// Capacity offered to other members (with --member), e.g. 500GiB
        #[arg(long, default_value = "0")]
        contribution: String,
    },
    /// Every member, its gossip state and when it was last heard from
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Per member: the capacity it gives the federation, how much of it others use, and
    /// how much it stores on other members' nodes
    Usage {
        #[arg(long)]
        json: bool,
    },
    /// What would fall below its replication factor, or become unreadable, if MEMBER left now
    Risk {
        /// Member name (bob) or domain (bob.collective.local)
        member: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove MEMBER from the federation for good: every coordinator then refuses its
    /// certificates, drops its gossip and repairs the copies its nodes held elsewhere. Run it
    /// against the coordinator that holds the federation root; see `federation risk` first
    Remove {
        /// Member name (bob) or domain (bob.collective.local)
        member: String,
        /// Why, recorded in the signed removal and every coordinator's log
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

async fn peers(o: &ClientOverrides) -> Result<PeersResponse> {
    Ok(connect(o)?.peers().await?)
}

/// A member's domain, marked when it is the coordinator we asked.
fn member_label(m: &PeerInfo) -> String {
    if m.local {
        format!("{} (this)", m.member)
    } else {
        m.member.clone()
    }
}

fn peers_table(r: &PeersResponse) -> Table {
    let mut t = Table::new(&[
        ("MEMBER", Align::Left),
        ("STATE", Align::Left),
        ("LAST SEEN", Align::Left),
        ("NODES", Align::Right),
        ("FREE", Align::Right),
        ("DATASTORES", Align::Left),
    ]);
    for m in &r.members {
        t.row(vec![
            member_label(m),
            m.state().name().to_string(),
            time_str(m.last_seen_ms),
            m.nodes.to_string(),
            collective_core::format_bytes(m.free_bytes),
            m.datastores.join(" "),
        ]);
    }
    t
}

fn usage_table(r: &PeersResponse) -> Table {
    let mut t = Table::new(&[
        ("MEMBER", Align::Left),
        ("OFFERS", Align::Right),
        ("USED BY OTHERS", Align::Right),
        ("USES ELSEWHERE", Align::Right),
    ]);
    for m in &r.members {
        t.row(vec![
            member_label(m),
            collective_core::format_bytes(m.contribution_bytes),
            collective_core::format_bytes(m.hosted_bytes),
            collective_core::format_bytes(m.used_elsewhere_bytes),
        ]);
    }
    t
}

fn risk_json(r: &collective_proto::v1::RiskReport) -> serde_json::Value {
    let owner = |m: &collective_proto::v1::MemberRisk| {
        serde_json::json!({
            "owner": m.owner,
            "files_under_replicated": m.files_under_replicated,
            "bytes_under_replicated": m.bytes_under_replicated,
            "files_unreadable": m.files_unreadable,
            "bytes_unreadable": m.bytes_unreadable,
        })
    };
    serde_json::json!({
        "member": r.member,
        "files_under_replicated": r.files_under_replicated,
        "bytes_under_replicated": r.bytes_under_replicated,
        "files_unreadable": r.files_unreadable,
        "bytes_unreadable": r.bytes_unreadable,
        "owners": r.owners.iter().map(owner).collect::<Vec<_>>(),
        "unanswered": r.unanswered,
    })
}

async fn risk(o: &ClientOverrides, member: String, json: bool) -> Result<()> {
    let client = connect(o)?;
    let r = client.risk(&member).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&risk_json(&r))?);
        return Ok(());
    }
    use collective_core::format_bytes;
    println!("if {} left now:", r.member);
    println!(
        "  {} file(s) ({}) would become unreadable",
        r.files_unreadable,
        format_bytes(r.bytes_unreadable)
    );
    println!(
        "  {} file(s) ({}) would fall below their replication factor",
        r.files_under_replicated,
        format_bytes(r.bytes_under_replicated)
    );
    for m in &r.owners {
        println!(
            "  in {}'s datastores: {} unreadable, {} under-replicated",
            m.owner, m.files_unreadable, m.files_under_replicated
        );
    }
    if !r.unanswered.is_empty() {
        println!("  not counted (did not answer): {}", r.unanswered.join(", "));
    }
    Ok(())
}

pub async fn federation(o: &ClientOverrides, cmd: FederationCommand) -> Result<()> {
    match cmd {
        FederationCommand::Risk { member, json } => risk(o, member, json).await,
        FederationCommand::Remove { member, reason, json } => {
            let r = connect(o)?.remove_member(&member, &reason).await?;
            if json {
                let v = serde_json::json!({
                    "member": r.member,
                    "removed": time_str(r.removed_ms as i64),
                    "reason": r.reason,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{} removed from the federation at {}", r.member, time_str(r.removed_ms as i64));
                println!("  every coordinator refuses its certificates as soon as gossip brings the removal (seconds);");
                println!("  copies its nodes held are repaired onto the remaining members' nodes");
            }
            Ok(())
        }
        FederationCommand::Init {
            domain,
            out,
            member,
            addrs,
            contribution,
        } => {
            let resolved = match &member {
                Some(m) => {
                    collective_core::validate_name(m)?;
                    collective_core::parse_size(&contribution).with_context(|| format!("--contribution '{contribution}'"))?;
                    Some(addrs.resolve(true)?)
                }
                None => {
                    if let Some(flag) = addrs.given() {
                        bail!("{flag} describes your own member's coordinator: add --member NAME (or leave it out)");
                    }
                    if contribution != "0" {
                        bail!("--contribution is what your own member offers: add --member NAME (or leave it out)");
                    }
                    None
                }
            };
            let root = FederationRoot::init(&domain, &out)?;
            println!("federation root for {} written to {}", root.domain, out.display());
            println!("  certificate: {}", out.join("root.crt").display());
            println!(
                "  private key: {} (0600; never copy it to another machine)",
                out.join("root.key").display()
            );
            let (Some(name), Some(addrs)) = (member, resolved) else {
                println!(
                    "next: set federation.root_dir = \"{}\" in your coordinator's config,",
                    out.display()
                );
                println!("      then invite members with `collective invite generate --member NAME`");
                return Ok(());
            };
            let member_domain = collective_pki::member_domain(&name, &root.domain);
            let ca_dir = out.join("ca");
            let ca = crate::ca::init_with_root(&name, &member_domain, &ca_dir, &out)?;
            let w = crate::setup::write_member(
                &out,
                &ca,
                &ca_dir,
                &name,
                &addrs,
                Some(crate::setup::FederationPart {
                    bootstrap: vec![],
                    peers: vec![],
                    root_dir: Some(out.clone()),
                    contribution,
                }),
            )?;
            println!("member CA for {member_domain} (signed by the root) written to {}", ca_dir.display());
            crate::setup::print_written(&w, &addrs, &ca_dir);
            println!("      and invite members with `collective invite generate --member NAME`");
            Ok(())
        }
        FederationCommand::Usage { json } => {
            let r = peers(o).await?;
            if json {
                let members: Vec<serde_json::Value> = r
                    .members
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "member": m.member,
                            "state": m.state().name(),
                            "contribution_bytes": m.contribution_bytes,
                            "gives_bytes": m.hosted_bytes,
                            "uses_bytes": m.used_elsewhere_bytes,
                            "free_contribution_bytes": m.contribution_bytes.saturating_sub(m.hosted_bytes),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "members": members }))?);
                return Ok(());
            }
            usage_table(&r).print();
            println!("(other members' figures are as they last gossiped them, up to half a minute old)");
            Ok(())
        }
        FederationCommand::Peers { json } => {
            let r = peers(o).await?;
            if json {
                let members: Vec<serde_json::Value> = r
                    .members
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "member": m.member,
                            "state": m.state().name(),
                            "last_seen": time_str(m.last_seen_ms),
                            "local": m.local,
                            "coordinator": m.coordinator,
                            "grpc_addr": m.grpc_addr,
                            "gossip_addr": m.gossip_addr,
                            "version": m.version,
                            "nodes": m.nodes,
                            "capacity_bytes": m.capacity_bytes,
                            "free_bytes": m.free_bytes,
                            "datastores": m.datastores,
                        })
                    })
                    .collect();
                let v = serde_json::json!({"members": members, "dropped_unauthenticated": r.dropped_unauthenticated});
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            peers_table(&r).print();
            if r.dropped_unauthenticated > 0 {
                println!(
                    "{} gossip datagram(s) dropped (unauthenticated, or from removed members)",
                    r.dropped_unauthenticated
                );
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- invites

#[derive(Subcommand)]
pub enum InviteCommand {
    /// Make an invite code for a new member (--member) or a user (--grant)
    Generate(GenerateArgs),
    /// Redeem a user invite: makes a key here, gets a certificate, writes a client config
    Redeem(RedeemArgs),
    /// Invites made here, with their state
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an invite (by code or id)
    Revoke { code: String },
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Invite a new member of the federation with this name
    #[arg(long)]
    member: Option<String>,
    /// PATH:RIGHTS the user gets, e.g. /shared:read+write (repeatable)
    #[arg(long)]
    grant: Vec<String>,
    /// How many times the code may be used
    #[arg(long, default_value_t = 1)]
    max_uses: u32,
    /// How long the code is valid: 30m, 24h, 7d
    #[arg(long, default_value = "7d")]
    validity: String,
}

#[derive(Args)]
pub struct RedeemArgs {
    code: String,
    /// Your name in the member (NAME@member-domain) [default: your user name on this machine]
    #[arg(long)]
    name: Option<String>,
    /// Name of the context this adds [default: the member's domain]
    #[arg(long)]
    context: Option<String>,
    /// Directory for the key, certificate and client.toml [default: ~/.config/collective/contexts/<context>]
    #[arg(long)]
    out: Option<PathBuf>,
}

fn print_invite(i: &InviteInfo) {
    let what = if i.kind == "member" {
        format!("member {}", i.member)
    } else {
        format!("user with {}", i.grants.join(", "))
    };
    println!(
        "{}  {:<8} {:<40} uses {}/{}  expires {}  by {}",
        i.id,
        i.state,
        what,
        i.uses,
        i.max_uses,
        time_str(i.expires_ms),
        i.created_by
    );
}

pub async fn invite(o: &ClientOverrides, cmd: InviteCommand) -> Result<()> {
    match cmd {
        InviteCommand::Generate(a) => {
            let validity = parse_duration(&a.validity)?;
            let client = connect(o)?;
            let what = match &a.member {
                Some(m) => InviteFor::Member(m.clone()),
                None => InviteFor::User { grants: a.grant },
            };
            let r = client.generate_invite(what, a.max_uses, validity).await?;
            println!("{}", r.code);
            if let Some(i) = r.invite {
                let how = match a.member {
                    Some(m) => format!("collective member join CODE --name {m} --out DIR"),
                    None => "collective invite redeem CODE [--name NAME]".into(),
                };
                eprintln!(
                    "invite {} valid until {} for {} use(s); the invitee runs: {how}",
                    i.id,
                    time_str(i.expires_ms),
                    i.max_uses
                );
            }
            Ok(())
        }
        InviteCommand::List { json } => {
            let client = connect(o)?;
            let invites = client.list_invites().await?;
            if json {
                let v: Vec<serde_json::Value> = invites
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "id": i.id, "kind": i.kind, "member": i.member, "grants": i.grants,
                            "state": i.state, "uses": i.uses, "max_uses": i.max_uses,
                            "created": time_str(i.created_ms), "expires": time_str(i.expires_ms),
                            "created_by": i.created_by, "redeemed_by": i.redeemed_by, "revoked": i.revoked,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "invites": v }))?);
            } else if invites.is_empty() {
                println!("no invites");
            } else {
                invites.iter().for_each(print_invite);
            }
            Ok(())
        }
        InviteCommand::Revoke { code } => {
            let client = connect(o)?;
            client.revoke_invite(&code).await?;
            println!("invite revoked");
            Ok(())
        }
        InviteCommand::Redeem(a) => redeem(a).await,
    }
}

/// A channel for first contact: no certificate of ours, the server pinned by the code.
async fn redeem(a: RedeemArgs) -> Result<()> {
    let invite = Invite::parse(&a.code)?;
    invite.check_kind(InviteCodeKind::User)?;
    let name = match a.name {
        Some(n) => n,
        None => {
            let n = enrol::local_user_name().context(
                "this machine's user name cannot be made a name in the member (lower-case letters, digits and '-'); pass --name NAME",
            )?;
            println!("using the name {n} (your user name here); pass --name NAME to choose another");
            n
        }
    };
    collective_core::validate_name(&name)?;
    let member_domain = invite.member_domain()?;
    let contexts = collective_client::contexts::Contexts::load()?;
    let context = match &a.context {
        Some(c) => {
            collective_core::validate_name(c).context("--context")?;
            if contexts.contexts.contains_key(c) {
                bail!("a context named {c} exists already; pick another --context or remove it with `collective context rm {c}`");
            }
            c.clone()
        }
        None => contexts.free_name(&member_domain),
    };
    let out = match a.out {
        Some(o) => o,
        None => collective_client::contexts::contexts_dir()?.join(&context),
    };
    let r = enrol::redeem_user(&invite, &name, &out).await?;
    let cfg_path = r.client_config.clone();
    println!("you are {} now", r.principal);
    for (path, rights) in &r.grants {
        println!("  {rights} on {path}");
    }
    let entry = collective_client::contexts::ContextEntry {
        config: std::path::absolute(&cfg_path).unwrap_or(cfg_path.clone()),
        principal: r.principal.clone(),
    };
    match collective_client::contexts::Contexts::add(&context, entry) {
        Ok(true) => println!("added the context {context}; it is the current one: `collective ls /` uses it"),
        Ok(false) => {
            println!("added the context {context}; use it with `collective --context {context} …` or `collective context use {context}`")
        }
        Err(e) => println!(
            "(not added as a context: {e:#}) use it with:  export COLLECTIVE_CONFIG={}",
            cfg_path.display()
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------- members

#[derive(Subcommand)]
pub enum MemberCommand {
    /// Join a federation with a member invite: makes this member's CA key here, gets it
    /// signed, and writes a coordinator config ready to start
    Join(Box<JoinArgs>),
    /// Write this member's recovery kit again (member admins): its recovery secret and the
    /// addresses recovery asks first; print it and keep it outside the house
    RecoveryKit {
        /// The file to write (readable by you only)
        #[arg(long)]
        out: PathBuf,
    },
    /// Bring this member back on a new machine from its recovery kit: fetches the newest
    /// metadata backup from the other members (or a lone member's nodes) and writes a
    /// complete coordinator into --out
    Recover(RecoverArgs),
}

#[derive(Args)]
pub struct RecoverArgs {
    /// The recovery kit (the file, or its words typed into one)
    #[arg(long)]
    pub(crate) kit: PathBuf,
    /// Directory for the recovered coordinator (new, or empty)
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Where the coordinator will listen for gRPC, e.g. the address the old one listened
    /// on, so its nodes find it (its HTTP and gossip ports stay as they were, on that host)
    /// [default: free loopback ports]
    #[arg(long)]
    pub(crate) listen: Option<String>,
    /// The host other members and the nodes reach this machine at (needed when --listen
    /// is 0.0.0.0 or ::)
    #[arg(long)]
    pub(crate) advertise: Option<String>,
    /// Recover the newest backup at or before this time (RFC 3339, or a duration back
    /// from now such as 2h)
    #[arg(long)]
    pub(crate) at: Option<String>,
    /// Recover even though the member's old coordinator still seems alive
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Args)]
pub struct JoinArgs {
    pub(crate) code: String,
    /// This member's name (its domain becomes NAME.<federation domain>)
    #[arg(long)]
    pub(crate) name: String,
    /// Directory for the CA, certificates and configs
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) addrs: crate::setup::ServerAddrs,
    /// Bytes of capacity offered to other members, e.g. 500GiB
    #[arg(long, default_value = "0")]
    pub(crate) contribution: String,
}

/// What `member join` wrote.
pub struct Joined {
    pub domain: String,
    pub coordinator_config: PathBuf,
    pub client_config: PathBuf,
    pub recovery_kit: PathBuf,
    pub ca_dir: PathBuf,
}

pub async fn member(o: &ClientOverrides, cmd: MemberCommand) -> Result<()> {
    match cmd {
        MemberCommand::RecoveryKit { out } => {
            let kit = connect(o)?.recovery_kit().await?;
            collective_pki::write_private_file(&out, kit.as_bytes()).with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "recovery kit written to {} (0600): print it and keep it outside the house",
                out.display()
            );
            Ok(())
        }
        MemberCommand::Recover(a) => recover(&a).await,
        MemberCommand::Join(a) => {
            let j = join(&a).await?;
            println!("joined the federation as {}", j.domain);
            let addrs = a.addrs.resolve(true)?;
            let w = crate::setup::Written {
                coordinator_config: j.coordinator_config,
                client_config: j.client_config,
                recovery_kit: j.recovery_kit,
            };
            crate::setup::print_written(&w, &addrs, &j.ca_dir);
            Ok(())
        }
    }
}

/// `member recover`: the coordinator directory, then a client configuration for its admin.
pub async fn recover(a: &RecoverArgs) -> Result<()> {
    let kit = std::fs::read_to_string(&a.kit).with_context(|| format!("cannot read the recovery kit {}", a.kit.display()))?;
    let at_ms =
        a.at.as_deref()
            .map(|t| crate::observe::time_ms("--at", t))
            .transpose()?
            .map(|t| t.max(0) as u64);
    let r = collective_coordinator::recover(collective_coordinator::RecoverOptions {
        kit,
        out: a.out.clone(),
        listen: a.listen.clone(),
        advertise: a.advertise.clone(),
        at_ms,
        force: a.force,
    })
    .await?;
    let dir = r.config.parent().map(Path::to_path_buf).unwrap_or_default();
    let client = collective_client::ClientConfig {
        coordinator: r.grpc_listen.clone(),
        coordinator_name: r.coordinator_name.clone(),
        ca: r.trust_anchor.clone(),
        cert: r.admin_cert.clone(),
        key: r.admin_key.clone(),
        ..Default::default()
    };
    let client_path = dir.join("client.toml");
    client.write(&client_path)?;
    println!(
        "recovered {} from the backup of {} ({} entries), asked {}",
        r.member,
        collective_core::format_time_ms(r.backup_ms as i64),
        r.entries,
        r.keepers.join(", ")
    );
    println!("  coordinator config: {}", r.config.display());
    println!("  it will listen on:  {}", r.grpc_listen);
    println!("  admin client config: {}", client_path.display());
    println!("next:");
    println!("  collective coordinator --config {}", r.config.display());
    println!("  export COLLECTIVE_CONFIG={}", client_path.display());
    println!("  collective status      (surviving nodes come back; point them at the new address if it changed)");
    println!("  collective repair status --json   (files whose every copy was lost are listed under lost_files)");
    Ok(())
}

pub async fn join(a: &JoinArgs) -> Result<Joined> {
    let invite = Invite::parse(&a.code)?;
    invite.check_kind(InviteCodeKind::Member)?;
    collective_core::validate_name(&a.name)?;
    // Before the code is used up: every address the others will be told must be reachable.
    let addrs = a.addrs.resolve(true)?;
    collective_core::parse_size(&a.contribution).with_context(|| format!("--contribution '{}'", a.contribution))?;
    let ca_dir = a.out.join("ca");
    let enrol::Joined { domain, ca, gossip_peers } = enrol::join_member(&invite, &a.name, &ca_dir).await?;
    let written = crate::setup::write_member(
        &a.out,
        &ca,
        &ca_dir,
        &a.name,
        &addrs,
        Some(crate::setup::FederationPart {
            bootstrap: gossip_peers,
            peers: vec![invite.code.addr.clone()],
            root_dir: None,
            contribution: a.contribution.clone(),
        }),
    )?;
    Ok(Joined {
        domain,
        coordinator_config: written.coordinator_config,
        client_config: written.client_config,
        recovery_kit: written.recovery_kit,
        ca_dir,
    })
}

// ---------------------------------------------------------------- datastores

#[derive(Subcommand)]
pub enum DatastoreCommand {
    /// Create a datastore (a top-level directory with a placement policy)
    Create {
        path: String,
        /// media (fast reads), backup (copies on other members), hybrid
        #[arg(long, default_value = "media")]
        strategy: String,
        /// Copies of every chunk [default: the coordinator's replication]
        #[arg(long, default_value_t = 0)]
        replicas: u32,
    },
    /// Datastores of the whole federation
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// A datastore's policy, your rights and (with the share right) its grants
    Info {
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Give SUBJECT rights on PATH: SUBJECT is bob@bob.collective.local, *@bob.collective.local or *@*.collective.local
    Grant {
        path: String,
        subject: String,
        /// read, write, delete, share joined by + or , (read+write)
        rights: String,
        /// Expiry: RFC 3339 time, or a duration from now (30m, 24h, 7d)
        #[arg(long)]
        until: Option<String>,
    },
    /// Remove SUBJECT's grant on PATH
    Revoke { path: String, subject: String },
}

fn until_ms(s: &str) -> Result<i64> {
    if let Ok(d) = parse_duration(s) {
        return Ok((unix_ms_now() + d.as_millis() as u64) as i64);
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).with_context(|| format!("--until '{s}' is neither a duration (7d) nor an RFC 3339 time"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn grant_json(g: &GrantInfo) -> serde_json::Value {
    serde_json::json!({
        "path": g.path, "subject": g.subject, "rights": g.rights,
        "until": if g.until_ms > 0 { serde_json::Value::from(time_str(g.until_ms)) } else { serde_json::Value::Null },
        "granted_by": g.granted_by, "granted": time_str(g.granted_ms),
    })
}

fn datastore_json(d: &DatastoreInfo) -> serde_json::Value {
    serde_json::json!({
        "path": d.path, "member": d.member, "owner": d.owner, "strategy": d.strategy().name(),
        "replicas": d.replicas, "encrypted": d.encrypted, "created": time_str(d.created_ms),
        "my_rights": d.my_rights, "my_rights_unknown": d.my_rights_unknown,
        "grants": d.grants.iter().map(grant_json).collect::<Vec<_>>(),
    })
}

/// What `datastore ls` shows as the caller's rights on `d`.
fn rights_label(d: &DatastoreInfo) -> String {
    if !d.my_rights.is_empty() {
        d.my_rights.clone()
    } else if !d.my_rights_unknown.is_empty() {
        format!("({})", d.my_rights_unknown)
    } else {
        // A coordinator that does not ask the owners.
        "(ask its member)".into()
    }
}

fn datastores_table(datastores: &[DatastoreInfo]) -> Table {
    let mut t = Table::new(&[
        ("DATASTORE", Align::Left),
        ("MEMBER", Align::Left),
        ("STRATEGY", Align::Left),
        ("REPLICAS", Align::Right),
        ("YOUR RIGHTS", Align::Left),
    ]);
    for d in datastores {
        t.row(vec![
            d.path.clone(),
            d.member.clone(),
            d.strategy().name().to_string(),
            d.replicas.to_string(),
            rights_label(d),
        ]);
    }
    t
}

pub async fn datastore(o: &ClientOverrides, cmd: DatastoreCommand) -> Result<()> {
    let client = connect(o)?;
    match cmd {
        DatastoreCommand::Create { path, strategy, replicas } => {
            let strategy: Strategy = strategy.parse()?;
            let d = client.create_datastore(&path, strategy, replicas).await?;
            println!(
                "created datastore {} ({}, {} replicas{})",
                d.path,
                d.strategy().name(),
                d.replicas,
                if d.encrypted { ", chunks encrypted on clients" } else { "" }
            );
        }
        DatastoreCommand::Ls { json } => {
            let datastores = client.list_datastores().await?;
            if json {
                let v: Vec<_> = datastores.iter().map(datastore_json).collect();
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "datastores": v }))?);
            } else {
                datastores_table(&datastores).print();
            }
        }
        DatastoreCommand::Info { path, json } => {
            let d = client.datastore(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&datastore_json(&d))?);
            } else {
                println!("datastore:   {}", d.path);
                println!("member:      {}", d.member);
                println!("owner:       {}", d.owner);
                println!(
                    "strategy:    {} ({} replicas{})",
                    d.strategy().name(),
                    d.replicas,
                    if d.encrypted { ", encrypted" } else { "" }
                );
                println!("created:     {}", time_str(d.created_ms));
                println!("your rights: {}", d.my_rights);
                for g in &d.grants {
                    let until = if g.until_ms > 0 {
                        format!(" until {}", time_str(g.until_ms))
                    } else {
                        String::new()
                    };
                    println!(
                        "  grant {:<32} {:<20} on {}{until} (by {})",
                        g.subject, g.rights, g.path, g.granted_by
                    );
                }
            }
        }
        DatastoreCommand::Grant {
            path,
            subject,
            rights,
            until,
        } => {
            let until_ms = until.as_deref().map(until_ms).transpose()?;
            let rights: Rights = rights.parse()?;
            let g = client.grant(&path, &subject, rights, until_ms).await?;
            let until = if g.until_ms > 0 {
                format!(" until {}", time_str(g.until_ms))
            } else {
                String::new()
            };
            println!("granted {} on {} to {}{until}", g.rights, g.path, g.subject);
        }
        DatastoreCommand::Revoke { path, subject } => {
            client.revoke_grant(&path, &subject).await?;
            println!("revoked the grant of {subject} on {path}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_columns_line_up_with_long_member_names() {
        let peer = |member: &str, local: bool, last_seen_ms: i64, nodes: u32| PeerInfo {
            member: member.into(),
            state: collective_proto::v1::MemberHealth::Alive as i32,
            last_seen_ms,
            local,
            nodes,
            free_bytes: 3 << 30,
            datastores: vec!["/media".into()],
            ..Default::default()
        };
        let r = PeersResponse {
            members: vec![
                peer("alice.collective.local", true, 1_796_314_805_100, 2),
                peer("a-member-with-a-rather-long-name.example.org", false, 1_796_314_805_123, 12),
                peer("bob.collective.local", false, 0, 0),
            ],
            ..Default::default()
        };
        let out = peers_table(&r).render();
        let lines: Vec<&str> = out.lines().collect();
        let at = |l: &str, s: &str| l.find(s).unwrap_or_else(|| panic!("no {s} in {out}"));
        let seen = at(lines[0], "LAST SEEN");
        assert_eq!(at(lines[1], "2026-12-03T16:20:05.100Z"), seen, "{out}");
        assert_eq!(at(lines[2], "2026-12-03T16:20:05.123Z"), seen, "{out}");
        let datastores = at(lines[0], "DATASTORES");
        for l in &lines[1..] {
            assert_eq!(at(l, "/media"), datastores, "{out}");
        }
        let usage = usage_table(&r).render();
        let ends: Vec<usize> = usage.lines().map(|l| l.len()).collect();
        assert!(ends.iter().all(|&e| e == ends[0]), "{usage}");
    }
}
