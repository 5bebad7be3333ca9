//! The service files in `deploy/`: the systemd units and the sysusers file checked with
//! systemd's own tools, the compose example parsed and its configurations run with the real
//! binary, every command line they hold checked against the binary's flags, and the
//! operations guide naming them.
//!
//! `systemd-analyze` and `systemd-sysusers` come with systemd; where they are missing the
//! tests that need them say so and pass. The compose file is parsed with PyYAML (Debian
//! package python3-yaml, installed by `scripts/prereqs.sh`); Docker itself is not needed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, p, scratch};

/// How long a coordinator or node may take to stop after SIGTERM (issue 29, point 2).
const CLEAN_STOP_SECS: f64 = 10.0;
/// The least headroom a supervisor must leave above that before it sends SIGKILL, which
/// would skip the metadata flush.
const STOP_MARGIN_SECS: f64 = 5.0;
/// Where the units expect the binary.
const INSTALLED_BIN: &str = "/usr/local/bin/collective";
const COORDINATOR_UNIT: &str = "deploy/systemd/collective-coordinator.service";
const NODE_UNIT: &str = "deploy/systemd/collective-node@.service";
const UNITS: [&str; 2] = [COORDINATOR_UNIT, NODE_UNIT];
const SYSUSERS: &str = "deploy/systemd/collective.conf";
const COMPOSE: &str = "deploy/compose/compose.yaml";
/// The highest `systemd-analyze security` exposure (0–10) the units may have: "OK" grade.
const MAX_EXPOSURE: f64 = 2.0;

/// A path in the repository.
fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn available(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether a test that needs `program` can run; says why not when it cannot.
fn have(program: &str, test: &str) -> bool {
    let found = available(program);
    if !found {
        eprintln!("skipped {test}: {program} is not installed (it comes with systemd)");
    }
    found
}

/// A unit file: `(section, key, value)` in file order, comments and blank lines dropped.
struct Unit {
    name: String,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load(rel: &str) -> Unit {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for line in read(rel).lines() {
            let line = line.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
                continue;
            }
            if let Some(cont) = line.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            let line = format!("{pending}{line}");
            pending.clear();
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                entries.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
            } else {
                panic!("{rel}: not a unit file line: {line}");
            }
        }
        let name = Path::new(rel).file_name().unwrap().to_string_lossy().into_owned();
        Unit { name, entries }
    }

    /// Every value of `key` in `[section]`, in file order.
    fn all_in(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The value of `key` in `[section]` that counts (the last one), if set.
    fn get_in(&self, section: &str, key: &str) -> Option<&str> {
        self.all_in(section, key).last().copied()
    }

    /// Every value of `key` in `[Service]`.
    fn all(&self, key: &str) -> Vec<&str> {
        self.all_in("Service", key)
    }

    /// The value of `key` in `[Service]`, if set.
    fn get(&self, key: &str) -> Option<&str> {
        self.get_in("Service", key)
    }

    fn must(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("{} does not set {key}= in [Service]", self.name))
    }

    /// ExecStart's words after the binary.
    fn exec_args(&self) -> Vec<String> {
        let exec = self.must("ExecStart").trim_start_matches(['-', '@', '+', '!', ':']);
        let mut words = exec.split_whitespace().map(str::to_string);
        let program = words.next().unwrap_or_default();
        assert_eq!(program, INSTALLED_BIN, "{}: ExecStart runs {program}", self.name);
        words.collect()
    }

    /// The value after `flag` in ExecStart.
    fn exec_flag(&self, flag: &str) -> String {
        flag_value(&self.exec_args(), flag).unwrap_or_else(|| panic!("{}: ExecStart has no {flag}", self.name))
    }
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned()
}

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "yes" | "true" | "on")
}

/// Seconds in a systemd time span ("20s", "1min 30s", "20") or a compose duration ("1m30s").
fn seconds(span: &str) -> f64 {
    let mut total = 0.0;
    let mut rest = span.trim();
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().unwrap_or_else(|_| panic!("not a duration: {span:?}"));
        rest = rest[num_end..].trim_start();
        let unit_end = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ms" | "msec" => 0.001,
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            other => panic!("unknown unit {other:?} in duration {span:?}"),
        };
        total += num * factor;
        rest = rest[unit_end..].trim_start();
    }
    total
}

