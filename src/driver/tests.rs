//! Driver logic against the in-memory data plane and firewall, with a real
//! store in a throwaway directory.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;
use crate::api::*;
use crate::dataplane::LinkKind;
use crate::ipam::LOCAL_ADDRESS_SPACE;
use crate::testing::FakeLink;

// ---------------------------------------------------------------- harness

/// The in-process plugin of `crate::testing`, with the driver tests' own helpers.
use crate::testing::FakePlugin as Harness;

impl Harness {
    fn p(&self) -> &Plugin {
        self.plugin()
    }

    fn p_arc(&self) -> Arc<Plugin> {
        self.plugin().clone()
    }

    fn link(&self, name: &str) -> Option<FakeLink> {
        self.fake.link(name)
    }

    async fn network_ids(&self) -> BTreeSet<String> {
        self.p().state.lock().await.networks.keys().cloned().collect()
    }

    async fn endpoint_ids(&self) -> BTreeSet<String> {
        self.p().state.lock().await.endpoints.keys().cloned().collect()
    }

    async fn network(&self, id: &str) -> NetworkRecordView {
        let state = self.p().state.lock().await;
        let n = state.networks.get(id).unwrap_or_else(|| panic!("network {id} not in state"));
        NetworkRecordView { bridge: n.bridge.clone(), bridge_created: n.bridge_created }
    }

    async fn endpoint_joined(&self, id: &str) -> Option<bool> {
        self.p().state.lock().await.endpoints.get(id).map(|e| e.joined)
    }

    // ---- protocol calls built from JSON, as dockerd sends them

    async fn create_network(&self, body: Value) -> Result<()> {
        self.p().create_network(from_json(body)).await
    }

    async fn create_endpoint(&self, body: Value) -> Result<CreateEndpointResponse> {
        self.p().create_endpoint(from_json(body)).await
    }

    async fn join(&self, net: &str, ep: &str) -> Result<JoinResponse> {
        self.p()
            .join(from_json(json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": "/var/run/docker/netns/0123456789ab", "Options": {}})))
            .await
    }

    async fn leave(&self, net: &str, ep: &str) -> Result<()> {
        self.p().leave(from_json(json!({"NetworkID": net, "EndpointID": ep}))).await
    }

    async fn delete_endpoint(&self, net: &str, ep: &str) -> Result<()> {
        self.p().delete_endpoint(from_json(json!({"NetworkID": net, "EndpointID": ep}))).await
    }

    async fn delete_network(&self, net: &str) -> Result<()> {
        self.p().delete_network(from_json(json!({"NetworkID": net}))).await
    }

    async fn request_pool(&self, pool: &str, sub_pool: &str, v6: bool) -> Result<RequestPoolResponse> {
        self.p()
            .request_pool(from_json(json!({"AddressSpace": LOCAL_ADDRESS_SPACE, "Pool": pool, "SubPool": sub_pool, "Options": {}, "V6": v6})))
            .await
    }

    async fn request_address(&self, pool_id: &str, address: &str) -> Result<RequestAddressResponse> {
        self.p().request_address(from_json(json!({"PoolID": pool_id, "Address": address, "Options": null}))).await
    }

    async fn request_gateway(&self, pool_id: &str) -> Result<RequestAddressResponse> {
        self.p()
            .request_address(from_json(json!({
                "PoolID": pool_id, "Address": "",
                "Options": {"RequestAddressType": "com.docker.network.gateway"}
            })))
            .await
    }

    async fn release_address(&self, pool_id: &str, address: &str) -> Result<()> {
        self.p().release_address(from_json(json!({"PoolID": pool_id, "Address": address}))).await
    }

    async fn release_pool(&self, pool_id: &str) -> Result<()> {
        self.p().release_pool(from_json(json!({"PoolID": pool_id}))).await
    }
}

struct NetworkRecordView {
    bridge: String,
    bridge_created: bool,
}

fn from_json<T: DeserializeOwned>(body: Value) -> T {
    serde_json::from_value(body).expect("test request decodes")
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// 64 hex characters whose first 12 differ per `n` (bridge names use 12).
fn net_id(n: u64) -> String {
    format!("ab{n:010x}{}", "f".repeat(52))
}

/// 64 hex characters whose first 11 differ per `n` (veth names use 11).
fn ep_id(n: u64) -> String {
    format!("e{n:010x}{}", "0".repeat(53))
}

fn expected_bridge(network_id: &str) -> String {
    crate::names::bridge_name(network_id)
}

fn expected_veths(endpoint_id: &str) -> (String, String) {
    crate::names::veth_names(endpoint_id)
}

fn v4_network(id: &str, pool: &str, gateway: &str, generic: Value) -> Value {
    json!({
        "NetworkID": id,
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": pool, "Gateway": gateway}],
        "IPv6Data": [],
        "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": generic}
    })
}

fn dual_network(id: &str, v4: (&str, &str), v6: (&str, &str)) -> Value {
    json!({
        "NetworkID": id,
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": v4.0, "Gateway": v4.1}],
        "IPv6Data": [{"AddressSpace": "LocalDefault", "Pool": v6.0, "Gateway": v6.1}],
        "Options": {"com.docker.network.enable_ipv6": true, "com.docker.network.generic": {}}
    })
}

fn endpoint(net: &str, ep: &str, address: &str, address_v6: &str, mac: &str) -> Value {
    json!({
        "NetworkID": net,
        "EndpointID": ep,
        "Interface": {"Address": address, "AddressIPv6": address_v6, "MacAddress": mac},
        "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}
    })
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let parts: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16).expect("hex octet")).collect();
    parts.try_into().unwrap_or_else(|_| panic!("{mac:?} is not 6 octets"))
}

fn returned_mac(resp: &CreateEndpointResponse) -> String {
    let iface = resp.interface.as_ref().expect("an Interface in the answer");
    iface.mac_address.clone()
}

fn addr_of(resp: &RequestAddressResponse) -> IpAddr {
    resp.address.parse::<IpNet>().unwrap_or_else(|_| panic!("{:?} is not CIDR", resp.address)).addr()
}

// ---------------------------------------------------------------- CreateNetwork

#[tokio::test]
async fn create_network_makes_bridge_with_gateway_default_mtu_and_firewall() {
    let h = Harness::new("create");
    let id = net_id(1);
    h.create_network(v4_network(&id, "10.50.0.0/24", "10.50.0.1/24", json!({}))).await.unwrap();

    let bridge = expected_bridge(&id);
    let link = h.link(&bridge).unwrap_or_else(|| panic!("no {bridge}; links: {:?}", h.fake.names()));
    assert_eq!(link.kind, LinkKind::Bridge);
    assert_eq!(link.mtu, 1500);
    assert_eq!(link.addresses, vec![net("10.50.0.1/24")]);
    assert!(link.up);
    assert_eq!(h.fake.names(), vec![bridge.clone()], "only the bridge was made");

    let applied = h.fw.applied.lock().unwrap().clone();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].bridge, bridge);
    assert_eq!(applied[0].subnets, vec![net("10.50.0.0/24")]);
    assert!(!applied[0].internal);

    let record = h.network(&id).await;
    assert_eq!(record.bridge, bridge);
    assert!(record.bridge_created);
}

#[tokio::test]
async fn create_dual_stack_network_puts_both_gateways_on_the_bridge() {
    let h = Harness::new("dual");
    let id = net_id(2);
    h.create_network(dual_network(&id, ("10.52.0.0/24", "10.52.0.1/24"), ("fd00:52::/64", "fd00:52::1/64")))
        .await
        .unwrap();
    let link = h.link(&expected_bridge(&id)).unwrap();
    let addresses: BTreeSet<IpNet> = link.addresses.iter().copied().collect();
    assert_eq!(addresses, BTreeSet::from([net("10.52.0.1/24"), net("fd00:52::1/64")]));
    let applied = h.fw.applied.lock().unwrap().clone();
    assert_eq!(applied[0].subnets, vec![net("10.52.0.0/24"), net("fd00:52::/64")]);
}

#[tokio::test]
async fn mtu_option_sets_bridge_mtu_in_both_spellings() {
    let h = Harness::new("mtu");
    let short = net_id(3);
    let long = net_id(4);
    h.create_network(v4_network(&short, "10.53.0.0/24", "10.53.0.1/24", json!({"mtu": "1400"}))).await.unwrap();
    h.create_network(v4_network(
        &long,
        "10.54.0.0/24",
        "10.54.0.1/24",
        json!({"com.docker.network.driver.mtu": "9000"}),
    ))
    .await
    .unwrap();
    assert_eq!(h.link(&expected_bridge(&short)).unwrap().mtu, 1400);
    assert_eq!(h.link(&expected_bridge(&long)).unwrap().mtu, 9000);
}

#[tokio::test]
async fn bridge_name_option_names_the_bridge() {
    let h = Harness::new("brname");
    let id = net_id(5);
    h.create_network(v4_network(
        &id,
        "10.55.0.0/24",
        "10.55.0.1/24",
        json!({"com.docker.network.bridge.name": "br-custom0"}),
    ))
    .await
    .unwrap();
    let link = h.link("br-custom0").expect("custom bridge made");
    assert_eq!(link.kind, LinkKind::Bridge);
    assert_eq!(link.addresses, vec![net("10.55.0.1/24")]);
    assert!(h.link(&expected_bridge(&id)).is_none(), "no default-named bridge as well");
    assert_eq!(h.fw_bridges(), vec!["br-custom0".to_string()]);
    let record = h.network(&id).await;
    assert_eq!(record.bridge, "br-custom0");
    assert!(record.bridge_created);
    // A bridge the plugin made is removed with the network.
    h.delete_network(&id).await.unwrap();
    assert!(h.link("br-custom0").is_none());
}

