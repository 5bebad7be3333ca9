//! `collective dev up --members N`: a local federation on loopback. The first member
//! (alice) makes the federation root and holds it; every other member joins through a real
//! member invite and `member join`, exactly as a person on another machine would.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use collective_client::{Client, ClientConfig, InviteFor, enrol};
use collective_coordinator::{CoordinatorConfig, FederationConfig};
use collective_core::{Rights, Role, Strategy};
use collective_pki::{FederationRoot, MemberCa};

use crate::dev::{
    ClusterFile, Issuer, MemberInfo, NodeSite, ProcessInfo, UpArgs, free_port, spawn, start_nodes, wait_ready, write_cluster, write_toml,
};

/// Member names, in joining order.
pub const NAMES: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];
pub const FEDERATION: &str = "collective.local";
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

fn connect(client_config_path: &Path) -> Result<Client> {
    let cfg = ClientConfig::load(client_config_path)?;
    Ok(Client::connect(&cfg)?)
}

/// Starts one member's coordinator (config already written) and its nodes; returns them all
/// without waiting for them: the caller records them first, so a failure can stop them.
fn start_member(
    member_dir: &Path,
    coordinator_config: &Path,
    cfg: &CoordinatorConfig,
    a: &UpArgs,
    site: &NodeSite<'_>,
) -> Result<Vec<ProcessInfo>> {
    let ca = MemberCa::load(&member_dir.join("ca"))?;
    let issuer = Issuer {
        ca: &ca,
        certs: member_dir.join("certs"),
        sans: vec![site.host.to_string()],
    };
    std::fs::create_dir_all(member_dir.join("logs"))?;
    let log = member_dir.join("logs/coordinator.log");
    let pid = spawn("coordinator", coordinator_config, &log, site.netns)?;
    let mut procs = vec![ProcessInfo {
        member: ca.domain.clone(),
        role: "coordinator".into(),
        principal: format!("coordinator@{}", ca.domain),
        pid,
        grpc: cfg.grpc_listen.clone(),
        quic: None,
        http: cfg.http_listen.clone(),
        config: coordinator_config.to_path_buf(),
        data_dir: member_dir.join(&cfg.data_dir),
        log,
        netns: site.netns.map(str::to_string),
    }];
    procs.extend(start_nodes(
        &issuer,
        member_dir,
        a.nodes.unwrap_or(2),
        &a.capacity,
        &cfg.grpc_listen,
        site,
    )?);
    Ok(procs)
}

