//! Pure rule generation: networks in, per-table plans out, rendered as
//! iptables-restore text.
//!
//! Rules live only in the plugin's own chains; the built-in chains get one
//! jump each. Per network the rule count is constant whatever the number of
//! networks, and per published port it is constant whatever the number of ports.

use std::fmt::Write;
use std::net::IpAddr;

use super::{FwNetwork, FwPort};
pub use crate::family::Family;
use crate::names::docker_bridge_patterns;

pub const FORWARD_CHAIN: &str = "RUSTBRIDGE-FORWARD";
pub const POSTROUTING_CHAIN: &str = "RUSTBRIDGE-POSTROUTING";
pub const DNAT_CHAIN: &str = "RUSTBRIDGE-DNAT";
pub const RAW_CHAIN: &str = "RUSTBRIDGE-PREROUTING";
/// mangle FORWARD: isolation that holds whatever order filter FORWARD is in.
pub const ISOLATION_CHAIN: &str = "RUSTBRIDGE-ISOLATION";
/// Second stage: where a packet leaving a container bridge for another bridge may not go.
pub const ISOLATION_STAGE2_CHAIN: &str = "RUSTBRIDGE-ISOLATION-2";

/// A jump from a built-in chain into one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    pub builtin: &'static str,
    /// The rule as iptables-save prints it, without `-A BUILTIN`.
    pub spec: String,
    /// Whether the jump must sit at a precise place (FORWARD: right after DOCKER-USER).
    pub positioned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPlan {
    pub name: &'static str,
    pub rules: Vec<String>,
    pub jumps: Vec<Jump>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    pub table: &'static str,
    /// False when no network of this family exists: chains and jumps are removed.
    pub active: bool,
    pub chains: Vec<ChainPlan>,
}

fn jump(builtin: &'static str, matches: &str, chain: &str, positioned: bool) -> Jump {
    let spec = if matches.is_empty() { format!("-j {chain}") } else { format!("{matches} -j {chain}") };
    Jump { builtin, spec, positioned }
}

/// Everything the plugin wants in the kernel for one address family.
pub fn plan(networks: &[FwNetwork], family: Family) -> Vec<TablePlan> {
    let active = networks.iter().any(|n| has_family(n, family));
    let mut tables = vec![
        TablePlan {
            table: "filter",
            active,
            chains: vec![ChainPlan {
                name: FORWARD_CHAIN,
                rules: forward_rules(networks, family),
                jumps: vec![jump("FORWARD", "", FORWARD_CHAIN, true)],
            }],
        },
        TablePlan {
            table: "nat",
            active,
            chains: vec![
                ChainPlan {
                    name: POSTROUTING_CHAIN,
                    rules: postrouting_rules(networks, family),
                    jumps: vec![jump("POSTROUTING", "", POSTROUTING_CHAIN, false)],
                },
                ChainPlan {
                    name: DNAT_CHAIN,
                    rules: dnat_rules(networks, family),
                    jumps: vec![
                        jump("PREROUTING", "-m addrtype --dst-type LOCAL", DNAT_CHAIN, false),
                        jump("OUTPUT", "-m addrtype --dst-type LOCAL", DNAT_CHAIN, false),
                    ],
                },
            ],
        },
    ];
    if family == Family::V4 {
        tables.push(TablePlan {
            table: "raw",
            active,
            chains: vec![ChainPlan {
                name: RAW_CHAIN,
                rules: raw_rules(networks),
                jumps: vec![jump("PREROUTING", "", RAW_CHAIN, false)],
            }],
        });
    }
    tables.push(TablePlan {
        table: "mangle",
        active,
        chains: vec![
            ChainPlan {
                name: ISOLATION_CHAIN,
                rules: isolation_rules(networks, family),
                jumps: vec![jump("FORWARD", "", ISOLATION_CHAIN, false)],
            },
            ChainPlan { name: ISOLATION_STAGE2_CHAIN, rules: isolation_stage2_rules(networks, family), jumps: vec![] },
        ],
    });
    tables
}

