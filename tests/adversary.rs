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
        .env("USER", "Grand_Pa")
        .args(["invite", "redeem", &code, "--out"])
        .arg(fed.path("redeemed-default"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("using the name grand-pa") && text.contains("grand-pa@alice.collective.local"),
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

/// What the CLI never sends: a sharer's raw Admin calls with a negative expiry (once read
/// as "for good"), one past the end of time, more rights than it holds, and
/// an invite for more than it holds. Each is refused and no grant changes; an invite it
/// may make gives grants that end when its own do.
#[test]
fn a_sharer_crafting_admin_requests_cannot_give_more_or_longer_than_it_holds() {
    use collective_proto::v1::admin_client::AdminClient;
    use collective_proto::v1::{GenerateInviteRequest, GrantRequest, RevokeRequest};
    let c = Cluster::start("adv-craft", 1, 1);
    c.ok(&["datastore", "create", "/photos", "--strategy", "media", "--replicas", "1"]);
    c.second_user("kid");
    c.second_user("aunt");
    c.ok(&[
        "datastore",
        "grant",
        "/photos",
        "kid@home.collective.local",
        "read,share",
        "--until",
        "1h",
    ]);
    c.ok(&["datastore", "grant", "/photos", "aunt@home.collective.local", "read,write"]);
    let grants = || c.ok(&["datastore", "info", "/photos", "--json"]);
    let before = grants();
    let certs = c.path("kid");
    let kid = collective_pki::TlsIdentity::load(&c.dir.join("certs/ca.crt"), &certs.join("kid.crt"), &certs.join("kid.key")).unwrap();
    let coordinator: collective_core::Principal = "coordinator@home.collective.local".parse().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let code = rt.block_on(async {
        let ch = collective_rpc::channel(&kid, &c.proc("coordinator").grpc, &coordinator).unwrap();
        let mut admin = AdminClient::new(ch);
        let grant = |subject: &str, rights: &str, until_ms: i64| GrantRequest {
            path: "/photos".into(),
            subject: subject.into(),
            rights: rights.into(),
            until_ms,
        };
        use tonic::Code::{InvalidArgument, PermissionDenied};
        // Within kid's own hour, so only the rights decide.
        let soon = (collective_core::unix_ms_now() + 1_800_000) as i64;
        for (what, req, code, word) in [
            (
                "an expiry before the epoch",
                grant("*@home.collective.local", "read", -1),
                InvalidArgument,
                "never negative",
            ),
            (
                "an expiry past the end of time",
                grant("*@home.collective.local", "read", i64::MAX),
                PermissionDenied,
                "end at",
            ),
            ("no expiry", grant("*@home.collective.local", "read", 0), PermissionDenied, "end at"),
            (
                "more rights than held",
                grant("*@home.collective.local", "read,write", 0),
                PermissionDenied,
                "lacks the write right",
            ),
            (
                "replacing a wider grant",
                grant("aunt@home.collective.local", "read", soon),
                PermissionDenied,
                "lacks the write right",
            ),
        ] {
            let s = admin.grant(req).await.expect_err(what);
            assert_eq!(s.code(), code, "{what}: {s:?}");
            assert!(s.message().contains(word), "{what}: {}", s.message());
        }
        let s = admin
            .revoke(RevokeRequest {
                path: "/photos".into(),
                subject: "aunt@home.collective.local".into(),
            })
            .await
            .expect_err("revoking a wider grant");
        assert!(s.message().contains("lacks the write right"), "{}", s.message());
        let s = admin
            .generate_invite(GenerateInviteRequest {
                grants: vec!["/photos:read+write".into()],
                ..Default::default()
            })
            .await
            .expect_err("an invite for more than held");
        assert!(s.message().contains("lacks the write right"), "{}", s.message());
        admin
            .generate_invite(GenerateInviteRequest {
                grants: vec!["/photos:read".into()],
                ..Default::default()
            })
            .await
            .expect("an invite for what kid holds")
            .into_inner()
            .code
    });
    assert_eq!(grants(), before, "a refused request changed the grants");
    let out = c
        .cmd()
        .env_remove("COLLECTIVE_CONFIG")
        .env("XDG_CONFIG_HOME", c.path("xdg"))
        .args(["invite", "redeem", &code, "--name", "cousin", "--out"])
        .arg(c.path("redeemed-cousin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_str(&grants()).unwrap();
    let cousin = info["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["subject"] == "cousin@home.collective.local")
        .cloned()
        .unwrap_or_else(|| panic!("no grant for cousin: {info}"));
    assert!(cousin["until"].is_string(), "the invite's grant outlasts kid's own: {cousin}");
}

/// Bob's member CA is name-constrained to bob.collective.local, which lets it sign
/// `x@y.bob.collective.local` too: a principal that would pass for a member of its own (and
/// for a removed member coming back). Refused at the TLS handshake and in gossip, with the
/// rule named in the refusing coordinator's log; grants to "every member" do not cover it.
#[test]
fn a_certificate_for_a_name_below_a_member_domain_is_refused_everywhere() {
    use collective_proto::v1::PathRequest;
    use collective_proto::v1::metadata_client::MetadataClient;
    let fed = Cluster::federation("adv-subdomain", 2, 1);
    let bob = fed.member("bob").clone();
    fed.ok_as("alice", &["datastore", "create", "/open", "--strategy", "media", "--replicas", "1"]);
    fed.ok_as("alice", &["datastore", "grant", "/open", "*@*.collective.local", "read"]);
    let note = fed.write_local("note.txt", b"for every member");
    fed.ok_as("alice", &["put", p(&note), "/open/note.txt"]);
    // What bob's CA can sign: a client certificate for x@y.bob.collective.local.
    let ca_pem = std::fs::read_to_string(bob.ca_dir.join("ca.crt")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(bob.ca_dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, &ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "x@y.bob.collective.local");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "y.bob.collective.local");
    params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "client");
    params.subject_alt_names = vec![rcgen::SanType::DnsName("x.y.bob.collective.local".try_into().unwrap())];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = fed.path("subdomain");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("x.crt"), format!("{}{}", cert.pem(), ca_pem)).unwrap();
    collective_pki::write_private_file(&dir.join("x.key"), key.serialize_pem().as_bytes()).unwrap();
    let x = collective_pki::TlsIdentity::load(&bob.ca_dir.join("root.crt"), &dir.join("x.crt"), &dir.join("x.key"))
        .expect("a certificate bob's CA signed loads");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for m in ["alice", "bob"] {
        let member = fed.member(m).clone();
        let coordinator: collective_core::Principal = format!("coordinator@{}", member.domain).parse().unwrap();
        let r = rt.block_on(async {
            let ch = collective_rpc::channel(&x, &member.grpc, &coordinator).unwrap();
            MetadataClient::new(ch).stat(PathRequest { path: "/".into() }).await
        });
        assert!(r.is_err(), "{m}'s coordinator served x@y.bob.collective.local: {r:?}");
        let log = fed.member_procs(m).into_iter().find(|p| p.role == "coordinator").unwrap().log;
        common::within(Duration::from_secs(10), "the refusal to be logged", || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("x@y.bob.collective.local is refused: a member's domain is exactly one name below the federation domain")
        });
    }
    // The data is intact, and the grant to every member still works for members.
    within(Duration::from_secs(30), "bob to learn of /open", || {
        fed.ok_as("bob", &["datastore", "ls"]).contains("/open ")
    });
    assert_eq!(fed.ok_as("bob", &["cat", "/open/note.txt"]), "for every member");
}

/// A coordinator that lies about paths (compromised, or answering in bad faith): the files
/// `get -r` would write come from its `Walk`. It serves a tree with its own certificate and
/// one lie at a time; the client refuses each, naming the path, and writes nothing outside
/// its destination.
mod lying_coordinator {
    use collective_proto::v1::metadata_server::{Metadata, MetadataServer};
    use collective_proto::v1::*;
    use tonic::codegen::BoxStream;
    use tonic::{Request, Response, Status};

    pub struct Liar {
        pub entries: Vec<FileAttr>,
    }

    fn no<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    #[tonic::async_trait]
    impl Metadata for Liar {
        type WalkStream = BoxStream<WalkBatch>;

        async fn stat(&self, r: Request<PathRequest>) -> Result<Response<FileAttr>, Status> {
            Ok(Response::new(FileAttr {
                path: r.into_inner().path,
                kind: FileKind::Dir as i32,
                mode: 0o755,
                ..Default::default()
            }))
        }
        async fn walk(&self, _: Request<PathRequest>) -> Result<Response<Self::WalkStream>, Status> {
            let batch = WalkBatch {
                entries: self.entries.clone(),
            };
            Ok(Response::new(Box::pin(tonic::codegen::tokio_stream::iter(vec![Ok(batch)]))))
        }
        async fn read_plan(&self, r: Request<ReadPlanRequest>) -> Result<Response<ReadPlanResponse>, Status> {
            let files = r
                .into_inner()
                .paths
                .into_iter()
                .map(|path| FilePlan {
                    attr: Some(FileAttr {
                        path,
                        kind: FileKind::File as i32,
                        mode: 0o644,
                        ..Default::default()
                    }),
                    chunks: vec![],
                })
                .collect();
            Ok(Response::new(ReadPlanResponse { files }))
        }
        async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
            no()
        }
        async fn mkdir(&self, _: Request<MkdirRequest>) -> Result<Response<FileAttr>, Status> {
            no()
        }
        async fn remove(&self, _: Request<RemoveRequest>) -> Result<Response<RemoveResponse>, Status> {
            no()
        }
        async fn rename(&self, _: Request<RenameRequest>) -> Result<Response<FileAttr>, Status> {
            no()
        }
        async fn symlink(&self, _: Request<SymlinkRequest>) -> Result<Response<FileAttr>, Status> {
            no()
        }
        async fn set_attr(&self, _: Request<SetAttrRequest>) -> Result<Response<FileAttr>, Status> {
            no()
        }
        async fn plan_write(&self, _: Request<PlanWriteRequest>) -> Result<Response<PlanWriteResponse>, Status> {
            no()
        }
        async fn replace_target(&self, _: Request<ReplaceTargetRequest>) -> Result<Response<ChunkPlacement>, Status> {
            no()
        }
        async fn commit_files(&self, _: Request<CommitFilesRequest>) -> Result<Response<CommitFilesResponse>, Status> {
            no()
        }
        async fn report_bad_replica(&self, _: Request<ReportBadReplicaRequest>) -> Result<Response<ReportBadReplicaResponse>, Status> {
            no()
        }
        async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
            no()
        }
        async fn write_policy(&self, _: Request<PathRequest>) -> Result<Response<WritePolicyResponse>, Status> {
            no()
        }
    }

    pub fn server(entries: Vec<FileAttr>) -> MetadataServer<Liar> {
        MetadataServer::new(Liar { entries })
    }
}

