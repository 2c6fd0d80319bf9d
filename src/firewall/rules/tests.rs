use super::*;
use crate::firewall::Proto;

fn net(bridge: &str, subnet: &str) -> FwNetwork {
    crate::testing::fw_network(bridge, &[subnet])
}

fn port(proto: Proto, host_ip: Option<&str>, host_port: u16, container_ip: &str, container_port: u16) -> FwPort {
    FwPort {
        proto,
        host_ip: host_ip.map(|h| h.parse().unwrap()),
        host_port,
        container_ip: container_ip.parse().unwrap(),
        container_port,
    }
}

#[test]
fn forward_rules_golden() {
    let mut internal = net("rb-b", "10.2.0.0/24");
    internal.internal = true;
    let mut no_icc = net("rb-c", "10.3.0.0/24");
    no_icc.icc = false;
    let rules = forward_rules(&[net("rb-a", "10.1.0.0/24"), internal, no_icc], Family::V4);
    let expected = [
        "-i rb-a -o rb-a -j ACCEPT",
        "-i rb-b -o rb-b -j ACCEPT",
        "-i rb-c -o rb-c -j DROP",
        "-o rb-a -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-o rb-b -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-o rb-c -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-o rb-a -j DROP",
        "-o rb-b -j DROP",
        "-o rb-c -j DROP",
        "-i rb-a -o docker0 -j DROP",
        "-i rb-a -o br-+ -j DROP",
        "-i rb-a -j ACCEPT",
        "-i rb-b -j DROP",
        "-i rb-c -o docker0 -j DROP",
        "-i rb-c -o br-+ -j DROP",
        "-i rb-c -j ACCEPT",
    ];
    assert_eq!(rules, expected);
}

#[test]
fn published_ports_golden() {
    let mut n = net("rb-p", "10.9.0.0/24");
    n.ports =
        vec![port(Proto::Tcp, None, 8080, "10.9.0.2", 80), port(Proto::Udp, Some("127.0.0.1"), 8081, "10.9.0.2", 81)];
    let nets = [n];
    assert_eq!(
        dnat_rules(&nets, Family::V4),
        [
            "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.9.0.2:80",
            "-d 127.0.0.1/32 -p udp -m udp --dport 8081 -j DNAT --to-destination 10.9.0.2:81",
        ]
    );
    let forward = forward_rules(&nets, Family::V4);
    assert_eq!(
        forward[0],
        "-d 10.9.0.2/32 ! -i rb-p -o rb-p -p tcp -m conntrack --ctstate DNAT -m tcp --dport 80 -j ACCEPT"
    );
    assert_eq!(
        forward[1],
        "-d 10.9.0.2/32 ! -i rb-p -o rb-p -p udp -m conntrack --ctstate DNAT -m udp --dport 81 -j ACCEPT"
    );
    assert_eq!(
        postrouting_rules(&nets, Family::V4),
        [
            "-s 10.9.0.2/32 -d 10.9.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE",
            "-s 10.9.0.2/32 -d 10.9.0.2/32 -p udp -m udp --dport 81 -j MASQUERADE",
            "-s 127.0.0.0/8 -o rb-p -j MASQUERADE",
            "-s 10.9.0.0/24 ! -o rb-p -j MASQUERADE",
        ]
    );
    assert!(dnat_rules(&nets, Family::V6).is_empty());
}

#[test]
fn ipv6_ports_use_brackets() {
    let mut n = net("rb-6", "fd00:1::/64");
    n.ports = vec![port(Proto::Tcp, None, 8080, "fd00:1::2", 80)];
    assert_eq!(dnat_rules(&[n], Family::V6), ["-p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:1::2]:80"]);
}

#[test]
fn families_are_separate() {
    let nets = [net("rb-a", "10.1.0.0/24"), net("rb-6", "fd00:1::/64")];
    assert!(forward_rules(&nets, Family::V6).iter().all(|r| !r.contains("rb-a")));
    assert_eq!(postrouting_rules(&nets, Family::V6), vec!["-s fd00:1::/64 ! -o rb-6 -j MASQUERADE"]);
    assert_eq!(raw_rules(&nets), ["-i rb-a -d 127.0.0.0/8 -j DROP"]);
}

