//! The coordinator's domain errors, and the one place they become gRPC statuses (the
//! service edge): each kind gets its code, namespace errors their `x-collective-error`
//! kind, and every message names what went wrong and what to do.

use collective_core::Rights;
use collective_meta::MetaError;
use collective_rpc::{ErrorKind, status_with_kind};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// Access control said no.
    #[error(
        "{who} lacks the {missing} right on {path} (has: {have}); ask an owner of {owner} on {member} to grant it (`collective datastore grant {owner} {who} {missing}`)"
    )]
    Lacks {
        who: String,
        missing: Rights,
        have: Rights,
        path: String,
        /// The datastore (or `/`) whose owners can grant it.
        owner: String,
        member: String,
    },
    /// Sharing would give rights for longer than the giver holds them.
    #[error("{who}'s own rights on {path} end at {until}; what {who} shares cannot last longer: give --until {until} or earlier")]
    Outlasts { who: String, path: String, until: String },
    /// A certificate matter: a name already carried, a bad signing request.
    #[error(transparent)]
    Pki(#[from] collective_pki::PkiError),
    /// An invite that cannot be used (the words say why and what to do).
    #[error(transparent)]
    Invite(collective_meta::InviteRefusal),
    /// One of our nodes failed or could not be reached.
    #[error("{node}: {detail}")]
    Node { node: String, detail: String },
    /// Another member's coordinator failed, refused or could not be reached.
    #[error("{member}: {detail}")]
    Peer { member: String, detail: String },
    /// A repair or collection cannot go on for this chunk (the words say why).
    #[error("{0}")]
    Stuck(String),
    #[error("this coordinator is not part of a federation")]
    NotFederated,
    #[error("{0} is not a registered node")]
    UnknownNode(String),
    /// The request names something malformed or out of bounds (the words say what).
    #[error("{0}")]
    Invalid(String),
    /// The request cannot be carried out here or now (the words say what to do instead).
    #[error("{0}")]
    Precondition(String),
    /// Something of ours failed that the caller can do nothing about.
    #[error("{0}")]
    Internal(String),
    /// A member (ours or the one called) was removed from the federation.
    #[error("{member} was removed from the federation ({detail})")]
    Removed { member: String, detail: String },
    #[error("this coordinator's trust file holds no federation root, so it cannot check removals")]
    NoFederationRoot,
    #[error("the removal of {0} is not signed by the federation root")]
    ForgedRemoval(String),
    /// A file of the coordinator's own could not be read or written.
    #[error("{what}: {detail}")]
    File { what: String, detail: String },
}

impl Error {
    /// A node's failed call, with the status's message.
    pub fn node(node: &str, s: &Status) -> Error {
        Error::Node {
            node: node.to_string(),
            detail: s.message().to_string(),
        }
    }

    /// Another member's failed call, with the status's message.
    pub fn peer(member: &str, s: &Status) -> Error {
        Error::Peer {
            member: member.to_string(),
            detail: s.message().to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Meta(m) => meta_status(m),
            e @ (Error::Lacks { .. } | Error::Outlasts { .. }) => Status::permission_denied(e.to_string()),
            e @ (Error::Node { .. } | Error::Peer { .. }) => Status::unavailable(e.to_string()),
            e @ (Error::Stuck(_) | Error::NoFederationRoot | Error::NotFederated) => Status::failed_precondition(e.to_string()),
            e @ Error::Removed { .. } => Status::permission_denied(e.to_string()),
            e @ Error::UnknownNode(_) => Status::not_found(e.to_string()),
            Error::Invalid(m) => Status::invalid_argument(m),
            Error::Precondition(m) => Status::failed_precondition(m),
            Error::Internal(m) => Status::internal(m),
            e @ Error::ForgedRemoval(_) => Status::invalid_argument(e.to_string()),
            e @ Error::File { .. } => Status::internal(e.to_string()),
            Error::Pki(p) => {
                use collective_pki::PkiError as P;
                let code = match &p {
                    P::NameTaken { .. } => Code::AlreadyExists,
                    // Our own files (the CA directory, its name register).
                    P::Read { .. } | P::Write { .. } | P::KeyPermissions { .. } | P::BadFile { .. } => Code::Internal,
                    _ => Code::InvalidArgument,
                };
                Status::new(code, p.to_string())
            }
            e @ Error::Invite(_) => Status::permission_denied(e.to_string()),
        }
    }
}

/// Maps metadata errors to gRPC statuses whose messages a user can act on.
pub fn meta_status(e: MetaError) -> Status {
    let msg = e.to_string();
    match e {
        MetaError::NotFound(_) => status_with_kind(Code::NotFound, msg, ErrorKind::NotFound),
        MetaError::AlreadyExists(_) => status_with_kind(Code::AlreadyExists, msg, ErrorKind::Exists),
        MetaError::NotADirectory(_) => status_with_kind(Code::FailedPrecondition, msg, ErrorKind::NotADirectory),
        MetaError::IsADirectory(_) => status_with_kind(Code::FailedPrecondition, msg, ErrorKind::IsADirectory),
        MetaError::NotEmpty(_) => status_with_kind(Code::FailedPrecondition, msg, ErrorKind::NotEmpty),
        MetaError::IsASymlink(..) => status_with_kind(Code::FailedPrecondition, msg, ErrorKind::Symlink),
        MetaError::BadLink(..) => Status::invalid_argument(msg),
        MetaError::BadRename(..) => Status::failed_precondition(msg),
        MetaError::NotEmptyDatastore(..) => status_with_kind(Code::FailedPrecondition, msg, ErrorKind::NotEmpty),
        MetaError::CrossDatastore(..) => status_with_kind(Code::FailedPrecondition, msg, ErrorKind::CrossDatastore),
        MetaError::ChunkNotUploaded(..) => Status::failed_precondition(msg),
        MetaError::BadManifest(..) | MetaError::Path(_) => Status::invalid_argument(msg),
        MetaError::QuotaFull { .. } => status_with_kind(Code::ResourceExhausted, msg, ErrorKind::NoSpace),
        MetaError::Placement(_) => Status::failed_precondition(msg),
        _ => Status::internal(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_becomes_a_status_with_its_code_kind_and_the_words_to_act_on() {
        let s = Status::from(Error::Meta(MetaError::NotFound("/a".into())));
        assert_eq!(
            (s.code(), collective_rpc::error_kind(&s)),
            (Code::NotFound, Some(ErrorKind::NotFound))
        );
        let s = Status::from(Error::Lacks {
            who: "bob@b.x".into(),
            missing: Rights::WRITE,
            have: Rights::READ,
            path: "/media/a".into(),
            owner: "/media".into(),
            member: "a.x".into(),
        });
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(
            s.message(),
            "bob@b.x lacks the write right on /media/a (has: read); ask an owner of /media on a.x to grant it (`collective datastore grant /media bob@b.x write`)"
        );
        assert_eq!(collective_rpc::error_kind(&s), None);
    }
}
