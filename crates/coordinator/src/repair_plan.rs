//! Pure decisions of repair, kept apart from the loop that carries them out so they can be
//! tested on plain data: for one chunk, given where its copies are and how they are doing,
//! what to copy, what to forget or trim, and what to report; which nodes get new copies;
//! and what to tell a person when a copy cannot be placed.
//!
//! The rules, each a property tested below:
//! - the last readable copy is never dropped: an up copy is dropped only when every other
//!   copy that still counts is up, and enough of them remain;
//! - surplus copies are trimmed only when every counted copy is up (a copy that is merely
//!   late never makes us delete a good one);
//! - the strategy's spread holds: new copies go to members without one first (`backup`,
//!   and `hybrid` beyond the owner's copy), and trimming takes a member's second copy
//!   before any member's only one;
//! - planning converges: once a plan is carried out, planning again finds nothing to do.

use collective_core::{ChunkId, Strategy};
use collective_placement::{Cluster, PlacementError, Request};

/// How a node holding a copy is doing, as far as repair can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Live {
    Up,
    /// Down, within the grace period: still counted, not readable now.
    Waiting,
    /// Down past the grace period (or unknown): its copies are replaced.
    Lost,
}

/// One listed copy of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub node: String,
    pub live: Live,
    /// Its node is being emptied: the copy must move before it goes.
    pub draining: bool,
    /// Free bytes on its node (`u64::MAX` when unknown): the fuller node gives up a
    /// surplus copy first.
    pub free: u64,
}

/// Everything repair weighs about one chunk.
#[derive(Debug, Clone)]
pub struct ChunkFacts {
    pub id: ChunkId,
    pub size: u64,
    /// Copies its datastores ask for.
    pub want: usize,
    /// Copies to keep now: `want` plus extra copies of a hot chunk.
    pub target: usize,
    pub strategy: Strategy,
    pub replicas: Vec<Replica>,
}

/// What a person is told about a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    Healthy,
    /// Fewer readable copies than wanted.
    UnderReplicated,
    /// No readable copy right now.
    Unreadable,
}

/// Copies a chunk is missing, and what to forget once they exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub need: usize,
    /// Copies that can be read now (sources).
    pub sources: Vec<String>,
    /// Every listed copy (never chosen as a target).
    pub holders: Vec<String>,
    /// Copies to forget once all `need` new ones exist (lost or draining nodes).
    pub retire: Vec<String>,
}

/// The decision for one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlan {
    pub risk: Risk,
    pub repair: Option<Repair>,
    /// Copies to forget and delete now: lost, drained, or surplus.
    pub drop: Vec<String>,
}

impl ChunkPlan {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.repair.is_none() && self.drop.is_empty()
    }
}

fn member_of(node: &str) -> &str {
    node.rsplit_once('@').map_or("", |(_, m)| m)
}

/// The strategy repair plans a chunk with: the one recorded for it, except that a chunk
/// without a seal (plaintext) never spreads over members. A file moved from a media
/// datastore into a backup one keeps its plaintext chunks, and commits that reuse them
/// there widen the record to `backup`; those bytes must still stay on this member's nodes.
pub fn effective_strategy(recorded: Strategy, sealed: bool) -> Strategy {
    if recorded.spreads_over_members() && !sealed {
        Strategy::Media
    } else {
        recorded
    }
}

/// Decides what one chunk needs.
pub fn plan(c: &ChunkFacts) -> ChunkPlan {
    let up = |r: &&Replica| r.live == Live::Up;
    let sources: Vec<String> = c.replicas.iter().filter(up).map(|r| r.node.clone()).collect();
    // Counted: copies that stay (not lost, not leaving). Waiting ones count: a node that
    // is late is not yet replaced.
    let counted: Vec<&Replica> = c.replicas.iter().filter(|r| r.live != Live::Lost && !r.draining).collect();
    let gone: Vec<String> = c
        .replicas
        .iter()
        .filter(|r| r.live == Live::Lost || r.draining)
        .map(|r| r.node.clone())
        .collect();
    let risk = if sources.is_empty() {
        Risk::Unreadable
    } else if sources.len() < c.want {
        Risk::UnderReplicated
    } else {
        Risk::Healthy
    };
    let mut out = ChunkPlan {
        risk,
        repair: None,
        drop: Vec::new(),
    };
    if counted.len() < c.target {
        // Nothing to copy from: keep every record (a lost node may come back).
        if !sources.is_empty() {
            out.repair = Some(Repair {
                need: c.target - counted.len(),
                sources,
                holders: c.replicas.iter().map(|r| r.node.clone()).collect(),
                retire: gone,
            });
        }
        return out;
    }
    // Enough copies stay. Forgetting lost and draining ones, or trimming, waits until every
    // copy that stays is up: then none of them is uncertain.
    if !counted.iter().all(up) {
        return out;
    }
    out.drop = gone;
    if counted.len() > c.target {
        out.drop.extend(surplus(&counted, counted.len() - c.target));
    }
    out
}

