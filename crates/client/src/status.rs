//! What `collective status` warns about: the policy deciding which facts of a member's
//! status a person must hear about, in words that say what follows and what to do. The CLI
//! prints these; the web dashboard will show the same.

use collective_proto::v1::{CertificateStatus, MemberHealth, NodeHealth, RepairStatusResponse, StatusResponse};

/// Certificates expiring within this many days are warned about.
pub const CERT_WARN_DAYS: i64 = 14;

/// Whole days from `now_ms` until `ms` (negative once past).
pub fn days_until(ms: i64, now_ms: u64) -> i64 {
    (ms - now_ms as i64).div_euclid(86_400_000)
}

/// The certificates `status` reports: the coordinator's and its nodes', and the caller's
/// own when known.
pub fn certificates(s: &StatusResponse, mine: Option<&CertificateStatus>) -> Vec<CertificateStatus> {
    let mut v = s.certificates.clone();
    v.extend(mine.cloned());
    v
}

/// The words for chunks on our nodes the metadata does not know.
pub fn unknown_line(r: &RepairStatusResponse) -> String {
    format!(
        "{} chunk(s) on {} are unknown to this coordinator's metadata and are kept (after a restore of an older metadata copy they may be files stored since); {} of them seen for longer than {} s can be deleted with `collective repair collect-unknown`",
        r.unknown_chunks,
        r.unknown_nodes.join(", "),
        r.unknown_collectable,
        r.gc_grace_seconds
    )
}

/// Everything in `s` a person should act on, most urgent kinds first, at `now_ms`.
/// A metadata backup older than this (10 minutes) is a warning.
pub const METADATA_BACKUP_WARN_S: u64 = 600;

pub fn warnings(s: &StatusResponse, mine: Option<&CertificateStatus>, now_ms: u64) -> Vec<String> {
    let mut w = Vec::new();
    for m in s.members.iter().filter(|m| m.state() != MemberHealth::Alive) {
        w.push(format!(
            "member {} is {}: its datastores and the copies it holds for others are unreachable",
            m.member,
            m.state().name()
        ));
    }
    for c in &s.contested {
        if c.owner == s.member {
            w.push(format!(
                "{} also claim(s) datastore /{}; the federation keeps routing it to this member (its claim came first)",
                c.others.join(", "),
                c.name
            ));
        } else {
            w.push(format!(
                "datastore /{} is also {}'s, whose claim came first: other members reach theirs and only this member's \
                 users reach this one; copy its files into a datastore with another name",
                c.name, c.owner
            ));
        }
    }
    if let Some(r) = s.repair.as_ref().filter(|r| r.lost_files > 0) {
        w.push(format!(
            "{} file(s) have a chunk with no copy left anywhere and cannot be read; `collective repair status --json` lists them (lost_files)",
            r.lost_files
        ));
    }
    if let Some(b) = &s.metadata_backup {
        if !b.enabled {
            w.push(format!(
                "metadata backups are off ({}): if this coordinator's disk is lost, so are this member's files",
                b.off_reason
            ));
        } else if b.age_s > METADATA_BACKUP_WARN_S {
            let last = if b.last_success_ms == 0 {
                "none yet".to_string()
            } else {
                format!("{} min ago", b.age_s / 60)
            };
            let why = if b.last_error.is_empty() {
                String::new()
            } else {
                format!(": {}", b.last_error)
            };
            w.push(format!(
                "the last metadata backup into the federation was {last}, {} change(s) wait{why}",
                b.pending_changes
            ));
        }
    }
    for c in certificates(s, mine) {
        let days = days_until(c.not_after_ms, now_ms);
        if days < 0 {
            w.push(format!(
                "the {} certificate of {} has expired; issue a new one",
                c.role, c.principal
            ));
        } else if days < CERT_WARN_DAYS {
            w.push(format!(
                "the {} certificate of {} expires in {days} day(s); renew it before then",
                c.role, c.principal
            ));
        }
    }
    let up = s.nodes.iter().filter(|n| n.state() == NodeHealth::Up).count();
    for n in s.nodes.iter().filter(|n| n.state() != NodeHealth::Up) {
        w.push(format!("{} is down: chunks it holds have fewer copies until it returns", n.node));
    }
    if up < s.replication as usize {
        w.push(format!(
            "only {up} node(s) up but replication is {}: new files cannot be stored",
            s.replication
        ));
    }
    if s.unreadable_chunks > 0 {
        w.push(format!(
            "{} chunk(s) have no known copy: some files cannot be read",
            s.unreadable_chunks
        ));
    }
    if s.under_replicated_chunks > 0 {
        w.push(format!(
            "{} chunk(s) have fewer than {} copies",
            s.under_replicated_chunks, s.replication
        ));
    }
    if let Some(r) = &s.repair {
        if !r.blocked_reason.is_empty() {
            w.push(format!("repair is blocked: {}", r.blocked_reason));
        }
        if r.unknown_chunks > 0 {
            w.push(unknown_line(r));
        }
    }
    for n in s
        .nodes
        .iter()
        .filter(|n| n.capacity_bytes > 0 && n.free_bytes * 100 < n.capacity_bytes * 15)
    {
        w.push(format!("{} is more than 85% full", n.node));
    }
    w
}

#[cfg(test)]
mod tests {
    use collective_proto::v1::{MemberStatus, NodeStatus};

    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn warnings_name_down_nodes_and_members_expiring_certificates_and_missing_copies() {
        let now = 1_000 * DAY as u64;
        let s = StatusResponse {
            replication: 2,
            nodes: vec![
                NodeStatus {
                    node: "node-01@a.x".into(),
                    state: NodeHealth::Up as i32,
                    capacity_bytes: 100,
                    free_bytes: 10,
                    ..Default::default()
                },
                NodeStatus {
                    node: "node-02@a.x".into(),
                    state: NodeHealth::Down as i32,
                    ..Default::default()
                },
            ],
            members: vec![MemberStatus {
                member: "b.x".into(),
                state: MemberHealth::Suspect as i32,
                last_seen_ms: 0,
            }],
            certificates: vec![CertificateStatus {
                principal: "coordinator@a.x".into(),
                role: "coordinator".into(),
                not_after_ms: now as i64 + 3 * DAY,
            }],
            under_replicated_chunks: 4,
            ..Default::default()
        };
        let w = warnings(&s, None, now);
        let has = |part: &str| w.iter().any(|l| l.contains(part));
        assert!(has("member b.x is suspect"), "{w:?}");
        assert!(has("coordinator@a.x expires in 3 day(s)"), "{w:?}");
        assert!(has("node-02@a.x is down"), "{w:?}");
        assert!(has("only 1 node(s) up but replication is 2"), "{w:?}");
        assert!(has("4 chunk(s) have fewer than 2 copies"), "{w:?}");
        assert!(has("node-01@a.x is more than 85% full"), "{w:?}");
        let mine = CertificateStatus {
            principal: "me@a.x".into(),
            role: "client".into(),
            not_after_ms: now as i64 - DAY,
        };
        assert!(warnings(&s, Some(&mine), now).iter().any(|l| l.contains("me@a.x has expired")));
        assert!(warnings(&StatusResponse::default(), None, now).is_empty());
    }
}
