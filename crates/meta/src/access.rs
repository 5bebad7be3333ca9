//! Datastores, permission grants, invites and the principals invites created. Each change
//! is one transaction, like the namespace.

use collective_core::{Grant, RemotePath, Strategy, Subject, unix_ms_now};
use serde::{Deserialize, Serialize};

use crate::engine::Table;
use crate::namespace::mkdir_all;
use crate::records::{PrincipalRecord, Record, body, decode, encode};
use crate::{MetaError, MetaStore, abort, audit};

/// A datastore: a top-level tree with a placement policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatastoreRecord {
    /// Top-level name, without the slash.
    pub name: String,
    /// Principal that created it.
    pub owner: String,
    pub strategy: Strategy,
    pub replicas: u32,
    pub created_ms: u64,
    /// Key for convergent encryption of the datastore's chunks (never leaves the owner
    /// member except to principals allowed to read or write it).
    pub secret: [u8; 32],
}

/// Format 1: the strategy as a word.
#[derive(Deserialize)]
struct DatastoreRecordV1 {
    name: String,
    owner: String,
    strategy: String,
    replicas: u32,
    created_ms: u64,
    secret: [u8; 32],
}

impl TryFrom<DatastoreRecordV1> for DatastoreRecord {
    type Error = MetaError;
    fn try_from(v1: DatastoreRecordV1) -> Result<Self, MetaError> {
        let strategy = v1
            .strategy
            .parse()
            .map_err(|e| MetaError::Corrupt(format!("datastore {}: {e}", v1.name)))?;
        Ok(DatastoreRecord {
            name: v1.name,
            owner: v1.owner,
            strategy,
            replicas: v1.replicas,
            created_ms: v1.created_ms,
            secret: v1.secret,
        })
    }
}

