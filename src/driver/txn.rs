//! The one path every mutating call goes through:
//!
//! 1. `Plugin::begin` takes the state lock, waiting no longer than the call's
//!    deadline allows (the wait counts against it);
//! 2. the handler validates against `Txn::state`, then applies kernel steps
//!    (`Txn::kernel`, `Txn::sync_firewall`), each refused once too little time
//!    is left, and registers how to undo each one (`Txn::on_undo`, a teardown
//!    list run in reverse); IPAM takes addresses and pools in memory when it
//!    decides them, with an undo as well;
//! 3. it records the store changes (`Txn::record`);
//! 4. `Txn::finish` commits them in one store transaction, but only after
//!    claiming the commit from the deadline ([`CallDeadline::claim_commit`]),
//!    then publishes them to memory (networks, endpoints, and what IPAM gives
//!    back). On any error, or when the call is past its deadline, it runs the
//!    teardown list instead and commits nothing.
//!
//! Nothing is given back to anyone (a released pool or address, a deleted
//! record) before the commit; anything taken before it has an undo.
//!
//! Commits are grouped: `finish` commits without waiting for the disk
//! (`Store::commit_grouped`), publishes, releases the state lock and answers
//! once the commit is on disk. The call that leaves the state lock with no
//! other call in line for it puts every grouped commit on disk, in one fsync
//! (so does any call once [`GROUP_COMMIT_MAX`] are waiting), while still
//! holding the lock: a burst of N calls (a bulk `docker rm -f`) makes one
//! fsync, not N, and holds the lock for one. No call is answered before its
//! commit, and every commit it read, is on disk. A write that fails leaves
//! the store refusing every later commit (see `state`): the changes not on
//! disk are lost as in a crash, and their calls are told so.
//!
//! A link the committed state no longer needs (Leave's and DeleteEndpoint's
//! veth pair) is deleted after the commit, once the state lock is released
//! (`Txn::delete_after_commit`): the kernel takes ~20 ms per veth deletion,
//! and holding the lock meanwhile queued every other call behind it (a bulk
//! `docker rm -f` of 100 containers: Leave's p99 1.1 s). The link is deleted
//! by its index, so a link of the same name made meanwhile is not touched.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::MutexGuard;

use super::ports::published;
use super::{Plugin, PluginError, Result, State, firewall_network, firewall_settings};
use crate::dataplane::{BridgeSpec, DataPlane, VxlanSpec};
use crate::deadline::CallDeadline;
use crate::firewall::{FirewallError, FwChange, FwNetwork, FwPort, port_difference};
use crate::state::{Change, EndpointRecord, NetworkRecord};

/// A burst shares one fsync, but no call waits behind more than this many
/// other calls' commits.
const GROUP_COMMIT_MAX: u64 = 32;
/// A commit still not on disk after this long is flushed by its own call
/// (the call that was to flush it went away without reaching the lock).
const GROUP_COMMIT_PATIENCE: Duration = Duration::from_millis(200);

/// One undo step may take this long (its own requests are bounded too); the
/// state lock is held meanwhile, and later calls' waits count against their deadlines.
const UNDO_STEP_LIMIT: Duration = Duration::from_secs(10);

/// How to take back one step of a call that does not commit.
#[derive(Debug, Clone)]
pub enum Undo {
    /// A link the call created (a bridge, a veth pair).
    DeleteLink(String),
    /// Gateway addresses the call put on a bridge it did not create.
    RemoveBridgeAddresses { bridge: String, addresses: Vec<IpNet> },
    /// A bridge the call removed (or took its addresses from).
    EnsureBridge(BridgeSpec),
    /// A VXLAN device the call removed (the membership task refills its entries).
    EnsureVxlan(VxlanSpec),
    /// A kernel step that cannot be taken back (a veth pair deleted): the
    /// record must say so even though the call fails. Committed by the undo.
    Record(Box<Change>),
    /// Rules written for the call's changes: their inverse, in undo order;
    /// None while the write has not finished (it may be half done, or not
    /// begun): then the committed state's rules are written back in full.
    Firewall(Option<Vec<FwChange>>),
    /// An address taken in memory, and the pool's cursor before.
    ReleaseAddress { pool: String, addr: IpAddr, cursor_before: Option<IpAddr> },
    /// A pool taken in memory.
    ReleasePool(String),
}

