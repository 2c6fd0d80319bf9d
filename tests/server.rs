//! The server against hostile or broken clients (issue 11, items 4 and 9):
//! through the router (`server::answer`), and over a real Unix socket in a
//! temporary directory, with the plugin on the fake data plane and firewall.

mod common;

use std::sync::Arc;

use serde_json::{Value, json};

use rustbridge::driver::Plugin;
use rustbridge::server;
use rustbridge::testing::{FakeDataPlane, FakePlugin};

// ---------------------------------------------------------------- harness

struct Fixture {
    plugin: Arc<Plugin>,
    fake: Arc<FakeDataPlane>,
    // Dropped last: it closes the store, then removes the directory.
    _inner: FakePlugin,
}

fn fixture(tag: &str) -> Fixture {
    let inner = FakePlugin::new(tag);
    Fixture { plugin: inner.plugin().clone(), fake: inner.fake.clone(), _inner: inner }
}

fn id(c: char) -> String {
    c.to_string().repeat(64)
}

async fn ok(plugin: &Plugin, path: &str, body: Value) -> Value {
    server::answer(plugin, path, body.to_string().as_bytes()).await.unwrap_or_else(|e| panic!("{path} {body}: {e}"))
}

/// A network from an IPAM pool of the plugin's own, an endpoint with an
/// allocated address, joined: what a running container has.
struct Running {
    network: String,
    endpoint: String,
    pool_id: String,
    address: String,
}

async fn running_container(plugin: &Plugin) -> Running {
    let pool =
        ok(plugin, "/IpamDriver.RequestPool", json!({"AddressSpace": "", "Pool": "10.77.0.0/24", "V6": false})).await;
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    let gateway = ok(
        plugin,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    )
    .await;
    let (network, endpoint) = (id('a'), id('b'));
    ok(
        plugin,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": network, "Options": {}, "IPv4Data": [{"AddressSpace": "", "Pool": "10.77.0.0/24", "Gateway": gateway["Address"]}]}),
    )
    .await;
    let address = ok(plugin, "/IpamDriver.RequestAddress", json!({"PoolID": pool_id, "Address": ""})).await;
    let address = address["Address"].as_str().unwrap().to_string();
    ok(
        plugin,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": network, "EndpointID": endpoint, "Interface": {"Address": address}}),
    )
    .await;
    ok(plugin, "/NetworkDriver.Join", json!({"NetworkID": network, "EndpointID": endpoint, "SandboxKey": "/x"})).await;
    Running { network, endpoint, pool_id, address }
}

/// What a leak would change: records, the endpoint's veth, the address.
async fn snapshot(f: &Fixture, r: &Running) -> String {
    let state = f.plugin.state.lock().await;
    let addr: std::net::IpAddr = r.address.split('/').next().unwrap().parse().unwrap();
    format!(
        "networks={:?} endpoints={:?} joined={:?} pools={:?} allocated={:?} links={:?}",
        state.networks.keys().collect::<Vec<_>>(),
        state.endpoints.keys().collect::<Vec<_>>(),
        state.endpoints.get(&r.endpoint).map(|e| e.joined),
        state.ipam.pools().map(|p| p.id.clone()).collect::<Vec<_>>(),
        state.ipam.addresses(&r.pool_id).map(|a| a.is_allocated(addr)),
        f.fake.names(),
    )
}

// ---------------------------------------------------------------- empty retries (item 9)

