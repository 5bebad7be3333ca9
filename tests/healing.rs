//! Self-healing with real processes on loopback: repair after a node dies, scrub of bit
//! rot, garbage collection, draining and removing nodes, backup placement across members,
//! circuit breakers for a hung node, and extra copies for hot chunks. `dev up` configures
//! second-scale grace periods and intervals so each of these happens within seconds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{Cluster, log_tail, p, random_bytes, within, within_explained};

/// For tests that count chunk files on the nodes: no metadata backups, whose chunks would
/// be counted with the files' (tests/recovery.rs covers them).
const NO_BACKUPS: &[&str] = &["--metadata-backup-interval", "0"];

/// Chunk id (file name) → nodes holding a copy on disk.
fn copies_on_disk(c: &Cluster) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, path) in c.stored_chunks() {
        out.entry(path.file_name().unwrap().to_string_lossy().into_owned())
            .or_default()
            .push(node);
    }
    out
}

fn json(c: &Cluster, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&c.ok(args)).unwrap()
}

/// `n` files of 20–80 KB in `dir` (relative to the cluster), returned with their bytes.
fn make_files(c: &Cluster, dir: &str, n: usize, seed: u64) -> BTreeMap<String, Vec<u8>> {
    let root = c.path(dir);
    std::fs::create_dir_all(&root).unwrap();
    let mut out = BTreeMap::new();
    for i in 0..n {
        let data = random_bytes(20_000 + (i * 613) % 60_000, seed + i as u64);
        let name = format!("f{i:03}");
        std::fs::write(root.join(&name), &data).unwrap();
        out.insert(name, data);
    }
    out
}

fn assert_reads_back(c: &Cluster, remote: &str, files: &BTreeMap<String, Vec<u8>>, into: &str) {
    let back = c.path(into);
    c.ok(&["get", "-r", remote, p(&back)]);
    for (name, data) in files {
        let got = std::fs::read(back.join(name)).unwrap_or_else(|e| panic!("{remote}/{name} was not read back: {e}"));
        assert!(got == *data, "{remote}/{name} reads back different bytes");
    }
    std::fs::remove_dir_all(&back).unwrap();
}

