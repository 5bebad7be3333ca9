//! Certificates, keys, TLS configuration and capability tokens.
//!
//! Owns everything that decides *who* is talking: making and reading member CAs and the
//! certificates they sign (Ed25519, role and principal carried in the subject), key files
//! and their permissions, the rustls configurations (TLS 1.3, mutual auth) used by gRPC and
//! QUIC alike, and the Ed25519-signed tokens that let a node serve a chunk. It does no
//! networking itself.

mod ca;
mod cert;
mod error;
mod invite;
mod keyfile;
mod names;
mod recovery;
mod revocation;
mod root;
pub mod sealing;
mod tls;
mod token;

pub use ca::{IssueRequest, MemberCa};
pub use cert::{CertInfo, fingerprint, fingerprint_bytes};
pub use error::PkiError;
pub use invite::{INVITE_PREFIX, InviteCode, InviteCodeKind};
pub use keyfile::{check_key_permissions, replace_file, write_private_file};
pub use names::{NAMES_FILE, NameRegister, free_name};
pub use recovery::{
    FETCH_SKEW_MS, KitFacts, RECOVERY_SECRET_FILE, RecoveryKit, RecoverySecret, existing_recovery_secret, open_record, open_record_as_of,
    recovery_kit, recovery_secret, sign_record, verify_fetch,
};
pub use revocation::{REVOCATION_FILE, RevocationList, Revocations, RevokedCert, parse_fingerprint};
pub use root::{
    FederationRoot, MEMBER_CA_OU, ROOT_OU, check_member_domain, federation_domain, federation_root_key, member_domain, new_csr,
    removal_message, verify_removal,
};
pub use tls::{ALPN_GRPC, ALPN_QUIC, TlsFiles, TlsIdentity, peer_from_der};
pub use token::{DEFAULT_TOKEN_TTL, TokenError, TokenSigner, TokenVerifier};
