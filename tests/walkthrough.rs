//! docs/operations.md, "Setting up by hand", run literally: every block that starts with
//! `# on NAME's machine` runs on that machine, and every TOML block is written to the file
//! its first line names. Each machine is a network namespace of its own holding the
//! address the docs give it (192.168.1.10, 192.168.2.20), joined to the others through a
//! router namespace, with its own home directory and one shell that lives for the whole
//! walk-through (so `export` and `cd` carry on, as in a terminal). Server commands
//! (`collective coordinator`, `collective node`) run in the background as a person would
//! run them in another terminal or under systemd. `# send FILE to NAME` copies a file
//! from one home to the other. The walk-through must end in a working federation.
//!
//! Also here: the advertised-address rules the walk-through depends on (a server never
//! advertises 0.0.0.0; `member join`, `federation init` and `ca init` check before they
//! write anything).
//!
//! Namespaces need root; without it the walk-through says why and skips.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::{BIN, Cluster, p, pid_alive, scratch};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md");
const SECTION: &str = "## Setting up by hand";
/// How long one shell block may take (a member join, a put).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(90);
/// What docs/operations.md promises for a new datastore to reach the other members.
const DATASTORE_VISIBLE_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Block {
    Shell { machine: String, lines: Vec<String> },
    File { machine: String, path: String, body: String },
}

/// The runnable blocks of the section, in order.
fn blocks(doc: &str) -> Vec<Block> {
    let start = doc.find(SECTION).expect("docs/operations.md has the section 'Setting up by hand'");
    let rest = &doc[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut out = Vec::new();
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        let Some(lang) = l.strip_prefix("```") else { continue };
        let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        let Some(first) = body.first() else { continue };
        let Some(rest) = first.strip_prefix("# on ") else { continue };
        let Some((machine, after)) = rest.split_once("'s machine") else {
            continue;
        };
        match lang.trim() {
            "sh" => {
                // Join continuation lines, as the shell would.
                let mut joined: Vec<String> = Vec::new();
                let mut cont = false;
                for l in &body[1..] {
                    if cont {
                        let last = joined.last_mut().unwrap();
                        last.push(' ');
                        last.push_str(l.trim());
                    } else {
                        joined.push(l.to_string());
                    }
                    cont = joined.last().is_some_and(|j| j.ends_with('\\'));
                    if cont {
                        let last = joined.last_mut().unwrap();
                        last.pop();
                    }
                }
                out.push(Block::Shell {
                    machine: machine.to_string(),
                    lines: joined,
                });
            }
            "toml" => {
                let path = after.trim_start_matches(':').trim().to_string();
                assert!(path.starts_with("~/"), "a TOML block names its file after the machine: {first}");
                out.push(Block::File {
                    machine: machine.to_string(),
                    path,
                    body: body.join("\n") + "\n",
                });
            }
            other => panic!("a runnable block in '{SECTION}' is `{other}`, neither sh nor toml"),
        }
    }
    out
}

