//! `collective member recover`: a member brought back on a new machine from its recovery
//! kit alone. The kit names who keeps the member's recovery record (other members'
//! coordinators, or a lone member's nodes) and holds the secret the record, the manifests
//! and every backup chunk are sealed under.
//!
//! 1. Every keeper the kit names is asked for the record, the request signed with the key
//!    derived from the secret; the newest record wins. While any keeper's gossip still
//!    hears the member's coordinator, recovery stops (unless forced): two coordinators of
//!    one member must never run.
//! 2. The member's identity sealed in the record is opened with the secret; its root (or
//!    lone CA) must have the kit's fingerprint; the coordinator gets a new certificate for
//!    its old key, so surviving nodes keep trusting the tokens it signs.
//! 3. The chosen backup's manifest, snapshot and change segments are fetched from wherever
//!    their chunks are (the member's own surviving nodes, other members' nodes through
//!    their coordinators), each chunk checked against its id and opened with its seal,
//!    each piece checked against its hash, and the store built from them in one go.
//! 4. A complete coordinator directory is written: its configuration as it was, with new
//!    paths and addresses.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use collective_core::{ChunkId, Principal, Role, unix_ms_now};
use collective_dataplane::{ChunkClient, NodeTarget};
use collective_pki::{IssueRequest, MemberCa, RecoveryKit, TlsIdentity, TokenSigner};
use collective_proto::v1::bootstrap_client::BootstrapClient;
use collective_proto::v1::federation_client::FederationClient;
use collective_proto::v1::node_recovery_client::NodeRecoveryClient;
use collective_proto::v1::{
    BackupBlob, BackupChunk, BackupHead, BackupManifest, BackupProgress, ChunkDesc, FetchRecoveryRequest, FetchRecoveryResponse, NodeAddr,
    ReadTokensRequest, RecoveryIdentity, RecoveryRecord, SignedRecoveryRecord, TokenOp,
};
use prost::Message;

use crate::config::CoordinatorConfig;
use crate::hosting::member_of;
use crate::metabackup::{IDENTITY_PURPOSE, MANIFEST_PURPOSE};
use crate::server::CoordinatorError;

const ASK_TIMEOUT: Duration = Duration::from_secs(10);
const GET_TIMEOUT: Duration = Duration::from_secs(60);
/// Chunks asked about in one `ReadTokens` call.
const TOKENS_BATCH: usize = 256;

/// What `member recover` was asked.
#[derive(Debug, Clone)]
pub struct RecoverOptions {
    /// The kit's text.
    pub kit: String,
    /// The new coordinator's directory (must be empty or absent).
    pub out: PathBuf,
    /// Where the new coordinator listens for gRPC (default: a free loopback port).
    pub listen: Option<String>,
    /// The host other members and the nodes reach it at (needed when `listen` is a
    /// wildcard address).
    pub advertise: Option<String>,
    /// Recover the newest backup at or before this time (ms since the epoch).
    pub at_ms: Option<u64>,
    /// Go on even though the member's coordinator still seems alive.
    pub force: bool,
}

/// What recovery wrote.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub member: String,
    /// `DIR/coordinator.toml`.
    pub config: PathBuf,
    pub grpc_listen: String,
    /// The admin's certificate, key and trust anchor, for a client configuration.
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub trust_anchor: PathBuf,
    pub coordinator_name: String,
    /// The backup recovered: when it was made and the metadata sequence it reaches.
    pub backup_ms: u64,
    pub entries: u64,
    /// Keepers that answered.
    pub keepers: Vec<String>,
}

fn err(msg: impl Into<String>) -> CoordinatorError {
    CoordinatorError::Recover(msg.into())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CoordinatorError + '_ {
    move |e| err(format!("cannot write {}: {e}", path.display()))
}

fn time_str(ms: u64) -> String {
    collective_core::format_time_ms(ms as i64)
}

/// One keeper's answer that holds up without trusting the keeper: the record is this
/// member's, made for this kit, its identity opens with the secret and carries the root the
/// kit names. (Its signature is checked once the identity is on disk.)
struct Candidate {
    record: RecoveryRecord,
    signed: SignedRecoveryRecord,
    identity: RecoveryIdentity,
    keeper: String,
}

