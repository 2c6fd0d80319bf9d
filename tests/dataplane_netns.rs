//! The netlink data plane (src/dataplane/netlink.rs) and the start-up
//! reconcile (src/reconcile.rs) against a real kernel, in a throwaway network
//! namespace per test, with `ip` as the independent witness. The data plane's
//! socket is opened on a thread that entered the namespace, so nothing here
//! touches the host's own links.
//!
//! Needs root; without it the tests print "skipped: needs root", except with
//! CI=true where they fail. Run under the host lock:
//! `flock /tmp/rb-host.lock cargo test --test dataplane_netns`.

mod common;

use std::sync::Arc;

use ipnet::IpNet;
use serde_json::{Value, json};

use common::{Netns, block_on_in_netns, ready_or_skip};
use rustbridge::dataplane::netlink::NetlinkDataPlane;
use rustbridge::dataplane::{
    BridgeSpec, DataPlane, FLOOD_MAC, FdbEntry, LinkKind, NeighEntry, VethSpec, VxlanEntries, VxlanSpec,
};
use rustbridge::driver::Plugin;
use rustbridge::ipam::default_pools;
use rustbridge::names::{bridge_name, veth_names};
use rustbridge::state::Store;
use rustbridge::testing::{FakeFirewall, TempDir};

macro_rules! require_root {
    () => {
        if !ready_or_skip(std::thread::current().name().unwrap_or("dataplane_netns")) {
            return;
        }
    };
}

