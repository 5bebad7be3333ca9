//! Federation scenarios on real multi-member clusters: alice, bob and carol each run a
//! coordinator and storage nodes on loopback, joined through real invites (`dev up
//! --members 3`), gossiping over UDP and forwarding over mutual TLS.

mod common;

use std::time::Duration;

use common::{Cluster, p, random_bytes, within};

/// Polls `f` until it is true or `limit` passes; returns how long it took.
fn state_of(states: &[(String, String)], member: &str) -> Option<String> {
    states.iter().find(|(m, _)| m == member).map(|(_, s)| s.clone())
}

#[test]
fn three_members_converge_from_one_bootstrap_and_detect_a_dead_coordinator() {
    let fed = Cluster::federation("converge", 3, 1);
    // bob joined when only alice existed: his only bootstrap peer is alice, yet he finds carol.
    let cfg = std::fs::read_to_string(&fed.member("bob").coordinator_config).unwrap();
    assert!(cfg.contains(&fed.member("alice").gossip), "bob should bootstrap from alice:\n{cfg}");
    assert!(!cfg.contains(&fed.member("carol").gossip), "bob was told about carol:\n{cfg}");
    for m in ["alice", "bob", "carol"] {
        let out = fed.ok_as(m, &["federation", "peers", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let members = v["members"].as_array().unwrap();
        assert_eq!(members.len(), 3, "{m} sees {out}");
        for p in members {
            assert_eq!(p["state"], "alive", "{m} sees {out}");
            let seen = p["last_seen"].as_str().unwrap();
            assert!(
                time::OffsetDateTime::parse(seen, &time::format_description::well_known::Rfc3339).is_ok(),
                "last_seen is not RFC 3339: {seen}"
            );
        }
    }

    // Kill carol's coordinator: alice and bob mark it suspect, then down, within 10 s.
    fed.kill9("coordinator@carol");
    let carol = fed.member("carol").domain.clone();
    let mut saw_suspect = false;
    let took = within(Duration::from_secs(15), "carol declared down", || {
        let states = fed.peer_states("alice");
        saw_suspect |= state_of(&states, &carol).as_deref() == Some("suspect");
        state_of(&states, &carol).as_deref() == Some("down")
    });
    assert!(took < Duration::from_secs(10), "carol declared down only after {took:?}");
    assert!(saw_suspect, "carol went down without being suspected first");
    within(Duration::from_secs(5), "bob agrees carol is down", || {
        state_of(&fed.peer_states("bob"), &carol).as_deref() == Some("down")
    });
    // alice's events tell the story: suspect, then down (and status --json shows it).
    within(Duration::from_secs(5), "member events for carol on alice", || {
        let events = fed.ok_as("alice", &["events", "--json"]);
        let kinds: Vec<String> = events
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["subject"] == carol.as_str())
            .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
            .collect();
        kinds.iter().any(|k| k == "member-suspect") && kinds.iter().any(|k| k == "member-down")
    });
    let status: serde_json::Value = serde_json::from_str(&fed.ok_as("alice", &["status", "--json"])).unwrap();
    let seen = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["member"] == carol.as_str())
        .cloned();
    assert_eq!(seen.map(|m| m["state"].clone()), Some(serde_json::json!("down")), "{status}");
    assert!(status["warnings"].to_string().contains(&carol), "{status}");
    // Her datastore is unreachable, with an error that says so.
    let err = fed.fails_as("bob", &["ls", "/shared"]);
    assert!(err.contains("carol"), "{err}");
    // bob's datastore list still names it, and says why his rights there are unknown.
    let ls = fed.ok_as("bob", &["datastore", "ls"]);
    let shared = ls
        .lines()
        .find(|l| l.starts_with("/shared "))
        .unwrap_or_else(|| panic!("no /shared:\n{ls}"));
    assert!(shared.ends_with("(member unreachable)"), "{ls}");

    // Restart her with alice as her only bootstrap peer: alive again everywhere, her
    // datastore back in the catalog.
    let cfg_path = &fed.member("carol").coordinator_config;
    let cfg = std::fs::read_to_string(cfg_path).unwrap();
    let mut doc: toml::Table = toml::from_str(&cfg).unwrap();
    doc["federation"]["bootstrap"] = toml::Value::Array(vec![toml::Value::String(fed.member("alice").gossip.clone())]);
    std::fs::write(cfg_path, toml::to_string(&doc).unwrap()).unwrap();
    fed.restart("coordinator@carol");
    fed.wait_ready();
    within(Duration::from_secs(20), "carol alive again for alice and bob", || {
        ["alice", "bob"]
            .iter()
            .all(|m| state_of(&fed.peer_states(m), &carol).as_deref() == Some("alive"))
    });
    within(Duration::from_secs(20), "carol's /shared listed again", || {
        fed.cmd_as("bob")
            .args(["ls", "/"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("shared/"))
            .unwrap_or(false)
    });
}

#[test]
fn grants_let_bob_read_refuse_carol_and_stop_working_when_expired_or_revoked() {
    let fed = Cluster::federation("grants", 3, 2);
    let data = random_bytes(300_000, 7);
    let src = fed.write_local("photo.jpg", &data);
    fed.ok_as("alice", &["put", p(&src), "/media/photo.jpg"]);

    // bob has a read grant on /media (dev up makes it): he lists and reads through his own coordinator.
    assert!(fed.ok_as("bob", &["ls", "/"]).contains("media/"));
    let back = fed.path("bob.jpg");
    fed.ok_as("bob", &["get", "/media/photo.jpg", p(&back)]);
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // `datastore ls` through bob's coordinator asks alice what bob may do on her /media:
    // his own rights, and no one else's grants.
    let rights_on_media = |user: &str| {
        let ls = fed.ok_as(user, &["datastore", "ls"]);
        let line = ls
            .lines()
            .find(|l| l.starts_with("/media "))
            .unwrap_or_else(|| panic!("no /media for {user}:\n{ls}"));
        line.split_whitespace().last().unwrap().to_string()
    };
    assert_eq!(rights_on_media("bob"), "read");
    let v: serde_json::Value = serde_json::from_str(&fed.ok_as("bob", &["datastore", "ls", "--json"])).unwrap();
    let media = v["datastores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "/media")
        .cloned()
        .unwrap();
    assert_eq!(media["member"], fed.member("alice").domain.as_str(), "{v}");
    assert_eq!(media["my_rights"], "read", "{v}");
    assert_eq!(media["my_rights_unknown"], "", "{v}");
    assert_eq!(media["grants"], serde_json::json!([]), "bob may not see the grants of /media: {v}");
    // carol holds nothing there, and is told so rather than "ask its member".
    assert_eq!(rights_on_media("carol"), "none");

    // bob may only read.
    let err = fed.fails_as("bob", &["put", p(&src), "/media/mine.jpg"]);
    assert!(err.contains("lacks the write right on /media/mine.jpg"), "{err}");
    let err = fed.fails_as("bob", &["rm", "/media/photo.jpg"]);
    assert!(err.contains("lacks the delete right"), "{err}");

    // carol has no grant: she cannot see /media, nor read in it.
    assert!(!fed.ok_as("carol", &["ls", "/"]).contains("media/"));
    let err = fed.fails_as("carol", &["get", "/media/photo.jpg", p(&fed.path("c.jpg"))]);
    assert!(err.contains("lacks the read right on /media/photo.jpg"), "{err}");
    assert!(err.contains("datastore grant /media carol@carol.collective.local read"), "{err}");

    // A grant that expires: works now, not after its time.
    let until = (time::OffsetDateTime::now_utc() + Duration::from_secs(3))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    fed.ok_as(
        "alice",
        &[
            "datastore",
            "grant",
            "/media",
            "carol@carol.collective.local",
            "read",
            "--until",
            &until,
        ],
    );
    fed.ok_as("carol", &["get", "/media/photo.jpg", p(&fed.path("c1.jpg"))]);
    // The moment it passes, the grant stops working (expiry itself is unit-tested on a
    // driven clock; this checks the wiring).
    let mut err = String::new();
    within(Duration::from_secs(15), "the grant to expire", || {
        let out = fed
            .cmd_as("carol")
            .args(["get", "/media/photo.jpg", p(&fed.path("c2.jpg"))])
            .output()
            .unwrap();
        err = String::from_utf8_lossy(&out.stderr).into_owned();
        !out.status.success()
    });
    assert!(err.contains("lacks the read right"), "{err}");

    // A whole-member grant, then revoked.
    fed.ok_as("alice", &["datastore", "grant", "/media", "*@carol.collective.local", "read,write"]);
    fed.ok_as("carol", &["put", p(&src), "/media/from-carol.jpg"]);
    fed.ok_as("alice", &["datastore", "revoke", "/media", "*@carol.collective.local"]);
    let err = fed.fails_as("carol", &["get", "/media/from-carol.jpg", p(&fed.path("c3.jpg"))]);
    assert!(err.contains("lacks the read right"), "{err}");
    fed.ok_as("alice", &["datastore", "revoke", "/media", "bob@bob.collective.local"]);
    let err = fed.fails_as("bob", &["get", "/media/photo.jpg", p(&fed.path("b2.jpg"))]);
    assert!(err.contains("lacks the read right"), "{err}");
}

fn invite(fed: &Cluster, extra: &[&str]) -> String {
    let mut args = vec!["invite", "generate"];
    args.extend_from_slice(extra);
    fed.ok_as("alice", &args).trim().to_string()
}

fn redeem(fed: &Cluster, code: &str, name: &str) -> std::process::Output {
    let out = fed.path(&format!("redeemed-{name}"));
    fed.cmd_as("alice")
        .env_remove("COLLECTIVE_CONFIG")
        .env("XDG_CONFIG_HOME", fed.path("xdg"))
        .args(["invite", "redeem", code, "--name", name, "--out", p(&out)])
        .output()
        .unwrap()
}

#[test]
fn invites_enforce_uses_expiry_and_revocation_across_a_restart_and_refuse_tampering() {
    let fed = Cluster::federation("invites", 2, 2);
    let data = random_bytes(50_000, 3);
    let src = fed.write_local("doc.txt", &data);
    fed.ok_as("alice", &["put", p(&src), "/media/doc.txt"]);

    let once = invite(&fed, &["--grant", "/media:read", "--max-uses", "1", "--validity", "24h"]);
    let twice = invite(&fed, &["--grant", "/media:read+write", "--max-uses", "2", "--validity", "24h"]);
    let short = invite(&fed, &["--grant", "/media:read", "--validity", "1s"]);
    let revoked = invite(&fed, &["--grant", "/media:read", "--validity", "24h"]);
    let unused = invite(&fed, &["--grant", "/media:read", "--validity", "24h"]);
    fed.ok_as("alice", &["invite", "revoke", &revoked]);

    // A redeemed user invite gives a certificate and working grants.
    let out = redeem(&fed, &once, "dave");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dave_cfg = fed.path("redeemed-dave/client.toml");
    let back = fed.path("dave.txt");
    let got = common::BIN;
    let r = std::process::Command::new(got)
        .env("COLLECTIVE_CONFIG", &dave_cfg)
        .args(["get", "/media/doc.txt", p(&back)])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), data);

    let check = |code: &str, name: &str, want: &str| {
        let out = redeem(&fed, code, name);
        assert!(!out.status.success(), "{name}: redeeming should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{name}: expected '{want}' in: {err}");
    };
    check(&once, "erin", "used up");
    assert!(redeem(&fed, &twice, "frank").status.success());
    assert!(redeem(&fed, &twice, "grace").status.success());
    check(&twice, "heidi", "used up");
    // Wait until the coordinator lists it as expired (the only invite that can be; no
    // redemption meanwhile).
    within(Duration::from_secs(15), "the short invite to expire", || {
        let list: serde_json::Value = serde_json::from_str(&fed.ok_as("alice", &["invite", "list", "--json"])).unwrap();
        list["invites"].as_array().unwrap().iter().any(|i| i["state"] == "expired")
    });
    check(&short, "ivan", "expired");
    check(&revoked, "judy", "revoked");
    // Any change to a code is refused before it reaches a coordinator's database.
    let mut tampered = unused.clone().into_bytes();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    check(&String::from_utf8(tampered).unwrap(), "mallory", "altered");

    // Everything holds after the coordinator restarts from its database.
    fed.kill9("coordinator@alice");
    fed.restart("coordinator@alice");
    fed.wait_ready();
    check(&once, "erin2", "used up");
    check(&twice, "heidi2", "used up");
    check(&short, "ivan2", "expired");
    check(&revoked, "judy2", "revoked");
    let list = fed.ok_as("alice", &["invite", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let users: Vec<&serde_json::Value> = v["invites"].as_array().unwrap().iter().filter(|i| i["kind"] == "user").collect();
    assert_eq!(users.len(), 5, "{list}");
    assert_eq!(users.iter().filter(|i| i["revoked"] == true).count(), 1, "{list}");
    assert!(redeem(&fed, &unused, "kim").status.success());
}

#[test]
fn gossip_from_outside_the_federation_is_dropped_and_has_no_effect() {
    let fed = Cluster::federation("gossip-auth", 2, 1);
    let alice_gossip = fed.member("alice").gossip.clone();
    let dropped = |fed: &Cluster| -> u64 {
        let v: serde_json::Value = serde_json::from_str(&fed.ok_as("alice", &["federation", "peers", "--json"])).unwrap();
        v["dropped_unauthenticated"].as_u64().unwrap()
    };
    let before = dropped(&fed);

    // Unauthenticated datagrams: garbage, and an empty one.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for payload in [&b"\x01hello, let me in"[..], &[0u8; 200][..], &[][..]] {
        sock.send_to(payload, &alice_gossip).unwrap();
    }
    within(Duration::from_secs(5), "garbage counted as dropped", || dropped(&fed) >= before + 2);

    // A real coordinator of another federation (its own root), told to gossip with alice.
    let other = fed.path("mallory");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "federation",
        "init",
        "--domain",
        "collective.local",
        "--out",
        p(&other.join("root")),
    ]);
    run(&[
        "ca",
        "init",
        "--member",
        "mallory",
        "--domain",
        "mallory.collective.local",
        "--out",
        p(&other.join("ca")),
        "--root",
        p(&other.join("root")),
    ]);
    run(&[
        "ca",
        "issue",
        "--ca",
        p(&other.join("ca")),
        "--role",
        "coordinator",
        "--name",
        "coordinator",
        "--san",
        "127.0.0.1",
        "--out",
        p(&other.join("certs")),
    ]);
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gossip_port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        r#"data_dir = "data"
grpc_listen = "127.0.0.1:{}"
http_listen = "127.0.0.1:{}"
ca_dir = "ca"
[tls]
ca = "certs/ca.crt"
cert = "certs/coordinator.crt"
key = "certs/coordinator.key"
[federation]
gossip_listen = "127.0.0.1:{gossip_port}"
bootstrap = ["{alice_gossip}"]
root_dir = "root"
"#,
        port(),
        port()
    );
    std::fs::write(other.join("coordinator.toml"), config).unwrap();
    let log = std::fs::File::create(other.join("coordinator.log")).unwrap();
    let mut child = std::process::Command::new(common::BIN)
        .args(["coordinator", "--config", p(&other.join("coordinator.toml"))])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let seen = before + 3;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        within(Duration::from_secs(15), "the foreign federation's gossip dropped", || {
            dropped(&fed) > seen
        });
        std::thread::sleep(Duration::from_secs(3));
        let states = fed.peer_states("alice");
        assert_eq!(states.len(), 2, "alice's view changed: {states:?}");
        assert!(
            states.iter().all(|(m, s)| m != "mallory.collective.local" && s == "alive"),
            "{states:?}"
        );
        assert!(!fed.ok_as("bob", &["federation", "peers"]).contains("mallory"));
    }));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        eprintln!(
            "mallory's log:\n{}",
            std::fs::read_to_string(other.join("coordinator.log")).unwrap_or_default()
        );
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_client_certificate_of_alice_cannot_call_bobs_coordinator() {
    let fed = Cluster::federation("cross-ca", 2, 1);
    // alice's own client config, pointed at bob's coordinator and trusting the federation
    // root, so TLS itself succeeds and bob's coordinator decides.
    let text = std::fs::read_to_string(&fed.member("alice").client_config).unwrap();
    let mut cfg: toml::Table = toml::from_str(&text).unwrap();
    let base = fed.member("alice").client_config.parent().unwrap().to_path_buf();
    for k in ["cert", "key"] {
        let v = base.join(cfg[k].as_str().unwrap());
        cfg.insert(k.into(), toml::Value::String(p(&v).into()));
    }
    cfg.insert("coordinator".into(), toml::Value::String(fed.member("bob").grpc.clone()));
    cfg.insert(
        "coordinator_name".into(),
        toml::Value::String("coordinator@bob.collective.local".into()),
    );
    cfg.insert("ca".into(), toml::Value::String(p(&fed.dir.join("root/root.crt")).into()));
    let cfg_path = fed.path("alice-at-bob.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .env("COLLECTIVE_CONFIG", &cfg_path)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["ls", "/"]);
    assert!(!out.status.success(), "alice's certificate was accepted by bob's coordinator");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("alice@alice.collective.local"), "{err}");
    assert!(err.contains("bob.collective.local"), "{err}");
    // Nor may she use the federation API reserved to coordinators.
    let out = run(&["federation", "peers"]);
    assert!(!out.status.success(), "alice could use bob's admin API");
    // The same config pointed back at alice's own coordinator works: the refusal above was bob's.
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace(&fed.member("bob").grpc, &fed.member("alice").grpc);
    std::fs::write(
        &cfg_path,
        text.replace("coordinator@bob.collective.local", "coordinator@alice.collective.local"),
    )
    .unwrap();
    let out = run(&["ls", "/"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_datastore_still_reads_after_any_one_coordinator_restarts() {
    let fed = Cluster::federation("restarts", 3, 2);
    fed.ok_as("bob", &["datastore", "grant", "/backup", "*@*.collective.local", "read"]);
    fed.ok_as("alice", &["datastore", "grant", "/media", "*@*.collective.local", "read"]);
    let files: Vec<(&str, &str, Vec<u8>)> = vec![
        ("alice", "/media/a.bin", random_bytes(2_500_000, 11)),
        ("bob", "/backup/b.bin", random_bytes(2_500_000, 12)),
        ("carol", "/shared/c.bin", random_bytes(2_500_000, 13)),
    ];
    for (who, path, data) in &files {
        let src = fed.write_local(&format!("src-{who}"), data);
        fed.ok_as(who, &["put", p(&src), path]);
    }
    let read_all = |round: &str| {
        for reader in ["alice", "bob", "carol"] {
            for (_, path, data) in &files {
                let dst = fed.path(&format!("{round}-{reader}-{}", path.replace('/', "_")));
                let out = fed.cmd_as(reader).args(["get", path, p(&dst)]).output().unwrap();
                assert!(
                    out.status.success(),
                    "{round}: {reader} cannot read {path}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(&std::fs::read(&dst).unwrap(), data, "{round}: {reader} read wrong bytes of {path}");
            }
        }
    };
    read_all("before");
    for m in ["alice", "bob", "carol"] {
        fed.kill9(&format!("coordinator@{m}"));
        fed.restart(&format!("coordinator@{m}"));
        fed.wait_ready();
        let domain = fed.member(m).domain.clone();
        within(Duration::from_secs(20), "the restarted member alive everywhere", || {
            ["alice", "bob", "carol"]
                .iter()
                .all(|o| state_of(&fed.peer_states(o), &domain).as_deref() == Some("alive"))
        });
        read_all(&format!("after-{m}-restart"));
    }
}

#[test]
fn backup_copies_land_on_two_members_and_host_members_store_only_ciphertext() {
    let fed = Cluster::federation("backup", 3, 2);
    // A file with a recognisable plaintext pattern between random stretches (many chunks).
    let marker = b"FAMILY-PHOTO-PLAINTEXT-MARKER:";
    let mut data = Vec::new();
    for i in 0..40u64 {
        data.extend_from_slice(&random_bytes(200_000, 100 + i));
        for _ in 0..50 {
            data.extend_from_slice(marker);
        }
    }
    let src = fed.write_local("photos.tar", &data);
    // Placement spreads over the members bob knows to be alive with room: wait until he
    // knows both others (on a loaded machine gossip may take a moment after start).
    within(Duration::from_secs(30), "bob to know alice's and carol's capacity", || {
        let v: serde_json::Value = serde_json::from_str(&fed.ok_as("bob", &["federation", "peers", "--json"])).unwrap();
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "alive" && m["capacity_bytes"].as_u64().unwrap_or(0) > 0)
            .count()
            >= 3
    });
    fed.ok_as("bob", &["put", p(&src), "/backup/photos.tar"]);

    // Where each chunk lives: chunk id → members holding it.
    let mut holders: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (node, path) in fed.stored_chunks() {
        let member = node.split_once('@').unwrap().1.to_string();
        holders
            .entry(path.file_name().unwrap().to_string_lossy().into_owned())
            .or_default()
            .push(member);
    }
    assert!(holders.len() > 5, "expected many chunks, got {}", holders.len());
    let bob = fed.member("bob").domain.clone();
    let mut hosts_used = std::collections::BTreeSet::new();
    for (id, members) in &holders {
        let mut distinct = members.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(members.len(), 2, "chunk {id} has {} copies: {members:?}", members.len());
        assert_eq!(distinct.len(), 2, "both copies of chunk {id} are on one member: {members:?}");
        hosts_used.extend(distinct.into_iter().filter(|m| *m != bob));
    }
    assert_eq!(
        hosts_used.len(),
        2,
        "copies should spread over alice and carol: {hosts_used:?}; bob sees {}",
        fed.ok_as("bob", &["federation", "peers", "--json"])
    );

    // No store anywhere holds the plaintext: not the hosts, and not even bob's own nodes.
    for (node, path) in fed.stored_chunks() {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "{node} stores plaintext in {}",
            path.display()
        );
    }

    // It reads back byte-exact, for bob and for a reader of another member he shares with.
    let back = fed.path("photos.back");
    fed.ok_as("bob", &["get", "/backup/photos.tar", p(&back)]);
    assert!(std::fs::read(&back).unwrap() == data, "bob read back different bytes");
    fed.ok_as("bob", &["datastore", "grant", "/backup", "carol@carol.collective.local", "read"]);
    let back = fed.path("photos.carol");
    fed.ok_as("carol", &["get", "/backup/photos.tar", p(&back)]);
    assert!(std::fs::read(&back).unwrap() == data, "carol read back different bytes");

    // Usage: bob uses what alice and carol give.
    let v: serde_json::Value = serde_json::from_str(&fed.ok_as("bob", &["federation", "usage", "--json"])).unwrap();
    let of = |m: &str, k: &str| {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["member"] == m)
            .map(|x| x[k].as_u64().unwrap())
            .unwrap()
    };
    let _ = of(&bob, "uses_bytes");
    within(Duration::from_secs(10), "bob's usage elsewhere counted", || {
        let v: serde_json::Value = serde_json::from_str(&fed.ok_as("bob", &["federation", "usage", "--json"])).unwrap();
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["member"] == bob.as_str() && x["uses_bytes"].as_u64().unwrap() >= data.len() as u64)
    });
    within(Duration::from_secs(10), "hosts' usage gossiped", || {
        let v: serde_json::Value = serde_json::from_str(&fed.ok_as("bob", &["federation", "usage", "--json"])).unwrap();
        let given: u64 = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["gives_bytes"].as_u64().unwrap())
            .sum();
        given >= data.len() as u64
    });
    // alice's /media is a media datastore: it stays on alice's nodes and is not encrypted.
    fed.ok_as("alice", &["put", p(&src), "/media/photos.tar"]);
    let alice = fed.member("alice").domain.clone();
    let media_copies = fed
        .stored_chunks()
        .into_iter()
        .filter(|(_, path)| std::fs::read(path).unwrap().windows(marker.len()).any(|w| w == marker))
        .map(|(node, _)| node)
        .collect::<Vec<_>>();
    assert!(!media_copies.is_empty());
    assert!(media_copies.iter().all(|n| n.ends_with(&alice)), "{media_copies:?}");
}

