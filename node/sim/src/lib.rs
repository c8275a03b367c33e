//! skiff-node-sim serves simulated nodes (in the spirit of kwok): many Nodes in one process
//! for scheduler and controller work at scale, without containers or root. Each simulated
//! node runs the real kubelet of `skiff-kubelet` (registration, status, Lease, one worker
//! per pod with the real status builder) over a scripted backend whose containers are
//! timers, so everything the control plane sees is what a real node does.
//!
//! One process serves thousands of nodes: one Node watch and one pod watch for all of them
//! (the pod events go to each node's own pod dispatch through a channel), pacing loops
//! that spread Lease renewals and status checks over their periods, and one bound on the
//! requests in flight over everything the process sends.

#![forbid(unsafe_code)]

mod addresses;
mod backend;
mod host;
mod nodes;
mod pace;
mod pods;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

pub use backend::{EXIT_CODE, RUN_SECONDS};
pub use host::KUBELET_VERSION;
use k8s_openapi::api::core::v1::Taint;
use kube::Client;
use skiff_kubelet::api::Inflight;

use crate::{backend::SimBackend, nodes::NodeState};

/// What the simulated nodes look like and how they behave.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How many nodes.
    pub count: usize,
    /// Node names are `<prefix><index>`.
    pub prefix: String,
    /// Capacity (= allocatable) of each node, as quantities (`cpu: 32`).
    pub capacity: BTreeMap<String, String>,
    /// Extra labels on every node (they win over the default ones).
    pub labels: BTreeMap<String, String>,
    /// Taints every node registers with.
    pub taints: Vec<SimTaint>,
    /// Nodes get `topology.kubernetes.io/zone=zone-<i % zones>`.
    pub zones: usize,
    /// Lease duration written into each Lease.
    pub lease_duration: Duration,
    /// How often each Lease is renewed.
    pub lease_renew_interval: Duration,
    /// How long a pod's sandbox takes to make: the delay between a pod being bound and its
    /// containers starting.
    pub pod_startup: Duration,
    /// How long the containers of a Job's pods run when no annotation says (then they
    /// exit 0), as kwok completes Job pods by default.
    pub job_run: Duration,
    /// The restart back-off: a container that exited is started again after this.
    pub restart_backoff: Duration,
    /// The `InternalIP` of node 0; node `i` gets this address plus `i` (text only).
    pub node_ip_base: Ipv4Addr,
    /// Requests in flight at once, over everything the process does.
    pub concurrency: usize,
}

/// A taint the simulated nodes register with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimTaint {
    /// The taint key.
    pub key: String,
    /// The value (may be empty).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

impl SimTaint {
    /// The taint as the Node carries it (an empty value is left out).
    #[must_use]
    pub fn to_taint(&self) -> Taint {
        Taint {
            key: self.key.clone(),
            value: (!self.value.is_empty()).then(|| self.value.clone()),
            effect: self.effect.clone(),
            time_added: None,
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            count: 1,
            prefix: "sim-".to_owned(),
            capacity: BTreeMap::from([
                ("cpu".to_owned(), "32".to_owned()),
                ("memory".to_owned(), "256Gi".to_owned()),
                ("pods".to_owned(), "110".to_owned()),
                ("ephemeral-storage".to_owned(), "100Gi".to_owned()),
            ]),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            zones: 1,
            lease_duration: Duration::from_secs(40),
            lease_renew_interval: Duration::from_secs(10),
            pod_startup: Duration::ZERO,
            job_run: Duration::from_secs(1),
            restart_backoff: Duration::from_secs(1),
            node_ip_base: Ipv4Addr::new(127, 64, 0, 1),
            concurrency: 32,
        }
    }
}

/// Errors of the simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The API server refused to list the nodes that exist already.
    #[error("listing existing nodes failed")]
    ListNodes(#[source] kube::Error),
    /// The API server refused a registration.
    #[error("registering node {node} failed")]
    Register {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A watch stream ended, which the watcher's back-off never lets happen.
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

/// The names of one process's nodes: `<prefix><index>` for index below `count`.
#[derive(Clone, Debug)]
pub(crate) struct Naming {
    pub(crate) prefix: String,
    pub(crate) count: usize,
}

impl Naming {
    /// The name of node `index`.
    pub(crate) fn name(&self, index: usize) -> String {
        format!("{}{index}", self.prefix)
    }

    /// The index of `name` if it is one of this process's nodes.
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        let digits = name.strip_prefix(self.prefix.as_str())?;
        // `sim-01` is not node 1: only the canonical spelling is ours.
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        let index: usize = digits.parse().ok()?;
        (index < self.count).then_some(index)
    }
}

/// State shared by the simulation's loops.
pub(crate) struct Sim {
    client: Client,
    config: SimConfig,
    naming: Naming,
    /// Indexed by node index; `None` until registered and once the Node was deleted from
    /// the API (it is not simulated again until the process restarts).
    nodes: RwLock<Vec<Option<Arc<NodeState>>>>,
    backend: Arc<SimBackend>,
    /// Bounds the requests in flight over every loop (fair, so Lease renewals queue
    /// behind at most one round of pod updates).
    inflight: Inflight,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sim {
    fn new(client: Client, config: SimConfig) -> Self {
        let naming = Naming {
            prefix: config.prefix.clone(),
            count: config.count,
        };
        Self {
            backend: Arc::new(SimBackend::new(
                naming.clone(),
                config.node_ip_base,
                config.pod_startup,
                config.job_run,
            )),
            inflight: Inflight::bounded(config.concurrency),
            nodes: RwLock::new(vec![None; config.count]),
            naming,
            client,
            config,
        }
    }

    /// The live node `index`.
    fn node(&self, index: usize) -> Option<Arc<NodeState>> {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(index)
            .cloned()
            .flatten()
    }

    /// Every live node.
    fn live(&self) -> Vec<Arc<NodeState>> {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// Registers the nodes, then renews their Leases, reports their status and runs their
/// pods until the future is dropped.
///
/// # Errors
/// When the nodes cannot be registered, or a watch ends.
pub async fn run(client: Client, config: SimConfig) -> Result<(), SimError> {
    let sim = Arc::new(Sim::new(client, config));
    let started = std::time::Instant::now();
    nodes::register_all(&sim).await?;
    tracing::info!(
        nodes = sim.config.count,
        prefix = %sim.config.prefix,
        elapsed_ms = started.elapsed().as_millis(),
        "simulated nodes registered"
    );
    tokio::select! {
        () = nodes::renew_leases(sim.clone()) => Ok(()),
        () = nodes::report_status(sim.clone()) => Ok(()),
        r = nodes::follow(sim.clone()) => r,
        r = pods::route(sim.clone()) => r,
    }
}

/// Whether a failure may pass when tried again: no answer, 429, or a server error.
fn transient(code: Option<u16>) -> bool {
    code.is_none_or(|code| code == 429 || code >= 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_names_in_range_belong_to_the_process() {
        let naming = Naming {
            prefix: "sim-".to_owned(),
            count: 12,
        };
        assert_eq!(naming.index_of("sim-0"), Some(0));
        assert_eq!(naming.index_of("sim-11"), Some(11));
        assert_eq!(naming.index_of("sim-12"), None);
        assert_eq!(naming.index_of("sim-01"), None);
        assert_eq!(naming.index_of("sim-"), None);
        assert_eq!(naming.index_of("other-1"), None);
        assert_eq!(naming.index_of("sim-+1"), None);
        assert_eq!(naming.name(3), "sim-3");
    }
}