#[tokio::test]
async fn preexisting_bridge_is_adopted_and_kept_without_our_address() {
    let h = Harness::new("adopt");
    h.fake.links.lock().unwrap().insert(
        "br-pre0".to_string(),
        FakeLink { addresses: vec![net("192.0.2.1/24")], up: true, ..FakeLink::bridge() },
    );
    let id = net_id(6);
    h.create_network(v4_network(&id, "10.56.0.0/24", "10.56.0.1/24", json!({"bridge": "br-pre0"}))).await.unwrap();
    assert!(!h.network(&id).await.bridge_created, "existing bridge must be adopted, not owned");
    let link = h.link("br-pre0").unwrap();
    assert!(link.addresses.contains(&net("10.56.0.1/24")), "{:?}", link.addresses);
    assert!(link.addresses.contains(&net("192.0.2.1/24")));

    // An endpoint on it, so that DeleteNetwork has something to clean as well.
    let ep = ep_id(1);
    h.create_endpoint(endpoint(&id, &ep, "10.56.0.2/24", "", "")).await.unwrap();
    h.join(&id, &ep).await.unwrap();

    h.delete_network(&id).await.unwrap();
    let link = h.link("br-pre0").expect("adopted bridge must survive DeleteNetwork");
    assert_eq!(link.addresses, vec![net("192.0.2.1/24")], "only our gateway address is removed");
    assert_eq!(h.fake.names(), vec!["br-pre0".to_string()], "the endpoint's veths are gone");
    assert!(h.fw.applied.lock().unwrap().is_empty());
    assert!(h.network_ids().await.is_empty());
}

#[tokio::test]
async fn create_network_twice_is_idempotent() {
    let mut h = Harness::new("twice");
    let id = net_id(7);
    let body = v4_network(&id, "10.57.0.0/24", "10.57.0.1/24", json!({}));
    h.create_network(body.clone()).await.unwrap();
    h.create_network(body.clone()).await.unwrap();
    assert_eq!(h.links_of_kind(LinkKind::Bridge), BTreeSet::from([expected_bridge(&id)]));
    assert_eq!(h.fw_bridges(), vec![expected_bridge(&id)]);
    assert_eq!(h.network_ids().await, BTreeSet::from([id.clone()]));
    // Also after a restart (dockerd retrying a call whose answer was lost).
    h.reload();
    h.create_network(body).await.unwrap();
    assert_eq!(h.links_of_kind(LinkKind::Bridge).len(), 1);
    assert_eq!(h.network_ids().await.len(), 1);
}

#[tokio::test]
async fn create_network_again_with_other_settings_is_refused() {
    let h = Harness::new("twice-other");
    let id = net_id(70);
    h.create_network(v4_network(&id, "10.57.1.0/24", "10.57.1.1/24", json!({}))).await.unwrap();
    let err =
        h.create_network(v4_network(&id, "10.57.1.0/24", "10.57.1.1/24", json!({"mtu": "1400"}))).await.unwrap_err();
    assert!(err.0.contains("other settings"), "{err}");
    assert_eq!(h.link(&expected_bridge(&id)).unwrap().mtu, 1500, "the first network is untouched");
}

#[tokio::test]
async fn adopted_bridge_keeps_its_mtu_unless_one_is_asked_for() {
    let h = Harness::new("adopt-mtu");
    for name in ["br-keep0", "br-set0"] {
        h.fake.links.lock().unwrap().insert(name.to_string(), FakeLink { mtu: 9000, up: true, ..FakeLink::bridge() });
    }
    h.create_network(v4_network(&net_id(71), "10.57.2.0/24", "10.57.2.1/24", json!({"bridge": "br-keep0"})))
        .await
        .unwrap();
    assert_eq!(h.link("br-keep0").unwrap().mtu, 9000);
    h.create_network(v4_network(
        &net_id(72),
        "10.57.3.0/24",
        "10.57.3.1/24",
        json!({"bridge": "br-set0", "mtu": "1400"}),
    ))
    .await
    .unwrap();
    assert_eq!(h.link("br-set0").unwrap().mtu, 1400);
}

#[tokio::test]
async fn docker_bridge_names_are_refused() {
    let h = Harness::new("docker-names");
    for name in ["docker0", "br-0123456789ab", "rb-0123456789ab"] {
        let err = h
            .create_network(v4_network(&net_id(73), "10.57.4.0/24", "10.57.4.1/24", json!({"bridge": name})))
            .await
            .unwrap_err();
        assert!(err.0.contains("reserved"), "{name}: {err}");
    }
    assert!(h.fake.names().is_empty());
}

#[tokio::test]
async fn teardown_of_unknown_ids_is_ok_and_changes_nothing() {
    let h = Harness::new("unknown");
    let id = net_id(8);
    h.create_network(v4_network(&id, "10.58.0.0/24", "10.58.0.1/24", json!({}))).await.unwrap();
    let pool = h.request_pool("10.59.0.0/24", "", false).await.unwrap();
    let links_before = h.fake.names();

    let other_net = net_id(9);
    let other_ep = ep_id(9);
    h.delete_network(&other_net).await.unwrap();
    h.delete_endpoint(&other_net, &other_ep).await.unwrap();
    h.delete_endpoint(&id, &other_ep).await.unwrap();
    h.leave(&id, &other_ep).await.unwrap();
    h.p().revoke_external_connectivity(from_json(json!({"NetworkID": id, "EndpointID": other_ep}))).await.unwrap();
    h.release_address("rustbridge-local/10.200.0.0/24", "10.200.0.5").await.unwrap();
    h.release_address(&pool.pool_id, "10.59.0.77").await.unwrap(); // known pool, address never given
    h.release_pool("rustbridge-local/10.200.0.0/24").await.unwrap();
    h.release_pool("no-such-pool").await.unwrap();

    assert_eq!(h.fake.names(), links_before);
    assert_eq!(h.network_ids().await, BTreeSet::from([id]));
    assert!(h.p().state.lock().await.ipam.pool(&pool.pool_id).is_some());
    // Releasing twice is fine too.
    h.release_pool(&pool.pool_id).await.unwrap();
    h.release_pool(&pool.pool_id).await.unwrap();
}

#[tokio::test]
async fn bad_create_network_input_changes_nothing() {
    let mut h = Harness::new("bad");
    let taken = net_id(10);
    let named = net_id(11);
    h.create_network(v4_network(&taken, "10.60.0.0/24", "10.60.0.1/24", json!({}))).await.unwrap();
    h.create_network(v4_network(&named, "10.61.0.0/24", "10.61.0.1/24", json!({"bridge": "br-taken0"}))).await.unwrap();
    let existing = BTreeSet::from([taken.clone(), named.clone()]);

    let new = net_id(12);
    let pool = "10.62.0.0/24";
    let gw = "10.62.0.1/24";
    let cases: Vec<(&str, Value, Vec<String>)> = vec![
        ("missing NetworkID", json!({"IPv4Data": [{"Pool": pool, "Gateway": gw}]}), names(&["NetworkID"])),
        ("empty NetworkID", v4_network("", pool, gw, json!({})), names(&["NetworkID"])),
        ("non-hex NetworkID", v4_network(&"xyz".repeat(21), pool, gw, json!({})), names(&["NetworkID"])),
        ("short NetworkID", v4_network("abc", pool, gw, json!({})), names(&["NetworkID"])),
        ("pool not CIDR", v4_network(&new, "10.62.0.0", "", json!({})), names(&["IPv4Data[0].Pool", "10.62.0.0"])),
        ("pool garbage", v4_network(&new, "banana", "", json!({})), names(&["IPv4Data[0].Pool", "banana"])),
        ("pool with host bits", v4_network(&new, "10.62.0.5/24", "", json!({})), names(&["IPv4Data[0].Pool"])),
        ("v6 pool in IPv4Data", v4_network(&new, "fd00:62::/64", "", json!({})), names(&["IPv4Data[0].Pool"])),
        (
            "gateway outside pool",
            v4_network(&new, pool, "10.63.0.1/24", json!({})),
            names(&["IPv4Data[0].Gateway", "10.63.0.1"]),
        ),
        ("gateway garbage", v4_network(&new, pool, "gw", json!({})), names(&["IPv4Data[0].Gateway"])),
        (
            "mtu not a number",
            v4_network(&new, pool, gw, json!({"mtu": "abc"})),
            names(&["com.docker.network.driver.mtu", "abc"]),
        ),
        (
            "mtu too big",
            v4_network(&new, pool, gw, json!({"com.docker.network.driver.mtu": "70000"})),
            names(&["com.docker.network.driver.mtu"]),
        ),
        (
            "mtu too small",
            v4_network(&new, pool, gw, json!({"com.docker.network.driver.mtu": "10"})),
            names(&["com.docker.network.driver.mtu"]),
        ),
        (
            "unknown -o option",
            v4_network(&new, pool, gw, json!({"com.example.unknown": "1"})),
            names(&["com.example.unknown"]),
        ),
        ("unknown short option", v4_network(&new, pool, gw, json!({"foo": "bar"})), names(&["foo"])),
        (
            "subnet containing another network's",
            v4_network(&new, "10.60.0.0/16", "10.60.1.1/16", json!({})),
            names(&["10.60.0.0/16", "10.60.0.0/24", "overlaps"]),
        ),
        (
            "subnet inside another network's",
            v4_network(&new, "10.60.0.128/25", "10.60.0.129/25", json!({})),
            names(&["10.60.0.128/25", "overlaps"]),
        ),
        (
            "bridge name of another network",
            v4_network(&new, pool, gw, json!({"com.docker.network.bridge.name": "br-taken0"})),
            names(&["br-taken0"]),
        ),
        (
            "default bridge name of another network",
            v4_network(&new, pool, gw, json!({"bridge": expected_bridge(&taken)})),
            vec![expected_bridge(&taken)],
        ),
    ];

    for (what, body, needles) in cases {
        let links = h.fake.names();
        let applied = h.fw.applied.lock().unwrap().clone();
        let syncs = *h.fw.syncs.lock().unwrap();
        let err = match h.create_network(body).await {
            Ok(()) => panic!("{what}: accepted"),
            Err(e) => e,
        };
        for needle in &needles {
            assert!(err.0.contains(needle.as_str()), "{what}: error {:?} does not name {needle:?}", err.0);
        }
        assert_eq!(h.fake.names(), links, "{what}: links changed");
        assert_eq!(*h.fw.applied.lock().unwrap(), applied, "{what}: firewall changed");
        assert_eq!(*h.fw.syncs.lock().unwrap(), syncs, "{what}: firewall touched");
        assert_eq!(h.network_ids().await, existing, "{what}: state changed");
    }
    assert!(h.link(&expected_bridge(&new)).is_none());
    h.reload();
    assert_eq!(h.network_ids().await, existing, "store holds a refused network");
    // The same network with good input goes through.
    h.create_network(v4_network(&new, pool, gw, json!({}))).await.unwrap();
}

