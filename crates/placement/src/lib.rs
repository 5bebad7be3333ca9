//! Placement: which nodes get a chunk's replicas. Pure, deterministic functions over plain
//! data (no I/O, no clock, no randomness), so every decision can be replayed and
//! property-tested.
//!
//! Every strategy ranks eligible nodes by weighted rendezvous hashing: each (chunk, node)
//! pair gets a pseudo-random score scaled by the node's free space, discounted by its
//! current load. A chunk's ranking therefore depends only on the chunk and the node set:
//! adding one node to N only moves the chunks that node now wins (about 1/N of them), and
//! fuller nodes receive proportionally less. On top of that ranking:
//!
//! - **media**: the reader's own member first (low latency for streaming), lowest latency
//!   next; the first copy of a chunk avoids the nodes holding the previous chunks of the
//!   same file, so consecutive chunks are read from different nodes in parallel.
//! - **backup**: one copy per distinct member first, then distinct nodes.
//! - **hybrid**: one copy on the owner's member, the rest spread over other members.
//!
//! All strategies skip unhealthy and full nodes, never put two copies on one node, and
//! respect what each member contributes to the others (its quota room).

use std::collections::{BTreeMap, BTreeSet};

use collective_core::ChunkId;

pub use collective_core::Strategy;

/// A node that could receive a replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Principal, e.g. `node-01@alice.collective.local`.
    pub id: String,
    /// Member domain, e.g. `alice.collective.local`.
    pub member: String,
    /// Round-trip estimate from the requesting member, in milliseconds (locality).
    pub latency_ms: u32,
    pub capacity: u64,
    /// Free bytes as last reported, minus what was planned onto it since.
    pub free: u64,
    pub healthy: bool,
    /// Transfers in flight or recently planned onto the node.
    pub load: u32,
}

/// Everything placement may choose from.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// Room left in what each other member contributes (bytes). A member missing here has
    /// no limit (the owner's own nodes).
    pub room: BTreeMap<String, u64>,
}

/// One chunk to place.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub chunk: &'a ChunkId,
    pub size: u64,
    /// New copies wanted.
    pub count: usize,
    pub strategy: Strategy,
    /// The member that owns the datastore.
    pub owner: &'a str,
    /// The member asking (where reads come from).
    pub reader: &'a str,
    /// Nodes that already hold a copy: never chosen again, and their members count as
    /// already used by the distinct-member rules.
    pub existing: &'a [String],
    /// Nodes that must not be chosen (failed, draining).
    pub exclude: &'a [String],
    /// Media: nodes holding the first copy of the previous chunks of the same file.
    pub previous: &'a [String],
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
        /// Nodes (or members' quotas) that are up but out of room for it.
        full: usize,
    },
}

impl PlacementError {
    /// Whether lack of space (not down nodes) is what stands in the way.
    pub fn out_of_space(&self) -> bool {
        match self {
            PlacementError::NotEnoughNodes { full, .. } => *full > 0,
        }
    }
}

/// A pseudo-random number in (0, 1) for a (chunk, node) pair.
fn unit_hash(chunk: &ChunkId, node: &str) -> f64 {
    let h = ChunkId::of(&[chunk.as_bytes().as_slice(), node.as_bytes()].concat());
    let x = u64::from_be_bytes([h.0[0], h.0[1], h.0[2], h.0[3], h.0[4], h.0[5], h.0[6], h.0[7]]) >> 11;
    (x as f64 + 0.5) / (1u64 << 53) as f64
}

/// Weighted rendezvous score: higher wins. The weight is the free space (so fill levels
/// even out), discounted by load.
fn score(chunk: &ChunkId, n: &Node) -> f64 {
    let weight = (n.free.max(1) as f64) / (1.0 + f64::from(n.load) / 8.0);
    -weight / unit_hash(chunk, &n.id).ln()
}

/// Why a node cannot take the chunk, or None when it can.
fn refusal(c: &Cluster, r: &Request<'_>, n: &Node) -> Option<&'static str> {
    if r.existing.contains(&n.id) {
        Some("holds it")
    } else if r.exclude.contains(&n.id) {
        Some("excluded")
    } else if !n.healthy {
        Some("down")
    } else if n.free < r.size {
        Some("full")
    } else if c.room.get(&n.member).is_some_and(|room| *room < r.size) {
        Some("quota full")
    } else {
        None
    }
}

/// Picks `request.count` new nodes for a chunk, best first.
pub fn place(cluster: &Cluster, request: &Request<'_>) -> Result<Vec<String>, PlacementError> {
    let mut eligible: Vec<(&Node, f64)> = cluster
        .nodes
        .iter()
        .filter(|n| refusal(cluster, request, n).is_none())
        .map(|n| (n, score(request.chunk, n)))
        .collect();
    // Rank by score; node ids make the order total (and duplicates adjacent).
    eligible.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.id.cmp(&b.0.id)));
    eligible.dedup_by(|a, b| a.0.id == b.0.id);
    let ranked: Vec<&Node> = eligible.into_iter().map(|(n, _)| n).collect();
    let chosen = match request.strategy {
        Strategy::Media => media(&ranked, request),
        Strategy::Backup => spread(&ranked, request, None),
        Strategy::Hybrid => spread(&ranked, request, Some(request.owner)),
    };
    if chosen.len() < request.count {
        return Err(not_enough(cluster, request, chosen.len()));
    }
    Ok(chosen)
}

