//! The skiff command-line client.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("ctl: not implemented yet")
}
