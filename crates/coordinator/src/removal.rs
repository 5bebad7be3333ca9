//! Removing a member from the federation.
//!
//! The coordinator holding the federation root signs a [`MemberRemoval`] with the root key.
//! Every coordinator that learns of one (from its own admin call, or from any member's
//! gossiped state) checks the signature against the root in its trust file, saves it in its
//! metadata directory and enforces it from then on: the member's certificates are refused
//! at the TLS handshake and on every call (for its nodes too), its gossip is dropped and its
//! state forgotten, so nothing more is placed on its nodes and the copies there count as
//! lost and are repaired elsewhere. Removals are passed on in every coordinator's own
//! gossiped state, so one that was down at the time learns of it from anyone.

use std::path::PathBuf;

use collective_core::unix_ms_now;
use collective_proto::v1::{MemberRemoval, MemberRemovals, RemoveMemberRequest};
use prost::Message;

use crate::error::Error;
use crate::state::State;

/// File in the metadata directory holding the removals this coordinator enforces.
const REMOVALS_FILE: &str = "removed-members";

impl State {
    fn removals_path(&self) -> PathBuf {
        self.meta_dir.join(REMOVALS_FILE)
    }

    /// The removals this coordinator enforces, by member.
    pub fn removals(&self) -> Vec<MemberRemoval> {
        self.links.removals().values().cloned().collect()
    }

    /// Reads the saved removals at start-up and enforces them. A damaged file is an error:
    /// starting without it would let a removed member back in.
    pub(crate) fn load_removals(&self) -> Result<(), Error> {
        let path = self.removals_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::File {
                    what: format!("cannot read {}", path.display()),
                    detail: e.to_string(),
                });
            }
        };
        let list = MemberRemovals::decode(bytes.as_slice()).map_err(|e| Error::File {
            what: format!("{} is damaged", path.display()),
            detail: format!("{e}; restore it from a backup, or from another member's"),
        })?;
        {
            let mut held = self.links.removals();
            for r in list.removals {
                held.insert(r.member.clone(), r);
            }
        }
        self.enforce_removals();
        Ok(())
    }

    /// Checks `r` is signed by the federation root and, when it is news, saves and enforces
    /// it. Returns whether it was news.
    pub fn apply_removal(&self, r: &MemberRemoval) -> Result<bool, Error> {
        let key = self.identity.federation_root_key().ok_or(Error::NoFederationRoot)?;
        if !collective_pki::verify_removal(key, &r.member, r.removed_ms, &r.reason, &r.signature) {
            return Err(Error::ForgedRemoval(r.member.clone()));
        }
        let all = {
            let mut held = self.links.removals();
            if held.contains_key(&r.member) {
                return Ok(false);
            }
            held.insert(r.member.clone(), r.clone());
            MemberRemovals {
                removals: held.values().cloned().collect(),
            }
        };
        // Saved before it counts as applied: a restart must not forget it. When it cannot be
        // saved it is not taken, so the next round (or the admin's retry) tries again.
        if let Err(e) = collective_pki::replace_file(&self.removals_path(), &all.encode_to_vec(), 0o644) {
            self.links.removals().remove(&r.member);
            return Err(Error::File {
                what: format!("cannot save the removal of {}", r.member),
                detail: e.to_string(),
            });
        }
        if r.member == self.domain {
            tracing::error!(reason = %r.reason, "this member was removed from the federation; the others no longer accept it");
        } else {
            tracing::warn!(member = %r.member, reason = %r.reason, "member removed from the federation");
            self.events.emit(
                "member-removed",
                &r.member,
                crate::events::Severity::Warning,
                format!("{} was removed from the federation: {}", r.member, r.reason),
            );
        }
        self.enforce_removals();
        Ok(true)
    }

    /// Makes the TLS layer, gossip and the channels to other members follow the removals.
    fn enforce_removals(&self) {
        let members: Vec<String> = self.links.removals().keys().filter(|m| **m != self.domain).cloned().collect();
        self.identity.revocations().set_removed_members(&members);
        if let Some(fed) = self.links.fed() {
            fed.gossip.remove_members(&members);
        }
        self.links.drop_channels(&members);
    }

    /// Takes up removals found in other members' gossiped states.
    pub(crate) fn learn_removals(&self) {
        let Some(fed) = self.links.fed() else { return };
        for s in fed.gossip.states() {
            for r in &s.removals {
                let known = self.links.removals().contains_key(&r.member);
                if known {
                    continue;
                }
                if let Err(e) = self.apply_removal(r) {
                    tracing::warn!(from = %s.member, "ignoring a member removal: {e}");
                }
            }
        }
    }

    /// The admin call: sign a removal with the federation root we hold and enforce it.
    pub fn remove_member(&self, q: &RemoveMemberRequest) -> Result<MemberRemoval, Error> {
        let fed = self.links.fed().ok_or(Error::NotFederated)?;
        let root = fed.root.as_ref().ok_or_else(|| {
            Error::Precondition(
                "this coordinator does not hold the federation root; run `collective federation remove` against the coordinator whose config sets federation.root_dir".into(),
            )
        })?;
        let name = q.member.trim();
        let member = if name.contains('.') {
            name.to_string()
        } else {
            collective_core::validate_name(name).map_err(|e| Error::Invalid(e.to_string()))?;
            collective_pki::member_domain(name, &fed.domain)
        };
        if !member.ends_with(&format!(".{}", fed.domain)) {
            return Err(Error::Invalid(format!("{member} is not a member domain of {}", fed.domain)));
        }
        if member == self.domain {
            return Err(Error::Invalid(
                "a coordinator cannot remove its own member (it holds the federation root)".into(),
            ));
        }
        if let Some(r) = self.links.removals().get(&member) {
            return Ok(r.clone());
        }
        let removed_ms = unix_ms_now();
        let signature = root
            .sign_removal(&member, removed_ms, &q.reason)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let r = MemberRemoval {
            member,
            removed_ms,
            reason: q.reason.clone(),
            signature: signature.into(),
        };
        self.apply_removal(&r)?;
        // Tell everyone now rather than at the next periodic publish.
        fed.gossip.publish(self.local_member_state());
        Ok(r)
    }
}
