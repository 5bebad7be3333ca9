//! The federation root CA: it signs member CAs, and nothing else. Its key stays with whoever
//! ran `collective federation init`; members join by sending a signing request.

use std::path::{Path, PathBuf};

use collective_core::{Principal, validate_name};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PKCS_ED25519,
};
use time::OffsetDateTime;

use crate::PkiError;
use crate::ca::{BACKDATE, CA_VALIDITY, fresh_ca_dir, random_serial, read_signing_pair, write_public};
use crate::cert::CertInfo;
use crate::keyfile::write_private_file;

/// Organisational unit that marks a federation root certificate.
pub const ROOT_OU: &str = "federation-root";
/// Organisational unit of a member CA.
pub const MEMBER_CA_OU: &str = "member-ca";

pub struct FederationRoot {
    pub dir: PathBuf,
    /// The federation domain, e.g. `collective.local`.
    pub domain: String,
    cert_pem: String,
    key: KeyPair,
}

/// The member domain of `member` in a federation: `alice` + `collective.local` →
/// `alice.collective.local`.
pub fn member_domain(member: &str, federation: &str) -> String {
    format!("{member}.{federation}")
}

impl FederationRoot {
    /// Makes a new root CA (`root.crt`, `root.key` 0600) in `out`; never overwrites one.
    pub fn init(domain: &str, out: &Path) -> Result<FederationRoot, PkiError> {
        Principal::new("root", domain)?;
        let key_path = fresh_ca_dir(out, "root.key", "a federation root")?;
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{domain} federation root"));
        params.distinguished_name.push(DnType::OrganizationName, domain);
        params.distinguished_name.push(DnType::OrganizationalUnitName, ROOT_OU);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY * 2;
        params.serial_number = Some(random_serial());
        let cert_pem = params.self_signed(&key)?.pem();
        write_private_file(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&out.join("root.crt"), &cert_pem)?;
        Ok(FederationRoot {
            dir: out.to_path_buf(),
            domain: domain.to_string(),
            cert_pem,
            key,
        })
    }

    /// Loads the root from its directory, checking its key's permissions.
    pub fn load(dir: &Path) -> Result<FederationRoot, PkiError> {
        let cert_path = dir.join("root.crt");
        let key_path = dir.join("root.key");
        let (cert_pem, key) = read_signing_pair(&cert_path, &key_path)?;
        let info = CertInfo::from_pem(&cert_pem)?;
        if info.org_unit.as_deref() != Some(ROOT_OU) {
            return Err(PkiError::BadFile {
                path: cert_path,
                what: "federation root certificate",
                detail: "it is not marked as a federation root (OU=federation-root)".into(),
            });
        }
        let domain = info.organization.unwrap_or_default();
        Ok(FederationRoot {
            dir: dir.to_path_buf(),
            domain,
            cert_pem,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs the removal of `member` (a member domain) from the federation.
    pub fn sign_removal(&self, member: &str, removed_ms: u64, reason: &str) -> Result<Vec<u8>, PkiError> {
        let signer = crate::TokenSigner::from_pkcs8(&self.key.serialize_der(), format!("root@{}", self.domain))?;
        Ok(signer.sign_raw(&removal_message(member, removed_ms, reason)).to_vec())
    }

    /// Makes the member CA of `member` in `out` (a new key there) signed by this root, as
    /// for the member that holds the root: the same request and signature a joining member
    /// gets over an invite, without the network.
    pub fn admit_member(&self, member: &str, out: &Path) -> Result<crate::MemberCa, PkiError> {
        validate_name(member)?;
        let domain = member_domain(member, &self.domain);
        let csr = crate::MemberCa::begin_join(member, &domain, out)?;
        let pem = self.sign_member(&csr, member)?;
        crate::MemberCa::finish_join(out, &pem, self.cert_pem())
    }

    /// Signs the CA key in a member's signing request as the member CA of `member`. The CA
    /// may only name principals of its own member domain (a name constraint every TLS peer
    /// enforces), so one member can never pose as another.
    pub fn sign_member(&self, csr_pem: &str, member: &str) -> Result<String, PkiError> {
        validate_name(member)?;
        let domain = member_domain(member, &self.domain);
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Invalid(format!("not a valid certificate signing request: {e}")))?;
        if csr.public_key.algorithm() != &PKCS_ED25519 {
            return Err(PkiError::Invalid("the signing request's key is not Ed25519".into()));
        }
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("{member} member CA"));
        params.distinguished_name.push(DnType::OrganizationName, domain.as_str());
        params.distinguished_name.push(DnType::OrganizationalUnitName, MEMBER_CA_OU);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(domain.clone())],
            excluded_subtrees: vec![],
        });
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        Ok(params.signed_by(&csr.public_key, &issuer)?.pem())
    }
}

