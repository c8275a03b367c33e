//! The node's Lease in `kube-node-lease`: the heartbeat the node lifecycle controller
//! watches, renewed every ten seconds like the kubelet's (simulated nodes pace theirs).

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

use crate::api::Inflight;

/// Where node Leases live.
pub const NAMESPACE: &str = skiff_types::namespace::KUBE_NODE_LEASE;
/// The kubelet's lease duration.
pub const DURATION: Duration = Duration::from_secs(40);
/// How often it is renewed (a quarter of the duration, as the kubelet does).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

fn lease(name: &str, node_uid: &str, duration: Duration) -> Lease {
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
            lease_duration_seconds: Some(seconds(duration)),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    }
}

/// One node's Lease.
#[derive(Clone, Debug)]
pub struct NodeLease {
    /// The Node's name (and the Lease's).
    pub name: String,
    /// The Node's UID, for the owner reference.
    pub node_uid: String,
    /// The duration written into the Lease.
    pub duration: Duration,
}

impl NodeLease {
    /// The Lease of node `name` (UID `node_uid`) with the kubelet's duration.
    #[must_use]
    pub fn new(name: &str, node_uid: &str) -> Self {
        Self {
            name: name.to_owned(),
            node_uid: node_uid.to_owned(),
            duration: DURATION,
        }
    }

    /// Creates the Lease, or renews it when it exists (a restarted node).
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn ensure(&self, client: &Client, inflight: &Inflight) -> Result<(), kube::Error> {
        let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
        let created = {
            let _permit = inflight.permit().await;
            api.create(
                &PostParams::default(),
                &lease(&self.name, &self.node_uid, self.duration),
            )
            .await
        };
        match created {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => self.renew(client, inflight).await,
            Err(err) => Err(err),
        }
    }

    /// Moves the renew time forward, creating the Lease when it is missing.
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn renew(&self, client: &Client, inflight: &Inflight) -> Result<(), kube::Error> {
        let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
        let patch = json!({"spec": {
            "holderIdentity": self.name,
            "leaseDurationSeconds": seconds(self.duration),
            "renewTime": MicroTime(Timestamp::now()),
        }});
        let _permit = inflight.permit().await;
        match api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => api
                .create(
                    &PostParams::default(),
                    &lease(&self.name, &self.node_uid, self.duration),
                )
                .await
                .map(drop),
            Err(err) => Err(err),
        }
    }

    /// Renews the Lease every [`RENEW_EVERY`] until the task is dropped.
    pub async fn renew_forever(self, client: Client) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let inflight = Inflight::unbounded();
        loop {
            tick.tick().await;
            if let Err(err) = self.renew(&client, &inflight).await {
                tracing::warn!(node = %self.name, ?err, "lease renewal failed");
            }
        }
    }
}