#[test]
fn a_coordinator_sending_bad_paths_gets_an_error_and_nothing_is_written_outside_the_destination() {
    use collective_proto::v1::{FileAttr, FileKind};
    let c = Cluster::start("adv-paths", 1, 1);
    let outside = c.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let file = |path: &str| FileAttr {
        path: path.into(),
        kind: FileKind::File as i32,
        mode: 0o644,
        ..Default::default()
    };
    let link = FileAttr {
        path: "/t/d".into(),
        kind: FileKind::Symlink as i32,
        target: outside.display().to_string(),
        ..Default::default()
    };
    let lies: Vec<(&str, Vec<FileAttr>, &str)> = vec![
        ("a '..' part", vec![file("/t/ok"), file("/t/../escaped")], "/t/../escaped"),
        (
            "a path outside the tree",
            vec![file(&format!("{}/abs", outside.display()))],
            "is not below /t/",
        ),
        (
            "a file through a link it sent first",
            vec![link, file("/t/d/planted")],
            "nothing is written through links",
        ),
        ("an empty part", vec![file("/t//x")], "an empty part"),
    ];
    let certs = c.dir.join("certs");
    let coordinator = collective_pki::TlsIdentity::load(
        &certs.join("ca.crt"),
        &certs.join("coordinator.crt"),
        &certs.join("coordinator.key"),
    )
    .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for (i, (what, entries, word)) in lies.into_iter().enumerate() {
        let (addr, incoming) = rt
            .block_on(collective_rpc::tls_incoming(&coordinator, "127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let server = rt.spawn(
            tonic::transport::Server::builder()
                .add_service(lying_coordinator::server(entries))
                .serve_with_incoming(incoming),
        );
        // The user's own client config, pointed at the liar.
        let text = std::fs::read_to_string(&c.client_config).unwrap();
        let cfg = c.path(&format!("liar-{i}.toml"));
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("coordinator =") {
                    format!("coordinator = \"{addr}\"")
                } else {
                    l.into()
                }
            })
            .collect();
        std::fs::write(&cfg, text.join("\n")).unwrap();
        let dest = c.path(&format!("dest-{i}"));
        let out = c.cli_with(&cfg, &["get", "-r", "/t", p(&dest)]);
        server.abort();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: the download succeeded");
        assert!(err.contains("the server sent the path") && err.contains(word), "{what}: {err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "{what}: a file landed outside");
        assert!(!c.path("escaped").exists() && !c.dir.join("escaped").exists(), "{what}");
    }
}

