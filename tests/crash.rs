//! Crash consistency of the coordinator: killed (SIGKILL, from inside, at named points) in
//! every phase of a change, it reopens its metadata in one of the two valid states, every
//! acknowledged file reads back byte-exact, and `coordinator --check` finds the reference
//! counts equal to the manifests.

mod common;

use std::time::Duration;

use collective_core::{CRASH_ENV, CRASH_POINTS};
use common::{BIN, Cluster, p, pid_alive, random_bytes, within};

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
    for (i, point) in CRASH_POINTS.iter().enumerate() {
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
