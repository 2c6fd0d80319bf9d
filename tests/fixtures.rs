//! The request bodies dockerd really sent (recorded in `../shared/fixtures/dockerd-*.jsonl`,
//! one `{"path": …, "request": …}` object per line): every one must decode into the
//! matching `rustbridge::api` type, and each file's sequence must replay against a
//! plugin on the fake data plane and firewall.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use rustbridge::api::*;
use rustbridge::dataplane::LinkKind;
use rustbridge::dataplane::fake::FakeDataPlane;
use rustbridge::driver::Plugin;
use rustbridge::driver::network::veth_names;
use rustbridge::firewall::FakeFirewall;
use rustbridge::ipam::default_pools;
use rustbridge::state::Store;

/// The recordings the protocol notes describe; more `dockerd-*.jsonl` files are read too.
const EXPECTED_FILES: [&str; 4] = [
    "dockerd-20.10.24-requests.jsonl",
    "dockerd-20.10.24-scenario-requests.jsonl",
    "dockerd-26.1.5-requests.jsonl",
    "dockerd-28.5.2-requests.jsonl",
];

const CALL_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- reading the recordings

/// `../shared/fixtures` beside the crate. In CI (CI=true) it must exist; elsewhere a
/// checkout without it skips these tests with a note.
fn fixtures_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("fixtures directory {} is missing (CI clones shared/ beside the repository)", dir.display());
    }
    eprintln!("note: {} not found; skipping the fixture tests", dir.display());
    None
}

struct Recorded {
    line: usize,
    path: String,
    request: Value,
}

/// Every `dockerd-*.jsonl` file, sorted by name, with its lines.
fn recordings(dir: &Path) -> Vec<(String, Vec<Recorded>)> {
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
fn decode<T: DeserializeOwned + Default>(request: &Value) -> Result<T, String> {
    match request {
        Value::String(s) if s.trim().is_empty() => Ok(T::default()),
        other => serde_json::from_value(other.clone()).map_err(|e| format!("malformed request body: {e}")),
    }
}

fn raw_str<'a>(raw: &'a Value, key: &str) -> &'a str {
    raw.get(key).and_then(Value::as_str).unwrap_or("")
}

