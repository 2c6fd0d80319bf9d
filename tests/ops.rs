//! The operator's tools against the real binary in a throwaway network
//! namespace: `/metrics` scraped and parsed with Prometheus' Python parser
//! (python3-prometheus-client), `/health`, `rustbridge status`, `rustbridge gc`
//! and `rustbridge version`.
//!
//! Needs root (skipped without, failing under CI=true). Run:
//! `cargo test --test ops`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Netns, Plugin, random_id, ready_or_skip, run, wait_until};
use serde_json::{Value, json};

macro_rules! require_root {
    () => {
        if !ready_or_skip(std::thread::current().name().unwrap_or("ops")) {
            return;
        }
    };
}

const METRICS_ADDR: &str = "127.0.0.1:9474";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rustbridge")
}

/// Samples as `name{k="v",...}` (labels sorted) → value, parsed by prometheus_client.
fn scrape(ns: &Netns) -> std::collections::BTreeMap<String, f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/scrape-metrics.py");
    let url = format!("http://{METRICS_ADDR}/metrics");
    // Debian's python3, where python3-prometheus-client installs (not a python3 earlier in PATH).
    let out = run("ip", &["netns", "exec", &ns.name, "/usr/bin/python3", script, &url]);
    assert!(out.ok(), "scrape failed: {}{}", out.stdout, out.stderr);
    let parsed: Value = serde_json::from_str(&out.stdout).expect("scraper prints JSON");
    parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut labels: Vec<String> = s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap()))
                .collect();
            labels.sort();
            let key = if labels.is_empty() {
                s["name"].as_str().unwrap().to_string()
            } else {
                format!("{}{{{}}}", s["name"].as_str().unwrap(), labels.join(","))
            };
            (key, s["value"].as_f64().unwrap())
        })
        .collect()
}

/// `curl` inside the namespace: (HTTP code, body).
fn get(ns: &Netns, path: &str) -> (u16, String) {
    let url = format!("http://{METRICS_ADDR}{path}");
    let out = ns.exec(&["curl", "-s", "-m", "5", "-w", "\n%{http_code}", &url]);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn cli(p: &Plugin, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).arg("--socket").arg(&p.socket).output().expect("run rustbridge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A network with one joined endpoint publishing 127.0.0.1:8080 → 80/tcp.
fn populate(p: &Plugin) -> (String, String) {
    let net = random_id();
    p.ok(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": net, "IPv4Data": [{"Pool": "10.91.0.0/24", "Gateway": "10.91.0.1/24"}],
               "Options": {"com.docker.network.generic": {"mtu": "1400"}}}),
    );
    let ep = random_id();
    p.ok(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": "10.91.0.2/24"}}),
    );
    p.ok("/NetworkDriver.Join", json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": "/var/run/docker/netns/x"}));
    p.ok(
        "/NetworkDriver.ProgramExternalConnectivity",
        json!({"NetworkID": net, "EndpointID": ep, "Options": {"com.docker.network.portmap":
            [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "127.0.0.1", "HostPort": 8080, "HostPortEnd": 8080}]}}),
    );
    (net, ep)
}

