//! The member's recovery record, kept by each of its nodes: the coordinator sends its
//! newest after every metadata backup; the holder of the member's recovery kit fetches it
//! without a certificate (the coordinator, and with it the CA, may be gone) by signing the
//! request with the key derived from the kit's secret. A lone member is recovered this way.

use std::path::PathBuf;
use std::sync::Arc;

use collective_proto::v1::node_recovery_server::NodeRecovery;
use collective_proto::v1::{FetchRecoveryRequest, FetchRecoveryResponse, KeepRecoveryResponse, RecoveryRecord, SignedRecoveryRecord};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::service::NodeState;

/// File name of the kept record in the node's data directory.
pub const RECORD_FILE: &str = "recovery-record";
/// Largest record kept (a real one is a few kilobytes).
const MAX_RECORD_BYTES: usize = 256 << 10;

/// Where a node keeps its member's record.
#[derive(Clone)]
pub struct RecordFile {
    pub path: PathBuf,
}

impl RecordFile {
    fn load(&self) -> Result<Option<(RecoveryRecord, SignedRecoveryRecord)>, Status> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Status::internal(format!("cannot read {}: {e}", self.path.display()))),
        };
        let signed = SignedRecoveryRecord::decode(bytes.as_slice())
            .map_err(|e| Status::internal(format!("{} is damaged: {e}", self.path.display())))?;
        let record = RecoveryRecord::decode(signed.record.as_ref())
            .map_err(|e| Status::internal(format!("{} is damaged: {e}", self.path.display())))?;
        Ok(Some((record, signed)))
    }

    /// Keeps `signed` (checked against our trust: our member's coordinator signed it) when
    /// it is newer than the record kept; returns the version kept.
    pub fn keep(&self, state: &NodeState, signed: SignedRecoveryRecord) -> Result<u64, Status> {
        if signed.encoded_len() > MAX_RECORD_BYTES {
            return Err(Status::invalid_argument("the recovery record is larger than any real one"));
        }
        let record = collective_pki::open_record(&state.identity, &signed).map_err(|e| Status::permission_denied(e.to_string()))?;
        if record.member != state.domain {
            return Err(Status::permission_denied(format!(
                "this node keeps only {}'s recovery record, not {}'s",
                state.domain, record.member
            )));
        }
        // A version far ahead (a clock that jumped) would pin every later record out.
        if record.version > collective_core::unix_ms_now().saturating_add(collective_pki::FETCH_SKEW_MS) {
            return Err(Status::invalid_argument(
                "the record's version is more than 10 minutes ahead of this node's clock; check the clocks (NTP)",
            ));
        }
        if let Some((old, _)) = self.load()?
            && old.version >= record.version
        {
            return Ok(old.version);
        }
        collective_pki::replace_file(&self.path, &signed.encode_to_vec(), 0o600)
            .map_err(|e| Status::internal(format!("cannot keep the recovery record: {e}")))?;
        Ok(record.version)
    }
}

/// `NodeRecovery`: reachable without a client certificate.
pub struct RecoveryService {
    pub state: Arc<NodeState>,
    pub file: RecordFile,
}

#[tonic::async_trait]
impl NodeRecovery for RecoveryService {
    async fn fetch_recovery(&self, req: Request<FetchRecoveryRequest>) -> Result<Response<FetchRecoveryResponse>, Status> {
        let q = req.into_inner();
        let Some((record, signed)) = self.file.load()?.filter(|(r, _)| r.member == q.member) else {
            return Err(Status::not_found(format!(
                "{} keeps no recovery record of {}; ask another of its nodes, or another member's coordinator",
                self.state.principal, q.member
            )));
        };
        collective_pki::verify_fetch(
            &record.recovery_key,
            &q.member,
            q.time_ms,
            collective_core::unix_ms_now(),
            &q.signature,
        )
        .map_err(|e| Status::permission_denied(e.to_string()))?;
        // A node cannot tell whether its coordinator lives: recovery asks the coordinator.
        Ok(Response::new(FetchRecoveryResponse {
            record: Some(signed),
            member_state: "unknown".into(),
            last_seen_ms: 0,
            keeper: self.state.principal.clone(),
            coordinators: vec![],
        }))
    }
}

impl crate::control::Control {
    pub(crate) fn keep_record(&self, signed: SignedRecoveryRecord) -> Result<KeepRecoveryResponse, Status> {
        let kept_version = self.record.keep(&self.state, signed)?;
        Ok(KeepRecoveryResponse { kept_version })
    }
}
