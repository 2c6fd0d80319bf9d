//! The nftables engine (src/firewall/nft) against a real kernel, in a
//! throwaway network namespace per test: what it writes as `nft` lists it,
//! one transaction per change holding only the change, drift found and
//! repaired, nothing left after the last network; and real traffic through
//! it (tests/netns.rs runs the whole plugin).
//!
//! Needs root and the `nft` tool; without root the tests print "skipped:
//! needs root", except with CI=true where they fail.

mod common;

use common::{Netns, block_on_in_netns, ready_or_skip};
use rustbridge::firewall::iptables::{Backend, IptablesFirewall};
use rustbridge::firewall::nft::NftFirewall;
use rustbridge::firewall::{Firewall, FwChange, FwNetwork, FwPort, Proto};
use rustbridge::testing::fw_network;

macro_rules! require_root {
    () => {
        if !ready_or_skip(std::thread::current().name().unwrap_or("firewall_netns")) {
            return;
        }
    };
}

/// Runs `body` with an engine on a thread inside `ns` (its netlink sockets
/// and iptables processes belong to the namespace).
fn in_netns<T: Send>(ns: &Netns, body: impl AsyncFnOnce(&NftFirewall) -> T + Send) -> T {
    in_netns_with(ns, Backend::Auto, body)
}

fn in_netns_with<T: Send>(ns: &Netns, backend: Backend, body: impl AsyncFnOnce(&NftFirewall) -> T + Send) -> T {
    block_on_in_netns(ns, async || {
        let fw = NftFirewall::new(IptablesFirewall::detect(backend).await);
        body(&fw).await
    })
}

fn port(host_port: u16, container_ip: &str, container_port: u16) -> FwPort {
    FwPort { proto: Proto::Tcp, host_ip: None, host_port, container_ip: container_ip.parse().unwrap(), container_port }
}

fn network(i: usize) -> FwNetwork {
    fw_network(&format!("rb-t{i}"), &[&format!("10.{}.{}.0/24", 100 + i / 256, i % 256)])
}

#[test]
fn the_table_reads_back_as_nft_lists_it() {
    require_root!();
    let host = Netns::host();
    let mut a = fw_network("rb-ta", &["10.91.0.0/24", "fd00:91::/64"]);
    a.ports = vec![
        port(8080, "10.91.0.2", 80),
        FwPort { host_ip: Some("127.0.0.1".parse().unwrap()), proto: Proto::Udp, ..port(8081, "10.91.0.2", 81) },
        port(8080, "fd00:91::2", 80),
    ];
    let mut b = fw_network("rb-tb", &["10.92.0.0/24"]);
    b.snat_ipv4 = Some("192.0.2.7".parse().unwrap());
    b.icc = false;
    in_netns(&host, async |fw| fw.sync(&[a, b]).await.expect("sync"));
    let text = host.nft_table().expect("table inet rustbridge");
    for expected in [
        "type filter hook forward priority mangle; policy accept;",
        "oifname vmap @to-bridge",
        "iifname vmap @from-bridge",
        "meta mark set meta mark & 0xfeffffff",
        "meta mark set meta mark | 0x01000000 accept",
        "ct status dnat ip daddr . meta l4proto . th dport @published4",
        "dnat ip to meta l4proto . ip daddr . th dport map @dnat4-addr",
        "dnat ip to meta l4proto . th dport map @dnat4-any",
        "dnat ip6 to meta l4proto . th dport map @dnat6-any",
        "fib daddr type local jump dnat-ports",
        "iifname \"rb-tb\" drop",
        "iifname \"br-*\" drop",
        "ip saddr 10.91.0.0/24 oifname != \"rb-ta\" masquerade",
        "ip6 saddr fd00:91::/64 oifname != \"rb-ta\" masquerade",
        "ip saddr 10.92.0.0/24 oifname != \"rb-tb\" snat ip to 192.0.2.7",
        "iifname @localnet ip daddr 127.0.0.0/8 drop",
        "ip saddr . ip daddr . meta l4proto . th dport @hairpin4 masquerade",
        "\"rb-ta\" : jump to-rb-ta",
        "tcp . 8080 : 10.91.0.2 . 80",
        "udp . 127.0.0.1 . 8081 : 10.91.0.2 . 81",
        "tcp . 8080 : fd00:91::2 . 80",
        "10.91.0.2 . tcp . 80",
    ] {
        assert!(text.contains(expected), "nft does not list {expected:?}:\n{text}");
    }
    let forward = host.iptables_chain("filter", "RUSTBRIDGE-FORWARD").expect("accept chain");
    assert_eq!(forward[1], "-A RUSTBRIDGE-FORWARD -m mark --mark 0x1000000/0x1000000 -j ACCEPT");
}

