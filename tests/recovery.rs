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
