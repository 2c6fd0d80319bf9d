//! End-to-end tests of the real binary in throwaway network namespaces: the
//! plugin runs inside a namespace prepared like a dockerd host (FORWARD policy
//! DROP, br_netfilter on), "containers" are further namespaces wired up the
//! way dockerd does after a Join, and traffic only flows between them.
//!
//! Needs root; without it the tests print "skipped: needs root", except with
//! CI=true where they fail. Run: `cargo test --test netns -- --test-threads=2`.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Netns, Plugin, fake_container, random_id, ready_or_skip, wait_until};
use rustbridge::names::{bridge_name, has_plugin_prefix, is_owned_veth_name, veth_names};
use serde_json::{Value, json};

macro_rules! require_root {
    () => {
        if !ready_or_skip(std::thread::current().name().unwrap_or("netns")) {
            return;
        }
    };
}

fn host_veth(endpoint_id: &str) -> String {
    veth_names(endpoint_id).0
}

/// A CreateNetwork body as dockerd 20.10–28 sends it.
fn network_request(id: &str, pool: &str, gateway: &str, generic: Value, extra: Value) -> Value {
    let mut options = json!({
        "com.docker.network.enable_ipv6": false,
        "com.docker.network.enable_ipv4": true,
        "com.docker.network.generic": generic,
    });
    if let Value::Object(extra) = extra {
        options.as_object_mut().unwrap().extend(extra);
    }
    json!({
        "NetworkID": id,
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": pool, "Gateway": gateway, "AuxAddresses": {}}],
        "IPv6Data": [],
        "Options": options,
    })
}

fn create_network(p: &Plugin, id: &str, pool: &str, gateway: &str, generic: Value) {
    p.ok("/NetworkDriver.CreateNetwork", network_request(id, pool, gateway, generic, json!({})));
}

/// What a CreateEndpoint + Join pair answered.
struct Joined {
    id: String,
    network: String,
    address: String,
    mac: String,
    peer: String,
    gateway: Option<String>,
    join_reply: Value,
}

fn create_and_join(p: &Plugin, network: &str, address: &str) -> Joined {
    let id = random_id();
    let created = p.ok(
        "/NetworkDriver.CreateEndpoint",
        json!({
            "NetworkID": network, "EndpointID": id,
            "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""},
            "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []},
        }),
    );
    let mac = created["Interface"]["MacAddress"]
        .as_str()
        .unwrap_or_else(|| panic!("CreateEndpoint with an empty MacAddress must return one: {created}"))
        .to_string();
    let join_reply = p.ok(
        "/NetworkDriver.Join",
        json!({
            "NetworkID": network, "EndpointID": id,
            "SandboxKey": format!("/var/run/docker/netns/{}", &id[..12]), "Options": {},
        }),
    );
    let peer = join_reply["InterfaceName"]["SrcName"]
        .as_str()
        .unwrap_or_else(|| panic!("Join must return InterfaceName.SrcName: {join_reply}"))
        .to_string();
    assert_eq!(join_reply["InterfaceName"]["DstPrefix"], "eth", "{join_reply}");
    let gateway = join_reply.get("Gateway").and_then(Value::as_str).map(str::to_string);
    Joined { id, network: network.to_string(), address: address.to_string(), mac, peer, gateway, join_reply }
}

fn leave_and_delete(p: &Plugin, e: &Joined) {
    let body = json!({"NetworkID": e.network, "EndpointID": e.id});
    p.ok("/NetworkDriver.Leave", body.clone());
    p.ok("/NetworkDriver.DeleteEndpoint", body);
}

/// Moves a joined endpoint's peer into a new fake container, as dockerd would.
fn container_for(host: &Netns, e: &Joined) -> Netns {
    fake_container(host, &e.peer, Some(&e.mac), &e.address, e.gateway.as_deref())
}

/// The owner mark (alias) the plugin wrote on a link it made.
fn owner_mark(ns: &Netns, link: &str) -> String {
    let found = ns.link(link).unwrap_or_else(|| panic!("no link {link}"));
    let alias = found["ifalias"].as_str().unwrap_or_else(|| panic!("{link} carries no owner mark: {found}"));
    assert!(alias.starts_with("rustbridge:"), "{alias}");
    alias.to_string()
}

fn gateway_ip(cidr: &str) -> String {
    cidr.split('/').next().unwrap().to_string()
}

fn flags(link: &Value) -> Vec<String> {
    link["flags"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(str::to_string)).collect()
}

fn assert_forward_policy_drop(ns: &Netns) {
    let rules = ns.iptables_chain("filter", "FORWARD").expect("FORWARD chain");
    assert!(rules.iter().any(|r| r == "-P FORWARD DROP"), "FORWARD policy must be DROP: {rules:?}");
    let nf = ns.exec(&["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"]).expect_ok();
    assert_eq!(nf.stdout.trim(), "1", "bridged traffic must go through iptables");
}

fn assert_no_plugin_traces(ns: &Netns) {
    let leftovers: Vec<String> = ns.link_names().into_iter().filter(|n| has_plugin_prefix(n)).collect();
    assert!(leftovers.is_empty(), "links left behind: {leftovers:?}");
    let saved = ns.iptables_save();
    assert!(!saved.contains("RUSTBRIDGE"), "rules left behind:\n{saved}");
    assert_eq!(ns.nft_table(), None, "nftables table left behind");
}

