//! The ruleset's behaviour, proved by running its expressions the way the
//! kernel evaluates them (registers, set and map lookups, verdicts, jumps)
//! over model packets: what the old iptables golden tests proved (isolation,
//! icc, internal, trusted interfaces, routed mode, NAT, published ports,
//! hairpin, 127.0.0.0/8) now against the nftables table.

use std::net::IpAddr;

use super::*;
use crate::testing::fw_network;

#[derive(Debug, Clone)]
struct Packet {
    family: Family,
    iif: &'static str,
    oif: &'static str,
    saddr: IpAddr,
    daddr: IpAddr,
    l4proto: u8,
    dport: u16,
    /// Conntrack state bits as nft sees them (established 2, related 4, new 8).
    ct_state: u32,
    reply: bool,
    dnat: bool,
    dst_local: bool,
    mark: u32,
}

fn pkt(iif: &'static str, oif: &'static str) -> Packet {
    Packet {
        family: Family::V4,
        iif,
        oif,
        saddr: "192.0.2.1".parse().unwrap(),
        daddr: "198.51.100.1".parse().unwrap(),
        l4proto: 6,
        dport: 80,
        ct_state: 8,
        reply: false,
        dnat: false,
        dst_local: false,
        mark: 0,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// No terminal verdict (the base chain's policy accept).
    Continue,
    Accept,
    Drop,
    Masquerade,
    Nat {
        kind: NatKind,
        addr: IpAddr,
        port: Option<u16>,
    },
}

struct Vm<'a> {
    rs: &'a Ruleset,
    chains: BTreeMap<String, Vec<Rule>>,
}

fn slot(reg: u32) -> usize {
    if reg <= 4 { (reg as usize - 1) * 16 } else { (reg - REG32_00) as usize * 4 }
}

fn field(p: &Packet, base: PayloadBase, offset: u32, len: u32) -> Vec<u8> {
    match (base, offset, len) {
        (PayloadBase::Network, 12, 4) | (PayloadBase::Network, 8, 16) => addr(&p.saddr),
        (PayloadBase::Network, 16, 4) | (PayloadBase::Network, 24, 16) => addr(&p.daddr),
        (PayloadBase::Transport, 2, 2) => p.dport.to_be_bytes().to_vec(),
        other => panic!("payload {other:?} not modelled"),
    }
}

