//! Swarm calls and swarm networks on the fakes.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;
use crate::api::Scope;
use crate::dataplane::{FdbEntry, LinkKind, NeighEntry};
use crate::testing::FakePlugin;

/// A swarm network ID (25 lowercase letters and digits, as swarmkit makes them).
const NET: &str = "lt58xre1i7zb1r4vvuwia72mv";
const OTHER: &str = "qk3b0d9x2m1c7v5n8z4w6y0aa";
const EP: &str = "5d30d85dc450f17b04d0433932c9a6198c520dcdc92ab1867e49b1b0c90cdace";

fn from_json<T: DeserializeOwned>(body: Value) -> T {
    serde_json::from_value(body).expect("test request decodes")
}

fn allocate(h: &FakePlugin, id: &str, options: Value) -> Result<BTreeMap<String, String>> {
    h.plugin()
        .allocate_network(from_json(json!({
            "NetworkID": id,
            "IPv4Data": [{"Pool": "10.0.1.0/24", "Gateway": "10.0.1.1/24"}],
            "Options": options,
        })))
        .map(|r| r.options)
}

async fn create(h: &FakePlugin, id: &str, generic: &BTreeMap<String, String>) -> Result<()> {
    h.plugin()
        .create_network(from_json(json!({
            "NetworkID": id,
            "IPv4Data": [{"AddressSpace": "GlobalDefault", "Pool": "10.0.1.0/24", "Gateway": "10.0.1.1/24"}],
            "IPv6Data": [],
            "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": generic},
        })))
        .await
}

#[test]
fn the_managed_socket_answers_its_scope_and_the_legacy_one_stays_local() {
    assert_eq!(Plugin::capabilities(Scope::Global).scope, "global");
    assert_eq!(Plugin::capabilities(Scope::Global).connectivity_scope, "global");
    assert_eq!(Plugin::capabilities(Scope::Local).scope, "local");
    assert_eq!("global".parse::<Scope>(), Ok(Scope::Global));
    assert!("swarm".parse::<Scope>().is_err());
}

#[test]
fn allocate_network_answers_a_vni_echoes_user_options_and_is_idempotent_on_replay() {
    let h = FakePlugin::new("swarm-allocate");
    let first = allocate(&h, NET, json!({"com.docker.network.driver.mtu": "1400"})).unwrap();
    let vni: u32 = first[VXLAN_VNI].parse().unwrap();
    assert!((FIRST_AUTO_VNI..=MAX_VNI).contains(&vni), "{vni}");
    assert_eq!(first["com.docker.network.driver.mtu"], "1400", "user options reach the nodes only through this answer");
    // A manager restart replays the call with the earlier answer merged into Options.
    let replay = allocate(&h, NET, json!(first)).unwrap();
    assert_eq!(replay, first);
    // Even a fresh plugin (the manager's plugin restarted) answers the same on replay.
    let fresh = FakePlugin::new("swarm-allocate-fresh");
    assert_eq!(allocate(&fresh, NET, json!(first)).unwrap(), first);
    // Derived from the ID: another manager picks the same VNI for a new network.
    assert_eq!(allocate(&fresh, NET, json!({})).unwrap()[VXLAN_VNI], first[VXLAN_VNI]);
}

#[test]
fn a_new_network_never_gets_a_vni_already_allocated() {
    let h = FakePlugin::new("swarm-vni-unique");
    let taken: u32 = allocate(&h, NET, json!({})).unwrap()[VXLAN_VNI].parse().unwrap();
    // Another network whose ID hashes to the same VNI is moved on.
    assert_eq!(pick_vni(NET, |v| v == taken), if taken == MAX_VNI { FIRST_AUTO_VNI } else { taken + 1 });
    let other: u32 = allocate(&h, OTHER, json!({})).unwrap()[VXLAN_VNI].parse().unwrap();
    assert_ne!(other, taken);
    // A VNI the user gives that another network has is refused, naming the option.
    let err = allocate(&h, "zz3b0d9x2m1c7v5n8z4w6y0aa", json!({VXLAN_VNI: taken.to_string()})).unwrap_err();
    assert!(err.0.contains(VXLAN_VNI) && err.0.contains("already network"), "{err}");
    // Freed, it can be given again.
    h.plugin().free_network(from_json(json!({"NetworkID": NET}))).unwrap();
    let again = allocate(&h, "zz3b0d9x2m1c7v5n8z4w6y0aa", json!({VXLAN_VNI: taken.to_string()})).unwrap();
    assert_eq!(again[VXLAN_VNI], taken.to_string());
}

