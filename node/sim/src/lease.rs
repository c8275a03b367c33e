//! Node Leases in `kube-node-lease`, renewed by one pacing loop that spreads every node's
//! renewal evenly over the renew interval, so thousands of nodes never renew in a burst.

use std::{collections::HashSet, sync::Arc};

use futures::{StreamExt, stream::FuturesUnordered};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::time::Instant;

use super::{Sim, api_code, pace::Pacer};

/// Where the kubelet keeps node Leases.
pub(super) const NAMESPACE: &str = skiff_types::namespace::KUBE_NODE_LEASE;

fn duration_seconds(sim: &Sim) -> i32 {
    i32::try_from(sim.config.lease_duration.as_secs()).unwrap_or(i32::MAX)
}

fn lease(sim: &Sim, name: &str, node_uid: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            // Like the kubelet's: the Lease is garbage-collected with its Node.
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Node".to_owned(),
                name: name.to_owned(),
                uid: node_uid.to_owned(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_owned()),
            lease_duration_seconds: Some(duration_seconds(sim)),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    }
}

/// Creates node `index`'s Lease, or renews it when it exists (a restarted process).
pub(super) async fn ensure(sim: &Sim, index: usize, node_uid: &str) -> Result<(), kube::Error> {
    let name = sim.name(index);
    let api: Api<Lease> = Api::namespaced(sim.client.clone(), NAMESPACE);
    let created = {
        let _permit = sim.permit().await;
        api.create(&PostParams::default(), &lease(sim, &name, node_uid))
            .await
    };
    match created {
        Ok(_) => Ok(()),
        Err(err) if api_code(&err) == Some(409) => renew(sim, index, node_uid).await,
        Err(err) => Err(err),
    }
}

/// Moves the renew time forward (and recreates a Lease someone deleted).
async fn renew(sim: &Sim, index: usize, node_uid: &str) -> Result<(), kube::Error> {
    let name = sim.name(index);
    let api: Api<Lease> = Api::namespaced(sim.client.clone(), NAMESPACE);
    let patch = json!({"spec": {
        "holderIdentity": name,
        "leaseDurationSeconds": duration_seconds(sim),
        "renewTime": MicroTime(Timestamp::now()),
    }});
    let _permit = sim.permit().await;
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if api_code(&err) == Some(404) => api
            .create(&PostParams::default(), &lease(sim, &name, node_uid))
            .await
            .map(drop),
        Err(err) => Err(err),
    }
}

/// Renews every live node's Lease once per interval, node `i` at `i / count` of the way
/// through it. A renewal still in flight when its node comes round again is not doubled.
pub(super) async fn renew_forever(sim: Arc<Sim>) {
    let interval = sim.config.lease_renew_interval;
    // Registration just created or renewed every Lease.
    let mut pacer = Pacer::new(sim.config.count, interval, Instant::now() + interval);
    let mut in_flight = FuturesUnordered::new();
    let mut busy = HashSet::new();
    loop {
        tokio::select! {
            due = pacer.due() => {
                for index in due {
                    let node = {
                        let nodes = sim.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                        nodes.get(index).cloned().flatten()
                    };
                    let Some(node) = node else { continue };
                    if !busy.insert(index) {
                        tracing::debug!(node = index, "lease renewal still in flight, skipping a round");
                        continue;
                    }
                    let sim = sim.clone();
                    in_flight.push(async move {
                        let result = renew(&sim, index, &node.uid).await;
                        (index, result)
                    });
                }
            }
            Some((index, result)) = in_flight.next(), if !in_flight.is_empty() => {
                busy.remove(&index);
                if let Err(err) = result {
                    tracing::warn!(node = %sim.name(index), ?err, "lease renewal failed");
                }
            }
        }
    }
}
