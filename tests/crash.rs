//! Crash consistency: a coordinator killed (SIGKILL, from inside, at named points) in every
//! phase of a change reopens its metadata in one of the two valid states; a seeded stream
//! of puts, deletes and renames with kill -9 of the coordinator and nodes at random moments
//! loses no acknowledged write, leaves nothing half-visible, and ends with reference counts
//! equal to the manifests and no orphaned chunk (`COLLECTIVE_CRASH_SEED` and
//! `COLLECTIVE_CRASH_OPS` repeat or lengthen a run).

mod common;

use std::time::Duration;

use collective_core::{CRASH_ENV, CRASH_POINTS};
use common::{BIN, Cluster, Rng, p, pid_alive, random_bytes, within};

/// What a path holds after a crash: nothing, or exactly `data`.
fn absent_or_exact(c: &Cluster, path: &str, data: &[u8]) -> bool {
    let out = c.cli(&["cat", path]);
    if out.status.success() {
        assert_eq!(out.stdout, data, "{path} is visible but not byte-exact");
        true
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no such") || err.contains("not found") || err.contains("does not exist"),
            "{path}: {err}"
        );
        false
    }
}

fn run_check(c: &Cluster) -> String {
    let coord = c.proc("coordinator");
    let out = std::process::Command::new(BIN)
        .args(["coordinator", "--config", p(&coord.config), "--check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the metadata check failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn a_coordinator_killed_at_every_phase_of_a_change_reopens_in_one_of_the_two_valid_states() {
    let c = Cluster::start("crashpoints", 2, 2);
    let keep = random_bytes(400_000, 1);
    c.ok(&["put", p(&c.write_local("keep", &keep)), "/keep"]);
    let mut outcomes = Vec::new();
    // The metadata backup's points are tested in tests/recovery.rs.
    for (i, point) in CRASH_POINTS.iter().filter(|p| !p.starts_with("metadata-backup:")).enumerate() {
        let data = random_bytes(150_000 + i * 1000, 100 + i as u64);
        let local = c.write_local(&format!("f{i}"), &data);
        let (kind, _) = point.split_once(':').unwrap();
        // What the change works on exists before the crash point is armed.
        let (src, dst) = (format!("/f{i}"), format!("/g{i}"));
        if kind != "commit" {
            c.ok(&["put", p(&local), &src]);
        }
        c.kill9("coordinator");
        c.restart_env("coordinator", &[], &[(CRASH_ENV, point)]);
        c.wait_ready();
        wait_nodes_up(&c, 2);
        let coord = c.proc("coordinator");
        let out = match kind {
            "commit" => c.cli(&["put", p(&local), &src]),
            "remove" => c.cli(&["rm", &src]),
            "rename" => c.cli(&["mv", &src, &dst]),
            other => panic!("no test for crash point kind {other}"),
        };
        assert!(
            !out.status.success(),
            "{point}: the change was acknowledged by a coordinator that died"
        );
        within(Duration::from_secs(10), "the coordinator dies at the crash point", || {
            !pid_alive(coord.pid)
        });
        let log = std::fs::read_to_string(&coord.log).unwrap();
        assert!(
            log.contains(&format!("crash point {point} reached")),
            "{point}: not reached; log:\n{log}"
        );
        c.restart("coordinator");
        c.wait_ready();
        wait_nodes_up(&c, 2);

        assert_eq!(c.cli(&["cat", "/keep"]).stdout, keep, "{point}: an acknowledged file changed");
        let outcome = match *point {
            "commit:before-transaction" | "commit:inside-transaction" => {
                assert!(!absent_or_exact(&c, &src, &data), "{point}: a commit that never ran is visible");
                "old"
            }
            "commit:after-flush" => {
                assert!(absent_or_exact(&c, &src, &data), "{point}: a flushed commit was lost");
                "new"
            }
            "commit:after-transaction" | "remove:after-transaction" => {
                if absent_or_exact(&c, &src, &data) {
                    if kind == "commit" { "new" } else { "old" }
                } else if kind == "commit" {
                    "old"
                } else {
                    "new"
                }
            }
            "rename:after-transaction" => {
                let (at_src, at_dst) = (absent_or_exact(&c, &src, &data), absent_or_exact(&c, &dst, &data));
                assert!(at_src != at_dst, "{point}: the file is at both or neither of its names");
                if at_dst { "new" } else { "old" }
            }
            other => panic!("no expectation for crash point {other}"),
        };
        outcomes.push(format!("{point}: {outcome}"));
    }
    eprintln!("crash point outcomes: {outcomes:?}");
    c.kill9("coordinator");
    let report = run_check(&c);
    assert!(report.contains("is consistent"), "{report}");
}

/// A path an operation changes, and what it holds once the operation succeeded (`None`:
/// nothing).
type Expect = (String, Option<Vec<u8>>);

/// Waits until the coordinator sees all `n` nodes up (a restarted coordinator or node is
/// ready before the coordinator has heard from every node again).
fn wait_nodes_up(c: &Cluster, n: usize) {
    within(Duration::from_secs(60), "every node is up", || {
        let s = c.status_json();
        s["nodes"]
            .as_array()
            .is_some_and(|ns| ns.len() == n && ns.iter().all(|node| node["state"] == "up"))
    });
}

/// What a path holds now, read through the CLI: `None` when it does not exist.
fn read_back(c: &Cluster, path: &str) -> Option<Vec<u8>> {
    let out = c.cli(&["cat", path]);
    out.status.success().then_some(out.stdout)
}

#[test]
fn a_seeded_stream_of_changes_survives_random_kill_9_of_the_coordinator_and_nodes() {
    let seed: u64 = std::env::var("COLLECTIVE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261122);
    let ops: usize = std::env::var("COLLECTIVE_CRASH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    // Every chunk file on the nodes is checked against the metadata at the end: no metadata
    // backups, whose chunks are accounted apart (tests/recovery.rs covers them).
    let c = Cluster::start_with("crashstream", 3, 2, &["--metadata-backup-interval", "0"]);
    // Short tokens, so uploads that were never committed are collected within the test.
    let coord = c.proc("coordinator");
    let cfg = std::fs::read_to_string(&coord.config).unwrap();
    assert!(cfg.contains("token_ttl = \"15m\""), "{cfg}");
    std::fs::write(&coord.config, cfg.replace("token_ttl = \"15m\"", "token_ttl = \"5s\"")).unwrap();
    c.kill9("coordinator");
    c.restart("coordinator");
    c.wait_ready();
    wait_nodes_up(&c, 3);

    c.ok(&["mkdir", "/moved"]);
    let mut rng = Rng(seed | 1);
    let mut model: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    let (mut faults, mut acknowledged, mut failed) = (0usize, 0usize, 0usize);
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    let mut checked = 0usize;
    let mut killed: std::collections::BTreeMap<&str, usize> = Default::default();
    let victims = ["coordinator", "node-01", "node-02", "node-03"];
    for i in 0..ops {
        let names: Vec<String> = model.keys().cloned().collect();
        let pick = |rng: &mut Rng| names[rng.below(names.len() as u64) as usize].clone();
        let roll = rng.below(20);
        let (args, expect): (Vec<String>, Vec<Expect>) = if names.is_empty() || roll < 12 {
            // Put: a new file or an overwrite.
            let path = if !names.is_empty() && roll < 4 {
                pick(&mut rng)
            } else {
                format!("/d{}/f{i}", i % 7)
            };
            let data = random_bytes(1 + rng.below(300_000) as usize, seed ^ i as u64);
            let local = c.write_local(&format!("op{i}"), &data);
            (vec!["put".into(), p(&local).into(), path.clone()], vec![(path, Some(data))])
        } else if roll < 15 {
            let path = pick(&mut rng);
            (vec!["rm".into(), path.clone()], vec![(path, None)])
        } else {
            let src = pick(&mut rng);
            let dst = format!("/moved/m{i}");
            let data = model[&src].clone();
            (vec!["mv".into(), src.clone(), dst.clone()], vec![(src, None), (dst, Some(data))])
        };
        *kinds.entry(args[0].clone()).or_default() += 1;
        let fault = rng.below(8) == 0;
        let child = c
            .cmd()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut victim = None;
        if fault {
            std::thread::sleep(Duration::from_millis(rng.below(60)));
            let v = victims[rng.below(victims.len() as u64) as usize];
            c.kill9(v);
            victim = Some(v);
            *killed.entry(v).or_default() += 1;
            faults += 1;
        }
        let out = child.wait_with_output().unwrap();
        let ok = out.status.success();
        assert!(
            ok || fault,
            "op {i} {args:?} (seed {seed}) failed without a fault: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(v) = victim {
            c.restart(v);
            c.wait_ready();
            wait_nodes_up(&c, 3);
            // After every crash, every file acknowledged so far reads back byte-exact.
            for (path, data) in &model {
                if expect.iter().any(|(p, _)| p == path) {
                    continue;
                }
                assert!(
                    read_back(&c, path).as_deref() == Some(data.as_slice()),
                    "op {i}: {path} (seed {seed}) lost or changed after a kill -9 of {v}"
                );
                checked += 1;
            }
        }
        if ok {
            acknowledged += 1;
            for (path, after) in expect {
                match after {
                    Some(d) => model.insert(path, d),
                    None => model.remove(&path),
                };
            }
        } else {
            // Not acknowledged: each path holds its old or its new contents, nothing else.
            failed += 1;
            for (path, after) in expect {
                let now = read_back(&c, &path);
                let before = model.get(&path).cloned();
                assert!(
                    now == before || now == after,
                    "op {i} {args:?} (seed {seed}): {path} is half-visible after a failed change"
                );
                match now {
                    Some(d) => model.insert(path, d),
                    None => model.remove(&path),
                };
            }
        }
    }

    // Every acknowledged write reads back byte-exact, and nothing else is there.
    for (path, data) in &model {
        assert!(
            read_back(&c, path).as_deref() == Some(data.as_slice()),
            "{path} (seed {seed}) lost or changed"
        );
        checked += 1;
    }
    assert_eq!(
        c.status_json()["data"]["files"].as_u64(),
        Some(model.len() as u64),
        "files that were never acknowledged are visible (seed {seed})"
    );
    // Garbage is collected: every chunk on disk is one the metadata knows.
    within(
        Duration::from_secs(90),
        "unreferenced and never-committed chunks are collected",
        || c.status_json()["garbage"]["reclaimable_chunks"] == 0,
    );
    let on_disk = || {
        c.stored_chunks()
            .iter()
            .map(|(_, f)| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let started = std::time::Instant::now();
    let known = loop {
        let known = c.status_json()["replication_state"]["chunks"].as_u64().unwrap_or(0) as usize;
        let disk = on_disk();
        if disk == known {
            break known;
        }
        // Copies of uploads a killed coordinator planned but never recorded are unknown to
        // its metadata: kept and reported, never deleted on sight; the admin collects them.
        c.ok(&["repair", "collect-unknown"]);
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "orphaned chunk files remain on the nodes (seed {seed}): {disk} distinct chunks on disk, {known} known"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    c.kill9("coordinator");
    let report = run_check(&c);
    assert!(report.contains("is consistent") && report.contains("(0 unreferenced"), "{report}");
    eprintln!(
        "crash stream (seed {seed}): {ops} operations {kinds:?}, {faults} kill -9 injected {killed:?}, \
         {acknowledged} acknowledged, {failed} failed and found in their old or new state, \
         {checked} reads of acknowledged files checked byte-exact after crashes and at the end, \
         {} files at the end, {known} chunks, 0 lost, no orphaned chunk",
        model.len()
    );
}