/// Runs `body` on a thread inside `ns`, with a current-thread runtime (the
/// netlink socket is opened there, so it belongs to the namespace).
fn in_netns<T: Send>(ns: &Netns, body: impl AsyncFnOnce(Arc<NetlinkDataPlane>) -> T + Send) -> T {
    block_on_in_netns(ns, async || body(Arc::new(NetlinkDataPlane::connect().expect("netlink socket"))).await)
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn bridge_spec(name: &str, mtu: u32, owned: bool, addresses: &[&str]) -> BridgeSpec {
    BridgeSpec {
        name: name.to_string(),
        mtu,
        mtu_explicit: false,
        owned,
        route_localnet: true,
        instance: "dataplane-test".to_string(),
        addresses: addresses.iter().map(|a| net(a)).collect(),
    }
}

fn flags(link: &Value) -> Vec<String> {
    link["flags"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(str::to_string)).collect()
}

fn addresses(ns: &Netns, name: &str) -> Vec<String> {
    let out = ns.ip(&["-j", "addr", "show", "dev", name]).expect_ok();
    let links: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut found: Vec<String> = links[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    found.sort();
    found
}

#[test]
fn a_bridge_is_made_once_configured_and_deleted() {
    require_root!();
    let ns = Netns::container();
    let spec = bridge_spec("rb-0123456789ab", 1400, true, &["10.81.0.1/24", "fd00:81::1/64"]);
    let (first, second) =
        in_netns(&ns, async |dp| (dp.ensure_bridge(&spec).await.unwrap(), dp.ensure_bridge(&spec).await.unwrap()));
    assert!(first.created && !second.created, "created once, then found");
    assert_eq!(first.added.len(), 2, "both addresses added: {first:?}");
    assert!(second.added.is_empty(), "nothing added the second time: {second:?}");
    let link = ns.link(&spec.name).expect("bridge exists");
    assert_eq!(link["linkinfo"]["info_kind"], "bridge");
    assert_eq!(link["mtu"], 1400);
    assert!(flags(&link).contains(&"UP".to_string()), "{link}");
    assert_eq!(addresses(&ns, &spec.name), ["10.81.0.1/24", "fd00:81::1/64"], "each address once");

    let (exists, kinds) = in_netns(&ns, async |dp| {
        dp.remove_bridge_addresses(&spec.name, &[net("10.81.0.1/24")]).await.unwrap();
        let exists = dp.link_exists(&spec.name).await.unwrap();
        let kinds: Vec<(String, LinkKind)> =
            dp.list_links().await.unwrap().into_iter().map(|l| (l.name, l.kind)).collect();
        dp.delete_link(&spec.name).await.unwrap();
        dp.delete_link(&spec.name).await.expect("deleting a gone link is success");
        (exists, kinds)
    });
    assert!(exists);
    assert!(kinds.contains(&(spec.name.clone(), LinkKind::Bridge)), "{kinds:?}");
    assert!(kinds.contains(&("lo".to_string(), LinkKind::Other)), "{kinds:?}");
    assert!(!ns.has_link(&spec.name), "bridge deleted: {:?}", ns.link_names());
}

/// A swarm network's VXLAN device: made on its bridge as asked, its
/// forwarding entries (two remotes under the flooding MAC, one per MAC) and
/// neighbours written, read back, removed one by one, and gone with the device.
#[test]
fn a_vxlan_device_holds_exactly_the_entries_written_and_loses_them_with_it() {
    require_root!();
    let ns = Netns::container();
    let bridge = bridge_spec("rb-vx0123456789", 1450, true, &["10.82.0.1/24"]);
    let spec = VxlanSpec {
        name: "rbx-vx012345678".into(),
        vni: 4242,
        port: 4799,
        mtu: 1450,
        bridge: bridge.name.clone(),
        instance: "dataplane-test".into(),
    };
    let ip = |s: &str| s.parse().unwrap();
    let flood = |dst: &str| FdbEntry { mac: FLOOD_MAC.into(), dst: ip(dst) };
    let one = FdbEntry { mac: "02:42:0a:52:00:07".into(), dst: ip("192.0.2.13") };
    let neigh = NeighEntry { ip: ip("10.82.0.7"), mac: "02:42:0a:52:00:07".into() };
    let (written, after_removal) = in_netns(&ns, async |dp| {
        dp.ensure_bridge(&bridge).await.unwrap();
        dp.ensure_vxlan(&spec).await.unwrap();
        dp.ensure_vxlan(&spec).await.expect("a second ensure finds it");
        for e in [flood("192.0.2.12"), flood("192.0.2.13"), one.clone()] {
            dp.add_fdb(&spec.name, &e).await.unwrap();
        }
        dp.add_fdb(&spec.name, &flood("192.0.2.12")).await.expect("appending an entry twice is success");
        dp.add_neigh(&spec.name, &neigh).await.unwrap();
        let written = dp.vxlan_entries(&spec.name).await.unwrap();
        dp.del_fdb(&spec.name, &flood("192.0.2.12")).await.unwrap();
        dp.del_neigh(&spec.name, &neigh).await.unwrap();
        dp.del_neigh(&spec.name, &neigh).await.expect("removing a gone neighbour is success");
        (written, dp.vxlan_entries(&spec.name).await.unwrap())
    });
    let mut fdb = vec![flood("192.0.2.12"), flood("192.0.2.13"), one.clone()];
    fdb.sort();
    assert_eq!(written, VxlanEntries { fdb, neigh: vec![neigh.clone()] });
    let mut left = vec![flood("192.0.2.13"), one.clone()];
    left.sort();
    assert_eq!(after_removal, VxlanEntries { fdb: left, neigh: vec![] });
    let link = ns.link(&spec.name).expect("vxlan device exists");
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(link["linkinfo"]["info_data"]["id"], 4242);
    assert_eq!(link["linkinfo"]["info_data"]["port"], 4799);
    assert_eq!(link["linkinfo"]["info_data"]["learning"], false);
    assert_eq!(link["linkinfo"]["info_data"]["proxy"], true);
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["master"], bridge.name.as_str());
    let gone = in_netns(&ns, async |dp| {
        dp.delete_link(&spec.name).await.unwrap();
        let entries = dp.vxlan_entries(&spec.name).await.unwrap();
        dp.delete_link(&bridge.name).await.unwrap();
        entries
    });
    assert_eq!(gone, VxlanEntries::default(), "the entries go with the device");
    assert!(!ns.has_link(&spec.name) && !ns.has_link(&bridge.name));
}

#[test]
fn an_adopted_bridge_keeps_its_mtu_unless_one_is_asked_for() {
    require_root!();
    let ns = Netns::container();
    ns.ip(&["link", "add", "br-user", "mtu", "9000", "type", "bridge"]).expect_ok();
    let adopted = bridge_spec("br-user", 1500, false, &["10.82.0.1/24"]);
    let outcome = in_netns(&ns, async |dp| dp.ensure_bridge(&adopted).await.unwrap());
    assert!(!outcome.created);
    assert_eq!(ns.link("br-user").unwrap()["mtu"], 9000);
    assert_eq!(addresses(&ns, "br-user"), ["10.82.0.1/24"]);
    let explicit = BridgeSpec { mtu: 1400, mtu_explicit: true, ..adopted };
    in_netns(&ns, async |dp| dp.ensure_bridge(&explicit).await.unwrap());
    assert_eq!(ns.link("br-user").unwrap()["mtu"], 1400);
}

#[test]
fn a_veth_pair_hangs_on_its_bridge_and_goes_as_a_pair() {
    require_root!();
    let ns = Netns::container();
    let bridge = bridge_spec("rb-0123456789ab", 1500, true, &["10.83.0.1/24"]);
    let veth = VethSpec {
        host_name: "rbh-0123456789a".into(),
        peer_name: "rbc-0123456789a".into(),
        bridge: bridge.name.clone(),
        mtu: 1400,
        instance: "dataplane-test".to_string(),
    };
    let missing_bridge = VethSpec { bridge: "rb-missing".into(), ..veth.clone() };
    let (refused, requests, exists, listed) = in_netns(&ns, async |dp| {
        dp.ensure_bridge(&bridge).await.unwrap();
        let refused = dp.create_veth(&missing_bridge).await.unwrap_err();
        let before = dp.requests();
        dp.create_veth(&veth).await.unwrap();
        let requests = dp.requests() - before;
        let exists = dp.create_veth(&veth).await.unwrap_err();
        let before = dp.requests();
        let listed = dp.list_links().await.unwrap();
        assert_eq!(dp.requests() - before, 2, "a dump of the links and one of the addresses");
        (refused, requests, exists, listed)
    });
    assert!(refused.to_string().contains("rb-missing"), "{refused}");
    // The bridge's index; the pair with MTU, bridge and up; the mark and hairpin.
    assert_eq!(requests, 3, "netlink requests to make the first veth pair on a bridge");
    assert!(exists.is_exists(), "{exists:?}");
    assert!(ns.has_link(&veth.host_name), "a refused second pair must not take the first away");
    let host = ns.link(&veth.host_name).expect("host end");
    assert_eq!(host["master"], bridge.name.as_str(), "{host}");
    assert_eq!(host["mtu"], 1400);
    assert!(flags(&host).contains(&"UP".to_string()), "{host}");
    assert_eq!(host["ifalias"], "rustbridge:dataplane-test", "{host}");
    let port = ns.ip(&["-j", "-d", "link", "show", "dev", &veth.host_name]).expect_ok();
    let port: Value = serde_json::from_str(&port.stdout).unwrap();
    assert_eq!(port[0]["linkinfo"]["info_slave_data"]["hairpin"], true, "{port}");
    let peer = ns.link(&veth.peer_name).expect("peer end");
    assert_eq!(peer["mtu"], 1400);
    assert!(!flags(&peer).contains(&"UP".to_string()), "the peer stays down until dockerd moves it: {peer}");
    let shown = listed.iter().find(|l| l.name == bridge.name).expect("bridge listed");
    // (Its MTU followed its one port's down to 1400: the kernel's bridge takes its ports' lowest.)
    assert!(shown.up && shown.mtu == 1400 && shown.route_localnet == Some(true), "{shown:?}");
    assert!(shown.addresses.contains(&net("10.83.0.1/24")), "{shown:?}");
    let shown = listed.iter().find(|l| l.name == veth.host_name).expect("host end listed");
    assert_eq!(shown.controller.as_deref(), Some(bridge.name.as_str()));

    ns.ip(&["link", "set", &veth.host_name, "nomaster"]).expect_ok();
    in_netns(&ns, async |dp| {
        dp.attach_to_bridge(&veth.host_name, &bridge.name).await.unwrap();
        dp.attach_to_bridge("rbh-gone0000000", &bridge.name).await.expect("a gone link is success");
    });
    assert_eq!(ns.link(&veth.host_name).unwrap()["master"], bridge.name.as_str());

    let requests = in_netns(&ns, async |dp| {
        let before = dp.requests();
        dp.delete_link(&veth.host_name).await.unwrap();
        dp.delete_link(&veth.host_name).await.expect("a gone link is success");
        dp.requests() - before
    });
    assert_eq!(requests, 2, "one request per delete");
    assert!(!ns.has_link(&veth.host_name) && !ns.has_link(&veth.peer_name), "{:?}", ns.link_names());

    // By index: a link made again under the same name is not the one deleted.
    in_netns(&ns, async |dp| {
        dp.create_veth(&veth).await.unwrap();
        let old = dp.link_index(&veth.host_name).await.unwrap().expect("index");
        dp.delete_link(&veth.host_name).await.unwrap();
        dp.create_veth(&veth).await.unwrap();
        dp.delete_link_index(old, &veth.host_name).await.expect("a gone index is success");
        assert!(dp.link_index(&veth.host_name).await.unwrap().is_some(), "the new pair was deleted");
        let new = dp.link_index(&veth.host_name).await.unwrap().unwrap();
        dp.delete_link_index(new, &veth.host_name).await.unwrap();
    });
    assert!(!ns.has_link(&veth.host_name) && !ns.has_link(&veth.peer_name), "{:?}", ns.link_names());
}

/// Join makes a pair in two requests once the bridge's index is known, and a
/// bridge made again since (another index) still gets the pair.
#[test]
fn a_bridge_index_is_remembered_and_looked_up_again_when_the_bridge_was_made_again() {
    require_root!();
    let ns = Netns::container();
    let bridge = bridge_spec("rb-1123456789ab", 1500, true, &["10.86.0.1/24"]);
    let pair = |n: u32| VethSpec {
        host_name: format!("rbh-11234567{n}0a"),
        peer_name: format!("rbc-11234567{n}0a"),
        bridge: bridge.name.clone(),
        mtu: 1500,
        instance: "dataplane-test".to_string(),
    };
    let (second, again) = in_netns(&ns, async |dp| {
        dp.ensure_bridge(&bridge).await.unwrap();
        dp.create_veth(&pair(1)).await.unwrap();
        let before = dp.requests();
        dp.create_veth(&pair(2)).await.unwrap();
        let second = dp.requests() - before;
        ns.ip(&["link", "del", &bridge.name]).expect_ok();
        dp.ensure_bridge(&bridge).await.unwrap();
        let before = dp.requests();
        dp.create_veth(&pair(3)).await.expect("a pair on the bridge made again");
        (second, dp.requests() - before)
    });
    assert_eq!(second, 2, "netlink requests to make a pair on a bridge whose index is known");
    // Refused with the old index, the look-up, the pair, the mark.
    assert_eq!(again, 4, "netlink requests to make a pair on a bridge made again");
    assert_eq!(ns.link(&pair(3).host_name).expect("host end")["master"], bridge.name.as_str());
    assert!(ns.has_link(&pair(3).peer_name), "{:?}", ns.link_names());
}

#[test]
fn host_prefixes_include_routes_and_addresses_but_not_default_routes() {
    require_root!();
    let ns = Netns::container();
    // A veth pair stands in for a host interface (the dummy driver may be missing).
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]).expect_ok();
    ns.ip(&["link", "set", "d1", "up"]).expect_ok();
    ns.ip(&["link", "set", "d0", "up"]).expect_ok();
    ns.ip(&["addr", "add", "10.84.1.5/24", "dev", "d0"]).expect_ok();
    ns.ip(&["route", "add", "10.85.0.0/16", "dev", "d0"]).expect_ok();
    ns.ip(&["route", "add", "default", "via", "10.84.1.1"]).expect_ok();
    let prefixes = in_netns(&ns, async |dp| dp.host_prefixes().await.unwrap());
    for expected in ["10.84.1.0/24", "10.85.0.0/16"] {
        assert!(prefixes.contains(&net(expected)), "{expected} missing from {prefixes:?}");
    }
    assert!(prefixes.iter().all(|p| p.prefix_len() > 0), "a default route counted: {prefixes:?}");
}