impl Vm<'_> {
    fn new(rs: &Ruleset) -> Vm<'_> {
        let chains = skeleton().into_iter().map(|c| (c.name, c.rules)).chain(rs.chains.clone()).collect();
        Vm { rs, chains }
    }

    fn run(&self, chain: &str, p: &mut Packet) -> Outcome {
        for rule in &self.chains[chain] {
            match self.rule(rule, p) {
                Some(Outcome::Continue) | None => continue,
                Some(o) => return o,
            }
        }
        Outcome::Continue
    }

    /// None: the rule did not match (or ended without a verdict).
    fn rule(&self, rule: &Rule, p: &mut Packet) -> Option<Outcome> {
        let mut regs = [0u8; 64];
        let store = |regs: &mut [u8; 64], reg: u32, data: &[u8]| {
            let at = slot(reg);
            let words = data.len().div_ceil(4) * 4;
            regs[at..at + words].fill(0);
            regs[at..at + data.len()].copy_from_slice(data);
        };
        let family_of = |f: Family| if f == Family::V4 { NFPROTO_IPV4 } else { NFPROTO_IPV6 };
        for e in rule {
            match e {
                Expr::Meta { key, dreg } => {
                    let v = match key {
                        MetaKey::IifName => ifname(p.iif),
                        MetaKey::OifName => ifname(p.oif),
                        MetaKey::NfProto => vec![family_of(p.family)],
                        MetaKey::L4Proto => vec![p.l4proto],
                        MetaKey::Mark => p.mark.to_ne_bytes().to_vec(),
                    };
                    store(&mut regs, *dreg, &v);
                }
                Expr::MetaSet { key: MetaKey::Mark, sreg } => {
                    p.mark = u32::from_ne_bytes(regs[slot(*sreg)..slot(*sreg) + 4].try_into().unwrap())
                }
                Expr::MetaSet { .. } => panic!("only the mark is set"),
                Expr::Ct { key, dreg } => {
                    let v = match key {
                        CtKey::State => p.ct_state.to_ne_bytes().to_vec(),
                        CtKey::Direction => vec![u8::from(p.reply)],
                        CtKey::Status => (if p.dnat { IPS_DST_NAT } else { 0 }).to_ne_bytes().to_vec(),
                    };
                    store(&mut regs, *dreg, &v);
                }
                Expr::Payload { base, offset, len, dreg } => {
                    let v = field(p, *base, *offset, *len);
                    assert_eq!(v.len(), *len as usize, "payload of the packet's family");
                    store(&mut regs, *dreg, &v);
                }
                Expr::Cmp { sreg, op, data } => {
                    let equal = regs[slot(*sreg)..slot(*sreg) + data.len()] == data[..];
                    if equal != (*op == CmpOp::Eq) {
                        return None;
                    }
                }
                Expr::Bitwise { sreg, dreg, mask, xor } => {
                    let s = slot(*sreg);
                    let v: Vec<u8> = (0..mask.len()).map(|i| (regs[s + i] & mask[i]) ^ xor[i]).collect();
                    store(&mut regs, *dreg, &v);
                }
                Expr::Lookup { set, sreg, dreg } => {
                    let def = SETS.iter().find(|s| s.name == set).expect("known set");
                    let key = regs[slot(*sreg)..slot(*sreg) + def.key_len as usize].to_vec();
                    let found = self.rs.elements[def.name].get(&key)?;
                    match (dreg, found) {
                        (None, _) => {}
                        (Some(0), Elem::Jump(chain)) => match self.run(chain, p) {
                            Outcome::Continue => return None,
                            o => return Some(o),
                        },
                        (Some(r), Elem::Value(v)) => store(&mut regs, *r, v),
                        other => panic!("lookup {other:?}"),
                    }
                }
                Expr::FibDaddrType { dreg } => {
                    store(&mut regs, *dreg, &(if p.dst_local { RTN_LOCAL } else { 1 }).to_ne_bytes())
                }
                Expr::Immediate { dreg, data } => store(&mut regs, *dreg, data),
                Expr::Verdict { code, chain } => {
                    return Some(match (*code, chain) {
                        (NF_ACCEPT, _) => Outcome::Accept,
                        (NF_DROP, _) => Outcome::Drop,
                        (NFT_JUMP, Some(c)) => self.run(c, p),
                        other => panic!("verdict {other:?}"),
                    });
                }
                Expr::Nat { kind, family, addr, port } => {
                    let len = if *family == NFPROTO_IPV4 { 4 } else { 16 };
                    let a = &regs[slot(*addr)..slot(*addr) + len];
                    let ip = if len == 4 {
                        IpAddr::from(<[u8; 4]>::try_from(a).unwrap())
                    } else {
                        IpAddr::from(<[u8; 16]>::try_from(a).unwrap())
                    };
                    let port = port.map(|r| u16::from_be_bytes([regs[slot(r)], regs[slot(r) + 1]]));
                    return Some(Outcome::Nat { kind: *kind, addr: ip, port });
                }
                Expr::Masquerade => return Some(Outcome::Masquerade),
            }
        }
        None
    }

    /// The forward hook as a whole: dropped, or accepted by dockerd's FORWARD
    /// (our mark), or not our business (dockerd decides).
    fn forward(&self, p: &Packet) -> &'static str {
        let mut p = p.clone();
        p.mark = ACCEPT_MARK | 0x5; // someone else's bits, and a stale one of ours
        match self.run("forward", &mut p) {
            Outcome::Drop => "drop",
            _ if p.mark & ACCEPT_MARK != 0 => {
                assert_eq!(p.mark & 0x5, 0x5, "other mark bits are kept");
                "accept"
            }
            _ => "dockerd",
        }
    }
}