impl Record for DatastoreRecord {
    const NAME: &'static str = "datastore";
    /// Format 2: the strategy as `Strategy`.
    const FORMAT: u8 = 2;
    fn upgrade(format: u8, b: &[u8]) -> Result<Self, MetaError> {
        match format {
            1 => body::<DatastoreRecordV1>(Self::NAME, b)?.try_into(),
            f => Err(MetaError::Corrupt(format!("datastore record has unknown format {f}"))),
        }
    }
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

impl Record for InviteRecord {
    const NAME: &'static str = "invite";
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
    /// Whoever made the invite no longer holds what it gives.
    #[error("the invite gives more than its maker holds now ({0}); ask them, or an owner, for a new one")]
    Inviter(String),
}

fn grant_key(path: &str, subject: &Subject) -> Vec<u8> {
    let mut k = path.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(subject.to_string().as_bytes());
    k
}

impl MetaStore {
    /// Creates the datastore `path` (a top-level directory; an existing empty one is adopted).
    pub fn create_datastore(&self, path: &RemotePath, rec: &DatastoreRecord) -> Result<(), MetaError> {
        self.engine.transact(|t| {
            if t.get(Table::Datastores, rec.name.as_bytes())?.is_some() {
                return Err(abort(MetaError::AlreadyExists(format!("datastore {path}"))));
            }
            let ino = mkdir_all(t, path, &rec.owner)?;
            // A datastore starts empty: files already there were counted (and would be
            // read) outside any datastore.
            if crate::namespace::get_inode(t, ino)?.count > 0 {
                return Err(abort(MetaError::NotEmptyDatastore(path.to_string())));
            }
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
        self.engine.get(Table::Datastores, name.as_bytes())?.map(|v| decode(&v)).transpose()
    }

    pub fn datastores(&self) -> Result<Vec<DatastoreRecord>, MetaError> {
        self.engine
            .scan_prefix(Table::Datastores, b"", None)
            .map(|r| r.and_then(|(_, v)| decode(&v)))
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

    /// The grant of `subject` on exactly `path`, if any.
    pub fn grant(&self, path: &str, subject: &Subject) -> Result<Option<Grant>, MetaError> {
        self.engine
            .get(Table::Grants, &grant_key(path, subject))?
            .map(|v| decode(&v))
            .transpose()
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
            .map(|r| r.and_then(|(_, v)| decode(&v)))
            .collect()
    }

    pub fn add_invite(&self, rec: &InviteRecord) -> Result<(), MetaError> {
        self.engine.transact(|t| t.insert(Table::Invites, &rec.id, encode(rec)))
    }

    pub fn invites(&self) -> Result<Vec<InviteRecord>, MetaError> {
        self.engine
            .scan_prefix(Table::Invites, b"", None)
            .map(|r| r.and_then(|(_, v)| decode(&v)))
            .collect()
    }

    /// One invite, as stored now.
    pub fn invite(&self, id: &[u8; 16]) -> Result<Option<InviteRecord>, MetaError> {
        self.engine.get(Table::Invites, id)?.map(|v| decode(&v)).transpose()
    }

    pub fn revoke_invite(&self, id: &[u8; 16]) -> Result<bool, MetaError> {
        self.engine.transact(|t| {
            let Some(v) = t.get(Table::Invites, id)? else {
                return Ok(false);
            };
            let mut rec: InviteRecord = decode(&v).map_err(abort)?;
            rec.revoked = true;
            t.insert(Table::Invites, id, encode(&rec))?;
            Ok(true)
        })
    }

    /// Uses an invite once, atomically: checks it is known, unrevoked, unexpired at `now_ms`
    /// and not used up, and records `by`. `check` runs inside the same transaction and may
    /// refuse (e.g. a member invite used for another name).
    pub fn use_invite(
        &self,
        id: &[u8; 16],
        by: &str,
        now_ms: u64,
        check: impl Fn(&InviteRecord) -> Result<(), InviteRefusal>,
    ) -> Result<Result<InviteRecord, InviteRefusal>, MetaError> {
        let now = now_ms;
        self.engine.transact(|t| {
            let Some(v) = t.get(Table::Invites, id)? else {
                return Ok(Err(InviteRefusal::Unknown));
            };
            let mut rec: InviteRecord = decode(&v).map_err(abort)?;
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

    /// Whether an invite already created `principal`.
    pub fn principal_claimed(&self, principal: &str) -> Result<bool, MetaError> {
        Ok(self.engine.get(Table::Principals, principal.as_bytes())?.is_some())
    }

    /// Records a principal created by an invite; false when the name is already taken.
    pub fn claim_principal(&self, principal: &str, invite: &[u8; 16]) -> Result<bool, MetaError> {
        self.engine.transact(|t| {
            if t.get(Table::Principals, principal.as_bytes())?.is_some() {
                return Ok(false);
            }
            let v = encode(&PrincipalRecord {
                created_ms: unix_ms_now(),
                invite: *invite,
            });
            t.insert(Table::Principals, principal.as_bytes(), v)?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{RECORD_FORMAT_V1, encode_as};

    #[derive(Serialize)]
    struct V1 {
        name: String,
        owner: String,
        strategy: String,
        replicas: u32,
        created_ms: u64,
        secret: [u8; 32],
    }

    fn v1(strategy: &str) -> Vec<u8> {
        encode_as(
            RECORD_FORMAT_V1,
            &V1 {
                name: "photos".into(),
                owner: "alice@alice.collective.local".into(),
                strategy: strategy.into(),
                replicas: 2,
                created_ms: 7,
                secret: [9; 32],
            },
        )
    }

    #[test]
    fn datastores_written_with_the_strategy_as_a_word_read_as_the_same_strategy() {
        for s in Strategy::ALL {
            let rec: DatastoreRecord = decode(&v1(s.as_str())).unwrap();
            assert_eq!(
                (rec.name.as_str(), rec.strategy, rec.replicas, rec.secret),
                ("photos", s, 2, [9; 32])
            );
            let again: DatastoreRecord = decode(&encode(&rec)).unwrap();
            assert_eq!(again, rec);
        }
        let e = decode::<DatastoreRecord>(&v1("mirror")).unwrap_err().to_string();
        assert!(e.contains("photos") && e.contains("'mirror' is not a strategy"), "{e}");
    }

    #[test]
    fn an_invite_works_until_it_expires_or_is_used_up_and_a_refused_use_changes_nothing() {
        use std::time::Duration;

        use collective_core::{Clock, ManualClock};

        let (m, dir) = crate::namespace::tests::store("invite-expiry");
        let clock = ManualClock::at(1_000_000);
        let rec = InviteRecord {
            id: [7; 16],
            kind: InviteKind::User { grants: vec![] },
            created_by: "alice@a.collective.local".into(),
            created_ms: clock.now_ms(),
            expires_ms: clock.now_ms() + 3_600_000,
            max_uses: 2,
            uses: 0,
            revoked: false,
            redeemed_by: vec![],
        };
        m.add_invite(&rec).unwrap();
        let use_as = |who: &str| m.use_invite(&rec.id, who, clock.now_ms(), |_| Ok(())).unwrap();
        assert!(use_as("ann").is_ok());
        clock.advance(Duration::from_secs(3599));
        assert!(use_as("ben").is_ok(), "still valid a second before it expires");
        assert_eq!(use_as("cat").unwrap_err(), InviteRefusal::UsedUp(2));
        let fresh = InviteRecord {
            id: [8; 16],
            max_uses: 5,
            ..rec.clone()
        };
        m.add_invite(&fresh).unwrap();
        clock.advance(Duration::from_secs(1));
        let r = m.use_invite(&fresh.id, "dan", clock.now_ms(), |_| Ok(())).unwrap();
        assert_eq!(r.unwrap_err(), InviteRefusal::Expired, "expired at its expiry time");
        let kept = m.invites().unwrap().into_iter().find(|i| i.id == fresh.id).unwrap();
        assert_eq!((kept.uses, kept.redeemed_by.len()), (0, 0), "a refused use is not counted");
        drop(m);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
