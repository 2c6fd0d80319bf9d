//! The one kernel setting the plugin may need to switch on: IPv6 forwarding,
//! as the built-in bridge does for IPv6 networks (IPv4 forwarding is dockerd's).
//! Inside a managed plugin `/proc/sys` is read-only, so the host's
//! `/proc/sys/net/ipv6/conf/all` is also reachable through a mount
//! (plugin/config.json).

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
