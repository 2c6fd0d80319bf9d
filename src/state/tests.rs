use std::path::{Path, PathBuf};

use redb::{Database, TableDefinition};

use super::schema::{META, SCHEMA_VERSION_KEY};
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

/// A temporary directory removed when dropped (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "rustbridge-state-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join(DB_FILE)
    }

    fn last_good(&self) -> PathBuf {
        self.0.join(LAST_GOOD_FILE)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A database with one network and one address, closed again.
fn populated(dir: &TempDir) {
    let store = Store::open(&dir.0).unwrap();
    store
        .commit(vec![
            Change::PutNetwork(network("a")),
            Change::PutAddress("pool/1".into(), "10.0.0.2".parse().unwrap()),
        ])
        .unwrap();
}

fn schema_version_on_disk(path: &Path) -> String {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get(SCHEMA_VERSION_KEY).unwrap().unwrap().value().to_string()
}

/// Opening must be refused, name the file, say `problem`, and leave the file as it was.
fn assert_refused(dir: &TempDir, problem: &str) -> String {
    let before = std::fs::read(dir.db()).ok();
    let err = match Store::open(&dir.0) {
        Ok(_) => panic!("{} opened; expected a refusal ({problem})", dir.db().display()),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&dir.db().display().to_string()), "file not named: {message}");
    assert!(message.contains(problem), "expected {problem:?} in: {message}");
    assert!(message.contains("changed nothing"), "{message}");
    assert!(message.contains("To recover:"), "{message}");
    assert!(std::fs::read(dir.db()).ok() == before, "a refused file was changed");
    message
}

#[test]
fn records_survive_reopen_and_deletes_stick() {
    let dir = TempDir::new();
    {
        let store = Store::open(&dir.0).unwrap();
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
    let store = Store::open(&dir.0).unwrap();
    let snap = store.load().unwrap();
    assert_eq!(snap.networks, vec![network("b")]);
    assert_eq!(snap.addresses.len(), 2);
    assert!(snap.addresses.contains(&("pool/1".to_string(), "fd00::2".parse().unwrap())));
}

#[test]
fn a_fresh_database_records_the_schema_version() {
    let dir = TempDir::new();
    drop(Store::open(&dir.0).unwrap());
    assert_eq!(schema_version_on_disk(&dir.db()), SCHEMA_VERSION.to_string());
    assert!(!dir.0.join("rustbridge.redb.new").exists());
}

#[test]
fn a_database_left_half_created_is_built_again() {
    // A crash while creating leaves only the temporary file, never rustbridge.redb.
    let dir = TempDir::new();
    std::fs::write(dir.0.join("rustbridge.redb.new"), b"").unwrap();
    let store = Store::open(&dir.0).unwrap();
    assert!(store.load().unwrap().networks.is_empty());
    assert!(!dir.0.join("rustbridge.redb.new").exists());
}

#[test]
fn an_emptied_file_is_refused() {
    let dir = TempDir::new();
    std::fs::write(dir.db(), b"").unwrap();
    let message = assert_refused(&dir, "is empty (0 bytes)");
    assert!(message.contains(&format!("mv {}", dir.db().display())), "{message}");
    assert_eq!(std::fs::metadata(dir.db()).unwrap().len(), 0);
}

#[test]
fn an_emptied_file_points_at_the_last_good_copy() {
    let dir = TempDir::new();
    populated(&dir);
    drop(Store::open(&dir.0).unwrap()); // a clean start keeps a copy
    assert!(dir.last_good().exists());
    std::fs::write(dir.db(), b"").unwrap();
    let message = assert_refused(&dir, "is empty (0 bytes)");
    assert!(message.contains(&format!("cp {} {}", dir.last_good().display(), dir.db().display())), "{message}");
    // Following the advice brings the networks back.
    std::fs::copy(dir.last_good(), dir.db()).unwrap();
    assert_eq!(Store::open(&dir.0).unwrap().load().unwrap().networks, vec![network("a")]);
}

#[test]
fn a_truncated_file_is_refused() {
    let dir = TempDir::new();
    populated(&dir);
    let len = std::fs::metadata(dir.db()).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(dir.db()).unwrap().set_len(len / 2).unwrap();
    assert_refused(&dir, "cannot be read");
}

#[test]
fn a_garbage_file_is_refused() {
    let dir = TempDir::new();
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.db(), &garbage).unwrap();
    assert_refused(&dir, "cannot be read as a database");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = TempDir::new();
    populated(&dir);
    {
        let db = Database::open(dir.db()).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(SCHEMA_VERSION_KEY, (SCHEMA_VERSION + 1).to_string().as_str()).unwrap();
        txn.commit().unwrap();
    }
    let message =
        assert_refused(&dir, &format!("has schema version {}, newer than the {SCHEMA_VERSION}", SCHEMA_VERSION + 1));
    assert!(message.contains("written by a newer release"), "{message}");
    assert_eq!(schema_version_on_disk(&dir.db()), (SCHEMA_VERSION + 1).to_string());
}

