//! The `Bootstrap` service: reachable without a certificate, because the invite code is the
//! credential. A new member gets its CA (made from its own key) signed by the federation
//! root; a new user gets a client certificate for its own key, and the invite's grants.

use std::sync::Arc;

use collective_core::{Grant, Principal, Rights, Role, Subject, unix_ms_now, validate_name};
use collective_meta::{InviteKind, InviteRecord, InviteRefusal};
use collective_pki::{InviteCode, InviteCodeKind, IssueRequest, PkiError, TokenVerifier};
use collective_proto::v1::bootstrap_server::Bootstrap;
use collective_proto::v1::{JoinMemberRequest, JoinMemberResponse, RedeemInviteRequest, RedeemInviteResponse};
use tonic::{Request, Response, Status};

use crate::admin::grant_info;
use crate::error::Error;
use crate::state::{State, meta_status};

/// How long certificates of redeemed user invites are valid.
const USER_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 86400);

/// Failed bootstrap attempts allowed from one address within [`ATTEMPT_WINDOW`].
pub const MAX_FAILURES_PER_ADDRESS: u32 = 10;
/// Failed bootstrap attempts allowed from all addresses together within [`ATTEMPT_WINDOW`]
/// (so that many addresses cannot share the guessing).
pub const MAX_FAILURES: u32 = 100;
pub const ATTEMPT_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

pub struct BootstrapService {
    pub state: Arc<State>,
    pub attempts: Attempts,
}

impl BootstrapService {
    pub fn new(state: Arc<State>) -> BootstrapService {
        BootstrapService {
            state,
            attempts: Attempts::default(),
        }
    }
}

/// Counts failed attempts in fixed windows, per source address and in all. Invite codes
/// are signed, so guessing one is hopeless anyway; the limit keeps a guesser from costing
/// us work and fills the audit log with a refusal instead.
#[derive(Default)]
pub struct Attempts {
    inner: std::sync::Mutex<AttemptsInner>,
}

#[derive(Default)]
struct AttemptsInner {
    by_addr: std::collections::HashMap<std::net::IpAddr, Window>,
    all: Window,
}

#[derive(Clone, Copy, Default)]
struct Window {
    start: Option<std::time::Instant>,
    failures: u32,
}

impl Window {
    /// The failures counted in the window that holds `now` (a new window starts empty).
    fn current(&mut self, now: std::time::Instant) -> &mut u32 {
        if self.start.is_none_or(|s| now.duration_since(s) >= ATTEMPT_WINDOW) {
            *self = Window {
                start: Some(now),
                failures: 0,
            };
        }
        &mut self.failures
    }

    fn wait(&self, now: std::time::Instant) -> u64 {
        self.start
            .map(|s| ATTEMPT_WINDOW.saturating_sub(now.duration_since(s)).as_secs().max(1))
            .unwrap_or(1)
    }
}

impl Attempts {
    /// Refuses an attempt from `addr` while it, or everyone together, failed too often.
    pub fn check(&self, addr: Option<std::net::IpAddr>) -> Result<(), Status> {
        let now = std::time::Instant::now();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if *g.all.current(now) >= MAX_FAILURES {
            return Err(Status::resource_exhausted(format!(
                "too many failed invite attempts on this coordinator; it accepts invite codes again in {} s",
                g.all.wait(now)
            )));
        }
        if let Some(ip) = addr
            && let Some(w) = g.by_addr.get_mut(&ip)
            && *w.current(now) >= MAX_FAILURES_PER_ADDRESS
        {
            return Err(Status::resource_exhausted(format!(
                "too many failed invite attempts from {ip}; wait {} s, and check the code you were sent",
                w.wait(now)
            )));
        }
        Ok(())
    }

    /// Counts a failed attempt from `addr`.
    pub fn failed(&self, addr: Option<std::net::IpAddr>) {
        let now = std::time::Instant::now();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *g.all.current(now) += 1;
        if let Some(ip) = addr {
            if g.by_addr.len() > 10_000 {
                g.by_addr
                    .retain(|_, w| w.start.is_some_and(|s| now.duration_since(s) < ATTEMPT_WINDOW));
            }
            *g.by_addr.entry(ip).or_default().current(now) += 1;
        }
    }

    /// Runs `f` unless `addr` is locked out; counts its failure.
    async fn guard<T>(
        &self,
        addr: Option<std::net::IpAddr>,
        f: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        self.check(addr)?;
        let r = f.await;
        if r.is_err() {
            self.failed(addr);
        }
        r
    }
}

impl BootstrapService {
    fn check_code(&self, code: &str, want: InviteCodeKind) -> Result<InviteCode, Status> {
        let verifier = TokenVerifier::new(&self.state.signer.public_key()).map_err(|e| Status::internal(e.to_string()))?;
        let invite = InviteCode::verify(code, &verifier).map_err(|e| {
            self.state.metrics.denials.inc();
            Status::permission_denied(e.to_string())
        })?;
        if invite.kind != want {
            let what = match invite.kind {
                InviteCodeKind::Member => "a new member (`collective member join`)",
                InviteCodeKind::User => "a user (`collective invite redeem`)",
            };
            return Err(Status::invalid_argument(format!("this invite is for {what}")));
        }
        Ok(invite)
    }

