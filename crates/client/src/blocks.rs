//! Lower-level building blocks for programs that manage file content themselves (the FUSE
//! mount): one file's read plan, one chunk's bytes, storing a batch of chunks, committing a
//! manifest, and the namespace calls the CLI has no use for (links, attribute changes).

use bytes::Bytes;
use collective_core::{ChunkId, validate_path};
use collective_proto::v1::{
    ChunkDesc, ChunkLocation, ChunkRef, CommitFilesRequest, FileAttr, FileCommit, FilePlan, ListRequest, ListResponse, PathRequest,
    PlanWriteRequest, SetAttrRequest, SymlinkRequest, WritePolicyResponse,
};

use crate::ClientError;
use crate::sealing::{self, SEAL_LEN};
use crate::session::Client;

/// Chunks planned in one coordinator call.
const PLAN_BATCH: usize = 256;

/// A chunk ready to store: its id (hash of `data`), the bytes as nodes keep them (sealed
/// when the datastore encrypts) and the seal to record in the manifest.
#[derive(Debug, Clone)]
pub struct PreparedChunk {
    pub id: ChunkId,
    pub data: Bytes,
    pub seal: Option<[u8; SEAL_LEN]>,
}

/// Turns plaintext into a chunk ready to store: sealed with the datastore's secret when it
/// has one (into a copy: sealing works in place), then hashed. Unsealed chunks keep the
/// caller's bytes, so a slice of a larger buffer costs no copy.
pub fn prepare_chunk(plain: Bytes, secret: Option<&[u8; 32]>) -> Result<PreparedChunk, ClientError> {
    let (data, seal) = match secret {
        Some(s) => {
            let mut sealed = plain.to_vec();
            let seal = sealing::seal(s, &mut sealed)?;
            (Bytes::from(sealed), Some(seal))
        }
        None => (plain, None),
    };
    Ok(PreparedChunk {
        id: ChunkId::of(&data),
        data,
        seal,
    })
}

impl Client {
    /// A file's attributes and chunk locations (with read tokens), as of now.
    pub async fn read_plan(&self, path: &str) -> Result<FilePlan, ClientError> {
        let path = validate_path(path)?;
        self.plans(vec![path.to_string()])
            .await?
            .pop()
            .ok_or_else(|| ClientError::Other("the coordinator returned no plan".into()))
    }

    /// One chunk's stored bytes, verified against its id (not decrypted; see
    /// [`crate::open_chunk`]). Tries every replica and reports bad ones.
    pub async fn fetch_stored(&self, loc: &ChunkLocation, file: &str) -> Result<Bytes, ClientError> {
        crate::download::fetch_stored(&self.chunks, &self.meta(), loc, file).await
    }

    /// The datastore's write policy for `path`; fails (permission denied) when the caller
    /// may not write there.
    pub async fn write_policy(&self, path: &str) -> Result<WritePolicyResponse, ClientError> {
        let path = validate_path(path)?;
        Ok(self
            .meta()
            .write_policy(PathRequest { path: path.to_string() })
            .await
            .map_err(ClientError::status)?
            .into_inner())
    }

    /// The encryption secret of the datastore holding `path` (None: chunks stored as is).
    pub async fn secret_for(&self, path: &str) -> Result<Option<[u8; 32]>, ClientError> {
        let p = self.write_policy(path).await?;
        if !p.encrypt {
            return Ok(None);
        }
        <[u8; 32]>::try_from(p.secret.as_ref())
            .map(Some)
            .map_err(|_| ClientError::Other(format!("the coordinator sent a bad encryption secret for {path}")))
    }

