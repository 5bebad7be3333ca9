//! Who owns a datastore name. Names are shared by the whole federation, and members learn
//! each other's catalogs through gossip, so two members can claim one name:
//!
//! - `datastore create` asks every reachable member first and refuses a name another member
//!   claims, so a conflict needs two creations within one gossip round, or a member that
//!   was unreachable at the time.
//! - Of claims that race (the name was first seen less than [`RACE_MS`] ago, and the new
//!   claim says it was created less than [`RACE_MS`] ago), the earlier creation wins (ties:
//!   the smaller member domain), so every member settles on the same owner.
//! - Otherwise the name stays with its holder: a later claim, even one that says it was
//!   created earlier, is refused and reported as contested. A member cannot take over a
//!   name others already route to by back-dating its catalog.
//! - A name is released when its holder's state (held now) no longer lists it, or the
//!   holder is removed from the federation; a holder whose state we do not hold yet (just
//!   after a restart) keeps its names.
//!
//! The table is kept across restarts so that what was held stays held.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// Claims first seen within this long of the holder's are ordered by creation time.
pub const RACE_MS: u64 = 60_000;

/// The member a datastore name is routed to, as we settled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub member: String,
    pub created_ms: u64,
    /// When we first saw this name claimed (by anyone).
    pub first_seen_ms: u64,
}

/// A name two or more members claim, with the one it is routed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contest {
    pub name: String,
    pub owner: String,
    /// The other claimants, sorted.
    pub others: Vec<String>,
}

/// The settled owner of every claimed name, and the claims refused.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Owners {
    held: BTreeMap<String, Claim>,
    #[serde(skip)]
    refused: BTreeMap<String, Vec<String>>,
}

impl Owners {
    /// Settles ownership given every member's current catalog (`(member, name, created_ms)`;
    /// `present`: the members whose state we hold) at time `now`.
    pub fn settle(&mut self, claims: &[(String, String, u64)], present: &HashSet<String>, now: u64) {
        let mut claims: Vec<&(String, String, u64)> = claims.iter().collect();
        claims.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
        // A holder whose state no longer claims its name lets it go.
        let current: HashMap<(&str, &str), u64> = claims.iter().map(|(m, n, c)| ((m.as_str(), n.as_str()), *c)).collect();
        self.held
            .retain(|name, c| !present.contains(&c.member) || current.contains_key(&(c.member.as_str(), name.as_str())));
        self.refused.clear();
        for (member, name, created) in claims {
            match self.held.get_mut(name) {
                None => {
                    self.held.insert(
                        name.clone(),
                        Claim {
                            member: member.clone(),
                            created_ms: *created,
                            first_seen_ms: now,
                        },
                    );
                }
                Some(h) if h.member == *member => h.created_ms = *created,
                Some(h) => {
                    let earlier = (*created, member) < (h.created_ms, &h.member);
                    let racing = now.saturating_sub(h.first_seen_ms) < RACE_MS && now.saturating_sub(*created) < RACE_MS;
                    if earlier && racing {
                        let loser = std::mem::replace(&mut h.member, member.clone());
                        h.created_ms = *created;
                        self.refused.entry(name.clone()).or_default().push(loser);
                    } else {
                        self.refused.entry(name.clone()).or_default().push(member.clone());
                    }
                }
            }
        }
        for v in self.refused.values_mut() {
            v.sort();
            v.dedup();
        }
    }

    /// Lets go of every name `member` holds (it was removed from the federation).
    pub fn release_member(&mut self, member: &str) {
        self.held.retain(|_, c| c.member != member);
    }

    /// The member `name` is routed to.
    pub fn owner_of(&self, name: &str) -> Option<&str> {
        self.held.get(name).map(|c| c.member.as_str())
    }