/// The address each machine has, from its first block's `(192.168.1.10)`.
fn addresses(doc: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for l in doc.lines() {
        if let Some(rest) = l.strip_prefix("# on ")
            && let Some((machine, after)) = rest.split_once("'s machine (")
            && let Some((addr, _)) = after.split_once(')')
        {
            out.insert(machine.to_string(), addr.to_string());
        }
    }
    out
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The machines' networks: one namespace each, on its own /24 behind a router namespace.
struct Network {
    router: String,
    machines: BTreeMap<String, String>,
}

impl Network {
    fn new(addrs: &BTreeMap<String, String>) -> Network {
        let tag = format!("cwt{}", std::process::id() % 100_000);
        let router = format!("{tag}-r");
        let net = Network {
            router: router.clone(),
            machines: addrs.keys().map(|m| (m.clone(), format!("{tag}-{m}"))).collect(),
        };
        ip(&["netns", "add", &router]);
        ip(&["-n", &router, "link", "set", "lo", "up"]);
        let fwd = Command::new("ip")
            .args(["netns", "exec", &router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
            .status()
            .unwrap();
        assert!(fwd.success());
        for (i, (m, addr)) in addrs.iter().enumerate() {
            let ns = &net.machines[m];
            let gw = format!("{}.1", addr.rsplit_once('.').unwrap().0);
            let link = format!("m{i}");
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &router, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            ip(&["-n", &router, "addr", "add", &format!("{gw}/24"), "dev", &link]);
            ip(&["-n", &router, "link", "set", &link, "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "route", "add", "default", "via", &gw]);
        }
        net
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.machines.values() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.router]).status();
    }
}

/// One machine: its namespace, its home, one long-lived shell and its servers.
struct Machine {
    name: String,
    netns: String,
    home: PathBuf,
    path_env: String,
    shell: Child,
    stdin: ChildStdin,
    out: Receiver<String>,
    servers: Vec<(String, Child, PathBuf)>,
    transcript: String,
}

impl Machine {
    fn new(name: &str, netns: &str, root: &Path) -> Machine {
        let home = root.join(name);
        std::fs::create_dir_all(&home).unwrap();
        // `collective` on the PATH, as after `install`.
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let link = bin.join("collective");
        if !link.exists() {
            std::os::unix::fs::symlink(BIN, &link).unwrap();
        }
        let path_env = format!("{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", bin.display());
        let mut shell = Self::command(netns, &home, &path_env)
            .args(["bash", "--noprofile", "--norc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a shell in the machine's namespace");
        let mut stdin = shell.stdin.take().unwrap();
        // Everything the shell prints, stdout and stderr, in order.
        writeln!(stdin, "exec 2>&1; set -eo pipefail").unwrap();
        let stdout = shell.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Machine {
            name: name.to_string(),
            netns: netns.to_string(),
            home,
            path_env,
            shell,
            stdin,
            out: rx,
            servers: Vec::new(),
            transcript: String::new(),
        }
    }

    fn command(netns: &str, home: &Path, path_env: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns, "env", "-i"])
            .arg(format!("HOME={}", home.display()))
            .arg(format!("PATH={path_env}"))
            .arg("LANG=C.UTF-8")
            .current_dir(home);
        c
    }

    /// Runs shell text; returns what it printed. Panics (with the transcript) when a
    /// command fails: `set -e` ends the shell.
    fn run(&mut self, text: &str) -> String {
        self.transcript.push_str(&format!("\n[{}]$ {text}\n", self.name));
        let mark = "__walkthrough_done__";
        writeln!(self.stdin, "{text}\necho {mark}").unwrap_or_else(|e| self.fail(&format!("the shell is gone: {e}")));
        let deadline = Instant::now() + BLOCK_TIMEOUT;
        let mut printed = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(l) if l == mark => break,
                Ok(l) => {
                    printed.push_str(&l);
                    printed.push('\n');
                }
                Err(_) => {
                    self.transcript.push_str(&printed);
                    let why = if self.shell.try_wait().ok().flatten().is_some() {
                        "a command failed".to_string()
                    } else {
                        format!("no end within {BLOCK_TIMEOUT:?}")
                    };
                    self.fail(&why);
                }
            }
        }
        self.transcript.push_str(&printed);
        printed
    }

    /// Starts a server command in the background and waits until it is serving.
    fn serve(&mut self, line: &str, n: usize) {
        self.transcript.push_str(&format!("\n[{}]$ {line} &\n", self.name));
        let log = self.home.join(format!("server-{n}.log"));
        let child = Self::command(&self.netns, &self.home, &self.path_env)
            .args(["bash", "-c", &format!("exec {line}")])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        let ready = if line.starts_with("collective coordinator") {
            "coordinator started"
        } else {
            "registered"
        };
        self.servers.push((line.to_string(), child, log.with_extension("err")));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, child, err) = self.servers.last_mut().unwrap();
            let text = std::fs::read_to_string(&*err).unwrap_or_default();
            if text.contains(ready) {
                return;
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                self.fail(&format!("`{line}` did not start:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn fail(&self, why: &str) -> ! {
        let mut logs = String::new();
        for (line, _, err) in &self.servers {
            let text = std::fs::read_to_string(err).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
            logs.push_str(&format!("\n--- {line}\n{}\n", tail.join("\n")));
        }
        panic!(
            "on {}'s machine: {why}\ntranscript:{}\nserver logs:{logs}",
            self.name, self.transcript
        );
    }

    fn expand(&self, path: &str) -> PathBuf {
        self.home.join(path.trim_start_matches("~/"))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root (CAP_NET_ADMIN)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` is missing (Debian package iproute2; `make prereqs` installs it)".into());
    }
    None
}

#[test]
fn the_by_hand_setup_in_operations_md_makes_a_working_federation_of_two_machines() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let doc = std::fs::read_to_string(DOC).unwrap();
    let blocks = blocks(&doc);
    let addrs = addresses(&doc);
    assert_eq!(
        addrs.len(),
        2,
        "the walk-through names two machines with their addresses: {addrs:?}"
    );
    let files = blocks.iter().filter(|b| matches!(b, Block::File { .. })).count();
    assert!(
        files >= 5,
        "the walk-through writes the coordinator, node and client files ({files} found)"
    );
    let net = Network::new(&addrs);
    let root = scratch("walkthrough");
    let mut machines: BTreeMap<String, Machine> = addrs
        .keys()
        .map(|m| (m.clone(), Machine::new(m, &net.machines[m], &root)))
        .collect();
    let mut created: Vec<(String, String)> = Vec::new();
    let mut servers = 0;
    let mut printed: BTreeMap<String, String> = BTreeMap::new();
    for block in &blocks {
        match block {
            Block::File { machine, path, body } => {
                let m = &machines[machine];
                let f = m.expand(path);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(&f, body).unwrap();
            }
            Block::Shell { machine, lines } => {
                // A datastore another machine made: the docs say how soon it is seen here.
                for (owner, ds) in &created {
                    if owner != machine && lines.iter().any(|l| l.contains(ds.as_str())) {
                        let m = machines.get_mut(machine).unwrap();
                        let started = Instant::now();
                        while !m.run("collective datastore ls || true").contains(ds.as_str()) {
                            assert!(
                                started.elapsed() < DATASTORE_VISIBLE_WITHIN,
                                "{ds}, made on {owner}'s machine, is not listed on {machine}'s within {DATASTORE_VISIBLE_WITHIN:?}"
                            );
                            std::thread::sleep(Duration::from_millis(250));
                        }
                    }
                }
                let mut pending = String::new();
                for line in lines {
                    let t = line.trim();
                    if let Some(rest) = t.strip_prefix("# send ") {
                        let (file, to) = rest.split_once(" to ").expect("# send FILE to NAME");
                        let m = machines.get_mut(machine).unwrap();
                        if !pending.is_empty() {
                            let out = m.run(&pending);
                            printed.entry(machine.clone()).or_default().push_str(&out);
                            pending.clear();
                        }
                        let from = m.expand(&format!("~/{file}"));
                        let dest = machines[to.trim()].expand(&format!("~/{file}"));
                        std::fs::copy(&from, &dest).unwrap_or_else(|e| panic!("cannot send {file} to {to}: {e}"));
                    } else if t.starts_with("collective coordinator ") || t.starts_with("collective node --config") {
                        let m = machines.get_mut(machine).unwrap();
                        if !pending.is_empty() {
                            let out = m.run(&pending);
                            printed.entry(machine.clone()).or_default().push_str(&out);
                            pending.clear();
                        }
                        servers += 1;
                        m.serve(t, servers);
                    } else if !t.is_empty() && !t.starts_with('#') {
                        if let Some(ds) = t.split("datastore create ").nth(1).and_then(|r| r.split_whitespace().next()) {
                            created.push((machine.clone(), ds.to_string()));
                        }
                        pending.push_str(line);
                        pending.push('\n');
                    }
                }
                if !pending.is_empty() {
                    let m = machines.get_mut(machine).unwrap();
                    let out = m.run(&pending);
                    printed.entry(machine.clone()).or_default().push_str(&out);
                }
            }
        }
    }
    assert!(servers >= 6, "two coordinators and four nodes were started ({servers})");
    // The end state the walk-through promises.
    let bob_out = &printed["bob"];
    assert!(bob_out.contains("first light"), "bob read alice's shared file:\n{bob_out}");
    for (me, other) in [("alice", "bob"), ("bob", "alice")] {
        let m = machines.get_mut(me).unwrap();
        let peers = m.run("collective federation peers --json");
        let v: serde_json::Value = serde_json::from_str(&peers).unwrap_or_else(|e| panic!("{e}: {peers}"));
        let seen = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["member"] == format!("{other}.collective.local"))
            .cloned()
            .unwrap_or_else(|| panic!("{me} does not list {other}: {v}"));
        assert_eq!(seen["state"], "alive", "{me} sees {other}: {v}");
        assert!(
            seen["grpc_addr"].as_str().unwrap().starts_with(&addrs[other]),
            "{me} reaches {other} at its advertised address: {seen}"
        );
        assert!(!peers.contains("0.0.0.0"), "an unspecified address was advertised: {peers}");
    }
    // Every server stops cleanly within 10 s of SIGTERM.
    for m in machines.values_mut() {
        for (line, child, err) in &mut m.servers {
            let pid = child.id();
            // SAFETY: a process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let started = Instant::now();
            while pid_alive(pid) && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.try_wait();
            assert!(
                !pid_alive(pid),
                "`{line}` still runs 10 s after SIGTERM:\n{}",
                std::fs::read_to_string(&*err).unwrap_or_default()
            );
        }
    }
    drop(machines);
    drop(net);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_server_that_would_advertise_an_unspecified_address_refuses_to_start_and_names_the_key() {
    let c = Cluster::start("advertise-refused", 1, 1);
    let coord = c.proc("coordinator");
    let out = Command::new(BIN)
        .args([
            "coordinator",
            "--config",
            p(&coord.config),
            "--grpc-listen",
            "0.0.0.0:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--data-dir", p(&c.path("other-data"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a coordinator listening on 0.0.0.0 without advertise_grpc started"
    );
    assert!(err.contains("advertise_grpc") && err.contains("this machine"), "{err}");
    let node = c.proc("node-01");
    let out = Command::new(BIN)
        .args([
            "node",
            "--config",
            p(&node.config),
            "--grpc-listen",
            "0.0.0.0:0",
            "--quic-listen",
            "127.0.0.1:0",
        ])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir", p(&c.path("other-node"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a node listening on 0.0.0.0 without advertise_host started");
    assert!(err.contains("advertise_host"), "{err}");
}

#[test]
fn member_join_checks_the_advertised_address_before_using_the_invite() {
    let fed = Cluster::federation("join-advertise", 2, 1);
    let code = fed.ok_as("alice", &["invite", "generate", "--member", "carol"]).trim().to_string();
    let out_dir = fed.path("newcomer");
    let r = fed
        .cmd_as("alice")
        .args(["member", "join", &code, "--name", "carol", "--out", p(&out_dir)])
        .args(["--grpc-listen", "0.0.0.0:7000", "--gossip-listen", "0.0.0.0:7946"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "member join wrote a configuration advertising 0.0.0.0");
    assert!(err.contains("--advertise"), "{err}");
    assert!(!out_dir.join("coordinator.toml").exists());
    // The code was not used up: the same join with --advertise works.
    let r = fed
        .cmd_as("alice")
        .args(["member", "join", &code, "--name", "carol", "--out", p(&out_dir)])
        .args([
            "--grpc-listen",
            "0.0.0.0:7000",
            "--gossip-listen",
            "0.0.0.0:7946",
            "--advertise",
            "10.9.8.7",
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let cfg = std::fs::read_to_string(out_dir.join("coordinator.toml")).unwrap();
    assert!(cfg.contains("advertise_grpc = \"10.9.8.7:7000\""), "{cfg}");
    assert!(cfg.contains("gossip_advertise = \"10.9.8.7:7946\""), "{cfg}");
    let client = std::fs::read_to_string(out_dir.join("client.toml")).unwrap();
    assert!(client.contains("coordinator = \"10.9.8.7:7000\""), "{client}");
}

#[test]
fn invite_codes_carry_the_advertised_address() {
    let fed = Cluster::federation("invite-advertise", 2, 1);
    let alice = fed.member("alice");
    let code = fed.ok_as("alice", &["invite", "generate", "--member", "carol"]).trim().to_string();
    let (decoded, _, _) = collective_pki::InviteCode::decode(&code).unwrap();
    assert_eq!(decoded.addr, alice.grpc, "the code names the coordinator's advertised address");
}

#[test]
fn federation_init_and_ca_init_write_ready_configs_for_the_advertised_address() {
    let dir = scratch("init-advertise");
    let fed = dir.join("fed");
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let fed_init = |out: &Path, extra: &[&str]| {
        let mut args = vec!["federation", "init", "--domain", "collective.local", "--out", p(out)];
        args.extend_from_slice(extra);
        run(&args)
    };
    // Listening everywhere without saying where: refused, nothing written.
    let r = fed_init(&fed, &["--member", "alice"]);
    assert!(
        r.status.success(),
        "loopback defaults need no --advertise: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = fed_init(&dir.join("fed2"), &["--member", "alice", "--grpc-listen", "0.0.0.0:7000"]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--advertise"));
    assert!(
        !dir.join("fed2").join("root.key").exists(),
        "nothing is written before the addresses are checked"
    );
    let r = fed_init(
        &dir.join("fed3"),
        &[
            "--member",
            "alice",
            "--grpc-listen",
            "0.0.0.0:7000",
            "--gossip-listen",
            "0.0.0.0:7946",
            "--advertise",
            "192.168.1.10",
        ],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let cfg = std::fs::read_to_string(dir.join("fed3/coordinator.toml")).unwrap();
    for want in [
        "advertise_grpc = \"192.168.1.10:7000\"",
        "gossip_advertise = \"192.168.1.10:7946\"",
        "root_dir = \".\"",
        "ca_dir = \"ca\"",
    ] {
        assert!(cfg.contains(want), "{want} missing:\n{cfg}");
    }
    // What it wrote starts as it is, and its admin's client.toml reaches it.
    let free = || {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        t.local_addr().unwrap().port()
    };
    let (grpc, http, gossip) = (free(), free(), free());
    let ready = dir.join("ready");
    let r = fed_init(
        &ready,
        &[
            "--member",
            "alice",
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
            "--gossip-listen",
            &format!("127.0.0.1:{gossip}"),
        ],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let log = dir.join("ready.log");
    let mut server = Command::new(BIN)
        .args(["coordinator", "--config", p(&ready.join("coordinator.toml"))])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("coordinator started") {
        if started.elapsed() > Duration::from_secs(30) || server.try_wait().unwrap().is_some() {
            let _ = server.kill();
            panic!(
                "the coordinator federation init wrote did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new(BIN)
        .args(["--config", p(&ready.join("client.toml")), "datastore", "ls"])
        .output()
        .unwrap();
    // SAFETY: a process this test started.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
    assert!(
        status.status.success(),
        "its client.toml does not reach it: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Address flags without the member they describe are refused, not ignored.
    let r = fed_init(&dir.join("fed4"), &["--grpc-listen", "0.0.0.0:7000"]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("--member"));
    let r = run(&[
        "ca",
        "init",
        "--member",
        "x",
        "--domain",
        "x.example",
        "--out",
        p(&dir.join("x")),
        "--grpc-listen",
        "0.0.0.0:7000",
    ]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("--advertise"));
    // A single member: ca init --advertise.
    let ca = dir.join("solo");
    let r = run(&[
        "ca",
        "init",
        "--member",
        "solo",
        "--domain",
        "solo.example",
        "--out",
        p(&ca),
        "--grpc-listen",
        "0.0.0.0:7000",
        "--advertise",
        "nas.lan",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let cfg = std::fs::read_to_string(ca.join("coordinator.toml")).unwrap();
    assert!(
        cfg.contains("advertise_grpc = \"nas.lan:7000\"") && cfg.contains("ca_dir = \".\""),
        "{cfg}"
    );
    assert!(
        !cfg.contains("gossip_listen = \"0.0.0.0"),
        "a single member does not gossip:\n{cfg}"
    );
    let client = std::fs::read_to_string(ca.join("client.toml")).unwrap();
    assert!(client.contains("coordinator = \"nas.lan:7000\""), "{client}");
    let _ = std::fs::remove_dir_all(&dir);
}
