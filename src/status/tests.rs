//! `/Rustbridge.Status` and `/Rustbridge.Gc` through the server's router, on the fakes.

use serde_json::{Value, json};

use super::*;
use crate::dataplane::LinkKind;
use crate::gc::GcReport;
use crate::testing::{FakeLink, FakePlugin};

type Setup = FakePlugin;

fn setup(tag: &str) -> Setup {
    FakePlugin::new(tag)
}

const NET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const EP: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

async fn call(s: &Setup, path: &str, body: Value) -> Value {
    crate::server::answer(s.plugin(), path, body.to_string().as_bytes()).await.unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A network with a pool of rustbridge's IPAM (range .128/25), an MTU and icc off, one joined endpoint
/// publishing 8080->80/tcp.
async fn populate(s: &Setup) {
    let pool = call(s, "/IpamDriver.RequestPool", json!({"Pool": "10.77.0.0/24", "SubPool": "10.77.0.128/25"})).await;
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    call(
        s,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "10.77.0.1",
        "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    )
    .await;
    call(s, "/IpamDriver.RequestAddress", json!({"PoolID": pool_id})).await;
    call(
        s,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET,
        "Options": {"com.docker.network.generic": {"mtu": "1400", "com.docker.network.bridge.enable_icc": "false"}},
        "IPv4Data": [{"Pool": "10.77.0.0/24", "Gateway": "10.77.0.1/24"}]}),
    )
    .await;
    call(
        s,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NET, "EndpointID": EP,
        "Interface": {"Address": "10.77.0.128/24"}}),
    )
    .await;
    call(
        s,
        "/NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/x"}),
    )
    .await;
    call(s, "/NetworkDriver.ProgramExternalConnectivity", json!({"NetworkID": NET, "EndpointID": EP,
        "Options": {"com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "127.0.0.1", "HostPort": 8080, "HostPortEnd": 8080}]}}))
    .await;
}

#[tokio::test]
async fn status_shows_networks_endpoints_ports_pools_and_changed_options() {
    let s = setup("status");
    populate(&s).await;
    let status: Status = serde_json::from_value(call(&s, "/Rustbridge.Status", json!({})).await).unwrap();
    assert_eq!(status.networks.len(), 1);
    let n = &status.networks[0];
    assert_eq!(n.id, NET);
    assert_eq!(n.bridge, "rb-0123456789ab");
    assert_eq!(n.subnets, [SubnetStatus { subnet: "10.77.0.0/24".into(), gateway: Some("10.77.0.1".into()) }]);
    let changed: Vec<&str> = n.options.keys().map(String::as_str).collect();
    assert_eq!(
        changed,
        ["com.docker.network.bridge.enable_icc", "com.docker.network.driver.mtu"],
        "only what differs from the defaults"
    );
    assert_eq!(n.options["com.docker.network.driver.mtu"], json!(1400));
    let e = &n.endpoints[0];
    assert_eq!(e.ipv4.as_deref(), Some("10.77.0.128/24"));
    assert!(e.joined);
    assert_eq!(e.host_veth, "rbh-fedcba98765");
    assert!(!e.mac.is_empty());
    assert_eq!(e.published.len(), 1);
    assert_eq!((e.published[0].host_port, e.published[0].container_port), (8080, 80));
    assert_eq!(status.pools.len(), 1);
    let p = &status.pools[0];
    assert_eq!((p.pool.as_str(), p.range.as_deref()), ("10.77.0.0/24", Some("10.77.0.128/25")));
    assert_eq!(p.in_use, 2, "gateway and one automatic address");
    assert_eq!(p.free, 126, "the range .128/25 without the broadcast, less .128");
    let text = render_text(&status);
    assert!(text.contains("bridge rb-0123456789ab"), "{text}");
    assert!(text.contains("publish 127.0.0.1:8080/tcp -> 10.77.0.128:80"), "{text}");
    assert!(text.contains("10.77.0.0/24 range 10.77.0.128/25  in use 2  free 126"), "{text}");
    let gauges = gauges(&*s.plugin().lock_state().await);
    assert_eq!((gauges.networks, gauges.endpoints, gauges.published_ports), (1, 1, 1));
}

#[tokio::test]
async fn gc_lists_unknown_owned_links_and_removes_them_only_when_asked() {
    let s = setup("gc");
    populate(&s).await;
    let stray = |kind| FakeLink { kind, up: true, ..FakeLink::bridge() };
    {
        let mut links = s.fake.links.lock().unwrap();
        links.insert("rb-aaaaaaaaaaaa".into(), stray(LinkKind::Bridge));
        links.insert("rbh-bbbbbbbbbbb".into(), stray(LinkKind::Veth));
        links.insert("br0".into(), stray(LinkKind::Bridge));
        links.insert("rbh-notours".into(), stray(LinkKind::Veth));
        // A veth pair no state knows whose peer is in a container, and a bridge with a port.
        links
            .insert("rbh-ccccccccccc".into(), FakeLink { peer: Some("rbc-elsewhere".into()), ..stray(LinkKind::Veth) });
        links.insert("rb-dddddddddddd".into(), stray(LinkKind::Bridge));
        links.insert(
            "rbh-eeeeeeeeeee".into(),
            FakeLink { controller: Some("rb-dddddddddddd".into()), ..stray(LinkKind::Veth) },
        );
    }
    let listed: GcReport = serde_json::from_value(call(&s, "/Rustbridge.Gc", json!({})).await).unwrap();
    let names: Vec<&str> = listed.leftovers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["rb-aaaaaaaaaaaa", "rb-dddddddddddd", "rbh-bbbbbbbbbbb", "rbh-ccccccccccc", "rbh-eeeeeeeeeee"]);
    let in_use: Vec<&str> = listed.leftovers.iter().filter(|l| l.in_use.is_some()).map(|l| l.name.as_str()).collect();
    assert_eq!(in_use, ["rb-dddddddddddd", "rbh-ccccccccccc"], "a bridge with a port, a veth whose peer is elsewhere");
    assert!(!listed.removed);
    assert!(s.fake.link("rb-aaaaaaaaaaaa").is_some(), "listing removes nothing");
    let removed: GcReport = serde_json::from_value(call(&s, "/Rustbridge.Gc", json!({"Remove": true})).await).unwrap();
    assert_eq!(removed.leftovers, listed.leftovers);
    assert!(removed.errors.is_empty(), "{:?}", removed.errors);
    assert!(s.fake.link("rb-aaaaaaaaaaaa").is_none() && s.fake.link("rbh-bbbbbbbbbbb").is_none());
    for kept in ["rb-0123456789ab", "rbh-fedcba98765", "br0", "rbh-notours", "rbh-ccccccccccc", "rb-dddddddddddd"] {
        assert!(s.fake.link(kept).is_some(), "{kept} must stay");
    }
    let again: GcReport = serde_json::from_value(call(&s, "/Rustbridge.Gc", json!({})).await).unwrap();
    let left: Vec<&str> = again.leftovers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(left, ["rb-dddddddddddd", "rbh-ccccccccccc"], "what was in use stays listed");
}

#[tokio::test]
async fn gc_counts_firewall_chains_as_leftovers_only_without_networks() {
    let s = setup("gcfw");
    // Chains written for a network the state no longer has.
    s.fw.applied.lock().unwrap().push(crate::testing::fw_network("rb-aaaaaaaaaaaa", &[]));
    let listed: GcReport = serde_json::from_value(call(&s, "/Rustbridge.Gc", json!({})).await).unwrap();
    assert_eq!(listed.leftovers.len(), 1);
    assert_eq!(listed.leftovers[0].kind, "firewall");
    call(&s, "/Rustbridge.Gc", json!({"Remove": true})).await;
    assert!(s.fw.applied.lock().unwrap().is_empty(), "removal syncs to no network");
}

#[test]
fn default_options_differ_in_nothing() {
    assert!(options_differing(&NetworkOptions::default()).is_empty());
}
