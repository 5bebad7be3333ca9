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
    let bob = client_identity(&fed, "bob");
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

/// A certificate from member `m`'s CA, issued with the plain CLI (a member can always
/// issue its own), loaded as an identity the harness speaks with.
fn issue_identity(fed: &Cluster, m: &str, role: &str, name: &str) -> (collective_pki::TlsIdentity, std::path::PathBuf) {
    let member = fed.member(m).clone();
    let out = fed.path(&format!("issued-{m}-{name}"));
    let r = std::process::Command::new(common::BIN)
        .args(["ca", "issue", "--ca", p(&member.ca_dir), "--role", role, "--name", name, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let id = collective_pki::TlsIdentity::load(
        &out.join("ca.crt"),
        &out.join(format!("{name}.crt")),
        &out.join(format!("{name}.key")),
    )
    .unwrap();
    (id, out.join(format!("{name}.crt")))
}

/// One anti-entropy exchange with member `m`'s coordinator, as `id`: hands it `states` and
/// returns what it holds afterwards, decoded by member domain.
fn exchange(
    rt: &tokio::runtime::Runtime,
    fed: &Cluster,
    id: &collective_pki::TlsIdentity,
    m: &str,
    states: Vec<collective_proto::v1::SignedState>,
) -> Result<Vec<(collective_proto::v1::MemberState, collective_proto::v1::SignedState)>, tonic::Status> {
    use collective_proto::v1::federation_client::FederationClient;
    use prost::Message;
    let member = fed.member(m).clone();
    let coordinator: collective_core::Principal = format!("coordinator@{}", member.domain).parse().unwrap();
    rt.block_on(async {
        let ch = collective_rpc::channel(id, &member.grpc, &coordinator).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let r = FederationClient::new(ch)
            .exchange(collective_proto::v1::ExchangeRequest { states })
            .await?;
        Ok(r.into_inner()
            .states
            .into_iter()
            .map(|s| (collective_proto::v1::MemberState::decode(s.state.as_ref()).unwrap(), s))
            .collect())
    })
}

/// `state` signed with `id`'s key, as a coordinator signs its own.
fn sign_state(id: &collective_pki::TlsIdentity, state: &collective_proto::v1::MemberState) -> collective_proto::v1::SignedState {
    use prost::Message;
    let key = collective_pki::TokenSigner::from_pkcs8(&id.pkcs8_der(), id.principal.to_string()).unwrap();
    let bytes = state.encode_to_vec();
    let mut msg = b"collective-state-v1".to_vec();
    msg.extend_from_slice(&bytes);
    let chain = id.chain_der();
    collective_proto::v1::SignedState {
        signature: key.sign_raw(&msg).to_vec().into(),
        signer: collective_pki::fingerprint_bytes(&chain[0]).to_vec().into(),
        chain: chain.into_iter().map(Into::into).collect(),
        state: bytes.into(),
    }
}

/// Point 3: bob, with a coordinator certificate of his own CA, hands carol a state that
/// claims to be alice's (pointing her address at his machine), alice's real state altered
/// on the way, his own state back-dating a claim on alice's datastore, and a version pinned
/// in the future. carol keeps alice's real state, keeps routing alice's datastore to her,
/// and logs each refusal with its reason.
#[test]
fn a_member_relaying_forged_or_altered_gossip_states_changes_nothing() {
    use collective_proto::v1::CatalogEntry;
    use prost::Message;
    let fed = Cluster::federation("adv-gossip", 3, 1);
    fed.ok_as(
        "alice",
        &["datastore", "create", "/photos", "--strategy", "media", "--replicas", "1"],
    );
    fed.ok_as("alice", &["datastore", "grant", "/photos", "*@*.collective.local", "read"]);
    let note = fed.write_local("note.txt", b"alice's photo");
    fed.ok_as("alice", &["put", p(&note), "/photos/note.txt"]);
    within(Duration::from_secs(30), "carol to learn of /photos", || {
        fed.ok_as("carol", &["datastore", "ls"]).contains("/photos ")
    });
    let (relay, _) = issue_identity(&fed, "bob", "coordinator", "relay");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let alice_domain = fed.member("alice").domain.clone();
    let bob_domain = fed.member("bob").domain.clone();
    let held = exchange(&rt, &fed, &relay, "carol", vec![]).unwrap();
    let (alice_state, alice_signed) = held.iter().find(|(s, _)| s.member == alice_domain).cloned().unwrap();
    let (bob_state, _) = held.iter().find(|(s, _)| s.member == bob_domain).cloned().unwrap();
    let bob_grpc = fed.member("bob").grpc.clone();

    // 1. A state for alice, signed by bob.
    let mut forged = alice_state.clone();
    forged.grpc_addr = bob_grpc.clone();
    forged.version += 1_000;
    // 2. alice's real state, altered.
    let mut altered = alice_signed.clone();
    altered.state = MemberStateExt::with_addr(&alice_state, &bob_grpc).encode_to_vec().into();
    // 3. bob's own state claiming /photos "created at the epoch".
    let mut claim = bob_state.clone();
    claim.datastores.push(CatalogEntry {
        name: "photos".into(),
        owner: format!("bob@{bob_domain}"),
        created_ms: 1,
        ..Default::default()
    });
    claim.version = collective_core::unix_ms_now();
    // 4. bob's state pinned at a version no real one reaches.
    let mut pinned = bob_state.clone();
    pinned.version = u64::MAX - 1;
    let sent = vec![
        sign_state(&relay, &forged),
        altered,
        sign_state(&relay, &claim),
        sign_state(&relay, &pinned),
    ];
    exchange(&rt, &fed, &relay, "carol", sent).unwrap();

    let after = exchange(&rt, &fed, &relay, "carol", vec![]).unwrap();
    let alice_now = after.iter().find(|(s, _)| s.member == alice_domain).unwrap();
    assert_eq!(
        alice_now.0.grpc_addr, alice_state.grpc_addr,
        "carol took a forged address for alice"
    );
    let bob_now = after.iter().find(|(s, _)| s.member == bob_domain).unwrap();
    assert!(bob_now.0.version < u64::MAX - 1, "carol took a pinned version for bob");
    // carol still routes /photos to alice, and reads alice's file.
    assert_eq!(fed.ok_as("carol", &["cat", "/photos/note.txt"]), "alice's photo");
    let log = fed.member_procs("carol").into_iter().find(|p| p.role == "coordinator").unwrap().log;
    common::within(Duration::from_secs(10), "carol to log each refusal", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(&format!(
            "the state of {alice_domain} is signed by relay@{bob_domain}: a member signs only its own state"
        )) && text.contains(&format!("bad signature on the state of {alice_domain}"))
            && text.contains("more than 10 minutes ahead of our clock")
    });
    // alice's data is intact where she is.
    assert_eq!(fed.ok_as("alice", &["cat", "/photos/note.txt"]), "alice's photo");
}

/// A copy of a member state with another gRPC address (what a forger would change).
struct MemberStateExt;
impl MemberStateExt {
    fn with_addr(s: &collective_proto::v1::MemberState, addr: &str) -> collective_proto::v1::MemberState {
        collective_proto::v1::MemberState {
            grpc_addr: addr.to_string(),
            ..s.clone()
        }
    }
}

/// Point 3: a write through another member right after a datastore is created lands in
/// that datastore, not in the other member's own namespace, even before gossip carried
/// the new name; and a second claim on the name fails at `datastore create`.
#[test]
fn a_write_through_another_member_right_after_a_datastore_is_created_lands_in_it() {
    let fed = Cluster::federation("adv-fresh", 2, 1);
    // The members know each other (what gossip has not carried yet is the new name).
    within(Duration::from_secs(30), "bob to see alice alive", || {
        fed.peer_states("bob")
            .iter()
            .any(|(m, s)| m == "alice.collective.local" && s == "alive")
    });
    let note = fed.write_local("note.txt", b"written through bob");
    for round in 0..3 {
        let ds = format!("/fresh{round}");
        fed.ok_as("alice", &["datastore", "create", &ds, "--strategy", "media", "--replicas", "1"]);
        fed.ok_as("alice", &["datastore", "grant", &ds, "bob@bob.collective.local", "read,write"]);
        let put = fed
            .cmd_as("bob")
            .args(["put", p(&note), &format!("{ds}/from-bob.txt")])
            .output()
            .unwrap();
        if !put.status.success() {
            let log = fed.member_procs("bob").into_iter().find(|p| p.role == "coordinator").unwrap().log;
            panic!(
                "bob's put into {ds} failed: {}\nbob's coordinator:\n{}",
                String::from_utf8_lossy(&put.stderr),
                common::log_tail(&log, 40)
            );
        }
        assert_eq!(
            fed.ok_as("alice", &["cat", &format!("{ds}/from-bob.txt")]),
            "written through bob",
            "bob's write did not reach alice's {ds}"
        );
        let err = fed.fails_as("bob", &["datastore", "create", &ds, "--strategy", "media"]);
        assert!(
            err.contains(&format!("{ds} already exists in the federation (owned by alice.collective.local)")),
            "{err}"
        );
    }
}

/// Point 8: alice revokes one of her coordinator certificates; bob and carol refuse it
/// within a minute, and alice's other certificates keep working everywhere.
#[test]
fn a_certificate_a_member_revokes_is_refused_by_every_other_member_within_a_minute() {
    let fed = Cluster::federation("adv-revoke", 3, 1);
    fed.ok_as("bob", &["datastore", "create", "/bobs", "--strategy", "media", "--replicas", "1"]);
    fed.ok_as("bob", &["datastore", "grant", "/bobs", "alice@alice.collective.local", "read"]);
    let note = fed.write_local("note.txt", b"bob shares this");
    fed.ok_as("bob", &["put", p(&note), "/bobs/note.txt"]);
    let (spare, cert) = issue_identity(&fed, "alice", "coordinator", "spare");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for m in ["bob", "carol"] {
        exchange(&rt, &fed, &spare, m, vec![])
            .unwrap_or_else(|e| panic!("{m} refused alice's spare coordinator before it was revoked: {e}"));
    }
    let alice = fed.member("alice").clone();
    let r = std::process::Command::new(common::BIN)
        .args(["ca", "revoke", "--ca", p(&alice.ca_dir), p(&cert), "--reason", "key copied"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let started = std::time::Instant::now();
    for m in ["bob", "carol"] {
        within(
            Duration::from_secs(60).saturating_sub(started.elapsed()),
            "the revocation to reach every member",
            || exchange(&rt, &fed, &spare, m, vec![]).is_err(),
        );
    }
    eprintln!("alice's revocation was enforced by bob and carol after {:?}", started.elapsed());
    within(Duration::from_secs(30), "alice to learn of /bobs", || {
        fed.ok_as("alice", &["datastore", "ls"]).contains("/bobs ")
    });
    assert_eq!(fed.ok_as("alice", &["cat", "/bobs/note.txt"]), "bob shares this");
}

/// Member `m`'s user certificate, as its client.toml names it.
fn client_identity(fed: &Cluster, m: &str) -> collective_pki::TlsIdentity {
    let member = fed.member(m).clone();
    let cfg = std::fs::read_to_string(&member.client_config).unwrap();
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
            member.client_config.parent().unwrap().join(path)
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    collective_pki::TlsIdentity::load(&field("ca"), &field("cert"), &field("key")).unwrap()
}

/// The peak memory (VmHWM, bytes) of a process.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Point 7: a stranger holding only an invite code (the coordinator's fingerprint, no
/// certificate) sends a 32 MiB request to a service that needs a certificate, and an
/// oversized one to invite redemption. Both are answered with a clear error, the
/// coordinator's memory does not grow by the request's size, and it serves its member on.
#[test]
fn a_stranger_without_a_certificate_is_answered_before_its_request_is_read() {
    use collective_proto::v1::PathRequest;
    use collective_proto::v1::bootstrap_client::BootstrapClient;
    use collective_proto::v1::metadata_client::MetadataClient;
    let fed = Cluster::federation("adv-stranger", 2, 1);
    fed.ok_as("alice", &["datastore", "create", "/pub", "--strategy", "media", "--replicas", "1"]);
    let code = fed
        .ok_as("alice", &["invite", "generate", "--grant", "/pub:read"])
        .trim()
        .to_string();
    let (invite, _, _) = collective_pki::InviteCode::decode(&code).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = collective_pki::TlsIdentity::pinned_client_config(invite.fingerprint, collective_pki::ALPN_GRPC).unwrap();
    let alice = fed.member("alice").clone();
    let coordinator: collective_core::Principal = format!("coordinator@{}", alice.domain).parse().unwrap();
    let pid = fed.member_procs("alice").into_iter().find(|p| p.role == "coordinator").unwrap().pid;
    let before = peak_rss(pid);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (stat, redeem) = rt.block_on(async {
        let ch = collective_rpc::channel_with_config(tls, &alice.grpc, &coordinator).unwrap();
        let stat = MetadataClient::new(ch.clone())
            .max_encoding_message_size(64 << 20)
            .stat(PathRequest {
                path: "x".repeat(32 << 20),
            })
            .await;
        let redeem = BootstrapClient::new(ch)
            .redeem_invite(collective_proto::v1::RedeemInviteRequest {
                code: "y".repeat(1 << 20),
                ..Default::default()
            })
            .await;
        (stat, redeem)
    });
    let s = stat.expect_err("a call without a certificate was served");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(
        s.message().contains("this call needs a client certificate of the federation"),
        "{}",
        s.message()
    );
    let r = redeem.expect_err("an oversized invite redemption was served");
    assert!(r.message().contains("message length too large"), "{r:?}");
    let grown = peak_rss(pid).saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "the coordinator's peak memory grew by {grown} bytes for a refused request"
    );
    // The member is served as before.
    fed.ok_as("alice", &["ls", "/"]);
}

/// Point 7: one principal opening connection after connection is refused past its limit,
/// while another principal of the same member is served.
#[test]
fn a_peer_opening_too_many_connections_is_refused_past_its_limit() {
    use collective_proto::v1::PathRequest;
    use collective_proto::v1::metadata_client::MetadataClient;
    let fed = Cluster::federation("adv-conns", 2, 1);
    let (hog, _) = issue_identity(&fed, "alice", "client", "hog");
    let alice = fed.member("alice").clone();
    let coordinator: collective_core::Principal = format!("coordinator@{}", alice.domain).parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let limit = collective_rpc::MAX_CONNECTIONS_PER_PRINCIPAL;
    let (served, refused, _held) = rt.block_on(async {
        let mut held = Vec::new();
        let (mut served, mut refused) = (0, 0);
        for _ in 0..limit + 3 {
            // A channel of its own is a connection of its own.
            let ch = collective_rpc::channel(&hog, &alice.grpc, &coordinator).unwrap();
            let mut client = MetadataClient::new(ch);
            match client.stat(PathRequest { path: "/".into() }).await {
                Ok(_) => served += 1,
                Err(s) if s.code() == tonic::Code::PermissionDenied => served += 1,
                Err(_) => refused += 1,
            }
            held.push(client);
        }
        (served, refused, held)
    });
    assert_eq!((served, refused), (limit, 3), "connections past the limit were served");
    let log = fed.member_procs("alice").into_iter().find(|p| p.role == "coordinator").unwrap().log;
    within(Duration::from_secs(10), "the refusal to be logged", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&format!("hog@{} already holds {limit} connections", alice.domain))
    });
    fed.ok_as("alice", &["ls", "/"]);
}