#[test]
fn one_more_port_or_network_is_one_small_transaction() {
    require_root!();
    let host = Netns::host();
    let mut nets: Vec<FwNetwork> = (0..1000).map(network).collect();
    nets[0].ports = (0..1000).map(|i| port(20000 + i, "10.100.0.2", 20000 + i)).collect();
    let counts = in_netns(&host, async |fw| {
        fw.sync(&nets).await.expect("1,000 networks, 1,000 ports");
        let full = fw.last_transaction();
        let more = port(31000, "10.100.0.2", 31000);
        nets[0].ports.push(more.clone());
        let ports = FwChange::Ports { bridge: nets[0].bridge.clone(), added: vec![more], removed: vec![] };
        assert!(fw.apply(&[ports]).await.expect("port 1,001"));
        let port = fw.last_transaction();
        nets.push(network(1000));
        let made = FwChange::Network { bridge: nets[1000].bridge.clone(), after: Some(nets[1000].clone()) };
        assert!(fw.apply(&[made]).await.expect("network 1,001"));
        let network = fw.last_transaction();
        let gone = nets.pop().unwrap();
        assert!(
            fw.apply(&[FwChange::Network { bridge: gone.bridge, after: None }]).await.expect("network 1,001 removed")
        );
        let removed = fw.last_transaction();
        assert!(fw.is_intact(&nets).await.expect("read back"), "the kernel holds what was written");
        (full, port, network, removed)
    });
    eprintln!(
        "messages per transaction: full {}, port {}, network {}, removal {}",
        counts.0, counts.1, counts.2, counts.3
    );
    assert!(counts.0 > 1000, "the first write holds everything");
    // published4, hairpin4 and dnat4-any: one element each.
    assert_eq!(counts.1, 3, "one more port");
    // Three chains with their rules (9 + 3 + 1) and five elements, whatever the number of networks.
    assert_eq!(counts.2, 3 + 9 + 3 + 1 + 5, "one more network");
    assert_eq!(counts.3, 5 + 6, "one network less: five elements, three chains flushed and deleted");
    assert_eq!(host.nft_elements("dnat4-any").len(), 1001);
    assert_eq!(host.nft_elements("to-bridge").len(), 1000);
}

#[test]
fn drift_is_found_and_repaired_and_the_last_network_leaves_nothing() {
    require_root!();
    let host = Netns::host();
    let mut a = network(1);
    a.ports = vec![port(8080, "10.100.1.2", 80)];
    let nets = vec![a];
    in_netns(&host, async |fw| {
        fw.sync(&nets).await.expect("sync");
        assert!(fw.is_intact(&nets).await.unwrap());
        for tamper in [
            vec!["nft", "flush", "chain", "inet", "rustbridge", "forward"],
            vec!["nft", "flush", "table", "inet", "rustbridge"],
            vec!["nft", "delete", "table", "inet", "rustbridge"],
            vec!["nft", "flush", "map", "inet", "rustbridge", "dnat4-any"],
            // The same number of elements, one pointing elsewhere.
            vec![
                "nft",
                "delete element inet rustbridge dnat4-any { tcp . 8080 }; add element inet rustbridge dnat4-any { tcp . 8080 : 10.100.1.9 . 80 }",
            ],
            vec!["nft", "add", "table", "inet", "rustbridge", "{", "flags", "dormant", ";", "}"],
            vec!["nft", "flush", "ruleset"],
            vec!["iptables", "-D", "FORWARD", "-j", "RUSTBRIDGE-FORWARD"],
            vec!["iptables", "-F", "RUSTBRIDGE-FORWARD"],
        ] {
            let out = host.exec(&tamper);
            assert!(out.ok(), "{}: {}", out.command, out.stderr);
            assert!(!fw.is_intact(&nets).await.unwrap(), "{tamper:?} not seen");
            fw.sync(&nets).await.expect("repair");
            assert!(fw.is_intact(&nets).await.unwrap(), "{tamper:?} not repaired");
        }
        fw.sync(&[]).await.expect("last network removed");
        assert!(fw.is_intact(&[]).await.unwrap());
    });
    assert_eq!(host.nft_table(), None, "table left behind");
    assert!(!host.iptables_save().contains("RUSTBRIDGE"), "iptables rules left:\n{}", host.iptables_save());
}

