//! Test harness: real local clusters of the real `collective` binary on loopback.
//! Every process started here is killed by PID when the cluster is dropped, even when
//! the test fails.
#![allow(dead_code)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_collective");
static SEQ: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Proc {
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
    /// The network namespace it runs in (`dev up --netns`).
    #[serde(default)]
    pub netns: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct ClusterFile {
    processes: Vec<Proc>,
    #[serde(default)]
    members: Vec<Member>,
    #[serde(default)]
    net: Option<Net>,
}

/// The member networks of a `dev up --netns` federation.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Net {
    pub subnet: u8,
    pub router: String,
    pub members: Vec<NetMember>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct NetMember {
    pub name: String,
    pub netns: String,
    pub addr: String,
    pub router_link: String,
}

/// `program` run inside network namespace `netns` when given.
pub fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// One member of a local federation started with `dev up --members N`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Member {
    pub name: String,
    pub domain: String,
    pub user: String,
    pub client_config: PathBuf,
    pub coordinator_config: PathBuf,
    pub ca_dir: PathBuf,
    pub grpc: String,
    pub gossip: String,
    #[serde(default)]
    pub netns: Option<String>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub procs: RefCell<Vec<Proc>>,
    pub client_config: PathBuf,
    pub members: Vec<Member>,
    pub net: Option<Net>,
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "collective-it-{name}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Deterministic pseudo-random bytes.
/// A small seeded generator (xorshift), so a failing random test can be repeated exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !stat.rsplit(')').next().map(|r| r.trim_start().starts_with('Z')).unwrap_or(true)
}

fn http_ready(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(sock) = addr.parse() else { return false };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).contains(" 200 ")
}

impl Cluster {
    /// The cluster `dev up` described in `dir/cluster.json` (empty when it wrote none).
    fn load(dir: PathBuf) -> Cluster {
        let text = std::fs::read_to_string(dir.join("cluster.json")).unwrap_or_default();
        let (procs, members, net) = serde_json::from_str::<ClusterFile>(&text)
            .map(|c| (c.processes, c.members, c.net))
            .unwrap_or_default();
        Cluster {
            client_config: members
                .first()
                .map(|m| m.client_config.clone())
                .unwrap_or_else(|| dir.join("client.toml")),
            dir,
            procs: RefCell::new(procs),
            members,
            net,
        }
    }

    pub fn start(name: &str, nodes: usize, replication: u32) -> Cluster {
        Self::start_with(name, nodes, replication, &[])
    }

