//! The `Bootstrap` service: reachable without a certificate, because the invite code is the
//! credential. A new member gets its CA (made from its own key) signed by the federation
//! root; a new user gets a client certificate for its own key, and the invite's grants.

use std::sync::Arc;

use collective_core::{Grant, Principal, Rights, Role, Subject, unix_ms_now, validate_name};
use collective_meta::{InviteKind, InviteRefusal};
use collective_pki::{InviteCode, InviteCodeKind, IssueRequest, TokenVerifier};
use collective_proto::v1::bootstrap_server::Bootstrap;
use collective_proto::v1::{JoinMemberRequest, JoinMemberResponse, RedeemInviteRequest, RedeemInviteResponse};
use tonic::{Request, Response, Status};

use crate::admin::grant_info;
use crate::state::{State, meta_status};

/// How long certificates of redeemed user invites are valid.
const USER_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 86400);

pub struct BootstrapService {
    pub state: Arc<State>,
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
        let r = self.join_member_inner(req).await;
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
        let r = self.redeem_invite_inner(req).await;
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
}

impl BootstrapService {
    async fn join_member_inner(&self, req: Request<JoinMemberRequest>) -> Result<Response<JoinMemberResponse>, Status> {
        let q = req.into_inner();
        let invite = self.check_code(&q.code, InviteCodeKind::Member)?;
        let fed = self
            .state
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
            .use_invite(&invite.id, &domain, |rec| match &rec.kind {
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
        let used = self.state.meta.use_invite(&invite.id, &who, |_| Ok(())).map_err(meta_status)?;
        let rec = used.map_err(|r| self.refused(r))?;
        if !self.state.meta.claim_principal(&who, &invite.id).map_err(meta_status)? {
            return Err(Status::already_exists(format!("{principal} already exists; choose another --name")));
        }
        let InviteKind::User { grants } = &rec.kind else {
            return Err(Status::invalid_argument("this invite is not for a user"));
        };
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
        let now = unix_ms_now();
        let mut infos = Vec::new();
        for (path, bits) in grants {
            let g = Grant {
                path: path.clone(),
                subject: Subject::Principal(principal.clone()),
                rights: Rights(*bits),
                until_ms: 0,
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