#[test]
fn allocate_network_refuses_bad_options_at_the_manager() {
    let h = FakePlugin::new("swarm-bad-option");
    let err = allocate(&h, NET, json!({"no.such.option": "x"})).unwrap_err();
    assert!(err.0.contains("no.such.option"), "{err}");
    let err = allocate(&h, NET, json!({VXLAN_VNI: "16777216"})).unwrap_err();
    assert!(err.0.contains(VXLAN_VNI) && err.0.contains("outside"), "{err}");
    assert!(h.plugin().swarm_view().allocations.is_empty(), "a refused call allocates nothing");
}

#[test]
fn discover_new_self_gives_the_node_address_and_peers_are_ignored() {
    let h = FakePlugin::new("swarm-discover");
    let peer =
        json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "10.99.0.13", "BindAddress": "", "Self": false}});
    h.plugin().discover(from_json(peer), true).unwrap();
    assert_eq!(h.plugin().swarm_view().self_address, None);
    let me = json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "10.99.0.12", "BindAddress": "", "Self": true}});
    h.plugin().discover(from_json(me), true).unwrap();
    assert_eq!(h.plugin().swarm_view().self_address, Some("10.99.0.12".parse().unwrap()));
}

#[tokio::test]
async fn create_network_with_a_vni_builds_the_vxlan_device_on_the_bridge_with_room_for_encapsulation() {
    let h = FakePlugin::new("swarm-create");
    *h.fake.underlay_mtu.lock().unwrap() = Some(9000);
    let generic = allocate(&h, NET, json!({})).unwrap();
    let vni: u32 = generic[VXLAN_VNI].parse().unwrap();
    create(&h, NET, &generic).await.unwrap();
    let bridge = h.fake.link("rb-lt58xre1i7zb").expect("bridge");
    let vxlan = h.fake.link("rbx-lt58xre1i7z").expect("vxlan device");
    assert_eq!(vxlan.kind, LinkKind::Vxlan);
    assert_eq!(vxlan.vxlan, Some((vni, DEFAULT_VXLAN_PORT)));
    assert_eq!(vxlan.controller.as_deref(), Some("rb-lt58xre1i7zb"));
    assert_eq!((bridge.mtu, vxlan.mtu), (8950, 8950));
    // Replayed (dockerd lost the answer): the same network, nothing new.
    create(&h, NET, &generic).await.unwrap();
    // A user MTU that does not fit the underlay is refused, naming the option.
    let mut big = allocate(&h, OTHER, json!({})).unwrap();
    big.insert("com.docker.network.driver.mtu".into(), "8990".into());
    let err = create(&h, OTHER, &big).await.unwrap_err();
    assert!(err.0.contains("com.docker.network.driver.mtu") && err.0.contains("at most 8950"), "{err}");
}

#[tokio::test]
async fn endpoints_of_a_swarm_network_take_the_mac_of_their_address() {
    let h = FakePlugin::new("swarm-mac");
    let generic = allocate(&h, NET, json!({})).unwrap();
    create(&h, NET, &generic).await.unwrap();
    let ep = |mac: &str| json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.0.1.7/24", "MacAddress": mac}});
    let err = h.plugin().create_endpoint(from_json(ep("02:00:00:00:00:01"))).await.unwrap_err();
    assert!(err.0.contains("Interface.MacAddress") && err.0.contains("02:42:0a:00:01:07"), "{err}");
    let answer = h.plugin().create_endpoint(from_json(ep(""))).await.unwrap();
    assert_eq!(answer.interface.unwrap().mac_address, "02:42:0a:00:01:07");
}

