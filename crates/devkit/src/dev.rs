//! `collective dev up|down`: a whole local cluster (one coordinator, N nodes) on loopback,
//! with its certificates, configs and logs under one directory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use collective_client::ClientConfig;
use collective_coordinator::CoordinatorConfig;
use collective_core::Role;
use collective_node::NodeConfig;
use collective_pki::{IssueRequest, MemberCa};
use serde::{Deserialize, Serialize};

const MEMBER: &str = "home";
const DOMAIN: &str = "home.collective.local";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Subcommand)]
pub enum DevCommand {
    /// Generate certificates and configs, start a coordinator and N nodes, wait until healthy
    Up(UpArgs),
    /// Stop every process of a cluster started with `dev up`
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Delay and drop packets between the members of a `dev up --netns` federation until
    /// stopped (needs iptables-legacy; the kernel's netem is not needed)
    Netem(crate::netem::NetemArgs),
    /// What a metadata backup costs: builds a namespace of --files files in a store of its
    /// own, times a snapshot (export, cut, seal), then measures what one backup after
    /// --changes small changes adds to the federation; prints one JSON object
    BenchMetadata {
        #[arg(long, default_value_t = 100_000)]
        files: u64,
        #[arg(long, default_value_t = 1_000)]
        changes: u64,
        /// Scratch directory (removed afterwards)
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args)]
pub struct UpArgs {
    /// Directory for certificates, configs, data and logs
    #[arg(long)]
    dir: PathBuf,
    /// Members of a local federation (alice, bob, carol, …); 1 starts a single-member cluster
    #[arg(long, default_value_t = 1)]
    pub(crate) members: usize,
    /// Storage nodes per member (default: 3 for one member, 2 per member in a federation)
    #[arg(long)]
    pub(crate) nodes: Option<usize>,
    /// Copies of every chunk
    #[arg(long, default_value_t = 2)]
    pub(crate) replication: u32,
    /// Capacity of each node
    #[arg(long, default_value = "10GiB")]
    pub(crate) capacity: String,
    /// Capacity each member offers to the others (federation only)
    #[arg(long, default_value = "4GiB")]
    pub(crate) contribution: String,
    /// Put every member of the federation on its own network (a network namespace joined
    /// to the others through a router namespace), so links between members can be cut or
    /// slowed; needs root. `dev down` removes the namespaces
    #[arg(long)]
    pub(crate) netns: bool,
    /// How often each coordinator backs its metadata up into the federation (production
    /// default: 60s; short here so a demo or a test sees its changes backed up at once)
    #[arg(long, default_value = DEV_BACKUP_INTERVAL)]
    pub(crate) metadata_backup_interval: String,
}

/// `cluster.json`: every process of a dev cluster (of every member, in a federation).
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The first member's domain, and its user's client config.
    pub member: String,
    pub client_config: PathBuf,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberInfo>,
    pub processes: Vec<ProcessInfo>,
    /// The members' networks, with `--netns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<crate::netns::Net>,
}

