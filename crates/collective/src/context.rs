//! `collective context list|use|rm`: the collectives this user belongs to. Each redeemed
//! invite adds a named context (a client config of its own) to
//! `~/.config/collective/contexts.toml`; one of them is current, and `--context NAME`
//! picks another for one command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use collective_client::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::config::{config_home, load_toml};

#[derive(Subcommand)]
pub enum ContextCommand {
    /// Every context, the current one marked
    List {
        #[arg(long)]
        json: bool,
    },
    /// Make NAME the context commands use by default
    Use { name: String },
    /// Forget a context (and delete its key and certificate if `invite redeem` made them)
    Rm { name: String },
}

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

/// Where contexts made by `invite redeem` keep their files.
pub fn contexts_dir() -> Result<PathBuf> {
    Ok(config_home()?.join("contexts"))
}

impl Contexts {
    fn path() -> Result<PathBuf> {
        Ok(config_home()?.join("contexts.toml"))
    }

    pub fn load() -> Result<Contexts> {
        let path = Self::path()?;
        if !path.exists() {
            return Ok(Contexts::default());
        }
        load_toml(&path)
    }

    fn save(&self) -> Result<()> {
        let path = Self::path()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, toml::to_string_pretty(self)?).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
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
    pub fn add(name: &str, entry: ContextEntry) -> Result<bool> {
        let mut all = Contexts::load()?;
        if all.contexts.contains_key(name) {
            bail!("a context named {name} exists already; pick another name or remove it with `collective context rm {name}`");
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
    pub fn config_of(&self, name: &str) -> Result<PathBuf> {
        match self.contexts.get(name) {
            Some(e) => Ok(e.config.clone()),
            None if self.contexts.is_empty() => {
                bail!("there is no context {name}: no contexts yet (`collective invite redeem CODE` adds one)")
            }
            None => bail!(
                "there is no context {name}; known: {} (see `collective context list`)",
                self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// The current context's client config, if there is one.
    pub fn current_config(&self) -> Option<PathBuf> {
        self.contexts.get(&self.current).map(|e| e.config.clone())
    }
}

fn coordinator_of(config: &Path) -> String {
    load_toml::<ClientConfig>(config)
        .map(|c| c.coordinator)
        .unwrap_or_else(|_| "(unreadable config)".into())
}

pub fn run(cmd: ContextCommand) -> Result<()> {
    let mut all = Contexts::load()?;
    match cmd {
        ContextCommand::List { json } => {
            if json {
                let list: Vec<serde_json::Value> = all
                    .contexts
                    .iter()
                    .map(|(name, e)| {
                        serde_json::json!({
                            "name": name,
                            "current": *name == all.current,
                            "principal": e.principal,
                            "coordinator": coordinator_of(&e.config),
                            "config": e.config,
                        })
                    })
                    .collect();
                let v = serde_json::json!({ "current": all.current, "contexts": list });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if all.contexts.is_empty() {
                println!("no contexts yet; `collective invite redeem CODE` adds one");
            } else {
                println!("  {:<28} {:<40} {:<22} CONFIG", "NAME", "YOU ARE", "COORDINATOR");
                for (name, e) in &all.contexts {
                    let mark = if *name == all.current { "*" } else { " " };
                    println!(
                        "{mark} {:<28} {:<40} {:<22} {}",
                        name,
                        e.principal,
                        coordinator_of(&e.config),
                        e.config.display()
                    );
                }
            }
        }
        ContextCommand::Use { name } => {
            all.config_of(&name)?;
            all.current = name.clone();
            all.save()?;
            println!("now using context {name}");
        }
        ContextCommand::Rm { name } => {
            let e = all
                .contexts
                .remove(&name)
                .with_context(|| format!("there is no context {name} (see `collective context list`)"))?;
            if all.current == name {
                all.current = all.contexts.keys().next().cloned().unwrap_or_default();
            }
            all.save()?;
            // Files `invite redeem` made for it go too; a config kept elsewhere stays.
            let own = contexts_dir()?.join(&name);
            if e.config.parent() == Some(own.as_path()) {
                std::fs::remove_dir_all(&own).with_context(|| format!("cannot remove {}", own.display()))?;
                println!("removed context {name} and its key and certificate in {}", own.display());
            } else {
                println!("removed context {name} (its files in {} are left as they are)", e.config.display());
            }
            if !all.current.is_empty() {
                println!("current context: {}", all.current);
            }
        }
    }
    Ok(())
}