#[tokio::test]
async fn network_rm_removes_the_vxlan_device_with_every_entry_before_its_bridge() {
    let h = FakePlugin::new("swarm-teardown");
    let generic = allocate(&h, NET, json!({})).unwrap();
    create(&h, NET, &generic).await.unwrap();
    let dev = "rbx-lt58xre1i7z";
    let dst = "10.99.0.13".parse().unwrap();
    let dp = h.plugin().dataplane();
    dp.add_fdb(dev, &FdbEntry { mac: crate::dataplane::FLOOD_MAC.into(), dst }).await.unwrap();
    dp.add_fdb(dev, &FdbEntry { mac: "02:42:0a:00:01:09".into(), dst }).await.unwrap();
    dp.add_neigh(dev, &NeighEntry { ip: "10.0.1.9".parse().unwrap(), mac: "02:42:0a:00:01:09".into() }).await.unwrap();
    assert_eq!(dp.vxlan_entries(dev).await.unwrap().fdb.len(), 2);
    let calls_before = h.fake.calls().len();
    h.plugin().delete_network(from_json(json!({"NetworkID": NET}))).await.unwrap();
    let calls: Vec<String> = h.fake.calls()[calls_before..].to_vec();
    let device_gone = calls.iter().position(|c| c == &format!("delete_link {dev}")).expect("device deleted");
    let bridge_gone = calls.iter().position(|c| c == "delete_link rb-lt58xre1i7zb").expect("bridge deleted");
    assert!(device_gone < bridge_gone, "the device goes before its bridge: {calls:?}");
    assert!(h.fake.link(dev).is_none() && h.fake.link("rb-lt58xre1i7zb").is_none());
    assert_eq!(dp.vxlan_entries(dev).await.unwrap(), crate::dataplane::VxlanEntries::default());
}

#[tokio::test]
async fn a_create_that_fails_after_the_device_takes_the_device_back() {
    let h = FakePlugin::new("swarm-create-undo");
    let generic = allocate(&h, NET, json!({})).unwrap();
    *h.fw.fail_next.lock().unwrap() = true;
    assert!(create(&h, NET, &generic).await.is_err());
    assert!(h.fake.link("rbx-lt58xre1i7z").is_none() && h.fake.link("rb-lt58xre1i7zb").is_none());
    assert!(h.plugin().lock_state().await.networks.is_empty());
}

#[tokio::test]
async fn the_reconciler_puts_back_a_vxlan_device_someone_deleted() {
    let h = FakePlugin::new("swarm-reconcile");
    let generic = allocate(&h, NET, json!({})).unwrap();
    create(&h, NET, &generic).await.unwrap();
    h.fake.links.lock().unwrap().remove("rbx-lt58xre1i7z");
    let log = slog::Logger::root(slog::Discard, slog::o!());
    crate::reconcile::pass(h.plugin(), &log).await.unwrap();
    let back = h.fake.link("rbx-lt58xre1i7z").expect("device recreated");
    assert_eq!(back.controller.as_deref(), Some("rb-lt58xre1i7zb"));
}

async fn pool(h: &FakePlugin, space: &str, pool: &str) -> Result<crate::api::RequestPoolResponse> {
    let req = from_json(json!({"AddressSpace": space, "Pool": pool, "SubPool": "", "V6": false,
        "Options": {"com.docker.network.ipam.serial": "true"}}));
    h.plugin().request_pool(req).await
}

async fn address(h: &FakePlugin, pool_id: &str, addr: &str) -> Result<String> {
    let req =
        from_json(json!({"PoolID": pool_id, "Address": addr, "Options": {"com.docker.network.ipam.serial": "true"}}));
    h.plugin().request_address(req).await.map(|r| r.address)
}

