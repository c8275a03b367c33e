//! The release build that `up` and `bench` start from: the test suite's packages, the eBPF
//! object the node embeds, then every binary.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{build_ebpf, prereq, shell};

/// Builds every binary in release mode and returns the folder they are in.
pub fn binaries(root: &Path) -> Result<PathBuf> {
    prereq::debian_packages()?;
    build_ebpf::run(root)?;
    shell::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "--bins"]),
    )?;
    Ok(root.join("target/release"))
}