/// The member's trust anchor among the identity's files: the federation root, or a lone
/// member's CA.
fn anchor_pem(identity: &RecoveryIdentity) -> Option<String> {
    ["root.crt", "ca.crt"].iter().find_map(|n| {
        identity
            .files
            .iter()
            .find(|f| f.place == "ca" && f.name == *n)
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
    })
}

fn vet(kit: &RecoveryKit, answer: &FetchRecoveryResponse, record: &RecoveryRecord) -> Result<Candidate, String> {
    if record.member != kit.domain {
        return Err(format!("a record of {}", record.member));
    }
    if record.recovery_key.as_ref() != kit.secret.fetch_public_key().as_slice() {
        return Err("a record made for another recovery secret (another member's, or an older kit)".into());
    }
    let sealed = kit
        .secret
        .open_blob(IDENTITY_PURPOSE, &record.identity)
        .ok_or("a record whose identity does not open with the kit's secret (altered)")?;
    let identity = RecoveryIdentity::decode(sealed.as_slice()).map_err(|e| format!("a malformed identity ({e})"))?;
    let pem = anchor_pem(&identity).ok_or("an identity without a CA certificate")?;
    let info = collective_pki::CertInfo::from_pem(&pem).map_err(|e| e.to_string())?;
    if !info.fingerprint.eq_ignore_ascii_case(&kit.root_fingerprint) {
        return Err(format!(
            "a root certificate with fingerprint {}, not the kit's {}: compare `root-fingerprint:` with the printed kit",
            info.fingerprint, kit.root_fingerprint
        ));
    }
    Ok(Candidate {
        record: record.clone(),
        signed: answer.record.clone().unwrap_or_default(),
        identity,
        keeper: answer.keeper.clone(),
    })
}

/// Whether the member's old coordinator still answers at `addr` (a member on its own has
/// no other member's gossip to tell).
async fn old_coordinator_answers(kit: &RecoveryKit, addr: &str) -> bool {
    let Ok(tls) = TlsIdentity::first_contact_client_config(collective_pki::ALPN_GRPC) else {
        return false;
    };
    let Ok(name) = Principal::new("coordinator", &kit.domain) else {
        return false;
    };
    let Ok(channel) = collective_rpc::channel_with_config(tls, addr, &name) else {
        return false;
    };
    let now = unix_ms_now();
    let req = FetchRecoveryRequest {
        member: kit.domain.clone(),
        time_ms: now,
        signature: kit.secret.sign_fetch(&kit.domain, now).into(),
    };
    match tokio::time::timeout(Duration::from_secs(3), BootstrapClient::new(channel).fetch_recovery(req)).await {
        Ok(Err(s)) => s.code() == tonic::Code::FailedPrecondition && s.message().contains("is running"),
        _ => false,
    }
}

/// Makes `dir` readable by its owner only (it holds keys and, while building, plaintext).
fn private_dir(dir: &Path) -> Result<(), CoordinatorError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))
}

