//! How a datastore's chunks are spread: the one placement strategy type shared by records,
//! the protocol, placement and repair.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a datastore's chunks are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Strategy {
    /// Fast reads: the reader's own member first, consecutive chunks on different nodes.
    Media,
    /// Survives the loss of a member: one copy per distinct member first.
    Backup,
    /// One copy at home, the rest spread over other members.
    Hybrid,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::Media, Strategy::Backup, Strategy::Hybrid];

    pub fn parse(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Media => "media",
            Strategy::Backup => "backup",
            Strategy::Hybrid => "hybrid",
        }
    }

    /// Chunks leave the owner member, so clients encrypt them.
    pub fn encrypted(&self) -> bool {
        *self != Strategy::Media
    }

    /// Copies go to distinct members before distinct nodes.
    pub fn spreads_over_members(&self) -> bool {
        *self != Strategy::Media
    }

    /// The one of two that spreads copies more widely (backup, then hybrid, then media):
    /// what a chunk referenced by datastores of both strategies must honour.
    pub fn wider(self, other: Strategy) -> Strategy {
        let rank = |s: Strategy| match s {
            Strategy::Media => 0,
            Strategy::Hybrid => 1,
            Strategy::Backup => 2,
        };
        if rank(other) > rank(self) { other } else { self }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a strategy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a strategy; use media, backup or hybrid")]
pub struct StrategyError(pub String);

impl FromStr for Strategy {
    type Err = StrategyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::parse(s).ok_or_else(|| StrategyError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_reads_back_from_its_name_and_others_are_refused_by_name() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
        }
        assert_eq!(Strategy::Media.wider(Strategy::Hybrid), Strategy::Hybrid);
        assert_eq!(Strategy::Backup.wider(Strategy::Hybrid), Strategy::Backup);
        assert_eq!(Strategy::Media.wider(Strategy::Media), Strategy::Media);
        let e = "mirror".parse::<Strategy>().unwrap_err();
        assert_eq!(e.to_string(), "'mirror' is not a strategy; use media, backup or hybrid");
    }
}
