//! Every kernel object name the plugin derives or recognises, in one place:
//! its own bridges and veth pairs (named after dockerd's IDs, so a leftover
//! is recognisable after a crash), and Docker's own bridges it must leave alone.
//!
//! The e2e scripts derive the same names in shell (`tests/e2e/lib.sh`); the
//! test below keeps the two in step.

/// Prefix of bridges named after the network ID; anything else is only adopted.
pub const BRIDGE_PREFIX: &str = "rb-";
/// Host end of an endpoint's veth pair.
pub const HOST_VETH_PREFIX: &str = "rbh-";
/// Peer end, moved into the container (and renamed) by dockerd.
pub const PEER_VETH_PREFIX: &str = "rbc-";
/// A swarm network's VXLAN device, a port of its bridge.
pub const VXLAN_PREFIX: &str = "rbx-";
/// How much of the network ID a VXLAN device name carries (IFNAMSIZ leaves 11 after `rbx-`).
pub const ID_CHARS_IN_VXLAN: usize = 11;
/// How much of the network ID a bridge name carries.
pub const ID_CHARS_IN_BRIDGE: usize = 12;
/// How much of the endpoint ID a veth name carries (IFNAMSIZ leaves 11 after `rbh-`).
pub const ID_CHARS_IN_VETH: usize = 11;
/// How much of an ID messages show (as `docker` does).
pub const SHORT_ID_LEN: usize = 12;

/// The built-in bridge driver's default bridge.
pub const DOCKER_DEFAULT_BRIDGE: &str = "docker0";
/// The bridge dockerd attaches containers of gateway-less networks to.
pub const DOCKER_GWBRIDGE: &str = "docker_gwbridge";
/// Bridges of user-defined networks of the built-in driver: `br-<12 hex>`.
pub const DOCKER_USER_BRIDGE_PREFIX: &str = "br-";

/// The bridge of a network that names none: `rb-<12 characters of the network
/// ID>` (hex, or a swarm network's base 36). The ID must have been validated
/// (`driver::validate_id`).
pub fn bridge_name(network_id: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", &network_id[..ID_CHARS_IN_BRIDGE])
}

/// The VXLAN device of a swarm network: `rbx-<11 characters of the network ID>`.
pub fn vxlan_name(network_id: &str) -> String {
    format!("{VXLAN_PREFIX}{}", &network_id[..ID_CHARS_IN_VXLAN])
}

/// The endpoint's veth pair: (host end, peer end).
pub fn veth_names(endpoint_id: &str) -> (String, String) {
    let short = &endpoint_id[..ID_CHARS_IN_VETH];
    (format!("{HOST_VETH_PREFIX}{short}"), format!("{PEER_VETH_PREFIX}{short}"))
}

/// The start of an ID, for messages; shorter IDs are shown whole. Counts
/// characters, not bytes: any text is safe (a non-ASCII ID once panicked here).
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(SHORT_ID_LEN) {
        Some((end, _)) => &id[..end],
        None => id,
    }
}

