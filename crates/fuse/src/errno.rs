//! Which errno a failed call becomes.

use std::sync::Arc;

use collective_client::ClientError;
use collective_client::ErrorKind;
use fuser::Errno;
use tonic::Code;

/// The errno for a client error: namespace errors by their kind, the rest by status code;
/// unreadable data and unreachable services are EIO.
pub fn errno_of(e: &ClientError) -> Errno {
    match e {
        ClientError::Remote { code, kind, .. } => match kind {
            Some(ErrorKind::NotFound) => Errno::ENOENT,
            Some(ErrorKind::Exists) => Errno::EEXIST,
            Some(ErrorKind::NotADirectory) => Errno::ENOTDIR,
            Some(ErrorKind::IsADirectory) => Errno::EISDIR,
            Some(ErrorKind::NotEmpty) => Errno::ENOTEMPTY,
            Some(ErrorKind::Symlink) => Errno::EINVAL,
            Some(ErrorKind::NoSpace) => Errno::ENOSPC,
            Some(ErrorKind::CrossDatastore) => Errno::EXDEV,
            None => match code {
                Code::PermissionDenied | Code::Unauthenticated => Errno::EACCES,
                Code::NotFound => Errno::ENOENT,
                Code::AlreadyExists => Errno::EEXIST,
                Code::ResourceExhausted => Errno::ENOSPC,
                Code::InvalidArgument => Errno::EINVAL,
                _ => Errno::EIO,
            },
        },
        ClientError::Path(p) => match p {
            collective_core::PathError::NameTooLong(..) | collective_core::PathError::PathTooLong(_) => Errno::ENAMETOOLONG,
            _ => Errno::EINVAL,
        },
        ClientError::Replication { out_of_space: true, .. } => Errno::ENOSPC,
        ClientError::Data(collective_client::DataError::NoSpace { .. }) => Errno::ENOSPC,
        _ => Errno::EIO,
    }
}

/// What can go wrong with an open file's content (uploads, the local overlay, chunk
/// reads). Cheap to clone: a shared upload or fetch hands the same error to every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ContentError {
    #[error("{0}")]
    Client(Arc<ClientError>),
    /// The local overlay or cache failed (`what` says which step).
    #[error("{what}: {source}")]
    Local { what: String, source: Arc<std::io::Error> },
    /// The open file's own bookkeeping does not add up.
    #[error("{0}")]
    Inconsistent(String),
}

impl From<ClientError> for ContentError {
    fn from(e: ClientError) -> Self {
        ContentError::Client(Arc::new(e))
    }
}

impl ContentError {
    pub fn local(what: impl Into<String>, source: std::io::Error) -> ContentError {
        ContentError::Local {
            what: what.into(),
            source: Arc::new(source),
        }
    }

    /// The errno for the kernel: the client's by its kind, a full local disk is ENOSPC,
    /// the rest EIO.
    pub fn errno(&self) -> Errno {
        match self {
            ContentError::Client(e) => errno_of(e),
            ContentError::Local { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => Errno::ENOSPC,
            ContentError::Local { .. } | ContentError::Inconsistent(_) => Errno::EIO,
        }
    }
}