#[test]
fn postrouting_masquerade_snat_routed_and_none() {
    let mut snat = net("rb-s", "10.5.0.0/24");
    snat.snat_ipv4 = Some("192.0.2.7".parse().unwrap());
    let mut off = net("rb-o", "10.6.0.0/24");
    off.masquerade = false;
    let mut internal = net("rb-i", "10.7.0.0/24");
    internal.internal = true;
    let mut routed = net("rb-r", "10.8.0.0/24");
    routed.routed_v4 = true;
    let rules = postrouting_rules(&[net("rb-a", "10.1.0.0/24"), snat, off, internal, routed.clone()], Family::V4);
    assert_eq!(
        rules,
        vec!["-s 10.1.0.0/24 ! -o rb-a -j MASQUERADE", "-s 10.5.0.0/24 ! -o rb-s -j SNAT --to-source 192.0.2.7"]
    );
    let rules = forward_rules(&[routed, net("rb-a", "10.1.0.0/24")], Family::V4);
    let accept = rules.iter().position(|r| r == "-o rb-r -j ACCEPT").expect("routed accept");
    for isolation in ["-i rb-a -o rb-r -j DROP", "-i docker0 -o rb-r -j DROP", "-i br-+ -o rb-r -j DROP"] {
        let at = rules.iter().position(|r| r == isolation).unwrap_or_else(|| panic!("missing {isolation}"));
        assert!(at < accept, "{isolation} must come before the routed accept");
    }
}

struct Saved {
    chains: Vec<(&'static str, &'static str)>,
    builtin: Vec<(&'static str, &'static str, String)>,
}

impl Current for Saved {
    fn chain_exists(&self, table: &str, chain: &str) -> bool {
        self.chains.iter().any(|(t, c)| *t == table && *c == chain)
    }
    fn builtin_rules(&self, table: &str, builtin: &str) -> Vec<String> {
        self.builtin.iter().filter(|(t, b, _)| *t == table && *b == builtin).map(|(_, _, l)| l.clone()).collect()
    }
}

#[test]
fn render_fills_chain_and_moves_jump_after_docker_user() {
    let nets = [net("rb-x", "10.1.0.0/24")];
    let filter = &plan(&nets, Family::V4)[0];
    let saved = Saved {
        chains: vec![("filter", FORWARD_CHAIN)],
        builtin: vec![
            ("filter", "FORWARD", "-A FORWARD -j RUSTBRIDGE-FORWARD".into()),
            ("filter", "FORWARD", "-A FORWARD -j DOCKER-USER".into()),
            ("filter", "FORWARD", "-A FORWARD -j DOCKER-ISOLATION-STAGE-1".into()),
        ],
    };
    let text = render(filter, &saved);
    assert!(
        text.starts_with("*filter\n:RUSTBRIDGE-FORWARD - [0:0]\n-A RUSTBRIDGE-FORWARD -i rb-x -o rb-x -j ACCEPT\n")
    );
    assert!(text.ends_with("-D FORWARD -j RUSTBRIDGE-FORWARD\n-I FORWARD 2 -j RUSTBRIDGE-FORWARD\nCOMMIT\n"), "{text}");
    assert!(!holds(filter, &saved, &|_, _| filter.chains[0].rules.len()), "jump above DOCKER-USER is not in place");
}

#[test]
fn render_inactive_removes_jumps_and_chains() {
    let nat = &plan(&[], Family::V4)[1];
    let saved = Saved {
        chains: vec![("nat", POSTROUTING_CHAIN), ("nat", DNAT_CHAIN)],
        builtin: vec![
            ("nat", "POSTROUTING", "-A POSTROUTING -j RUSTBRIDGE-POSTROUTING".into()),
            ("nat", "OUTPUT", "-A OUTPUT -m addrtype --dst-type LOCAL -j RUSTBRIDGE-DNAT".into()),
        ],
    };
    assert_eq!(
        render(nat, &saved),
        "*nat\n-D POSTROUTING -j RUSTBRIDGE-POSTROUTING\n-D OUTPUT -m addrtype --dst-type LOCAL -j RUSTBRIDGE-DNAT\n\
         -F RUSTBRIDGE-POSTROUTING\n-F RUSTBRIDGE-DNAT\n-X RUSTBRIDGE-POSTROUTING\n-X RUSTBRIDGE-DNAT\nCOMMIT\n"
    );
    assert!(!holds(nat, &saved, &|_, _| 0));
    let empty = Saved { chains: vec![], builtin: vec![] };
    assert_eq!(render(nat, &empty), "*nat\nCOMMIT\n");
    assert!(holds(nat, &empty, &|_, _| 0));
}

#[test]
fn trusted_interfaces_may_reach_containers_directly() {
    let mut n = net("rb-t", "10.10.0.0/24");
    n.trusted_interfaces = vec!["eth9".into()];
    let rules = forward_rules(&[n], Family::V4);
    let accept = rules.iter().position(|r| r == "-i eth9 -o rb-t -j ACCEPT").expect("trusted accept");
    let drop = rules.iter().position(|r| r == "-o rb-t -j DROP").expect("drop");
    assert!(accept < drop);
}