fn net(bridge: &str, subnet: &str) -> FwNetwork {
    fw_network(bridge, &[subnet])
}

fn fport(proto: Proto, host_ip: Option<&str>, host_port: u16, container_ip: &str, container_port: u16) -> FwPort {
    FwPort {
        proto,
        host_ip: host_ip.map(|h| h.parse().unwrap()),
        host_port,
        container_ip: container_ip.parse().unwrap(),
        container_port,
    }
}

#[test]
fn no_network_no_table() {
    assert!(build(&[]).is_none());
}

#[test]
fn isolation_between_container_bridges_and_icc() {
    let mut internal = net("rb-i", "10.2.0.0/24");
    internal.internal = true;
    let mut no_icc = net("rb-c", "10.3.0.0/24");
    no_icc.icc = false;
    let nets = [net("rb-a", "10.1.0.0/24"), net("rb-b", "10.4.0.0/24"), internal, no_icc];
    let rs = build(&nets).unwrap();
    let vm = Vm::new(&rs);
    let fwd = |i, o| vm.forward(&pkt(i, o));
    // Within a network: enable_icc decides (internal networks talk inside too).
    assert_eq!(fwd("rb-a", "rb-a"), "accept");
    assert_eq!(fwd("rb-i", "rb-i"), "accept");
    assert_eq!(fwd("rb-c", "rb-c"), "drop");
    // Between container bridges, rustbridge's or Docker's: never, either way.
    for other in ["rb-b", "rb-i", "rb-c", "docker0", "br-0123456789ab"] {
        assert_eq!(fwd(other, "rb-a"), "drop", "{other} -> rb-a");
        assert_eq!(fwd("rb-a", other), "drop", "rb-a -> {other}");
    }
    // Outbound yes; new inbound from other hosts no; replies yes.
    assert_eq!(fwd("rb-a", "eth0"), "accept");
    assert_eq!(fwd("eth0", "rb-a"), "drop");
    let mut reply = pkt("eth0", "rb-a");
    (reply.ct_state, reply.reply) = (2, true);
    assert_eq!(vm.forward(&reply), "accept");
    // Internal: nothing in or out, replies included.
    assert_eq!(fwd("rb-i", "eth0"), "drop");
    assert_eq!(fwd("eth0", "rb-i"), "drop");
    reply.oif = "rb-i";
    assert_eq!(vm.forward(&reply), "drop");
    // Docker's own bridges among themselves: dockerd's business.
    assert_eq!(fwd("docker0", "br-0123456789ab"), "dockerd");
    assert_eq!(fwd("docker0", "eth0"), "dockerd");
    // IPv6 through the same table.
    let mut v6 = pkt("rb-b", "rb-a");
    (v6.family, v6.saddr, v6.daddr) = (Family::V6, "fd00:4::2".parse().unwrap(), "fd00:1::2".parse().unwrap());
    assert_eq!(vm.forward(&v6), "drop");
}

