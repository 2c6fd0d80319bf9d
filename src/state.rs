//! Persisted state: one embedded, crash-safe redb database.
//!
//! Every protocol call that changes something commits exactly one write
//! transaction, so a kill -9 at any instant leaves either the state before the
//! call or the state after it. The kernel (bridges, veths, rules) is derived
//! from these records, never the other way round.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

use crate::api::{PortBinding, TransportPort};
use crate::firewall::FwPort;
use crate::ipam::PoolRecord;
use crate::options::NetworkOptions;

const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
const POOLS: TableDefinition<&str, &[u8]> = TableDefinition::new("ipam_pools");
/// Key: "<pool id>\n<address>", value empty.
const ADDRESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("ipam_addresses");
/// Key: pool id, value: the last address handed out automatically (next-fit cursor).
const CURSORS: TableDefinition<&str, &str> = TableDefinition::new("ipam_cursors");
/// Facts about the database itself; key "instance_id": see [`Store::instance_id`].
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const INSTANCE_ID_KEY: &str = "instance_id";

pub const DB_FILE: &str = "rustbridge.redb";

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SubnetRecord {
    pub pool: IpNet,
    /// Gateway address with the pool's prefix length; None for isolated gateways.
    pub gateway: Option<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
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
    #[serde(default)]
    pub added_addresses: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
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
    #[serde(default)]
    pub joined: bool,
    #[serde(default)]
    pub port_bindings: Vec<PortBinding>,
    #[serde(default)]
    pub exposed_ports: Vec<TransportPort>,
    /// Resolved published ports (host side chosen), present while programmed.
    #[serde(default)]
    pub published: Vec<FwPort>,
    /// Endpoint driver options (`--driver-opt`, Docker 28) other than dockerd's own keys.
    #[serde(default)]
    pub driver_options: std::collections::BTreeMap<String, serde_json::Value>,
}

