//! Giving memory back to the system once a burst is over. glibc's malloc
//! keeps freed memory in its arenas (one per thread that allocated), so the
//! plugin's RSS stayed at its high-water mark after traffic (issue 13: near
//! 10 MiB after 15 minutes of calls, not coming back down when idle).
//! `malloc_trim` returns the free pages at the top of each arena and the
//! unused pages inside them; it costs well under a millisecond here and runs
//! after the start-up pass and after each periodic reconcile pass.

/// Returns free heap memory to the system (glibc only; elsewhere a no-op).
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks malloc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
