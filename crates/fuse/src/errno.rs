//! Which errno a failed call becomes.

use collective_client::ClientError;
use fuser::Errno;
use tonic::Code;

/// The errno for a client error: namespace errors by their kind, the rest by status code;
/// unreadable data and unreachable services are EIO.
pub fn errno_of(e: &ClientError) -> Errno {
    match e {
        ClientError::Remote { code, kind, .. } => match kind.as_str() {
            "not-found" => Errno::ENOENT,
            "exists" => Errno::EEXIST,
            "not-dir" => Errno::ENOTDIR,
            "is-dir" => Errno::EISDIR,
            "not-empty" => Errno::ENOTEMPTY,
            "symlink" => Errno::EINVAL,
            "no-space" => Errno::ENOSPC,
            _ => match code {
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
        ClientError::Replication { detail, .. } if detail.contains("out of space") => Errno::ENOSPC,
        _ => Errno::EIO,
    }
}

/// The errno for an error message of the content layer (uploads, overlay, chunk reads).
pub fn errno_of_message(msg: &str) -> Errno {
    if msg.contains("out of space") || msg.contains("No space left") {
        Errno::ENOSPC
    } else if msg.contains("permission") {
        Errno::EACCES
    } else {
        Errno::EIO
    }
}
