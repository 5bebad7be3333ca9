//! Certificate revocation: a member CA's list of certificates it no longer stands behind.
//!
//! The list lives beside the CA key as `revoked.json` (written by `collective ca revoke`
//! and `collective ca rotate --revoke-old`, replaced atomically). A coordinator whose
//! `ca_dir` holds it re-reads it when it changes; a revoked certificate then fails the TLS
//! handshake and every call made over a connection it opened earlier. Entries name the
//! certificate by its SHA-256 fingerprint, so a principal whose old certificate was revoked
//! keeps its identity under a new one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::PkiError;

/// File name of the revocation list inside a member CA directory.
pub const REVOCATION_FILE: &str = "revoked.json";
const FORMAT_VERSION: u32 = 1;

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCert {
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub fingerprint: String,
    /// Who the certificate named.
    pub principal: String,
    /// When it would have expired anyway (RFC 3339); entries may be dropped after that.
    pub not_after: String,
    /// When it was revoked (RFC 3339).
    pub revoked_at: String,
    pub reason: String,
}

/// The on-disk list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevocationList {
    pub version: u32,
    pub revoked: Vec<RevokedCert>,
}

impl RevocationList {
    /// Reads the list at `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<RevocationList, PkiError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RevocationList::default()),
            Err(source) => {
                return Err(PkiError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let list: RevocationList = serde_json::from_str(&text).map_err(|e| PkiError::BadFile {
            path: path.to_path_buf(),
            what: "revocation list",
            detail: e.to_string(),
        })?;
        if list.version > FORMAT_VERSION {
            return Err(PkiError::BadFile {
                path: path.to_path_buf(),
                what: "revocation list",
                detail: format!("format {} is newer than this program understands ({FORMAT_VERSION})", list.version),
            });
        }
        for r in &list.revoked {
            parse_fingerprint(&r.fingerprint).map_err(|e| PkiError::BadFile {
                path: path.to_path_buf(),
                what: "revocation list",
                detail: e.to_string(),
            })?;
        }
        Ok(list)
    }

    /// Writes the list to `path` atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        let mut list = self.clone();
        list.version = FORMAT_VERSION;
        let text = serde_json::to_string_pretty(&list).map_err(|e| PkiError::Invalid(e.to_string()))?;
        crate::keyfile::replace_file(path, text.as_bytes(), 0o644)
    }

    /// Whether the certificate with this fingerprint (hex) is on the list.
    pub fn contains(&self, fingerprint: &str) -> bool {
        self.revoked.iter().any(|r| r.fingerprint.eq_ignore_ascii_case(fingerprint))
    }

    /// Adds an entry unless that certificate is already listed; returns whether it was added.
    pub fn add(&mut self, entry: RevokedCert) -> bool {
        if self.contains(&entry.fingerprint) {
            return false;
        }
        self.revoked.push(entry);
        true
    }

    fn fingerprints(&self) -> HashSet<[u8; 32]> {
        self.revoked.iter().filter_map(|r| parse_fingerprint(&r.fingerprint).ok()).collect()
    }
}

/// Parses a SHA-256 fingerprint written as hex (an optional `sha256:` prefix and colons are
/// accepted, as `collective ca inspect` prints it).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], PkiError> {
    let t = text.trim();
    let t = t.strip_prefix("sha256:").unwrap_or(t).replace(':', "");
    let bytes = hex::decode(&t).map_err(|_| PkiError::Invalid(format!("'{text}' is not a hex SHA-256 fingerprint")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| PkiError::Invalid(format!("'{text}' is not a SHA-256 fingerprint (64 hex digits)")))
}

#[derive(Debug, Default)]
struct Watched {
    path: Option<PathBuf>,
    modified: Option<SystemTime>,
    set: HashSet<[u8; 32]>,
    /// Member domains removed from the federation: every certificate naming one is refused.
    removed: HashSet<String>,
    /// The federation domain, when we trust a federation root: a principal's member domain
    /// must be exactly one name below it (`check_member_domain`).
    federation: Option<String>,
    /// Other members' revocations (from their signed gossip state): fingerprint → the
    /// member that listed it. Enforced only on certificates naming a principal of that
    /// member, so no member can revoke another's certificates.
    foreign: HashMap<[u8; 32], HashSet<String>>,
}

/// The revoked fingerprints a process enforces, shared by its TLS verifiers and its per-call
/// checks, and refreshed from the list file when that changes.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    inner: Arc<RwLock<Watched>>,
}

impl Revocations {
    /// Enforces the list at `path` (read now; re-read by [`Revocations::refresh`]).
    pub fn watch(&self, path: &Path) -> Result<usize, PkiError> {
        if let Ok(mut w) = self.inner.write() {
            w.path = Some(path.to_path_buf());
            w.modified = None;
        }
        self.refresh().map(|_| self.len())
    }

