//! `collective ca …`

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use collective_core::Role;
use collective_pki::{CertInfo, FederationRoot, IssueRequest, MemberCa};
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
    let csr = MemberCa::begin_join(member, domain, out)?;
    let pem = root.sign_member(&csr, member)?;
    Ok(MemberCa::finish_join(out, &pem, root.cert_pem())?)
}

pub fn run(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Init(a) => {
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
            println!(
                "next: collective ca issue --ca {} --role coordinator --name coordinator --san <host> --out <dir>",
                a.out.display()
            );
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
            let (crt, key) = ca.issue_to(&req, &a.out)?;
            println!("issued {} certificate for {}@{}", a.role, a.name, ca.domain);
            println!("  certificate: {}", crt.display());
            println!("  private key: {} (0600)", key.display());
            println!("  trust:       {}", a.out.join("ca.crt").display());
        }
        CaCommand::Inspect { file } => {
            let pem = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let info = CertInfo::from_pem(&pem).with_context(|| format!("{} is not a certificate", file.display()))?;
            let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_else(|_| t.to_string());
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
            println!("not before:  {}", fmt(info.not_before));
            println!("not after:   {}", fmt(info.not_after));
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
