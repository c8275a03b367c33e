//! `ctl`, skiff's command-line client: apply, get, delete, describe, backup and image
//! import, over the same HTTP API every Kubernetes client uses (through the `kube` crate).

mod apply;
mod backup;
mod connect;
mod delete;
mod describe;
mod get;
mod image;
mod kubeconfig;
mod manifest;
mod print;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "ctl",
    about = "skiff's command-line client (kubectl-compatible verbs)"
)]
pub struct Cli {
    /// Path to the kubeconfig (else $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The API server URL, overriding the kubeconfig's.
    #[arg(long, global = true)]
    server: Option<String>,
    /// The namespace (default: the context's, else `default`).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update objects from manifests (client-side apply).
    Apply(apply::Args),
    /// Show objects as tables, YAML or JSON.
    Get(get::Args),
    /// Delete objects by manifest or by kind and name, waiting until they are gone.
    Delete(delete::Args),
    /// Show one object in detail with its events.
    Describe(describe::Args),
    /// Save a backup of the control plane's store to a file.
    Backup(backup::Args),
    /// Node images: `ctl image import FILE` loads a tarball onto a node.
    Image(image::Args),
    /// Print a kubeconfig with a client certificate from the cluster CA (needs the CA key:
    /// run it on the control host), for `--server URL`.
    KubeconfigUser(kubeconfig::Args),
}

/// Runs the command line.
///
/// # Errors
/// Whatever the command reports; `main` prints it kubectl-style.
pub async fn run(cli: Cli) -> Result<()> {
    if let Command::KubeconfigUser(args) = &cli.command {
        let server = cli
            .server
            .as_deref()
            .context("kubeconfig-user needs --server https://HOST:PORT")?;
        return kubeconfig::run(args, server);
    }
    let conn = connect::Connection::open(
        cli.kubeconfig.as_deref(),
        cli.context.as_deref(),
        cli.server.as_deref(),
        cli.namespace.as_deref(),
    )
    .await?;
    match cli.command {
        Command::Apply(args) => apply::run(&conn, &args).await,
        Command::Get(args) => get::run(&conn, &args).await,
        Command::Delete(args) => delete::run(&conn, &args).await,
        Command::Describe(args) => describe::run(&conn, &args).await,
        Command::Backup(args) => backup::run(&conn, &args).await,
        Command::Image(args) => image::run(&conn, &args).await,
        Command::KubeconfigUser(_) => unreachable!("handled before connecting"),
    }
}
