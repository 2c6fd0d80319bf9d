//! Membership: dockerd's view parsed, the entries planned and diffed, and
//! written to the fake kernel.

use serde_json::json;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Trimmed from `docker network inspect -v` on a worker of the lab (20.10).
fn verbose_inspect() -> Value {
    json!({
        "Name": "ov",
        "Peers": [
            {"Name": "626a3a10c4a1", "IP": "10.99.0.11"},
            {"Name": "b9b8e0c69f76", "IP": "10.99.0.12"},
            {"Name": "ae301271c0e6", "IP": "10.99.0.13"},
            {"Name": "0dd0f1b2c3d4", "IP": "unknown"}
        ],
        "Services": {
            "": {"VIP": "<nil>", "Ports": [], "LocalLBIndex": 0, "Tasks": [
                {"Name": "c1", "EndpointID": "5d30", "EndpointIP": "10.0.1.2", "Info": {"Host IP": "10.99.0.11"}},
                {"Name": "c3", "EndpointID": "787a", "EndpointIP": "10.0.1.6", "Info": {"Host IP": "10.99.0.13"}},
                {"Name": "c2", "EndpointID": "829e", "EndpointIP": "10.0.1.4", "Info": {"Host IP": "10.99.0.12"}}
            ]},
            "g": {"VIP": "<nil>", "Ports": [], "LocalLBIndex": 256, "Tasks": [
                {"Name": "g.1", "EndpointID": "cbf6", "EndpointIP": "10.0.1.10", "Info": {"Host IP": "10.99.0.11"}},
                {"Name": "g.2", "EndpointID": "e6f2", "EndpointIP": "10.0.1.9", "Info": {"Host IP": "10.99.0.13"}},
                {"Name": "g.3", "EndpointID": "dead", "EndpointIP": "10.0.1.20", "Info": {"Host IP": "10.99.0.14"}}
            ]}
        }
    })
}

#[test]
fn dockerds_view_gives_live_peers_and_every_endpoint_with_its_host() {
    let view = parse_network_view(&verbose_inspect());
    assert_eq!(view.peers, BTreeSet::from([ip("10.99.0.11"), ip("10.99.0.12"), ip("10.99.0.13")]));
    assert_eq!(view.endpoints.len(), 6);
    assert!(view.endpoints.contains(&(ip("10.0.1.9"), ip("10.99.0.13"))));
    assert_eq!(parse_network_view(&json!({"Peers": null, "Services": null})), NetworkView::default());
}

/// What the other hosts' plugins serve: their endpoints of network "n".
fn directories() -> BTreeMap<IpAddr, PeerDirectory> {
    let of = |eps: &[(&str, &str)]| {
        PeerDirectory::Read(Directory::from([(
            "n".to_string(),
            eps.iter().map(|(i, m)| (ip(i), m.to_string())).collect(),
        )]))
    };
    BTreeMap::from([
        (ip("10.99.0.11"), of(&[("10.0.1.2", "02:42:0a:00:01:02"), ("10.0.1.10", "02:42:0a:00:01:0a")])),
        (ip("10.99.0.13"), of(&[("10.0.1.6", "02:42:0a:00:01:06"), ("10.0.1.9", "02:42:0a:00:01:09")])),
    ])
}

/// dockerd's view without hosts (a remote driver's endpoints carry no "Host IP").
fn hostless_view() -> NetworkView {
    NetworkView { endpoints: vec![], ..parse_network_view(&verbose_inspect()) }
}

#[test]
fn the_plan_floods_to_every_other_live_peer_and_leaves_out_self_and_dead_hosts() {
    let view = parse_network_view(&verbose_inspect());
    let plan = plan("n", &view, Some(ip("10.99.0.12")), &BTreeMap::new(), &VxlanEntries::default());
    let flood: Vec<IpAddr> = plan.fdb.iter().filter(|e| e.mac == FLOOD_MAC).map(|e| e.dst).collect();
    assert_eq!(flood, vec![ip("10.99.0.11"), ip("10.99.0.13")]);
    let neighbours: Vec<IpAddr> = plan.neigh.iter().map(|n| n.ip).collect();
    // Not c2 (this node's own), not 10.0.1.20 (its host 10.99.0.14 is not a live peer).
    assert_eq!(neighbours, vec![ip("10.0.1.2"), ip("10.0.1.6"), ip("10.0.1.9"), ip("10.0.1.10")]);
    assert!(plan.fdb.contains(&FdbEntry { mac: "02:42:0a:00:01:09".into(), dst: ip("10.99.0.13") }));
    assert!(plan.neigh.contains(&NeighEntry { ip: ip("10.0.1.9"), mac: "02:42:0a:00:01:09".into() }));
    assert_eq!(plan.fdb.len(), 2 + 4);
}

#[test]
fn endpoints_are_placed_from_each_hosts_directory() {
    let me = Some(ip("10.99.0.12"));
    let planned = plan("n", &hostless_view(), me, &directories(), &VxlanEntries::default());
    assert_eq!(
        planned,
        plan("n", &parse_network_view(&verbose_inspect()), me, &BTreeMap::new(), &VxlanEntries::default())
    );
    // Another network's endpoints are not this one's.
    assert_eq!(plan("m", &hostless_view(), me, &directories(), &VxlanEntries::default()).neigh, vec![]);
}

