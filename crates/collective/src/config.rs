//! Loading TOML configuration; relative paths in a file are relative to that file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use collective_client::ClientConfig;
use serde::de::DeserializeOwned;

/// Command-line overrides of the client configuration.
pub struct ClientOverrides {
    pub config: Option<PathBuf>,
    /// A context (see `collective context list`); wins over `config`.
    pub context: Option<String>,
    pub coordinator: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The current context's client config, else `~/.config/collective/client.toml`.
pub fn default_client_config() -> Option<PathBuf> {
    collective_client::contexts::Contexts::load()
        .ok()
        .and_then(|c| c.current_config())
        .or_else(|| collective_client::contexts::config_home().ok().map(|h| h.join("client.toml")))
}

pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid configuration", path.display()))
}

/// Makes `p` absolute relative to the directory of the config file.
pub fn rebase(config: &Path, p: &mut PathBuf) {
    if p.is_relative()
        && let Some(dir) = config.parent()
    {
        *p = dir.join(&*p);
    }
}

/// Makes the certificate paths of a server config relative to the config file.
pub fn rebase_tls(config: &Path, tls: &mut collective_pki::TlsFiles) {
    if let Some(dir) = config.parent() {
        tls.rebase(dir);
    }
}

pub fn client_config(o: &ClientOverrides) -> Result<ClientConfig> {
    let explicit = o.config.is_some() || o.context.is_some();
    let path = match &o.context {
        Some(name) => Some(collective_client::contexts::Contexts::load()?.config_of(name)?),
        None => o.config.clone().or_else(default_client_config),
    };
    let mut cfg = match &path {
        Some(p) if p.exists() => ClientConfig::load(p)?,
        Some(p) if explicit => anyhow::bail!("the configuration file {} does not exist", p.display()),
        _ => {
            if o.cert.is_none() {
                anyhow::bail!(
                    "no client configuration: pass --config FILE (or set COLLECTIVE_CONFIG), pick one with --context NAME \
                     (`collective context list`; `collective invite redeem` adds one), or give --coordinator, --ca, --cert and --key. \
                     A throwaway local test cluster from `collective dev up --dir DIR` has its config in DIR/client.toml"
                );
            }
            ClientConfig::default()
        }
    };
    if let Some(v) = &o.coordinator {
        cfg.coordinator = v.clone();
    }
    if let Some(v) = &o.ca {
        cfg.ca = v.clone();
    }
    if let Some(v) = &o.cert {
        cfg.cert = v.clone();
    }
    if let Some(v) = &o.key {
        cfg.key = v.clone();
    }
    Ok(cfg)
}
