//! `cargo xtask bench NAME`: release builds of the real binaries, then the benchmark's
//! harness, which prints its table.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::{release, shell};

/// The benchmarks and the harness binary each runs.
const BENCHES: &[(&str, &str)] = &[
    ("api", "api_bench"),
    ("scheduler", "scheduler_bench"),
    ("pod-start", "pod_start_bench"),
    ("pod-network", "pod_network_bench"),
    ("datapath", "datapath_bench"),
    ("dns", "dns_bench"),
];

/// Builds and runs one benchmark.
pub fn run(root: &Path, name: &str) -> Result<()> {
    let Some((_, harness)) = BENCHES.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
        bail!("unknown benchmark {name:?}; known: {}", known.join(", "));
    };
    // The harnesses start etcd, runc and busybox-static images: the test suite's packages,
    // which the release build checks for.
    let bin = release::binaries(root)?;
    // Ctrl-C reaches the harness too (one process group): it removes what it made and
    // exits. xtask waits for that instead of returning the prompt while it still runs.
    // SAFETY: installing a handler that does nothing, which is signal-safe; the harness
    // gets the default disposition back on exec.
    unsafe {
        libc::signal(
            libc::SIGINT,
            keep_waiting as *const () as libc::sighandler_t,
        );
    }
    shell::run(&mut Command::new(bin.join(harness)))
}

extern "C" fn keep_waiting(_: libc::c_int) {}
