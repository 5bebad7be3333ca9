//! Enrolment: turning an invite code into an identity. A user invite gives a person a key
//! made on this machine and a certificate the member signs ([`redeem_user`]); a member
//! invite gives a new household a member CA whose key is made on this machine and which
//! the federation root signs ([`join_member`]). Private keys never leave the machine: only
//! signing requests are sent, and the first contact is pinned by the code to the inviting
//! coordinator's key, so it cannot be intercepted. Writing server configurations is the
//! caller's business; this module writes keys, certificates and a client configuration.

use std::path::{Path, PathBuf};

use collective_core::{Principal, unix_ms_now};
use collective_pki::{InviteCode, InviteCodeKind, MemberCa, TlsIdentity, new_csr, write_private_file};
use collective_proto::v1::bootstrap_client::BootstrapClient;
use collective_proto::v1::{JoinMemberRequest, RedeemInviteRequest};
use tonic::transport::Channel;

use crate::{ClientConfig, ClientError};

/// An invite code, decoded and checked to be still valid.
#[derive(Debug, Clone)]
pub struct Invite {
    pub code: InviteCode,
    text: String,
}

impl Invite {
    /// Decodes `text` (as `invite generate` printed it) and refuses an expired code.
    pub fn parse(text: &str) -> Result<Invite, ClientError> {
        let text = text.trim().to_string();
        let (code, _, _) = InviteCode::decode(&text)?;
        if unix_ms_now() >= code.expires_ms {
            return Err(ClientError::Config(format!(
                "this invite expired on {}; ask for a new one",
                collective_core::format_time_ms(code.expires_ms as i64)
            )));
        }
        Ok(Invite { code, text })
    }

