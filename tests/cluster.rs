//! A single-member cluster end to end: real coordinator and node processes on loopback,
//! driven through the real CLI.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{Cluster, p, random_bytes, within};

#[test]
fn round_trips_are_byte_exact_through_put_get_cat_and_write() {
    let c = Cluster::start("roundtrip", 3, 2);
    let sizes = [0usize, 1, 65535, 65536, 65537, 1048575, 1048576, 1048577, 100 << 20];
    for (i, &size) in sizes.iter().enumerate() {
        let data = random_bytes(size, i as u64 + 1);
        let local = c.write_local(&format!("in-{size}"), &data);
        let remote = format!("/rt/file-{size}");
        c.ok(&["put", p(&local), &remote]);
        let back = c.path(&format!("out-{size}"));
        c.ok(&["get", &remote, p(&back)]);
        assert!(std::fs::read(&back).unwrap() == data, "put/get of {size} bytes differs");
        let out = c.cli(&["cat", &remote]);
        assert!(out.status.success());
        assert!(out.stdout == data, "cat of {size} bytes differs");
        // write: stdin, streamed.
        let remote_w = format!("/rt/written-{size}");
        let mut child = c
            .cmd()
            .args(["write", &remote_w])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "write failed: {}", String::from_utf8_lossy(&out.stderr));
        let out = c.cli(&["cat", &remote_w]);
        assert!(out.stdout == data, "write/cat of {size} bytes differs");
        let stat: serde_json::Value = serde_json::from_str(&c.ok(&["stat", "--json", &remote_w])).unwrap();
        assert_eq!(stat["size"], size as u64);
    }
    let listing: serde_json::Value = serde_json::from_str(&c.ok(&["ls", "--json", "/rt"])).unwrap();
    assert_eq!(listing["entries"].as_array().unwrap().len(), sizes.len() * 2);
}