/// The two address spaces of a swarm network on `--ipam-driver rustbridge`:
/// the manager allocates in the global space, every node asks for the same
/// pool and addresses again in its local space; a manager restart replays the
/// global side explicitly; a local release never frees the global allocation.
#[tokio::test]
async fn ipam_global_allocation_local_re_requests_and_the_managers_replay() {
    use crate::ipam::{GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE};
    let mut h = FakePlugin::new("swarm-ipam");
    // The manager: global space, automatic pool, then the gateway and two tasks.
    let global = pool(&h, GLOBAL_ADDRESS_SPACE, "").await.unwrap();
    let subnet = global.pool.clone();
    let gw = address(&h, &global.pool_id, "").await.unwrap();
    let a = address(&h, &global.pool_id, "").await.unwrap();
    let b = address(&h, &global.pool_id, "").await.unwrap();
    assert!(gw != a && a != b && gw != b);
    // The manager's node (and every other) asks again in its local space, explicitly.
    let local = pool(&h, LOCAL_ADDRESS_SPACE, &subnet).await.unwrap();
    assert_ne!(local.pool_id, global.pool_id, "pool IDs tell the spaces apart");
    for addr in [&gw, &a, &b] {
        let plain = addr.split('/').next().unwrap();
        assert_eq!(&address(&h, &local.pool_id, plain).await.unwrap(), addr);
    }
    // A local release (dockerd shutting down on that node) frees nothing global.
    h.plugin().release_pool(from_json(json!({"PoolID": local.pool_id}))).await.unwrap();
    let c = address(&h, &global.pool_id, "").await.unwrap();
    assert!(![&gw, &a, &b].contains(&&c), "{c} given twice");
    // Before a restart, an explicit request for a held global pool or address is a duplicate: refused.
    assert!(pool(&h, GLOBAL_ADDRESS_SPACE, &subnet).await.is_err());
    assert!(address(&h, &global.pool_id, a.split('/').next().unwrap()).await.is_err());
    // The manager restarts (its plugin with it): dockerd replays the global side explicitly.
    h.reload();
    let replayed = pool(&h, GLOBAL_ADDRESS_SPACE, &subnet).await.unwrap();
    assert_eq!((replayed.pool_id.as_str(), replayed.pool.as_str()), (global.pool_id.as_str(), subnet.as_str()));
    for addr in [&gw, &a, &b, &c] {
        assert_eq!(&address(&h, &global.pool_id, addr.split('/').next().unwrap()).await.unwrap(), addr);
    }
    // Each is answered once: asked again, it is a duplicate; the next automatic one is new.
    assert!(address(&h, &global.pool_id, a.split('/').next().unwrap()).await.is_err());
    assert!(pool(&h, GLOBAL_ADDRESS_SPACE, &subnet).await.is_err());
    let d = address(&h, &global.pool_id, "").await.unwrap();
    assert!(![&gw, &a, &b, &c].contains(&&d), "{d} given twice");
}

/// A node whose dockerd stopped uncleanly (killed, or stopped with
/// live-restore: measured in the lab) still holds its swarm network's local
/// pool and addresses; when dockerd starts again it registers the IPAM driver
/// (GetCapabilities) and re-creates the network, asking for them explicitly.
/// Each is answered once more; a local network's pool never is.
#[tokio::test]
async fn after_dockerd_starts_again_a_swarm_networks_local_pool_and_addresses_are_answered_once_more() {
    use crate::ipam::LOCAL_ADDRESS_SPACE as LOCAL;
    let h = FakePlugin::new("swarm-ipam-local-replay");
    let register = || crate::server::answer(h.plugin(), "/IpamDriver.GetCapabilities", b"{}");
    let local = pool(&h, LOCAL, "10.0.1.0/24").await.unwrap();
    let gw = address(&h, &local.pool_id, "10.0.1.1").await.unwrap();
    let task = address(&h, &local.pool_id, "10.0.1.7").await.unwrap();
    let generic = allocate(&h, NET, json!({})).unwrap();
    create(&h, NET, &generic).await.unwrap();
    let local_network = pool(&h, LOCAL, "10.0.9.0/24").await.unwrap();
    // While dockerd runs, an explicit request for a held one is a duplicate.
    assert!(pool(&h, LOCAL, "10.0.1.0/24").await.is_err());
    assert!(address(&h, &local.pool_id, "10.0.1.7").await.is_err());

    register().await.unwrap();

    let again = pool(&h, LOCAL, "10.0.1.0/24").await.unwrap();
    assert_eq!((again.pool_id.as_str(), again.pool.as_str()), (local.pool_id.as_str(), "10.0.1.0/24"));
    assert_eq!(address(&h, &local.pool_id, "10.0.1.1").await.unwrap(), gw);
    assert_eq!(address(&h, &local.pool_id, "10.0.1.7").await.unwrap(), task);
    // Once each, and an address handed out since the start is not given twice either.
    assert!(pool(&h, LOCAL, "10.0.1.0/24").await.is_err());
    assert!(address(&h, &local.pool_id, "10.0.1.7").await.is_err());
    address(&h, &local.pool_id, "10.0.1.9").await.unwrap();
    assert!(address(&h, &local.pool_id, "10.0.1.9").await.is_err());
    // A local network's pool (dockerd keeps those across restarts) is not armed.
    assert!(pool(&h, LOCAL, "10.0.9.0/24").await.is_err());
    assert!(h.plugin().lock_state().await.ipam.pool(&local_network.pool_id).is_some());
    // The next dockerd start arms it again.
    register().await.unwrap();
    assert_eq!(pool(&h, LOCAL, "10.0.1.0/24").await.unwrap().pool_id, local.pool_id);
}
