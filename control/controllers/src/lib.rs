//! skiff-controllers keeps every object at its declared state: one level-triggered,
//! idempotent reconciler per concern (ReplicaSet, Deployment, StatefulSet, DaemonSet, Job,
//! CronJob, Endpoints, nodes, namespaces, garbage collection, quotas), each talking to the
//! API server through the `kube` crate like any client.

#![forbid(unsafe_code)]

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod expectations;
pub mod garbage_collector;
pub mod informers;
pub mod job;
pub mod kinds;
pub mod leader;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod ownership;
pub mod placement;
pub mod pods;
pub mod replicaset;
pub mod resourcequota;
pub mod serviceaccount;
pub mod statefulset;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
    batch::v1::Job,
    coordination::v1::Lease,
    core::v1::{Node, Pod},
};
use kube::{Api, Client};

use crate::informers::Informer;

/// Settings shared by the controllers (flags of the `control` binary).
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a node may go without renewing its Lease before it is `Ready=Unknown`.
    pub node_monitor_grace_period: Duration,
    /// Toleration seconds given to pods for the not-ready/unreachable taints by default.
    pub default_toleration_seconds: i64,
    /// The pod network that node IPAM splits into per-node `spec.podCIDR`s (none: off).
    pub cluster_cidr: Option<String>,
    /// Prefix length of each node's pod CIDR.
    pub node_cidr_mask_size: u8,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_monitor_grace_period: Duration::from_secs(40),
            default_toleration_seconds: 300,
            cluster_cidr: None,
            node_cidr_mask_size: 24,
        }
    }
}

/// What every controller reaches: the client, the settings and the shared caches.
pub struct Shared {
    /// The API client.
    pub client: Client,
    /// Settings.
    pub config: Config,
    /// Every pod in the cluster.
    pub pods: kube::runtime::reflector::Store<Pod>,
    /// Every node.
    pub nodes: kube::runtime::reflector::Store<Node>,
    /// Every ReplicaSet in the cluster.
    pub replica_sets: kube::runtime::reflector::Store<ReplicaSet>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The errors a reconcile returns; the controller logs them and retries with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a request or could not be reached.
    #[error("api request failed")]
    Api(#[from] kube::Error),
    /// The object is malformed in a way validation let through.
    #[error("invalid object: {0}")]
    Invalid(String),
}

/// Runs every controller until the returned future is dropped.
pub async fn run(client: Client, config: Config) {
    let mut pods = Informer::<Pod>::new(Api::all(client.clone()));
    let mut replica_sets = Informer::<ReplicaSet>::new(Api::all(client.clone()));
    let mut nodes = Informer::<Node>::new(Api::all(client.clone()));
    let shared = Arc::new(Shared {
        client: client.clone(),
        config,
        pods: pods.store(),
        nodes: nodes.store(),
        replica_sets: replica_sets.store(),
    });
    let rs = replicaset::run(
        shared.clone(),
        replica_sets.subscribe(),
        pods.subscribe(),
        pods.subscribe(),
    );
    let mut deployments = Informer::<Deployment>::new(Api::all(client.clone()));
    let deploy = deployment::run(
        shared.clone(),
        deployments.store(),
        deployments.subscribe(),
        replica_sets.subscribe(),
        pods.subscribe(),
    );
    let mut jobs = Informer::<Job>::new(Api::all(client.clone()));
    let cron = cronjob::run(shared.clone(), jobs.store(), jobs.subscribe());
    let job = job::run(
        shared.clone(),
        jobs.store(),
        jobs.subscribe(),
        pods.subscribe(),
    );
    let mut stateful_sets = Informer::<StatefulSet>::new(Api::all(client.clone()));
    let sts = statefulset::run(
        shared.clone(),
        stateful_sets.store(),
        stateful_sets.subscribe(),
        pods.subscribe(),
    );
    let mut daemon_sets = Informer::<DaemonSet>::new(Api::all(client.clone()));
    let ds = daemonset::run(
        shared.clone(),
        daemon_sets.store(),
        daemon_sets.subscribe(),
        pods.subscribe(),
        nodes.subscribe(),
    );
    let mut leases = Informer::<Lease>::new(Api::namespaced(client.clone(), "kube-node-lease"));
    let lifecycle = node_lifecycle::run(shared.clone(), leases.store());
    let quotas = resourcequota::run(shared.clone(), pods.subscribe());
    tokio::join!(
        endpoints::run(shared.clone(), pods.subscribe()),
        endpointslice::run(shared.clone(), pods.subscribe()),
        quotas,
        leases.run(),
        lifecycle,
        node_ipam::run(shared.clone()),
        nodes.run(),
        daemon_sets.run(),
        ds,
        stateful_sets.run(),
        sts,
        jobs.run(),
        job,
        cron,
        pods.run(),
        replica_sets.run(),
        deployments.run(),
        rs,
        deploy,
        garbage_collector::run(client.clone()),
        namespace::run(shared.clone()),
        serviceaccount::run(shared.clone()),
    );
}
