//! Permissions on datastores: rights, subjects, grants, and the rule that decides what a
//! principal may do on a path. Pure logic; the coordinator stores grants and calls this.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Principal, RemotePath, validate_path};

/// A set of rights, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Rights(pub u8);

impl Rights {
    pub const READ: Rights = Rights(1);
    pub const WRITE: Rights = Rights(2);
    pub const DELETE: Rights = Rights(4);
    pub const SHARE: Rights = Rights(8);
    pub const ALL: Rights = Rights(15);
    pub const NONE: Rights = Rights(0);

    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The rights in `self` that are missing from `have`.
    pub fn missing_from(self, have: Rights) -> Rights {
        Rights(self.0 & !have.0)
    }
}

const NAMES: [(Rights, &str); 4] = [
    (Rights::READ, "read"),
    (Rights::WRITE, "write"),
    (Rights::DELETE, "delete"),
    (Rights::SHARE, "share"),
];

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = NAMES.iter().filter(|(r, _)| self.contains(*r)).map(|(_, n)| *n).collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join("+"))
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("'{0}' is not a right; rights are read, write, delete and share, joined by + or , (e.g. read+write)")]
    Right(String),
    #[error(
        "'{0}' is not a subject; use a principal (bob@bob.collective.local), everyone of a member (*@bob.collective.local) or the whole federation (*@*.collective.local)"
    )]
    Subject(String),
    #[error("'{0}' is not a grant; write PATH:RIGHTS, e.g. /shared:read+write ({1})")]
    Grant(String, String),
}

impl FromStr for Rights {
    type Err = AccessError;
    /// `read+write`, `read,write`, `all`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Rights::NONE;
        for part in s.split(['+', ',']).map(str::trim) {
            let r = match part {
                "read" | "r" => Rights::READ,
                "write" | "w" => Rights::WRITE,
                "delete" | "d" => Rights::DELETE,
                "share" | "s" => Rights::SHARE,
                "all" => Rights::ALL,
                _ => return Err(AccessError::Right(part.to_string())),
            };
            out = out.union(r);
        }
        if out.is_empty() {
            return Err(AccessError::Right(s.to_string()));
        }
        Ok(out)
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Subject {
    /// One principal.
    Principal(Principal),
    /// Every principal of one member: `*@bob.collective.local`.
    Member(String),
    /// Every principal of the federation: `*@*.collective.local`.
    Federation(String),
}

impl Subject {
    pub fn matches(&self, p: &Principal) -> bool {
        match self {
            Subject::Principal(q) => q == p,
            Subject::Member(d) => &p.domain == d,
            // Members are one name below the federation domain; deeper names are no member.
            Subject::Federation(f) => p
                .domain
                .strip_suffix(f.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Principal(p) => write!(f, "{p}"),
            Subject::Member(d) => write!(f, "*@{d}"),
            Subject::Federation(d) => write!(f, "*@*.{d}"),
        }
    }
}

impl FromStr for Subject {
    type Err = AccessError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AccessError::Subject(s.to_string());
        if let Some(rest) = s.strip_prefix("*@") {
            if let Some(fed) = rest.strip_prefix("*.") {
                Principal::new("x", &format!("m.{fed}")).map_err(|_| bad())?;
                return Ok(Subject::Federation(fed.to_string()));
            }
            Principal::new("x", rest).map_err(|_| bad())?;
            return Ok(Subject::Member(rest.to_string()));
        }
        s.parse::<Principal>().map(Subject::Principal).map_err(|_| bad())
    }
}

/// `PATH:RIGHTS` as given to `invite generate --grant`.
pub fn parse_grant_spec(s: &str) -> Result<(RemotePath, Rights), AccessError> {
    let (path, rights) = s
        .rsplit_once(':')
        .ok_or_else(|| AccessError::Grant(s.to_string(), "no ':' between path and rights".into()))?;
    let path = validate_path(path).map_err(|e| AccessError::Grant(s.to_string(), e.to_string()))?;
    Ok((path, rights.parse()?))
}

/// One grant as stored: rights of a subject on a path (and everything below it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub path: String,
    pub subject: Subject,
    pub rights: Rights,
    /// Milliseconds since the epoch after which the grant no longer counts; 0: never.
    pub until_ms: u64,
    pub granted_by: String,
    pub granted_ms: u64,
}

impl Grant {
    pub fn active(&self, now_ms: u64) -> bool {
        self.until_ms == 0 || now_ms < self.until_ms
    }

