//! Installing what the build and the tests need, and saying so: the nightly toolchain with
//! rust-src, bpf-linker built against nightly's own libLLVM, and Debian packages as root.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::shell;

/// The bpf-linker line we build against (its LLVM must match nightly rustc's).
const BPF_LINKER_VERSION: &str = "0.13";

/// Debian packages the build and the end-to-end tests use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "pkg-config",
    "libseccomp-dev",
    "protobuf-compiler",
    "libprotobuf-dev",
    "iproute2",
    "nftables",
    "iptables",
    "etcd-server",
    "docker-registry",
    "busybox-static",
    "runc",
    "skopeo",
    "umoci",
];

/// The nightly sysroot, installing nightly and rust-src when missing.
pub fn nightly_with_rust_src() -> Result<PathBuf> {
    if shell::output(Command::new("rustc").args(["+nightly", "-vV"])).is_none() {
        eprintln!("xtask: no nightly toolchain; installing it (needed for the eBPF target)");
        shell::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let sysroot = PathBuf::from(
        shell::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
            .context("asking nightly rustc for its sysroot")?
            .trim(),
    );
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("xtask: nightly has no rust-src; adding it (eBPF builds core from source)");
        shell::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(sysroot)
}

/// Makes sure a working bpf-linker that matches nightly's LLVM is on PATH.
pub fn bpf_linker(sysroot: &Path) -> Result<()> {
    let lib = sysroot.join("lib");
    let works = shell::output(
        Command::new("bpf-linker")
            .arg("--version")
            .env("LD_LIBRARY_PATH", &lib),
    )
    .is_some_and(|v| v.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")));
    if works {
        return Ok(());
    }
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .context("nightly's sysroot has no libLLVM.so.*-rust-* to build bpf-linker against")?;
    let llvm_major = llvm_major_version()?;
    let prefix = cargo_home().join("skiff-llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm_major} \
         ({}); this takes about a minute",
        libllvm.display()
    );
    shell::run(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
                "--force",
            ])
            .env("LLVM_PREFIX", &prefix),
    )
}

fn llvm_major_version() -> Result<String> {
    let vv = shell::output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("running rustc +nightly -vV")?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV names no LLVM version")?;
    Ok(version
        .split('.')
        .next()
        .unwrap_or(version)
        .trim()
        .to_owned())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

/// Installs missing Debian packages when root; otherwise lists what is missing.
pub fn debian_packages() -> Result<Vec<&'static str>> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(missing);
    }
    if !shell::is_root() {
        eprintln!(
            "xtask: not root, so not installing Debian packages: {}",
            missing.join(" ")
        );
        return Ok(missing);
    }
    eprintln!(
        "xtask: installing Debian packages the tests need: {}",
        missing.join(" ")
    );
    shell::run(Command::new("apt-get").args(["update", "-q"]))?;
    shell::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !dpkg_installed(p)).collect();
    if !still.is_empty() {
        bail!("apt-get did not install {}", still.join(" "));
    }
    Ok(still)
}

/// Installs the Python `kubernetes` client the client-compatibility test drives.
pub fn python_client() -> Result<()> {
    let present = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing the Python kubernetes client (pip) for the client test");
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    if !shell::is_root() {
        pip.arg("--user");
    }
    shell::run(pip.arg("kubernetes"))
}

fn dpkg_installed(package: &str) -> bool {
    shell::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}
