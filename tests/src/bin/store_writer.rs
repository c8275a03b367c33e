//! Writes to an embedded store as fast as it can and prints each acknowledged revision, so a
//! test can SIGKILL it mid-write and check that nothing acknowledged was lost.

use std::io::Write;

use anyhow::{Context, Result};
use skiff_store::{RedbStore, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let dir = std::env::args().nth(1).context("usage: store_writer DIR")?;
    let store = RedbStore::open(std::path::Path::new(&dir))?;
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let key = format!("/durability/{i:012}");
        let kv = store.create(&key, i.to_string().into_bytes()).await?;
        // Printed only after the commit returned: this line is the acknowledgement.
        writeln!(out, "{key} {}", kv.mod_revision)?;
        out.flush()?;
    }
    Ok(())
}
