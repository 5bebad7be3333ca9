//! A member's recovery secret and the kit a person prints and keeps outside the house.
//!
//! The secret is 256 random bits. Keys for the member's metadata backups (and the copy of
//! its CA key kept in the federation) are derived from it, so whoever holds the kit can
//! bring the member back on a new machine, and nobody else can read those backups.
//!
//! On paper the secret is 18 words of five letters: 16 carry its bits (16 bits each,
//! consonant-vowel-consonant-vowel-consonant, so every word can be read aloud and typed
//! without ambiguity) and 2 carry a checksum, so a mistyped word is caught before anything
//! is tried with it.

use std::fmt::Write as _;
use std::path::Path;

use crate::PkiError;

const CONSONANTS: &[u8; 16] = b"bdfghjklmnprstvz";
const VOWELS: &[u8; 4] = b"aiou";
const WORDS: usize = 18;
const KIT_TITLE: &str = "Collective recovery kit";
/// File name of the secret beside the member CA (0600).
pub const RECOVERY_SECRET_FILE: &str = "recovery.secret";

/// 256 random bits that can bring a member back.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoverySecret([u8; 32]);

impl std::fmt::Debug for RecoverySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoverySecret(…)")
    }
}

fn word(v: u16) -> String {
    let c = |shift: u16| CONSONANTS[((v >> shift) & 0xF) as usize] as char;
    let o = |shift: u16| VOWELS[((v >> shift) & 0x3) as usize] as char;
    [c(12), o(10), c(6), o(4), c(0)].iter().collect()
}

fn unword(w: &str) -> Option<u16> {
    let b = w.as_bytes();
    if b.len() != 5 {
        return None;
    }
    let c = |x: u8| CONSONANTS.iter().position(|k| *k == x).map(|p| p as u16);
    let o = |x: u8| VOWELS.iter().position(|k| *k == x).map(|p| p as u16);
    Some((c(b[0])? << 12) | (o(b[1])? << 10) | (c(b[2])? << 6) | (o(b[3])? << 4) | c(b[4])?)
}

fn checksum(bytes: &[u8; 32]) -> [u16; 2] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let d = d.as_ref();
    [u16::from_be_bytes([d[0], d[1]]), u16::from_be_bytes([d[2], d[3]])]
}

impl RecoverySecret {
    /// A new secret from the system's randomness.
    pub fn generate() -> Result<RecoverySecret, PkiError> {
        let mut b = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map_err(|_| PkiError::Invalid("no randomness available for a recovery secret".into()))?;
        Ok(RecoverySecret(b))
    }

    /// The 18 words, six per line.
    pub fn to_words(&self) -> String {
        let mut all: Vec<String> = self.0.chunks(2).map(|p| word(u16::from_be_bytes([p[0], p[1]]))).collect();
        all.extend(checksum(&self.0).iter().map(|v| word(*v)));
        all.chunks(6).map(|l| l.join(" ")).collect::<Vec<_>>().join("\n")
    }