pub struct Txn<'a> {
    plugin: &'a Plugin,
    state: MutexGuard<'a, State>,
    deadline: CallDeadline,
    teardown: Vec<Undo>,
    changes: Vec<Change>,
    /// Links (index, name) deleted once committed, after the lock is released.
    deletions: Vec<(u32, String)>,
    /// Commit without waiting for the disk (see [`Txn::relax_durability`]).
    relaxed: bool,
    /// How many of `changes` the firewall was given (see [`Txn::sync_firewall`]).
    firewall_sent: usize,
}

impl Plugin {
    /// Starts a transaction for the current call (see [`CallDeadline::current`]).
    pub async fn begin(&self) -> Result<Txn<'_>> {
        let deadline = CallDeadline::current();
        self.in_line.fetch_add(1, Ordering::SeqCst);
        let state = match deadline.until_commit() {
            None => Ok(self.state.lock().await),
            Some(left) => tokio::time::timeout(left, self.state.lock()).await.map_err(|_| {
                PluginError::new(format!(
                    "another call held the state lock until this call's deadline ({} ms waited); nothing was changed",
                    left.as_millis()
                ))
            }),
        };
        self.in_line.fetch_sub(1, Ordering::SeqCst);
        let state = state?;
        let txn = Txn {
            plugin: self,
            state,
            deadline,
            teardown: vec![],
            changes: vec![],
            deletions: vec![],
            relaxed: false,
            firewall_sent: 0,
        };
        txn.check("starting")?;
        Ok(txn)
    }
}

