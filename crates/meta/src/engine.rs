//! The only module that knows the storage engine is sled. Everything else speaks in terms
//! of named trees, byte keys and atomic transactions, so the engine can be swapped.

use std::cell::RefCell;
use std::path::Path;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use crate::MetaError;

/// The trees (tables) of the metadata store.
#[derive(Clone, Copy, Debug)]
pub enum Table {
    Meta = 0,
    Inodes = 1,
    Dirents = 2,
    Manifests = 3,
    Chunks = 4,
    Pending = 5,
    Nodes = 6,
    Audit = 7,
    Datastores = 8,
    Grants = 9,
    Invites = 10,
    Principals = 11,
    ChunkSeals = 12,
    Hosted = 13,
    /// Symbolic links: inode → target.
    Links = 14,
    /// Per datastore and chunk: references and the seal (`ScopeRecord`).
    ChunkScopes = 15,
    /// The change log while something follows it (an export, the metadata backup):
    /// sequence → [`ChangeSet`].
    Changes = 16,
    /// The metadata backup's own state (what it stored where): never logged nor exported,
    /// since a backup must not be a change to back up.
    Backup = 17,
}

/// Every table, in the order an export walks them (the change log is not data).
pub const DATA_TABLES: [Table; 16] = [
    Table::Meta,
    Table::Inodes,
    Table::Dirents,
    Table::Manifests,
    Table::Chunks,
    Table::Pending,
    Table::Nodes,
    Table::Audit,
    Table::Datastores,
    Table::Grants,
    Table::Invites,
    Table::Principals,
    Table::ChunkSeals,
    Table::Hosted,
    Table::Links,
    Table::ChunkScopes,
];

impl Table {
    /// The table numbered `n` (as exports write it), if there is one.
    pub fn from_index(n: u8) -> Option<Table> {
        DATA_TABLES.get(n as usize).copied().filter(|t| *t as u8 == n)
    }
}

/// One write of a transaction: table, key, and the new value (None: removed).
pub type Change = (u8, Vec<u8>, Option<Vec<u8>>);

/// The writes of one committed transaction, as the change log keeps them.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ChangeSet(pub Vec<Change>);

const TABLES: [&str; 18] = [
    "meta",
    "inodes",
    "dirents",
    "manifests",
    "chunks",
    "pending",
    "nodes",
    "audit",
    "datastores",
    "grants",
    "invites",
    "principals",
    "chunk_seals",
    "hosted",
    "links",
    "chunk_scopes",
    "changes",
    "metadata_backup",
];

/// Whether a write to `key` of `t` goes into the change log. Not logged: the log itself,
/// the backup's own state, and what is recomputed or re-sent anyway (the chunks this member
/// hosts for other members' metadata backups, which their coordinators place again, and
/// the total hosted, counted again when a store opens). Otherwise every backup would be a
/// change to back up, on this member and on the ones hosting its chunks, forever.
fn logged(t: Table, key: &[u8]) -> bool {
    match t {
        Table::Changes | Table::Backup => false,
        Table::Hosted => !crate::hosting::is_backup_key(key),
        Table::Meta => key != crate::hosting::HOSTED_TOTAL,
        _ => true,
    }
}

pub struct Engine {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// Held shared by every write, exclusively for an instant by [`Engine::mark`]: a mark
    /// falls between transactions, never inside one.
    gate: RwLock<()>,
    /// How many followers want the change log written (0: writes are not logged).
    logging: AtomicU32,
}

/// A view of every table inside one atomic transaction.
pub struct Txn<'a> {
    trees: &'a [TransactionalTree],
    /// The writes so far, when the change log is on.
    changes: Option<RefCell<Vec<Change>>>,
}

pub type Abort = ConflictableTransactionError<MetaError>;