fn raw_keys(raw: &Value, key: &str) -> BTreeSet<String> {
    raw.get(key).and_then(Value::as_object).map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn ipam_data_matches(field: &str, raw: &Value, decoded: &Option<Vec<IpamData>>) -> Result<(), String> {
    let raw_list = raw.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
    let decoded = decoded.clone().unwrap_or_default();
    if raw_list.len() != decoded.len() {
        return Err(format!("{field}: {} entries recorded, {} decoded", raw_list.len(), decoded.len()));
    }
    for (r, d) in raw_list.iter().zip(&decoded) {
        if raw_str(r, "Pool") != d.pool
            || raw_str(r, "Gateway") != d.gateway
            || raw_str(r, "AddressSpace") != d.address_space
        {
            return Err(format!("{field}: {r} decoded as {d:?}"));
        }
        let aux = r.get("AuxAddresses").and_then(Value::as_object).map(|o| o.len()).unwrap_or(0);
        if aux != d.aux_addresses.as_ref().map_or(0, |a| a.len()) {
            return Err(format!("{field}: AuxAddresses of {r} decoded as {:?}", d.aux_addresses));
        }
    }
    Ok(())
}

/// The port lists the driver reads from endpoint options must decode too.
fn port_options_decode(options: &Option<Options>) -> Result<(), String> {
    let Some(options) = options else { return Ok(()) };
    if let Some(v) = options.get(OPT_PORTMAP).filter(|v| !v.is_null()) {
        serde_json::from_value::<Vec<PortBinding>>(v.clone()).map_err(|e| format!("{OPT_PORTMAP}: {e}"))?;
    }
    if let Some(v) = options.get(OPT_EXPOSED_PORTS).filter(|v| !v.is_null()) {
        serde_json::from_value::<Vec<TransportPort>>(v.clone()).map_err(|e| format!("{OPT_EXPOSED_PORTS}: {e}"))?;
    }
    Ok(())
}

fn expect_eq(what: &str, recorded: &str, decoded: &str) -> Result<(), String> {
    if recorded != decoded {
        return Err(format!("{what}: recorded {recorded:?}, decoded {decoded:?}"));
    }
    Ok(())
}

/// Decodes one recorded request into the type `src/server.rs` uses for its path,
/// and checks that the fields came through (not merely defaulted).
fn check_decodes(path: &str, raw: &Value) -> Result<(), String> {
    let ids = |network_id: &str, endpoint_id: Option<&str>| -> Result<(), String> {
        expect_eq("NetworkID", raw_str(raw, "NetworkID"), network_id)?;
        if let Some(endpoint_id) = endpoint_id {
            expect_eq("EndpointID", raw_str(raw, "EndpointID"), endpoint_id)?;
        }
        Ok(())
    };
    match path {
        "/Plugin.Activate"
        | "/NetworkDriver.GetCapabilities"
        | "/IpamDriver.GetCapabilities"
        | "/IpamDriver.GetDefaultAddressSpaces" => match raw {
            Value::String(s) if s.is_empty() => Ok(()),
            Value::Object(_) => Ok(()),
            other => Err(format!("a call without arguments sent {other}")),
        },
        "/NetworkDriver.CreateNetwork" => {
            let r: CreateNetworkRequest = decode(raw)?;
            ids(&r.network_id, None)?;
            ipam_data_matches("IPv4Data", raw, &r.ipv4_data)?;
            ipam_data_matches("IPv6Data", raw, &r.ipv6_data)?;
            let keys: BTreeSet<String> = r.options.unwrap_or_default().keys().cloned().collect();
            if keys != raw_keys(raw, "Options") {
                return Err(format!("Options keys decoded as {keys:?}"));
            }
            Ok(())
        }
        "/NetworkDriver.DeleteNetwork" | "/NetworkDriver.FreeNetwork" => {
            let r: NetworkRequest = decode(raw)?;
            ids(&r.network_id, None)
        }
        "/NetworkDriver.CreateEndpoint" => {
            let r: CreateEndpointRequest = decode(raw)?;
            ids(&r.network_id, Some(&r.endpoint_id))?;
            let raw_iface = raw.get("Interface").cloned().unwrap_or(Value::Null);
            let iface = r.interface.unwrap_or_default();
            expect_eq("Interface.Address", raw_str(&raw_iface, "Address"), &iface.address)?;
            expect_eq("Interface.AddressIPv6", raw_str(&raw_iface, "AddressIPv6"), &iface.address_ipv6)?;
            expect_eq("Interface.MacAddress", raw_str(&raw_iface, "MacAddress"), &iface.mac_address)?;
            port_options_decode(&r.options)
        }
        "/NetworkDriver.DeleteEndpoint"
        | "/NetworkDriver.EndpointOperInfo"
        | "/NetworkDriver.Leave"
        | "/NetworkDriver.ProgramExternalConnectivity"
        | "/NetworkDriver.RevokeExternalConnectivity" => {
            let r: EndpointRequest = decode(raw)?;
            ids(&r.network_id, Some(&r.endpoint_id))?;
            port_options_decode(&r.options)
        }
        "/NetworkDriver.Join" => {
            let r: JoinRequest = decode(raw)?;
            ids(&r.network_id, Some(&r.endpoint_id))?;
            expect_eq("SandboxKey", raw_str(raw, "SandboxKey"), &r.sandbox_key)?;
            port_options_decode(&r.options)
        }
        "/NetworkDriver.GwAllocCheck" => {
            let r: GwAllocCheckRequest = decode(raw)?;
            let keys: BTreeSet<String> = r.options.unwrap_or_default().keys().cloned().collect();
            if keys != raw_keys(raw, "Options") {
                return Err(format!("Options keys decoded as {keys:?}"));
            }
            Ok(())
        }
        "/NetworkDriver.DiscoverNew" | "/NetworkDriver.DiscoverDelete" => decode::<DiscoveryRequest>(raw).map(drop),
        "/NetworkDriver.AllocateNetwork" => {
            let r: AllocateNetworkRequest = decode(raw)?;
            ids(&r.network_id, None)
        }
        "/IpamDriver.RequestPool" => {
            let r: RequestPoolRequest = decode(raw)?;
            expect_eq("AddressSpace", raw_str(raw, "AddressSpace"), &r.address_space)?;
            expect_eq("Pool", raw_str(raw, "Pool"), &r.pool)?;
            expect_eq("SubPool", raw_str(raw, "SubPool"), &r.sub_pool)?;
            if raw.get("V6").and_then(Value::as_bool).unwrap_or(false) != r.v6 {
                return Err(format!("V6 decoded as {}", r.v6));
            }
            Ok(())
        }
        "/IpamDriver.ReleasePool" => {
            let r: ReleasePoolRequest = decode(raw)?;
            expect_eq("PoolID", raw_str(raw, "PoolID"), &r.pool_id)
        }
        "/IpamDriver.RequestAddress" => {
            let r: RequestAddressRequest = decode(raw)?;
            expect_eq("PoolID", raw_str(raw, "PoolID"), &r.pool_id)?;
            expect_eq("Address", raw_str(raw, "Address"), &r.address)?;
            let keys: BTreeSet<String> = r.options.unwrap_or_default().keys().cloned().collect();
            if keys != raw_keys(raw, "Options") {
                return Err(format!("Options keys decoded as {keys:?}"));
            }
            Ok(())
        }
        "/IpamDriver.ReleaseAddress" => {
            let r: ReleaseAddressRequest = decode(raw)?;
            expect_eq("PoolID", raw_str(raw, "PoolID"), &r.pool_id)?;
            expect_eq("Address", raw_str(raw, "Address"), &r.address)
        }
        other => Err(format!("no request type for {other} (src/server.rs does not route it)")),
    }
}

#[test]
fn every_recorded_request_decodes() {
    let Some(dir) = fixtures_dir() else { return };
    let mut failures = Vec::new();
    let mut read = BTreeMap::new();
    for (file, lines) in recordings(&dir) {
        let mut per_path: BTreeMap<String, usize> = BTreeMap::new();
        for rec in &lines {
            *per_path.entry(rec.path.clone()).or_default() += 1;
            if let Err(e) = check_decodes(&rec.path, &rec.request) {
                failures.push(format!("{file}:{} {}: {e}", rec.line, rec.path));
            }
        }
        eprintln!("{file}: {} requests decoded, {} methods: {per_path:?}", lines.len(), per_path.len());
        read.insert(file, lines.len());
    }
    assert!(failures.is_empty(), "{} requests did not decode:\n{}", failures.len(), failures.join("\n"));
    for expected in EXPECTED_FILES {
        let count = read.get(expected).copied().unwrap_or(0);
        assert!(count > 0, "{expected}: no request read");
    }
}

// ---------------------------------------------------------------- replay

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let safe: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let dir = std::env::temp_dir().join(format!(
            "rustbridge-fixture-{safe}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn to_value(response: impl Serialize) -> Value {
    serde_json::to_value(response).expect("responses serialize")
}

/// Mirrors `route` in src/server.rs, with the answer as JSON and errors as text.
async fn dispatch(plugin: &Plugin, path: &str, request: &Value) -> Result<Value, String> {
    macro_rules! call {
        ($method:ident) => {
            plugin.$method(decode(request)?).await.map(to_value).map_err(|e| e.0)
        };
        ($method:ident, empty) => {
            plugin.$method(decode(request)?).await.map(|()| json!({})).map_err(|e| e.0)
        };
    }
    match path {
        "/Plugin.Activate" => Ok(json!({"Implements": ["NetworkDriver", "IpamDriver"]})),
        "/NetworkDriver.GetCapabilities" => Ok(to_value(plugin.capabilities())),
        "/NetworkDriver.CreateNetwork" => call!(create_network, empty),
        "/NetworkDriver.DeleteNetwork" => call!(delete_network, empty),
        "/NetworkDriver.CreateEndpoint" => call!(create_endpoint),
        "/NetworkDriver.DeleteEndpoint" => call!(delete_endpoint, empty),
        "/NetworkDriver.EndpointOperInfo" => call!(endpoint_oper_info),
        "/NetworkDriver.Join" => call!(join),
        "/NetworkDriver.Leave" => call!(leave, empty),
        "/NetworkDriver.ProgramExternalConnectivity" => call!(program_external_connectivity, empty),
        "/NetworkDriver.RevokeExternalConnectivity" => call!(revoke_external_connectivity, empty),
        "/NetworkDriver.GwAllocCheck" => plugin.gw_alloc_check(decode(request)?).map(to_value).map_err(|e| e.0),
        "/NetworkDriver.DiscoverNew" | "/NetworkDriver.DiscoverDelete" => {
            decode::<DiscoveryRequest>(request).map(|_| json!({}))
        }
        "/NetworkDriver.AllocateNetwork" => {
            decode::<AllocateNetworkRequest>(request).map(|_| to_value(AllocateNetworkResponse::default()))
        }
        "/NetworkDriver.FreeNetwork" => decode::<NetworkRequest>(request).map(|_| json!({})),
        "/IpamDriver.GetCapabilities" => Ok(to_value(plugin.ipam_capabilities())),
        "/IpamDriver.GetDefaultAddressSpaces" => Ok(to_value(plugin.default_address_spaces())),
        "/IpamDriver.RequestPool" => call!(request_pool),
        "/IpamDriver.ReleasePool" => call!(release_pool, empty),
        "/IpamDriver.RequestAddress" => call!(request_address),
        "/IpamDriver.ReleaseAddress" => call!(release_address, empty),
        other => Err(format!("{other}: unknown method")),
    }
}

/// Calls that must succeed whatever state they meet: the idempotent teardown calls
/// (protocol notes: "must be idempotent") and those without arguments.
fn always_succeeds(path: &str) -> bool {
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
struct Tally {
    ok: usize,
    failed: usize,
}

struct EndpointModel {
    network: String,
    joined: bool,
}

/// A recorded pool ID, `rb:POOL[|SUBPOOL]`, as the recording plugin answered it.
fn parse_recorded_pool_id(id: &str) -> Option<(IpNet, Option<IpNet>)> {
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
fn translate(address: &str, recorded: IpNet, ours: IpNet) -> String {
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
enum Variant {
    /// The bodies exactly as recorded.
    AsRecorded,
    /// With the user options rustbridge refuses by design removed, so that the networks
    /// carrying them (and everything on them) are exercised too.
    RefusedOptionsRemoved,
}

struct Replay {
    file: String,
    variant: Variant,
    plugin: Option<Arc<Plugin>>,
    fake: Arc<FakeDataPlane>,
    fw: Arc<FakeFirewall>,
    dir: TempDir,
    restarts: usize,
    /// Networks our plugin created and has not deleted, with the subnets they were created with.
    networks: BTreeMap<String, Vec<IpNet>>,
    endpoints: BTreeMap<String, EndpointModel>,
    deleted_endpoints: BTreeSet<String>,
    /// Our pools: ID → (pool, sub pool).
    our_pools: BTreeMap<String, (IpNet, Option<IpNet>)>,
    /// Explicit recorded RequestPools, by (Pool, SubPool) → our pool ID.
    explicit: BTreeMap<(IpNet, Option<IpNet>), String>,
    /// Our answers to recorded automatic RequestPools not yet tied to a recorded PoolID, per family.
    pending_auto: [Vec<String>; 2],
    /// Recorded PoolID of an automatic pool → our pool ID.
    bound: BTreeMap<String, String>,
    tally: BTreeMap<String, Tally>,
    violations: Vec<String>,
    failures_seen: Vec<String>,
}

impl Replay {
    fn new(file: &str, variant: Variant) -> Replay {
        let dir = TempDir::new(file);
        let fake = Arc::new(FakeDataPlane::default());
        let fw = Arc::new(FakeFirewall::default());
        let plugin = Some(Arc::new(load(&dir, &fake, &fw)));
        Replay {
            file: file.to_string(),
            variant,
            plugin,
            fake,
            fw,
            dir,
            restarts: 0,
            networks: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            deleted_endpoints: BTreeSet::new(),
            our_pools: BTreeMap::new(),
            explicit: BTreeMap::new(),
            pending_auto: [vec![], vec![]],
            bound: BTreeMap::new(),
            tally: BTreeMap::new(),
            violations: vec![],
            failures_seen: vec![],
        }
    }

    fn plugin(&self) -> Arc<Plugin> {
        self.plugin.clone().expect("plugin loaded")
    }

    /// A plugin restart: close the store, load it back and reconcile, as `main` does.
    async fn restart(&mut self) {
        let plugin = self.plugin.take().expect("plugin loaded");
        let plugin = Arc::try_unwrap(plugin).unwrap_or_else(|_| panic!("{}: a call still holds the plugin", self.file));
        drop(plugin);
        let plugin = load(&self.dir, &self.fake, &self.fw);
        let log = slog::Logger::root(slog::Discard, slog::o!());
        if let Err(e) = rustbridge::reconcile::at_start(&plugin, &log).await {
            self.violations.push(format!("start-up reconcile after restart {} failed: {e}", self.restarts + 1));
        }
        self.plugin = Some(Arc::new(plugin));
        self.restarts += 1;
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
                let ours = self.plugin().default_address_spaces().local;
                request["AddressSpace"] = json!(ours);
            }
            "/IpamDriver.RequestAddress" | "/IpamDriver.ReleaseAddress" | "/IpamDriver.ReleasePool" => {
                let recorded = raw_str(&request, "PoolID").to_string();
                if let Some(ours) = self.map_pool_id(&recorded) {
                    request["PoolID"] = json!(ours);
                    let address = raw_str(&request, "Address").to_string();
                    if let (Some((recorded_pool, _)), Some((our_pool, _))) =
                        (parse_recorded_pool_id(&recorded), self.our_pools.get(&ours).copied())
                    {
                        if !address.is_empty() && path != "/IpamDriver.ReleasePool" {
                            request["Address"] = json!(translate(&address, recorded_pool, our_pool));
                        }
                    }
                }
            }
            _ => {}
        }
        request
    }

    async fn step(&mut self, rec: &Recorded) {
        if rec.path == "/Plugin.Activate" && rec.line > 1 {
            self.restart().await;
        }
        let request = self.rewrite(&rec.path, &rec.request);
        let plugin = self.plugin();
        let path = rec.path.clone();
        let sent = request.clone();
        let task = tokio::spawn(async move { dispatch(&plugin, &path, &sent).await });
        let result = match tokio::time::timeout(CALL_LIMIT, task).await {
            Err(_) => {
                self.violations.push(format!("line {} {}: no answer within {CALL_LIMIT:?}", rec.line, rec.path));
                panic!("{}: line {} {} hung; giving up on this file", self.file, rec.line, rec.path);
            }
            Ok(Err(join_error)) => {
                self.violations.push(format!("line {} {}: panicked: {join_error}", rec.line, rec.path));
                Err(format!("panic: {join_error}"))
            }
            Ok(Ok(result)) => result,
        };
        let tally = self.tally.entry(rec.path.clone()).or_default();
        match &result {
            Ok(_) => tally.ok += 1,
            Err(e) => {
                tally.failed += 1;
                self.failures_seen.push(format!("line {} {}: {e}", rec.line, rec.path));
            }
        }
        self.check(rec, &request, &result);
        self.check_consistency(rec).await;
    }

    /// After every call, the plugin's state and the fake kernel agree with the model
    /// built from the answers so far.
    async fn check_consistency(&mut self, rec: &Recorded) {
        let plugin = self.plugin();
        let state = plugin.state.lock().await;
        let mut problems = Vec::new();
        if !state.networks.keys().eq(self.networks.keys()) {
            problems.push(format!(
                "networks {:?} vs model {:?}",
                state.networks.keys().collect::<Vec<_>>(),
                self.networks.keys().collect::<Vec<_>>()
            ));
        }
        if !state.endpoints.keys().eq(self.endpoints.keys()) {
            problems.push(format!(
                "endpoints {:?} vs model {:?}",
                state.endpoints.keys().collect::<Vec<_>>(),
                self.endpoints.keys().collect::<Vec<_>>()
            ));
        }
        for (id, e) in &self.endpoints {
            if state.endpoints.get(id).is_some_and(|r| r.joined != e.joined) {
                problems.push(format!("endpoint {} joined={} in state, {} in model", &id[..12], !e.joined, e.joined));
            }
        }
        let pools: BTreeSet<&String> = state.ipam.pools().map(|p| &p.id).collect();
        if !pools.iter().copied().eq(self.our_pools.keys()) {
            problems.push(format!("pools {pools:?} vs model {:?}", self.our_pools.keys().collect::<Vec<_>>()));
        }
        drop(state);
        let veths: BTreeSet<String> = self
            .fake
            .links
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.kind == LinkKind::Veth)
            .map(|(n, _)| n.clone())
            .collect();
        if veths != self.expected_veths() {
            problems.push(format!("veths {veths:?} vs joined endpoints' {:?}", self.expected_veths()));
        }
        for p in problems {
            self.violations.push(format!("after line {} {}: {p}", rec.line, rec.path));
        }
    }

    fn expected_veths(&self) -> BTreeSet<String> {
        self.endpoints
            .iter()
            .filter(|(_, e)| e.joined)
            .flat_map(|(id, _)| {
                let (host, peer) = veth_names(id);
                [host, peer]
            })
            .collect()
    }

    /// Holds each answer against what the recording and our own earlier answers demand,
    /// then updates the model.
    fn check(&mut self, rec: &Recorded, request: &Value, result: &Result<Value, String>) {
        let path = rec.path.as_str();
        let network = raw_str(request, "NetworkID").to_string();
        let endpoint = raw_str(request, "EndpointID").to_string();
        let live_network = self.networks.contains_key(&network);
        let mut violation = |why: String| self.violations.push(format!("line {} {}: {why}", rec.line, path));

        if always_succeeds(path) {
            if let Err(e) = result {
                violation(format!("must always succeed, failed: {e}"));
            }
        }
        match path {
            "/NetworkDriver.CreateNetwork" => {
                if live_network && result.is_err() {
                    violation(format!(
                        "repeated CreateNetwork of a live network failed: {}",
                        result.as_ref().unwrap_err()
                    ));
                }
                if let Err(e) = result {
                    if self.variant == Variant::RefusedOptionsRemoved && !has_recorder_fail(request) {
                        violation(format!("CreateNetwork without refused options failed: {e}"));
                    }
                }
                if result.is_ok() && !live_network {
                    let subnets = ["IPv4Data", "IPv6Data"]
                        .iter()
                        .flat_map(|f| request.get(*f).and_then(Value::as_array).cloned().unwrap_or_default())
                        .filter_map(|d| raw_str(&d, "Pool").parse::<IpNet>().ok())
                        .collect();
                    self.networks.insert(network, subnets);
                }
            }
            "/NetworkDriver.DeleteNetwork" => {
                if result.is_ok() && self.networks.remove(&network).is_some() {
                    let gone: Vec<String> =
                        self.endpoints.iter().filter(|(_, e)| e.network == network).map(|(id, _)| id.clone()).collect();
                    for id in gone {
                        self.endpoints.remove(&id);
                        self.deleted_endpoints.insert(id);
                    }
                }
            }
            "/NetworkDriver.CreateEndpoint" => {
                let iface = request.get("Interface").cloned().unwrap_or(Value::Null);
                let subnets = self.networks.get(&network).cloned().unwrap_or_default();
                let inside = ["Address", "AddressIPv6"].iter().all(|k| match raw_str(&iface, k) {
                    "" => true,
                    text => text.parse::<IpNet>().is_ok_and(|a| subnets.iter().any(|s| s.contains(&a.addr()))),
                });
                // Refused by design: dockerd ignores interface names from remote drivers.
                let asks_ifname = request["Options"].get(rustbridge::api::OPT_ENDPOINT_IFNAME).is_some();
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
                        self.deleted_endpoints.remove(&endpoint);
                        self.endpoints
                            .entry(endpoint)
                            .or_insert(EndpointModel { network: network.clone(), joined: false });
                    }
                    Err(_) => {}
                }
            }
            "/NetworkDriver.Join" => {
                let known = self.endpoints.get(&endpoint).is_some_and(|e| e.network == network);
                match result {
                    Err(e) if live_network && known => violation(format!("Join of a live endpoint failed: {e}")),
                    Ok(answer) => {
                        let (_, peer) = veth_names(&endpoint);
                        if answer["InterfaceName"]["SrcName"] != json!(peer) {
                            violation(format!("SrcName is not {peer}: {answer}"));
                        }
                        if let Some(gw) = answer.get("Gateway").and_then(Value::as_str) {
                            if gw.contains('/') || gw.parse::<IpAddr>().is_err() {
                                violation(format!("Gateway {gw:?} is not a bare IP"));
                            }
                        }
                        if let Some(e) = self.endpoints.get_mut(&endpoint) {
                            e.joined = true;
                        }
                    }
                    Err(_) => {
                        if let Some(e) = self.endpoints.get_mut(&endpoint) {
                            e.joined = false;
                        }
                    }
                }
            }
            "/NetworkDriver.ProgramExternalConnectivity" => {
                let known = self.endpoints.get(&endpoint).is_some_and(|e| e.network == network);
                if let Err(e) = result {
                    if live_network && known {
                        violation(format!("ProgramExternalConnectivity of a live endpoint failed: {e}"));
                    }
                }
            }
            "/NetworkDriver.Leave" => {
                if result.is_ok() {
                    if let Some(e) = self.endpoints.get_mut(&endpoint) {
                        e.joined = false;
                    }
                }
            }
            "/NetworkDriver.DeleteEndpoint" => {
                if result.is_ok() && self.endpoints.remove(&endpoint).is_some() {
                    self.deleted_endpoints.insert(endpoint);
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
                            self.our_pools.iter().find(|(_, (held, _))| overlaps(*held, pool) && wanted.is_empty())
                        {
                            violation(format!("automatic pool {pool} overlaps held pool {other_id}"));
                        }
                        if wanted.is_empty() {
                            self.pending_auto[usize::from(v6)].push(id.clone());
                            self.our_pools.insert(id, (pool, None));
                        } else {
                            if wanted != pool.to_string() {
                                violation(format!("asked for {wanted}, got {pool}"));
                            }
                            let sub_pool = sub.parse().ok();
                            self.explicit.insert((pool, sub_pool), id.clone());
                            self.our_pools.insert(id, (pool, sub_pool));
                        }
                    }
                    Err(e) if wanted.is_empty() => violation(format!("automatic RequestPool failed: {e}")),
                    Err(_) => {}
                }
            }
            "/IpamDriver.RequestAddress" => {
                let id = raw_str(request, "PoolID").to_string();
                let held = self.our_pools.get(&id).copied();
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
                    self.forget_pool(&ours);
                }
            }
            _ => {}
        }
    }

    /// After the recorded teardown: the kernel holds exactly what the state says, and
    /// the state on disk is what the replay left.
    async fn finish(mut self) -> (String, BTreeMap<String, Tally>, Vec<String>, Vec<String>, usize) {
        let links = self.fake.links.lock().unwrap().clone();
        let veths: BTreeSet<String> =
            links.iter().filter(|(_, l)| l.kind == LinkKind::Veth).map(|(n, _)| n.clone()).collect();
        for id in &self.deleted_endpoints {
            let (host, peer) = veth_names(id);
            for name in [host, peer] {
                if veths.contains(&name) {
                    self.violations.push(format!("end: veth {name} of deleted endpoint {} left behind", &id[..12]));
                }
            }
        }
        let expected_veths = self.expected_veths();
        if veths != expected_veths {
            self.violations.push(format!(
                "end: veths {:?} but joined endpoints need {:?}",
                veths.difference(&expected_veths).collect::<Vec<_>>(),
                expected_veths.difference(&veths).collect::<Vec<_>>()
            ));
        }

        // Load the state back from disk and compare it with the model.
        self.restart().await;
        let plugin = self.plugin();
        let state = plugin.state.lock().await;
        let networks: BTreeSet<&String> = state.networks.keys().collect();
        let model_networks: BTreeSet<&String> = self.networks.keys().collect();
        if networks != model_networks {
            self.violations.push(format!("end: stored networks {networks:?}, expected {model_networks:?}"));
        }
        let endpoints: BTreeSet<&String> = state.endpoints.keys().collect();
        let model_endpoints: BTreeSet<&String> = self.endpoints.keys().collect();
        if endpoints != model_endpoints {
            self.violations.push(format!("end: stored endpoints {endpoints:?}, expected {model_endpoints:?}"));
        }
        let pools: BTreeSet<&String> = state.ipam.pools().map(|p| &p.id).collect();
        let model_pools: BTreeSet<&String> = self.our_pools.keys().collect();
        if pools != model_pools {
            self.violations.push(format!("end: stored pools {pools:?}, expected {model_pools:?}"));
        }
        let bridges: BTreeSet<String> =
            links.iter().filter(|(_, l)| l.kind == LinkKind::Bridge).map(|(n, _)| n.clone()).collect();
        let state_bridges: BTreeSet<String> = state.networks.values().map(|n| n.bridge.clone()).collect();
        if bridges != state_bridges {
            self.violations.push(format!("end: bridges {bridges:?}, networks have {state_bridges:?}"));
        }
        let fw: BTreeSet<String> = self.fw.applied.lock().unwrap().iter().map(|n| n.bridge.clone()).collect();
        if fw != state_bridges {
            self.violations.push(format!("end: firewall has {fw:?}, networks have {state_bridges:?}"));
        }
        drop(state);
        drop(plugin);
        let restarts = self.restarts;
        (
            self.file.clone(),
            std::mem::take(&mut self.tally),
            std::mem::take(&mut self.violations),
            std::mem::take(&mut self.failures_seen),
            restarts,
        )
    }
}

