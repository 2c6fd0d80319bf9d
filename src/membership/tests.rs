//! Membership: dockerd's view parsed, the entries planned and diffed, and
//! written to the fake kernel.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A dockerd that answers `GET /info` and `GET /networks/<id>` from `answers`
/// (path prefix → status and body) on a Unix socket, until dropped.
struct FakeDockerd {
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
    _dir: crate::testing::TempDir,
}

impl FakeDockerd {
    fn start(answers: Vec<(&'static str, u16, Value)>) -> FakeDockerd {
        let dir = crate::testing::TempDir::new("fake-dockerd");
        let socket = dir.0.join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = vec![0u8; 4096];
                let n = stream.read(&mut head).await.unwrap_or(0);
                let path = String::from_utf8_lossy(&head[..n]).split_whitespace().nth(1).unwrap_or("").to_string();
                let (code, body) = answers
                    .iter()
                    .find(|(prefix, _, _)| path.starts_with(prefix))
                    .map(|(_, code, body)| (*code, body.to_string()))
                    .unwrap_or((404, json!({"message": "page not found"}).to_string()));
                let answer = format!("HTTP/1.0 {code} X\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        FakeDockerd { socket, task, _dir: dir }
    }
}

impl Drop for FakeDockerd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A swarm network made on the plugin as a node's dockerd makes it (the
/// manager's AllocateNetwork answer in its generic options).
async fn swarm_network(h: &crate::testing::FakePlugin, id: &str, pool: &str, gateway: &str) {
    let v4 = json!([{"AddressSpace": "GlobalDefault", "Pool": pool, "Gateway": gateway}]);
    let allocated = h
        .plugin()
        .allocate_network(serde_json::from_value(json!({"NetworkID": id, "IPv4Data": v4, "Options": {}})).unwrap())
        .unwrap();
    let create = json!({"NetworkID": id, "IPv4Data": v4, "IPv6Data": [],
        "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": allocated.options}});
    h.plugin().create_network(serde_json::from_value(create).unwrap()).await.unwrap();
}

#[tokio::test]
async fn a_network_dockerd_no_longer_knows_does_not_hold_back_the_others_members() {
    const KNOWN: &str = "lt58xre1i7zb1r4vvuwia72mv";
    // Loopback addresses: the pass reads the peer's directory (refused here, a miss).
    let view = json!({"Peers": [{"IP": "127.0.0.1"}, {"IP": "127.0.0.2"}]});
    let dockerd = FakeDockerd::start(vec![
        ("/info", 200, json!({"Swarm": {"NodeAddr": "127.0.0.1"}})),
        ("/networks/lt58xre1i7zb1r4vvuwia72mv", 200, view),
        ("/networks/qk3b0d9x2m1c7v5n8z4w6y0aa", 404, json!({"message": "network not found"})),
    ]);
    let settings = crate::driver::swarm::SwarmSettings {
        docker_socket: dockerd.socket.clone(),
        vxlan_port: 47990,
        ..Default::default()
    };
    let h = crate::testing::FakePlugin::with_swarm_settings("membership-stale", settings);
    swarm_network(&h, KNOWN, "10.0.1.0/24", "10.0.1.1/24").await;
    // A node that missed DeleteNetwork: its record and device stay, dockerd says 404.
    swarm_network(&h, STALE, "10.0.2.0/24", "10.0.2.1/24").await;
    let log = Logger::root(slog::Discard, slog::o!());
    let _ = pass(h.plugin(), &log).await;
    assert_eq!(
        *h.fw.swarm.lock().unwrap(),
        Some((47990, vec![ip("127.0.0.2")])),
        "the known network's member is admitted"
    );
    let unknown: Vec<String> = h.plugin().swarm_view().unknown_to_dockerd.keys().cloned().collect();
    assert_eq!(unknown, vec![STALE.to_string()]);
    assert!(h.plugin().lock_state().await.networks.contains_key(STALE), "kept until forget_after has passed");
}

const STALE: &str = "qk3b0d9x2m1c7v5n8z4w6y0aa";

/// A plugin whose dockerd answers 404 for STALE, a swarm network it holds
/// with an endpoint and (rustbridge's IPAM) its local pool, and `forget_after`.
async fn stale_network(tag: &str, forget_after: Duration) -> (crate::testing::FakePlugin, FakeDockerd) {
    let dockerd = FakeDockerd::start(vec![
        ("/info", 200, json!({"Swarm": {"NodeAddr": "127.0.0.1"}})),
        ("/networks/", 404, json!({"message": "network not found"})),
    ]);
    let settings = crate::driver::swarm::SwarmSettings {
        docker_socket: dockerd.socket.clone(),
        vxlan_port: 47991,
        forget_after,
        ..Default::default()
    };
    let h = crate::testing::FakePlugin::with_swarm_settings(tag, settings);
    let pool = json!({"AddressSpace": crate::ipam::LOCAL_ADDRESS_SPACE, "Pool": "10.0.2.0/24", "V6": false});
    h.plugin().request_pool(serde_json::from_value(pool).unwrap()).await.unwrap();
    swarm_network(&h, STALE, "10.0.2.0/24", "10.0.2.1/24").await;
    let endpoint = json!({"NetworkID": STALE, "EndpointID": "e".repeat(64), "Interface": {"Address": "10.0.2.5/24"}});
    h.plugin().create_endpoint(serde_json::from_value(endpoint).unwrap()).await.unwrap();
    (h, dockerd)
}

fn stale_is_gone(h: &crate::testing::FakePlugin, state: &crate::driver::State) -> bool {
    let record_gone = !state.networks.contains_key(STALE) && state.endpoints.is_empty();
    let devices_gone = !h.fake.names().iter().any(|n| n.starts_with("rb"));
    record_gone && devices_gone && state.ipam.pools().next().is_none()
}

#[tokio::test]
async fn a_swarm_network_dockerd_has_not_known_for_forget_after_is_removed_with_its_endpoints_and_local_pool() {
    let (h, _dockerd) = stale_network("membership-forget", Duration::ZERO).await;
    let log = Logger::root(slog::Discard, slog::o!());
    assert!(!stale_is_gone(&h, &*h.plugin().lock_state().await));
    pass(h.plugin(), &log).await.unwrap();
    assert!(stale_is_gone(&h, &*h.plugin().lock_state().await), "{:?}", h.fake.names());
    assert!(h.plugin().swarm_view().unknown_to_dockerd.is_empty());
}

#[tokio::test]
async fn a_call_naming_an_unknown_network_keeps_it_and_starts_its_time_again() {
    let (h, _dockerd) = stale_network("membership-forget-call", Duration::from_secs(3600)).await;
    let log = Logger::root(slog::Discard, slog::o!());
    pass(h.plugin(), &log).await.unwrap();
    assert!(!stale_is_gone(&h, &*h.plugin().lock_state().await), "not before forget_after");
    let since = h.plugin().swarm_view().unknown_to_dockerd[STALE];
    // dockerd uses the network after all (a CreateEndpoint naming it) before the forget takes the lock.
    let endpoint = json!({"NetworkID": STALE, "EndpointID": "f".repeat(64), "Interface": {"Address": "10.0.2.6/24"}});
    h.plugin().create_endpoint(serde_json::from_value(endpoint).unwrap()).await.unwrap();
    assert!(!h.plugin().forget_swarm_network(STALE, since).await.unwrap());
    assert!(h.plugin().lock_state().await.networks.contains_key(STALE));
    let since = h.plugin().swarm_view().unknown_to_dockerd[STALE];
    assert!(h.plugin().forget_swarm_network(STALE, since).await.unwrap());
    assert!(stale_is_gone(&h, &*h.plugin().lock_state().await));
}