#[test]
fn each_redeemed_invite_adds_a_context_to_switch_between() {
    let fed = Cluster::federation("contexts", 3, 2);
    let data = random_bytes(40_000, 9);
    let src = fed.write_local("a.txt", &data);
    fed.ok_as("alice", &["put", p(&src), "/media/a.txt"]);
    fed.ok_as("carol", &["put", p(&src), "/shared/c.txt"]);
    let home = fed.path("home");
    let user = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .env_remove("COLLECTIVE_CONFIG")
            .env_remove("COLLECTIVE_CONTEXT")
            .env("XDG_CONFIG_HOME", &home)
            .args(args)
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = user(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Two invites from two members: two contexts, the first one current.
    let from_alice = fed
        .ok_as("alice", &["invite", "generate", "--grant", "/media:read"])
        .trim()
        .to_string();
    let from_carol = fed
        .ok_as("carol", &["invite", "generate", "--grant", "/shared:read"])
        .trim()
        .to_string();
    ok(&["invite", "redeem", &from_alice, "--name", "dave"]);
    ok(&["invite", "redeem", &from_carol, "--name", "dave", "--context", "carols"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&["context", "list", "--json"])).unwrap();
    assert_eq!(v["current"], "alice.collective.local", "{v}");
    let names: Vec<&str> = v["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["alice.collective.local", "carols"]);
    assert_eq!(v["contexts"][1]["principal"], "dave@carol.collective.local");

    // The current context, and --context for one command.
    assert!(ok(&["ls", "/media"]).contains("a.txt"));
    assert!(ok(&["--context", "carols", "ls", "/shared"]).contains("c.txt"));
    assert!(
        !ok(&["--context", "carols", "ls", "/"]).contains("media"),
        "carol's dave sees alice's /media"
    );

    // Switch, then forget one.
    ok(&["context", "use", "carols"]);
    assert!(ok(&["ls", "/shared"]).contains("c.txt"));
    let err = String::from_utf8_lossy(&user(&["context", "use", "nope"]).stderr).into_owned();
    assert!(err.contains("no context nope"), "{err}");
    ok(&["context", "rm", "carols"]);
    assert!(!home.join("collective/contexts/carols").exists(), "its key should be deleted");
    let v: serde_json::Value = serde_json::from_str(&ok(&["context", "list", "--json"])).unwrap();
    assert_eq!(v["current"], "alice.collective.local", "{v}");
    assert!(ok(&["ls", "/media"]).contains("a.txt"));
    // A third redeem from the same member gets a name of its own instead of replacing the first.
    let again = fed
        .ok_as("alice", &["invite", "generate", "--grant", "/media:read"])
        .trim()
        .to_string();
    ok(&["invite", "redeem", &again, "--name", "erin"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&["context", "list", "--json"])).unwrap();
    let names: Vec<&str> = v["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["alice.collective.local", "alice.collective.local-2"]);
}
