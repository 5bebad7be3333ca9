//! Reading certificates: who they name, what role they carry, when they are valid.

use collective_core::{Principal, Role};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::PkiError;

/// What `collective ca inspect` prints, and what authorisation reads from a peer.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub common_name: String,
    pub organization: Option<String>,
    pub org_unit: Option<String>,
    pub issuer: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub sans: Vec<String>,
    pub fingerprint: String,
    pub is_ca: bool,
    /// Raw subject public key (32 bytes for Ed25519).
    pub public_key: Vec<u8>,
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(fingerprint_bytes(der))
}

/// The SHA-256 fingerprint of a certificate (DER), as bytes.
pub fn fingerprint_bytes(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl CertInfo {
    /// Parses the first certificate of a PEM file.
    pub fn from_pem(pem: &str) -> Result<CertInfo, PkiError> {
        let der = first_pem_der(pem)?;
        CertInfo::from_der(&der)
    }

    pub fn from_der(der: &[u8]) -> Result<CertInfo, PkiError> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| PkiError::NotCollective(format!("not a valid X.509 certificate: {e}")))?;
        let subject = cert.subject();
        let first = |it: Option<&x509_parser::x509::AttributeTypeAndValue>| it.and_then(|a| a.as_str().ok()).map(str::to_string);
        let common_name = first(subject.iter_common_name().next()).unwrap_or_default();
        let organization = first(subject.iter_organization().next());
        let org_unit = first(subject.iter_organizational_unit().next());
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            sans.push(std::net::IpAddr::from(a).to_string());
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            sans.push(std::net::IpAddr::from(a).to_string());
                        }
                    }
                    other => sans.push(other.to_string()),
                }
            }
        }
        Ok(CertInfo {
            common_name,
            organization,
            org_unit,
            issuer: cert.issuer().to_string(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            sans,
            fingerprint: fingerprint(der),
            is_ca: cert.is_ca(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// The principal named by the certificate (its common name).
    pub fn principal(&self) -> Result<Principal, PkiError> {
        Ok(self.common_name.parse::<Principal>()?)
    }

    /// The role carried in the certificate (its organisational unit).
    pub fn role(&self) -> Result<Role, PkiError> {
        let ou = self
            .org_unit
            .as_deref()
            .ok_or_else(|| PkiError::NotCollective("it carries no role (OU=)".into()))?;
        Ok(ou.parse::<Role>()?)
    }
}

/// Decodes every certificate in a PEM text.
pub(crate) fn pem_ders(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let out: Vec<Vec<u8>> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::NotCollective(format!("bad PEM: {e}")))?;
    if out.is_empty() {
        return Err(PkiError::NotCollective("no PEM certificate found".into()));
    }
    Ok(out)
}

fn first_pem_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    Ok(pem_ders(pem)?.swap_remove(0))
}
