//! The `Admin` service: datastores, grants, invites and the federation view, for clients.
//! Calls about another member's datastore are forwarded to its owner, which decides.

use std::sync::Arc;
use std::time::Duration;

use collective_core::{Grant, Principal, RemotePath, Rights, Strategy, Subject, parse_grant_spec, unix_ms_now, validate_path};
use collective_meta::{DatastoreRecord, InviteKind, InviteRecord};
use collective_pki::{InviteCode, InviteCodeKind, TokenVerifier};
use collective_proto::v1::admin_client::AdminClient;
use collective_proto::v1::admin_server::Admin;
use collective_proto::v1::{
    CreateDatastoreRequest, DatastoreInfo, GenerateInviteRequest, GenerateInviteResponse, GrantInfo, GrantRequest, InviteInfo,
    ListDatastoresRequest, ListDatastoresResponse, ListInvitesRequest, ListInvitesResponse, MemberHealth, MemberRemoval, PathRequest,
    PeerInfo, PeersRequest, PeersResponse, PlacementStrategy, RemoveMemberRequest, RevokeInviteRequest, RevokeInviteResponse,
    RevokeRequest, RevokeResponse,
};
use tonic::{Request, Response, Status};

use crate::access::top_of;
use crate::state::{State, meta_status};

const MAX_REPLICAS: u32 = 8;
const MAX_INVITE_USES: u32 = 10_000;
/// How long a datastore listing waits for another member to say what the caller may do on
/// its datastores; one that has not answered by then shows as unreachable, so a dead
/// member does not stall `collective datastore ls`.
const OWNER_RIGHTS_TIMEOUT: Duration = Duration::from_secs(2);
/// What a listing says instead of the rights another member did not tell in time.
/// Why another member's datastores were listed without the caller's rights there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unasked {
    Refused,
    Unreachable,
}

impl Unasked {
    /// The words in `my_rights_unknown`.
    fn as_str(self) -> &'static str {
        match self {
            Unasked::Refused => "member refused to tell",
            Unasked::Unreachable => "member unreachable",
        }
    }
}

pub struct AdminService {
    pub state: Arc<State>,
}

pub fn grant_info(g: &Grant) -> GrantInfo {
    GrantInfo {
        path: g.path.clone(),
        subject: g.subject.to_string(),
        rights: g.rights.to_string(),
        until_ms: g.until_ms as i64,
        granted_by: g.granted_by.clone(),
        granted_ms: g.granted_ms as i64,
    }
}

