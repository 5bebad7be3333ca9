//! `collective status`: the numbers behind it (nodes, members, data, replication, repair,
//! certificates), gathered from the metadata, the node table and gossip; computing them
//! also refreshes the coordinator's gauges.

use collective_proto::v1::{CertificateStatus, ContestedDatastore, MemberStatus, NodeHealth, NodeStatus, StatusResponse};
use tonic::Status;

use crate::state::{State, meta_status};

/// The numbers behind `collective status`; also refreshes the gauges.
pub fn status_report(state: &State) -> Result<StatusResponse, Status> {
    let totals = state.meta.totals().map_err(meta_status)?;
    let repair = state.repair_status();
    let mut nodes: Vec<NodeStatus> = {
        let table = state.nodes.lock();
        table
            .iter()
            .map(|(name, e)| NodeStatus {
                node: name.clone(),
                state: if state.nodes.is_up(e) { NodeHealth::Up } else { NodeHealth::Down } as i32,
                quic_addr: e.quic_addr.clone(),
                capacity_bytes: e.usage.capacity_bytes,
                used_bytes: e.usage.used_bytes,
                free_bytes: e.usage.free_bytes,
                chunks: e.usage.chunks,
                last_seen_ms: e.last_seen_ms,
                message: e.usage.health_message.clone(),
            })
            .collect()
    };
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let mut certificates = vec![CertificateStatus {
        principal: state.principal.clone(),
        role: "coordinator".into(),
        not_after_ms: (state.identity.info().not_after.unix_timestamp_nanos() / 1_000_000) as i64,
    }];
    {
        let table = state.nodes.lock();
        let mut v: Vec<CertificateStatus> = table
            .iter()
            .filter(|(_, e)| e.usage.cert_not_after_ms > 0)
            .map(|(name, e)| CertificateStatus {
                principal: name.clone(),
                role: "node".into(),
                not_after_ms: e.usage.cert_not_after_ms,
            })
            .collect();
        v.sort_by(|a, b| a.principal.cmp(&b.principal));
        certificates.extend(v);
    }
    let mut members: Vec<MemberStatus> = state
        .links
        .fed()
        .map(|fed| {
            fed.gossip
                .peers()
                .into_iter()
                .map(|p| MemberStatus {
                    state: p.health() as i32,
                    member: p.member,
                    last_seen_ms: p.last_seen_ms as i64,
                })
                .collect()
        })
        .unwrap_or_default();
    members.sort_by(|a, b| a.member.cmp(&b.member));
    let m = &state.metrics;
    m.files.set(totals.files as i64);
    m.dirs.set(totals.dirs as i64);
    m.logical_bytes.set(totals.logical_bytes as i64);
    m.physical_bytes.set(totals.physical_bytes as i64);
    m.unique_bytes.set(totals.unique_bytes as i64);
    m.manifests.set(totals.files as i64);
    m.dedup_ratio.set(if totals.unique_bytes == 0 {
        1.0
    } else {
        totals.logical_bytes as f64 / totals.unique_bytes as f64
    });
    let up = nodes.iter().filter(|n| n.state() == NodeHealth::Up).count() as i64;
    m.nodes.with_label_values(&["up"]).set(up);
    m.nodes.with_label_values(&["down"]).set(nodes.len() as i64 - up);
    let breakers = state.links.breakers().snapshot(std::time::Instant::now());
    for st in [collective_core::BreakerState::Open, collective_core::BreakerState::HalfOpen] {
        let n = breakers.iter().filter(|(_, s)| *s == st).count();
        m.peer_breakers.with_label_values(&[st.as_str()]).set(n as i64);
    }
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as i64;
    m.peer_breaker_trips.set(load(&state.links.breakers().opened));
    m.peer_breaker_rejections.set(load(&state.links.breakers().rejected));
    if let Some(fed) = state.links.fed() {
        let peers = fed.gossip.peers();
        for st in ["alive", "suspect", "down"] {
            let n = peers.iter().filter(|p| p.state.as_str() == st).count();
            m.members.with_label_values(&[st]).set(n as i64);
        }
        m.members
            .with_label_values(&["removed"])
            .set(state.identity.revocations().removed_members().len() as i64);
        let c = fed.gossip.counters();
        m.member_downs
            .inc_by((load(&c.members_down) as u64).saturating_sub(m.member_downs.get()));
        for (dir, n) in [("sent", &c.sent), ("received", &c.received), ("dropped", &c.dropped)] {
            let counter = m.gossip_messages.with_label_values(&[dir]);
            counter.inc_by((load(n) as u64).saturating_sub(counter.get()));
        }
    }
    Ok(StatusResponse {
        coordinator: state.principal.clone(),
        member: state.domain.clone(),
        replication: state.replication as u32,
        nodes,
        files: totals.files,
        dirs: totals.dirs,
        logical_bytes: totals.logical_bytes,
        physical_bytes: totals.physical_bytes,
        unique_chunks: totals.unique_chunks,
        unique_bytes: totals.unique_bytes,
        under_replicated_chunks: repair.under_replicated_chunks,
        unreadable_chunks: repair.unreadable_chunks,
        reclaimable_bytes: repair.reclaimable_bytes,
        reclaimable_chunks: repair.reclaimable_chunks,
        bytes_at_risk: repair.bytes_at_risk,
        corrupt_reports: m.corrupt_reports.get(),
        version: env!("CARGO_PKG_VERSION").into(),
        repair: Some(repair.clone()),
        members,
        certificates,
        metadata_backup: Some(state.backup_status()),
        contested: state
            .links
            .fed()
            .map(|fed| {
                fed.gossip
                    .contests()
                    .into_iter()
                    .filter(|c| c.owner == state.domain || c.others.contains(&state.domain))
                    .map(|c| ContestedDatastore {
                        name: c.name,
                        owner: c.owner,
                        others: c.others,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}
