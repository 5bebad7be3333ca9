//! rustls configurations for mutual TLS 1.3, shared by gRPC (over TCP) and QUIC.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use collective_core::{Principal, Role};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::PkiError;
use crate::cert::{CertInfo, pem_ders};
use crate::keyfile::check_key_permissions;
use crate::revocation::Revocations;

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
///
/// Clones share the certificate in use: [`TlsIdentity::reload`] swaps it for the files'
/// new contents (after `collective ca rotate`), and every TLS configuration made from the
/// identity presents the new certificate on its next handshake, so a rotation needs no
/// restart. Clones also share the [`Revocations`] the process enforces.
#[derive(Clone)]
pub struct TlsIdentity {
    pub principal: Principal,
    pub role: Role,
    pub cert_path: PathBuf,
    key_path: PathBuf,
    live: Arc<RwLock<Live>>,
    roots: Arc<RootCertStore>,
    revocations: Revocations,
    /// The federation root's public key, when the trust file holds a federation root.
    root_key: Option<Arc<Vec<u8>>>,
}

/// The certificate and key currently in use.
struct Live {
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
    info: CertInfo,
    certified: Arc<CertifiedKey>,
    /// Modification times of the certificate and key files when they were read.
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

fn stamps(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

fn read_text(p: &Path) -> Result<String, PkiError> {
    fs::read_to_string(p).map_err(|source| PkiError::Read {
        path: p.to_path_buf(),
        source,
    })
}

fn bad_file(p: &Path, what: &'static str, e: impl std::fmt::Display) -> PkiError {
    PkiError::BadFile {
        path: p.to_path_buf(),
        what,
        detail: e.to_string(),
    }
}

impl Live {
    fn read(cert: &Path, key: &Path) -> Result<Live, PkiError> {
        let stamp = stamps(cert, key);
        check_key_permissions(key)?;
        let chain: Vec<CertificateDer<'static>> = pem_ders(&read_text(cert)?)
            .map_err(|e| bad_file(cert, "certificate", e))?
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let key_der = PrivateKeyDer::from_pem_slice(read_text(key)?.as_bytes())
            .map_err(|e| bad_file(key, "private key", e))?
            .secret_der()
            .to_vec();
        let leaf = chain
            .first()
            .ok_or_else(|| bad_file(cert, "certificate", "the file holds no certificate"))?;
        let info = CertInfo::from_der(leaf).map_err(|e| bad_file(cert, "Collective certificate", e))?;
        let certified = CertifiedKey::from_der(chain.clone(), PrivateKeyDer::Pkcs8(key_der.clone().into()), &provider())
            .map_err(|e| bad_file(key, "private key for this certificate", e))?;
        Ok(Live {
            chain,
            key_der,
            info,
            certified: Arc::new(certified),
            stamp,
        })
    }
}

/// Presents whatever certificate the identity holds now (server and client side).
struct LiveCert(Arc<RwLock<Live>>);

impl std::fmt::Debug for LiveCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCert")
    }
}

impl LiveCert {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|l| l.certified.clone())
    }
}

impl rustls::server::ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for LiveCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The usual chain check, after refusing certificates on the revocation list.
#[derive(Debug)]
struct NotRevoked {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Revocations,
}