/// Issue 13: a restart (a new engine, which does not know what the kernel
/// holds) over an unchanged table writes nothing: it reads the table back
/// and finds exactly what the state means. Over a table flushed or changed
/// while it was away, it writes the whole table again.
#[test]
fn a_restart_over_an_unchanged_table_writes_nothing_and_a_changed_one_is_rewritten() {
    require_root!();
    let host = Netns::host();
    let mut nets: Vec<FwNetwork> = (0..3).map(network).collect();
    nets[0].ports = (0..100).map(|i| port(20000 + i, "10.100.0.2", 80 + i)).collect();
    nets[1].icc = false;
    let restart = || {
        in_netns(&host, async |fw| {
            fw.sync(&nets).await.expect("sync at start");
            (fw.last_transaction(), fw.is_intact(&nets).await.expect("read back"))
        })
    };
    let (first, _) = restart();
    assert!(first > 50, "the first start writes everything: {first} messages");
    assert_eq!(restart(), (0, true), "an unchanged table: nothing written");
    for tamper in [
        vec!["nft", "flush", "table", "inet", "rustbridge"],
        vec![
            "nft",
            "delete element inet rustbridge dnat4-any { tcp . 20000 }; add element inet rustbridge dnat4-any { tcp . 20000 : 10.100.0.9 . 80 }",
        ],
        vec!["nft", "flush chain inet rustbridge to-rb-t1; add rule inet rustbridge to-rb-t1 accept"],
    ] {
        let out = host.exec(&tamper);
        assert!(out.ok(), "{}: {}", out.command, out.stderr);
        assert_eq!(restart(), (first, true), "{tamper:?}: rewritten whole");
        assert_eq!(restart(), (0, true), "{tamper:?}: then nothing again");
    }
    in_netns(&host, async |fw| fw.sync(&[]).await.expect("last network removed"));
}

/// A veth from `bridge` (hairpin on, as the plugin sets it) into a new fake container at `address`.
fn attach(host: &Netns, bridge: &str, port: &str, address: &str, gateway: &str) -> Netns {
    let peer = format!("{port}p");
    host.ip(&["link", "add", port, "type", "veth", "peer", "name", &peer]).expect_ok();
    host.ip(&["link", "set", port, "master", bridge, "up"]).expect_ok();
    host.ip(&["link", "set", port, "type", "bridge_slave", "hairpin", "on"]).expect_ok();
    common::fake_container(host, &peer, None, address, Some(gateway))
}

/// `busybox httpd` answering (fetched with curl) "hello" on port 80 inside `ns`; killed on drop.
struct Web(std::process::Child, std::path::PathBuf);

impl Web {
    fn start(ns: &Netns) -> Web {
        let dir = std::env::temp_dir().join(format!("{}-www", ns.name));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), "hello\n").unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "busybox", "httpd", "-f", "-p", "80", "-h"])
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("busybox httpd");
        let web = Web(child, dir);
        let up = common::wait_until(std::time::Duration::from_secs(5), || {
            ns.exec(&["curl", "-s", "-m", "1", "http://127.0.0.1/"]).stdout == "hello\n"
        });
        assert!(up.is_some(), "httpd did not start in {}", ns.name);
        web
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn fetch(ns: &Netns, url: &str) -> bool {
    ns.exec(&["curl", "-s", "-m", "2", url]).stdout == "hello\n"
}