    pub fn start_with(name: &str, nodes: usize, replication: u32, extra: &[&str]) -> Cluster {
        let dir = scratch(name);
        let out = Command::new(BIN)
            .args(["dev", "up", "--dir"])
            .arg(&dir)
            .args(["--nodes", &nodes.to_string(), "--replication", &replication.to_string()])
            .args(extra)
            .output()
            .expect("run collective dev up");
        let cluster = Cluster::load(dir);
        assert!(
            out.status.success(),
            "dev up failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    /// A local federation of `members` members (alice, bob, carol, …), `nodes` nodes each.
    pub fn federation(name: &str, members: usize, nodes: usize) -> Cluster {
        Cluster::federation_with(name, members, nodes, &[])
    }

    /// A federation started with extra `dev up` flags (e.g. `--netns`).
    pub fn federation_with(name: &str, members: usize, nodes: usize, extra: &[&str]) -> Cluster {
        let dir = scratch(name);
        let out = Command::new(BIN)
            .args(["dev", "up", "--dir"])
            .arg(&dir)
            .args(["--members", &members.to_string(), "--nodes", &nodes.to_string()])
            .args(extra)
            .output()
            .expect("run collective dev up");
        let cluster = Cluster::load(dir);
        assert!(
            out.status.success(),
            "dev up --members {} failed: {}\n{}",
            cluster.members.len(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// The CLI acting as member `name`'s user (`NAME@NAME.collective.local`).
    pub fn cmd_as(&self, name: &str) -> Command {
        // On its own network (`--netns`) a member's user works from inside it.
        let mut c = command_in(self.member(name).netns.as_deref(), BIN);
        c.env("COLLECTIVE_CONFIG", &self.member(name).client_config).env_remove("RUST_LOG");
        c
    }

    pub fn ok_as(&self, name: &str, args: &[&str]) -> String {
        let out = self.cmd_as(name).args(args).output().expect("run collective");
        assert!(
            out.status.success(),
            "`collective {}` as {name} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn fails_as(&self, name: &str, args: &[&str]) -> String {
        let out = self.cmd_as(name).args(args).output().expect("run collective");
        assert!(
            !out.status.success(),
            "`collective {}` as {name} should have failed but printed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `federation peers --json` as member `name`: member domain → state.
    pub fn peer_states(&self, name: &str) -> Vec<(String, String)> {
        let out = self
            .cmd_as(name)
            .args(["federation", "peers", "--json"])
            .output()
            .expect("run collective");
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return vec![];
        };
        v["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["member"].as_str().unwrap_or("").to_string(),
                            m["state"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every process of member `name` (coordinator first).
    pub fn member_procs(&self, name: &str) -> Vec<Proc> {
        let domain = self.member(name).domain.clone();
        self.procs.borrow().iter().filter(|p| p.member == domain).cloned().collect()
    }

    /// A client config for another user `name@home.collective.local` of this single-member
    /// cluster, with a certificate from its member CA (and no grants yet).
    pub fn second_user(&self, name: &str) -> PathBuf {
        let certs = self.path(name);
        let out = Command::new(BIN)
            .args([
                "ca",
                "issue",
                "--ca",
                p(&self.path("ca")),
                "--role",
                "client",
                "--name",
                name,
                "--out",
                p(&certs),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let admin_cfg = std::fs::read_to_string(&self.client_config).unwrap();
        let cfg = admin_cfg
            .lines()
            .map(|l| {
                if l.starts_with("cert ") {
                    format!("cert = \"{}\"", certs.join(format!("{name}.crt")).display())
                } else if l.starts_with("key ") {
                    format!("key = \"{}\"", certs.join(format!("{name}.key")).display())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        self.write_local(&format!("{name}.toml"), cfg.as_bytes())
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("COLLECTIVE_CONFIG", &self.client_config).env_remove("RUST_LOG");
        c
    }

    /// Runs the CLI with another client config (another user), whatever the outcome.
    pub fn cli_with(&self, config: &Path, args: &[&str]) -> Output {
        self.cmd()
            .env("COLLECTIVE_CONFIG", config)
            .args(args)
            .output()
            .expect("run collective")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run collective")
    }

    /// Runs the CLI, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "`collective {}` failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI, asserts failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "`collective {}` should have failed but printed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn proc(&self, principal_prefix: &str) -> Proc {
        self.procs
            .borrow()
            .iter()
            .find(|p| p.principal.starts_with(principal_prefix))
            .cloned()
            .unwrap_or_else(|| panic!("no process {principal_prefix}"))
    }

    pub fn nodes(&self) -> Vec<Proc> {
        self.procs.borrow().iter().filter(|p| p.role == "node").cloned().collect()
    }

    pub fn signal(&self, principal_prefix: &str, sig: i32) {
        let p = self.proc(principal_prefix);
        unsafe { libc::kill(p.pid as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while pid_alive(p.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!pid_alive(p.pid), "{} did not stop", p.principal);
    }

    pub fn kill9(&self, principal_prefix: &str) {
        self.signal(principal_prefix, libc::SIGKILL)
    }

    /// Starts a stopped process again with its own config and waits until it is ready.
    pub fn restart(&self, principal_prefix: &str) {
        self.restart_with(principal_prefix, &[]);
    }

    /// Restarts a stopped process with extra global flags (e.g. `--log-format json`).
    pub fn restart_with(&self, principal_prefix: &str, flags: &[&str]) {
        self.restart_env(principal_prefix, flags, &[]);
    }

    /// Restarts a stopped process with extra global flags and environment variables
    /// (e.g. a crash point), without waiting for it.
    pub fn restart_env(&self, principal_prefix: &str, flags: &[&str], env: &[(&str, &str)]) {
        let p = self.proc(principal_prefix);
        assert!(!pid_alive(p.pid), "{} is still running", p.principal);
        let log = std::fs::OpenOptions::new().append(true).create(true).open(&p.log).unwrap();
        let child = command_in(p.netns.as_deref(), BIN)
            .envs(env.iter().copied())
            .args(flags)
            .arg(&p.role)
            .arg("--config")
            .arg(&p.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        for q in self.procs.borrow_mut().iter_mut() {
            if q.principal == p.principal {
                q.pid = pid;
            }
        }
        // Reap it in the background when it exits.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
    }

    /// Waits until every running process answers ready.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for p in self.procs.borrow().iter() {
            while !http_ready(&p.http) {
                assert!(
                    Instant::now() < deadline,
                    "{} did not become ready; log:\n{}",
                    p.principal,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Every chunk file in every node's store: (node principal, chunk path).
    pub fn stored_chunks(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        for n in self.nodes() {
            let root = n.data_dir.join("chunks");
            let Ok(l1) = std::fs::read_dir(&root) else { continue };
            for a in l1.flatten() {
                for b in std::fs::read_dir(a.path()).into_iter().flatten().flatten() {
                    for f in std::fs::read_dir(b.path()).into_iter().flatten().flatten() {
                        out.push((n.principal.clone(), f.path()));
                    }
                }
            }
        }
        out
    }

    pub fn stored_bytes(&self) -> u64 {
        self.stored_chunks()
            .iter()
            .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    pub fn write_local(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.borrow().iter() {
            if pid_alive(p.pid) {
                unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
            }
        }
        if self.net.is_some() {
            // Every process is gone: this only removes the namespaces and links.
            let _ = Command::new(BIN).args(["dev", "down", "--dir"]).arg(&self.dir).output();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("cluster directory kept for inspection: {}", self.dir.display());
        }
    }
}

/// Polls `f` every 100 ms until it holds; fails the test after `limit`.
pub fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if f() {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Like [`within`], for a condition that can say why it does not hold yet: the last
/// reason is in the failure message.
pub fn within_explained(limit: Duration, what: &str, mut f: impl FnMut() -> Result<(), String>) -> Duration {
    let started = Instant::now();
    loop {
        let why = match f() {
            Ok(()) => return started.elapsed(),
            Err(why) => why,
        };
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}; last seen:\n{why}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of a log file (for failure messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A plain HTTP GET that may fail (the server is still starting): (status, body) or None.
pub fn try_http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let sock = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // HTTP/1.0: the body comes whole, never chunked.
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok())?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// A plain HTTP GET; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
