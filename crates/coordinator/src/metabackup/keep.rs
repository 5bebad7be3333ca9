//! Recovery records: ours pushed to every keeper (peer coordinators, our own nodes), other
//! members' kept here, and handed to whoever proves it holds a member's recovery kit.

use std::time::Duration;

use collective_core::unix_ms_now;
use collective_pki::RecoverySecret;
use collective_proto::v1::federation_client::FederationClient;
use collective_proto::v1::{
    BackupProgress, FetchRecoveryRequest, FetchRecoveryResponse, KeepRecoveryResponse, NodeLocation, RecoveryRecord, SignedRecoveryRecord,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::REPUBLISH_EVERY;
use crate::state::{State, meta_status};

/// Other members' records are kept under this prefix, by member domain.
pub const RECORD_PREFIX: &[u8] = b"r/";
/// Largest record a keeper takes (a record is a few kilobytes: heads and a sealed identity).
pub const MAX_RECORD_BYTES: usize = 256 << 10;
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

fn record_key(member: &str) -> Vec<u8> {
    let mut k = RECORD_PREFIX.to_vec();
    k.extend_from_slice(member.as_bytes());
    k
}

impl State {
    /// Sends a fresh record to every keeper that lacks the newest (`changed`: a new backup,
    /// so all of them), and to all again every ten minutes. Fails when no keeper took it.
    pub(super) async fn publish_record(&self, secret: &RecoverySecret, progress: &BackupProgress, changed: bool) -> Result<(), String> {
        if progress.heads.is_empty() {
            return Ok(());
        }
        let members: Vec<String> = self
            .links
            .fed()
            .map(|f| {
                f.gossip
                    .peers()
                    .into_iter()
                    .filter(|p| p.state != collective_gossip::PeerState::Down)
                    .map(|p| p.member)
                    .collect()
            })
            .unwrap_or_default();
        let nodes: Vec<String> = {
            let nodes = self.nodes.lock();
            nodes.iter().filter(|(_, e)| self.nodes.is_up(e)).map(|(n, _)| n.clone()).collect()
        };
        let newest = progress.heads.first().map_or(0, |h| h.created_ms);
        {
            let live = self.backup.live();
            let fresh = unix_ms_now().saturating_sub(live.pushed_at_ms) < REPUBLISH_EVERY.as_millis() as u64;
            let all_have = members
                .iter()
                .chain(nodes.iter())
                .all(|k| live.pushed.get(k).is_some_and(|v| *v >= newest));
            if !changed && fresh && all_have {
                return Ok(());
            }
        }
        let signed = self.backup_record(secret, progress)?;
        let version = collective_proto::v1::RecoveryRecord::decode(signed.record.as_ref()).map_or(0, |r| r.version);
        // A keeper that kept a newer version than ours (a clock that jumped) did not take it.
        let taken = |kept: u64, who: &str| {
            if kept == version {
                Ok(who.to_string())
            } else {
                Err(format!(
                    "{who} keeps a record of version {kept}, newer than this one ({version}): check the clocks (NTP)"
                ))
            }
        };
        let to_members = members.iter().map(|m| {
            let signed = signed.clone();
            async move {
                let channel = self.links.channel(m).map_err(|e| e.to_string())?;
                match tokio::time::timeout(PUSH_TIMEOUT, FederationClient::new(channel).keep_recovery(signed)).await {
                    Ok(Ok(r)) => taken(r.into_inner().kept_version, m),
                    Ok(Err(s)) => Err(format!("{m}: {}", s.message())),
                    Err(_) => Err(format!("{m}: no answer within {PUSH_TIMEOUT:?}")),
                }
            }
        });
        let to_nodes = nodes.iter().map(|n| {
            let signed = signed.clone();
            async move {
                let mut control = self.nodes.control(n).map_err(|e| e.to_string())?;
                let mut req = Request::new(signed);
                req.set_timeout(PUSH_TIMEOUT);
                match control.keep_recovery(req).await {
                    Ok(r) => taken(r.into_inner().kept_version, n),
                    Err(s) => Err(format!("{n}: {}", s.message())),
                }
            }
        });
        let (a, b) = futures::future::join(futures::future::join_all(to_members), futures::future::join_all(to_nodes)).await;
        let mut took = Vec::new();
        let mut failed = Vec::new();
        for r in a.into_iter().chain(b) {
            match r {
                Ok(k) => took.push(k),
                Err(e) => failed.push(e),
            }
        }
        if !failed.is_empty() {
            tracing::debug!("some keepers did not take the recovery record: {}", failed.join("; "));
        }
        let mut live = self.backup.live();
        live.keepers = took.len() as u32;
        live.pushed_at_ms = unix_ms_now();
        live.pushed.clear();
        for k in &took {
            live.pushed.insert(k.clone(), newest);
        }
        if took.is_empty() {
            return Err(format!(
                "no peer coordinator or node took the recovery record{}",
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", failed.join("; "))
                }
            ));
        }
        Ok(())
    }

    /// `Federation.KeepRecovery`: keeps the calling member's newest record, if it is that
    /// member's, signed by its coordinator, and newer than the one kept.
    pub async fn keep_recovery(&self, req: Request<SignedRecoveryRecord>) -> Result<Response<KeepRecoveryResponse>, Status> {
        let caller = self.authorize_peer(&req)?.domain;
        let signed = req.into_inner();
        if signed.encoded_len() > MAX_RECORD_BYTES {
            return Err(Status::invalid_argument(format!(
                "a recovery record of {} bytes is larger than any real one ({MAX_RECORD_BYTES})",
                signed.encoded_len()
            )));
        }
        let record = collective_pki::open_record(&self.identity, &signed).map_err(|e| Status::permission_denied(e.to_string()))?;
        if record.member != caller {
            return Err(Status::permission_denied(format!(
                "{caller} sent the recovery record of {}: a member keeps only its own record with others",
                record.member
            )));
        }
        if record.version > unix_ms_now().saturating_add(collective_gossip::MAX_FUTURE_MS) {
            return Err(Status::invalid_argument(
                "the record's version is more than 10 minutes ahead of our clock; check the clocks (NTP)",
            ));
        }
        let key = record_key(&caller);
        let kept = self.kept_record(&key)?;
        if let Some((old, _)) = &kept
            && old.version >= record.version
        {
            return Ok(Response::new(KeepRecoveryResponse { kept_version: old.version }));
        }
        self.meta.backup_put(&key, signed.encode_to_vec()).map_err(meta_status)?;
        self.meta.flush().await.map_err(meta_status)?;
        Ok(Response::new(KeepRecoveryResponse {
            kept_version: record.version,
        }))
    }

    fn kept_record(&self, key: &[u8]) -> Result<Option<(RecoveryRecord, SignedRecoveryRecord)>, Status> {
        let Some(v) = self.meta.backup_get(key).map_err(meta_status)? else {
            return Ok(None);
        };
        let signed =
            SignedRecoveryRecord::decode(v.as_slice()).map_err(|e| Status::internal(format!("a kept recovery record is damaged: {e}")))?;
        let record = RecoveryRecord::decode(signed.record.as_ref())
            .map_err(|e| Status::internal(format!("a kept recovery record is damaged: {e}")))?;
        Ok(Some((record, signed)))
    }

    /// `Bootstrap.FetchRecovery`: a member's record for the holder of its recovery kit,
    /// with what gossip says of the member now (recovery refuses while it lives).
    pub async fn fetch_recovery(&self, req: Request<FetchRecoveryRequest>) -> Result<Response<FetchRecoveryResponse>, Status> {
        let q = req.into_inner();
        collective_core::Principal::new("coordinator", &q.member).map_err(|e| {
            Status::invalid_argument(format!(
                "'{}' is not a member domain: {e}",
                q.member.chars().take(80).collect::<String>()
            ))
        })?;
        if q.member == self.domain {
            return Err(Status::failed_precondition(format!(
                "this is {}'s own coordinator, and it is running: there is nothing to recover",
                self.domain
            )));
        }
        let Some((record, signed)) = self.kept_record(&record_key(&q.member))? else {
            return Err(Status::not_found(format!(
                "{} keeps no recovery record of {}; ask another member (the kit lists them)",
                self.domain, q.member
            )));
        };
        collective_pki::verify_fetch(&record.recovery_key, &q.member, q.time_ms, unix_ms_now(), &q.signature).map_err(|e| {
            self.metrics.denials.inc();
            Status::permission_denied(e.to_string())
        })?;
        let (member_state, last_seen_ms) = match self
            .links
            .fed()
            .and_then(|f| f.gossip.peers().into_iter().find(|p| p.member == q.member))
        {
            Some(p) => (p.label().to_string(), p.last_seen_ms),
            None => ("unknown".to_string(), 0),
        };
        let mut coordinators = vec![NodeLocation {
            node: self.principal.clone(),
            grpc_addr: self.advertise_grpc.clone(),
            quic_addr: String::new(),
            gossip_addr: self.links.fed().map(|f| f.gossip_addr.clone()).unwrap_or_default(),
        }];
        if let Some(f) = self.links.fed() {
            for s in f.gossip.states() {
                if s.member != self.domain && s.member != q.member {
                    coordinators.push(NodeLocation {
                        node: s.coordinator,
                        grpc_addr: s.grpc_addr,
                        quic_addr: String::new(),
                        gossip_addr: s.gossip_addr,
                    });
                }
            }
        }
        Ok(Response::new(FetchRecoveryResponse {
            record: Some(signed),
            member_state,
            last_seen_ms,
            keeper: self.principal.clone(),
            coordinators,
        }))
    }
}