/// The accept rule in RUSTBRIDGE-FORWARD, exactly one jump to it from
/// FORWARD, and the network's chains in the nftables table.
fn forward_rules_in_place(ns: &Netns, bridge: &str) -> bool {
    let Some(chain) = ns.iptables_chain("filter", "RUSTBRIDGE-FORWARD") else {
        return false;
    };
    let forward = ns.iptables_chain("filter", "FORWARD").unwrap_or_default();
    let jumps = forward.iter().filter(|r| *r == "-A FORWARD -j RUSTBRIDGE-FORWARD").count();
    let accept = chain.iter().any(|r| r.ends_with("-m mark --mark 0x1000000/0x1000000 -j ACCEPT"));
    let intra = format!("iifname \"{bridge}\" meta mark set meta mark | 0x01000000 accept");
    let table = ns.nft_table().unwrap_or_default();
    jumps == 1 && accept && table.contains(&format!("\"{bridge}\" : jump to-{bridge}")) && table.contains(&intra)
}

/// The rules of one chain of the plugin's nftables table, as `nft` prints them.
fn nft_chain(ns: &Netns, chain: &str) -> Vec<String> {
    let out = ns.exec(&["nft", "list", "chain", "inet", "rustbridge", chain]);
    out.stdout
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("table") && !l.starts_with("chain") && !l.starts_with("type ") && *l != "}"
        })
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------- tests

#[test]
fn bridge_veth_and_ping() {
    require_root!();
    let host = Netns::host();
    let p = Plugin::start(&host);
    let net = random_id();
    let bridge = bridge_name(&net);
    create_network(&p, &net, "10.77.0.0/24", "10.77.0.1/24", json!({"com.docker.network.driver.mtu": "1400"}));

    let link = host.link(&bridge).unwrap_or_else(|| panic!("bridge {bridge} missing: {:?}", host.link_names()));
    assert_eq!(link["linkinfo"]["info_kind"], "bridge", "{link}");
    assert!(flags(&link).contains(&"UP".to_string()), "bridge not up: {link}");
    assert_eq!(link["mtu"], 1400, "{link}");
    assert_eq!(host.ipv4_addresses(&bridge), vec!["10.77.0.1/24"]);

    let a = create_and_join(&p, &net, "10.77.0.2/24");
    let b = create_and_join(&p, &net, "10.77.0.3/24");
    for e in [&a, &b] {
        assert_eq!(e.gateway.as_deref(), Some("10.77.0.1"), "{}", e.join_reply);
        assert_eq!(e.peer, veth_names(&e.id).1);
        let veth = host.link(&host_veth(&e.id)).unwrap_or_else(|| panic!("host veth missing: {:?}", host.link_names()));
        assert_eq!(veth["master"], bridge.as_str(), "{veth}");
        assert!(flags(&veth).contains(&"UP".to_string()), "host veth not up: {veth}");
        assert_eq!(veth["mtu"], 1400, "{veth}");
        let peer = host.link(&e.peer).expect("peer is created in the plugin's namespace");
        assert_eq!(peer["mtu"], 1400, "{peer}");
    }
    assert_ne!(a.mac, b.mac);

    let ca = container_for(&host, &a);
    let cb = container_for(&host, &b);
    let eth0 = ca.link("eth0").expect("eth0 in container");
    assert_eq!(eth0["address"], a.mac.as_str(), "{eth0}");
    assert_eq!(eth0["mtu"], 1400, "{eth0}");

    // dockerd's host firewall is in place, so only the plugin's accepts let this through.
    assert_forward_policy_drop(&host);
    assert!(ca.ping_ok("10.77.0.3", 3), "a cannot ping b");
    assert!(cb.ping_ok("10.77.0.2", 3), "b cannot ping a");
    assert!(ca.ping_ok("10.77.0.1", 3), "a cannot ping its gateway");
    assert!(cb.ping_ok("10.77.0.1", 3), "b cannot ping its gateway");

    leave_and_delete(&p, &a);
    leave_and_delete(&p, &b);
    assert!(!ca.has_link("eth0"), "Leave must remove the veth pair");
    p.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
    assert!(!host.has_link(&bridge), "bridge still there after DeleteNetwork");
    assert_no_plugin_traces(&host);
}

#[test]
fn isolation_between_networks() {
    require_root!();
    let host = Netns::host();
    let p = Plugin::start(&host);
    let (n1, n2) = (random_id(), random_id());
    create_network(&p, &n1, "10.78.1.0/24", "10.78.1.1/24", json!({}));
    create_network(&p, &n2, "10.78.2.0/24", "10.78.2.1/24", json!({}));
    let a = create_and_join(&p, &n1, "10.78.1.2/24");
    let b = create_and_join(&p, &n2, "10.78.2.2/24");
    let ca = container_for(&host, &a);
    let cb = container_for(&host, &b);

    assert!(ca.ping_ok("10.78.1.1", 3), "a cannot ping its own gateway");
    assert!(cb.ping_ok("10.78.2.1", 3), "b cannot ping its own gateway");
    assert_forward_policy_drop(&host);
    assert!(!ca.ping_once("10.78.2.2", 1), "a reached b across networks");
    assert!(!cb.ping_once("10.78.1.2", 1), "b reached a across networks");

    // With the FORWARD policy at ACCEPT only the plugin's own rules stand
    // between the networks (routing and forwarding would carry the packets).
    host.exec(&["iptables", "-P", "FORWARD", "ACCEPT"]).expect_ok();
    assert!(!ca.ping_once("10.78.2.2", 1), "a reached b across networks with FORWARD policy ACCEPT");
    assert!(!cb.ping_once("10.78.1.2", 1), "b reached a across networks with FORWARD policy ACCEPT");
    assert!(ca.ping_ok("10.78.1.1", 3) && cb.ping_ok("10.78.2.1", 3), "gateways unreachable with policy ACCEPT");
}

