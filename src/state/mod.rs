//! Persisted state: one embedded, crash-safe redb database with its own,
//! versioned record format.
//!
//! Every protocol call that changes something commits exactly one write
//! transaction, so a kill -9 at any instant leaves either the state before the
//! call or the state after it. The kernel (bridges, veths, rules) is derived
//! from these records, never the other way round.
//!
//! The types below are the plugin's in-memory model; what is on disk is
//! `schema.rs` (schema version [`SCHEMA_VERSION`]), converted field by field.
//! `open.rs` decides whether a file may be used at all: an emptied, unreadable,
//! foreign or newer-schema file is refused with the way to recover, never
//! replaced by a fresh database; older schemas are migrated (`migrate.rs`).

#[macro_use]
mod fields;
mod migrate;
mod open;
mod schema;
mod v0;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;

use crate::api::{PortBinding, TransportPort};
use crate::firewall::FwPort;
use crate::ipam::PoolRecord;
use crate::options::NetworkOptions;

pub use open::{DB_FILE, LAST_GOOD_FILE};
pub use schema::SCHEMA_VERSION;
use schema::{ADDRESSES, CURSORS, ENDPOINTS, NETWORKS, POOLS, address_key, encode, parse_address_key};

#[derive(Debug, Clone, PartialEq)]
pub struct SubnetRecord {
    pub pool: IpNet,
    /// Gateway address with the pool's prefix length; None for isolated gateways.
    pub gateway: Option<IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRecord {
    pub id: String,
    pub bridge: String,
    /// False when the bridge already existed (`-o bridge=`): it is adopted and left in place.
    pub bridge_created: bool,
    pub options: NetworkOptions,
    pub ipv4: Vec<SubnetRecord>,
    pub ipv6: Vec<SubnetRecord>,
    /// Addresses the plugin itself added to an adopted bridge (those that were
    /// there before stay when the network goes). Empty for records written
    /// before this was kept: then nothing is removed from an adopted bridge.
    pub added_addresses: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRecord {
    pub id: String,
    pub network_id: String,
    pub address: Option<IpNet>,
    pub address_v6: Option<IpNet>,
    pub mac: String,
    /// Host end of the veth pair (stays on the bridge).
    pub host_veth: String,
    /// Peer end, handed to dockerd at Join and moved into the container.
    pub container_veth: String,
    pub joined: bool,
    pub port_bindings: Vec<PortBinding>,
    pub exposed_ports: Vec<TransportPort>,
    /// Resolved published ports (host side chosen), present while programmed.
    pub published: Vec<FwPort>,
    /// Endpoint driver options (`--driver-opt`, Docker 28) other than dockerd's own keys.
    pub driver_options: BTreeMap<String, serde_json::Value>,
}

/// One change inside a transaction.
#[derive(Debug, Clone)]
pub enum Change {
    PutNetwork(NetworkRecord),
    DeleteNetwork(String),
    PutEndpoint(EndpointRecord),
    DeleteEndpoint(String),
    PutPool(PoolRecord),
    DeletePool(String),
    PutAddress(String, IpAddr),
    DeleteAddress(String, IpAddr),
    /// Every address of a pool (ReleasePool).
    DeletePoolAddresses(String),
    PutCursor(String, IpAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("state store record {table}/{key}: {message}")]
    Corrupt { table: &'static str, key: String, message: String },
    /// The file cannot be used; nothing was changed. `remedy` tells the operator what to do.
    #[error(
        "state database {path} {problem}; rustbridge will not use it and changed nothing (no network, bridge, veth or rule touched). To recover: {remedy}"
    )]
    Refused { path: PathBuf, problem: String, remedy: String },
}

/// Everything on disk, as loaded at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub networks: Vec<NetworkRecord>,
    pub endpoints: Vec<EndpointRecord>,
    pub pools: Vec<PoolRecord>,
    pub addresses: Vec<(String, IpAddr)>,
    pub cursors: Vec<(String, IpAddr)>,
}

pub struct Store {
    db: Database,
    path: PathBuf,
    instance_id: String,
    /// A non-durable commit is not on disk yet (see [`Store::commit_relaxed`]).
    unflushed: std::sync::atomic::AtomicBool,
    /// Durable commits (each one waits for the disk), for tests and measurements.
    durable_commits: std::sync::atomic::AtomicU64,
    /// The last sequence number given to a grouped commit (see [`Store::commit_grouped`]).
    grouped: std::sync::atomic::AtomicU64,
    /// Up to which sequence number grouped commits are on disk, or why they
    /// never will be (a failed write: the store refuses every later commit).
    durable: tokio::sync::watch::Sender<Durable>,
}

