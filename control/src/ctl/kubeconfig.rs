//! `ctl kubeconfig-user`: a kubeconfig with a client certificate issued by the cluster CA in
//! control's data directory (kubeadm's `kubeadm kubeconfig user`), so a node or a person
//! gets an identity of their own. Run where the CA key is, as its owner.

use std::path::PathBuf;

use anyhow::{Context, Result};
use skiff_pki::{
    Ca,
    ca::{CA_CERT, CA_KEY},
};

/// Flags of `ctl kubeconfig-user`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The user (`CN`), e.g. `system:node:n1` for a node, `jane` for a person.
    #[arg(long)]
    client_name: String,
    /// The group (`O`), e.g. `system:nodes`.
    #[arg(long)]
    org: Option<String>,
    /// control's data directory (the CA is in its `pki/`).
    #[arg(long, env = "SKIFF_DATA_DIR", default_value = "/var/lib/skiff/control")]
    data_dir: PathBuf,
}

/// Prints a kubeconfig for `server` that authenticates as the user the flags name.
///
/// # Errors
/// When the CA cannot be read or the certificate not issued.
pub fn run(args: &Args, server: &str) -> Result<()> {
    let pki = args.data_dir.join("pki");
    let read = |name: &str| {
        std::fs::read_to_string(pki.join(name))
            .with_context(|| format!("reading {}", pki.join(name).display()))
    };
    let ca = Ca::from_pem(&read(CA_CERT)?, &read(CA_KEY)?).context("the cluster CA")?;
    let groups: Vec<&str> = args.org.iter().map(String::as_str).collect();
    let issued = ca
        .issue_client(&args.client_name, &groups)
        .context("issuing the client certificate")?;
    print!(
        "{}",
        skiff_pki::kubeconfig::render(server, ca.cert_pem(), "skiff", &args.client_name, &issued)
    );
    Ok(())
}