#[test]
fn published_ports_dnat_forward_and_hairpin() {
    let mut n = net("rb-p", "10.9.0.0/24");
    n.subnets.push("fd00:9::/64".parse().unwrap());
    n.ports = vec![
        fport(Proto::Tcp, None, 8080, "10.9.0.2", 80),
        fport(Proto::Udp, Some("127.0.0.1"), 8081, "10.9.0.2", 81),
        fport(Proto::Sctp, None, 8082, "10.9.0.3", 99),
        fport(Proto::Tcp, None, 8080, "fd00:9::2", 80),
    ];
    let rs = build(&[n, net("rb-o", "10.8.0.0/24")]).unwrap();
    let vm = Vm::new(&rs);
    let dnat = |p: &mut Packet| vm.run("nat-prerouting", p);
    let mut to_host = pkt("eth0", "");
    (to_host.dst_local, to_host.dport) = (true, 8080);
    let to = |ip: &str, port| Outcome::Nat { kind: NatKind::Dnat, addr: ip.parse().unwrap(), port: Some(port) };
    assert_eq!(dnat(&mut to_host.clone()), to("10.9.0.2", 80));
    // Only to the host's own addresses (fib daddr type local).
    assert_eq!(dnat(&mut Packet { dst_local: false, ..to_host.clone() }), Outcome::Continue);
    assert_eq!(dnat(&mut Packet { l4proto: 17, ..to_host.clone() }), Outcome::Continue, "udp 8080 not published");
    // A port bound to one host address answers there only.
    let mut udp = Packet { l4proto: 17, dport: 8081, ..to_host.clone() };
    assert_eq!(dnat(&mut udp.clone()), Outcome::Continue);
    udp.daddr = "127.0.0.1".parse().unwrap();
    assert_eq!(vm.run("nat-output", &mut udp), to("10.9.0.2", 81));
    assert_eq!(dnat(&mut Packet { l4proto: 132, dport: 8082, ..to_host.clone() }), to("10.9.0.3", 99));
    let mut v6 = Packet { family: Family::V6, daddr: "fd00::1".parse().unwrap(), ..to_host.clone() };
    v6.saddr = "fd00::9".parse().unwrap();
    assert_eq!(dnat(&mut v6), to("fd00:9::2", 80));
    // After DNAT, forward to the container: accepted from anywhere, other networks included.
    for from in ["eth0", "rb-o", "docker0"] {
        let mut after = pkt(from, "rb-p");
        (after.daddr, after.dnat) = ("10.9.0.2".parse().unwrap(), true);
        assert_eq!(vm.forward(&after), "accept", "published port from {from}");
        after.dport = 81;
        assert_eq!(vm.forward(&after), "drop", "tcp 81 is not published (udp is), from {from}");
    }
    // Reaching the container's address directly, without DNAT: no.
    let mut direct = pkt("eth0", "rb-p");
    direct.daddr = "10.9.0.2".parse().unwrap();
    assert_eq!(vm.forward(&direct), "drop");
    // Hairpin: a container reaching its own published port through the host is masqueraded.
    let mut hairpin = pkt("rb-p", "rb-p");
    (hairpin.saddr, hairpin.daddr) = ("10.9.0.2".parse().unwrap(), "10.9.0.2".parse().unwrap());
    assert_eq!(vm.run("nat-postrouting", &mut hairpin.clone()), Outcome::Masquerade);
    hairpin.saddr = "10.9.0.5".parse().unwrap();
    assert_eq!(vm.run("nat-postrouting", &mut hairpin), Outcome::Continue, "another container: not hairpin");
    // 127.0.0.1 reaching a published port leaves masqueraded.
    let mut local = pkt("lo", "rb-p");
    (local.saddr, local.daddr) = ("127.0.0.1".parse().unwrap(), "10.9.0.2".parse().unwrap());
    assert_eq!(vm.run("nat-postrouting", &mut local), Outcome::Masquerade);
}

