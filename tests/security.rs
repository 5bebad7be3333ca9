//! Every rejection of the security model, tried against real processes: missing, foreign,
//! expired and wrong-role certificates, and forged, expired or misdirected chunk tokens.

mod common;

use std::sync::Arc;
use std::time::Duration;

use collective_core::{ChunkId, Principal};
use collective_dataplane::{ChunkClient, DataError, NodeTarget};
use collective_pki::{TlsIdentity, TokenSigner};
use collective_proto::v1::metadata_client::MetadataClient;
use collective_proto::v1::node_control_client::NodeControlClient;
use collective_proto::v1::registry_client::RegistryClient;
use collective_proto::v1::upkeep_client::UpkeepClient;
use collective_proto::v1::{ListRequest, PathRequest, RegisterNodeRequest, StatusRequest, SteerWorkerRequest, TokenOp, UsageRequest};
use common::{BIN, Cluster, p, random_bytes, within};

fn coordinator_principal() -> Principal {
    "coordinator@home.collective.local".parse().unwrap()
}

fn identity(c: &Cluster, name: &str) -> TlsIdentity {
    let certs = c.dir.join("certs");
    TlsIdentity::load(
        &certs.join("ca.crt"),
        &certs.join(format!("{name}.crt")),
        &certs.join(format!("{name}.key")),
    )
    .unwrap()
}