fn flip_a_byte(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x5a;
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_killed_nodes_copies_are_restored_and_its_return_leaves_no_extra_copies() {
    let c = Cluster::start_with("repair", 3, 2, NO_BACKUPS);
    let files = make_files(&c, "src", 200, 1);
    c.ok(&["put", "-r", p(&c.path("src")), "/photos"]);
    let before = copies_on_disk(&c);
    let dead = c.proc("node-02").principal;
    let held = before.values().filter(|n| n.contains(&dead)).count();
    assert!(held > 50, "node-02 should hold many chunks, holds {held}");

    c.kill9("node-02");
    within(Duration::from_secs(90), "every chunk back to 2 live copies", || {
        let r = json(&c, &["repair", "status", "--json"]);
        r["lost_nodes"].as_array().unwrap().iter().any(|n| n == dead.as_str())
            && r["under_replicated_chunks"] == 0
            && r["unreadable_chunks"] == 0
            && r["repaired_chunks"].as_u64().unwrap() >= held as u64
    });
    // On disk too: every chunk has two copies on nodes that are alive.
    for (id, nodes) in copies_on_disk(&c) {
        let live: BTreeSet<&String> = nodes.iter().filter(|n| **n != dead).collect();
        assert!(live.len() >= 2, "chunk {id} has {} live copies: {nodes:?}", live.len());
    }
    assert_reads_back(&c, "/photos", &files, "back1");

    // The node returns with its old copies: they are no longer needed and go away.
    c.restart("node-02");
    c.wait_ready();
    within(Duration::from_secs(60), "exactly 2 copies of every chunk again", || {
        copies_on_disk(&c).values().all(|n| n.len() == 2)
    });
    assert_eq!(copies_on_disk(&c).len(), before.len(), "no chunk was lost or invented");
    assert_reads_back(&c, "/photos", &files, "back2");
}

#[test]
fn a_scrub_finds_flipped_bytes_and_repairs_them_from_other_copies() {
    let c = Cluster::start("scrub", 3, 2);
    let files = make_files(&c, "src", 40, 50);
    c.ok(&["put", "-r", p(&c.path("src")), "/docs"]);
    let victim = c.proc("node-01").principal;
    let mut flipped = Vec::new();
    for (node, path) in c.stored_chunks() {
        if node == victim && flipped.len() < 5 {
            flip_a_byte(&path);
            flipped.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert_eq!(flipped.len(), 5);

    let started = json(&c, &["scrub", "start", "--json"]);
    assert_eq!(started["running"], true);
    within(Duration::from_secs(60), "scrub found and repaired all 5", || {
        let s = json(&c, &["scrub", "status", "--json"]);
        s["corrupt_found"] == 5
            && s["repaired"] == 5
            && s["running"] == false
            && s["nodes"].as_array().unwrap().iter().all(|n| n["passes"] == 1)
    });
    let s = json(&c, &["scrub", "status", "--json"]);
    assert!(s["chunks_checked"].as_u64().unwrap() >= copies_on_disk(&c).len() as u64);
    // Each corrupt copy was quarantined and a good copy made elsewhere.
    let quarantine = c.proc("node-01").data_dir.join("quarantine");
    assert_eq!(std::fs::read_dir(quarantine).unwrap().count(), 5);
    let disk = copies_on_disk(&c);
    for id in &flipped {
        assert_eq!(disk.get(id).map(Vec::len), Some(2), "chunk {id} should have 2 good copies again");
    }
    for (_, path) in c.stored_chunks() {
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), name, "{} is corrupt", path.display());
    }
    assert_reads_back(&c, "/docs", &files, "back");
}

#[test]
fn deleted_files_are_collected_after_the_grace_period_but_shared_chunks_stay() {
    let c = Cluster::start("gc", 3, 2);
    let files = make_files(&c, "src", 100, 300);
    c.ok(&["put", "-r", p(&c.path("src")), "/tmp-data"]);
    // A file that shares its bytes (so its chunks) with one of the deleted ones.
    let kept = files["f007"].clone();
    let keep = c.write_local("keep.bin", &kept);
    c.ok(&["put", p(&keep), "/keep/shared.bin"]);
    let all = copies_on_disk(&c).len();
    assert!(all > 100);

    c.ok(&["rm", "-r", "/tmp-data"]);
    let mut saw_reclaimable = false;
    within(Duration::from_secs(60), "only the kept file's chunks remain", || {
        saw_reclaimable |= c.status_json()["garbage"]["reclaimable_bytes"].as_u64().unwrap() > 0;
        let disk = copies_on_disk(&c);
        disk.len() < 10 && disk.values().all(|n| n.len() == 2)
    });
    assert!(
        saw_reclaimable,
        "status never showed reclaimable bytes while waiting for collection"
    );
    let back = c.path("keep.back");
    c.ok(&["get", "/keep/shared.bin", p(&back)]);
    assert!(
        std::fs::read(back).unwrap() == kept,
        "the file sharing chunks with deleted ones lost data"
    );
    within(Duration::from_secs(10), "nothing left to reclaim", || {
        c.status_json()["garbage"]["reclaimable_bytes"] == 0
    });
    assert_eq!(c.status_json()["data"]["files"], 1);
}

#[test]
fn draining_a_node_empties_it_without_any_chunk_falling_below_r() {
    let c = Cluster::start("drain", 4, 2);
    let files = make_files(&c, "src", 80, 700);
    c.ok(&["put", "-r", p(&c.path("src")), "/music"]);
    let drained = c.proc("node-02");
    assert!(copies_on_disk(&c).values().any(|n| n.contains(&drained.principal)));

    let mut drain = c.cmd().args(["node", "drain", "node-02", "--json"]).spawn().unwrap();
    // While it runs, nothing is ever under-replicated.
    let mut polls = 0;
    loop {
        let r = json(&c, &["repair", "status", "--json"]);
        assert_eq!(r["under_replicated_chunks"], 0, "a chunk fell below R during the drain: {r}");
        assert_eq!(r["unreadable_chunks"], 0, "{r}");
        polls += 1;
        if let Some(status) = drain.try_wait().unwrap() {
            assert!(status.success(), "node drain failed");
            break;
        }
        assert!(polls < 600, "the drain did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    within(Duration::from_secs(30), "node-02 holds no chunk file", || {
        !copies_on_disk(&c).values().any(|n| n.contains(&drained.principal))
    });
    assert!(copies_on_disk(&c).values().all(|n| n.len() == 2));
    assert_reads_back(&c, "/music", &files, "back");
    let out = c.ok(&["node", "rm", "node-02"]);
    assert!(out.contains("removed node-02"), "{out}");
    let s = c.status_json();
    assert_eq!(s["nodes"].as_array().unwrap().len(), 3);
    // New data never goes to a removed node, and the rest stays fully replicated.
    let more = c.write_local("more.bin", &random_bytes(500_000, 9));
    c.ok(&["put", p(&more), "/music/more.bin"]);
    assert!(!copies_on_disk(&c).values().any(|n| n.contains(&drained.principal)));
}

#[test]
fn a_node_holding_the_only_copy_cannot_be_removed_until_drained() {
    let c = Cluster::start("rm", 2, 1);
    let data = random_bytes(300_000, 4);
    let f = c.write_local("only.bin", &data);
    c.ok(&["put", p(&f), "/only.bin"]);
    let holder = copies_on_disk(&c).values().next().unwrap()[0].clone();
    let short = holder.split('@').next().unwrap().to_string();
    let err = c.fails(&["node", "rm", &short]);
    assert!(err.contains("only copy") && err.contains("collective node drain"), "{err}");
    let err = c.fails(&["node", "rm", "node-99"]);
    assert!(err.contains("not a node"), "{err}");
    c.ok(&["node", "drain", &short]);
    c.ok(&["node", "rm", &short]);
    let back = c.path("only.back");
    c.ok(&["get", "/only.bin", p(&back)]);
    assert!(std::fs::read(back).unwrap() == data);
}

#[test]
fn backup_keeps_copies_on_two_members_so_losing_any_one_member_loses_no_file() {
    let fed = Cluster::federation("backup-loss", 3, 2);
    let names = ["alice", "bob", "carol"];
    // Every member backs up into a datastore of its own.
    let mut data: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for (i, m) in names.iter().enumerate() {
        if *m != "bob" {
            fed.ok_as(m, &["datastore", "create", &format!("/{m}-backup"), "--strategy", "backup"]);
        }
        let store = if *m == "bob" {
            "/backup".to_string()
        } else {
            format!("/{m}-backup")
        };
        let bytes = random_bytes(3_000_000, 40 + i as u64);
        let f = fed.write_local(&format!("{m}.tar"), &bytes);
        fed.ok_as(m, &["put", p(&f), &format!("{store}/{m}.tar")]);
        data.insert(m, bytes);
    }
    let store_of = |m: &str| {
        if m == "bob" {
            "/backup/bob.tar".to_string()
        } else {
            format!("/{m}-backup/{m}.tar")
        }
    };
    for (id, nodes) in copies_on_disk(&fed) {
        let members: BTreeSet<&str> = nodes.iter().map(|n| n.split_once('@').unwrap().1).collect();
        assert_eq!(nodes.len(), 2, "chunk {id}: {nodes:?}");
        assert_eq!(members.len(), 2, "both copies of chunk {id} on one member: {nodes:?}");
    }

    // What would be at risk if carol left: her own datastores (their metadata lives with
    // her), and nothing of alice's or bob's becomes unreadable.
    let risk = json_as(&fed, "alice", &["federation", "risk", "carol", "--json"]);
    let owner = |o: &str| {
        risk["owners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["owner"].as_str().unwrap().starts_with(o))
            .cloned()
            .unwrap_or_else(|| panic!("no risk entry for {o}: {risk}"))
    };
    assert_eq!(owner("alice")["files_unreadable"], 0, "{risk}");
    assert_eq!(owner("bob")["files_unreadable"], 0, "{risk}");
    assert_eq!(owner("carol")["files_unreadable"], 1, "{risk}");

    for lost in names {
        for proc in fed.member_procs(lost) {
            fed.kill9(&proc.principal);
        }
        for reader in names.iter().filter(|m| **m != lost) {
            let back = fed.path(&format!("{reader}-without-{lost}"));
            fed.ok_as(reader, &["get", &store_of(reader), p(&back)]);
            assert!(
                std::fs::read(&back).unwrap() == data[reader],
                "{reader}'s backup reads back wrong without {lost}"
            );
        }
        for proc in fed.member_procs(lost) {
            fed.restart(&proc.principal);
        }
        fed.wait_ready();
        within(Duration::from_secs(60), "the federation sees everyone alive again", || {
            names.iter().all(|m| {
                fed.peer_states(m)
                    .iter()
                    .filter(|(member, _)| !member.starts_with(m))
                    .all(|(_, s)| s == "alive")
            })
        });
    }
}

fn json_as(c: &Cluster, who: &str, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&c.ok_as(who, args)).unwrap()
}

#[test]
fn a_hung_node_costs_one_timeout_then_its_circuit_breaker_skips_it() {
    let c = Cluster::start("breaker", 3, 2);
    let files = make_files(&c, "src", 60, 900);
    c.ok(&["put", "-r", p(&c.path("src")), "/v"]);
    let hung = c.proc("node-02");
    // Stopped, not killed: its socket is there but nothing answers.
    unsafe { libc::kill(hung.pid as i32, libc::SIGSTOP) };
    let back = c.path("back");
    let out = c.cmd().args(["get", "-r", "/v", p(&back)]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    // Let it go on before any assertion can fail, so it is never left stopped.
    unsafe { libc::kill(hung.pid as i32, libc::SIGCONT) };
    assert!(out.status.success(), "get failed with a hung node: {log}");
    for (name, data) in &files {
        assert!(std::fs::read(back.join(name)).unwrap() == *data, "{name} differs");
    }
    let timeouts = log.matches("no answer within").count();
    assert!(timeouts <= 2, "paid {timeouts} timeouts on the hung node:\n{log}");
    // Once its breaker is open the hung node is skipped, and said so once, not per chunk.
    let warned = log.lines().filter(|l| l.contains("WARN") && l.contains(&hung.principal)).count();
    assert!(warned <= 2, "the hung node was logged {warned} times:\n{log}");
}

#[test]
fn a_chunk_read_100_times_gets_an_extra_copy_until_it_cools_down() {
    let c = Cluster::start("hot", 3, 2);
    // 100 names for the same bytes: one get of the directory reads each chunk 100 times.
    let data = random_bytes(200_000, 77);
    let dir = c.path("same");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..100 {
        std::fs::write(dir.join(format!("copy{i:03}")), &data).unwrap();
    }
    c.ok(&["put", "-r", p(&dir), "/popular"]);
    let chunks = copies_on_disk(&c);
    assert!(chunks.values().all(|n| n.len() == 2));
    c.ok(&["get", "-r", "/popular", p(&c.path("read"))]);
    within(Duration::from_secs(30), "hot chunks get a third copy", || {
        copies_on_disk(&c).values().all(|n| n.len() == 3)
    });
    let stat = json(&c, &["stat", "--json", "/popular/copy000"]);
    assert_eq!(stat["hot_chunks"], chunks.len() as u64, "{stat}");
    assert_eq!(stat["copies"], 3, "{stat}");
    within(Duration::from_secs(60), "cooled chunks drop back to 2 copies", || {
        copies_on_disk(&c).values().all(|n| n.len() == 2)
    });
    let stat = json(&c, &["stat", "--json", "/popular/copy000"]);
    assert_eq!(stat["hot_chunks"], 0, "{stat}");
}

#[test]
fn a_drain_with_nowhere_to_go_says_why_and_can_be_cancelled() {
    let c = Cluster::start("drain-stuck", 2, 2);
    let f = c.write_local("a.bin", &random_bytes(200_000, 5));
    c.ok(&["put", p(&f), "/a.bin"]);
    // Two copies on two nodes: node-01's copies have nowhere else to go.
    let err = c.fails(&["node", "drain", "node-01"]);
    assert!(err.contains("cannot finish") && err.contains("--cancel"), "{err}");
    let r = json(&c, &["repair", "status", "--json"]);
    assert_eq!(r["draining_nodes"][0], c.proc("node-01").principal.as_str(), "{r}");
    assert_eq!(r["under_replicated_chunks"], 0, "draining must not count as lost copies: {r}");
    c.ok(&["node", "drain", "node-01", "--cancel"]);
    within(Duration::from_secs(10), "no node is draining", || {
        json(&c, &["repair", "status", "--json"])["draining_nodes"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    let g = c.write_local("b.bin", &random_bytes(200_000, 6));
    c.ok(&["put", p(&g), "/b.bin"]);
    // Removing it would leave one copy of everything: refused unless forced.
    let err = c.fails(&["node", "rm", "node-01"]);
    assert!(err.contains("fewer copies") && err.contains("--force"), "{err}");
}

#[test]
fn a_repair_with_nowhere_to_copy_says_it_is_blocked_and_why() {
    // The documented small layout: two nodes, two copies. When one dies there is nowhere
    // to put a second copy, and every place a person looks must say so.
    let c = Cluster::start("repair-blocked", 2, 2);
    let f = c.write_local("a.bin", &random_bytes(300_000, 11));
    c.ok(&["put", p(&f), "/a.bin"]);
    c.kill9("node-02");
    let want = "cannot place 1 copy: no healthy node outside the current holders; add a node or lower the replication";
    within(Duration::from_secs(40), "repair status to say it is blocked", || {
        json(&c, &["repair", "status", "--json"])["blocked_reason"] == want
    });
    let r = json(&c, &["repair", "status", "--json"]);
    assert_eq!(r["estimate"], "blocked", "{r}");
    assert!(r["under_replicated_chunks"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["failed_copies"].as_u64().unwrap() > 0,
        "attempts that found no node count as failed: {r}"
    );
    let text = c.ok(&["repair", "status"]);
    assert!(text.contains("estimate: blocked") && text.contains(want), "{text}");
    assert!(!text.contains("are being replaced"), "{text}");
    let status = c.ok(&["status"]);
    assert!(status.contains(&format!("repair is blocked: {want}")), "{status}");
    let s = c.status_json();
    assert!(
        s["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains(want)),
        "{s}"
    );
    // One event for the block, not one log line per chunk and round.
    let events = c.ok(&["events"]);
    assert_eq!(events.matches("repair-blocked").count(), 1, "{events}");
    let log = std::fs::read_to_string(c.proc("coordinator").log).unwrap();
    assert!(
        log.matches("cannot place").count() <= 2,
        "the reason is logged once, not per chunk:\n{log}"
    );
    // A node comes back: the block lifts and the repair finishes.
    c.restart("node-02");
    c.wait_ready();
    within_explained(Duration::from_secs(60), "repair to be unblocked", || {
        let r = json(&c, &["repair", "status", "--json"]);
        if r["blocked_reason"] == "" {
            return Ok(());
        }
        Err(format!(
            "{r}\ncoordinator log:\n{}\nnode-02 log:\n{}",
            log_tail(&c.proc("coordinator").log, 30),
            log_tail(&c.proc("node-02").log, 15)
        ))
    });
}

#[test]
fn chunks_unknown_to_restored_metadata_are_kept_reported_and_collected_only_on_request() {
    let c = Cluster::start_with("unknown-chunks", 2, 2, NO_BACKUPS);
    let a = random_bytes(250_000, 21);
    let fa = c.write_local("a.bin", &a);
    c.ok(&["put", p(&fa), "/a.bin"]);
    // The documented metadata backup: stop the coordinator, copy its data_dir.
    let coord = c.proc("coordinator");
    c.signal("coordinator", libc::SIGTERM);
    let backup = c.path("metadata-backup");
    copy_dir(&coord.data_dir, &backup);
    c.restart("coordinator");
    c.wait_ready();
    every_node_up(&c);
    let b = random_bytes(400_000, 22);
    let fb = c.write_local("b.bin", &b);
    c.ok(&["put", p(&fb), "/b.bin"]);
    let before = copies_on_disk(&c);
    // Restore the older copy: b.bin's chunks are on the nodes, unknown to the metadata.
    c.signal("coordinator", libc::SIGTERM);
    std::fs::remove_dir_all(&coord.data_dir).unwrap();
    copy_dir(&backup, &coord.data_dir);
    c.restart("coordinator");
    c.wait_ready();
    every_node_up(&c);
    within(Duration::from_secs(30), "the unknown chunks to be reported", || {
        json(&c, &["repair", "status", "--json"])["unknown_chunks"].as_u64().unwrap() > 0
    });
    // Several rounds later nothing has been deleted.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(copies_on_disk(&c), before, "chunks unknown to the metadata were deleted on restart");
    let r = json(&c, &["repair", "status", "--json"]);
    let unknown = r["unknown_chunks"].as_u64().unwrap();
    assert_eq!(r["unknown_nodes"].as_array().unwrap().len(), 2, "{r}");
    assert!(c.ok(&["repair", "status"]).contains("collect-unknown"));
    assert!(c.ok(&["events"]).contains("unknown-chunks"));
    assert!(c.ok(&["status"]).contains("unknown to this coordinator's metadata"));
    // Only an admin decides: a user of the member with a valid certificate is refused,
    // audited, and nothing is deleted.
    let guest = c.second_user("guest");
    let refused = c.cli_with(&guest, &["repair", "collect-unknown"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a non-admin collected unknown chunks");
    assert!(err.contains("not an admin"), "{err}");
    assert_eq!(copies_on_disk(&c), before, "a refused collection deleted something");
    assert!(c.ok(&["audit"]).contains("unknown-collect"), "the refusal is audited");
    // An explicit decision, after the grace period (gc_grace is 3 s under `dev up`).
    let dry = json(&c, &["repair", "collect-unknown", "--dry-run", "--json"]);
    assert_eq!(dry["deleted_chunks"].as_u64().unwrap(), unknown, "{dry}");
    assert_eq!(copies_on_disk(&c), before, "a dry run deletes nothing");
    let done = json(&c, &["repair", "collect-unknown", "--json"]);
    assert_eq!(done["deleted_chunks"].as_u64().unwrap(), unknown, "{done}");
    within(Duration::from_secs(10), "the unknown chunks to be gone", || {
        copies_on_disk(&c).len() < before.len()
    });
    within(Duration::from_secs(10), "repair status to count no unknown chunk", || {
        json(&c, &["repair", "status", "--json"])["unknown_chunks"] == 0
    });
    let out = c.path("a.back");
    c.ok(&["get", "/a.bin", p(&out)]);
    assert!(std::fs::read(&out).unwrap() == a, "a.bin, known to the metadata, reads back");
    assert!(c.ok(&["audit"]).contains("unknown-collect"));
}

/// After a coordinator restart: every node has registered again (ready needs only one).
fn every_node_up(c: &Cluster) {
    within(Duration::from_secs(30), "every node to register again", || {
        let s = c.status_json();
        let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
        !nodes.is_empty() && nodes.iter().all(|n| n["state"] == "up")
    });
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn the_first_read_after_a_node_dies_does_not_wait_for_it_and_logs_it_once() {
    let c = Cluster::start("read-dead-node", 3, 2);
    let data = random_bytes(12_000_000, 31);
    let f = c.write_local("big.bin", &data);
    c.ok(&["put", p(&f), "/big.bin"]);
    // Killed just now: the coordinator still lists it as up, so only the client can tell.
    c.kill9("node-01");
    let out = c.path("big.back");
    for args in [vec!["get", "/big.bin", p(&out)], vec!["cat", "/big.bin"]] {
        let started = std::time::Instant::now();
        let r = c.cmd().env("RUST_LOG", "warn").args(&args).output().unwrap();
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{args:?}: {err}");
        // Without hedging every chunk whose first copy was on the dead node waited for the
        // 5 s connect timeout; with it, one short hedge delay.
        assert!(took < Duration::from_secs(4), "{args:?} waited {took:?} for a dead node");
        let warned = err.lines().filter(|l| l.contains("WARN")).count();
        assert!(warned <= 1, "{args:?}: one line per unreachable node, not one per chunk:\n{err}");
        if args[0] == "cat" {
            assert!(r.stdout == data, "cat reads back different bytes");
        }
    }
    assert!(std::fs::read(&out).unwrap() == data, "get reads back different bytes");
}

#[test]
fn workers_are_listed_and_a_paused_gc_keeps_deleted_chunks_until_resumed() {
    let c = Cluster::start_with("workers", 2, 2, NO_BACKUPS);
    let listed = json(&c, &["workers", "--json"]);
    let workers = listed["workers"].as_array().unwrap();
    let on = |name: &str, node: Option<&str>| {
        workers
            .iter()
            .find(|w| w["name"] == name && w["node"].as_str().is_none_or(|n| Some(n.split('@').next().unwrap()) == node))
            .unwrap_or_else(|| panic!("no worker {name} on {node:?} in {listed}"))
    };
    for name in ["reconcile", "heat", "repair", "gc"] {
        let w = on(name, None);
        assert!(w["node"].is_null(), "{w}");
        assert!(["idle", "running"].contains(&w["state"].as_str().unwrap()), "{w}");
    }
    assert!(on("repair", None)["throttle"].as_str().unwrap().contains("/s"));
    for node in ["node-01", "node-02"] {
        assert!(on("scrub", Some(node))["throttle"].as_str().unwrap().contains("/s"));
    }

    let out = c.ok(&["workers", "pause", "gc"]);
    assert!(out.contains("gc paused on the coordinator"), "{out}");
    let data = c.write_local("gone.bin", &random_bytes(3 << 20, 77));
    c.ok(&["put", p(&data), "/gone.bin"]);
    let stored = copies_on_disk(&c).len();
    c.ok(&["rm", "/gone.bin"]);
    // Rounds go on (repair runs) while gc, paused, does not.
    let runs = |name: &str| on_now(&c, name)["runs"].as_u64().unwrap();
    let gc_runs = runs("gc");
    let repair_runs = runs("repair");
    within(Duration::from_secs(60), "three more upkeep rounds", || {
        runs("repair") >= repair_runs + 3
    });
    assert_eq!(runs("gc"), gc_runs, "a paused gc ran");
    assert_eq!(on_now(&c, "gc")["state"], "paused");
    assert_eq!(copies_on_disk(&c).len(), stored, "a paused gc deleted chunks");
    assert!(c.status_json()["garbage"]["reclaimable_bytes"].as_u64().unwrap() > 0);

    let out = c.ok(&["workers", "resume", "gc"]);
    assert!(out.contains("gc resumed"), "{out}");
    within(Duration::from_secs(60), "the deleted file's chunks are collected", || {
        copies_on_disk(&c).is_empty()
    });

    // Node workers are steered on one node or on all; unknown names say what exists.
    let paused = json(&c, &["workers", "pause", "scrub", "--node", "node-01", "--json"]);
    let states: Vec<(String, String)> = json(&c, &["workers", "--json"])["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["name"] == "scrub")
        .map(|w| (w["node"].as_str().unwrap().to_string(), w["state"].as_str().unwrap().to_string()))
        .collect();
    assert!(
        states.iter().any(|(n, s)| n.starts_with("node-01@") && s == "paused"),
        "{states:?} {paused}"
    );
    assert!(states.iter().any(|(n, s)| n.starts_with("node-02@") && s != "paused"), "{states:?}");
    c.ok(&["workers", "resume", "scrub"]);
    // A user of the member with a valid certificate, not an admin: refused, audited, and
    // nothing is paused.
    let guest = c.second_user("guest");
    for args in [
        &["workers"][..],
        &["workers", "pause", "gc"],
        &["workers", "pause", "scrub", "--node", "node-01"],
    ] {
        let out = c.cli_with(&guest, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("not an admin"), "{args:?}: {err}");
    }
    assert!(!c.ok(&["workers", "--json"]).contains("\"paused\""), "a refused pause took effect");
    let refusals: serde_json::Value = json(&c, &["audit", "--json"]);
    assert!(
        refusals
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["op"] == "worker-pause" && e["result"] == "denied" && e["principal"].as_str().unwrap().starts_with("guest@")),
        "the refused pause is not in the audit log: {refusals}"
    );
    let err = c.fails(&["workers", "pause", "nope"]);
    assert!(err.contains("no worker named 'nope'") && err.contains("repair"), "{err}");
    let err = c.fails(&["workers", "pause", "repair", "--node", "node-01"]);
    assert!(err.contains("runs on the coordinator"), "{err}");
    let audit = c.ok(&["audit", "--json"]);
    assert!(audit.contains("worker-pause") && audit.contains("worker-resume"), "{audit}");
}

/// The coordinator's worker `name` as `workers --json` shows it now.
fn on_now(c: &Cluster, name: &str) -> serde_json::Value {
    json(c, &["workers", "--json"])["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name && w["node"].is_null())
        .cloned()
        .unwrap_or_else(|| panic!("no coordinator worker {name}"))
}