/// The unit's stop timeout in seconds (TimeoutStopSec=, else TimeoutSec=, else systemd's
/// default of 90 s).
fn stop_timeout(unit: &Unit) -> f64 {
    unit.get("TimeoutStopSec").or(unit.get("TimeoutSec")).map(seconds).unwrap_or(90.0)
}

/// The user `deploy/systemd/collective.conf` declares.
fn sysusers_user() -> String {
    let text = read(SYSUSERS);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("u "))
        .unwrap_or_else(|| panic!("{SYSUSERS} declares no user (a `u NAME ...` line)"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

/// The compose file as JSON, parsed by PyYAML (the YAML 1.1 loader compose files are
/// written for, merge keys included).
fn compose() -> serde_json::Value {
    let python = ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|py| {
            Command::new(py)
                .args(["-c", "import yaml"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .expect("no python3 with PyYAML: run scripts/prereqs.sh (it installs the Debian package python3-yaml)");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
            p(&repo(COMPOSE)),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{COMPOSE} is not valid YAML:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A compose service's command as words.
fn command_of(name: &str, service: &serde_json::Value) -> Vec<String> {
    match &service["command"] {
        serde_json::Value::Array(words) => words.iter().map(|w| w.as_str().unwrap_or_default().to_string()).collect(),
        serde_json::Value::String(line) => line.split_whitespace().map(str::to_string).collect(),
        other => panic!("service {name} has no command (got {other})"),
    }
}

/// A compose service's volumes as (source, target, read-only), short or long syntax.
fn volumes_of(service: &serde_json::Value) -> Vec<(String, String, bool)> {
    let Some(list) = service["volumes"].as_array() else { return vec![] };
    list.iter()
        .map(|v| match v {
            serde_json::Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                assert!(parts.len() >= 2, "volume {s:?} names no target");
                (
                    parts[0].to_string(),
                    parts[1].to_string(),
                    parts.get(2).is_some_and(|m| m.split(',').any(|o| o == "ro")),
                )
            }
            _ => (
                v["source"].as_str().unwrap_or_default().to_string(),
                v["target"].as_str().unwrap_or_default().to_string(),
                v["read_only"].as_bool().unwrap_or(false),
            ),
        })
        .collect()
}

fn is_bind(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/') || source.starts_with('~')
}

/// Compose services by the `collective` subcommand they run.
fn services_running(compose: &serde_json::Value, role: &str) -> Vec<(String, serde_json::Value)> {
    compose["services"]
        .as_object()
        .expect("compose file has no services")
        .iter()
        .filter(|(name, s)| command_of(name, s).first().map(String::as_str) == Some(role))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect()
}

/// The `--flags` a subcommand's `--help` lists.
fn flags_of(subcommand: &str) -> BTreeSet<String> {
    let out = Command::new(BIN).args([subcommand, "--help"]).output().unwrap();
    assert!(out.status.success(), "collective {subcommand} --help failed");
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split('=').next().unwrap().to_string())
        .collect()
}

/// Every syscall group `systemd-analyze syscall-filter` knows, by name, with its members
/// (syscalls and nested groups).
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze").arg("syscall-filter").output().unwrap();
    assert!(out.status.success(), "systemd-analyze syscall-filter failed");
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_string());
            groups.entry(line.trim().to_string()).or_default();
        } else if line.starts_with('#') || line.trim().is_empty() {
            if !line.starts_with(' ') {
                current = None;
            }
        } else if let Some(g) = &current {
            let item = line.trim();
            if !item.starts_with('#') {
                groups.get_mut(g).unwrap().push(item.to_string());
            }
        }
    }
    groups
}

/// The syscalls a `SystemCallFilter=` entry names, nested groups expanded.
fn expand(entry: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
    if entry.starts_with('@') {
        let members = groups
            .get(entry)
            .unwrap_or_else(|| panic!("systemd knows no syscall group {entry}"));
        for m in members {
            if !out.contains(m) {
                if m.starts_with('@') {
                    out.insert(m.clone());
                }
                expand(m, groups, out);
            }
        }
    } else {
        out.insert(entry.split(':').next().unwrap().to_string());
    }
}

