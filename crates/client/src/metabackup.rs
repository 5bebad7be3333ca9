//! Taking a consistent backup of a running coordinator's metadata
//! (`collective coordinator backup`): the coordinator streams an export while it serves;
//! this side writes it and checks it against the hash the coordinator sent.

use std::io::Write;

use collective_core::Principal;
use collective_pki::TlsIdentity;
use collective_proto::v1::BackupMetadataRequest;
use collective_proto::v1::upkeep_client::UpkeepClient;

use crate::ClientError;

/// What a metadata backup holds.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    /// The coordinator's sequence the backup is consistent with.
    pub seq: u64,
    pub entries: u64,
    pub changes: u64,
    pub bytes: u64,
    /// BLAKE3 of the export (its last 32 bytes).
    pub hash: [u8; 32],
}

/// Streams a backup of the metadata of the coordinator at `addr` (`coordinator` names
/// it) into `out`, as `identity` (the coordinator's own certificate, or an admin's).
/// Returns once every byte is written and matches the coordinator's hash.
pub async fn backup_metadata(
    identity: &TlsIdentity,
    addr: &str,
    coordinator: &Principal,
    out: &mut impl Write,
) -> Result<BackupSummary, ClientError> {
    let channel = collective_rpc::channel(identity, addr, coordinator)?;
    let mut stream = UpkeepClient::new(channel)
        .backup_metadata(BackupMetadataRequest {})
        .await
        .map_err(ClientError::status)?
        .into_inner();
    let mut hasher = blake3::Hasher::new();
    // The last 32 bytes are the hash itself: hold them back from the hasher.
    let mut tail: Vec<u8> = Vec::new();
    let mut bytes = 0u64;
    let write_err = |e: std::io::Error| ClientError::Other(format!("cannot write the backup: {e}"));
    loop {
        let piece = stream
            .message()
            .await
            .map_err(ClientError::status)?
            .ok_or_else(|| ClientError::Other("the coordinator ended the backup before its last piece; run it again".into()))?;
        if !piece.data.is_empty() {
            out.write_all(&piece.data).map_err(write_err)?;
            bytes += piece.data.len() as u64;
            tail.extend_from_slice(&piece.data);
            if tail.len() > 32 {
                let cut = tail.len() - 32;
                hasher.update(&tail[..cut]);
                tail.drain(..cut);
            }
        }
        if piece.last {
            out.flush().map_err(write_err)?;
            let hash: [u8; 32] = piece
                .hash
                .as_ref()
                .try_into()
                .map_err(|_| ClientError::Other("the coordinator sent a malformed backup hash".into()))?;
            if tail != hash || *hasher.finalize().as_bytes() != hash {
                return Err(ClientError::Other(
                    "the backup received does not match the coordinator's hash; run it again".into(),
                ));
            }
            return Ok(BackupSummary {
                seq: piece.seq,
                entries: piece.entries,
                changes: piece.changes,
                bytes,
                hash,
            });
        }
    }
}
