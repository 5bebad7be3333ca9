//! The only module that knows the storage engine is sled. Everything else speaks in terms
//! of named trees, byte keys and atomic transactions, so the engine can be swapped.

use std::path::Path;

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
}

const TABLES: [&str; 16] = [
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
];

pub struct Engine {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

/// A view of every table inside one atomic transaction.
pub struct Txn<'a> {
    trees: &'a [TransactionalTree],
}

pub type Abort = ConflictableTransactionError<MetaError>;

impl Txn<'_> {
    pub fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Abort> {
        Ok(self.trees[t as usize].get(key)?.map(|v| v.to_vec()))
    }
    pub fn insert(&self, t: Table, key: &[u8], value: Vec<u8>) -> Result<(), Abort> {
        self.trees[t as usize].insert(key, value)?;
        Ok(())
    }
    pub fn remove(&self, t: Table, key: &[u8]) -> Result<(), Abort> {
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
        Ok(Engine { db, trees })
    }

    /// Runs `f` atomically over every table; retried by the engine on conflicts, so `f`
    /// must have no side effects outside the transaction.
    pub fn transact<T>(&self, f: impl Fn(&Txn<'_>) -> Result<T, Abort>) -> Result<T, MetaError> {
        let refs: Vec<&sled::Tree> = self.trees.iter().collect();
        refs.as_slice().transaction(|views| f(&Txn { trees: views })).map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => MetaError::Db(e.to_string()),
        })
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

    /// One write outside any transaction (for records no other key depends on).
    pub fn insert(&self, t: Table, key: &[u8], value: Vec<u8>) -> Result<(), MetaError> {
        self.trees[t as usize].insert(key, value)?;
        Ok(())
    }

    pub fn remove(&self, t: Table, key: &[u8]) -> Result<(), MetaError> {
        self.trees[t as usize].remove(key)?;
        Ok(())
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