#[tokio::test]
async fn injected_bridge_failure_records_nothing() {
    let mut h = Harness::new("fail-bridge");
    let id = net_id(13);
    let body = v4_network(&id, "10.64.0.0/24", "10.64.0.1/24", json!({}));
    *h.fake.fail_next.lock().unwrap() = Some("ensure_bridge");
    let err = h.create_network(body.clone()).await.unwrap_err();
    assert!(err.0.contains(&expected_bridge(&id)), "{err}");
    assert!(h.fake.names().is_empty());
    assert!(h.fw.applied.lock().unwrap().is_empty());
    assert!(h.network_ids().await.is_empty());
    h.reload();
    assert!(h.network_ids().await.is_empty(), "store holds a failed network");
    // The failure was one-shot: a retry works.
    h.create_network(body).await.unwrap();
    assert!(h.link(&expected_bridge(&id)).is_some());
}

#[tokio::test]
async fn a_call_hands_the_firewall_only_the_network_it_changes() {
    let h = Harness::new("fw-delta");
    for i in 0..5 {
        network_with_subnet(&h, 90 + i, &format!("10.{}.0.0/24", 90 + i), &format!("10.{}.0.1/24", 90 + i)).await;
    }
    let last = h.fw.changes.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last, [expected_bridge(&net_id(94))], "a network more: that network only");
    h.delete_network(&net_id(92)).await.unwrap();
    let last = h.fw.changes.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last, [expected_bridge(&net_id(92))], "a network less: that network only");
    assert_eq!(h.fw.applied.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn firewall_failure_deletes_the_bridge_again() {
    let mut h = Harness::new("fail-fw");
    let keep = net_id(14);
    h.create_network(v4_network(&keep, "10.65.0.0/24", "10.65.0.1/24", json!({}))).await.unwrap();

    let id = net_id(15);
    *h.fw.fail_next.lock().unwrap() = true;
    let err = h.create_network(v4_network(&id, "10.66.0.0/24", "10.66.0.1/24", json!({}))).await.unwrap_err();
    assert!(err.0.contains("injected"), "{err}");
    assert!(h.link(&expected_bridge(&id)).is_none(), "bridge left behind: {:?}", h.fake.names());
    assert_eq!(h.fake.names(), vec![expected_bridge(&keep)]);
    assert_eq!(h.fw_bridges(), vec![expected_bridge(&keep)]);
    assert_eq!(h.network_ids().await, BTreeSet::from([keep.clone()]));
    h.reload();
    assert_eq!(h.network_ids().await, BTreeSet::from([keep]));
}

#[tokio::test]
async fn firewall_failure_on_adopted_bridge_keeps_it_without_our_address() {
    let h = Harness::new("fail-fw-adopt");
    h.fake.links.lock().unwrap().insert("br-pre1".to_string(), FakeLink { up: true, ..FakeLink::bridge() });
    let id = net_id(16);
    *h.fw.fail_next.lock().unwrap() = true;
    h.create_network(v4_network(&id, "10.67.0.0/24", "10.67.0.1/24", json!({"bridge": "br-pre1"}))).await.unwrap_err();
    let link = h.link("br-pre1").expect("adopted bridge kept");
    assert!(link.addresses.is_empty(), "{:?}", link.addresses);
    assert!(h.network_ids().await.is_empty());
}

// ---------------------------------------------------------------- CreateEndpoint

async fn network_with_subnet(h: &Harness, n: u64, pool: &str, gateway: &str) -> String {
    let id = net_id(n);
    h.create_network(v4_network(&id, pool, gateway, json!({}))).await.unwrap();
    id
}

#[tokio::test]
async fn create_endpoint_returns_a_local_unicast_mac_only_when_none_was_given() {
    let h = Harness::new("mac");
    let id = network_with_subnet(&h, 20, "10.70.0.0/24", "10.70.0.1/24").await;

    let a = h.create_endpoint(endpoint(&id, &ep_id(1), "10.70.0.2/24", "", "")).await.unwrap();
    let mac_a = returned_mac(&a);
    let bytes = mac_bytes(&mac_a);
    assert_eq!(bytes[0] & 0x02, 0x02, "{mac_a} not locally administered");
    assert_eq!(bytes[0] & 0x01, 0x00, "{mac_a} is multicast");
    // Address was set by dockerd: it must not be echoed.
    assert_eq!(serde_json::to_value(&a).unwrap(), json!({"Interface": {"MacAddress": mac_a}}));

    let b = h.create_endpoint(endpoint(&id, &ep_id(2), "10.70.0.3/24", "", "")).await.unwrap();
    assert_ne!(returned_mac(&b), mac_a, "two endpoints got the same MAC");

    let given = h.create_endpoint(endpoint(&id, &ep_id(3), "10.70.0.4/24", "", "02:42:0a:46:00:04")).await.unwrap();
    assert!(given.interface.is_none());
    assert_eq!(serde_json::to_value(&given).unwrap(), json!({}));
    let state = h.p().state.lock().await;
    assert_eq!(state.endpoints[&ep_id(3)].mac, "02:42:0a:46:00:04");
    assert_eq!(state.endpoints[&ep_id(1)].mac, mac_a);
}

/// Issue 11, item 11: dockerd gives a removed container's address to the next
/// one at once. With a new random MAC the host's neighbour entry (and other
/// containers') kept the old MAC and the new container's published port did
/// not answer for up to a minute; the MAC now follows the address.
#[tokio::test]
async fn an_address_given_again_comes_with_the_same_mac() {
    let h = Harness::new("mac-reuse");
    let id = network_with_subnet(&h, 23, "10.74.0.0/24", "10.74.0.1/24").await;
    let first = returned_mac(&h.create_endpoint(endpoint(&id, &ep_id(1), "10.74.0.2/24", "", "")).await.unwrap());
    assert_eq!(first, "02:42:0a:4a:00:02");
    h.delete_endpoint(&id, &ep_id(1)).await.unwrap();
    let again = returned_mac(&h.create_endpoint(endpoint(&id, &ep_id(2), "10.74.0.2/24", "", "")).await.unwrap());
    assert_eq!(again, first, "the same address must come with the same MAC");

    // IPv6 only: the last four bytes of the address.
    let v6 = net_id(24);
    h.create_network(json!({
        "NetworkID": v6,
        "IPv4Data": [],
        "IPv6Data": [{"AddressSpace": "LocalDefault", "Pool": "fd00:74::/64", "Gateway": "fd00:74::1/64"}],
        "Options": {"com.docker.network.enable_ipv6": true, "com.docker.network.generic": {}}
    }))
    .await
    .unwrap();
    let six = returned_mac(&h.create_endpoint(endpoint(&v6, &ep_id(3), "", "fd00:74::1:a0b/64", "")).await.unwrap());
    assert_eq!(six, "02:42:00:01:0a:0b");

    // A MAC another endpoint has already (given by the user) is not handed out twice.
    h.create_endpoint(endpoint(&id, &ep_id(4), "10.74.0.9/24", "", "02:42:0a:4a:00:05")).await.unwrap();
    let clash = returned_mac(&h.create_endpoint(endpoint(&id, &ep_id(5), "10.74.0.5/24", "", "")).await.unwrap());
    assert_ne!(clash, "02:42:0a:4a:00:05");
    let bytes = mac_bytes(&clash);
    assert_eq!(bytes[0] & 0x03, 0x02, "{clash} is not a locally administered unicast MAC");
}

#[tokio::test]
async fn repeated_create_endpoint_returns_the_same_mac() {
    let mut h = Harness::new("mac-again");
    let id = network_with_subnet(&h, 21, "10.71.0.0/24", "10.71.0.1/24").await;
    let body = endpoint(&id, &ep_id(1), "10.71.0.2/24", "", "");
    let first = returned_mac(&h.create_endpoint(body.clone()).await.unwrap());
    let second = returned_mac(&h.create_endpoint(body.clone()).await.unwrap());
    assert_eq!(first, second);
    assert_eq!(h.endpoint_ids().await.len(), 1);
    h.reload();
    assert_eq!(returned_mac(&h.create_endpoint(body).await.unwrap()), first);
}

/// The random source sits behind the data plane: replaying it makes the
/// next MAC collide with an endpoint's, and the driver draws again.
#[tokio::test]
async fn a_generated_mac_never_repeats_another_endpoint_s() {
    let h = Harness::new("mac-collision");
    let id = network_with_subnet(&h, 22, "10.72.0.0/24", "10.72.0.1/24").await;
    let seed = *h.fake.random_state.lock().unwrap();
    let first = returned_mac(&h.create_endpoint(endpoint(&id, &ep_id(1), "10.72.0.2/24", "", "")).await.unwrap());
    *h.fake.random_state.lock().unwrap() = seed; // the same bytes again
    let second = returned_mac(&h.create_endpoint(endpoint(&id, &ep_id(2), "10.72.0.3/24", "", "")).await.unwrap());
    assert_ne!(first, second);
    assert_eq!(mac_bytes(&second)[0] & 0x03, 0x02, "locally administered unicast: {second}");
}

#[tokio::test]
async fn create_endpoint_refuses_foreign_addresses_and_unknown_networks() {
    let mut h = Harness::new("ep-bad");
    let id = network_with_subnet(&h, 22, "10.72.0.0/24", "10.72.0.1/24").await;

    let err = h.create_endpoint(endpoint(&id, &ep_id(1), "10.73.0.2/24", "", "")).await.unwrap_err();
    assert!(err.0.contains("Interface.Address") && err.0.contains("10.73.0.2"), "{err}");
    let err = h.create_endpoint(endpoint(&id, &ep_id(2), "10.72.0.2/24", "fd00:72::2/64", "")).await.unwrap_err();
    assert!(err.0.contains("Interface.AddressIPv6"), "{err}");
    let err = h.create_endpoint(endpoint(&id, &ep_id(3), "not-an-ip", "", "")).await.unwrap_err();
    assert!(err.0.contains("Interface.Address"), "{err}");
    let err = h.create_endpoint(endpoint(&id, &ep_id(4), "10.72.0.4/24", "", "zz:zz")).await.unwrap_err();
    assert!(err.0.contains("Interface.MacAddress"), "{err}");
    let err = h.create_endpoint(endpoint(&net_id(99), &ep_id(5), "10.72.0.5/24", "", "")).await.unwrap_err();
    assert!(err.0.contains("not found"), "{err}");
    let err = h.create_endpoint(endpoint(&id, "nothex", "10.72.0.6/24", "", "")).await.unwrap_err();
    assert!(err.0.contains("EndpointID"), "{err}");

    assert!(h.endpoint_ids().await.is_empty());
    h.reload();
    assert!(h.endpoint_ids().await.is_empty(), "store holds a refused endpoint");
    assert_eq!(h.fake.names(), vec![expected_bridge(&id)]);
}

// ---------------------------------------------------------------- Join / Leave

#[tokio::test]
async fn join_makes_a_veth_pair_on_the_bridge_and_answers_with_the_gateway() {
    let mut h = Harness::new("join");
    let id = net_id(30);
    h.create_network(v4_network(&id, "10.80.0.0/24", "10.80.0.1/24", json!({"mtu": "1450"}))).await.unwrap();
    let ep = ep_id(30);
    h.create_endpoint(endpoint(&id, &ep, "10.80.0.2/24", "", "")).await.unwrap();
    let resp = h.join(&id, &ep).await.unwrap();

    let (host, peer) = expected_veths(&ep);
    let bridge = expected_bridge(&id);
    let host_link = h.link(&host).unwrap_or_else(|| panic!("no {host}: {:?}", h.fake.names()));
    assert_eq!(host_link.kind, LinkKind::Veth);
    assert_eq!(host_link.controller.as_deref(), Some(bridge.as_str()));
    assert!(host_link.up);
    assert_eq!(host_link.mtu, 1450);
    assert_eq!(host_link.peer.as_deref(), Some(peer.as_str()));
    let peer_link = h.link(&peer).expect("peer end exists");
    assert_eq!(peer_link.mtu, 1450);
    assert_eq!(peer_link.controller, None, "peer is not on the bridge");

    assert_eq!(resp.interface_name.src_name, peer);
    assert_eq!(resp.interface_name.dst_prefix, "eth");
    assert_eq!(resp.gateway, "10.80.0.1");
    let body = serde_json::to_value(&resp).unwrap();
    assert_eq!(body["Gateway"], "10.80.0.1");
    assert!(body.get("GatewayIPv6").is_none(), "{body}");
    assert_eq!(h.endpoint_joined(&ep).await, Some(true));

    // A repeated Join starts from a clean pair rather than failing on "File exists".
    h.join(&id, &ep).await.unwrap();
    assert!(h.link(&host).is_some() && h.link(&peer).is_some());

    // Leave removes both ends and persists "not joined".
    h.leave(&id, &ep).await.unwrap();
    assert!(h.link(&host).is_none() && h.link(&peer).is_none(), "{:?}", h.fake.names());
    assert_eq!(h.endpoint_joined(&ep).await, Some(false));
    h.leave(&id, &ep).await.unwrap(); // twice is fine
    h.reload();
    assert_eq!(h.endpoint_joined(&ep).await, Some(false));

    // DeleteEndpoint removes the record, durably.
    h.delete_endpoint(&id, &ep).await.unwrap();
    assert!(h.endpoint_ids().await.is_empty());
    h.reload();
    assert!(h.endpoint_ids().await.is_empty());
    assert_eq!(h.fake.names(), vec![bridge]);
}

/// The kernel work of a first Join is one pair made on its bridge: the data
/// plane is asked once (tests/dataplane_netns.rs counts its netlink requests).
/// A pair a crash left under the endpoint's names is looked at, and replaced
/// only when it is this state's.
#[tokio::test]
async fn a_first_join_asks_the_data_plane_once() {
    let h = Harness::new("join-count");
    let id = net_id(36);
    h.create_network(v4_network(&id, "10.80.6.0/24", "10.80.6.1/24", json!({}))).await.unwrap();
    let (ep, again) = (ep_id(36), ep_id(37));
    for e in [&ep, &again] {
        h.create_endpoint(endpoint(&id, e, "", "", "")).await.unwrap();
    }
    h.fake.clear_calls();
    let commits = h.p().store.durable_commits();
    h.join(&id, &ep).await.unwrap();
    let (host, _) = expected_veths(&ep);
    assert_eq!(h.fake.calls(), vec![format!("create_veth {host}")]);
    // Its record does not wait for the disk (the start-up pass recovers it from the pair).
    assert_eq!(h.p().store.durable_commits(), commits, "durable commits of a first Join");
    assert_eq!(h.endpoint_joined(&ep).await, Some(true));
    h.p().flush().unwrap();
    assert_eq!(h.p().store.durable_commits(), commits + 1, "a flush puts it on disk");

    // A leftover pair of this state under the names (a crash before the commit).
    let (left_host, left_peer) = expected_veths(&again);
    let instance = Some(h.p().instance_id().to_string());
    {
        let mut links = h.fake.links.lock().unwrap();
        let veth = |peer: &str, owner| FakeLink {
            kind: LinkKind::Veth,
            peer: Some(peer.to_string()),
            owner,
            ..FakeLink::bridge()
        };
        links.insert(left_host.clone(), veth(&left_peer, instance.clone()));
        links.insert(left_peer.clone(), veth(&left_host, None));
    }
    h.fake.clear_calls();
    h.join(&id, &again).await.unwrap();
    assert_eq!(h.fake.calls_of("create_veth"), vec![left_host.clone(), left_host.clone()], "{:?}", h.fake.calls());
    assert_eq!(h.fake.calls_of("delete_link"), vec![left_host.clone()]);
    assert_eq!(h.link(&left_host).unwrap().controller, Some(expected_bridge(&id)));
}

/// The ~20 ms a veth deletion takes in the kernel are spent outside the
/// state lock: other calls go on meanwhile. The record is committed first.
#[tokio::test]
async fn leave_deletes_the_veth_after_releasing_the_state_lock() {
    use futures::FutureExt;
    let h = Harness::new("leave-unlocked");
    let id = net_id(38);
    h.create_network(v4_network(&id, "10.80.8.0/24", "10.80.8.1/24", json!({}))).await.unwrap();
    let ep = ep_id(38);
    h.create_endpoint(endpoint(&id, &ep, "", "", "")).await.unwrap();
    h.join(&id, &ep).await.unwrap();
    let (host, peer) = expected_veths(&ep);
    h.fake.delay("delete_link_index", std::time::Duration::from_secs(3600));
    let plugin = h.p_arc();
    let body = json!({"NetworkID": id, "EndpointID": ep});
    let leave = tokio::spawn(async move { plugin.leave(from_json(body)).await });
    while h.fake.calls_of("delete_link_index").is_empty() {
        tokio::task::yield_now().await;
    }
    let state = h.p().lock_state().now_or_never().expect("the state lock is free while the veth is deleted");
    assert!(!state.endpoints[&ep].joined, "committed before the deletion");
    drop(state);
    assert!(h.link(&host).is_some(), "still being deleted");
    h.fake.delay("delete_link_index", std::time::Duration::ZERO);
    leave.abort();
    let _ = leave.await;
    h.delete_endpoint(&id, &ep).await.unwrap();
    assert!(h.link(&host).is_none() && h.link(&peer).is_none(), "{:?}", h.fake.names());
    assert_eq!(h.fake.calls_of("delete_link_index"), vec![host.clone(), host.clone()]);
}

#[tokio::test]
async fn join_honours_the_container_iface_prefix() {
    let h = Harness::new("prefix");
    let id = net_id(31);
    h.create_network(v4_network(
        &id,
        "10.81.0.0/24",
        "10.81.0.1/24",
        json!({"com.docker.network.container_iface_prefix": "rb"}),
    ))
    .await
    .unwrap();
    let ep = ep_id(31);
    h.create_endpoint(endpoint(&id, &ep, "10.81.0.2/24", "", "")).await.unwrap();
    let resp = h.join(&id, &ep).await.unwrap();
    assert_eq!(resp.interface_name.dst_prefix, "rb");
}

#[tokio::test]
async fn join_on_internal_network_has_no_gateway_key() {
    let h = Harness::new("internal");
    let id = net_id(32);
    let mut body = dual_network(&id, ("10.82.0.0/24", "10.82.0.1/24"), ("fd00:82::/64", "fd00:82::1/64"));
    body["Options"]["com.docker.network.internal"] = json!(true);
    h.create_network(body).await.unwrap();
    assert!(h.fw.applied.lock().unwrap()[0].internal);
    let ep = ep_id(32);
    h.create_endpoint(endpoint(&id, &ep, "10.82.0.2/24", "fd00:82::2/64", "")).await.unwrap();
    let resp = h.join(&id, &ep).await.unwrap();
    let body = serde_json::to_value(&resp).unwrap();
    assert!(body.get("Gateway").is_none(), "internal network answered a gateway: {body}");
    assert!(body.get("GatewayIPv6").is_none(), "internal network answered a gateway: {body}");
    assert_eq!(body["InterfaceName"]["SrcName"], expected_veths(&ep).1);
}

#[tokio::test]
async fn join_on_dual_stack_network_answers_both_gateways_without_prefix() {
    let h = Harness::new("join-dual");
    let id = net_id(33);
    h.create_network(dual_network(&id, ("10.83.0.0/24", "10.83.0.1/24"), ("fd00:83::/64", "fd00:83::1/64")))
        .await
        .unwrap();
    let ep = ep_id(33);
    h.create_endpoint(endpoint(&id, &ep, "10.83.0.2/24", "fd00:83::2/64", "")).await.unwrap();
    let resp = h.join(&id, &ep).await.unwrap();
    assert_eq!(resp.gateway, "10.83.0.1");
    assert_eq!(resp.gateway_ipv6, "fd00:83::1");
}

#[tokio::test]
async fn join_on_ipv6_only_network_answers_only_the_ipv6_gateway() {
    let h = Harness::new("join-v6");
    let id = net_id(34);
    h.create_network(json!({
        "NetworkID": id,
        "IPv4Data": [],
        "IPv6Data": [{"AddressSpace": "LocalDefault", "Pool": "fd00:84::/64", "Gateway": "fd00:84::1/64"}],
        "Options": {"com.docker.network.enable_ipv4": false, "com.docker.network.enable_ipv6": true, "com.docker.network.generic": {}}
    }))
    .await
    .unwrap();
    let ep = ep_id(34);
    h.create_endpoint(endpoint(&id, &ep, "", "fd00:84::2/64", "")).await.unwrap();
    let body = serde_json::to_value(h.join(&id, &ep).await.unwrap()).unwrap();
    assert!(body.get("Gateway").is_none(), "{body}");
    assert_eq!(body["GatewayIPv6"], "fd00:84::1");
}

#[tokio::test]
async fn delete_network_with_endpoints_removes_their_veths() {
    let mut h = Harness::new("del-net");
    let id = network_with_subnet(&h, 35, "10.85.0.0/24", "10.85.0.1/24").await;
    let other = network_with_subnet(&h, 36, "10.86.0.0/24", "10.86.0.1/24").await;
    let eps: Vec<String> = (1..=3).map(ep_id).collect();
    for (i, ep) in eps.iter().enumerate() {
        h.create_endpoint(endpoint(&id, ep, &format!("10.85.0.{}/24", i + 2), "", "")).await.unwrap();
    }
    h.join(&id, &eps[0]).await.unwrap();
    h.join(&id, &eps[1]).await.unwrap(); // eps[2] created but never joined
    let survivor = ep_id(4);
    h.create_endpoint(endpoint(&other, &survivor, "10.86.0.2/24", "", "")).await.unwrap();
    h.join(&other, &survivor).await.unwrap();

    h.delete_network(&id).await.unwrap();
    let (sh, sp) = expected_veths(&survivor);
    assert_eq!(h.fake.names().into_iter().collect::<BTreeSet<_>>(), BTreeSet::from([expected_bridge(&other), sh, sp]));
    assert_eq!(h.endpoint_ids().await, BTreeSet::from([survivor.clone()]));
    assert_eq!(h.fw_bridges(), vec![expected_bridge(&other)]);
    h.reload();
    assert_eq!(h.endpoint_ids().await, BTreeSet::from([survivor]));
    assert_eq!(h.network_ids().await, BTreeSet::from([other]));
    // Deleting it again is fine.
    h.delete_network(&id).await.unwrap();
}

#[tokio::test]
async fn failed_join_leaves_the_endpoint_unjoined() {
    let mut h = Harness::new("join-fail");
    let id = network_with_subnet(&h, 37, "10.87.0.0/24", "10.87.0.1/24").await;
    let ep = ep_id(37);
    h.create_endpoint(endpoint(&id, &ep, "10.87.0.2/24", "", "")).await.unwrap();
    *h.fake.fail_next.lock().unwrap() = Some("create_veth");
    let err = h.join(&id, &ep).await.unwrap_err();
    assert!(err.0.contains("injected"), "{err}");
    assert_eq!(h.endpoint_joined(&ep).await, Some(false));
    assert_eq!(h.fake.names(), vec![expected_bridge(&id)], "no veth left behind");
    h.reload();
    assert_eq!(h.endpoint_joined(&ep).await, Some(false));
    // dockerd rolls a failed Join back with DeleteEndpoint.
    h.delete_endpoint(&id, &ep).await.unwrap();
    assert!(h.endpoint_ids().await.is_empty());
}

#[tokio::test]
async fn join_of_unknown_endpoint_fails() {
    let h = Harness::new("join-unknown");
    let id = network_with_subnet(&h, 38, "10.88.0.0/24", "10.88.0.1/24").await;
    let err = h.join(&id, &ep_id(38)).await.unwrap_err();
    assert!(err.0.contains("not found"), "{err}");
    assert_eq!(h.fake.names(), vec![expected_bridge(&id)]);
}

// ---------------------------------------------------------------- persistence

#[tokio::test]
async fn state_survives_a_restart_and_ipam_continues_without_duplicates() {
    let mut h = Harness::new("persist");
    let pool = h.request_pool("", "", false).await.unwrap();
    let pool_v6 = h.request_pool("", "", true).await.unwrap();
    let gw = h.request_gateway(&pool.pool_id).await.unwrap();
    let gw6 = h.request_gateway(&pool_v6.pool_id).await.unwrap();
    let id = net_id(40);
    h.create_network(dual_network(&id, (&pool.pool, &gw.address), (&pool_v6.pool, &gw6.address))).await.unwrap();

    let mut given: Vec<IpAddr> = vec![addr_of(&gw), addr_of(&gw6)];
    let mut macs = BTreeMap::new();
    for n in 1..=4u64 {
        let a = h.request_address(&pool.pool_id, "").await.unwrap();
        let a6 = h.request_address(&pool_v6.pool_id, "").await.unwrap();
        given.extend([addr_of(&a), addr_of(&a6)]);
        let resp = h.create_endpoint(endpoint(&id, &ep_id(n), &a.address, &a6.address, "")).await.unwrap();
        macs.insert(ep_id(n), returned_mac(&resp));
        if n % 2 == 0 {
            h.join(&id, &ep_id(n)).await.unwrap();
        }
    }
    // One address released before the restart.
    let released = given.pop().unwrap();
    h.release_address(&pool_v6.pool_id, &released.to_string()).await.unwrap();

    let (networks, endpoints, pools) = {
        let state = h.p().state.lock().await;
        let pools: Vec<_> = state.ipam.pools().cloned().collect();
        (state.networks.clone(), state.endpoints.clone(), pools)
    };
    assert_eq!(pools.len(), 2);

    h.reload();
    {
        let state = h.p().state.lock().await;
        assert_eq!(state.networks, networks);
        assert_eq!(state.endpoints, endpoints);
        assert_eq!(state.ipam.pools().cloned().collect::<Vec<_>>(), pools);
        for addr in &given {
            let pool_id = if addr.is_ipv6() { &pool_v6.pool_id } else { &pool.pool_id };
            assert!(state.ipam.addresses(pool_id).unwrap().is_allocated(*addr), "{addr} lost in the restart");
        }
        assert!(!state.ipam.addresses(&pool_v6.pool_id).unwrap().is_allocated(released));
        for (ep, mac) in &macs {
            assert_eq!(&state.endpoints[ep].mac, mac);
        }
    }
    // The joined endpoints still have their veths (the kernel kept them) and can rejoin.
    for n in [2u64, 4] {
        let (host, _) = expected_veths(&ep_id(n));
        assert!(h.link(&host).is_some());
    }
    h.join(&id, &ep_id(1)).await.unwrap();

    // IPAM continues: new addresses collide with nothing held.
    for _ in 0..6 {
        given.push(addr_of(&h.request_address(&pool.pool_id, "").await.unwrap()));
        given.push(addr_of(&h.request_address(&pool_v6.pool_id, "").await.unwrap()));
    }
    let distinct: BTreeSet<_> = given.iter().collect();
    assert_eq!(distinct.len(), given.len(), "duplicate address handed out: {given:?}");
    // An explicit request for an address held before the restart is refused.
    let held = addr_of(&gw).to_string();
    let err = h.request_address(&pool.pool_id, &held).await.unwrap_err();
    assert!(err.0.contains(&held), "{err}");
    // A new pool does not collide with a restored one.
    let third = h.request_pool("", "", false).await.unwrap();
    assert!(!net(&third.pool).contains(&net(&pool.pool).addr()) && !net(&pool.pool).contains(&net(&third.pool).addr()));
}

// ---------------------------------------------------------------- IPAM

#[tokio::test]
async fn request_pool_avoids_host_prefixes_and_never_repeats_itself() {
    let h = Harness::new("pools");
    let host: Vec<IpNet> = vec![net("10.210.0.0/24"), net("10.210.1.0/24"), net("10.210.2.128/25"), net("0.0.0.0/0")];
    *h.fake.host_prefixes.lock().unwrap() = host.clone();

    let overlaps = |a: IpNet, b: IpNet| a.contains(&b.network()) || b.contains(&a.network());
    let mut held: Vec<IpNet> = vec![];
    for _ in 0..3 {
        let resp = h.request_pool("", "", false).await.unwrap();
        let pool = net(&resp.pool);
        for prefix in host.iter().filter(|p| p.prefix_len() > 0) {
            assert!(!overlaps(pool, *prefix), "{pool} overlaps host prefix {prefix}");
        }
        for other in &held {
            assert!(!overlaps(pool, *other), "{pool} handed out twice");
        }
        assert!(resp.pool_id.contains(&resp.pool), "{} / {}", resp.pool_id, resp.pool);
        held.push(pool);
    }

    // dockerd repeats an identical request when it dislikes the answer (and may
    // release it first): the answer must differ each time.
    let first = h.request_pool("", "", false).await.unwrap();
    h.release_pool(&first.pool_id).await.unwrap();
    let second = h.request_pool("", "", false).await.unwrap();
    assert_ne!(first.pool, second.pool);

    let v6 = h.request_pool("", "", true).await.unwrap();
    assert!(net(&v6.pool).addr().is_ipv6(), "{}", v6.pool);
    let v6b = h.request_pool("", "", true).await.unwrap();
    assert_ne!(v6.pool, v6b.pool);
}

#[tokio::test]
async fn gateway_explicit_and_duplicate_addresses() {
    let h = Harness::new("addrs");
    let pool = h.request_pool("10.90.0.0/24", "", false).await.unwrap();
    assert_eq!(pool.pool, "10.90.0.0/24");
    assert_eq!(h.request_gateway(&pool.pool_id).await.unwrap().address, "10.90.0.1/24");
    assert_eq!(h.request_address(&pool.pool_id, "10.90.0.77").await.unwrap().address, "10.90.0.77/24");
    let err = h.request_address(&pool.pool_id, "10.90.0.77").await.unwrap_err();
    assert!(err.0.contains("10.90.0.77"), "duplicate error does not name the address: {err}");
    let err = h.request_address(&pool.pool_id, "10.90.0.1").await.unwrap_err();
    assert!(err.0.contains("10.90.0.1"), "{err}");
    // An automatic address skips both.
    let auto = h.request_address(&pool.pool_id, "").await.unwrap();
    assert_eq!(auto.address, "10.90.0.2/24");
    // Outside the pool, or not an address.
    assert!(h.request_address(&pool.pool_id, "10.91.0.5").await.is_err());
    let err = h.request_address(&pool.pool_id, "ten").await.unwrap_err();
    assert!(err.0.contains("Address"), "{err}");

    let v6 = h.request_pool("fd00:90::/64", "", true).await.unwrap();
    assert_eq!(h.request_gateway(&v6.pool_id).await.unwrap().address, "fd00:90::1/64");
}

#[tokio::test]
async fn released_address_is_handed_out_again_eventually() {
    let h = Harness::new("reuse");
    // A /29 has 6 usable addresses: .1 to .6.
    let pool = h.request_pool("10.92.0.0/29", "", false).await.unwrap();
    let mut got = BTreeSet::new();
    for _ in 0..6 {
        got.insert(h.request_address(&pool.pool_id, "").await.unwrap().address);
    }
    assert_eq!(got.len(), 6);
    let err = h.request_address(&pool.pool_id, "").await.unwrap_err();
    assert!(err.0.contains("10.92.0.0/29"), "{err}");
    h.release_address(&pool.pool_id, "10.92.0.3").await.unwrap();
    assert_eq!(h.request_address(&pool.pool_id, "").await.unwrap().address, "10.92.0.3/29");

    // In a bigger pool the released address comes back after at most one round.
    let big = h.request_pool("10.93.0.0/28", "", false).await.unwrap();
    let first = h.request_address(&big.pool_id, "").await.unwrap().address;
    h.release_address(&big.pool_id, first.split('/').next().unwrap()).await.unwrap();
    let mut seen = vec![];
    for _ in 0..14 {
        let a = h.request_address(&big.pool_id, "").await.unwrap().address;
        if a == first {
            break;
        }
        seen.push(a);
    }
    assert!(seen.len() < 14, "{first} never came back: {seen:?}");
}

#[tokio::test]
async fn release_pool_forgets_it() {
    let mut h = Harness::new("relpool");
    let pool = h.request_pool("10.94.0.0/24", "10.94.0.128/25", false).await.unwrap();
    // Automatic addresses come from the sub-pool.
    let a = addr_of(&h.request_address(&pool.pool_id, "").await.unwrap());
    assert!(net("10.94.0.128/25").contains(&a), "{a}");
    h.release_pool(&pool.pool_id).await.unwrap();
    let err = h.request_address(&pool.pool_id, "").await.unwrap_err();
    assert!(err.0.contains(&pool.pool_id), "{err}");
    h.reload();
    assert!(h.request_address(&pool.pool_id, "").await.is_err(), "pool came back after a restart");
    // The same pool can be requested again, with none of its old addresses held.
    let again = h.request_pool("10.94.0.0/24", "10.94.0.128/25", false).await.unwrap();
    h.request_address(&again.pool_id, &a.to_string()).await.unwrap();
}

#[tokio::test]
async fn explicit_pool_overlapping_a_held_one_is_refused() {
    let h = Harness::new("overlap-pool");
    h.request_pool("10.95.0.0/24", "", false).await.unwrap();
    let err = h.request_pool("10.95.0.0/16", "", false).await.unwrap_err();
    assert!(err.0.contains("10.95.0.0/16"), "{err}");
    let err = h.request_pool("10.95.0.0", "", false).await.unwrap_err();
    assert!(err.0.contains("Pool"), "{err}");
}

// ---------------------------------------------------------------- concurrency

/// Calls that meet at the state lock share one durable commit (group
/// commit), each answered only once its change is on disk: 20 DeleteEndpoint
/// calls in line (a bulk `docker rm -f`) make one fsync, not 20.
#[tokio::test]
async fn concurrent_calls_share_one_durable_commit_and_answer_once_on_disk() {
    let mut h = Harness::new("group-commit");
    let id = network_with_subnet(&h, 60, "10.97.0.0/24", "10.97.0.1/24").await;
    let n = 20u64;
    for e in 1..=n {
        h.create_endpoint(endpoint(&id, &ep_id(e), &format!("10.97.0.{}/24", e + 1), "", "")).await.unwrap();
    }
    let plugin = h.p_arc();
    let held = plugin.lock_state().await;
    let before = plugin.store.durable_commits();
    let calls: Vec<_> = (1..=n)
        .map(|e| {
            let (plugin, id) = (plugin.clone(), id.clone());
            tokio::spawn(async move {
                plugin.delete_endpoint(from_json(json!({"NetworkID": id, "EndpointID": ep_id(e)}))).await?;
                // Answered: on disk.
                Ok::<_, PluginError>(plugin.store.grouped_pending())
            })
        })
        .collect();
    while plugin.in_line.load(std::sync::atomic::Ordering::SeqCst) < n as usize {
        tokio::task::yield_now().await;
    }
    drop(held);
    for call in calls {
        assert_eq!(call.await.expect("task panicked").expect("DeleteEndpoint"), 0, "answered before on disk");
    }
    let fsyncs = plugin.store.durable_commits() - before;
    assert_eq!(fsyncs, 1, "durable commits of {n} DeleteEndpoint calls in line");
    drop(plugin);
    h.reload();
    assert!(h.endpoint_ids().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_endpoints_join_with_distinct_veths_and_macs() {
    let h = Harness::new("concurrent");
    let id = network_with_subnet(&h, 50, "10.96.0.0/24", "10.96.0.1/24").await;
    let plugin = h.plugin().clone();

    let tasks: Vec<_> = (1..=50u64)
        .map(|n| {
            let plugin = plugin.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let ep = ep_id(n);
                let created = plugin.create_endpoint(from_json(endpoint(&id, &ep, &format!("10.96.0.{}/24", n + 1), "", ""))).await?;
                let joined = plugin
                    .join(from_json(json!({"NetworkID": id, "EndpointID": ep, "SandboxKey": "/var/run/docker/netns/x", "Options": {}})))
                    .await?;
                Ok::<_, PluginError>((ep, returned_mac(&created), joined.interface_name.src_name))
            })
        })
        .collect();
    let mut macs = BTreeSet::new();
    let mut peers = BTreeSet::new();
    for task in tasks {
        let (ep, mac, peer) = task.await.expect("task panicked").expect("call failed");
        assert_eq!(peer, expected_veths(&ep).1);
        macs.insert(mac);
        peers.insert(peer);
    }
    assert_eq!(macs.len(), 50, "MACs repeat");
    assert_eq!(peers.len(), 50, "veths repeat");

    let bridge = expected_bridge(&id);
    let links = h.fake.links.lock().unwrap().clone();
    let veths: Vec<_> = links.iter().filter(|(_, l)| l.kind == LinkKind::Veth).collect();
    assert_eq!(veths.len(), 100);
    let on_bridge = veths.iter().filter(|(_, l)| l.controller.as_deref() == Some(bridge.as_str())).count();
    assert_eq!(on_bridge, 50);
    let state = plugin.state.lock().await;
    assert_eq!(state.endpoints.len(), 50);
    assert!(state.endpoints.values().all(|e| e.joined));
}

/// A repeated Join (dockerd retrying) first deletes the existing pair; when making the
/// new pair fails, the record must not go on claiming a pair that no longer exists.
#[tokio::test]
async fn failed_rejoin_does_not_leave_the_endpoint_marked_joined() {
    let mut h = Harness::new("rejoin-fail");
    let id = network_with_subnet(&h, 39, "10.89.0.0/24", "10.89.0.1/24").await;
    let ep = ep_id(39);
    h.create_endpoint(endpoint(&id, &ep, "10.89.0.2/24", "", "")).await.unwrap();
    h.join(&id, &ep).await.unwrap();
    *h.fake.fail_next.lock().unwrap() = Some("create_veth");
    h.join(&id, &ep).await.unwrap_err();
    let (host, _) = expected_veths(&ep);
    assert!(h.link(&host).is_none(), "the old pair was deleted before the retry");
    assert_eq!(h.endpoint_joined(&ep).await, Some(false), "record claims a veth pair that is gone");
    h.reload();
    assert_eq!(h.endpoint_joined(&ep).await, Some(false));
}

// ---------------------------------------------------------------- kernel ownership (issue 11: 5, 7, 10)

fn discard_log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// Runs the start-up reconcile of the loaded plugin.
async fn reconcile_at_start(h: &Harness) {
    crate::reconcile::at_start(h.p(), &discard_log()).await.expect("start-up reconcile");
}

/// What dockerd does after Join: the peer moves into the container's namespace.
fn move_peer_into_container(h: &Harness, endpoint_id: &str) -> FakeLink {
    let (_, peer) = expected_veths(endpoint_id);
    h.fake.links.lock().unwrap().remove(&peer).expect("peer in the host")
}

fn v6_network(id: &str, pool: &str, gateway: &str) -> Value {
    json!({
        "NetworkID": id,
        "IPv4Data": [],
        "IPv6Data": [{"AddressSpace": "LocalDefault", "Pool": pool, "Gateway": gateway}],
        "Options": {"com.docker.network.enable_ipv6": true, "com.docker.network.generic": {}}
    })
}

#[tokio::test]
async fn route_localnet_only_on_bridges_whose_127_traffic_the_firewall_drops() {
    let h = Harness::new("localnet");
    let v6 = net_id(80);
    h.create_network(v6_network(&v6, "fd00:80::/64", "fd00:80::1/64")).await.unwrap();
    assert!(
        !h.link(&expected_bridge(&v6)).unwrap().route_localnet,
        "IPv6-only: no 127.0.0.0/8 drop, so no route_localnet"
    );
    let v4 = network_with_subnet(&h, 81, "10.81.0.0/24", "10.81.0.1/24").await;
    assert!(h.link(&expected_bridge(&v4)).unwrap().route_localnet);
    let fw = h.fw.applied.lock().unwrap().clone();
    let table = crate::firewall::nft::ruleset::build(&fw).unwrap();
    let localnet: Vec<&Vec<u8>> = table.elements[crate::firewall::nft::ruleset::LOCALNET].keys().collect();
    assert_eq!(localnet, [&crate::firewall::nft::ruleset::ifname(&expected_bridge(&v4))]);
}

#[tokio::test]
async fn adopted_bridge_keeps_the_address_it_had_before_the_network() {
    let h = Harness::new("adopt-own-ip");
    h.fake.links.lock().unwrap().insert(
        "br-host0".to_string(),
        FakeLink { addresses: vec![net("10.82.0.1/24"), net("192.0.2.9/24")], up: true, ..FakeLink::bridge() },
    );
    let id = net_id(82);
    h.create_network(v4_network(&id, "10.82.0.0/24", "10.82.0.1/24", json!({"bridge": "br-host0"}))).await.unwrap();
    h.delete_network(&id).await.unwrap();
    let link = h.link("br-host0").expect("adopted bridge stays");
    assert_eq!(link.addresses, [net("10.82.0.1/24"), net("192.0.2.9/24")], "the host's addresses stay");
    assert!(!link.route_localnet && link.owner.is_none(), "an adopted bridge is not marked or changed");
}

#[tokio::test]
async fn links_are_marked_with_the_state_databases_instance_id() {
    let h = Harness::new("marks");
    let id = network_with_subnet(&h, 83, "10.83.0.0/24", "10.83.0.1/24").await;
    let ep = ep_id(83);
    h.create_endpoint(endpoint(&id, &ep, "10.83.0.2/24", "", "")).await.unwrap();
    h.join(&id, &ep).await.unwrap();
    let instance = Some(h.p().store.instance_id().to_string());
    assert_eq!(h.link(&expected_bridge(&id)).unwrap().owner, instance);
    assert_eq!(h.link(&expected_veths(&ep).0).unwrap().owner, instance);
}

#[tokio::test]
async fn a_fresh_state_never_deletes_another_states_bridges_and_veths() {
    let first = Harness::new("fresh-a");
    let id = network_with_subnet(&first, 84, "10.84.0.0/24", "10.84.0.1/24").await;
    let (live, idle) = (ep_id(84), ep_id(85));
    for (ep, ip) in [(&live, "10.84.0.2/24"), (&idle, "10.84.0.3/24")] {
        first.create_endpoint(endpoint(&id, ep, ip, "", "")).await.unwrap();
        first.join(&id, ep).await.unwrap();
    }
    move_peer_into_container(&first, &live);
    // A second plugin on the same kernel with an empty database of its own.
    let dir = crate::testing::TempDir::new("fresh-b");
    let store = crate::state::Store::open(&dir.0).unwrap();
    let other = Plugin::load(store, first.fake.clone(), first.fw.clone(), crate::ipam::default_pools()).unwrap();
    crate::reconcile::at_start(&other, &discard_log()).await.unwrap();
    assert!(first.link(&expected_bridge(&id)).is_some(), "another state's bridge stays");
    assert!(first.link(&expected_veths(&live).0).is_some(), "another state's veth in a container stays");
    assert!(first.link(&expected_veths(&idle).0).is_some(), "another state's unused veth stays too");
}

#[tokio::test]
async fn own_leftovers_go_unless_in_use() {
    let mut h = Harness::new("leftovers");
    let id = network_with_subnet(&h, 86, "10.86.0.0/24", "10.86.0.1/24").await;
    let (live, idle) = (ep_id(86), ep_id(87));
    for (ep, ip) in [(&live, "10.86.0.2/24"), (&idle, "10.86.0.3/24")] {
        h.create_endpoint(endpoint(&id, ep, ip, "", "")).await.unwrap();
        h.join(&id, ep).await.unwrap();
    }
    move_peer_into_container(&h, &live);
    // The records are lost (as after a crash between kernel step and commit).
    h.p()
        .store
        .commit(vec![
            crate::state::Change::DeleteEndpoint(live.clone()),
            crate::state::Change::DeleteEndpoint(idle.clone()),
            crate::state::Change::DeleteNetwork(id.clone()),
        ])
        .unwrap();
    h.reload();
    reconcile_at_start(&h).await;
    assert!(h.link(&expected_veths(&idle).0).is_none(), "own unused veth removed");
    assert!(h.link(&expected_veths(&idle).1).is_none(), "with its peer");
    assert!(h.link(&expected_veths(&live).0).is_some(), "own veth whose peer is in a container stays");
    assert!(h.link(&expected_bridge(&id)).is_some(), "a bridge with a port in use stays");
    // Once the container is gone too, the next start removes both.
    h.fake.links.lock().unwrap().remove(&expected_veths(&live).0);
    h.reload();
    reconcile_at_start(&h).await;
    assert!(h.link(&expected_bridge(&id)).is_none(), "own bridge without ports removed");
}

#[tokio::test]
async fn veth_name_collision_is_refused_clearly_and_records_nothing() {
    let h = Harness::new("collide");
    let id = network_with_subnet(&h, 88, "10.88.0.0/24", "10.88.0.1/24").await;
    let first = format!("c0ffee12345{}", "a".repeat(53));
    let second = format!("c0ffee12345{}", "b".repeat(53));
    h.create_endpoint(endpoint(&id, &first, "10.88.0.2/24", "", "")).await.unwrap();
    let err = h.create_endpoint(endpoint(&id, &second, "10.88.0.3/24", "", "")).await.unwrap_err();
    assert!(err.0.contains("rbh-c0ffee12345") && err.0.contains("already used by endpoint c0ffee12345a"), "{err}");
    assert_eq!(h.endpoint_ids().await, BTreeSet::from([first]));
}

#[tokio::test]
async fn join_never_deletes_a_link_of_that_name_it_did_not_make() {
    let h = Harness::new("foreign-veth");
    let id = network_with_subnet(&h, 89, "10.89.1.0/24", "10.89.1.1/24").await;
    let ep = ep_id(89);
    h.create_endpoint(endpoint(&id, &ep, "10.89.1.2/24", "", "")).await.unwrap();
    let (host, peer) = expected_veths(&ep);
    let foreign = FakeLink {
        kind: LinkKind::Veth,
        peer: Some(peer.clone()),
        owner: Some("another-state".into()),
        ..FakeLink::bridge()
    };
    h.fake.links.lock().unwrap().insert(host.clone(), foreign.clone());
    let err = h.join(&id, &ep).await.unwrap_err();
    assert!(err.0.contains(&host) && err.0.contains("will not touch it"), "{err}");
    assert_eq!(h.link(&host), Some(foreign), "the foreign link is untouched");
    assert_eq!(h.endpoint_joined(&ep).await, Some(false));
}

#[tokio::test]
async fn endpoint_whose_container_is_gone_is_cleaned_once_unclaimed_for_the_grace() {
    let mut h = Harness::new("forgotten");
    let pool = h.request_pool("10.90.0.0/24", "", false).await.unwrap().pool_id;
    h.request_gateway(&pool).await.unwrap();
    let addr = addr_of(&h.request_address(&pool, "").await.unwrap());
    let id = net_id(90);
    h.create_network(v4_network(&id, "10.90.0.0/24", "10.90.0.1/24", json!({}))).await.unwrap();
    let ep = ep_id(90);
    h.create_endpoint(endpoint(&id, &ep, &format!("{addr}/24"), "", "")).await.unwrap();
    h.join(&id, &ep).await.unwrap();
    h.p()
        .program_external_connectivity(from_json(json!({
            "NetworkID": id, "EndpointID": ep,
            "Options": {"com.docker.network.portmap": [
                {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18090, "HostPortEnd": 18090}
            ]}
        })))
        .await
        .unwrap();
    assert_eq!(h.fw.applied.lock().unwrap()[0].ports.len(), 1);
    let peer = move_peer_into_container(&h, &ep);
    // While the container lives, a restart keeps everything.
    h.reload();
    reconcile_at_start(&h).await;
    assert_eq!(h.endpoint_joined(&ep).await, Some(true));
    // The container is removed while the plugin is away: dockerd moves the peer back.
    let (host, peer_name) = expected_veths(&ep);
    h.fake.links.lock().unwrap().insert(peer_name.clone(), peer);
    h.reload();
    reconcile_at_start(&h).await;
    assert_eq!(h.endpoint_joined(&ep).await, Some(true), "start-up only notes it (a Join may be in progress)");
    let start = std::time::Instant::now();
    crate::reconcile::pass_at(h.p(), &discard_log(), start).await.unwrap();
    assert_eq!(h.endpoint_joined(&ep).await, Some(true), "kept within the grace");
    crate::reconcile::pass_at(h.p(), &discard_log(), start + crate::reconcile::UNCLAIMED_GRACE).await.unwrap();
    assert!(h.endpoint_ids().await.is_empty(), "record removed");
    assert!(h.link(&host).is_none() && h.link(&peer_name).is_none(), "veth pair removed");
    assert!(h.fw.applied.lock().unwrap()[0].ports.is_empty(), "published port withdrawn");
    h.request_address(&pool, &addr.to_string()).await.expect("the address is free again");
    h.reload();
    assert!(h.endpoint_ids().await.is_empty(), "the removal is durable");
}

// ---------------------------------------------------------------- deadlines: answer in time or leave nothing

use std::time::Duration;

use crate::deadline::CallDeadline;

/// A call whose answer is due in 300 ms and which may commit until 100 ms before.
fn short_deadline() -> CallDeadline {
    CallDeadline::new(Duration::from_millis(300), Duration::from_millis(100))
}

/// Well past `short_deadline`.
const SLOW: Duration = Duration::from_millis(700);

#[tokio::test]
async fn create_network_slow_past_its_deadline_leaves_no_record_bridge_or_rule() {
    let mut h = Harness::new("deadline-create");
    let id = net_id(60);
    let body = v4_network(&id, "10.160.0.0/24", "10.160.0.1/24", json!({}));
    h.fake.delay("ensure_bridge", SLOW);
    let err = short_deadline().scope(h.create_network(body.clone())).await.unwrap_err();
    assert!(err.0.contains("left before the answer is due"), "{err}");
    let bridge = expected_bridge(&id);
    assert!(h.fake.calls().contains(&format!("ensure_bridge {bridge}")), "the slow step ran: {:?}", h.fake.calls());
    assert!(h.link(&bridge).is_none(), "bridge left behind: {:?}", h.fake.names());
    assert!(h.fake.calls().contains(&format!("delete_link {bridge}")), "{:?}", h.fake.calls());
    assert_eq!(*h.fw.syncs.lock().unwrap(), 0, "no rule was written for it");
    assert!(h.network_ids().await.is_empty());
    h.reload();
    assert!(h.network_ids().await.is_empty(), "store holds a network dockerd never learnt of");
    // Nothing claims the subnet: dockerd's retry (or the user's) succeeds.
    h.fake.delay("ensure_bridge", Duration::ZERO);
    short_deadline().scope(h.create_network(body)).await.unwrap();
    assert!(h.link(&bridge).is_some());
}

#[tokio::test]
async fn firewall_write_slow_past_the_deadline_is_cut_off_and_undone() {
    let mut h = Harness::new("deadline-fw");
    let id = net_id(61);
    *h.fw.delay.lock().unwrap() = SLOW;
    let started = std::time::Instant::now();
    let err = short_deadline()
        .scope(h.create_network(v4_network(&id, "10.161.0.0/24", "10.161.0.1/24", json!({}))))
        .await
        .unwrap_err();
    assert!(err.0.contains("firewall rules not written within the call's deadline"), "{err}");
    // The write was cut off at the commit point, not waited for; the undo
    // (the committed state's rules written back) then took its own time.
    assert!(started.elapsed() < SLOW * 2, "{:?}", started.elapsed());
    assert!(h.fake.names().is_empty(), "bridge left behind: {:?}", h.fake.names());
    assert!(h.fw.applied.lock().unwrap().is_empty(), "rules of the failed call left behind");
    h.reload();
    assert!(h.network_ids().await.is_empty());
}

#[tokio::test]
async fn join_slow_past_its_deadline_leaves_no_veth_and_the_endpoint_unjoined() {
    let mut h = Harness::new("deadline-join");
    let id = network_with_subnet(&h, 62, "10.162.0.0/24", "10.162.0.1/24").await;
    let ep = ep_id(62);
    h.create_endpoint(endpoint(&id, &ep, "10.162.0.2/24", "", "")).await.unwrap();
    h.fake.delay("create_veth", SLOW);
    short_deadline().scope(h.join(&id, &ep)).await.unwrap_err();
    assert_eq!(h.links_of_kind(LinkKind::Veth), BTreeSet::new());
    assert_eq!(h.endpoint_joined(&ep).await, Some(false));
    h.reload();
    assert_eq!(h.endpoint_joined(&ep).await, Some(false));
}

#[tokio::test]
async fn delete_network_past_its_deadline_keeps_the_network_whole() {
    let mut h = Harness::new("deadline-delete");
    let id = network_with_subnet(&h, 63, "10.163.0.0/24", "10.163.0.1/24").await;
    let bridge = expected_bridge(&id);
    h.fake.delay("delete_link", SLOW);
    short_deadline().scope(h.delete_network(&id)).await.unwrap_err();
    // dockerd keeps the network after a failed DeleteNetwork: so does the plugin.
    let link = h.link(&bridge).expect("bridge put back");
    assert_eq!(link.addresses, vec![net("10.163.0.1/24")]);
    assert_eq!(h.fw_bridges(), vec![bridge.clone()]);
    h.reload();
    assert_eq!(h.network_ids().await, BTreeSet::from([id.clone()]));
    h.fake.delay("delete_link", Duration::ZERO);
    h.delete_network(&id).await.unwrap();
    assert!(h.link(&bridge).is_none());
}

#[tokio::test]
async fn request_pool_slow_past_its_deadline_takes_no_pool() {
    let mut h = Harness::new("deadline-pool");
    h.fake.delay("host_prefixes", SLOW);
    let err = short_deadline().scope(h.request_pool("", "", false)).await.unwrap_err();
    assert!(err.0.contains("nothing was changed"), "{err}");
    assert_eq!(h.p().state.lock().await.ipam.pools().count(), 0);
    h.reload();
    assert_eq!(h.p().state.lock().await.ipam.pools().count(), 0);
    h.fake.delay("host_prefixes", Duration::ZERO);
    let pool = h.request_pool("", "", false).await.unwrap();
    assert_eq!(pool.pool, "10.210.0.0/24", "the first default pool is still free");
}

#[tokio::test]
async fn waiting_for_the_state_lock_counts_against_the_deadline() {
    let mut h = Harness::new("deadline-lock");
    let pool = h.request_pool("10.164.0.0/24", "", false).await.unwrap().pool_id;
    let held = h.p().state.lock().await;
    let (call, ()) = tokio::join!(short_deadline().scope(h.request_address(&pool, "")), async {
        tokio::time::sleep(SLOW).await;
        drop(held);
    });
    let err = call.unwrap_err();
    assert!(err.0.contains("held the state lock"), "{err}");
    let allocated = (1..=254).map(|i| format!("10.164.0.{i}").parse().unwrap());
    assert!(!any_allocated(&h, &pool, allocated.clone()).await);
    h.reload();
    assert!(!any_allocated(&h, &pool, allocated).await);
}

async fn any_allocated(h: &Harness, pool: &str, mut addresses: impl Iterator<Item = IpAddr>) -> bool {
    let state = h.p().state.lock().await;
    let allocator = state.ipam.addresses(pool).expect("pool held");
    addresses.any(|a| allocator.is_allocated(a))
}

#[tokio::test]
async fn a_call_the_server_gave_up_on_commits_nothing_and_gives_its_address_back() {
    let mut h = Harness::new("deadline-abandoned");
    let pool = h.request_pool("10.165.0.0/24", "", false).await.unwrap().pool_id;
    let deadline = CallDeadline::new(Duration::from_secs(10), Duration::ZERO);
    // The server answered dockerd (an error) while the call was under way.
    assert!(deadline.abandon());
    let err = deadline.scope(h.request_address(&pool, "10.165.0.7")).await.unwrap_err();
    assert!(err.0.contains("already due"), "{err}");
    let wanted = || std::iter::once("10.165.0.7".parse().unwrap());
    assert!(!any_allocated(&h, &pool, wanted()).await);
    h.reload();
    assert!(!any_allocated(&h, &pool, wanted()).await);
    h.request_address(&pool, "10.165.0.7").await.unwrap();
}

#[tokio::test]
async fn a_call_that_claimed_its_commit_in_time_commits() {
    let mut h = Harness::new("deadline-claimed");
    let pool = h.request_pool("10.166.0.0/24", "", false).await.unwrap().pool_id;
    let deadline = CallDeadline::new(Duration::from_secs(10), Duration::from_secs(1));
    let address = deadline.clone().scope(h.request_address(&pool, "")).await.unwrap();
    assert!(!deadline.abandon(), "the commit was claimed: the server waits for the answer");
    h.reload();
    let state = h.p().state.lock().await;
    assert!(state.ipam.addresses(&pool).unwrap().is_allocated(addr_of(&address)));
}

// ---------------------------------------------------------------- published ports: per-change cost

/// `-p` of `count` host ports from `first` (container ports the same), as dockerd sends them.
fn portmap(first: u16, count: u16) -> Value {
    let bindings: Vec<Value> = (first..first + count)
        .map(|p| json!({"Proto": 6, "IP": "", "Port": p, "HostIP": "", "HostPort": p, "HostPortEnd": p}))
        .collect();
    json!({ "com.docker.network.portmap": bindings })
}

async fn program(h: &Harness, net: &str, ep: &str, options: Value) -> Result<()> {
    h.p()
        .program_external_connectivity(from_json(json!({"NetworkID": net, "EndpointID": ep, "Options": options})))
        .await
}

/// Issue 13, item 3: one more port costs the same whatever is already
/// published. Counted, not timed: the firewall is handed the port the call
/// adds or removes, never the network's whole list (10,000 here), and the
/// index of published ports changes by that port (it is not rebuilt per call).
#[tokio::test]
async fn one_more_port_hands_the_firewall_one_port_whatever_is_published() {
    let h = Harness::new("port-delta");
    let id = network_with_subnet(&h, 97, "10.97.0.0/24", "10.97.0.1/24").await;
    let (big, one) = (ep_id(970), ep_id(971));
    for (ep, addr) in [(&big, "10.97.0.2/24"), (&one, "10.97.0.3/24")] {
        h.create_endpoint(endpoint(&id, ep, addr, "", "")).await.unwrap();
        h.join(&id, ep).await.unwrap();
    }
    let handed = || *h.fw.ports_handed.lock().unwrap();
    let one_port_round = async || {
        let (before, indexed) = (handed(), h.p().state.lock().await.published.entries_changed);
        program(&h, &id, &one, portmap(19999, 1)).await.unwrap();
        let program = handed() - before;
        h.p().revoke_external_connectivity(from_json(json!({"NetworkID": id, "EndpointID": one}))).await.unwrap();
        let indexed = h.p().state.lock().await.published.entries_changed - indexed;
        (program, handed() - before - program, indexed)
    };
    let with_none = one_port_round().await;
    assert_eq!(with_none, (1, 1, 2), "one port handed in and out, indexed and unindexed");
    program(&h, &id, &big, portmap(20000, 10_000)).await.unwrap();
    assert_eq!(h.fw.applied.lock().unwrap()[0].ports.len(), 10_000);
    assert_eq!(one_port_round().await, with_none, "with 10,000 published");
    assert_eq!(h.fw.applied.lock().unwrap()[0].ports.len(), 10_000, "the other endpoint's ports stay");
}

/// A network removal whose later step fails puts its rules back, ports and
/// all: the undo is the inverse of what was handed over (the network gone
/// with its ports), not a rewrite of every network.
#[tokio::test]
async fn a_failed_network_removal_puts_its_ports_back() {
    let h = Harness::new("port-undo");
    h.fake.links.lock().unwrap().insert("br-pre2".to_string(), FakeLink { up: true, ..FakeLink::bridge() });
    let other = network_with_subnet(&h, 95, "10.95.0.0/24", "10.95.0.1/24").await;
    let id = net_id(96);
    h.create_network(v4_network(&id, "10.96.0.0/24", "10.96.0.1/24", json!({"bridge": "br-pre2"}))).await.unwrap();
    let ep = ep_id(960);
    h.create_endpoint(endpoint(&id, &ep, "10.96.0.2/24", "", "")).await.unwrap();
    h.join(&id, &ep).await.unwrap();
    program(&h, &id, &ep, portmap(18000, 2)).await.unwrap();
    let before = h.fw.applied.lock().unwrap().clone();
    let syncs = *h.fw.syncs.lock().unwrap();
    h.fake.fail_once("remove_bridge_addresses");
    let err = h.delete_network(&id).await.unwrap_err();
    assert!(err.0.contains("injected"), "{err}");
    assert_eq!(*h.fw.applied.lock().unwrap(), before, "the network's rules and ports are back");
    assert_eq!(*h.fw.syncs.lock().unwrap(), syncs + 2, "the removal and its inverse, no full rewrite");
    assert_eq!(h.fw.changes.lock().unwrap().last().unwrap(), &vec!["br-pre2".to_string(); 2]);
    assert!(h.network_ids().await.contains(&other));
}
