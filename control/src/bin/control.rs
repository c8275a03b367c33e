//! The control-plane process: API server, scheduler and controllers in one binary.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("control: the API server is not implemented yet")
}
