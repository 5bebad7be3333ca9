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
}

#[derive(Args)]
pub struct UpArgs {
    /// Directory for certificates, configs, data and logs
    #[arg(long)]
    dir: PathBuf,
    /// Storage nodes to start
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Copies of every chunk
    #[arg(long, default_value_t = 2)]
    replication: u32,
    /// Capacity of each node
    #[arg(long, default_value = "10GiB")]
    capacity: String,
}

/// `cluster.json`: every process of a dev cluster.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    pub member: String,
    pub client_config: PathBuf,
    pub processes: Vec<ProcessInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub role: String,
    pub principal: String,
    pub pid: u32,
    pub grpc: String,
    pub quic: Option<String>,
    pub http: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

pub async fn run(cmd: DevCommand) -> Result<()> {
    match cmd {
        DevCommand::Up(a) => up(a).await,
        DevCommand::Down { dir } => down(&dir),
    }
}

/// A loopback port free for both TCP and UDP (gRPC and QUIC share the number).
fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("could not find a free loopback port")
}

fn pid_alive(pid: u32) -> bool {
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

fn write_toml<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    std::fs::write(path, toml::to_string_pretty(v)?).with_context(|| format!("cannot write {}", path.display()))
}

fn spawn(role: &str, config: &Path, log: &Path) -> Result<u32> {
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
    let child = cmd.spawn().with_context(|| format!("cannot start the {role}"))?;
    Ok(child.id())
}

async fn up(a: UpArgs) -> Result<()> {
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let dir = std::path::absolute(&a.dir).with_context(|| format!("bad --dir {}", a.dir.display()))?;
    let cluster_path = dir.join("cluster.json");
    if let Ok(text) = std::fs::read_to_string(&cluster_path)
        && let Ok(c) = serde_json::from_str::<ClusterFile>(&text)
        && c.processes.iter().any(|p| pid_alive(p.pid))
    {
        bail!(
            "a cluster is already running in {} (see cluster.json); stop it with `collective dev down --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let ca_dir = dir.join("ca");
    let ca = if ca_dir.join("ca.key").exists() {
        MemberCa::load(&ca_dir)?
    } else {
        MemberCa::init(MEMBER, DOMAIN, &ca_dir)?
    };
    let certs = dir.join("certs");
    let issue = |role: Role, name: &str| -> Result<(PathBuf, PathBuf)> {
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let req = IssueRequest {
            role,
            name: name.to_string(),
            sans,
            not_before: None,
            not_after: None,
        };
        Ok(ca.issue_to(&req, &certs)?)
    };
    let trust = certs.join("ca.crt");

    let mut processes = Vec::new();
    // Coordinator.
    let (cert, key) = issue(Role::Coordinator, "coordinator")?;
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    let coord_cfg = CoordinatorConfig {
        data_dir: dir.join("coordinator-data"),
        grpc_listen: grpc.clone(),
        http_listen: http.clone(),
        replication: a.replication,
        tls: collective_coordinator::TlsFiles {
            ca: trust.clone(),
            cert,
            key,
        },
        ..Default::default()
    };
    let coord_path = dir.join("coordinator.toml");
    write_toml(&coord_path, &coord_cfg)?;
    let log = dir.join("logs/coordinator.log");
    let pid = spawn("coordinator", &coord_path, &log)?;
    processes.push(ProcessInfo {
        role: "coordinator".into(),
        principal: format!("coordinator@{DOMAIN}"),
        pid,
        grpc: grpc.clone(),
        quic: None,
        http,
        config: coord_path,
        data_dir: coord_cfg.data_dir.clone(),
        log,
    });

    // Nodes.
    for i in 1..=a.nodes {
        let name = format!("node-{i:02}");
        let (cert, key) = issue(Role::Node, &name)?;
        let port = free_port()?;
        let node_http = format!("127.0.0.1:{}", free_port()?);
        let cfg = NodeConfig {
            data_dir: dir.join(format!("{name}-data")),
            capacity: a.capacity.clone(),
            grpc_listen: format!("127.0.0.1:{port}"),
            quic_listen: format!("127.0.0.1:{port}"),
            http_listen: node_http.clone(),
            coordinator: grpc.clone(),
            tls: collective_node::TlsFiles {
                ca: trust.clone(),
                cert,
                key,
            },
            ..Default::default()
        };
        let path = dir.join(format!("{name}.toml"));
        write_toml(&path, &cfg)?;
        let log = dir.join(format!("logs/{name}.log"));
        let pid = spawn("node", &path, &log)?;
        processes.push(ProcessInfo {
            role: "node".into(),
            principal: format!("{name}@{DOMAIN}"),
            pid,
            grpc: cfg.grpc_listen.clone(),
            quic: Some(cfg.quic_listen.clone()),
            http: node_http,
            config: path,
            data_dir: cfg.data_dir.clone(),
            log,
        });
    }

    // Client.
    let (cert, key) = issue(Role::Client, "admin")?;
    let client = ClientConfig {
        coordinator: grpc.clone(),
        ca: trust.clone(),
        cert,
        key,
        ..Default::default()
    };
    let client_path = dir.join("client.toml");
    write_toml(&client_path, &client)?;
    let cluster = ClusterFile {
        member: DOMAIN.into(),
        client_config: client_path.clone(),
        processes,
    };
    std::fs::write(&cluster_path, serde_json::to_string_pretty(&cluster)?)?;

    // Wait until every process is ready.
    let started = Instant::now();
    for p in &cluster.processes {
        loop {
            if !pid_alive(p.pid) {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
                let _ = down(&dir);
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
                let _ = down(&dir);
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
    println!(
        "local cluster up in {:.1} s: 1 coordinator and {} node(s), replication {}",
        started.elapsed().as_secs_f64(),
        a.nodes,
        a.replication
    );
    for p in &cluster.processes {
        println!("  {:<34} pid {:<7} gRPC {:<16} HTTP http://{}", p.principal, p.pid, p.grpc, p.http);
    }
    println!();
    println!("use it:");
    println!("  export COLLECTIVE_CONFIG={}", client_path.display());
    println!("  collective put ./some-file /some-file && collective ls -l / && collective status");
    println!("stop it:");
    println!("  collective dev down --dir {}", dir.display());
    Ok(())
}

fn down(dir: &Path) -> Result<()> {
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
    println!("stopped {stopped} process(es) of the cluster in {}", dir.display());
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().map(|r| r.trim_start().starts_with('Z')).unwrap_or(false))
        .unwrap_or(true)
}