    fn refused(&self, r: InviteRefusal) -> Status {
        self.state.metrics.denials.inc();
        Status::permission_denied(r.to_string())
    }
}

#[tonic::async_trait]
impl Bootstrap for BootstrapService {
    async fn join_member(&self, req: Request<JoinMemberRequest>) -> Result<Response<JoinMemberResponse>, Status> {
        // Nobody is authenticated yet: the entry names who the caller asked to become.
        let who = format!("{} (by invite)", req.get_ref().name);
        let addr = req.remote_addr().map(|a| a.ip());
        let r = self.attempts.guard(addr, self.join_member_inner(req)).await;
        self.state.audit(&who, "member-join", &who, &r, |r| {
            format!("joined {}", r.get_ref().federation_domain)
        });
        if r.is_ok() {
            self.state.events.emit(
                "invite-redeemed",
                &who,
                crate::events::Severity::Info,
                format!("an invite was redeemed: member {who} joined"),
            );
        }
        r
    }

    async fn redeem_invite(&self, req: Request<RedeemInviteRequest>) -> Result<Response<RedeemInviteResponse>, Status> {
        // Nobody is authenticated yet: the entry names who the caller asked to become.
        let who = format!("{} (by invite)", req.get_ref().name);
        let addr = req.remote_addr().map(|a| a.ip());
        let r = self.attempts.guard(addr, self.redeem_invite_inner(req)).await;
        self.state
            .audit(&who, "invite-redeem", &who, &r, |r| format!("now {}", r.get_ref().principal));
        if r.is_ok() {
            self.state.events.emit(
                "invite-redeemed",
                &who,
                crate::events::Severity::Info,
                format!("an invite was redeemed: user {who} joined"),
            );
        }
        r
    }

    async fn fetch_recovery(
        &self,
        req: Request<collective_proto::v1::FetchRecoveryRequest>,
    ) -> Result<Response<collective_proto::v1::FetchRecoveryResponse>, Status> {
        let addr = req.remote_addr().map(|a| a.ip());
        let member: String = req.get_ref().member.chars().take(253).collect();
        let r = self.attempts.guard(addr, self.state.fetch_recovery(req)).await;
        let who = format!("holder of {member}'s recovery kit");
        self.state
            .audit(&who, "recovery-fetch", &member, &r, |_| "recovery record handed out".to_string());
        r
    }
}

