//! What rustbridge wants in its nftables table, as plain data: a fixed
//! skeleton (sets, base chains and their rules) written once, and per
//! network three small chains plus set and map elements. A network or a
//! published port more is a constant number of elements and rules, whatever
//! is already there; every packet is classified by set and map lookups
//! (hash tables), never by a walk over the networks or ports.
//!
//! The table's forward chain runs before the filter table (mangle priority)
//! and either drops a packet (final whoever comes next) or marks it with
//! [`ACCEPT_MARK`]; the static iptables rule in dockerd's filter FORWARD
//! accepts what carries the mark (see [`crate::firewall::rules`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::expr::*;
use super::msg::{NFPROTO_IPV4, NFPROTO_IPV6};
use crate::family::Family;
use crate::firewall::{FwNetwork, FwPort, Proto};
use crate::names::docker_bridge_patterns;

/// The table (family inet: one table for IPv4 and IPv6).
pub const TABLE: &str = "rustbridge";
/// The packet mark bit meaning "rustbridge accepts this forwarded packet".
pub const ACCEPT_MARK: u32 = 0x0100_0000;

pub const NF_INET_PRE_ROUTING: u32 = 0;
pub const NF_INET_FORWARD: u32 = 2;
pub const NF_INET_LOCAL_OUT: u32 = 3;
pub const NF_INET_POST_ROUTING: u32 = 4;
const RTN_LOCAL: u32 = 2;
const IPS_DST_NAT: u32 = 0x20;
const CT_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
const IP_CT_DIR_REPLY: u8 = 1;
const IFNAMSIZ: usize = 16;

/// nft's datatype numbers (for `nft list` to print the elements), and concatenations of them.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
pub const TYPE_IFNAME: u32 = 41;
pub const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

const fn concat(types: &[u32]) -> u32 {
    let mut out = 0;
    let mut i = 0;
    while i < types.len() {
        out = (out << 6) | types[i];
        i += 1;
    }
    out
}

pub type Rule = Vec<Expr>;

