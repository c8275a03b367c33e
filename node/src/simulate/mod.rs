//! Simulated nodes (in the spirit of kwok): many Node objects served by one process, with
//! Leases renewed and bound pods moved through their phases without running anything, so
//! the scheduler and controllers can be exercised at scale without root.

mod lease;
mod pods;
mod registry;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use kube::Client;
pub use registry::node_name;
use tokio::sync::Semaphore;

/// What the simulated nodes look like and how they behave.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How many nodes.
    pub count: usize,
    /// Node names are `<prefix><index>`.
    pub prefix: String,
    /// Capacity (= allocatable) of each node.
    pub capacity: BTreeMap<String, String>,
    /// Extra labels on every node.
    pub labels: BTreeMap<String, String>,
    /// Taints on every node: (key, value, effect).
    pub taints: Vec<(String, String, String)>,
    /// Nodes get `topology.kubernetes.io/zone=zone-<i % zones>`.
    pub zones: usize,
    /// Lease duration written into each Lease.
    pub lease_duration: Duration,
    /// How often each Lease is renewed.
    pub lease_renew_interval: Duration,
    /// Delay between a pod being bound and it running.
    pub pod_startup: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
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
            concurrency: 32,
        }
    }
}

/// Errors of the simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The API server refused a registration.
    #[error("registering node {node} failed")]
    Register {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The pod watch ended for good.
    #[error("pod watch ended")]
    WatchEnded,
}

/// State shared by the simulation's loops.
struct Sim {
    client: Client,
    config: SimConfig,
    /// Live simulated nodes: name -> index.
    nodes: RwLock<HashMap<String, usize>>,
    /// Bounds the requests in flight.
    limit: Semaphore,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sim {
    fn owns(&self, node: &str) -> Option<usize> {
        self.nodes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(node)
            .copied()
    }
}

/// Registers the nodes, then renews their Leases and drives their pods until dropped.
///
/// # Errors
/// When a node cannot be registered or the pod watch ends.
pub async fn run(client: Client, config: SimConfig) -> Result<(), SimError> {
    let sim = Arc::new(Sim {
        limit: Semaphore::new(config.concurrency.max(1)),
        nodes: RwLock::new(HashMap::new()),
        client,
        config,
    });
    registry::register_all(&sim).await?;
    tracing::info!(nodes = sim.config.count, prefix = %sim.config.prefix, "simulated nodes registered");
    tokio::select! {
        () = lease::renew_forever(sim.clone()) => Ok(()),
        () = registry::heartbeat_forever(sim.clone()) => Ok(()),
        r = pods::drive(sim.clone()) => r,
    }
}