#[test]
fn internal_network_has_no_gateway() {
    require_root!();
    let host = Netns::host();
    let p = Plugin::start(&host);
    let net = random_id();
    let bridge = bridge_name(&net);
    p.ok(
        "/NetworkDriver.CreateNetwork",
        network_request(&net, "10.79.0.0/24", "10.79.0.1/24", json!({}), json!({"com.docker.network.internal": true})),
    );
    let e = create_and_join(&p, &net, "10.79.0.2/24");
    assert!(
        e.join_reply.get("Gateway").is_none(),
        "internal network's Join must not carry a Gateway: {}",
        e.join_reply
    );
    assert!(e.join_reply.get("GatewayIPv6").is_none(), "{}", e.join_reply);
    assert!(host.has_link(&e.peer), "the peer still exists for dockerd to move");
    assert_eq!(nft_chain(&host, &format!("from-{bridge}")), ["drop"], "internal network must not forward out");
    let to = nft_chain(&host, &format!("to-{bridge}"));
    assert_eq!(to.last().map(String::as_str), Some("drop"), "nor in: {to:?}");
    assert_eq!(to.len(), 2, "only the intra-network verdict before the drop: {to:?}");
    assert!(nft_chain(&host, &format!("nat-{bridge}")).is_empty(), "no NAT for an internal network");
}

