//! Replaying the request sequences dockerd really sent (recorded in
//! `tests/fixtures/dockerd-*.jsonl`, one `{"path": …, "request": …}` object per
//! line) against a plugin reached through a [`Transport`]: in process on the fake data
//! plane and firewall ([`InProcess`], tests/fixtures.rs), or the real binary over its
//! Unix socket inside a throwaway network namespace (tests/replay_netns.rs).
//!
//! The [`Replay`] holds the model built from the answers so far (networks, endpoints,
//! our pools and how the recorded pool IDs map onto them) and judges every answer
//! against it; transports add their own checks of what they can see (the fakes, or
//! the namespace's links and firewall).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use rustbridge::api::*;
use rustbridge::dataplane::LinkKind;
use rustbridge::driver::Plugin;
use rustbridge::names::{bridge_name, veth_names};
use rustbridge::testing::FakePlugin;

/// The recordings the protocol notes describe; more `dockerd-*.jsonl` files are read too.
pub const EXPECTED_FILES: [&str; 4] = [
    "dockerd-20.10.24-requests.jsonl",
    "dockerd-20.10.24-scenario-requests.jsonl",
    "dockerd-26.1.5-requests.jsonl",
    "dockerd-28.5.2-requests.jsonl",
];

/// Every call must be answered within this.
pub const CALL_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- reading the recordings

/// The recorded dockerd request bodies kept in the repository (`tests/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    assert!(dir.is_dir(), "fixtures directory {} is missing", dir.display());
    dir
}

pub struct Recorded {
    pub line: usize,
    pub path: String,
    pub request: Value,
}

/// Every `dockerd-*.jsonl` file, sorted by name, with its lines.
pub fn recordings(dir: &Path) -> Vec<(String, Vec<Recorded>)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("dockerd-") && name.ends_with(".jsonl"))
        .collect();
    names.sort();
    for expected in EXPECTED_FILES {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {} (found {names:?})", dir.display());
    }
    names
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
            let lines = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    let v: Value =
                        serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}:{}: not JSON: {e}", i + 1));
                    let path =
                        v["path"].as_str().unwrap_or_else(|| panic!("{name}:{}: no \"path\"", i + 1)).to_string();
                    let request =
                        v.get("request").cloned().unwrap_or_else(|| panic!("{name}:{}: no \"request\"", i + 1));
                    Recorded { line: i + 1, path, request }
                })
                .collect();
            (name, lines)
        })
        .collect()
}

/// Like the server: an empty body means "no arguments", i.e. the type's default.
pub fn decode<T: DeserializeOwned + Default>(request: &Value) -> Result<T, String> {
    match request {
        Value::String(s) if s.trim().is_empty() => Ok(T::default()),
        other => serde_json::from_value(other.clone()).map_err(|e| format!("malformed request body: {e}")),
    }
}

/// The bytes dockerd sends for a recorded request: nothing for a call without
/// arguments (recorded as `""`), the JSON otherwise.
pub fn wire_body(request: &Value) -> Vec<u8> {
    match request {
        Value::Null => Vec::new(),
        Value::String(s) if s.trim().is_empty() => Vec::new(),
        other => other.to_string().into_bytes(),
    }
}

pub fn raw_str<'a>(raw: &'a Value, key: &str) -> &'a str {
    raw.get(key).and_then(Value::as_str).unwrap_or("")
}

// ---------------------------------------------------------------- what dockerd accepts as an answer

/// The key dockerd reads an error message from: `Error` for IpamDriver calls (with
/// `Err` it hides the message), `Err` for NetworkDriver and Plugin calls.
pub fn error_key(path: &str) -> &'static str {
    if path.starts_with("/IpamDriver.") { "Error" } else { "Err" }
}

fn is_mac(text: &str) -> bool {
    let octets: Vec<&str> = text.split(':').collect();
    octets.len() == 6 && octets.iter().all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()))
}

fn non_empty_str(answer: &Value, key: &str) -> Result<(), String> {
    match answer.get(key).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(()),
        _ => Err(format!("{key} must be a non-empty string: {answer}")),
    }
}

fn is_bool(answer: &Value, key: &str) -> Result<(), String> {
    if answer.get(key).is_some_and(Value::is_boolean) { Ok(()) } else { Err(format!("{key} must be a bool: {answer}")) }
}

/// A bare IP (no prefix) when present.
fn bare_ip_if_present(answer: &Value, key: &str) -> Result<(), String> {
    match answer.get(key) {
        None => Ok(()),
        Some(Value::String(s)) if !s.contains('/') && s.parse::<IpAddr>().is_ok() => Ok(()),
        Some(other) => Err(format!("{key} {other} is not a bare IP address")),
    }
}