#[test]
fn metrics_parse_and_count_calls_state_repairs_and_the_process() {
    require_root!();
    let host = Netns::host();
    let p = Plugin::start_with(&host, &["--metrics-addr", METRICS_ADDR]);
    let (net, _) = populate(&p);
    let (_, reply) = p.call("/NetworkDriver.CreateNetwork", json!({"NetworkID": "nothex"}));
    assert!(reply["Err"].as_str().is_some_and(|e| !e.is_empty()), "{reply}");

    let m = scrape(&host);
    let at = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing from {m:#?}"));
    assert_eq!(at("rustbridge_calls_total{method=\"NetworkDriver.CreateNetwork\"}"), 2.0);
    assert_eq!(at("rustbridge_call_errors_total{method=\"NetworkDriver.CreateNetwork\"}"), 1.0);
    assert_eq!(at("rustbridge_call_errors_total{method=\"NetworkDriver.Join\"}"), 0.0);
    assert_eq!(at("rustbridge_call_duration_seconds_count{method=\"NetworkDriver.Join\"}"), 1.0);
    assert_eq!(at("rustbridge_call_duration_seconds_bucket{le=\"+Inf\",method=\"NetworkDriver.Join\"}"), 1.0);
    assert_eq!(at("rustbridge_networks"), 1.0);
    assert_eq!(at("rustbridge_endpoints"), 1.0);
    assert_eq!(at("rustbridge_published_ports"), 1.0);
    assert!(at("process_resident_memory_bytes") > 1e6);
    assert!(at("process_open_fds") >= 3.0);
    let start = at("process_start_time_seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(start <= now && start > now - 600.0, "start time {start}, now {now}");

    // Flushed rules are a drift the reconciler repairs and counts.
    host.exec(&["iptables", "-F", "RUSTBRIDGE-FORWARD"]).expect_ok();
    let repaired = wait_until(Duration::from_secs(5), || {
        scrape(&host).get("rustbridge_reconcile_repairs_total{kind=\"rules_restored\"}").is_some_and(|v| *v >= 1.0)
    });
    assert!(repaired.is_some(), "no rules_restored repair counted:\n{}", p.log_text());
    let checked = scrape(&host)["rustbridge_last_successful_check_timestamp_seconds"];
    assert!(checked >= start && checked <= now + 60.0, "last check {checked}");
    let (status_ok, status, _) = cli(&p, &["status", "--json", "--docker-socket", ""]);
    assert!(status_ok);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert!(status["repairs"]["rules_restored"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["networks"][0]["id"], net.as_str());

    assert_eq!(get(&host, "/health"), (200, "ok\n".into()));
    assert_eq!(get(&host, "/nothing").0, 404);
}

#[test]
fn status_gc_and_version_through_the_socket() {
    require_root!();
    let host = Netns::host();
    let p = Plugin::start(&host);
    let (net, ep) = populate(&p);
    let (ok, text, err) = cli(&p, &["status", "--docker-socket", ""]);
    assert!(ok, "{err}");
    let bridge = format!("rb-{}", &net[..12]);
    assert!(text.contains(&format!("bridge {bridge}")), "{text}");
    assert!(text.contains("subnet 10.91.0.0/24  gateway 10.91.0.1"), "{text}");
    assert!(text.contains("options com.docker.network.driver.mtu=1400\n"), "{text}");
    assert!(text.contains(&format!("veth rbh-{}", &ep[..11])), "{text}");
    assert!(text.contains("publish 127.0.0.1:8080/tcp -> 10.91.0.2:80"), "{text}");
    assert!(text.contains("kernel matches state: yes"), "{text}");

    // A bridge and a veth that look like the plugin's but no state knows.
    host.ip(&["link", "add", "rb-aaaaaaaaaaaa", "type", "bridge"]).expect_ok();
    host.ip(&["link", "add", "rbh-bbbbbbbbbbb", "type", "veth", "peer", "name", "rbc-bbbbbbbbbbb"]).expect_ok();
    host.ip(&["link", "add", "br-mine", "type", "bridge"]).expect_ok();
    let (ok, listed, err) = cli(&p, &["gc"]);
    assert!(ok, "{err}");
    for name in ["rb-aaaaaaaaaaaa", "rbh-bbbbbbbbbbb", "rbc-bbbbbbbbbbb"] {
        assert!(
            listed.contains(&format!("leftover {} {name}", if name.starts_with("rb-") { "bridge" } else { "veth" })),
            "{listed}"
        );
    }
    assert!(!listed.contains(&bridge) && !listed.contains("br-mine"), "{listed}");
    assert!(host.has_link("rb-aaaaaaaaaaaa"), "gc without --yes removes nothing");
    let (ok, removed, err) = cli(&p, &["gc", "--yes"]);
    assert!(ok, "{removed}{err}");
    assert!(!host.has_link("rb-aaaaaaaaaaaa") && !host.has_link("rbh-bbbbbbbbbbb"), "{removed}");
    assert!(host.has_link(&bridge) && host.has_link(&format!("rbh-{}", &ep[..11])) && host.has_link("br-mine"));
    let (ok, again, _) = cli(&p, &["gc", "--json"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&again).unwrap()["leftovers"], json!([]));
    host.ip(&["link", "del", "br-mine"]).expect_ok();

    // A socket nobody serves: a clear error, exit status 1.
    let out = Command::new(bin()).args(["status", "--socket", "/nonexistent/rb.sock"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connect to /nonexistent/rb.sock") && err.contains("is the plugin running"), "{err}");
}

#[test]
fn version_names_the_commit_and_the_engines() {
    let out = Command::new(bin()).arg("version").output().expect("run rustbridge version");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let commit = text.lines().find_map(|l| l.strip_prefix("commit: ")).unwrap_or_else(|| panic!("{text}"));
    let in_git = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    if in_git.is_ok_and(|o| o.status.success()) {
        assert!(commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()), "commit {commit:?}");
    }
    for engine in ["20.10.24", "26.1.5", "28.5.2"] {
        assert!(text.contains(engine), "{text}");
    }
}

/// `Key=value` lines of one section of a systemd unit file.
fn unit_section(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == format!("[{section}]");
        } else if inside && !line.starts_with('#') && !line.is_empty() {
            let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not Key=value: {line}"));
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

/// plugin/rustbridge.service without systemd (this machine has none as init):
/// its ExecStart line, with its Environment, run as written except for the
/// binary's path (this build's), in a network namespace and a private mount
/// namespace whose /run and /var/lib are empty tmpfs, so the unit's real paths
/// are used without touching the host's.
#[test]
fn systemd_unit_execstart_serves_the_legacy_socket() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/plugin/rustbridge.service")).unwrap();
    let service = unit_section(&unit, "Service");
    let get = |section: &[(String, String)], key: &str| -> Vec<String> {
        section.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    };
    let unit_part = unit_section(&unit, "Unit");
    assert_eq!(get(&unit_part, "Before"), ["docker.service"], "dockerd must find the driver at its start");
    assert_eq!(get(&service, "Restart"), ["always"]);
    assert_eq!(get(&service, "StandardOutput"), ["journal"]);
    let exec = get(&service, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart");
    let argv: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(argv[0], "/usr/local/bin/rustbridge", "where make install-service puts the binary");
    assert_eq!(&argv[1..3], ["serve", "--socket"]);
    assert_eq!(argv[3], "/run/docker/plugins/rustbridge.sock");
    require_root!();

    let host = Netns::host();
    let script = "mount -t tmpfs rb /run && mount -t tmpfs rb /var/lib && mkdir -p /run/docker/plugins && exec \"$@\"";
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &host.name, "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]);
    cmd.arg(bin()).args(&argv[1..]);
    for env in get(&service, "Environment") {
        let (k, v) = env.split_once('=').unwrap();
        cmd.env(k, v);
    }
    let log = std::env::temp_dir().join(format!("rbt-{}-unit.log", std::process::id()));
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start the unit's ExecStart");
    let root = format!("/proc/{}/root", child.id());
    let socket = std::path::PathBuf::from(format!("{root}/run/docker/plugins/rustbridge.sock"));
    // Until the chain has exec'd this build's binary (after its mounts), /proc/PID/root
    // is the host's root and the path would reach the host's own plugin socket.
    let exe = std::fs::canonicalize(bin()).unwrap();
    let activated = wait_until(Duration::from_secs(10), || {
        std::fs::read_link(format!("/proc/{}/exe", child.id())).is_ok_and(|p| p == exe)
            && matches!(common::http_post(&socket, "/Plugin.Activate", b""), Ok((200, _)))
    });
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    if activated.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the unit's ExecStart did not serve {}; log:\n{}", socket.display(), log_text());
    }
    let net = random_id();
    let created = common::http_post(
        &socket,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": net, "IPv4Data": [{"Pool": "10.92.0.0/24", "Gateway": "10.92.0.1/24"}]})
            .to_string()
            .as_bytes(),
    );
    let state_file = std::path::PathBuf::from(format!("{root}/var/lib/rustbridge/rustbridge.redb"));
    let state_there = state_file.exists();
    let bridge_there = host.has_link(&format!("rb-{}", &net[..12]));
    let links = host.link_names();
    let started = std::time::Instant::now();
    run("kill", &["-TERM", &child.id().to_string()]).expect_ok();
    let status = child.wait().unwrap();
    let log_kept = log_text();
    let log_text = || log_kept.clone();
    let _ = std::fs::remove_file(&log);
    assert!(matches!(created, Ok((200, _))), "{created:?}");
    assert!(bridge_there, "bridge made in the namespace: {links:?}\nlog:\n{}", log_text());
    assert!(state_there, "state kept in /var/lib/rustbridge as the unit says");
    assert!(status.success() && started.elapsed() < Duration::from_secs(5), "{status} after {:?}", started.elapsed());
}