    /// Reads the words back, however they are spaced, hyphenated or capitalised.
    pub fn from_words(text: &str) -> Result<RecoverySecret, PkiError> {
        let words: Vec<String> = text
            .split(|c: char| c.is_whitespace() || c == '-' || c == ',')
            .filter(|w| !w.is_empty())
            .map(|w| w.to_ascii_lowercase())
            .collect();
        if words.len() != WORDS {
            return Err(PkiError::Invalid(format!(
                "a recovery secret is {WORDS} words; this has {} (the words go on the lines after `secret:`, with no other line after them)",
                words.len()
            )));
        }
        let mut values = Vec::with_capacity(WORDS);
        for (i, w) in words.iter().enumerate() {
            values.push(unword(w).ok_or_else(|| {
                PkiError::Invalid(format!(
                    "word {} ('{w}') of the recovery secret is not a recovery word (five letters, consonant-vowel-consonant-vowel-consonant); check it against the printed kit",
                    i + 1
                ))
            })?);
        }
        let mut b = [0u8; 32];
        for (i, v) in values[..16].iter().enumerate() {
            b[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
        }
        if checksum(&b) != [values[16], values[17]] {
            return Err(PkiError::Invalid(
                "the recovery secret's words do not match their checksum: a word was mistyped; check each against the printed kit".into(),
            ));
        }
        Ok(RecoverySecret(b))
    }

    /// A 256-bit key for one `purpose` (e.g. "metadata-backup-v1"), derived from the secret;
    /// different purposes give unrelated keys.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"collective-recovery-v1");
        let prk = salt.extract(&self.0);
        let info = [purpose.as_bytes()];
        let mut out = [0u8; 32];
        // HKDF-SHA256 gives up to 8160 bytes; 32 always fit.
        if let Ok(okm) = prk.expand(&info, ring::hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut out);
        }
        out
    }

    /// Saves the secret as hex in `path`, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        crate::keyfile::write_private_file(path, hex::encode(self.0).as_bytes())
    }

    /// Loads a secret saved by [`RecoverySecret::save`].
    pub fn load(path: &Path) -> Result<RecoverySecret, PkiError> {
        crate::keyfile::check_key_permissions(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| PkiError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let bytes = hex::decode(text.trim()).map_err(|_| PkiError::BadFile {
            path: path.to_path_buf(),
            what: "recovery secret",
            detail: "not hex".into(),
        })?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(RecoverySecret)
            .map_err(|_| PkiError::BadFile {
                path: path.to_path_buf(),
                what: "recovery secret",
                detail: "not 32 bytes".into(),
            })
    }
}

/// What a member needs to come back on a new machine, as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryKit {
    /// Member name (alice) and domain (alice.collective.local).
    pub member: String,
    pub domain: String,
    /// The federation domain, and the SHA-256 fingerprint of its root certificate (hex).
    pub federation: String,
    pub root_fingerprint: String,
    /// Coordinators of other members to ask (gRPC addresses), or, for a single member,
    /// its nodes.
    pub bootstrap: Vec<String>,
    pub secret: RecoverySecret,
    /// When the kit was written (RFC 3339).
    pub written: String,
}

impl RecoveryKit {
    /// The kit as a page to print.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{KIT_TITLE}");
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Print this page and keep it outside the house (with a friend, in a safe). It is\n\
             this member's recovery secret: whoever holds it can bring the member back on a new\n\
             machine (docs/operations.md, \"The recovery kit\"). Keep it as secret as the\n\
             member CA's key."
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "member: {}", self.member);
        let _ = writeln!(s, "domain: {}", self.domain);
        let _ = writeln!(s, "federation: {}", self.federation);
        let _ = writeln!(s, "root-fingerprint: {}", self.root_fingerprint);
        for b in &self.bootstrap {
            let _ = writeln!(s, "bootstrap: {b}");
        }
        let _ = writeln!(s, "written: {}", self.written);
        let _ = writeln!(s);
        let _ = writeln!(s, "secret:");
        for line in self.secret.to_words().lines() {
            let _ = writeln!(s, "  {line}");
        }
        s
    }

    /// Reads a kit back (from its file, or typed in again from paper).
    pub fn parse(text: &str) -> Result<RecoveryKit, PkiError> {
        if !text.to_ascii_lowercase().contains(&KIT_TITLE.to_ascii_lowercase()) {
            return Err(PkiError::Invalid(format!(
                "this is not a recovery kit (it has no line \"{KIT_TITLE}\")"
            )));
        }
        // Typed back from paper: keys in any case, with or without a space after the
        // colon, anywhere on their line; the words under `secret:` (or after it on its
        // line) up to the next key or the end, blank lines and all.
        const KEYS: [&str; 7] = [
            "member",
            "domain",
            "federation",
            "root-fingerprint",
            "bootstrap",
            "written",
            "secret",
        ];
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut words = String::new();
        let mut in_secret = false;
        for line in text.lines() {
            let t = line.trim();
            if let Some((k, v)) = t.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if KEYS.contains(&k.as_str()) {
                    in_secret = k == "secret";
                    if in_secret {
                        words.push_str(v);
                        words.push(' ');
                    } else {
                        fields.push((k, v.trim().to_string()));
                    }
                    continue;
                }
            }
            if in_secret {
                words.push_str(t);
                words.push(' ');
            }
        }
        let one = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let needed = |k: &str| {
            one(k).ok_or_else(|| {
                PkiError::Invalid(format!(
                    "the recovery kit has no '{k}:' line; write it as on the printed kit (`{k}: value`, one to a line)"
                ))
            })
        };
        let domain = needed("domain")?;
        let root_fingerprint: String = needed("root-fingerprint")?
            .chars()
            .filter(|c| !c.is_whitespace() && *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        if root_fingerprint.len() != 64 || !root_fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(PkiError::Invalid(format!(
                "the kit's root-fingerprint has {} characters; it is 64 hexadecimal digits (0-9, a-f): compare it with the printed kit",
                root_fingerprint.len()
            )));
        }
        Ok(RecoveryKit {
            member: one("member").unwrap_or_else(|| domain.split('.').next().unwrap_or_default().to_string()),
            federation: one("federation").unwrap_or_default(),
            root_fingerprint,
            bootstrap: fields.iter().filter(|(k, _)| k == "bootstrap").map(|(_, v)| v.clone()).collect(),
            written: one("written").unwrap_or_default(),
            secret: RecoverySecret::from_words(&words)?,
            domain,
        })
    }
}