/// dockerd re-sends a call with an empty body after a transport failure
/// (moby/moby#39331). Answered "ok" having done nothing, an empty
/// DeleteEndpoint, Leave or ReleaseAddress leaked; each is now refused,
/// naming what is missing, and nothing changes.
#[tokio::test]
async fn empty_bodies_are_refused_by_every_call_that_needs_ids() {
    let f = fixture("empty-retries");
    let r = running_container(&f.plugin).await;
    let before = snapshot(&f, &r).await;
    let cases = [
        ("/NetworkDriver.CreateNetwork", "NetworkID"),
        ("/NetworkDriver.DeleteNetwork", "NetworkID"),
        ("/NetworkDriver.CreateEndpoint", "NetworkID and EndpointID"),
        ("/NetworkDriver.DeleteEndpoint", "EndpointID"),
        ("/NetworkDriver.EndpointOperInfo", "EndpointID"),
        ("/NetworkDriver.Join", "EndpointID"),
        ("/NetworkDriver.Leave", "EndpointID"),
        ("/NetworkDriver.ProgramExternalConnectivity", "EndpointID"),
        ("/NetworkDriver.RevokeExternalConnectivity", "EndpointID"),
        ("/IpamDriver.RequestPool", "AddressSpace"),
        ("/IpamDriver.ReleasePool", "PoolID"),
        ("/IpamDriver.RequestAddress", "PoolID"),
        ("/IpamDriver.ReleaseAddress", "PoolID and Address"),
    ];
    for (path, fields) in cases {
        for body in ["", " \n"] {
            let err = server::answer(&f.plugin, path, body.as_bytes()).await.expect_err(path);
            assert!(err.contains("empty request body") && err.contains(&format!("needs {fields}")), "{path}: {err}");
        }
        assert_eq!(snapshot(&f, &r).await, before, "{path} with an empty body changed something");
    }
    // Calls without arguments still answer an empty body.
    for path in ["/Plugin.Activate", "/NetworkDriver.GetCapabilities", "/IpamDriver.GetDefaultAddressSpaces"] {
        server::answer(&f.plugin, path, b"").await.unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    // And the real calls still work afterwards.
    let (network, endpoint) = (&r.network, &r.endpoint);
    ok(&f.plugin, "/NetworkDriver.Leave", json!({"NetworkID": network, "EndpointID": endpoint})).await;
    ok(&f.plugin, "/NetworkDriver.DeleteEndpoint", json!({"NetworkID": network, "EndpointID": endpoint})).await;
    ok(&f.plugin, "/IpamDriver.ReleaseAddress", json!({"PoolID": r.pool_id, "Address": r.address})).await;
    assert!(f.plugin.state.lock().await.endpoints.is_empty());
}

/// An object with the ID left out is refused the same way, naming the field.
#[tokio::test]
async fn missing_ids_in_a_body_are_named() {
    let f = fixture("missing-ids");
    let r = running_container(&f.plugin).await;
    let before = snapshot(&f, &r).await;
    let cases = [
        ("/NetworkDriver.Leave", json!({"NetworkID": r.network}), "EndpointID is missing"),
        ("/NetworkDriver.DeleteEndpoint", json!({"NetworkID": r.network}), "EndpointID is missing"),
        ("/NetworkDriver.DeleteNetwork", json!({}), "NetworkID is missing"),
        ("/IpamDriver.ReleaseAddress", json!({"PoolID": r.pool_id}), "Address is missing"),
        ("/IpamDriver.ReleaseAddress", json!({"Address": r.address}), "PoolID is missing"),
        ("/IpamDriver.ReleasePool", json!({}), "PoolID is missing"),
    ];
    for (path, body, expected) in cases {
        let err = server::answer(&f.plugin, path, body.to_string().as_bytes()).await.expect_err(path);
        assert!(err.contains(expected), "{path} {body}: {err}");
    }
    assert_eq!(snapshot(&f, &r).await, before);
}

// ---------------------------------------------------------------- IDs (item 4)

/// An EndpointID with non-ASCII characters made `short()` slice inside a
/// character and panic; every ID is now checked before use, with an error
/// naming the field.
#[tokio::test]
async fn non_ascii_and_oversized_ids_are_refused_naming_the_field() {
    let f = fixture("bad-ids");
    let r = running_container(&f.plugin).await;
    let before = snapshot(&f, &r).await;
    let bad_ids = ["0123456789aé0123456789", "ééééééééééééééé", "😀".repeat(20).as_str(), &"a".repeat(10_000)]
        .map(str::to_string);
    for bad in &bad_ids {
        for path in [
            "/NetworkDriver.DeleteEndpoint",
            "/NetworkDriver.Leave",
            "/NetworkDriver.Join",
            "/NetworkDriver.EndpointOperInfo",
            "/NetworkDriver.ProgramExternalConnectivity",
            "/NetworkDriver.RevokeExternalConnectivity",
        ] {
            let body = json!({"NetworkID": r.network, "EndpointID": bad});
            let err = server::answer(&f.plugin, path, body.to_string().as_bytes()).await.expect_err(path);
            assert!(err.contains("EndpointID") && err.contains("not a Docker ID"), "{path}: {err}");
            assert!(err.len() < 400, "{path}: the error echoes the whole ID: {} bytes", err.len());
        }
        let body = json!({"NetworkID": bad, "EndpointID": id('c')});
        let err =
            server::answer(&f.plugin, "/NetworkDriver.CreateEndpoint", body.to_string().as_bytes()).await.unwrap_err();
        assert!(err.contains("NetworkID") && err.contains("not a Docker ID"), "{err}");
        let body = json!({"PoolID": format!("{}{bad}", r.pool_id), "Address": ""});
        let err =
            server::answer(&f.plugin, "/IpamDriver.RequestAddress", body.to_string().as_bytes()).await.unwrap_err();
        assert!(err.contains("PoolID"), "{err}");
    }
    assert_eq!(snapshot(&f, &r).await, before);
}
