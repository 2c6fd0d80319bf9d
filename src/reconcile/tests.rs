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

/// One network (10.91.0.0/24, gateway .1) with one endpoint (.2), not joined.
async fn network_with_endpoint(tag: &str) -> FakePlugin {
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
    p
}

/// The same, with the veth pair still whole in the host, as Join leaves it.
async fn network_with_endpoint_joined_in_host(tag: &str) -> FakePlugin {
    let p = network_with_endpoint(tag).await;
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

/// Twenty joined endpoints whose peers dockerd moved into their containers.
async fn network_with_joined_endpoints(tag: &str, count: u64) -> (FakePlugin, Vec<String>) {
    let p = network_with_joined_endpoint(tag).await;
    let mut ids = vec![ENDPOINT.to_string()];
    for n in 1..count {
        let id = format!("{n:011x}{}", "5".repeat(53));
        call(
            &p,
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": NETWORK, "EndpointID": id, "Interface": {"Address": format!("10.91.0.{}/24", n + 2)}}),
        )
        .await;
        call(&p, "/NetworkDriver.Join", json!({"NetworkID": NETWORK, "EndpointID": id, "SandboxKey": "/x"})).await;
        p.fake.links.lock().unwrap().remove(&veth_names(&id).1);
        ids.push(id);
    }
    (p, ids)
}

/// Start-up in proportion to what changed: with nothing to repair, one dump
/// of the links and no request per bridge or endpoint.
#[tokio::test]
async fn a_start_with_nothing_changed_reads_the_kernel_once_and_changes_nothing() {
    let (mut p, _) = network_with_joined_endpoints("start-quiet", 20).await;
    p.reload();
    p.fake.clear_calls();
    at_start(p.plugin(), &log()).await.unwrap();
    assert_eq!(p.fake.calls(), vec!["list_links all".to_string()]);
}

#[tokio::test]
async fn a_start_reattaches_only_the_endpoints_off_their_bridge() {
    let (mut p, ids) = network_with_joined_endpoints("start-detached", 20).await;
    let detached = veth_names(&ids[7]).0;
    p.fake.links.lock().unwrap().get_mut(&detached).unwrap().controller = None;
    p.reload();
    p.fake.clear_calls();
    at_start(p.plugin(), &log()).await.unwrap();
    assert_eq!(p.fake.calls_of("attach_to_bridge"), vec![detached.clone()]);
    assert!(p.fake.calls_of("ensure_bridge").is_empty(), "{:?}", p.fake.calls());
    assert_eq!(p.fake.link(&detached).unwrap().controller, Some(bridge_name(NETWORK)));
}

#[tokio::test]
async fn a_start_repairs_a_drifted_bridge() {
    let (mut p, _) = network_with_joined_endpoints("start-drift", 3).await;
    let bridge = bridge_name(NETWORK);
    let drifts: [fn(&mut FakeLink); 5] = [
        |l: &mut FakeLink| l.addresses.clear(),
        |l: &mut FakeLink| l.up = false,
        |l: &mut FakeLink| l.mtu = 9000,
        |l: &mut FakeLink| l.owner = None,
        |l: &mut FakeLink| l.route_localnet = false,
    ];
    for drift in drifts {
        drift(p.fake.links.lock().unwrap().get_mut(&bridge).unwrap());
        p.reload();
        p.fake.clear_calls();
        at_start(p.plugin(), &log()).await.unwrap();
        assert_eq!(p.fake.calls_of("ensure_bridge"), vec![bridge.clone()]);
        let link = p.fake.link(&bridge).unwrap();
        assert!(link.up && link.mtu == 1500 && link.route_localnet && link.owner.is_some(), "{link:?}");
        assert_eq!(link.addresses, vec!["10.91.0.1/24".parse().unwrap()]);
    }
}

/// dockerd may call as soon as the socket exists: a call that needs the
/// state waits for the start-up pass, which judges the kernel under the lock.
#[tokio::test]
async fn a_call_during_the_start_up_pass_waits_for_it() {
    use futures::FutureExt;
    let p = network_with_endpoint("start-call").await;
    p.fake.links.lock().unwrap().remove(&bridge_name(NETWORK)); // the pass recreates it
    p.fake.clear_calls();
    let startup = StartUp::hold(p.plugin()).await;
    let plugin = p.plugin().clone();
    let join = tokio::spawn(async move {
        let body = json!({"NetworkID": NETWORK, "EndpointID": ENDPOINT, "SandboxKey": "/x"}).to_string();
        crate::server::answer(&plugin, "/NetworkDriver.Join", body.as_bytes()).await
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(p.fake.calls().is_empty(), "the call went ahead of the pass: {:?}", p.fake.calls());
    assert!(p.plugin().lock_state().now_or_never().is_none(), "the pass holds the state lock");
    startup.run(p.plugin(), &log()).await.unwrap();
    join.await.unwrap().expect("join after the pass");
    let calls = p.fake.calls();
    let position = |prefix: &str| calls.iter().position(|c| c.starts_with(prefix)).unwrap();
    assert!(position("ensure_bridge") < position("create_veth"), "{calls:?}");
}

/// A link a call released after its commit but could not delete is a
/// leftover: the periodic pass removes it (not only the next start).
#[tokio::test]
async fn a_pass_removes_own_leftover_veths() {
    let p = network_with_joined_endpoint("pass-leftover").await;
    let (stray_host, stray_peer) = veth_names("abcdefabcde00000000000000000000000000000000000000000000000000000");
    {
        let mut links = p.fake.links.lock().unwrap();
        let mut veth = own_link(&p, LinkKind::Veth);
        veth.peer = Some(stray_peer.clone());
        links.insert(stray_host.clone(), veth.clone());
        veth.peer = Some(stray_host.clone());
        links.insert(stray_peer.clone(), veth);
    }
    pass(p.plugin(), &log()).await.unwrap();
    assert!(p.fake.link(&stray_host).is_none() && p.fake.link(&stray_peer).is_none(), "{:?}", p.fake.names());
    assert!(p.fake.link(&veth_names(ENDPOINT).0).is_some());
}

/// Join's record does not wait for the disk: a crash can lose it while the
/// pair exists (here the peer is still in the host, as between Join's answer
/// and dockerd's move). The start-up pass records the Join again from the
/// pair and never takes the pair for a leftover.
#[tokio::test]
async fn a_join_whose_record_a_crash_lost_is_recorded_again() {
    let mut p = network_with_endpoint_joined_in_host("lost-join").await;
    let (host_end, peer) = veth_names(ENDPOINT);
    // The crash: the record as CreateEndpoint left it.
    let record = p.plugin().lock_state().await.endpoints[ENDPOINT].clone();
    p.plugin().commit(vec![Change::PutEndpoint(EndpointRecord { joined: false, ..record })]).unwrap();
    p.reload();
    assert!(!p.plugin().lock_state().await.endpoints[ENDPOINT].joined);

    at_start(p.plugin(), &log()).await.unwrap();

    assert!(p.fake.link(&host_end).is_some() && p.fake.link(&peer).is_some(), "{:?}", p.fake.names());
    assert!(p.plugin().lock_state().await.endpoints[ENDPOINT].joined);
    p.reload();
    assert!(p.plugin().lock_state().await.endpoints[ENDPOINT].joined, "recorded durably");
}

/// A pair some record names is never a leftover, joined or not.
#[tokio::test]
async fn a_pass_keeps_the_pair_of_an_endpoint_not_joined() {
    let p = network_with_endpoint_joined_in_host("named-pair").await;
    let (host_end, _) = veth_names(ENDPOINT);
    let record = p.plugin().lock_state().await.endpoints[ENDPOINT].clone();
    p.plugin().commit(vec![Change::PutEndpoint(EndpointRecord { joined: false, ..record.clone() })]).unwrap();
    p.plugin().lock_state().await.endpoints.insert(ENDPOINT.into(), EndpointRecord { joined: false, ..record });
    pass(p.plugin(), &log()).await.unwrap();
    assert!(p.fake.link(&host_end).is_some(), "{:?}", p.fake.names());
}

/// A swarm network's ID (base 36, not hex), in the state.
const SWARM_NETWORK: &str = "lt58xre1i7zb1r4vvuwia72mv";
/// Another swarm network's, whose devices a crash left behind.
const SWARM_GONE: &str = "qk3b0d9x2m1c7v5n8z4w6y0aa";

/// A plugin holding one swarm network (its bridge and VXLAN device).
async fn swarm_network(tag: &str) -> FakePlugin {
    let p = FakePlugin::new(tag);
    call(
        &p,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": SWARM_NETWORK, "Options": {"com.docker.network.generic": {crate::options::VXLAN_VNI: "4242"}},
               "IPv4Data": [{"AddressSpace": "", "Pool": "10.92.0.0/24", "Gateway": "10.92.0.1/24"}]}),
    )
    .await;
    p
}

/// What a crash (or a missed DeleteNetwork with the state lost) leaves of a
/// swarm network: its bridge and, as its port, its VXLAN device with a
/// flooding entry, a forwarding entry and a neighbour. Returns their names.
fn leave_swarm_devices(p: &FakePlugin, id: &str, owner: Option<&str>) -> (String, String) {
    use crate::dataplane::{FLOOD_MAC, FdbEntry, NeighEntry, VxlanEntries};
    let (bridge, vxlan) = (bridge_name(id), crate::names::vxlan_name(id));
    let dst = "10.99.0.12".parse().unwrap();
    let entries = VxlanEntries {
        fdb: vec![FdbEntry { mac: FLOOD_MAC.into(), dst }, FdbEntry { mac: "02:42:0a:5c:00:09".into(), dst }],
        neigh: vec![NeighEntry { ip: "10.92.0.9".parse().unwrap(), mac: "02:42:0a:5c:00:09".into() }],
    };
    let owner = owner.map(str::to_string);
    let mut links = p.fake.links.lock().unwrap();
    links.insert(bridge.clone(), FakeLink { owner: owner.clone(), ..foreign_link(LinkKind::Bridge) });
    let device = FakeLink {
        controller: Some(bridge.clone()),
        vxlan: Some((4343, 4799)),
        entries,
        owner,
        ..foreign_link(LinkKind::Vxlan)
    };
    links.insert(vxlan.clone(), device);
    (bridge, vxlan)
}

/// Swarm networks' IDs are not hex: their leftover bridge and VXLAN device
/// (with its entries) were once neither removed by the reconciler nor listed
/// by `gc`. Now both go, and only those: the state's swarm network, devices
/// with another state's mark or none, and a bridge with a container's veth stay.
#[tokio::test]
async fn at_start_removes_a_swarm_networks_leftover_devices_and_keeps_everything_else() {
    let p = swarm_network("swarm-leftovers").await;
    let instance = p.plugin().instance_id().to_string();
    let (stray_bridge, stray_vxlan) = leave_swarm_devices(&p, SWARM_GONE, Some(&instance));
    let (other_bridge, other_vxlan) = leave_swarm_devices(&p, "zz3b0d9x2m1c7v5n8z4w6y0aa", Some("0123456789abcdef"));
    let (bare_bridge, bare_vxlan) = leave_swarm_devices(&p, "yy3b0d9x2m1c7v5n8z4w6y0aa", None);
    // A leftover bridge whose port is a container's interface is in use.
    let used_bridge = bridge_name("xx3b0d9x2m1c7v5n8z4w6y0aa");
    {
        let mut links = p.fake.links.lock().unwrap();
        links.insert(used_bridge.clone(), own_link(&p, LinkKind::Bridge));
        let veth = FakeLink {
            controller: Some(used_bridge.clone()),
            peer: Some("in-a-container".into()),
            ..own_link(&p, LinkKind::Veth)
        };
        links.insert(veth_names("abcdefabcde00000000000000000000000000000000000000000000000000000").0, veth);
    }
    let listed = |report: crate::gc::GcReport| -> Vec<String> {
        report.leftovers.into_iter().filter(|l| l.in_use.is_none()).map(|l| l.name).collect()
    };
    let gc = crate::gc::GcRequest { remove: false };
    let mut before = listed(crate::gc::run(p.plugin(), gc.clone()).await);
    before.retain(|n| n != &other_bridge && n != &other_vxlan); // another state's: gc lists them, the reconciler keeps them
    assert_eq!(before, vec![stray_bridge.clone(), stray_vxlan.clone()], "gc lists the swarm leftovers");

    at_start(p.plugin(), &log()).await.unwrap();

    for stray in [&stray_bridge, &stray_vxlan] {
        assert!(p.fake.link(stray).is_none(), "{stray} not removed: {:?}", p.fake.names());
    }
    let kept = [bridge_name(SWARM_NETWORK), crate::names::vxlan_name(SWARM_NETWORK), other_bridge, other_vxlan];
    for name in kept.iter().chain([&bare_bridge, &bare_vxlan, &used_bridge]) {
        assert!(p.fake.link(name).is_some(), "{name} removed");
    }
    let after = listed(crate::gc::run(p.plugin(), gc).await);
    assert!(!after.iter().any(|n| n == &stray_bridge || n == &stray_vxlan), "{after:?}");
}

/// The periodic pass sees a swarm network's leftovers too (a bridge whose
/// only port is a leftover VXLAN device counts), and removes them.
#[tokio::test]
async fn a_pass_removes_a_swarm_networks_leftover_devices() {
    let p = swarm_network("swarm-leftovers-pass").await;
    let instance = p.plugin().instance_id().to_string();
    pass(p.plugin(), &log()).await.unwrap();
    let (stray_bridge, stray_vxlan) = leave_swarm_devices(&p, SWARM_GONE, Some(&instance));

    pass(p.plugin(), &log()).await.unwrap();

    assert!(p.fake.link(&stray_bridge).is_none() && p.fake.link(&stray_vxlan).is_none(), "{:?}", p.fake.names());
    assert!(p.fake.link(&crate::names::vxlan_name(SWARM_NETWORK)).is_some());
    // A device alone (its bridge gone already) is a leftover too.
    let (bridge, vxlan) = leave_swarm_devices(&p, SWARM_GONE, Some(&instance));
    p.fake.links.lock().unwrap().remove(&bridge);
    pass(p.plugin(), &log()).await.unwrap();
    assert!(p.fake.link(&vxlan).is_none(), "{:?}", p.fake.names());
}

/// A joined endpoint with host port 18080 published on `network` (10.9x.0.5),
/// its container's namespace then destroyed with the pair in it (dockerd
/// killed: its next start kills the container).
async fn joined_endpoint_whose_pair_is_gone(p: &FakePlugin, network: &str, prefix: &str) {
    call(
        p,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": network, "EndpointID": ENDPOINT, "Interface": {"Address": format!("{prefix}.5/24")}}),
    )
    .await;
    call(p, "/NetworkDriver.Join", json!({"NetworkID": network, "EndpointID": ENDPOINT, "SandboxKey": "/x"})).await;
    let ports = json!({"com.docker.network.portmap": [
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080}]});
    call(
        p,
        "/NetworkDriver.ProgramExternalConnectivity",
        json!({"NetworkID": network, "EndpointID": ENDPOINT, "Options": ports}),
    )
    .await;
    let (host_end, peer) = veth_names(ENDPOINT);
    p.fake.links.lock().unwrap().remove(&host_end);
    p.fake.links.lock().unwrap().remove(&peer);
}

