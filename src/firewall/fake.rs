//! A firewall that records what it was asked to apply and can be told to fail
//! once or to be slow; for tests (see `crate::testing`).

use std::sync::Mutex;

use async_trait::async_trait;

use super::{Firewall, FirewallError, FwNetwork};

/// Records what it was asked to apply; for driver unit tests.
#[derive(Default)]
pub struct FakeFirewall {
    pub applied: Mutex<Vec<FwNetwork>>,
    pub syncs: Mutex<usize>,
    pub fail_next: Mutex<bool>,
    /// Each write takes this long before it applies (a wedged xtables lock).
    pub delay: Mutex<std::time::Duration>,
}

#[async_trait]
impl Firewall for FakeFirewall {
    async fn sync(&self, networks: &[FwNetwork]) -> Result<(), FirewallError> {
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut fail = self.fail_next.lock().unwrap();
        if *fail {
            *fail = false;
            return Err(FirewallError { tool: "fake".into(), message: "injected failure".into() });
        }
        *self.applied.lock().unwrap() = networks.to_vec();
        *self.syncs.lock().unwrap() += 1;
        Ok(())
    }

    async fn is_intact(&self, networks: &[FwNetwork]) -> Result<bool, FirewallError> {
        Ok(*self.applied.lock().unwrap() == networks)
    }
}
