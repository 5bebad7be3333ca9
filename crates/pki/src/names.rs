//! The names a member's certificates have carried, so that none is ever given again.
//!
//! A grant, an audit entry or a revoked certificate names a principal. If a new
//! certificate could carry an old name, whoever holds it would inherit the old holder's
//! grants (or shake off a revocation). So every flow that makes a certificate for a new
//! name (`ca issue`, `invite redeem`, `ca init`, `member join`, `dev up`) claims the name
//! here first, and a name once claimed is refused for good. The register is `names` in the
//! member CA directory, one name per line, appended under an exclusive file lock (the CLI
//! and the coordinator may both claim at once). Names in the revocation list count as
//! taken too: certificates issued before the register existed are known there only.
//! Renewing a certificate (`ca renew`, `ca rotate`) keeps its holder and claims nothing.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use collective_core::{Principal, validate_name};

use crate::PkiError;
use crate::revocation::{REVOCATION_FILE, RevocationList};

/// File name of the register inside a member CA directory.
pub const NAMES_FILE: &str = "names";

/// The register of one member CA directory.
pub struct NameRegister {
    dir: PathBuf,
    domain: String,
}

impl NameRegister {
    pub fn new(ca_dir: &Path, domain: &str) -> NameRegister {
        NameRegister {
            dir: ca_dir.to_path_buf(),
            domain: domain.to_string(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(NAMES_FILE)
    }

    fn open(&self) -> Result<File, PkiError> {
        let path = self.path();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|source| PkiError::Write {
                path: path.clone(),
                source,
            })?;
        use std::os::fd::AsRawFd;
        // An exclusive lock for the life of `file` (released when it closes). `File::lock`
        // would do, but it is newer than our minimum Rust.
        // SAFETY: `file` is open for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(PkiError::Write {
                path,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(file)
    }

    /// Every name taken: the register's and the revocation list's (locked reader).
    fn taken_in(&self, file: &mut File) -> Result<BTreeSet<String>, PkiError> {
        let path = self.path();
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text))
            .map_err(|source| PkiError::Read {
                path: path.clone(),
                source,
            })?;
        let mut names: BTreeSet<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        for r in RevocationList::load(&self.dir.join(REVOCATION_FILE))?.revoked {
            if let Ok(p) = r.principal.parse::<Principal>()
                && p.domain == self.domain
            {
                names.insert(p.name);
            }
        }
        Ok(names)
    }

    /// Every name this member's certificates have carried, as far as the register knows.
    pub fn taken(&self) -> Result<BTreeSet<String>, PkiError> {
        let mut file = self.open()?;
        self.taken_in(&mut file)
    }

    /// Whether `name` is free; when it is not, the refusal names a free one.
    pub fn check(&self, name: &str) -> Result<(), PkiError> {
        validate_name(name)?;
        let taken = self.taken()?;
        self.refuse_if_taken(name, &taken)
    }

    fn refuse_if_taken(&self, name: &str, taken: &BTreeSet<String>) -> Result<(), PkiError> {
        if !taken.contains(name) {
            return Ok(());
        }
        Err(PkiError::NameTaken {
            principal: format!("{name}@{}", self.domain),
            suggestion: free_name(name, taken),
        })
    }

    /// Claims `name` for a new certificate; refuses a name ever claimed before.
    pub fn claim(&self, name: &str) -> Result<(), PkiError> {
        self.claim_with(name, || Ok::<_, PkiError>(()))
    }

    /// Claims `name` if `then` succeeds, holding the register's lock from the check to the
    /// claim: a refused name runs nothing (an invite is not used up), and a `then` that
    /// fails claims nothing (a name is not burnt by a bad invite).
    pub fn claim_with<T, E: From<PkiError>>(&self, name: &str, then: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        validate_name(name).map_err(PkiError::from)?;
        let mut file = self.open()?;
        let taken = self.taken_in(&mut file)?;
        self.refuse_if_taken(name, &taken)?;
        let out = then()?;
        self.append(&mut file, name)?;
        Ok(out)
    }

    fn append(&self, file: &mut File, name: &str) -> Result<(), PkiError> {
        let path = self.path();
        file.write_all(format!("{name}\n").as_bytes())
            .and_then(|_| file.sync_data())
            .map_err(|source| PkiError::Write { path, source })
    }
}

/// A name like `base` that is not in `taken`: `base-2`, `base-3`, ...
pub fn free_name(base: &str, taken: &BTreeSet<String>) -> String {
    (2u32..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken.contains(n))
        .unwrap_or_else(|| format!("{base}-new"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("collective-names-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_name_is_claimed_once_and_the_refusal_suggests_a_free_one() {
        let dir = scratch("once");
        let reg = NameRegister::new(&dir, "alice.collective.local");
        reg.check("mom").unwrap();
        reg.claim("mom").unwrap();
        reg.claim("mom-2").unwrap();
        let e = reg.claim("mom").unwrap_err().to_string();
        assert!(e.contains("mom@alice.collective.local") && e.contains("mom-3"), "{e}");
        assert!(reg.check("mom").is_err());
        // Another handle on the same directory (the CLI while the coordinator runs).
        let other = NameRegister::new(&dir, "alice.collective.local");
        assert!(other.claim("mom").is_err());
        other.claim("dad").unwrap();
        assert!(reg.taken().unwrap().contains("dad"));
        assert!(reg.claim("../x").is_err());
        // What fails after the check claims nothing.
        assert!(
            reg.claim_with("kid", || Err::<(), PkiError>(PkiError::Invalid("expired invite".into())))
                .is_err()
        );
        reg.claim("kid").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_of_revoked_certificates_count_as_taken() {
        let dir = scratch("revoked");
        let list = RevocationList {
            version: 1,
            revoked: vec![crate::RevokedCert {
                fingerprint: "00".repeat(32),
                principal: "eve@alice.collective.local".into(),
                not_after: "2030-01-01T00:00:00Z".into(),
                revoked_at: "2026-01-01T00:00:00Z".into(),
                reason: "lost laptop".into(),
            }],
        };
        std::fs::write(dir.join(REVOCATION_FILE), serde_json::to_string(&list).unwrap()).unwrap();
        let reg = NameRegister::new(&dir, "alice.collective.local");
        assert!(reg.claim("eve").is_err());
        reg.claim("bob").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
