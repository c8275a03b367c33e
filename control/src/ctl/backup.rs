//! `ctl backup FILE`: the control plane's whole store, written atomically, for
//! `control --restore FILE`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use http_body_util::BodyExt;

use super::connect::Connection;

/// `ctl backup` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the backup.
    file: PathBuf,
}

pub async fn run(conn: &Connection, args: &Args) -> Result<()> {
    let req = http::Request::get("/skiff/v1/backup").body(kube::client::Body::empty())?;
    let resp = conn.client.send(req).await.context("asking for a backup")?;
    if !resp.status().is_success() {
        bail!("the server refused the backup: {}", resp.status());
    }
    let bytes = resp.into_body().collect().await?.to_bytes();
    let partial = args.file.with_extension("partial");
    std::fs::write(&partial, &bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &args.file)?;
    println!(
        "backup written to {} ({} bytes)",
        args.file.display(),
        bytes.len()
    );
    Ok(())
}
