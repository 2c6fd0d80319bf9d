//! dockerd's recorded request sequences (`tests/fixtures/dockerd-*.jsonl`)
//! replayed against the real binary: for each file a throwaway network namespace
//! prepared like a dockerd host (see `common::Netns::host`), `rustbridge serve`
//! started inside it, every recorded call sent over the Unix socket as dockerd sends
//! it, and the binary restarted (SIGTERM, start) at each `Plugin.Activate` after the
//! first, as across a dockerd restart.
//!
//! Every call is judged by the same model as the in-process replay of
//! tests/fixtures.rs (tests/common/replay.rs), which also runs first on the same file:
//! the binary must succeed and fail on exactly the lines the in-process plugin did.
//! On top: the answer comes within 5 s, a 200 carries a body of the shape dockerd
//! needs, a failure carries its message under the key dockerd reads for the path,
//! and the namespace's bridges and veths follow the model after every call that
//! changes them. After each file the namespace holds bridges exactly for the live
//! networks (also after one more restart), and once those are deleted no trace of
//! the plugin (links, iptables/ip6tables rules, its nftables table) is left.
//!
//! Needs root; without it the test prints "skipped: needs root", except with CI=true
//! where it fails. Everything happens inside the namespace, deleted on drop (also
//! when the test panics).

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use common::replay::{
    CALL_LIMIT, Model, Outcome, Recorded, Replay, Transport, Variant, assert_no_violations, error_key, fixtures_dir,
    recordings, replay_in_process, wire_body,
};
use common::{Netns, Plugin, ready_or_skip};
use rustbridge::names::{has_plugin_prefix, is_owned_veth_name, veth_names};

/// The real binary in its own namespace. Field order matters: the plugin is killed
/// before the namespace is deleted.
struct Binary {
    plugin: Plugin,
    /// What dockerd does after a Join: the peer in the container's namespace
    /// (one per joined endpoint, by endpoint ID). A pair whole in the host at a
    /// restart would be an endpoint whose container is gone.
    sandboxes: std::collections::BTreeMap<String, Netns>,
    host: Netns,
}

impl Binary {
    fn start() -> Binary {
        let host = Netns::host();
        let plugin = Plugin::start(&host);
        Binary { plugin, sandboxes: Default::default(), host }
    }

    /// Moves a joined endpoint's peer into a sandbox of its own (keeping its name).
    fn move_peer_to_sandbox(&mut self, body: &Value, reply: &Value) {
        let (Some(id), Some(peer)) = (body["EndpointID"].as_str(), reply["InterfaceName"]["SrcName"].as_str()) else {
            return;
        };
        if !self.host.has_link(peer) {
            return;
        }
        let sandbox = Netns::container();
        self.host.ip(&["link", "set", peer, "netns", &sandbox.name]).expect_ok();
        self.sandboxes.insert(id.to_string(), sandbox);
    }

    /// The plugin's veth names in the host and in the sandboxes.
    fn veth_names_seen(&self, links: &[Value]) -> BTreeSet<String> {
        let name = |l: &Value| l["ifname"].as_str().unwrap_or("").to_string();
        let mut seen: BTreeSet<String> = links.iter().map(name).filter(|n| is_owned_veth_name(n)).collect();
        for sandbox in self.sandboxes.values() {
            seen.extend(sandbox.link_names().into_iter().filter(|n| is_owned_veth_name(n)));
        }
        seen
    }

    /// SIGTERM, then start again on the same socket and state directory.
    fn restart_binary(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let (took, status) = self.plugin.sigterm();
        if !status.success() {
            problems.push(format!("exit status after SIGTERM: {status} (after {took:?})"));
        }
        self.plugin.restart();
        problems
    }

    /// The namespace's bridges and veths against the model.
    fn kernel_problems(&self, model: &Model) -> Vec<String> {
        let mut problems = Vec::new();
        let links = self.host.links();
        let name = |l: &Value| l["ifname"].as_str().unwrap_or("").to_string();
        let kind = |l: &Value| l["linkinfo"]["info_kind"].as_str().unwrap_or("").to_string();
        let veths = self.veth_names_seen(&links);
        problems.extend(model.veth_problems(&veths));
        let bridges: BTreeSet<String> = links.iter().filter(|l| kind(l) == "bridge").map(name).collect();
        let expected_bridges = model.expected_bridges();
        if bridges != expected_bridges {
            problems.push(format!(
                "bridges: unexpected {:?}, missing {:?} (live networks need {expected_bridges:?})",
                bridges.difference(&expected_bridges).collect::<Vec<_>>(),
                expected_bridges.difference(&bridges).collect::<Vec<_>>()
            ));
        }
        for l in links.iter().filter(|l| kind(l) == "bridge") {
            let up = l["flags"].as_array().into_iter().flatten().any(|f| f == "UP");
            if !up {
                problems.push(format!("bridge {} is not up", name(l)));
            }
        }
        for (id, e) in model.endpoints.iter().filter(|(_, e)| e.joined) {
            let (host_end, _) = veth_names(id);
            let Some(bridge) = model.networks.get(&e.network).map(|n| n.bridge.as_str()) else { continue };
            if let Some(l) = links.iter().find(|l| l["ifname"] == host_end.as_str())
                && l["master"] != bridge
            {
                problems.push(format!("{host_end} is attached to {} instead of {bridge}", l["master"]));
            }
        }
        problems
    }

