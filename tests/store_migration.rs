//! Plugin upgrades must never lose networks: `tests/fixtures/state-v0.redb` is a
//! state database written by the release before the store had a schema
//! version (made by `examples/make_state_v0.rs` at commit 9c2142c, driving
//! that release's own calls on the fakes). Opening it with this build must
//! migrate it and keep every network, endpoint, pool, address and cursor with
//! the same values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};
use serde_json::json;

use rustbridge::api::{PortBinding, RequestAddressRequest, TransportPort};
use rustbridge::dataplane::fake::FakeDataPlane;
use rustbridge::driver::Plugin;
use rustbridge::firewall::{FakeFirewall, FwPort, Proto};
use rustbridge::ipam::{PoolRecord, default_pools};
use rustbridge::options::{GatewayMode, NetworkOptions};
use rustbridge::state::{DB_FILE, EndpointRecord, NetworkRecord, SCHEMA_VERSION, Snapshot, Store, SubnetRecord};

const NET_A: &str = "a0a0a0a0a0a01111111111111111111111111111111111111111111111111111";
const NET_B: &str = "b0b0b0b0b0b02222222222222222222222222222222222222222222222222222";
const NET_C: &str = "c0c0c0c0c0c03333333333333333333333333333333333333333333333333333";
const EP_1: &str = "e1e1e1e1e1e14444444444444444444444444444444444444444444444444444";
const EP_2: &str = "e2e2e2e2e2e25555555555555555555555555555555555555555555555555555";
const EP_3: &str = "e3e3e3e3e3e36666666666666666666666666666666666666666666666666666";
const POOL_A4: &str = "rustbridge-local/10.77.0.0/16/10.77.1.0/24";
const POOL_A6: &str = "rustbridge-local/fd00:77::/64";
const POOL_B4: &str = "rustbridge-local/10.210.0.0/24";
const POOL_C4: &str = "rustbridge-global/192.168.77.0/24";

/// A copy of the fixture in a directory removed on drop: the fixture itself is never opened.
struct Copy(PathBuf);

