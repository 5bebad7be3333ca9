//! rustls configurations for mutual TLS 1.3, shared by gRPC (over TCP) and QUIC.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use collective_core::{Principal, Role};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::PkiError;
use crate::cert::{CertInfo, pem_ders};
use crate::keyfile::check_key_permissions;

/// ALPN for gRPC (HTTP/2).
pub const ALPN_GRPC: &[u8] = b"h2";
/// ALPN for the QUIC chunk protocol, version 1.
pub const ALPN_QUIC: &[u8] = b"collective/1";

/// Where a process finds its certificate files (the `[tls]` table of every config).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificate peers must chain to.
    pub ca: PathBuf,
    /// Our certificate (chain).
    pub cert: PathBuf,
    /// Our private key; must not be readable by group or others.
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn load(&self) -> Result<TlsIdentity, PkiError> {
        TlsIdentity::load(&self.ca, &self.cert, &self.key)
    }

    /// Makes relative paths relative to `dir` (the directory of the config file).
    pub fn rebase(&mut self, dir: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }
}

/// A loaded identity: our certificate chain and key, and the CA we trust.
#[derive(Clone)]
pub struct TlsIdentity {
    pub principal: Principal,
    pub role: Role,
    pub cert_path: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
    roots: Arc<RootCertStore>,
    info: CertInfo,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a peer's principal and role from its end-entity certificate.
///
/// The principal must also be one of the certificate's DNS names: member CAs signed by a
/// federation root are name-constrained to their member domain, so this is what stops one
/// member's CA from issuing certificates that claim to be another member's principals.
pub fn peer_from_der(der: &[u8]) -> Result<(Principal, Role), PkiError> {
    let info = CertInfo::from_der(der)?;
    let principal = info.principal()?;
    if !info.sans.iter().any(|s| s.eq_ignore_ascii_case(&principal.dns_name())) {
        return Err(PkiError::NotCollective(format!(
            "it names {principal} but is not valid for the host name {}",
            principal.dns_name()
        )));
    }
    Ok((principal, info.role()?))
}

impl TlsIdentity {
    /// Loads `cert` and `key` (refusing a key others can read) and trusts `ca`.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsIdentity, PkiError> {
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|source| PkiError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        check_key_permissions(key)?;
        let bad = |p: &Path, what: &'static str, e: String| PkiError::BadFile {
            path: p.to_path_buf(),
            what,
            detail: e,
        };
        let chain: Vec<CertificateDer<'static>> = pem_ders(&read(cert)?)
            .map_err(|e| bad(cert, "certificate", e.to_string()))?
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let key_der = PrivateKeyDer::from_pem_slice(read(key)?.as_bytes())
            .map_err(|e| bad(key, "private key", e.to_string()))?
            .secret_der()
            .to_vec();
        let mut roots = RootCertStore::empty();
        for der in pem_ders(&read(ca)?).map_err(|e| bad(ca, "CA certificate", e.to_string()))? {
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| bad(ca, "CA certificate", e.to_string()))?;
        }
        let info = CertInfo::from_der(&chain[0]).map_err(|e| bad(cert, "Collective certificate", e.to_string()))?;
        let principal = info.principal().map_err(|e| bad(cert, "Collective certificate", e.to_string()))?;
        let role = info.role().map_err(|e| bad(cert, "Collective certificate", e.to_string()))?;
        Ok(TlsIdentity {
            principal,
            role,
            cert_path: cert.to_path_buf(),
            chain,
            key_der,
            roots: Arc::new(roots),
            info,
        })
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }

    /// The Ed25519 key in PKCS#8 DER, for signing tokens with the TLS key.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.key_der
    }

    /// Server side: TLS 1.3 only, a client certificate chained to our CA required.
    pub fn server_config(&self, alpn: &[u8]) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        self.server_config_with(alpn, false)
    }

    /// Like [`TlsIdentity::server_config`], but a caller without a certificate may
    /// connect too: the coordinator's bootstrap calls (joining, redeeming invites) need no
    /// certificate, and every other call checks for one itself.
    pub fn server_config_optional_client(&self, alpn: &[u8]) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        self.server_config_with(alpn, true)
    }

    fn server_config_with(&self, alpn: &[u8], optional_client: bool) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let mut builder = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider());
        if optional_client {
            builder = builder.allow_unauthenticated();
        }
        let verifier = builder
            .build()
            .map_err(|e| PkiError::Invalid(format!("cannot build client verifier: {e}")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key())?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// SHA-256 fingerprint of our certificate (what invite codes pin).
    pub fn fingerprint(&self) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.chain[0]);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// Our certificate chain, DER (leaf first).
    pub fn chain_der(&self) -> Vec<Vec<u8>> {
        self.chain.iter().map(|c| c.to_vec()).collect()
    }

    /// Checks a certificate chain (leaf first, DER) the way a TLS handshake would: chained
    /// to what we trust, valid now, allowed as a client, and naming a Collective principal.
    pub fn verify_chain(&self, chain: &[Vec<u8>]) -> Result<(Principal, Role), PkiError> {
        let leaf = chain
            .first()
            .ok_or_else(|| PkiError::NotCollective("empty certificate chain".into()))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| PkiError::Invalid(format!("cannot build verifier: {e}")))?;
        let ders: Vec<CertificateDer<'_>> = chain.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
        verifier.verify_client_cert(&ders[0], &ders[1..], rustls_pki_types::UnixTime::now())?;
        peer_from_der(leaf)
    }

    /// Client side for first contact: no certificate of ours, and the server is trusted
    /// only if its certificate has exactly the SHA-256 `fingerprint` (from an invite code).
    pub fn pinned_client_config(fingerprint: [u8; 32], alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { fingerprint }))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Client side: TLS 1.3 only, presenting our certificate, trusting only our CA.
    pub fn client_config(&self, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key())?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Trusts exactly one server certificate, named by its fingerprint.
#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let d = ring::digest::digest(&ring::digest::SHA256, end_entity);
        if d.as_ref() == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's certificate does not match the fingerprint in the invite code".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not allowed".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}