/// The copies a repair lets go once it has made `added` new ones: its `retire` list, but
/// only when every missing copy was made and every copy that stays is up (a copy that is
/// merely late never makes us delete a readable one; the next round decides then).
pub fn retire_after(c: &ChunkFacts, repair: &Repair, added: usize) -> Vec<String> {
    let stays_up = c
        .replicas
        .iter()
        .filter(|r| !repair.retire.contains(&r.node))
        .all(|r| r.live == Live::Up);
    if added >= repair.need && stays_up {
        repair.retire.clone()
    } else {
        Vec::new()
    }
}

/// Which `n` of `copies` to give up: a second copy on one member before a member's only
/// copy, the fullest node first.
fn surplus(copies: &[&Replica], n: usize) -> Vec<String> {
    let mut per_member: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for r in copies {
        *per_member.entry(member_of(&r.node)).or_default() += 1;
    }
    let mut left: Vec<&Replica> = copies.to_vec();
    let mut out = Vec::with_capacity(n);
    // One at a time, so that a member down to one copy ranks with the other single ones.
    while out.len() < n {
        let Some((i, r)) = left.iter().enumerate().min_by_key(|(_, r)| {
            (
                std::cmp::Reverse(per_member.get(member_of(&r.node)).copied().unwrap_or(0)),
                r.free,
                r.node.clone(),
            )
        }) else {
            break;
        };
        if let Some(k) = per_member.get_mut(member_of(&r.node)) {
            *k -= 1;
        }
        out.push(r.node.clone());
        left.swap_remove(i);
    }
    out
}

