//! skiff-controllers keeps every object at its declared state: one level-triggered,
//! idempotent reconciler per concern (ReplicaSet and `ReplicationController`, Deployment,
//! StatefulSet, DaemonSet, Job, CronJob, Endpoints, EndpointSlices, nodes, namespaces,
//! garbage collection, quotas, default `ServiceAccounts`, `LoadBalancer` addresses,
//! horizontal pod autoscaling, `PersistentVolume` binding and claim and volume protection), each
//! talking to the API server through the `kube` crate like any client, over the shared
//! informers of skiff-control-runtime.
//!
//! Each controller decides in a pure `plan` (observed state and the time in, steps out,
//! unit-tested on a fake clock) and carries the steps out in a thin `apply`. Controllers
//! share only the modules here that are not controllers ([`pods`], [`revision`],
//! [`backends`], [`kinds`]), never each other's internals.

#![forbid(unsafe_code)]

pub mod backends;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
#[cfg(test)]
mod fixtures;
pub mod garbage_collector;
pub mod job;
pub mod kinds;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod persistentvolume;
pub mod podautoscaler;
pub mod pods;
pub mod pv_protection;
pub mod pvc_protection;
pub mod replicaset;
pub mod resourcequota;
pub mod revision;
pub mod rootca;
pub mod service_lb;
pub mod serviceaccount;
pub mod statefulset;

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::ReplicationController};
use skiff_control_runtime::{Clock, Informers, SystemClock};
use skiff_types::Ipv4Cidr;

/// The pod network node IPAM splits when `control` is not told otherwise: k3s' default,
/// clear of the default Service range (10.96.0.0/12).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";

/// Settings shared by the controllers (flags of the `control` binary).
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a node may go without renewing its Lease before it is `Ready=Unknown`.
    pub node_monitor_grace_period: Duration,
    /// Toleration seconds given to pods for the not-ready/unreachable taints by default.
    pub default_toleration_seconds: i64,
    /// The pod network that node IPAM splits into per-node `spec.podCIDR`s (none: off).
    pub cluster_cidr: Option<Ipv4Cidr>,
    /// Prefix length of each node's pod CIDR.
    pub node_cidr_mask_size: u8,
    /// The addresses `LoadBalancer` Services get (none: they get none, and an Event on each
    /// says so).
    pub loadbalancer_ip_range: Option<service_lb::IpRange>,
    /// The horizontal pod autoscaler's sync period and default scale-down window.
    pub autoscaling: podautoscaler::Settings,
    /// The cluster CA (PEM) published as `kube-root-ca.crt` in every namespace (none: not
    /// published).
    pub root_ca: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_monitor_grace_period: Duration::from_secs(40),
            default_toleration_seconds: 300,
            cluster_cidr: Ipv4Cidr::parse_masked(DEFAULT_CLUSTER_CIDR).ok(),
            node_cidr_mask_size: 24,
            loadbalancer_ip_range: None,
            autoscaling: podautoscaler::Settings::default(),
            root_ca: None,
        }
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

/// Every controller over `informers`; the returned future runs them until dropped (run
/// `informers` beside it).
pub fn run(informers: &Informers, config: &Config) -> impl Future<Output = ()> + Send + use<> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let replica_sets = replicaset::start::<ReplicaSet>(informers, clock.clone());
    let replication_controllers =
        replicaset::start::<ReplicationController>(informers, clock.clone());
    let deployments = deployment::start(informers, clock.clone());
    let stateful_sets = statefulset::start(informers, clock.clone());
    let daemon_sets = daemonset::start(informers, clock.clone());
    let jobs = job::start(informers, clock.clone());
    let cron_jobs = cronjob::start(informers, clock.clone());
    let endpoints = endpoints::start(informers, clock.clone());
    let endpoint_slices = endpointslice::start(informers, clock.clone());
    let garbage_collector = garbage_collector::start(informers);
    let namespaces = namespace::start(informers, clock.clone());
    let service_accounts = serviceaccount::start(informers, clock.clone());
    let volumes = persistentvolume::start(informers, clock.clone());
    let claim_protection = pvc_protection::start(informers, clock.clone());
    let volume_protection = pv_protection::start(informers, clock.clone());
    let quotas = resourcequota::start(informers, clock.clone());
    let node_lifecycle = node_lifecycle::start(informers, config, clock.clone());
    let autoscalers = podautoscaler::start(informers, config.autoscaling, clock.clone());
    let service_lb = service_lb::start(informers, config.loadbalancer_ip_range, clock.clone());
    let root_ca = config
        .root_ca
        .clone()
        .map(|ca| rootca::start(informers, ca, clock.clone()));
    let node_ipam = config
        .cluster_cidr
        .map(|cidr| node_ipam::start(informers, cidr, config.node_cidr_mask_size, clock.clone()));
    async move {
        tokio::join!(
            replica_sets,
            replication_controllers,
            deployments,
            stateful_sets,
            daemon_sets,
            jobs,
            cron_jobs,
            endpoints,
            endpoint_slices,
            garbage_collector,
            namespaces,
            service_accounts,
            volumes,
            claim_protection,
            volume_protection,
            quotas,
            node_lifecycle,
            service_lb,
            autoscalers,
            async {
                if let Some(ipam) = node_ipam {
                    ipam.await;
                }
            },
            async {
                if let Some(publisher) = root_ca {
                    publisher.await;
                }
            },
        );
    }
}
