use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("private key {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}` and start again")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{path} does not hold a usable {what}: {detail}")]
    BadFile { path: PathBuf, what: &'static str, detail: String },
    #[error("certificate is not a Collective certificate: {0}")]
    NotCollective(String),
    #[error(transparent)]
    Principal(#[from] collective_core::PrincipalError),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error(
        "{principal} has been the name of a certificate of this member before (a name is never given twice, so that no new certificate inherits an old one's grants or shakes off its revocation); choose another name, e.g. {suggestion}"
    )]
    NameTaken { principal: String, suggestion: String },
    #[error(
        "{principal} is refused: a member's domain is exactly one name below the federation domain {federation} (like bob.{federation}), the one the root signed its CA for; certificates for deeper names are refused, whoever signed them"
    )]
    MemberDomain { principal: String, federation: String },
    #[error("{0}")]
    Invalid(String),
}
