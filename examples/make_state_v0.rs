//! Writes `tests/fixtures/state-v0.redb`: a state database as written by the
//! release whose store had no schema version (records made of the wire and
//! firewall types). It drives the plugin's own calls on the fake data plane
//! and firewall, so the records are exactly what that release persisted.
//!
//! Run once, with the code of that release:
//!     cargo run --example make_state_v0 -- tests/fixtures
//! The values it creates are what `tests/store_migration.rs` expects to find.

use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use rustbridge::dataplane::LinkKind;
use rustbridge::dataplane::fake::{FakeDataPlane, FakeLink};
use rustbridge::driver::Plugin;
use rustbridge::firewall::FakeFirewall;
use rustbridge::ipam::default_pools;
use rustbridge::state::{DB_FILE, Store};

fn req<T: DeserializeOwned>(body: Value) -> T {
    serde_json::from_value(body).expect("request decodes")
}

const NET_A: &str = "a0a0a0a0a0a01111111111111111111111111111111111111111111111111111";
const NET_B: &str = "b0b0b0b0b0b02222222222222222222222222222222222222222222222222222";
const NET_C: &str = "c0c0c0c0c0c03333333333333333333333333333333333333333333333333333";
const EP_1: &str = "e1e1e1e1e1e14444444444444444444444444444444444444444444444444444";
const EP_2: &str = "e2e2e2e2e2e25555555555555555555555555555555555555555555555555555";
const EP_3: &str = "e3e3e3e3e3e36666666666666666666666666666666666666666666666666666";

