//! `collective coordinator backup`: a consistent export of the metadata, streamed while the
//! coordinator goes on serving (see `collective_meta::snapshot`).

use std::io::Write;
use std::pin::Pin;

use collective_proto::v1::{BackupMetadataRequest, BackupPiece};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::UpkeepService;

/// Bytes per streamed piece.
const PIECE: usize = 256 << 10;

pub type BackupStream = Pin<Box<dyn Stream<Item = Result<BackupPiece, Status>> + Send>>;

/// Hands the export to the stream in pieces; fails once the caller has gone.
struct Pieces {
    tx: mpsc::Sender<Result<BackupPiece, Status>>,
    buf: Vec<u8>,
}

impl Pieces {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.tx
            .blocking_send(Ok(BackupPiece {
                data: data.into(),
                ..Default::default()
            }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the backup's receiver went away"))
    }
}

impl Write for Pieces {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl UpkeepService {
    /// The coordinator's own certificate (the `backup` command runs beside it with its
    /// config) or one of its admins.
    fn backup_caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let caller = collective_rpc::peer(req, self.state.identity.revocations())?;
        if caller.principal.to_string() == self.state.principal {
            return Ok(caller.principal.to_string());
        }
        self.admin(req).map(|w| w.to_string())
    }

    pub(super) async fn stream_backup(&self, req: Request<BackupMetadataRequest>) -> Result<Response<BackupStream>, Status> {
        let who = self.backup_caller(&req)?;
        tracing::info!(principal = %who, "metadata backup started");
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Pieces {
                tx: tx.clone(),
                buf: Vec::with_capacity(PIECE),
            };
            match state.meta.export(&mut out) {
                Ok(info) => {
                    tracing::info!(
                        principal = %who,
                        entries = info.entries,
                        changes = info.changes,
                        bytes = info.bytes,
                        seq = info.seq,
                        "metadata backup taken"
                    );
                    let _ = tx.blocking_send(Ok(BackupPiece {
                        data: Default::default(),
                        last: true,
                        seq: info.seq,
                        entries: info.entries,
                        changes: info.changes,
                        hash: info.hash.to_vec().into(),
                    }));
                }
                Err(e) => {
                    tracing::warn!(principal = %who, "metadata backup failed: {e}");
                    let _ = tx.blocking_send(Err(Status::internal(format!("the backup failed: {e}"))));
                }
            }
        });
        let stream = collective_rpc::until_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            self.state.stopping.subscribe(),
            &self.state.busy,
            "metadata backup",
            &self.state.principal,
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