/// Point 7: an upload whose size differs from the size its token was signed for is refused
/// before anything is stored; an upload that stalls is cut at its deadline and its disk
/// reservation released.
#[test]
fn a_node_refuses_an_upload_of_another_size_than_its_token_and_cuts_a_stalled_one() {
    use collective_proto::v1::metadata_client::MetadataClient;
    use collective_proto::v1::{ChunkDesc, ChunkOp, ChunkRequest, ChunkResponse, PlanWriteRequest, SignedToken};
    use prost::Message;
    // The nodes' usage is measured: no metadata backups, whose chunks would count too.
    let fed = Cluster::federation_with("adv-upload", 2, 1, &["--metadata-backup-interval", "0"]);
    fed.ok_as("alice", &["datastore", "create", "/up", "--strategy", "media", "--replicas", "1"]);
    let me = client_identity(&fed, "alice");
    let alice = fed.member("alice").clone();
    let coordinator: collective_core::Principal = format!("coordinator@{}", alice.domain).parse().unwrap();
    let used = || -> u64 {
        let v: serde_json::Value = serde_json::from_str(&fed.ok_as("alice", &["status", "--json"])).unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["used_bytes"].as_u64().unwrap_or(0))
            .sum()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let plan = |data: &[u8], claimed: u64| {
        let id = blake3::hash(data);
        rt.block_on(async {
            let ch = collective_rpc::channel(&me, &alice.grpc, &coordinator).unwrap();
            let r = MetadataClient::new(ch)
                .plan_write(PlanWriteRequest {
                    chunks: vec![ChunkDesc {
                        id: id.as_bytes().to_vec().into(),
                        size: claimed,
                    }],
                    path: "/up/file".into(),
                })
                .await
                .unwrap()
                .into_inner();
            let p = r.placements.into_iter().next().unwrap();
            let t = &p.targets[0];
            let target = collective_dataplane::NodeTarget {
                node: t.node.clone(),
                addr: t.quic_addr.parse().unwrap(),
            };
            (collective_core::ChunkId(*id.as_bytes()), target, p.token.to_vec())
        })
    };
    let _in_runtime = rt.enter();
    let chunks = collective_dataplane::ChunkClient::new(&me).unwrap();

    // 1. Planned as 10 bytes, sent as 1 MiB (the bytes do hash to the id).
    let data = random_bytes(1 << 20, 71);
    let (id, target, token) = plan(&data, 10);
    let start_used = used();
    let r = rt.block_on(chunks.put(&target, &id, &[bytes::Bytes::from(data.clone())], &token));
    let e = r.expect_err("an upload larger than its token was stored");
    assert!(
        e.to_string()
            .contains("the upload says 1048576 bytes but its token allows exactly 10"),
        "{e}"
    );

    // 2. A 16 MiB upload that sends 1 MiB and stops.
    let big = random_bytes(16 << 20, 72);
    let (id, target, token) = plan(&big, big.len() as u64);
    let started = std::time::Instant::now();
    let outcome = rt.block_on(async {
        let (mut send, mut recv) = chunks.open_stream(&target).await.unwrap();
        let req = ChunkRequest {
            version: collective_dataplane::PROTOCOL_VERSION,
            op: ChunkOp::Put as i32,
            chunk_id: id.0.to_vec().into(),
            size: big.len() as u64,
            token: Some(SignedToken::decode(token.as_slice()).unwrap()),
        };
        collective_dataplane::write_frame(&mut send, &req).await.unwrap();
        send.write_all(&big[..1 << 20]).await.unwrap();
        // Stalled: the node must give up on its own, well before this bound.
        tokio::time::timeout(
            Duration::from_secs(90),
            collective_dataplane::read_frame::<ChunkResponse>(&mut recv),
        )
        .await
    });
    let outcome = outcome.expect("the node kept a stalled upload open for 90 s");
    assert!(outcome.is_err(), "a stalled upload was answered as if complete: {outcome:?}");
    eprintln!("the stalled upload was cut after {:?}", started.elapsed());
    within(Duration::from_secs(10), "the stalled upload's reservation to be released", || {
        used() <= start_used
    });
    // Nothing of either was kept, and an honest upload of the first chunk still works.
    let (id, target, token) = plan(&data, data.len() as u64);
    rt.block_on(chunks.put(&target, &id, &[bytes::Bytes::from(data)], &token)).unwrap();
}

