//! The writes that carry out a scheduling decision: the chosen node on the pod's delayed
//! claims, the binding, the `PodScheduled=False`
//! condition and nominated node of a pod that must wait, and the eviction of preemption
//! victims.

use k8s_openapi::{
    api::core::v1::{Binding, ObjectReference, PersistentVolumeClaim, Pod},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use skiff_types::storage::SELECTED_NODE;

/// Errors of the writes.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The API server refused the request or could not be reached.
    #[error("request to the API server failed")]
    Api(#[from] kube::Error),
}

impl BindError {
    /// Whether the pod no longer exists.
    #[must_use]
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Api(kube::Error::Api(s)) if s.code == 404)
    }
}

fn pods(client: &Client, pod: &Pod) -> Api<Pod> {
    Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default())
}

/// Binds `pod` to `node` through `pods/{name}/binding`.
///
/// # Errors
/// When the API server refuses the binding (already bound, pod gone, ...).
pub async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), BindError> {
    let name = pod.name_any();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: pod.namespace(),
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
    pods(client, pod)
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await?;
    Ok(())
}

/// Marks the claim `name` with the node its first pod goes to
/// (`volume.kubernetes.io/selected-node`), so its volume is bound or provisioned there.
///
/// # Errors
/// When the API server refuses the write (the claim is gone, ...).
pub async fn select_node(
    client: &Client,
    namespace: &str,
    name: &str,
    node: &str,
) -> Result<(), BindError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
    claims
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// What a waiting pod's status says about its scheduling.
#[derive(Debug, PartialEq, Eq)]
pub enum Nomination<'a> {
    /// Leave `status.nominatedNodeName` as it is.
    Keep,
    /// Set it (the pod preempted pods there).
    Set(&'a str),
}

/// Marks `pod` unschedulable (`PodScheduled=False`, reason `Unschedulable`, the message)
/// and, after a preemption, records its nominated node; writes nothing when the status
/// already says so.
///
/// # Errors
/// When the API server refuses the write.
pub async fn mark_unschedulable(
    client: &Client,
    pod: &Pod,
    message: &str,
    nomination: Nomination<'_>,
) -> Result<(), BindError> {
    let status = pod.status.as_ref();
    let current = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    let same_condition = current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
    });
    let nominated = status.and_then(|s| s.nominated_node_name.as_deref());
    let same_nomination = match nomination {
        Nomination::Keep => true,
        Nomination::Set(node) => nominated == Some(node),
    };
    if same_condition && same_nomination {
        return Ok(());
    }
    let mut patch = serde_json::json!({
        "status": {
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": Time(Timestamp::now()),
            }]
        }
    });
    if let Nomination::Set(node) = nomination {
        patch["status"]["nominatedNodeName"] = node.into();
    }
    pods(client, pod)
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
    Ok(())
}

/// Clears the nominated node of a lower-priority pod whose room a preemptor took.
///
/// # Errors
/// When the API server refuses the write.
pub async fn clear_nomination(client: &Client, pod: &Pod) -> Result<(), BindError> {
    let patch = serde_json::json!({"status": {"nominatedNodeName": null}});
    pods(client, pod)
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Evicts a preemption victim: the `DisruptionTarget` condition kube-scheduler sets, then
/// a graceful delete.
///
/// # Errors
/// When the API server refuses the delete (a victim already gone is fine).
pub async fn evict(client: &Client, victim: &Pod, scheduler: &str) -> Result<(), BindError> {
    let api = pods(client, victim);
    let condition = serde_json::json!({
        "status": {
            "conditions": [{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "PreemptionByScheduler",
                "message": format!("{scheduler}: preempting to accommodate a higher priority pod"),
                "lastTransitionTime": Time(Timestamp::now()),
            }]
        }
    });
    if let Err(err) = api
        .patch_status(
            &victim.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(&condition),
        )
        .await
    {
        tracing::debug!(victim = %victim.name_any(), ?err, "could not mark the victim");
    }
    match api
        .delete(&victim.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}
