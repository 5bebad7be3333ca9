//! Observability with the real tools: `/metrics` checked by promtool, the alert rules unit
//! tested, a real Prometheus scraping a local cluster, health endpoints, cluster events,
//! the audit log and JSON logs.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Cluster, p, pid_alive, random_bytes, within};

/// The repository's `deploy/` directory.
fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(rel)
}

/// promtool and prometheus come from the Debian package `prometheus`, which
/// `scripts/prereqs.sh` (run by `make test`) installs.
fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run scripts/prereqs.sh (it installs the Debian package prometheus)"
    );
    Command::new(name)
}

fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    let mut child = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && text.trim().is_empty(), text)
}

/// The value of a sample line `name{labels} value` (or `name value`) in an exposition.
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Metric family names an exposition declares.
fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// `collective_*` names used in a rules or dashboard file, without histogram suffixes.
fn names_used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("collective_") {
        let start = i + at;
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        if before_ok && !name.ends_with('_') {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        i = end;
    }
    out
}

#[test]
fn metrics_of_coordinator_and_node_pass_promtool_and_counters_move_when_files_are_put_and_read() {
    let c = Cluster::start("promtool", 2, 2);
    let coord = c.proc("coordinator");
    let node = c.nodes()[0].clone();
    let before_coord = common::http_get(&coord.http, "/metrics").1;
    let before_nodes: Vec<String> = c.nodes().iter().map(|n| common::http_get(&n.http, "/metrics").1).collect();

    let data = random_bytes(3 << 20, 7);
    c.ok(&["put", p(&c.write_local("m.bin", &data)), "/m/m.bin"]);
    assert!(c.cli(&["cat", "/m/m.bin"]).stdout == data);

    let coord_text = common::http_get(&coord.http, "/metrics").1;
    let node_texts: Vec<String> = c.nodes().iter().map(|n| common::http_get(&n.http, "/metrics").1).collect();
    for (who, text) in [("coordinator", &coord_text), ("node", &node_texts[0])] {
        let (ok, problems) = promtool_check_metrics(text);
        assert!(ok, "promtool check metrics on the {who}'s /metrics:\n{problems}");
    }
    let commits = "collective_coordinator_rpcs_total{method=\"commit_files\"}";
    assert!(
        sample(&coord_text, commits) > sample(&before_coord, commits),
        "commit count did not move"
    );
    let plans = "collective_coordinator_rpcs_total{method=\"read_plan\"}";
    assert!(
        sample(&coord_text, plans) > sample(&before_coord, plans),
        "read plan count did not move"
    );
    let total = |texts: &[String], series: &str| texts.iter().map(|t| sample(t, series)).sum::<f64>();
    let received =
        total(&node_texts, "collective_node_received_bytes_total") - total(&before_nodes, "collective_node_received_bytes_total");
    assert!(
        received >= 2.0 * data.len() as f64,
        "nodes received {received} bytes for two copies of {}",
        data.len()
    );
    let sent = total(&node_texts, "collective_node_sent_bytes_total") - total(&before_nodes, "collective_node_sent_bytes_total");
    assert!(sent >= data.len() as f64, "nodes sent {sent} bytes for one read of {}", data.len());
    for text in [&coord_text, &node_texts[0]] {
        assert!(text.contains("commit=\""), "build info names the commit");
        assert!(sample(text, "collective_health_score") > 0.0);
        assert!(sample(text, "collective_certificate_expiry_timestamp_seconds") > 1.0e9);
    }

    // Every metric the alert rules and the dashboard use exists on a coordinator or a node.
    let mut known = families(&coord_text);
    known.extend(families(&node_texts[0]));
    for file in ["prometheus/alerts.yml", "grafana/collective.json"] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let missing: Vec<String> = names_used(&text).into_iter().filter(|n| !known.contains(n)).collect();
        assert!(missing.is_empty(), "deploy/{file} uses metrics no process exports: {missing:?}");
    }
    drop(node);
}