fn networks_of(networks: &[FwNetwork], family: Family) -> Vec<&FwNetwork> {
    networks.iter().filter(|n| has_family(n, family)).collect()
}

fn ports_of(n: &FwNetwork, family: Family) -> impl Iterator<Item = &FwPort> {
    n.ports.iter().filter(move |p| Family::of(&p.container_ip) == family)
}

/// The rules of the plugin's filter FORWARD chain, in order, without the `-A CHAIN` prefix.
pub fn forward_rules(networks: &[FwNetwork], family: Family) -> Vec<String> {
    let nets = networks_of(networks, family);
    let mut rules = Vec::new();
    // Published ports are reachable from anywhere but the network itself
    // (there, enable_icc decides, as with Docker), and only through the DNAT:
    // another host routing to the container's own address gets nothing.
    for n in &nets {
        for p in ports_of(n, family) {
            rules.push(format!(
                "-d {}/{} ! -i {b} -o {b} -p {proto} -m conntrack --ctstate DNAT -m {proto} --dport {} -j ACCEPT",
                p.container_ip,
                family.host_prefix(),
                p.container_port,
                b = n.bridge,
                proto = p.proto
            ));
        }
    }
    for n in &nets {
        let verdict = if n.icc { "ACCEPT" } else { "DROP" };
        rules.push(format!("-i {b} -o {b} -j {verdict}", b = n.bridge));
    }
    for n in &nets {
        rules.push(format!("-o {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", n.bridge));
    }
    // Nothing new enters a network from elsewhere (other networks, Docker's
    // bridges, other hosts routing to container addresses), unless its
    // gateway mode is routed.
    for n in &nets {
        if n.routed(family) && !n.internal {
            // Routed: other hosts may reach containers directly, but other
            // container networks still may not.
            for other in nets.iter().filter(|o| o.bridge != n.bridge) {
                rules.push(format!("-i {} -o {} -j DROP", other.bridge, n.bridge));
            }
            for pattern in docker_bridge_patterns() {
                rules.push(format!("-i {pattern} -o {} -j DROP", n.bridge));
            }
            rules.push(format!("-o {} -j ACCEPT", n.bridge));
            continue;
        }
        if !n.internal {
            for iface in &n.trusted_interfaces {
                rules.push(format!("-i {iface} -o {} -j ACCEPT", n.bridge));
            }
        }
        rules.push(format!("-o {} -j DROP", n.bridge));
    }
    for n in &nets {
        if n.internal {
            rules.push(format!("-i {} -j DROP", n.bridge));
            continue;
        }
        for pattern in docker_bridge_patterns() {
            rules.push(format!("-i {} -o {pattern} -j DROP", n.bridge));
        }
        rules.push(format!("-i {} -j ACCEPT", n.bridge));
    }
    rules
}

/// Isolation in mangle FORWARD, the first stage. dockerd rewrites filter
/// FORWARD at every start (its own accepts for docker0 and its br- bridges
/// land above rustbridge's jump until the next repair), and again after a
/// firewalld reload; it never touches mangle, which runs before filter, and a
/// DROP there is final. So the isolation between container bridges holds
/// continuously here, and the filter chain keeps the rest (published ports,
/// icc, outbound) and is repaired periodically.
///
/// Replies and DNATed connections (published ports, reached through a host
/// address) are left to the filter chain. Linear in the number of networks:
/// a packet leaving a container bridge for another bridge goes through the
/// second stage, which drops it if the other bridge is rustbridge's.
pub fn isolation_rules(networks: &[FwNetwork], family: Family) -> Vec<String> {
    let nets = networks_of(networks, family);
    let mut rules =
        vec!["-m conntrack --ctdir REPLY -j RETURN".to_string(), "-m conntrack --ctstate DNAT -j RETURN".to_string()];
    for n in &nets {
        // Within a network, enable_icc (in filter) decides.
        rules.push(format!("-i {b} -o {b} -j RETURN", b = n.bridge));
    }
    for n in nets.iter().filter(|n| n.internal) {
        rules.push(format!("-i {b} ! -o {b} -j DROP", b = n.bridge));
        rules.push(format!("! -i {b} -o {b} -j DROP", b = n.bridge));
    }
    for n in nets.iter().filter(|n| !n.internal) {
        for iface in &n.trusted_interfaces {
            rules.push(format!("-i {iface} -o {} -j RETURN", n.bridge));
        }
    }
    for n in nets.iter().filter(|n| !n.internal) {
        for pattern in docker_bridge_patterns() {
            rules.push(format!("-i {} -o {pattern} -j DROP", n.bridge));
        }
    }
    for n in &nets {
        rules.push(format!("-i {b} ! -o {b} -j {ISOLATION_STAGE2_CHAIN}", b = n.bridge));
    }
    for pattern in docker_bridge_patterns() {
        rules.push(format!("-i {pattern} -j {ISOLATION_STAGE2_CHAIN}"));
    }
    rules
}