/// What a member's recovery kit names besides its secret.
#[derive(Debug, Clone)]
pub struct KitFacts {
    /// Member name (alice) and domain (alice.collective.local).
    pub member: String,
    pub domain: String,
    /// The federation domain ("" for a member on its own).
    pub federation: String,
    /// Where recovery asks first: other members' coordinators, or a lone member's nodes.
    pub bootstrap: Vec<String>,
}

/// The member's recovery secret, kept beside its CA in `ca_dir` (made once, the first time
/// it is asked for).
pub fn recovery_secret(ca_dir: &Path) -> Result<RecoverySecret, PkiError> {
    let path = ca_dir.join(RECOVERY_SECRET_FILE);
    if path.exists() {
        return RecoverySecret::load(&path);
    }
    let secret = RecoverySecret::generate()?;
    secret.save(&path)?;
    Ok(secret)
}

/// The member's recovery secret if one was made (never makes one: a secret nobody printed
/// would seal backups no kit can open).
pub fn existing_recovery_secret(ca_dir: &Path) -> Result<Option<RecoverySecret>, PkiError> {
    let path = ca_dir.join(RECOVERY_SECRET_FILE);
    if path.exists() {
        return RecoverySecret::load(&path).map(Some);
    }
    Ok(None)
}

/// The recovery kit of the member whose CA is `ca_dir`, as text to print.
pub fn recovery_kit(ca_dir: &Path, facts: &KitFacts) -> Result<String, PkiError> {
    // A federation member is anchored by the root; a member on its own by its CA.
    let anchor = ["root.crt", "ca.crt"]
        .iter()
        .map(|f| ca_dir.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| PkiError::Invalid(format!("{} holds no CA certificate (root.crt or ca.crt)", ca_dir.display())))?;
    let pem = std::fs::read_to_string(&anchor).map_err(|source| PkiError::Read {
        path: anchor.clone(),
        source,
    })?;
    let root = crate::CertInfo::from_pem(&pem)?;
    let kit = RecoveryKit {
        member: facts.member.clone(),
        domain: facts.domain.clone(),
        federation: if facts.federation.is_empty() {
            "(none: a member on its own)".into()
        } else {
            facts.federation.clone()
        },
        root_fingerprint: root.fingerprint,
        bootstrap: facts.bootstrap.clone(),
        secret: recovery_secret(ca_dir)?,
        written: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    };
    Ok(kit.render())
}

