//! Published ports: turning dockerd's port bindings into concrete host
//! address/port → container address/port mappings, with ephemeral ports picked
//! from the kernel's `ip_local_port_range` and conflicts refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;

use super::{PluginError, Result};
use crate::api::PortBinding;
use crate::dataplane::DataPlane;
use crate::firewall::{FwPort, Proto};
use crate::state::{EndpointRecord, NetworkRecord};

/// Resolves every binding of one endpoint against the ports other endpoints
/// hold (`held`, kept with the state). All-or-nothing: an error means no port was taken.
pub fn resolve(
    bindings: &[PortBinding],
    endpoint: &EndpointRecord,
    network: &NetworkRecord,
    held: &PortIndex,
    host: &dyn DataPlane,
) -> Result<Vec<FwPort>> {
    let mut resolver = Resolver::new(held, &endpoint.id, host.ephemeral_ports(), |p: &FwPort| host.host_port_free(p));
    resolver.resolve(bindings, endpoint, network)
}

/// An endpoint's published ports (none for no endpoint).
pub fn published(endpoint: Option<&EndpointRecord>) -> &[FwPort] {
    endpoint.map_or(&[], |e| &e.published)
}

/// What makes two published ports compete, besides the host address: protocol, family, host port.
type PortKey = (Proto, bool, u16);

fn port_key(p: &FwPort) -> PortKey {
    (p.proto, p.container_ip.is_ipv6(), p.host_port)
}

/// A host address (None: every address) and the endpoint publishing the port on it.
type Holder = (Option<IpAddr>, Arc<str>);

/// Every published host port, by protocol, family and port: the host
/// addresses (None: every address) it is published on, and by which
/// endpoint. Kept with the state and changed with each endpoint's record
/// ([`PortIndex::replace`]), so that a call publishing a port looks up the
/// few ports it needs instead of indexing every endpoint's ports again
/// (which made one more port cost more the more were published).
#[derive(Debug, Default)]
pub struct PortIndex {
    by_port: HashMap<PortKey, Vec<Holder>>,
    /// Entries added and removed so far: the work spent keeping it.
    pub entries_changed: usize,
}

impl PortIndex {
    pub fn of<'a>(endpoints: impl Iterator<Item = &'a EndpointRecord>) -> PortIndex {
        let mut index = PortIndex::default();
        for e in endpoints {
            index.replace(None, Some(e));
        }
        index
    }

    /// An endpoint's record changes from `before` to `after` (None: none).
    /// Work in proportion to that endpoint's ports, and none when they stay.
    pub fn replace(&mut self, before: Option<&EndpointRecord>, after: Option<&EndpointRecord>) {
        if published(before) == published(after) {
            return;
        }
        self.entries_changed += published(before).len() + published(after).len();
        if let Some(e) = before {
            for p in &e.published {
                let Some(holders) = self.by_port.get_mut(&port_key(p)) else { continue };
                holders.retain(|(ip, id)| !(*ip == p.host_ip && **id == *e.id));
                if holders.is_empty() {
                    self.by_port.remove(&port_key(p));
                }
            }
        }
        if let Some(e) = after {
            let id: Arc<str> = e.id.as_str().into();
            for p in &e.published {
                self.by_port.entry(port_key(p)).or_default().push((p.host_ip, id.clone()));
            }
        }
    }

    fn holders(&self, key: &PortKey) -> &[Holder] {
        self.by_port.get(key).map_or(&[], Vec::as_slice)
    }
}

/// Resolving runs under the state lock, so its cost must stay linear in the
/// number of bindings: the ports in use are indexed once per call, and each
/// range (ephemeral or `-p 8000-9999`) is walked by one cursor per kind of
/// mapping, so a port found taken is never examined again in the same call.
pub struct Resolver<'a, P> {
    used: UsedPorts<'a>,
    ephemeral: RangeInclusive<u16>,
    /// Next port to try, per (kind of mapping, range).
    cursors: HashMap<(Vec<Slot>, u16, u16), u32>,
    /// Asks the host whether a service listens on the port (the seam tests count through).
    probe: P,
    /// Candidate (mapping, port) pairs examined so far: the work done.
    pub steps: usize,
}

/// What makes two mappings compete for a host port, besides the port.
type Slot = (Proto, bool, Option<IpAddr>);

fn slot(port: &FwPort) -> Slot {
    (port.proto, port.container_ip.is_ipv6(), port.host_ip)
}

impl<'a, P: FnMut(&FwPort) -> std::io::Result<()>> Resolver<'a, P> {
    /// `held`: the ports published so far; those of `endpoint` (whose
    /// ports the call replaces) do not count.
    pub fn new(held: &'a PortIndex, endpoint: &'a str, ephemeral: RangeInclusive<u16>, probe: P) -> Self {
        let used = UsedPorts { held, endpoint, this_call: HashMap::new() };
        Resolver { used, ephemeral, cursors: HashMap::new(), probe, steps: 0 }
    }

