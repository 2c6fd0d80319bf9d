//! The host I/O the real data plane does besides netlink, one home for it so
//! the driver does none itself (the fake data plane stands in for all of it):
//!
//! - the one kernel setting the plugin may need to switch on: IPv6
//!   forwarding, as the built-in bridge does for IPv6 networks (IPv4
//!   forwarding is dockerd's). Inside a managed plugin `/proc/sys` is
//!   read-only, so the host's `/proc/sys/net/ipv6/conf/all` is also
//!   reachable through a mount (plugin/config.json);
//! - the kernel's ephemeral port range, where published ports without a host
//!   port are picked;
//! - probe binds: a host service listening on a port a DNAT rule would shadow;
//! - random bytes (MAC addresses).

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;
use std::path::Path;

use crate::firewall::{FwPort, Proto};

const IPV6_FORWARDING: &[&str] =
    &["/proc/sys/net/ipv6/conf/all/forwarding", "/host/proc-sys-net-ipv6-conf-all/forwarding"];

/// Ok(true) when forwarding is (now) on, Ok(false) when no writable knob was found.
pub fn ensure_ipv6_forwarding() -> std::io::Result<bool> {
    ensure_on(IPV6_FORWARDING)
}

fn ensure_on(paths: &[&str]) -> std::io::Result<bool> {
    let mut last_error = None;
    for path in paths.iter().map(Path::new).filter(|p| p.exists()) {
        match std::fs::read_to_string(path) {
            Ok(value) if value.trim() == "1" => return Ok(true),
            _ => {}
        }
        match std::fs::write(path, "1") {
            Ok(()) => return Ok(true),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) if e.kind() != std::io::ErrorKind::PermissionDenied && e.raw_os_error() != Some(30) => Err(e),
        _ => Ok(false), // read-only everywhere: the host's administrator decides
    }
}

const PORT_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// The kernel's default, for when the file cannot be read.
pub const DEFAULT_EPHEMERAL_PORTS: RangeInclusive<u16> = 32768..=60999;

pub fn ephemeral_ports() -> RangeInclusive<u16> {
    std::fs::read_to_string(PORT_RANGE_FILE).ok().and_then(|t| parse_port_range(&t)).unwrap_or(DEFAULT_EPHEMERAL_PORTS)
}

/// `ip_local_port_range`'s form: "32768\t60999\n".
fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut parts = text.split_whitespace().map(|p| p.parse::<u16>());
    match (parts.next(), parts.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => Some(low..=high),
        _ => None,
    }
}

/// Fails when a host service listens on the port the mapping would take (its
/// DNAT rule would shadow the service): refused, like Docker does.
pub fn host_port_free(candidate: &FwPort) -> std::io::Result<()> {
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

pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_are_read_in_the_kernel_s_form() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("1024 1024"), Some(1024..=1024));
        for bad in ["", "61000 1024", "a b", "70000 70001", "1024"] {
            assert_eq!(parse_port_range(bad), None, "{bad:?}");
        }
        let range = ephemeral_ports();
        assert!(range.start() <= range.end());
    }

    #[test]
    fn a_listening_host_socket_makes_its_port_busy() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mapping = |proto, host_ip: &str| FwPort {
            proto,
            host_ip: Some(host_ip.parse().unwrap()),
            host_port: port,
            container_ip: "10.0.0.2".parse().unwrap(),
            container_port: 80,
        };
        assert!(host_port_free(&mapping(Proto::Tcp, "127.0.0.1")).is_err());
        // Another protocol, or an address not configured here, has no listener.
        assert!(host_port_free(&mapping(Proto::Sctp, "127.0.0.1")).is_ok());
        assert!(host_port_free(&mapping(Proto::Tcp, "192.0.2.1")).is_ok());
        drop(listener);
        assert!(host_port_free(&mapping(Proto::Tcp, "127.0.0.1")).is_ok());
    }

    #[test]
    fn random_bytes_differ() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        random_bytes(&mut a).unwrap();
        random_bytes(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn switches_a_knob_on_and_leaves_an_on_knob_alone() {
        let dir = std::env::temp_dir().join(format!("rb-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let knob = dir.join("forwarding");
        std::fs::write(&knob, "0\n").unwrap();
        let path = knob.to_str().unwrap();
        assert!(ensure_on(&["/nonexistent/knob", path]).unwrap());
        assert_eq!(std::fs::read_to_string(&knob).unwrap().trim(), "1");
        assert!(ensure_on(&[path]).unwrap());
        assert!(!ensure_on(&["/nonexistent/knob"]).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
