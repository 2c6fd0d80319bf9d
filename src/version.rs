//! What this build is: version, git commit (embedded by build.rs) and the
//! engines the test suites ran against.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `git rev-parse --short=12 HEAD` at build time, or RUSTBRIDGE_GIT_COMMIT, or "unknown".
pub const COMMIT: &str = env!("RUSTBRIDGE_GIT_COMMIT");
/// Docker engines the end-to-end suites run against (`make test`, `make test-engines`).
pub const TESTED_ENGINES: &[&str] =
    &["20.10.24 (Debian 12 docker.io)", "26.1.5 (Debian 13 docker.io)", "28.5.2 (Debian unstable docker.io)"];

/// What `rustbridge version` prints.
pub fn describe() -> String {
    let mut out = format!("rustbridge {VERSION}\ncommit: {COMMIT}\ntested engines:\n");
    for engine in TESTED_ENGINES {
        out.push_str(&format!("  {engine}\n"));
    }
    out
}