    /// Links, bridges or firewall rules of the plugin left in the namespace.
    fn traces(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for l in self.host.links() {
            let name = l["ifname"].as_str().unwrap_or("");
            let bridge = l["linkinfo"]["info_kind"] == "bridge";
            if bridge || has_plugin_prefix(name) {
                problems.push(format!("link {name} left behind"));
            }
        }
        for save in ["iptables-save", "ip6tables-save"] {
            let out = self.host.exec(&[save]);
            if !out.ok() {
                problems.push(format!("{save} failed in the namespace: {}", out.stderr));
                continue;
            }
            let left: Vec<&str> = out.stdout.lines().filter(|l| l.contains("RUSTBRIDGE")).collect();
            if !left.is_empty() {
                problems.push(format!("{save}: rules left behind:\n{}", left.join("\n")));
            }
        }
        if let Some(table) = self.host.nft_table() {
            problems.push(format!("nftables table left behind:\n{table}"));
        }
        problems
    }
}

impl Transport for Binary {
    fn call(&mut self, path: &str, body: &Value, problems: &mut Vec<String>) -> Result<Value, String> {
        let started = Instant::now();
        let answer = common::http_post_within(&self.plugin.socket, path, &wire_body(body), CALL_LIMIT);
        let took = started.elapsed();
        let (status, reply) = answer.unwrap_or_else(|e| {
            panic!("{path}: no usable answer within {CALL_LIMIT:?} (after {took:?}): {e}\nrequest: {body}")
        });
        if took > CALL_LIMIT {
            problems.push(format!("answered after {took:?}, more than {CALL_LIMIT:?}"));
        }
        if !self.plugin.is_running() {
            panic!("the plugin exited while answering {path} ({status} {reply})\nrequest: {body}");
        }
        if status == 200 {
            match path {
                "/NetworkDriver.Join" => self.move_peer_to_sandbox(body, &reply),
                "/NetworkDriver.Leave" | "/NetworkDriver.DeleteEndpoint" => {
                    if let Some(id) = body["EndpointID"].as_str() {
                        self.sandboxes.remove(id);
                    }
                }
                _ => {}
            }
            return Ok(reply);
        }
        let key = error_key(path);
        let other = if key == "Err" { "Error" } else { "Err" };
        let message = reply.get(key).and_then(Value::as_str).unwrap_or("").to_string();
        if message.is_empty() {
            problems.push(format!("HTTP {status} without a non-empty {key:?} (the key dockerd reads here): {reply}"));
        }
        if reply.get(other).is_some() {
            problems.push(format!("HTTP {status} carries {other:?}, dockerd reads {key:?} on this path: {reply}"));
        }
        Err(if message.is_empty() { format!("HTTP {status}: {reply}") } else { message })
    }

    fn restart(&mut self) -> Vec<String> {
        self.restart_binary()
    }

    fn check_after_call(&mut self, path: &str, model: &Model) -> Vec<String> {
        let changes_links = matches!(
            path,
            "/NetworkDriver.CreateNetwork"
                | "/NetworkDriver.DeleteNetwork"
                | "/NetworkDriver.CreateEndpoint"
                | "/NetworkDriver.DeleteEndpoint"
                | "/NetworkDriver.Join"
                | "/NetworkDriver.Leave"
        );
        if changes_links { self.kernel_problems(model) } else { Vec::new() }
    }

    fn check_at_end(&mut self, model: &Model) -> Vec<String> {
        let mut problems = self.kernel_problems(model);
        problems.extend(self.restart_binary().into_iter().map(|p| format!("restart at the end: {p}")));
        problems.extend(self.kernel_problems(model).into_iter().map(|p| format!("after a restart at the end: {p}")));
        problems
    }
}

/// One file against a fresh binary in a fresh namespace; the in-process replay of
/// the same file says which lines fail.
fn replay_against_binary(file: &str, lines: &[Recorded], variant: Variant) -> Outcome {
    let reference = replay_in_process(file, lines, variant);
    let mut replay = Replay::new(file, variant, Binary::start());
    replay.reference = Some(reference.failed_lines.clone());
    for rec in lines {
        replay.step(rec);
    }
    replay.check_at_end();
    replay.delete_remaining_networks();
    let traces = replay.transport.traces();
    replay.violations.extend(traces.into_iter().map(|t| format!("after deleting every network: {t}")));
    // Nothing comes back when the plugin starts again on the emptied state.
    let restart = replay.transport.restart_binary();
    replay.violations.extend(restart.into_iter().map(|p| format!("final restart: {p}")));
    let traces = replay.transport.traces();
    replay.violations.extend(traces.into_iter().map(|t| format!("after a final restart: {t}")));
    let outcome = replay.outcome();
    assert_eq!(outcome.calls(), lines.len(), "{file}: every line was replayed once");
    outcome
}

/// Files replayed at once (each in its own namespace with its own binary).
const PARALLEL: usize = 2;

#[test]
fn fixtures_replay_against_the_binary() {
    if !ready_or_skip("fixtures_replay_against_the_binary") {
        return;
    }
    let dir = fixtures_dir();
    let started = Instant::now();
    let files = recordings(&dir);
    let next = Mutex::new(files.iter());
    let all_violations = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                loop {
                    let Some((file, lines)) = next.lock().unwrap().next() else { return };
                    let t = Instant::now();
                    let outcome = replay_against_binary(file, lines, Variant::AsRecorded);
                    eprint!("{}", outcome.report(&format!("real binary in a netns, {:.1?}", t.elapsed())));
                    all_violations.lock().unwrap().extend(outcome.violations.iter().map(|v| format!("{file}: {v}")));
                }
            });
        }
    });
    eprintln!("{} files replayed against the binary in {:.1?}", files.len(), started.elapsed());
    assert_no_violations(&all_violations.into_inner().unwrap());
}
