//! Member certificate authorities and the certificates they issue.
//!
//! A member CA directory holds `ca.crt` and `ca.key` (0600). Once federation lands, a
//! member CA signed by the federation root also holds `root.crt`; certificates issued
//! from it then carry the member CA in their chain and trust the root.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use collective_core::{Principal, Role, validate_name};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SanType,
    SerialNumber,
};
use time::OffsetDateTime;

use crate::PkiError;
use crate::cert::CertInfo;
use crate::keyfile::{check_key_permissions, write_private_file};

pub(crate) const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86400);
/// Clock skew tolerated between machines of one member.
pub(crate) const BACKDATE: Duration = Duration::from_secs(3600);

/// What to put in a new certificate.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub role: Role,
    pub name: String,
    /// Extra host names or IP addresses the certificate is valid for.
    pub sans: Vec<String>,
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
}

/// An issued certificate and its freshly made key, PEM encoded.
pub struct Issued {
    pub principal: Principal,
    /// Leaf certificate followed by any intermediate (the member CA when it is root-signed).
    pub chain_pem: String,
    pub key_pem: String,
    /// The certificate peers must trust (the member CA, or the federation root).
    pub trust_anchor_pem: String,
}

/// A member certificate authority loaded from its directory.
pub struct MemberCa {
    pub dir: PathBuf,
    pub member: String,
    pub domain: String,
    cert_pem: String,
    root_pem: Option<String>,
    key: KeyPair,
}

pub(crate) fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // SystemRandom only fails when the OS has no randomness at all; fall back to the clock.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        b[..16].copy_from_slice(&collective_core::unix_ms_now().to_le_bytes().repeat(2));
    }
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

