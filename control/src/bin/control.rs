//! The control-plane process: the API server on the embedded store or etcd (the scheduler
//! and controllers join it as they land; each part can be switched off).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use skiff_api::{Config, Server};
use skiff_store::{EtcdStore, RedbStore, Store};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "control",
    about = "skiff's control plane: API server (scheduler and controllers to come)"
)]
struct Args {
    /// Address to serve the Kubernetes API on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Directory of the embedded store (ignored with --etcd).
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Use an etcd cluster instead of the embedded store (comma-separated URLs).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// The Service cluster IP range.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// Restore the embedded store from this backup (made by `ctl backup`) before starting.
    #[arg(long)]
    restore: Option<PathBuf>,
    /// Compact store history every this many seconds.
    #[arg(long, default_value_t = 300)]
    compaction_interval_seconds: u64,
    /// Revisions of history compaction keeps (for watches that resume).
    #[arg(long, default_value_t = 10_000)]
    compaction_keep_revisions: i64,
}

fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/lib/skiff/control")
    } else {
        PathBuf::from("skiff-data")
    }
}

async fn open_store(args: &Args) -> Result<Arc<dyn Store>> {
    if !args.etcd.is_empty() {
        if args.restore.is_some() {
            bail!(
                "--restore works with the embedded store; restore etcd with etcdctl snapshot restore"
            );
        }
        let store = EtcdStore::connect(&args.etcd)
            .await
            .with_context(|| format!("connecting to etcd at {}", args.etcd.join(",")))?;
        tracing::info!(endpoints = ?args.etcd, "using etcd");
        return Ok(Arc::new(store));
    }
    let dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    if let Some(backup) = &args.restore {
        let bytes = std::fs::read(backup)
            .with_context(|| format!("reading backup {}", backup.display()))?;
        RedbStore::restore(&bytes, &dir)
            .with_context(|| format!("restoring {} into {}", backup.display(), dir.display()))?;
        tracing::info!(backup = %backup.display(), dir = %dir.display(), "restored the store");
    }
    let store =
        RedbStore::open(&dir).with_context(|| format!("opening the store in {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "using the embedded store");
    Ok(Arc::new(store))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let store = open_store(&args).await?;
    let config = Config {
        listen: args.listen,
        service_cidr: args.service_cluster_ip_range.clone(),
        compaction_interval: Duration::from_secs(args.compaction_interval_seconds.max(1)),
        compaction_keep: args.compaction_keep_revisions,
        ..Config::default()
    };
    let server = Server::bind(store, config)
        .await
        .context("starting the API server")?;
    tracing::info!(addr = %server.local_addr()?, "serving the Kubernetes API");
    server.serve(shutdown()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
