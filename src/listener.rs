//! The Unix sockets dockerd dials, and the connections on them, bounded:
//! sockets only root can use, a connection limit, idle or half-sent
//! connections evicted (oldest first) when the limit or the process's file
//! limit is reached, and accepting that survives a file-descriptor shortage
//! without spinning. The HTTP on each connection is `server.rs`'s.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slog::{Logger, warn};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;

/// Bounds on what clients may hold. dockerd keeps a few connections and
/// sends each request at once; these only ever bite broken or hostile clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most; at the limit the oldest idle one is closed
    /// for a new one (a connection running a call is never closed).
    pub max_connections: usize,
    /// Request headers must arrive within this; it also closes a keep-alive
    /// connection idle this long (dockerd reconnects). Long enough that
    /// dockerd's idle connections are rarely closed under it (a request racing
    /// the close is a transport failure for dockerd); floods are handled by
    /// eviction, not by this timeout.
    pub header_timeout: Duration,
    /// The whole request body must arrive within this.
    pub body_timeout: Duration,
    /// Every call is answered within this, counted from its arrival (see
    /// `crate::deadline`): a call that cannot commit in time commits nothing.
    pub call_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            call_deadline: Duration::from_secs(25),
        }
    }
}

/// Binds a socket only its owner (root) may connect to, replacing a stale
/// file (dockerd retries a dead socket for ~15 s per call). The socket is made
/// under a temporary name, restricted, then renamed into place, so it is
/// never reachable with wider permissions.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    remove_if_present(&temporary)?;
    let listener = UnixListener::bind(&temporary)?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    Ok(listener)
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The open connections, oldest first, and whether each is running a call.
#[derive(Default)]
pub struct Connections {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Entry>>,
    closed: Notify,
}

struct Entry {
    busy: Arc<AtomicBool>,
    abort: Option<AbortHandle>,
}

/// Held by a connection's task: marks the connection busy while a call runs,
/// and removes it from the table when the task ends (or is aborted).
pub struct Slot {
    id: u64,
    busy: Arc<AtomicBool>,
    table: Arc<Connections>,
}

impl Slot {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Marks the connection busy until the guard is dropped.
    pub fn busy(&self) -> BusyGuard {
        self.busy.store(true, Ordering::SeqCst);
        BusyGuard(self.busy.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.open.lock().expect("connection table").remove(&self.id);
        self.table.closed.notify_waiters();
    }
}

pub struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Connections {
    pub fn count(&self) -> usize {
        self.open.lock().expect("connection table").len()
    }

    fn register(self: &Arc<Self>) -> Slot {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicBool::new(false));
        self.open.lock().expect("connection table").insert(id, Entry { busy: busy.clone(), abort: None });
        Slot { id, busy, table: self.clone() }
    }

    /// Lets `evict_oldest_idle` close the connection served by this task.
    pub fn set_abort(&self, id: u64, abort: AbortHandle) {
        if let Some(entry) = self.open.lock().expect("connection table").get_mut(&id) {
            entry.abort = Some(abort);
        }
    }

    /// Closes the oldest connection not running a call; false if there is none.
    fn evict_oldest_idle(&self) -> bool {
        let mut open = self.open.lock().expect("connection table");
        let oldest = open.iter().find(|(_, e)| !e.busy.load(Ordering::SeqCst) && e.abort.is_some()).map(|(id, _)| *id);
        match oldest.and_then(|id| open.remove(&id)) {
            Some(entry) => {
                entry.abort.expect("found with an abort handle").abort();
                true
            }
            None => false,
        }
    }

    /// Waits until a new connection fits under `max`, closing idle ones as needed.
    async fn make_room(&self, max: usize) {
        while self.count() >= max {
            if !self.evict_oldest_idle() {
                // Every connection runs a call: each ends within its deadline.
                let _ = tokio::time::timeout(Duration::from_millis(50), self.closed.notified()).await;
            }
        }
    }
}

/// Accepts on `listener` until the task is aborted (or `tx` is closed),
/// handing each connection with its slot to `tx`; the receiver serves it and
/// registers its task with `Connections::set_abort`.
pub async fn accept_loop<Tag: Copy + Send + 'static>(
    path: PathBuf,
    listener: UnixListener,
    tag: Tag,
    connections: Arc<Connections>,
    limits: Limits,
    log: Logger,
    tx: mpsc::Sender<(UnixStream, Slot, Tag)>,
) {
    let mut shortage = Shortage::default();
    loop {
        connections.make_room(limits.max_connections).await;
        match listener.accept().await {
            Ok((stream, _)) => {
                if tx.send((stream, connections.register(), tag)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of file descriptors: free one by closing the oldest idle
                // connection. Any failure: pause briefly (never spin), go on.
                let evicted = out_of_descriptors(&e) && connections.evict_oldest_idle();
                shortage.seen(&log, &path, &e, evicted);
                tokio::time::sleep(if evicted { Duration::from_millis(5) } else { Duration::from_millis(50) }).await;
            }
        }
    }
}

/// EMFILE (the process's file limit) or ENFILE (the system's).
fn out_of_descriptors(e: &std::io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(e.raw_os_error(), Some(ENFILE | EMFILE))
}

/// Accept failures are logged at most once per `REPORT_EVERY`, with counts,
/// not one line per failure.
#[derive(Default)]
struct Shortage {
    last_report: Option<Instant>,
    failures: u64,
    evicted: u64,
}

const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Shortage {
    fn seen(&mut self, log: &Logger, path: &Path, e: &std::io::Error, evicted: bool) {
        self.failures += 1;
        self.evicted += u64::from(evicted);
        if self.last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            warn!(log, "accept failed; closing idle connections and retrying"; "socket" => %path.display(),
                "error" => %e, "failures" => self.failures, "idle_connections_closed" => self.evicted,
                "next_report_in_s" => REPORT_EVERY.as_secs());
            self.last_report = Some(Instant::now());
            self.failures = 0;
            self.evicted = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eviction_takes_the_oldest_idle_connection_and_never_a_busy_one() {
        let table = Arc::new(Connections::default());
        let mut slots = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let slot = table.register();
            let task = tokio::spawn(std::future::pending::<()>());
            table.set_abort(slot.id(), task.abort_handle());
            slots.push(slot);
            tasks.push(task);
        }
        let _busy = slots[0].busy();
        assert!(table.evict_oldest_idle());
        let evicted = tasks.remove(1).await.unwrap_err();
        assert!(evicted.is_cancelled(), "the oldest idle connection (the second) is closed");
        assert!(table.evict_oldest_idle());
        assert!(tasks.remove(1).await.unwrap_err().is_cancelled());
        assert!(!table.evict_oldest_idle(), "the busy connection stays");
        assert_eq!(table.count(), 1);
        drop(slots);
        assert_eq!(table.count(), 0);
    }

    #[test]
    fn bound_sockets_are_for_root_only_and_replace_stale_files() {
        let dir = std::env::temp_dir().join(format!("rustbridge-listener-{}", std::process::id()));
        let path = dir.join("plugin.sock");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, b"stale").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listener = runtime.block_on(async { bind(&path) }).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("plugin.sock")], "no temporary name left behind");
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