/// Signs and checks what recovery relies on: the request a kit holder makes for its
/// member's recovery record, sealed blobs, and the record itself.
impl RecoverySecret {
    /// The Ed25519 key that proves possession of the kit (its public half rides the
    /// member's recovery record, so keepers can check a fetch without learning the secret).
    fn fetch_key(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&self.derive("recovery-fetch-v1"))
    }

    /// The public key keepers check fetches against.
    pub fn fetch_public_key(&self) -> [u8; 32] {
        self.fetch_key().verifying_key().to_bytes()
    }

    /// Signs a fetch of `member`'s record at `time_ms`.
    pub fn sign_fetch(&self, member: &str, time_ms: u64) -> Vec<u8> {
        use ed25519_dalek::Signer;
        self.fetch_key().sign(&fetch_message(member, time_ms)).to_bytes().to_vec()
    }

    /// Seals `plain` for `purpose` (ChaCha20-Poly1305 under the derived key, a random
    /// nonce in front): only the secret's holder can open it, and any change is caught.
    pub fn seal_blob(&self, purpose: &str, plain: &[u8]) -> Result<Vec<u8>, PkiError> {
        use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
        let key = UnboundKey::new(&CHACHA20_POLY1305, &self.derive(purpose))
            .map(LessSafeKey::new)
            .map_err(|_| PkiError::Invalid("cannot set up sealing".into()))?;
        let mut nonce = [0u8; 12];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| PkiError::Invalid("no randomness available for sealing".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.as_bytes()), &mut out[12..])
            .map_err(|_| PkiError::Invalid("sealing failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens what [`RecoverySecret::seal_blob`] sealed for `purpose`; `None` when it was
    /// sealed under another secret or altered.
    pub fn open_blob(&self, purpose: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
        if sealed.len() < 12 + 16 {
            return None;
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, &self.derive(purpose))
            .map(LessSafeKey::new)
            .ok()?;
        let nonce: [u8; 12] = sealed[..12].try_into().ok()?;
        let mut buf = sealed[12..].to_vec();
        let n = key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.as_bytes()), &mut buf)
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }
}

fn fetch_message(member: &str, time_ms: u64) -> Vec<u8> {
    let mut m = b"collective-recovery-fetch-v1".to_vec();
    m.extend_from_slice(member.as_bytes());
    m.extend_from_slice(&time_ms.to_be_bytes());
    m
}

/// How far a fetch's time may be from the keeper's clock.
pub const FETCH_SKEW_MS: u64 = 10 * 60_000;

/// Checks a kit holder's fetch of `member`'s record against the record's fetch key.
pub fn verify_fetch(public_key: &[u8], member: &str, time_ms: u64, now_ms: u64, signature: &[u8]) -> Result<(), PkiError> {
    if time_ms.abs_diff(now_ms) > FETCH_SKEW_MS {
        return Err(PkiError::Invalid(
            "the request's time is more than 10 minutes from this machine's clock; set the clock right (NTP) and try again".into(),
        ));
    }
    let verifier = crate::TokenVerifier::new(public_key)?;
    if !verifier.verify_raw(&fetch_message(member, time_ms), signature) {
        return Err(PkiError::Invalid(
            "the request is not signed with this member's recovery secret: check the kit is this member's, that no newer kit was written since (`member recovery-kit`), and that its words are typed right".into(),
        ));
    }
    Ok(())
}

const RECORD_CONTEXT: &[u8] = b"collective-recovery-record-v1";

/// Signs an encoded recovery record with the coordinator's token key, chain attached.
pub fn sign_record(
    signer: &crate::TokenSigner,
    identity: &crate::TlsIdentity,
    record: Vec<u8>,
) -> collective_proto::v1::SignedRecoveryRecord {
    let mut msg = RECORD_CONTEXT.to_vec();
    msg.extend_from_slice(&record);
    collective_proto::v1::SignedRecoveryRecord {
        signature: signer.sign_raw(&msg).to_vec().into(),
        chain: identity.chain_der().into_iter().map(Into::into).collect(),
        record: record.into(),
    }
}

/// Checks a signed recovery record with `identity`'s trust (the chain must reach it, and
/// name a coordinator of the member the record is for); returns the record.
pub fn open_record(
    identity: &crate::TlsIdentity,
    signed: &collective_proto::v1::SignedRecoveryRecord,
) -> Result<collective_proto::v1::RecoveryRecord, PkiError> {
    open_record_as_of(identity, signed, false)
}

