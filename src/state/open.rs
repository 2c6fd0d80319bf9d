//! Opening the state database: which files may be used, which are refused,
//! and the copy of the last database that opened cleanly.
//!
//! - No file (and no last good copy): a fresh database is built under a
//!   temporary name and renamed into place once complete, so a crash while
//!   creating it never leaves an empty or half-made `rustbridge.redb` behind.
//! - An existing file is opened as it is, never recreated: an empty (0 byte),
//!   unreadable (truncated, garbage) or foreign file, one whose records do not
//!   decode, or one with a newer schema than this build knows, is refused with
//!   an error naming the file and the way to recover. Refusing changes nothing.
//! - An older schema is migrated in one transaction.
//! - Once a file has opened, migrated and decoded completely, the copy taken
//!   of it just before opening becomes `rustbridge.redb.last-good`.

use std::fs;
use std::io;
use std::path::Path;

use redb::{Database, ReadableDatabase, TableHandle};

use super::migrate::{MigrateError, migrate};
use super::schema::{
    ADDRESSES, CURSORS, ENDPOINTS, INSTANCE_ID_KEY, META, NETWORKS, POOLS, RECORD_TABLES, SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
};
use super::{Store, StoreError};

pub const DB_FILE: &str = "rustbridge.redb";
/// The database as it was at the last start that opened it cleanly.
pub const LAST_GOOD_FILE: &str = "rustbridge.redb.last-good";
/// A fresh database while it is being built.
const NEW_FILE: &str = "rustbridge.redb.new";
/// The copy taken before opening, until the open succeeds.
const COPY_FILE: &str = "rustbridge.redb.last-good.tmp";

impl Store {
    /// Opens (or, when there is none, creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
        let db_err = |what: &str, e: &dyn std::fmt::Display| StoreError::Db {
            path: path.clone(),
            message: format!("{what}: {e}"),
        };
        fs::create_dir_all(dir).map_err(|e| db_err("create directory", &e))?;
        for leftover in [NEW_FILE, COPY_FILE] {
            remove_if_present(&dir.join(leftover)).map_err(|e| db_err(&format!("remove {leftover}"), &e))?;
        }
        let last_good = dir.join(LAST_GOOD_FILE);
        match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if last_good.exists() {
                    return Err(refuse(
                        &path,
                        "is missing although a copy from an earlier start exists, so it was removed outside rustbridge",
                        Some(&last_good),
                    ));
                }
                create_fresh(dir, &path)
            }
            Err(e) => Err(db_err("inspect", &e)),
            Ok(meta) if meta.len() == 0 => Err(refuse(
                &path,
                "is empty (0 bytes): it was emptied outside rustbridge, and starting on it would forget every network",
                last_good.exists().then_some(last_good.as_path()),
            )),
            Ok(_) => open_existing(dir, &path, &last_good),
        }
    }
}

/// The error for a file that cannot be used, with what to do about it.
fn refuse(path: &Path, problem: &str, last_good: Option<&Path>) -> StoreError {
    let aside = format!(
        "move it aside (mv {p} {p}.broken) to start with no networks, then remove and recreate the rustbridge networks with docker",
        p = path.display()
    );
    let remedy = match last_good {
        Some(copy) => format!(
            "restore the copy kept from the last clean start (cp {} {}; networks created since that start are not in it), or {aside}",
            copy.display(),
            path.display()
        ),
        None => aside,
    };
    StoreError::Refused { path: path.to_path_buf(), problem: problem.to_string(), remedy }
}

fn create_fresh(dir: &Path, path: &Path) -> Result<Store, StoreError> {
    let new = dir.join(NEW_FILE);
    let err = |what: &str, e: &dyn std::fmt::Display| StoreError::Db {
        path: path.to_path_buf(),
        message: format!("create: {what}: {e}"),
    };
    let instance_id = random_hex(8).map_err(|e| err("make instance ID", &e))?;
    let db = Database::create(&new).map_err(|e| err("open", &e))?;
    let txn = db.begin_write().map_err(|e| err("begin", &e))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| err("meta table", &e))?;
        meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_string().as_str()).map_err(|e| err("meta table", &e))?;
        meta.insert(INSTANCE_ID_KEY, instance_id.as_str()).map_err(|e| err("meta table", &e))?;
        for table in [NETWORKS, ENDPOINTS, POOLS, ADDRESSES] {
            txn.open_table(table).map_err(|e| err("tables", &e))?;
        }
        txn.open_table(CURSORS).map_err(|e| err("tables", &e))?;
    }
    txn.commit().map_err(|e| err("commit", &e))?;
    fs::rename(&new, path).map_err(|e| err(&format!("rename {}", new.display()), &e))?;
    sync_dir(dir).map_err(|e| err("sync directory", &e))?;
    Ok(Store::new(db, path.to_path_buf(), instance_id))
}

/// Why an existing file cannot be used (the caller names the file).
enum Problem {
    Unusable(String),
    Newer(u64),
}

fn refuse_problem(path: &Path, problem: Problem, last_good: Option<&Path>) -> StoreError {
    match problem {
        Problem::Unusable(problem) => refuse(path, &problem, last_good),
        Problem::Newer(version) => StoreError::Refused {
            path: path.to_path_buf(),
            problem: format!(
                "has schema version {version}, newer than the {SCHEMA_VERSION} this rustbridge {} knows: it was written by a newer release",
                env!("CARGO_PKG_VERSION")
            ),
            remedy: "run the newer rustbridge release again (docker plugin upgrade); downgrading over a newer state database is not supported".into(),
        },
    }
}