    /// Stores chunks for the file at `path` on as many nodes as its datastore asks for.
    /// Returns, for each chunk in order, the nodes that acknowledged it (empty when it was
    /// stored already). Every chunk is either fully stored or the call fails.
    pub async fn store_chunks(&self, path: &str, chunks: &[PreparedChunk]) -> Result<Vec<Vec<String>>, ClientError> {
        let path = validate_path(path)?.to_string();
        let mut out = Vec::with_capacity(chunks.len());
        for batch in chunks.chunks(PLAN_BATCH) {
            let req = PlanWriteRequest {
                chunks: batch
                    .iter()
                    .map(|c| ChunkDesc {
                        id: c.id.0.to_vec().into(),
                        size: c.data.len() as u64,
                    })
                    .collect(),
                path: path.clone(),
            };
            let plan = self.meta().plan_write(req).await.map_err(ClientError::status)?.into_inner();
            if plan.placements.len() != batch.len() {
                return Err(ClientError::Other(
                    "the coordinator answered a write plan for a different number of chunks".into(),
                ));
            }
            let puts = batch.iter().zip(plan.placements).map(|(c, placement)| {
                let (client, meta, path) = (self.chunks.clone(), self.meta(), path.clone());
                async move {
                    if placement.stored {
                        return Ok(Vec::new());
                    }
                    crate::upload::store_chunk(&client, meta, c.id, std::slice::from_ref(&c.data), placement, &path).await
                }
            });
            for r in futures::future::join_all(puts).await {
                out.push(r?);
            }
        }
        Ok(out)
    }

    /// Makes a new version of a file visible in one atomic commit. `chunks` must cover
    /// `size` bytes in order.
    pub async fn commit_file(
        &self,
        path: &str,
        size: u64,
        mode: u32,
        mtime_ms: i64,
        chunks: Vec<ChunkRef>,
    ) -> Result<FileAttr, ClientError> {
        let path = validate_path(path)?;
        let req = CommitFilesRequest {
            files: vec![FileCommit {
                path: path.to_string(),
                size,
                mode,
                mtime_ms,
                chunks,
                parents: false,
            }],
        };
        self.meta()
            .commit_files(req)
            .await
            .map_err(ClientError::status)?
            .into_inner()
            .files
            .pop()
            .ok_or_else(|| ClientError::Other("the coordinator confirmed no file".into()))
    }

    /// One page of a directory: up to `limit` entries after `after`.
    pub async fn list_page(&self, path: &str, after: &str, limit: u32) -> Result<ListResponse, ClientError> {
        let path = validate_path(path)?;
        Ok(self
            .meta()
            .list(ListRequest {
                path: path.to_string(),
                start_after: after.to_string(),
                limit,
            })
            .await
            .map_err(ClientError::status)?
            .into_inner())
    }

    /// Makes a symbolic link at `path` pointing to `target`.
    pub async fn symlink(&self, path: &str, target: &str) -> Result<FileAttr, ClientError> {
        let path = validate_path(path)?;
        Ok(self
            .meta()
            .symlink(SymlinkRequest {
                path: path.to_string(),
                target: target.to_string(),
            })
            .await
            .map_err(ClientError::status)?
            .into_inner())
    }

    /// Changes permission bits and/or modification time.
    pub async fn set_attr(&self, path: &str, mode: Option<u32>, mtime_ms: Option<i64>) -> Result<FileAttr, ClientError> {
        let path = validate_path(path)?;
        Ok(self
            .meta()
            .set_attr(SetAttrRequest {
                path: path.to_string(),
                mode,
                mtime_ms,
            })
            .await
            .map_err(ClientError::status)?
            .into_inner())
    }

    /// Memory for chunk bytes in flight (KiB permits), shared with the CLI transfers.
    pub fn budget(&self) -> (std::sync::Arc<tokio::sync::Semaphore>, u32) {
        (self.budget.clone(), self.budget_kib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_chunks_are_sealed_copies_or_the_callers_own_bytes() {
        let window = Bytes::from((0..300_000u32).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
        let plain = window.slice(1000..201_000);

        let open = prepare_chunk(plain.clone(), None).unwrap();
        assert_eq!(open.id, ChunkId::of(&plain));
        assert!(open.seal.is_none());
        assert_eq!(open.data.as_ptr(), plain.as_ptr(), "an unsealed chunk is not copied");

        let secret = [7u8; 32];
        let sealed = prepare_chunk(plain.clone(), Some(&secret)).unwrap();
        assert_ne!(sealed.data, plain, "a sealed chunk is not stored as plaintext");
        assert_eq!(sealed.id, ChunkId::of(&sealed.data), "the id is the hash of what nodes store");
        let seal = sealed.seal.unwrap();
        assert_eq!(sealing::open(&seal, sealed.data.clone()).unwrap(), plain);
        assert_eq!(window.slice(1000..201_000), plain, "the caller's buffer is left as it was");
        // Convergent: the same plaintext and secret give the same chunk.
        assert_eq!(prepare_chunk(plain, Some(&secret)).unwrap().id, sealed.id);
    }
}