/// Refuses to overwrite an existing CA key, creates `out`, and returns the key's path.
pub(crate) fn fresh_ca_dir(out: &Path, key_file: &str, what: &str) -> Result<PathBuf, PkiError> {
    let key_path = out.join(key_file);
    if key_path.exists() {
        return Err(PkiError::Invalid(format!(
            "{} already exists; {what} is never overwritten. Choose another --out directory or remove the old one first",
            key_path.display()
        )));
    }
    fs::create_dir_all(out).map_err(|source| PkiError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(key_path)
}

pub(crate) fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A signing certificate and its private key (whose permissions are checked first).
pub(crate) fn read_signing_pair(cert_path: &Path, key_path: &Path) -> Result<(String, KeyPair), PkiError> {
    let cert_pem = read(cert_path)?;
    check_key_permissions(key_path)?;
    let key = KeyPair::from_pem(&read(key_path)?).map_err(|e| PkiError::BadFile {
        path: key_path.to_path_buf(),
        what: "private key",
        detail: e.to_string(),
    })?;
    Ok((cert_pem, key))
}

pub(crate) fn write_public(path: &Path, data: &str) -> Result<(), PkiError> {
    fs::write(path, data).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

impl MemberCa {
    /// Makes a new self-signed member CA in `out`. Refuses to overwrite an existing CA.
    pub fn init(member: &str, domain: &str, out: &Path) -> Result<MemberCa, PkiError> {
        validate_name(member)?;
        // Validates the domain the same way principals do.
        Principal::new("ca", domain)?;
        let key_path = fresh_ca_dir(out, "ca.key", "a CA")?;
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("{member} member CA"));
        params.distinguished_name.push(DnType::OrganizationName, domain);
        params.distinguished_name.push(DnType::OrganizationalUnitName, "member-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        write_private_file(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&out.join("ca.crt"), &cert_pem)?;
        Ok(MemberCa {
            dir: out.to_path_buf(),
            member: member.to_string(),
            domain: domain.to_string(),
            cert_pem,
            root_pem: None,
            key,
        })
    }

    /// First half of joining a federation: makes this member's CA key in `out` (it never
    /// leaves this machine) and returns a signing request for the federation root.
    pub fn begin_join(member: &str, domain: &str, out: &Path) -> Result<String, PkiError> {
        validate_name(member)?;
        Principal::new("ca", domain)?;
        if out.join("ca.crt").exists() {
            return Err(PkiError::Invalid(format!(
                "{} already holds a CA; a CA is never overwritten. Choose another --out directory",
                out.display()
            )));
        }
        let key_path = fresh_ca_dir(out, "ca.key", "a CA")?;
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("{member} member CA"));
        params.distinguished_name.push(DnType::OrganizationName, domain);
        let csr = params.serialize_request(&key)?.pem()?;
        write_private_file(&key_path, key.serialize_pem().as_bytes())?;
        Ok(csr)
    }

    /// Second half of joining: stores the member CA certificate the root signed for the
    /// key made by [`MemberCa::begin_join`], and the root certificate, then loads the CA.
    pub fn finish_join(dir: &Path, ca_pem: &str, root_pem: &str) -> Result<MemberCa, PkiError> {
        let key_path = dir.join("ca.key");
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| PkiError::BadFile {
            path: key_path.clone(),
            what: "private key",
            detail: e.to_string(),
        })?;
        let info = CertInfo::from_pem(ca_pem)?;
        if info.public_key != key.public_key_raw() || !info.is_ca {
            return Err(PkiError::Invalid(
                "the federation returned a CA certificate that is not for this member's key".into(),
            ));
        }
        CertInfo::from_pem(root_pem)?;
        write_public(&dir.join("ca.crt"), ca_pem)?;
        write_public(&dir.join("root.crt"), root_pem)?;
        MemberCa::load(dir)
    }

    /// Loads a member CA from its directory, checking its key's permissions.
    pub fn load(dir: &Path) -> Result<MemberCa, PkiError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let (cert_pem, key) = read_signing_pair(&cert_path, &key_path)?;
        let info = CertInfo::from_pem(&cert_pem).map_err(|e| PkiError::BadFile {
            path: cert_path.clone(),
            what: "CA certificate",
            detail: e.to_string(),
        })?;
        let domain = info.organization.clone().ok_or_else(|| PkiError::BadFile {
            path: cert_path.clone(),
            what: "member CA certificate",
            detail: "its subject names no member domain (O=)".into(),
        })?;
        let member = info.common_name.trim_end_matches(" member CA").to_string();
        let root_path = dir.join("root.crt");
        let root_pem = if root_path.exists() { Some(read(&root_path)?) } else { None };
        Ok(MemberCa {
            dir: dir.to_path_buf(),
            member,
            domain,
            cert_pem,
            root_pem,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The register of names this member's certificates have carried (see `names.rs`).
    pub fn names(&self) -> crate::NameRegister {
        crate::NameRegister::new(&self.dir, &self.domain)
    }

    /// The certificate peers of this member trust.
    pub fn trust_anchor_pem(&self) -> &str {
        self.root_pem.as_deref().unwrap_or(&self.cert_pem)
    }

    /// Issues a certificate for `name@domain` with the given role and a new key.
    pub fn issue(&self, req: &IssueRequest) -> Result<Issued, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let (principal, chain_pem) = self.sign_key(req, &key)?;
        Ok(Issued {
            principal,
            chain_pem,
            key_pem: key.serialize_pem(),
            trust_anchor_pem: self.trust_anchor_pem().to_string(),
        })
    }

    /// Signs the public key of a certificate signing request (made by [`new_csr`] on the
    /// requester's machine, so the private key never travels) as `req` describes. What the
    /// request itself asks for (names, usages) is ignored. Returns the principal and the
    /// certificate chain.
    pub fn sign_csr(&self, csr_pem: &str, req: &IssueRequest) -> Result<(Principal, String), PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Invalid(format!("not a valid certificate signing request: {e}")))?;
        if csr.public_key.algorithm() != &PKCS_ED25519 {
            return Err(PkiError::Invalid("the signing request's key is not Ed25519".into()));
        }
        self.sign_key(req, &csr.public_key)
    }

    fn sign_key(&self, req: &IssueRequest, key: &impl rcgen::PublicKeyData) -> Result<(Principal, String), PkiError> {
        let principal = Principal::new(&req.name, &self.domain)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, principal.to_string());
        params.distinguished_name.push(DnType::OrganizationName, self.domain.as_str());
        params.distinguished_name.push(DnType::OrganizationalUnitName, req.role.as_str());
        params.not_before = req.not_before.unwrap_or(now - BACKDATE);
        params.not_after = req.not_after.unwrap_or(now + LEAF_VALIDITY);
        if params.not_after <= params.not_before {
            return Err(PkiError::Invalid("the certificate would expire before it becomes valid".into()));
        }
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if req.role.is_server() {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        let mut sans = vec![SanType::DnsName(principal.dns_name().try_into()?)];
        for s in &req.sans {
            let san = match s.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if self.root_pem.is_some() && !s.ends_with(&format!(".{}", self.domain)) => {
                    return Err(PkiError::Invalid(format!(
                        "--san '{s}': a member CA of a federation may only name hosts in {} (or IP addresses); peers would refuse the certificate",
                        self.domain
                    )));
                }
                Err(_) => SanType::DnsName(
                    s.as_str()
                        .try_into()
                        .map_err(|_| PkiError::Invalid(format!("--san '{s}' is neither an IP address nor a host name")))?,
                ),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(key, &issuer)?;
        let mut chain_pem = cert.pem();
        if self.root_pem.is_some() {
            chain_pem.push_str(&self.cert_pem);
        }
        Ok((principal, chain_pem))
    }

    /// Issues a successor to the certificate `old_pem` (one this CA issued): same
    /// principal, role and extra names, new serial and validity. With `key_pem` the new
    /// certificate is for that key (a renewal keeps the holder's key); without, a fresh key
    /// is made and returned in [`Issued::key_pem`].
    pub fn reissue(
        &self,
        old_pem: &str,
        key_pem: Option<&str>,
        not_before: Option<OffsetDateTime>,
        not_after: Option<OffsetDateTime>,
    ) -> Result<(Role, Issued), PkiError> {
        let old = CertInfo::from_pem(old_pem)?;
        let principal = old.principal()?;
        let role = old.role()?;
        if principal.domain != self.domain {
            return Err(PkiError::Invalid(format!(
                "the certificate is for {principal}, but this CA issues certificates for {}; use that member's CA",
                self.domain
            )));
        }
        let req = IssueRequest {
            role,
            name: principal.name.clone(),
            sans: old
                .sans
                .iter()
                .filter(|s| !s.eq_ignore_ascii_case(&principal.dns_name()))
                .cloned()
                .collect(),
            not_before,
            not_after,
        };
        let (key, fresh) = match key_pem {
            Some(pem) => (
                KeyPair::from_pem(pem).map_err(|e| PkiError::Invalid(format!("not a usable private key: {e}")))?,
                false,
            ),
            None => (KeyPair::generate_for(&PKCS_ED25519)?, true),
        };
        if !fresh && key.public_key_raw() != old.public_key.as_slice() {
            return Err(PkiError::Invalid(
                "the private key does not belong to this certificate; name the certificate's own key, or make a new one".into(),
            ));
        }
        let (principal, chain_pem) = self.sign_key(&req, &key)?;
        Ok((
            role,
            Issued {
                principal,
                chain_pem,
                key_pem: if fresh { key.serialize_pem() } else { String::new() },
                trust_anchor_pem: self.trust_anchor_pem().to_string(),
            },
        ))
    }

    /// Issues a certificate and writes `NAME.crt`, `NAME.key` (0600) and `ca.crt` to `out`.
    /// Returns the certificate and key paths.
    pub fn issue_to(&self, req: &IssueRequest, out: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
        let issued = self.issue(req)?;
        fs::create_dir_all(out).map_err(|source| PkiError::Write {
            path: out.to_path_buf(),
            source,
        })?;
        let cert_path = out.join(format!("{}.crt", req.name));
        let key_path = out.join(format!("{}.key", req.name));
        write_private_file(&key_path, issued.key_pem.as_bytes())?;
        write_public(&cert_path, &issued.chain_pem)?;
        let anchor = out.join("ca.crt");
        if fs::read_to_string(&anchor).ok().as_deref() != Some(issued.trust_anchor_pem.as_str()) {
            write_public(&anchor, &issued.trust_anchor_pem)?;
        }
        Ok((cert_path, key_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("collective-ca-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn issues_certificates_that_carry_principal_and_role() {
        let dir = tmp("issue");
        let ca = MemberCa::init("alice", "alice.collective.local", &dir).unwrap();
        assert!(
            MemberCa::init("alice", "alice.collective.local", &dir).is_err(),
            "never overwrites a CA"
        );
        let req = IssueRequest {
            role: Role::Node,
            name: "node-01".into(),
            sans: vec!["127.0.0.1".into(), "nas.lan".into()],
            not_before: None,
            not_after: None,
        };
        let (crt, _key) = ca.issue_to(&req, &dir.join("node")).unwrap();
        let info = CertInfo::from_pem(&fs::read_to_string(crt).unwrap()).unwrap();
        assert_eq!(info.principal().unwrap().to_string(), "node-01@alice.collective.local");
        assert_eq!(info.role().unwrap(), Role::Node);
        assert!(info.sans.contains(&"nas.lan".to_string()));
        assert!(info.sans.contains(&"127.0.0.1".to_string()));
        let loaded = MemberCa::load(&dir).unwrap();
        assert_eq!(loaded.domain, "alice.collective.local");
        assert_eq!(loaded.member, "alice");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reissue_keeps_principal_role_names_and_key_unless_asked_for_a_new_key() {
        let dir = tmp("reissue");
        let ca = MemberCa::init("alice", "alice.collective.local", &dir).unwrap();
        let req = IssueRequest {
            role: Role::Node,
            name: "node-01".into(),
            sans: vec!["127.0.0.1".into(), "nas.lan".into()],
            not_before: None,
            not_after: None,
        };
        let old = ca.issue(&req).unwrap();
        let old_info = CertInfo::from_pem(&old.chain_pem).unwrap();

        let (role, renewed) = ca.reissue(&old.chain_pem, Some(&old.key_pem), None, None).unwrap();
        let info = CertInfo::from_pem(&renewed.chain_pem).unwrap();
        assert_eq!(role, Role::Node);
        assert_eq!(info.principal().unwrap(), old_info.principal().unwrap());
        assert_eq!(info.role().unwrap(), Role::Node);
        assert_eq!(info.sans, old_info.sans);
        assert_eq!(info.public_key, old_info.public_key, "a renewal keeps the key");
        assert_ne!(info.fingerprint, old_info.fingerprint, "but it is a new certificate");
        assert!(renewed.key_pem.is_empty());

        let (_, fresh) = ca.reissue(&old.chain_pem, None, None, None).unwrap();
        let info = CertInfo::from_pem(&fresh.chain_pem).unwrap();
        assert_ne!(info.public_key, old_info.public_key);
        assert!(!fresh.key_pem.is_empty());

        // Somebody else's key, or a certificate of another member, is refused.
        let err = ca
            .reissue(&old.chain_pem, Some(&fresh.key_pem), None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("does not belong"), "{err}");
        let other = MemberCa::init("bob", "bob.collective.local", &dir.join("bob")).unwrap();
        let err = other.reissue(&old.chain_pem, None, None, None).err().unwrap().to_string();
        assert!(err.contains("alice.collective.local"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
