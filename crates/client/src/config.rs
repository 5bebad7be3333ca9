//! `client.toml`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// gRPC address of this member's coordinator.
    pub coordinator: String,
    /// Principal name of the coordinator within this member (or a whole `name@domain`).
    pub coordinator_name: String,
    /// Trusted CA certificate, our certificate and our key (0600).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Memory for chunk data in flight (read-ahead and uploads), e.g. "32MiB".
    pub buffer: String,
    /// Chunks fetched or sent at once.
    pub parallel_chunks: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            coordinator: "127.0.0.1:7000".into(),
            coordinator_name: "coordinator".into(),
            ca: PathBuf::from("ca.crt"),
            cert: PathBuf::from("client.crt"),
            key: PathBuf::from("client.key"),
            buffer: "24MiB".into(),
            parallel_chunks: 16,
        }
    }
}

impl ClientConfig {
    /// Reads `path`; relative certificate paths in it are taken relative to the file's
    /// directory.
    pub fn load(path: &std::path::Path) -> Result<ClientConfig, crate::ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::ClientError::Config(format!("cannot read the configuration file {}: {e}", path.display())))?;
        let mut cfg: ClientConfig = toml::from_str(&text)
            .map_err(|e| crate::ClientError::Config(format!("{} is not a valid configuration: {e}", path.display())))?;
        if let Some(dir) = path.parent() {
            for p in [&mut cfg.ca, &mut cfg.cert, &mut cfg.key] {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(cfg)
    }

    /// Writes this configuration to `path` (relative paths in it stay relative to the
    /// file's directory).
    pub fn write(&self, path: &std::path::Path) -> Result<(), crate::ClientError> {
        let text =
            toml::to_string_pretty(self).map_err(|e| crate::ClientError::Config(format!("cannot encode {}: {e}", path.display())))?;
        std::fs::write(path, text).map_err(crate::ClientError::local(path))
    }
}