/// Real packets through the table and dockerd's FORWARD policy DROP:
/// isolation, icc, masquerade, published ports from outside, from another
/// network, from the same network, hairpin and the host's 127.0.0.1; and no
/// direct way in.
#[test]
fn traffic_isolation_nat_and_published_ports() {
    require_root!();
    traffic(Backend::Auto);
}

/// The same with dockerd's chains in iptables-legacy: the accept rule goes
/// there, the table is the same.
#[test]
fn traffic_with_iptables_legacy() {
    require_root!();
    traffic(Backend::Legacy);
}

fn traffic(backend: Backend) {
    let host = Netns::host();
    let (drop_with, accept_with) = match backend {
        Backend::Legacy => ("iptables-legacy", "iptables-nft"),
        _ => ("iptables-nft", "iptables-legacy"),
    };
    host.exec(&[drop_with, "-P", "FORWARD", "DROP"]).expect_ok();
    host.exec(&[accept_with, "-P", "FORWARD", "ACCEPT"]).expect_ok();
    for (bridge, gateway) in [("rb-ta", "10.93.0.1/24"), ("rb-tb", "10.94.0.1/24")] {
        host.ip(&["link", "add", bridge, "type", "bridge"]).expect_ok();
        host.ip(&["addr", "add", gateway, "dev", bridge]).expect_ok();
        host.ip(&["link", "set", bridge, "up"]).expect_ok();
    }
    host.exec(&["sysctl", "-w", "net.ipv4.conf.rb-ta.route_localnet=1"]).expect_ok();
    let a = attach(&host, "rb-ta", "rbta1", "10.93.0.2/24", "10.93.0.1");
    let a2 = attach(&host, "rb-ta", "rbta2", "10.93.0.3/24", "10.93.0.1");
    let b = attach(&host, "rb-tb", "rbtb1", "10.94.0.2/24", "10.94.0.1");
    // "Outside": another host on a link of its own, with no route to the container subnets.
    host.ip(&["link", "add", "rbtx", "type", "veth", "peer", "name", "rbtxp"]).expect_ok();
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", "rbtx"]).expect_ok();
    host.ip(&["link", "set", "rbtx", "up"]).expect_ok();
    let ext = common::fake_container(&host, "rbtxp", None, "192.0.2.2/24", None);

    let mut net_a = fw_network("rb-ta", &["10.93.0.0/24"]);
    net_a.ports = vec![port(8080, "10.93.0.2", 80)];
    let nets = [net_a, fw_network("rb-tb", &["10.94.0.0/24"])];
    in_netns_with(&host, backend, async |fw| fw.sync(&nets).await.expect("sync"));
    let _web = Web::start(&a);

    assert!(a.ping_ok("10.93.0.3", 3), "icc within a network");
    assert!(!a.ping_once("10.94.0.2", 1), "a reached b across networks");
    assert!(!b.ping_once("10.93.0.2", 1), "b reached a across networks");
    assert!(a.ping_ok("192.0.2.2", 3), "outbound, masqueraded (the outside has no route back)");
    assert!(fetch(&ext, "http://192.0.2.1:8080/"), "published port from outside");
    assert!(fetch(&b, "http://10.94.0.1:8080/"), "published port from another network, through a host address");
    assert!(fetch(&a2, "http://10.93.0.1:8080/"), "published port from the same network");
    assert!(fetch(&a, "http://10.93.0.1:8080/"), "hairpin: the container reaches its own published port");
    assert!(fetch(&host, "http://127.0.0.1:8080/"), "published port on the host's 127.0.0.1");
    ext.ip(&["route", "add", "10.93.0.0/24", "via", "192.0.2.1"]).expect_ok();
    assert!(!fetch(&ext, "http://10.93.0.2/"), "the container's own address, without DNAT");
    // Without the table's mark, dockerd's FORWARD drop stands: the accept is the mark's.
    host.exec(&[drop_with, "-F", "RUSTBRIDGE-FORWARD"]).expect_ok();
    assert!(!fetch(&ext, "http://192.0.2.1:8080/"), "accepted without the iptables accept rule");
}