/// How far grouped commits are on disk.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    pub seq: u64,
    pub failed: Option<String>,
}

impl Drop for Store {
    /// A graceful stop persists what relaxed commits left in memory (a
    /// crash loses it: see [`Store::commit_relaxed`]).
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl Store {
    fn new(db: Database, path: PathBuf, instance_id: String) -> Store {
        Store {
            db,
            path,
            instance_id,
            unflushed: Default::default(),
            durable_commits: Default::default(),
            grouped: Default::default(),
            durable: tokio::sync::watch::Sender::new(Durable::default()),
        }
    }

    fn db_error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db { path: self.path.clone(), message: e.to_string() }
    }

    /// A random ID made when the database is created and kept with it (in
    /// `meta`, and in its last good copy). Kernel objects the plugin creates
    /// carry it, so a start with another (or a new) database never takes them
    /// for its own.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Applies all changes in one durable transaction, or none of them
    /// (with any relaxed commit before it).
    pub fn commit(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        self.write(changes, Durability::Immediate)
    }

    /// Applies all changes in one transaction, or none of them, without
    /// waiting for the disk: visible at once, on disk with the next durable
    /// commit or [`Store::flush`] (the periodic reconcile pass and a graceful
    /// stop flush), lost in a crash before that. Only for changes whose loss
    /// the start-up pass recovers from the kernel (Join's "joined": see
    /// `reconcile.rs`).
    pub fn commit_relaxed(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        self.write(changes, Durability::None)?;
        self.unflushed.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Applies all changes in one transaction, or none of them, without
    /// waiting for the disk, and returns its sequence number: the caller
    /// answers only once [`Store::wait_durable`] says it is on disk. Several
    /// calls' commits then share one flush (group commit: one fsync for a
    /// burst of calls instead of one each). Until then the changes are
    /// visible but not durable, so nobody may be told of them; a crash loses
    /// them all, and none was answered.
    pub fn commit_grouped(&self, changes: Vec<Change>) -> Result<u64, StoreError> {
        self.refuse_after_failure()?;
        self.write(changes, Durability::None)?;
        let seq = self.grouped.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.unflushed.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(seq)
    }

    /// The sequence number of the last grouped commit: a call that read the
    /// state answers once this is durable (it may have read those changes).
    pub fn last_grouped(&self) -> u64 {
        self.grouped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Grouped commits not on disk yet.
    pub fn grouped_pending(&self) -> u64 {
        self.last_grouped().saturating_sub(self.durable.borrow().seq)
    }

    /// Waits until grouped commit `seq` is on disk. Flushes itself when
    /// nobody did within `patience` (the one expected to flush went away).
    pub async fn wait_durable(&self, seq: u64, patience: std::time::Duration) -> Result<(), StoreError> {
        let mut durable = self.durable.subscribe();
        let reached = |d: &Durable| d.seq >= seq || d.failed.is_some();
        // A flush running elsewhere covers it when it ends (the loop waits again).
        while tokio::time::timeout(patience, durable.wait_for(reached)).await.is_err() {
            self.flush()?;
        }
        let now = self.durable.borrow().clone();
        match now.failed {
            Some(message) if now.seq < seq => Err(self.db_error(message)),
            _ => Ok(()),
        }
    }

    fn refuse_after_failure(&self) -> Result<(), StoreError> {
        match &self.durable.borrow().failed {
            Some(message) => Err(self.db_error(format!(
                "an earlier write to disk failed ({message}); nothing more is committed until the plugin restarts"
            ))),
            None => Ok(()),
        }
    }

    /// After a durable write that began when grouped commits up to `covered`
    /// were made: they are on disk, or, when it failed, none not on disk yet
    /// will ever be (their calls were not answered, and are told it).
    fn mark_durable(&self, covered: u64, outcome: Result<(), &StoreError>) {
        self.durable.send_if_modified(|d| match outcome {
            Ok(()) if covered > d.seq => {
                d.seq = covered;
                true
            }
            Err(e) if covered > d.seq && d.failed.is_none() => {
                d.failed = Some(e.to_string());
                true
            }
            _ => false,
        });
    }

    /// How many commits waited for the disk so far.
    pub fn durable_commits(&self) -> u64 {
        self.durable_commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Puts relaxed commits on disk (an empty durable commit); nothing when there are none.
    pub fn flush(&self) -> Result<(), StoreError> {
        if !self.unflushed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.refuse_after_failure()?;
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        // No other write runs while this one is open: every grouped commit
        // numbered so far is in it.
        let covered = self.last_grouped();
        self.durable_commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = txn.commit().map_err(|e| {
            self.unflushed.store(true, std::sync::atomic::Ordering::SeqCst);
            self.db_error(e)
        });
        self.mark_durable(covered, outcome.as_ref().map(drop));
        outcome
    }

    fn write(&self, changes: Vec<Change>, durability: Durability) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.refuse_after_failure()?;
        let mut txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        let covered = self.last_grouped();
        txn.set_durability(durability).map_err(|e| self.db_error(e))?;
        if matches!(durability, Durability::Immediate) {
            self.durable_commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        {
            let mut networks = txn.open_table(NETWORKS).map_err(|e| self.db_error(e))?;
            let mut endpoints = txn.open_table(ENDPOINTS).map_err(|e| self.db_error(e))?;
            let mut pools = txn.open_table(POOLS).map_err(|e| self.db_error(e))?;
            let mut addresses = txn.open_table(ADDRESSES).map_err(|e| self.db_error(e))?;
            let mut cursors = txn.open_table(CURSORS).map_err(|e| self.db_error(e))?;
            for change in changes {
                let result = match change {
                    Change::PutNetwork(r) => {
                        networks.insert(r.id.as_str(), encode(&schema::Network::from(&r)).as_slice()).map(drop)
                    }
                    Change::DeleteNetwork(id) => networks.remove(id.as_str()).map(drop),
                    Change::PutEndpoint(r) => {
                        endpoints.insert(r.id.as_str(), encode(&schema::Endpoint::from(&r)).as_slice()).map(drop)
                    }
                    Change::DeleteEndpoint(id) => endpoints.remove(id.as_str()).map(drop),
                    Change::PutPool(r) => {
                        pools.insert(r.id.as_str(), encode(&schema::Pool::from(&r)).as_slice()).map(drop)
                    }
                    Change::DeletePool(id) => {
                        pools.remove(id.as_str()).map(drop).and_then(|_| cursors.remove(id.as_str()).map(drop))
                    }
                    Change::PutCursor(pool, addr) => cursors.insert(pool.as_str(), addr.to_string().as_str()).map(drop),
                    Change::PutAddress(pool, addr) => {
                        addresses.insert(address_key(&pool, addr).as_str(), [].as_slice()).map(drop)
                    }
                    Change::DeleteAddress(pool, addr) => addresses.remove(address_key(&pool, addr).as_str()).map(drop),
                    Change::DeletePoolAddresses(pool) => {
                        // Keys "<pool>\n<address>" sort together; '\u{b}' is the byte after '\n'.
                        let (start, end) = (format!("{pool}\n"), format!("{pool}\u{b}"));
                        addresses.retain_in(start.as_str()..end.as_str(), |_, _| false)
                    }
                };
                result.map_err(|e| self.db_error(e))?;
            }
        }
        let outcome = txn.commit().map_err(|e| self.db_error(e));
        if matches!(durability, Durability::Immediate) {
            // A durable commit puts every grouped commit before it on disk too.
            self.mark_durable(covered, outcome.as_ref().map(drop));
        }
        outcome
    }

    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let mut snapshot = Snapshot {
            networks: self.load_table::<schema::Network, _>(&txn, NETWORKS, "networks")?,
            endpoints: self.load_table::<schema::Endpoint, _>(&txn, ENDPOINTS, "endpoints")?,
            pools: self.load_table::<schema::Pool, _>(&txn, POOLS, "ipam_pools")?,
            ..Default::default()
        };
        let table = txn.open_table(ADDRESSES).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (key, _) = entry.map_err(|e| self.db_error(e))?;
            let key = key.value();
            match parse_address_key(key) {
                Some(pair) => snapshot.addresses.push(pair),
                None => {
                    return Err(StoreError::Corrupt {
                        table: "ipam_addresses",
                        key: key.to_string(),
                        message: "malformed key".into(),
                    });
                }
            }
        }
        let table = txn.open_table(CURSORS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (pool, addr) = entry.map_err(|e| self.db_error(e))?;
            let addr = addr.value().parse::<IpAddr>().map_err(|e| StoreError::Corrupt {
                table: "ipam_cursors",
                key: pool.value().to_string(),
                message: e.to_string(),
            })?;
            snapshot.cursors.push((pool.value().to_string(), addr));
        }
        Ok(snapshot)
    }

    /// Decodes every record of a table (stored type `R`) into its domain type `T`.
    fn load_table<R: DeserializeOwned, T: From<R>>(
        &self,
        txn: &redb::ReadTransaction,
        def: TableDefinition<&str, &[u8]>,
        name: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let table = txn.open_table(def).map_err(|e| self.db_error(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (key, value) = entry.map_err(|e| self.db_error(e))?;
            let record: R = serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt {
                table: name,
                key: key.value().to_string(),
                message: e.to_string(),
            })?;
            out.push(T::from(record));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
