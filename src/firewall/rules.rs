//! The static iptables part: one chain in dockerd's filter FORWARD that
//! accepts what rustbridge's nftables table marked (see
//! [`crate::firewall::nft::ruleset`]), rendered as iptables-restore text.
//!
//! dockerd leaves the FORWARD policy at DROP and only an ACCEPT in the
//! iptables filter table can let a packet past it; the rule does not depend
//! on networks or ports, so it is written when the first network of a family
//! appears, removed with the last, and checked by the periodic repair: never
//! per call. The chains of earlier versions (nat, raw, mangle) are retired:
//! removed wherever found.

use std::fmt::Write;

pub use crate::family::Family;

pub const FORWARD_CHAIN: &str = "RUSTBRIDGE-FORWARD";
/// Chains of earlier versions; removed at start-up, by the repair and by gc.
pub const RETIRED_POSTROUTING_CHAIN: &str = "RUSTBRIDGE-POSTROUTING";
pub const RETIRED_DNAT_CHAIN: &str = "RUSTBRIDGE-DNAT";
pub const RETIRED_RAW_CHAIN: &str = "RUSTBRIDGE-PREROUTING";
pub const RETIRED_ISOLATION_CHAIN: &str = "RUSTBRIDGE-ISOLATION";
pub const RETIRED_ISOLATION_STAGE2_CHAIN: &str = "RUSTBRIDGE-ISOLATION-2";

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
    /// False when the chains and their jumps must not exist.
    pub active: bool,
    pub chains: Vec<ChainPlan>,
}

fn jump(builtin: &'static str, matches: &str, chain: &str, positioned: bool) -> Jump {
    let spec = if matches.is_empty() { format!("-j {chain}") } else { format!("{matches} -j {chain}") };
    Jump { builtin, spec, positioned }
}

/// The accept rule, as iptables-save prints it.
pub fn forward_rules() -> Vec<String> {
    let mark = crate::firewall::nft::ruleset::ACCEPT_MARK;
    vec![format!("-m mark --mark {mark:#x}/{mark:#x} -j ACCEPT")]
}

/// Everything the plugin wants in iptables for one family: the accept chain
/// when `active` (some network of the family exists), and no retired chain.
pub fn plan(active: bool, family: Family) -> Vec<TablePlan> {
    let retired = |name, jumps| ChainPlan { name, rules: vec![], jumps };
    let mut tables = vec![
        TablePlan {
            table: "filter",
            active,
            chains: vec![ChainPlan {
                name: FORWARD_CHAIN,
                rules: forward_rules(),
                jumps: vec![jump("FORWARD", "", FORWARD_CHAIN, true)],
            }],
        },
        TablePlan {
            table: "nat",
            active: false,
            chains: vec![
                retired(RETIRED_POSTROUTING_CHAIN, vec![jump("POSTROUTING", "", RETIRED_POSTROUTING_CHAIN, false)]),
                retired(
                    RETIRED_DNAT_CHAIN,
                    vec![
                        jump("PREROUTING", "-m addrtype --dst-type LOCAL", RETIRED_DNAT_CHAIN, false),
                        jump("OUTPUT", "-m addrtype --dst-type LOCAL", RETIRED_DNAT_CHAIN, false),
                    ],
                ),
            ],
        },
    ];
    if family == Family::V4 {
        tables.push(TablePlan {
            table: "raw",
            active: false,
            chains: vec![retired(RETIRED_RAW_CHAIN, vec![jump("PREROUTING", "", RETIRED_RAW_CHAIN, false)])],
        });
    }
    tables.push(TablePlan {
        table: "mangle",
        active: false,
        chains: vec![
            retired(RETIRED_ISOLATION_CHAIN, vec![jump("FORWARD", "", RETIRED_ISOLATION_CHAIN, false)]),
            retired(RETIRED_ISOLATION_STAGE2_CHAIN, vec![]),
        ],
    });
    tables
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