/// Runs promtool with `args` in `dir`; fails the test with its output unless it succeeds.
fn promtool_ok(args: &[&str], dir: &Path) {
    let out = tool("promtool").args(args).current_dir(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
}

#[test]
fn alert_rules_pass_promtool_check_rules_and_their_unit_tests() {
    let dir = deploy("prometheus");
    promtool_ok(&["check", "rules", "alerts.yml"], &dir);
    promtool_ok(&["test", "rules", "alerts_test.yml"], &dir);
    promtool_ok(&["check", "config", "prometheus.yml"], &dir);
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(deploy("grafana/collective.json")).unwrap()).unwrap();
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in ["Capacity", "Throughput", "latency", "Health", "Replication", "Federation"] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "the dashboard has no {want} panel or row: {titles:?}"
        );
    }
}

/// A Prometheus server, killed by PID when dropped.
struct Prometheus {
    pid: u32,
    addr: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on the PID we started.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /api/v1/query?query=Q` (Q without characters that need escaping).
fn query(addr: &str, q: &str) -> Vec<serde_json::Value> {
    let Some((200, body)) = common::try_http_get(addr, &format!("/api/v1/query?query={q}")) else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_real_prometheus_scrapes_a_local_cluster_and_answers_queries_for_collective_metrics() {
    let c = Cluster::start("prometheus", 2, 2);
    c.ok(&["put", p(&c.write_local("x.txt", b"scraped\n")), "/prom/x.txt"]);
    let dir = c.path("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let coord = c.proc("coordinator").http;
    let nodes: Vec<String> = c.nodes().iter().map(|n| format!("\"{}\"", n.http)).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: collective-coordinator\n    static_configs:\n      - targets: [\"{coord}\"]\n  - job_name: collective-node\n    static_configs:\n      - targets: [{}]\n",
        deploy("prometheus/alerts.yml").display(),
        nodes.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = dir.join("prometheus.log");
    let child = tool("prometheus")
        .arg(format!("--config.file={}", p(&dir.join("prometheus.yml"))))
        .arg(format!("--storage.tsdb.path={}", p(&dir.join("data"))))
        .arg(format!("--web.listen-address={addr}"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("prometheus.err")).unwrap())
        .spawn()
        .unwrap();
    let prom = Prometheus {
        pid: child.id(),
        addr,
        log,
    };
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    within(Duration::from_secs(60), "Prometheus to scrape all three targets", || {
        assert!(
            pid_alive(prom.pid),
            "prometheus exited: {}",
            std::fs::read_to_string(dir.join("prometheus.err")).unwrap_or_default()
        );
        let up = query(&prom.addr, "up");
        up.len() == 3 && up.iter().all(|r| r["value"][1] == "1")
    });
    within(Duration::from_secs(30), "a collective metric in a query", || {
        let r = query(&prom.addr, "collective_coordinator_files");
        r.first()
            .is_some_and(|r| r["value"][1] == "1" && r["metric"]["job"] == "collective-coordinator")
    });
    let stored = query(&prom.addr, "collective_node_stored_chunks");
    assert_eq!(stored.len(), 2, "{stored:?}");
    // The alert rules load and evaluate against real data.
    let (_, rules) = common::try_http_get(&prom.addr, "/api/v1/rules").unwrap();
    let rules: serde_json::Value = serde_json::from_str(&rules).unwrap();
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["name"], "collective", "{rules}");
    assert!(
        group["rules"].as_array().unwrap().iter().all(|r| r["health"] != "err"),
        "a rule fails to evaluate: {rules}; log {}",
        prom.log.display()
    );
}

#[test]
fn ready_is_503_until_the_coordinator_has_a_node_and_health_json_has_the_documented_fields() {
    let c = Cluster::start("ready", 1, 1);
    let coord = c.proc("coordinator");
    let (_, body) = common::http_get(&coord.http, "/health");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        health["status"].is_string() && health["score"].is_u64() && health["ready"] == true,
        "{body}"
    );
    let names: Vec<&str> = health["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["metadata", "nodes", "disk", "certificates"], "{body}");
    for comp in health["components"].as_array().unwrap() {
        assert!(["ok", "degraded", "failed"].contains(&comp["state"].as_str().unwrap()), "{comp}");
        assert!(!comp["message"].as_str().unwrap().is_empty(), "{comp}");
    }
    let certs = &health["components"][3];
    assert!(certs["days_to_expiry"].as_i64().unwrap() > 300, "{certs}");
    assert!(health["components"][2]["used_ratio"].as_f64().is_some());

    // A coordinator that starts without any node is up but not ready.
    c.kill9("node-01");
    c.kill9("coordinator");
    c.restart("coordinator");
    within(Duration::from_secs(30), "the coordinator to answer live", || {
        common::try_http_get(&coord.http, "/health/live").is_some_and(|(s, _)| s == 200)
    });
    let (status, _) = common::http_get(&coord.http, "/health/ready");
    assert_eq!(status, 503);
    let (_, body) = common::http_get(&coord.http, "/health");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["ready"], false);
    assert_eq!(health["components"][1]["state"], "failed", "{body}");
    assert!(health["score"].as_u64().unwrap() <= 50, "{body}");
    let (_, metrics) = common::http_get(&coord.http, "/metrics");
    assert_eq!(sample(&metrics, "collective_ready"), 0.0);

    c.restart("node-01");
    within(Duration::from_secs(30), "ready once the node registers", || {
        common::try_http_get(&coord.http, "/health/ready").is_some_and(|(s, _)| s == 200)
    });
    // The node's own health names its components too.
    let (_, body) = common::http_get(&c.nodes()[0].http, "/health");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = health["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["store", "coordinator", "disk", "certificates"], "{body}");
}

#[test]
fn killing_a_node_shows_in_status_json_and_as_an_event_within_the_heartbeat_timeout() {
    let c = Cluster::start("events", 2, 2);
    c.ok(&["put", p(&c.write_local("e.txt", b"event\n")), "/ev/e.txt"]);
    // A follower subscribed before the failure sees it live.
    let mut follower = c
        .cmd()
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The history a late subscriber sees: both nodes registered and up.
    let first: Vec<serde_json::Value> = (0..4)
        .map(|_| serde_json::from_str(&rx.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap())
        .collect();
    assert_eq!(first.iter().filter(|e| e["kind"] == "node-up").count(), 2, "{first:?}");

    let victim = c.nodes()[1].principal.clone();
    c.kill9("node-02");
    // The dev cluster's node_timeout is 6 s; the watcher looks every second.
    let limit = Duration::from_secs(6 + 6);
    let down = loop {
        let line = rx.recv_timeout(limit).expect("no node-down event within the heartbeat timeout");
        let e: serde_json::Value = serde_json::from_str(&line).unwrap();
        if e["kind"] == "node-down" {
            break e;
        }
    };
    assert_eq!(down["subject"], victim.as_str());
    assert_eq!(down["severity"], "warning");
    assert!(down["message"].as_str().unwrap().contains("heartbeat"), "{down}");
    let s = c.status_json();
    let node = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == victim.as_str())
        .unwrap();
    assert_eq!(node["state"], "down", "{s}");
    assert!(
        s["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains(&victim)),
        "{s}"
    );
    for key in ["members", "certificates", "repair", "replication_state", "data"] {
        assert!(!s[key].is_null(), "status --json lacks {key}: {s}");
    }
    assert!(s["certificates"].as_array().unwrap().iter().any(|c| c["role"] == "client"));
    // Non-following `events` prints the history and exits.
    let history = c.ok(&["events", "--json"]);
    assert!(history.lines().any(|l| l.contains("\"node-down\"")), "{history}");
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
fn every_mutating_cli_command_leaves_an_audit_entry_with_its_principal_and_result() {
    let c = Cluster::start("audit", 2, 2);
    let admin = "admin@home.collective.local";
    let local = c.write_local("a.txt", b"audited\n");
    c.ok(&["datastore", "create", "/team"]);
    c.ok(&["mkdir", "-p", "/team/docs"]);
    c.ok(&["put", p(&local), "/team/docs/a.txt"]);
    let mut w = c
        .cmd()
        .args(["write", "/team/docs/w.txt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    w.stdin.take().unwrap().write_all(b"written\n").unwrap();
    assert!(w.wait().unwrap().success());
    c.ok(&["mv", "/team/docs/a.txt", "/team/docs/b.txt"]);
    c.ok(&["rm", "/team/docs/w.txt"]);
    c.ok(&["datastore", "grant", "/team", "guest@home.collective.local", "read"]);
    c.ok(&["invite", "generate", "--grant", "/team:read"]);
    let invites: serde_json::Value = serde_json::from_str(&c.ok(&["invite", "list", "--json"])).unwrap();
    let id = invites["invites"][0]["id"].as_str().unwrap().to_string();
    c.ok(&["invite", "revoke", &id]);
    // A refused write by another user is recorded as denied, under that user.
    let guest = c.second_user("guest");
    let out = c.cli_with(&guest, &["mkdir", "/team/nope"]);
    assert!(!out.status.success());
    c.ok(&["datastore", "revoke", "/team", "guest@home.collective.local"]);

    let entries: Vec<serde_json::Value> = serde_json::from_str(&c.ok(&["audit", "--json", "--since", "1h"])).unwrap();
    let has = |op: &str, target: &str, who: &str, result: &str| {
        entries
            .iter()
            .any(|e| e["op"] == op && e["target"] == target && e["principal"] == who && e["result"] == result)
    };
    for (op, target) in [
        ("datastore-create", "/team"),
        ("mkdir", "/team/docs"),
        ("commit", "/team/docs/a.txt"),
        ("commit", "/team/docs/w.txt"),
        ("rename", "/team/docs/a.txt"),
        ("remove", "/team/docs/w.txt"),
        ("grant", "/team"),
        ("revoke", "/team"),
        ("invite", "/team:read"),
        ("invite-revoke", &format!("invite {id}")),
    ] {
        assert!(
            has(op, target, admin, "ok"),
            "no ok audit entry {op} {target} by {admin}: {entries:#?}"
        );
    }
    assert!(has("mkdir", "/team/nope", "guest@home.collective.local", "denied"), "{entries:#?}");
    assert!(entries.iter().any(|e| e["op"] == "node-register" && e["result"] == "ok"));
    for e in &entries {
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    }

    // --principal filters; a non-admin sees only its own entries and may not ask for others'.
    let mine: Vec<serde_json::Value> =
        serde_json::from_str(&c.ok(&["audit", "--json", "--principal", "guest@home.collective.local"])).unwrap();
    assert!(!mine.is_empty() && mine.iter().all(|e| e["principal"] == "guest@home.collective.local"));
    let guest_view = c.cli_with(&guest, &["audit", "--json"]);
    assert!(guest_view.status.success());
    let guest_view: Vec<serde_json::Value> = serde_json::from_slice(&guest_view.stdout).unwrap();
    assert!(!guest_view.is_empty() && guest_view.iter().all(|e| e["principal"] == "guest@home.collective.local"));
    let refused = c.cli_with(&guest, &["audit", "--principal", admin]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("own audit entries"));

    // Entries survive a coordinator restart (they are in the metadata database).
    c.kill9("coordinator");
    c.restart("coordinator");
    c.wait_ready();
    let after: Vec<serde_json::Value> = serde_json::from_str(&c.ok(&["audit", "--json"])).unwrap();
    assert!(
        after.len() >= entries.len(),
        "{} entries before the restart, {} after",
        entries.len(),
        after.len()
    );
}

#[test]
fn log_format_json_writes_one_object_per_line_and_errors_name_principal_operation_and_target() {
    let c = Cluster::start("jsonlog", 1, 1);
    let coord = c.proc("coordinator");
    c.kill9("coordinator");
    let start = std::fs::metadata(&coord.log).map(|m| m.len()).unwrap_or(0) as usize;
    c.restart_with("coordinator", &["--log-format", "json"]);
    c.wait_ready();
    c.ok(&["datastore", "create", "/logs"]);
    let guest = c.second_user("outsider");
    let out = c.cli_with(&guest, &["mkdir", "/logs/forbidden"]);
    assert!(!out.status.success());
    let mut refusal = None;
    within(Duration::from_secs(10), "the refusal in the coordinator's log", || {
        let text = std::fs::read_to_string(&coord.log).unwrap();
        let lines: Vec<serde_json::Value> = text[start..]
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        assert!(lines.iter().all(|l| l["timestamp"].is_string() && l["level"].is_string()));
        refusal = lines.into_iter().find(|l| l["op"] == "mkdir" && l["level"] == "WARN");
        refusal.is_some()
    });
    let refusal = refusal.unwrap();
    assert_eq!(refusal["principal"], "outsider@home.collective.local", "{refusal}");
    assert_eq!(refusal["target"], "/logs/forbidden", "{refusal}");
    assert!(refusal["message"].as_str().unwrap().contains("lacks"), "{refusal}");
}