/// Brings a member back from its kit into `opts.out` (see the module documentation). It is
/// built beside `--out` and moved in place whole: a refusal or failure leaves nothing.
pub async fn recover(opts: RecoverOptions) -> Result<Recovered, CoordinatorError> {
    let kit = RecoveryKit::parse(&opts.kit).map_err(|e| err(format!("the recovery kit is not usable: {e}")))?;
    let out = std::path::absolute(&opts.out).map_err(io(&opts.out))?;
    if out.exists() && std::fs::read_dir(&out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(err(format!(
            "{} is not empty; recover into a new directory (a refused recovery leaves nothing behind, so this one holds something else)",
            out.display()
        )));
    }
    if kit.bootstrap.is_empty() {
        return Err(err(
            "the kit names no one to ask; add a line `bootstrap: HOST:PORT` with another member's coordinator gRPC address \
             (its advertise_grpc, e.g. 192.168.2.20:7000), or for a member on its own one of its nodes' gRPC addresses",
        ));
    }
    let addrs = Addresses::choose(&opts)?;
    let answers = ask_keepers(&kit).await?;
    let mut candidates = Vec::new();
    let mut refused = Vec::new();
    for (a, r) in &answers {
        match vet(&kit, a, r) {
            Ok(c) => candidates.push(c),
            Err(e) => refused.push(format!("{}: {e}", a.keeper)),
        }
    }
    if candidates.is_empty() {
        return Err(err(format!(
            "no keeper has a recovery record this kit opens: {}",
            refused.join("; ")
        )));
    }
    if !refused.is_empty() {
        tracing::warn!("records refused: {}", refused.join("; "));
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.record.version));
    // A coordinator that still runs must not get a twin.
    if !opts.force {
        if let Some(a) = answers
            .iter()
            .map(|(a, _)| a)
            .find(|a| matches!(a.member_state.as_str(), "alive" | "suspect"))
        {
            return Err(err(format!(
                "{}'s coordinator is still alive as far as {} can tell (its last gossip: {}); \
                 two coordinators of one member must never run: stop it, or pass --force if it is really gone",
                kit.domain,
                a.keeper,
                if a.last_seen_ms > 0 {
                    time_str(a.last_seen_ms)
                } else {
                    "now".into()
                }
            )));
        }
        let old = &candidates[0].record.grpc_addr;
        if !old.is_empty() && old_coordinator_answers(&kit, old).await {
            return Err(err(format!(
                "{}'s coordinator still answers at {old}; two coordinators of one member must never run: \
                 stop it, or pass --force if that is another program",
                kit.domain
            )));
        }
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "recovered".into());
    let staging = out.with_file_name(format!(".{name}.recovering"));
    let _ = std::fs::remove_dir_all(&staging);
    private_dir(&staging)?;
    match build(&kit, candidates, &answers, &opts, &addrs, &staging, &out).await {
        Ok(r) => {
            if out.exists() {
                std::fs::remove_dir(&out).map_err(io(&out))?;
            }
            std::fs::rename(&staging, &out).map_err(io(&out))?;
            Ok(r)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Where the recovered coordinator listens and what it tells others.
struct Addresses {
    /// `--listen` as given (None: free loopback ports).
    listen: Option<String>,
    advertise: Option<String>,
}

impl Addresses {
    fn choose(opts: &RecoverOptions) -> Result<Addresses, CoordinatorError> {
        if let Some(l) = &opts.listen {
            let sock = collective_rpc::resolve(l).map_err(|e| err(format!("--listen: {e}")))?;
            if sock.ip().is_unspecified() && opts.advertise.is_none() {
                return Err(err(format!(
                    "--listen {l} listens on every address: add --advertise HOST, the address other members and the nodes reach this machine at"
                )));
            }
        }
        Ok(Addresses {
            listen: opts.listen.clone(),
            advertise: opts.advertise.clone(),
        })
    }

    /// The coordinator's settings for this machine: the old ones with new paths, listening
    /// at `--listen` (with the old HTTP and gossip ports on that host), or on free
    /// loopback ports.
    fn apply(&self, cfg: &mut CoordinatorConfig) -> Result<String, CoordinatorError> {
        let port_of = |a: &str| a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
        let (grpc, host, http_port, gossip_port) = match &self.listen {
            Some(l) => {
                let host = l.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_else(|| "127.0.0.1".into());
                let http = port_of(&cfg.http_listen).map_or_else(free_tcp_port, Ok)?;
                let gossip = port_of(&cfg.federation.gossip_listen).map_or_else(free_udp_port, Ok)?;
                (l.clone(), host, http, gossip)
            }
            None => (
                format!("127.0.0.1:{}", free_tcp_port()?),
                "127.0.0.1".to_string(),
                free_tcp_port()?,
                free_udp_port()?,
            ),
        };
        cfg.grpc_listen = grpc.clone();
        cfg.http_listen = format!("{host}:{http_port}");
        let grpc_port = port_of(&grpc).unwrap_or(7000);
        cfg.advertise_grpc = self.advertise.as_ref().map(|h| format!("{h}:{grpc_port}")).unwrap_or_default();
        if !cfg.federation.gossip_listen.is_empty() {
            cfg.federation.gossip_listen = format!("{host}:{gossip_port}");
            cfg.federation.gossip_advertise = self.advertise.as_ref().map(|h| format!("{h}:{gossip_port}")).unwrap_or_default();
        }
        Ok(grpc)
    }
}

/// Writes the member's directories into `staging` from the newest record whose signature
/// checks, with every path in the settings as it will be under `out`.
async fn build(
    kit: &RecoveryKit,
    candidates: Vec<Candidate>,
    answers: &[(FetchRecoveryResponse, RecoveryRecord)],
    opts: &RecoverOptions,
    addrs: &Addresses,
    staging: &Path,
    out: &Path,
) -> Result<Recovered, CoordinatorError> {
    let (ca_dir, root_dir, certs) = (staging.join("ca"), staging.join("root"), staging.join("certs"));
    let mut old_config: Option<CoordinatorConfig> = None;
    let mut has_root = false;
    for f in &candidates[0].identity.files {
        if f.name.contains('/') || f.name.starts_with('.') || f.name.is_empty() {
            return Err(err(format!("the sealed identity names a bad file '{}'", f.name)));
        }
        let dir = match f.place.as_str() {
            "ca" => &ca_dir,
            "root" => {
                has_root = true;
                &root_dir
            }
            "tls" => &certs,
            "config" => {
                let text = String::from_utf8_lossy(&f.data);
                old_config = Some(toml::from_str(&text).map_err(|e| err(format!("the saved coordinator settings do not parse: {e}")))?);
                continue;
            }
            other => {
                return Err(err(format!(
                    "the sealed identity has a file for '{other}', which this program does not know"
                )));
            }
        };
        private_dir(dir)?;
        let path = dir.join(&f.name);
        if f.name.ends_with(".key") {
            collective_pki::write_private_file(&path, &f.data).map_err(|e| err(e.to_string()))?;
        } else {
            std::fs::write(&path, &f.data).map_err(io(&path))?;
        }
    }
    let mut cfg = old_config.ok_or_else(|| err("the sealed identity holds no coordinator settings"))?;
    // The same secret goes on sealing the member's backups: the kit in hand stays valid.
    private_dir(&ca_dir)?;
    kit.secret
        .save(&ca_dir.join(collective_pki::RECOVERY_SECRET_FILE))
        .map_err(|e| err(e.to_string()))?;

    // A fresh certificate for the coordinator's old key.
    let ca = MemberCa::load(&ca_dir).map_err(|e| err(format!("the recovered member CA does not load: {e}")))?;
    let cert_path = certs.join("coordinator.crt");
    let key_path = certs.join("coordinator.key");
    let old_cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
    let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
    let (_, issued) = ca
        .reissue(&old_cert, Some(&key_pem), None, None)
        .map_err(|e| err(format!("cannot renew the coordinator's certificate: {e}")))?;
    std::fs::write(&cert_path, &issued.chain_pem).map_err(io(&cert_path))?;
    let trust = certs.join("trust.crt");
    std::fs::write(&trust, ca.trust_anchor_pem()).map_err(io(&trust))?;
    let identity =
        TlsIdentity::load(&trust, &cert_path, &key_path).map_err(|e| err(format!("the recovered identity does not load: {e}")))?;
    if identity.role != Role::Coordinator || identity.principal.domain != kit.domain {
        return Err(err(format!(
            "the recovered certificate is for {}, not {}'s coordinator",
            identity.principal, kit.domain
        )));
    }
    // The newest record whose signature checks (as of when it was signed).
    let mut bad = Vec::new();
    let chosen = candidates
        .into_iter()
        .find(|c| match collective_pki::open_record_as_of(&identity, &c.signed, true) {
            Ok(_) => true,
            Err(e) => {
                bad.push(format!("{}: {e}", c.keeper));
                false
            }
        })
        .ok_or_else(|| err(format!("no recovery record's signature checks: {}", bad.join("; "))))?;
    if !bad.is_empty() {
        tracing::warn!("records refused: {}", bad.join("; "));
    }
    let record = chosen.record;

    // The backup to bring back.
    let mut heads: Vec<BackupHead> = record.heads.clone();
    heads.sort_by_key(|h| std::cmp::Reverse(h.created_ms));
    if let Some(at) = opts.at_ms {
        heads.retain(|h| h.created_ms <= at);
        if heads.is_empty() {
            let oldest = record.heads.iter().map(|h| h.created_ms).min().unwrap_or(0);
            return Err(err(format!(
                "no backup of {} is as old as {}; the oldest kept is from {}",
                kit.domain,
                time_str(at),
                time_str(oldest)
            )));
        }
    }
    let head = heads.first().cloned().ok_or_else(|| {
        err(format!(
            "{} has no backup in the federation yet; bring it back from a `coordinator backup` file if there is one",
            kit.domain
        ))
    })?;
    let fetcher = Fetcher::new(identity.clone(), &record, answers)?;
    let work = staging.join(".pieces");
    private_dir(&work)?;
    let data_dir = staging.join("coordinator-data");
    let older = heads.get(1).map(|h| time_str(h.created_ms));
    let offer = |e: String| match &older {
        Some(t) => err(format!("{e}; an older backup may be whole: run again with --at {t}")),
        None => err(e),
    };
    let (manifest, info) = fetcher.restore(kit, &head, &work, &data_dir).await.map_err(offer)?;
    let _ = std::fs::remove_dir_all(&work);
    seed_backup_state(&data_dir, &kit.domain, &head, &manifest)?;

    // The coordinator's settings, with the paths it will have under `out`.
    let grpc_listen = addrs.apply(&mut cfg)?;
    cfg.data_dir = out.join("coordinator-data");
    cfg.ca_dir = out.join("ca");
    cfg.tls = collective_pki::TlsFiles {
        ca: out.join("certs/trust.crt"),
        cert: out.join("certs/coordinator.crt"),
        key: out.join("certs/coordinator.key"),
    };
    if !cfg.federation.gossip_listen.is_empty() {
        cfg.federation.bootstrap = answers
            .iter()
            .flat_map(|(a, _)| a.coordinators.iter())
            .filter(|c| !c.gossip_addr.is_empty() && !c.node.ends_with(&format!("@{}", kit.domain)))
            .map(|c| c.gossip_addr.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        cfg.federation.root_dir = if has_root { out.join("root") } else { PathBuf::new() };
    }
    let config = staging.join("coordinator.toml");
    let text = toml::to_string_pretty(&cfg).map_err(|e| err(format!("cannot write the settings: {e}")))?;
    std::fs::write(&config, text).map_err(io(&config))?;

    // An admin's certificate for `client.toml`.
    ca.issue_to(
        &IssueRequest {
            role: Role::Client,
            name: "admin".into(),
            sans: vec![],
            not_before: None,
            not_after: None,
        },
        &staging.join("admin"),
    )
    .map_err(|e| err(format!("cannot issue the admin's certificate: {e}")))?;
    Ok(Recovered {
        member: kit.domain.clone(),
        config: out.join("coordinator.toml"),
        grpc_listen,
        admin_cert: out.join("admin/admin.crt"),
        admin_key: out.join("admin/admin.key"),
        trust_anchor: out.join("admin/ca.crt"),
        coordinator_name: identity.principal.name.clone(),
        backup_ms: manifest.created_ms,
        entries: info.entries,
        keepers: answers.iter().map(|(a, _)| a.keeper.clone()).collect(),
    })
}

fn free_tcp_port() -> Result<u16, CoordinatorError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| err(format!("no free port: {e}")))
}

fn free_udp_port() -> Result<u16, CoordinatorError> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| err(format!("no free port: {e}")))
}