/// The nodes that get a chunk's missing copies: as many of `repair.need` as `candidates`
/// allow (at least one), never a holder or an `exclude`d node, spread as the strategy
/// says. When not even one fits, why.
pub fn targets(
    c: &ChunkFacts,
    repair: &Repair,
    candidates: &Cluster,
    owner: &str,
    exclude: &[String],
    need: usize,
) -> Result<Vec<String>, Blocked> {
    // Copies on lost or draining nodes are never chosen, but do not count as covering
    // their member either: a hybrid chunk whose home copy was lost gets one at home again.
    let leaving = |n: &String| c.replicas.iter().any(|r| &r.node == n && (r.live == Live::Lost || r.draining));
    let existing: Vec<String> = repair.holders.iter().filter(|n| !leaving(n)).cloned().collect();
    let mut avoid: Vec<String> = exclude.to_vec();
    avoid.extend(repair.holders.iter().filter(|n| leaving(n)).cloned());
    let mut first_error = None;
    for count in (1..=need).rev() {
        let req = Request {
            chunk: &c.id,
            size: c.size,
            count,
            strategy: c.strategy,
            owner,
            reader: owner,
            existing: &existing,
            exclude: &avoid,
            previous: &[],
        };
        match collective_placement::place(candidates, &req) {
            Ok(t) => return Ok(t),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(match first_error {
        Some(e) => blocked(need, &e),
        None => Blocked {
            kind: BlockKind::TooFew,
            reason: "no copy is missing".into(),
        },
    })
}

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

    /// A small deterministic generator (xorshift), as in `collective-placement`'s tests.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn member(m: u64) -> String {
        format!("m{m}.collective.local")
    }

    /// Up to 4 members of up to 4 nodes, some down, some full.
    fn random_cluster(g: &mut Gen) -> Cluster {
        let mut nodes = Vec::new();
        for m in 0..1 + g.below(4) {
            for i in 0..1 + g.below(4) {
                nodes.push(collective_placement::Node {
                    id: format!("n{i}@{}", member(m)),
                    member: member(m),
                    latency_ms: if m == 0 { 0 } else { 10 },
                    capacity: 1 << 30,
                    free: if g.below(10) == 0 { 10 } else { (1 + g.below(100)) << 20 },
                    healthy: g.below(6) != 0,
                    load: 0,
                });
            }
        }
        Cluster {
            nodes,
            room: Default::default(),
        }
    }

    /// A chunk whose copies sit on some of the cluster's nodes (and maybe on nodes it no
    /// longer knows), each up, late or lost, some draining.
    fn random_chunk(g: &mut Gen, c: &Cluster, case: u64) -> ChunkFacts {
        let strategy = Strategy::ALL[g.below(3) as usize];
        let want = 1 + g.below(3) as usize;
        let mut replicas: Vec<Replica> = Vec::new();
        for n in &c.nodes {
            if g.below(3) == 0 {
                let live = match g.below(6) {
                    0 => Live::Lost,
                    1 => Live::Waiting,
                    _ if !n.healthy => Live::Waiting,
                    _ => Live::Up,
                };
                replicas.push(Replica {
                    node: n.id.clone(),
                    live,
                    draining: g.below(8) == 0,
                    free: n.free,
                });
            }
        }
        if g.below(5) == 0 {
            replicas.push(Replica {
                node: format!("gone@{}", member(7)),
                live: Live::Lost,
                draining: false,
                free: u64::MAX,
            });
        }
        ChunkFacts {
            id: ChunkId::of(&case.to_be_bytes()),
            size: 1 << 20,
            want,
            target: want + g.below(2) as usize,
            strategy,
            replicas,
        }
    }

    fn up_nodes(c: &ChunkFacts) -> Vec<&str> {
        c.replicas.iter().filter(|r| r.live == Live::Up).map(|r| r.node.as_str()).collect()
    }

    /// The chunk once `plan` is carried out with `targets` as the new copies.
    fn apply(c: &ChunkFacts, p: &ChunkPlan, targets: &[String]) -> ChunkFacts {
        let mut gone: Vec<String> = p.drop.clone();
        if let Some(r) = &p.repair {
            gone.extend(retire_after(c, r, targets.len()));
        }
        let mut replicas: Vec<Replica> = c.replicas.iter().filter(|r| !gone.contains(&r.node)).cloned().collect();
        replicas.extend(targets.iter().map(|t| Replica {
            node: t.clone(),
            live: Live::Up,
            draining: false,
            free: 1 << 20,
        }));
        ChunkFacts { replicas, ..c.clone() }
    }

    #[test]
    fn property_the_last_readable_copy_is_never_dropped_and_trims_happen_only_when_every_kept_copy_is_up() {
        let mut g = Gen(0x7e9a12);
        for case in 0..5000 {
            let cluster = random_cluster(&mut g);
            let c = random_chunk(&mut g, &cluster, case);
            let p = plan(&c);
            let up_before = up_nodes(&c);
            let up_after: Vec<&&str> = up_before.iter().filter(|n| !p.drop.iter().any(|d| d == **n)).collect();
            if !up_before.is_empty() {
                assert!(!up_after.is_empty(), "case {case}: dropped every readable copy of {c:?}: {p:?}");
            }
            let drops_up_copy = p.drop.iter().any(|d| up_before.contains(&d.as_str()));
            if drops_up_copy || !p.drop.is_empty() {
                let kept_counted = c
                    .replicas
                    .iter()
                    .filter(|r| r.live != Live::Lost && !r.draining && !p.drop.contains(&r.node));
                for r in kept_counted {
                    assert_eq!(r.live, Live::Up, "case {case}: dropped copies while {} is not up: {p:?}", r.node);
                }
                assert!(up_after.len() >= c.target, "case {case}: dropped below the target: {c:?} {p:?}");
            }
            assert!(
                p.repair.is_none() || p.drop.is_empty(),
                "case {case}: repairs and drops at once: {p:?}"
            );
            // A finished repair lets go of copies only while every copy that stays is up,
            // and an unfinished one lets go of none.
            if let Some(r) = &p.repair {
                let retired = retire_after(&c, r, r.need);
                let kept_late = c.replicas.iter().any(|x| !r.retire.contains(&x.node) && x.live != Live::Up);
                assert!(
                    !kept_late || retired.is_empty(),
                    "case {case}: retired {retired:?} while a kept copy is late: {c:?}"
                );
                assert!(
                    retire_after(&c, r, r.need - 1).is_empty(),
                    "case {case}: retired before the repair was done"
                );
            }
        }
    }

    #[test]
    fn property_new_copies_and_trims_honour_the_strategys_spread_over_members() {
        let mut g = Gen(0x5b7ead);
        for case in 0..5000 {
            let mut cluster = random_cluster(&mut g);
            for n in &mut cluster.nodes {
                n.healthy = true;
                n.free = 1 << 30;
            }
            let c = random_chunk(&mut g, &cluster, case);
            let p = plan(&c);
            let members_of = |nodes: &mut dyn Iterator<Item = &str>| -> std::collections::BTreeSet<String> {
                nodes.map(|n| member_of(n).to_string()).collect()
            };
            if let Some(r) = &p.repair
                && c.strategy == Strategy::Backup
            {
                let Ok(t) = targets(&c, r, &cluster, &member(0), &[], r.need) else {
                    continue;
                };
                let held = members_of(
                    &mut c
                        .replicas
                        .iter()
                        .filter(|r| r.live != Live::Lost && !r.draining)
                        .map(|r| r.node.as_str()),
                );
                let holders = &r.holders;
                let free_members = members_of(&mut cluster.nodes.iter().filter(|n| !holders.contains(&n.id)).map(|n| n.id.as_str()))
                    .into_iter()
                    .filter(|m| !held.contains(m))
                    .count();
                let new_members = members_of(&mut t.iter().map(String::as_str))
                    .into_iter()
                    .filter(|m| !held.contains(m))
                    .count();
                assert_eq!(new_members, free_members.min(t.len()), "case {case}: {t:?} for {r:?}");
            }
            if c.strategy != Strategy::Media && !p.drop.is_empty() {
                let counted = |keep: &dyn Fn(&Replica) -> bool| {
                    members_of(
                        &mut c
                            .replicas
                            .iter()
                            .filter(|r| r.live != Live::Lost && !r.draining && keep(r))
                            .map(|r| r.node.as_str()),
                    )
                    .len()
                };
                let before = counted(&|_| true);
                let after = counted(&|r| !p.drop.contains(&r.node));
                assert!(
                    after >= before.min(c.target),
                    "case {case}: trimming left {after} members of {before}: {p:?}"
                );
            }
        }
    }

    #[test]
    fn property_carrying_out_a_plan_then_planning_again_finds_nothing_to_do() {
        let mut g = Gen(0xc0ffee);
        let mut checked = 0;
        for case in 0..5000 {
            let cluster = random_cluster(&mut g);
            let c = random_chunk(&mut g, &cluster, case);
            let p = plan(&c);
            let new = match &p.repair {
                Some(r) => match targets(&c, r, &cluster, &member(0), &[], r.need) {
                    Ok(t) if t.len() == r.need => t,
                    // Blocked or partial: the next round tries again, by design.
                    _ => continue,
                },
                None => vec![],
            };
            let after = apply(&c, &p, &new);
            let again = plan(&after);
            // A copy that is only late stays late: nothing to do until it is up or lost.
            assert!(again.is_empty(), "case {case}: {c:?}\n{p:?}\nthen {again:?}");
            checked += 1;
        }
        assert!(checked > 1000, "only {checked} cases exercised");
    }

    #[test]
    fn plaintext_chunks_never_spread_over_members_whatever_their_record_says() {
        for s in Strategy::ALL {
            assert_eq!(effective_strategy(s, false), Strategy::Media, "{s}");
            assert_eq!(effective_strategy(s, true), s, "{s}");
        }
    }

    #[test]
    fn hybrid_chunks_are_repaired_with_one_copy_at_home_and_the_rest_on_other_members() {
        let node = |id: &str, m: u64| collective_placement::Node {
            id: format!("{id}@{}", member(m)),
            member: member(m),
            latency_ms: 0,
            capacity: 1 << 30,
            free: 1 << 30,
            healthy: true,
            load: 0,
        };
        let cluster = Cluster {
            nodes: vec![node("a", 0), node("b", 0), node("c", 1), node("d", 1), node("e", 2)],
            room: Default::default(),
        };
        let lost = |n: &str| Replica {
            node: n.into(),
            live: Live::Lost,
            draining: false,
            free: 0,
        };
        let c = ChunkFacts {
            id: ChunkId::of(b"h"),
            size: 10,
            want: 2,
            target: 2,
            strategy: Strategy::Hybrid,
            replicas: vec![
                Replica {
                    node: format!("c@{}", member(1)),
                    live: Live::Up,
                    draining: false,
                    free: 0,
                },
                lost(&format!("a@{}", member(0))),
            ],
        };
        let p = plan(&c);
        let r = p.repair.as_ref().unwrap();
        assert_eq!(r.need, 1);
        let t = targets(&c, r, &cluster, &member(0), &[], 1).unwrap();
        assert_eq!(member_of(&t[0]), member(0), "the home copy comes back home: {t:?}");
        let backup = ChunkFacts {
            strategy: Strategy::Backup,
            ..c.clone()
        };
        let t = targets(&backup, r, &cluster, &member(0), &[], 1).unwrap();
        assert_ne!(member_of(&t[0]), member(1), "backup goes to a member without a copy: {t:?}");
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
