//! The audit log: one persisted entry per mutating operation (who, what, on which target,
//! with what result). Successful namespace and access changes are written inside the
//! transaction that makes them; refusals and operations that touch no other table are
//! written on their own.
//!
//! Keys are the entry's time (ms, big-endian) followed by a unique id, so a query for
//! "since T" is a range scan and pruning old entries removes a prefix.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::engine::{self, Table, Txn};
use crate::records::{self, AuditRecord, Record, decode, encode};
use crate::{MetaError, MetaStore};

/// Format byte of audit entries written since results were recorded (`AuditRecord`
/// entries, format 1, are read as successes).
const AUDIT_FORMAT_V2: u8 = 2;

/// One audited operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// Who asked (`name@domain`), or the node/member for registrations and joins.
    pub principal: String,
    /// What was asked: `commit`, `remove`, `mkdir`, `rename`, `grant`, `invite`, …
    pub op: String,
    /// What it was about: a path, a node, an invite id.
    pub target: String,
    /// `ok`, `denied` (the caller lacked the right) or `failed`.
    pub result: String,
    /// Anything else worth knowing: the rename target, the rights granted, the error.
    pub detail: String,
}

impl AuditEntry {
    pub fn new(principal: &str, op: &str, target: &str, result: &str, detail: String) -> AuditEntry {
        AuditEntry {
            at_ms: collective_core::unix_ms_now(),
            principal: principal.to_string(),
            op: op.to_string(),
            target: target.to_string(),
            result: result.to_string(),
            detail,
        }
    }
}

/// Which entries a query returns.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries at or after this time.
    pub since_ms: u64,
    /// Only entries of this principal.
    pub principal: Option<String>,
    /// At most this many, the most recent ones (0: no limit).
    pub limit: usize,
}

fn key(at_ms: u64, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl Record for AuditEntry {
    const NAME: &'static str = "audit";
    const FORMAT: u8 = AUDIT_FORMAT_V2;
    fn upgrade(format: u8, b: &[u8]) -> Result<Self, MetaError> {
        match format {
            records::RECORD_FORMAT_V1 => {
                let r: AuditRecord = records::body(Self::NAME, b)?;
                Ok(AuditEntry {
                    at_ms: r.at_ms,
                    principal: r.principal,
                    op: r.op,
                    target: r.path,
                    result: "ok".into(),
                    detail: r.detail,
                })
            }
            f => Err(MetaError::Corrupt(format!("audit record has unknown format {f}"))),
        }
    }
}

/// Records a successful operation inside the transaction that performs it.
pub(crate) fn audit_in(t: &Txn<'_>, principal: &str, op: &str, target: &str, detail: String) -> Result<(), engine::Abort> {
    let e = AuditEntry::new(principal, op, target, "ok", detail);
    let id = t.unique_id()?;
    t.insert(Table::Audit, &key(e.at_ms, id), encode(&e))
}

impl MetaStore {
    /// Records an operation that is not part of a metadata transaction (a refusal, a node
    /// registration, an invite). Durable at the next flush.
    pub fn record_audit(&self, e: &AuditEntry) -> Result<(), MetaError> {
        let id = self.engine.unique_id()?;
        self.engine.insert(Table::Audit, &key(e.at_ms, id), encode(e))
    }

    /// The entries matching `q`, oldest first.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, MetaError> {
        let mut out = VecDeque::new();
        for r in self.engine.scan_from(Table::Audit, &key(q.since_ms, 0)) {
            let (_, v) = r?;
            let e: AuditEntry = decode(&v)?;
            if q.principal.as_deref().is_some_and(|p| p != e.principal) {
                continue;
            }
            out.push_back(e);
            if q.limit > 0 && out.len() > q.limit {
                out.pop_front();
            }
        }
        Ok(out.into())
    }

    /// Deletes entries older than `before_ms`; returns how many.
    pub fn prune_audit(&self, before_ms: u64) -> Result<usize, MetaError> {
        let old: Vec<Vec<u8>> = self
            .engine
            .scan_prefix(Table::Audit, b"", None)
            .take_while(|r| {
                r.as_ref()
                    .map(|(k, _)| k.as_slice() < key(before_ms, 0).as_slice())
                    .unwrap_or(false)
            })
            .map(|r| r.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        for k in &old {
            self.engine.remove(Table::Audit, k)?;
        }
        Ok(old.len())
    }

    pub fn audit_len(&self) -> usize {
        self.engine.len(Table::Audit)
    }

    /// Rewrites entries of the first layout (keyed by id alone) under time-ordered keys.
    pub(crate) fn migrate_audit_keys(&self) -> Result<(), MetaError> {
        let old: Vec<(Vec<u8>, Vec<u8>)> = self
            .engine
            .scan_prefix(Table::Audit, b"", None)
            .filter(|r| r.as_ref().map(|(k, _)| k.len() == 8).unwrap_or(true))
            .collect::<Result<_, _>>()?;
        for (k, v) in old {
            let e: AuditEntry = decode(&v)?;
            let mut id = [0u8; 8];
            id.copy_from_slice(&k);
            self.engine
                .insert(Table::Audit, &key(e.at_ms, u64::from_be_bytes(id)), encode(&e))?;
            self.engine.remove(Table::Audit, &k)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> (std::path::PathBuf, MetaStore) {
        let d = std::env::temp_dir().join(format!("collective-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let m = MetaStore::open(&d).unwrap();
        (d, m)
    }

    #[test]
    fn audit_query_filters_by_time_and_principal_and_keeps_the_most_recent() {
        let (d, m) = store("query");
        for (i, who) in ["a@x", "b@x", "a@x", "a@x"].iter().enumerate() {
            let mut e = AuditEntry::new(who, "mkdir", &format!("/d{i}"), "ok", String::new());
            e.at_ms = 1_000 + i as u64;
            m.record_audit(&e).unwrap();
        }
        let all = m.audit(&AuditQuery::default()).unwrap();
        assert_eq!(
            all.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
            ["/d0", "/d1", "/d2", "/d3"]
        );
        let since = m
            .audit(&AuditQuery {
                since_ms: 1_002,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(since.len(), 2);
        let a = m
            .audit(&AuditQuery {
                principal: Some("a@x".into()),
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(a.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(), ["/d2", "/d3"]);
        assert_eq!(m.prune_audit(1_002).unwrap(), 2);
        assert_eq!(m.audit_len(), 2);
        drop(m);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn audit_entries_of_the_first_format_are_read_and_rekeyed_by_time() {
        let (dir, m) = store("v1");
        let old = AuditRecord {
            at_ms: 5_000,
            principal: "old@x".into(),
            op: "remove".into(),
            path: "/gone".into(),
            detail: String::new(),
        };
        m.engine
            .insert(
                Table::Audit,
                &7u64.to_be_bytes(),
                records::encode_as(records::RECORD_FORMAT_V1, &old),
            )
            .unwrap();
        drop(m);
        let m = crate::namespace::tests::reopen(&dir);
        let got = m
            .audit(&AuditQuery {
                since_ms: 4_000,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].principal.as_str(), got[0].target.as_str(), got[0].result.as_str()),
            ("old@x", "/gone", "ok")
        );
        drop(m);
        let _ = std::fs::remove_dir_all(dir);
    }
}