#[test]
fn every_chunk_sits_on_exactly_r_distinct_nodes_and_survives_losing_one() {
    let c = Cluster::start("placement", 3, 2);
    let mut files = Vec::new();
    for i in 0..4 {
        let data = random_bytes((3 << 20) + i * 1000, 100 + i as u64);
        let local = c.write_local(&format!("f{i}"), &data);
        c.ok(&["put", p(&local), &format!("/p/f{i}")]);
        files.push(data);
    }
    let mut copies: HashMap<String, Vec<String>> = HashMap::new();
    for (node, path) in c.stored_chunks() {
        copies
            .entry(path.file_name().unwrap().to_string_lossy().into_owned())
            .or_default()
            .push(node);
    }
    assert!(copies.len() >= 8, "expected several chunks, found {}", copies.len());
    for (chunk, nodes) in &copies {
        let mut distinct = nodes.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 2, "chunk {chunk} is on {nodes:?}");
        assert_eq!(nodes.len(), 2);
    }
    // Chunks of a file spread over all three nodes.
    let used: std::collections::HashSet<&String> = copies.values().flatten().collect();
    assert_eq!(used.len(), 3, "placement used only {used:?}");

    // Reads spread over the replicas: reading the files touches every node.
    for i in 0..files.len() {
        c.ok(&["cat", &format!("/p/f{i}")]);
    }
    for n in c.nodes() {
        let (_, metrics) = common::http_get(&n.http, "/metrics");
        let gets: f64 = metrics
            .lines()
            .find(|l| l.starts_with("collective_node_chunk_operations_total{op=\"get\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(gets > 0.0, "{} served no reads", n.principal);
    }

    // Kill -9 one node: every file still reads.
    c.kill9("node-02");
    for (i, data) in files.iter().enumerate() {
        let out = c.cli(&["cat", &format!("/p/f{i}")]);
        assert!(
            out.status.success(),
            "read after node loss failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(&out.stdout == data);
    }
}

#[test]
fn put_fails_clearly_and_leaves_nothing_when_r_copies_cannot_be_placed() {
    let c = Cluster::start("underplaced", 2, 2);
    c.kill9("node-01");
    let local = c.write_local("data", &random_bytes(2 << 20, 7));
    let err = c.fails(&["put", p(&local), "/nope"]);
    assert!(err.contains("2 nodes") || err.contains("2 copies"), "unclear error: {err}");
    assert!(err.contains("node-01"), "error should name the failed node: {err}");
    let err = c.fails(&["stat", "/nope"]);
    assert!(err.contains("no such file"), "{err}");
    assert_eq!(c.ok(&["ls", "/"]).trim(), "");
    // The one healthy node is not enough on its own either.
    let single = Cluster::start("single", 1, 2);
    let local = single.write_local("data", b"hello");
    let err = single.fails(&["put", p(&local), "/nope"]);
    assert!(err.contains("cannot place 2 copies"), "{err}");
}

#[test]
fn a_killed_client_leaves_no_partial_file_and_a_retry_succeeds() {
    let c = Cluster::start("killclient", 3, 2);
    let data = random_bytes(12 << 20, 9);
    let mut child = c
        .cmd()
        .args(["write", "/big"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&data[..8 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    let _ = child.wait();
    drop(stdin);
    assert!(c.fails(&["stat", "/big"]).contains("no such file"));
    let local = c.write_local("big", &data);
    c.ok(&["put", p(&local), "/big"]);
    assert!(c.cli(&["cat", "/big"]).stdout == data);
}

#[test]
fn everything_lists_and_reads_after_restarting_every_process() {
    let c = Cluster::start("restart", 3, 2);
    let a = random_bytes(3 << 20, 11);
    let b = random_bytes(10_000, 12);
    c.ok(&["put", p(&c.write_local("a", &a)), "/keep/a"]);
    c.ok(&["put", p(&c.write_local("b", &b)), "/keep/deeper/b"]);
    c.ok(&["mkdir", "-p", "/keep/empty"]);
    c.ok(&["mv", "/keep/a", "/keep/a-moved"]);
    for n in ["node-01", "node-02", "node-03", "coordinator"] {
        c.signal(n, libc::SIGTERM);
    }
    for n in ["coordinator", "node-01", "node-02", "node-03"] {
        c.restart(n);
    }
    c.wait_ready();
    let listing = c.ok(&["ls", "/keep"]);
    assert_eq!(listing, "a-moved\ndeeper/\nempty/\n");
    assert!(c.cli(&["cat", "/keep/a-moved"]).stdout == a);
    assert!(c.cli(&["cat", "/keep/deeper/b"]).stdout == b);
    // And it still takes new data.
    c.ok(&["put", p(&c.write_local("c", b"after restart")), "/keep/c"]);
    assert_eq!(c.cli(&["cat", "/keep/c"]).stdout, b"after restart");
}

#[test]
fn a_flipped_byte_is_detected_reported_and_read_around() {
    let c = Cluster::start("bitrot", 3, 2);
    let data = random_bytes(2 << 20, 21);
    c.ok(&["put", p(&c.write_local("d", &data)), "/d"]);
    let chunks = c.stored_chunks();
    let (node, victim) = chunks.first().unwrap().clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    // Read twice so the corrupt replica is tried whichever order the replicas come in.
    for _ in 0..2 {
        let out = c.cli(&["cat", "/d"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == data, "corrupt bytes were served");
    }
    let node_dir = c.nodes().into_iter().find(|n| n.principal == node).unwrap().data_dir;
    let quarantined = node_dir.join("quarantine").join(victim.file_name().unwrap());
    within(Duration::from_secs(10), "corruption reported and quarantined", || {
        quarantined.exists() && c.status_json()["replication_state"]["bad_replica_reports"].as_u64() >= Some(1)
    });
    // Repair makes a good copy again, without anyone writing the file again.
    let id = victim.file_name().unwrap().to_owned();
    within(Duration::from_secs(20), "the lost copy is replaced", || {
        c.stored_chunks().iter().filter(|(_, p)| p.file_name() == Some(&id)).count() == 2
            && c.status_json()["replication_state"]["under_replicated_chunks"] == 0
    });
    assert!(c.cli(&["cat", "/d"]).stdout == data);
}

#[test]
fn a_large_chunk_found_corrupt_while_streamed_to_get_is_read_around_and_reported() {
    let c = Cluster::start("bitrot-get", 3, 2);
    let data = random_bytes(6 << 20, 22);
    c.ok(&["put", p(&c.write_local("e", &data)), "/e"]);
    // The largest chunk: nodes send it while still reading it from disk, and `get` writes
    // it to the file as it comes, so both find out at its end.
    let chunks = c.stored_chunks();
    let size = |f: &std::path::PathBuf| std::fs::metadata(f).unwrap().len();
    let largest = chunks
        .iter()
        .max_by_key(|(_, f)| size(f))
        .unwrap()
        .1
        .file_name()
        .unwrap()
        .to_owned();
    let copies: Vec<_> = chunks.iter().filter(|(_, f)| f.file_name() == Some(&largest)).cloned().collect();
    assert_eq!(copies.len(), 2);
    assert!(size(&copies[0].1) >= 256 << 10, "a chunk nodes stream");
    let back = c.dir.join("e.back");
    // Corrupt one copy at a time (a get reads whichever its plan lists first) until a get
    // has met the corrupt one.
    let mut met = None;
    for (node, copy) in &copies {
        let good = std::fs::read(copy).unwrap();
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x08;
        std::fs::write(copy, &bad).unwrap();
        c.ok(&["get", "/e", p(&back)]);
        assert!(std::fs::read(&back).unwrap() == data, "get wrote corrupt bytes");
        let node_dir = c.nodes().into_iter().find(|n| &n.principal == node).unwrap().data_dir;
        let quarantined = node_dir.join("quarantine").join(&largest);
        if quarantined.exists() {
            met = Some(quarantined);
            break;
        }
        std::fs::write(copy, &good).unwrap();
    }
    assert!(met.is_some(), "no get read the corrupt copy");
    within(Duration::from_secs(10), "the corrupt copy reported", || {
        c.status_json()["replication_state"]["bad_replica_reports"].as_u64() >= Some(1)
    });
}

#[test]
fn identical_content_twice_does_not_grow_the_stores() {
    let c = Cluster::start("dedup", 3, 2);
    let data = random_bytes(6 << 20, 31);
    let local = c.write_local("x", &data);
    c.ok(&["put", p(&local), "/one"]);
    let before = c.stored_bytes();
    let out = c.ok(&["put", p(&local), "/two"]);
    assert!(out.contains(" 0 of "), "chunks were sent again: {out}");
    assert_eq!(c.stored_bytes(), before);
    assert!(c.cli(&["cat", "/two"]).stdout == data);
    let s = c.status_json();
    assert!(s["data"]["dedup_ratio"].as_f64().unwrap() > 1.9);
}

#[test]
fn concurrent_writers_to_one_path_leave_exactly_one_version() {
    let c = Cluster::start("race", 3, 2);
    let a = random_bytes(5 << 20, 41);
    let b = random_bytes(5 << 20, 42);
    let (la, lb) = (c.write_local("a", &a), c.write_local("b", &b));
    for round in 0..3 {
        let path = format!("/race-{round}");
        let ca = c
            .cmd()
            .args(["put", p(&la), &path])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let cb = c
            .cmd()
            .args(["put", p(&lb), &path])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(ca.wait_with_output().unwrap().status.success());
        assert!(cb.wait_with_output().unwrap().status.success());
        let got = c.cli(&["cat", &path]).stdout;
        assert!(got == a || got == b, "the file is a mix of both writers");
    }
}

#[test]
fn recursive_put_and_get_copy_whole_trees() {
    let c = Cluster::start("tree", 3, 2);
    let src = c.path("src");
    for i in 0..40 {
        let d = src.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), random_bytes(i * 997, i as u64)).unwrap();
    }
    std::fs::create_dir_all(src.join("empty")).unwrap();
    let out = c.ok(&["put", "-r", p(&src), "/t"]);
    assert!(out.contains("40 files"), "{out}");
    let dst = c.path("dst");
    c.ok(&["get", "-r", "/t", p(&dst)]);
    for i in 0..40 {
        let rel = format!("d{}/f{i}", i % 4);
        assert_eq!(
            std::fs::read(dst.join(&rel)).unwrap(),
            std::fs::read(src.join(&rel)).unwrap(),
            "{rel}"
        );
    }
    let err = c.fails(&["get", "/t", p(&c.path("nope"))]);
    assert!(err.contains("use `collective get -r`"), "{err}");
    assert!(c.ok(&["ls", "/t"]).contains("empty/"));
    let out = c.ok(&["rm", "-r", "/t"]);
    assert!(out.contains("removed 40 files"), "{out}");
    assert!(c.fails(&["rm", "/"]).contains("root"));
}

#[test]
fn bad_paths_and_namespace_mistakes_get_clear_errors() {
    let c = Cluster::start("paths", 1, 1);
    let local = c.write_local("x", b"x");
    let long = format!("/{}", "n".repeat(300));
    for (path, expect) in [
        ("/a/../b", "'..'"),
        ("/a//b", "empty component"),
        (long.as_str(), "at most 255 bytes"),
        ("", "empty"),
    ] {
        let err = c.fails(&["put", p(&local), path]);
        assert!(err.contains(expect), "{path:?}: {err}");
        let err = c.fails(&["mkdir", path]);
        assert!(err.contains(expect), "{path:?}: {err}");
    }
    c.ok(&["put", p(&local), "/file"]);
    assert!(c.fails(&["mkdir", "/file/sub"]).contains("/file is not a directory"));
    assert!(c.fails(&["mkdir", "/file"]).contains("already exists"));
    c.ok(&["mkdir", "/dir"]);
    c.ok(&["put", p(&local), "/dir/inner"]);
    assert!(c.fails(&["rm", "/dir"]).contains("not empty"));
    assert!(c.fails(&["cat", "/dir"]).contains("is a directory"));
    assert!(c.fails(&["cat", "/missing"]).contains("/missing: no such file"));
    assert!(c.fails(&["mv", "/dir", "/dir/inner2"]).contains("inside itself"));
}

#[test]
fn full_nodes_give_a_clear_error_and_lose_nothing_already_stored() {
    let c = Cluster::start_with("full", 3, 2, &["--capacity", "6MiB"]);
    let mut stored = Vec::new();
    let mut error = None;
    for i in 0..10 {
        let data = random_bytes(2 << 20, 50 + i);
        let local = c.write_local(&format!("f{i}"), &data);
        let out = c.cli(&["put", p(&local), &format!("/full/f{i}")]);
        if out.status.success() {
            stored.push((i, data));
        } else {
            error = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            assert!(
                c.fails(&["stat", &format!("/full/f{i}")]).contains("no such file"),
                "a failed put left a visible file"
            );
            break;
        }
    }
    let error = error.expect("18 MiB of capacity cannot hold 20 MiB of copies");
    assert!(error.contains("no space") || error.contains("full"), "unclear error: {error}");
    assert!(stored.len() >= 3, "only {} files fitted", stored.len());
    for (i, data) in &stored {
        assert!(
            &c.cli(&["cat", &format!("/full/f{i}")]).stdout == data,
            "f{i} was harmed by the failed put"
        );
    }
}

#[test]
fn every_process_serves_health_and_prometheus_metrics_without_names_or_data() {
    let c = Cluster::start("health", 2, 2);
    c.ok(&[
        "put",
        p(&c.write_local("secret-name.txt", b"secret content")),
        "/private/secret-name.txt",
    ]);
    for proc in c.procs.borrow().iter() {
        let (status, _) = common::http_get(&proc.http, "/health/live");
        assert_eq!(status, 200, "{}", proc.principal);
        let (status, _) = common::http_get(&proc.http, "/health/ready");
        assert_eq!(status, 200, "{}", proc.principal);
        let (status, body) = common::http_get(&proc.http, "/health");
        assert_eq!(status, 200);
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        // Everything is ok except perhaps the disk of the machine running the tests.
        let comps = health["components"].as_array().unwrap();
        assert!(comps.len() >= 3);
        let mut expected = 100;
        for comp in comps {
            match (comp["name"].as_str().unwrap(), comp["state"].as_str().unwrap()) {
                (_, "ok") => {}
                ("disk", "degraded") => expected -= 25,
                ("disk", "failed") => expected -= 50,
                (name, state) => panic!("{}: {name} is {state}: {body}", proc.principal),
            }
        }
        assert_eq!(health["score"], expected, "{body}");
        let (status, metrics) = common::http_get(&proc.http, "/metrics");
        assert_eq!(status, 200);
        assert!(metrics.contains("collective_build_info{"), "{metrics}");
        assert!(metrics.contains("collective_process_start_time_seconds"));
        let expected = if proc.role == "node" {
            "collective_node_stored_bytes"
        } else {
            "collective_coordinator_rpcs_total{method=\"commit_files\"}"
        };
        assert!(metrics.contains(expected), "{} lacks {expected}", proc.principal);
        for leak in ["secret", "private"] {
            assert!(
                !metrics.contains(leak) && !body.contains(leak),
                "{} reveals '{leak}'",
                proc.principal
            );
        }
    }
}

#[test]
fn a_get_that_waits_for_memory_has_nodes_read_ahead_and_stays_byte_exact() {
    let c = Cluster::start("prefetch", 3, 2);
    let data = random_bytes(40 << 20, 41);
    c.ok(&["put", p(&c.write_local("big.bin", &data)), "/big.bin"]);
    // With the smallest memory for downloads (asked for 1 MiB, given 16: one chunk of the
    // largest size), the 16 chunks fetched at once do not all fit: those that wait for
    // memory have their nodes asked to read them from disk meanwhile.
    let config = std::fs::read_to_string(&c.client_config).unwrap();
    let config: String = config
        .lines()
        .map(|l| if l.starts_with("buffer") { "buffer = \"1MiB\"" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let small = c.write_local("small-buffer.toml", config.as_bytes());
    let back = c.path("big.back");
    let out = c.cli_with(&small, &["get", "/big.bin", p(&back)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&back).unwrap() == data, "the download differs");
    let prefetched: f64 = c
        .nodes()
        .iter()
        .map(|n| {
            let metrics = common::http_get(&n.http, "/metrics").1;
            metrics
                .lines()
                .find_map(|l| l.strip_prefix("collective_node_chunk_operations_total{op=\"prefetch\"} "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum();
    assert!(prefetched >= 1.0, "no node was asked to read ahead");
}

/// The scheduling policy of a process (field 41 of /proc/PID/stat).
fn sched_policy(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after_comm = stat.rsplit_once(')').expect("stat has a command name").1;
    after_comm
        .split_whitespace()
        .nth(38)
        .and_then(|v| v.parse().ok())
        .expect("stat has a policy")
}

#[test]
fn every_process_runs_under_batch_scheduling_and_a_bad_setting_is_refused() {
    let c = Cluster::start("sched", 1, 1);
    if std::env::var_os("COLLECTIVE_CPU_SCHEDULING").is_none() {
        for proc in [c.proc("coordinator"), c.nodes()[0].clone()] {
            assert_eq!(
                sched_policy(proc.pid),
                libc::SCHED_BATCH as u32,
                "{} runs under SCHED_BATCH",
                proc.principal
            );
        }
    }
    let ls_with = |setting: &str| {
        c.cmd()
            .env("COLLECTIVE_CPU_SCHEDULING", setting)
            .args(["ls", "/"])
            .output()
            .expect("run collective")
    };
    let out = ls_with("fast");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("COLLECTIVE_CPU_SCHEDULING is 'fast'") && err.contains("'batch' or 'normal'"),
        "{err}"
    );
    let out = ls_with("normal");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