pub async fn up(a: &UpArgs, dir: &Path) -> Result<()> {
    let names = &NAMES[..a.members];
    if names.iter().any(|n| dir.join(n).exists()) {
        bail!(
            "{} already holds a federation; stop it with `collective dev down --dir {}` and remove the directory, or pick another --dir",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    let started = Instant::now();
    let root_dir = dir.join("root");
    let root = FederationRoot::init(FEDERATION, &root_dir)?;
    let net = if a.netns { Some(crate::netns::setup(names)?) } else { None };
    let mut cluster = ClusterFile {
        member: String::new(),
        client_config: PathBuf::new(),
        members: vec![],
        processes: vec![],
        net: net.clone(),
    };
    // From here on a failure stops what started and removes the namespaces (`dev down`).
    if let Err(e) = write_cluster(dir, &cluster) {
        if let Some(n) = &net {
            crate::netns::teardown(n);
        }
        return Err(e);
    }
    let r = start_all(a, dir, names, &root, &root_dir, &net, &mut cluster).await;
    if r.is_err() {
        let _ = crate::dev::down(dir);
    }
    r?;
    report(&cluster, dir, started.elapsed());
    Ok(())
}

/// Starts every member in turn (the founder first), then waits for the federation to settle.
async fn start_all(
    a: &UpArgs,
    dir: &Path,
    names: &[&str],
    root: &FederationRoot,
    root_dir: &Path,
    net: &Option<crate::netns::Net>,
    cluster: &mut ClusterFile,
) -> Result<()> {
    let mut founder_client: Option<PathBuf> = None;
    for (i, name) in names.iter().enumerate() {
        let member_dir = dir.join(name);
        let domain = collective_pki::member_domain(name, &root.domain);
        let site = match &net {
            Some(n) => NodeSite {
                host: &n.members[i].addr,
                netns: Some(&n.members[i].netns),
            },
            None => crate::dev::LOOPBACK,
        };
        let host = site.host;
        let grpc = format!("{host}:{}", free_port()?);
        let http = format!("{host}:{}", free_port()?);
        let gossip = format!("{host}:{}", free_port()?);
        let ca_dir = member_dir.join("ca");
        let (ca, bootstrap, root_dir) = match &founder_client {
            // The founder: its member CA is signed by the root it holds.
            None => (root.admit_member(name, &ca_dir)?, vec![], root_dir.to_path_buf()),
            // Everyone else: a member invite from the founder, redeemed as `member join`
            // does (a CSR signed by the root's holder over the invite's channel).
            Some(founder) => {
                let r = connect(founder)?
                    .generate_invite(InviteFor::Member(name.to_string()), 1, Duration::from_secs(3600))
                    .await
                    .context("the founder's coordinator did not make a member invite")?;
                let invite = enrol::Invite::parse(&r.code)?;
                let joined = enrol::join_member(&invite, name, &ca_dir)
                    .await
                    .with_context(|| format!("{name} could not join the federation"))?;
                (joined.ca, joined.gossip_peers, PathBuf::new())
            }
        };
        let issuer = Issuer {
            ca: &ca,
            certs: member_dir.join("certs"),
            sans: vec![host.to_string()],
        };
        let (cert, key) = issuer.issue(Role::Coordinator, "coordinator")?;
        let cfg = CoordinatorConfig {
            data_dir: member_dir.join("coordinator-data"),
            grpc_listen: grpc.clone(),
            http_listen: http.clone(),
            replication: a.replication,
            // Dev timings: repair, scrub and collection watchable live.
            node_timeout: crate::dev::DEV_NODE_TIMEOUT.into(),
            metadata_backup_interval: a.metadata_backup_interval.clone(),
            upkeep: crate::dev::dev_upkeep(),
            ca_dir: ca_dir.clone(),
            tls: collective_coordinator::TlsFiles {
                ca: issuer.trust(),
                cert,
                key,
            },
            federation: FederationConfig {
                gossip_listen: gossip.clone(),
                bootstrap,
                root_dir,
                contribution: a.contribution.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let coordinator_config = member_dir.join("coordinator.toml");
        write_toml(&coordinator_config, &cfg)?;
        let client_config_path = member_dir.join("client.toml");
        issuer.write_client_config(name, &grpc, &client_config_path)?;
        // On failure the caller stops every process in cluster.json.
        let procs = start_member(&member_dir, &coordinator_config, &cfg, a, &site)?;
        cluster.processes.extend(procs.iter().cloned());
        write_cluster(dir, cluster)?;
        wait_ready(dir, &procs).await?;
        cluster.members.push(MemberInfo {
            name: name.to_string(),
            domain: domain.clone(),
            user: format!("{name}@{domain}"),
            client_config: client_config_path.clone(),
            coordinator_config,
            ca_dir: member_dir.join("ca"),
            grpc,
            gossip,
            netns: site.netns.map(str::to_string),
        });
        if i == 0 {
            cluster.member = domain;
            cluster.client_config = client_config_path.clone();
            founder_client = Some(client_config_path);
        }
        write_cluster(dir, cluster)?;
    }
    // Each member's recovery kit names the others' coordinators, where recovery asks.
    for m in &cluster.members {
        let facts = collective_pki::KitFacts {
            member: m.name.clone(),
            domain: m.domain.clone(),
            federation: FEDERATION.to_string(),
            bootstrap: cluster
                .members
                .iter()
                .filter(|o| o.name != m.name)
                .map(|o| o.grpc.clone())
                .collect(),
        };
        let member_dir = m.ca_dir.parent().unwrap_or(dir);
        collective_client::enrol::write_recovery_kit(member_dir, &m.ca_dir, &facts)?;
    }

    settle(cluster).await
}

/// Waits for gossip to converge, then creates the example datastores and grants and waits
/// until every member's catalog lists all of them.
async fn settle(cluster: &ClusterFile) -> Result<()> {
    let n = cluster.members.len();
    wait_until("every member to see every other alive", || async {
        for m in &cluster.members {
            let r = connect(&m.client_config)?.peers().await?;
            let alive = r
                .members
                .iter()
                .filter(|p| p.state() == collective_proto::v1::MemberHealth::Alive)
                .count();
            if alive < n {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;

    let mut expected = Vec::new();
    for (i, m) in cluster.members.iter().enumerate() {
        let (path, strategy, grants) = match i {
            0 => ("/media", Strategy::Media, vec![(format!("bob@bob.{FEDERATION}"), Rights::READ)]),
            1 => ("/backup", Strategy::Backup, vec![]),
            2 => (
                "/shared",
                Strategy::Hybrid,
                vec![(format!("*@*.{FEDERATION}"), Rights::READ.union(Rights::WRITE))],
            ),
            _ => continue,
        };
        let client = connect(&m.client_config)?;
        client
            .create_datastore(path, strategy, 2)
            .await
            .with_context(|| format!("{}: creating {path}", m.domain))?;
        for (subject, rights) in grants {
            client
                .grant(path, &subject, rights, None)
                .await
                .with_context(|| format!("{}: granting {rights} on {path} to {subject}", m.domain))?;
        }
        expected.push(path.trim_start_matches('/').to_string());
    }
    wait_until("every member's catalog to list every datastore", || async {
        for m in &cluster.members {
            let r = connect(&m.client_config)?.peers().await?;
            let known: Vec<&String> = r.members.iter().flat_map(|p| p.datastores.iter()).collect();
            if !expected.iter().all(|d| known.iter().any(|k| k.trim_start_matches('/') == d)) {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
}

async fn wait_until<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    let mut last_err = String::new();
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = format!(" (last error: {e:#})"),
        }
        if started.elapsed() > CONVERGE_TIMEOUT {
            bail!("timed out after {} s waiting for {what}{last_err}", CONVERGE_TIMEOUT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn report(cluster: &ClusterFile, dir: &Path, took: Duration) {
    println!(
        "local federation up in {:.1} s: {} members, each with a coordinator and {} node(s)",
        took.as_secs_f64(),
        cluster.members.len(),
        cluster.processes.iter().filter(|p| p.role == "node").count() / cluster.members.len().max(1)
    );
    crate::dev::print_processes(&cluster.processes);
    println!();
    println!("example datastores: /media (alice's, media; bob may read), /backup (bob's, backup),");
    println!("                    /shared (carol's, hybrid; everyone may read and write)");
    println!("use it as one of the members:");
    for m in &cluster.members {
        println!("  export COLLECTIVE_CONFIG={}   # {}", m.client_config.display(), m.user);
    }
    println!("  collective ls / && collective federation peers");
    if let Some(net) = &cluster.net {
        println!("each member is on its own network (run its CLI there: ip netns exec NAMESPACE collective …):");
        for m in &net.members {
            println!("  {:<6} namespace {:<16} address {}", m.name, m.netns, m.addr);
        }
        let first = net.members.first().map(|m| m.router_link.as_str()).unwrap_or("m1");
        println!(
            "  cut a member off:  ip -n {} link set {first} down   (and `up` to heal)",
            net.router
        );
        println!(
            "  slow the links:    collective dev netem --dir {} --delay 100ms --jitter 20ms --loss 2",
            dir.display()
        );
    }
    println!("recovery kits (what a real member prints and keeps outside the house):");
    println!(
        "  {}",
        dir.join("<member>").join(collective_client::enrol::RECOVERY_KIT_FILE).display()
    );
    println!("stop it:");
    println!("  collective dev down --dir {}", dir.display());
}
