//! Pods bound to simulated nodes: started (Running and Ready) after the startup delay,
//! ended or restarted as the `skiff.io/sim-*` annotations and the restart policy say, and
//! deleted for good once they are marked for deletion, as a kubelet would.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};
use tokio::task::AbortHandle;

use super::{Sim, SimError, registry::node_ip};

/// Exit code a simulated container ends with.
pub const EXIT_CODE: &str = "skiff.io/sim-exit-code";
/// Seconds a simulated container runs before it exits (absent: runs forever).
pub const RUN_SECONDS: &str = "skiff.io/sim-run-seconds";

/// Pods being driven: uid -> the task driving it.
type Driven = Arc<Mutex<HashMap<String, AbortHandle>>>;

/// Watches every pod and drives those bound to this process's nodes.
pub(super) async fn drive(sim: Arc<Sim>) -> Result<(), SimError> {
    let api: Api<Pod> = Api::all(sim.client.clone());
    let driven: Driven = Arc::default();
    let mut events =
        std::pin::pin!(watcher(api, watcher::Config::default().any_semantic()).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                on_pod(&sim, &driven, pod);
            }
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.uid().unwrap_or_default();
                if let Some(task) = driven
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&uid)
                {
                    task.abort();
                }
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) | Err(_) => {}
        }
    }
    Err(SimError::WatchEnded)
}

fn on_pod(sim: &Arc<Sim>, driven: &Driven, pod: Pod) {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return;
    };
    let Some(index) = sim.owns(&node) else {
        return;
    };
    let uid = pod.uid().unwrap_or_default();
    let mut map = driven.lock().unwrap_or_else(PoisonError::into_inner);
    if pod.metadata.deletion_timestamp.is_some() {
        if let Some(task) = map.remove(&uid) {
            task.abort();
        }
        let sim = sim.clone();
        tokio::spawn(async move { finish_deletion(&sim, &pod).await });
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if map.contains_key(&uid) || matches!(phase, Some("Succeeded" | "Failed")) {
        return;
    }
    let sim2 = sim.clone();
    let driven2 = driven.clone();
    let uid2 = uid.clone();
    let task = tokio::spawn(async move {
        lifecycle(&sim2, &pod, index).await;
        driven2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&uid2);
    });
    map.insert(uid, task.abort_handle());
}

/// The containers are gone at once: remove the object (grace period 0), as the kubelet
/// does after its containers stopped.
async fn finish_deletion(sim: &Sim, pod: &Pod) {
    let _permit = sim.limit.acquire().await;
    let api: Api<Pod> = Api::namespaced(sim.client.clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: pod.uid().map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(err) => tracing::debug!(pod = %pod.name_any(), ?err, "final delete failed"),
    }
}

fn annotation<T: std::str::FromStr>(pod: &Pod, key: &str) -> Option<T> {
    pod.annotations().get(key).and_then(|v| v.parse().ok())
}

