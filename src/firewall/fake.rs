//! A firewall that records what it was asked to apply and can be told to fail
//! once or to be slow; for tests (see `crate::testing`).

use std::sync::Mutex;

use async_trait::async_trait;

use super::{Firewall, FirewallError, FwChange, FwNetwork};

/// Records what it was asked to apply; for driver unit tests.
#[derive(Default)]
pub struct FakeFirewall {
    /// The networks the kernel would hold now (changes merged in call order).
    pub applied: Mutex<Vec<FwNetwork>>,
    /// Writes of either kind.
    pub syncs: Mutex<usize>,
    /// The bridges of each `apply` call, in order (a call hands only what it changed).
    pub changes: Mutex<Vec<Vec<String>>>,
    /// Published ports handed over by `apply` calls, all told: a call's work in ports.
    pub ports_handed: Mutex<usize>,
    pub fail_next: Mutex<bool>,
    /// The swarm rule group's last (port, members); None: absent.
    pub swarm: Mutex<Option<(u16, Vec<std::net::IpAddr>)>>,
    /// Each write takes this long before it applies (a wedged xtables lock).
    pub delay: Mutex<std::time::Duration>,
}

impl FakeFirewall {
    async fn write(&self) -> Result<(), FirewallError> {
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut fail = self.fail_next.lock().unwrap();
        if *fail {
            *fail = false;
            return Err(FirewallError { tool: "fake".into(), message: "injected failure".into() });
        }
        *self.syncs.lock().unwrap() += 1;
        Ok(())
    }
}

fn sorted(networks: &[FwNetwork]) -> Vec<&FwNetwork> {
    let mut out: Vec<&FwNetwork> = networks.iter().collect();
    out.sort_by(|a, b| a.bridge.cmp(&b.bridge));
    out
}

#[async_trait]
impl Firewall for FakeFirewall {
    async fn sync(&self, networks: &[FwNetwork]) -> Result<(), FirewallError> {
        self.write().await?;
        *self.applied.lock().unwrap() = networks.to_vec();
        Ok(())
    }

    async fn apply(&self, changes: &[FwChange]) -> Result<bool, FirewallError> {
        self.write().await?;
        self.changes.lock().unwrap().push(changes.iter().map(|c| c.bridge().to_string()).collect());
        let mut applied = self.applied.lock().unwrap();
        for change in changes {
            let at = applied.iter().position(|n| n.bridge == change.bridge());
            match (change, at) {
                (FwChange::Network { after: Some(n), .. }, Some(i)) => {
                    applied[i] = FwNetwork { ports: std::mem::take(&mut applied[i].ports), ..n.settings() }
                }
                (FwChange::Network { after: Some(n), .. }, None) => applied.push(n.settings()),
                (FwChange::Network { after: None, .. }, Some(i)) => drop(applied.remove(i)),
                (FwChange::Network { after: None, .. }, None) => {}
                (FwChange::Ports { added, removed, .. }, Some(i)) => {
                    *self.ports_handed.lock().unwrap() += added.len() + removed.len();
                    let ports = &mut applied[i].ports;
                    for p in removed {
                        if let Some(at) = ports.iter().position(|q| q == p) {
                            ports.remove(at);
                        }
                    }
                    ports.extend(added.iter().cloned());
                    ports.sort();
                }
                // Ports on a bridge without rules: the engine would ask for a full sync.
                (FwChange::Ports { .. }, None) => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn is_intact(&self, networks: &[FwNetwork]) -> Result<bool, FirewallError> {
        Ok(sorted(&self.applied.lock().unwrap()) == sorted(networks))
    }

    async fn sync_swarm_members(&self, port: u16, members: Option<&[std::net::IpAddr]>) -> Result<(), FirewallError> {
        *self.swarm.lock().unwrap() = members.map(|m| (port, m.to_vec()));
        Ok(())
    }
}
