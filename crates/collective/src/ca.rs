//! `collective ca …`

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use collective_core::Role;
use collective_pki::{CertInfo, FederationRoot, IssueRequest, MemberCa, REVOCATION_FILE, RevocationList, RevokedCert};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Subcommand)]
pub enum CaCommand {
    /// Make a new member CA (writes ca.crt and ca.key, 0600)
    Init(InitArgs),
    /// Issue a certificate for NAME@<member domain>
    Issue(IssueArgs),
    /// Show what a certificate says
    Inspect {
        /// A PEM certificate file
        file: PathBuf,
    },
    /// Renew a certificate in place: same principal, role and host names, new validity.
    /// Running coordinators and nodes take it up within seconds, without a restart
    Rotate(RotateArgs),
    /// Revoke a certificate: the coordinator (whose ca_dir is DIR) and its nodes refuse it
    /// within seconds, on new and existing connections
    Revoke(RevokeArgs),
    /// List the certificates this CA has revoked
    Revocations {
        /// The member CA directory
        #[arg(long)]
        ca: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct RotateArgs {
    /// The member CA directory that issued the certificate
    #[arg(long)]
    ca: PathBuf,
    /// The certificate to renew (replaced in place)
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (default: the certificate's path with .key)
    #[arg(long)]
    key: Option<PathBuf>,
    /// Make a new key too (clients and nodes; a coordinator keeps its key)
    #[arg(long)]
    new_key: bool,
    /// How long the new certificate is valid, e.g. 365d
    #[arg(long)]
    validity: Option<String>,
    /// Also revoke the certificate being replaced
    #[arg(long)]
    revoke_old: bool,
}

#[derive(Args)]
pub struct RevokeArgs {
    /// The member CA directory that issued the certificate
    #[arg(long)]
    ca: PathBuf,
    /// The certificate to revoke (or give --fingerprint)
    file: Option<PathBuf>,
    /// SHA-256 fingerprint of the certificate, as `collective ca inspect` prints it
    #[arg(long, conflicts_with = "file")]
    fingerprint: Option<String>,
    /// Why, for the record (e.g. "laptop stolen")
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Args)]
pub struct InitArgs {
    /// Member name, e.g. alice
    #[arg(long)]
    member: String,
    /// Member domain, e.g. alice.collective.local
    #[arg(long)]
    domain: String,
    /// Directory to write the CA into
    #[arg(long)]
    out: PathBuf,
    /// Sign the member CA with this federation root (its holder's own member); other
    /// members join with `collective member join` instead
    #[arg(long)]
    root: Option<PathBuf>,
    /// With --advertise: also issue the coordinator's and your own certificates and write
    /// OUT/coordinator.toml and OUT/client.toml, ready to start
    #[command(flatten)]
    addrs: crate::setup::ServerAddrs,
    /// Capacity offered to other members (with --root and --advertise), e.g. 500GiB
    #[arg(long, default_value = "0")]
    contribution: String,
}

#[derive(Args)]
pub struct IssueArgs {
    /// The member CA directory
    #[arg(long)]
    ca: PathBuf,
    /// coordinator, node or client
    #[arg(long)]
    role: Role,
    /// Principal name within the member, e.g. node-01
    #[arg(long)]
    name: String,
    /// Extra host name or IP address the certificate is valid for (repeatable)
    #[arg(long)]
    san: Vec<String>,
    /// Directory to write NAME.crt, NAME.key and ca.crt into
    #[arg(long)]
    out: PathBuf,
    /// How long the certificate is valid, e.g. 365d
    #[arg(long)]
    validity: Option<String>,
    /// Start of validity (RFC 3339), default: one hour ago
    #[arg(long)]
    not_before: Option<String>,
    /// End of validity (RFC 3339); overrides --validity
    #[arg(long)]
    not_after: Option<String>,
}

fn rfc3339(what: &str, s: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).with_context(|| format!("{what} '{s}' is not an RFC 3339 time such as 2027-01-31T12:00:00Z"))
}

/// Makes a member CA in `out` and signs it with the federation root in `root_dir` (the
/// founding member, which holds the root, does this instead of `member join`).
pub fn init_with_root(member: &str, domain: &str, out: &Path, root_dir: &Path) -> Result<MemberCa> {
    let root = FederationRoot::load(root_dir).with_context(|| format!("cannot load the federation root in {}", root_dir.display()))?;
    let expected = collective_pki::member_domain(member, &root.domain);
    if domain != expected {
        anyhow::bail!(
            "in the federation {} the member {member} has the domain {expected}, not {domain}",
            root.domain
        );
    }
    Ok(root.admit_member(member, out)?)
}

pub fn run(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Init(a) => {
            let addrs = match (&a.addrs.advertise, a.addrs.given()) {
                (Some(_), _) => Some(a.addrs.resolve(a.root.is_some())?),
                (None, Some(flag)) => {
                    anyhow::bail!(
                        "{flag} only matters with --advertise HOST, which also writes the coordinator's and your client's configuration"
                    )
                }
                (None, None) => None,
            };
            if a.contribution != "0" && !(a.root.is_some() && addrs.is_some()) {
                anyhow::bail!("--contribution goes into the configuration written with --root and --advertise");
            }
            collective_core::parse_size(&a.contribution).with_context(|| format!("--contribution '{}'", a.contribution))?;
            let ca = match &a.root {
                None => MemberCa::init(&a.member, &a.domain, &a.out)?,
                Some(root_dir) => init_with_root(&a.member, &a.domain, &a.out, root_dir)?,
            };
            println!("member CA for {} ({}) written to {}", ca.member, ca.domain, a.out.display());
            println!("  certificate: {}", a.out.join("ca.crt").display());
            println!(
                "  private key: {} (keep it safe; never copy it off this machine)",
                a.out.join("ca.key").display()
            );
            let Some(addrs) = addrs else {
                println!(
                    "next: collective ca issue --ca {} --role coordinator --name coordinator --san <host> --out <dir>",
                    a.out.display()
                );
                return Ok(());
            };
            let federation = a.root.as_ref().map(|root| crate::setup::FederationPart {
                bootstrap: vec![],
                peers: vec![],
                root_dir: Some(std::path::absolute(root).unwrap_or_else(|_| root.clone())),
                contribution: a.contribution.clone(),
            });
            let w = crate::setup::write_member(&a.out, &ca, &a.out, &ca.member, &addrs, federation)?;
            crate::setup::print_written(&w, &addrs, &a.out);
        }
        CaCommand::Issue(a) => {
            let ca = MemberCa::load(&a.ca).with_context(|| format!("cannot load the member CA in {}", a.ca.display()))?;
            let not_before = a.not_before.as_deref().map(|s| rfc3339("--not-before", s)).transpose()?;
            let mut not_after = a.not_after.as_deref().map(|s| rfc3339("--not-after", s)).transpose()?;
            if not_after.is_none()
                && let Some(v) = &a.validity
            {
                let d = collective_core::parse_duration(v)?;
                not_after = Some(not_before.unwrap_or_else(OffsetDateTime::now_utc) + d);
            }
            let req = IssueRequest {
                role: a.role,
                name: a.name.clone(),
                sans: a.san,
                not_before,
                not_after,
            };
            // A name is never given twice (`names.rs` in collective-pki says why); a
            // certificate that could not be made claims nothing.
            let (crt, key) = ca.names().claim_with(&a.name, || ca.issue_to(&req, &a.out))?;
            println!("issued {} certificate for {}@{}", a.role, a.name, ca.domain);
            println!("  certificate: {}", crt.display());
            println!("  private key: {} (0600)", key.display());
            println!("  trust:       {}", a.out.join("ca.crt").display());
        }
        CaCommand::Rotate(a) => rotate(a)?,
        CaCommand::Revoke(a) => revoke(a)?,
        CaCommand::Revocations { ca, json } => {
            let path = ca.join(REVOCATION_FILE);
            let list = RevocationList::load(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list.revoked)?);
            } else if list.revoked.is_empty() {
                println!("no certificates revoked ({})", path.display());
            } else {
                for r in &list.revoked {
                    let reason = if r.reason.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", r.reason)
                    };
                    println!("{}  {}  revoked {}{reason}", r.fingerprint, r.principal, r.revoked_at);
                }
            }
        }
        CaCommand::Inspect { file } => {
            let pem = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let info = CertInfo::from_pem(&pem).with_context(|| format!("{} is not a certificate", file.display()))?;
            let now = OffsetDateTime::now_utc();
            let state = if now < info.not_before {
                "not yet valid".to_string()
            } else if now > info.not_after {
                "EXPIRED".to_string()
            } else {
                format!("valid, {} days left", (info.not_after - now).whole_days())
            };
            if info.is_ca {
                println!(
                    "CA:          {} ({})",
                    info.common_name,
                    info.organization.as_deref().unwrap_or("?")
                );
            } else {
                println!(
                    "principal:   {}",
                    info.principal().map(|p| p.to_string()).unwrap_or_else(|e| format!("(none: {e})"))
                );
                println!(
                    "role:        {}",
                    info.role().map(|r| r.to_string()).unwrap_or_else(|e| format!("(none: {e})"))
                );
            }
            println!("issuer:      {}", info.issuer);
            println!("not before:  {}", time_text(info.not_before));
            println!("not after:   {}", time_text(info.not_after));
            println!("status:      {state}");
            println!(
                "SANs:        {}",
                if info.sans.is_empty() {
                    "-".to_string()
                } else {
                    info.sans.join(", ")
                }
            );
            println!("fingerprint: sha256:{}", info.fingerprint);
        }
    }
    Ok(())
}