fn load(dir: &TempDir, fake: &Arc<FakeDataPlane>, fw: &Arc<FakeFirewall>) -> Plugin {
    let store = Store::open(&dir.0).expect("open store");
    Plugin::load(store, fake.clone(), fw.clone(), default_pools()).expect("load plugin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_sequences_replay() {
    let Some(dir) = fixtures_dir() else { return };
    let mut all_violations = Vec::new();
    let mut replayed = BTreeSet::new();
    for (file, lines) in recordings(&dir) {
        assert!(!lines.is_empty(), "{file} is empty");
        for variant in [Variant::AsRecorded, Variant::RefusedOptionsRemoved] {
            let mut replay = Replay::new(&file, variant);
            for rec in &lines {
                replay.step(rec).await;
            }
            let (file, tally, violations, failures, restarts) = replay.finish().await;
            let total: usize = tally.values().map(|t| t.ok + t.failed).sum();
            assert_eq!(total, lines.len(), "{file}: every line was replayed once");
            eprintln!(
                "== {file} ({variant:?}): {} calls, {restarts} plugin restarts (at Plugin.Activate and at the end)",
                lines.len()
            );
            for (path, t) in &tally {
                eprintln!("   {path:<45} ok {:>4}  failed {:>4}", t.ok, t.failed);
            }
            for failure in &failures {
                eprintln!("   failed: {failure}");
            }
            all_violations.extend(violations.into_iter().map(|v| format!("{file} ({variant:?}): {v}")));
            replayed.insert(file);
        }
    }
    for expected in EXPECTED_FILES {
        assert!(replayed.contains(expected), "{expected} not replayed");
    }
    let shown: Vec<&str> = all_violations.iter().take(60).map(String::as_str).collect();
    assert!(
        all_violations.is_empty(),
        "{} violations (first {}):\n{}",
        all_violations.len(),
        shown.len(),
        shown.join("\n")
    );
}

// ---------------------------------------------------------------- the mapping helpers themselves

#[test]
fn recorded_pool_ids_and_addresses_map_onto_ours() {
    let (pool, sub) = parse_recorded_pool_id("rb:10.202.0.0/24|10.202.0.128/25").unwrap();
    assert_eq!(pool, "10.202.0.0/24".parse::<IpNet>().unwrap());
    assert_eq!(sub, Some("10.202.0.128/25".parse().unwrap()));
    assert_eq!(parse_recorded_pool_id("rb:fd00:99::/64").unwrap().0, "fd00:99::/64".parse::<IpNet>().unwrap());
    assert!(parse_recorded_pool_id("rustbridge-local/10.0.0.0/24").is_none());
    let (rec, ours) = ("10.99.1.0/24".parse().unwrap(), "10.210.3.0/24".parse().unwrap());
    assert_eq!(translate("10.99.1.7", rec, ours), "10.210.3.7");
    assert_eq!(translate("10.98.1.7", rec, ours), "10.98.1.7", "outside the recorded pool: unchanged");
    let (rec6, ours6) = ("fd00:99::/64".parse().unwrap(), "fdb7:7b00:0:1::/64".parse().unwrap());
    assert_eq!(translate("fd00:99::2", rec6, ours6), "fdb7:7b00:0:1::2");
}
