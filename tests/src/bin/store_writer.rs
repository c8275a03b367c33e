//! Writes to an embedded store as fast as it can from several concurrent writers, so their
//! writes share group commits, and prints each acknowledged revision, so a test can SIGKILL
//! it mid-write and check that nothing acknowledged was lost.

use std::io::Write;

use anyhow::{Context, Result};
use skiff_store::{RedbStore, Store};

/// Concurrent writers: enough that most commits carry several of them.
const WRITERS: usize = 8;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let dir = std::env::args().nth(1).context("usage: store_writer DIR")?;
    let store = RedbStore::open(std::path::Path::new(&dir))?;
    let writers = (0..WRITERS).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0u64.. {
                let key = format!("/durability/{w}/{i:012}");
                let kv = store.create(&key, i.to_string().into_bytes()).await?;
                // Printed only after the commit returned: this line is the acknowledgement.
                let mut out = std::io::stdout().lock();
                writeln!(out, "{key} {}", kv.mod_revision)?;
                out.flush()?;
            }
            Ok::<_, anyhow::Error>(())
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer??;
    }
    Ok(())
}
