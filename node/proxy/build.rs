//! Hands the proxy crate the eBPF object that `cargo xtask build-ebpf` built, or stops the
//! build with one line saying how to make it.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = manifest.join("../../target/ebpf/skiff-ebpf.o");
    println!("cargo::rerun-if-changed={}", object.display());
    if !object.is_file() {
        println!(
            "cargo::error=eBPF object missing (target/ebpf/skiff-ebpf.o): run `cargo xtask build-ebpf`"
        );
        return;
    }
    println!("cargo::rustc-env=SKIFF_EBPF_OBJECT={}", object.display());
}