    /// Whether the grant covers `path` (the path itself or something below it).
    pub fn covers(&self, path: &str) -> bool {
        self.path == "/" || path == self.path || path.strip_prefix(self.path.as_str()).is_some_and(|r| r.starts_with('/'))
    }
}

/// The rights `who` holds on `path` from `grants` (inherited down the tree, expired
/// grants ignored).
pub fn effective_rights<'a>(grants: impl IntoIterator<Item = &'a Grant>, who: &Principal, path: &str, now_ms: u64) -> Rights {
    grants
        .into_iter()
        .filter(|g| g.active(now_ms) && g.subject.matches(who) && g.covers(path))
        .fold(Rights::NONE, |acc, g| acc.union(g.rights))
}

/// Why `who` may not give rights away (see [`may_share`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareRefusal {
    /// Sharing needs the share right and every right given: `missing` is not held.
    Lacks { missing: Rights, have: Rights },
    /// What is given would outlast the giver's own rights, which end at `until_ms`.
    Outlasts { until_ms: u64 },
}

/// Until when `who` keeps every right of `rights` on `path` from `grants`: None when one
/// is not held now, Some(0) when they are held for good, else the earliest time one of
/// them ends (for each right, the grant that holds it longest counts).
pub fn held_until(grants: &[Grant], who: &Principal, path: &str, now_ms: u64, rights: Rights) -> Option<u64> {
    let mut limit = 0u64; // 0: for good
    for (bit, _) in NAMES.iter().filter(|(r, _)| rights.contains(*r)) {
        let mut best: Option<u64> = None;
        for g in grants
            .iter()
            .filter(|g| g.active(now_ms) && g.subject.matches(who) && g.covers(path) && g.rights.contains(*bit))
        {
            best = Some(match (best, g.until_ms) {
                (_, 0) | (Some(0), _) => 0,
                (Some(b), u) => b.max(u),
                (None, u) => u,
            });
        }
        match best? {
            0 => {}
            u if limit == 0 => limit = u,
            u => limit = limit.min(u),
        }
    }
    Some(limit)
}

/// How long what `who` gives of `rights` on `path` may last (0: for good), or the rights it
/// lacks: sharing needs the share right and every right given.
pub fn share_limit(grants: &[Grant], who: &Principal, path: &str, now_ms: u64, rights: Rights) -> Result<u64, ShareRefusal> {
    let need = rights.union(Rights::SHARE);
    held_until(grants, who, path, now_ms, need).ok_or_else(|| {
        let have = effective_rights(grants, who, path, now_ms);
        ShareRefusal::Lacks {
            missing: need.missing_from(have),
            have,
        }
    })
}

