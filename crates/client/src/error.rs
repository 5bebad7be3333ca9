use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Pki(#[from] collective_pki::PkiError),
    #[error(transparent)]
    Rpc(#[from] collective_rpc::RpcError),
    /// A coordinator call failed; the message already names the problem. `kind` is the
    /// namespace error it hit, when it was one.
    #[error("{message}")]
    Remote {
        message: String,
        code: tonic::Code,
        kind: Option<collective_rpc::ErrorKind>,
    },
    #[error(transparent)]
    Data(#[from] collective_dataplane::DataError),
    #[error("{path}: {source}")]
    Local { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Path(#[from] collective_core::PathError),
    #[error("could not store chunk {chunk} of {file} on {wanted} nodes: {detail}")]
    Replication {
        chunk: String,
        file: String,
        wanted: usize,
        detail: String,
        /// Every node that could take it is full (ENOSPC for a mount).
        out_of_space: bool,
    },
    #[error("chunk {chunk} of {file} is unreadable on every replica: {detail}")]
    Unreadable { chunk: String, file: String, detail: String },
    /// A path from the server that a download must not write (see `localtree.rs`).
    #[error("the server sent the path {path}, which a download must not write: {why}; nothing was written outside the destination")]
    BadServerPath { path: String, why: String },
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    pub fn local(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ClientError {
        let path = path.into();
        move |source| ClientError::Local { path, source }
    }

    /// Turns a failed coordinator call into an error naming the problem.
    pub fn status(s: tonic::Status) -> ClientError {
        ClientError::Remote {
            message: collective_rpc::explain_status("the coordinator", &s),
            code: s.code(),
            kind: collective_rpc::error_kind(&s),
        }
    }
}

/// A coordinator call's answer, or the error naming what went wrong.
pub(crate) trait Answer<T> {
    fn answer(self) -> Result<T, ClientError>;
}

impl<T> Answer<T> for Result<tonic::Response<T>, tonic::Status> {
    fn answer(self) -> Result<T, ClientError> {
        self.map(tonic::Response::into_inner).map_err(ClientError::status)
    }
}