fn load_ca(dir: &Path) -> Result<MemberCa> {
    MemberCa::load(dir).with_context(|| format!("cannot load the member CA in {}", dir.display()))
}

fn rfc3339_text(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// A time for people, as every command prints them.
fn time_text(t: OffsetDateTime) -> String {
    collective_core::format_time_ms((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Adds a certificate of the CA in `ca` to its revocation list; false if already there.
fn add_revocation(ca: &Path, fingerprint: &str, not_after: OffsetDateTime, principal: &str, reason: &str) -> Result<bool> {
    let path = ca.join(REVOCATION_FILE);
    let mut list = RevocationList::load(&path)?;
    let added = list.add(RevokedCert {
        fingerprint: fingerprint.to_string(),
        principal: principal.to_string(),
        not_after: rfc3339_text(not_after),
        revoked_at: rfc3339_text(
            OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap_or_else(|_| OffsetDateTime::now_utc()),
        ),
        reason: reason.to_string(),
    });
    if added {
        list.save(&path).with_context(|| format!("cannot update {}", path.display()))?;
    }
    Ok(added)
}

fn rotate(a: RotateArgs) -> Result<()> {
    let ca = load_ca(&a.ca)?;
    let key_path = a.key.clone().unwrap_or_else(|| a.cert.with_extension("key"));
    let old_pem = std::fs::read_to_string(&a.cert).with_context(|| format!("cannot read {}", a.cert.display()))?;
    let old = CertInfo::from_pem(&old_pem).with_context(|| format!("{} is not a certificate", a.cert.display()))?;
    let role = old
        .role()
        .with_context(|| format!("{} is not a Collective certificate", a.cert.display()))?;
    if a.new_key && role == Role::Coordinator {
        anyhow::bail!(
            "a coordinator keeps its key: it also signs the coordinator's chunk tokens, invite codes and gossip, \
             which nodes and other members already trust; run the command again without --new-key to renew the certificate"
        );
    }
    let key_pem = if a.new_key {
        None
    } else {
        collective_pki::check_key_permissions(&key_path)?;
        Some(std::fs::read_to_string(&key_path).with_context(|| {
            format!(
                "cannot read the key {} (name it with --key, or make a new one with --new-key)",
                key_path.display()
            )
        })?)
    };
    let not_after = a
        .validity
        .as_deref()
        .map(|v| collective_core::parse_duration(v).map(|d| OffsetDateTime::now_utc() + d))
        .transpose()?;
    let (role, issued) = ca.reissue(&old_pem, key_pem.as_deref(), None, not_after)?;
    if a.new_key {
        collective_pki::replace_file(&key_path, issued.key_pem.as_bytes(), 0o600)?;
    }
    collective_pki::replace_file(&a.cert, issued.chain_pem.as_bytes(), 0o644)?;
    let new = CertInfo::from_pem(&issued.chain_pem)?;
    println!("renewed the {role} certificate of {}", issued.principal);
    println!("  certificate: {} (sha256:{})", a.cert.display(), new.fingerprint);
    if a.new_key {
        println!("  private key: {} (new, 0600)", key_path.display());
    } else {
        println!("  private key: {} (unchanged)", key_path.display());
    }
    println!("  valid until: {}", time_text(new.not_after));
    println!("  replaces:    sha256:{}", old.fingerprint);
    if a.revoke_old {
        let who = issued.principal.to_string();
        add_revocation(&a.ca, &old.fingerprint, old.not_after, &who, "replaced by `collective ca rotate`")?;
        println!("  the old certificate is revoked");
    }
    println!(
        "a running {role} using these files takes up the new certificate within {} s; nothing needs restarting",
        collective_rpc::TLS_RELOAD_PERIOD.as_secs()
    );
    Ok(())
}

fn revoke(a: RevokeArgs) -> Result<()> {
    let ca = load_ca(&a.ca)?;
    let (fingerprint, not_after, principal) = match (&a.file, &a.fingerprint) {
        (Some(file), _) => {
            let pem = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let info = CertInfo::from_pem(&pem).with_context(|| format!("{} is not a certificate", file.display()))?;
            let principal = info
                .principal()
                .with_context(|| format!("{} is not a Collective certificate", file.display()))?;
            if principal.domain != ca.domain {
                anyhow::bail!(
                    "{} is a certificate of {}, not of {}; revoke it with that member's CA",
                    file.display(),
                    principal.domain,
                    ca.domain
                );
            }
            (info.fingerprint, info.not_after, principal.to_string())
        }
        (None, Some(fp)) => {
            let bytes = collective_pki::parse_fingerprint(fp)?;
            let fingerprint: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            // Unknown expiry: kept for as long as a member CA could have issued it.
            let until = OffsetDateTime::now_utc() + std::time::Duration::from_secs(10 * 365 * 86400);
            (fingerprint, until, "(unknown)".to_string())
        }
        (None, None) => anyhow::bail!("name the certificate to revoke: a file, or --fingerprint HEX"),
    };
    if add_revocation(&a.ca, &fingerprint, not_after, &principal, &a.reason)? {
        println!("revoked sha256:{fingerprint} ({principal})");
        println!(
            "the coordinator whose ca_dir is {} refuses it within {} s, and its nodes at their next heartbeat",
            a.ca.display(),
            collective_rpc::TLS_RELOAD_PERIOD.as_secs()
        );
    } else {
        println!("sha256:{fingerprint} was already revoked");
    }
    Ok(())
}
