//! Test support, one home for every test that runs the plugin in process: a
//! throwaway directory, and the plugin on the fake data plane and firewall with
//! a real store, which can be restarted (store closed and loaded back, the
//! fakes keeping their "kernel" state as the real kernel would).
//!
//! Built for unit tests and, through the `test-support` feature (which the
//! crate's dev-dependency on itself enables), for the integration tests and
//! benches; never part of the release binary.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dataplane::LinkKind;
pub use crate::dataplane::fake::{FakeDataPlane, FakeLink};
use crate::driver::Plugin;
use crate::driver::swarm::SwarmSettings;
use crate::firewall::FwNetwork;
pub use crate::firewall::fake::FakeFirewall;
use crate::ipam::default_pools;
use crate::state::Store;

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `tag` names the test in the directory's name (anything but letters and digits becomes '-').
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let safe: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let dir = std::env::temp_dir().join(format!(
            "rustbridge-test-{safe}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The plugin in this process on the fakes, with its store in a [`TempDir`].
/// Field order matters: the plugin (and its open database) is dropped before
/// the directory is removed.
pub struct FakePlugin {
    plugin: Option<Arc<Plugin>>,
    pub fake: Arc<FakeDataPlane>,
    pub fw: Arc<FakeFirewall>,
    dir: TempDir,
}

impl FakePlugin {
    pub fn new(tag: &str) -> FakePlugin {
        let dir = TempDir::new(tag);
        let fake = Arc::new(FakeDataPlane::default());
        let fw = Arc::new(FakeFirewall::default());
        let plugin = Some(Arc::new(load(&dir, &fake, &fw)));
        FakePlugin { plugin, fake, fw, dir }
    }

    /// [`FakePlugin::new`] with swarm settings (a fake dockerd's socket, say);
    /// a [`FakePlugin::reload`] goes back to the defaults.
    pub fn with_swarm_settings(tag: &str, settings: SwarmSettings) -> FakePlugin {
        let dir = TempDir::new(tag);
        let fake = Arc::new(FakeDataPlane::default());
        let fw = Arc::new(FakeFirewall::default());
        let plugin = Some(Arc::new(load(&dir, &fake, &fw).with_swarm_settings(settings)));
        FakePlugin { plugin, fake, fw, dir }
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        self.plugin.as_ref().expect("plugin loaded")
    }

    /// A plugin restart: closes the store and loads everything back from
    /// disk. Panics when a call still holds the plugin.
    pub fn reload(&mut self) {
        let plugin = self.plugin.take().expect("plugin loaded");
        let plugin = Arc::try_unwrap(plugin).unwrap_or_else(|_| panic!("a call still holds the plugin"));
        drop(plugin);
        self.plugin = Some(Arc::new(load(&self.dir, &self.fake, &self.fw)));
    }

    /// The names of the fake kernel's links of one kind.
    pub fn links_of_kind(&self, kind: LinkKind) -> BTreeSet<String> {
        self.fake.links.lock().unwrap().iter().filter(|(_, l)| l.kind == kind).map(|(n, _)| n.clone()).collect()
    }

    /// The bridges the fake firewall was last told about.
    pub fn fw_bridges(&self) -> Vec<String> {
        self.fw.applied.lock().unwrap().iter().map(|n| n.bridge.clone()).collect()
    }
}

/// The firewall's view of a plain network on `bridge` (icc and masquerade on,
/// as Docker's defaults; no ports).
pub fn fw_network(bridge: &str, subnets: &[&str]) -> FwNetwork {
    FwNetwork {
        bridge: bridge.into(),
        subnets: subnets.iter().map(|s| s.parse().unwrap_or_else(|_| panic!("{s} is not a subnet"))).collect(),
        internal: false,
        icc: true,
        masquerade: true,
        routed_v4: false,
        routed_v6: false,
        trusted_interfaces: vec![],
        snat_ipv4: None,
        snat_ipv6: None,
        ports: vec![],
    }
}

fn load(dir: &TempDir, fake: &Arc<FakeDataPlane>, fw: &Arc<FakeFirewall>) -> Plugin {
    let store = Store::open(&dir.0).expect("open store");
    Plugin::load(store, fake.clone(), fw.clone(), default_pools()).expect("load plugin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_are_distinct_and_removed() {
        let (a, b) = (TempDir::new("x/y"), TempDir::new("x/y"));
        assert_ne!(a.0, b.0);
        assert!(a.0.file_name().unwrap().to_str().unwrap().starts_with("rustbridge-test-x-y-"));
        let path = a.0.clone();
        drop(a);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_restart_keeps_the_fakes_and_reloads_the_store() {
        let mut p = FakePlugin::new("restart");
        p.fake.links.lock().unwrap().insert("br-kept".into(), FakeLink { up: true, ..FakeLink::bridge() });
        p.reload();
        assert_eq!(p.links_of_kind(LinkKind::Bridge), BTreeSet::from(["br-kept".to_string()]));
    }
}