/// The file is first checked on a copy (opening a database may repair it after
/// a crash, and migrating writes), so that a refused file stays byte for byte
/// as it was. The checked copy becomes the last good copy.
fn open_existing(dir: &Path, path: &Path, last_good: &Path) -> Result<Store, StoreError> {
    let previous_copy = last_good.exists().then_some(last_good);
    let copy = dir.join(COPY_FILE);
    let checked_copy = match fs::copy(path, &copy) {
        Ok(_) => match open_and_check(&copy) {
            Ok(store) => Some(store),
            Err(problem) => {
                let _ = remove_if_present(&copy);
                return Err(refuse_problem(path, problem, previous_copy));
            }
        },
        Err(_) => None, // no room for a copy: check the file itself
    };
    let result =
        open_and_check(path).map_err(|problem| refuse_problem(path, problem, previous_copy)).and_then(|mut store| {
            store
                .ensure_instance_id()
                .map_err(|e| refuse(path, &format!("cannot record its instance ID ({e})"), None))?;
            Ok(store)
        });
    if let (Ok(store), Some(mut copied)) = (&result, checked_copy) {
        // Best effort: a copy that cannot be kept does not stop the plugin.
        if copied.ensure_instance_id_as(&store.instance_id).is_ok() {
            drop(copied);
            if fs::rename(&copy, last_good).is_ok() {
                let _ = sync_dir(dir);
            }
        }
    }
    let _ = remove_if_present(&copy);
    result
}

/// Opens `file`, migrates an older schema and decodes every record.
fn open_and_check(file: &Path) -> Result<Store, Problem> {
    let db = Database::open(file).map_err(|e| Problem::Unusable(format!("cannot be read as a database ({e})")))?;
    let version = schema_version(&db).map_err(Problem::Unusable)?;
    if version > SCHEMA_VERSION {
        return Err(Problem::Newer(version));
    }
    let instance_id = read_meta(&db, INSTANCE_ID_KEY).map_err(Problem::Unusable)?.unwrap_or_default();
    let store = Store::new(db, file.to_path_buf(), instance_id);
    if version < SCHEMA_VERSION {
        store.migrate_from(version).map_err(|e| Problem::Unusable(format!("cannot be migrated: {e}")))?;
    }
    // Every record must decode before the plugin relies on the file.
    store.load().map_err(|e| Problem::Unusable(format!("holds a record that cannot be read ({e})")))?;
    Ok(store)
}

/// The file's schema version: the `meta` table's, or 0 for the unversioned
/// format (record tables and no `meta`). Anything else is not ours.
fn schema_version(db: &Database) -> Result<u64, String> {
    let txn = db.begin_read().map_err(|e| format!("cannot be read ({e})"))?;
    let tables: Vec<String> =
        txn.list_tables().map_err(|e| format!("cannot be read ({e})"))?.map(|t| t.name().to_string()).collect();
    if let Some(text) = read_meta(db, SCHEMA_VERSION_KEY)? {
        return text.parse().map_err(|_| format!("has a schema version {text:?} that is not a number"));
    }
    // Unversioned (schema 0); its `meta` table may hold an instance ID only.
    let missing: Vec<&str> = RECORD_TABLES.iter().copied().filter(|t| !tables.iter().any(|n| n == t)).collect();
    if missing.is_empty() {
        Ok(0)
    } else {
        Err(format!("is not a rustbridge state database (no schema version, no {} table)", missing.join(", ")))
    }
}

/// One `meta` value, None when the table or the key is absent.
fn read_meta(db: &Database, key: &str) -> Result<Option<String>, String> {
    let txn = db.begin_read().map_err(|e| format!("cannot be read ({e})"))?;
    let present = txn.list_tables().map_err(|e| format!("cannot be read ({e})"))?.any(|t| t.name() == META.name());
    if !present {
        return Ok(None);
    }
    let meta = txn.open_table(META).map_err(|e| format!("has an unreadable meta table ({e})"))?;
    let value = meta.get(key).map_err(|e| format!("has an unreadable meta table ({e})"))?;
    Ok(value.map(|v| v.value().to_string()))
}

impl Store {
    /// Gives a database without an instance ID (written before IDs existed) a new one.
    fn ensure_instance_id(&mut self) -> Result<(), String> {
        if self.instance_id.is_empty() {
            let id = random_hex(8).map_err(|e| format!("make instance ID: {e}"))?;
            self.ensure_instance_id_as(&id)?;
        }
        Ok(())
    }

    /// Records `id` unless the database already has one.
    fn ensure_instance_id_as(&mut self, id: &str) -> Result<(), String> {
        if !self.instance_id.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            meta.insert(INSTANCE_ID_KEY, id).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        self.instance_id = id.to_string();
        Ok(())
    }

    fn migrate_from(&self, version: u64) -> Result<(), MigrateError> {
        let db = |e: &dyn std::fmt::Display| MigrateError::Db(e.to_string());
        let txn = self.db.begin_write().map_err(|e| db(&e))?;
        migrate(&txn, version)?;
        {
            let mut meta = txn.open_table(META).map_err(|e| db(&e))?;
            meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_string().as_str()).map_err(|e| db(&e))?;
        }
        txn.commit().map_err(|e| db(&e))
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `bytes` random bytes from the kernel, as lowercase hex.
fn random_hex(bytes: usize) -> io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
