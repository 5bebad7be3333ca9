//! `collective context list|use|rm`: the collectives this user belongs to. Each redeemed
//! invite adds a named context (a client config of its own) to
//! `~/.config/collective/contexts.toml`; one of them is current, and `--context NAME`
//! picks another for one command.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Subcommand;
use collective_client::ClientConfig;
use collective_client::contexts::{Contexts, contexts_dir};

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

fn coordinator_of(config: &Path) -> String {
    ClientConfig::load(config)
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
            let e = all.remove(&name)?;
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
