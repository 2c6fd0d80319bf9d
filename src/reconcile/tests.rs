//! The reconciler on the fakes: what it repairs at start-up and in a
//! periodic pass, and what it leaves alone. The plugin's state is built
//! through the protocol (as dockerd would), the "kernel" damaged by hand.
//! tests/dataplane_netns.rs runs it against a real kernel too.

use serde_json::{Value, json};

use std::time::Instant;

use super::*;
use crate::dataplane::LinkKind;
use crate::names::{bridge_name, veth_names};
use crate::testing::{FakeLink, FakePlugin};

const NETWORK: &str = "1111111111112222222222222222222222222222222222222222222222222222";
const ENDPOINT: &str = "3333333333344444444444444444444444444444444444444444444444444444";

fn log() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

async fn call(p: &FakePlugin, path: &str, body: Value) -> Value {
    crate::server::answer(p.plugin(), path, body.to_string().as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{path} {body}: {e}"))
}

/// One network (10.91.0.0/24, gateway .1) with one joined endpoint (.2)
/// whose peer dockerd moved into the container.
async fn network_with_joined_endpoint(tag: &str) -> FakePlugin {
    let p = network_with_endpoint_joined_in_host(tag).await;
    // dockerd moves the peer into the container (a pair whole in the host
    // would be an endpoint whose container is gone, or a Join in progress).
    let (_, peer) = veth_names(ENDPOINT);
    p.fake.links.lock().unwrap().remove(&peer);
    p
}

/// The same, with the veth pair still whole in the host, as Join leaves it.
async fn network_with_endpoint_joined_in_host(tag: &str) -> FakePlugin {
    let p = FakePlugin::new(tag);
    call(
        &p,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": NETWORK, "Options": {},
               "IPv4Data": [{"AddressSpace": "", "Pool": "10.91.0.0/24", "Gateway": "10.91.0.1/24"}]}),
    )
    .await;
    call(
        &p,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NETWORK, "EndpointID": ENDPOINT, "Interface": {"Address": "10.91.0.2/24"}}),
    )
    .await;
    call(
        &p,
        "/NetworkDriver.Join",
        json!({"NetworkID": NETWORK, "EndpointID": ENDPOINT, "SandboxKey": "/var/run/docker/netns/x"}),
    )
    .await;
    p
}

/// A link without the plugin's owner mark (a user's, or another state's).
fn foreign_link(kind: LinkKind) -> FakeLink {
    FakeLink { kind, up: true, ..FakeLink::bridge() }
}

/// A link carrying this state's owner mark (left by a crash before a commit).
fn own_link(p: &FakePlugin, kind: LinkKind) -> FakeLink {
    FakeLink { owner: Some(p.plugin().instance_id().to_string()), ..foreign_link(kind) }
}

#[tokio::test]
async fn at_start_recreates_a_missing_bridge_and_puts_its_endpoints_back() {
    let p = network_with_joined_endpoint("recreate").await;
    let bridge = bridge_name(NETWORK);
    let (host_end, _) = veth_names(ENDPOINT);
    p.fake.links.lock().unwrap().remove(&bridge); // someone ran `ip link del`
    p.fake.links.lock().unwrap().get_mut(&host_end).unwrap().controller = None;

    at_start(p.plugin(), &log()).await.unwrap();

    let link = p.fake.link(&bridge).expect("bridge recreated");
    assert_eq!(link.addresses, vec!["10.91.0.1/24".parse().unwrap()]);
    assert!(link.up);
    assert_eq!(p.fake.link(&host_end).unwrap().controller.as_deref(), Some(bridge.as_str()));
}

#[tokio::test]
async fn at_start_removes_own_leftovers_and_keeps_everything_else() {
    let p = network_with_joined_endpoint("leftovers").await;
    let stray_bridge = bridge_name("abcdefabcdef0000000000000000000000000000000000000000000000000000");
    let (stray_host, stray_peer) = veth_names("abcdefabcde00000000000000000000000000000000000000000000000000000");
    let unmarked = bridge_name("fedcbafedcba0000000000000000000000000000000000000000000000000000");
    let foreign = ["br-user", "rb-short", "eth0", "rbh-notanid", unmarked.as_str()];
    {
        let mut links = p.fake.links.lock().unwrap();
        links.insert(stray_bridge.clone(), own_link(&p, LinkKind::Bridge));
        let mut veth = own_link(&p, LinkKind::Veth);
        veth.peer = Some(stray_peer.clone());
        links.insert(stray_host.clone(), veth.clone());
        veth.peer = Some(stray_host.clone());
        links.insert(stray_peer.clone(), veth);
        for name in foreign {
            let kind = if name == "eth0" { LinkKind::Other } else { LinkKind::Bridge };
            links.insert(name.to_string(), foreign_link(kind));
        }
    }

    at_start(p.plugin(), &log()).await.unwrap();

    for stray in [&stray_bridge, &stray_host, &stray_peer] {
        assert!(p.fake.link(stray).is_none(), "{stray} not removed: {:?}", p.fake.names());
    }
    for name in foreign {
        assert!(p.fake.link(name).is_some(), "{name} removed");
    }
    let (host_end, _) = veth_names(ENDPOINT);
    for kept in [bridge_name(NETWORK), host_end] {
        assert!(p.fake.link(&kept).is_some(), "{kept} of the state removed");
    }
}