#[test]
fn a_missed_directory_keeps_the_hosts_entries_and_a_gone_one_drops_them() {
    let me = Some(ip("10.99.0.12"));
    let before = plan("n", &hostless_view(), me, &directories(), &VxlanEntries::default());
    let mut dirs = directories();
    dirs.insert(ip("10.99.0.13"), PeerDirectory::Missed);
    assert_eq!(plan("n", &hostless_view(), me, &dirs, &before), before);
    dirs.insert(ip("10.99.0.13"), PeerDirectory::Gone);
    let after = plan("n", &hostless_view(), me, &dirs, &before);
    assert!(after.fdb.iter().all(|e| e.dst != ip("10.99.0.13")), "nothing points at a dead host: {after:?}");
    assert!(after.neigh.iter().all(|n| n.ip != ip("10.0.1.6") && n.ip != ip("10.0.1.9")));
    assert!(after.fdb.iter().any(|e| e.dst == ip("10.99.0.11")), "the live host keeps its entries");
}

#[test]
fn a_host_that_leaves_takes_its_entries_with_it() {
    let mut view = hostless_view();
    let me = Some(ip("10.99.0.12"));
    let before = plan("n", &view, me, &directories(), &VxlanEntries::default());
    view.peers.remove(&ip("10.99.0.13"));
    let after = plan("n", &view, me, &directories(), &before);
    let (remove, add) = diff(&before, &after);
    assert_eq!(add, VxlanEntries::default());
    assert!(remove.fdb.iter().all(|e| e.dst == ip("10.99.0.13")) && remove.fdb.len() == 3, "{remove:?}");
    assert_eq!(remove.neigh.iter().map(|n| n.ip).collect::<Vec<_>>(), vec![ip("10.0.1.6"), ip("10.0.1.9")]);
    assert!(after.fdb.iter().chain(before.fdb.iter()).all(|e| e.dst != ip("10.99.0.12")));
}

#[test]
fn an_endpoint_moving_host_is_removed_from_the_old_and_added_to_the_new() {
    let old =
        VxlanEntries { fdb: vec![FdbEntry { mac: "02:42:0a:00:01:09".into(), dst: ip("10.99.0.13") }], neigh: vec![] };
    let new =
        VxlanEntries { fdb: vec![FdbEntry { mac: "02:42:0a:00:01:09".into(), dst: ip("10.99.0.11") }], neigh: vec![] };
    let (remove, add) = diff(&old, &new);
    assert_eq!((remove.fdb, add.fdb), (old.fdb.clone(), new.fdb.clone()));
    assert_eq!(diff(&new, &new), (VxlanEntries::default(), VxlanEntries::default()));
}

#[tokio::test]
async fn apply_writes_the_difference_and_leaves_a_gone_device_alone() {
    let h = crate::testing::FakePlugin::new("membership-apply");
    let log = Logger::root(slog::Discard, slog::o!());
    // No device: nothing is written, no error.
    let desired = plan("n", &hostless_view(), Some(ip("10.99.0.12")), &directories(), &VxlanEntries::default());
    let want = |_: &VxlanEntries| desired.clone();
    apply(h.plugin(), "rbx-nothere0000", &log, "n", want).await.unwrap();
    assert!(!h.fake.calls().iter().any(|c| c.starts_with("add_")));
    h.fake.links.lock().unwrap().insert(
        "rbx-lt58xre1i7z".into(),
        crate::testing::FakeLink { kind: crate::dataplane::LinkKind::Vxlan, ..crate::testing::FakeLink::bridge() },
    );
    apply(h.plugin(), "rbx-lt58xre1i7z", &log, "n", want).await.unwrap();
    assert_eq!(h.fake.link("rbx-lt58xre1i7z").unwrap().entries, desired);
    // Once in line, a pass writes nothing.
    let writes = |calls: Vec<String>| calls.iter().filter(|c| c.starts_with("add_") || c.starts_with("del_")).count();
    let before = writes(h.fake.calls());
    apply(h.plugin(), "rbx-lt58xre1i7z", &log, "n", want).await.unwrap();
    assert_eq!(writes(h.fake.calls()), before);
    // Everything goes when the network has no other member left.
    apply(h.plugin(), "rbx-lt58xre1i7z", &log, "n", |_| VxlanEntries::default()).await.unwrap();
    assert_eq!(h.fake.link("rbx-lt58xre1i7z").unwrap().entries, VxlanEntries::default());
}

#[tokio::test]
async fn with_no_swarm_network_left_the_firewall_group_goes_and_dockerd_is_not_asked() {
    let h = crate::testing::FakePlugin::new("membership-no-network");
    let log = Logger::root(slog::Discard, slog::o!());
    *h.fw.swarm.lock().unwrap() = Some((4799, vec![ip("10.99.0.11")]));
    // The socket does not exist: a pass that asked dockerd would fail.
    pass(h.plugin(), &log).await.unwrap();
    assert_eq!(*h.fw.swarm.lock().unwrap(), None);
}
