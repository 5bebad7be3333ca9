//! A connected client: identity, coordinator channel, QUIC chunk client, memory budget.

use std::sync::Arc;

use collective_core::{Principal, Role, parse_size, validate_path};
use collective_dataplane::ChunkClient;
use collective_pki::TlsIdentity;
use collective_proto::v1::admin_client::AdminClient;
use collective_proto::v1::metadata_client::MetadataClient;
use collective_proto::v1::upkeep_client::UpkeepClient;
use collective_proto::v1::{
    DirEntry, FileAttr, MkdirRequest, PathRequest, RemoveRequest, RemoveResponse, RenameRequest, StatusRequest, StatusResponse,
};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::error::Answer;
use crate::{ClientConfig, ClientError};

/// Called with the number of payload bytes just transferred.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

const MAX_MESSAGE_BYTES: usize = 64 << 20;

pub struct Client {
    pub(crate) meta: MetadataClient<Channel>,
    admin: AdminClient<Channel>,
    upkeep: UpkeepClient<Channel>,
    observe: collective_proto::v1::observe_client::ObserveClient<Channel>,
    pub(crate) chunks: Arc<ChunkClient>,
    /// Memory for chunk bytes in flight, in KiB permits.
    pub(crate) budget: Arc<Semaphore>,
    pub(crate) budget_kib: u32,
    pub(crate) parallel: usize,
    pub principal: String,
}

impl Client {
    /// Loads the identity and prepares connections (made lazily, on first use).
    /// Must be called inside a tokio runtime.
    pub fn connect(cfg: &ClientConfig) -> Result<Client, ClientError> {
        let identity = TlsIdentity::load(&cfg.ca, &cfg.cert, &cfg.key)?;
        if identity.role != Role::Client {
            return Err(ClientError::Config(format!(
                "{} holds a {} certificate; the CLI needs a client certificate (`collective ca issue --role client`)",
                identity.cert_path.display(),
                identity.role
            )));
        }
        let info = identity.info();
        let now = time::OffsetDateTime::now_utc();
        if now > info.not_after {
            return Err(ClientError::Config(format!(
                "the certificate {} expired on {}; ask your member's admin for a new one (`collective ca issue`)",
                identity.cert_path.display(),
                info.not_after.date()
            )));
        }
        if now < info.not_before {
            return Err(ClientError::Config(format!(
                "the certificate {} is not valid before {}; check this machine's clock or issue a new certificate",
                identity.cert_path.display(),
                info.not_before.date()
            )));
        }
        // A bare name is within our own member; `name@domain` names any principal.
        let coordinator = match cfg.coordinator_name.contains('@') {
            true => cfg.coordinator_name.parse::<Principal>(),
            false => Principal::new(&cfg.coordinator_name, &identity.principal.domain),
        }
        .map_err(|e| ClientError::Config(format!("coordinator_name: {e}")))?;
        let channel = collective_rpc::channel(&identity, &cfg.coordinator, &coordinator)?;
        let admin = AdminClient::new(channel.clone());
        let upkeep = UpkeepClient::new(channel.clone());
        let observe = collective_proto::v1::observe_client::ObserveClient::new(channel.clone());
        let meta = MetadataClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let chunks = Arc::new(ChunkClient::new(&identity)?);
        let budget_bytes = parse_size(&cfg.buffer).map_err(|e| ClientError::Config(format!("buffer: {e}")))?;
        // At least one maximum-size chunk must fit.
        let budget_kib = (budget_bytes / 1024).clamp(16 * 1024 + 64, 4 << 20) as u32;
        Ok(Client {
            meta,
            admin,
            upkeep,
            observe,
            chunks,
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            parallel: cfg.parallel_chunks.max(1),
            principal: identity.principal.to_string(),
        })
    }

    /// Closes connections to nodes cleanly; call before exiting.
    pub async fn close(&self) {
        self.chunks.close().await;
    }

    /// The administration service (datastores, grants, invites, federation).
    pub(crate) fn admin(&self) -> AdminClient<Channel> {
        self.admin.clone()
    }

    /// Repair, scrub and node lifecycle (this member's admins): see `upkeep.rs` for the
    /// typed operations.
    pub(crate) fn upkeep(&self) -> UpkeepClient<Channel> {
        self.upkeep.clone()
    }

    /// Cluster events and the audit log.
    pub(crate) fn observe(&self) -> collective_proto::v1::observe_client::ObserveClient<Channel> {
        self.observe.clone()
    }

    pub(crate) fn meta(&self) -> MetadataClient<Channel> {
        self.meta.clone()
    }

    pub async fn stat(&self, path: &str) -> Result<FileAttr, ClientError> {
        let path = validate_path(path)?;
        self.meta().stat(PathRequest { path: path.to_string() }).await.answer()
    }

    /// Every entry of a directory (paging through large ones), or the file itself.
    pub async fn list(&self, path: &str) -> Result<Vec<DirEntry>, ClientError> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.list_page(path, &after, 0).await?;
            if let Some(last) = page.entries.last() {
                after = last.name.clone();
            }
            out.extend(page.entries);
            if !page.more {
                return Ok(out);
            }
        }
    }

    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<FileAttr, ClientError> {
        self.mkdir_with(path, parents, 0o755).await
    }

    /// Makes a directory with the given permission bits (and its parents when asked).
    pub async fn mkdir_with(&self, path: &str, parents: bool, mode: u32) -> Result<FileAttr, ClientError> {
        let path = validate_path(path)?;
        self.meta()
            .mkdir(MkdirRequest {
                path: path.to_string(),
                parents,
                mode,
            })
            .await
            .answer()
    }

    pub async fn remove(&self, path: &str, recursive: bool) -> Result<RemoveResponse, ClientError> {
        let path = validate_path(path)?;
        self.meta()
            .remove(RemoveRequest {
                path: path.to_string(),
                recursive,
            })
            .await
            .answer()
    }

    pub async fn rename(&self, src: &str, dst: &str) -> Result<FileAttr, ClientError> {
        let (src, dst) = (validate_path(src)?, validate_path(dst)?);
        self.meta()
            .rename(RenameRequest {
                src: src.to_string(),
                dst: dst.to_string(),
            })
            .await
            .answer()
    }

    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.meta().status(StatusRequest {}).await.answer()
    }
}
