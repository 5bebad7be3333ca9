//! Datastores, permission grants, invites and the principals invites created. Each change
//! is one transaction, like the namespace.

use collective_core::{Grant, RemotePath, Subject, unix_ms_now};
use serde::{Deserialize, Serialize};

use crate::engine::Table;
use crate::namespace::mkdir_all;
use crate::records::{decode, encode};
use crate::{MetaError, MetaStore, abort, audit};

/// A datastore: a top-level tree with a placement policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatastoreRecord {
    /// Top-level name, without the slash.
    pub name: String,
    /// Principal that created it.
    pub owner: String,
    /// media | backup | hybrid
    pub strategy: String,
    pub replicas: u32,
    pub created_ms: u64,
    /// Key for convergent encryption of the datastore's chunks (never leaves the owner
    /// member except to principals allowed to read or write it).
    pub secret: [u8; 32],
}

/// What an invite brings in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InviteKind {
    /// A new member of the federation (its CA is signed by the root).
    Member { name: String },
    /// A user of this member, with grants that take effect when redeemed.
    User { grants: Vec<(String, u8)> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    pub id: [u8; 16],
    pub kind: InviteKind,
    pub created_by: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub max_uses: u32,
    pub uses: u32,
    pub revoked: bool,
    /// Principals (or member domains) that redeemed it.
    pub redeemed_by: Vec<String>,
}

/// Why an invite cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteRefusal {
    #[error("this invite is unknown here; check that the whole code was copied, or ask for a new one")]
    Unknown,
    #[error("this invite was revoked; ask for a new one")]
    Revoked,
    #[error("this invite expired; ask for a new one")]
    Expired,
    #[error("this invite has been used up ({0} of {0} uses); ask for a new one")]
    UsedUp(u32),
    #[error("this invite is for {0}, not for this kind of request")]
    WrongKind(&'static str),
}

fn grant_key(path: &str, subject: &Subject) -> Vec<u8> {
    let mut k = path.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(subject.to_string().as_bytes());
    k
}

impl MetaStore {
    /// Creates the datastore `path` (a top-level directory; an existing one is adopted).
    pub fn create_datastore(&self, path: &RemotePath, rec: &DatastoreRecord) -> Result<(), MetaError> {
        self.engine.transact(|t| {
            if t.get(Table::Datastores, rec.name.as_bytes())?.is_some() {
                return Err(abort(MetaError::AlreadyExists(format!("datastore {path}"))));
            }
            mkdir_all(t, path, &rec.owner)?;
            t.insert(Table::Datastores, rec.name.as_bytes(), encode(rec))?;
            audit(
                t,
                &rec.owner,
                "datastore-create",
                path,
                format!("{} x{}", rec.strategy, rec.replicas),
            )
        })
    }

    pub fn datastore(&self, name: &str) -> Result<Option<DatastoreRecord>, MetaError> {
        self.engine
            .get(Table::Datastores, name.as_bytes())?
            .map(|v| decode("datastore", &v))
            .transpose()
    }

    pub fn datastores(&self) -> Result<Vec<DatastoreRecord>, MetaError> {
        self.engine
            .scan_prefix(Table::Datastores, b"", None)
            .map(|r| r.and_then(|(_, v)| decode("datastore", &v)))
            .collect()
    }

    /// Adds or replaces the grant of `g.subject` on `g.path`.
    pub fn put_grant(&self, g: &Grant) -> Result<(), MetaError> {
        let path = collective_core::validate_path(&g.path)?;
        self.engine.transact(|t| {
            t.insert(Table::Grants, &grant_key(&g.path, &g.subject), encode(g))?;
            audit(
                t,
                &g.granted_by,
                "grant",
                &path,
                format!("{} {} until {}", g.subject, g.rights, g.until_ms),
            )
        })
    }

    /// Removes the grant of `subject` on `path`; returns whether there was one.
    pub fn remove_grant(&self, path: &RemotePath, subject: &Subject, who: &str) -> Result<bool, MetaError> {
        self.engine.transact(|t| {
            let key = grant_key(path.as_str(), subject);
            if t.get(Table::Grants, &key)?.is_none() {
                return Ok(false);
            }
            t.remove(Table::Grants, &key)?;
            audit(t, who, "revoke", path, subject.to_string())?;
            Ok(true)
        })
    }

    /// Every grant (a member has few; they are read on every call through a cache).
    pub fn grants(&self) -> Result<Vec<Grant>, MetaError> {
        self.engine
            .scan_prefix(Table::Grants, b"", None)
            .map(|r| r.and_then(|(_, v)| decode("grant", &v)))
            .collect()
    }

    pub fn add_invite(&self, rec: &InviteRecord) -> Result<(), MetaError> {
        self.engine.transact(|t| t.insert(Table::Invites, &rec.id, encode(rec)))
    }

    pub fn invites(&self) -> Result<Vec<InviteRecord>, MetaError> {
        self.engine
            .scan_prefix(Table::Invites, b"", None)
            .map(|r| r.and_then(|(_, v)| decode("invite", &v)))
            .collect()
    }

    pub fn revoke_invite(&self, id: &[u8; 16]) -> Result<bool, MetaError> {
        self.engine.transact(|t| {
            let Some(v) = t.get(Table::Invites, id)? else {
                return Ok(false);
            };
            let mut rec: InviteRecord = decode("invite", &v).map_err(abort)?;
            rec.revoked = true;
            t.insert(Table::Invites, id, encode(&rec))?;
            Ok(true)
        })
    }

    /// Uses an invite once, atomically: checks it is known, unrevoked, unexpired and not
    /// used up, and records `by`. `check` runs inside the same transaction and may refuse
    /// (e.g. a member invite used for another name).
    pub fn use_invite(
        &self,
        id: &[u8; 16],
        by: &str,
        check: impl Fn(&InviteRecord) -> Result<(), InviteRefusal>,
    ) -> Result<Result<InviteRecord, InviteRefusal>, MetaError> {
        let now = unix_ms_now();
        self.engine.transact(|t| {
            let Some(v) = t.get(Table::Invites, id)? else {
                return Ok(Err(InviteRefusal::Unknown));
            };
            let mut rec: InviteRecord = decode("invite", &v).map_err(abort)?;
            let refusal = if rec.revoked {
                Some(InviteRefusal::Revoked)
            } else if now >= rec.expires_ms {
                Some(InviteRefusal::Expired)
            } else if rec.uses >= rec.max_uses {
                Some(InviteRefusal::UsedUp(rec.max_uses))
            } else {
                check(&rec).err()
            };
            if let Some(r) = refusal {
                return Ok(Err(r));
            }
            rec.uses += 1;
            rec.redeemed_by.push(by.to_string());
            t.insert(Table::Invites, id, encode(&rec))?;
            Ok(Ok(rec))
        })
    }

    /// Records a principal created by an invite; false when the name is already taken.
    pub fn claim_principal(&self, principal: &str, invite: &[u8; 16]) -> Result<bool, MetaError> {
        self.engine.transact(|t| {
            if t.get(Table::Principals, principal.as_bytes())?.is_some() {
                return Ok(false);
            }
            let v = encode(&(unix_ms_now(), *invite));
            t.insert(Table::Principals, principal.as_bytes(), v)?;
            Ok(true)
        })
    }
}