/// The second isolation stage: nothing from another container bridge enters a rustbridge network.
pub fn isolation_stage2_rules(networks: &[FwNetwork], family: Family) -> Vec<String> {
    networks_of(networks, family).iter().map(|n| format!("-o {} -j DROP", n.bridge)).collect()
}

/// The rules of the plugin's nat POSTROUTING chain.
pub fn postrouting_rules(networks: &[FwNetwork], family: Family) -> Vec<String> {
    let mut rules = Vec::new();
    for n in networks_of(networks, family) {
        // Hairpin: a container reaching its own published port through a host address.
        for p in ports_of(n, family) {
            rules.push(format!(
                "-s {ip}/{len} -d {ip}/{len} -p {proto} -m {proto} --dport {port} -j MASQUERADE",
                ip = p.container_ip,
                len = family.host_prefix(),
                proto = p.proto,
                port = p.container_port
            ));
        }
        // Published ports reached from the host's 127.0.0.1 (route_localnet is on for our bridges).
        if family == Family::V4 && n.ports.iter().any(|p| p.container_ip.is_ipv4()) {
            rules.push(format!("-s 127.0.0.0/8 -o {} -j MASQUERADE", n.bridge));
        }
        if n.internal || !n.masquerade || n.routed(family) {
            continue;
        }
        let snat = match family {
            Family::V4 => n.snat_ipv4,
            Family::V6 => n.snat_ipv6,
        };
        for subnet in n.subnets.iter().filter(|s| family.matches(s)) {
            let target = match snat {
                Some(ip) => format!("SNAT --to-source {ip}"),
                None => "MASQUERADE".to_string(),
            };
            rules.push(format!("-s {subnet} ! -o {} -j {target}", n.bridge));
        }
    }
    rules
}

/// The plugin's nat DNAT chain: one rule per published port.
pub fn dnat_rules(networks: &[FwNetwork], family: Family) -> Vec<String> {
    let mut rules = Vec::new();
    for n in networks_of(networks, family) {
        for p in ports_of(n, family) {
            let dest = match p.host_ip {
                Some(ip) => format!("-d {ip}/{} ", family.host_prefix()),
                None => String::new(),
            };
            let to = match p.container_ip {
                IpAddr::V4(ip) => format!("{ip}:{}", p.container_port),
                IpAddr::V6(ip) => format!("[{ip}]:{}", p.container_port),
            };
            rules.push(format!(
                "{dest}-p {proto} -m {proto} --dport {} -j DNAT --to-destination {to}",
                p.host_port,
                proto = p.proto
            ));
        }
    }
    rules
}

/// route_localnet is on for our bridges so 127.0.0.1 can reach published
/// ports; so nothing from a bridge may reach the host's 127.0.0.0/8
/// (the CVE-2020-8558 pattern).
pub fn raw_rules(networks: &[FwNetwork]) -> Vec<String> {
    debug_assert!(networks_of(networks, Family::V4).iter().all(|n| drops_localnet(&n.subnets)));
    networks_of(networks, Family::V4).iter().map(|n| format!("-i {} -d 127.0.0.0/8 -j DROP", n.bridge)).collect()
}

/// Whether the raw table drops 127.0.0.0/8 arriving from a network with these
/// subnets (it does for every network with IPv4): route_localnet may be on
/// for its bridge only then.
pub fn drops_localnet(subnets: &[ipnet::IpNet]) -> bool {
    subnets.iter().any(|s| Family::V4.matches(s))
}

