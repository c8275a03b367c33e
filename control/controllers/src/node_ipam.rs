//! Node IPAM: every node gets its own `spec.podCIDR` carved from the cluster CIDR, never
//! one another node holds.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{Controller, controller::Action, watcher},
};

use crate::{Error, Shared};

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.244.0.0/16`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let (ip, prefix) = text.trim().split_once('/')?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Some(Self {
            base: u32::from(ip) & mask,
            prefix,
        })
    }

    /// The `index`-th subnet of length `prefix` inside this network.
    #[must_use]
    pub fn subnet(&self, prefix: u8, index: u32) -> Option<Self> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let count = 1_u64 << (prefix - self.prefix);
        if u64::from(index) >= count {
            return None;
        }
        let size = 1_u64 << (32 - prefix);
        let base = u64::from(self.base) + u64::from(index) * size;
        Some(Self {
            base: u32::try_from(base).ok()?,
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// The IPAM controller's state: CIDRs handed out by this process but maybe not yet seen
/// in the node cache.
#[derive(Debug)]
pub struct Ctx {
    shared: Arc<Shared>,
    cluster: Cidr,
    given: Mutex<HashSet<String>>,
}

/// Runs the controller until dropped; does nothing without a cluster CIDR.
pub async fn run(shared: Arc<Shared>) {
    let Some(text) = shared.config.cluster_cidr.clone() else {
        return;
    };
    let Some(cluster) = Cidr::parse(&text) else {
        tracing::error!(cidr = %text, "invalid --cluster-cidr; node IPAM is off");
        return;
    };
    let api: Api<Node> = Api::all(shared.client.clone());
    let ctx = Arc::new(Ctx {
        shared,
        cluster,
        given: Mutex::new(HashSet::new()),
    });
    Controller::new(api, watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().concurrency(1))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature kube-runtime calls"
)]
fn error_policy(node: Arc<Node>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(node = %node.name_any(), ?err, "pod CIDR allocation failed");
    Action::requeue(Duration::from_secs(2))
}

/// Gives a node without a pod CIDR the first free one.
///
/// # Errors
/// When the range is exhausted or the API server refuses the write.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref())
        .is_some_and(|c| !c.is_empty())
    {
        return Ok(Action::await_change());
    }
    let mask = ctx.shared.config.node_cidr_mask_size;
    let mut used: HashSet<String> = ctx
        .shared
        .nodes
        .state()
        .iter()
        .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
        .collect();
    used.extend(
        ctx.given
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned(),
    );
    let free = (0..u32::MAX)
        .map_while(|i| ctx.cluster.subnet(mask, i))
        .map(|c| c.to_string())
        .find(|c| !used.contains(c))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no pod CIDR left in {} for node {}",
                ctx.cluster,
                node.name_any()
            ))
        })?;
    let api: Api<Node> = Api::all(ctx.shared.client.clone());
    let patch = serde_json::json!({"spec": {"podCIDR": free, "podCIDRs": [free]}});
    api.patch(
        &node.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    tracing::info!(node = %node.name_any(), cidr = %free, "allocated a pod CIDR");
    ctx.given
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(free);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::Cidr;

    #[test]
    fn subnets_tile_the_cluster_range_without_overlap() {
        let c = Cidr::parse("10.244.0.0/16").unwrap();
        assert_eq!(c.subnet(24, 0).unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(c.subnet(24, 255).unwrap().to_string(), "10.244.255.0/24");
        assert!(c.subnet(24, 256).is_none());
        assert!(c.subnet(8, 0).is_none());
        assert_eq!(
            Cidr::parse("10.244.7.9/16").unwrap().to_string(),
            "10.244.0.0/16"
        );
    }
}