#[test]
fn kill9_and_restart_continue() {
    require_root!();
    let host = Netns::host();
    let mut p = Plugin::start(&host);

    // Network create as dockerd does it with the plugin as IPAM driver too.
    let spaces = p.ok("/IpamDriver.GetDefaultAddressSpaces", Value::Null);
    let space = spaces["LocalDefaultAddressSpace"].as_str().expect("local address space").to_string();
    let pool_reply = p.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": space, "Pool": "", "SubPool": "", "Options": {}, "V6": false}),
    );
    let pool_id = pool_reply["PoolID"].as_str().expect("PoolID").to_string();
    let pool = pool_reply["Pool"].as_str().expect("Pool").to_string();
    let request_address = |p: &Plugin| -> String {
        let reply = p.ok("/IpamDriver.RequestAddress", json!({"PoolID": pool_id, "Address": "", "Options": null}));
        reply["Address"].as_str().expect("Address").to_string()
    };
    let gateway = p.ok(
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    )["Address"]
        .as_str()
        .expect("gateway Address")
        .to_string();
    let net = random_id();
    let bridge = bridge_name(&net);
    let create = json!({
        "NetworkID": net,
        "IPv4Data": [{"AddressSpace": space, "Pool": pool, "Gateway": gateway, "AuxAddresses": {}}],
        "IPv6Data": [],
        "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}},
    });
    p.ok("/NetworkDriver.CreateNetwork", create.clone());
    let mut handed_out = vec![gateway.clone()];
    for _ in 0..3 {
        handed_out.push(request_address(&p));
    }
    let e = create_and_join(&p, &net, &handed_out[1]);
    let container = container_for(&host, &e);
    let ep_host = host_veth(&e.id);
    let mark = owner_mark(&host, &bridge);

    p.kill9();
    host.ip(&["link", "del", &bridge]).expect_ok();
    // Leftovers of this state (marked as its own, as a crash between kernel
    // step and commit leaves them) and look-alikes nobody can account for.
    let stray_bridge = bridge_name(&random_id());
    let (stray_host, stray_peer) = veth_names(&random_id());
    let foreign_bridge = bridge_name(&random_id());
    let (foreign_host, foreign_peer) = veth_names(&random_id());
    for (b, (h, c)) in [(&stray_bridge, (&stray_host, &stray_peer)), (&foreign_bridge, (&foreign_host, &foreign_peer))]
    {
        host.ip(&["link", "add", b, "type", "bridge"]).expect_ok();
        host.ip(&["link", "add", h, "type", "veth", "peer", "name", c]).expect_ok();
    }
    for own in [&stray_bridge, &stray_host] {
        host.ip(&["link", "set", own, "alias", &mark]).expect_ok();
    }
    p.restart();

    let link = host.link(&bridge).unwrap_or_else(|| panic!("bridge not recreated: {:?}", host.link_names()));
    assert!(flags(&link).contains(&"UP".to_string()), "{link}");
    assert_eq!(host.ipv4_addresses(&bridge), vec![gateway.clone()], "recreated bridge must carry the gateway");
    for stray in [&stray_bridge, &stray_host, &stray_peer] {
        assert!(!host.has_link(stray), "own leftover {stray} not removed: {:?}", host.link_names());
    }
    for foreign in [&foreign_bridge, &foreign_host, &foreign_peer] {
        assert!(host.has_link(foreign), "{foreign} is not this state's and must stay: {:?}", host.link_names());
    }
    assert!(host.has_link(&ep_host) && container.has_link("eth0"), "a joined endpoint's veths must be kept");
    assert!(container.ping_ok(&gateway_ip(&gateway), 3), "the container reaches its gateway after the restart");
    assert!(forward_rules_in_place(&host, &bridge), "firewall rules after restart:\n{}", host.iptables_save());

    let next = request_address(&p);
    assert!(!handed_out.contains(&next), "{next} was handed out before the restart: {handed_out:?}");
    handed_out.push(next);
    p.ok("/NetworkDriver.CreateNetwork", create); // dockerd retrying: idempotent
    assert!(host.has_link(&bridge));

    // Second crash, this time in the middle of a stream of calls.
    let granted = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(0usize));
    let worker = {
        let (socket, pool_id, granted, failures) =
            (p.socket.clone(), pool_id.clone(), granted.clone(), failures.clone());
        std::thread::spawn(move || {
            let body = json!({"PoolID": pool_id, "Address": "", "Options": null}).to_string();
            for _ in 0..20 {
                match common::http_post(&socket, "/IpamDriver.RequestAddress", body.as_bytes()) {
                    Ok((200, reply)) if reply["Address"].is_string() => {
                        granted.lock().unwrap().push(reply["Address"].as_str().unwrap().to_string());
                    }
                    _ => *failures.lock().unwrap() += 1,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let midway = wait_until(Duration::from_secs(10), || granted.lock().unwrap().len() >= 5);
    assert!(midway.is_some(), "the first 5 calls did not succeed in 10 s");
    p.kill9();
    worker.join().expect("worker thread");
    let before_kill = granted.lock().unwrap().clone();
    assert!(*failures.lock().unwrap() > 0, "kill -9 came too late: all 20 calls succeeded ({before_kill:?})");
    p.restart();
    handed_out.extend(before_kill);
    for _ in 0..5 {
        handed_out.push(request_address(&p));
    }
    let distinct: BTreeSet<&String> = handed_out.iter().collect();
    assert_eq!(distinct.len(), handed_out.len(), "an address was handed out twice: {handed_out:?}");
    assert!(host.has_link(&bridge));
}

#[test]
fn sigterm_is_fast_and_keeps_networks() {
    require_root!();
    let host = Netns::host();
    let mut p = Plugin::start(&host);
    let net = random_id();
    let bridge = bridge_name(&net);
    create_network(&p, &net, "10.80.0.0/24", "10.80.0.1/24", json!({}));

    let (took, status) = p.sigterm();
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(!p.socket.exists(), "socket {} left behind", p.socket.display());
    assert!(host.has_link(&bridge), "networks must stay while the plugin is away");
    assert_eq!(host.ipv4_addresses(&bridge), vec!["10.80.0.1/24"]);
    assert!(forward_rules_in_place(&host, &bridge), "rules must stay while the plugin is away");

    p.restart();
    let caps = p.ok("/NetworkDriver.GetCapabilities", Value::Null);
    assert_eq!(caps["Scope"], "local", "{caps}");
    create_network(&p, &net, "10.80.0.0/24", "10.80.0.1/24", json!({}));
    let e = create_and_join(&p, &net, "10.80.0.2/24");
    assert_eq!(e.gateway.as_deref(), Some("10.80.0.1"), "state survived the restart: {}", e.join_reply);
    assert!(host.has_link(&host_veth(&e.id)));
}

#[test]
fn firewall_rules_come_back_after_flush() {
    require_root!();
    let host = Netns::host();
    let p = Plugin::start(&host);
    let net = random_id();
    let bridge = bridge_name(&net);
    create_network(&p, &net, "10.81.0.0/24", "10.81.0.1/24", json!({}));
    assert!(forward_rules_in_place(&host, &bridge), "rules after CreateNetwork:\n{}", host.iptables_save());

    host.exec(&["iptables", "-F", "RUSTBRIDGE-FORWARD"]).expect_ok();
    host.exec(&["iptables", "-D", "FORWARD", "-j", "RUSTBRIDGE-FORWARD"]).expect_ok();
    assert!(!forward_rules_in_place(&host, &bridge));
    let back = wait_until(Duration::from_secs(4), || forward_rules_in_place(&host, &bridge));
    assert!(back.is_some(), "rules not restored within 4 s:\n{}", host.iptables_save());
    eprintln!("forward rules restored after {:?}", back.unwrap());

    // The nftables table too: a flushed chain, then the whole table deleted.
    let masq = format!("ip saddr 10.81.0.0/24 oifname != \"{bridge}\" masquerade");
    let nat = format!("nat-{bridge}");
    assert_eq!(nft_chain(&host, &nat), std::slice::from_ref(&masq));
    host.exec(&["nft", "flush", "chain", "inet", "rustbridge", &nat]).expect_ok();
    let back = wait_until(Duration::from_secs(4), || nft_chain(&host, &nat) == [masq.clone()]);
    assert!(back.is_some(), "NAT rules not restored within 4 s:\n{:?}", host.nft_table());
    host.exec(&["nft", "delete", "table", "inet", "rustbridge"]).expect_ok();
    let back = wait_until(Duration::from_secs(4), || forward_rules_in_place(&host, &bridge));
    assert!(back.is_some(), "table not restored within 4 s");
}

#[test]
fn bad_input_changes_nothing() {
    require_root!();
    let host = Netns::host();
    let p = Plugin::start(&host);
    let links_before = host.link_names();
    let assert_unchanged = |what: &str| {
        assert_eq!(host.link_names(), links_before, "{what} changed the links");
        let saved = host.iptables_save();
        assert!(!saved.contains("RUSTBRIDGE"), "{what} left rules:\n{saved}");
        assert_eq!(host.nft_table(), None, "{what} left a table");
    };
    let expect_err = |body: Value, needle: &str| {
        let (status, reply) = p.call("/NetworkDriver.CreateNetwork", body.clone());
        let err = reply["Err"].as_str().unwrap_or_else(|| panic!("no Err for {body}: {status} {reply}"));
        assert_ne!(status, 200, "{reply}");
        assert!(err.contains(needle), "Err should name {needle:?}: {err}");
        assert_unchanged(needle);
    };

    let net = random_id();
    expect_err(network_request(&net, "10.82.0.0/24", "10.82.1.1/24", json!({}), json!({})), "Gateway");
    expect_err(
        network_request(
            &net,
            "10.82.0.0/24",
            "10.82.0.1/24",
            json!({"com.docker.network.driver.mtu": "abc"}),
            json!({}),
        ),
        "com.docker.network.driver.mtu",
    );
    expect_err(
        network_request(
            &net,
            "10.82.0.0/24",
            "10.82.0.1/24",
            json!({"com.docker.network.driver.mtu": "20"}),
            json!({}),
        ),
        "com.docker.network.driver.mtu",
    );
    expect_err(
        network_request(&net, "10.82.0.0/24", "10.82.0.1/24", json!({"com.example.bogus": "1"}), json!({})),
        "com.example.bogus",
    );
    expect_err(network_request(&net, "10.82.0.0/33", "10.82.0.1/24", json!({}), json!({})), "Pool");
    expect_err(network_request("not-hex", "10.82.0.0/24", "10.82.0.1/24", json!({}), json!({})), "NetworkID");

    // IPAM errors use "Error" (dockerd hides an "Err" as "No address returned").
    for bad in ["10.0.0.0/33", "not-a-subnet"] {
        let (status, reply) = p.call(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "", "Pool": bad, "SubPool": "", "Options": {}, "V6": false}),
        );
        assert_ne!(status, 200, "{reply}");
        let error = reply["Error"].as_str().unwrap_or_else(|| panic!("IPAM error must use Error: {reply}"));
        assert!(error.contains("Pool"), "{error}");
        assert!(reply.get("Err").is_none(), "{reply}");
    }

    let (status, reply) = p.call("/NetworkDriver.NoSuchMethod", json!({}));
    assert_eq!(status, 404, "{reply}");
    assert!(reply["Err"].as_str().is_some_and(|e| e.contains("unknown method")), "{reply}");
    let (status, reply) = p.call("/IpamDriver.NoSuchMethod", json!({}));
    assert_eq!(status, 404, "{reply}");
    assert!(reply["Error"].is_string(), "{reply}");

    // Over the limit: refused before it is parsed; a valid request otherwise.
    let mut huge = network_request(&random_id(), "10.83.0.0/24", "10.83.0.1/24", json!({}), json!({}));
    huge["Padding"] = Value::String("x".repeat(rustbridge::server::MAX_BODY_BYTES + 1024));
    let (status, reply) = p.call("/NetworkDriver.CreateNetwork", huge);
    assert_eq!(status, 413, "{reply}");
    assert!(reply["Err"].as_str().is_some_and(|e| e.contains("refused")), "{reply}");
    assert_unchanged("an oversized body");

    // dockerd sends no body at all on argument-less calls.
    let (status, reply) = p.try_call_raw("/Plugin.Activate", b"").expect("Activate");
    assert_eq!(status, 200, "{reply}");
    let implements: Vec<&str> =
        reply["Implements"].as_array().expect("Implements").iter().filter_map(Value::as_str).collect();
    assert_eq!(implements, ["NetworkDriver", "IpamDriver"]);
    let (status, reply) = p.try_call_raw("/NetworkDriver.GetCapabilities", b"").expect("GetCapabilities");
    assert_eq!((status, reply["Scope"].as_str()), (200, Some("local")), "{reply}");
    let (status, reply) = p.try_call_raw("/IpamDriver.GetCapabilities", b"").expect("IPAM GetCapabilities");
    assert_eq!(status, 200, "{reply}");
    assert!(reply.get("RequiresMACAddress").is_some(), "{reply}");

    // Endpoint calls: an address outside the subnet, an unknown endpoint.
    create_network(&p, &net, "10.82.0.0/24", "10.82.0.1/24", json!({}));
    let links_with_network = host.link_names();
    let ep = random_id();
    let (status, reply) = p.call(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": "10.99.0.2/24", "AddressIPv6": "", "MacAddress": ""}}),
    );
    assert!(
        status != 200 && reply["Err"].as_str().is_some_and(|e| e.contains("Interface.Address")),
        "{status} {reply}"
    );
    let (status, reply) =
        p.call("/NetworkDriver.Join", json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": "", "Options": {}}));
    assert!(status != 200 && reply["Err"].as_str().is_some_and(|e| e.contains("not found")), "{status} {reply}");
    assert_eq!(host.link_names(), links_with_network, "failed endpoint calls changed the links");
    p.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
    assert_unchanged("DeleteNetwork");

    // And the plugin still works.
    create_network(&p, &net, "10.82.0.0/24", "10.82.0.1/24", json!({}));
    assert!(host.has_link(&bridge_name(&net)));
}

#[test]
fn deleted_bridge_comes_back_while_running() {
    require_root!();
    let host = Netns::host();
    let p = Plugin::start(&host);
    let net = random_id();
    let bridge = bridge_name(&net);
    create_network(&p, &net, "10.84.0.0/24", "10.84.0.1/24", json!({"mtu": "1450"}));
    host.ip(&["link", "del", &bridge]).expect_ok();
    let back = wait_until(Duration::from_secs(4), || host.has_link(&bridge));
    assert!(back.is_some(), "bridge not recreated within 4 s (reconcile every 1 s)");
    let link = host.link(&bridge).unwrap();
    assert!(flags(&link).contains(&"UP".to_string()), "{link}");
    assert_eq!(link["mtu"], 1450, "{link}");
    assert_eq!(host.ipv4_addresses(&bridge), vec!["10.84.0.1/24"]);
    assert!(forward_rules_in_place(&host, &bridge), "{}", host.iptables_save());
}

/// Once the bridge is gone, its ports (the host ends of joined endpoints) are
/// detached; recreating the bridge without them leaves containers cut off.
#[test]
fn recreated_bridge_takes_back_joined_endpoints() {
    require_root!();
    let host = Netns::host();
    let mut p = Plugin::start(&host);
    let net = random_id();
    let bridge = bridge_name(&net);
    create_network(&p, &net, "10.86.0.0/24", "10.86.0.1/24", json!({}));
    let a = create_and_join(&p, &net, "10.86.0.2/24");
    let b = create_and_join(&p, &net, "10.86.0.3/24");
    let ca = container_for(&host, &a);
    let _cb = container_for(&host, &b);
    assert!(ca.ping_ok("10.86.0.3", 3), "no traffic to start with");
    let attached = |host: &Netns| {
        [&a, &b].iter().all(|e| host.link(&host_veth(&e.id)).is_some_and(|l| l["master"] == bridge.as_str()))
    };

    // Bridge deleted while the plugin runs: the periodic pass brings it back.
    host.ip(&["link", "del", &bridge]).expect_ok();
    assert!(wait_until(Duration::from_secs(4), || host.has_link(&bridge)).is_some(), "bridge not recreated");
    assert!(
        wait_until(Duration::from_secs(4), || attached(&host)).is_some(),
        "host veths not re-attached to the recreated bridge: {:?}",
        [&a, &b].map(|e| host.link(&host_veth(&e.id)).map(|l| l["master"].clone()))
    );
    assert!(ca.ping_ok("10.86.0.3", 3), "containers cut off after the bridge came back");

    // Bridge deleted while the plugin is down: start-up brings it back.
    p.kill9();
    host.ip(&["link", "del", &bridge]).expect_ok();
    p.restart();
    assert!(host.has_link(&bridge), "bridge not recreated at start");
    assert!(attached(&host), "host veths not re-attached at start");
    assert!(ca.ping_ok("10.86.0.3", 3), "containers cut off after restart");
}

/// `Ipam::restore_address` (src/ipam/mod.rs) promises that after a restart
/// "a restart does not hand out an address released just before it".
#[test]
fn released_address_not_reused_after_restart() {
    require_root!();
    let host = Netns::host();
    let mut p = Plugin::start(&host);
    let pool = p.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "", "Pool": "10.85.0.0/24", "SubPool": "", "Options": {}, "V6": false}),
    );
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    let request = |p: &Plugin| {
        p.ok("/IpamDriver.RequestAddress", json!({"PoolID": pool_id, "Address": "", "Options": null}))["Address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let got: Vec<String> = (0..4).map(|_| request(&p)).collect();
    assert_eq!(got, ["10.85.0.1/24", "10.85.0.2/24", "10.85.0.3/24", "10.85.0.4/24"]);
    p.ok("/IpamDriver.ReleaseAddress", json!({"PoolID": pool_id, "Address": "10.85.0.4"}));
    p.kill9();
    p.restart();
    let next = request(&p);
    assert_ne!(next, "10.85.0.4/24", "the address released just before the restart was handed out again");
}

#[test]
fn concurrent_endpoints_on_one_network() {
    require_root!();
    let host = Netns::host();
    let p = Plugin::start(&host);
    let net = random_id();
    let bridge = bridge_name(&net);
    create_network(&p, &net, "10.87.0.0/24", "10.87.0.1/24", json!({}));
    let joined: Vec<Joined> = std::thread::scope(|s| {
        let handles: Vec<_> = (2..10)
            .map(|i| {
                let (p, net) = (&p, &net);
                s.spawn(move || create_and_join(p, net, &format!("10.87.0.{i}/24")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("join thread")).collect()
    });
    for e in &joined {
        let veth = host.link(&host_veth(&e.id)).unwrap_or_else(|| panic!("veth of {} missing", &e.id[..12]));
        assert_eq!(veth["master"], bridge.as_str(), "{veth}");
        assert!(host.has_link(&e.peer));
    }
    let macs: BTreeSet<&str> = joined.iter().map(|e| e.mac.as_str()).collect();
    assert_eq!(macs.len(), joined.len(), "MAC addresses must be distinct");
    std::thread::scope(|s| {
        for e in &joined {
            let p = &p;
            s.spawn(move || leave_and_delete(p, e));
        }
    });
    let left: Vec<String> = host.link_names().into_iter().filter(|n| is_owned_veth_name(n)).collect();
    assert!(left.is_empty(), "veths left after concurrent Leave/DeleteEndpoint: {left:?}");
    p.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
    assert_no_plugin_traces(&host);
}

/// Damages a state database in place.
type Damage = fn(&std::path::Path);

/// The rules and links the plugin's networks consist of, to compare before and after.
fn kernel_view(ns: &Netns) -> (Vec<String>, Vec<String>) {
    let rules = ns
        .iptables_save()
        .lines()
        .filter(|l| l.starts_with("-A"))
        .map(str::to_string)
        .chain(ns.nft_table().unwrap_or_default().lines().map(str::to_string))
        .collect();
    let mut links = ns.link_names();
    links.sort();
    (rules, links)
}

/// A damaged state database (emptied, cut in half, garbage, a newer schema) is
/// refused: the plugin stays up and answers every call with the reason (so that
/// docker shows it), touches nothing in the kernel (containers keep talking),
/// and leaves the file as it was; once the file is restored it serves again.
#[test]
fn damaged_state_is_refused_and_the_kernel_is_untouched() {
    require_root!();
    let host = Netns::host();
    let mut p = Plugin::start(&host);
    let net = random_id();
    create_network(&p, &net, "10.86.0.0/24", "10.86.0.1/24", json!({}));
    let e = create_and_join(&p, &net, "10.86.0.2/24");
    let c = container_for(&host, &e);
    assert!(c.ping_ok("10.86.0.1", 5), "no traffic before the test");
    let db = p.state_dir.join(rustbridge::state::DB_FILE);
    let info = json!({"NetworkID": net, "EndpointID": e.id});
    p.kill9();
    let good = std::fs::read(&db).expect("read the state database");
    let before = kernel_view(&host);

    let newer = |path: &std::path::Path| {
        let db = redb::Database::open(path).expect("open the database to raise its schema");
        let txn = db.begin_write().unwrap();
        let meta: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("meta");
        txn.open_table(meta).unwrap().insert("schema_version", "999").unwrap();
        txn.commit().unwrap();
    };
    let cases: [(&str, &str, Damage); 4] = [
        ("emptied", "is empty (0 bytes)", |path| std::fs::write(path, b"").unwrap()),
        ("cut in half", "cannot be read as a database", |path| {
            let len = std::fs::metadata(path).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len / 2).unwrap();
        }),
        ("garbage", "cannot be read as a database", |path| std::fs::write(path, vec![0x5a; 70_000]).unwrap()),
        ("newer schema", "has schema version 999", newer),
    ];
    for (case, problem, damage) in cases {
        std::fs::write(&db, &good).unwrap();
        damage(&db);
        let damaged = std::fs::read(&db).unwrap();
        p.restart(); // waits for Plugin.Activate: the handshake is still answered
        let (status, reply) = p.call("/NetworkDriver.EndpointOperInfo", info.clone());
        let message = reply["Err"].as_str().unwrap_or_default().to_string();
        assert_ne!(status, 200, "{case}: answered as if the state were fine: {reply}");
        assert!(message.contains("rustbridge is not serving"), "{case}: {message}");
        assert!(message.contains(&db.display().to_string()), "{case}: the file is not named: {message}");
        assert!(message.contains(problem), "{case}: expected {problem:?} in {message}");
        let (_, ipam) =
            p.call("/IpamDriver.RequestPool", json!({"AddressSpace": "LocalDefault", "Pool": "", "V6": false}));
        assert!(
            ipam["Error"].as_str().unwrap_or_default().contains(problem),
            "{case}: IPAM calls must say why too: {ipam}"
        );
        assert!(p.is_running(), "{case}: the plugin must stay up, not crash-loop");
        assert_eq!(kernel_view(&host), before, "{case}: the kernel was changed by a refusing plugin");
        assert!(c.ping_ok("10.86.0.1", 3), "{case}: the container lost its network");
        assert!(std::fs::read(&db).unwrap() == damaged, "{case}: the refused file was changed");
        p.kill9();
    }

    // Following the advice (here: putting the good file back) brings it back.
    std::fs::write(&db, &good).unwrap();
    p.restart();
    p.ok("/NetworkDriver.EndpointOperInfo", info);
    assert!(forward_rules_in_place(&host, &bridge_name(&net)));
    drop(c);
    leave_and_delete(&p, &e);
    p.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
}

/// Item 7 of issue 11: a start with an empty (or another) state database
/// takes away no live networking, and a start with its own database removes
/// only what is provably its own and unused.
#[test]
fn a_fresh_state_leaves_live_networking_alone() {
    require_root!();
    let host = Netns::host();
    let mut p = Plugin::start(&host);
    let net = random_id();
    create_network(&p, &net, "10.78.1.0/24", "10.78.1.1/24", json!({}));
    let live = create_and_join(&p, &net, "10.78.1.2/24");
    let container = container_for(&host, &live);
    let idle = create_and_join(&p, &net, "10.78.1.3/24");
    let own_state = p.state_dir.clone();

    p.kill9();
    p.state_dir = p.dir.join("another-state");
    p.restart();
    let bridge = bridge_name(&net);
    assert!(host.has_link(&bridge), "bridge of another state removed: {:?}", host.link_names());
    assert!(host.has_link(&host_veth(&live.id)), "veth of a live container removed: {:?}", host.link_names());
    assert!(host.has_link(&host_veth(&idle.id)) && host.has_link(&idle.peer), "another state's veth removed");
    assert!(container.ping_ok("10.78.1.1", 3), "the live container lost its network");

    // Back on its own database: the pair whose container is gone (whole in
    // the host) goes, the live one stays; the bridge keeps its MAC address
    // when a port goes (the live container's ARP entry for the gateway stays good).
    let mac = host.link(&bridge).expect("bridge")["address"].clone();
    p.kill9();
    p.state_dir = own_state;
    p.restart();
    assert!(host.has_link(&host_veth(&idle.id)), "forgotten at start, before the grace (a Join may be in flight)");
    let gone = wait_until(UNCLAIMED_WAIT, || !host.has_link(&host_veth(&idle.id)) && !host.has_link(&idle.peer));
    assert!(gone.is_some(), "{:?}", host.link_names());
    assert!(host.has_link(&host_veth(&live.id)));
    assert_eq!(host.link(&bridge).expect("bridge")["address"], mac, "the bridge's MAC changed with its ports");
    assert!(container.ping_ok("10.78.1.1", 3));
}

/// The harness's `--unclaimed-grace-seconds 2`, two reconcile passes (1 s) and margin.
const UNCLAIMED_WAIT: Duration = Duration::from_secs(10);

/// Item 10 of issue 11: a container removed while the plugin was away
/// (dockerd moved its interface back to the host and forgot the endpoint).
#[test]
fn endpoint_of_a_container_removed_while_away_is_cleaned_after_restart() {
    require_root!();
    let host = Netns::host();
    let mut p = Plugin::start(&host);
    let pool = p.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "rustbridge-local", "Pool": "10.78.2.0/24", "SubPool": "", "Options": {}, "V6": false}),
    );
    let pool_id = pool["PoolID"].as_str().expect("PoolID").to_string();
    let address = p.ok("/IpamDriver.RequestAddress", json!({"PoolID": pool_id, "Address": "10.78.2.5", "Options": null}))
        ["Address"]
        .as_str()
        .expect("Address")
        .to_string();
    let net = random_id();
    create_network(&p, &net, "10.78.2.0/24", "10.78.2.1/24", json!({}));
    let e = create_and_join(&p, &net, &address);
    p.ok(
        "/NetworkDriver.ProgramExternalConnectivity",
        json!({"NetworkID": net, "EndpointID": e.id, "Options": {"com.docker.network.portmap": [
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18093, "HostPortEnd": 18093}
        ]}}),
    );
    assert_eq!(host.nft_elements("dnat4-any").len(), 1, "port published");
    let container = container_for(&host, &e);

    p.kill9();
    // dockerd tears the sandbox down: the interface comes back under its own name.
    container.ip(&["link", "set", "eth0", "down"]).expect_ok();
    container.ip(&["link", "set", "eth0", "netns", &host.name]).expect_ok();
    host.ip(&["link", "set", "eth0", "name", &e.peer]).expect_ok();
    drop(container);
    p.restart();

    let gone = wait_until(UNCLAIMED_WAIT, || {
        !host.has_link(&host_veth(&e.id)) && !host.has_link(&e.peer) && host.nft_elements("dnat4-any").is_empty()
    });
    assert!(gone.is_some(), "veth pair kept: {:?}", host.link_names());
    assert!(host.nft_elements("dnat4-any").is_empty(), "published port kept:\n{:?}", host.nft_table());
    let again =
        p.call("/IpamDriver.RequestAddress", json!({"PoolID": pool_id, "Address": "10.78.2.5", "Options": null}));
    assert_eq!(again.0, 200, "the address was not released: {}", again.1);
    let (status, reply) =
        p.call("/NetworkDriver.Join", json!({"NetworkID": net, "EndpointID": e.id, "SandboxKey": "/x", "Options": {}}));
    assert_ne!(status, 200, "the endpoint record was kept: {reply}");
}