    /// Re-reads the list file if it changed since the last read; returns whether it did.
    /// A list that cannot be read leaves the previous one in force.
    pub fn refresh(&self) -> Result<bool, PkiError> {
        let (path, seen) = match self.inner.read() {
            Ok(w) => match &w.path {
                Some(p) => (p.clone(), w.modified),
                None => return Ok(false),
            },
            Err(_) => return Ok(false),
        };
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == seen {
            return Ok(false);
        }
        let list = RevocationList::load(&path)?;
        let set = list.fingerprints();
        if let Ok(mut w) = self.inner.write() {
            let changed = w.set != set;
            w.set = set;
            w.modified = modified;
            return Ok(changed);
        }
        Ok(false)
    }

    /// Whether the certificate (DER) is revoked, or names a principal this process refuses
    /// (see [`Revocations::principal_refusal`]); what TLS handshakes check.
    pub fn is_revoked(&self, der: &[u8]) -> bool {
        self.is_certificate_revoked(der) || self.refusal_of_der(der).is_some()
    }

    /// Why the principal a certificate (DER) names is refused, if it is.
    pub fn refusal_of_der(&self, der: &[u8]) -> Option<String> {
        // Parse only when something can refuse a principal at all.
        let Ok(w) = self.inner.read() else { return None };
        if w.removed.is_empty() && w.federation.is_none() {
            return None;
        }
        drop(w);
        let (p, _) = crate::tls::peer_from_der(der).ok()?;
        self.principal_refusal(&p)
    }

    /// Why `p` is refused whatever its certificate: its member was removed from the
    /// federation, or its member domain is not one name below the federation domain.
    pub fn principal_refusal(&self, p: &collective_core::Principal) -> Option<String> {
        let w = self.inner.read().ok()?;
        if w.removed.contains(&p.domain) {
            return Some(format!(
                "{} was removed from the federation; its principals (here {p}) are no longer accepted",
                p.domain
            ));
        }
        let federation = w.federation.as_deref()?;
        crate::root::check_member_domain(p, federation).err().map(|e| e.to_string())
    }

    /// Takes the federation domain whose member-domain rule every peer must follow.
    pub fn set_federation(&self, domain: &str) {
        if let Ok(mut w) = self.inner.write() {
            w.federation = Some(domain.to_string());
        }
    }

    /// Whether this very certificate (DER) is on the revocation list. For a caller already
    /// parsed, which checks [`Revocations::is_member_removed`] on its domain itself.
    pub fn is_certificate_revoked(&self, der: &[u8]) -> bool {
        let Ok(w) = self.inner.read() else { return false };
        // Every call checks its caller: hash only when something is revoked at all.
        if w.set.is_empty() && w.foreign.is_empty() {
            return false;
        }
        let fp = crate::cert::fingerprint_bytes(der);
        if w.set.contains(&fp) {
            return true;
        }
        match w.foreign.get(&fp) {
            Some(members) => crate::tls::peer_from_der(der).is_ok_and(|(p, _)| members.contains(&p.domain)),
            None => false,
        }
    }

    /// Enforces other members' revocations: for each member domain, the fingerprints its
    /// CA revoked (as its signed gossip state lists them). Returns whether anything changed.
    pub fn set_member_revocations(&self, lists: &HashMap<String, Vec<[u8; 32]>>) -> bool {
        let mut foreign: HashMap<[u8; 32], HashSet<String>> = HashMap::new();
        for (member, fps) in lists {
            for fp in fps {
                foreign.entry(*fp).or_default().insert(member.clone());
            }
        }
        match self.inner.write() {
            Ok(mut w) if w.foreign != foreign => {
                w.foreign = foreign;
                true
            }
            _ => false,
        }
    }

    /// How many of other members' revocations are enforced.
    pub fn member_revocations(&self) -> usize {
        self.inner.read().map(|w| w.foreign.len()).unwrap_or(0)
    }

    /// Whether `domain` is a member removed from the federation.
    pub fn is_member_removed(&self, domain: &str) -> bool {
        self.inner.read().map(|w| w.removed.contains(domain)).unwrap_or(false)
    }

    /// Refuses every certificate of exactly these member domains (a coordinator's removals,
    /// which its nodes take too). Returns whether the set changed.
    pub fn set_removed_members<S: AsRef<str>>(&self, domains: &[S]) -> bool {
        let set: HashSet<String> = domains.iter().map(|d| d.as_ref().to_string()).collect();
        match self.inner.write() {
            Ok(mut w) if w.removed != set => {
                w.removed = set;
                true
            }
            _ => false,
        }
    }

