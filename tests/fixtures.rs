//! The request bodies dockerd really sent (recorded in `tests/fixtures/dockerd-*.jsonl`,
//! one `{"path": …, "request": …}` object per line): every one must decode into the
//! matching `rustbridge::api` type, and each file's sequence must replay against a
//! plugin on the fake data plane and firewall. The replay itself (model, mapping of
//! recorded pool IDs, expectations) lives in tests/common/replay.rs, shared with the
//! replay against the real binary in tests/replay_netns.rs.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde_json::Value;

use common::replay::{
    EXPECTED_FILES, Variant, assert_no_violations, decode, fixtures_dir, parse_recorded_pool_id, raw_str, recordings,
    replay_in_process, translate,
};
use rustbridge::api::*;

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
    let dir = fixtures_dir();
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

#[test]
fn recorded_sequences_replay() {
    let dir = fixtures_dir();
    let mut all_violations = Vec::new();
    let mut replayed = BTreeSet::new();
    for (file, lines) in recordings(&dir) {
        assert!(!lines.is_empty(), "{file} is empty");
        for variant in [Variant::AsRecorded, Variant::RefusedOptionsRemoved] {
            let outcome = replay_in_process(&file, &lines, variant);
            assert_eq!(outcome.calls(), lines.len(), "{file}: every line was replayed once");
            eprint!("{}", outcome.report("in process, plus a restart at the end"));
            all_violations.extend(outcome.violations.iter().map(|v| format!("{file} ({variant:?}): {v}")));
            replayed.insert(file.clone());
        }
    }
    for expected in EXPECTED_FILES {
        assert!(replayed.contains(expected), "{expected} not replayed");
    }
    assert_no_violations(&all_violations);
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