#[test]
fn a_foreign_database_is_refused() {
    let dir = TempDir::new();
    {
        let db = Database::create(dir.db()).unwrap();
        let txn = db.begin_write().unwrap();
        let other: TableDefinition<&str, &str> = TableDefinition::new("something_else");
        txn.open_table(other).unwrap().insert("k", "v").unwrap();
        txn.commit().unwrap();
    }
    assert_refused(&dir, "is not a rustbridge state database");
}

#[test]
fn a_record_that_does_not_decode_is_refused() {
    let dir = TempDir::new();
    populated(&dir);
    {
        let db = Database::open(dir.db()).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(schema::NETWORKS).unwrap().insert("broken", br#"{"id":"broken"}"#.as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let message = assert_refused(&dir, "holds a record that cannot be read");
    assert!(message.contains("networks/broken"), "{message}");
}

#[test]
fn a_missing_file_with_a_last_good_copy_is_refused() {
    let dir = TempDir::new();
    populated(&dir);
    drop(Store::open(&dir.0).unwrap());
    std::fs::remove_file(dir.db()).unwrap();
    assert_refused(&dir, "is missing although a copy from an earlier start exists");
    assert!(!dir.db().exists(), "a fresh database was created over a removed one");
}

#[test]
fn the_last_good_copy_follows_clean_starts_only() {
    let dir = TempDir::new();
    populated(&dir);
    // The first open of a created file keeps it as the last good copy.
    drop(Store::open(&dir.0).unwrap());
    let kept = std::fs::read(dir.last_good()).unwrap();
    // A refused start leaves the copy alone.
    std::fs::write(dir.db(), b"not a database").unwrap();
    assert!(Store::open(&dir.0).is_err());
    assert_eq!(std::fs::read(dir.last_good()).unwrap(), kept);
    assert!(!dir.0.join("rustbridge.redb.last-good.tmp").exists());
}

/// Rows written by the unversioned release, including ones from before some
/// fields existed (they were defaulted then and must be now).
#[test]
fn schema_0_rows_are_migrated() {
    let dir = TempDir::new();
    {
        let db = Database::create(dir.db()).unwrap();
        let txn = db.begin_write().unwrap();
        let options = r#"{"bridge_name":null,"mtu":1500,"iface_prefix":"eth","enable_icc":true,"enable_ip_masquerade":true,"host_binding_ipv4":null,"host_ipv4":null,"host_ipv6":null,"inhibit_ipv4":false,"gateway_mode_ipv4":"nat","gateway_mode_ipv6":"routed","internal":false,"enable_ipv4":true,"enable_ipv6":false}"#;
        let net = format!(
            r#"{{"id":"n1","bridge":"rb-n1","bridge_created":true,"options":{options},"ipv4":[{{"pool":"10.9.0.0/24","gateway":"10.9.0.1/24"}}],"ipv6":[]}}"#
        );
        let ep = r#"{"id":"e1","network_id":"n1","address":"10.9.0.2/24","address_v6":null,"mac":"02:42:0a:09:00:02","host_veth":"rbh-e1","container_veth":"rbc-e1","port_bindings":[{"Proto":6,"Port":80,"HostPort":8080}],"published":[{"proto":"sctp","host_ip":null,"host_port":8080,"container_ip":"10.9.0.2","container_port":80}]}"#;
        let pool = r#"{"id":"rustbridge-local/10.9.0.0/24","address_space":"rustbridge-local","pool":"10.9.0.0/24","v6":false,"auto":true}"#;
        txn.open_table(schema::NETWORKS).unwrap().insert("n1", net.as_bytes()).unwrap();
        txn.open_table(schema::ENDPOINTS).unwrap().insert("e1", ep.as_bytes()).unwrap();
        txn.open_table(schema::POOLS).unwrap().insert("rustbridge-local/10.9.0.0/24", pool.as_bytes()).unwrap();
        txn.open_table(schema::ADDRESSES).unwrap();
        txn.open_table(schema::CURSORS).unwrap();
        txn.commit().unwrap();
    }
    let snap = Store::open(&dir.0).unwrap().load().unwrap();
    assert_eq!(schema_version_on_disk(&dir.db()), SCHEMA_VERSION.to_string());
    let n = &snap.networks[0];
    assert!(!n.options.mtu_explicit && n.options.trusted_host_interfaces.is_empty());
    assert_eq!(n.options.gateway_mode_ipv6, crate::options::GatewayMode::Routed);
    let e = &snap.endpoints[0];
    assert!(!e.joined && e.exposed_ports.is_empty() && e.driver_options.is_empty());
    assert_eq!(e.port_bindings, vec![PortBinding { proto: 6, port: 80, host_port: 8080, ..Default::default() }]);
    assert_eq!(e.published[0].proto, crate::firewall::Proto::Sctp);
    assert_eq!(snap.pools[0].sub_pool, None);
    assert!(snap.pools[0].auto);
    // The migrated file opens again as the current schema, with the same records.
    let again = Store::open(&dir.0).unwrap().load().unwrap();
    assert_eq!(again.networks, snap.networks);
    assert_eq!(again.endpoints, snap.endpoints);
}

#[test]
fn an_unversioned_file_whose_rows_do_not_decode_is_refused_unchanged() {
    let dir = TempDir::new();
    {
        let db = Database::create(dir.db()).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(schema::NETWORKS).unwrap().insert("n1", b"{\"id\":1}".as_slice()).unwrap();
        for t in [schema::ENDPOINTS, schema::POOLS, schema::ADDRESSES] {
            txn.open_table(t).unwrap();
        }
        txn.open_table(schema::CURSORS).unwrap();
        txn.commit().unwrap();
    }
    let message = assert_refused(&dir, "cannot be migrated");
    assert!(message.contains("networks/n1 (schema 0)"), "{message}");
}

#[test]
fn instance_id_is_kept_with_the_database_and_differs_between_databases() {
    let (a, b) = (TempDir::new(), TempDir::new());
    let first = Store::open(&a.0).unwrap().instance_id().to_string();
    assert_eq!(first.len(), 16);
    assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(Store::open(&a.0).unwrap().instance_id(), first, "reopening keeps the ID");
    assert_ne!(Store::open(&b.0).unwrap().instance_id(), first, "another database has another ID");
    // The last good copy is the same database: restoring it keeps the ID.
    std::fs::copy(a.last_good(), a.db()).unwrap();
    assert_eq!(Store::open(&a.0).unwrap().instance_id(), first);
}

#[test]
fn an_unversioned_database_gets_an_instance_id_its_copy_shares() {
    let dir = TempDir::new();
    unversioned_database(&dir, None);
    let id = Store::open(&dir.0).unwrap().instance_id().to_string();
    assert_eq!(id.len(), 16);
    assert_eq!(Store::open(&dir.0).unwrap().instance_id(), id);
    std::fs::copy(dir.last_good(), dir.db()).unwrap();
    assert_eq!(Store::open(&dir.0).unwrap().instance_id(), id);
}

/// d978c98 wrote an instance ID into `meta` before schema versions existed.
#[test]
fn an_unversioned_database_with_an_instance_id_keeps_it() {
    let dir = TempDir::new();
    unversioned_database(&dir, Some("0123456789abcdef"));
    assert_eq!(Store::open(&dir.0).unwrap().instance_id(), "0123456789abcdef");
    assert_eq!(schema_version_on_disk(&dir.db()), SCHEMA_VERSION.to_string());
}

/// An unversioned database (as written before schema versions) with empty
/// record tables, and an instance ID in `meta` when given (d978c98 wrote one).
fn unversioned_database(dir: &TempDir, instance_id: Option<&str>) {
    let db = Database::create(dir.db()).unwrap();
    let txn = db.begin_write().unwrap();
    for t in [schema::NETWORKS, schema::ENDPOINTS, schema::POOLS, schema::ADDRESSES] {
        txn.open_table(t).unwrap();
    }
    txn.open_table(schema::CURSORS).unwrap();
    if let Some(id) = instance_id {
        txn.open_table(META).unwrap().insert("instance_id", id).unwrap();
    }
    txn.commit().unwrap();
}

/// A grouped commit is on disk once a flush (or any durable commit) covers
/// it; its caller flushes it itself when nobody did within its patience.
#[tokio::test]
async fn a_grouped_commit_is_durable_after_a_flush_or_its_own_after_patience() {
    let dir = TempDir::new();
    let store = Store::open(&dir.0).unwrap();
    let first = store.commit_grouped(vec![Change::PutNetwork(network("a"))]).unwrap();
    let second = store.commit_grouped(vec![Change::PutNetwork(network("b"))]).unwrap();
    assert_eq!((store.grouped_pending(), second), (2, first + 1));
    let before = store.durable_commits();
    store.flush().unwrap();
    assert_eq!(store.grouped_pending(), 0);
    store.wait_durable(second, std::time::Duration::from_secs(60)).await.expect("covered by the flush");
    let third = store.commit_grouped(vec![Change::DeleteNetwork("a".into())]).unwrap();
    store.wait_durable(third, std::time::Duration::from_millis(10)).await.expect("flushed after patience");
    assert_eq!(store.durable_commits(), before + 2);
    drop(store);
    let ids: Vec<String> = Store::open(&dir.0).unwrap().load().unwrap().networks.into_iter().map(|n| n.id).collect();
    assert_eq!(ids, ["b"]);
}

/// A durable write that fails while grouped commits wait: none of them will
/// reach the disk, their callers are told, and nothing more is committed.
#[tokio::test]
async fn a_failed_flush_fails_the_waiting_commits_and_refuses_later_ones() {
    let dir = TempDir::new();
    let store = Store::open(&dir.0).unwrap();
    let seq = store.commit_grouped(vec![Change::PutNetwork(network("a"))]).unwrap();
    let failure = store.db_error("No space left on device (os error 28)");
    store.mark_durable(seq, Err(&failure));
    let told = store.wait_durable(seq, std::time::Duration::from_secs(60)).await.unwrap_err().to_string();
    assert!(told.contains("No space left"), "{told}");
    let refused = store.commit(vec![Change::PutNetwork(network("b"))]).unwrap_err().to_string();
    assert!(refused.contains("nothing more is committed until the plugin restarts"), "{refused}");
    assert!(store.commit_grouped(vec![Change::PutNetwork(network("c"))]).is_err());
    assert!(store.flush().is_err(), "a flush would put the failed calls' changes on disk");
}
