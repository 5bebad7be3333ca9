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
pub fn peer_from_der(der: &[u8]) -> Result<(Principal, Role), PkiError> {
    let info = CertInfo::from_der(der)?;
    Ok((info.principal()?, info.role()?))
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
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| PkiError::Invalid(format!("cannot build client verifier: {e}")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key())?;
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
