//! Pure rule generation: networks in, iptables-restore text out.
//!
//! Rules live only in the plugin's own chains; the built-in chains get one
//! jump each. Per network the rule count is constant, whatever the number of
//! networks.

use std::fmt::Write;

use super::FwNetwork;

pub const FORWARD_CHAIN: &str = "RUSTBRIDGE-FORWARD";
pub const POSTROUTING_CHAIN: &str = "RUSTBRIDGE-POSTROUTING";

/// Docker's own bridges: `docker0` and `br-<12 hex>` for user networks. Traffic
/// from a rustbridge network to them is refused, as between Docker's bridges.
const DOCKER_BRIDGE_PATTERNS: &[&str] = &["docker0", "br-+"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn matches(self, net: &ipnet::IpNet) -> bool {
        matches!((self, net), (Family::V4, ipnet::IpNet::V4(_)) | (Family::V6, ipnet::IpNet::V6(_)))
    }
}

/// The rules of the plugin's filter FORWARD chain, in order, without the `-A CHAIN` prefix.
pub fn forward_rules(networks: &[FwNetwork], family: Family) -> Vec<String> {
    let nets: Vec<&FwNetwork> = networks.iter().filter(|n| has_family(n, family)).collect();
    let mut rules = Vec::new();
    for n in &nets {
        let verdict = if n.icc { "ACCEPT" } else { "DROP" };
        rules.push(format!("-i {b} -o {b} -j {verdict}", b = n.bridge));
    }
    for n in &nets {
        rules.push(format!("-o {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", n.bridge));
    }
    // Nothing new enters a network from elsewhere (other networks, Docker's
    // bridges, other hosts routing to container addresses).
    for n in &nets {
        rules.push(format!("-o {} -j DROP", n.bridge));
    }
    for n in &nets {
        if n.internal {
            rules.push(format!("-i {} -j DROP", n.bridge));
            continue;
        }
        for pattern in DOCKER_BRIDGE_PATTERNS {
            rules.push(format!("-i {} -o {pattern} -j DROP", n.bridge));
        }
        rules.push(format!("-i {} -j ACCEPT", n.bridge));
    }
    rules
}

/// The rules of the plugin's nat POSTROUTING chain.
pub fn postrouting_rules(networks: &[FwNetwork], family: Family) -> Vec<String> {
    let mut rules = Vec::new();
    for n in networks.iter().filter(|n| !n.internal && n.masquerade) {
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

fn has_family(n: &FwNetwork, family: Family) -> bool {
    n.subnets.iter().any(|s| family.matches(s))
}

/// Where the plugin's jump belongs in a built-in chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpPlan {
    pub table: &'static str,
    pub builtin: &'static str,
    pub chain: &'static str,
    /// How many jumps to our chain are there now (all get deleted and one re-inserted).
    pub existing_jumps: usize,
    /// 1-based position to insert at, computed after the deletions.
    pub insert_at: usize,
}

/// Renders one iptables-restore --noflush batch for a table: declare (and so
/// flush) our chain, fill it, and put exactly one jump at the right place.
/// With no rules, the chain and its jumps are removed instead.
pub fn render_table(plan: &JumpPlan, rules: &[String], chain_exists: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "*{}", plan.table);
    if rules.is_empty() {
        for _ in 0..plan.existing_jumps {
            let _ = writeln!(out, "-D {} -j {}", plan.builtin, plan.chain);
        }
        if chain_exists {
            let _ = writeln!(out, "-F {}", plan.chain);
            let _ = writeln!(out, "-X {}", plan.chain);
        }
    } else {
        let _ = writeln!(out, ":{} - [0:0]", plan.chain);
        for rule in rules {
            let _ = writeln!(out, "-A {} {rule}", plan.chain);
        }
        for _ in 0..plan.existing_jumps {
            let _ = writeln!(out, "-D {} -j {}", plan.builtin, plan.chain);
        }
        let _ = writeln!(out, "-I {} {} -j {}", plan.builtin, plan.insert_at, plan.chain);
    }
    let _ = writeln!(out, "COMMIT");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, subnet: &str) -> FwNetwork {
        FwNetwork {
            bridge: bridge.into(),
            subnets: vec![subnet.parse().unwrap()],
            internal: false,
            icc: true,
            masquerade: true,
            snat_ipv4: None,
            snat_ipv6: None,
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
    fn families_are_separate() {
        let nets = [net("rb-a", "10.1.0.0/24"), net("rb-6", "fd00:1::/64")];
        assert!(forward_rules(&nets, Family::V6).iter().all(|r| !r.contains("rb-a")));
        assert_eq!(postrouting_rules(&nets, Family::V6), vec!["-s fd00:1::/64 ! -o rb-6 -j MASQUERADE"]);
    }

    #[test]
    fn postrouting_masquerade_snat_and_none() {
        let mut snat = net("rb-s", "10.5.0.0/24");
        snat.snat_ipv4 = Some("192.0.2.7".parse().unwrap());
        let mut off = net("rb-o", "10.6.0.0/24");
        off.masquerade = false;
        let mut internal = net("rb-i", "10.7.0.0/24");
        internal.internal = true;
        let rules = postrouting_rules(&[net("rb-a", "10.1.0.0/24"), snat, off, internal], Family::V4);
        assert_eq!(
            rules,
            vec![
                "-s 10.1.0.0/24 ! -o rb-a -j MASQUERADE",
                "-s 10.5.0.0/24 ! -o rb-s -j SNAT --to-source 192.0.2.7",
            ]
        );
    }

    #[test]
    fn render_fills_chain_and_moves_jump() {
        let plan = JumpPlan { table: "filter", builtin: "FORWARD", chain: FORWARD_CHAIN, existing_jumps: 2, insert_at: 2 };
        let text = render_table(&plan, &["-i x -o x -j ACCEPT".to_string()], true);
        assert_eq!(
            text,
            "*filter\n:RUSTBRIDGE-FORWARD - [0:0]\n-A RUSTBRIDGE-FORWARD -i x -o x -j ACCEPT\n\
             -D FORWARD -j RUSTBRIDGE-FORWARD\n-D FORWARD -j RUSTBRIDGE-FORWARD\n\
             -I FORWARD 2 -j RUSTBRIDGE-FORWARD\nCOMMIT\n"
        );
    }

    #[test]
    fn render_with_no_rules_removes_everything() {
        let plan = JumpPlan { table: "nat", builtin: "POSTROUTING", chain: POSTROUTING_CHAIN, existing_jumps: 1, insert_at: 1 };
        assert_eq!(
            render_table(&plan, &[], true),
            "*nat\n-D POSTROUTING -j RUSTBRIDGE-POSTROUTING\n-F RUSTBRIDGE-POSTROUTING\n-X RUSTBRIDGE-POSTROUTING\nCOMMIT\n"
        );
        let nothing = JumpPlan { existing_jumps: 0, ..plan };
        assert_eq!(render_table(&nothing, &[], false), "*nat\nCOMMIT\n");
    }
}
