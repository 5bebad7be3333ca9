//! Pure decisions of repair, kept apart from the loop that carries them out so they can be
//! tested on plain data: what to tell a person when a copy cannot be placed.

use collective_placement::PlacementError;

fn copies(n: usize) -> String {
    if n == 1 { "1 copy".into() } else { format!("{n} copies") }
}

/// What stands in the way of a repair; a change of kind is news, a change of numbers is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Every healthy node already holds a copy.
    NoNode,
    /// Nodes that could take a copy are out of room.
    Full,
    /// Fewer healthy nodes outside the holders than copies missing.
    TooFew,
}

/// Why repair cannot make the copies a chunk needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub kind: BlockKind,
    /// In the words `repair status`, `status` and the events use, with the next step.
    pub reason: String,
}

/// Why repair cannot make `need` more copies of a chunk, and what would let it.
pub fn blocked(need: usize, e: &PlacementError) -> Blocked {
    let PlacementError::NotEnoughNodes { available, full, .. } = e;
    let (kind, reason) = if *full > 0 {
        (
            BlockKind::Full,
            format!(
                "cannot place {}: {full} healthy node(s) outside the current holders are full; add a node, free space, or lower the replication",
                copies(need)
            ),
        )
    } else if *available == 0 {
        (
            BlockKind::NoNode,
            format!(
                "cannot place {}: no healthy node outside the current holders; add a node or lower the replication",
                copies(need)
            ),
        )
    } else {
        (
            BlockKind::TooFew,
            format!(
                "cannot place {}: only {available} healthy node(s) outside the current holders; add a node or lower the replication",
                copies(need)
            ),
        )
    };
    Blocked { kind, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(available: usize, full: usize) -> PlacementError {
        PlacementError::NotEnoughNodes {
            wanted: 1,
            available,
            size: 10,
            detail: String::new(),
            full,
        }
    }

    #[test]
    fn a_blocked_repair_names_the_missing_node_and_the_next_step() {
        let b = blocked(1, &err(0, 0));
        assert_eq!(b.kind, BlockKind::NoNode);
        assert_eq!(
            b.reason,
            "cannot place 1 copy: no healthy node outside the current holders; add a node or lower the replication"
        );
        let two = blocked(2, &err(0, 0));
        assert!(two.reason.starts_with("cannot place 2 copies:"));
        assert_eq!(two.kind, b.kind, "the number of copies does not change what blocks");
        let full = blocked(1, &err(0, 2));
        assert_eq!(full.kind, BlockKind::Full);
        assert!(
            full.reason.contains("are full") && full.reason.contains("free space"),
            "{}",
            full.reason
        );
        let few = blocked(3, &err(1, 0));
        assert_eq!(few.kind, BlockKind::TooFew);
        assert!(few.reason.contains("only 1 healthy node"));
    }
}