fn issue(c: &Cluster, role: &str, name: &str, extra: &[&str]) {
    let out = std::process::Command::new(BIN)
        .args([
            "ca",
            "issue",
            "--ca",
            p(&c.dir.join("ca")),
            "--role",
            role,
            "--name",
            name,
            "--out",
            p(&c.dir.join("certs")),
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn rt() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

/// One stored chunk: (id, the nodes holding it).
fn some_chunk(c: &Cluster) -> (ChunkId, Vec<String>) {
    let (node, path) = c.stored_chunks().into_iter().next().expect("a stored chunk");
    let id = ChunkId::from_hex(&path.file_name().unwrap().to_string_lossy()).unwrap();
    (id, vec![node])
}

fn target(c: &Cluster, node: &str) -> NodeTarget {
    let n = c.nodes().into_iter().find(|n| n.principal == node).unwrap();
    NodeTarget {
        node: node.to_string(),
        addr: n.quic.unwrap().parse().unwrap(),
    }
}

#[test]
fn certificates_without_standing_are_refused() {
    let c = Cluster::start("certs", 2, 2);
    c.ok(&["put", p(&c.write_local("x", b"secret")), "/x"]);
    let certs = c.dir.join("certs");
    let ca = p(&certs.join("ca.crt")).to_string();

    // A certificate from another CA.
    let other = c.dir.join("other");
    let out = std::process::Command::new(BIN)
        .args([
            "ca",
            "init",
            "--member",
            "eve",
            "--domain",
            "eve.collective.local",
            "--out",
            p(&other.join("ca")),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new(BIN)
        .args([
            "ca",
            "issue",
            "--ca",
            p(&other.join("ca")),
            "--role",
            "client",
            "--name",
            "eve",
            "--out",
            p(&other),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = c.fails(&[
        "--ca",
        &ca,
        "--cert",
        p(&other.join("eve.crt")),
        "--key",
        p(&other.join("eve.key")),
        "ls",
        "/",
    ]);
    assert!(err.contains("refused") || err.contains("certificate"), "{err}");
    assert!(!err.contains("secret"));

    // An expired certificate of the right CA, and one not valid yet.
    for (name, from, until) in [
        ("expired", "2020-01-01T00:00:00Z", "2020-06-01T00:00:00Z"),
        ("future", "2099-01-01T00:00:00Z", "2099-06-01T00:00:00Z"),
    ] {
        issue(&c, "client", name, &["--not-before", from, "--not-after", until]);
        let (cert, key) = (certs.join(format!("{name}.crt")), certs.join(format!("{name}.key")));
        let err = c.fails(&["--cert", p(&cert), "--key", p(&key), "ls", "/"]);
        assert!(err.contains("certificate"), "{name}: {err}");
    }

    let rt = rt();
    rt.block_on(async {
        let coord = c.proc("coordinator").grpc;
        // No client certificate at all.
        let admin = identity(&c, "admin");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_certs(&certs.join("ca.crt")) {
            roots.add(cert).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let ch = collective_rpc::channel_with_config(Arc::new(cfg), &coord, &coordinator_principal()).unwrap();
        let r = MetadataClient::new(ch).status(StatusRequest {}).await;
        assert!(r.is_err(), "a call without a client certificate succeeded");

        // Expired and not-yet-valid certificates are refused by the server itself, not
        // only by the CLI's own check.
        for name in ["expired", "future"] {
            let id = identity(&c, name);
            let ch = collective_rpc::channel(&id, &coord, &coordinator_principal()).unwrap();
            assert!(
                MetadataClient::new(ch).status(StatusRequest {}).await.is_err(),
                "{name} certificate accepted"
            );
        }

        // Wrong roles: a node certificate cannot list files; a client cannot register a node.
        let node = identity(&c, "node-01");
        let ch = collective_rpc::channel(&node, &coord, &coordinator_principal()).unwrap();
        let err = MetadataClient::new(ch)
            .list(ListRequest {
                path: "/".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("node certificate"), "{}", err.message());
        let ch = collective_rpc::channel(&admin, &coord, &coordinator_principal()).unwrap();
        let err = RegistryClient::new(ch)
            .register_node(RegisterNodeRequest {
                grpc_addr: "127.0.0.1:1".into(),
                quic_addr: "127.0.0.1:1".into(),
                usage: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        // A client cannot make control calls to a node.
        let n1 = c.proc("node-01");
        let ch = collective_rpc::channel(&admin, &n1.grpc, &n1.principal.parse().unwrap()).unwrap();
        let err = NodeControlClient::new(ch).usage(UsageRequest {}).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        // Nor steer a node's workers straight (only through the coordinator, as an admin).
        let ch = collective_rpc::channel(&admin, &n1.grpc, &n1.principal.parse().unwrap()).unwrap();
        let steer = SteerWorkerRequest {
            name: "scrub".into(),
            node: String::new(),
            pause: true,
        };
        let err = NodeControlClient::new(ch).steer_worker(steer.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        // A node's certificate cannot steer the coordinator's workers either.
        let ch = collective_rpc::channel(&node, &coord, &coordinator_principal()).unwrap();
        let err = UpkeepClient::new(ch).steer_worker(steer).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        let scrubs = c.ok(&["workers", "--json"]);
        assert!(!scrubs.contains("\"paused\""), "a refused steer paused a worker: {scrubs}");
        // The right identity works, so the refusals above were about standing.
        let ch = collective_rpc::channel(&admin, &coord, &coordinator_principal()).unwrap();
        assert!(MetadataClient::new(ch).stat(PathRequest { path: "/x".into() }).await.is_ok());
    });
}

fn rustls_pki_certs(path: &std::path::Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

#[test]
fn nodes_serve_chunks_only_with_a_valid_token_for_that_chunk_and_caller() {
    let c = Cluster::start("tokens", 2, 2);
    c.ok(&["put", p(&c.write_local("x", &random_bytes(300_000, 5))), "/x"]);
    c.ok(&["put", p(&c.write_local("y", &random_bytes(1000, 6))), "/y"]);
    let rt = rt();
    rt.block_on(async {
        let admin = identity(&c, "admin");
        let coordinator = identity(&c, "coordinator");
        let real = TokenSigner::from_pkcs8(&coordinator.pkcs8_der(), coordinator.principal.to_string()).unwrap();
        let forger_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let forger = TokenSigner::from_pkcs8(&forger_key.serialize_der(), coordinator.principal.to_string()).unwrap();
        let client = ChunkClient::new(&admin).unwrap();
        let (id, nodes) = some_chunk(&c);
        let t = target(&c, &nodes[0]);
        let me = admin.principal.to_string();
        let ttl = Duration::from_secs(60);

        // The genuine token works.
        let good = real.sign(TokenOp::Get, &id, &nodes, &me, 0, ttl);
        client.get(&t, &id, &good).await.expect("a valid token is honoured");

        let denied = |r: Result<bytes::Bytes, DataError>, why: &str| match r {
            Err(DataError::Denied { detail, .. }) => assert!(detail.contains(why), "expected '{why}', got '{detail}'"),
            other => panic!("expected a refusal ({why}), got {other:?}"),
        };
        denied(
            client.get(&t, &id, &forger.sign(TokenOp::Get, &id, &nodes, &me, 0, ttl)).await,
            "not from this node's coordinator",
        );
        let expired = real.sign(TokenOp::Get, &id, &nodes, &me, 0, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(5)).await;
        denied(client.get(&t, &id, &expired).await, "expired");
        let other = ChunkId::of(b"some other chunk");
        denied(
            client.get(&t, &id, &real.sign(TokenOp::Get, &other, &nodes, &me, 0, ttl)).await,
            "another chunk",
        );
        denied(
            client
                .get(
                    &t,
                    &id,
                    &real.sign(TokenOp::Get, &id, &["node-99@home.collective.local".into()], &me, 0, ttl),
                )
                .await,
            "not valid on this node",
        );
        denied(
            client
                .get(
                    &t,
                    &id,
                    &real.sign(TokenOp::Get, &id, &nodes, "mallory@home.collective.local", 0, ttl),
                )
                .await,
            "issued to mallory",
        );
        denied(
            client.get(&t, &id, &real.sign(TokenOp::Put, &id, &nodes, &me, 0, ttl)).await,
            "another operation",
        );
        // A prefetch (read ahead, no data returned) takes the same token as the get.
        client
            .prefetch(&t, &id, &good)
            .await
            .expect("a prefetch with the get's token is honoured");
        for (token, why) in [
            (
                forger.sign(TokenOp::Get, &id, &nodes, &me, 0, ttl),
                "not from this node's coordinator",
            ),
            (real.sign(TokenOp::Get, &other, &nodes, &me, 0, ttl), "another chunk"),
            (real.sign(TokenOp::Put, &id, &nodes, &me, 0, ttl), "another operation"),
        ] {
            match client.prefetch(&t, &id, &token).await {
                Err(DataError::Denied { detail, .. }) => assert!(detail.contains(why), "expected '{why}', got '{detail}'"),
                other => panic!("expected a refused prefetch ({why}), got {other:?}"),
            }
        }
        let r = client
            .prefetch(&t, &other, &real.sign(TokenOp::Get, &other, &nodes, &me, 0, ttl))
            .await;
        assert!(matches!(r, Err(DataError::NotFound { .. })), "{r:?}");
        // A write with a forged token stores nothing.
        let data = bytes::Bytes::from_static(b"planted");
        let planted = ChunkId::of(&data);
        let r = client
            .put(&t, &planted, &[data], &forger.sign(TokenOp::Put, &planted, &nodes, &me, 7, ttl))
            .await;
        assert!(matches!(r, Err(DataError::Denied { .. })), "{r:?}");
    });
    assert!(
        !c.stored_chunks()
            .iter()
            .any(|(_, p)| p.file_name().unwrap().to_string_lossy() == ChunkId::of(b"planted").to_hex())
    );
}

#[test]
fn a_server_refuses_to_start_with_a_readable_key() {
    let c = Cluster::start("keyperm", 1, 1);
    let node = c.proc("node-01");
    c.kill9("node-01");
    let key = c.dir.join("certs/node-01.key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["node", "--config", p(&node.config)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600") && err.contains("node-01.key"), "{err}");
    let out = std::process::Command::new(BIN)
        .args([
            "ca",
            "issue",
            "--ca",
            p(&c.dir.join("ca")),
            "--role",
            "client",
            "--name",
            "k",
            "--out",
            p(&c.dir.join("k")),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::metadata(c.dir.join("k/k.key")).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// The fingerprint (hex) of the certificate a TLS server at `addr` presents now.
fn served_fingerprint(c: &Cluster, addr: &str, server: &Principal) -> String {
    let admin = identity(c, "admin");
    let cfg = admin.client_config(b"h2").unwrap();
    let name = rustls::pki_types::ServerName::try_from(server.dns_name()).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    collective_pki::fingerprint(conn.peer_certificates().unwrap()[0].as_ref())
}

fn ca_dir(c: &Cluster) -> String {
    p(&c.dir.join("ca")).to_string()
}

#[test]
fn revoked_certificates_are_refused_on_new_and_open_connections_and_by_nodes() {
    let c = Cluster::start("revoke", 2, 2);
    c.ok(&["put", p(&c.write_local("x", &random_bytes(50_000, 3))), "/x"]);
    let cfg = c.second_user("mallory");
    let as_mallory = |args: &[&str]| c.cli_with(&cfg, args);
    assert!(as_mallory(&["status"]).status.success());
    let certs = c.path("mallory");
    let mallory = TlsIdentity::load(&c.dir.join("certs/ca.crt"), &certs.join("mallory.crt"), &certs.join("mallory.key")).unwrap();
    let coordinator = identity(&c, "coordinator");
    let signer = TokenSigner::from_pkcs8(&coordinator.pkcs8_der(), coordinator.principal.to_string()).unwrap();
    let (id, nodes) = some_chunk(&c);
    let t = target(&c, &nodes[0]);
    let token = || {
        signer.sign(
            TokenOp::Get,
            &id,
            &nodes,
            &mallory.principal.to_string(),
            0,
            Duration::from_secs(120),
        )
    };
    let rt = rt();
    // A connection opened before the revocation, and a node that serves mallory a chunk.
    let coord = c.proc("coordinator").grpc;
    let open = rt.block_on(async {
        let ch = collective_rpc::channel(&mallory, &coord, &coordinator_principal()).unwrap();
        let mut open = MetadataClient::new(ch);
        open.status(StatusRequest {}).await.unwrap();
        ChunkClient::new(&mallory).unwrap().get(&t, &id, &token()).await.unwrap();
        open
    });

    let out = c.ok(&[
        "ca",
        "revoke",
        "--ca",
        &ca_dir(&c),
        p(&certs.join("mallory.crt")),
        "--reason",
        "laptop stolen",
    ]);
    assert!(out.contains("revoked"), "{out}");
    let listed = c.ok(&["ca", "revocations", "--ca", &ca_dir(&c)]);
    assert!(
        listed.contains("mallory@home.collective.local") && listed.contains("laptop stolen"),
        "{listed}"
    );

    // New connections from the CLI are refused...
    let mut last = String::new();
    within(Duration::from_secs(20), "the coordinator refuses the revoked certificate", || {
        let o = as_mallory(&["status"]);
        last = String::from_utf8_lossy(&o.stderr).into_owned();
        !o.status.success()
    });
    assert!(last.to_lowercase().contains("revoked"), "the error names the revocation: {last}");
    rt.block_on(async {
        // ...and so is the next call over the connection opened before.
        let mut open = open;
        let err = open.status(StatusRequest {}).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("revoked"), "{}", err.message());
        // Nodes learn the list with their next heartbeat and refuse the certificate too,
        // even with a token the coordinator signed.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let fresh = ChunkClient::new(&mallory).unwrap();
            if fresh.get(&t, &id, &token()).await.is_err() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a node still serves a revoked certificate");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // Everybody else is untouched.
    c.ok(&["stat", "/x"]);
    // A certificate of another member is not revoked by this one's CA.
    let other = c.dir.join("other");
    let o = std::process::Command::new(BIN)
        .args([
            "ca",
            "init",
            "--member",
            "eve",
            "--domain",
            "eve.collective.local",
            "--out",
            p(&other),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = c.fails(&["ca", "revoke", "--ca", &ca_dir(&c), p(&other.join("ca.crt"))]);
    assert!(err.contains("not a Collective certificate") || err.contains("eve"), "{err}");
}

#[test]
fn rotation_renews_certificates_in_place_without_restart_or_failed_reads() {
    let c = Cluster::start("rotate", 2, 2);
    let data = random_bytes(3_000_000, 11);
    c.ok(&["put", p(&c.write_local("f", &data)), "/f"]);
    let pids: Vec<u32> = [c.proc("coordinator"), c.proc("node-01"), c.proc("node-02")]
        .iter()
        .map(|p| p.pid)
        .collect();
    let certs = c.dir.join("certs");
    let old_admin = c.dir.join("old-admin");
    std::fs::create_dir_all(&old_admin).unwrap();
    for f in ["admin.crt", "admin.key"] {
        std::fs::copy(certs.join(f), old_admin.join(f)).unwrap();
    }
    let coord = c.proc("coordinator");
    let before = served_fingerprint(&c, &coord.grpc, &coordinator_principal());

    let stop = std::sync::atomic::AtomicBool::new(false);
    let client_config = c.client_config.clone();
    let (reads, failures) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut reads, mut failures) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new(BIN)
                    .env("COLLECTIVE_CONFIG", &client_config)
                    .args(["cat", "/f"])
                    .output()
                    .unwrap();
                if out.status.success() && out.stdout == data {
                    reads += 1;
                } else {
                    failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
            (reads, failures)
        });
        std::thread::sleep(Duration::from_millis(500));
        // The coordinator and a node renew for their own key; the admin gets a new key and
        // its old certificate is revoked.
        for name in ["coordinator", "node-01"] {
            let out = c.ok(&[
                "ca",
                "rotate",
                "--ca",
                &ca_dir(&c),
                "--cert",
                p(&certs.join(format!("{name}.crt"))),
                "--validity",
                "40d",
            ]);
            assert!(out.contains("renewed") && out.contains("unchanged"), "{out}");
        }
        let out = c.ok(&[
            "ca",
            "rotate",
            "--ca",
            &ca_dir(&c),
            "--cert",
            p(&certs.join("admin.crt")),
            "--new-key",
            "--revoke-old",
        ]);
        assert!(out.contains("revoked"), "{out}");
        within(Duration::from_secs(20), "the coordinator presents its renewed certificate", || {
            served_fingerprint(&c, &coord.grpc, &coordinator_principal()) != before
        });
        within(Duration::from_secs(20), "status shows the renewed certificates", || {
            let s = c.status_json();
            let days = |who: &str| {
                s["certificates"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["principal"].as_str().unwrap().starts_with(who))
                    .and_then(|e| e["days_to_expiry"].as_i64())
            };
            days("coordinator@").is_some_and(|d| d <= 40) && days("node-01@").is_some_and(|d| d <= 40)
        });
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(
        failures.is_empty(),
        "{} of {} reads failed during rotation: {failures:?}",
        failures.len(),
        reads + failures.len()
    );
    assert!(reads >= 3, "only {reads} reads ran");
    for pid in pids {
        assert!(common::pid_alive(pid), "process {pid} was restarted");
    }
    // The admin keeps its identity under the new key; the old certificate is refused.
    c.ok(&["put", p(&c.write_local("g", b"after rotation")), "/g"]);
    let audit = c.ok(&["audit", "--json", "--limit", "5"]);
    assert!(audit.contains("admin@home.collective.local"), "{audit}");
    let err = c.fails(&[
        "--cert",
        p(&old_admin.join("admin.crt")),
        "--key",
        p(&old_admin.join("admin.key")),
        "ls",
        "/",
    ]);
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    // A coordinator keeps its key: a new one is refused with the reason.
    let err = c.fails(&[
        "ca",
        "rotate",
        "--ca",
        &ca_dir(&c),
        "--cert",
        p(&certs.join("coordinator.crt")),
        "--new-key",
    ]);
    assert!(err.contains("keeps its key"), "{err}");
}

#[test]
fn the_invite_endpoint_locks_out_an_address_that_keeps_guessing() {
    let c = Cluster::start("guess", 1, 1);
    c.ok(&["datastore", "create", "/shared"]);
    let good = c.ok(&["invite", "generate", "--grant", "/shared:read", "--validity", "1h"]);
    let good = good
        .lines()
        .find(|l| l.starts_with(collective_pki::INVITE_PREFIX))
        .unwrap()
        .trim()
        .to_string();
    // Forge codes that point at the coordinator (the holder cannot sign them).
    let (code, _, _) = collective_pki::InviteCode::decode(&good).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let forger = TokenSigner::from_pkcs8(&key.serialize_der(), "coordinator@home.collective.local".into()).unwrap();
    let mut refusals = Vec::new();
    // The coordinator allows 10 failed attempts per address in 15 minutes.
    for i in 0..=10u8 {
        let mut guess = code.clone();
        guess.id = [i; 16];
        let out = c
            .cmd()
            .args(["invite", "redeem", &guess.encode(&forger), "--name", &format!("guess{i}"), "--out"])
            .arg(c.path(&format!("guess{i}")))
            .output()
            .unwrap();
        assert!(!out.status.success());
        refusals.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    assert!(refusals[0].contains("altered or not issued"), "{}", refusals[0]);
    let last = refusals.last().unwrap();
    assert!(last.contains("too many failed invite attempts"), "{last}");
    // While locked out, even the genuine code is not looked at; nothing was redeemed.
    let err = c.fails(&["invite", "redeem", &good, "--name", "bob", "--out", p(&c.path("bob"))]);
    assert!(err.contains("too many failed invite attempts"), "{err}");
    let audit = c.ok(&["audit", "--json"]);
    assert!(!audit.contains("bob@home"), "{audit}");
}

/// A request that, when `spoof` is set, claims to be made on behalf of the admin (a header
/// only another member's coordinator may set).
fn claim<T>(spoof: bool, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if spoof {
        r.metadata_mut()
            .insert(collective_rpc::ON_BEHALF_OF, "admin@home.collective.local".parse().unwrap());
    }
    r
}

#[test]
fn a_read_only_client_cannot_write_or_reach_another_datastore_by_crafting_requests() {
    use collective_proto::v1::admin_client::AdminClient;
    use collective_proto::v1::*;
    let c = Cluster::start("escalate", 2, 2);
    for d in ["/shared", "/private"] {
        c.ok(&["datastore", "create", d]);
    }
    let shared = random_bytes(200_000, 21);
    c.ok(&["put", p(&c.write_local("a", &shared)), "/shared/a"]);
    c.ok(&["put", p(&c.write_local("s", b"the admin's secret")), "/private/secret"]);
    c.second_user("bob");
    c.ok(&["datastore", "grant", "/shared", "bob@home.collective.local", "read"]);
    let certs = c.path("bob");
    let bob = TlsIdentity::load(&c.dir.join("certs/ca.crt"), &certs.join("bob.crt"), &certs.join("bob.key")).unwrap();
    let coord = c.proc("coordinator").grpc;
    let rt = rt();
    rt.block_on(async {
        let ch = collective_rpc::channel(&bob, &coord, &coordinator_principal()).unwrap();
        let mut m = MetadataClient::new(ch.clone());
        // What the grant allows works, so the refusals below are about rights.
        let plan = m
            .read_plan(ReadPlanRequest {
                paths: vec!["/shared/a".into()],
            })
            .await
            .expect("bob may read /shared")
            .into_inner();
        let chunks: Vec<ChunkRef> = plan.files[0]
            .chunks
            .iter()
            .map(|l| ChunkRef {
                id: l.id.clone(),
                offset: l.offset,
                size: l.size,
                stored_on: vec![],
                seal: l.seal.clone(),
            })
            .collect();
        let descs: Vec<ChunkDesc> = chunks
            .iter()
            .map(|r| ChunkDesc {
                id: r.id.clone(),
                size: r.size,
            })
            .collect();
        let refused = |what: &str, r: Result<(), tonic::Status>| match r {
            Err(s) if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::NotFound) => {}
            other => panic!("{what}: expected a refusal, got {other:?}"),
        };
        refused(
            "read another datastore",
            m.read_plan(ReadPlanRequest {
                paths: vec!["/private/secret".into()],
            })
            .await
            .map(|_| ()),
        );
        // Each write operation, with and without claiming to act for the admin.
        for spoof in [false, true] {
            for path in ["/shared/b", "/private/b"] {
                refused(
                    "plan a write",
                    m.plan_write(claim(
                        spoof,
                        PlanWriteRequest {
                            chunks: descs.clone(),
                            path: path.into(),
                        },
                    ))
                    .await
                    .map(|_| ()),
                );
            }
            for path in ["/shared/b", "/shared/a", "/private/secret"] {
                refused(
                    "commit a file made of chunks already stored",
                    m.commit_files(claim(
                        spoof,
                        CommitFilesRequest {
                            files: vec![FileCommit {
                                path: path.into(),
                                size: shared.len() as u64,
                                mode: 0o644,
                                mtime_ms: 0,
                                chunks: chunks.clone(),
                                parents: false,
                            }],
                        },
                    ))
                    .await
                    .map(|_| ()),
                );
            }
            refused(
                "mkdir",
                m.mkdir(claim(
                    spoof,
                    MkdirRequest {
                        path: "/shared/d".into(),
                        parents: false,
                        mode: 0o755,
                    },
                ))
                .await
                .map(|_| ()),
            );
            refused(
                "remove",
                m.remove(claim(
                    spoof,
                    RemoveRequest {
                        path: "/shared/a".into(),
                        recursive: false,
                    },
                ))
                .await
                .map(|_| ()),
            );
            refused(
                "rename",
                m.rename(claim(
                    spoof,
                    RenameRequest {
                        src: "/shared/a".into(),
                        dst: "/shared/z".into(),
                    },
                ))
                .await
                .map(|_| ()),
            );
            refused(
                "symlink",
                m.symlink(claim(
                    spoof,
                    SymlinkRequest {
                        path: "/shared/l".into(),
                        target: "/private/secret".into(),
                    },
                ))
                .await
                .map(|_| ()),
            );
            refused(
                "setattr",
                m.set_attr(claim(
                    spoof,
                    SetAttrRequest {
                        path: "/shared/a".into(),
                        mode: Some(0o777),
                        mtime_ms: None,
                    },
                ))
                .await
                .map(|_| ()),
            );
            let mut admin = AdminClient::new(ch.clone());
            refused(
                "grant itself write",
                admin
                    .grant(claim(
                        spoof,
                        GrantRequest {
                            path: "/shared".into(),
                            subject: "bob@home.collective.local".into(),
                            rights: "read+write".into(),
                            until_ms: 0,
                        },
                    ))
                    .await
                    .map(|_| ()),
            );
            refused(
                "make an invite with write rights",
                admin
                    .generate_invite(claim(
                        spoof,
                        GenerateInviteRequest {
                            member: String::new(),
                            grants: vec!["/private:read+write".into()],
                            max_uses: 1,
                            validity_ms: 60_000,
                        },
                    ))
                    .await
                    .map(|_| ()),
            );
        }
    });
    // Nothing changed.
    assert!(c.cli(&["cat", "/shared/a"]).stdout == shared, "/shared/a changed");
    assert_eq!(c.ok(&["cat", "/private/secret"]), "the admin's secret");
    let listing = c.ok(&["ls", "/shared"]);
    assert_eq!(listing.lines().count(), 1, "{listing}");
}

/// `member`'s status: (chunks below their replication, chunks repaired since start).
fn repair_state(fed: &Cluster, member: &str) -> (u64, u64) {
    let out = fed.cmd_as(member).args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        v["replication_state"]["under_replicated_chunks"].as_u64().unwrap_or(u64::MAX),
        v["repair"]["repaired_chunks"].as_u64().unwrap_or(0),
    )
}

fn dropped_gossip(fed: &Cluster, member: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&fed.ok_as(member, &["federation", "peers", "--json"])).unwrap();
    v["dropped_unauthenticated"].as_u64().unwrap()
}

#[test]
fn a_removed_member_can_no_longer_read_write_or_gossip() {
    let fed = Cluster::federation("removal", 3, 2);
    let photo = random_bytes(400_000, 31);
    let src = fed.write_local("photo.jpg", &photo);
    fed.ok_as("alice", &["put", p(&src), "/media/photo.jpg"]);
    // /shared (carol's, hybrid) takes everyone's writes and spreads copies over members.
    let shared: Vec<(String, Vec<u8>)> = ["alice", "bob", "carol"]
        .iter()
        .enumerate()
        .map(|(i, who)| {
            let data = random_bytes(700_000, 40 + i as u64);
            let f = fed.write_local(&format!("{who}.bin"), &data);
            let remote = format!("/shared/{who}.bin");
            fed.ok_as(who, &["put", p(&f), &remote]);
            (remote, data)
        })
        .collect();
    fed.ok_as("bob", &["get", "/media/photo.jpg", p(&fed.path("before.jpg"))]);
    let on_bob = fed
        .stored_chunks()
        .iter()
        .filter(|(node, _)| node.ends_with("@bob.collective.local"))
        .count();
    assert!(on_bob > 0, "the scenario needs copies on bob's nodes");

    // Only the coordinator holding the root signs removals, only for an admin, never itself.
    let err = fed.fails_as("carol", &["federation", "remove", "bob"]);
    assert!(err.contains("does not hold the federation root"), "{err}");
    let err = fed.fails_as("alice", &["federation", "remove", "alice"]);
    assert!(err.contains("cannot remove its own member"), "{err}");

    fed.ok_as("alice", &["federation", "remove", "bob", "--reason", "moved away"]);
    for m in ["alice", "carol"] {
        within(Duration::from_secs(20), &format!("{m} to list bob as removed"), || {
            fed.peer_states(m)
                .iter()
                .any(|(d, s)| d == "bob.collective.local" && s == "removed")
        });
    }

    // bob can no longer read what he was granted, nor write where everyone may.
    let mut last = String::new();
    within(Duration::from_secs(20), "bob's reads and writes to be refused", || {
        let read = fed.cmd_as("bob").args(["cat", "/media/photo.jpg"]).output().unwrap();
        let write = fed.cmd_as("bob").args(["put", p(&src), "/shared/late.jpg"]).output().unwrap();
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&read.stderr),
            String::from_utf8_lossy(&write.stderr)
        );
        !read.status.success() && !write.status.success()
    });
    assert!(last.contains("removed from the federation"), "{last}");
    let err = fed.fails_as("bob", &["ls", "/shared"]);
    assert!(err.contains("removed from the federation"), "{err}");

    // bob's gossip is dropped by the others, and he is never seen alive again.
    let before = dropped_gossip(&fed, "carol");
    within(Duration::from_secs(20), "carol to drop bob's gossip", || {
        dropped_gossip(&fed, "carol") > before
    });

    // Nothing of the remaining members is lost: copies bob's nodes held are repaired onto
    // alice's and carol's, and every file reads back byte-exact.
    within(
        Duration::from_secs(60),
        "the copies on bob's nodes to be repaired elsewhere",
        || {
            let (a, c) = (repair_state(&fed, "alice"), repair_state(&fed, "carol"));
            a.0 == 0 && c.0 == 0 && a.1 + c.1 > 0
        },
    );
    for (remote, data) in &shared {
        let out = fed.cmd_as("carol").args(["cat", remote]).output().unwrap();
        assert!(out.status.success(), "{remote}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == *data, "{remote} differs after the removal");
    }
    let out = fed.cmd_as("alice").args(["cat", "/media/photo.jpg"]).output().unwrap();
    assert!(out.status.success() && out.stdout == photo);

    // The removal outlives a restart of a coordinator that learned it through gossip.
    fed.kill9("coordinator@carol");
    fed.restart("coordinator@carol");
    within(Duration::from_secs(20), "carol's coordinator back", || {
        fed.cmd_as("carol").args(["ls", "/shared"]).output().unwrap().status.success()
    });
    assert!(
        fed.peer_states("carol")
            .iter()
            .any(|(d, s)| d == "bob.collective.local" && s == "removed")
    );
    let err = fed.fails_as("bob", &["ls", "/shared"]);
    assert!(err.contains("removed from the federation"), "{err}");
}