/// Asks every keeper the kit names for the member's record; returns the answers (with the
/// records decoded), or why none answered.
async fn ask_keepers(kit: &RecoveryKit) -> Result<Vec<(FetchRecoveryResponse, RecoveryRecord)>, CoordinatorError> {
    let tls = TlsIdentity::first_contact_client_config(collective_pki::ALPN_GRPC).map_err(|e| err(e.to_string()))?;
    let name = Principal::new("coordinator", &kit.domain).map_err(|e| err(e.to_string()))?;
    let asks = kit.bootstrap.iter().map(|addr| {
        let tls = tls.clone();
        let name = name.clone();
        async move {
            let channel = collective_rpc::channel_with_config(tls, addr, &name).map_err(|e| format!("{addr}: {e}"))?;
            let now = unix_ms_now();
            let req = FetchRecoveryRequest {
                member: kit.domain.clone(),
                time_ms: now,
                signature: kit.secret.sign_fetch(&kit.domain, now).into(),
            };
            let asked = tokio::time::timeout(ASK_TIMEOUT, BootstrapClient::new(channel.clone()).fetch_recovery(req.clone())).await;
            let answer = match asked {
                Ok(Err(s)) if matches!(s.code(), tonic::Code::Unimplemented | tonic::Code::Unauthenticated) => {
                    // Not a coordinator: a lone member's node.
                    tokio::time::timeout(ASK_TIMEOUT, NodeRecoveryClient::new(channel).fetch_recovery(req)).await
                }
                other => other,
            };
            match answer {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => Err(format!("{addr}: {}", s.message())),
                Err(_) => Err(format!("{addr}: no answer within {ASK_TIMEOUT:?}")),
            }
        }
    });
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for r in futures::future::join_all(asks).await {
        match r {
            Ok(a) => {
                let Some(signed) = &a.record else {
                    failures.push(format!("{}: no record", a.keeper));
                    continue;
                };
                match RecoveryRecord::decode(signed.record.as_ref()) {
                    Ok(rec) if rec.member == kit.domain => answers.push((a, rec)),
                    Ok(rec) => failures.push(format!("{}: a record of {}", a.keeper, rec.member)),
                    Err(e) => failures.push(format!("{}: a malformed record ({e})", a.keeper)),
                }
            }
            Err(e) => failures.push(e),
        }
    }
    if answers.is_empty() {
        return Err(err(format!(
            "no keeper of {}'s recovery record answered: {}. Each `bootstrap:` line must be the gRPC address of another              member's coordinator (its advertise_grpc, e.g. 192.168.2.20:7000) or, for a member on its own, of one of its              nodes, reachable from here; add lines for members that moved",
            kit.domain,
            failures.join("; ")
        )));
    }
    if !failures.is_empty() {
        tracing::warn!("some keepers did not answer: {}", failures.join("; "));
    }
    Ok(answers)
}

