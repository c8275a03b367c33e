//! End-to-end behaviours of a cluster of several hosts (network namespaces joined by a
//! switch), sharing one cluster: `control` in its own host, three real nodes, an outside
//! client. Each behaviour is a named trial; the cluster is removed after the last one, and
//! a final check fails the run if any test packet left through the machine's uplink.

use std::{
    process::ExitCode,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use libtest_mimic::{Arguments, Failed, Trial};
use skiff_tests::cluster::{Cluster, ClusterConfig, wait_for};

/// The cluster, started by the first trial that needs it.
type Shared = Arc<OnceLock<Result<Cluster, String>>>;

fn cluster(shared: &Shared) -> Result<&Cluster, Failed> {
    shared
        .get_or_init(|| {
            Cluster::start(&ClusterConfig::one_switch(3)).map_err(|err| format!("{err:#}"))
        })
        .as_ref()
        .map_err(|err| Failed::from(format!("the test cluster did not start: {err}")))
}

fn trial(name: &str, shared: &Shared, body: fn(&Cluster) -> Result<()>) -> Trial {
    let shared = shared.clone();
    Trial::test(name, move || {
        let c = cluster(&shared)?;
        body(c).map_err(|err| Failed::from(format!("{err:#}\n{}", c.logs())))
    })
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    if !args.list && !skiff_tests::require_root("multi_host") {
        return ExitCode::SUCCESS;
    }
    let shared: Shared = Arc::default();
    let trials = vec![trial(
        "every_node_registers_with_its_host_address_and_a_pod_cidr_of_its_own",
        &shared,
        nodes_register_with_host_addresses,
    )];
    let conclusion = libtest_mimic::run(&args, trials);
    let mut failed = conclusion.has_failed();
    if let Some(Ok(c)) = shared.get() {
        if let Err(err) = c.check_nothing_escaped() {
            eprintln!("multi_host: {err:#}");
            failed = true;
        }
    }
    // The trials are done and dropped: this drops the cluster (nodes, control, hosts).
    drop(shared);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn nodes_register_with_host_addresses(c: &Cluster) -> Result<()> {
    let nodes = wait_for(
        "three Ready nodes with pod CIDRs",
        Duration::from_secs(30),
        || {
            let list = c.get_json("/api/v1/nodes")?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let ready = items.iter().all(|n| {
                n["spec"]["podCIDR"].is_string()
                    && n["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            Ok((items.len() == 3 && ready).then_some(items))
        },
    )?;
    let mut cidrs = std::collections::BTreeSet::new();
    for host in c.node_hosts() {
        let node = nodes
            .iter()
            .find(|n| n["metadata"]["name"] == host.label())
            .with_context(|| format!("node {} is not registered", host.label()))?;
        let internal = node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .unwrap_or_default()
            .to_owned();
        ensure!(
            internal == host.address().to_string(),
            "node {} reports InternalIP {internal:?}, its host has {}",
            host.label(),
            host.address()
        );
        cidrs.insert(
            node["spec"]["podCIDR"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ensure!(cidrs.len() == 3, "pod CIDRs are not distinct: {cidrs:?}");
    Ok(())
}