/// The start-up reconcile with the real data plane (rules on the fake firewall):
/// a deleted bridge comes back with its gateway and its endpoint's host end,
/// leftovers this state made (its owner mark) go, look-alikes without the
/// mark and a user's bridge stay.
#[test]
fn reconcile_at_start_repairs_the_kernel() {
    require_root!();
    let ns = Netns::container();
    let dir = TempDir::new("reconcile-netns");
    let network = "5555555555556666666666666666666666666666666666666666666666666666";
    let endpoint = "7777777777788888888888888888888888888888888888888888888888888888";
    let bridge = bridge_name(network);
    let (host_end, peer) = veth_names(endpoint);
    let stray = bridge_name("abcdefabcdef0000000000000000000000000000000000000000000000000000");
    let (stray_host, stray_peer) = veth_names("abcdefabcde00000000000000000000000000000000000000000000000000000");
    let foreign = bridge_name("fedcbafedcba0000000000000000000000000000000000000000000000000000");
    let (foreign_host, foreign_peer) = veth_names("fedcbafedcb00000000000000000000000000000000000000000000000000000");

    let build = |dp: Arc<NetlinkDataPlane>| {
        let store = Store::open(&dir.0).expect("open store");
        Plugin::load(store, dp, Arc::new(FakeFirewall::default()), default_pools()).expect("load plugin")
    };
    in_netns(&ns, async |dp| {
        let plugin = build(dp);
        let call = async |path: &str, body: Value| {
            rustbridge::server::answer(&plugin, path, body.to_string().as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        call(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": network, "Options": {},
                   "IPv4Data": [{"AddressSpace": "", "Pool": "10.86.0.0/24", "Gateway": "10.86.0.1/24"}]}),
        )
        .await;
        call(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": network, "EndpointID": endpoint, "Interface": {"Address": "10.86.0.2/24"}}),
        )
        .await;
        call("/NetworkDriver.Join", json!({"NetworkID": network, "EndpointID": endpoint, "SandboxKey": "x"})).await;
    });

    // dockerd moves the peer into the container.
    let container = Netns::container();
    ns.ip(&["link", "set", &peer, "netns", &container.name]).expect_ok();
    // A crash and some damage: the bridge deleted (its port detached), leftovers of a
    // network and an endpoint no state knows (this state's: marked as its own; and
    // look-alikes without the mark), and a user's bridge.
    let mark = ns.link(&bridge).expect("bridge")["ifalias"].as_str().expect("owner mark").to_string();
    ns.ip(&["link", "del", &bridge]).expect_ok();
    for (b, h, c) in [(&stray, &stray_host, &stray_peer), (&foreign, &foreign_host, &foreign_peer)] {
        ns.ip(&["link", "add", b, "type", "bridge"]).expect_ok();
        ns.ip(&["link", "add", h, "type", "veth", "peer", "name", c]).expect_ok();
    }
    for own in [&stray, &stray_host] {
        ns.ip(&["link", "set", own, "alias", &mark]).expect_ok();
    }
    ns.ip(&["link", "add", "br-user", "type", "bridge"]).expect_ok();

    in_netns(&ns, async |dp| {
        let plugin = build(dp);
        let log = slog::Logger::root(slog::Discard, slog::o!());
        rustbridge::reconcile::at_start(&plugin, &log).await.expect("reconcile");
    });

    assert_eq!(addresses(&ns, &bridge), ["10.86.0.1/24"], "bridge recreated with its gateway");
    assert_eq!(ns.link(&host_end).expect("host end kept")["master"], bridge.as_str());
    assert!(container.has_link(&peer), "the container's end kept");
    for gone in [&stray, &stray_host, &stray_peer] {
        assert!(!ns.has_link(gone), "{gone} left: {:?}", ns.link_names());
    }
    for kept in [&foreign, &foreign_host, &foreign_peer] {
        assert!(ns.has_link(kept), "{kept} is not this state's: {:?}", ns.link_names());
    }
    assert!(ns.has_link("br-user"), "a user's bridge is not the plugin's");

    // Restarted with nothing changed, the pass reads the kernel (a dump of
    // the links and one of the addresses) and changes nothing: no request
    // per bridge or endpoint.
    let requests = in_netns(&ns, async |dp| {
        let plugin = build(dp.clone());
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let before = dp.requests();
        rustbridge::reconcile::at_start(&plugin, &log).await.expect("reconcile");
        dp.requests() - before
    });
    assert_eq!(requests, 2, "requests of a start-up pass with nothing to repair");
}