    pub fn resolve(
        &mut self,
        bindings: &[PortBinding],
        endpoint: &EndpointRecord,
        network: &NetworkRecord,
    ) -> Result<Vec<FwPort>> {
        let mut resolved: Vec<FwPort> = Vec::new();
        for binding in bindings {
            let wanted = mappings_for(binding, endpoint, network)?;
            if wanted.is_empty() {
                continue;
            }
            let (low, high) = match (binding.host_port, binding.host_port_end) {
                (0, _) => (*self.ephemeral.start(), *self.ephemeral.end()),
                (low, high) if high > low => (low, high),
                (port, _) => (port, port),
            };
            let port = self.pick(&wanted, low, high).map_err(|last_error| match last_error {
                Some(e) if low == high => e,
                _ => PluginError::new(format!(
                    "no free host port for {}/{} in {low}-{high}",
                    binding.port,
                    proto_name(binding.proto)
                )),
            })?;
            for w in wanted {
                let chosen = FwPort { host_port: port, ..w };
                self.used.this_call.entry(port_key(&chosen)).or_default().push(chosen.host_ip);
                resolved.push(chosen);
            }
        }
        resolved.sort();
        resolved.dedup();
        Ok(resolved)
    }

    /// The first port of `low..=high` free for every mapping in `wanted`,
    /// continuing where the last search for the same kind and range stopped.
    /// Err holds why the last candidate was refused.
    fn pick(&mut self, wanted: &[FwPort], low: u16, high: u16) -> std::result::Result<u16, Option<PluginError>> {
        let key = (wanted.iter().map(slot).collect::<Vec<_>>(), low, high);
        let mut next = self.cursors.get(&key).copied().unwrap_or(u32::from(low));
        let mut last_error = None;
        let mut chosen = None;
        while chosen.is_none() && next <= u32::from(high) {
            let port = u16::try_from(next).expect("cursor stays within u16 ports");
            next += 1;
            match self.try_port(wanted, port) {
                Ok(()) => chosen = Some(port),
                Err(e) => last_error = Some(e),
            }
        }
        self.cursors.insert(key, next);
        chosen.ok_or(last_error)
    }

    fn try_port(&mut self, wanted: &[FwPort], port: u16) -> Result<()> {
        for w in wanted {
            self.steps += 1;
            let candidate = FwPort { host_port: port, ..w.clone() };
            self.used.check(&candidate)?;
            (self.probe)(&candidate)
                .map_err(|e| PluginError::new(format!("{} is in use on the host: {e}", describe(&candidate))))?;
        }
        Ok(())
    }
}

/// The ports published so far, and those this call has taken.
struct UsedPorts<'a> {
    held: &'a PortIndex,
    endpoint: &'a str,
    this_call: HashMap<PortKey, Vec<Option<IpAddr>>>,
}

impl UsedPorts<'_> {
    /// Same protocol, family and port, and the same host address or either on every address.
    fn check(&self, candidate: &FwPort) -> Result<()> {
        let key = port_key(candidate);
        let clashes = |ip: &Option<IpAddr>| ip.is_none() || candidate.host_ip.is_none() || *ip == candidate.host_ip;
        if self.this_call.get(&key).is_some_and(|ips| ips.iter().any(clashes)) {
            return Err(PluginError::new(format!("{} is requested twice", describe(candidate))));
        }
        match self.held.holders(&key).iter().find(|(ip, id)| **id != *self.endpoint && clashes(ip)) {
            None => Ok(()),
            Some((_, id)) => Err(PluginError::new(format!(
                "{} is already published by endpoint {}",
                describe(candidate),
                crate::names::short_id(id)
            ))),
        }
    }
}

fn describe(candidate: &FwPort) -> String {
    let host = candidate.host_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "all addresses".into());
    format!("host port {}/{} on {host}", candidate.host_port, candidate.proto)
}

fn proto_name(n: u8) -> String {
    Proto::from_number(n).map(|p| p.to_string()).unwrap_or_else(|| n.to_string())
}

