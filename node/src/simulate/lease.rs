//! Node Leases in `kube-node-lease`, renewed on a steady pace spread over the renew
//! interval so thousands of nodes never renew in one burst.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};

use super::Sim;

const NAMESPACE: &str = "kube-node-lease";

async fn renew(sim: &Sim, name: &str) {
    let _permit = sim.limit.acquire().await;
    let api: Api<Lease> = Api::namespaced(sim.client.clone(), NAMESPACE);
    let now = MicroTime(Timestamp::now());
    let duration = i32::try_from(sim.config.lease_duration.as_secs()).unwrap_or(40);
    let patch = serde_json::json!({"spec": {"renewTime": now, "holderIdentity": name, "leaseDurationSeconds": duration}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let node_uid = Api::<k8s_openapi::api::core::v1::Node>::all(sim.client.clone())
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|n| n.metadata.uid);
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(NAMESPACE.to_owned()),
                    // Like the kubelet: the Lease goes away with its Node.
                    owner_references: node_uid.map(|uid| {
                        vec![OwnerReference {
                            api_version: "v1".to_owned(),
                            kind: "Node".to_owned(),
                            name: name.to_owned(),
                            uid,
                            ..OwnerReference::default()
                        }]
                    }),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.to_owned()),
                    lease_duration_seconds: Some(duration),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            if let Err(err) = api.create(&PostParams::default(), &lease).await {
                tracing::debug!(lease = %name, ?err, "lease create failed");
            }
        }
        Err(err) => tracing::debug!(lease = %name, ?err, "lease renewal failed"),
    }
}

/// Renews every live node's Lease once per interval, in slices spread over the interval.
pub(super) async fn renew_forever(sim: Arc<Sim>) {
    const SLICES: u32 = 10;
    let slice = sim.config.lease_renew_interval / SLICES;
    let mut tick = tokio::time::interval(slice.max(Duration::from_millis(10)));
    let mut round: usize = 0;
    loop {
        tick.tick().await;
        let names: Vec<String> = sim
            .nodes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, i)| **i % SLICES as usize == round % SLICES as usize)
            .map(|(n, _)| n.clone())
            .collect();
        round = round.wrapping_add(1);
        stream::iter(names)
            .for_each_concurrent(sim.config.concurrency.max(1), |name| {
                let sim = sim.clone();
                async move { renew(&sim, &name).await }
            })
            .await;
    }
}