#[test]
fn routed_is_per_family() {
    let mut n = net("rb-d", "10.11.0.0/24");
    n.subnets.push("fd00:11::/64".parse().unwrap());
    n.routed_v6 = true;
    assert!(forward_rules(std::slice::from_ref(&n), Family::V6).contains(&"-o rb-d -j ACCEPT".to_string()));
    assert!(forward_rules(std::slice::from_ref(&n), Family::V4).contains(&"-o rb-d -j DROP".to_string()));
    assert_eq!(postrouting_rules(std::slice::from_ref(&n), Family::V4), ["-s 10.11.0.0/24 ! -o rb-d -j MASQUERADE"]);
    assert!(postrouting_rules(&[n], Family::V6).is_empty());
}

#[test]
fn isolation_golden() {
    let mut internal = net("rb-i", "10.2.0.0/24");
    internal.internal = true;
    let mut trusting = net("rb-t", "10.3.0.0/24");
    trusting.trusted_interfaces = vec!["eth9".into()];
    let nets = [net("rb-a", "10.1.0.0/24"), internal, trusting, net("rb-6", "fd00:6::/64")];
    assert_eq!(
        isolation_rules(&nets, Family::V4),
        [
            "-m conntrack --ctdir REPLY -j RETURN",
            "-m conntrack --ctstate DNAT -j RETURN",
            "-i rb-a -o rb-a -j RETURN",
            "-i rb-i -o rb-i -j RETURN",
            "-i rb-t -o rb-t -j RETURN",
            "-i rb-i ! -o rb-i -j DROP",
            "! -i rb-i -o rb-i -j DROP",
            "-i eth9 -o rb-t -j RETURN",
            "-i rb-a -o docker0 -j DROP",
            "-i rb-a -o br-+ -j DROP",
            "-i rb-t -o docker0 -j DROP",
            "-i rb-t -o br-+ -j DROP",
            "-i rb-a ! -o rb-a -j RUSTBRIDGE-ISOLATION-2",
            "-i rb-i ! -o rb-i -j RUSTBRIDGE-ISOLATION-2",
            "-i rb-t ! -o rb-t -j RUSTBRIDGE-ISOLATION-2",
            "-i docker0 -j RUSTBRIDGE-ISOLATION-2",
            "-i br-+ -j RUSTBRIDGE-ISOLATION-2",
        ]
    );
    assert_eq!(isolation_stage2_rules(&nets, Family::V4), ["-o rb-a -j DROP", "-o rb-i -j DROP", "-o rb-t -j DROP"]);
    assert_eq!(isolation_stage2_rules(&nets, Family::V6), ["-o rb-6 -j DROP"]);
}

/// A packet's way through the two isolation stages, as the kernel would
/// evaluate it (interface patterns with a trailing '+', '!' negation).
fn isolation_verdict(nets: &[FwNetwork], family: Family, input: &str, output: &str, reply: bool, dnat: bool) -> bool {
    fn iface_matches(pattern: &str, name: &str) -> bool {
        match pattern.strip_suffix('+') {
            Some(prefix) => name.starts_with(prefix),
            None => pattern == name,
        }
    }
    fn rule_matches(rule: &str, input: &str, output: &str, reply: bool, dnat: bool) -> bool {
        let words: Vec<&str> = rule.split_whitespace().collect();
        let mut i = 0;
        let mut ok = true;
        while i < words.len() && words[i] != "-j" {
            let negate = words[i] == "!";
            if negate {
                i += 1;
            }
            let hit = match words[i] {
                "-i" => iface_matches(words[i + 1], input),
                "-o" => iface_matches(words[i + 1], output),
                "-m" => {
                    i += 2;
                    match (words[i - 1], words[i]) {
                        ("conntrack", "--ctdir") => reply && words[i + 1] == "REPLY",
                        ("conntrack", "--ctstate") => dnat && words[i + 1] == "DNAT",
                        other => panic!("unexpected match {other:?} in {rule}"),
                    }
                }
                other => panic!("unexpected word {other} in {rule}"),
            };
            ok &= hit != negate;
            i += 2;
        }
        ok
    }
    let stage2 = isolation_stage2_rules(nets, family);
    for rule in isolation_rules(nets, family) {
        if !rule_matches(&rule, input, output, reply, dnat) {
            continue;
        }
        match rule.rsplit(' ').next().unwrap() {
            "RETURN" => return true,
            "DROP" => return false,
            ISOLATION_STAGE2_CHAIN => {
                if stage2.iter().any(|r| rule_matches(r, input, output, reply, dnat)) {
                    return false;
                }
            }
            other => panic!("unexpected target {other}"),
        }
    }
    true
}