impl BootstrapService {
    async fn join_member_inner(&self, req: Request<JoinMemberRequest>) -> Result<Response<JoinMemberResponse>, Status> {
        let q = req.into_inner();
        let invite = self.check_code(&q.code, InviteCodeKind::Member)?;
        let fed = self
            .state
            .links
            .fed()
            .ok_or_else(|| Status::failed_precondition("this coordinator is not part of a federation"))?;
        let root = fed
            .root
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this coordinator no longer holds the federation root"))?;
        validate_name(&q.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let domain = collective_pki::member_domain(&q.name, &fed.domain);
        if domain == self.state.domain || fed.gossip.state_of(&domain).is_some() {
            return Err(Status::already_exists(format!("{domain} is already a member of the federation")));
        }
        let name = q.name.clone();
        let used = self
            .state
            .meta
            .use_invite(&invite.id, &domain, self.state.clock.now_ms(), |rec| match &rec.kind {
                InviteKind::Member { name: n } if *n == name => Ok(()),
                InviteKind::Member { .. } => Err(InviteRefusal::WrongKind("another member name")),
                InviteKind::User { .. } => Err(InviteRefusal::WrongKind("a user")),
            })
            .map_err(meta_status)?;
        used.map_err(|r| self.refused(r))?;
        let member_ca_pem = root
            .sign_member(&q.csr_pem, &q.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.state.meta.flush().await.map_err(meta_status)?;
        self.state.metrics.invites_redeemed.inc();
        let mut gossip_peers = vec![fed.gossip_addr.clone()];
        gossip_peers.extend(fed.gossip.peers().into_iter().filter_map(|p| p.gossip_addr.map(|a| a.to_string())));
        tracing::info!(member = %domain, "new member joined the federation");
        Ok(Response::new(JoinMemberResponse {
            member_ca_pem,
            root_pem: root.cert_pem().to_string(),
            federation_domain: fed.domain.clone(),
            gossip_peers,
        }))
    }

    async fn redeem_invite_inner(&self, req: Request<RedeemInviteRequest>) -> Result<Response<RedeemInviteResponse>, Status> {
        let q = req.into_inner();
        let invite = self.check_code(&q.code, InviteCodeKind::User)?;
        let ca = self
            .state
            .ca
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this coordinator cannot sign certificates (no ca_dir in its config)"))?;
        let principal = Principal::new(&q.name, &self.state.domain).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.state.is_admin(&principal) || ["coordinator", "admin"].contains(&q.name.as_str()) || q.name.starts_with("node-") {
            return Err(Status::already_exists(format!("{principal} is reserved; choose another --name")));
        }
        let who = principal.to_string();
        // The certificate is made first: a bad signing request must not use up the invite.
        let issue = IssueRequest {
            role: Role::Client,
            name: q.name.clone(),
            sans: vec![],
            not_before: None,
            not_after: Some(time::OffsetDateTime::now_utc() + USER_CERT_VALIDITY),
        };
        let (_, chain) = ca
            .sign_csr(&q.csr_pem, &issue)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let state = self.state.clone();
        let names = ca.names();
        let (name, who2, id) = (q.name.clone(), who.clone(), invite.id);
        // Under the name register's lock: a name any certificate of ours ever carried is
        // refused before the invite is touched, and the name is claimed only once the
        // invite was used. The inviter must still hold what the invite gives; the grants
        // last no longer than the inviter's own rights.
        let redeemed = tokio::task::spawn_blocking(move || {
            names.claim_with(&name, || -> Result<(InviteRecord, Vec<u64>), Error> {
                if state.meta.principal_claimed(&who2)? {
                    return Err(Error::Pki(PkiError::NameTaken {
                        principal: who2.clone(),
                        suggestion: collective_pki::free_name(&name, &Default::default()),
                    }));
                }
                // Judged before the invite is used, outside its transaction (which must not
                // read other tables); an invite's grants never change once made.
                let mut limits = Vec::new();
                if let Some(rec) = state.meta.invite(&id)?
                    && let InviteKind::User { grants } = &rec.kind
                {
                    let by = &rec.created_by;
                    let inviter: Principal = by.parse().map_err(|_| Error::Invite(InviteRefusal::Inviter(by.clone())))?;
                    for (path, bits) in grants {
                        let path = collective_core::validate_path(path).map_err(collective_meta::MetaError::from)?;
                        let limit = state
                            .access
                            .share_limit(&inviter, &path, Rights(*bits))
                            .map_err(|e| Error::Invite(InviteRefusal::Inviter(e.to_string())))?;
                        limits.push(limit);
                    }
                }
                let used = state.meta.use_invite(&id, &who2, state.clock.now_ms(), |rec| match &rec.kind {
                    InviteKind::User { .. } => Ok(()),
                    InviteKind::Member { .. } => Err(InviteRefusal::WrongKind("a new member")),
                })?;
                let rec = used.map_err(Error::Invite)?;
                state.meta.claim_principal(&who2, &id)?;
                Ok((rec, limits))
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let (rec, limits) = redeemed.map_err(|e| {
            if matches!(e, Error::Invite(_)) {
                self.state.metrics.denials.inc();
            }
            Status::from(e)
        })?;
        let InviteKind::User { grants } = &rec.kind else {
            return Err(Status::invalid_argument("this invite is not for a user"));
        };
        if limits.len() != grants.len() {
            return Err(Status::internal("the invite's grants were not all judged; nothing was granted"));
        }
        let now = unix_ms_now();
        let mut infos = Vec::new();
        for ((path, bits), until_ms) in grants.iter().zip(limits) {
            let g = Grant {
                path: path.clone(),
                subject: Subject::Principal(principal.clone()),
                rights: Rights(*bits),
                until_ms,
                granted_by: rec.created_by.clone(),
                granted_ms: now,
            };
            self.state.meta.put_grant(&g).map_err(meta_status)?;
            infos.push(grant_info(&g));
        }
        self.state.meta.flush().await.map_err(meta_status)?;
        self.state.metrics.invites_redeemed.inc();
        tracing::info!(user = %principal, "user invite redeemed");
        Ok(Response::new(RedeemInviteResponse {
            cert_chain_pem: chain,
            trust_pem: ca.trust_anchor_pem().to_string(),
            principal: who,
            coordinator: self.state.advertise_grpc.clone(),
            coordinator_principal: self.state.principal.clone(),
            grants: infos,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_invite_attempts_lock_out_one_address_then_everyone() {
        let a = Attempts::default();
        let (one, two) = (Some("10.0.0.1".parse().unwrap()), Some("10.0.0.2".parse().unwrap()));
        for _ in 0..MAX_FAILURES_PER_ADDRESS {
            assert!(a.check(one).is_ok());
            a.failed(one);
        }
        let err = a.check(one).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("10.0.0.1"), "{}", err.message());
        assert!(a.check(two).is_ok(), "another address is not locked out");
        for i in 0..(MAX_FAILURES - MAX_FAILURES_PER_ADDRESS) {
            a.failed(Some(std::net::IpAddr::from([10, 1, (i / 200) as u8, (i % 200) as u8])));
        }
        let err = a.check(two).unwrap_err();
        assert!(err.message().contains("on this coordinator"), "{}", err.message());
    }
}
