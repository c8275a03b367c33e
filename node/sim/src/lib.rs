//! skiff-node-sim serves simulated nodes (in the spirit of kwok): many Node objects served
//! by one process, with Leases renewed and bound pods moved through their phases without running anything, so
//! the scheduler and controllers can be exercised at scale without root.
//!
//! One process serves thousands of nodes with a handful of tasks: one Node watch, one pod
//! watch for every node, a pacing loop for Leases and one for status reports, and all
//! requests share one bound on how many are in flight.

#![forbid(unsafe_code)]

mod addresses;
mod lease;
mod pace;
mod pod_status;
mod pods;
mod registry;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use kube::Client;
pub use pod_status::{EXIT_CODE, RUN_SECONDS};
pub use registry::KUBELET_VERSION;
use tokio::sync::Semaphore;

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
    /// Delay between a pod being bound and it running.
    pub pod_startup: Duration,
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
        source: kube::Error,
    },
    /// A watch stream ended, which the watcher's back-off never lets happen.
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

/// A simulated node that is still registered.
#[derive(Clone, Debug)]
struct LiveNode {
    /// The Node's uid, for the Lease's owner reference.
    uid: String,
    /// `spec.podCIDR` once node IPAM gave one.
    pod_cidr: Option<String>,
}

/// State shared by the simulation's loops.
struct Sim {
    client: Client,
    config: SimConfig,
    /// Indexed by node index; `None` once the Node was deleted from the API (it is not
    /// simulated again until the process restarts).
    nodes: RwLock<Vec<Option<LiveNode>>>,
    /// Bounds the requests in flight over every loop (fair, so Lease renewals queue
    /// behind at most one round of pod updates).
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
    /// The name of node `index`.
    fn name(&self, index: usize) -> String {
        format!("{}{index}", self.config.prefix)
    }

    /// The index of `name` if it is one of this process's nodes (live or not).
    fn index_of(&self, name: &str) -> Option<usize> {
        let digits = name.strip_prefix(self.config.prefix.as_str())?;
        // `sim-01` is not node 1: only the canonical spelling is ours.
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        let index: usize = digits.parse().ok()?;
        (index < self.config.count).then_some(index)
    }

    /// The live node called `name`, with its index.
    fn live(&self, name: &str) -> Option<(usize, LiveNode)> {
        let index = self.index_of(name)?;
        let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
        nodes.get(index)?.clone().map(|n| (index, n))
    }

    fn is_live(&self, index: usize) -> bool {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(index)
            .is_some_and(Option::is_some)
    }

    fn update_node(&self, index: usize, f: impl FnOnce(&mut Option<LiveNode>)) {
        let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = nodes.get_mut(index) {
            f(slot);
        }
    }

    /// Waits for a request slot.
    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        // The semaphore is never closed.
        self.limit
            .acquire()
            .await
            .unwrap_or_else(|_| unreachable!("the request semaphore is never closed"))
    }
}

/// Registers the nodes, then renews their Leases, reports their status and drives their
/// pods until the future is dropped.
///
/// # Errors
/// When the nodes cannot be registered, or a watch ends.
pub async fn run(client: Client, config: SimConfig) -> Result<(), SimError> {
    let sim = Arc::new(Sim {
        limit: Semaphore::new(config.concurrency.max(1)),
        nodes: RwLock::new(vec![None; config.count]),
        client,
        config,
    });
    let started = std::time::Instant::now();
    registry::register_all(&sim).await?;
    tracing::info!(
        nodes = sim.config.count,
        prefix = %sim.config.prefix,
        elapsed_ms = started.elapsed().as_millis(),
        "simulated nodes registered"
    );
    tokio::select! {
        () = lease::renew_forever(sim.clone()) => Ok(()),
        r = registry::report_forever(sim.clone()) => r,
        r = pods::drive(sim.clone()) => r,
    }
}

/// Whether a failure may pass when tried again: no answer, 429, or a server error.
fn transient(err: &kube::Error) -> bool {
    api_code(err).is_none_or(|code| code == 429 || code >= 500)
}

/// Runs `attempt` until it succeeds, fails for good, or failed six times, pausing longer
/// after each failure.
async fn retry<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    const TRIES: u32 = 6;
    let mut pause = Duration::from_millis(200);
    for tried in 1.. {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if tried < TRIES && transient(&err) => {
                tracing::warn!(what, tried, ?err, "request failed, trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(err) => return Err(err),
        }
    }
    unreachable!("the loop returns by the last try")
}

/// A kube error's HTTP status code, when the API server answered.
fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(count: usize) -> Sim {
        let config = SimConfig {
            count,
            prefix: "sim-".to_owned(),
            ..SimConfig::default()
        };
        Sim {
            client: Client::try_from(kube::Config::new(
                "http://127.0.0.1:1".parse().expect("a URL"),
            ))
            .expect("a client"),
            nodes: RwLock::new(vec![None; count]),
            limit: Semaphore::new(1),
            config,
        }
    }

    #[tokio::test]
    async fn only_canonical_names_in_range_belong_to_the_process() {
        let sim = sim(12);
        assert_eq!(sim.index_of("sim-0"), Some(0));
        assert_eq!(sim.index_of("sim-11"), Some(11));
        assert_eq!(sim.index_of("sim-12"), None);
        assert_eq!(sim.index_of("sim-01"), None);
        assert_eq!(sim.index_of("sim-"), None);
        assert_eq!(sim.index_of("other-1"), None);
        assert_eq!(sim.index_of("sim-+1"), None);
    }
}
