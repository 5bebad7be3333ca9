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
use collective_proto::v1::{ListRequest, PathRequest, RegisterNodeRequest, StatusRequest, TokenOp, UsageRequest};
use common::{BIN, Cluster, p, random_bytes};

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
        let real = TokenSigner::from_pkcs8(coordinator.pkcs8_der(), coordinator.principal.to_string()).unwrap();
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
        // A write with a forged token stores nothing.
        let data = bytes::Bytes::from_static(b"planted");
        let planted = ChunkId::of(&data);
        let r = client
            .put(&t, &planted, data, &forger.sign(TokenOp::Put, &planted, &nodes, &me, 7, ttl))
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
