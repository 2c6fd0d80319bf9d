//! Published ports: turning dockerd's port bindings into concrete host
//! address/port → container address/port mappings, with ephemeral ports picked
//! from the kernel's `ip_local_port_range` and conflicts refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;

use super::{PluginError, Result};
use crate::api::PortBinding;
use crate::firewall::{FwPort, Proto};
use crate::state::{EndpointRecord, NetworkRecord};

const PORT_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const DEFAULT_EPHEMERAL: RangeInclusive<u16> = 32768..=60999;

/// A port already published, and by whom (for the error message).
pub struct Taken<'a> {
    pub port: &'a FwPort,
    pub endpoint_id: &'a str,
}

pub fn ephemeral_range() -> RangeInclusive<u16> {
    std::fs::read_to_string(PORT_RANGE_FILE)
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>());
            match (parts.next(), parts.next()) {
                (Some(Ok(low)), Some(Ok(high))) if low <= high => Some(low..=high),
                _ => None,
            }
        })
        .unwrap_or(DEFAULT_EPHEMERAL)
}

/// Resolves every binding of one endpoint. All-or-nothing: an error means no port was taken.
pub fn resolve(
    bindings: &[PortBinding],
    endpoint: &EndpointRecord,
    network: &NetworkRecord,
    taken: &[Taken<'_>],
    ephemeral: RangeInclusive<u16>,
) -> Result<Vec<FwPort>> {
    let mut resolved: Vec<FwPort> = Vec::new();
    for binding in bindings {
        let wanted = mappings_for(binding, endpoint, network)?;
        if wanted.is_empty() {
            continue;
        }
        let candidates: Vec<u16> = match (binding.host_port, binding.host_port_end) {
            (0, _) => ephemeral.clone().collect(),
            (low, high) if high > low => (low..=high).collect(),
            (port, _) => vec![port],
        };
        let explicit = candidates.len() == 1;
        let mut last_error = None;
        let chosen = candidates.into_iter().find(|&port| {
            wanted.iter().all(|w| {
                let candidate = FwPort { host_port: port, ..w.clone() };
                match check_free(&candidate, taken, &resolved) {
                    Ok(()) => true,
                    Err(e) => {
                        last_error = Some(e);
                        false
                    }
                }
            })
        });
        match chosen {
            Some(port) => resolved.extend(wanted.into_iter().map(|w| FwPort { host_port: port, ..w })),
            None if explicit => return Err(last_error.expect("a refused explicit port has a reason")),
            None => {
                return Err(PluginError::new(format!(
                    "no free host port for {}/{} in {}-{}",
                    binding.port,
                    proto_name(binding.proto),
                    binding.host_port.max(*ephemeral.start()),
                    if binding.host_port == 0 { *ephemeral.end() } else { binding.host_port_end }
                )));
            }
        }
    }
    resolved.sort();
    resolved.dedup();
    Ok(resolved)
}

fn proto_name(n: u8) -> String {
    Proto::from_number(n).map(|p| p.to_string()).unwrap_or_else(|| n.to_string())
}

/// One binding → one mapping per address family the container has and the host address allows.
/// The host port is filled in later.
fn mappings_for(binding: &PortBinding, endpoint: &EndpointRecord, network: &NetworkRecord) -> Result<Vec<FwPort>> {
    let proto = Proto::from_number(binding.proto).ok_or_else(|| {
        PluginError::new(format!(
            "port {}: unsupported protocol number {} (tcp, udp and sctp are)",
            binding.port, binding.proto
        ))
    })?;
    if binding.port == 0 {
        return Err(PluginError::new("port binding without a container port"));
    }
    let host_ip: Option<IpAddr> = match binding.host_ip.as_str() {
        "" => None,
        text => Some(text.parse().map_err(|_| {
            PluginError::new(format!("port {}/{proto}: host address {text:?} is not an IP address", binding.port))
        })?),
    };
    let v4 = endpoint.address.map(|a| a.addr());
    let v6 = endpoint.address_v6.map(|a| a.addr());
    let mapping = |host: Option<IpAddr>, container: IpAddr| FwPort {
        proto,
        host_ip: host,
        host_port: 0,
        container_ip: container,
        container_port: binding.port,
    };
    let unspecified_to_any = |ip: IpAddr| if ip.is_unspecified() { None } else { Some(ip) };
    let mut out = Vec::new();
    match host_ip {
        None => {
            if let Some(c) = v4 {
                out.push(mapping(network.options.host_binding_ipv4.and_then(unspecified_to_any), c));
            }
            let binds_everywhere = network.options.host_binding_ipv4.is_none_or(|ip| ip.is_unspecified());
            if let (Some(c), true) = (v6, binds_everywhere) {
                out.push(mapping(None, c));
            }
        }
        Some(ip @ IpAddr::V4(_)) => {
            if let Some(c) = v4 {
                out.push(mapping(unspecified_to_any(ip), c));
            }
        }
        Some(ip @ IpAddr::V6(_)) => {
            if let Some(c) = v6 {
                out.push(mapping(unspecified_to_any(ip), c));
            }
        }
    }
    Ok(out)
}

fn overlaps(a: &FwPort, b: &FwPort) -> bool {
    let same_family = a.container_ip.is_ipv4() == b.container_ip.is_ipv4();
    let same_address = match (a.host_ip, b.host_ip) {
        (None, _) | (_, None) => true,
        (Some(x), Some(y)) => x == y,
    };
    a.proto == b.proto && a.host_port == b.host_port && same_family && same_address
}

fn check_free(candidate: &FwPort, taken: &[Taken<'_>], resolved: &[FwPort]) -> Result<()> {
    let what = || {
        let host = candidate.host_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "all addresses".into());
        format!("host port {}/{} on {host}", candidate.host_port, candidate.proto)
    };
    if let Some(t) = taken.iter().find(|t| overlaps(t.port, candidate)) {
        return Err(PluginError::new(format!(
            "{} is already published by endpoint {}",
            what(),
            crate::names::short_id(t.endpoint_id)
        )));
    }
    if resolved.iter().any(|r| overlaps(r, candidate)) {
        return Err(PluginError::new(format!("{} is requested twice", what())));
    }
    host_port_unused(candidate).map_err(|e| PluginError::new(format!("{} is in use on the host: {e}", what())))
}

/// A host service listening on the port would be shadowed by the DNAT rule: refuse it, like Docker.
fn host_port_unused(candidate: &FwPort) -> std::io::Result<()> {
    let ip = candidate.host_ip.unwrap_or(match candidate.container_ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let addr = SocketAddr::new(ip, candidate.host_port);
    let result = match candidate.proto {
        Proto::Tcp => TcpListener::bind(addr).map(drop),
        Proto::Udp => UdpSocket::bind(addr).map(drop),
        Proto::Sctp => Ok(()),
    };
    match result {
        // A host address that is not (or not yet) configured here cannot have listeners.
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::NetworkOptions;

    fn endpoint(v4: Option<&str>, v6: Option<&str>) -> EndpointRecord {
        EndpointRecord {
            id: "e".repeat(64),
            network_id: "n".repeat(64),
            address: v4.map(|a| a.parse().unwrap()),
            address_v6: v6.map(|a| a.parse().unwrap()),
            mac: String::new(),
            host_veth: String::new(),
            container_veth: String::new(),
            joined: true,
            port_bindings: vec![],
            exposed_ports: vec![],
            published: vec![],
            driver_options: Default::default(),
        }
    }

    fn network() -> NetworkRecord {
        NetworkRecord {
            id: "n".repeat(64),
            bridge: "rb-test".into(),
            bridge_created: true,
            options: NetworkOptions::default(),
            ipv4: vec![],
            ipv6: vec![],
            added_addresses: vec![],
        }
    }

    fn binding(proto: u8, host_ip: &str, host_port: u16, end: u16, port: u16) -> PortBinding {
        PortBinding { proto, ip: String::new(), port, host_ip: host_ip.into(), host_port, host_port_end: end }
    }

    // High, unlikely-to-be-used ports so the host bind check passes on a test machine.
    const EPHEMERAL: RangeInclusive<u16> = 61010..=61020;

    #[test]
    fn explicit_and_loopback_bindings() {
        let ep = endpoint(Some("10.0.0.2/24"), None);
        let got = resolve(
            &[binding(6, "", 61001, 61001, 80), binding(17, "127.0.0.1", 61002, 61002, 81)],
            &ep,
            &network(),
            &[],
            EPHEMERAL,
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].proto, got[0].host_ip, got[0].host_port, got[0].container_port),
            (Proto::Tcp, None, 61001, 80)
        );
        assert_eq!(got[1].host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(got[1].container_ip, "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ephemeral_ports_never_collide() {
        let ep = endpoint(Some("10.0.0.2/24"), None);
        let bindings: Vec<_> = (0..5).map(|i| binding(6, "", 0, 0, 80 + i)).collect();
        let got = resolve(&bindings, &ep, &network(), &[], EPHEMERAL).unwrap();
        let mut ports: Vec<u16> = got.iter().map(|p| p.host_port).collect();
        ports.dedup();
        assert_eq!(ports.len(), 5);
        assert!(ports.iter().all(|p| EPHEMERAL.contains(p)));
        let taken: Vec<Taken> = got.iter().map(|p| Taken { port: p, endpoint_id: "other" }).collect();
        let more = resolve(&[binding(6, "", 0, 0, 90)], &ep, &network(), &taken, EPHEMERAL).unwrap();
        assert!(!ports.contains(&more[0].host_port));
    }

    #[test]
    fn conflicting_explicit_port_names_the_owner() {
        let ep = endpoint(Some("10.0.0.2/24"), None);
        let first = resolve(&[binding(6, "", 61003, 61003, 80)], &ep, &network(), &[], EPHEMERAL).unwrap();
        let taken = [Taken { port: &first[0], endpoint_id: "abcdef0123456789" }];
        let err = resolve(&[binding(6, "", 61003, 61003, 80)], &ep, &network(), &taken, EPHEMERAL).unwrap_err();
        assert!(err.0.contains("61003/tcp") && err.0.contains("abcdef012345"), "{err}");
        // Same port, other protocol: fine.
        assert!(resolve(&[binding(17, "", 61003, 61003, 80)], &ep, &network(), &taken, EPHEMERAL).is_ok());
    }

    #[test]
    fn range_picks_first_free() {
        let ep = endpoint(Some("10.0.0.2/24"), None);
        let first = resolve(&[binding(6, "", 61004, 61004, 80)], &ep, &network(), &[], EPHEMERAL).unwrap();
        let taken = [Taken { port: &first[0], endpoint_id: "x" }];
        let got = resolve(&[binding(6, "", 61004, 61006, 80)], &ep, &network(), &taken, EPHEMERAL).unwrap();
        assert_eq!(got[0].host_port, 61005);
    }

    #[test]
    fn dual_stack_publishes_both_families_and_host_binding_applies() {
        let ep = endpoint(Some("10.0.0.2/24"), Some("fd00::2/64"));
        let got = resolve(&[binding(6, "", 61007, 61007, 80)], &ep, &network(), &[], EPHEMERAL).unwrap();
        assert_eq!(got.len(), 2);
        let mut net = network();
        net.options.host_binding_ipv4 = Some("127.0.0.1".parse().unwrap());
        let got = resolve(&[binding(6, "", 61008, 61008, 80)], &ep, &net, &[], EPHEMERAL).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].host_ip, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_protocol_and_bad_host_ip_are_refused() {
        let ep = endpoint(Some("10.0.0.2/24"), None);
        assert!(
            resolve(&[binding(99, "", 1, 1, 80)], &ep, &network(), &[], EPHEMERAL).unwrap_err().0.contains("protocol")
        );
        assert!(
            resolve(&[binding(6, "nope", 1, 1, 80)], &ep, &network(), &[], EPHEMERAL).unwrap_err().0.contains("nope")
        );
    }

    #[test]
    fn a_listening_host_socket_blocks_an_explicit_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ep = endpoint(Some("10.0.0.2/24"), None);
        let err = resolve(&[binding(6, "127.0.0.1", port, port, 80)], &ep, &network(), &[], EPHEMERAL).unwrap_err();
        assert!(err.0.contains("in use on the host"), "{err}");
    }
}
