//! What every request handler shares (the store, the Service pools, the metrics), built
//! without a socket so that the verbs can be driven directly, as the unit tests do.

use std::{ops::RangeInclusive, sync::Arc};

use skiff_store::Store;
use skiff_types::Ipv4Cidr;

use crate::{
    allocator::{RangeError, ServicePools},
    audit::Auditor,
    authn::ServiceAccountTokens,
    authz::Authorizer,
    cache::WatchCache,
    flowcontrol::FlowControl,
    kubelet_client::KubeletClient,
    metrics::Metrics,
};

/// The API server's shared state.
pub struct Ctx {
    /// Where objects live.
    pub store: Arc<dyn Store>,
    /// Lists, gets and watches served from memory.
    pub cache: WatchCache,
    /// Service cluster IPs and node ports.
    pub pools: ServicePools,
    /// Request counters and latencies.
    pub metrics: Metrics,
    /// The address clients reach this server at (`/api`'s `serverAddressByClientCIDRs`).
    pub address: String,
    /// RBAC and the Node authorizer, over objects held in memory.
    pub authz: Authorizer,
    /// The audit log, when one is configured.
    pub audit: Option<Arc<Auditor>>,
    /// How node endpoints are reached (TLS, with the API server's kubelet-client certificate).
    pub kubelet: KubeletClient,
    /// Seats and watch counts that keep one client from exhausting the server.
    pub flow: FlowControl,
    /// Request bodies above this many bytes are refused 413 (`--max-request-body-bytes`).
    pub max_body: usize,
    /// The ServiceAccount token signer (`TokenRequest`), when one is configured.
    pub service_accounts: Option<Arc<ServiceAccountTokens>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// The state of a server on `store` handing out cluster IPs from `service_cidr` and node
    /// ports from `node_ports`, reachable at `address`.
    ///
    /// # Errors
    /// When the Service range is too small or too large to allocate from.
    pub fn new(
        store: Arc<dyn Store>,
        service_cidr: Ipv4Cidr,
        node_ports: RangeInclusive<u16>,
        address: String,
    ) -> Result<Self, RangeError> {
        Ok(Self {
            cache: WatchCache::new(Arc::clone(&store)),
            store,
            pools: ServicePools::new(service_cidr, node_ports)?,
            metrics: Metrics::default(),
            address,
            authz: Authorizer::default(),
            audit: None,
            kubelet: KubeletClient::default(),
            flow: FlowControl::default(),
            max_body: crate::http::MAX_BODY,
            service_accounts: None,
        })
    }
}