impl Txn<'_> {
    pub fn state(&self) -> &State {
        &self.state
    }

    /// For IPAM decisions, which take in memory at once (each with an undo).
    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// Refuses to start `step` once the call can no longer commit in time.
    fn check(&self, step: &str) -> Result<()> {
        match self.deadline.expired() {
            Some(why) => Err(PluginError::new(format!("stopped before {step}: {why}; nothing was changed"))),
            None => Ok(()),
        }
    }

    /// One kernel step (each is bounded by its own request timeouts).
    /// Register its undo with [`Txn::on_undo`] once it succeeded.
    pub async fn kernel<T, E>(&self, step: &str, work: impl Future<Output = std::result::Result<T, E>>) -> Result<T>
    where
        PluginError: From<E>,
    {
        self.check(step)?;
        Ok(work.await?)
    }

    pub fn on_undo(&mut self, undo: Undo) {
        self.teardown.push(undo);
    }

    /// Deletes the link with this index once the call committed, after the
    /// state lock is released; a call that does not commit leaves it. Only
    /// for a link no record needs any more once the call's changes are
    /// committed: if the deletion fails, it is a leftover the reconciler
    /// removes (it carries the owner mark and no record knows it).
    pub fn delete_after_commit(&mut self, index: u32, name: String) {
        self.deletions.push((index, name));
    }

    /// Commits this call's changes without waiting for the disk
    /// (`Store::commit_relaxed`). Only for changes whose loss in a crash the
    /// start-up pass recovers from the kernel.
    pub fn relax_durability(&mut self) {
        self.relaxed = true;
    }

    /// A store change, committed by `finish` with all the others.
    pub fn record(&mut self, change: Change) {
        self.changes.push(change);
    }

    /// Writes this call's changes to the firewall (record them first): the
    /// ports an endpoint gains or loses, a network's settings, a network
    /// made or removed; never a network's whole port list, so the work does
    /// not grow with the other networks or the ports already published.
    /// Bounded by the time left before the commit point. A finished write is
    /// undone by the inverse changes; one that fails or is cut off (possibly
    /// half done, or not begun) by writing the committed state back in full.
    pub async fn sync_firewall(&mut self) -> Result<()> {
        self.check("writing firewall rules")?;
        let (changes, back) = self.firewall_changes();
        self.firewall_sent = self.changes.len();
        if changes.is_empty() {
            return Ok(());
        }
        self.teardown.push(Undo::Firewall(None));
        let undo_at = self.teardown.len() - 1;
        let firewall = &self.plugin.firewall;
        let write = async {
            if !firewall.apply(&changes).await? {
                firewall.sync(&self.firewall_after()).await?;
            }
            Ok::<(), FirewallError>(())
        };
        match self.deadline.until_commit() {
            None => write.await?,
            Some(left) => tokio::time::timeout(left, write).await.map_err(|_| {
                PluginError::new(format!(
                    "firewall rules not written within the call's deadline ({} ms left)",
                    left.as_millis()
                ))
            })??,
        }
        self.teardown[undo_at] = Undo::Firewall(Some(back));
        Ok(())
    }

    /// The firewall changes of the store changes recorded since the last
    /// write, and their inverse (in the order that undoes them). Each store
    /// change is compared with the record as the state and the earlier
    /// changes leave it: O(the changed records), not O(the state), except
    /// for a network removed or moved to another bridge, whose undo (or new
    /// bridge) needs all its endpoints' ports.
    fn firewall_changes(&self) -> (Vec<FwChange>, Vec<FwChange>) {
        let mut view = View { state: &self.state, networks: HashMap::new(), endpoints: HashMap::new() };
        for change in &self.changes[..self.firewall_sent] {
            view.record(change);
        }
        let (mut forward, mut back) = (Vec::new(), Vec::new());
        for change in &self.changes[self.firewall_sent..] {
            match change {
                Change::PutNetwork(r) => view.network_changes(&r.id, Some(r), &mut forward, &mut back),
                Change::DeleteNetwork(id) => view.network_changes(id, None, &mut forward, &mut back),
                Change::PutEndpoint(r) => view.port_changes(&r.id, Some(r), &mut forward, &mut back),
                Change::DeleteEndpoint(id) => view.port_changes(id, None, &mut forward, &mut back),
                _ => {}
            }
            view.record(change);
        }
        back.reverse();
        (forward, back)
    }

    /// The firewall's view of the whole state with this call's changes
    /// applied: for a firewall that does not know what the kernel holds.
    fn firewall_after(&self) -> Vec<FwNetwork> {
        let mut networks = self.state.networks.clone();
        let mut endpoints = self.state.endpoints.clone();
        for change in &self.changes {
            match change {
                Change::PutNetwork(r) => {
                    networks.insert(r.id.clone(), r.clone());
                }
                Change::DeleteNetwork(id) => {
                    networks.remove(id);
                }
                Change::PutEndpoint(r) => {
                    endpoints.insert(r.id.clone(), r.clone());
                }
                Change::DeleteEndpoint(id) => {
                    endpoints.remove(id);
                }
                _ => {}
            }
        }
        networks.values().map(|n| firewall_network(n, endpoints.values())).collect()
    }

    /// Ends the call: commits and publishes its changes when `outcome` is
    /// Ok and the deadline still allows it; otherwise undoes everything.
    pub async fn finish<T>(mut self, outcome: Result<T>) -> Result<T> {
        let value = match outcome {
            Ok(value) => value,
            Err(e) => return Err(self.undo(e).await),
        };
        if self.changes.is_empty() && self.teardown.is_empty() && self.deletions.is_empty() {
            // Nothing to commit: a read, or a repeat of a finished call,
            // answered once what it read is on disk.
            let (plugin, read) = (self.plugin, self.plugin.store.last_grouped());
            drop(self);
            plugin.wait_durable(read).await?;
            return Ok(value);
        }
        if !self.deadline.claim_commit() {
            let why = self.deadline.expired().unwrap_or_else(|| "the server gave up on the call".into());
            return Err(self.undo(PluginError::new(format!("not committed: {why}"))).await);
        }
        let changes = std::mem::take(&mut self.changes);
        let store = &self.plugin.store;
        // A relaxed commit is answered once the grouped commits it read are on
        // disk; with no call in line, this one's commit is the durable one
        // (one transaction, not a grouped one and a flush).
        let committed = if self.relaxed {
            store.commit_relaxed(changes.clone()).map(|()| store.last_grouped())
        } else if self.plugin.in_line.load(Ordering::SeqCst) == 0 {
            store.commit(changes.clone()).map(|()| store.last_grouped())
        } else {
            store.commit_grouped(changes.clone())
        };
        let seq = match committed {
            Ok(seq) => seq,
            Err(e) => return Err(self.undo(e.into()).await),
        };
        publish(&mut self.state, changes);
        let deletions = std::mem::take(&mut self.deletions);
        let (plugin, dataplane, deadline) = (self.plugin, self.plugin.dataplane.clone(), self.deadline.clone());
        drop(self); // releases the state lock, flushing if no call is in line
        plugin.wait_durable(seq).await?;
        delete_released(dataplane, deletions, &deadline).await;
        Ok(value)
    }

    /// Runs the teardown list in reverse; returns `error` with what could not be undone.
    async fn undo(&mut self, error: PluginError) -> PluginError {
        let mut failed = Vec::new();
        let mut records = Vec::new();
        while let Some(step) = self.teardown.pop() {
            if let Undo::Record(change) = step {
                let change = *change;
                records.push(change);
                continue;
            }
            let what = format!("{step:?}");
            match tokio::time::timeout(UNDO_STEP_LIMIT, self.undo_step(step)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed.push(format!("{what}: {e}")),
                Err(_) => failed.push(format!("{what}: no answer within {}s", UNDO_STEP_LIMIT.as_secs())),
            }
        }
        if !records.is_empty() {
            match self.plugin.store.commit(records.clone()) {
                Ok(()) => publish(&mut self.state, records),
                Err(e) => failed.push(format!("record what cannot be undone: {e}")),
            }
        }
        if failed.is_empty() {
            error
        } else {
            PluginError::new(format!("{error}; undo incomplete (the reconciler retries): {}", failed.join("; ")))
        }
    }

    async fn undo_step(&mut self, step: Undo) -> Result<()> {
        let plugin = self.plugin;
        match step {
            Undo::DeleteLink(name) => plugin.dataplane.delete_link(&name).await?,
            Undo::RemoveBridgeAddresses { bridge, addresses } => {
                plugin.dataplane.remove_bridge_addresses(&bridge, &addresses).await?
            }
            Undo::EnsureBridge(spec) => drop(plugin.dataplane.ensure_bridge(&spec).await?),
            Undo::EnsureVxlan(spec) => plugin.dataplane.ensure_vxlan(&spec).await?,
            Undo::Record(_) => {} // committed together after the kernel steps
            Undo::Firewall(back) => {
                let undone = match back {
                    Some(back) => plugin.firewall.apply(&back).await?,
                    None => false,
                };
                if !undone {
                    plugin.firewall.sync(&self.state.firewall_networks()).await?
                }
            }
            Undo::ReleaseAddress { pool, addr, cursor_before } => {
                let ipam = &mut self.state.ipam;
                ipam.release_address(&pool, addr)?;
                if let Some(cursor) = cursor_before {
                    ipam.restore_cursor(&pool, cursor)?;
                }
            }
            Undo::ReleasePool(id) => drop(self.state.ipam.release_pool(&id)?),
        }
        Ok(())
    }
}