/// The shape dockerd needs for a successful (200) answer to `path`, given the request
/// it was answering.
pub fn check_answer_shape(path: &str, request: &Value, answer: &Value) -> Result<(), String> {
    if !answer.is_object() {
        return Err(format!("answer is not a JSON object: {answer}"));
    }
    for key in ["Err", "Error"] {
        if answer.get(key).is_some_and(|e| e.as_str() != Some("")) {
            return Err(format!("a successful answer carries {key}: {answer}"));
        }
    }
    match path {
        "/Plugin.Activate" => {
            let implements: Vec<&str> =
                answer["Implements"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if !(implements.contains(&"NetworkDriver") && implements.contains(&"IpamDriver")) {
                return Err(format!("Implements must name NetworkDriver and IpamDriver: {answer}"));
            }
        }
        "/NetworkDriver.GetCapabilities" => {
            if answer["Scope"] != "local" {
                return Err(format!("Scope must be \"local\": {answer}"));
            }
        }
        "/IpamDriver.GetCapabilities" => is_bool(answer, "RequiresRequestReplay")?,
        "/IpamDriver.GetDefaultAddressSpaces" => {
            non_empty_str(answer, "LocalDefaultAddressSpace")?;
            non_empty_str(answer, "GlobalDefaultAddressSpace")?;
        }
        "/NetworkDriver.CreateEndpoint" => {
            let mac_given = !raw_str(&request["Interface"], "MacAddress").is_empty();
            match answer.get("Interface") {
                None | Some(Value::Null) if mac_given => {}
                None | Some(Value::Null) => return Err(format!("no MacAddress answered for an empty one: {answer}")),
                Some(_) if mac_given => return Err(format!("Interface answered although the MAC was given: {answer}")),
                Some(Value::Object(iface)) => {
                    let keys: Vec<&String> = iface.keys().collect();
                    if keys != ["MacAddress"] {
                        return Err(format!("Interface must hold only MacAddress, holds {keys:?}: {answer}"));
                    }
                    let mac = iface["MacAddress"].as_str().unwrap_or("");
                    if !is_mac(mac) {
                        return Err(format!("MacAddress {mac:?} is not a MAC address: {answer}"));
                    }
                    let first = u8::from_str_radix(&mac[..2], 16).unwrap_or(1);
                    if first & 1 == 1 {
                        return Err(format!("MacAddress {mac} is a multicast address: {answer}"));
                    }
                }
                Some(other) => return Err(format!("Interface {other} is not an object")),
            }
        }
        "/NetworkDriver.Join" => {
            let name = &answer["InterfaceName"];
            non_empty_str(name, "SrcName").map_err(|e| format!("InterfaceName: {e}"))?;
            non_empty_str(name, "DstPrefix").map_err(|e| format!("InterfaceName: {e}"))?;
            bare_ip_if_present(answer, "Gateway")?;
            bare_ip_if_present(answer, "GatewayIPv6")?;
            if answer.get("DisableGatewayService").is_some() {
                is_bool(answer, "DisableGatewayService")?;
            }
        }
        "/NetworkDriver.EndpointOperInfo" => {
            if !answer["Value"].is_object() {
                return Err(format!("Value must be an object: {answer}"));
            }
        }
        "/NetworkDriver.GwAllocCheck" => {
            is_bool(answer, "SkipIPv4")?;
            is_bool(answer, "SkipIPv6")?;
        }
        "/NetworkDriver.AllocateNetwork" => {}
        "/IpamDriver.RequestPool" => {
            non_empty_str(answer, "PoolID")?;
            non_empty_str(answer, "Pool")?;
            if raw_str(answer, "Pool").parse::<IpNet>().is_err() {
                return Err(format!("Pool is not in CIDR form: {answer}"));
            }
        }
        "/IpamDriver.RequestAddress" => {
            let address = raw_str(answer, "Address");
            if !address.contains('/') || address.parse::<IpNet>().is_err() {
                return Err(format!("Address is not in CIDR form: {answer}"));
            }
        }
        _ => {
            if answer.as_object().is_some_and(|o| !o.is_empty()) {
                return Err(format!("expected {{}}, got {answer}"));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- how the plugin is reached

/// How the replay reaches a plugin.
pub trait Transport {
    /// One call as dockerd makes it: Ok(the answer) or Err(the error message dockerd
    /// would show). Anything wrong with how it was answered (late, error under the
    /// wrong key, …) goes to `problems`.
    fn call(&mut self, path: &str, body: &Value, problems: &mut Vec<String>) -> Result<Value, String>;

    /// The plugin stops and starts again on its state, as across a dockerd restart.
    fn restart(&mut self) -> Vec<String>;

    /// What the transport can see (state, kernel) against the model, after a call.
    fn check_after_call(&mut self, _path: &str, _model: &Model) -> Vec<String> {
        Vec::new()
    }

    /// What the transport can see against the model once the recording is done.
    fn check_at_end(&mut self, _model: &Model) -> Vec<String> {
        Vec::new()
    }
}

// ---------------------------------------------------------------- the model

/// Calls that must succeed whatever state they meet: the idempotent teardown calls
/// (protocol notes: "must be idempotent") and those without arguments.
pub fn always_succeeds(path: &str) -> bool {
    matches!(
        path,
        "/Plugin.Activate"
            | "/NetworkDriver.GetCapabilities"
            | "/IpamDriver.GetCapabilities"
            | "/IpamDriver.GetDefaultAddressSpaces"
            | "/NetworkDriver.EndpointOperInfo"
            | "/NetworkDriver.Leave"
            | "/NetworkDriver.DeleteEndpoint"
            | "/NetworkDriver.DeleteNetwork"
            | "/NetworkDriver.RevokeExternalConnectivity"
            | "/IpamDriver.ReleaseAddress"
            | "/IpamDriver.ReleasePool"
    )
}

#[derive(Default)]
pub struct Tally {
    pub ok: usize,
    pub failed: usize,
}

pub struct EndpointModel {
    pub network: String,
    pub joined: bool,
}

pub struct NetworkModel {
    /// The subnets it was created with.
    pub subnets: Vec<IpNet>,
    /// The bridge it must have: `-o com.docker.network.bridge.name` (or `-o bridge`), else `rb-<12 hex>`.
    pub bridge: String,
}

/// The bridge a CreateNetwork request asks for, read from the request itself.
pub fn requested_bridge(request: &Value) -> String {
    let generic = &request["Options"][OPT_GENERIC];
    let named = [rustbridge::options::BRIDGE_NAME, "bridge"]
        .iter()
        .find_map(|k| generic.get(*k).and_then(Value::as_str).filter(|s| !s.is_empty()));
    match named {
        Some(name) => name.to_string(),
        // Only asked for once the plugin accepted the request, so the ID is a valid one.
        None => bridge_name(raw_str(request, "NetworkID")),
    }
}

/// What the answers so far say exists, and how recorded pool IDs map onto ours.
#[derive(Default)]
pub struct Model {
    /// Networks our plugin created and has not deleted.
    pub networks: BTreeMap<String, NetworkModel>,
    pub endpoints: BTreeMap<String, EndpointModel>,
    pub deleted_endpoints: BTreeSet<String>,
    /// Our pools: ID → (pool, sub pool).
    pub our_pools: BTreeMap<String, (IpNet, Option<IpNet>)>,
    /// Explicit recorded RequestPools, by (Pool, SubPool) → our pool ID.
    explicit: BTreeMap<(IpNet, Option<IpNet>), String>,
    /// Our answers to recorded automatic RequestPools not yet tied to a recorded PoolID, per family.
    pending_auto: [Vec<String>; 2],
    /// Recorded PoolID of an automatic pool → our pool ID.
    bound: BTreeMap<String, String>,
}

impl Model {
    /// Both ends of every joined endpoint's veth pair (nobody moves the peers away).
    /// Veths of deleted endpoints left behind, and veths that differ from the joined endpoints'.
    pub fn veth_problems(&self, veths: &BTreeSet<String>) -> Vec<String> {
        let mut problems = Vec::new();
        for id in &self.deleted_endpoints {
            let (host, peer) = veth_names(id);
            for name in [host, peer].into_iter().filter(|n| veths.contains(n)) {
                problems.push(format!("veth {name} of deleted endpoint {} left behind", &id[..12]));
            }
        }
        let expected = self.expected_veths();
        if *veths != expected {
            problems.push(format!(
                "veths: unexpected {:?}, missing {:?}",
                veths.difference(&expected).collect::<Vec<_>>(),
                expected.difference(veths).collect::<Vec<_>>()
            ));
        }
        problems
    }

    pub fn expected_veths(&self) -> BTreeSet<String> {
        self.endpoints
            .iter()
            .filter(|(_, e)| e.joined)
            .flat_map(|(id, _)| {
                let (host, peer) = veth_names(id);
                [host, peer]
            })
            .collect()
    }

    pub fn expected_bridges(&self) -> BTreeSet<String> {
        self.networks.values().map(|n| n.bridge.clone()).collect()
    }

    /// Our pool ID for a recorded one (None: no pool of ours stands for it).
    fn map_pool_id(&mut self, recorded: &str) -> Option<String> {
        if let Some(ours) = self.bound.get(recorded) {
            return Some(ours.clone());
        }
        let key = parse_recorded_pool_id(recorded)?;
        if let Some(ours) = self.explicit.get(&key) {
            return Some(ours.clone());
        }
        // The first reference to a pool the recording plugin picked itself: it is
        // the answer to the latest automatic request of that family.
        let family = usize::from(key.0.addr().is_ipv6());
        let ours = self.pending_auto[family].pop()?;
        self.bound.insert(recorded.to_string(), ours.clone());
        Some(ours)
    }

    fn forget_pool(&mut self, ours: &str) {
        self.bound.retain(|_, v| v != ours);
        self.explicit.retain(|_, v| v != ours);
        self.our_pools.remove(ours);
    }
}

/// A recorded pool ID, `rb:POOL[|SUBPOOL]`, as the recording plugin answered it.
pub fn parse_recorded_pool_id(id: &str) -> Option<(IpNet, Option<IpNet>)> {
    let rest = id.strip_prefix("rb:")?;
    let (pool, sub) = match rest.split_once('|') {
        Some((pool, sub)) => (pool, Some(sub)),
        None => (rest, None),
    };
    Some((
        pool.parse().ok()?,
        match sub {
            Some(s) => Some(s.parse().ok()?),
            None => None,
        },
    ))
}

fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(value: u128, v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(value.into()) } else { IpAddr::V4((value as u32).into()) }
}

/// The same offset in our pool as in the recorded one (both of one size), so that a
/// recorded `--ip` or release means the same slot in the pool our plugin picked.
pub fn translate(address: &str, recorded: IpNet, ours: IpNet) -> String {
    let Ok(addr) = address.parse::<IpAddr>() else { return address.to_string() };
    if recorded == ours || recorded.prefix_len() != ours.prefix_len() || !recorded.contains(&addr) {
        return address.to_string();
    }
    let offset = to_u128(addr) - to_u128(recorded.network());
    from_u128(to_u128(ours.network()) + offset, addr.is_ipv6()).to_string()
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// User options (`-o`) the recordings carry that rustbridge refuses by design: anything
/// outside the `com.docker.network.` namespace and its short aliases, except the
/// recorder's own `recorder.fail`, whose failures dockerd's later calls assume.
fn is_refused_user_option(key: &str) -> bool {
    !(key.starts_with("com.docker.network.") || key == "mtu" || key == "bridge" || key == "recorder.fail")
}

fn has_recorder_fail(request: &Value) -> bool {
    request["Options"][OPT_GENERIC].get("recorder.fail").is_some()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    /// The bodies exactly as recorded.
    AsRecorded,
    /// With the user options rustbridge refuses by design removed, so that the networks
    /// carrying them (and everything on them) are exercised too.
    RefusedOptionsRemoved,
}

// ---------------------------------------------------------------- the replay

pub struct Replay<T: Transport> {
    pub file: String,
    pub variant: Variant,
    pub transport: T,
    pub model: Model,
    /// Restarts at a recorded `Plugin.Activate` after the first line.
    pub restarts: usize,
    /// Lines that failed in an earlier replay of the same file (the in-process one):
    /// when set, this replay must succeed and fail on exactly the same lines.
    pub reference: Option<BTreeSet<usize>>,
    local_space: Option<String>,
    pub tally: BTreeMap<String, Tally>,
    pub violations: Vec<String>,
    pub failures_seen: Vec<String>,
    pub failed_lines: BTreeSet<usize>,
}

/// What one replay of a file came to.
pub struct Outcome {
    pub file: String,
    pub variant: Variant,
    pub tally: BTreeMap<String, Tally>,
    pub violations: Vec<String>,
    pub failures: Vec<String>,
    pub failed_lines: BTreeSet<usize>,
    pub restarts: usize,
}

impl Outcome {
    pub fn calls(&self) -> usize {
        self.tally.values().map(|t| t.ok + t.failed).sum()
    }

    /// Calls per method and the failures seen, for the test's output.
    pub fn report(&self, how: &str) -> String {
        let mut text = format!(
            "== {} ({:?}, {how}): {} calls, {} plugin restarts at Plugin.Activate\n",
            self.file,
            self.variant,
            self.calls(),
            self.restarts
        );
        for (path, t) in &self.tally {
            text += &format!("   {path:<45} ok {:>4}  failed {:>4}\n", t.ok, t.failed);
        }
        for failure in &self.failures {
            text += &format!("   failed: {failure}\n");
        }
        text
    }
}

impl<T: Transport> Replay<T> {
    pub fn new(file: &str, variant: Variant, transport: T) -> Replay<T> {
        Replay {
            file: file.to_string(),
            variant,
            transport,
            model: Model::default(),
            restarts: 0,
            reference: None,
            local_space: None,
            tally: BTreeMap::new(),
            violations: vec![],
            failures_seen: vec![],
            failed_lines: BTreeSet::new(),
        }
    }

    /// A plugin restart, as across a dockerd restart.
    pub fn restart(&mut self) {
        let problems = self.transport.restart();
        self.restarts += 1;
        for p in problems {
            self.violations.push(format!("restart {}: {p}", self.restarts));
        }
    }

    /// Our plugin's local address space (asked once, outside the recorded sequence).
    fn local_space(&mut self) -> String {
        if let Some(space) = &self.local_space {
            return space.clone();
        }
        let mut problems = Vec::new();
        let path = "/IpamDriver.GetDefaultAddressSpaces";
        let space = match self.transport.call(path, &json!(""), &mut problems) {
            Ok(answer) => raw_str(&answer, "LocalDefaultAddressSpace").to_string(),
            Err(e) => {
                problems.push(format!("failed: {e}"));
                String::new()
            }
        };
        self.violations.extend(problems.into_iter().map(|p| format!("(extra call) {path}: {p}")));
        self.local_space = Some(space.clone());
        space
    }

    /// Rewrites IPAM requests in terms of our pools; NetworkDriver requests pass unchanged.
    fn rewrite(&mut self, path: &str, request: &Value) -> Value {
        let mut request = request.clone();
        match path {
            "/NetworkDriver.CreateNetwork" | "/NetworkDriver.GwAllocCheck"
                if self.variant == Variant::RefusedOptionsRemoved =>
            {
                if let Some(generic) = request["Options"].get_mut(OPT_GENERIC).and_then(Value::as_object_mut) {
                    generic.retain(|key, _| !is_refused_user_option(key));
                }
            }
            "/IpamDriver.RequestPool" => {
                // The recording plugin's address space means our local default one.
                request["AddressSpace"] = json!(self.local_space());
            }
            "/IpamDriver.RequestAddress" | "/IpamDriver.ReleaseAddress" | "/IpamDriver.ReleasePool" => {
                let recorded = raw_str(&request, "PoolID").to_string();
                if let Some(ours) = self.model.map_pool_id(&recorded) {
                    request["PoolID"] = json!(ours);
                    let address = raw_str(&request, "Address").to_string();
                    if let (Some((recorded_pool, _)), Some((our_pool, _))) =
                        (parse_recorded_pool_id(&recorded), self.model.our_pools.get(&ours).copied())
                        && !address.is_empty()
                        && path != "/IpamDriver.ReleasePool"
                    {
                        request["Address"] = json!(translate(&address, recorded_pool, our_pool));
                    }
                }
            }
            _ => {}
        }
        request
    }

    /// Sends one recorded call (restarting the plugin first at a later `Plugin.Activate`)
    /// and holds the answer against the model.
    pub fn step(&mut self, rec: &Recorded) {
        if rec.path == "/Plugin.Activate" && rec.line > 1 {
            self.restart();
        }
        let request = self.rewrite(&rec.path, &rec.request);
        let mut problems = Vec::new();
        let result = self.transport.call(&rec.path, &request, &mut problems);
        for p in problems {
            self.violations.push(format!("line {} {}: {p}", rec.line, rec.path));
        }
        let tally = self.tally.entry(rec.path.clone()).or_default();
        match &result {
            Ok(_) => tally.ok += 1,
            Err(e) => {
                tally.failed += 1;
                self.failed_lines.insert(rec.line);
                self.failures_seen.push(format!("line {} {}: {e}", rec.line, rec.path));
            }
        }
        if let Ok(answer) = &result
            && let Err(why) = check_answer_shape(&rec.path, &request, answer)
        {
            self.violations.push(format!("line {} {}: {why}", rec.line, rec.path));
        }
        if let Some(reference) = &self.reference {
            match (&result, reference.contains(&rec.line)) {
                (Err(e), false) => self.violations.push(format!(
                    "line {} {}: failed ({e}) where the in-process replay succeeded",
                    rec.line, rec.path
                )),
                (Ok(answer), true) => self.violations.push(format!(
                    "line {} {}: succeeded ({answer}) where the in-process replay failed",
                    rec.line, rec.path
                )),
                _ => {}
            }
        }
        self.check(rec, &request, &result);
        for p in self.transport.check_after_call(&rec.path, &self.model) {
            self.violations.push(format!("after line {} {}: {p}", rec.line, rec.path));
        }
    }

    /// Holds each answer against what the recording and our own earlier answers demand,
    /// then updates the model.
    fn check(&mut self, rec: &Recorded, request: &Value, result: &Result<Value, String>) {
        let path = rec.path.as_str();
        let network = raw_str(request, "NetworkID").to_string();
        let endpoint = raw_str(request, "EndpointID").to_string();
        let live_network = self.model.networks.contains_key(&network);
        let model = &mut self.model;
        let mut violation = |why: String| self.violations.push(format!("line {} {}: {why}", rec.line, path));

        if always_succeeds(path)
            && let Err(e) = result
        {
            violation(format!("must always succeed, failed: {e}"));
        }
        match path {
            "/NetworkDriver.CreateNetwork" => {
                if live_network && result.is_err() {
                    violation(format!(
                        "repeated CreateNetwork of a live network failed: {}",
                        result.as_ref().unwrap_err()
                    ));
                }
                if let Err(e) = result
                    && self.variant == Variant::RefusedOptionsRemoved
                    && !has_recorder_fail(request)
                {
                    violation(format!("CreateNetwork without refused options failed: {e}"));
                }
                if result.is_ok() && !live_network {
                    let subnets = ["IPv4Data", "IPv6Data"]
                        .iter()
                        .flat_map(|f| request.get(*f).and_then(Value::as_array).cloned().unwrap_or_default())
                        .filter_map(|d| raw_str(&d, "Pool").parse::<IpNet>().ok())
                        .collect();
                    model.networks.insert(network, NetworkModel { subnets, bridge: requested_bridge(request) });
                }
            }
            "/NetworkDriver.DeleteNetwork" => {
                let deleted = result.is_ok() && model.networks.remove(&network).is_some();
                let gone: Vec<String> = if deleted {
                    model.endpoints.iter().filter(|(_, e)| e.network == network).map(|(id, _)| id.clone()).collect()
                } else {
                    Vec::new()
                };
                for id in gone {
                    model.endpoints.remove(&id);
                    model.deleted_endpoints.insert(id);
                }
            }
            "/NetworkDriver.CreateEndpoint" => {
                let iface = request.get("Interface").cloned().unwrap_or(Value::Null);
                let subnets = model.networks.get(&network).map(|n| n.subnets.clone()).unwrap_or_default();
                let inside = ["Address", "AddressIPv6"].iter().all(|k| match raw_str(&iface, k) {
                    "" => true,
                    text => text.parse::<IpNet>().is_ok_and(|a| subnets.iter().any(|s| s.contains(&a.addr()))),
                });
                // Refused by design: dockerd ignores interface names from remote drivers.
                let asks_ifname = request["Options"].get(OPT_ENDPOINT_IFNAME).is_some();
                let valid = inside && !endpoint.is_empty() && !asks_ifname;
                match result {
                    Err(e) if live_network && valid => {
                        violation(format!("CreateEndpoint on live network {} failed: {e}", &network[..12]))
                    }
                    Ok(answer) => {
                        let mac_given = !raw_str(&iface, "MacAddress").is_empty();
                        let answered = answer.get("Interface").cloned().unwrap_or(json!({}));
                        if mac_given && answered.get("MacAddress").is_some() {
                            violation(format!("MAC was given but answered again: {answer}"));
                        }
                        if !mac_given && answered.get("MacAddress").is_none() {
                            violation(format!("no MAC given and none answered: {answer}"));
                        }
                        for key in ["Address", "AddressIPv6"] {
                            if answered.get(key).is_some() {
                                violation(format!("answer echoes {key}: {answer}"));
                            }
                        }
                        model.deleted_endpoints.remove(&endpoint);
                        model
                            .endpoints
                            .entry(endpoint)
                            .or_insert(EndpointModel { network: network.clone(), joined: false });
                    }
                    Err(_) => {}
                }
            }
            "/NetworkDriver.Join" => {
                let known = model.endpoints.get(&endpoint).is_some_and(|e| e.network == network);
                match result {
                    Err(e) if live_network && known => violation(format!("Join of a live endpoint failed: {e}")),
                    Ok(answer) => {
                        let (_, peer) = veth_names(&endpoint);
                        if answer["InterfaceName"]["SrcName"] != json!(peer) {
                            violation(format!("SrcName is not {peer}: {answer}"));
                        }
                        if let Some(gw) = answer.get("Gateway").and_then(Value::as_str)
                            && (gw.contains('/') || gw.parse::<IpAddr>().is_err())
                        {
                            violation(format!("Gateway {gw:?} is not a bare IP"));
                        }
                        if let Some(e) = model.endpoints.get_mut(&endpoint) {
                            e.joined = true;
                        }
                    }
                    Err(_) => {
                        if let Some(e) = model.endpoints.get_mut(&endpoint) {
                            e.joined = false;
                        }
                    }
                }
            }
            "/NetworkDriver.ProgramExternalConnectivity" => {
                let known = model.endpoints.get(&endpoint).is_some_and(|e| e.network == network);
                if let Err(e) = result
                    && live_network
                    && known
                {
                    violation(format!("ProgramExternalConnectivity of a live endpoint failed: {e}"));
                }
            }
            "/NetworkDriver.Leave" => {
                if result.is_ok()
                    && let Some(e) = model.endpoints.get_mut(&endpoint)
                {
                    e.joined = false;
                }
            }
            "/NetworkDriver.DeleteEndpoint" => {
                let deleted = result.is_ok() && model.endpoints.remove(&endpoint).is_some();
                if deleted {
                    model.deleted_endpoints.insert(endpoint);
                }
            }
            "/NetworkDriver.EndpointOperInfo" | "/NetworkDriver.RevokeExternalConnectivity" => {}
            "/IpamDriver.RequestPool" => {
                let wanted = raw_str(request, "Pool");
                let sub = raw_str(request, "SubPool");
                let v6 = request.get("V6").and_then(Value::as_bool).unwrap_or(false);
                match result {
                    Ok(answer) => {
                        let id = raw_str(answer, "PoolID").to_string();
                        let pool: IpNet = match raw_str(answer, "Pool").parse() {
                            Ok(p) => p,
                            Err(_) => {
                                violation(format!("answered Pool is not CIDR: {answer}"));
                                return;
                            }
                        };
                        if let Some((other_id, _)) =
                            model.our_pools.iter().find(|(_, (held, _))| overlaps(*held, pool) && wanted.is_empty())
                        {
                            violation(format!("automatic pool {pool} overlaps held pool {other_id}"));
                        }
                        if wanted.is_empty() {
                            model.pending_auto[usize::from(v6)].push(id.clone());
                            model.our_pools.insert(id, (pool, None));
                        } else {
                            if wanted != pool.to_string() {
                                violation(format!("asked for {wanted}, got {pool}"));
                            }
                            let sub_pool = sub.parse().ok();
                            model.explicit.insert((pool, sub_pool), id.clone());
                            model.our_pools.insert(id, (pool, sub_pool));
                        }
                    }
                    Err(e) if wanted.is_empty() => violation(format!("automatic RequestPool failed: {e}")),
                    Err(_) => {}
                }
            }
            "/IpamDriver.RequestAddress" => {
                let id = raw_str(request, "PoolID").to_string();
                let held = model.our_pools.get(&id).copied();
                let explicit = !raw_str(request, "Address").is_empty();
                match (result, held) {
                    (Err(e), Some(_)) if !explicit => violation(format!("RequestAddress in our pool {id} failed: {e}")),
                    (Ok(answer), Some((pool, _))) => {
                        let inside = raw_str(answer, "Address")
                            .parse::<IpNet>()
                            .is_ok_and(|a| pool.contains(&a.addr()) && a.prefix_len() == pool.prefix_len());
                        if !inside {
                            violation(format!("answered {answer} outside our pool {pool}"));
                        }
                    }
                    (Ok(answer), None) => violation(format!("an address from a pool we do not hold: {answer}")),
                    _ => {}
                }
            }
            "/IpamDriver.ReleasePool" => {
                let ours = raw_str(request, "PoolID").to_string();
                if result.is_ok() {
                    model.forget_pool(&ours);
                }
            }
            _ => {}
        }
    }

    /// The transport's own end-of-recording checks against the model.
    pub fn check_at_end(&mut self) {
        for p in self.transport.check_at_end(&self.model) {
            self.violations.push(format!("end: {p}"));
        }
    }

    /// `DeleteNetwork` for every network still alive, as `docker network rm` would
    /// send it (outside the recorded sequence, not tallied); each must succeed.
    pub fn delete_remaining_networks(&mut self) {
        let alive: Vec<String> = self.model.networks.keys().cloned().collect();
        for id in alive {
            let path = "/NetworkDriver.DeleteNetwork";
            let request = json!({"NetworkID": id});
            let mut problems = Vec::new();
            let result = self.transport.call(path, &request, &mut problems);
            if let Ok(answer) = &result
                && let Err(why) = check_answer_shape(path, &request, answer)
            {
                problems.push(why);
            }
            match result {
                Ok(_) => {
                    self.model.networks.remove(&id);
                    let gone: Vec<String> =
                        self.model.endpoints.iter().filter(|(_, e)| e.network == id).map(|(e, _)| e.clone()).collect();
                    for e in gone {
                        self.model.endpoints.remove(&e);
                        self.model.deleted_endpoints.insert(e);
                    }
                }
                Err(e) => problems.push(format!("failed: {e}")),
            }
            for p in problems {
                self.violations.push(format!("teardown DeleteNetwork {}: {p}", &id[..12]));
            }
        }
    }

    pub fn outcome(self) -> Outcome {
        Outcome {
            file: self.file,
            variant: self.variant,
            tally: self.tally,
            violations: self.violations,
            failures: self.failures_seen,
            failed_lines: self.failed_lines,
            restarts: self.restarts,
        }
    }
}

// ---------------------------------------------------------------- in process, on the fakes

/// The plugin in this process on the fake data plane and firewall; its state and the
/// fake kernel are compared with the model after every call.
pub struct InProcess {
    file: String,
    runtime: tokio::runtime::Runtime,
    pub plugin: FakePlugin,
}

impl InProcess {
    pub fn new(file: &str) -> InProcess {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        InProcess { file: file.to_string(), runtime, plugin: FakePlugin::new(file) }
    }

    pub fn plugin(&self) -> Arc<Plugin> {
        self.plugin.plugin().clone()
    }

    fn veths(&self) -> BTreeSet<String> {
        self.plugin.links_of_kind(LinkKind::Veth)
    }
}

impl Transport for InProcess {
    fn call(&mut self, path: &str, body: &Value, problems: &mut Vec<String>) -> Result<Value, String> {
        let plugin = self.plugin();
        let (path, sent) = (path.to_string(), body.clone());
        let file = self.file.clone();
        self.runtime.block_on(async move {
            let task = tokio::spawn(async move { rustbridge::server::answer(&plugin, &path, &wire_body(&sent)).await });
            match tokio::time::timeout(CALL_LIMIT, task).await {
                Err(_) => panic!("{file}: a call hung (no answer within {CALL_LIMIT:?}); giving up on this file"),
                Ok(Err(join_error)) => {
                    problems.push(format!("panicked: {join_error}"));
                    Err(format!("panic: {join_error}"))
                }
                Ok(Ok(result)) => result,
            }
        })
    }

    /// Close the store, load it back and reconcile, as `main` does.
    fn restart(&mut self) -> Vec<String> {
        self.plugin.reload();
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let mut problems = Vec::new();
        if let Err(e) = self.runtime.block_on(rustbridge::reconcile::at_start(self.plugin.plugin(), &log)) {
            problems.push(format!("{}: start-up reconcile failed: {e}", self.file));
        }
        problems
    }

    /// After every call, the plugin's state and the fake kernel agree with the model
    /// built from the answers so far.
    fn check_after_call(&mut self, _path: &str, model: &Model) -> Vec<String> {
        let plugin = self.plugin();
        let state = self.runtime.block_on(plugin.lock_state());
        let mut problems = Vec::new();
        if !state.networks.keys().eq(model.networks.keys()) {
            problems.push(format!(
                "networks {:?} vs model {:?}",
                state.networks.keys().collect::<Vec<_>>(),
                model.networks.keys().collect::<Vec<_>>()
            ));
        }
        if !state.endpoints.keys().eq(model.endpoints.keys()) {
            problems.push(format!(
                "endpoints {:?} vs model {:?}",
                state.endpoints.keys().collect::<Vec<_>>(),
                model.endpoints.keys().collect::<Vec<_>>()
            ));
        }
        for (id, e) in &model.endpoints {
            if state.endpoints.get(id).is_some_and(|r| r.joined != e.joined) {
                problems.push(format!("endpoint {} joined={} in state, {} in model", &id[..12], !e.joined, e.joined));
            }
        }
        let pools: BTreeSet<&String> = state.ipam.pools().map(|p| &p.id).collect();
        if !pools.iter().copied().eq(model.our_pools.keys()) {
            problems.push(format!("pools {pools:?} vs model {:?}", model.our_pools.keys().collect::<Vec<_>>()));
        }
        drop(state);
        let veths = self.veths();
        if veths != model.expected_veths() {
            problems.push(format!("veths {veths:?} vs joined endpoints' {:?}", model.expected_veths()));
        }
        problems
    }

    /// After the recorded teardown: the kernel holds exactly what the state says, and
    /// the state on disk is what the replay left.
    fn check_at_end(&mut self, model: &Model) -> Vec<String> {
        let mut problems = Vec::new();
        // The fake kernel as the replay left it, before the restart's reconcile.
        let bridges = self.plugin.links_of_kind(LinkKind::Bridge);
        problems.extend(model.veth_problems(&self.veths()));

        // Load the state back from disk and compare it with the model.
        problems.extend(self.restart().into_iter().map(|p| format!("restart at the end: {p}")));
        let plugin = self.plugin();
        let state = self.runtime.block_on(plugin.lock_state());
        let networks: BTreeSet<&String> = state.networks.keys().collect();
        let model_networks: BTreeSet<&String> = model.networks.keys().collect();
        if networks != model_networks {
            problems.push(format!("stored networks {networks:?}, expected {model_networks:?}"));
        }
        let endpoints: BTreeSet<&String> = state.endpoints.keys().collect();
        let model_endpoints: BTreeSet<&String> = model.endpoints.keys().collect();
        if endpoints != model_endpoints {
            problems.push(format!("stored endpoints {endpoints:?}, expected {model_endpoints:?}"));
        }
        let pools: BTreeSet<&String> = state.ipam.pools().map(|p| &p.id).collect();
        let model_pools: BTreeSet<&String> = model.our_pools.keys().collect();
        if pools != model_pools {
            problems.push(format!("stored pools {pools:?}, expected {model_pools:?}"));
        }
        let state_bridges: BTreeSet<String> = state.networks.values().map(|n| n.bridge.clone()).collect();
        if bridges != state_bridges {
            problems.push(format!("bridges {bridges:?}, networks have {state_bridges:?}"));
        }
        if state_bridges != model.expected_bridges() {
            problems.push(format!("networks have bridges {state_bridges:?}, requested {:?}", model.expected_bridges()));
        }
        let fw: BTreeSet<String> = self.plugin.fw_bridges().into_iter().collect();
        if fw != state_bridges {
            problems.push(format!("firewall has {fw:?}, networks have {state_bridges:?}"));
        }
        problems
    }
}

/// Fails the test with every violation the replays found (the first 60 shown).
pub fn assert_no_violations(all_violations: &[String]) {
    let shown: Vec<&str> = all_violations.iter().take(60).map(String::as_str).collect();
    assert!(
        all_violations.is_empty(),
        "{} violations (first {}):\n{}",
        all_violations.len(),
        shown.len(),
        shown.join("\n")
    );
}

/// Replays one file in process and returns what came of it.
pub fn replay_in_process(file: &str, lines: &[Recorded], variant: Variant) -> Outcome {
    let mut replay = Replay::new(file, variant, InProcess::new(file));
    for rec in lines {
        replay.step(rec);
    }
    replay.check_at_end();
    replay.outcome()
}
