//! The harness skiff's end-to-end tests share: skipping cleanly when not root, finding the
//! workspace's binaries, and guards that remove what a test made (network namespaces,
//! cgroups, child processes) even when the test fails.

pub mod bench;
pub mod bpffs;
pub mod cgroup;
pub mod cluster;
pub mod container;
pub mod control;
pub mod dns;
pub mod etcd;
pub mod http;
pub mod image;
pub mod many_services;
pub mod netns;
pub mod node;
pub mod process;
pub mod registry;
pub mod sim;
pub mod terminal;
pub mod tls;

use std::path::PathBuf;

/// Whether this process runs as root.
#[must_use]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns `true` if the test may run; otherwise prints one line saying why it is skipped.
///
/// # Panics
/// Under CI (`CI=true`) a missing privilege is a failure, not a skip: CI runs as root.
#[must_use]
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root, and CI must run as root"
    );
    eprintln!("skipped: {test}: needs root");
    false
}

/// Returns `true` if `program` is on PATH; otherwise prints why the test is skipped.
///
/// # Panics
/// Under CI a missing program is a failure: `cargo xtask test` installs them as root.
#[must_use]
pub fn require_program(test: &str, program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if found {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs `{program}`, which `cargo xtask test` installs as root"
    );
    eprintln!("skipped: {test}: needs `{program}` on PATH");
    false
}

/// The path of a workspace binary (`control`, `ctl`, `node`), built by `cargo build --bins`.
///
/// # Panics
/// If the binary has not been built.
#[must_use]
pub fn bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps, binaries (benchmarks too) in
    // target/<profile>.
    let exe = std::env::current_exe().expect("current test executable");
    let mut dir = exe.parent().expect("executable in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --bins` (cargo xtask test does)",
        path.display()
    );
    path
}

/// A name unique to this process and call, for netns, cgroups and links a test creates.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
