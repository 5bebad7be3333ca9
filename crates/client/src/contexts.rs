//! The collectives this user belongs to: named client configs in
//! `~/.config/collective/contexts.toml` (or `$XDG_CONFIG_HOME/collective`). Each redeemed
//! invite adds one; one of them is current, and a command may pick another by name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ClientError;

/// `contexts.toml`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Contexts {
    #[serde(default)]
    pub current: String,
    #[serde(default)]
    pub contexts: BTreeMap<String, ContextEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContextEntry {
    /// The context's client config.
    pub config: PathBuf,
    /// Who the user is in it, e.g. `dave@alice.collective.local`.
    #[serde(default)]
    pub principal: String,
}

fn config_error(msg: String) -> ClientError {
    ClientError::Config(msg)
}

/// `$XDG_CONFIG_HOME/collective`, else `~/.config/collective`.
pub fn config_home() -> Result<PathBuf, ClientError> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|b| b.join("collective"))
        .ok_or_else(|| config_error("cannot tell where the configuration lives: set HOME (or XDG_CONFIG_HOME), or pass --config".into()))
}

/// Where contexts made by `invite redeem` keep their files.
pub fn contexts_dir() -> Result<PathBuf, ClientError> {
    Ok(config_home()?.join("contexts"))
}

impl Contexts {
    fn path() -> Result<PathBuf, ClientError> {
        Ok(config_home()?.join("contexts.toml"))
    }

    pub fn load() -> Result<Contexts, ClientError> {
        let path = Self::path()?;
        if !path.exists() {
            return Ok(Contexts::default());
        }
        let text = std::fs::read_to_string(&path).map_err(ClientError::local(&path))?;
        toml::from_str(&text).map_err(|e| config_error(format!("{} is not a valid contexts file: {e}", path.display())))
    }

    /// Writes the file (atomically: a crash leaves the old one or the new one).
    pub fn save(&self) -> Result<(), ClientError> {
        let path = Self::path()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(ClientError::local(dir))?;
        }
        let tmp = path.with_extension("toml.tmp");
        let text = toml::to_string_pretty(self).map_err(|e| config_error(format!("cannot encode the contexts: {e}")))?;
        std::fs::write(&tmp, text).map_err(ClientError::local(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(ClientError::local(&path))
    }

    /// A name not taken yet, `wanted` itself when free.
    pub fn free_name(&self, wanted: &str) -> String {
        if !self.contexts.contains_key(wanted) {
            return wanted.to_string();
        }
        (2..)
            .map(|i| format!("{wanted}-{i}"))
            .find(|n| !self.contexts.contains_key(n))
            .unwrap_or_default()
    }

    /// Adds a context; the first one becomes current. Returns whether it is current.
    pub fn add(name: &str, entry: ContextEntry) -> Result<bool, ClientError> {
        let mut all = Contexts::load()?;
        if all.contexts.contains_key(name) {
            return Err(config_error(format!(
                "a context named {name} exists already; pick another name or remove it with `collective context rm {name}`"
            )));
        }
        all.contexts.insert(name.to_string(), entry);
        let current = all.current.is_empty() || !all.contexts.contains_key(&all.current);
        if current {
            all.current = name.to_string();
        }
        all.save()?;
        Ok(current)
    }

    /// The client config of context `name`.
    pub fn config_of(&self, name: &str) -> Result<PathBuf, ClientError> {
        match self.contexts.get(name) {
            Some(e) => Ok(e.config.clone()),
            None if self.contexts.is_empty() => Err(config_error(format!(
                "there is no context {name}: no contexts yet (`collective invite redeem CODE` adds one)"
            ))),
            None => Err(config_error(format!(
                "there is no context {name}; known: {} (see `collective context list`)",
                self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The current context's client config, if there is one.
    pub fn current_config(&self) -> Option<PathBuf> {
        self.contexts.get(&self.current).map(|e| e.config.clone())
    }

    /// Forgets context `name` (the next one becomes current if it was); returns its entry.
    pub fn remove(&mut self, name: &str) -> Result<ContextEntry, ClientError> {
        let e = self
            .contexts
            .remove(name)
            .ok_or_else(|| config_error(format!("there is no context {name} (see `collective context list`)")))?;
        if self.current == name {
            self.current = self.contexts.keys().next().cloned().unwrap_or_default();
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_names_count_up_and_unknown_contexts_say_which_exist() {
        let mut all = Contexts::default();
        let entry = |p: &str| ContextEntry {
            config: PathBuf::from(p),
            principal: String::new(),
        };
        assert_eq!(all.free_name("alice"), "alice");
        all.contexts.insert("alice".into(), entry("/a"));
        all.contexts.insert("alice-2".into(), entry("/b"));
        assert_eq!(all.free_name("alice"), "alice-3");
        let e = all.config_of("bob").unwrap_err().to_string();
        assert!(e.contains("known: alice, alice-2"), "{e}");
        all.current = "alice".into();
        assert_eq!(all.remove("alice").unwrap().config, PathBuf::from("/a"));
        assert_eq!(all.current, "alice-2", "the next one becomes current");
        assert!(all.remove("alice").is_err());
    }
}