impl Txn<'_> {
    pub fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Abort> {
        Ok(self.trees[t as usize].get(key)?.map(|v| v.to_vec()))
    }
    pub fn insert(&self, t: Table, key: &[u8], value: Vec<u8>) -> Result<(), Abort> {
        if let Some(c) = &self.changes
            && logged(t, key)
        {
            c.borrow_mut().push((t as u8, key.to_vec(), Some(value.clone())));
        }
        self.trees[t as usize].insert(key, value)?;
        Ok(())
    }
    pub fn remove(&self, t: Table, key: &[u8]) -> Result<(), Abort> {
        if let Some(c) = &self.changes
            && logged(t, key)
        {
            c.borrow_mut().push((t as u8, key.to_vec(), None));
        }
        self.trees[t as usize].remove(key)?;
        Ok(())
    }
    /// A process-wide unique, increasing id (for audit keys).
    pub fn unique_id(&self) -> Result<u64, Abort> {
        Ok(self.trees[0].generate_id()?)
    }
}

impl Engine {
    pub fn open(dir: &Path) -> Result<Engine, MetaError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(8 << 20)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| MetaError::Open(dir.display().to_string(), e.to_string()))?;
        let trees = TABLES.iter().map(|n| db.open_tree(n)).collect::<Result<Vec<_>, _>>()?;
        // The change log stays: changes not yet backed up when the process stopped are
        // still to be backed up (an owner that keeps no log clears it, `clear_changes`).
        Ok(Engine {
            db,
            trees,
            gate: RwLock::new(()),
            logging: AtomicU32::new(0),
        })
    }

    /// Runs `f` atomically over every table; retried by the engine on conflicts, so `f`
    /// must have no side effects outside the transaction. While the change log is on, the
    /// transaction's writes are logged in the same transaction, under a sequence number
    /// above every one logged before it commits.
    pub fn transact<T>(&self, f: impl Fn(&Txn<'_>) -> Result<T, Abort>) -> Result<T, MetaError> {
        let _shared = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let log = self.logging.load(Ordering::SeqCst) > 0;
        let refs: Vec<&sled::Tree> = self.trees.iter().collect();
        refs.as_slice()
            .transaction(|views| {
                let txn = Txn {
                    trees: views,
                    changes: log.then(|| RefCell::new(Vec::new())),
                };
                let out = f(&txn)?;
                if let Some(c) = txn.changes {
                    let changes = c.into_inner();
                    if !changes.is_empty() {
                        let seq = views[Table::Meta as usize].generate_id()?;
                        let bytes = postcard::to_allocvec(&ChangeSet(changes))
                            .map_err(|e| Abort::Abort(MetaError::Corrupt(format!("cannot log a change: {e}"))))?;
                        views[Table::Changes as usize].insert(&seq.to_be_bytes(), bytes)?;
                    }
                }
                Ok(out)
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => MetaError::Db(e.to_string()),
            })
    }

    /// A sequence number taken between transactions: every transaction committed before
    /// it logged a lower one, every later one will log a higher one. `follow` turns the
    /// change log on (true) or off (false) at that same instant.
    pub fn mark(&self, follow: Option<bool>) -> Result<u64, MetaError> {
        let _alone = self.gate.write().unwrap_or_else(|p| p.into_inner());
        match follow {
            Some(true) => {
                self.logging.fetch_add(1, Ordering::SeqCst);
            }
            Some(false) => {
                self.logging.fetch_sub(1, Ordering::SeqCst);
            }
            None => {}
        }
        Ok(self.db.generate_id()?)
    }

    /// The logged change sets with sequence numbers in `(after, upto)`, in order.
    pub fn changes(&self, after: u64, upto: u64) -> impl Iterator<Item = Result<(u64, ChangeSet), MetaError>> + '_ {
        self.trees[Table::Changes as usize]
            .range(after.saturating_add(1).to_be_bytes()..upto.to_be_bytes())
            .map(|r| {
                let (k, v) = r?;
                let seq = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| MetaError::Corrupt("bad change log key".into()))?);
                let set: ChangeSet = postcard::from_bytes(&v).map_err(|e| MetaError::Corrupt(format!("change log entry {seq}: {e}")))?;
                Ok((seq, set))
            })
    }

    /// How many logged change sets have a sequence number above `after`.
    pub fn changes_after(&self, after: u64) -> u64 {
        self.trees[Table::Changes as usize]
            .range(after.saturating_add(1).to_be_bytes()..)
            .count() as u64
    }

    /// Forgets the whole change log.
    pub fn clear_changes(&self) -> Result<(), MetaError> {
        self.trees[Table::Changes as usize].clear()?;
        Ok(())
    }

    /// Forgets logged changes up to `upto` (exclusive).
    pub fn trim_changes(&self, upto: u64) -> Result<(), MetaError> {
        let tree = &self.trees[Table::Changes as usize];
        for k in tree.range(..upto.to_be_bytes()).keys() {
            tree.remove(k?)?;
        }
        Ok(())
    }

    /// Writes one entry straight into a table, unlogged: only for filling a new store from
    /// an export.
    pub fn load(&self, t: Table, key: &[u8], value: &[u8]) -> Result<(), MetaError> {
        self.trees[t as usize].insert(key, value)?;
        Ok(())
    }

    /// Removes one entry straight from a table, unlogged (see [`Engine::load`]).
    pub fn unload(&self, t: Table, key: &[u8]) -> Result<(), MetaError> {
        self.trees[t as usize].remove(key)?;
        Ok(())
    }

    pub fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.trees[t as usize].get(key)?.map(|v| v.to_vec()))
    }

    /// Entries whose key starts with `prefix` and sorts after `after` (when given), in key order.
    pub fn scan_prefix<'a>(
        &'a self,
        t: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), MetaError>> + 'a {
        let tree = &self.trees[t as usize];
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = match after {
            Some(a) => {
                let mut start = a.to_vec();
                start.push(0);
                let prefix = prefix.to_vec();
                Box::new(
                    tree.range(start..)
                        .take_while(move |r| r.as_ref().map(|(k, _)| k.starts_with(&prefix)).unwrap_or(true)),
                )
            }
            None => Box::new(tree.scan_prefix(prefix)),
        };
        iter.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(MetaError::from))
    }

    /// Entries from `start` (inclusive) to the end of the table, in key order.
    pub fn scan_from<'a>(&'a self, t: Table, start: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), MetaError>> + 'a {
        self.trees[t as usize]
            .range(start.to_vec()..)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(MetaError::from))
    }

    /// One write on its own (for records no other key depends on); logged like any while
    /// the change log is on.
    pub fn insert(&self, t: Table, key: &[u8], value: Vec<u8>) -> Result<(), MetaError> {
        {
            let _shared = self.gate.read().unwrap_or_else(|p| p.into_inner());
            if self.logging.load(Ordering::SeqCst) == 0 || !logged(t, key) {
                self.trees[t as usize].insert(key, value)?;
                return Ok(());
            }
        }
        self.transact(|txn| txn.insert(t, key, value.clone()))
    }

    pub fn remove(&self, t: Table, key: &[u8]) -> Result<(), MetaError> {
        {
            let _shared = self.gate.read().unwrap_or_else(|p| p.into_inner());
            if self.logging.load(Ordering::SeqCst) == 0 || !logged(t, key) {
                self.trees[t as usize].remove(key)?;
                return Ok(());
            }
        }
        self.transact(|txn| txn.remove(t, key))
    }

    /// A process-wide unique, increasing id, outside any transaction.
    pub fn unique_id(&self) -> Result<u64, MetaError> {
        Ok(self.db.generate_id()?)
    }

    pub fn len(&self, t: Table) -> usize {
        self.trees[t as usize].len()
    }

    /// Makes everything committed so far durable.
    pub fn flush(&self) -> Result<(), MetaError> {
        self.db.flush()?;
        Ok(())
    }

    pub async fn flush_async(&self) -> Result<(), MetaError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

impl From<sled::Error> for MetaError {
    fn from(e: sled::Error) -> Self {
        MetaError::Db(e.to_string())
    }
}