impl Copy {
    fn new() -> Copy {
        let dir = std::env::temp_dir().join(format!(
            "rustbridge-store-migration-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixture(), dir.join(DB_FILE)).unwrap();
        Copy(dir)
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v0.redb")
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

fn expected_networks() -> Vec<NetworkRecord> {
    vec![
        NetworkRecord {
            id: NET_A.into(),
            bridge: "rb-a0a0a0a0a0a0".into(),
            bridge_created: true,
            options: NetworkOptions {
                mtu: 1400,
                mtu_explicit: true,
                iface_prefix: "fix".into(),
                enable_icc: false,
                host_ipv4: Some(ip("127.0.0.1")),
                gateway_mode_ipv6: GatewayMode::Routed,
                trusted_host_interfaces: vec!["lo".into(), "fixture0".into()],
                enable_ipv6: true,
                ..NetworkOptions::default()
            },
            ipv4: vec![SubnetRecord { pool: net("10.77.0.0/16"), gateway: Some(net("10.77.1.1/16")) }],
            ipv6: vec![SubnetRecord { pool: net("fd00:77::/64"), gateway: Some(net("fd00:77::1/64")) }],
            added_addresses: vec![],
        },
        NetworkRecord {
            id: NET_B.into(),
            bridge: "rbfixture-b".into(),
            bridge_created: true,
            options: NetworkOptions {
                bridge_name: Some("rbfixture-b".into()),
                enable_ip_masquerade: false,
                host_binding_ipv4: Some(ip("127.0.0.1")),
                internal: true,
                ..NetworkOptions::default()
            },
            ipv4: vec![SubnetRecord { pool: net("10.210.0.0/24"), gateway: Some(net("10.210.0.1/24")) }],
            ipv6: vec![],
            added_addresses: vec![],
        },
        NetworkRecord {
            id: NET_C.into(),
            bridge: "brfixture0".into(),
            bridge_created: false,
            options: NetworkOptions {
                bridge_name: Some("brfixture0".into()),
                gateway_mode_ipv4: GatewayMode::Isolated,
                ..NetworkOptions::default()
            },
            ipv4: vec![SubnetRecord { pool: net("192.168.77.0/24"), gateway: None }],
            ipv6: vec![],
            // Written before the plugin recorded what it added to an adopted bridge: nothing.
            added_addresses: vec![],
        },
    ]
}

fn binding(proto: u8, port: u16, host_ip: &str, host_port: u16, host_port_end: u16) -> PortBinding {
    PortBinding { proto, ip: String::new(), port, host_ip: host_ip.into(), host_port, host_port_end }
}

fn published(proto: Proto, host_ip: Option<&str>, host_port: u16, container_ip: &str, container_port: u16) -> FwPort {
    FwPort { proto, host_ip: host_ip.map(ip), host_port, container_ip: ip(container_ip), container_port }
}

fn expected_endpoints() -> Vec<EndpointRecord> {
    let none = |id: &str, network: &str, address: &str, mac: &str, joined: bool| EndpointRecord {
        id: id.into(),
        network_id: network.into(),
        address: Some(net(address)),
        address_v6: None,
        mac: mac.into(),
        host_veth: format!("rbh-{}", &id[..11]),
        container_veth: format!("rbc-{}", &id[..11]),
        joined,
        port_bindings: vec![],
        exposed_ports: vec![],
        published: vec![],
        driver_options: BTreeMap::new(),
    };
    vec![
        EndpointRecord {
            id: EP_1.into(),
            network_id: NET_A.into(),
            address: Some(net("10.77.1.0/16")),
            address_v6: Some(net("fd00:77::2/64")),
            mac: "02:42:0a:4d:01:02".into(),
            host_veth: "rbh-e1e1e1e1e1e".into(),
            container_veth: "rbc-e1e1e1e1e1e".into(),
            joined: true,
            port_bindings: vec![
                binding(6, 80, "", 18080, 18080),
                binding(17, 53, "127.0.0.1", 15353, 15353),
                binding(132, 9000, "", 19000, 19010),
            ],
            exposed_ports: vec![
                TransportPort { proto: 6, port: 80 },
                TransportPort { proto: 17, port: 53 },
                TransportPort { proto: 132, port: 9000 },
            ],
            published: vec![
                published(Proto::Tcp, None, 18080, "10.77.1.0", 80),
                published(Proto::Tcp, None, 18080, "fd00:77::2", 80),
                published(Proto::Udp, Some("127.0.0.1"), 15353, "10.77.1.0", 53),
                published(Proto::Sctp, None, 19000, "10.77.1.0", 9000),
                published(Proto::Sctp, None, 19000, "fd00:77::2", 9000),
            ],
            driver_options: BTreeMap::from([
                ("com.example.fixture".to_string(), json!("kept")),
                ("com.example.number".to_string(), json!(7)),
            ]),
        },
        none(EP_2, NET_A, "10.77.1.200/16", "ee:59:e7:44:89:f0", false),
        none(EP_3, NET_B, "10.210.0.2/24", "02:42:ac:10:00:03", true),
    ]
}

fn pool(id: &str, space: &str, pool: &str, sub_pool: Option<&str>, v6: bool, auto: bool) -> PoolRecord {
    PoolRecord { id: id.into(), address_space: space.into(), pool: net(pool), sub_pool: sub_pool.map(net), v6, auto }
}

fn expected_pools() -> Vec<PoolRecord> {
    vec![
        pool(POOL_C4, "rustbridge-global", "192.168.77.0/24", None, false, false),
        pool(POOL_B4, "rustbridge-local", "10.210.0.0/24", None, false, true),
        pool(POOL_A4, "rustbridge-local", "10.77.0.0/16", Some("10.77.1.0/24"), false, false),
        pool(POOL_A6, "rustbridge-local", "fd00:77::/64", None, true, false),
    ]
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, std::net::IpAddr)> {
    list.iter().map(|(p, a)| (p.to_string(), ip(a))).collect()
}

fn assert_fixture_values(snap: &Snapshot) {
    assert_eq!(snap.networks, expected_networks());
    assert_eq!(snap.endpoints, expected_endpoints());
    assert_eq!(snap.pools, expected_pools());
    // 10.77.1.2 was handed out and released again: gone, but the cursor remembers it.
    assert_eq!(
        snap.addresses,
        pairs(&[
            (POOL_C4, "192.168.77.1"),
            (POOL_B4, "10.210.0.1"),
            (POOL_B4, "10.210.0.2"),
            (POOL_A4, "10.77.1.0"),
            (POOL_A4, "10.77.1.1"),
            (POOL_A4, "10.77.1.200"),
            (POOL_A6, "fd00:77::1"),
            (POOL_A6, "fd00:77::2"),
        ])
    );
    assert_eq!(snap.cursors, pairs(&[(POOL_B4, "10.210.0.2"), (POOL_A4, "10.77.1.2"), (POOL_A6, "fd00:77::2")]));
}

fn schema_version_of(path: &Path) -> Option<String> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta: TableDefinition<&str, &str> = TableDefinition::new("meta");
    let table = txn.open_table(meta).ok()?;
    table.get("schema_version").unwrap().map(|v| v.value().to_string())
}

#[test]
fn the_unversioned_fixture_is_migrated_without_losing_anything() {
    let copy = Copy::new();
    let db = copy.0.join(DB_FILE);
    assert_eq!(schema_version_of(&db), None, "the fixture must be the unversioned format");
    let store = Store::open(&copy.0).expect("open the previous release's database");
    assert_fixture_values(&store.load().unwrap());
    drop(store);
    assert_eq!(schema_version_of(&db), Some(SCHEMA_VERSION.to_string()));
    // Opened again in the current schema: still the same values.
    assert_fixture_values(&Store::open(&copy.0).unwrap().load().unwrap());
}

#[tokio::test]
async fn the_migrated_state_serves_calls_where_the_old_release_left_off() {
    let copy = Copy::new();
    let plugin = Plugin::load(
        Store::open(&copy.0).unwrap(),
        Arc::new(FakeDataPlane::default()),
        Arc::new(FakeFirewall::default()),
        default_pools(),
    )
    .expect("the migrated state loads into the plugin");
    let request = |pool: &str, address: &str| -> RequestAddressRequest {
        serde_json::from_value(json!({"PoolID": pool, "Address": address})).unwrap()
    };
    // Allocated addresses stay taken.
    let err = plugin.request_address(request(POOL_A4, "10.77.1.200")).await.unwrap_err();
    assert!(err.to_string().contains("10.77.1.200"), "{err}");
    // Next-fit goes on after each pool's cursor.
    assert_eq!(plugin.request_address(request(POOL_A4, "")).await.unwrap().address, "10.77.1.3/16");
    assert_eq!(plugin.request_address(request(POOL_A6, "")).await.unwrap().address, "fd00:77::3/64");
    assert_eq!(plugin.request_address(request(POOL_B4, "")).await.unwrap().address, "10.210.0.3/24");
}
