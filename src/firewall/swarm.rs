//! The one rule group of swarm networks, kept apart from the per-network
//! plans (`rules.rs`): on the node's INPUT path, the VXLAN port (UDP) and the
//! endpoint directory (TCP, same number) admit only the swarm members that
//! carry this node's swarm networks; anyone else's packets to them are dropped.
//! IPv4 only (the underlay of swarm networks). Pure: what to write, given
//! what `iptables-save` shows.

use std::net::IpAddr;

/// The plugin's own chain in the filter table, jumped to first from INPUT.
pub const SWARM_CHAIN: &str = "RUSTBRIDGE-SWARM";

/// The chain's rules for `members` (empty: only the drops).
pub fn rules(port: u16, members: &[IpAddr]) -> Vec<String> {
    let mut out = Vec::new();
    for member in members.iter().filter(|m| m.is_ipv4()) {
        for proto in ["udp", "tcp"] {
            out.push(format!("-A {SWARM_CHAIN} -s {member}/32 -p {proto} -m {proto} --dport {port} -j ACCEPT"));
        }
    }
    for proto in ["udp", "tcp"] {
        out.push(format!("-A {SWARM_CHAIN} -p {proto} -m {proto} --dport {port} -j DROP"));
    }
    out
}

/// A `*-restore --noflush` batch (filter table) that makes the group hold
/// `members` (`Some`), or removes it (`None`). `chain_exists` and `jumps`
/// (INPUT's jumps to the chain) describe what the kernel holds now.
pub fn render(port: u16, members: Option<&[IpAddr]>, chain_exists: bool, jumps: usize) -> String {
    let jump = format!("INPUT -j {SWARM_CHAIN}");
    let mut batch = vec!["*filter".to_string()];
    match members {
        Some(members) => {
            if !chain_exists {
                batch.push(format!(":{SWARM_CHAIN} - [0:0]"));
            }
            batch.push(format!("-F {SWARM_CHAIN}"));
            batch.extend(rules(port, members));
            // Exactly one jump, first in INPUT.
            batch.extend((0..jumps).map(|_| format!("-D {jump}")));
            batch.push(format!("-I {jump}"));
        }
        None => {
            batch.extend((0..jumps).map(|_| format!("-D {jump}")));
            if chain_exists {
                batch.push(format!("-F {SWARM_CHAIN}"));
                batch.push(format!("-X {SWARM_CHAIN}"));
            }
        }
    }
    batch.push("COMMIT".to_string());
    batch.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn members_are_admitted_on_both_protocols_and_everyone_else_dropped() {
        let batch = render(4799, Some(&[ip("10.99.0.11"), ip("10.99.0.13")]), false, 0);
        assert_eq!(
            batch,
            "*filter\n:RUSTBRIDGE-SWARM - [0:0]\n-F RUSTBRIDGE-SWARM\n\
             -A RUSTBRIDGE-SWARM -s 10.99.0.11/32 -p udp -m udp --dport 4799 -j ACCEPT\n\
             -A RUSTBRIDGE-SWARM -s 10.99.0.11/32 -p tcp -m tcp --dport 4799 -j ACCEPT\n\
             -A RUSTBRIDGE-SWARM -s 10.99.0.13/32 -p udp -m udp --dport 4799 -j ACCEPT\n\
             -A RUSTBRIDGE-SWARM -s 10.99.0.13/32 -p tcp -m tcp --dport 4799 -j ACCEPT\n\
             -A RUSTBRIDGE-SWARM -p udp -m udp --dport 4799 -j DROP\n\
             -A RUSTBRIDGE-SWARM -p tcp -m tcp --dport 4799 -j DROP\n\
             -I INPUT -j RUSTBRIDGE-SWARM\nCOMMIT\n"
        );
    }

    #[test]
    fn an_existing_group_is_rewritten_with_one_jump_and_removed_without_a_trace() {
        let batch = render(4799, Some(&[]), true, 2);
        assert!(!batch.contains(":RUSTBRIDGE-SWARM"), "{batch}");
        assert_eq!(batch.matches("-D INPUT -j RUSTBRIDGE-SWARM").count(), 2);
        assert_eq!(batch.matches("-I INPUT -j RUSTBRIDGE-SWARM").count(), 1);
        assert!(!batch.contains("ACCEPT"), "no member, no accept: {batch}");
        let gone = render(4799, None, true, 1);
        assert_eq!(gone, "*filter\n-D INPUT -j RUSTBRIDGE-SWARM\n-F RUSTBRIDGE-SWARM\n-X RUSTBRIDGE-SWARM\nCOMMIT\n");
        assert_eq!(render(4799, None, false, 0), "*filter\nCOMMIT\n");
    }

    #[test]
    fn ipv6_members_are_left_to_the_ipv4_underlay() {
        assert_eq!(rules(4799, &[ip("fd00::1")]).len(), 2);
    }
}