fn media(ranked: &[&Node], r: &Request<'_>) -> Vec<String> {
    // Locality tiers: the reader's member, then by latency; the rendezvous rank within.
    let mut order: Vec<(usize, &Node)> = ranked.iter().copied().enumerate().collect();
    order.sort_by_key(|(rank, n)| (n.member != r.reader, n.latency_ms, *rank));
    let mut out: Vec<String> = Vec::with_capacity(r.count);
    // The first copy avoids the nodes of the previous chunks, when another node is near.
    if r.count > 0 && r.existing.is_empty() {
        let best_tier = order.first().map(|(_, n)| (n.member != r.reader, n.latency_ms));
        if let Some((_, n)) = order
            .iter()
            .find(|(_, n)| Some((n.member != r.reader, n.latency_ms)) == best_tier && !r.previous.contains(&n.id))
        {
            out.push(n.id.clone());
        }
    }
    for (_, n) in order {
        if out.len() >= r.count {
            break;
        }
        if !out.contains(&n.id) {
            out.push(n.id.clone());
        }
    }
    out
}

/// Distinct members first (`home` gets the first copy when given and not yet held), then
/// distinct nodes.
fn spread(ranked: &[&Node], r: &Request<'_>, home: Option<&str>) -> Vec<String> {
    let member_of = |id: &str| id.rsplit_once('@').map(|(_, d)| d.to_string()).unwrap_or_default();
    let mut used: BTreeSet<String> = r.existing.iter().map(|n| member_of(n)).collect();
    let mut out: Vec<String> = Vec::with_capacity(r.count);
    if let Some(home) = home
        && !used.contains(home)
        && r.count > 0
        && let Some(n) = ranked.iter().find(|n| n.member == home)
    {
        out.push(n.id.clone());
        used.insert(home.to_string());
    }
    for n in ranked {
        if out.len() >= r.count {
            return out;
        }
        if !used.contains(&n.member) {
            used.insert(n.member.clone());
            out.push(n.id.clone());
        }
    }
    for n in ranked {
        if out.len() >= r.count {
            break;
        }
        if !out.contains(&n.id) {
            out.push(n.id.clone());
        }
    }
    out
}