/// Fetches backup chunks: from the member's own nodes with tokens it signs itself, from
/// other members' nodes with tokens their coordinators sign.
struct Fetcher {
    identity: TlsIdentity,
    signer: TokenSigner,
    client: Arc<ChunkClient>,
    /// Own nodes' QUIC addresses, by principal.
    own: HashMap<String, String>,
    /// Other members' coordinators: member domain → (principal, gRPC address).
    coordinators: HashMap<String, (Principal, String)>,
}

impl Fetcher {
    fn new(
        identity: TlsIdentity,
        record: &RecoveryRecord,
        answers: &[(FetchRecoveryResponse, RecoveryRecord)],
    ) -> Result<Fetcher, CoordinatorError> {
        let signer = TokenSigner::from_pkcs8(&identity.pkcs8_der(), identity.principal.to_string()).map_err(|e| err(e.to_string()))?;
        let client = Arc::new(ChunkClient::new(&identity).map_err(|e| err(e.to_string()))?);
        let own = record.nodes.iter().map(|n| (n.node.clone(), n.quic_addr.clone())).collect();
        let mut coordinators = HashMap::new();
        for c in answers.iter().flat_map(|(a, _)| a.coordinators.iter()) {
            if let Ok(p) = c.node.parse::<Principal>() {
                coordinators.insert(p.domain.clone(), (p, c.grpc_addr.clone()));
            }
        }
        Ok(Fetcher {
            identity,
            signer,
            client,
            own,
            coordinators,
        })
    }