/// [`open_record`]; with `when_signed`, the chain is checked as of the record's own
/// version (recovery, long after a coordinator whose certificate has expired since died).
pub fn open_record_as_of(
    identity: &crate::TlsIdentity,
    signed: &collective_proto::v1::SignedRecoveryRecord,
    when_signed: bool,
) -> Result<collective_proto::v1::RecoveryRecord, PkiError> {
    use prost::Message;
    let record = collective_proto::v1::RecoveryRecord::decode(signed.record.as_ref())
        .map_err(|e| PkiError::Invalid(format!("malformed recovery record: {e}")))?;
    let chain: Vec<Vec<u8>> = signed.chain.iter().map(|c| c.to_vec()).collect();
    let (principal, role) = if when_signed {
        let at = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_millis(record.version));
        identity.verify_chain_at(&chain, at)?
    } else {
        identity.verify_chain(&chain)?
    };
    if role != collective_core::Role::Coordinator || principal.domain != record.member {
        return Err(PkiError::Invalid(format!(
            "the recovery record of {} is signed by {principal}: only that member's coordinator signs it",
            record.member
        )));
    }
    let leaf = chain
        .first()
        .ok_or_else(|| PkiError::Invalid("the recovery record carries no certificate".into()))?;
    let info = crate::CertInfo::from_der(leaf)?;
    let mut msg = RECORD_CONTEXT.to_vec();
    msg.extend_from_slice(&signed.record);
    if !crate::TokenVerifier::new(&info.public_key)?.verify_raw(&msg, &signed.signature) {
        return Err(PkiError::Invalid(format!(
            "bad signature on the recovery record of {}",
            record.member
        )));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blobs_open_only_with_their_secret_and_purpose() {
        let s = RecoverySecret::generate().unwrap();
        let other = RecoverySecret::generate().unwrap();
        let plain = b"the member's manifest".to_vec();
        let a = s.seal_blob("p1", &plain).unwrap();
        let b = s.seal_blob("p1", &plain).unwrap();
        assert_ne!(a, b, "a fresh nonce every time");
        assert!(!a.windows(plain.len()).any(|w| w == plain.as_slice()), "the plaintext shows");
        assert_eq!(s.open_blob("p1", &a).unwrap(), plain);
        assert!(s.open_blob("p2", &a).is_none(), "another purpose opened it");
        assert!(other.open_blob("p1", &a).is_none(), "another secret opened it");
        let mut altered = a.clone();
        altered[20] ^= 1;
        assert!(s.open_blob("p1", &altered).is_none(), "an altered blob opened");
        assert!(s.open_blob("p1", &a[..10]).is_none());
    }

    #[test]
    fn a_fetch_is_taken_only_signed_by_the_members_secret_for_that_member_and_time() {
        let s = RecoverySecret::generate().unwrap();
        let key = s.fetch_public_key();
        let now = 1_800_000_000_000;
        let sig = s.sign_fetch("alice.collective.local", now);
        assert!(verify_fetch(&key, "alice.collective.local", now, now + 1000, &sig).is_ok());
        // Another member's name, another time, another secret, a stale or future request.
        assert!(verify_fetch(&key, "bob.collective.local", now, now, &sig).is_err());
        assert!(verify_fetch(&key, "alice.collective.local", now + 1, now, &sig).is_err());
        let other = RecoverySecret::generate().unwrap();
        assert!(verify_fetch(&other.fetch_public_key(), "alice.collective.local", now, now, &sig).is_err());
        let e = verify_fetch(&key, "alice.collective.local", now, now + 11 * 60_000, &sig).unwrap_err();
        assert!(e.to_string().contains("10 minutes"), "{e}");
        assert!(verify_fetch(&key, "alice.collective.local", now, now - 11 * 60_000, &sig).is_err());
    }

    #[test]
    fn words_round_trip_and_a_mistyped_word_is_caught() {
        for _ in 0..50 {
            let s = RecoverySecret::generate().unwrap();
            let words = s.to_words();
            assert_eq!(words.split_whitespace().count(), 18);
            assert_eq!(RecoverySecret::from_words(&words).unwrap(), s);
            // Typed back in capitals with hyphens: the same.
            let typed = words.to_uppercase().replace(' ', "-");
            assert_eq!(RecoverySecret::from_words(&typed).unwrap(), s);
        }
        let s = RecoverySecret::generate().unwrap();
        let mut w: Vec<String> = s.to_words().split_whitespace().map(str::to_string).collect();
        // One letter changed in one word: a valid word, but the checksum fails.
        let first = w[3].as_bytes()[1];
        let other = VOWELS.iter().find(|v| **v != first).unwrap();
        w[3].replace_range(1..2, &(*other as char).to_string());
        let e = RecoverySecret::from_words(&w.join(" ")).unwrap_err().to_string();
        assert!(e.contains("mistyped"), "{e}");
        let e = RecoverySecret::from_words("lusab babad").unwrap_err().to_string();
        assert!(e.contains("18 words"), "{e}");
        let e = RecoverySecret::from_words(&"hello ".repeat(18)).unwrap_err().to_string();
        assert!(e.contains("not a recovery word"), "{e}");
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_are_stable() {
        let s = RecoverySecret::generate().unwrap();
        assert_eq!(s.derive("metadata-backup-v1"), s.derive("metadata-backup-v1"));
        assert_ne!(s.derive("metadata-backup-v1"), s.derive("ca-key-v1"));
        assert_ne!(
            s.derive("metadata-backup-v1"),
            RecoverySecret::generate().unwrap().derive("metadata-backup-v1")
        );
    }

    #[test]
    fn a_kit_renders_and_parses_back_and_an_altered_one_is_refused() {
        let kit = RecoveryKit {
            member: "alice".into(),
            domain: "alice.collective.local".into(),
            federation: "collective.local".into(),
            root_fingerprint: "ab".repeat(32),
            bootstrap: vec!["192.168.2.20:7000".into(), "192.168.3.30:7000".into()],
            secret: RecoverySecret::generate().unwrap(),
            written: "2026-12-07T12:00:00Z".into(),
        };
        let page = kit.render();
        assert!(page.contains("keep it outside the house"), "{page}");
        assert_eq!(RecoveryKit::parse(&page).unwrap(), kit);
        let no_domain = page.replace("domain: alice.collective.local\n", "");
        assert!(RecoveryKit::parse(&no_domain).unwrap_err().to_string().contains("'domain:'"));
        assert!(RecoveryKit::parse("hello").unwrap_err().to_string().contains("not a recovery kit"));

        // Typed from paper: a note above the title, keys in capitals without a space after
        // the colon, the fingerprint in groups, the first words on the `secret:` line, a
        // blank line between word rows, a bootstrap line added after the words, and the
        // member, federation and written lines left out.
        let words: Vec<String> = kit.secret.to_words().split_whitespace().map(str::to_string).collect();
        let fp = "ab".repeat(32);
        let typed = format!(
            "typed on 2026-12-08\ncollective RECOVERY kit\nDomain:alice.collective.local\nroot-fingerprint: {} {}\nbootstrap: 192.168.2.20:7000\nSECRET: {}\n\n{}\n bootstrap : 192.168.3.30:7000\n",
            &fp[..32],
            &fp[32..],
            words[..6].join(" "),
            words[6..].join(" ")
        );
        let back = RecoveryKit::parse(&typed).unwrap();
        assert_eq!(back.secret, kit.secret);
        assert_eq!(back.domain, kit.domain);
        assert_eq!(back.member, "alice", "the member is the domain's first name");
        assert_eq!(back.root_fingerprint, kit.root_fingerprint);
        assert_eq!(back.bootstrap, kit.bootstrap);
        let short = page.replace(&"ab".repeat(32), &"ab".repeat(31));
        assert!(RecoveryKit::parse(&short).unwrap_err().to_string().contains("64 hexadecimal"));
        let dir = std::env::temp_dir().join(format!("collective-recovery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(RECOVERY_SECRET_FILE);
        kit.secret.save(&f).unwrap();
        assert_eq!(RecoverySecret::load(&f).unwrap(), kit.secret);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
