//! Attacks by members, users and strangers who hold valid certificates of a real
//! federation (`dev up --members N` on loopback), made with the CLI and with requests the
//! CLI would never send. Each test shows the attack fails, with an error that says why,
//! and that the victim's data is intact afterwards. `docs/security.md` points here.

mod common;

use std::time::Duration;

use common::{Cluster, p, random_bytes, within};

fn rfc3339_in(secs: u64) -> String {
    (time::OffsetDateTime::now_utc() + std::time::Duration::from_secs(secs))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The first CLI reproduction of issue 31: bob, granted `read,share` on alice's `/esc`,
/// gave carol (and then everyone) write and delete, and carol overwrote alice's file.
#[test]
fn a_sharer_gives_only_rights_it_holds_and_never_past_their_end() {
    let fed = Cluster::federation("adv-share", 3, 1);
    fed.ok_as("alice", &["datastore", "create", "/esc", "--strategy", "media", "--replicas", "1"]);
    let original = random_bytes(40_000, 1);
    let src = fed.write_local("will.txt", &original);
    fed.ok_as("alice", &["put", p(&src), "/esc/will.txt"]);
    fed.ok_as("alice", &["datastore", "grant", "/esc", "bob@bob.collective.local", "read,share"]);
    for m in ["bob", "carol"] {
        within(Duration::from_secs(30), "the datastore to reach every member's catalog", || {
            fed.ok_as(m, &["datastore", "ls"]).contains("/esc ")
        });
    }

    // More than bob holds, to one member or to the whole federation: refused, nothing granted.
    let err = fed.fails_as(
        "bob",
        &["datastore", "grant", "/esc", "carol@carol.collective.local", "read,write,delete"],
    );
    assert!(err.contains("lacks the write+delete right on /esc"), "{err}");
    let err = fed.fails_as(
        "bob",
        &["datastore", "grant", "/esc", "*@*.collective.local", "read,write,delete,share"],
    );
    assert!(err.contains("lacks the write+delete right on /esc"), "{err}");
    let evil = fed.write_local("evil.txt", b"overwritten");
    let err = fed.fails_as("carol", &["put", p(&evil), "/esc/will.txt"]);
    assert!(err.contains("lacks"), "{err}");
    // Nor can bob cut alice's own rights, or replace a grant that gives more than he holds.
    fed.ok_as(
        "alice",
        &["datastore", "grant", "/esc", "carol@carol.collective.local", "read,write"],
    );
    let err = fed.fails_as("bob", &["datastore", "grant", "/esc", "carol@carol.collective.local", "read"]);
    assert!(err.contains("lacks the write right on /esc"), "{err}");
    let err = fed.fails_as("bob", &["datastore", "revoke", "/esc", "carol@carol.collective.local"]);
    assert!(err.contains("lacks the write right on /esc"), "{err}");
    fed.ok_as("alice", &["datastore", "revoke", "/esc", "carol@carol.collective.local"]);

    // What bob holds he can give, as long as he holds it.
    fed.ok_as("bob", &["datastore", "grant", "/esc", "carol@carol.collective.local", "read"]);
    let got = fed.path("carol-will.txt");
    fed.ok_as("carol", &["get", "/esc/will.txt", p(&got)]);
    assert_eq!(std::fs::read(&got).unwrap(), original, "alice's file is intact");

    // A time-limited sharer: nothing it gives outlasts its own grant.
    fed.ok_as(
        "alice",
        &[
            "datastore",
            "grant",
            "/esc",
            "bob@bob.collective.local",
            "read,share",
            "--until",
            &rfc3339_in(3600),
        ],
    );
    let err = fed.fails_as("bob", &["datastore", "grant", "/esc", "*@carol.collective.local", "read"]);
    assert!(err.contains("own rights on /esc end at") && err.contains("--until"), "{err}");
    let carols_until = |secs: u64| {
        let until = rfc3339_in(secs);
        let args = ["datastore", "grant", "/esc", "*@carol.collective.local", "read", "--until", &until];
        fed.cmd_as("bob").args(args).output().unwrap()
    };
    assert!(carols_until(1800).status.success(), "within bob's own time");
    let out = carols_until(7200);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a grant outlasting bob's own was made");
    assert!(err.contains("end at"), "{err}");
}

/// The second CLI reproduction: alice issued a certificate for `mom`, granted mom
/// `/family`, and a stranger redeemed an invite for `/pub:read` with `--name mom`.
#[test]
fn a_name_any_certificate_carried_is_never_given_again_and_a_refused_name_keeps_the_invite() {
    let fed = Cluster::federation("adv-names", 2, 1);
    let alice = fed.member("alice").clone();
    fed.ok_as(
        "alice",
        &["datastore", "create", "/family", "--strategy", "media", "--replicas", "1"],
    );
    fed.ok_as("alice", &["datastore", "create", "/pub", "--strategy", "media", "--replicas", "1"]);
    let secret = fed.write_local("secret.txt", b"the family's secret");
    fed.ok_as("alice", &["put", p(&secret), "/family/secret.txt"]);
    let issue = |name: &str| {
        std::process::Command::new(common::BIN)
            .args(["ca", "issue", "--ca", p(&alice.ca_dir), "--role", "client", "--name", name, "--out"])
            .arg(fed.path(&format!("issued-{name}")))
            .output()
            .unwrap()
    };
    assert!(issue("mom").status.success());
    fed.ok_as(
        "alice",
        &["datastore", "grant", "/family", "mom@alice.collective.local", "read,write"],
    );

    // `ca issue` twice for one name: refused, with a free name offered.
    let again = issue("mom");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "a second certificate for mom was issued");
    assert!(
        err.contains("mom@alice.collective.local has been the name of a certificate") && err.contains("mom-2"),
        "{err}"
    );

    // The stranger's invite: the taken name is refused and the invite is not used up.
    let code = fed
        .ok_as("alice", &["invite", "generate", "--grant", "/pub:read", "--max-uses", "1"])
        .trim()
        .to_string();
    let redeem = |name: &str| {
        fed.cmd_as("alice")
            .env_remove("COLLECTIVE_CONFIG")
            .env("XDG_CONFIG_HOME", fed.path("xdg"))
            .args(["invite", "redeem", &code, "--name", name, "--out"])
            .arg(fed.path(&format!("redeemed-{name}")))
            .output()
            .unwrap()
    };
    let out = redeem("mom");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the stranger became mom");
    assert!(err.contains("has been the name of a certificate") && err.contains("mom-2"), "{err}");
    let out = redeem("stranger");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stranger = fed.path("redeemed-stranger").join("client.toml");
    let out = fed.cli_with(&stranger, &["cat", "/family/secret.txt"]);
    assert!(!out.status.success(), "the stranger read /family");
    assert!(String::from_utf8_lossy(&out.stderr).contains("lacks the read right"));
    // A name an invite gave is taken for `ca issue` too.
    assert!(!issue("stranger").status.success());

    // Without --name, the local user name is proposed (not an error about $USER).
    let code = fed
        .ok_as("alice", &["invite", "generate", "--grant", "/pub:read"])
        .trim()
        .to_string();
    let out = fed
        .cmd_as("alice")
        .env_remove("COLLECTIVE_CONFIG")
        .env("XDG_CONFIG_HOME", fed.path("xdg"))
        .env("USER", "Grandpa")
        .args(["invite", "redeem", &code, "--out"])
        .arg(fed.path("redeemed-default"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("using the name grandpa") && text.contains("grandpa@alice.collective.local"),
        "{text}"
    );
}

/// Moves stay inside a datastore: across datastores the CLI says to copy, and a
/// datastore's root cannot be renamed away. (The mount's EXDEV is in tests/mount.rs.)
#[test]
fn a_move_across_datastores_is_refused_and_says_to_copy() {
    let c = Cluster::start("adv-mv", 1, 1);
    c.ok(&["datastore", "create", "/photos", "--strategy", "media", "--replicas", "1"]);
    c.ok(&["datastore", "create", "/vault", "--strategy", "media", "--replicas", "1"]);
    let data = random_bytes(20_000, 5);
    let f = c.write_local("a.jpg", &data);
    c.ok(&["put", p(&f), "/photos/a.jpg"]);
    let err = c.fails(&["mv", "/photos/a.jpg", "/vault/a.jpg"]);
    assert!(err.contains("different datastores") && err.contains("copy instead"), "{err}");
    let err = c.fails(&["mv", "/photos", "/pictures"]);
    assert!(err.contains("a datastore's root stays where it is"), "{err}");
    let back = c.path("back.jpg");
    c.ok(&["get", "/photos/a.jpg", p(&back)]);
    assert_eq!(std::fs::read(&back).unwrap(), data);
    c.ok(&["mv", "/photos/a.jpg", "/photos/b.jpg"]);
}