    /// Refuses an invite of the other kind, saying which command takes it.
    pub fn check_kind(&self, want: InviteCodeKind) -> Result<(), ClientError> {
        match (want, self.code.kind) {
            (InviteCodeKind::User, InviteCodeKind::Member) => Err(ClientError::Config(
                "this invite brings in a new member; run `collective member join CODE --name NAME --out DIR` instead".into(),
            )),
            (InviteCodeKind::Member, InviteCodeKind::User) => Err(ClientError::Config(
                "this invite is for a user; run `collective invite redeem CODE` instead".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The member domain of the coordinator that made the invite.
    pub fn member_domain(&self) -> Result<String, ClientError> {
        Ok(self.coordinator()?.domain)
    }

    fn coordinator(&self) -> Result<Principal, ClientError> {
        self.code
            .coordinator
            .parse()
            .map_err(|e| ClientError::Config(format!("the invite names a bad coordinator: {e}")))
    }

    /// The inviting coordinator's bootstrap service, its key pinned by the code.
    fn bootstrap(&self) -> Result<BootstrapClient<Channel>, ClientError> {
        let tls = TlsIdentity::pinned_client_config(self.code.fingerprint, collective_pki::ALPN_GRPC)?;
        Ok(BootstrapClient::new(collective_rpc::channel_with_config(
            tls,
            &self.code.addr,
            &self.coordinator()?,
        )?))
    }

    fn refused(&self, s: tonic::Status) -> ClientError {
        ClientError::Remote {
            message: collective_rpc::explain_status(&self.code.coordinator, &s),
            code: s.code(),
            kind: collective_rpc::error_kind(&s),
        }
    }
}

/// What redeeming a user invite made.
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// `name@member-domain`.
    pub principal: String,
    /// (path, rights) the invite granted.
    pub grants: Vec<(String, String)>,
    /// The client configuration written (next to the key and certificates).
    pub client_config: PathBuf,
}

/// Redeems a user invite as `name`: makes a key here and writes `NAME.key` (0600),
/// `NAME.crt`, `ca.crt` and `client.toml` into `out`, which must not hold a client
/// configuration yet.
pub async fn redeem_user(invite: &Invite, name: &str, out: &Path) -> Result<Redeemed, ClientError> {
    invite.check_kind(InviteCodeKind::User)?;
    collective_core::validate_name(name).map_err(|e| ClientError::Config(e.to_string()))?;
    let cfg_path = out.join("client.toml");
    if cfg_path.exists() {
        return Err(ClientError::Config(format!(
            "{} already holds a client configuration; choose another --out",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(ClientError::local(out))?;
    let principal = format!("{name}@{}", invite.member_domain()?);
    let (key_pem, csr) = new_csr(&principal)?;
    let r = invite
        .bootstrap()?
        .redeem_invite(RedeemInviteRequest {
            code: invite.text.clone(),
            name: name.to_string(),
            csr_pem: csr,
        })
        .await
        .map_err(|s| invite.refused(s))?
        .into_inner();
    write_private_file(&out.join(format!("{name}.key")), key_pem.as_bytes())?;
    let crt = out.join(format!("{name}.crt"));
    std::fs::write(&crt, &r.cert_chain_pem).map_err(ClientError::local(&crt))?;
    let ca = out.join("ca.crt");
    std::fs::write(&ca, &r.trust_pem).map_err(ClientError::local(&ca))?;
    let coordinator_name = r
        .coordinator_principal
        .split_once('@')
        .map(|(n, _)| n.to_string())
        .unwrap_or_else(|| "coordinator".into());
    let cfg = ClientConfig {
        coordinator: r.coordinator.clone(),
        coordinator_name,
        ca: PathBuf::from("ca.crt"),
        cert: PathBuf::from(format!("{name}.crt")),
        key: PathBuf::from(format!("{name}.key")),
        ..Default::default()
    };
    cfg.write(&cfg_path)?;
    Ok(Redeemed {
        principal: r.principal,
        grants: r.grants.into_iter().map(|g| (g.path, g.rights)).collect(),
        client_config: cfg_path,
    })
}

/// What joining a federation as a member gave.
pub struct Joined {
    /// `NAME.<federation domain>`.
    pub domain: String,
    /// The new member CA, its key made here, signed by the federation root.
    pub ca: MemberCa,
    /// Gossip addresses of members to join through.
    pub gossip_peers: Vec<String>,
}

/// Joins the federation as member `name`: makes the member CA key in `ca_dir`, sends only
/// its signing request, and stores the signed CA and the federation root there. On a
/// refusal nothing half-made is left behind (the key is useless without its certificate).
pub async fn join_member(invite: &Invite, name: &str, ca_dir: &Path) -> Result<Joined, ClientError> {
    invite.check_kind(InviteCodeKind::Member)?;
    collective_core::validate_name(name).map_err(|e| ClientError::Config(e.to_string()))?;
    let domain = collective_pki::member_domain(name, &invite.code.federation);
    let csr = MemberCa::begin_join(name, &domain, ca_dir)?;
    let answer = match invite.bootstrap() {
        Ok(mut b) => b
            .join_member(JoinMemberRequest {
                code: invite.text.clone(),
                name: name.to_string(),
                csr_pem: csr,
            })
            .await
            .map_err(|s| invite.refused(s)),
        Err(e) => Err(e),
    };
    let r = match answer {
        Ok(r) => r.into_inner(),
        Err(e) => {
            let _ = std::fs::remove_file(ca_dir.join("ca.key"));
            return Err(e);
        }
    };
    let ca = MemberCa::finish_join(ca_dir, &r.member_ca_pem, &r.root_pem)?;
    Ok(Joined {
        domain,
        ca,
        gossip_peers: r.gossip_peers,
    })
}

/// The name of the user running this, as a name in a member is written: `$USER`,
/// `$LOGNAME`, or the password database's entry for our user id, in lower case with '-'
/// for what a name cannot hold. None when there is none, or nothing of it is usable.
pub fn local_user_name() -> Option<String> {
    let from_env = ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    let name = from_env.or_else(|| {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_string())
        })
    })?;
    // `John_Doe` proposes `john-doe`: lower case, and '-' for what a name cannot hold.
    let name: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-').to_string();
    collective_core::validate_name(&name).ok().map(|_| name)
}

/// File name of the recovery kit beside a member's configurations.
pub const RECOVERY_KIT_FILE: &str = "recovery-kit.txt";

pub use collective_pki::KitFacts;

/// Writes the recovery kit of a member that has just come into being to
/// `out/recovery-kit.txt` (readable by its owner only) and returns its path.
pub fn write_recovery_kit(out: &Path, ca_dir: &Path, facts: &KitFacts) -> Result<PathBuf, ClientError> {
    let text = collective_pki::recovery_kit(ca_dir, facts)?;
    let path = out.join(RECOVERY_KIT_FILE);
    write_private_file(&path, text.as_bytes())?;
    Ok(path)
}
