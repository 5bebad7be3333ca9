//! Who may do what: admins, grants inherited down the tree, and the errors that name the
//! missing right. Every data and metadata path of the coordinator goes through here.

use std::sync::Arc;

use collective_core::{Principal, RemotePath, Rights, ShareRefusal, SharedClock, Subject, effective_rights};
use collective_meta::MetaStore;
use tonic::Status;

use crate::error::Error;
use crate::state::State;

/// The top-level name of a path (`/media/a` → `media`), None for the root.
pub fn top_of(path: &str) -> Option<&str> {
    path.trim_start_matches('/').split('/').next().filter(|s| !s.is_empty())
}

/// Access control of one member's namespace: its admins, and the grants in its metadata
/// judged at the clock's time. It decides; it does not authenticate (the caller is known
/// by the time it asks) and it changes nothing.
pub struct Access {
    domain: String,
    admins: Vec<Subject>,
    meta: Arc<MetaStore>,
    clock: SharedClock,
    denials: prometheus::IntCounter,
}

impl Access {
    pub fn new(domain: &str, admins: Vec<Subject>, meta: Arc<MetaStore>, clock: SharedClock, denials: prometheus::IntCounter) -> Access {
        Access {
            domain: domain.to_string(),
            admins,
            meta,
            clock,
            denials,
        }
    }

    /// Whether `who` is an admin here: a principal of this member that `admins` names.
    /// Another member's principals never are, whatever the list says.
    pub fn is_admin(&self, who: &Principal) -> bool {
        who.domain == self.domain && self.admins.iter().any(|s| s.matches(who))
    }

    /// The rights `who` holds on `path` in this member's namespace.
    pub fn rights(&self, who: &Principal, path: &str) -> Result<Rights, Error> {
        if self.is_admin(who) {
            return Ok(Rights::ALL);
        }
        let grants = self.meta.grants()?;
        Ok(effective_rights(&grants, who, path, self.clock.now_ms()))
    }

    /// Refuses unless `who` holds `need` on `path`, naming what is missing.
    pub fn require(&self, who: &Principal, path: &RemotePath, need: Rights) -> Result<(), Error> {
        let have = self.rights(who, path.as_str())?;
        if have.contains(need) {
            return Ok(());
        }
        Err(self.lacks(who, path.as_str(), need.missing_from(have), have))
    }

    fn lacks(&self, who: &Principal, path: &str, missing: Rights, have: Rights) -> Error {
        self.denials.inc();
        let owner = top_of(path).map(|t| format!("/{t}")).unwrap_or_else(|| "/".into());
        Error::Lacks {
            who: who.to_string(),
            missing,
            have,
            path: path.to_string(),
            owner,
            member: self.domain.clone(),
        }
    }

    /// Refuses unless `who` may give `rights` on `path` until `until_ms` (0: for good):
    /// the one rule for grants and invites ([`collective_core::may_share`]).
    pub fn may_share(&self, who: &Principal, path: &RemotePath, rights: Rights, until_ms: u64) -> Result<(), Error> {
        self.judge_sharing(who, path, |grants, now| {
            collective_core::may_share(grants, who, path.as_str(), now, rights, until_ms)
        })
    }

    /// How long what `who` gives of `rights` on `path` may last (0: for good), or why it
    /// may not give them at all ([`collective_core::share_limit`]).
    pub fn share_limit(&self, who: &Principal, path: &RemotePath, rights: Rights) -> Result<u64, Error> {
        self.judge_sharing(who, path, |grants, now| {
            collective_core::share_limit(grants, who, path.as_str(), now, rights)
        })
    }

    /// Runs a sharing rule on the grants at the clock's time; admins pass (with "for good").
    fn judge_sharing<T: Default>(
        &self,
        who: &Principal,
        path: &RemotePath,
        rule: impl FnOnce(&[collective_core::Grant], u64) -> Result<T, ShareRefusal>,
    ) -> Result<T, Error> {
        if self.is_admin(who) {
            return Ok(T::default());
        }
        let grants = self.meta.grants()?;
        rule(&grants, self.clock.now_ms()).map_err(|refusal| match refusal {
            ShareRefusal::Lacks { missing, have } => self.lacks(who, path.as_str(), missing, have),
            ShareRefusal::Outlasts { until_ms } => {
                self.denials.inc();
                Error::Outlasts {
                    who: who.to_string(),
                    path: path.to_string(),
                    until: crate::events::time_str(until_ms),
                }
            }
        })
    }

    /// Whether a top-level entry shows up in `who`'s listing of `/`: admins see everything,
    /// others what they hold a grant in.
    pub fn can_see(&self, who: &Principal, top: &str) -> Result<bool, Error> {
        if self.is_admin(who) {
            return Ok(true);
        }
        let now = self.clock.now_ms();
        let root = format!("/{top}");
        let grants = self.meta.grants()?;
        Ok(grants
            .iter()
            .any(|g| g.active(now) && g.subject.matches(who) && (g.covers(&root) || g.path.starts_with(&format!("{root}/")))))
    }
}

impl State {
    pub fn is_admin(&self, who: &Principal) -> bool {
        self.access.is_admin(who)
    }

    /// [`Access::rights`], as a gRPC status for the services.
    pub fn rights(&self, who: &Principal, path: &str) -> Result<Rights, Status> {
        Ok(self.access.rights(who, path)?)
    }

    /// [`Access::require`], as a gRPC status for the services.
    pub fn require(&self, who: &Principal, path: &RemotePath, need: Rights) -> Result<(), Status> {
        Ok(self.access.require(who, path, need)?)
    }

    /// [`Access::can_see`], as a gRPC status for the services.
    pub fn can_see(&self, who: &Principal, top: &str) -> Result<bool, Status> {
        Ok(self.access.can_see(who, top)?)
    }
}

impl State {
    /// The end user of a call: a client of this member, or a user of another member named
    /// by that member's coordinator (which may only speak for its own principals).
    pub fn end_user<T>(&self, req: &tonic::Request<T>) -> Result<Principal, Status> {
        let caller = collective_rpc::peer(req, self.identity.revocations()).inspect_err(|_| self.metrics.denials.inc())?;
        match caller.role {
            collective_core::Role::Client if caller.principal.domain == self.domain => Ok(caller.principal),
            collective_core::Role::Coordinator if caller.principal.domain != self.domain && self.links.fed().is_some() => {
                collective_rpc::on_behalf_of(req, &caller.principal).inspect_err(|_| self.metrics.denials.inc())
            }
            role => {
                self.metrics.denials.inc();
                Err(Status::permission_denied(if caller.principal.domain != self.domain {
                    format!(
                        "{} is not a principal of {}; clients only ever talk to their own member's coordinator",
                        caller.principal, self.domain
                    )
                } else {
                    format!(
                        "{} holds a {role} certificate; this call needs a client certificate",
                        caller.principal
                    )
                }))
            }
        }
    }
}