/// The third reproduction of issue 31: bob's node hosts chunks of alice's backup
/// datastore (ciphertext, as designed) and alice lets bob write into her `/drop`. bob takes
/// a chunk id from the file names on his node's disk and commits a file naming it, over
/// the ordinary API with his own certificate. A chunk id is not a capability: the commit
/// is refused, nothing appears, and alice's file reads as before.
#[test]
fn a_member_naming_hosted_chunk_ids_in_a_commit_gets_nothing() {
    use collective_proto::v1::metadata_client::MetadataClient;
    use collective_proto::v1::{ChunkRef, CommitFilesRequest, FileCommit};
    let fed = Cluster::federation("adv-chunk-ids", 2, 1);
    fed.ok_as(
        "alice",
        &["datastore", "create", "/vault", "--strategy", "backup", "--replicas", "2"],
    );
    fed.ok_as("alice", &["datastore", "create", "/drop", "--strategy", "media", "--replicas", "1"]);
    fed.ok_as("alice", &["datastore", "grant", "/drop", "bob@bob.collective.local", "read,write"]);
    let secret = random_bytes(100_000, 31);
    let f = fed.write_local("secret.bin", &secret);
    fed.ok_as("alice", &["put", p(&f), "/vault/secret.bin"]);
    within(Duration::from_secs(30), "bob to learn of /drop", || {
        fed.ok_as("bob", &["datastore", "ls"]).contains("/drop ")
    });
    // What bob's own disk tells him: the ids of alice's chunks his node hosts.
    let bobs = fed.member("bob").domain.clone();
    let hosted: Vec<(Vec<u8>, u64)> = fed
        .stored_chunks()
        .into_iter()
        .filter(|(node, _)| node.ends_with(&format!("@{bobs}")))
        .filter_map(|(_, path)| {
            let name = path.file_name()?.to_str()?.get(..64)?.to_string();
            let id: Option<Vec<u8>> = (0..32).map(|i| u8::from_str_radix(&name[2 * i..2 * i + 2], 16).ok()).collect();
            Some((id?, std::fs::metadata(&path).ok()?.len()))
        })
        .collect();
    assert!(!hosted.is_empty(), "bob's node hosts none of alice's backup chunks");
    // bob's client certificate, as his client.toml names it.
    let cfg = std::fs::read_to_string(&fed.member("bob").client_config).unwrap();
    let field = |k: &str| {
        let v = cfg
            .lines()
            .find(|l| l.starts_with(&format!("{k} =")))
            .unwrap()
            .split('"')
            .nth(1)
            .unwrap()
            .to_string();
        let path = std::path::PathBuf::from(&v);
        if path.is_absolute() {
            path
        } else {
            fed.member("bob").client_config.parent().unwrap().join(path)
        }
    };
    let bob = collective_pki::TlsIdentity::load(&field("ca"), &field("cert"), &field("key")).unwrap();
    let coordinator: collective_core::Principal = format!("coordinator@{bobs}").parse().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for (i, (id, size)) in hosted.iter().take(3).enumerate() {
        let r = rt.block_on(async {
            let ch = collective_rpc::channel(&bob, &fed.member("bob").grpc, &coordinator).unwrap();
            MetadataClient::new(ch)
                .commit_files(CommitFilesRequest {
                    files: vec![FileCommit {
                        path: format!("/drop/stolen-{i}"),
                        size: *size,
                        mode: 0o644,
                        mtime_ms: 0,
                        chunks: vec![ChunkRef {
                            id: id.clone().into(),
                            offset: 0,
                            size: *size,
                            stored_on: vec![],
                            seal: Default::default(),
                        }],
                        parents: false,
                    }],
                })
                .await
        });
        let s = r.expect_err("a commit naming a hosted chunk id was taken");
        assert!(s.message().contains("was not uploaded by this write"), "{}", s.message());
        let err = fed.fails_as("alice", &["cat", &format!("/drop/stolen-{i}")]);
        assert!(err.contains("no such file"), "{err}");
    }
    let back = fed.path("back.bin");
    fed.ok_as("alice", &["get", "/vault/secret.bin", p(&back)]);
    assert!(std::fs::read(&back).unwrap() == secret, "alice's file is intact");
}
