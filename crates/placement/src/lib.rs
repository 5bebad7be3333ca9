//! Placement: which nodes get a chunk's replicas. Pure functions over plain data, no I/O,
//! so decisions are deterministic and property-testable.
//!
//! For the single-member cluster the rule is: R distinct healthy nodes with the most free
//! space (after what was already planned onto them since their last report), ties broken
//! by name. The federation strategies (media, backup, hybrid) extend this crate.

/// A node that could receive a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Principal, e.g. `node-01@alice.collective.local`.
    pub node: String,
    pub healthy: bool,
    /// Free bytes as last reported, minus bytes planned onto it since.
    pub free_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error(
        "cannot place {wanted} copies: only {available} healthy node(s) with room for {size} bytes ({detail}); start more nodes, free space, or lower the replication factor"
    )]
    NotEnoughNodes {
        wanted: usize,
        available: usize,
        size: u64,
        detail: String,
    },
}

/// Picks `count` distinct nodes for a chunk of `size` bytes, never one in `exclude`.
pub fn place(candidates: &[Candidate], count: usize, size: u64, exclude: &[String]) -> Result<Vec<String>, PlacementError> {
    let mut usable: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.healthy && c.free_bytes >= size && !exclude.contains(&c.node))
        .collect();
    usable.sort_by(|a, b| b.free_bytes.cmp(&a.free_bytes).then_with(|| a.node.cmp(&b.node)));
    usable.dedup_by(|a, b| a.node == b.node);
    if usable.len() < count {
        let detail = if candidates.is_empty() {
            "no node has registered".to_string()
        } else {
            candidates
                .iter()
                .map(|c| {
                    let why = if exclude.contains(&c.node) {
                        "failed"
                    } else if !c.healthy {
                        "down"
                    } else if c.free_bytes < size {
                        "full"
                    } else {
                        "ok"
                    };
                    format!("{}: {why}", c.node)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(PlacementError::NotEnoughNodes {
            wanted: count,
            available: usable.len(),
            size,
            detail,
        });
    }
    Ok(usable.into_iter().take(count).map(|c| c.node.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: &str, healthy: bool, free: u64) -> Candidate {
        Candidate {
            node: n.into(),
            healthy,
            free_bytes: free,
        }
    }

    #[test]
    fn picks_distinct_healthy_nodes_with_most_free_space() {
        let cands = vec![c("a", true, 10), c("b", true, 30), c("c", false, 100), c("d", true, 20)];
        assert_eq!(place(&cands, 2, 1, &[]).unwrap(), vec!["b", "d"]);
        assert_eq!(place(&cands, 2, 1, &["b".into()]).unwrap(), vec!["d", "a"]);
        assert_eq!(place(&cands, 1, 25, &[]).unwrap(), vec!["b"]);
    }

    #[test]
    fn never_repeats_a_node_and_is_deterministic() {
        for n in 1..8 {
            let cands: Vec<Candidate> = (0..n).map(|i| c(&format!("n{i}"), true, (i * 7 % 5) as u64)).collect();
            for r in 1..=n {
                let p = place(&cands, r, 0, &[]).unwrap();
                let mut d = p.clone();
                d.sort();
                d.dedup();
                assert_eq!(d.len(), r);
                assert_eq!(p, place(&cands, r, 0, &[]).unwrap());
            }
        }
    }

    #[test]
    fn too_few_nodes_is_a_clear_error() {
        let err = place(&[c("a", true, 10), c("b", false, 10)], 2, 1, &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cannot place 2 copies") && msg.contains("b: down"), "{msg}");
    }
}