fn path_arg(p: &str) -> Result<RemotePath, Status> {
    validate_path(p).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// An invite as people see it, its state at `now` (ms since the epoch).
pub fn invite_info(r: &InviteRecord, now: u64) -> InviteInfo {
    let (kind, member, grants) = match &r.kind {
        InviteKind::Member { name } => ("member", name.clone(), vec![]),
        InviteKind::User { grants } => (
            "user",
            String::new(),
            grants.iter().map(|(p, bits)| format!("{p}:{}", Rights(*bits))).collect(),
        ),
    };
    let state = if r.revoked {
        "revoked"
    } else if now >= r.expires_ms {
        "expired"
    } else if r.uses >= r.max_uses {
        "used"
    } else {
        "active"
    };
    InviteInfo {
        id: hex::encode(r.id),
        kind: kind.into(),
        member,
        grants,
        created_ms: r.created_ms as i64,
        expires_ms: r.expires_ms as i64,
        max_uses: r.max_uses,
        uses: r.uses,
        revoked: r.revoked,
        created_by: r.created_by.clone(),
        redeemed_by: r.redeemed_by.clone(),
        state: state.into(),
    }
}

impl AdminService {
    fn datastore_info(&self, d: &DatastoreRecord, who: &Principal) -> Result<DatastoreInfo, Status> {
        let root = format!("/{}", d.name);
        let rights = self.state.rights(who, &root)?;
        let grants = if rights.contains(Rights::SHARE) {
            let all = self.state.meta.grants().map_err(meta_status)?;
            all.iter()
                .filter(|g| g.path == root || g.path.starts_with(&format!("{root}/")))
                .map(grant_info)
                .collect()
        } else {
            vec![]
        };
        Ok(DatastoreInfo {
            path: root,
            owner: d.owner.clone(),
            member: self.state.domain.clone(),
            strategy: PlacementStrategy::from(d.strategy) as i32,
            replicas: d.replicas,
            created_ms: d.created_ms as i64,
            grants,
            my_rights: rights.to_string(),
            encrypted: d.strategy.encrypted(),
            my_rights_unknown: String::new(),
        })
    }

    /// The owner's Admin service, when `path` is in another member's datastore.
    async fn remote(&self, path: &RemotePath) -> Result<Option<AdminClient<tonic::transport::Channel>>, Status> {
        let Some(top) = top_of(path.as_str()) else { return Ok(None) };
        match self.state.remote_owner(top)? {
            Some(member) => Ok(Some(AdminClient::new(self.state.links.channel(&member)?))),
            None => Ok(None),
        }
    }

    /// `member`'s own datastores as it lists them for `who` (with `who`'s rights there), or
    /// why it could not tell. Only the datastores `who` may see come back.
    async fn owner_listing(&self, member: &str, who: &Principal) -> Result<Vec<DatastoreInfo>, Unasked> {
        let why = |s: &Status| {
            tracing::debug!(member, "could not ask for {who}'s rights on its datastores: {}", s.message());
            match s.code() {
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Unasked::Refused,
                _ => Unasked::Unreachable,
            }
        };
        let channel = self.state.links.channel(member).map_err(|e| why(&Status::from(e)))?;
        let mut req = collective_rpc::forwarded(ListDatastoresRequest {}, who);
        req.set_timeout(OWNER_RIGHTS_TIMEOUT);
        match tokio::time::timeout(OWNER_RIGHTS_TIMEOUT, AdminClient::new(channel).list_datastores(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner().datastores.into_iter().filter(|d| d.member == member).collect()),
            Ok(Err(s)) => Err(why(&s)),
            Err(_) => Err(why(&Status::deadline_exceeded("no answer in time"))),
        }
    }

    /// The kit: only for this member's admins, since it can bring the member back.
    async fn recovery_kit_inner(&self, who: &Principal) -> Result<String, Status> {
        if !self.state.is_admin(who) {
            self.state.metrics.denials.inc();
            return Err(Status::permission_denied(format!(
                "{who} is not an admin of {}; the recovery kit can bring the member back, so only its admins may write it",
                self.state.domain
            )));
        }
        let ca = self.state.ca.as_ref().ok_or_else(|| {
            Status::failed_precondition("this coordinator runs without its member CA (no ca_dir); the recovery secret lives beside the CA")
        })?;
        let (federation, bootstrap) = match self.state.links.fed() {
            Some(fed) => {
                let federation = self.state.domain.split_once('.').map(|(_, f)| f.to_string()).unwrap_or_default();
                let peers: Vec<String> = fed
                    .gossip
                    .states()
                    .into_iter()
                    .filter(|s| s.member != self.state.domain && !s.grpc_addr.is_empty())
                    .map(|s| s.grpc_addr)
                    .collect();
                (federation, peers)
            }
            // A member on its own comes back from its nodes.
            None => {
                let mut nodes: Vec<String> = self.state.nodes.lock().values().map(|e| e.grpc_addr.clone()).collect();
                nodes.sort();
                (String::new(), nodes)
            }
        };
        let facts = collective_pki::KitFacts {
            member: ca.member.clone(),
            domain: ca.domain.clone(),
            federation,
            bootstrap,
        };
        let dir = ca.dir.clone();
        tokio::task::spawn_blocking(move || collective_pki::recovery_kit(&dir, &facts))
            .await
            .map_err(|e| Status::internal(format!("worker failed: {e}")))?
            .map_err(|e| Status::internal(format!("cannot write the recovery kit: {e}")))
    }

    fn local_datastore(&self, path: &RemotePath) -> Result<DatastoreRecord, Status> {
        let top = top_of(path.as_str()).ok_or_else(|| Status::invalid_argument("the root / is not a datastore"))?;
        self.state
            .meta
            .datastore(top)
            .map_err(meta_status)?
            .ok_or_else(|| Status::not_found(format!("/{top} is not a datastore (`collective datastore ls` lists them)")))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_datastore(&self, req: Request<CreateDatastoreRequest>) -> Result<Response<DatastoreInfo>, Status> {
        let who = self.state.end_user(&req)?;
        let target = req.get_ref().path.clone();
        let r = self.create_datastore_inner(&who, req).await;
        self.state.audit_failure(&who.to_string(), "datastore-create", &target, &r);
        if let Err(e) = &r {
            crate::metadata::log_failure(&who.to_string(), "datastore-create", &target, e);
        }
        r
    }

    async fn list_datastores(&self, req: Request<ListDatastoresRequest>) -> Result<Response<ListDatastoresResponse>, Status> {
        let who = self.state.end_user(&req)?;
        let mut out = Vec::new();
        for d in self.state.meta.datastores().map_err(meta_status)? {
            if self.state.can_see(&who, &d.name)? {
                out.push(self.datastore_info(&d, &who)?);
            }
        }
        // Other members' catalogs, as gossip carries them. Their owners decide access, so
        // the caller's rights there come from asking each owner, all at once. Only for our
        // own users: a listing forwarded by another member does not fan out again.
        if let Some(fed) = self.state.links.fed() {
            let members: Vec<_> = fed
                .gossip
                .states()
                .into_iter()
                .filter(|s| s.member != self.state.domain && !s.datastores.is_empty())
                .collect();
            let ask = who.domain == self.state.domain;
            let who = &who;
            let answers = futures::future::join_all(members.iter().map(|s| async move {
                if ask {
                    Some(self.owner_listing(&s.member, who).await)
                } else {
                    None
                }
            }))
            .await;
            for (s, answer) in members.iter().zip(answers) {
                for d in &s.datastores {
                    let mut info = DatastoreInfo {
                        path: format!("/{}", d.name),
                        owner: d.owner.clone(),
                        member: s.member.clone(),
                        strategy: d.strategy,
                        replicas: d.replicas,
                        encrypted: d.strategy().known().is_some_and(|s| s.encrypted()),
                        ..Default::default()
                    };
                    match &answer {
                        Some(Ok(theirs)) => match theirs.iter().find(|t| t.path == info.path) {
                            Some(t) => info = t.clone(),
                            // The owner lists a datastore only to whoever holds a grant in it.
                            None => info.my_rights = Rights::NONE.to_string(),
                        },
                        Some(Err(why)) => info.my_rights_unknown = why.as_str().to_string(),
                        None => {}
                    }
                    out.push(info);
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Response::new(ListDatastoresResponse { datastores: out }))
    }

    async fn datastore_details(&self, req: Request<PathRequest>) -> Result<Response<DatastoreInfo>, Status> {
        let who = self.state.end_user(&req)?;
        let path = path_arg(&req.get_ref().path)?;
        if let Some(mut peer) = self.remote(&path).await? {
            return peer.datastore_details(collective_rpc::forwarded(req.into_inner(), &who)).await;
        }
        let d = self.local_datastore(&path)?;
        if !self.state.can_see(&who, &d.name)? {
            self.state.require(&who, &path, Rights::READ)?;
        }
        Ok(Response::new(self.datastore_info(&d, &who)?))
    }

    async fn grant(&self, req: Request<GrantRequest>) -> Result<Response<GrantInfo>, Status> {
        let who = self.state.end_user(&req)?;
        let target = req.get_ref().path.clone();
        let r = self.grant_inner(&who, req).await;
        self.state.audit_failure(&who.to_string(), "grant", &target, &r);
        if let Err(e) = &r {
            crate::metadata::log_failure(&who.to_string(), "grant", &target, e);
        }
        r
    }

    async fn revoke(&self, req: Request<RevokeRequest>) -> Result<Response<RevokeResponse>, Status> {
        let who = self.state.end_user(&req)?;
        let target = req.get_ref().path.clone();
        let r = self.revoke_inner(&who, req).await;
        self.state.audit_failure(&who.to_string(), "revoke", &target, &r);
        if let Err(e) = &r {
            crate::metadata::log_failure(&who.to_string(), "revoke", &target, e);
        }
        r
    }

    async fn generate_invite(&self, req: Request<GenerateInviteRequest>) -> Result<Response<GenerateInviteResponse>, Status> {
        let who = self.state.end_user(&req)?;
        let target = if req.get_ref().member.is_empty() {
            req.get_ref().grants.join(" ")
        } else {
            format!("member {}", req.get_ref().member)
        };
        let r = self.generate_invite_inner(&who, req).await;
        self.state.audit(
            &who.to_string(),
            "invite",
            &target,
            &r.as_ref().map(|r| r.get_ref()).map_err(Clone::clone),
            |r| {
                r.invite
                    .as_ref()
                    .map(|i| format!("invite {} for {} use(s)", i.id, i.max_uses))
                    .unwrap_or_default()
            },
        );
        r
    }

    async fn list_invites(&self, req: Request<ListInvitesRequest>) -> Result<Response<ListInvitesResponse>, Status> {
        let who = self.state.end_user(&req)?;
        let admin = self.state.is_admin(&who);
        let me = who.to_string();
        let invites = self
            .state
            .meta
            .invites()
            .map_err(meta_status)?
            .iter()
            .filter(|r| admin || r.created_by == me)
            .map(|r| invite_info(r, self.state.clock.now_ms()))
            .collect();
        Ok(Response::new(ListInvitesResponse { invites }))
    }

    async fn revoke_invite(&self, req: Request<RevokeInviteRequest>) -> Result<Response<RevokeInviteResponse>, Status> {
        let who = self.state.end_user(&req)?;
        let target = invite_target(&req.get_ref().code_or_id);
        let r = self.revoke_invite_inner(&who, req).await;
        self.state.audit(
            &who.to_string(),
            "invite-revoke",
            &target,
            &r.as_ref().map(|r| r.get_ref()).map_err(Clone::clone),
            |r| {
                if r.revoked {
                    "revoked".into()
                } else {
                    "was already revoked".into()
                }
            },
        );
        r
    }

    async fn recovery_kit(
        &self,
        req: Request<collective_proto::v1::RecoveryKitRequest>,
    ) -> Result<Response<collective_proto::v1::RecoveryKitResponse>, Status> {
        let who = self.state.end_user(&req)?;
        let r = self.recovery_kit_inner(&who).await;
        self.state
            .audit(&who.to_string(), "recovery-kit", &self.state.domain, &r, |_| String::new());
        r.map(|kit| Response::new(collective_proto::v1::RecoveryKitResponse { kit }))
    }

    async fn remove_member(&self, req: Request<RemoveMemberRequest>) -> Result<Response<MemberRemoval>, Status> {
        let who = self.state.end_user(&req)?;
        let q = req.into_inner();
        let r = if self.state.is_admin(&who) {
            let state = self.state.clone();
            let q2 = q.clone();
            tokio::task::spawn_blocking(move || state.remove_member(&q2))
                .await
                .map_err(|e| Status::internal(e.to_string()))
                .and_then(|r| r.map_err(Status::from))
        } else {
            self.state.metrics.denials.inc();
            Err(Status::permission_denied(format!(
                "only an admin of {} may remove members",
                self.state.domain
            )))
        };
        self.state.audit(&who.to_string(), "member-remove", &q.member, &r, |r| {
            format!("removed: {}", r.reason)
        });
        r.map(Response::new)
    }

    async fn peers(&self, req: Request<PeersRequest>) -> Result<Response<PeersResponse>, Status> {
        self.state.end_user(&req)?;
        let fed = self.state.links.fed().ok_or_else(|| {
            Status::failed_precondition("this coordinator is not part of a federation (its config has no [federation] gossip_listen)")
        })?;
        let states = fed.gossip.states();
        let summary = |member: &str, p: &mut PeerInfo| {
            if let Some(s) = states.iter().find(|s| s.member == member) {
                p.coordinator = s.coordinator.clone();
                p.grpc_addr = s.grpc_addr.clone();
                p.gossip_addr = s.gossip_addr.clone();
                p.version = s.version;
                p.nodes = s.nodes.len() as u32;
                p.capacity_bytes = s.nodes.iter().map(|n| n.capacity_bytes).sum();
                p.free_bytes = s.nodes.iter().filter(|n| n.healthy).map(|n| n.free_bytes).sum();
                p.datastores = s.datastores.iter().map(|d| format!("/{}", d.name)).collect();
                p.contribution_bytes = s.contribution_bytes;
                p.hosted_bytes = s.hosted_bytes;
                p.used_elsewhere_bytes = s.used_elsewhere_bytes;
            }
        };
        let mut me = PeerInfo {
            member: self.state.domain.clone(),
            state: MemberHealth::Alive as i32,
            last_seen_ms: unix_ms_now() as i64,
            local: true,
            ..Default::default()
        };
        summary(&self.state.domain, &mut me);
        me.contribution_bytes = fed.contribution;
        me.hosted_bytes = self.state.meta.hosted_usage().map(|(t, _)| t).unwrap_or(me.hosted_bytes);
        me.used_elsewhere_bytes = self.state.used_elsewhere_cached();
        let mut members = vec![me];
        for p in fed.gossip.peers() {
            let mut info = PeerInfo {
                member: p.member.clone(),
                state: p.health() as i32,
                last_seen_ms: p.last_seen_ms as i64,
                gossip_addr: p.gossip_addr.map(|a| a.to_string()).unwrap_or_default(),
                ..Default::default()
            };
            summary(&p.member, &mut info);
            members.push(info);
        }
        for r in self.state.removals() {
            if r.member != self.state.domain {
                members.push(PeerInfo {
                    member: r.member,
                    state: MemberHealth::Removed as i32,
                    ..Default::default()
                });
            }
        }
        members.sort_by(|a, b| a.member.cmp(&b.member));
        Ok(Response::new(PeersResponse {
            members,
            dropped_unauthenticated: fed.gossip.counters().dropped.load(std::sync::atomic::Ordering::Relaxed),
        }))
    }
}

impl AdminService {
    async fn create_datastore_inner(
        &self,
        who: &Principal,
        req: Request<CreateDatastoreRequest>,
    ) -> Result<Response<DatastoreInfo>, Status> {
        let q = req.into_inner();
        let path = path_arg(&q.path)?;
        let name = match path.components().collect::<Vec<_>>()[..] {
            [one] => one.to_string(),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "{path}: a datastore is a top-level directory such as /media"
                )));
            }
        };
        self.state.require(who, &RemotePath::root(), Rights::WRITE)?;
        // Unspecified is refused too: an older client's strategy arrives that way, and
        // guessing `media` would store what it meant to spread over members unencrypted.
        let strategy: Strategy = PlacementStrategy::try_from(q.strategy)
            .ok()
            .and_then(PlacementStrategy::known)
            .ok_or_else(|| {
                Status::invalid_argument(
                    "a datastore needs a strategy: media, backup or hybrid (this client may be older than the coordinator)",
                )
            })?;
        let replicas = if q.replicas == 0 {
            self.state.replication as u32
        } else {
            q.replicas
        };
        if replicas > MAX_REPLICAS {
            return Err(Status::invalid_argument(format!("at most {MAX_REPLICAS} replicas")));
        }
        // Ask every reachable member first: a name another member claims, even a moment
        // ago, is refused here rather than contested later.
        self.state.converge().await;
        if let Some(fed) = self.state.links.fed()
            && let Some(other) = fed
                .gossip
                .states()
                .into_iter()
                .find(|s| s.member != self.state.domain && s.datastores.iter().any(|d| d.name == name))
        {
            return Err(Status::already_exists(format!(
                "{path} already exists in the federation (owned by {}); datastore names are shared by all members, choose another",
                other.member
            )));
        }
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| Status::internal("no randomness available for the datastore key"))?;
        let rec = DatastoreRecord {
            name,
            owner: who.to_string(),
            strategy,
            replicas,
            created_ms: unix_ms_now(),
            secret,
        };
        self.state.meta.create_datastore(&path, &rec).map_err(meta_status)?;
        self.state.meta.flush().await.map_err(meta_status)?;
        self.state.publish_now();
        tracing::info!(datastore = %path, owner = %who, strategy = %rec.strategy, replicas, "datastore created");
        Ok(Response::new(self.datastore_info(&rec, who)?))
    }

    async fn grant_inner(&self, who: &Principal, req: Request<GrantRequest>) -> Result<Response<GrantInfo>, Status> {
        let path = path_arg(&req.get_ref().path)?;
        if let Some(mut peer) = self.remote(&path).await? {
            return peer.grant(collective_rpc::forwarded(req.into_inner(), who)).await;
        }
        let q = req.into_inner();
        self.local_datastore(&path)?;
        let subject: Subject = q
            .subject
            .parse()
            .map_err(|e: collective_core::AccessError| Status::invalid_argument(e.to_string()))?;
        let rights: Rights = q
            .rights
            .parse()
            .map_err(|e: collective_core::AccessError| Status::invalid_argument(e.to_string()))?;
        let now = self.state.clock.now_ms();
        if q.until_ms < 0 {
            return Err(Status::invalid_argument(
                "until_ms is 0 (no end) or a time after now, never negative",
            ));
        }
        if q.until_ms != 0 && (q.until_ms as u64) <= now {
            return Err(Status::invalid_argument("--until is in the past"));
        }
        // Sharing never widens: only rights held, never past their end. A grant already
        // there is replaced only by someone who could have given it.
        self.state.access.may_share(who, &path, rights, q.until_ms as u64)?;
        if let Some(old) = self.state.meta.grant(path.as_str(), &subject).map_err(meta_status)? {
            self.state.access.may_share(who, &path, old.rights, old.until_ms)?;
        }
        let g = Grant {
            path: path.to_string(),
            subject,
            rights,
            until_ms: q.until_ms.max(0) as u64,
            granted_by: who.to_string(),
            granted_ms: now,
        };
        self.state.meta.put_grant(&g).map_err(meta_status)?;
        self.state.meta.flush().await.map_err(meta_status)?;
        let until = if g.until_ms == 0 {
            String::new()
        } else {
            format!(" until {}", crate::events::time_str(g.until_ms))
        };
        self.state.events.emit(
            "grant-changed",
            &g.path,
            crate::events::Severity::Info,
            format!("{who} granted {} on {} to {}{until}", g.rights, g.path, g.subject),
        );
        Ok(Response::new(grant_info(&g)))
    }

    async fn revoke_inner(&self, who: &Principal, req: Request<RevokeRequest>) -> Result<Response<RevokeResponse>, Status> {
        let path = path_arg(&req.get_ref().path)?;
        if let Some(mut peer) = self.remote(&path).await? {
            return peer.revoke(collective_rpc::forwarded(req.into_inner(), who)).await;
        }
        self.state.require(who, &path, Rights::SHARE)?;
        let subject: Subject = req
            .get_ref()
            .subject
            .parse()
            .map_err(|e: collective_core::AccessError| Status::invalid_argument(e.to_string()))?;
        // Taken away only by someone who could have given it.
        if let Some(old) = self.state.meta.grant(path.as_str(), &subject).map_err(meta_status)? {
            self.state.access.may_share(who, &path, old.rights, old.until_ms)?;
        }
        let removed = self
            .state
            .meta
            .remove_grant(&path, &subject, &who.to_string())
            .map_err(meta_status)?;
        self.state.meta.flush().await.map_err(meta_status)?;
        if !removed {
            return Err(Status::not_found(format!(
                "{subject} holds no grant on {path} (`collective datastore info {path}` lists grants)"
            )));
        }
        self.state.events.emit(
            "grant-changed",
            path.as_str(),
            crate::events::Severity::Info,
            format!("{who} revoked the grant of {subject} on {path}"),
        );
        Ok(Response::new(RevokeResponse { removed }))
    }

    async fn generate_invite_inner(
        &self,
        who: &Principal,
        req: Request<GenerateInviteRequest>,
    ) -> Result<Response<GenerateInviteResponse>, Status> {
        if who.domain != self.state.domain {
            return Err(Status::permission_denied("invites are made by the coordinator of your own member"));
        }
        let q = req.into_inner();
        let now = self.state.clock.now_ms();
        let validity = if q.validity_ms == 0 { 7 * 86_400_000 } else { q.validity_ms };
        let max_uses = if q.max_uses == 0 { 1 } else { q.max_uses };
        if max_uses > MAX_INVITE_USES {
            return Err(Status::invalid_argument(format!("--max-uses may be at most {MAX_INVITE_USES}")));
        }
        let (kind, code_kind) = if !q.member.is_empty() {
            if !q.grants.is_empty() {
                return Err(Status::invalid_argument(
                    "an invite is either for a member (--member) or for a user (--grant), not both",
                ));
            }
            collective_core::validate_name(&q.member).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if !self.state.is_admin(who) {
                return Err(Status::permission_denied(format!(
                    "only an admin of {} may invite members",
                    self.state.domain
                )));
            }
            if self.state.links.fed().and_then(|f| f.root.as_ref()).is_none() {
                return Err(Status::failed_precondition(
                    "this coordinator does not hold the federation root; run `collective invite generate --member` against the coordinator whose config sets federation.root_dir",
                ));
            }
            (InviteKind::Member { name: q.member.clone() }, InviteCodeKind::Member)
        } else {
            if q.grants.is_empty() {
                return Err(Status::invalid_argument(
                    "say what the invite is for: --member NAME, or at least one --grant PATH:RIGHTS",
                ));
            }
            if self.state.ca.is_none() {
                return Err(Status::failed_precondition(
                    "this coordinator cannot sign user certificates: set ca_dir in its config to the member CA directory",
                ));
            }
            let mut grants = Vec::new();
            for spec in &q.grants {
                let (path, rights) = parse_grant_spec(spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
                self.local_datastore(&path)?;
                // The rule grants follow; how long the rights last is settled at redemption
                // (never past the inviter's own).
                self.state.access.share_limit(who, &path, rights)?;
                grants.push((path.to_string(), rights.0));
            }
            (InviteKind::User { grants }, InviteCodeKind::User)
        };
        let mut id = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).map_err(|_| Status::internal("no randomness"))?;
        let rec = InviteRecord {
            id,
            kind,
            created_by: who.to_string(),
            created_ms: now,
            expires_ms: now + validity,
            max_uses,
            uses: 0,
            revoked: false,
            redeemed_by: vec![],
        };
        self.state.meta.add_invite(&rec).map_err(meta_status)?;
        self.state.meta.flush().await.map_err(meta_status)?;
        let code = InviteCode {
            id,
            kind: code_kind,
            federation: self.state.links.fed().map(|f| f.domain.clone()).unwrap_or_default(),
            coordinator: self.state.principal.clone(),
            addr: self.state.advertise_grpc.clone(),
            fingerprint: self.state.identity.key_fingerprint(),
            expires_ms: rec.expires_ms,
        }
        .encode(&self.state.signer);
        self.state.metrics.invites_issued.inc();
        Ok(Response::new(GenerateInviteResponse {
            code,
            invite: Some(invite_info(&rec, now)),
        }))
    }

    async fn revoke_invite_inner(
        &self,
        who: &Principal,
        req: Request<RevokeInviteRequest>,
    ) -> Result<Response<RevokeInviteResponse>, Status> {
        let arg = req.get_ref().code_or_id.trim();
        let id: [u8; 16] = if arg.starts_with(collective_pki::INVITE_PREFIX) {
            let verifier = TokenVerifier::new(&self.state.signer.public_key()).map_err(|e| Status::internal(e.to_string()))?;
            InviteCode::verify(arg, &verifier)
                .map_err(|e| Status::invalid_argument(e.to_string()))?
                .id
        } else {
            hex::decode(arg)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Status::invalid_argument("give the invite code, or its id as `collective invite list` shows it"))?
        };
        let rec = self
            .state
            .meta
            .invites()
            .map_err(meta_status)?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| Status::not_found("no such invite here (`collective invite list`)"))?;
        if !self.state.is_admin(who) && rec.created_by != who.to_string() {
            return Err(Status::permission_denied(format!(
                "only {} or an admin may revoke this invite",
                rec.created_by
            )));
        }
        let revoked = self.state.meta.revoke_invite(&id).map_err(meta_status)?;
        self.state.meta.flush().await.map_err(meta_status)?;
        Ok(Response::new(RevokeInviteResponse { revoked }))
    }
}

/// How an invite shows in the audit log: its id (never the code, which is a credential).
fn invite_target(code_or_id: &str) -> String {
    let arg = code_or_id.trim();
    match arg.strip_prefix(collective_pki::INVITE_PREFIX) {
        Some(_) => "invite (given by code)".into(),
        None => format!("invite {arg}"),
    }
}
