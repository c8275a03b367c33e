//! The node daemon.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("node: not implemented yet")
}