    /// Where each chunk can be read: own nodes first (with our token), then other members'
    /// (with theirs). Chunks nobody can serve get an empty list.
    async fn locate(&self, chunks: &[(ChunkId, u64, Vec<String>)]) -> Vec<Vec<(NodeTarget, Vec<u8>)>> {
        let me = self.identity.principal.to_string();
        let mut out: Vec<Vec<(NodeTarget, Vec<u8>)>> = vec![Vec::new(); chunks.len()];
        let mut asks: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, (id, size, nodes)) in chunks.iter().enumerate() {
            for n in nodes {
                let m = member_of(n);
                if m == self.identity.principal.domain {
                    let Some(addr) = self.own.get(n).and_then(|a| a.parse().ok()) else {
                        continue;
                    };
                    let token = self
                        .signer
                        .sign(TokenOp::Get, id, std::slice::from_ref(n), &me, *size, GET_TIMEOUT * 10);
                    out[i].push((NodeTarget { node: n.clone(), addr }, token));
                } else {
                    let e = asks.entry(m.to_string()).or_default();
                    if e.last() != Some(&i) {
                        e.push(i);
                    }
                }
            }
        }
        for (member, idx) in asks {
            let Some((principal, addr)) = self.coordinators.get(&member) else {
                continue;
            };
            let Ok(channel) = collective_rpc::channel(&self.identity, addr, principal) else {
                continue;
            };
            for batch in idx.chunks(TOKENS_BATCH) {
                let req = ReadTokensRequest {
                    user: me.clone(),
                    chunks: batch
                        .iter()
                        .map(|&i| ChunkDesc {
                            id: chunks[i].0.0.to_vec().into(),
                            size: chunks[i].1,
                        })
                        .collect(),
                    metadata_backup: true,
                };
                let answer = tokio::time::timeout(ASK_TIMEOUT, FederationClient::new(channel.clone()).read_tokens(req)).await;
                let Ok(Ok(r)) = answer else {
                    tracing::warn!(%member, "no read tokens from there; its copies are skipped");
                    break;
                };
                for (&i, hosted) in batch.iter().zip(r.into_inner().chunks) {
                    for NodeAddr { node, quic_addr, token } in hosted.replicas {
                        if let Ok(addr) = quic_addr.parse() {
                            out[i].push((NodeTarget { node, addr }, token.to_vec()));
                        }
                    }
                }
            }
        }
        out
    }

    /// One chunk, from the first place that has it whole (the client checks its id).
    async fn get(&self, id: &ChunkId, places: &[(NodeTarget, Vec<u8>)]) -> Result<bytes::Bytes, String> {
        let mut errors = Vec::new();
        for (target, token) in places {
            match tokio::time::timeout(GET_TIMEOUT, self.client.get(target, id, token)).await {
                Ok(Ok(b)) => return Ok(b),
                Ok(Err(e)) => errors.push(format!("{}: {e}", target.node)),
                Err(_) => errors.push(format!("{}: no answer", target.node)),
            }
        }
        Err(if errors.is_empty() {
            format!("chunk {} has no reachable copy", id.short())
        } else {
            format!("chunk {} could not be read ({})", id.short(), errors.join("; "))
        })
    }

    /// Writes a blob's plaintext to `path`, chunk by chunk, checking its length and hash.
    async fn blob_to_file(&self, what: &str, blob: &BackupBlob, path: &Path) -> Result<(), String> {
        let mut chunks = Vec::with_capacity(blob.chunks.len());
        for c in &blob.chunks {
            let id = ChunkId::from_slice(&c.id).ok_or_else(|| format!("{what} names a malformed chunk id"))?;
            chunks.push((id, c.size, c.nodes.clone()));
        }
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?);
        let mut hasher = blake3::Hasher::new();
        let mut length = 0u64;
        // Tokens are asked for a batch at a time, just before its chunks are read: a large
        // store over a slow link would outlast tokens asked for all at once.
        for (batch, descs) in chunks.chunks(TOKENS_BATCH).zip(blob.chunks.chunks(TOKENS_BATCH)) {
            let places = self.locate(batch).await;
            for ((id, _, _), (c, places)) in batch.iter().zip(descs.iter().zip(places)) {
                let sealed = self.get(id, &places).await.map_err(|e| format!("{what}: {e}"))?;
                let plain = open_chunk(c, sealed).map_err(|e| format!("{what}: chunk {}: {e}", id.short()))?;
                hasher.update(&plain);
                length += plain.len() as u64;
                file.write_all(&plain)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
        }
        file.flush().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if length != blob.length || hasher.finalize().as_bytes().as_slice() != blob.hash.as_ref() {
            return Err(format!("{what} does not match its hash once put together: it was altered"));
        }
        Ok(())
    }

    /// Fetches and checks everything `head` names, then builds the store in `data_dir`.
    async fn restore(
        &self,
        kit: &RecoveryKit,
        head: &BackupHead,
        work: &Path,
        data_dir: &Path,
    ) -> Result<(BackupManifest, collective_meta::ExportInfo), String> {
        let when = time_str(head.created_ms);
        let id = ChunkId::from_slice(&head.manifest).ok_or("the record names a malformed manifest id")?;
        let places = self.locate(&[(id, head.manifest_size, head.manifest_nodes.clone())]).await;
        let sealed = self
            .get(&id, &places[0])
            .await
            .map_err(|e| format!("the manifest of the backup of {when}: {e}"))?;
        let plain = kit
            .secret
            .open_blob(MANIFEST_PURPOSE, &sealed)
            .ok_or_else(|| format!("the manifest of the backup of {when} does not open with the kit's secret: it was altered"))?;
        let manifest =
            BackupManifest::decode(plain.as_slice()).map_err(|e| format!("the manifest of the backup of {when} is malformed: {e}"))?;
        if manifest.member != kit.domain || manifest.seq != head.seq {
            return Err(format!("the manifest of the backup of {when} is not the one the record names"));
        }
        let snapshot = manifest.snapshot.as_ref().ok_or("the manifest names no snapshot")?;
        let snap_path = work.join("snapshot");
        self.blob_to_file("the snapshot", snapshot, &snap_path).await?;
        let mut segs = Vec::new();
        for (i, s) in manifest.segments.iter().enumerate() {
            let p = work.join(format!("segment-{i}"));
            self.blob_to_file(&format!("change segment {}", i + 1), s, &p).await?;
            segs.push(p);
        }
        let (snap, data) = (snap_path.clone(), data_dir.to_path_buf());
        let info = tokio::task::spawn_blocking(move || -> Result<collective_meta::ExportInfo, String> {
            let open = |p: &Path| std::fs::File::open(p).map(|f| std::io::BufReader::with_capacity(1 << 20, f));
            let snapshot = open(&snap).map_err(|e| e.to_string())?;
            let segments = segs
                .iter()
                .map(|p| open(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            collective_meta::import_chain(&data, snapshot, segments).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok((manifest, info))
    }
}

/// A backup chunk opened with its seal.
fn open_chunk(c: &BackupChunk, sealed: bytes::Bytes) -> Result<bytes::Bytes, String> {
    collective_pki::sealing::open(&c.seal, sealed).map_err(|e| e.to_string())
}

/// The recovered coordinator starts knowing the backup it came from: its chunks are
/// released once that backup is no longer kept, and its next backup is a fresh snapshot.
fn seed_backup_state(data_dir: &Path, domain: &str, head: &BackupHead, manifest: &BackupManifest) -> Result<(), CoordinatorError> {
    let meta = collective_meta::MetaStore::open(data_dir)?;
    let guest = collective_meta::backup_guest(domain);
    let mut chunks: Vec<BackupChunk> = crate::metabackup::manifest_chunks(manifest).cloned().collect();
    chunks.push(BackupChunk {
        id: head.manifest.clone(),
        size: head.manifest_size,
        seal: Default::default(),
        nodes: head.manifest_nodes.clone(),
    });
    for c in &chunks {
        let Some(id) = ChunkId::from_slice(&c.id) else { continue };
        meta.backup_put(&crate::metabackup::chunk_key(&id), c.encode_to_vec())?;
        // Copies on our own surviving nodes are known, not "unknown chunks".
        for node in c.nodes.iter().filter(|n| member_of(n) == domain) {
            let place = |_: &ChunkId, _: u64, _: &[String], prefer: &str| Ok(prefer.to_string());
            meta.host_chunks(&guest, &[(id, c.size)], std::slice::from_ref(node), u64::MAX, &place)?;
        }
    }
    if let Some(id) = ChunkId::from_slice(&head.manifest) {
        meta.backup_put(&crate::metabackup::manifest_key(&id), manifest.encode_to_vec())?;
    }
    let progress = BackupProgress {
        heads: vec![head.clone()],
        ..Default::default()
    };
    meta.backup_put(crate::metabackup::PROGRESS_KEY, progress.encode_to_vec())?;
    meta.flush_blocking()?;
    Ok(())
}