#[tokio::test]
async fn at_start_rewrites_the_rules_and_goes_on_past_a_failing_item() {
    let p = network_with_joined_endpoint("past-failure").await;
    let bridge = bridge_name(NETWORK);
    let stray = bridge_name("abcdefabcdef0000000000000000000000000000000000000000000000000000");
    p.fake.links.lock().unwrap().remove(&bridge);
    p.fake.links.lock().unwrap().insert(stray.clone(), own_link(&p, LinkKind::Bridge));
    p.fw.applied.lock().unwrap().clear(); // rules flushed
    *p.fake.fail_next.lock().unwrap() = Some("ensure_bridge");

    let err = at_start(p.plugin(), &log()).await.unwrap_err();

    assert!(err.0.contains(&bridge) && err.0.contains("injected failure"), "{err}");
    assert!(p.fake.link(&stray).is_none(), "the leftover is still removed");
    assert_eq!(p.fw_bridges(), vec![bridge.clone()], "the rules are still rewritten");
    // The periodic pass retries what failed.
    pass(p.plugin(), &log()).await.unwrap();
    assert!(p.fake.link(&bridge).is_some());
}

#[tokio::test]
async fn a_pass_with_nothing_to_repair_changes_nothing() {
    let p = network_with_joined_endpoint("quiet").await;
    let links = p.fake.names();
    let syncs = *p.fw.syncs.lock().unwrap();
    pass(p.plugin(), &log()).await.unwrap();
    assert_eq!(p.fake.names(), links);
    assert_eq!(*p.fw.syncs.lock().unwrap(), syncs, "no rewrite of intact rules");
}

#[tokio::test]
async fn a_pass_restores_flushed_rules_and_a_deleted_bridge() {
    let p = network_with_joined_endpoint("drift").await;
    let bridge = bridge_name(NETWORK);
    p.fw.applied.lock().unwrap().clear();
    pass(p.plugin(), &log()).await.unwrap();
    assert_eq!(p.fw_bridges(), vec![bridge.clone()]);

    p.fake.links.lock().unwrap().remove(&bridge);
    pass(p.plugin(), &log()).await.unwrap();
    let (host_end, _) = veth_names(ENDPOINT);
    assert!(p.fake.link(&bridge).is_some(), "bridge recreated");
    assert_eq!(p.fake.link(&host_end).unwrap().controller.as_deref(), Some(bridge.as_str()));
}

/// dockerd restarts a killed plugin within milliseconds. A Join answered just
/// before the kill still has its pair in the host until dockerd moves the
/// peer into the container: start-up must not take it away (the fault suite's
/// SIGKILL case saw containers run without their interface, their address
/// released).
#[tokio::test]
async fn a_join_answered_just_before_a_restart_is_left_to_dockerd() {
    let p = network_with_endpoint_joined_in_host("join-in-flight").await;
    let (host_end, peer) = veth_names(ENDPOINT);

    at_start(p.plugin(), &log()).await.unwrap();

    assert!(p.fake.link(&host_end).is_some() && p.fake.link(&peer).is_some(), "{:?}", p.fake.names());
    assert_eq!(endpoint_count(&p).await, 1);
    // dockerd moves the peer into the container; long after, nothing is forgotten.
    p.fake.links.lock().unwrap().remove(&peer);
    pass_at(p.plugin(), &log(), Instant::now() + 2 * UNCLAIMED_GRACE).await.unwrap();
    assert!(p.fake.link(&host_end).is_some());
    assert_eq!(endpoint_count(&p).await, 1);
}

#[tokio::test]
async fn an_endpoint_unclaimed_for_the_grace_is_forgotten() {
    let p = network_with_endpoint_joined_in_host("unclaimed").await;
    let (host_end, peer) = veth_names(ENDPOINT);
    at_start(p.plugin(), &log()).await.unwrap();
    let t0 = Instant::now();

    pass_at(p.plugin(), &log(), t0 + UNCLAIMED_GRACE / 2).await.unwrap();
    assert_eq!(endpoint_count(&p).await, 1, "kept within the grace");
    pass_at(p.plugin(), &log(), t0 + UNCLAIMED_GRACE).await.unwrap();

    assert_eq!(endpoint_count(&p).await, 0, "record kept");
    assert!(p.fake.link(&host_end).is_none() && p.fake.link(&peer).is_none(), "{:?}", p.fake.names());
}

#[tokio::test]
async fn an_unclaimed_sighting_ends_when_the_peer_is_seen_elsewhere() {
    let p = network_with_endpoint_joined_in_host("sighting").await;
    let (_, peer) = veth_names(ENDPOINT);
    let t0 = Instant::now();
    pass_at(p.plugin(), &log(), t0).await.unwrap();
    let moved = p.fake.links.lock().unwrap().remove(&peer).expect("peer");
    pass_at(p.plugin(), &log(), t0 + UNCLAIMED_GRACE / 2).await.unwrap();
    // Back in the host (container stopped, Leave on its way): a new sighting starts.
    p.fake.links.lock().unwrap().insert(peer.clone(), moved);
    pass_at(p.plugin(), &log(), t0 + UNCLAIMED_GRACE * 3 / 4).await.unwrap();
    pass_at(p.plugin(), &log(), t0 + UNCLAIMED_GRACE).await.unwrap();
    assert_eq!(endpoint_count(&p).await, 1, "forgotten although it was claimed in between");
    pass_at(p.plugin(), &log(), t0 + UNCLAIMED_GRACE * 7 / 4).await.unwrap();
    assert_eq!(endpoint_count(&p).await, 0);
}

async fn endpoint_count(p: &FakePlugin) -> usize {
    p.plugin().lock_state().await.endpoints.len()
}