#[test]
fn source_nat_masquerade_snat_routed_internal_and_off() {
    let mut snat = net("rb-s", "10.5.0.0/24");
    snat.snat_ipv4 = Some("192.0.2.7".parse().unwrap());
    let mut off = net("rb-o", "10.6.0.0/24");
    off.masquerade = false;
    let mut internal = net("rb-i", "10.7.0.0/24");
    internal.internal = true;
    let mut routed = net("rb-r", "10.8.0.0/24");
    routed.routed_v4 = true;
    routed.subnets.push("fd00:8::/64".parse().unwrap());
    let rs = build(&[net("rb-a", "10.1.0.0/24"), snat, off, internal, routed]).unwrap();
    let vm = Vm::new(&rs);
    let post = |iif: &'static str, src: &str, oif: &'static str| {
        let mut p = pkt(iif, oif);
        p.saddr = src.parse().unwrap();
        if p.saddr.is_ipv6() {
            (p.family, p.daddr) = (Family::V6, "2001:db8::1".parse().unwrap());
        }
        vm.run("nat-postrouting", &mut p)
    };
    assert_eq!(post("rb-a", "10.1.0.2", "eth0"), Outcome::Masquerade);
    assert_eq!(post("rb-a", "10.1.0.2", "rb-a"), Outcome::Continue, "not back into its own bridge");
    assert_eq!(
        post("rb-s", "10.5.0.2", "eth0"),
        Outcome::Nat { kind: NatKind::Snat, addr: "192.0.2.7".parse().unwrap(), port: None }
    );
    assert_eq!(post("rb-o", "10.6.0.2", "eth0"), Outcome::Continue);
    assert_eq!(post("rb-i", "10.7.0.2", "eth0"), Outcome::Continue);
    assert_eq!(post("rb-r", "10.8.0.2", "eth0"), Outcome::Continue, "routed IPv4: no NAT");
    assert_eq!(post("rb-r", "fd00:8::2", "eth0"), Outcome::Masquerade, "routed is per family");
    // Routed: other hosts reach containers directly, other container networks still do not.
    let fwd = |i, o, family| vm.forward(&Packet { family, ..pkt(i, o) });
    assert_eq!(fwd("eth0", "rb-r", Family::V4), "accept");
    assert_eq!(fwd("eth0", "rb-r", Family::V6), "drop");
    assert_eq!(fwd("rb-a", "rb-r", Family::V4), "drop");
    assert_eq!(fwd("docker0", "rb-r", Family::V4), "drop");
    assert_eq!(fwd("br-0123456789ab", "rb-r", Family::V4), "drop");
}

#[test]
fn trusted_interfaces_reach_containers_directly_unless_internal() {
    let mut n = net("rb-t", "10.10.0.0/24");
    n.trusted_interfaces = vec!["eth9".into()];
    let mut internal = net("rb-u", "10.11.0.0/24");
    internal.internal = true;
    internal.trusted_interfaces = vec!["eth9".into()];
    let rs = build(&[n, internal]).unwrap();
    let vm = Vm::new(&rs);
    assert_eq!(vm.forward(&pkt("eth9", "rb-t")), "accept");
    assert_eq!(vm.forward(&pkt("eth8", "rb-t")), "drop");
    assert_eq!(vm.forward(&pkt("eth9", "rb-u")), "drop");
}

#[test]
fn loopback_destinations_from_ipv4_bridges_are_dropped_in_raw() {
    let rs = build(&[net("rb-a", "10.1.0.0/24"), net("rb-6", "fd00:6::/64")]).unwrap();
    let vm = Vm::new(&rs);
    let mut p = pkt("rb-a", "");
    p.daddr = "127.0.0.1".parse().unwrap();
    assert_eq!(vm.run("raw-prerouting", &mut p.clone()), Outcome::Drop);
    p.iif = "eth0";
    assert_eq!(vm.run("raw-prerouting", &mut p.clone()), Outcome::Continue);
    assert_eq!(rs.elements[LOCALNET].len(), 1, "IPv6-only networks get no route_localnet and no drop");
}

#[test]
fn a_network_or_a_port_more_is_a_constant_number_of_elements_and_rules() {
    let size = |rs: &Ruleset| {
        (rs.chains.values().map(Vec::len).sum::<usize>(), rs.elements.values().map(BTreeMap::len).sum::<usize>())
    };
    let nets = |n: usize| -> Vec<FwNetwork> {
        (0..n).map(|i| net(&format!("rb-{i}"), &format!("10.{}.{}.0/24", i / 256, i % 256))).collect()
    };
    let (r1, e1) = size(&build(&nets(1)).unwrap());
    let (r1000, e1000) = size(&build(&nets(1000)).unwrap());
    assert_eq!((r1000, e1000), (r1 * 1000, e1 * 1000));
    // Per-packet work stays with the lookups: the skeleton's rule count is fixed.
    assert_eq!(skeleton().iter().map(|c| c.rules.len()).sum::<usize>(), 14);
}
