//! Stopping servers the way systemd does (SIGTERM, then SIGKILL after the unit's stop
//! timeout): a coordinator or node stops within 10 s whatever is attached, says so to what
//! was attached, and a member that stops cleanly is not taken for a failed one.

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, pid_alive, random_bytes, within};

/// What the units and the compose file promise: a server stops within this after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Sends SIGTERM to a process and returns how long it took to exit (panics past 15 s).
fn term_and_time(pid: u32) -> Duration {
    let started = Instant::now();
    // SAFETY: kill with a pid this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    while pid_alive(pid) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "process {pid} still runs 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Stops a child the test started, whatever state it is in.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(started.elapsed() < limit, "the client did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_coordinator_with_an_events_follower_stops_within_10_s_and_tells_the_follower() {
    let c = Cluster::start("stop-follower", 1, 1);
    let mut follower = Reaped(
        c.cmd()
            .args(["events", "--follow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The follower is attached once it has printed the past events.
    let mut first = [0u8; 1];
    follower.0.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    let coord = c.proc("coordinator");
    let took = term_and_time(coord.pid);
    assert!(
        took < STOP_WITHIN,
        "the coordinator took {took:?} to stop with an events follower attached"
    );
    let status = wait_exit(&mut follower.0, Duration::from_secs(5));
    assert!(!status.success(), "the follower should report that the stream ended");
    let mut err = String::new();
    follower.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(
        err.contains("shutting down"),
        "the follower was not told why its stream ended: {err}"
    );
    let log = std::fs::read_to_string(&coord.log).unwrap();
    assert!(log.contains("coordinator stopped"), "no clean stop in the log:\n{log}");
}

#[test]
fn a_node_stops_within_10_s_during_an_upload_and_the_upload_says_why_it_failed() {
    let c = Cluster::start("stop-upload", 2, 2);
    // An upload that keeps streaming: stdin stays open, bytes keep coming.
    let mut writer = Reaped(
        c.cmd()
            .args(["write", "/stream.bin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = writer.0.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let block = random_bytes(1 << 20, 3);
        for i in 0..400u64 {
            let mut b = block.clone();
            b[..8].copy_from_slice(&i.to_le_bytes());
            if stdin.write_all(&b).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    // Let chunks flow to both nodes, then stop one.
    within(Duration::from_secs(20), "chunks to reach the nodes", || {
        c.stored_chunks().len() >= 4
    });
    let node = c.proc("node-01");
    let took = term_and_time(node.pid);
    assert!(took < STOP_WITHIN, "the node took {took:?} to stop during an upload");
    let status = wait_exit(&mut writer.0, Duration::from_secs(60));
    let _ = feeder.join();
    let mut err = String::new();
    writer.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    // Two copies wanted, one node left: the upload fails, and says why.
    assert!(
        !status.success(),
        "an upload that lost one of its two nodes must not report success"
    );
    assert!(
        err.contains("cannot place") || err.contains("shutting down"),
        "the upload's error does not say what happened: {err}"
    );
    assert!(
        c.ok(&["ls", "/"]).lines().all(|l| !l.contains("stream.bin")),
        "a failed upload must leave nothing"
    );
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("node stopped"), "no clean stop in the node's log:\n{log}");
}

#[test]
fn a_member_that_stops_cleanly_is_reported_stopped_not_failed() {
    let fed = Cluster::federation("stop-member", 2, 1);
    let bob = fed.member("bob").domain.clone();
    let coord = fed.proc("coordinator@bob");
    let took = term_and_time(coord.pid);
    assert!(took < STOP_WITHIN, "bob's coordinator took {took:?} to stop");
    within(Duration::from_secs(15), "alice to see bob stopped", || {
        fed.peer_states("alice").iter().any(|(m, s)| *m == bob && s == "stopped")
    });
    within(Duration::from_secs(5), "alice's events to say bob stopped", || {
        fed.ok_as("alice", &["events"]).contains("member-stopped")
    });
    let events = fed.ok_as("alice", &["events"]);
    assert!(!events.contains("member-down"), "a clean stop was reported as a failure:\n{events}");
    let alice_log = std::fs::read_to_string(fed.proc("coordinator@alice").log).unwrap();
    assert!(
        !alice_log.lines().any(|l| l.contains("federation member down") && l.contains(&bob)),
        "alice logged bob's clean stop as a failure:\n{alice_log}"
    );
    // bob comes back: alive again, and nobody, bob included, talks of being declared down.
    fed.restart("coordinator@bob");
    within(Duration::from_secs(20), "alice to see bob alive again", || {
        fed.peer_states("alice").iter().any(|(m, s)| *m == bob && s == "alive")
    });
    let bob_log = std::fs::read_to_string(&coord.log).unwrap();
    assert!(!bob_log.contains("declared down"), "a clean restart is not a failure:\n{bob_log}");
}

#[test]
fn status_watch_outlives_a_coordinator_restart_and_says_what_happened() {
    let c = Cluster::start("stop-watch", 1, 1);
    let out = c.path("watch.out");
    let mut watch = Reaped(
        c.cmd()
            .args(["status", "--watch", "1"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let printed = || std::fs::read_to_string(&out).unwrap_or_default();
    within(Duration::from_secs(10), "a first status", || printed().contains("nodes ("));
    let coord = c.proc("coordinator");
    let took = term_and_time(coord.pid);
    assert!(took < STOP_WITHIN, "the coordinator took {took:?} to stop with a status watcher");
    within(Duration::from_secs(10), "the watcher to say the coordinator is gone", || {
        printed().contains("trying again")
    });
    assert!(
        watch.0.try_wait().unwrap().is_none(),
        "status --watch gave up when the coordinator stopped"
    );
    let before = printed().matches("nodes (").count();
    c.restart("coordinator");
    within(Duration::from_secs(20), "the watcher to show the coordinator again", || {
        printed().matches("nodes (").count() > before
    });
}