impl ClientCertVerifier for NotRevoked {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        if self.revocations.is_certificate_revoked(end_entity) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if let Some(why) = self.revocations.refusal_of_der(end_entity) {
            tracing::warn!("refused a client certificate at the TLS handshake: {why}");
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(std::io::Error::other(why))),
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// ring's TLS 1.3 suites with AES-128-GCM first. Every chunk byte is encrypted once per
/// replica on the way out and decrypted on each node, and AES-128 does 10 rounds where
/// AES-256 does 14; AES-128-GCM is what TLS 1.3 requires every implementation to offer.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
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
        let live = Live::read(cert, key)?;
        let mut roots = RootCertStore::empty();
        let trust = read_text(ca)?;
        for der in pem_ders(&trust).map_err(|e| bad_file(ca, "CA certificate", e))? {
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| bad_file(ca, "CA certificate", e))?;
        }
        let principal = live.info.principal().map_err(|e| bad_file(cert, "Collective certificate", e))?;
        let role = live.info.role().map_err(|e| bad_file(cert, "Collective certificate", e))?;
        let revocations = Revocations::default();
        if let Some(federation) = crate::root::federation_domain(&trust) {
            revocations.set_federation(&federation);
        }
        Ok(TlsIdentity {
            principal,
            role,
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            live: Arc::new(RwLock::new(live)),
            roots: Arc::new(roots),
            revocations,
            root_key: crate::root::federation_root_key(&trust).map(Arc::new),
        })
    }

    /// The federation root's public key (it signs member removals), when we trust one.
    pub fn federation_root_key(&self) -> Option<&[u8]> {
        self.root_key.as_deref().map(Vec::as_slice)
    }

    fn with_live<R>(&self, f: impl FnOnce(&Live) -> R) -> R {
        match self.live.read() {
            Ok(l) => f(&l),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// What our certificate in use says.
    pub fn info(&self) -> CertInfo {
        self.with_live(|l| l.info.clone())
    }

    /// The Ed25519 key in PKCS#8 DER, for signing tokens with the TLS key.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.with_live(|l| l.key_der.clone())
    }

    /// The certificates this process refuses (shared by all clones of the identity).
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Reads the certificate and key files again if they changed since they were loaded
    /// (`collective ca rotate` replaces them) and, when they still name the same principal
    /// and role, uses them for every new handshake. Returns what the new certificate says,
    /// or `None` when nothing changed. On any error the certificate in use stays.
    pub fn reload(&self) -> Result<Option<CertInfo>, PkiError> {
        let now = stamps(&self.cert_path, &self.key_path);
        if self.with_live(|l| l.stamp == now) {
            return Ok(None);
        }
        let new = Live::read(&self.cert_path, &self.key_path)?;
        let who = new
            .info
            .principal()
            .map_err(|e| bad_file(&self.cert_path, "Collective certificate", e))?;
        let role = new
            .info
            .role()
            .map_err(|e| bad_file(&self.cert_path, "Collective certificate", e))?;
        if who != self.principal || role != self.role {
            return Err(PkiError::Invalid(format!(
                "{} now holds a {role} certificate for {who}, but this process runs as {} ({}); \
                 a running process keeps its identity: put the old files back, or restart it",
                self.cert_path.display(),
                self.principal,
                self.role
            )));
        }
        let same_key = self.with_live(|l| l.info.public_key == new.info.public_key);
        if self.role == Role::Coordinator && !same_key {
            return Err(PkiError::Invalid(format!(
                "{} has a new key; a coordinator's key also signs its tokens, invites and gossip, so a running \
                 coordinator only takes a renewed certificate for the same key (`collective ca rotate` without --new-key); \
                 restart it to use the new key",
                self.cert_path.display()
            )));
        }
        let info = new.info.clone();
        match self.live.write() {
            Ok(mut l) => *l = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        Ok(Some(info))
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
        let inner = builder
            .build()
            .map_err(|e| PkiError::Invalid(format!("cannot build client verifier: {e}")))?;
        let verifier = Arc::new(NotRevoked {
            inner,
            revocations: self.revocations.clone(),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(LiveCert(self.live.clone())));
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// SHA-256 fingerprint of our certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.with_live(|l| sha256(&l.chain[0]))
    }

    /// SHA-256 of our public key: what invite codes pin, so that they stay good across a
    /// renewal of the certificate (`collective ca rotate` keeps a coordinator's key).
    pub fn key_fingerprint(&self) -> [u8; 32] {
        self.with_live(|l| sha256(&l.info.public_key))
    }

    /// Our certificate chain, DER (leaf first).
    pub fn chain_der(&self) -> Vec<Vec<u8>> {
        self.with_live(|l| l.chain.iter().map(|c| c.to_vec()).collect())
    }

    /// Checks a certificate chain (leaf first, DER) the way a TLS handshake would: chained
    /// to what we trust, valid now, not revoked, allowed as a client, and naming a
    /// Collective principal.
    pub fn verify_chain(&self, chain: &[Vec<u8>]) -> Result<(Principal, Role), PkiError> {
        self.verify_chain_at(chain, rustls_pki_types::UnixTime::now())
    }

    /// [`TlsIdentity::verify_chain`] as of `at` (a signature made then, checked later: a
    /// certificate that has expired since still vouches for what it signed while valid).
    pub fn verify_chain_at(&self, chain: &[Vec<u8>], at: rustls_pki_types::UnixTime) -> Result<(Principal, Role), PkiError> {
        let leaf = chain
            .first()
            .ok_or_else(|| PkiError::NotCollective("empty certificate chain".into()))?;
        if self.revocations.is_revoked(leaf) {
            return Err(PkiError::Invalid("the certificate has been revoked by its CA".into()));
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| PkiError::Invalid(format!("cannot build verifier: {e}")))?;
        let ders: Vec<CertificateDer<'_>> = chain.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
        verifier.verify_client_cert(&ders[0], &ders[1..], at)?;
        let (principal, role) = peer_from_der(leaf)?;
        if let Some(why) = self.revocations.principal_refusal(&principal) {
            return Err(PkiError::Invalid(why));
        }
        Ok((principal, role))
    }

    /// Client side for first contact: no certificate of ours, and the server is trusted
    /// only if its key (or certificate) has exactly the SHA-256 `fingerprint` (from an
    /// invite code).
    pub fn pinned_client_config(fingerprint: [u8; 32], alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                fingerprint: Some(fingerprint),
            }))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Client side for recovery, when nothing is known but a recovery kit: no certificate
    /// of ours, and any server certificate is taken (its handshake signature is still
    /// checked). Safe only for what is authenticated another way: a recovery record is
    /// sealed under the kit's secret, and the root it carries is checked against the kit's
    /// fingerprint before anything else is trusted.
    pub fn first_contact_client_config(alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { fingerprint: None }))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Client side: TLS 1.3 only, presenting our certificate (the one in use at each
    /// handshake), trusting only our CA.
    pub fn client_config(&self, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(Arc::new(LiveCert(self.live.clone())));
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Trusts exactly one server, named by the SHA-256 of its public key (or, for codes made
/// before keys were pinned, of its certificate); with no fingerprint, any server (see
/// [`TlsIdentity::first_contact_client_config`]). The handshake signature is always checked.
#[derive(Debug)]
struct Pinned {
    fingerprint: Option<[u8; 32]>,
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
        let Some(fingerprint) = self.fingerprint else {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        };
        let key_matches = CertInfo::from_der(end_entity).is_ok_and(|i| sha256(&i.public_key) == fingerprint);
        if key_matches || sha256(end_entity) == fingerprint {
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

#[cfg(test)]
mod tests {
    #[test]
    fn aes_128_gcm_is_offered_first_and_the_other_suites_remain() {
        let suites: Vec<rustls::CipherSuite> = super::provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let all = rustls::crypto::ring::default_provider().cipher_suites.len();
        assert_eq!(suites.len(), all);
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
    }
}
