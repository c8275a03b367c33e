//! `cargo xtask test`: the whole suite in the order CI runs it: set-up, eBPF build, fmt,
//! clippy, build of every binary, then unit and end-to-end tests.

use std::{path::Path, process::Command, time::Instant};

use anyhow::Result;

use crate::{build_ebpf, prereq, shell};

/// Options for `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip the fmt and clippy checks.
    #[arg(long)]
    no_lint: bool,
    /// Only run tests whose name contains this.
    filter: Option<String>,
}

/// Runs the suite.
pub fn run(root: &Path, args: &Args) -> Result<()> {
    let started = Instant::now();
    let missing = prereq::debian_packages()?;
    prereq::python_client()?;
    build_ebpf::run(root)?;
    let cargo = || {
        let mut c = Command::new("cargo");
        c.current_dir(root);
        c
    };
    if !args.no_lint {
        // rustfmt's import grouping options are nightly-only.
        shell::run(cargo().args(["+nightly", "fmt", "--all", "--check"]))?;
        shell::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    }
    // End-to-end tests start the real binaries, so build them all first.
    shell::run(cargo().args(["build", "--bins"]))?;
    if !shell::is_root() {
        eprintln!(
            "xtask: not root: privileged end-to-end tests (eBPF, network namespaces, \
             containers) will print `skipped: ... needs root` and pass without running"
        );
    }
    if !missing.is_empty() {
        eprintln!(
            "xtask: missing Debian packages ({}): tests that need them skip",
            missing.join(" ")
        );
    }
    let mut test = cargo();
    test.args(["test", "--no-fail-fast"]);
    if let Some(filter) = &args.filter {
        test.arg("--").arg(filter);
    }
    shell::run(&mut test)?;
    eprintln!(
        "xtask: test suite passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