/// The one rule for giving rights away, for grants and invites alike: the giver holds the
/// share right and every right it gives, and what it gives ends no later than its own
/// rights do (`until_ms` 0: for good). Admins are not judged by grants and are not asked.
pub fn may_share(grants: &[Grant], who: &Principal, path: &str, now_ms: u64, rights: Rights, until_ms: u64) -> Result<(), ShareRefusal> {
    match share_limit(grants, who, path, now_ms, rights)? {
        0 => Ok(()),
        limit if until_ms != 0 && until_ms <= limit => Ok(()),
        limit => Err(ShareRefusal::Outlasts { until_ms: limit }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_gives_only_rights_held_and_never_past_their_end() {
        let bob: Principal = "bob@bob.collective.local".parse().unwrap();
        let gs = vec![
            grant("/esc", "bob@bob.collective.local", "read+share", 0),
            grant("/esc/a", "bob@bob.collective.local", "write", 5_000),
            grant("/tmp", "*@bob.collective.local", "read+write+share", 3_000),
            grant("/tmp", "bob@bob.collective.local", "share", 0),
        ];
        let r = |s: &str| s.parse::<Rights>().unwrap();
        // Held for good: given for good or for a while.
        assert_eq!(may_share(&gs, &bob, "/esc", 1, r("read"), 0), Ok(()));
        assert_eq!(may_share(&gs, &bob, "/esc/x", 1, r("read+share"), 9_000), Ok(()));
        // Never more than held (the reproduction: read+share gives write and delete).
        assert_eq!(
            may_share(&gs, &bob, "/esc", 1, r("read+write+delete"), 0),
            Err(ShareRefusal::Lacks {
                missing: r("write+delete"),
                have: r("read+share")
            })
        );
        // Write on /esc/a ends at 5000: it can be given until then, not beyond.
        assert_eq!(may_share(&gs, &bob, "/esc/a", 1, r("write"), 5_000), Ok(()));
        assert_eq!(
            may_share(&gs, &bob, "/esc/a", 1, r("write"), 0),
            Err(ShareRefusal::Outlasts { until_ms: 5_000 })
        );
        assert_eq!(
            may_share(&gs, &bob, "/esc/a", 1, r("write"), 6_000),
            Err(ShareRefusal::Outlasts { until_ms: 5_000 })
        );
        // Each right counts the grant that holds it longest: share for good, write until 3000.
        assert_eq!(held_until(&gs, &bob, "/tmp", 1, r("share")), Some(0));
        assert_eq!(held_until(&gs, &bob, "/tmp", 1, r("write+share")), Some(3_000));
        assert_eq!(
            may_share(&gs, &bob, "/tmp", 1, r("write"), 0),
            Err(ShareRefusal::Outlasts { until_ms: 3_000 })
        );
        // Once the grant ended, nothing of it can be given.
        assert!(matches!(
            may_share(&gs, &bob, "/tmp", 3_000, r("write"), 0),
            Err(ShareRefusal::Lacks { .. })
        ));
        assert_eq!(held_until(&gs, &bob, "/nowhere", 1, r("read")), None);
    }

    fn grant(path: &str, subject: &str, rights: &str, until_ms: u64) -> Grant {
        Grant {
            path: path.into(),
            subject: subject.parse().unwrap(),
            rights: rights.parse().unwrap(),
            until_ms,
            granted_by: "alice@alice.collective.local".into(),
            granted_ms: 0,
        }
    }

    #[test]
    fn rights_parse_in_both_spellings_and_print_back() {
        assert_eq!("read+write".parse::<Rights>().unwrap(), "read,write".parse().unwrap());
        assert_eq!("read+write".parse::<Rights>().unwrap().to_string(), "read+write");
        assert_eq!("all".parse::<Rights>().unwrap(), Rights::ALL);
        assert!("read+fly".parse::<Rights>().is_err());
        assert!("".parse::<Rights>().is_err());
        let (p, r) = parse_grant_spec("/shared:read+write").unwrap();
        assert_eq!((p.as_str(), r), ("/shared", Rights(3)));
        assert!(parse_grant_spec("/shared").is_err());
        assert!(parse_grant_spec("/a/../b:read").is_err());
    }

    #[test]
    fn subjects_match_principals_members_and_the_federation() {
        let bob: Principal = "bob@bob.collective.local".parse().unwrap();
        let carol: Principal = "carol@carol.collective.local".parse().unwrap();
        let s: Subject = "bob@bob.collective.local".parse().unwrap();
        assert!(s.matches(&bob) && !s.matches(&carol));
        let m: Subject = "*@bob.collective.local".parse().unwrap();
        assert!(m.matches(&bob) && !m.matches(&carol));
        let f: Subject = "*@*.collective.local".parse().unwrap();
        assert!(f.matches(&bob) && f.matches(&carol));
        let other: Principal = "eve@eve.evil.local".parse().unwrap();
        assert!(!f.matches(&other));
        let deeper: Principal = "x@y.bob.collective.local".parse().unwrap();
        assert!(!f.matches(&deeper), "a name below a member is no member");
        assert_eq!(f.to_string(), "*@*.collective.local");
        assert!("*@".parse::<Subject>().is_err());
        assert!("bob".parse::<Subject>().is_err());
    }

    #[test]
    fn grants_inherit_down_the_tree_and_expire() {
        let bob: Principal = "bob@bob.collective.local".parse().unwrap();
        let gs = vec![
            grant("/media", "bob@bob.collective.local", "read", 0),
            grant("/media/private", "*@bob.collective.local", "write", 1000),
        ];
        assert_eq!(effective_rights(&gs, &bob, "/media/film.mkv", 0), Rights::READ);
        assert_eq!(effective_rights(&gs, &bob, "/media/private/x", 500), Rights(3));
        assert_eq!(effective_rights(&gs, &bob, "/media/private/x", 1000), Rights::READ, "expired");
        assert_eq!(
            effective_rights(&gs, &bob, "/mediaX", 0),
            Rights::NONE,
            "prefix of a name is not a parent"
        );
        assert_eq!(effective_rights(&gs, &bob, "/", 0), Rights::NONE);
    }
}