    /// The removed member domains, sorted.
    pub fn removed_members(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.read().map(|w| w.removed.iter().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    /// The revoked fingerprints (what a coordinator hands its nodes).
    pub fn fingerprints(&self) -> Vec<[u8; 32]> {
        self.inner.read().map(|w| w.set.iter().copied().collect()).unwrap_or_default()
    }

    /// Enforces exactly `fingerprints` (a node takes its coordinator's list); entries of the
    /// wrong length are ignored. Returns whether the set changed.
    pub fn replace<B: AsRef<[u8]>>(&self, fingerprints: &[B]) -> bool {
        let set: HashSet<[u8; 32]> = fingerprints.iter().filter_map(|b| <[u8; 32]>::try_from(b.as_ref()).ok()).collect();
        match self.inner.write() {
            Ok(mut w) if w.set != set => {
                w.set = set;
                true
            }
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|w| w.set.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fp: &str) -> RevokedCert {
        RevokedCert {
            fingerprint: fp.into(),
            principal: "bob@alice.collective.local".into(),
            not_after: "2030-01-01T00:00:00Z".into(),
            revoked_at: "2026-01-01T00:00:00Z".into(),
            reason: "laptop stolen".into(),
        }
    }

    /// A client certificate (DER) from a fresh CA of `member`.
    fn client_leaf(dir: &std::path::Path, member: &str) -> Vec<u8> {
        let ca = crate::MemberCa::init(member, &format!("{member}.collective.local"), &dir.join(member)).unwrap();
        let issued = ca
            .issue(&crate::IssueRequest {
                role: collective_core::Role::Client,
                name: "someone".into(),
                sans: vec![],
                not_before: None,
                not_after: None,
            })
            .unwrap();
        crate::cert::pem_ders(&issued.chain_pem).unwrap().swap_remove(0)
    }

    #[test]
    fn lists_round_trip_and_are_picked_up_when_they_change() {
        let dir = std::env::temp_dir().join(format!("collective-revocation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(REVOCATION_FILE);
        let _ = std::fs::remove_file(&path);
        let der = b"a certificate".to_vec();
        let fp = crate::fingerprint(&der);

        let revs = Revocations::default();
        assert_eq!(revs.watch(&path).unwrap(), 0, "a missing list is empty");
        assert!(!revs.is_revoked(&der));

        let mut list = RevocationList::load(&path).unwrap();
        assert!(list.add(entry(&fp)));
        assert!(!list.add(entry(&fp.to_uppercase())), "the same certificate twice");
        list.save(&path).unwrap();
        assert!(revs.refresh().unwrap());
        assert!(revs.is_revoked(&der));
        assert!(!revs.refresh().unwrap(), "unchanged file");

        // A damaged list leaves the previous one in force and says which file.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "{ not json").unwrap();
        let err = revs.refresh().unwrap_err().to_string();
        assert!(err.contains("revoked.json"), "{err}");
        assert!(revs.is_revoked(&der));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn removed_members_lose_every_certificate_and_others_keep_theirs() {
        let dir = std::env::temp_dir().join(format!("collective-removed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let leaf = |member: &str| client_leaf(&dir, member);
        let (bob, carol) = (leaf("bob"), leaf("carol"));
        let revs = Revocations::default();
        assert!(!revs.is_revoked(&bob));
        assert!(revs.set_removed_members(&["bob.collective.local"]));
        assert!(!revs.set_removed_members(&["bob.collective.local"]), "unchanged");
        assert!(revs.is_revoked(&bob), "any certificate of a removed member is refused");
        assert!(revs.is_member_removed("bob.collective.local"));
        assert!(!revs.is_revoked(&carol));
        assert!(revs.is_empty(), "removals are not certificate revocations");
        assert_eq!(revs.removed_members(), vec!["bob.collective.local".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_member_revokes_its_own_certificates_federation_wide_and_never_another_members() {
        let dir = std::env::temp_dir().join(format!("collective-foreign-revoked-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let leaf = |member: &str| client_leaf(&dir, member);
        let (bob, carol) = (leaf("bob"), leaf("carol"));
        let fp = |der: &[u8]| crate::cert::fingerprint_bytes(der);
        let revs = Revocations::default();
        let mut lists = HashMap::new();
        lists.insert("bob.collective.local".to_string(), vec![fp(&bob)]);
        // bob also lists carol's certificate: not his to revoke.
        lists.get_mut("bob.collective.local").unwrap().push(fp(&carol));
        assert!(revs.set_member_revocations(&lists));
        assert!(!revs.set_member_revocations(&lists), "unchanged");
        assert!(revs.is_revoked(&bob), "bob's own revocation holds here");
        assert!(!revs.is_revoked(&carol), "bob cannot revoke carol's certificate");
        // mallory copying bob's list changes nothing for bob's revocation.
        lists.insert("mallory.collective.local".to_string(), vec![fp(&bob)]);
        for _ in 0..10 {
            revs.set_member_revocations(&lists);
            assert!(revs.is_revoked(&bob));
        }
        assert!(revs.is_empty(), "other members' lists are not ours (nodes get ours only)");
        assert_eq!(revs.member_revocations(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fingerprints_are_accepted_as_inspect_prints_them() {
        let fp = "ab".repeat(32);
        assert!(parse_fingerprint(&fp).is_ok());
        assert!(parse_fingerprint(&format!("sha256:{fp}")).is_ok());
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint("zz").is_err());
    }
}