/// Domain separation for removal signatures.
const REMOVAL_CONTEXT: &[u8] = b"collective member removal v1\0";

/// The bytes the root signs to remove `member` (a member domain): a fixed context, then the
/// member, the time and the reason, each length-prefixed so no two removals share bytes.
pub fn removal_message(member: &str, removed_ms: u64, reason: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(REMOVAL_CONTEXT.len() + member.len() + reason.len() + 24);
    m.extend_from_slice(REMOVAL_CONTEXT);
    for part in [member.as_bytes(), &removed_ms.to_be_bytes(), reason.as_bytes()] {
        m.extend_from_slice(&(part.len() as u64).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

/// Whether `signature` is the root key's signature removing `member`.
pub fn verify_removal(root_key: &[u8], member: &str, removed_ms: u64, reason: &str, signature: &[u8]) -> bool {
    crate::TokenVerifier::new(root_key).is_ok_and(|v| v.verify_raw(&removal_message(member, removed_ms, reason), signature))
}

/// The federation root's public key, found in a PEM bundle of trusted certificates (every
/// member's trust file holds the root), or None when the bundle holds no federation root.
pub fn federation_root_key(trust_pem: &str) -> Option<Vec<u8>> {
    root_cert(trust_pem).map(|c| c.public_key)
}

/// The federation root among the certificates of `trust_pem`.
fn root_cert(trust_pem: &str) -> Option<CertInfo> {
    crate::cert::pem_ders(trust_pem)
        .ok()?
        .iter()
        .filter_map(|der| CertInfo::from_der(der).ok())
        .find(|c| c.is_ca && c.org_unit.as_deref() == Some(ROOT_OU))
}

/// The federation domain of the root in `trust_pem`, when it holds one.
pub fn federation_domain(trust_pem: &str) -> Option<String> {
    root_cert(trust_pem).and_then(|c| c.organization)
}

/// A member's domain is exactly one name below the federation domain, the one the root
/// signed its CA for (`bob.collective.local`). A member CA's name constraint lets it sign
/// names below its own domain too (`x@y.bob.collective.local`); such a principal would pass
/// for a member of its own, so it is refused wherever a peer is known.
pub fn check_member_domain(p: &Principal, federation: &str) -> Result<(), PkiError> {
    let label = p.domain.strip_suffix(federation).and_then(|h| h.strip_suffix('.'));
    match label {
        Some(l) if collective_core::validate_name(l).is_ok() => Ok(()),
        _ => Err(PkiError::MemberDomain {
            principal: p.to_string(),
            federation: federation.to_string(),
        }),
    }
}

/// Makes a key pair and a signing request naming `common_name`; returns (key PEM, CSR PEM).
/// The key stays with the caller; only the request is sent.
pub fn new_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ED25519)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
}

#[cfg(test)]
mod member_domain_tests {
    use super::*;

    #[test]
    fn a_member_domain_is_exactly_one_name_below_the_federation() {
        let ok: Principal = "x@bob.collective.local".parse().unwrap();
        assert!(check_member_domain(&ok, "collective.local").is_ok());
        for bad in [
            "x@y.bob.collective.local",
            "x@collective.local",
            "x@bob.other.local",
            "x@bobcollective.local",
        ] {
            let p: Principal = bad.parse().unwrap();
            let e = check_member_domain(&p, "collective.local").unwrap_err().to_string();
            assert!(
                e.contains("exactly one name below the federation domain collective.local"),
                "{bad}: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Arc;

    use collective_core::Role;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::{CertificateDer, UnixTime};

    use super::*;
    use crate::cert::pem_ders;
    use crate::{IssueRequest, MemberCa, peer_from_der};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("collective-root-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn client(name: &str) -> IssueRequest {
        IssueRequest {
            role: Role::Client,
            name: name.into(),
            sans: vec!["127.0.0.1".into()],
            not_before: None,
            not_after: None,
        }
    }

    /// Verifies a PEM chain as a TLS client certificate against `root_pem`.
    fn verify(root_pem: &str, chain_pem: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for d in pem_ders(root_pem).unwrap() {
            roots.add(CertificateDer::from(d)).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let chain: Vec<CertificateDer> = pem_ders(chain_pem).unwrap().into_iter().map(CertificateDer::from).collect();
        v.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn members_join_by_csr_and_cannot_issue_for_another_member() {
        let dir = tmp("join");
        let root = FederationRoot::init("collective.local", &dir.join("root")).unwrap();
        assert!(
            FederationRoot::init("collective.local", &dir.join("root")).is_err(),
            "never overwritten"
        );
        let root = FederationRoot::load(&root.dir).unwrap();

        // Alice makes her key locally; only the request goes to the root.
        let csr = MemberCa::begin_join("alice", "alice.collective.local", &dir.join("alice")).unwrap();
        let ca_pem = root.sign_member(&csr, "alice").unwrap();
        let alice = MemberCa::finish_join(&dir.join("alice"), &ca_pem, root.cert_pem()).unwrap();
        assert_eq!(alice.domain, "alice.collective.local");
        assert_eq!(alice.trust_anchor_pem(), root.cert_pem());

        // A certificate alice issues chains to the root.
        let issued = alice.issue(&client("alice")).unwrap();
        verify(root.cert_pem(), &issued.chain_pem).unwrap();
        let leaf = pem_ders(&issued.chain_pem).unwrap().swap_remove(0);
        assert_eq!(peer_from_der(&leaf).unwrap().0.to_string(), "alice@alice.collective.local");

        // A client key made elsewhere, signed through its CSR.
        let (_key, csr) = new_csr("bob").unwrap();
        let (p, chain) = alice.sign_csr(&csr, &client("bob")).unwrap();
        assert_eq!(p.to_string(), "bob@alice.collective.local");
        verify(root.cert_pem(), &chain).unwrap();

        // Alice's CA forging a principal of bob's member: refused by the name constraint.
        let mut forger = MemberCa::load(&dir.join("alice")).unwrap();
        forger.domain = "bob.collective.local".into();
        let forged = forger.issue(&client("bob")).unwrap();
        assert!(verify(root.cert_pem(), &forged.chain_pem).is_err(), "name constraint must refuse");

        // Another federation's root does not accept alice's chain.
        let other = FederationRoot::init("other.local", &dir.join("other")).unwrap();
        assert!(verify(other.cert_pem(), &issued.chain_pem).is_err());

        // The root refuses a CA request for a key that is not Ed25519 or not a CSR at all.
        assert!(root.sign_member("garbage", "carol").is_err());
        // finish_join refuses a certificate for someone else's key.
        let csr2 = MemberCa::begin_join("carol", "carol.collective.local", &dir.join("carol")).unwrap();
        let _ = csr2;
        assert!(MemberCa::finish_join(&dir.join("carol"), &ca_pem, root.cert_pem()).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn removals_verify_only_with_the_root_key_and_unchanged_fields() {
        let dir = tmp("removal");
        let root = FederationRoot::init("collective.local", &dir.join("root")).unwrap();
        let other = FederationRoot::init("collective.local", &dir.join("other")).unwrap();
        let key = federation_root_key(root.cert_pem()).expect("the root's own certificate holds its key");
        let sig = root.sign_removal("bob.collective.local", 1_700_000_000_000, "moved away").unwrap();
        assert!(verify_removal(&key, "bob.collective.local", 1_700_000_000_000, "moved away", &sig));
        assert!(!verify_removal(
            &key,
            "carol.collective.local",
            1_700_000_000_000,
            "moved away",
            &sig
        ));
        assert!(!verify_removal(&key, "bob.collective.local", 1_700_000_000_001, "moved away", &sig));
        assert!(!verify_removal(&key, "bob.collective.local", 1_700_000_000_000, "", &sig));
        let forged = other.sign_removal("bob.collective.local", 1_700_000_000_000, "moved away").unwrap();
        assert!(!verify_removal(
            &key,
            "bob.collective.local",
            1_700_000_000_000,
            "moved away",
            &forged
        ));
        assert!(!verify_removal(
            &key,
            "bob.collective.local",
            1_700_000_000_000,
            "moved away",
            b"short"
        ));
        // A member's trust bundle (member CA + root) yields the root's key, a bundle without one none.
        let csr = MemberCa::begin_join("alice", "alice.collective.local", &dir.join("alice")).unwrap();
        let ca_pem = root.sign_member(&csr, "alice").unwrap();
        assert_eq!(federation_root_key(&format!("{ca_pem}{}", root.cert_pem())), Some(key));
        assert_eq!(federation_root_key(&ca_pem), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