fn published_ports(p: &FakePlugin) -> usize {
    p.fw.applied.lock().unwrap().iter().map(|n| n.ports.len()).sum()
}

/// A worker's dockerd killed: its swarm network's endpoints never get Leave
/// or DeleteEndpoint (dockerd knows neither at its next start). Before, the
/// record held its host port for ever and the service's next task on the
/// node was refused it ("host port 18080/tcp … already published").
#[tokio::test]
async fn a_swarm_endpoint_whose_pair_went_with_its_container_is_forgotten_after_the_grace() {
    let p = swarm_network("swarm-pair-gone").await;
    joined_endpoint_whose_pair_is_gone(&p, SWARM_NETWORK, "10.92.0").await;
    assert_eq!(published_ports(&p), 1);
    let t0 = Instant::now();
    pass_at(p.plugin(), &log(), t0).await.unwrap();
    pass_at(p.plugin(), &log(), t0 + UNCLAIMED_GRACE / 2).await.unwrap();
    assert_eq!(endpoint_count(&p).await, 1, "kept within the grace");
    pass_at(p.plugin(), &log(), t0 + UNCLAIMED_GRACE).await.unwrap();
    assert_eq!(endpoint_count(&p).await, 0, "record kept");
    assert_eq!(published_ports(&p), 0, "its host port stays published");
    assert!(crate::membership::local_directory(p.plugin()).await.is_empty(), "still in this node's directory");
}

/// On a local network dockerd still holds the endpoint (it sends Leave,
/// DeleteEndpoint and ReleaseAddress itself): the record stays.
#[tokio::test]
async fn a_local_endpoint_whose_pair_is_gone_is_left_to_dockerd() {
    let p = network_with_endpoint("local-pair-gone").await;
    call(&p, "/NetworkDriver.DeleteEndpoint", json!({"NetworkID": NETWORK, "EndpointID": ENDPOINT})).await;
    joined_endpoint_whose_pair_is_gone(&p, NETWORK, "10.91.0").await;
    pass_at(p.plugin(), &log(), Instant::now() + 2 * UNCLAIMED_GRACE).await.unwrap();
    pass_at(p.plugin(), &log(), Instant::now() + 4 * UNCLAIMED_GRACE).await.unwrap();
    assert_eq!(endpoint_count(&p).await, 1);
    assert_eq!(published_ports(&p), 1);
}