impl Drop for Txn<'_> {
    /// Still under the state lock: the last call in line puts the grouped
    /// commits on disk (a failure reaches their calls through the store).
    fn drop(&mut self) {
        let store = &self.plugin.store;
        let pending = store.grouped_pending();
        if pending > 0 && (self.plugin.in_line.load(Ordering::SeqCst) == 0 || pending >= GROUP_COMMIT_MAX) {
            let _ = store.flush();
        }
    }
}

impl Plugin {
    /// Waits until grouped commit `seq` (and every one before) is on disk.
    async fn wait_durable(&self, seq: u64) -> Result<()> {
        self.store.wait_durable(seq, GROUP_COMMIT_PATIENCE).await.map_err(|e| {
            PluginError::new(format!(
                "{e}; this call's change is lost (the kernel is repaired at the next start), and the plugin commits nothing more until it restarts"
            ))
        })
    }
}

/// Deletes links the committed state released, in a task of their own so
/// that a deletion still running when the answer is due finishes after it.
/// Waits no longer than the answer allows. A failed deletion leaves a
/// leftover with this state's owner mark that no record knows: the
/// reconciler removes it.
async fn delete_released(dataplane: Arc<dyn DataPlane>, links: Vec<(u32, String)>, deadline: &CallDeadline) {
    if links.is_empty() {
        return;
    }
    let work = tokio::spawn(async move {
        for (index, name) in links {
            let _ = dataplane.delete_link_index(index, &name).await;
        }
    });
    match deadline.until_answer() {
        None => {
            let _ = work.await;
        }
        Some(left) => {
            let _ = tokio::time::timeout(left, work).await;
        }
    }
}

/// The state as a call's changes so far leave it (only the records they
/// touch are looked up in the overlay; everything else is the state's).
struct View<'a> {
    state: &'a State,
    networks: HashMap<&'a str, Option<&'a NetworkRecord>>,
    endpoints: HashMap<&'a str, Option<&'a EndpointRecord>>,
}

impl<'a> View<'a> {
    fn record(&mut self, change: &'a Change) {
        match change {
            Change::PutNetwork(r) => drop(self.networks.insert(&r.id, Some(r))),
            Change::DeleteNetwork(id) => drop(self.networks.insert(id, None)),
            Change::PutEndpoint(r) => drop(self.endpoints.insert(&r.id, Some(r))),
            Change::DeleteEndpoint(id) => drop(self.endpoints.insert(id, None)),
            _ => {}
        }
    }