/// Whether the unit's `SystemCallFilter=` lines let `syscall` through: an allow list (lines
/// without `~`, added up) when there is one, minus every deny list (lines with `~`).
fn filter_allows(unit: &Unit, syscall: &str, groups: &BTreeMap<String, Vec<String>>) -> bool {
    let (mut allow, mut deny) = (BTreeSet::new(), BTreeSet::new());
    let mut has_allow_list = false;
    for line in unit.all("SystemCallFilter") {
        let (negated, list) = match line.strip_prefix('~') {
            Some(l) => (true, l),
            None => (false, line),
        };
        has_allow_list |= !negated;
        for entry in list.split_whitespace() {
            expand(entry, groups, if negated { &mut deny } else { &mut allow });
        }
    }
    (!has_allow_list || allow.contains(syscall)) && !deny.contains(syscall)
}

#[test]
fn units_pass_systemd_analyze_verify_without_a_warning() {
    if !have("systemd-analyze", "units_pass_systemd_analyze_verify_without_a_warning") {
        return;
    }
    // verify insists that ExecStart's program exists: check copies that run the binary
    // this test was built with instead of /usr/local/bin/collective.
    let dir = scratch("verify");
    for rel in UNITS {
        let text = read(rel);
        assert!(
            text.contains(&format!("ExecStart={INSTALLED_BIN} ")),
            "{rel}: ExecStart does not run {INSTALLED_BIN}"
        );
        let name = Path::new(rel).file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(
            dir.join(&name),
            text.replace(&format!("ExecStart={INSTALLED_BIN} "), &format!("ExecStart={BIN} ")),
        )
        .unwrap();
        // A template is checked through an instance of it.
        let checked = dir.join(name.replace("@.", "@disk1."));
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&checked)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let stem = name.split('@').next().unwrap().trim_end_matches(".service");
        let ours: Vec<&str> = text.lines().filter(|l| l.contains(stem) || l.contains(p(&dir))).collect();
        assert!(
            out.status.success() && ours.is_empty(),
            "systemd-analyze verify {rel} (exit {:?}):\n{text}",
            out.status.code()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn units_score_ok_in_systemd_analyze_security() {
    if !have("systemd-analyze", "units_score_ok_in_systemd_analyze_security") {
        return;
    }
    let dir = scratch("security");
    for rel in UNITS {
        let name = Path::new(rel).file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(dir.join(&name), read(rel)).unwrap();
        let checked = dir.join(name.replace("@.", "@disk1."));
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&checked)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if text.contains("--offline") && text.contains("nrecognized option") {
            eprintln!("skipped {rel}: this systemd-analyze cannot score a unit file offline (systemd < 250)");
            continue;
        }
        let exposure = text
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for "))
            .and_then(|(_, r)| r.split_once(": "))
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no exposure level for {rel} in:\n{text}"));
        assert!(
            exposure <= MAX_EXPOSURE,
            "{rel} is exposed at {exposure} (at most {MAX_EXPOSURE}):\n{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn units_give_sigterm_more_than_the_ten_seconds_a_clean_stop_takes_and_restart_on_failure() {
    for rel in UNITS {
        let u = Unit::load(rel);
        let signal = u.get("KillSignal").unwrap_or("SIGTERM");
        assert!(
            signal == "SIGTERM" || signal == "TERM" || signal == "15",
            "{rel}: KillSignal={signal}, not SIGTERM"
        );
        let timeout = stop_timeout(&u);
        assert!(
            timeout >= CLEAN_STOP_SECS + STOP_MARGIN_SECS,
            "{rel}: TimeoutStopSec is {timeout} s; a clean stop takes up to {CLEAN_STOP_SECS} s, leave at least {STOP_MARGIN_SECS} s more"
        );
        assert!(
            !matches!(u.get("KillMode"), Some("none")),
            "{rel}: KillMode=none leaves processes behind"
        );
        assert_eq!(u.get("Restart"), Some("on-failure"), "{rel}: Restart=");
        assert!(
            u.get("RestartSec").is_some_and(|s| seconds(s) >= 1.0),
            "{rel}: RestartSec= under 1 s or unset"
        );
        assert!(
            u.get("LimitNOFILE")
                .and_then(|n| n.split(':').next_back()?.parse::<u64>().ok())
                .unwrap_or(0)
                >= 65536,
            "{rel}: LimitNOFILE= below 65536 (a node holds a file per chunk in flight)"
        );
        assert_eq!(
            u.get_in("Install", "WantedBy"),
            Some("multi-user.target"),
            "{rel}: not enabled at boot"
        );
    }
}

#[test]
fn units_run_as_the_sysusers_user_without_capabilities_in_a_read_only_system() {
    let user = sysusers_user();
    let hardening = [
        ("NoNewPrivileges", "true"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "true"),
        ("PrivateTmp", "true"),
        ("PrivateDevices", "true"),
        ("ProtectKernelTunables", "true"),
        ("ProtectKernelModules", "true"),
        ("ProtectControlGroups", "true"),
        ("LockPersonality", "true"),
        ("MemoryDenyWriteExecute", "true"),
        ("RestrictRealtime", "true"),
        ("RestrictSUIDSGID", "true"),
        ("SystemCallArchitectures", "native"),
    ];
    for rel in UNITS {
        let u = Unit::load(rel);
        assert_eq!(
            u.get("User"),
            Some(user.as_str()),
            "{rel}: User= is not {user}, the user {SYSUSERS} creates"
        );
        assert_eq!(u.get("Group"), Some(user.as_str()), "{rel}: Group=");
        assert!(
            u.get("DynamicUser").is_none_or(|v| !truthy(v)),
            "{rel}: key files must be owned by a stable user"
        );
        assert_eq!(
            u.get("CapabilityBoundingSet"),
            Some(""),
            "{rel}: CapabilityBoundingSet= must be empty"
        );
        assert!(u.get("AmbientCapabilities").unwrap_or("").is_empty(), "{rel}: AmbientCapabilities=");
        for (key, want) in hardening {
            let got = u.get(key).unwrap_or_else(|| panic!("{rel}: {key}= is not set"));
            let ok = if want == "true" { truthy(got) } else { got == want };
            assert!(ok, "{rel}: {key}={got}, want {want}");
        }
        let families: BTreeSet<&str> = u.must("RestrictAddressFamilies").split_whitespace().collect();
        let allowed: BTreeSet<&str> = ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"].into();
        assert!(
            families.contains("AF_INET") && families.contains("AF_INET6"),
            "{rel}: RestrictAddressFamilies= must let TCP and UDP over IPv4 and IPv6 through"
        );
        assert!(
            families.is_subset(&allowed),
            "{rel}: RestrictAddressFamilies= allows more than {allowed:?}"
        );
    }
}

#[test]
fn units_syscall_filter_lets_collective_set_its_cpu_policy_to_sched_batch() {
    if !have(
        "systemd-analyze",
        "units_syscall_filter_lets_collective_set_its_cpu_policy_to_sched_batch",
    ) {
        return;
    }
    let groups = syscall_groups();
    for rel in UNITS {
        let u = Unit::load(rel);
        assert!(!u.all("SystemCallFilter").is_empty(), "{rel}: no SystemCallFilter=");
        // Every process calls sched_setscheduler(SCHED_BATCH) at start (configuration.md,
        // "CPU scheduling"); RestrictRealtime= only refuses the realtime policies.
        assert!(
            filter_allows(&u, "sched_setscheduler", &groups),
            "{rel}: SystemCallFilter= forbids sched_setscheduler, so the process cannot run under SCHED_BATCH"
        );
        // And the calls that move chunks: files, fsync, UDP batches, epoll.
        for needed in ["openat", "pwrite64", "fdatasync", "sendmmsg", "recvmmsg", "epoll_wait", "mmap"] {
            assert!(filter_allows(&u, needed, &groups), "{rel}: SystemCallFilter= forbids {needed}");
        }
        assert_eq!(
            u.get("SystemCallErrorNumber"),
            Some("EPERM"),
            "{rel}: a refused call must fail, not kill the process"
        );
    }
}

#[test]
fn units_keep_each_process_data_in_the_one_directory_it_may_write() {
    let coord = Unit::load(COORDINATOR_UNIT);
    let data = coord.exec_flag("--data-dir");
    let state = coord.must("StateDirectory");
    assert_eq!(
        data,
        format!("/var/lib/{state}"),
        "{COORDINATOR_UNIT}: --data-dir is not its StateDirectory="
    );
    assert!(
        coord.get("ReadWritePaths").is_none(),
        "{COORDINATOR_UNIT}: writes nothing but its state directory"
    );
    assert_eq!(coord.exec_flag("--config"), "/etc/collective/coordinator.toml");

    let node = Unit::load(NODE_UNIT);
    let data = node.exec_flag("--data-dir");
    assert!(
        data.contains("%i"),
        "{NODE_UNIT}: instances must not share a data directory ({data})"
    );
    assert_eq!(
        node.all("ReadWritePaths"),
        vec![data.as_str()],
        "{NODE_UNIT}: ReadWritePaths= is not --data-dir"
    );
    assert_eq!(
        node.get_in("Unit", "RequiresMountsFor"),
        Some(data.as_str()),
        "{NODE_UNIT}: must wait for the disk under --data-dir"
    );
    assert_eq!(node.exec_flag("--config"), "/etc/collective/node-%i.toml");
    for u in [&coord, &node] {
        assert_eq!(u.get("ConfigurationDirectory"), Some("collective"), "{}: /etc/collective", u.name);
    }
}

#[test]
fn units_and_compose_pass_only_flags_the_binary_accepts() {
    let mut lines: Vec<(String, Vec<String>)> = UNITS.iter().map(|rel| (rel.to_string(), Unit::load(rel).exec_args())).collect();
    let c = compose();
    for (name, s) in c["services"].as_object().unwrap() {
        lines.push((format!("{COMPOSE} service {name}"), command_of(name, s)));
    }
    let mut help = BTreeMap::new();
    for (whence, args) in &lines {
        let sub = args.first().unwrap_or_else(|| panic!("{whence}: no subcommand"));
        assert!(
            sub == "coordinator" || sub == "node",
            "{whence}: runs `collective {sub}`, not a server"
        );
        let known = help.entry(sub.clone()).or_insert_with(|| flags_of(sub));
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                known.contains(flag),
                "{whence}: `collective {sub}` has no flag {flag} (it has {known:?})"
            );
        }
        assert!(flag_value(args, "--config").is_some(), "{whence}: no --config");
    }
}

#[test]
fn sysusers_file_creates_a_system_user_that_cannot_log_in() {
    if !have("systemd-sysusers", "sysusers_file_creates_a_system_user_that_cannot_log_in") {
        return;
    }
    let root = scratch("sysusers");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", p(&root)))
        .arg(repo(SYSUSERS).canonicalize().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-sysusers {SYSUSERS}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let user = sysusers_user();
    let entry: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap_or_else(|| panic!("systemd-sysusers made no user {user}:\n{passwd}"))
        .split(':')
        .collect();
    let uid: u32 = entry[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "{user} has uid {uid}, not a system uid");
    assert!(entry[6].ends_with("nologin"), "{user} has the login shell {}", entry[6]);
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    assert!(
        group.lines().any(|l| l.starts_with(&format!("{user}:"))),
        "no group {user}:\n{group}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn compose_runs_a_coordinator_and_two_nodes_restarted_on_failure_with_the_units_stop_timeout() {
    let c = compose();
    let unit_timeout = stop_timeout(&Unit::load(COORDINATOR_UNIT));
    assert_eq!(services_running(&c, "coordinator").len(), 1, "{COMPOSE}: one coordinator");
    assert_eq!(services_running(&c, "node").len(), 2, "{COMPOSE}: two nodes");
    let declared: BTreeSet<String> = c["volumes"].as_object().map(|v| v.keys().cloned().collect()).unwrap_or_default();
    let mut data_volumes = BTreeSet::new();
    for (name, s) in c["services"].as_object().unwrap() {
        assert_eq!(s["restart"], "on-failure", "{COMPOSE}: service {name} restart policy");
        assert_eq!(s["init"], true, "{COMPOSE}: service {name} needs an init that passes SIGTERM on");
        assert!(
            s["stop_signal"].is_null() || s["stop_signal"] == "SIGTERM",
            "{COMPOSE}: service {name} stop_signal"
        );
        let grace = s["stop_grace_period"].as_str().map(seconds).unwrap_or(10.0);
        assert_eq!(
            grace, unit_timeout,
            "{COMPOSE}: service {name} waits {grace} s after SIGTERM, the systemd units {unit_timeout} s"
        );
        let image = s["image"].as_str().unwrap_or_default();
        assert!(
            !image.is_empty() && !s["build"].is_null(),
            "{COMPOSE}: service {name} must build its image"
        );
        for (source, _, _) in volumes_of(s).into_iter().filter(|(src, _, _)| !is_bind(src)) {
            assert!(
                declared.contains(&source),
                "{COMPOSE}: service {name} mounts undeclared volume {source}"
            );
            assert!(
                data_volumes.insert(source.clone()),
                "{COMPOSE}: volume {source} is shared by two services"
            );
        }
    }
}

#[test]
fn compose_mounts_every_config_file_and_data_dir_its_commands_name() {
    let c = compose();
    let base = repo(COMPOSE).parent().unwrap().to_path_buf();
    for (name, s) in c["services"].as_object().unwrap() {
        let args = command_of(name, s);
        let volumes = volumes_of(s);
        let config = flag_value(&args, "--config").unwrap_or_else(|| panic!("service {name}: no --config"));
        let (source, target, read_only) = volumes
            .iter()
            .find(|(src, target, _)| is_bind(src) && Path::new(&config).starts_with(target))
            .unwrap_or_else(|| panic!("service {name}: --config {config} is in no bind-mounted directory"));
        let on_host = base.join(source).join(Path::new(&config).strip_prefix(target).unwrap());
        assert!(
            on_host.is_file(),
            "service {name}: --config {config} is {}, which does not exist",
            on_host.display()
        );
        assert!(read_only, "service {name}: mount configuration and keys read-only");
        let data = flag_value(&args, "--data-dir").unwrap_or_else(|| panic!("service {name}: no --data-dir"));
        assert!(
            volumes.iter().any(|(src, target, ro)| !is_bind(src) && *target == data && !ro),
            "service {name}: --data-dir {data} is not a writable named volume"
        );
    }
    let build = &c["services"]["coordinator"]["build"];
    let context = base.join(build["context"].as_str().unwrap_or("."));
    let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
    assert!(
        dockerfile.is_file(),
        "{COMPOSE}: build.dockerfile {} does not exist",
        dockerfile.display()
    );
}

#[test]
fn dockerfile_runs_the_release_binary_as_an_unprivileged_user() {
    let text = read("deploy/compose/Dockerfile");
    let instructions: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && !l.starts_with(' '))
        .filter_map(|l| l.split_once(' ').map(|(i, r)| (i.to_uppercase(), r.trim().to_string())))
        .collect();
    let last = |i: &str| instructions.iter().rev().find(|(k, _)| k == i).map(|(_, v)| v.clone());
    assert_eq!(
        last("COPY").as_deref(),
        Some(format!("target/release/collective {INSTALLED_BIN}").as_str()),
        "the image copies the release binary"
    );
    let user = last("USER").expect("the Dockerfile sets no USER: the process would run as root");
    assert!(user != "root" && !user.starts_with("0"), "USER {user} is root");
    assert_eq!(last("ENTRYPOINT"), Some(format!("[\"{INSTALLED_BIN}\"]")));
    let ignore = read("deploy/compose/Dockerfile.dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "!target/release/collective"),
        "Dockerfile.dockerignore must let target/release/collective into the build context"
    );
}

/// A process started by a test, killed by PID when dropped (even when the test fails).
struct Server {
    name: String,
    child: Child,
    http: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free for both TCP and UDP (gRPC and QUIC share it).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[test]
fn compose_configs_start_a_coordinator_and_two_nodes_that_stop_cleanly_within_ten_seconds_of_sigterm() {
    let c = compose();
    let dir = scratch("compose");
    let etc = dir.join("etc");
    let compose_dir = repo(COMPOSE).parent().unwrap().to_path_buf();
    // The configuration directory, with the certificates docs/operations.md has one make.
    std::fs::create_dir_all(&etc).unwrap();
    for f in std::fs::read_dir(compose_dir.join("etc")).unwrap().flatten() {
        if f.path().extension().is_some_and(|e| e == "toml") {
            std::fs::copy(f.path(), etc.join(f.file_name())).unwrap();
        }
    }
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "collective {}:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca = dir.join("ca");
    run(&[
        "ca",
        "init",
        "--member",
        "alice",
        "--domain",
        "alice.collective.local",
        "--out",
        p(&ca),
    ]);
    let mut servers = Vec::new();
    let coordinator_grpc = format!("127.0.0.1:{}", free_port());
    let mut services = services_running(&c, "coordinator");
    services.extend(services_running(&c, "node"));
    for (name, s) in &services {
        let args = command_of(name, s);
        let role = args[0].clone();
        run(&[
            "ca",
            "issue",
            "--ca",
            p(&ca),
            "--role",
            &role,
            "--name",
            name,
            "--out",
            p(&etc.join(name)),
        ]);
        // The container's /etc/collective is our copy; its data volume a scratch directory.
        let (_, mount, _) = volumes_of(s).into_iter().find(|(src, _, _)| is_bind(src)).unwrap();
        let config = etc.join(Path::new(&flag_value(&args, "--config").unwrap()).strip_prefix(&mount).unwrap());
        // It listens on every interface, so it must say where others reach it; here that is
        // loopback, not this host's name.
        let (key, here) = match role.as_str() {
            "coordinator" => ("advertise_grpc", coordinator_grpc.clone()),
            _ => ("advertise_host", "127.0.0.1".to_string()),
        };
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(
            text.contains(&format!("\n{key} = ")),
            "{}: listens on 0.0.0.0 without {key}",
            config.display()
        );
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with(key) {
                    format!("{key} = \"{here}\"")
                } else {
                    l.into()
                }
            })
            .collect();
        std::fs::write(&config, text.join("\n")).unwrap();
        let data = dir.join(format!("data-{name}"));
        let http = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(BIN);
        for (i, a) in args.iter().enumerate() {
            match args.get(i.wrapping_sub(1)).map(String::as_str) {
                Some("--config") => cmd.arg(&config),
                Some("--data-dir") => cmd.arg(&data),
                _ => cmd.arg(a),
            };
        }
        // Free loopback ports instead of the fixed ones the host would give it.
        if role == "coordinator" {
            cmd.args(["--grpc-listen", &coordinator_grpc]);
        } else {
            let port = format!("127.0.0.1:{}", free_port());
            cmd.args(["--grpc-listen", &port, "--quic-listen", &port, "--coordinator", &coordinator_grpc]);
        }
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .args(["--http-listen", &http])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        servers.push(Server {
            name: name.clone(),
            child,
            http,
            log,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for s in &mut servers {
        while common::try_http_get(&s.http, "/health/ready").map(|(code, _)| code) != Some(200) {
            let exited = s.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "service {} did not become ready ({exited:?}); log:\n{}",
                s.name,
                std::fs::read_to_string(&s.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let grace = seconds(c["services"]["coordinator"]["stop_grace_period"].as_str().unwrap());
    let limit = Duration::from_secs_f64(CLEAN_STOP_SECS.min(grace));
    let started = Instant::now();
    for s in &servers {
        // SAFETY: kill(2) on a child this test started and has not reaped.
        unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    }
    for s in &mut servers {
        let status = loop {
            if let Some(status) = s.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < limit,
                "service {} still runs {limit:?} after SIGTERM; log:\n{}",
                s.name,
                std::fs::read_to_string(&s.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "service {} stopped with {status} after SIGTERM; log:\n{}",
            s.name,
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn operations_guide_explains_the_units_and_the_compose_example_after_stopping() {
    let guide = read("docs/operations.md");
    let stopping = guide
        .find("\n## Stopping\n")
        .expect("docs/operations.md has no `## Stopping` section");
    let service = guide
        .find("\n## Running as a service\n")
        .expect("docs/operations.md has no `## Running as a service` section");
    assert!(service > stopping, "`## Running as a service` must follow `## Stopping`");
    let section = &guide[service..];
    let section = section[1..].find("\n## ").map(|end| &section[..end + 1]).unwrap_or(section);
    let timeout = stop_timeout(&Unit::load(COORDINATOR_UNIT));
    for needed in [
        "collective-coordinator.service".to_string(),
        "collective-node@.service".to_string(),
        "collective.conf".to_string(),
        "compose.yaml".to_string(),
        "Dockerfile".to_string(),
        "systemctl daemon-reload".to_string(),
        "systemctl enable --now collective-coordinator collective-node@disk1".to_string(),
        "journalctl".to_string(),
        "chmod 600".to_string(),
        "chown -R collective:collective /etc/collective".to_string(),
        "/etc/collective/node-disk1.toml".to_string(),
        "TimeoutStopSec".to_string(),
        format!("{timeout} s"),
    ] {
        assert!(
            section.contains(&needed),
            "`## Running as a service` in docs/operations.md does not mention {needed}"
        );
    }
}