    /// Names more than one member claims.
    pub fn contests(&self) -> Vec<Contest> {
        self.refused
            .iter()
            .filter_map(|(name, others)| {
                Some(Contest {
                    name: name.clone(),
                    owner: self.held.get(name)?.member.clone(),
                    others: others.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(member: &str, name: &str, created: u64) -> (String, String, u64) {
        (member.into(), name.into(), created)
    }

    /// Settles with every claimant's state held.
    fn settle(o: &mut Owners, claims: &[(String, String, u64)], now: u64) {
        let present: HashSet<String> = claims.iter().map(|c| c.0.clone()).collect();
        o.settle(claims, &present, now);
    }

    #[test]
    fn the_earlier_creation_wins_a_race_and_everyone_settles_the_same_way_whatever_they_saw_first() {
        // carol saw alice's claim first, dave saw bob's; both then see both.
        let mut carol = Owners::default();
        settle(&mut carol, &[c("alice", "photos", 2_000)], 10_000);
        settle(&mut carol, &[c("alice", "photos", 2_000), c("bob", "photos", 1_000)], 11_000);
        let mut dave = Owners::default();
        settle(&mut dave, &[c("bob", "photos", 1_000)], 10_500);
        settle(&mut dave, &[c("alice", "photos", 2_000), c("bob", "photos", 1_000)], 12_000);
        // An old claim seen after a young one does not race it (a partition, or a lie).
        let mut erin = Owners::default();
        settle(&mut erin, &[c("alice", "photos", 2_000 + RACE_MS)], 2_500 + RACE_MS);
        settle(
            &mut erin,
            &[c("alice", "photos", 2_000 + RACE_MS), c("bob", "photos", 1_000)],
            3_000 + RACE_MS,
        );
        assert_eq!(erin.owner_of("photos"), Some("alice"));
        assert_eq!(carol.owner_of("photos"), Some("bob"));
        assert_eq!(dave.owner_of("photos"), Some("bob"));
        assert_eq!(
            carol.contests(),
            vec![Contest {
                name: "photos".into(),
                owner: "bob".into(),
                others: vec!["alice".into()]
            }]
        );
        // Equal creation times: the smaller domain, for everyone.
        let mut o = Owners::default();
        settle(&mut o, &[c("zed", "x", 5), c("amy", "x", 5)], 1);
        assert_eq!(o.owner_of("x"), Some("amy"));
    }

    #[test]
    fn a_name_held_past_the_race_window_cannot_be_taken_by_back_dating_a_claim() {
        let mut o = Owners::default();
        settle(&mut o, &[c("alice", "photos", 50_000)], 60_000);
        let later = 60_000 + RACE_MS + 1;
        settle(&mut o, &[c("alice", "photos", 50_000), c("mallory", "photos", 0)], later);
        assert_eq!(o.owner_of("photos"), Some("alice"));
        assert_eq!(o.contests()[0].others, vec!["mallory".to_string()]);
    }

    #[test]
    fn a_name_is_released_when_its_holder_stops_claiming_it_and_the_table_survives_a_restart() {
        let mut o = Owners::default();
        settle(&mut o, &[c("alice", "photos", 1), c("alice", "music", 1)], 10);
        let saved = postcard::to_allocvec(&o).unwrap();
        let mut back: Owners = postcard::from_bytes(&saved).unwrap();
        assert_eq!(back.owner_of("music"), Some("alice"));
        // Just after a restart, before alice's state is back: she keeps both names.
        back.settle(&[c("bob", "music", 7)], &["bob".to_string()].into(), 10 + RACE_MS * 2);
        assert_eq!(
            back.owner_of("music"),
            Some("alice"),
            "a holder whose state is not back yet keeps its names"
        );
        settle(&mut back, &[c("alice", "photos", 1), c("bob", "music", 7)], 10 + RACE_MS * 2);
        assert_eq!(back.owner_of("music"), Some("bob"), "alice deleted it, bob's claim now holds");
        assert!(back.contests().is_empty());
    }
}
