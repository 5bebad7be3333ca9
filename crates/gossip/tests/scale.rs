//! Gossip at the scale the design claims: many coordinators, each with its nodes in its
//! published state, on real UDP sockets with real certificates and signatures. Measures
//! how long the federation takes to converge, how long to detect a coordinator that dies
//! without a word, and the gossip traffic per coordinator.
//!
//! CI runs 20 coordinators with 10 nodes each; `make chaos` runs the long form
//! (`COLLECTIVE_SCALE_MEMBERS=50`, 500 nodes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use collective_gossip::{Gossip, GossipSettings, PeerState};
use collective_pki::{FederationRoot, IssueRequest, MemberCa, TlsIdentity, TokenSigner};
use collective_proto::v1::{MemberState, NodeSummary};

const FEDERATION: &str = "scale.local";
const NODES_PER_MEMBER: usize = 10;

struct Member {
    gossip: Gossip,
    addr: SocketAddr,
    /// Dropping it stops the member's runtime at once: its socket closes without a
    /// goodbye, as when a machine dies.
    runtime: Option<tokio::runtime::Runtime>,
}

fn identity(root: &FederationRoot, dir: &Path, name: &str) -> TlsIdentity {
    let domain = collective_pki::member_domain(name, FEDERATION);
    let ca_dir = dir.join(name);
    let csr = MemberCa::begin_join(name, &domain, &ca_dir).unwrap();
    let pem = root.sign_member(&csr, name).unwrap();
    let ca = MemberCa::finish_join(&ca_dir, &pem, root.cert_pem()).unwrap();
    let req = IssueRequest {
        role: collective_core::Role::Coordinator,
        name: "coordinator".into(),
        sans: vec!["127.0.0.1".into()],
        not_before: None,
        not_after: None,
    };
    let (cert, key) = ca.issue_to(&req, &ca_dir.join("certs")).unwrap();
    TlsIdentity::load(&ca_dir.join("certs/ca.crt"), &cert, &key).unwrap()
}

fn state(name: &str) -> MemberState {
    MemberState {
        member: collective_pki::member_domain(name, FEDERATION),
        coordinator: format!("coordinator@{}", collective_pki::member_domain(name, FEDERATION)),
        grpc_addr: "127.0.0.1:7000".into(),
        contribution_bytes: 1 << 40,
        nodes: (0..NODES_PER_MEMBER)
            .map(|i| NodeSummary {
                node: format!("node-{i:02}@{}", collective_pki::member_domain(name, FEDERATION)),
                capacity_bytes: 4 << 40,
                free_bytes: 3 << 40,
                healthy: true,
            })
            .collect(),
        ..Default::default()
    }
}

fn start(identity: TlsIdentity, bootstrap: Vec<SocketAddr>, name: &str) -> Member {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let signer = Arc::new(TokenSigner::from_pkcs8(&identity.pkcs8_der(), identity.principal.to_string()).unwrap());
    let settings = GossipSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: "127.0.0.1:0".parse().unwrap(),
        bootstrap,
        probe_period: Duration::from_secs(1),
        probe_rtt: Duration::from_millis(400),
        suspect_timeout: Duration::from_secs(4),
        peers_file: None,
        clock: collective_core::system_clock(),
    };
    let (gossip, addr) = runtime
        .block_on(Gossip::start(settings, identity, signer, state(name), std::future::pending()))
        .unwrap();
    gossip.publish(state(name));
    Member {
        gossip,
        addr,
        runtime: Some(runtime),
    }
}

fn alive_views(members: &[Member], of: usize) -> usize {
    members[of].gossip.peers().iter().filter(|p| p.state == PeerState::Alive).count()
}

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("collective-gossip-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_federation_of_many_coordinators_converges_detects_a_dead_one_and_keeps_traffic_small() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::var("COLLECTIVE_SCALE_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = scratch();
    let root = FederationRoot::init(FEDERATION, &dir.join("root")).unwrap();
    let identities: Vec<TlsIdentity> = (0..n).map(|i| identity(&root, &dir, &format!("m{i:03}"))).collect();

    // Everyone joins through the first member, as `member join` does.
    let started = Instant::now();
    let mut members: Vec<Member> = Vec::new();
    for (i, id) in identities.into_iter().enumerate() {
        let bootstrap = members.first().map(|m| vec![m.addr]).unwrap_or_default();
        members.push(start(id, bootstrap, &format!("m{i:03}")));
    }
    let deadline = started + Duration::from_secs(120);
    let converged = loop {
        // Membership; member states (with the nodes) ride on gossip too, and the
        // coordinators' gRPC anti-entropy fills what gossip dropped, so they are reported,
        // not waited for.
        let everyone = (0..n).all(|i| alive_views(&members, i) == n - 1);
        if everyone {
            break started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no convergence within 120 s: alive views {:?}, states {:?}",
            (0..n).map(|i| alive_views(&members, i)).collect::<Vec<_>>(),
            (0..n).map(|i| members[i].gossip.states().len()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let states_known = (0..n).map(|i| members[i].gossip.states().len()).sum::<usize>() as f64 / (n * n) as f64;

    // Steady-state traffic over 10 s, once the joins' updates have been disseminated.
    std::thread::sleep(Duration::from_secs(15));
    let bytes = |ms: &[Member]| -> u64 { ms.iter().map(|m| m.gossip.counters().sent_bytes.load(Ordering::Relaxed)).sum() };
    let (b0, t0) = (bytes(&members), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let per_member_per_s = (bytes(&members) - b0) as f64 / t0.elapsed().as_secs_f64() / n as f64;
    let flapped = (0..n).any(|i| alive_views(&members, i) != n - 1);
    assert!(!flapped, "a live member was marked suspect or down in steady state");

    // One coordinator dies without a word.
    let victim = n / 2;
    let victim_domain = collective_pki::member_domain(&format!("m{victim:03}"), FEDERATION);
    let killed = Instant::now();
    drop(members[victim].runtime.take());
    let detected = loop {
        let all_know = (0..n).filter(|&i| i != victim).all(|i| {
            members[i]
                .gossip
                .peers()
                .iter()
                .any(|p| p.member == victim_domain && p.state == PeerState::Down)
        });
        if all_know {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "the dead coordinator was not detected within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let report = format!(
        "gossip scale: {n} coordinators, {} nodes in their states: membership converged in {:.2} s \
         ({:.0}% of member states known by then, without anti-entropy); a killed coordinator was down \
         for everyone after {:.2} s; {:.0} bytes/s sent per coordinator",
        n * NODES_PER_MEMBER,
        converged.as_secs_f64(),
        states_known * 100.0,
        detected.as_secs_f64(),
        per_member_per_s
    );
    eprintln!("{report}");
    std::fs::write(std::env::temp_dir().join(format!("collective-gossip-scale-{n}.txt")), &report).unwrap();
    // Times are figures to report, not assertions (the machine may be busy); the traffic
    // must fit a home uplink many times over.
    assert!(per_member_per_s < 64_000.0, "{report}");
    drop(members);
    let _ = std::fs::remove_dir_all(&dir);
}