/// Point 9: another member's principal (here bob, through a coordinator certificate of his
/// own CA naming himself as the user) sees of alice's events only membership changes and
/// grant changes on a datastore he may share; alice's status and her admins' audit view
/// are not his. Expensive calls are limited per principal with a clear error.
#[test]
fn a_remote_principal_sees_only_its_share_and_expensive_calls_are_rate_limited() {
    use collective_proto::v1::metadata_client::MetadataClient;
    use collective_proto::v1::observe_client::ObserveClient;
    use collective_proto::v1::{AuditRequest, EventsRequest, StatusRequest};
    let fed = Cluster::federation("adv-share", 2, 1);
    fed.ok_as("alice", &["datastore", "create", "/open", "--strategy", "media", "--replicas", "1"]);
    fed.ok_as("alice", &["datastore", "create", "/mine", "--strategy", "media", "--replicas", "1"]);
    fed.ok_as("alice", &["datastore", "grant", "/open", "bob@bob.collective.local", "read"]);
    fed.ok_as("alice", &["datastore", "grant", "/mine", "bob@bob.collective.local", "read,share"]);
    fed.ok_as("alice", &["datastore", "grant", "/open", "mom@alice.collective.local", "read"]);
    let (relay, _) = issue_identity(&fed, "bob", "coordinator", "relay");
    let alice = fed.member("alice").clone();
    let coordinator: collective_core::Principal = format!("coordinator@{}", alice.domain).parse().unwrap();
    let bob: collective_core::Principal = "bob@bob.collective.local".parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (events, status, audit) = rt.block_on(async {
        let ch = collective_rpc::channel(&relay, &alice.grpc, &coordinator).unwrap();
        let mut stream = ObserveClient::new(ch.clone())
            .events(collective_rpc::forwarded(
                EventsRequest {
                    after_seq: 0,
                    follow: false,
                },
                &bob,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while let Some(e) = stream.message().await.unwrap() {
            events.push(e);
        }
        let status = MetadataClient::new(ch.clone())
            .status(collective_rpc::forwarded(StatusRequest {}, &bob))
            .await;
        let audit = ObserveClient::new(ch)
            .audit(collective_rpc::forwarded(
                AuditRequest {
                    principal: "alice@alice.collective.local".into(),
                    ..Default::default()
                },
                &bob,
            ))
            .await;
        (events, status, audit)
    });
    let kinds: Vec<(String, String)> = events.iter().map(|e| (e.kind.clone(), e.subject.clone())).collect();
    assert!(
        kinds
            .iter()
            .all(|(k, s)| k.starts_with("member-") || (k == "grant-changed" && s.starts_with("/mine"))),
        "bob saw more than his share of alice's events: {kinds:?}"
    );
    assert!(kinds.iter().any(|(k, s)| k == "grant-changed" && s == "/mine"), "{kinds:?}");
    let all = fed.ok_as("alice", &["events", "--json"]);
    assert!(
        all.contains("node-registered") && all.contains("mom@alice.collective.local"),
        "alice sees her own events"
    );
    let s = status.expect_err("bob read alice's status");
    assert!(s.message().contains("is for its own principals"), "{}", s.message());
    let a = audit.expect_err("bob read alice's audit entries");
    assert!(a.message().contains("may only read its own audit entries"), "{}", a.message());

    // Risk walks: a burst, then a clear refusal.
    for _ in 0..3 {
        fed.ok_as("alice", &["federation", "risk", "bob"]);
    }
    let err = fed.fails_as("alice", &["federation", "risk", "bob"]);
    assert!(
        err.contains("alice@alice.collective.local asked for a risk report too often") && err.contains("try again in"),
        "{err}"
    );
}

/// The calls this issue's work added, sent as the CLI never would: another member's
/// coordinator (naming its own user, or alice's) and a plain user of alice ask alice's
/// coordinator for a metadata backup (every datastore key) and her recovery kit; an
/// exchange carries more member states than any federation has. Each is refused with its
/// reason, and nothing of alice's leaves.
#[test]
fn backups_kits_and_oversized_exchanges_are_refused_to_anyone_but_the_member_itself() {
    use collective_proto::v1::admin_client::AdminClient;
    use collective_proto::v1::upkeep_client::UpkeepClient;
    use collective_proto::v1::{BackupMetadataRequest, RecoveryKitRequest};
    let fed = Cluster::federation("adv-backup", 2, 1);
    let alice = fed.member("alice").clone();
    let coordinator: collective_core::Principal = format!("coordinator@{}", alice.domain).parse().unwrap();
    let (relay, _) = issue_identity(&fed, "bob", "coordinator", "relay");
    let (mom, _) = issue_identity(&fed, "alice", "client", "mom");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let bob_user: collective_core::Principal = "bob@bob.collective.local".parse().unwrap();
    let alice_user: collective_core::Principal = format!("alice@{}", alice.domain).parse().unwrap();
    let backup_as = |id: &collective_pki::TlsIdentity, on_behalf: Option<&collective_core::Principal>| {
        rt.block_on(async {
            let ch = collective_rpc::channel(id, &alice.grpc, &coordinator).unwrap();
            let req = match on_behalf {
                Some(u) => collective_rpc::forwarded(BackupMetadataRequest {}, u),
                None => tonic::Request::new(BackupMetadataRequest {}),
            };
            match UpkeepClient::new(ch).backup_metadata(req).await {
                Err(s) => Err(s),
                Ok(r) => {
                    let mut stream = r.into_inner();
                    let mut bytes = 0usize;
                    while let Ok(Some(p)) = stream.message().await {
                        bytes += p.data.len();
                    }
                    Ok(bytes)
                }
            }
        })
    };
    for (who, id, as_user) in [
        ("bob's coordinator for bob", &relay, Some(&bob_user)),
        ("bob's coordinator naming alice", &relay, Some(&alice_user)),
        ("bob's coordinator alone", &relay, None),
        ("alice's user mom", &mom, None),
    ] {
        let r = backup_as(id, as_user);
        let s = r.expect_err(&format!("{who} got a backup of alice's metadata"));
        assert!(
            matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated),
            "{who}: {s:?}"
        );
        let kit = rt.block_on(async {
            let ch = collective_rpc::channel(id, &alice.grpc, &coordinator).unwrap();
            let req = match as_user {
                Some(u) => collective_rpc::forwarded(RecoveryKitRequest {}, u),
                None => tonic::Request::new(RecoveryKitRequest {}),
            };
            AdminClient::new(ch).recovery_kit(req).await
        });
        assert!(kit.is_err(), "{who} got alice's recovery kit");
    }
    // An exchange with more states than any federation has members: refused, unread.
    let too_many = vec![collective_proto::v1::SignedState::default(); 600];
    let e = exchange(&rt, &fed, &relay, "alice", too_many).expect_err("600 states were taken");
    assert!(e.message().contains("at most 512 members"), "{e:?}");
    // alice herself still has both.
    let kit = fed.path("alice-kit.txt");
    fed.ok_as("alice", &["member", "recovery-kit", "--out", p(&kit)]);
    let out = std::process::Command::new(common::BIN)
        .args([
            "coordinator",
            "backup",
            "--config",
            p(&alice.coordinator_config),
            "--out",
            p(&fed.path("alice.backup")),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Recovery records (issue 32): bob, with a coordinator certificate of his own CA, hands
/// carol a record claiming to be alice's and alice's real record replayed; a stranger asks
/// for alice's record without her kit, with a stale signature, and for a member nobody
/// keeps; on alice's node, a stranger and a user of alice try to plant a record. Each is
/// refused and carol still hands the holder of alice's kit alice's own record.
#[test]
fn recovery_records_are_kept_only_from_their_member_and_handed_only_to_the_kit_holder() {
    use collective_proto::v1::bootstrap_client::BootstrapClient;
    use collective_proto::v1::federation_client::FederationClient;
    use collective_proto::v1::node_control_client::NodeControlClient;
    use collective_proto::v1::node_recovery_client::NodeRecoveryClient;
    use collective_proto::v1::{FetchRecoveryRequest, RecoveryRecord, SignedRecoveryRecord};
    use prost::Message;
    let fed = Cluster::federation("adv-recovery", 3, 1);
    let alice = fed.member("alice").clone();
    let carol = fed.member("carol").clone();
    within(Duration::from_secs(60), "alice's record to reach her keepers", || {
        let v: serde_json::Value = serde_json::from_str(&fed.ok_as("alice", &["status", "--json"])).unwrap_or_default();
        v["metadata_backup"]["keepers"].as_u64().unwrap_or(0) >= 3 && v["metadata_backup"]["pending_changes"] == 0
    });
    let kit_text = std::fs::read_to_string(alice.coordinator_config.parent().unwrap().join("recovery-kit.txt")).unwrap();
    let kit = collective_pki::RecoveryKit::parse(&kit_text).unwrap();
    let (relay, _) = issue_identity(&fed, "bob", "coordinator", "relay");
    let (mom, _) = issue_identity(&fed, "alice", "client", "mom");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let carol_coord: collective_core::Principal = format!("coordinator@{}", carol.domain).parse().unwrap();
    let anonymous = collective_pki::TlsIdentity::first_contact_client_config(collective_pki::ALPN_GRPC).unwrap();
    let fetch = |addr: &str, member: &str, time_ms: u64, signature: Vec<u8>, node: bool| {
        let anonymous = anonymous.clone();
        rt.block_on(async {
            let ch = collective_rpc::channel_with_config(anonymous, addr, &carol_coord).unwrap();
            let req = FetchRecoveryRequest {
                member: member.to_string(),
                time_ms,
                signature: signature.into(),
            };
            if node {
                NodeRecoveryClient::new(ch).fetch_recovery(req).await.map(|r| r.into_inner())
            } else {
                BootstrapClient::new(ch).fetch_recovery(req).await.map(|r| r.into_inner())
            }
        })
    };
    let now = collective_core::unix_ms_now();
    let genuine = fetch(&carol.grpc, &alice.domain, now, kit.secret.sign_fetch(&alice.domain, now), false)
        .expect("the kit holder gets alice's record");
    let signed = genuine.record.clone().unwrap();
    let record = RecoveryRecord::decode(signed.record.as_ref()).unwrap();
    assert_eq!(record.member, alice.domain);

    // Without the kit: another secret, a stale time, and a member nobody keeps.
    let other = collective_pki::RecoverySecret::generate().unwrap();
    let e = fetch(&carol.grpc, &alice.domain, now, other.sign_fetch(&alice.domain, now), false).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let stale = now - 20 * 60_000;
    let e = fetch(
        &carol.grpc,
        &alice.domain,
        stale,
        kit.secret.sign_fetch(&alice.domain, stale),
        false,
    )
    .unwrap_err();
    assert!(e.message().contains("10 minutes"), "{e:?}");
    let e = fetch(
        &carol.grpc,
        "nobody.collective.local",
        now,
        kit.secret.sign_fetch("nobody.collective.local", now),
        false,
    )
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // bob plants a record in alice's name, and replays hers.
    let forged = RecoveryRecord {
        version: record.version + 1_000,
        heads: vec![],
        ..record.clone()
    };
    let bob_signer = collective_pki::TokenSigner::from_pkcs8(&relay.pkcs8_der(), relay.principal.to_string()).unwrap();
    let forged = collective_pki::sign_record(&bob_signer, &relay, forged.encode_to_vec());
    for (what, planted) in [("a record signed by bob", forged), ("alice's own record", signed.clone())] {
        let r = rt.block_on(async {
            let ch = collective_rpc::channel(&relay, &carol.grpc, &carol_coord).unwrap();
            FederationClient::new(ch).keep_recovery(planted).await
        });
        let e = r.expect_err(&format!("carol kept {what} from bob"));
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{what}: {e:?}");
    }
    let again = fetch(&carol.grpc, &alice.domain, now, kit.secret.sign_fetch(&alice.domain, now), false).unwrap();
    assert_eq!(
        again.record.unwrap().record,
        signed.record,
        "carol's copy of alice's record changed"
    );

    // Alice's node: a stranger cannot fetch without the kit nor plant; nor can a user of hers.
    let node = fed.member_procs("alice").into_iter().find(|p| p.role == "node").unwrap();
    let e = fetch(&node.grpc, &alice.domain, now, other.sign_fetch(&alice.domain, now), true).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let from_node = fetch(&node.grpc, &alice.domain, now, kit.secret.sign_fetch(&alice.domain, now), true).unwrap();
    assert_eq!(
        RecoveryRecord::decode(from_node.record.unwrap().record.as_ref()).unwrap().member,
        alice.domain
    );
    let node_name: collective_core::Principal = node.principal.parse().unwrap();
    let planted = SignedRecoveryRecord {
        record: signed.record.clone(),
        ..Default::default()
    };
    let e = rt
        .block_on(async {
            let ch = collective_rpc::channel_with_config(anonymous.clone(), &node.grpc, &node_name).unwrap();
            NodeControlClient::new(ch).keep_recovery(planted.clone()).await
        })
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = rt
        .block_on(async {
            let ch = collective_rpc::channel(&mom, &node.grpc, &node_name).unwrap();
            NodeControlClient::new(ch).keep_recovery(signed.clone()).await
        })
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // The chunks carol hosts for backups: bob, asking and releasing in the metadata-backup
    // space by chunk id, reaches only his own; alice's stay hers, and stay.
    use collective_proto::v1::{ChunkDesc, ReadTokensRequest, ReleaseChunksRequest};
    let (alice_probe, _) = issue_identity(&fed, "alice", "coordinator", "probe");
    let on_carol: Vec<collective_core::ChunkId> = fed
        .stored_chunks()
        .into_iter()
        .filter(|(n, _)| n.ends_with(&carol.domain))
        .filter_map(|(_, f)| collective_core::ChunkId::from_hex(&f.file_name().unwrap().to_string_lossy()))
        .collect();
    let held = |who: &collective_pki::TlsIdentity| -> std::collections::BTreeSet<collective_core::ChunkId> {
        rt.block_on(async {
            let ch = collective_rpc::channel(who, &carol.grpc, &carol_coord).unwrap();
            let r = FederationClient::new(ch)
                .read_tokens(ReadTokensRequest {
                    user: who.principal.to_string(),
                    chunks: on_carol
                        .iter()
                        .map(|id| ChunkDesc {
                            id: id.0.to_vec().into(),
                            size: 0,
                        })
                        .collect(),
                    metadata_backup: true,
                })
                .await
                .unwrap()
                .into_inner();
            on_carol
                .iter()
                .zip(r.chunks)
                .filter(|(_, h)| !h.replicas.is_empty())
                .map(|(id, _)| *id)
                .collect()
        })
    };
    let alices = held(&alice_probe);
    assert!(!alices.is_empty(), "carol hosts none of alice's backup chunks");
    let bobs = held(&relay);
    assert!(alices.is_disjoint(&bobs), "bob got read tokens for alice's backup chunks");
    rt.block_on(async {
        let ch = collective_rpc::channel(&relay, &carol.grpc, &carol_coord).unwrap();
        FederationClient::new(ch)
            .release_chunks(ReleaseChunksRequest {
                ids: alices.iter().map(|id| id.0.to_vec().into()).collect(),
                metadata_backup: true,
            })
            .await
            .unwrap()
    });
    assert_eq!(held(&alice_probe), alices, "bob's release took alice's backup chunks");
}

mod lying_keeper {
    use collective_proto::v1::bootstrap_server::{Bootstrap, BootstrapServer};
    use collective_proto::v1::*;
    use tonic::{Request, Response, Status};

    /// A keeper that answers every fetch with the record it was given.
    pub struct Liar {
        pub answer: FetchRecoveryResponse,
    }

    #[tonic::async_trait]
    impl Bootstrap for Liar {
        async fn join_member(&self, _: Request<JoinMemberRequest>) -> Result<Response<JoinMemberResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn redeem_invite(&self, _: Request<RedeemInviteRequest>) -> Result<Response<RedeemInviteResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn fetch_recovery(&self, _: Request<FetchRecoveryRequest>) -> Result<Response<FetchRecoveryResponse>, Status> {
            Ok(Response::new(self.answer.clone()))
        }
    }

    pub fn server(answer: FetchRecoveryResponse) -> BootstrapServer<Liar> {
        BootstrapServer::new(Liar { answer })
    }
}

/// A keeper (or whoever now answers at an address the kit names) hands out records that
/// claim to be alice's newest: one altered (its version raised to the maximum, its heads
/// emptied), one whose identity is not sealed with her secret. Recovery refuses both,
/// names them, and recovers from the record bob keeps.
#[test]
fn a_keeper_handing_out_forged_newest_records_does_not_stop_a_recovery() {
    use collective_proto::v1::bootstrap_client::BootstrapClient;
    use collective_proto::v1::{FetchRecoveryRequest, RecoveryRecord};
    use prost::Message;
    let fed = Cluster::federation("adv-liar-keeper", 2, 1);
    let alice = fed.member("alice").clone();
    let bob = fed.member("bob").clone();
    within(Duration::from_secs(60), "alice's record to reach bob", || {
        let v: serde_json::Value = serde_json::from_str(&fed.ok_as("alice", &["status", "--json"])).unwrap_or_default();
        v["metadata_backup"]["keepers"].as_u64().unwrap_or(0) >= 2 && v["metadata_backup"]["pending_changes"] == 0
    });
    let kit_text = std::fs::read_to_string(alice.coordinator_config.parent().unwrap().join("recovery-kit.txt")).unwrap();
    let kit = collective_pki::RecoveryKit::parse(&kit_text).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let now = collective_core::unix_ms_now();
    let genuine = rt
        .block_on(async {
            let tls = collective_pki::TlsIdentity::first_contact_client_config(collective_pki::ALPN_GRPC).unwrap();
            let name: collective_core::Principal = format!("coordinator@{}", bob.domain).parse().unwrap();
            let ch = collective_rpc::channel_with_config(tls, &bob.grpc, &name).unwrap();
            BootstrapClient::new(ch)
                .fetch_recovery(FetchRecoveryRequest {
                    member: alice.domain.clone(),
                    time_ms: now,
                    signature: kit.secret.sign_fetch(&alice.domain, now).into(),
                })
                .await
        })
        .unwrap()
        .into_inner();
    let signed = genuine.record.clone().unwrap();
    let record = RecoveryRecord::decode(signed.record.as_ref()).unwrap();
    let altered = RecoveryRecord {
        version: u64::MAX - 1,
        heads: vec![],
        ..record.clone()
    };
    let foreign = RecoveryRecord {
        version: u64::MAX - 2,
        identity: collective_pki::RecoverySecret::generate()
            .unwrap()
            .seal_blob("metadata-backup-identity-v1", b"x")
            .unwrap()
            .into(),
        ..record.clone()
    };
    let (liar_id, _) = issue_identity(&fed, "bob", "coordinator", "liar");
    let mut lines = String::new();
    for (i, forged) in [altered, foreign].into_iter().enumerate() {
        let mut answer = genuine.clone();
        answer.keeper = format!("liar-{i}");
        answer.member_state = "down".into();
        answer.record = Some(collective_proto::v1::SignedRecoveryRecord {
            record: forged.encode_to_vec().into(),
            ..signed.clone()
        });
        // Open to strangers, as a real keeper's Bootstrap service is.
        let tls = liar_id.server_config_optional_client(collective_pki::ALPN_GRPC).unwrap();
        let (addr, incoming) = rt
            .block_on(collective_rpc::tls_incoming_with(tls, "127.0.0.1:0".parse().unwrap(), None))
            .unwrap();
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(lying_keeper::server(answer))
                .serve_with_incoming(incoming),
        );
        lines.push_str(&format!("bootstrap: {addr}\n"));
    }
    let with_liars = kit_text.replacen("written:", &format!("{lines}written:"), 1);
    let kit_path = fed.write_local("kit-with-liars.txt", with_liars.as_bytes());
    fed.kill9("coordinator@alice");
    let out = fed.path("alice-recovered");
    let mut said = String::new();
    within(Duration::from_secs(30), "a recovery past the lying keepers", || {
        let _ = std::fs::remove_dir_all(&out);
        let r = std::process::Command::new(common::BIN)
            .args(["member", "recover", "--kit", p(&kit_path), "--out", p(&out)])
            .output()
            .unwrap();
        said = String::from_utf8_lossy(&r.stderr).into_owned();
        r.status.success()
    });
    assert!(
        said.contains("liar-0") && said.contains("liar-1"),
        "the forged records were not named: {said}"
    );
    assert!(out.join("coordinator.toml").exists());
}