#[test]
fn isolation_drops_every_crossing_between_container_bridges_and_nothing_else() {
    let mut internal = net("rb-i", "10.2.0.0/24");
    internal.internal = true;
    let mut trusting = net("rb-t", "10.3.0.0/24");
    trusting.trusted_interfaces = vec!["docker0".into()];
    let nets = [net("rb-a", "10.1.0.0/24"), net("rb-b", "10.4.0.0/24"), internal, trusting];
    let passes = |i: &str, o: &str| isolation_verdict(&nets, Family::V4, i, o, false, false);
    // Into a rustbridge network from Docker's bridges and from other rustbridge networks: never.
    for from in ["docker0", "br-0123456789ab", "rb-b", "rb-i", "rb-t"] {
        assert!(!passes(from, "rb-a"), "{from} -> rb-a must be dropped");
    }
    for to in ["docker0", "br-0123456789ab", "rb-b", "rb-i", "rb-t"] {
        assert!(!passes("rb-a", to), "rb-a -> {to} must be dropped");
    }
    // An internal network: nothing in or out.
    assert!(!passes("eth0", "rb-i"));
    assert!(!passes("rb-i", "eth0"));
    // Left to the filter chain: intra-network, outbound, from other hosts, Docker's own bridges among themselves.
    for (i, o) in [
        ("rb-a", "rb-a"),
        ("rb-i", "rb-i"),
        ("rb-a", "eth0"),
        ("eth0", "rb-a"),
        ("docker0", "br-0123456789ab"),
        ("br-0123456789ab", "br-0123456789ab"),
        ("docker0", "eth0"),
    ] {
        assert!(passes(i, o), "{i} -> {o} is not isolation's business");
    }
    // Trusted interfaces, replies and published ports (DNAT) are left to the filter chain.
    assert!(passes("docker0", "rb-t"));
    assert!(isolation_verdict(&nets, Family::V4, "docker0", "rb-a", true, false));
    assert!(isolation_verdict(&nets, Family::V4, "docker0", "rb-a", false, true));
    // Another family's networks are not in this family's chain.
    assert!(isolation_verdict(&nets, Family::V6, "docker0", "rb-a", false, false));
}

#[test]
fn isolation_rules_grow_linearly_with_networks() {
    let nets: Vec<FwNetwork> = (0..100).map(|i| net(&format!("rb-{i}"), &format!("10.{i}.0.0/24"))).collect();
    let count = isolation_rules(&nets, Family::V4).len() + isolation_stage2_rules(&nets, Family::V4).len();
    assert_eq!(count, 2 + 100 * 5 + 2);
}

#[test]
fn isolation_lives_in_mangle_forward_for_both_families_and_renders_stage2_first_declared() {
    let nets = [net("rb-a", "10.1.0.0/24"), net("rb-6", "fd00:6::/64")];
    for family in [Family::V4, Family::V6] {
        let plans = plan(&nets, family);
        let mangle = plans.iter().find(|p| p.table == "mangle").expect("mangle plan");
        assert!(mangle.active);
        assert_eq!(
            mangle.chains[0].jumps,
            [Jump { builtin: "FORWARD", spec: format!("-j {ISOLATION_CHAIN}"), positioned: false }]
        );
        let empty = Saved { chains: vec![], builtin: vec![] };
        let text = render(mangle, &empty);
        let first_rule = text.find("\n-A ").unwrap();
        assert!(text[..first_rule].contains(":RUSTBRIDGE-ISOLATION-2 - [0:0]"), "{text}");
        assert!(text.ends_with("-I FORWARD 1 -j RUSTBRIDGE-ISOLATION\nCOMMIT\n"), "{text}");
    }
    let gone = plan(&[], Family::V4);
    let mangle = gone.iter().find(|p| p.table == "mangle").unwrap();
    let saved = Saved {
        chains: vec![("mangle", ISOLATION_CHAIN), ("mangle", ISOLATION_STAGE2_CHAIN)],
        builtin: vec![("mangle", "FORWARD", "-A FORWARD -j RUSTBRIDGE-ISOLATION".into())],
    };
    assert_eq!(
        render(mangle, &saved),
        "*mangle\n-D FORWARD -j RUSTBRIDGE-ISOLATION\n-F RUSTBRIDGE-ISOLATION\n-F RUSTBRIDGE-ISOLATION-2\n\
         -X RUSTBRIDGE-ISOLATION\n-X RUSTBRIDGE-ISOLATION-2\nCOMMIT\n"
    );
}