/// One binding → one mapping per address family the container has and the host address allows.
/// The host port is filled in later.
fn mappings_for(binding: &PortBinding, endpoint: &EndpointRecord, network: &NetworkRecord) -> Result<Vec<FwPort>> {
    let (proto, host_ip) = crate::request::parse_port_binding(binding)?;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::dataplane::fake::FakeDataPlane;
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

    /// The index of `ports` published by endpoint `id`.
    fn held(ports: &[FwPort], id: &str) -> PortIndex {
        PortIndex::of(std::iter::once(&EndpointRecord {
            id: id.into(),
            published: ports.to_vec(),
            ..endpoint(None, None)
        }))
    }

    const EPHEMERAL: RangeInclusive<u16> = 61010..=61020;

    /// The host: the fake data plane with a small ephemeral range and no port in use.
    fn host() -> FakeDataPlane {
        let host = FakeDataPlane::default();
        *host.ephemeral_ports.lock().unwrap() = Some(EPHEMERAL);
        host
    }

    #[test]
    fn explicit_and_loopback_bindings() {
        let ep = endpoint(Some("10.0.0.2/24"), None);
        let got = resolve(
            &[binding(6, "", 61001, 61001, 80), binding(17, "127.0.0.1", 61002, 61002, 81)],
            &ep,
            &network(),
            &PortIndex::default(),
            &host(),
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
        let got = resolve(&bindings, &ep, &network(), &PortIndex::default(), &host()).unwrap();
        let mut ports: Vec<u16> = got.iter().map(|p| p.host_port).collect();
        ports.dedup();
        assert_eq!(ports.len(), 5);
        assert!(ports.iter().all(|p| EPHEMERAL.contains(p)));
        let taken = held(&got, "other");
        let more = resolve(&[binding(6, "", 0, 0, 90)], &ep, &network(), &taken, &host()).unwrap();
        assert!(!ports.contains(&more[0].host_port));
    }

    #[test]
    fn conflicting_explicit_port_names_the_owner() {
        let ep = endpoint(Some("10.0.0.2/24"), None);
        let first =
            resolve(&[binding(6, "", 61003, 61003, 80)], &ep, &network(), &PortIndex::default(), &host()).unwrap();
        let taken = held(&first, "abcdef0123456789");
        let err = resolve(&[binding(6, "", 61003, 61003, 80)], &ep, &network(), &taken, &host()).unwrap_err();
        assert!(err.0.contains("61003/tcp") && err.0.contains("abcdef012345"), "{err}");
        // Same port, other protocol: fine.
        assert!(resolve(&[binding(17, "", 61003, 61003, 80)], &ep, &network(), &taken, &host()).is_ok());
    }

    #[test]
    fn range_picks_first_free() {
        let ep = endpoint(Some("10.0.0.2/24"), None);
        let first =
            resolve(&[binding(6, "", 61004, 61004, 80)], &ep, &network(), &PortIndex::default(), &host()).unwrap();
        let taken = held(&first, "x");
        let got = resolve(&[binding(6, "", 61004, 61006, 80)], &ep, &network(), &taken, &host()).unwrap();
        assert_eq!(got[0].host_port, 61005);
    }

    #[test]
    fn dual_stack_publishes_both_families_and_host_binding_applies() {
        let ep = endpoint(Some("10.0.0.2/24"), Some("fd00::2/64"));
        let got =
            resolve(&[binding(6, "", 61007, 61007, 80)], &ep, &network(), &PortIndex::default(), &host()).unwrap();
        assert_eq!(got.len(), 2);
        let mut net = network();
        net.options.host_binding_ipv4 = Some("127.0.0.1".parse().unwrap());
        let got = resolve(&[binding(6, "", 61008, 61008, 80)], &ep, &net, &PortIndex::default(), &host()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].host_ip, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_protocol_and_bad_host_ip_are_refused() {
        let ep = endpoint(Some("10.0.0.2/24"), None);
        assert!(
            resolve(&[binding(99, "", 1, 1, 80)], &ep, &network(), &PortIndex::default(), &host())
                .unwrap_err()
                .0
                .contains("protocol")
        );
        assert!(
            resolve(&[binding(6, "nope", 1, 1, 80)], &ep, &network(), &PortIndex::default(), &host())
                .unwrap_err()
                .0
                .contains("nope")
        );
    }

    #[test]
    fn a_port_a_host_service_listens_on_is_refused_or_skipped() {
        let ep = endpoint(Some("10.0.0.2/24"), None);
        let host = host();
        host.busy_ports.lock().unwrap().extend([(Proto::Tcp, 61005), (Proto::Tcp, 61010)]);
        let err = resolve(&[binding(6, "127.0.0.1", 61005, 61005, 80)], &ep, &network(), &PortIndex::default(), &host)
            .unwrap_err();
        assert!(err.0.contains("61005/tcp") && err.0.contains("in use on the host"), "{err}");
        assert!(
            resolve(&[binding(17, "", 61005, 61005, 80)], &ep, &network(), &PortIndex::default(), &host).is_ok(),
            "udp is free"
        );
        let got = resolve(&[binding(6, "", 0, 0, 80)], &ep, &network(), &PortIndex::default(), &host).unwrap();
        assert_eq!(got[0].host_port, 61011, "the ephemeral pick skips a busy port");
    }

    /// Item 3 of issue 11: resolving N ephemeral bindings once rescanned the
    /// range for every binding (quadratic, ~17 s for 2,000 under the state
    /// lock). Counted through the probe seam and the step counter, not timed:
    /// with the first 1,000 ports of the range held by host services, the old
    /// walk probed those 1,000 ports again for every binding (1,000,000 probes).
    #[test]
    fn resolving_many_ephemeral_bindings_is_linear() {
        let ep = endpoint(Some("10.0.0.2/24"), Some("fd00::2/64"));
        let n: u16 = 1000;
        let busy_below = 31_000;
        let mut probes = 0usize;
        let probe = |p: &FwPort| {
            probes += 1;
            if p.host_port < busy_below { Err(std::io::Error::other("a host service listens")) } else { Ok(()) }
        };
        let bindings: Vec<_> = (0..n).map(|i| binding(if i % 2 == 0 { 6 } else { 17 }, "", 0, 0, 1 + i)).collect();
        let none = PortIndex::default();
        let mut resolver = Resolver::new(&none, &ep.id, 30_000..=34_999, probe);
        let got = resolver.resolve(&bindings, &ep, &network()).unwrap();
        let steps = resolver.steps;
        drop(resolver);
        // Dual stack: one IPv4 and one IPv6 mapping per binding, on the same host port.
        assert_eq!(got.len(), 2 * usize::from(n));
        let distinct: BTreeSet<(Proto, bool, u16)> =
            got.iter().map(|p| (p.proto, p.container_ip.is_ipv6(), p.host_port)).collect();
        assert_eq!(distinct.len(), got.len(), "a host port was handed out twice");
        assert!(got.iter().all(|p| p.host_port >= busy_below));
        // Two protocols, each walking the 1,000 busy ports once, then one step per mapping.
        let bound = 2 * (2 * usize::from(n) + 2 * 1000);
        assert!(probes <= bound, "{probes} probes for {n} bindings (bound {bound})");
        assert!(steps <= bound, "{steps} steps for {n} bindings (bound {bound})");
    }

    /// The ports other endpoints hold are indexed once per call, not scanned per candidate.
    #[test]
    fn ports_held_by_other_endpoints_are_skipped_once() {
        let ep = endpoint(Some("10.0.0.3/24"), None);
        let ports: Vec<FwPort> = (0..2000u16)
            .map(|i| FwPort {
                proto: Proto::Tcp,
                host_ip: None,
                host_port: 40_000 + i,
                container_ip: "10.0.0.9".parse().unwrap(),
                container_port: 80,
            })
            .collect();
        let taken = held(&ports, "other");
        let bindings: Vec<_> = (0..2000u16).map(|i| binding(6, "", 0, 0, 1 + i)).collect();
        let mut probes = 0usize;
        let mut resolver = Resolver::new(&taken, &ep.id, 40_000..=45_000, |_: &FwPort| {
            probes += 1;
            Ok(())
        });
        let got = resolver.resolve(&bindings, &ep, &network()).unwrap();
        let steps = resolver.steps;
        drop(resolver);
        assert_eq!(got.len(), 2000);
        assert!(got.iter().all(|p| p.host_port >= 42_000));
        assert!(steps <= 4000 + 10, "{steps} steps");
        assert_eq!(probes, 2000, "only free candidates reach the host probe");
        // A range too small for what is asked names the binding and the range.
        let mut resolver = Resolver::new(&taken, &ep.id, 40_000..=41_999, |_: &FwPort| Ok(()));
        let err = resolver.resolve(&bindings[..1], &ep, &network()).unwrap_err();
        assert_eq!(err.0, "no free host port for 1/tcp in 40000-41999");
    }

    /// A specific host address and "all addresses" compete; two specific ones do not.
    #[test]
    fn specific_and_wildcard_host_addresses_compete() {
        let ep = endpoint(Some("10.0.0.2/24"), None);
        let first =
            resolve(&[binding(6, "127.0.0.1", 61011, 61011, 80)], &ep, &network(), &PortIndex::default(), &host())
                .unwrap();
        let taken = held(&first, "abcdef0123456789");
        let err = resolve(&[binding(6, "", 61011, 61011, 80)], &ep, &network(), &taken, &host()).unwrap_err();
        assert!(err.0.contains("already published by endpoint abcdef012345"), "{err}");
        assert!(resolve(&[binding(6, "127.0.0.2", 61011, 61011, 80)], &ep, &network(), &taken, &host()).is_ok());
        let twice = [binding(6, "", 61012, 61012, 80), binding(6, "127.0.0.1", 61012, 61012, 81)];
        assert!(
            resolve(&twice, &ep, &network(), &PortIndex::default(), &host()).unwrap_err().0.contains("requested twice")
        );
    }
}
