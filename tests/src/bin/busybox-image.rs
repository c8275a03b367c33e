//! Writes a small OCI image tarball made from Debian's `busybox-static` (`cargo xtask up`
//! and the README's quick start import it with `ctl image import`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), name) = (args.next().map(PathBuf::from), args.next()) else {
        bail!("usage: busybox-image OUT.tar [NAME:TAG]");
    };
    let name = name.map_or_else(
        || "busybox:local".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let dir = tempfile::tempdir().context("a scratch directory")?;
    let made = skiff_tests::image::busybox_oci_layout(dir.path(), &name)?;
    std::fs::copy(&made, &out).with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}