/// Set and map names.
pub const BRIDGES: &str = "bridges";
pub const LOCALNET: &str = "localnet";
pub const TO: &str = "to-bridge";
pub const FROM: &str = "from-bridge";
pub const NAT_FROM: &str = "nat-from-bridge";
pub const PUBLISHED4: &str = "published4";
pub const PUBLISHED6: &str = "published6";
pub const HAIRPIN4: &str = "hairpin4";
pub const HAIRPIN6: &str = "hairpin6";
pub const DNAT4_ADDR: &str = "dnat4-addr";
pub const DNAT4_ANY: &str = "dnat4-any";
pub const DNAT6_ADDR: &str = "dnat6-addr";
pub const DNAT6_ANY: &str = "dnat6-any";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetData {
    Verdict,
    Value { kind: u32, len: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetDef {
    pub name: &'static str,
    pub key_type: u32,
    pub key_len: u32,
    pub data: Option<SetData>,
}

pub const SETS: [SetDef; 13] = {
    const IFNAME: u32 = IFNAMSIZ as u32;
    const V4_PORT: SetData = SetData::Value { kind: concat(&[TYPE_IPADDR, TYPE_INET_SERVICE]), len: 8 };
    const V6_PORT: SetData = SetData::Value { kind: concat(&[TYPE_IP6ADDR, TYPE_INET_SERVICE]), len: 20 };
    [
        SetDef { name: BRIDGES, key_type: TYPE_IFNAME, key_len: IFNAME, data: None },
        SetDef { name: LOCALNET, key_type: TYPE_IFNAME, key_len: IFNAME, data: None },
        SetDef { name: TO, key_type: TYPE_IFNAME, key_len: IFNAME, data: Some(SetData::Verdict) },
        SetDef { name: FROM, key_type: TYPE_IFNAME, key_len: IFNAME, data: Some(SetData::Verdict) },
        SetDef { name: NAT_FROM, key_type: TYPE_IFNAME, key_len: IFNAME, data: Some(SetData::Verdict) },
        SetDef {
            name: PUBLISHED4,
            key_type: concat(&[TYPE_IPADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            key_len: 12,
            data: None,
        },
        SetDef {
            name: PUBLISHED6,
            key_type: concat(&[TYPE_IP6ADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            key_len: 24,
            data: None,
        },
        SetDef {
            name: HAIRPIN4,
            key_type: concat(&[TYPE_IPADDR, TYPE_IPADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            key_len: 16,
            data: None,
        },
        SetDef {
            name: HAIRPIN6,
            key_type: concat(&[TYPE_IP6ADDR, TYPE_IP6ADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            key_len: 40,
            data: None,
        },
        SetDef {
            name: DNAT4_ADDR,
            key_type: concat(&[TYPE_INET_PROTOCOL, TYPE_IPADDR, TYPE_INET_SERVICE]),
            key_len: 12,
            data: Some(V4_PORT),
        },
        SetDef {
            name: DNAT4_ANY,
            key_type: concat(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            key_len: 8,
            data: Some(V4_PORT),
        },
        SetDef {
            name: DNAT6_ADDR,
            key_type: concat(&[TYPE_INET_PROTOCOL, TYPE_IP6ADDR, TYPE_INET_SERVICE]),
            key_len: 24,
            data: Some(V6_PORT),
        },
        SetDef {
            name: DNAT6_ANY,
            key_type: concat(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            key_len: 8,
            data: Some(V6_PORT),
        },
    ]
};

/// A base chain's hook: (hook number, priority, chain type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    pub num: u32,
    pub priority: i32,
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

/// What a set element holds besides its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    Key,
    Value(Vec<u8>),
    Jump(String),
}

/// The dynamic part: per-network chains and every set's elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Vec<Rule>>,
    pub elements: BTreeMap<&'static str, BTreeMap<Vec<u8>, Elem>>,
}

/// The fixed chains, in creation order (a chain before the chains that jump to it).
pub fn skeleton() -> Vec<Chain> {
    let hook = |num, priority, kind| Some(Hook { num, priority, kind });
    let chain = |name: &str, hook, rules| Chain { name: name.into(), hook, rules };
    vec![
        chain("dnat-ports", None, dnat_rules()),
        // Mangle priority: before the filter table of iptables (legacy or nft) and of firewalld.
        chain(
            "forward",
            hook(NF_INET_FORWARD, -150, "filter"),
            vec![
                // Our bit means "accepted by this pass", whoever set it before.
                [load_mark(), vec![Expr::Bitwise { sreg: REG_1, dreg: REG_1, mask: ne32(!ACCEPT_MARK), xor: ne32(0) }]]
                    .concat()
                    .into_iter()
                    .chain([Expr::MetaSet { key: MetaKey::Mark, sreg: REG_1 }])
                    .collect(),
                [iface_in(MetaKey::OifName, TO, Some(REG_VERDICT))].concat(),
                [iface_in(MetaKey::IifName, FROM, Some(REG_VERDICT))].concat(),
            ],
        ),
        // Raw priority: route_localnet is on for our IPv4 bridges, so nothing from them may reach 127.0.0.0/8.
        chain(
            "raw-prerouting",
            hook(NF_INET_PRE_ROUTING, -300, "filter"),
            vec![
                [
                    nfproto(NFPROTO_IPV4),
                    iface_in(MetaKey::IifName, LOCALNET, None),
                    addr_in(Dir::Dst, &"127.0.0.0/8".parse().unwrap()),
                    drop(),
                ]
                .concat(),
            ],
        ),
        chain("nat-prerouting", hook(NF_INET_PRE_ROUTING, -100, "nat"), vec![to_local_ports()]),
        chain("nat-output", hook(NF_INET_LOCAL_OUT, -100, "nat"), vec![to_local_ports()]),
        chain(
            "nat-postrouting",
            hook(NF_INET_POST_ROUTING, 100, "nat"),
            vec![
                // Hairpin: a container reaching its own published port through a host address.
                [nfproto(NFPROTO_IPV4), hairpin_key(Family::V4), lookup(HAIRPIN4, REG32_00, None), masquerade()]
                    .concat(),
                [nfproto(NFPROTO_IPV6), hairpin_key(Family::V6), lookup(HAIRPIN6, REG32_00, None), masquerade()]
                    .concat(),
                // Published ports reached from the host's 127.0.0.1.
                [
                    nfproto(NFPROTO_IPV4),
                    addr_in(Dir::Src, &"127.0.0.0/8".parse().unwrap()),
                    iface_in(MetaKey::OifName, LOCALNET, None),
                    masquerade(),
                ]
                .concat(),
                iface_in(MetaKey::IifName, NAT_FROM, Some(REG_VERDICT)),
            ],
        ),
    ]
}

/// Every chain name the table holds for `ruleset`.
pub fn chain_names(ruleset: &Ruleset) -> Vec<String> {
    skeleton().into_iter().map(|c| c.name).chain(ruleset.chains.keys().cloned()).collect()
}

/// The table's content for `networks`; None when there is none (no table at all).
pub fn build(networks: &[FwNetwork]) -> Option<Ruleset> {
    if networks.is_empty() {
        return None;
    }
    let mut rs = Ruleset::default();
    for set in SETS {
        rs.elements.insert(set.name, BTreeMap::new());
    }
    for n in networks {
        let f = fragment(n);
        rs.chains.extend(f.chains);
        for ((set, key), elem) in f.elements {
            // Keys are unique across networks (no overlapping subnets, one
            // owner per host port); were they not, the first network wins.
            rs.elements.get_mut(set).expect("every set is listed").entry(key).or_insert(elem);
        }
    }
    Some(rs)
}

/// What one network puts in the table: its three chains and its elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    pub chains: BTreeMap<String, Vec<Rule>>,
    pub elements: BTreeMap<(&'static str, Vec<u8>), Elem>,
}

pub fn fragment(n: &FwNetwork) -> Fragment {
    let mut f = Fragment { chains: chains(n), elements: BTreeMap::new() };
    for (key, elem) in network_elements(n).into_iter().chain(n.ports.iter().flat_map(port_elements)) {
        f.elements.entry(key).or_insert(elem);
    }
    f
}

/// A set element: (set, key) and what it holds.
pub type Element = ((&'static str, Vec<u8>), Elem);

/// The network's own elements (its bridge in the sets and verdict maps).
pub fn network_elements(n: &FwNetwork) -> Vec<Element> {
    let b = &n.bridge;
    let key = ifname(b);
    let mut out = vec![((BRIDGES, key.clone()), Elem::Key)];
    if drops_localnet(&n.subnets) {
        out.push(((LOCALNET, key.clone()), Elem::Key));
    }
    out.push(((TO, key.clone()), Elem::Jump(to_chain(b))));
    out.push(((FROM, key.clone()), Elem::Jump(from_chain(b))));
    out.push(((NAT_FROM, key), Elem::Jump(nat_chain(b))));
    out
}

/// The network's three chains (they do not depend on its ports).
pub fn chains(n: &FwNetwork) -> BTreeMap<String, Vec<Rule>> {
    let b = &n.bridge;
    BTreeMap::from([(to_chain(b), to_rules(n)), (from_chain(b), from_rules(n)), (nat_chain(b), nat_rules(n))])
}

/// Whether the table drops 127.0.0.0/8 arriving from a network with these
/// subnets (it does for every network with IPv4: its bridge is in LOCALNET):
/// route_localnet may be on for its bridge only then.
pub fn drops_localnet(subnets: &[IpNet]) -> bool {
    subnets.iter().any(|s| Family::V4.matches(s))
}

pub fn to_chain(bridge: &str) -> String {
    format!("to-{bridge}")
}
pub fn from_chain(bridge: &str) -> String {
    format!("from-{bridge}")
}
pub fn nat_chain(bridge: &str) -> String {
    format!("nat-{bridge}")
}

/// A published port's elements: the forward accept, the hairpin and the DNAT map's.
pub fn port_elements(p: &FwPort) -> Vec<Element> {
    let family = Family::of(&p.container_ip);
    if p.host_ip.is_some_and(|h| Family::of(&h) != family) {
        return vec![];
    }
    let (published, hairpin, by_addr, any) = match family {
        Family::V4 => (PUBLISHED4, HAIRPIN4, DNAT4_ADDR, DNAT4_ANY),
        Family::V6 => (PUBLISHED6, HAIRPIN6, DNAT6_ADDR, DNAT6_ANY),
    };
    let container = [addr(&p.container_ip), proto(p.proto), port(p.container_port)].concat();
    let target = Elem::Value([addr(&p.container_ip), port(p.container_port)].concat());
    let dnat = match p.host_ip {
        Some(h) => ((by_addr, [proto(p.proto), addr(&h), port(p.host_port)].concat()), target),
        None => ((any, [proto(p.proto), port(p.host_port)].concat()), target),
    };
    vec![
        ((published, container.clone()), Elem::Key),
        ((hairpin, [addr(&p.container_ip), container].concat()), Elem::Key),
        dnat,
    ]
}

/// Packets going out to the network's bridge.
fn to_rules(n: &FwNetwork) -> Vec<Rule> {
    let b = &n.bridge;
    // Within the network, enable_icc decides.
    let mut rules = vec![[iface_is(MetaKey::IifName, b), if n.icc { mark_accept() } else { drop() }].concat()];
    if n.internal {
        rules.push(drop());
        return rules;
    }
    // Published ports, reached through a host address (DNAT), from anywhere.
    for family in [Family::V4, Family::V6] {
        let (proto, set) = match family {
            Family::V4 => (NFPROTO_IPV4, PUBLISHED4),
            Family::V6 => (NFPROTO_IPV6, PUBLISHED6),
        };
        rules.push(
            [nfproto(proto), ct_dnat(), published_key(family), lookup(set, REG32_00, None), mark_accept()].concat(),
        );
    }
    for iface in &n.trusted_interfaces {
        rules.push([iface_is(MetaKey::IifName, iface), mark_accept()].concat());
    }
    rules.push([ct_reply(), ct_established(), mark_accept()].concat());
    // Nothing new from another container network, rustbridge's or Docker's.
    rules.push([iface_in(MetaKey::IifName, BRIDGES, None), drop()].concat());
    for pattern in docker_bridge_patterns() {
        rules.push([iface_is(MetaKey::IifName, &pattern), drop()].concat());
    }
    rules.push([ct_established(), mark_accept()].concat());
    // gateway_mode routed: other hosts may reach containers directly.
    if n.routed_v4 {
        rules.push([nfproto(NFPROTO_IPV4), mark_accept()].concat());
    }
    if n.routed_v6 {
        rules.push([nfproto(NFPROTO_IPV6), mark_accept()].concat());
    }
    rules.push(drop());
    rules
}

/// Packets from the network's bridge to anything but a rustbridge bridge (those go through `to_rules`).
fn from_rules(n: &FwNetwork) -> Vec<Rule> {
    if n.internal {
        return vec![drop()];
    }
    let mut rules: Vec<Rule> =
        docker_bridge_patterns().iter().map(|p| [iface_is(MetaKey::OifName, p), drop()].concat()).collect();
    rules.push(mark_accept());
    rules
}

/// Source NAT for what leaves the network (reached through NAT_FROM by input bridge).
fn nat_rules(n: &FwNetwork) -> Vec<Rule> {
    if n.internal || !n.masquerade {
        return vec![];
    }
    let mut rules = Vec::new();
    for subnet in &n.subnets {
        let family = Family::of_net(subnet);
        let (routed, snat, proto) = match family {
            Family::V4 => (n.routed_v4, n.snat_ipv4, NFPROTO_IPV4),
            Family::V6 => (n.routed_v6, n.snat_ipv6, NFPROTO_IPV6),
        };
        if routed {
            continue;
        }
        let action = match snat.filter(|ip| Family::of(ip) == family) {
            Some(ip) => vec![
                Expr::Immediate { dreg: REG32_00, data: addr(&ip) },
                Expr::Nat { kind: NatKind::Snat, family: proto, addr: REG32_00, port: None },
            ],
            None => masquerade(),
        };
        let not_back = vec![
            Expr::Meta { key: MetaKey::OifName, dreg: REG_1 },
            Expr::Cmp { sreg: REG_1, op: CmpOp::Neq, data: ifname(&n.bridge) },
        ];
        rules.push([nfproto(proto), addr_in(Dir::Src, subnet), not_back, action].concat());
    }
    rules
}

/// Published ports: by (protocol, host address, port), then by (protocol, port) for every address.
fn dnat_rules() -> Vec<Rule> {
    let l4 = |dreg| Expr::Meta { key: MetaKey::L4Proto, dreg };
    let dport = |dreg| Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg };
    let daddr = |family: Family, dreg| match family {
        Family::V4 => Expr::Payload { base: PayloadBase::Network, offset: 16, len: 4, dreg },
        Family::V6 => Expr::Payload { base: PayloadBase::Network, offset: 24, len: 16, dreg },
    };
    let mut rules = Vec::new();
    for (family, proto, by_addr, any, port_reg) in [
        (Family::V4, NFPROTO_IPV4, DNAT4_ADDR, DNAT4_ANY, REG32_00 + 1),
        (Family::V6, NFPROTO_IPV6, DNAT6_ADDR, DNAT6_ANY, REG32_00 + 4),
    ] {
        let words = if family == Family::V4 { 1 } else { 4 };
        let nat = Expr::Nat { kind: NatKind::Dnat, family: proto, addr: REG32_00, port: Some(port_reg) };
        rules.push(
            [
                nfproto(proto),
                vec![l4(REG32_00), daddr(family, REG32_00 + 1), dport(REG32_00 + 1 + words)],
                lookup(by_addr, REG32_00, Some(REG32_00)),
                vec![nat.clone()],
            ]
            .concat(),
        );
        rules.push(
            [nfproto(proto), vec![l4(REG32_00), dport(REG32_00 + 1)], lookup(any, REG32_00, Some(REG32_00)), vec![nat]]
                .concat(),
        );
    }
    rules
}

fn to_local_ports() -> Rule {
    vec![
        Expr::FibDaddrType { dreg: REG_1 },
        Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: ne32(RTN_LOCAL) },
        Expr::Verdict { code: NFT_JUMP, chain: Some("dnat-ports".into()) },
    ]
}

// ---- building blocks ----

fn ne32(v: u32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// An interface name as nf_tables compares it: IFNAMSIZ bytes, NUL padded.
pub fn ifname(name: &str) -> Vec<u8> {
    let mut out = name.as_bytes().to_vec();
    out.resize(IFNAMSIZ, 0);
    out
}

/// Concatenation fields take 4-byte register slots.
pub fn proto(p: Proto) -> Vec<u8> {
    let n = match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
        Proto::Sctp => 132,
    };
    vec![n, 0, 0, 0]
}

pub fn port(p: u16) -> Vec<u8> {
    let [hi, lo] = p.to_be_bytes();
    vec![hi, lo, 0, 0]
}

pub fn addr(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn nfproto(p: u8) -> Rule {
    vec![Expr::Meta { key: MetaKey::NfProto, dreg: REG_1 }, Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: vec![p] }]
}

/// `iifname`/`oifname` equal to a name, or starting with a prefix given as iptables' `prefix+`.
fn iface_is(key: MetaKey, pattern: &str) -> Rule {
    let data = match pattern.strip_suffix('+') {
        Some(prefix) => prefix.as_bytes().to_vec(),
        None => ifname(pattern),
    };
    vec![Expr::Meta { key, dreg: REG_1 }, Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data }]
}

fn iface_in(key: MetaKey, set: &str, dreg: Option<u32>) -> Rule {
    [vec![Expr::Meta { key, dreg: REG_1 }], lookup(set, REG_1, dreg)].concat()
}

fn lookup(set: &str, sreg: u32, dreg: Option<u32>) -> Rule {
    vec![Expr::Lookup { set: set.into(), sreg, dreg }]
}

fn ct_flag(key: CtKey, mask: u32) -> Rule {
    vec![
        Expr::Ct { key, dreg: REG_1 },
        Expr::Bitwise { sreg: REG_1, dreg: REG_1, mask: ne32(mask), xor: ne32(0) },
        Expr::Cmp { sreg: REG_1, op: CmpOp::Neq, data: ne32(0) },
    ]
}

fn ct_established() -> Rule {
    ct_flag(CtKey::State, CT_ESTABLISHED_RELATED)
}

fn ct_dnat() -> Rule {
    ct_flag(CtKey::Status, IPS_DST_NAT)
}

fn ct_reply() -> Rule {
    vec![
        Expr::Ct { key: CtKey::Direction, dreg: REG_1 },
        Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: vec![IP_CT_DIR_REPLY] },
    ]
}

#[derive(Clone, Copy)]
enum Dir {
    Src,
    Dst,
}

fn addr_field(family: Family, dir: Dir, dreg: u32) -> Expr {
    let (offset, len) = match (family, dir) {
        (Family::V4, Dir::Src) => (12, 4),
        (Family::V4, Dir::Dst) => (16, 4),
        (Family::V6, Dir::Src) => (8, 16),
        (Family::V6, Dir::Dst) => (24, 16),
    };
    Expr::Payload { base: PayloadBase::Network, offset, len, dreg }
}

/// The packet's source or destination address within `net` (the caller checks the family first).
fn addr_in(dir: Dir, net: &IpNet) -> Rule {
    let family = Family::of_net(net);
    let mask = addr(&net.netmask());
    vec![
        addr_field(family, dir, REG_1),
        Expr::Bitwise { sreg: REG_1, dreg: REG_1, xor: vec![0; mask.len()], mask },
        Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: addr(&net.network()) },
    ]
}

/// daddr . l4proto . dport, in 32-bit registers from REG32_00.
fn published_key(family: Family) -> Rule {
    let words = if family == Family::V4 { 1 } else { 4 };
    vec![
        addr_field(family, Dir::Dst, REG32_00),
        Expr::Meta { key: MetaKey::L4Proto, dreg: REG32_00 + words },
        Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: REG32_00 + words + 1 },
    ]
}

/// saddr . daddr . l4proto . dport.
fn hairpin_key(family: Family) -> Rule {
    let words = if family == Family::V4 { 1 } else { 4 };
    vec![
        addr_field(family, Dir::Src, REG32_00),
        addr_field(family, Dir::Dst, REG32_00 + words),
        Expr::Meta { key: MetaKey::L4Proto, dreg: REG32_00 + 2 * words },
        Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: REG32_00 + 2 * words + 1 },
    ]
}

fn load_mark() -> Rule {
    vec![Expr::Meta { key: MetaKey::Mark, dreg: REG_1 }]
}

/// Sets our mark bit (keeping the others) and ends this table's verdict; the
/// iptables rule in dockerd's filter FORWARD accepts on the mark.
fn mark_accept() -> Rule {
    [
        load_mark(),
        vec![
            Expr::Bitwise { sreg: REG_1, dreg: REG_1, mask: ne32(!ACCEPT_MARK), xor: ne32(ACCEPT_MARK) },
            Expr::MetaSet { key: MetaKey::Mark, sreg: REG_1 },
            Expr::Verdict { code: NF_ACCEPT, chain: None },
        ],
    ]
    .concat()
}

fn drop() -> Rule {
    vec![Expr::Verdict { code: NF_DROP, chain: None }]
}

fn masquerade() -> Rule {
    vec![Expr::Masquerade]
}

#[cfg(test)]
mod tests;