impl FwNetwork {
    fn routed(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.routed_v4,
            Family::V6 => self.routed_v6,
        }
    }
}

fn has_family(n: &FwNetwork, family: Family) -> bool {
    n.subnets.iter().any(|s| family.matches(s))
}

/// What is in a table now, as far as rendering needs to know.
pub trait Current {
    fn chain_exists(&self, table: &str, chain: &str) -> bool;
    /// The built-in chain's rules (as `-A BUILTIN …` lines), in order.
    fn builtin_rules(&self, table: &str, builtin: &str) -> Vec<String>;
}

/// Where a positioned jump goes: right after DOCKER-USER (which stays the
/// user's, first) and before every other dockerd rule, so that Docker's own
/// accepts for its bridges cannot bypass rustbridge's isolation.
pub fn jump_position(jump: &Jump, others: &[String]) -> usize {
    if jump.positioned
        && let Some(i) = others.iter().position(|l| l == "-A FORWARD -j DOCKER-USER")
    {
        return i + 2;
    }
    1
}

/// One iptables-restore --noflush batch for a table: declare (and so flush)
/// our chains, fill them, and put exactly one of each jump in place; or, for
/// an inactive table, remove jumps and chains.
pub fn render(plan: &TablePlan, current: &dyn Current) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "*{}", plan.table);
    if plan.active {
        // Every chain declared before any rule: one chain may jump to another.
        for chain in &plan.chains {
            let _ = writeln!(out, ":{} - [0:0]", chain.name);
        }
        for chain in &plan.chains {
            for rule in &chain.rules {
                let _ = writeln!(out, "-A {} {rule}", chain.name);
            }
        }
    }
    for chain in &plan.chains {
        for jump in &chain.jumps {
            let line = format!("-A {} {}", jump.builtin, jump.spec);
            let rules = current.builtin_rules(plan.table, jump.builtin);
            let existing = rules.iter().filter(|l| **l == line).count();
            for _ in 0..existing {
                let _ = writeln!(out, "-D {} {}", jump.builtin, jump.spec);
            }
            if plan.active {
                let others: Vec<String> = rules.into_iter().filter(|l| *l != line).collect();
                let _ = writeln!(out, "-I {} {} {}", jump.builtin, jump_position(jump, &others), jump.spec);
            }
        }
    }
    if !plan.active {
        // All flushed before any is deleted: a chain referenced by another cannot go first.
        let present: Vec<&ChainPlan> =
            plan.chains.iter().filter(|c| current.chain_exists(plan.table, c.name)).collect();
        for chain in &present {
            let _ = writeln!(out, "-F {}", chain.name);
        }
        for chain in &present {
            let _ = writeln!(out, "-X {}", chain.name);
        }
    }
    let _ = writeln!(out, "COMMIT");
    out
}

/// True when the table holds what `render` would write: the same number of
/// rules in each chain and exactly one of each jump (positioned ones in place).
pub fn holds(plan: &TablePlan, current: &dyn Current, rule_count: &dyn Fn(&str, &str) -> usize) -> bool {
    for chain in &plan.chains {
        let exists = current.chain_exists(plan.table, chain.name);
        if !plan.active {
            if exists {
                return false;
            }
        } else if !exists || rule_count(plan.table, chain.name) != chain.rules.len() {
            return false;
        }
        for jump in &chain.jumps {
            let line = format!("-A {} {}", jump.builtin, jump.spec);
            let rules = current.builtin_rules(plan.table, jump.builtin);
            let positions: Vec<usize> =
                rules.iter().enumerate().filter(|(_, l)| **l == line).map(|(i, _)| i + 1).collect();
            let ok = match (plan.active, jump.positioned) {
                (false, _) => positions.is_empty(),
                (true, false) => positions.len() == 1,
                (true, true) => {
                    let others: Vec<String> = rules.iter().filter(|l| **l != line).cloned().collect();
                    positions == [jump_position(jump, &others)]
                }
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests;