/// Item 5 of issue 11: route_localnet only where 127.0.0.0/8 is dropped, and
/// an adopted bridge keeps the address it had before the network.
#[test]
fn route_localnet_follows_the_drop_and_adopted_bridges_keep_their_address() {
    require_root!();
    let host = Netns::host();
    let p = Plugin::start(&host);
    let localnet = |bridge: &str| {
        host.exec(&["cat", &format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet")])
            .expect_ok()
            .stdout
            .trim()
            .to_string()
    };
    let v6 = random_id();
    p.ok(
        "/NetworkDriver.CreateNetwork",
        json!({
            "NetworkID": v6, "IPv4Data": [],
            "IPv6Data": [{"AddressSpace": "LocalDefault", "Pool": "fd00:78:3::/64", "Gateway": "fd00:78:3::1/64"}],
            "Options": {"com.docker.network.enable_ipv6": true, "com.docker.network.generic": {}},
        }),
    );
    assert_eq!(localnet(&bridge_name(&v6)), "0", "IPv6-only bridge: no 127.0.0.0/8 drop, so no route_localnet");
    let v4 = random_id();
    create_network(&p, &v4, "10.78.4.0/24", "10.78.4.1/24", json!({}));
    assert_eq!(localnet(&bridge_name(&v4)), "1");
    assert_eq!(
        host.nft_elements("localnet"),
        [json!(bridge_name(&v4))],
        "127.0.0.0/8 dropped from the IPv4 bridge only"
    );
    assert_eq!(nft_chain(&host, "raw-prerouting"), ["iifname @localnet ip daddr 127.0.0.0/8 drop"]);

    host.ip(&["link", "add", "rbadopt0", "type", "bridge"]).expect_ok();
    host.ip(&["addr", "add", "10.78.5.1/24", "dev", "rbadopt0"]).expect_ok();
    let adopted = random_id();
    create_network(&p, &adopted, "10.78.5.0/24", "10.78.5.1/24", json!({"com.docker.network.bridge.name": "rbadopt0"}));
    p.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": adopted}));
    assert_eq!(host.ipv4_addresses("rbadopt0"), ["10.78.5.1/24"], "the host's own address was removed");
    let other = random_id();
    create_network(&p, &other, "10.78.6.0/24", "10.78.6.1/24", json!({"com.docker.network.bridge.name": "rbadopt0"}));
    p.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": other}));
    assert_eq!(host.ipv4_addresses("rbadopt0"), ["10.78.5.1/24"], "the address the plugin added goes with the network");
}

/// Issue 14, least privilege: dockerd's API socket is opt-in. Without it (the
/// managed plugin's default mount is /dev/null) the managed socket is local
/// and no swarm task runs: nothing listens on the directory port. Given a
/// socket, the default scope (`auto`) is global and the directory is served.
/// `global` without one is refused: every call says which setting is missing.
#[test]
fn the_scope_and_the_swarm_tasks_follow_the_docker_api_socket() {
    require_root!();
    let host = Netns::host();
    let port = "4811";
    let listening = |ns: &Netns| !ns.exec(&["ss", "-Hltn", &format!("sport = :{port}")]).stdout.trim().is_empty();
    let scope = |p: &Plugin| p.ok("/NetworkDriver.GetCapabilities", Value::Null)["Scope"].clone();

    let p = Plugin::start_with(&host, &["--vxlan-port", port, "--docker-socket", "/dev/null"]);
    assert_eq!(scope(&p), "local");
    assert!(wait_until(Duration::from_secs(5), || p.log_text().contains("swarm membership: off")).is_some());
    std::thread::sleep(Duration::from_millis(500));
    assert!(!listening(&host), "the endpoint directory is served without the API socket");
    drop(p);

    let dir = std::env::temp_dir().join(format!("rbt-{}-docker-api", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("docker.sock");
    let _ = std::fs::remove_file(&socket);
    let _dockerd = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let p = Plugin::start_with(&host, &["--vxlan-port", port, "--docker-socket", socket.to_str().unwrap()]);
    assert_eq!(scope(&p), "global");
    assert!(p.log_text().contains("swarm membership: on"), "{}", p.log_text());
    assert!(wait_until(Duration::from_secs(5), || listening(&host)).is_some(), "no directory with the API socket");
    drop(p);

    let p = Plugin::start_with(&host, &["--vxlan-port", port, "--scope", "global", "--docker-socket", "/dev/null"]);
    assert_eq!(scope(&p), "local", "a refusing plugin answers the handshake as local");
    let net = random_id();
    let (status, reply) = p.call(
        "/NetworkDriver.CreateNetwork",
        network_request(&net, "10.87.0.0/24", "10.87.0.1/24", json!({}), json!({})),
    );
    let message = reply["Err"].as_str().unwrap_or_default();
    assert_ne!(status, 200, "{reply}");
    assert!(
        message.contains("RUSTBRIDGE_SCOPE=global needs dockerd's API socket (/dev/null is not a socket)"),
        "{message}"
    );
    assert!(message.contains("docker-api.source=/var/run/docker.sock"), "{message}");
    assert!(!host.has_link(&bridge_name(&net)), "a refusing plugin created the bridge");
    assert!(!listening(&host));
    drop(p);
    std::fs::remove_dir_all(&dir).unwrap();
}