/// The attribute bytes of a NEWRULE message, as `nft --debug=mnl` prints
/// them (one 4-byte word per line: attribute headers and data).
fn nft_rule_bytes(dump: &str) -> Vec<u8> {
    let plain: String = {
        // Drop ANSI colour sequences.
        let mut out = String::new();
        let mut chars = dump.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|c| *c == 'm');
            } else {
                out.push(c);
            }
        }
        out
    };
    let lines: Vec<&str> = plain.lines().collect();
    let start = lines.iter().position(|l| l.contains("| 02566 |")).expect("a NEWRULE message in the dump");
    let mut bytes = Vec::new();
    for line in lines[start..].iter().skip_while(|l| !l.contains("extra header")).skip(1) {
        if line.starts_with("----") {
            break;
        }
        let cell = line.split('|').nth(1).unwrap_or_default().trim();
        if line.contains("|len |flags| type|") {
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            let (len, flags, kind) = (fields[1], fields[2], fields[3]);
            let mut kind: u16 = kind.parse().unwrap();
            if flags.starts_with('N') {
                kind |= 0x8000;
            }
            bytes.extend_from_slice(&len.parse::<u16>().unwrap().to_ne_bytes());
            bytes.extend_from_slice(&kind.to_ne_bytes());
        } else if line.contains("data") {
            bytes.extend(cell.split_whitespace().map(|h| u8::from_str_radix(h, 16).unwrap()));
        }
    }
    bytes
}

/// The encoder's bytes for a rule are the bytes nft itself sends for the same rule.
#[test]
fn a_rule_encodes_to_the_bytes_nft_sends() {
    require_root!();
    use rustbridge::firewall::nft::expr::{CmpOp, Expr, MetaKey, NF_ACCEPT, REG_1};
    let ns = Netns::container();
    ns.exec(&["nft", "add table inet t; add chain inet t c; add set inet t s { type ifname; }"]).expect_ok();
    let out =
        ns.exec(&["nft", "--debug=mnl", "add", "rule", "inet", "t", "c", "iifname", "rb-a", "oifname", "@s", "accept"]);
    assert!(out.ok(), "{}", out.stderr);
    let theirs = nft_rule_bytes(&(out.stdout + &out.stderr));
    let mut name = b"rb-a".to_vec();
    name.resize(16, 0);
    let rule = vec![
        Expr::Meta { key: MetaKey::IifName, dreg: REG_1 },
        Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: name },
        Expr::Meta { key: MetaKey::OifName, dreg: REG_1 },
        Expr::Lookup { set: "s".into(), sreg: REG_1, dreg: None },
        Expr::Verdict { code: NF_ACCEPT, chain: None },
    ];
    let ours = rustbridge::firewall::nft::rule_attrs("t", "c", &rule).0;
    // nft also names the set by its transaction id (NFTA_LOOKUP_SET_ID);
    // rustbridge names sets only by name. Within an expression the kernel
    // reads attributes by type, so their order is not compared.
    assert_eq!(tree(&ours, false), tree(&theirs, false), "\nours:   {ours:02x?}\ntheirs: {theirs:02x?}");
}

#[derive(Debug, PartialEq)]
enum Attr {
    Value(u16, Vec<u8>),
    Nested(u16, Vec<Attr>),
}

/// Nested attributes as a tree, children ordered by type (stable: a list keeps its order).
fn tree(mut data: &[u8], in_lookup: bool) -> Vec<Attr> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let raw = u16::from_ne_bytes([data[2], data[3]]);
        let kind = raw & 0x3fff;
        let value = &data[4..len];
        if raw & 0x8000 != 0 {
            let lookup = value.windows(7).any(|w| w == b"lookup\0");
            out.push(Attr::Nested(kind, tree(value, in_lookup || lookup)));
        } else if !(in_lookup && kind == 4) {
            out.push(Attr::Value(kind, value.to_vec()));
        }
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    out.sort_by_key(|a| match a {
        Attr::Value(k, _) | Attr::Nested(k, _) => *k,
    });
    out
}