fn not_enough(c: &Cluster, r: &Request<'_>, available: usize) -> PlacementError {
    let detail = if c.nodes.is_empty() {
        "no node has registered".to_string()
    } else {
        c.nodes
            .iter()
            .map(|n| format!("{}: {}", n.id, refusal(c, r, n).unwrap_or("ok")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let full = c
        .nodes
        .iter()
        .filter(|n| matches!(refusal(c, r, n), Some("full" | "quota full")))
        .count();
    PlacementError::NotEnoughNodes {
        wanted: r.count,
        available,
        size: r.size,
        detail,
        full,
    }
}

/// A copy to add while rebalancing (the `from` copy is dropped once `to` holds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub chunk: ChunkId,
    pub from: String,
    pub to: String,
}

/// What it takes to bring every chunk to where placement would put it now: for each chunk
/// (id, size, current nodes), the copies that move. Chunks whose ideal set cannot be
/// computed (too few nodes) stay where they are.
pub fn rebalance_plan(cluster: &Cluster, chunks: &[(ChunkId, u64, Vec<String>)], strategy: Strategy, owner: &str) -> Vec<Move> {
    let mut moves = Vec::new();
    for (id, size, current) in chunks {
        let req = Request {
            chunk: id,
            size: *size,
            count: current.len(),
            strategy,
            owner,
            reader: owner,
            existing: &[],
            exclude: &[],
            previous: &[],
        };
        let Ok(ideal) = place(cluster, &req) else { continue };
        let leaving: Vec<&String> = current.iter().filter(|n| !ideal.contains(n)).collect();
        let arriving: Vec<&String> = ideal.iter().filter(|n| !current.contains(n)).collect();
        for (from, to) in leaving.into_iter().zip(arriving) {
            moves.push(Move {
                chunk: *id,
                from: from.clone(),
                to: to.clone(),
            });
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for the property tests.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn node(id: &str, member: &str, free: u64) -> Node {
        Node {
            id: format!("{id}@{member}"),
            member: member.into(),
            latency_ms: 1,
            capacity: 1 << 40,
            free,
            healthy: true,
            load: 0,
        }
    }

    fn chunk(n: u64) -> ChunkId {
        ChunkId::of(&n.to_be_bytes())
    }

    fn req<'a>(id: &'a ChunkId, count: usize, strategy: Strategy, owner: &'a str) -> Request<'a> {
        Request {
            chunk: id,
            size: 1 << 20,
            count,
            strategy,
            owner,
            reader: owner,
            existing: &[],
            exclude: &[],
            previous: &[],
        }
    }

    /// A random cluster of 1–5 members with 1–6 nodes each, some down or nearly full.
    fn random_cluster(g: &mut Gen) -> Cluster {
        let members = 1 + g.below(5);
        let mut nodes = Vec::new();
        for m in 0..members {
            for i in 0..1 + g.below(6) {
                let mut n = node(
                    &format!("node-{i:02}"),
                    &format!("m{m}.collective.local"),
                    (1 + g.below(1000)) << 20,
                );
                n.healthy = g.below(8) != 0;
                n.load = g.below(20) as u32;
                n.latency_ms = 1 + g.below(50) as u32;
                nodes.push(n);
            }
        }
        let mut room = BTreeMap::new();
        for m in 1..members {
            room.insert(format!("m{m}.collective.local"), g.below(4) << 20);
        }
        Cluster { nodes, room }
    }

    const STRATEGIES: [Strategy; 3] = [Strategy::Media, Strategy::Backup, Strategy::Hybrid];

    #[test]
    fn property_no_two_replicas_on_one_node_and_only_eligible_nodes() {
        let mut g = Gen(0x5eed);
        for case in 0..2000 {
            let c = random_cluster(&mut g);
            let id = chunk(case);
            for s in STRATEGIES {
                let count = 1 + g.below(4) as usize;
                let r = req(&id, count, s, "m0.collective.local");
                if let Ok(p) = place(&c, &r) {
                    let distinct: BTreeSet<&String> = p.iter().collect();
                    assert_eq!(distinct.len(), p.len(), "case {case} {s:?}: {p:?}");
                    assert_eq!(p.len(), count);
                    for chosen in &p {
                        let n = c.nodes.iter().find(|n| &n.id == chosen).unwrap();
                        assert!(n.healthy && n.free >= r.size, "case {case}: chose ineligible {chosen}");
                        assert!(c.room.get(&n.member).is_none_or(|room| *room >= r.size), "case {case}: over quota");
                    }
                }
            }
        }
    }

    #[test]
    fn property_backup_uses_min_of_replicas_and_members_distinct_members() {
        let mut g = Gen(0xbac);
        for case in 0..2000 {
            let mut c = random_cluster(&mut g);
            c.room.clear();
            for n in &mut c.nodes {
                n.healthy = true;
            }
            let members: BTreeSet<&String> = c.nodes.iter().map(|n| &n.member).collect();
            let members = members.len();
            let id = chunk(case);
            let count = (1 + g.below(4) as usize).min(c.nodes.len());
            let p = place(&c, &req(&id, count, Strategy::Backup, "m0.collective.local")).unwrap();
            let used: BTreeSet<&str> = p.iter().map(|n| n.rsplit_once('@').unwrap().1).collect();
            assert_eq!(used.len(), count.min(members), "case {case}: {p:?}");
        }
    }

    #[test]
    fn property_same_input_same_output() {
        let mut g = Gen(0xd00d);
        for case in 0..500 {
            let c = random_cluster(&mut g);
            let id = chunk(case);
            for s in STRATEGIES {
                let r = req(&id, 2, s, "m0.collective.local");
                assert_eq!(place(&c, &r), place(&c.clone(), &r.clone()));
            }
        }
    }

    #[test]
    fn property_adding_a_node_moves_about_one_nth_of_the_data() {
        let mut g = Gen(0xadd);
        for n in [3usize, 5, 8, 12] {
            let nodes: Vec<Node> = (0..n).map(|i| node(&format!("node-{i:02}"), "m0", 1 << 40)).collect();
            let before = Cluster {
                nodes: nodes.clone(),
                room: BTreeMap::new(),
            };
            let mut after = before.clone();
            after.nodes.push(node("node-new", "m0", 1 << 40));
            let replicas = 2;
            let chunks: Vec<(ChunkId, u64, Vec<String>)> = (0..4000)
                .map(|_| {
                    let id = chunk(g.next());
                    let p = place(&before, &req(&id, replicas, Strategy::Media, "m0")).unwrap();
                    (id, 1 << 20, p)
                })
                .collect();
            let moves = rebalance_plan(&after, &chunks, Strategy::Media, "m0");
            let fraction = moves.len() as f64 / (chunks.len() * replicas) as f64;
            let ideal = 1.0 / (n as f64 + 1.0);
            assert!(
                fraction <= ideal * 1.25,
                "{n} nodes: {fraction:.3} of copies moved, ideal {ideal:.3}"
            );
            assert!(moves.iter().all(|m| m.to == "node-new@m0"), "only the new node gains copies");
        }
    }

    #[test]
    fn fuller_nodes_get_proportionally_fewer_chunks() {
        let c = Cluster {
            nodes: vec![node("a", "m0", 300 << 30), node("b", "m0", 100 << 30)],
            room: BTreeMap::new(),
        };
        let a = (0..4000)
            .filter(|i| place(&c, &req(&chunk(*i), 1, Strategy::Media, "m0")).unwrap()[0] == "a@m0")
            .count();
        // Weighted rendezvous: a wins 3/4 of the chunks.
        assert!((2800..3200).contains(&a), "{a}");
    }

    #[test]
    fn media_prefers_the_readers_member_and_alternates_consecutive_chunks() {
        let c = Cluster {
            nodes: vec![node("a", "home", 1 << 30), node("b", "home", 1 << 30), node("c", "away", 100 << 30)],
            room: BTreeMap::new(),
        };
        let mut previous: Vec<String> = Vec::new();
        for i in 0..50 {
            let id = chunk(i);
            let r = Request {
                previous: &previous,
                ..req(&id, 2, Strategy::Media, "home")
            };
            let p = place(&c, &r).unwrap();
            assert!(p.iter().all(|n| n.ends_with("@home")), "{p:?}");
            assert!(!previous.contains(&p[0]), "chunk {i} repeats the previous chunk's node");
            previous = vec![p[0].clone()];
        }
        // With one copy at home left, the away node fills in.
        let id = chunk(99);
        let held = vec!["a@home".to_string()];
        let r = Request {
            existing: &held,
            ..req(&id, 2, Strategy::Media, "home")
        };
        assert_eq!(place(&c, &r).unwrap(), vec!["b@home", "c@away"]);
    }

    #[test]
    fn hybrid_keeps_one_copy_at_the_owner_and_spreads_the_rest() {
        let mut nodes = vec![node("a", "own", 1 << 20 << 1), node("b", "own", 1 << 40)];
        nodes.extend((0..3).map(|m| node("x", &format!("o{m}"), 1 << 40)));
        let c = Cluster {
            nodes,
            room: BTreeMap::new(),
        };
        for i in 0..200 {
            let id = chunk(i);
            let p = place(&c, &req(&id, 3, Strategy::Hybrid, "own")).unwrap();
            assert!(p[0].ends_with("@own"), "{p:?}");
            let members: BTreeSet<&str> = p.iter().map(|n| n.rsplit_once('@').unwrap().1).collect();
            assert_eq!(members.len(), 3, "{p:?}");
        }
    }

    #[test]
    fn quota_and_health_are_respected_and_failures_explain_why() {
        let mut c = Cluster {
            nodes: vec![node("a", "own", 1 << 40), node("x", "other", 1 << 40), node("y", "third", 1 << 40)],
            room: BTreeMap::from([("other".to_string(), 0u64)]),
        };
        c.nodes[2].healthy = false;
        let id = chunk(1);
        let err = place(&c, &req(&id, 2, Strategy::Backup, "own")).unwrap_err().to_string();
        assert!(err.contains("x@other: quota full") && err.contains("y@third: down"), "{err}");
        assert_eq!(place(&c, &req(&id, 1, Strategy::Backup, "own")).unwrap(), vec!["a@own"]);
    }

    #[test]
    fn excluded_and_existing_nodes_are_never_chosen() {
        let c = Cluster {
            nodes: (0..4).map(|i| node(&format!("n{i}"), "m", 1 << 40)).collect(),
            room: BTreeMap::new(),
        };
        let id = chunk(7);
        let existing = vec!["n0@m".to_string()];
        let exclude = vec!["n1@m".to_string()];
        let r = Request {
            existing: &existing,
            exclude: &exclude,
            ..req(&id, 2, Strategy::Backup, "m")
        };
        let mut p = place(&c, &r).unwrap();
        p.sort();
        assert_eq!(p, vec!["n2@m", "n3@m"]);
    }
}
