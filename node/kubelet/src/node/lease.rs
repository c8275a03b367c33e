//! The node's Lease in `kube-node-lease`: the heartbeat the node lifecycle controller
//! watches, renewed every ten seconds like the kubelet's.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

/// Where node Leases live.
pub const NAMESPACE: &str = skiff_types::namespace::KUBE_NODE_LEASE;
/// The kubelet's lease duration.
pub const DURATION: Duration = Duration::from_secs(40);
/// How often it is renewed (a quarter of the duration, as the kubelet does).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

fn lease(name: &str, node_uid: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            // Collected with its Node, like the kubelet's.
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
            lease_duration_seconds: Some(i32::try_from(DURATION.as_secs()).unwrap_or(40)),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    }
}

/// Renews the Lease, creating it when it is missing.
///
/// # Errors
/// When the API server refuses.
pub async fn renew(client: &Client, name: &str, node_uid: &str) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let patch = json!({"spec": {
        "holderIdentity": name,
        "leaseDurationSeconds": DURATION.as_secs(),
        "renewTime": MicroTime(Timestamp::now()),
    }});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => api
            .create(&PostParams::default(), &lease(name, node_uid))
            .await
            .map(drop),
        Err(err) => Err(err),
    }
}

/// Renews the Lease every [`RENEW_EVERY`] until the task is dropped.
pub async fn renew_forever(client: Client, name: String, node_uid: String) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = renew(&client, &name, &node_uid).await {
            tracing::warn!(node = %name, ?err, "lease renewal failed");
        }
    }
}