/// A fake pod IP, unique per node and pod slot (text only).
fn pod_ip(index: usize, uid: &str) -> String {
    let slot = uid
        .bytes()
        .fold(0_u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 250
        + 2;
    let node = u32::try_from(index).unwrap_or(0);
    std::net::Ipv4Addr::from((10_u32 << 24) | ((64 << 16) + (node << 8) + slot)).to_string()
}

async fn lifecycle(sim: &Sim, pod: &Pod, index: usize) {
    tokio::time::sleep(sim.config.pod_startup).await;
    let started = Timestamp::now();
    let mut restarts = 0;
    let mut last_state: Option<Value> = None;
    if !patch(
        sim,
        pod,
        &running(pod, index, started, restarts, last_state.as_ref()),
    )
    .await
    {
        return;
    }
    let Some(run_for) = annotation::<u64>(pod, RUN_SECONDS) else {
        return;
    };
    let code = annotation::<i32>(pod, EXIT_CODE).unwrap_or(0);
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".to_owned());
    loop {
        let since = Timestamp::now();
        tokio::time::sleep(Duration::from_secs(run_for)).await;
        let ended = Timestamp::now();
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        let terminated = json!({"terminated": {
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": Time(since),
            "finishedAt": Time(ended),
            "containerID": format!("sim://{}", pod.uid().unwrap_or_default()),
        }});
        if !restart {
            patch(
                sim,
                pod,
                &finished(pod, index, started, restarts, &terminated, code),
            )
            .await;
            return;
        }
        restarts += 1;
        last_state = Some(terminated);
        if !patch(
            sim,
            pod,
            &running(pod, index, Timestamp::now(), restarts, last_state.as_ref()),
        )
        .await
        {
            return;
        }
    }
}

async fn patch(sim: &Sim, pod: &Pod, status: &Value) -> bool {
    let _permit = sim.limit.acquire().await;
    let api: Api<Pod> = Api::namespaced(sim.client.clone(), &pod.namespace().unwrap_or_default());
    match api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
    {
        Ok(_) => true,
        Err(err) => {
            tracing::debug!(pod = %pod.name_any(), ?err, "status update failed");
            false
        }
    }
}

fn condition(type_: &str, status: bool, at: Timestamp, reason: Option<&str>) -> Value {
    let mut c = json!({
        "type": type_,
        "status": if status { "True" } else { "False" },
        "lastTransitionTime": Time(at),
    });
    if let Some(reason) = reason {
        c["reason"] = json!(reason);
    }
    c
}

fn init_statuses(pod: &Pod, at: Timestamp) -> Value {
    let list: Vec<Value> = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image,
                "imageID": format!("sim://{}", c.image.as_deref().unwrap_or_default()),
                "ready": true,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": Time(at), "finishedAt": Time(at)}},
            })
        })
        .collect();
    json!(list)
}

fn base(pod: &Pod, index: usize, at: Timestamp) -> Value {
    let ip = pod_ip(index, pod.metadata.uid.as_deref().unwrap_or_default());
    let host = node_ip(index);
    let start = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .unwrap_or(Time(at));
    json!({
        "hostIP": host,
        "hostIPs": [{"ip": host}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": start,
        "qosClass": pod.status.as_ref().and_then(|s| s.qos_class.clone()).unwrap_or_else(|| "BestEffort".to_owned()),
        "initContainerStatuses": init_statuses(pod, at),
    })
}

fn running(pod: &Pod, index: usize, at: Timestamp, restarts: i32, last: Option<&Value>) -> Value {
    let mut status = base(pod, index, at);
    let containers: Vec<Value> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let mut s = json!({
                "name": c.name,
                "image": c.image,
                "imageID": format!("sim://{}", c.image.as_deref().unwrap_or_default()),
                "containerID": format!("sim://{}/{}", pod.uid().unwrap_or_default(), c.name),
                "ready": true,
                "started": true,
                "restartCount": restarts,
                "state": {"running": {"startedAt": Time(at)}},
            });
            if let Some(last) = last {
                s["lastState"] = last.clone();
            }
            s
        })
        .collect();
    status["phase"] = json!("Running");
    status["containerStatuses"] = json!(containers);
    status["conditions"] = json!([
        condition("PodReadyToStartContainers", true, at, None),
        condition("Initialized", true, at, None),
        condition("Ready", true, at, None),
        condition("ContainersReady", true, at, None),
        condition("PodScheduled", true, at, None),
    ]);
    status
}

fn finished(
    pod: &Pod,
    index: usize,
    at: Timestamp,
    restarts: i32,
    terminated: &Value,
    code: i32,
) -> Value {
    let now = Timestamp::now();
    let mut status = base(pod, index, at);
    let containers: Vec<Value> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image,
                "imageID": format!("sim://{}", c.image.as_deref().unwrap_or_default()),
                "containerID": format!("sim://{}/{}", pod.uid().unwrap_or_default(), c.name),
                "ready": false,
                "started": false,
                "restartCount": restarts,
                "state": terminated,
            })
        })
        .collect();
    let reason = if code == 0 {
        "PodCompleted"
    } else {
        "PodFailed"
    };
    status["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
    status["containerStatuses"] = json!(containers);
    status["conditions"] = json!([
        condition("PodReadyToStartContainers", false, now, None),
        condition("Initialized", true, at, Some(reason)),
        condition("Ready", false, now, Some(reason)),
        condition("ContainersReady", false, now, Some(reason)),
        condition("PodScheduled", true, at, None),
    ]);
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_differ_per_node() {
        assert_ne!(pod_ip(0, "a"), pod_ip(1, "a"));
        assert!(pod_ip(3, "abc").starts_with("10.64.3."));
    }
}
