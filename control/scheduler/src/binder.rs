//! The writes that report a scheduling decision: the binding, the `Scheduled` and
//! `FailedScheduling` events, and the `PodScheduled=False` condition.

use k8s_openapi::{
    api::core::v1::{Binding, ObjectReference, Pod},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use skiff_controllers::events::Recorder;

/// Errors of the writes.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The API server refused or could not be reached.
    #[error("binding request failed")]
    Api(#[from] kube::Error),
}

/// Binds `pod` to `node` through `pods/{name}/binding`.
///
/// # Errors
/// When the API server refuses the binding (already bound, pod gone, ...).
pub async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), BindError> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(node.to_owned()),
            ..ObjectReference::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        &name,
        &PostParams::default(),
        &binding,
    )
    .await?;
    Ok(())
}

/// Records the `Scheduled` event.
pub async fn scheduled(recorder: &Recorder, pod: &Pod, node: &str) {
    let message = format!(
        "Successfully assigned {}/{} to {node}",
        pod.namespace().unwrap_or_default(),
        pod.name_any()
    );
    recorder.normal(pod, "Scheduled", &message).await;
}

/// Marks `pod` unschedulable (`PodScheduled=False`, reason `Unschedulable`) and records
/// `FailedScheduling`; the condition is only written when it changes.
pub async fn unschedulable(client: &Client, recorder: &Recorder, pod: &Pod, message: &str) {
    recorder.warning(pod, "FailedScheduling", message).await;
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    if current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
    }) {
        return;
    }
    let patch = serde_json::json!({
        "status": {
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": Time(Timestamp::now()),
            }]
        }
    });
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    if let Err(err) = api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::debug!(pod = %pod.name_any(), ?err, "could not mark the pod unschedulable");
    }
}

/// Records the node a preemptor waits for (`status.nominatedNodeName`).
///
/// # Errors
/// When the API server refuses the write.
pub async fn nominate(client: &Client, pod: &Pod, node: &str) -> Result<(), BindError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": {"nominatedNodeName": node}});
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}
