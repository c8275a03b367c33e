//! The node daemon. `--simulate N` serves N simulated nodes (no containers, no root) for
//! scheduler and controller tests; the real node (libcontainer pods) is not built yet.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use skiff_node::simulate::{SimConfig, run};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "node", about = "skiff's node daemon")]
struct Args {
    /// API server URL (`http://127.0.0.1:6443`); without it the kubeconfig is used.
    #[arg(long)]
    server: Option<String>,
    /// Kubeconfig to reach the API server (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Serve this many simulated nodes instead of running real pods.
    #[arg(long)]
    simulate: Option<usize>,
    /// Simulated node names are `<prefix><index>`.
    #[arg(long, default_value = "sim-")]
    name_prefix: String,
    /// CPU capacity of each simulated node.
    #[arg(long, default_value = "32")]
    cpu: String,
    /// Memory capacity of each simulated node.
    #[arg(long, default_value = "256Gi")]
    memory: String,
    /// Pod capacity of each simulated node.
    #[arg(long, default_value = "110")]
    pods: String,
    /// Ephemeral storage of each simulated node.
    #[arg(long, default_value = "100Gi")]
    ephemeral_storage: String,
    /// Extra labels, `k=v,k2=v2`.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Taints, `key=value:Effect,...`.
    #[arg(long, value_delimiter = ',')]
    taints: Vec<String>,
    /// Spread nodes over this many zones (`topology.kubernetes.io/zone=zone-<i>`).
    #[arg(long, default_value_t = 1)]
    zones: usize,
    /// Lease duration written into node Leases.
    #[arg(long, default_value_t = 40)]
    lease_duration_seconds: u64,
    /// How often each node Lease is renewed.
    #[arg(long, default_value_t = 10)]
    lease_renew_interval_seconds: u64,
    /// Delay between binding and Running.
    #[arg(long, default_value_t = 0)]
    pod_startup_ms: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

fn parse_taint(text: &str) -> Result<(String, String, String)> {
    let (kv, effect) = text
        .rsplit_once(':')
        .with_context(|| format!("taint {text:?} needs :Effect"))?;
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        bail!("taint {text:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    Ok((key.to_owned(), value.to_owned(), effect.to_owned()))
}

async fn client(args: &Args) -> Result<kube::Client> {
    let config = if let Some(server) = &args.server {
        kube::Config::new(server.parse().context("--server URL")?)
    } else {
        let options = kube::config::KubeConfigOptions::default();
        match &args.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &options).await?
            }
            None => kube::Config::from_kubeconfig(&options).await?,
        }
    };
    let mut config = config;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static("kubelet/v1.33.0-skiff-sim"),
    ));
    kube::Client::try_from(config).context("building the API client")
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
    let Some(count) = args.simulate else {
        bail!(
            "node: the real node (pods through libcontainer) is not implemented yet; use --simulate N"
        );
    };
    let mut labels = BTreeMap::new();
    for pair in &args.labels {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("label {pair:?} needs k=v"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let config = SimConfig {
        count,
        prefix: args.name_prefix.clone(),
        capacity: BTreeMap::from([
            ("cpu".to_owned(), args.cpu.clone()),
            ("memory".to_owned(), args.memory.clone()),
            ("pods".to_owned(), args.pods.clone()),
            (
                "ephemeral-storage".to_owned(),
                args.ephemeral_storage.clone(),
            ),
        ]),
        labels,
        taints: args
            .taints
            .iter()
            .map(|t| parse_taint(t))
            .collect::<Result<_>>()?,
        zones: args.zones,
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
        lease_renew_interval: Duration::from_secs(args.lease_renew_interval_seconds.max(1)),
        pod_startup: Duration::from_millis(args.pod_startup_ms),
        concurrency: args.concurrency,
    };
    let client = client(&args).await?;
    tokio::select! {
        r = run(client, config) => r.context("simulated nodes")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