    fn network(&self, id: &str) -> Option<&'a NetworkRecord> {
        self.networks.get(id).copied().unwrap_or_else(|| self.state.networks.get(id))
    }

    fn endpoint(&self, id: &str) -> Option<&'a EndpointRecord> {
        self.endpoints.get(id).copied().unwrap_or_else(|| self.state.endpoints.get(id))
    }

    /// Every port the network's endpoints publish (a scan of the endpoints:
    /// only for a network removed or moved to another bridge).
    fn network_ports(&self, id: &str) -> Vec<FwPort> {
        let overlaid = self.endpoints.values().flatten().copied();
        let unchanged = self.state.endpoints.values().filter(|e| !self.endpoints.contains_key(e.id.as_str()));
        overlaid.chain(unchanged).filter(|e| e.network_id == id).flat_map(|e| e.published.iter().cloned()).collect()
    }

    /// A network made, changed (settings or bridge) or removed.
    fn network_changes(
        &self,
        id: &str,
        after: Option<&NetworkRecord>,
        forward: &mut Vec<FwChange>,
        back: &mut Vec<FwChange>,
    ) {
        let before = self.network(id);
        let network = |bridge: &str, n: Option<&NetworkRecord>| FwChange::Network {
            bridge: bridge.to_string(),
            after: n.map(firewall_settings),
        };
        if let (Some(b), Some(a)) = (before, after)
            && b.bridge == a.bridge
        {
            if firewall_settings(b) != firewall_settings(a) {
                forward.push(network(&a.bridge, Some(a)));
                back.push(network(&b.bridge, Some(b)));
            }
            return;
        }
        // Gone, new, or on another bridge: its ports go with the old bridge and come with the new one.
        let ports = before.map(|_| self.network_ports(id)).unwrap_or_default();
        let with_ports = |bridge: &str, ports: &[FwPort]| FwChange::Ports {
            bridge: bridge.to_string(),
            added: ports.to_vec(),
            removed: vec![],
        };
        if let Some(b) = before {
            forward.push(network(&b.bridge, None));
            if !ports.is_empty() {
                back.push(with_ports(&b.bridge, &ports));
            }
            back.push(network(&b.bridge, Some(b)));
        }
        if let Some(a) = after {
            forward.push(network(&a.bridge, Some(a)));
            if !ports.is_empty() {
                forward.push(with_ports(&a.bridge, &ports));
            }
            back.push(network(&a.bridge, None));
        }
    }

    /// The ports an endpoint gains and loses (it has no other firewall state).
    fn port_changes(
        &self,
        id: &str,
        after: Option<&EndpointRecord>,
        forward: &mut Vec<FwChange>,
        back: &mut Vec<FwChange>,
    ) {
        let before = self.endpoint(id);
        let bridge_of = |e: Option<&EndpointRecord>| e.and_then(|e| self.network(&e.network_id)).map(|n| &n.bridge);
        let (old, new) = (bridge_of(before), bridge_of(after));
        let mut push = |bridge: &String, added: Vec<&FwPort>, removed: Vec<&FwPort>| {
            if added.is_empty() && removed.is_empty() {
                return;
            }
            let owned = |ports: Vec<&FwPort>| -> Vec<FwPort> { ports.into_iter().cloned().collect() };
            let (added, removed) = (owned(added), owned(removed));
            back.push(FwChange::Ports { bridge: bridge.clone(), added: removed.clone(), removed: added.clone() });
            forward.push(FwChange::Ports { bridge: bridge.clone(), added, removed });
        };
        if let Some(bridge) = old
            && old == new
        {
            let (removed, added) = port_difference(published(before), published(after));
            push(bridge, added, removed);
            return;
        }
        if let Some(bridge) = old {
            push(bridge, vec![], published(before).iter().collect());
        }
        if let Some(bridge) = new {
            push(bridge, after.map_or(vec![], |e| e.published.iter().collect()), vec![]);
        }
    }
}

/// Makes memory match a committed transaction. Pools and addresses were
/// taken in memory when decided; what is given back is given back here.
fn publish(state: &mut State, changes: Vec<Change>) {
    for change in changes {
        match change {
            Change::PutNetwork(r) => {
                state.networks.insert(r.id.clone(), r);
            }
            Change::DeleteNetwork(id) => {
                state.networks.remove(&id);
            }
            Change::PutEndpoint(r) => state.put_endpoint(r),
            Change::DeleteEndpoint(id) => drop(state.remove_endpoint(&id)),
            Change::DeletePool(id) => {
                let _ = state.ipam.release_pool(&id);
            }
            Change::DeleteAddress(pool, addr) => {
                let _ = state.ipam.release_address(&pool, addr);
            }
            Change::PutPool(_) | Change::PutAddress(..) | Change::PutCursor(..) | Change::DeletePoolAddresses(_) => {}
        }
    }
}