#[tokio::main]
async fn main() {
    let out: PathBuf = std::env::args().nth(1).expect("usage: make_state_v0 <directory>").into();
    let work = std::env::temp_dir().join(format!("rustbridge-make-state-v0-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let dataplane = Arc::new(FakeDataPlane::default());
    // An existing bridge for `-o bridge=brfixture0` (adopted, not created).
    dataplane.links.lock().unwrap().insert(
        "brfixture0".into(),
        FakeLink { kind: LinkKind::Bridge, mtu: 1500, addresses: vec![], controller: None, up: true, peer: None },
    );
    let firewall = Arc::new(FakeFirewall::default());
    let plugin = Plugin::load(Store::open(&work).unwrap(), dataplane, firewall, default_pools()).unwrap();

    // IPAM: an explicit IPv4 pool with a sub-pool, an IPv6 pool, an automatic pool.
    let a4 = plugin
        .request_pool(req(
            json!({"AddressSpace": "rustbridge-local", "Pool": "10.77.0.0/16", "SubPool": "10.77.1.0/24", "V6": false}),
        ))
        .await
        .unwrap();
    let a6 = plugin
        .request_pool(req(
            json!({"AddressSpace": "rustbridge-local", "Pool": "fd00:77::/64", "SubPool": "", "V6": true}),
        ))
        .await
        .unwrap();
    let b4 =
        plugin.request_pool(req(json!({"AddressSpace": "rustbridge-local", "Pool": "", "V6": false}))).await.unwrap();
    let c4 = plugin
        .request_pool(req(json!({"AddressSpace": "rustbridge-global", "Pool": "192.168.77.0/24", "V6": false})))
        .await
        .unwrap();
    println!("pools: {} {} {} {}", a4.pool_id, a6.pool_id, b4.pool_id, c4.pool_id);
    let gateway = json!({"RequestAddressType": "com.docker.network.gateway"});
    for (pool, address) in [(&a4.pool_id, "10.77.1.1"), (&a6.pool_id, "fd00:77::1"), (&c4.pool_id, "192.168.77.1")] {
        plugin.request_address(req(json!({"PoolID": pool, "Address": address, "Options": gateway}))).await.unwrap();
    }
    let b_gateway =
        plugin.request_address(req(json!({"PoolID": b4.pool_id, "Address": "", "Options": gateway}))).await.unwrap();
    // Container addresses: automatic ones (moving the next-fit cursor), one released again.
    let e1_v4 = plugin.request_address(req(json!({"PoolID": a4.pool_id, "Address": ""}))).await.unwrap();
    let e1_v6 = plugin.request_address(req(json!({"PoolID": a6.pool_id, "Address": ""}))).await.unwrap();
    let gone = plugin.request_address(req(json!({"PoolID": a4.pool_id, "Address": ""}))).await.unwrap();
    let e2_v4 = plugin.request_address(req(json!({"PoolID": a4.pool_id, "Address": "10.77.1.200"}))).await.unwrap();
    let gone_ip = gone.address.split('/').next().unwrap().to_string();
    plugin.release_address(req(json!({"PoolID": a4.pool_id, "Address": gone_ip}))).await.unwrap();
    let e3_v4 = plugin.request_address(req(json!({"PoolID": b4.pool_id, "Address": ""}))).await.unwrap();
    println!(
        "addresses: {} {} {} {} {}",
        b_gateway.address, e1_v4.address, e1_v6.address, e2_v4.address, e3_v4.address
    );

    // Network A: dual stack with most options set.
    plugin
        .create_network(req(json!({
            "NetworkID": NET_A,
            "IPv4Data": [{"AddressSpace": "rustbridge-local", "Pool": "10.77.0.0/16", "Gateway": "10.77.1.1/16"}],
            "IPv6Data": [{"AddressSpace": "rustbridge-local", "Pool": "fd00:77::/64", "Gateway": "fd00:77::1/64"}],
            "Options": {
                "com.docker.network.enable_ipv6": true,
                "com.docker.network.generic": {
                    "com.docker.network.driver.mtu": "1400",
                    "com.docker.network.bridge.enable_icc": "false",
                    "com.docker.network.host_ipv4": "127.0.0.1",
                    "com.docker.network.container_iface_prefix": "fix",
                    "com.docker.network.bridge.gateway_mode_ipv6": "routed",
                    "com.docker.network.bridge.trusted_host_interfaces": "lo:fixture0"
                }
            }
        })))
        .await
        .unwrap();
    // Network B: internal, a chosen bridge name, masquerade off.
    plugin
        .create_network(req(json!({
            "NetworkID": NET_B,
            "IPv4Data": [{"AddressSpace": "rustbridge-local", "Pool": b4.pool, "Gateway": b_gateway.address}],
            "IPv6Data": [],
            "Options": {
                "com.docker.network.internal": true,
                "com.docker.network.generic": {
                    "com.docker.network.bridge.name": "rbfixture-b",
                    "com.docker.network.bridge.enable_ip_masquerade": "false",
                    "com.docker.network.bridge.host_binding_ipv4": "127.0.0.1"
                }
            }
        })))
        .await
        .unwrap();
    // Network C: an adopted bridge with an isolated IPv4 gateway mode.
    plugin
        .create_network(req(json!({
            "NetworkID": NET_C,
            "IPv4Data": [{"AddressSpace": "rustbridge-global", "Pool": "192.168.77.0/24", "Gateway": "192.168.77.1/24"}],
            "IPv6Data": [],
            "Options": {"com.docker.network.generic": {"bridge": "brfixture0", "com.docker.network.bridge.gateway_mode_ipv4": "isolated"}}
        })))
        .await
        .unwrap();

    // Endpoint 1 on A: both families, a MAC given, ports published, a driver option, joined.
    let portmap = json!([
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080},
        {"Proto": 17, "IP": "", "Port": 53, "HostIP": "127.0.0.1", "HostPort": 15353, "HostPortEnd": 15353},
        {"Proto": 132, "IP": "", "Port": 9000, "HostIP": "", "HostPort": 19000, "HostPortEnd": 19010}
    ]);
    let exposed = json!([{"Proto": 6, "Port": 80}, {"Proto": 17, "Port": 53}, {"Proto": 132, "Port": 9000}]);
    plugin
        .create_endpoint(req(json!({
            "NetworkID": NET_A,
            "EndpointID": EP_1,
            "Interface": {"Address": e1_v4.address, "AddressIPv6": e1_v6.address, "MacAddress": "02:42:0a:4d:01:02"},
            "Options": {
                "com.docker.network.endpoint.exposedports": exposed,
                "com.docker.network.portmap": portmap,
                "com.example.fixture": "kept",
                "com.example.number": 7
            }
        })))
        .await
        .unwrap();
    plugin
        .join(req(json!({"NetworkID": NET_A, "EndpointID": EP_1, "SandboxKey": "/var/run/docker/netns/fixture1", "Options": {}})))
        .await
        .unwrap();
    plugin
        .program_external_connectivity(req(json!({
            "NetworkID": NET_A,
            "EndpointID": EP_1,
            "Options": {"com.docker.network.endpoint.exposedports": exposed, "com.docker.network.portmap": portmap}
        })))
        .await
        .unwrap();
    // Endpoint 2 on A: IPv4 only, MAC chosen by the plugin, not joined.
    plugin
        .create_endpoint(req(json!({
            "NetworkID": NET_A,
            "EndpointID": EP_2,
            "Interface": {"Address": e2_v4.address, "AddressIPv6": "", "MacAddress": ""},
            "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}
        })))
        .await
        .unwrap();
    // Endpoint 3 on B: joined, nothing published.
    plugin
        .create_endpoint(req(json!({
            "NetworkID": NET_B,
            "EndpointID": EP_3,
            "Interface": {"Address": e3_v4.address, "AddressIPv6": "", "MacAddress": "02:42:ac:10:00:03"},
            "Options": {}
        })))
        .await
        .unwrap();
    plugin
        .join(req(json!({"NetworkID": NET_B, "EndpointID": EP_3, "SandboxKey": "/var/run/docker/netns/fixture3", "Options": {}})))
        .await
        .unwrap();
    drop(plugin);

    let snapshot = Store::open(&work).unwrap().load().unwrap();
    println!("{snapshot:#?}");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(work.join(DB_FILE), out.join("state-v0.redb")).unwrap();
    std::fs::remove_dir_all(&work).unwrap();
}
