//! Driver logic: turns protocol calls into plans, applies them through the
//! data plane, the firewall and the store, and undoes what it did when a step
//! fails, so nothing half-made survives.
//!
//! One lock serialises every call that reads or changes state: dockerd sends
//! calls concurrently (notably at shutdown), and each call is short.

pub mod ipam;
pub mod network;
pub mod ports;
pub mod swarm;
pub mod txn;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::dataplane::DataPlane;
use crate::firewall::{Firewall, FwNetwork};
use crate::ipam::{DefaultPool, Ipam};
use crate::reconcile::{UNCLAIMED_GRACE, Unclaimed};
use crate::state::{EndpointRecord, NetworkRecord, Store};

/// An error dockerd shows to the user, as `Err` (network) or `Error` (IPAM).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PluginError(pub String);

impl PluginError {
    pub fn new(message: impl Into<String>) -> Self {
        PluginError(message.into())
    }
}

macro_rules! impl_from_error {
    ($($t:ty),*) => {$(
        impl From<$t> for PluginError {
            fn from(e: $t) -> Self { PluginError(e.to_string()) }
        }
    )*};
}
impl_from_error!(
    crate::dataplane::DataPlaneError,
    crate::firewall::FirewallError,
    crate::state::StoreError,
    crate::ipam::IpamError,
    crate::options::OptionError
);

pub type Result<T> = std::result::Result<T, PluginError>;

pub use crate::request::validate_id;

/// Everything the plugin knows, mirrored from the store.
pub struct State {
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Changed through [`State::put_endpoint`] and [`State::remove_endpoint`] (they keep `published`).
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// The endpoints' published host ports, indexed.
    pub published: ports::PortIndex,
    pub ipam: Ipam,
}

/// The plugin: its state (behind the one lock every call takes), the two
/// kernel seams and the store. Private: the driver's handlers change them;
/// everything else (reconciler, operator tools, tests) goes through the
/// methods below.
pub struct Plugin {
    state: Arc<Mutex<State>>,
    dataplane: Arc<dyn DataPlane>,
    firewall: Arc<dyn Firewall>,
    store: Store,
    unclaimed: Unclaimed,
    swarm_settings: swarm::SwarmSettings,
    swarm_view: std::sync::Mutex<swarm::SwarmView>,
    /// Calls waiting for the state lock (`Plugin::begin`): the last of a
    /// burst puts the burst's commits on disk (see `txn.rs`).
    in_line: std::sync::atomic::AtomicUsize,
}

