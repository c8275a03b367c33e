//! `cargo xtask`: the one entry point that sets a machine up, builds the eBPF object, runs
//! the whole test suite, starts a single-node cluster, runs the benchmarks and the fuzzers.

mod bench;
mod build_ebpf;
mod fuzz;
mod prereq;
mod release;
mod shell;
mod test;
mod up;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "skiff's build, test and cluster driver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF programs (installs nightly rust-src and bpf-linker if missing).
    BuildEbpf,
    /// Run the whole suite: fmt, clippy, unit tests, privileged end-to-end tests.
    Test(test::Args),
    /// Start a cluster on this machine (one node on this host, or `--nodes N` hosts).
    Up(up::Args),
    /// Run the fuzz targets in fuzz/ for N minutes each, one at a time, and print a table
    /// (also written to target/fuzz/report.md). Not part of `test`.
    Fuzz(fuzz::Args),
    /// Run a benchmark and print a table.
    Bench {
        /// Which benchmark.
        name: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Command::BuildEbpf => build_ebpf::run(&root).map(|_| ()),
        Command::Test(args) => test::run(&root, &args),
        Command::Up(args) => up::run(&root, &args),
        Command::Fuzz(args) => fuzz::run(&root, &args),
        Command::Bench { name } => bench::run(&root, &name),
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
