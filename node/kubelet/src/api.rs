//! The kubelet's writes to the API server about its pods (status, the final delete, events)
//! behind [`PodApi`], and the bound on requests in flight that simulated nodes share.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference, Pod, PodStatus},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
};
use serde_json::json;
use skiff_types::{EventType, namespace};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Why a write about a pod failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The status patch was refused or did not reach the API server.
    #[error("status update failed: {0}")]
    Status(#[source] kube::Error),
    /// The final delete was refused or did not reach the API server.
    #[error("delete failed: {0}")]
    Delete(#[source] kube::Error),
}

/// Bounds the API requests in flight. A real node leaves it unbounded; the simulated nodes
/// of one process share one bound, so thousands of nodes cannot flood the API server.
#[derive(Clone, Debug, Default)]
pub struct Inflight(Option<Arc<Semaphore>>);

impl Inflight {
    /// At most `limit` requests at once (at least one).
    #[must_use]
    pub fn bounded(limit: usize) -> Self {
        Self(Some(Arc::new(Semaphore::new(limit.max(1)))))
    }

    /// No bound.
    #[must_use]
    pub fn unbounded() -> Self {
        Self(None)
    }

    /// Waits for a slot; the request runs while the permit is held.
    pub async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        match &self.0 {
            // The semaphore is never closed, so acquiring only waits.
            Some(limit) => limit.acquire().await.ok(),
            None => None,
        }
    }
}

/// What the pod workers write to the API server.
#[async_trait]
pub trait PodApi: Send + Sync + 'static {
    /// Writes the pod's status.
    async fn patch_status(&self, pod: &Pod, status: &PodStatus) -> Result<(), ApiError>;
    /// Deletes the pod object for good (grace 0, UID precondition) once it has stopped.
    async fn delete_pod(&self, pod: &Pod) -> Result<(), ApiError>;
    /// Records an event about the pod.
    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, message: &str);
}

/// [`PodApi`] over a kube client, as the kubelet writes.
#[derive(Clone)]
pub struct KubePodApi {
    client: Client,
    node: String,
    inflight: Inflight,
    events: bool,
}

impl std::fmt::Debug for KubePodApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePodApi")
            .field("node", &self.node)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl KubePodApi {
    /// Writes for node `node` through `client`, `inflight` at a time; `events` off records
    /// none (simulated nodes, whose thousands of pods would double the API's load).
    #[must_use]
    pub fn new(client: Client, node: &str, inflight: Inflight, events: bool) -> Self {
        Self {
            client,
            node: node.to_owned(),
            inflight,
            events,
        }
    }
}

fn names(pod: &Pod) -> (&str, &str, &str) {
    (
        pod.metadata
            .namespace
            .as_deref()
            .unwrap_or(namespace::DEFAULT),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
    )
}

#[async_trait]
impl PodApi for KubePodApi {
    async fn patch_status(&self, pod: &Pod, status: &PodStatus) -> Result<(), ApiError> {
        let (ns, name, uid) = names(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        // The UID in the patch makes it fail on a newer pod of the same name.
        let patch = json!({"metadata": {"uid": uid}, "status": status});
        let _permit = self.inflight.permit().await;
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(ApiError::Status)
    }

    async fn delete_pod(&self, pod: &Pod) -> Result<(), ApiError> {
        let (ns, name, uid) = names(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let _permit = self.inflight.permit().await;
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            // Gone already, or a newer pod took the name (the UID precondition failed).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(ApiError::Delete(e)),
        }
    }

    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, message: &str) {
        if !self.events {
            return;
        }
        let (ns, name, uid) = names(pod);
        let now = Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(ns.to_owned()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.to_owned()),
                namespace: Some(ns.to_owned()),
                uid: Some(uid.to_owned()),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(type_.as_str().to_owned()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let inflight = self.inflight.clone();
        // Events are best effort and must not hold a pod back.
        tokio::spawn(async move {
            let _permit = inflight.permit().await;
            if let Err(err) = api.create(&PostParams::default(), &event).await {
                tracing::debug!(?err, "event not recorded");
            }
        });
    }
}