fn is_hex_of_len(text: &str, len: usize) -> bool {
    text.len() == len && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// The start of an ID a name is derived from: dockerd's hex, or swarmkit's
/// base 36 (lowercase letters and digits; `api::is_swarm_id`).
fn is_id_start_of_len(text: &str, len: usize) -> bool {
    is_hex_of_len(text, len)
        || (text.len() == len && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
}

/// A bridge name the plugin would have derived itself, from a local network's
/// ID or a swarm network's (so it may delete it when no state knows it).
pub fn is_owned_bridge_name(name: &str) -> bool {
    name.strip_prefix(BRIDGE_PREFIX).is_some_and(|rest| is_id_start_of_len(rest, ID_CHARS_IN_BRIDGE))
}

/// A bridge name derived from a local network's (hex) ID: recognised by its
/// name alone, as before swarm networks. One derived from a swarm ID could be
/// a name a user chose (`rb-mybridge001`), so `gc` also wants the owner mark.
pub fn is_hex_derived_bridge_name(name: &str) -> bool {
    name.strip_prefix(BRIDGE_PREFIX).is_some_and(|rest| is_hex_of_len(rest, ID_CHARS_IN_BRIDGE))
}

/// A VXLAN device name the plugin would have derived itself (swarm networks).
pub fn is_owned_vxlan_name(name: &str) -> bool {
    name.strip_prefix(VXLAN_PREFIX).is_some_and(|rest| is_id_start_of_len(rest, ID_CHARS_IN_VXLAN))
}

/// A veth name (either end) the plugin would have derived itself.
pub fn is_owned_veth_name(name: &str) -> bool {
    [HOST_VETH_PREFIX, PEER_VETH_PREFIX]
        .iter()
        .any(|prefix| name.strip_prefix(prefix).is_some_and(|rest| is_hex_of_len(rest, ID_CHARS_IN_VETH)))
}

/// A device name with one of the plugin's prefixes (a test's check for leftovers).
pub fn has_plugin_prefix(name: &str) -> bool {
    [BRIDGE_PREFIX, HOST_VETH_PREFIX, PEER_VETH_PREFIX, VXLAN_PREFIX].iter().any(|p| name.starts_with(p))
}

/// Names of the built-in bridge driver's devices; adopting one would break Docker's own network.
pub fn is_docker_bridge_name(name: &str) -> bool {
    name == DOCKER_DEFAULT_BRIDGE
        || name == DOCKER_GWBRIDGE
        || name.strip_prefix(DOCKER_USER_BRIDGE_PREFIX).is_some_and(|rest| is_hex_of_len(rest, 12))
}

/// Docker's bridges that carry container traffic, as iptables interface
/// patterns (`+` is iptables' wildcard): traffic between them and the
/// plugin's networks is refused, as between Docker's own bridges.
pub fn docker_bridge_patterns() -> [String; 2] {
    [DOCKER_DEFAULT_BRIDGE.to_string(), format!("{DOCKER_USER_BRIDGE_PREFIX}+")]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETWORK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ENDPOINT: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    #[test]
    fn derived_names_are_recognised_as_owned_and_fit_ifnamsiz() {
        let bridge = bridge_name(NETWORK);
        assert_eq!(bridge, "rb-0123456789ab");
        assert!(is_owned_bridge_name(&bridge));
        let (host, peer) = veth_names(ENDPOINT);
        assert_eq!((host.as_str(), peer.as_str()), ("rbh-fedcba98765", "rbc-fedcba98765"));
        for name in [&bridge, &host, &peer] {
            assert!(name.len() <= crate::options::MAX_IFNAME_LEN, "{name}");
            assert!(has_plugin_prefix(name), "{name}");
        }
        assert!(is_owned_veth_name(&host) && is_owned_veth_name(&peer));
        assert!(!is_owned_veth_name(&bridge) && !is_owned_bridge_name(&host));
    }

    #[test]
    fn names_the_user_chose_are_not_owned() {
        for name in [
            "rb-0123456789a",
            "rb-0123456789abc",
            "rb-0123456789aG",
            "rb-0123-56789a",
            "br0",
            "rbh-0123",
            "xrb-0123456789ab",
        ] {
            assert!(!is_owned_bridge_name(name) && !is_owned_veth_name(name), "{name}");
        }
        for name in ["rbx-0123456789", "rbx-0123456789ab", "rbx-012345678_a", "rb-0123456789ab"] {
            assert!(!is_owned_vxlan_name(name), "{name}");
        }
    }

    /// Swarm network IDs are base 36, not hex: their bridge and VXLAN device
    /// were once not recognised, so their leftovers survived `gc` and the reconciler.
    #[test]
    fn names_derived_from_a_swarm_network_id_are_owned() {
        let swarm = "lt58xre1i7zb1r4vvuwia72mv";
        assert!(crate::api::is_swarm_id(swarm));
        let (bridge, vxlan) = (bridge_name(swarm), vxlan_name(swarm));
        assert_eq!((bridge.as_str(), vxlan.as_str()), ("rb-lt58xre1i7zb", "rbx-lt58xre1i7z"));
        assert!(is_owned_bridge_name(&bridge) && !is_hex_derived_bridge_name(&bridge));
        assert!(is_owned_vxlan_name(&vxlan) && !is_owned_bridge_name(&vxlan));
        assert!(is_owned_vxlan_name(&vxlan_name(NETWORK)) && is_hex_derived_bridge_name(&bridge_name(NETWORK)));
        for name in [&bridge, &vxlan] {
            assert!(name.len() <= crate::options::MAX_IFNAME_LEN && has_plugin_prefix(name), "{name}");
        }
    }

    #[test]
    fn docker_bridges_are_recognised() {
        for name in ["docker0", "docker_gwbridge", "br-0123456789ab"] {
            assert!(is_docker_bridge_name(name), "{name}");
        }
        for name in ["br-test0", "br0", "rb-0123456789ab", "docker1"] {
            assert!(!is_docker_bridge_name(name), "{name}");
        }
        assert_eq!(docker_bridge_patterns(), ["docker0", "br-+"]);
    }

    #[test]
    fn short_ids() {
        assert_eq!(short_id(NETWORK), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        // Whole characters: a non-ASCII ID once panicked (slicing inside a character).
        assert_eq!(short_id("0123456789aéxyz"), "0123456789aé");
        assert_eq!(short_id(&"😀".repeat(20)), "😀".repeat(12));
    }

    /// tests/e2e/lib.sh derives the same names in shell; a change here must change it too.
    #[test]
    fn e2e_library_derives_the_same_names() {
        let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/lib.sh")).unwrap();
        for line in [
            format!("RB_BRIDGE_PREFIX={BRIDGE_PREFIX}"),
            format!("RB_HOST_VETH_PREFIX={HOST_VETH_PREFIX}"),
            format!("RB_PEER_VETH_PREFIX={PEER_VETH_PREFIX}"),
            format!("RB_ID_CHARS_IN_BRIDGE={ID_CHARS_IN_BRIDGE}"),
            format!("RB_ID_CHARS_IN_VETH={ID_CHARS_IN_VETH}"),
        ] {
            assert!(lib.lines().any(|l| l.trim() == line), "tests/e2e/lib.sh lacks the line {line:?}");
        }
    }
}
