//! A member's metadata survives its coordinator's disk: consistent backups taken while the
//! coordinator serves, and coordinators brought back from them (issue 32). Real processes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{BIN, Cluster, p, random_bytes, within};

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN).args(args).output().unwrap()
}

/// `collective coordinator backup` while a client keeps writing, then the coordinator's
/// metadata directory is lost and restored from the backup: every file stored before the
/// backup reads back byte-exact, every file written during it is either whole or absent,
/// and the restored metadata passes the consistency check.
#[test]
fn a_backup_taken_while_files_are_written_brings_the_coordinator_back_with_every_file() {
    let c = Cluster::start("backup-live", 2, 1);
    let before: Vec<Vec<u8>> = (0..20).map(|i| random_bytes(10_000 + i * 3_000, i as u64)).collect();
    for (i, data) in before.iter().enumerate() {
        let f = c.write_local(&format!("before-{i}"), data);
        c.ok(&["put", p(&f), &format!("/before-{i}")]);
    }
    // A writer that goes on while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, config, dir) = (stop.clone(), c.client_config.clone(), c.dir.clone());
        std::thread::spawn(move || {
            let mut written = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 200 {
                let data = random_bytes(5_000, 1000 + i);
                let f = dir.join(format!("during-{i}"));
                std::fs::write(&f, &data).unwrap();
                let put = std::process::Command::new(BIN)
                    .env("COLLECTIVE_CONFIG", &config)
                    .args(["put", p(&f), &format!("/during-{i}")])
                    .output()
                    .unwrap();
                if put.status.success() {
                    written.push((i, data));
                }
                i += 1;
            }
            written
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let coord = c.proc("coordinator");
    let backup = c.path("meta.backup");
    let out = run(&["coordinator", "backup", "--config", p(&coord.config), "--out", p(&backup)]);
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o600,
            "a backup holds every datastore key and must be readable by its owner only"
        );
    }
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("backed up") && said.contains("restore with `collective coordinator restore"),
        "{said}"
    );
    stop.store(true, Ordering::Relaxed);
    let during = writer.join().unwrap();

    // The coordinator's disk dies.
    c.kill9("coordinator");
    let lost = coord.data_dir.with_extension("lost");
    std::fs::rename(&coord.data_dir, &lost).unwrap();

    // A damaged backup is refused and leaves nothing.
    let mut bad = std::fs::read(&backup).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    let damaged = c.path("damaged.backup");
    std::fs::write(&damaged, &bad).unwrap();
    let out = run(&["coordinator", "restore", "--from", p(&damaged), "--data-dir", p(&coord.data_dir)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged") || err.contains("altered"), "{err}");
    assert!(!coord.data_dir.exists(), "a damaged backup left a metadata directory behind");

    let out = run(&["coordinator", "restore", "--from", p(&backup), "--data-dir", p(&coord.data_dir)]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    // Restoring over it again is refused: nothing is overwritten.
    let out = run(&["coordinator", "restore", "--from", p(&backup), "--data-dir", p(&coord.data_dir)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    // The metadata is consistent (reference counts, seals, totals), then the coordinator runs on it.
    let out = run(&["coordinator", "--config", p(&coord.config), "--check"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    c.restart("coordinator");
    c.wait_ready();
    within(Duration::from_secs(30), "the nodes to register again", || {
        c.ok(&["status", "--json"]).matches("\"state\": \"up\"").count() >= 2
    });
    for (i, data) in before.iter().enumerate() {
        let back = c.path(&format!("back-{i}"));
        c.ok(&["get", &format!("/before-{i}"), p(&back)]);
        assert!(std::fs::read(&back).unwrap() == *data, "/before-{i} differs after the restore");
    }
    let (mut whole, mut absent) = (0, 0);
    for (i, data) in &during {
        let back = c.path(&format!("back-during-{i}"));
        let got = c.cli(&["get", &format!("/during-{i}"), p(&back)]);
        if got.status.success() {
            assert!(std::fs::read(&back).unwrap() == *data, "/during-{i} came back different");
            whole += 1;
        } else {
            absent += 1;
        }
    }
    eprintln!("{} files written during the backup: {whole} in it, {absent} after it", during.len());
}

/// Every member that comes into being gets a recovery kit (readable by its owner only)
/// naming where recovery asks first; `member recovery-kit` writes it again with the same
/// secret for a member admin, and refuses anyone else.
#[test]
fn every_new_member_gets_a_recovery_kit_and_only_its_admins_can_write_it_again() {
    use std::os::unix::fs::PermissionsExt;
    let fed = Cluster::federation("kit-fed", 2, 1);
    let alice = fed.member("alice").clone();
    let bob = fed.member("bob").clone();
    let kit_path = alice.ca_dir.parent().unwrap().join("recovery-kit.txt");
    let mode = std::fs::metadata(&kit_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the kit is readable by others");
    let kit = collective_pki::RecoveryKit::parse(&std::fs::read_to_string(&kit_path).unwrap()).unwrap();
    assert_eq!(kit.member, "alice");
    assert_eq!(kit.domain, alice.domain);
    assert_eq!(kit.federation, "collective.local");
    assert_eq!(kit.bootstrap, vec![bob.grpc.clone()]);

    let again = fed.path("alice-kit-again.txt");
    let out = fed.ok_as("alice", &["member", "recovery-kit", "--out", p(&again)]);
    assert!(out.contains("keep it outside the house"), "{out}");
    let again = collective_pki::RecoveryKit::parse(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(again.secret, kit.secret, "writing the kit again gives the same secret");
    assert_eq!(again.bootstrap, vec![bob.grpc.clone()]);
    // bob asking his own coordinator gets his own kit, never alice's.
    let bob_again = fed.path("bob-kit.txt");
    fed.ok_as("bob", &["member", "recovery-kit", "--out", p(&bob_again)]);
    let bob_again = collective_pki::RecoveryKit::parse(&std::fs::read_to_string(&bob_again).unwrap()).unwrap();
    assert_eq!(bob_again.member, "bob");
    assert_ne!(bob_again.secret, kit.secret);
    let bobs = collective_pki::RecoveryKit::parse(&std::fs::read_to_string(bob.ca_dir.parent().unwrap().join("recovery-kit.txt")).unwrap())
        .unwrap();
    assert_ne!(bobs.secret, kit.secret, "each member has its own secret");

    // A member on its own: the kit names its nodes.
    let c = Cluster::start("kit-single", 2, 1);
    let single = collective_pki::RecoveryKit::parse(&std::fs::read_to_string(c.path("recovery-kit.txt")).unwrap()).unwrap();
    let nodes: Vec<String> = c.nodes().iter().map(|n| n.grpc.clone()).collect();
    let mut named = single.bootstrap.clone();
    named.sort();
    let mut want = nodes.clone();
    want.sort();
    assert_eq!(named, want);
    // A user that is not an admin is refused, with the reason.
    let user = c.second_user("carl");
    let out = c.cli_with(&user, &["member", "recovery-kit", "--out", p(&c.path("carl.txt"))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only its admins may write it"));
    assert!(!c.path("carl.txt").exists());
}

/// The member's `metadata_backup` status as `status --json` shows it.
fn backup_status(c: &Cluster, config: &std::path::Path) -> serde_json::Value {
    let out = c.cli_with(config, &["status", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .map(|v| v["metadata_backup"].clone())
        .unwrap_or_default()
}

/// Waits until every committed change of the member whose client config is `config` is in
/// the federation.
fn wait_backed_up(c: &Cluster, config: &std::path::Path) {
    within(Duration::from_secs(60), "the metadata backup to catch up", || {
        let b = backup_status(c, config);
        b["pending_changes"] == 0 && b["last_success"].is_string() && b["keepers"].as_u64().unwrap_or(0) > 0
    });
}

/// `member recover` as a person runs it.
fn recover(kit: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["member", "recover", "--kit", p(kit), "--out", p(out)];
    args.extend_from_slice(extra);
    run(&args)
}

/// Starts the coordinator `member recover` wrote, in place of `principal`'s process in the
/// cluster (so the cluster stops it too).
fn start_recovered(c: &Cluster, principal: &str, dir: &std::path::Path) {
    let config = dir.join("coordinator.toml");
    let cfg: toml::Value = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let log = dir.join("coordinator.log");
    let child = std::process::Command::new(BIN)
        .args(["coordinator", "--config", p(&config)])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("coordinator.err")).unwrap())
        .spawn()
        .unwrap();
    for q in c.procs.borrow_mut().iter_mut() {
        if q.principal.starts_with(principal) {
            q.pid = child.id();
            q.config = config.clone();
            q.log = dir.join("coordinator.err");
            q.grpc = cfg["grpc_listen"].as_str().unwrap().to_string();
            q.http = cfg["http_listen"].as_str().unwrap().to_string();
            q.data_dir = cfg["data_dir"].as_str().unwrap().into();
        }
    }
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    // Not `wait_ready`: after a fire it has no node, and ready needs one.
    let client = dir.join("client.toml");
    within(Duration::from_secs(30), "the recovered coordinator to answer", || {
        c.cli_with(&client, &["status"]).status.success()
    });
}

/// Nodes `status` shows up, as the member whose client config is `config` sees them.
fn nodes_up(c: &Cluster, config: &std::path::Path) -> usize {
    let out = c.cli_with(config, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["state"] == "up").count())
}

fn reads_back(c: &Cluster, config: &std::path::Path, path: &str, data: &[u8]) -> bool {
    let out = c.cli_with(config, &["cat", path]);
    out.status.success() && out.stdout == data
}

/// A three-member federation; alice keeps files in a `backup` datastore (copies on bob and
/// carol) and in a `media` one (copies at home), and bob may read the first. Her house
/// burns: every process and every directory of hers is gone but her printed kit. Before
/// that, recovery is refused while her coordinator lives, and with a mistyped or another
/// member's kit. After it, `member recover` writes a coordinator that serves every backup
/// file byte-exact, bob reads through his grant again, and the media files are reported
/// lost, never served wrong.
#[test]
fn a_house_fire_loses_nothing_of_a_backup_datastore_and_names_the_files_it_lost() {
    let c = Cluster::federation("house-fire", 3, 2);
    let alice = c.member("alice").clone();
    c.ok_as("alice", &["datastore", "create", "/safe", "--strategy", "backup"]);
    let files: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(50_000 + i * 70_000, 40 + i as u64)).collect();
    for (i, data) in files.iter().enumerate() {
        let f = c.write_local(&format!("f{i}"), data);
        c.ok_as("alice", &["put", p(&f), &format!("/safe/f{i}")]);
        c.ok_as("alice", &["put", p(&f), &format!("/media/f{i}")]);
    }
    c.ok_as("alice", &["datastore", "grant", "/safe", "bob@bob.collective.local", "read"]);
    wait_backed_up(&c, &alice.client_config);
    let home = alice.coordinator_config.parent().unwrap().to_path_buf();
    let kit = c.path("alice-kit.txt");
    std::fs::copy(home.join("recovery-kit.txt"), &kit).unwrap();

    // While her coordinator lives, recovery is refused: two coordinators must never run.
    let early = c.path("too-early");
    let out = recover(&kit, &early, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("still alive") && err.contains("--force"), "{err}");
    assert!(!early.join("coordinator.toml").exists());
    // A mistyped word is caught by the checksum; another member's secret opens nothing.
    let text = std::fs::read_to_string(&kit).unwrap();
    let words = collective_pki::RecoveryKit::parse(&text).unwrap().secret.to_words();
    let first = words.split_whitespace().next().unwrap().to_string();
    let typo = c.write_local("typo-kit.txt", text.replacen(&first, "babab", 1).as_bytes());
    let err = String::from_utf8_lossy(&recover(&typo, &c.path("typo"), &[]).stderr).into_owned();
    assert!(err.contains("mistyped") || err.contains("not a recovery word"), "{err}");
    let other = collective_pki::RecoverySecret::generate().unwrap().to_words();
    let mut swapped = text.clone();
    for (mine, theirs) in words.split_whitespace().zip(other.split_whitespace()) {
        swapped = swapped.replacen(mine, theirs, 1);
    }
    assert_ne!(swapped, text);
    let foreign = c.write_local("foreign-kit.txt", swapped.as_bytes());
    let err = String::from_utf8_lossy(&recover(&foreign, &c.path("foreign"), &["--force"]).stderr).into_owned();
    assert!(err.contains("not signed with this member's recovery secret"), "{err}");

    // The fire.
    for proc in c.member_procs("alice") {
        c.kill9(&proc.principal);
    }
    std::fs::remove_dir_all(&home).unwrap();

    let out_dir = c.path("alice-new");
    within(Duration::from_secs(30), "the others to see alice's coordinator gone", || {
        let _ = std::fs::remove_dir_all(&out_dir);
        recover(&kit, &out_dir, &[]).status.success()
    });
    let config = out_dir.join("client.toml");
    start_recovered(&c, "coordinator@alice", &out_dir);
    for (i, data) in files.iter().enumerate() {
        within(Duration::from_secs(30), &format!("/safe/f{i} to read back byte-exact"), || {
            reads_back(&c, &config, &format!("/safe/f{i}"), data)
        });
    }
    within(Duration::from_secs(30), "bob to read through his grant again", || {
        let out = c.cmd_as("bob").args(["cat", "/safe/f1"]).output().unwrap();
        out.status.success() && out.stdout == files[1]
    });
    within(Duration::from_secs(60), "the media files to be reported lost", || {
        let out = c.cli_with(&config, &["repair", "status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let lost: Vec<&str> = v["lost_files"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        (0..files.len()).all(|i| lost.contains(&format!("/media/f{i}").as_str())) && !lost.iter().any(|l| l.starts_with("/safe"))
    });
    let out = c.cli_with(&config, &["cat", "/media/f0"]);
    assert!(!out.status.success() && out.stdout.is_empty(), "a lost file was served");
    // The recovered member backs itself up again, with the same kit.
    wait_backed_up(&c, &config);
}

/// Only alice's coordinator disk dies (its metadata and her CA directory); her nodes live
/// on. Recovery at an earlier time brings back a file deleted since; recovery of the newest
/// backup, listening where the old coordinator did, serves every file of every datastore
/// byte-exact and her nodes register again.
#[test]
fn a_dead_coordinator_disk_comes_back_whole_and_an_earlier_time_brings_back_a_deleted_file() {
    let c = Cluster::federation("dead-disk", 2, 2);
    let alice = c.member("alice").clone();
    c.ok_as("alice", &["datastore", "create", "/safe", "--strategy", "backup"]);
    let kept = random_bytes(200_000, 7);
    let gone = random_bytes(30_000, 8);
    let f = c.write_local("kept", &kept);
    c.ok_as("alice", &["put", p(&f), "/media/kept"]);
    c.ok_as("alice", &["put", p(&f), "/safe/kept"]);
    let g = c.write_local("gone", &gone);
    c.ok_as("alice", &["put", p(&g), "/media/gone"]);
    wait_backed_up(&c, &alice.client_config);
    std::thread::sleep(Duration::from_millis(1100));
    let before_delete = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    c.ok_as("alice", &["rm", "/media/gone"]);
    wait_backed_up(&c, &alice.client_config);

    let home = alice.coordinator_config.parent().unwrap().to_path_buf();
    let kit = c.path("alice-kit.txt");
    std::fs::copy(home.join("recovery-kit.txt"), &kit).unwrap();
    c.kill9("coordinator@alice");
    std::fs::remove_dir_all(home.join("coordinator-data")).unwrap();
    std::fs::remove_dir_all(&alice.ca_dir).unwrap();

    // A look at the past: the deleted file is there.
    let past = c.path("alice-past");
    within(Duration::from_secs(30), "bob to see alice's coordinator gone", || {
        let _ = std::fs::remove_dir_all(&past);
        recover(&kit, &past, &["--at", &before_delete]).status.success()
    });
    let meta = collective_meta::MetaStore::open(&past.join("coordinator-data")).unwrap();
    let names: Vec<String> = meta
        .list(&collective_core::validate_path("/media").unwrap(), None, 1000)
        .unwrap()
        .0
        .into_iter()
        .map(|a| a.path)
        .collect();
    assert!(names.iter().any(|n| n.ends_with("/gone")), "{names:?}");
    drop(meta);
    // Asking for a time before any backup says how far back they go.
    let err = String::from_utf8_lossy(&recover(&kit, &c.path("too-old"), &["--at", "2020-01-01T00:00:00Z"]).stderr).into_owned();
    assert!(err.contains("the oldest kept is from"), "{err}");

    // The newest, where the old coordinator listened: the nodes come back to it.
    let now_dir = c.path("alice-now");
    let out = recover(&kit, &now_dir, &["--listen", &alice.grpc]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    start_recovered(&c, "coordinator@alice", &now_dir);
    let config = now_dir.join("client.toml");
    within(Duration::from_secs(30), "alice's two nodes to register again", || {
        let out = c.cli_with(&config, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().filter(|n| n["state"] == "up").count() == 2)
    });
    for path in ["/media/kept", "/safe/kept"] {
        within(Duration::from_secs(30), &format!("{path} to read back"), || {
            reads_back(&c, &config, path, &kept)
        });
    }
    assert!(
        !c.cli_with(&config, &["cat", "/media/gone"]).status.success(),
        "the newest backup has the deletion"
    );
}

/// A member on its own loses its coordinator's disk and comes back from its own nodes,
/// which keep its recovery record and the backup's chunks. A crash at any point of a backup
/// leaves the nodes naming a complete backup; once every copy of the backup's chunks is
/// damaged, recovery says which piece failed and offers an older backup.
#[test]
fn a_member_on_its_own_recovers_from_its_nodes_whatever_point_a_backup_crashed_at() {
    let c = Cluster::start("single-recover", 2, 2);
    let data = random_bytes(120_000, 3);
    let f = c.write_local("one", &data);
    c.ok(&["put", p(&f), "/one"]);
    wait_backed_up(&c, &c.client_config);
    let kit = c.path("kit.txt");
    std::fs::copy(c.path("recovery-kit.txt"), &kit).unwrap();

    // A coordinator killed at each point of a backup: the record its nodes keep always
    // names a backup that recovers whole.
    for (i, point) in collective_core::CRASH_POINTS
        .iter()
        .filter(|p| p.starts_with("metadata-backup:"))
        .enumerate()
    {
        c.kill9("coordinator");
        c.restart_env("coordinator", &[], &[(collective_core::CRASH_ENV, point)]);
        let coord = c.proc("coordinator");
        // Its first backup may come before any change of ours (its nodes registering again
        // is one); otherwise a change gives it one.
        let mut n = 0;
        within(Duration::from_secs(60), &format!("the coordinator to die at {point}"), || {
            if !common::pid_alive(coord.pid) {
                return true;
            }
            let _ = c.cli(&["mkdir", &format!("/crash-{i}-{n}")]);
            n += 1;
            std::thread::sleep(Duration::from_millis(500));
            false
        });
        let log = std::fs::read_to_string(&coord.log).unwrap();
        assert!(log.contains(&format!("crash point {point} reached")), "{point}: not reached");
        let dir = c.path(&format!("after-{i}"));
        let out = recover(&kit, &dir, &[]);
        assert!(out.status.success(), "{point}: {}", String::from_utf8_lossy(&out.stderr));
        let meta = collective_meta::MetaStore::open(&dir.join("coordinator-data")).unwrap();
        assert!(
            meta.check().unwrap().problems.is_empty(),
            "{point}: the recovered metadata is inconsistent"
        );
        c.restart("coordinator");
        c.wait_ready();
        within(Duration::from_secs(30), "both nodes to register", || {
            nodes_up(&c, &c.client_config) == 2
        });
    }
    wait_backed_up(&c, &c.client_config);

    // The disk dies.
    let coord = c.proc("coordinator");
    c.kill9("coordinator");
    std::fs::remove_dir_all(&coord.data_dir).unwrap();
    std::fs::remove_dir_all(c.path("ca")).unwrap();
    let out_dir = c.path("recovered");
    let out = recover(&kit, &out_dir, &["--listen", &coord.grpc]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    start_recovered(&c, "coordinator", &out_dir);
    let config = out_dir.join("client.toml");
    within(Duration::from_secs(30), "/one to read back byte-exact", || {
        reads_back(&c, &config, "/one", &data)
    });
    within(Duration::from_secs(30), "the nodes to register again", || {
        c.cli_with(&config, &["status", "--json"])
            .stdout
            .windows(12)
            .filter(|w| w == b"\"state\": \"up")
            .count()
            >= 2
    });

    // Every stored copy damaged: recovery names the piece and offers an older backup.
    c.kill9("coordinator");
    for (_, chunk) in c.stored_chunks() {
        let mut b = std::fs::read(&chunk).unwrap();
        if let Some(x) = b.last_mut() {
            *x ^= 0x55;
        }
        std::fs::write(&chunk, b).unwrap();
    }
    let out = recover(&kit, &c.path("damaged"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not be read") || err.contains("altered"), "{err}");
    assert!(err.contains("--at"), "no older backup offered: {err}");
}
