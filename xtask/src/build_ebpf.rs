//! `cargo xtask build-ebpf`: compiles `ebpf/programs` for `bpfel-unknown-none` with nightly
//! and puts the object where the node crate embeds it, touching it only when it changed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{prereq, shell};

/// Where the node crate's build script looks for the object (relative to the workspace).
pub const OBJECT: &str = "target/ebpf/skiff-ebpf.o";

/// Builds the object and returns its path.
pub fn run(root: &Path) -> Result<PathBuf> {
    let sysroot = prereq::nightly_with_rust_src()?;
    prereq::bpf_linker(&sysroot)?;
    // A target dir of its own keeps nightly's host artifacts from evicting stable's.
    let target_dir = root.join("target/ebpf");
    let lib = sysroot.join("lib");
    let path = std::env::var_os("PATH").unwrap_or_default();
    shell::run(
        Command::new("cargo")
            .current_dir(root)
            .args([
                "+nightly",
                "build",
                "--package",
                "skiff-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .env(
                "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
                "--cfg bpf_target_arch=\"x86_64\" -C debuginfo=2 -C link-arg=--btf",
            )
            .env("LD_LIBRARY_PATH", &lib)
            .env("PATH", path),
    )?;
    let built = target_dir.join("bpfel-unknown-none/release/skiff-ebpf");
    let object = root.join(OBJECT);
    let fresh = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    // Copy only on change: the node's build script reruns on the object's mtime.
    if std::fs::read(&object).ok().as_deref() == Some(fresh.as_slice()) {
        eprintln!("xtask: eBPF object unchanged: {}", object.display());
    } else {
        std::fs::write(&object, &fresh).with_context(|| format!("writing {}", object.display()))?;
        eprintln!("xtask: eBPF object updated: {}", object.display());
    }
    Ok(object)
}