impl Plugin {
    /// The state under the plugin's lock (readers take it too, for a consistent view).
    pub async fn lock_state(&self) -> tokio::sync::MutexGuard<'_, State> {
        self.state.lock().await
    }

    /// The state lock as a value that can be moved into a task (the
    /// start-up repair takes it before the socket is bound, holds it while
    /// the plugin starts serving, and releases it when done).
    pub async fn lock_state_owned(&self) -> tokio::sync::OwnedMutexGuard<State> {
        self.state.clone().lock_owned().await
    }

    /// The data plane, for the reconciler and the operator's tools.
    pub fn dataplane(&self) -> &dyn DataPlane {
        &*self.dataplane
    }

    /// The firewall, for the reconciler and the operator's tools.
    pub fn firewall(&self) -> &dyn Firewall {
        &*self.firewall
    }

    /// Joined endpoints whose veth pair is back in the host, for the reconciler.
    pub fn unclaimed(&self) -> &Unclaimed {
        &self.unclaimed
    }

    /// How long an endpoint may stay unclaimed before the reconciler forgets
    /// it (default [`UNCLAIMED_GRACE`]).
    pub fn with_unclaimed_grace(mut self, grace: std::time::Duration) -> Plugin {
        self.unclaimed = Unclaimed::new(grace);
        self
    }

    /// This state database's instance ID, which marks the kernel objects it owns.
    pub fn instance_id(&self) -> &str {
        self.store.instance_id()
    }

    /// Commits record changes made outside a protocol call (the reconciler
    /// forgetting endpoints whose container is gone), in one transaction.
    pub fn commit(&self, changes: Vec<crate::state::Change>) -> Result<()> {
        Ok(self.store.commit(changes)?)
    }

    /// Puts commits that did not wait for the disk (Join's) on it.
    pub fn flush(&self) -> Result<()> {
        Ok(self.store.flush()?)
    }

    /// Loads the persisted state; the plugin serves nothing before this returns.
    pub fn load(
        store: Store,
        dataplane: Arc<dyn DataPlane>,
        firewall: Arc<dyn Firewall>,
        default_pools: Vec<DefaultPool>,
    ) -> Result<Plugin> {
        let snapshot = store.load()?;
        let mut ipam = Ipam::new(default_pools);
        for pool in snapshot.pools {
            let id = pool.id.clone();
            ipam.restore_pool(pool).map_err(|e| PluginError::new(format!("restore pool {id}: {e}")))?;
        }
        for (pool, addr) in snapshot.addresses {
            ipam.restore_address(&pool, addr)
                .map_err(|e| PluginError::new(format!("restore address {addr} of pool {pool}: {e}")))?;
        }
        for (pool, addr) in snapshot.cursors {
            ipam.restore_cursor(&pool, addr)
                .map_err(|e| PluginError::new(format!("restore allocation cursor {addr} of pool {pool}: {e}")))?;
        }
        let endpoints: BTreeMap<String, EndpointRecord> =
            snapshot.endpoints.into_iter().map(|e| (e.id.clone(), e)).collect();
        let state = State {
            networks: snapshot.networks.into_iter().map(|n| (n.id.clone(), n)).collect(),
            published: ports::PortIndex::of(endpoints.values()),
            endpoints,
            ipam,
        };
        Ok(Plugin {
            state: Arc::new(Mutex::new(state)),
            dataplane,
            firewall,
            store,
            unclaimed: Unclaimed::new(UNCLAIMED_GRACE),
            swarm_settings: swarm::SwarmSettings::default(),
            swarm_view: Default::default(),
            in_line: Default::default(),
        })
    }

    /// The swarm network settings (VXLAN port, dockerd's socket, polling).
    pub fn with_swarm_settings(mut self, settings: swarm::SwarmSettings) -> Plugin {
        self.swarm_settings = settings;
        self
    }
}

impl State {
    pub fn put_endpoint(&mut self, endpoint: EndpointRecord) {
        self.published.replace(self.endpoints.get(&endpoint.id), Some(&endpoint));
        self.endpoints.insert(endpoint.id.clone(), endpoint);
    }

    pub fn remove_endpoint(&mut self, id: &str) -> Option<EndpointRecord> {
        let gone = self.endpoints.remove(id);
        self.published.replace(gone.as_ref(), None);
        gone
    }

    /// The firewall's view of every network, in a stable order.
    pub fn firewall_networks(&self) -> Vec<FwNetwork> {
        self.networks.values().map(|n| self.firewall_network(n)).collect()
    }

    fn firewall_network(&self, n: &NetworkRecord) -> FwNetwork {
        firewall_network(n, self.endpoints.values())
    }
}

pub fn firewall_network<'a>(n: &NetworkRecord, endpoints: impl Iterator<Item = &'a EndpointRecord>) -> FwNetwork {
    let mut ports: Vec<_> =
        endpoints.filter(|e| e.network_id == n.id).flat_map(|e| e.published.iter().cloned()).collect();
    ports.sort();
    FwNetwork { ports, ..firewall_settings(n) }
}

/// The firewall's view of a network without its ports (they do not depend on its endpoints).
pub fn firewall_settings(n: &NetworkRecord) -> FwNetwork {
    FwNetwork {
        bridge: n.bridge.clone(),
        subnets: n.ipv4.iter().chain(&n.ipv6).map(|s| s.pool).collect(),
        internal: n.options.internal,
        icc: n.options.enable_icc,
        masquerade: n.options.enable_ip_masquerade,
        routed_v4: n.options.gateway_mode_ipv4 == crate::options::GatewayMode::Routed,
        routed_v6: n.options.gateway_mode_ipv6 == crate::options::GatewayMode::Routed,
        trusted_interfaces: n.options.trusted_host_interfaces.clone(),
        snat_ipv4: n.options.host_ipv4,
        snat_ipv6: n.options.host_ipv6,
        ports: vec![],
    }
}

#[cfg(test)]
mod tests;
