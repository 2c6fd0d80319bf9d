//! Embeds the git commit the binary is built from (RUSTBRIDGE_GIT_COMMIT in the
//! environment wins, e.g. for builds from a source tarball; "unknown" without git).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=RUSTBRIDGE_GIT_COMMIT");
    let commit = match std::env::var("RUSTBRIDGE_GIT_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string()),
    };
    // A new commit or checkout moves HEAD and appends to its reflog: rebuild then.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
    }
    println!("cargo:rustc-env=RUSTBRIDGE_GIT_COMMIT={commit}");
}