/// One change inside a transaction.
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
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
        let err = |message: String| StoreError::Db { path: path.clone(), message };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("create directory: {e}")))?;
        let db = Database::create(&path).map_err(|e| err(e.to_string()))?;
        let mut store = Store { db, path, instance_id: String::new() };
        store.ensure_tables()?;
        store.instance_id = store.load_or_create_instance_id()?;
        Ok(store)
    }

    /// A random ID made when the database is created and kept with it. Kernel
    /// objects the plugin creates carry it, so a start with another (or a new)
    /// database never takes them for its own.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn load_or_create_instance_id(&self) -> Result<String, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        let id = {
            let mut meta = txn.open_table(META).map_err(|e| self.db_error(e))?;
            let existing = meta.get(INSTANCE_ID_KEY).map_err(|e| self.db_error(e))?.map(|v| v.value().to_string());
            match existing {
                Some(id) => id,
                None => {
                    let id = random_hex(8).map_err(|e| self.db_error(format!("make instance ID: {e}")))?;
                    meta.insert(INSTANCE_ID_KEY, id.as_str()).map_err(|e| self.db_error(e))?;
                    id
                }
            }
        };
        txn.commit().map_err(|e| self.db_error(e))?;
        Ok(id)
    }

    fn db_error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db { path: self.path.clone(), message: e.to_string() }
    }

    fn ensure_tables(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        for table in [NETWORKS, ENDPOINTS, POOLS, ADDRESSES] {
            txn.open_table(table).map_err(|e| self.db_error(e))?;
        }
        txn.open_table(CURSORS).map_err(|e| self.db_error(e))?;
        txn.commit().map_err(|e| self.db_error(e))
    }

    /// Applies all changes in one durable transaction, or none of them.
    pub fn commit(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        {
            let mut networks = txn.open_table(NETWORKS).map_err(|e| self.db_error(e))?;
            let mut endpoints = txn.open_table(ENDPOINTS).map_err(|e| self.db_error(e))?;
            let mut pools = txn.open_table(POOLS).map_err(|e| self.db_error(e))?;
            let mut addresses = txn.open_table(ADDRESSES).map_err(|e| self.db_error(e))?;
            let mut cursors = txn.open_table(CURSORS).map_err(|e| self.db_error(e))?;
            for change in changes {
                let result = match change {
                    Change::PutNetwork(r) => networks.insert(r.id.as_str(), encode(&r).as_slice()).map(drop),
                    Change::DeleteNetwork(id) => networks.remove(id.as_str()).map(drop),
                    Change::PutEndpoint(r) => endpoints.insert(r.id.as_str(), encode(&r).as_slice()).map(drop),
                    Change::DeleteEndpoint(id) => endpoints.remove(id.as_str()).map(drop),
                    Change::PutPool(r) => pools.insert(r.id.as_str(), encode(&r).as_slice()).map(drop),
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
        txn.commit().map_err(|e| self.db_error(e))
    }

    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let mut snapshot = Snapshot {
            networks: self.load_table(&txn, NETWORKS, "networks")?,
            endpoints: self.load_table(&txn, ENDPOINTS, "endpoints")?,
            pools: self.load_table(&txn, POOLS, "ipam_pools")?,
            ..Default::default()
        };
        let table = txn.open_table(ADDRESSES).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (key, _) = entry.map_err(|e| self.db_error(e))?;
            let key = key.value();
            let parsed = key
                .rsplit_once('\n')
                .and_then(|(pool, addr)| addr.parse::<IpAddr>().ok().map(|a| (pool.to_string(), a)));
            match parsed {
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

    fn load_table<T: DeserializeOwned>(
        &self,
        txn: &redb::ReadTransaction,
        def: TableDefinition<&str, &[u8]>,
        name: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let table = txn.open_table(def).map_err(|e| self.db_error(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (key, value) = entry.map_err(|e| self.db_error(e))?;
            let record = serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt {
                table: name,
                key: key.value().to_string(),
                message: e.to_string(),
            })?;
            out.push(record);
        }
        Ok(out)
    }
}

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records always serialize")
}

/// `bytes` random bytes from the kernel, as lowercase hex.
fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn address_key(pool: &str, addr: IpAddr) -> String {
    format!("{pool}\n{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(id: &str) -> NetworkRecord {
        NetworkRecord {
            id: id.into(),
            bridge: format!("rb-{id}"),
            bridge_created: true,
            options: NetworkOptions::default(),
            ipv4: vec![SubnetRecord {
                pool: "10.0.0.0/24".parse().unwrap(),
                gateway: Some("10.0.0.1/24".parse().unwrap()),
            }],
            ipv6: vec![],
            added_addresses: vec![],
        }
    }

    #[test]
    fn instance_id_is_kept_with_the_database_and_differs_between_databases() {
        let (a, b) = (tempdir(), tempdir());
        let first = Store::open(&a).unwrap().instance_id().to_string();
        assert_eq!(first.len(), 16);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(Store::open(&a).unwrap().instance_id(), first, "reopening keeps the ID");
        assert_ne!(Store::open(&b).unwrap().instance_id(), first, "another database has another ID");
        std::fs::remove_dir_all(a).unwrap();
        std::fs::remove_dir_all(b).unwrap();
    }

    #[test]
    fn network_records_without_added_addresses_load_as_none_added() {
        let mut value = serde_json::to_value(network("old")).unwrap();
        value.as_object_mut().unwrap().remove("added_addresses");
        let record: NetworkRecord = serde_json::from_value(value).unwrap();
        assert!(record.added_addresses.is_empty());
    }

    #[test]
    fn records_survive_reopen_and_deletes_stick() {
        let dir = tempdir();
        {
            let store = Store::open(&dir).unwrap();
            store
                .commit(vec![
                    Change::PutNetwork(network("a")),
                    Change::PutNetwork(network("b")),
                    Change::PutAddress("pool/1".into(), "10.0.0.2".parse().unwrap()),
                    Change::PutAddress("pool/1".into(), "fd00::2".parse().unwrap()),
                ])
                .unwrap();
            store.commit(vec![Change::DeleteNetwork("a".into())]).unwrap();
        }
        let store = Store::open(&dir).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.networks, vec![network("b")]);
        assert_eq!(snap.addresses.len(), 2);
        assert!(snap.addresses.contains(&("pool/1".to_string(), "fd00::2".parse().unwrap())));
        std::fs::remove_dir_all(dir).unwrap();
    }

    pub(crate) fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rustbridge-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
