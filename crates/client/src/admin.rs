//! Typed operations on datastores, grants, invites and the federation. The coordinator
//! decides who may do what (creating a datastore or an invite needs an admin of this
//! member; granting needs `share` on the path; removing a member needs the federation
//! root); these functions only carry the request and its answer.

use std::time::Duration;

use collective_core::{Rights, Strategy};
use collective_proto::v1::{
    CreateDatastoreRequest, DatastoreInfo, GenerateInviteRequest, GenerateInviteResponse, GrantInfo, GrantRequest, InviteInfo,
    ListDatastoresRequest, ListInvitesRequest, MemberRemoval, PathRequest, PeersRequest, PeersResponse, PlacementStrategy,
    RemoveMemberRequest, RevokeInviteRequest, RevokeRequest,
};

use crate::error::Answer;
use crate::{Client, ClientError};

/// What an invite brings in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteFor {
    /// A new member of the federation, by name (needs the federation root).
    Member(String),
    /// A user of this member, with grants written `PATH:RIGHTS` that take effect when the
    /// invite is redeemed.
    User { grants: Vec<String> },
}

impl Client {
    /// Creates a datastore at `path` (one top-level name). `replicas == 0` takes the
    /// coordinator's default.
    pub async fn create_datastore(&self, path: &str, strategy: Strategy, replicas: u32) -> Result<DatastoreInfo, ClientError> {
        self.admin()
            .create_datastore(CreateDatastoreRequest {
                path: path.to_string(),
                strategy: PlacementStrategy::from(strategy) as i32,
                replicas,
            })
            .await
            .answer()
    }

    /// Every datastore of the federation the caller can see, with the caller's rights at
    /// each root.
    pub async fn list_datastores(&self) -> Result<Vec<DatastoreInfo>, ClientError> {
        Ok(self
            .admin()
            .list_datastores(ListDatastoresRequest {})
            .await
            .map_err(ClientError::status)?
            .into_inner()
            .datastores)
    }

    /// One datastore, with its grants when the caller may share it.
    pub async fn datastore(&self, path: &str) -> Result<DatastoreInfo, ClientError> {
        self.admin()
            .datastore_details(PathRequest { path: path.to_string() })
            .await
            .answer()
    }

    /// Grants `rights` on `path` to `subject` (a principal, `*@member` or `*@*.federation`),
    /// until `until_ms` (ms since the epoch; `None`: no expiry).
    pub async fn grant(&self, path: &str, subject: &str, rights: Rights, until_ms: Option<i64>) -> Result<GrantInfo, ClientError> {
        self.admin()
            .grant(GrantRequest {
                path: path.to_string(),
                subject: subject.to_string(),
                rights: rights.to_string(),
                until_ms: until_ms.unwrap_or(0),
            })
            .await
            .answer()
    }

    /// Removes the grant of `subject` on `path`; `false` when there was none.
    pub async fn revoke_grant(&self, path: &str, subject: &str) -> Result<bool, ClientError> {
        Ok(self
            .admin()
            .revoke(RevokeRequest {
                path: path.to_string(),
                subject: subject.to_string(),
            })
            .await
            .map_err(ClientError::status)?
            .into_inner()
            .removed)
    }

    /// Makes an invite code good for `max_uses` redemptions within `validity`.
    pub async fn generate_invite(&self, what: InviteFor, max_uses: u32, validity: Duration) -> Result<GenerateInviteResponse, ClientError> {
        let (member, grants) = match what {
            InviteFor::Member(name) => (name, Vec::new()),
            InviteFor::User { grants } => (String::new(), grants),
        };
        self.admin()
            .generate_invite(GenerateInviteRequest {
                member,
                grants,
                max_uses,
                validity_ms: validity.as_millis() as u64,
            })
            .await
            .answer()
    }

    /// Every invite this member made, with its state.
    pub async fn list_invites(&self) -> Result<Vec<InviteInfo>, ClientError> {
        Ok(self
            .admin()
            .list_invites(ListInvitesRequest {})
            .await
            .map_err(ClientError::status)?
            .into_inner()
            .invites)
    }

    /// Revokes an invite by its code or its id.
    pub async fn revoke_invite(&self, code_or_id: &str) -> Result<bool, ClientError> {
        Ok(self
            .admin()
            .revoke_invite(RevokeInviteRequest {
                code_or_id: code_or_id.to_string(),
            })
            .await
            .map_err(ClientError::status)?
            .into_inner()
            .revoked)
    }

    /// The members of the federation as this coordinator sees them.
    pub async fn peers(&self) -> Result<PeersResponse, ClientError> {
        Ok(self.admin().peers(PeersRequest {}).await.map_err(ClientError::status)?.into_inner())
    }

    /// Removes `member` from the federation for good (signed by the federation root).
    /// This member's recovery kit, as text to print (member admins only).
    pub async fn recovery_kit(&self) -> Result<String, ClientError> {
        self.admin()
            .recovery_kit(collective_proto::v1::RecoveryKitRequest {})
            .await
            .answer()
            .map(|r| r.kit)
    }

    pub async fn remove_member(&self, member: &str, reason: &str) -> Result<MemberRemoval, ClientError> {
        self.admin()
            .remove_member(RemoveMemberRequest {
                member: member.to_string(),
                reason: reason.to_string(),
            })
            .await
            .answer()
    }
}