/// One member of a local federation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberInfo {
    pub name: String,
    pub domain: String,
    /// The member's user `NAME@<domain>`, an admin of its coordinator.
    pub user: String,
    pub client_config: PathBuf,
    pub coordinator_config: PathBuf,
    pub ca_dir: PathBuf,
    pub grpc: String,
    pub gossip: String,
    /// The network namespace the member runs in (`--netns`); run its CLI there too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Member domain the process belongs to.
    #[serde(default)]
    pub member: String,
    pub role: String,
    pub principal: String,
    pub pid: u32,
    pub grpc: String,
    pub quic: Option<String>,
    pub http: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The network namespace it runs in (`--netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

pub async fn run(cmd: DevCommand) -> Result<()> {
    match cmd {
        DevCommand::Up(a) => up(a).await,
        DevCommand::Down { dir } => down(&dir),
        DevCommand::Netem(a) => crate::netem::run(a).await,
        DevCommand::BenchMetadata { files, changes, dir } => {
            if dir.exists() {
                anyhow::bail!("{} exists; name a directory the benchmark may create and remove", dir.display());
            }
            let d = dir.clone();
            let r = tokio::task::spawn_blocking(move || collective_coordinator::bench_backup(&d, files, changes)).await?;
            let _ = std::fs::remove_dir_all(&dir);
            let r = r.map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
    }
}

/// A small xorshift generator: ports and subnets to try, simulated packet fates.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    /// Seeded from the clock and the process id, so runs and processes differ.
    pub(crate) fn from_clock() -> XorShift {
        XorShift::new(collective_core::unix_ms_now() ^ (u64::from(std::process::id()) << 32))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A loopback port free for both TCP and UDP (gRPC and QUIC share the number).
///
/// Picked at random below the kernel's ephemeral range, so the outgoing connections of
/// this or any other program cannot take it between now and the moment a process binds
/// it; never the same port twice in one run.
pub(crate) fn free_port() -> Result<u16> {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12_000 {
        (ephemeral_low - 10_000, ephemeral_low)
    } else {
        (61_000, 65_000)
    };
    let mut rng = XorShift::from_clock();
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..500 {
        let port = low + (rng.next() % u64::from(high - low)) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok() && reserve_port(port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("could not find a free loopback port between {low} and {high}")
}

/// Claims `port` for this process among every `collective dev up` running at once (tests
/// start several in parallel): a file named after the port holding our pid. A claim whose
/// process has exited is stale (its servers have bound their ports by then) and is taken
/// over. Where the directory cannot be written, the bind checks alone decide.
fn reserve_port(port: u16) -> bool {
    let dir = std::env::temp_dir().join("collective-port-claims");
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    let path = dir.join(port.to_string());
    let me = std::process::id();
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                use std::io::Write;
                return f.write_all(me.to_string().as_bytes()).is_ok();
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok());
                match owner {
                    Some(pid) if pid != me && Path::new(&format!("/proc/{pid}")).exists() => return false,
                    // Being written this very moment by another process.
                    None if std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < std::time::Duration::from_secs(1))) =>
                    {
                        return false;
                    }
                    // Ours from an earlier pick, or stale: take it over.
                    _ => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            Err(_) => return true,
        }
    }
    false
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// GET `path` from a plain-HTTP endpoint; returns the status code.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let sock: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A node that misses heartbeats this long is down (production default: 10s).
pub(crate) const DEV_NODE_TIMEOUT: &str = "6s";
/// Metadata backups into the federation this often (production default: 60s), so a demo
/// or a test sees its changes backed up within seconds.
pub(crate) const DEV_BACKUP_INTERVAL: &str = "5s";

/// Short upkeep periods so repair, scrub and garbage collection can be watched live (and
/// tested); production defaults are minutes to hours (see docs/configuration.md).
pub(crate) fn dev_upkeep() -> collective_coordinator::UpkeepConfig {
    collective_coordinator::UpkeepConfig {
        scan_interval: "1s".into(),
        repair_grace: "4s".into(),
        repair_rate: "256MiB".into(),
        repair_parallel: 4,
        gc_grace: "3s".into(),
        hot_threshold: 50.0,
        hot_half_life: "5s".into(),
        hot_max_extra: 1,
    }
}

pub(crate) fn write_toml<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    std::fs::write(path, toml::to_string_pretty(v)?).with_context(|| format!("cannot write {}", path.display()))
}

/// Starts `collective ROLE --config CONFIG` in the background (inside `netns` when given).
pub(crate) fn spawn(role: &str, config: &Path, log: &Path, netns: Option<&str>) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the collective binary")?;
    let out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.arg(role)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // Own session: the cluster outlives the terminal that started it.
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    if let Some(ns) = netns {
        crate::netns::run_inside(&mut cmd, ns)?;
    }
    let child = cmd.spawn().with_context(|| format!("cannot start the {role}"))?;
    Ok(child.id())
}

/// Issues certificates for one member's processes into `certs`.
pub(crate) struct Issuer<'a> {
    pub ca: &'a MemberCa,
    pub certs: PathBuf,
    pub sans: Vec<String>,
}

impl Issuer<'_> {
    pub fn issue(&self, role: Role, name: &str) -> Result<(PathBuf, PathBuf)> {
        let req = IssueRequest {
            role,
            name: name.to_string(),
            sans: self.sans.clone(),
            not_before: None,
            not_after: None,
        };
        Ok(self.ca.names().claim_with(name, || self.ca.issue_to(&req, &self.certs))?)
    }

    pub fn trust(&self) -> PathBuf {
        self.certs.join("ca.crt")
    }

    /// Issues a client certificate for `name` and writes `path`, a client config for it.
    pub fn write_client_config(&self, name: &str, coordinator: &str, path: &Path) -> Result<()> {
        let (cert, key) = self.issue(Role::Client, name)?;
        let client = ClientConfig {
            coordinator: coordinator.to_string(),
            ca: self.trust(),
            cert,
            key,
            ..Default::default()
        };
        write_toml(path, &client)
    }
}

/// Writes configs for `count` nodes of one member under `dir` and starts them.
/// Where a member's processes run: the address they listen on, and the network namespace
/// they run in (`dev up --netns`), if any.
pub(crate) struct NodeSite<'a> {
    pub host: &'a str,
    pub netns: Option<&'a str>,
}

pub(crate) const LOOPBACK: NodeSite<'static> = NodeSite {
    host: "127.0.0.1",
    netns: None,
};

pub(crate) fn start_nodes(
    issuer: &Issuer<'_>,
    dir: &Path,
    count: usize,
    capacity: &str,
    coordinator: &str,
    site: &NodeSite<'_>,
) -> Result<Vec<ProcessInfo>> {
    let domain = issuer.ca.domain.clone();
    let mut out = Vec::with_capacity(count);
    for i in 1..=count {
        let name = format!("node-{i:02}");
        let (cert, key) = issuer.issue(Role::Node, &name)?;
        let port = free_port()?;
        let host = site.host;
        let node_http = format!("{host}:{}", free_port()?);
        let cfg = NodeConfig {
            data_dir: dir.join(format!("{name}-data")),
            capacity: capacity.to_string(),
            grpc_listen: format!("{host}:{port}"),
            quic_listen: format!("{host}:{port}"),
            http_listen: node_http.clone(),
            coordinator: coordinator.to_string(),
            scrub_rate: "256MiB".into(),
            scrub_interval: "1h".into(),
            tls: collective_node::TlsFiles {
                ca: issuer.trust(),
                cert,
                key,
            },
            ..Default::default()
        };
        let path = dir.join(format!("{name}.toml"));
        write_toml(&path, &cfg)?;
        let log = dir.join(format!("logs/{name}.log"));
        let pid = spawn("node", &path, &log, site.netns)?;
        out.push(ProcessInfo {
            member: domain.clone(),
            role: "node".into(),
            principal: format!("{name}@{domain}"),
            pid,
            grpc: cfg.grpc_listen.clone(),
            quic: Some(cfg.quic_listen.clone()),
            http: node_http,
            config: path,
            data_dir: cfg.data_dir.clone(),
            log,
            netns: site.netns.map(str::to_string),
        });
    }
    Ok(out)
}

/// Fails when `dir` already holds a running cluster.
fn refuse_running(dir: &Path) -> Result<()> {
    if let Ok(text) = std::fs::read_to_string(dir.join("cluster.json"))
        && let Ok(c) = serde_json::from_str::<ClusterFile>(&text)
        && c.processes.iter().any(|p| pid_alive(p.pid))
    {
        bail!(
            "a cluster is already running in {} (see cluster.json); stop it with `collective dev down --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Waits until every process answers ready; on failure stops the whole cluster in `dir`.
pub(crate) async fn wait_ready(dir: &Path, procs: &[ProcessInfo]) -> Result<()> {
    let started = Instant::now();
    for p in procs {
        loop {
            if !pid_alive(p.pid) {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
                let _ = down(dir);
                bail!(
                    "{} exited during start-up; its log {} ends with:\n{}",
                    p.principal,
                    p.log.display(),
                    tail.join("\n")
                );
            }
            if http_status(&p.http, "/health/ready") == Some(200) {
                break;
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = down(dir);
                bail!(
                    "{} did not become ready within {} s; see {}",
                    p.principal,
                    READY_TIMEOUT.as_secs(),
                    p.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

pub(crate) fn write_cluster(dir: &Path, cluster: &ClusterFile) -> Result<()> {
    let path = dir.join("cluster.json");
    std::fs::write(&path, serde_json::to_string_pretty(cluster)?).with_context(|| format!("cannot write {}", path.display()))
}

async fn up(a: UpArgs) -> Result<()> {
    if a.nodes == Some(0) {
        bail!("--nodes must be at least 1");
    }
    let dir = std::path::absolute(&a.dir).with_context(|| format!("bad --dir {}", a.dir.display()))?;
    refuse_running(&dir)?;
    match a.members {
        0 => bail!("--members must be at least 1"),
        1 if a.netns => bail!("--netns puts each member of a federation on its own network; give --members 2 or more"),
        1 => up_single(&a, &dir).await,
        n if n > crate::devfed::NAMES.len() => bail!("--members may be at most {}", crate::devfed::NAMES.len()),
        _ => crate::devfed::up(&a, &dir).await,
    }
}

async fn up_single(a: &UpArgs, dir: &Path) -> Result<()> {
    let nodes = a.nodes.unwrap_or(3);
    std::fs::create_dir_all(dir.join("logs"))?;
    let ca_dir = dir.join("ca");
    let ca = if ca_dir.join("ca.key").exists() {
        MemberCa::load(&ca_dir)?
    } else {
        MemberCa::init(MEMBER, DOMAIN, &ca_dir)?
    };
    let issuer = Issuer {
        ca: &ca,
        certs: dir.join("certs"),
        sans: vec!["localhost".to_string(), "127.0.0.1".to_string()],
    };

    let mut processes = Vec::new();
    let (cert, key) = issuer.issue(Role::Coordinator, "coordinator")?;
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    let coord_cfg = CoordinatorConfig {
        data_dir: dir.join("coordinator-data"),
        grpc_listen: grpc.clone(),
        http_listen: http.clone(),
        replication: a.replication,
        node_timeout: DEV_NODE_TIMEOUT.into(),
        metadata_backup_interval: a.metadata_backup_interval.clone(),
        upkeep: dev_upkeep(),
        // The coordinator signs certificates for users who redeem invites.
        ca_dir: ca_dir.clone(),
        tls: collective_coordinator::TlsFiles {
            ca: issuer.trust(),
            cert,
            key,
        },
        ..Default::default()
    };
    let coord_path = dir.join("coordinator.toml");
    write_toml(&coord_path, &coord_cfg)?;
    let log = dir.join("logs/coordinator.log");
    let pid = spawn("coordinator", &coord_path, &log, None)?;
    processes.push(ProcessInfo {
        member: DOMAIN.into(),
        role: "coordinator".into(),
        principal: format!("coordinator@{DOMAIN}"),
        pid,
        grpc: grpc.clone(),
        quic: None,
        http,
        config: coord_path,
        data_dir: coord_cfg.data_dir.clone(),
        log,
        netns: None,
    });
    processes.extend(start_nodes(&issuer, dir, nodes, &a.capacity, &grpc, &LOOPBACK)?);

    let client_path = dir.join("client.toml");
    issuer.write_client_config("admin", &grpc, &client_path)?;
    // A member on its own comes back from its nodes: the kit names them.
    let facts = collective_pki::KitFacts {
        member: ca.member.clone(),
        domain: ca.domain.clone(),
        federation: String::new(),
        bootstrap: processes.iter().filter(|p| p.role == "node").map(|p| p.grpc.clone()).collect(),
    };
    collective_client::enrol::write_recovery_kit(dir, &ca_dir, &facts)?;
    let cluster = ClusterFile {
        member: DOMAIN.into(),
        client_config: client_path.clone(),
        members: vec![],
        net: None,
        processes,
    };
    write_cluster(dir, &cluster)?;

    let started = Instant::now();
    wait_ready(dir, &cluster.processes).await?;
    println!(
        "local cluster up in {:.1} s: 1 coordinator and {} node(s), replication {}",
        started.elapsed().as_secs_f64(),
        nodes,
        a.replication
    );
    print_processes(&cluster.processes);
    println!();
    println!("use it:");
    println!("  export COLLECTIVE_CONFIG={}", client_path.display());
    println!("  collective put ./some-file /some-file && collective ls -l / && collective status");
    println!("recovery kit (what a real member prints and keeps outside the house):");
    println!("  {}", dir.join(collective_client::enrol::RECOVERY_KIT_FILE).display());
    println!("stop it:");
    println!("  collective dev down --dir {}", dir.display());
    Ok(())
}

pub(crate) fn print_processes(procs: &[ProcessInfo]) {
    for p in procs {
        println!("  {:<34} pid {:<7} gRPC {:<16} HTTP http://{}", p.principal, p.pid, p.grpc, p.http);
    }
}

pub(crate) fn down(dir: &Path) -> Result<()> {
    let path = dir.join("cluster.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("no cluster in {} (cannot read {})", dir.display(), path.display()))?;
    let cluster: ClusterFile = serde_json::from_str(&text).with_context(|| format!("{} is not a cluster file", path.display()))?;
    // Nodes first, then the coordinator.
    let mut procs = cluster.processes.clone();
    procs.sort_by_key(|p| p.role == "coordinator");
    for p in &procs {
        if pid_alive(p.pid) {
            // SAFETY: sending SIGTERM to a pid we started.
            unsafe { libc::kill(p.pid as i32, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut stopped = 0;
    for p in &procs {
        while pid_alive(p.pid) && !is_zombie(p.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if pid_alive(p.pid) && !is_zombie(p.pid) {
            // SAFETY: as above; it ignored SIGTERM.
            unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
        }
        stopped += 1;
    }
    if let Some(net) = &cluster.net {
        crate::netns::teardown(net);
    }
    println!("stopped {stopped} process(es) of the cluster in {}", dir.display());
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().map(|r| r.trim_start().starts_with('Z')).unwrap_or(false))
        .unwrap_or(true)
}
