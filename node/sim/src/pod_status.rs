//! The pod status documents a kubelet would write for containers that start, exit, restart
//! and get killed, built from what the pod's spec and annotations say the simulated
//! containers do. Sent as strategic merge patches, so conditions other parts of the system
//! own (`PodScheduled`, `DisruptionTarget`) stay as they are.

use std::{net::Ipv4Addr, time::Duration};

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;
use serde_json::{Value, json};
use skiff_types::{ContainerRestartPolicy, RestartPolicy};

/// Pod annotation: the exit code the simulated containers end with (default 0).
pub const EXIT_CODE: &str = "skiff.io/sim-exit-code";
/// Pod annotation: seconds the simulated containers run before they exit (absent: they run
/// until the pod is deleted, like a server).
pub const RUN_SECONDS: &str = "skiff.io/sim-run-seconds";

/// An init container: a sidecar (`restartPolicy: Always`) keeps running beside the
/// containers, the others have completed before they start.
#[derive(Debug)]
struct InitContainer {
    name: String,
    image: String,
    sidecar: bool,
}

/// What the spec and annotations say the pod's simulated containers do.
#[derive(Debug)]
pub(super) struct Shape {
    containers: Vec<(String, String)>,
    init_containers: Vec<InitContainer>,
    pub(super) restart_policy: RestartPolicy,
    /// The pod shares its node's address.
    pub(super) host_network: bool,
    /// How long the containers run before they exit; `None`: until deleted.
    pub(super) run_for: Option<Duration>,
    pub(super) exit_code: i32,
}

impl Shape {
    pub(super) fn of(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let image = |c: &k8s_openapi::api::core::v1::Container| c.image.clone().unwrap_or_default();
        let annotation = |key: &str| pod.annotations().get(key).map(|v| v.trim().to_owned());
        Self {
            containers: spec
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| (c.name.clone(), image(c)))
                        .collect()
                })
                .unwrap_or_default(),
            init_containers: spec
                .and_then(|s| s.init_containers.as_ref())
                .into_iter()
                .flatten()
                .map(|c| InitContainer {
                    name: c.name.clone(),
                    image: image(c),
                    sidecar: ContainerRestartPolicy::from_field(c.restart_policy.as_deref())
                        .is_ok_and(ContainerRestartPolicy::is_sidecar),
                })
                .collect(),
            restart_policy: RestartPolicy::from_field(
                spec.and_then(|s| s.restart_policy.as_deref()),
            )
            .unwrap_or_default(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            run_for: annotation(RUN_SECONDS)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
            exit_code: annotation(EXIT_CODE)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// How a container run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Exit {
    pub(super) code: i32,
    pub(super) started: Timestamp,
    pub(super) finished: Timestamp,
}

impl Exit {
    fn state(&self, container_id: &str) -> Value {
        json!({"terminated": {
            "exitCode": self.code,
            "reason": if self.code == 0 { "Completed" } else { "Error" },
            "startedAt": Time(self.started),
            "finishedAt": Time(self.finished),
            "containerID": container_id,
        }})
    }
}

/// What every status of one pod shares.
#[derive(Debug)]
pub(super) struct Facts<'a> {
    pub(super) uid: &'a str,
    pub(super) shape: &'a Shape,
    pub(super) host_ip: Ipv4Addr,
    pub(super) pod_ip: Option<Ipv4Addr>,
    /// When the node first saw the pod (`status.startTime`).
    pub(super) start_time: Timestamp,
    /// The pod has no `PodScheduled` condition (bound at creation): add it, as the
    /// kubelet does.
    pub(super) add_scheduled: bool,
}

impl Facts<'_> {
    fn container_id(&self, name: &str, restarts: i32) -> String {
        format!("sim://{}/{name}/{restarts}", self.uid)
    }

    fn base(&self, phase: &str) -> Value {
        let pod_ip = self.pod_ip.map(|ip| ip.to_string());
        let mut status = json!({
            "phase": phase,
            "hostIP": self.host_ip.to_string(),
            "hostIPs": [{"ip": self.host_ip.to_string()}],
            "startTime": Time(self.start_time),
        });
        if let Some(ip) = pod_ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{ "ip": ip }]);
        }
        status
    }

    fn init_statuses(&self, sidecars_running_since: Option<Timestamp>, ended: Timestamp) -> Value {
        let list: Vec<Value> = self
            .shape
            .init_containers
            .iter()
            .map(|c| {
                let id = self.container_id(&c.name, 0);
                let (ready, started, state) = match (c.sidecar, sidecars_running_since) {
                    (true, Some(since)) => {
                        (true, true, json!({"running": {"startedAt": Time(since)}}))
                    }
                    (true, None) => (
                        false,
                        false,
                        Exit {
                            code: 0,
                            started: self.start_time,
                            finished: ended,
                        }
                        .state(&id),
                    ),
                    (false, _) => (
                        true,
                        false,
                        Exit {
                            code: 0,
                            started: self.start_time,
                            finished: self.start_time,
                        }
                        .state(&id),
                    ),
                };
                json!({
                    "name": c.name,
                    "image": c.image,
                    "imageID": format!("sim://{}", c.image),
                    "containerID": id,
                    "ready": ready,
                    "started": started,
                    "restartCount": 0,
                    "state": state,
                })
            })
            .collect();
        json!(list)
    }

    /// Every container's status; `state` gets the container's ID.
    fn containers(
        &self,
        restarts: i32,
        ready: bool,
        state: impl Fn(&str) -> Value,
        last: Option<&Exit>,
    ) -> Value {
        let statuses: Vec<Value> = self
            .shape
            .containers
            .iter()
            .map(|(name, image)| {
                let id = self.container_id(name, restarts);
                let mut s = json!({
                    "name": name,
                    "image": image,
                    "imageID": format!("sim://{image}"),
                    "containerID": id,
                    "ready": ready,
                    "started": ready,
                    "restartCount": restarts,
                    "state": state(&id),
                });
                if let Some(last) = last {
                    s["lastState"] = last.state(&self.container_id(name, restarts - 1));
                }
                s
            })
            .collect();
        json!(statuses)
    }

    fn conditions(&self, ready: bool, at: Option<Timestamp>, reason: Option<&str>) -> Value {
        let condition = |type_: &str, status: bool| {
            let mut c = json!({"type": type_, "status": if status { "True" } else { "False" }});
            if let Some(at) = at {
                c["lastTransitionTime"] = json!(Time(at));
            }
            if let Some(reason) = reason.filter(|_| !status || type_ == "Initialized") {
                c["reason"] = json!(reason);
            }
            c
        };
        let mut list = vec![
            condition("PodReadyToStartContainers", ready),
            condition("Initialized", true),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ];
        if self.add_scheduled {
            let mut scheduled = condition("PodScheduled", true);
            scheduled["lastTransitionTime"] = json!(Time(self.start_time));
            list.push(scheduled);
        }
        json!(list)
    }

    /// Containers running since `since` after `restarts` restarts; `last` is how the
    /// previous run ended. A restart keeps the conditions' transition times (they stay
    /// True).
    pub(super) fn running(&self, since: Timestamp, restarts: i32, last: Option<&Exit>) -> Value {
        let mut status = self.base("Running");
        if !self.shape.init_containers.is_empty() {
            status["initContainerStatuses"] = self.init_statuses(Some(self.start_time), since);
        }
        status["containerStatuses"] = self.containers(
            restarts,
            true,
            |_| json!({"running": {"startedAt": Time(since)}}),
            last,
        );
        status["conditions"] = self.conditions(true, (restarts == 0).then_some(since), None);
        status
    }

    /// The containers ended for good as `exit` says (or were stopped for deletion): the
    /// pod is Succeeded when they exited 0, otherwise Failed.
    pub(super) fn ended(&self, exit: &Exit, restarts: i32) -> Value {
        let phase = if exit.code == 0 {
            "Succeeded"
        } else {
            "Failed"
        };
        let mut status = self.base(phase);
        if !self.shape.init_containers.is_empty() {
            status["initContainerStatuses"] = self.init_statuses(None, exit.finished);
        }
        status["containerStatuses"] = self.containers(restarts, false, |id| exit.state(id), None);
        status["conditions"] = self.conditions(false, Some(exit.finished), Some("PodCompleted"));
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: &str) -> Pod {
        serde_json::from_str(json).expect("a pod")
    }

    fn facts(shape: &Shape) -> Facts<'_> {
        Facts {
            uid: "u1",
            shape,
            host_ip: Ipv4Addr::new(127, 64, 0, 1),
            pod_ip: Some(Ipv4Addr::new(10, 244, 0, 2)),
            start_time: Timestamp::UNIX_EPOCH,
            add_scheduled: true,
        }
    }

    #[test]
    fn annotations_give_the_run_time_and_exit_code() {
        let p = pod(
            r#"{"metadata": {"annotations": {"skiff.io/sim-run-seconds": "1.5", "skiff.io/sim-exit-code": "3"}},
            "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}"#,
        );
        let shape = Shape::of(&p);
        assert_eq!(shape.run_for, Some(Duration::from_millis(1500)));
        assert_eq!(shape.exit_code, 3);
        assert_eq!(shape.restart_policy, RestartPolicy::OnFailure);
        let forever = Shape::of(&pod(r#"{"spec": {"containers": []}}"#));
        assert_eq!(forever.run_for, None);
        assert_eq!(forever.restart_policy, RestartPolicy::Always);
    }

    #[test]
    fn a_running_status_is_ready_with_init_containers_completed() {
        let p = pod(
            r#"{"spec": {"containers": [{"name": "c", "image": "busybox"}],
            "initContainers": [{"name": "i", "image": "busybox"}, {"name": "s", "image": "envoy", "restartPolicy": "Always"}]}}"#,
        );
        let shape = Shape::of(&p);
        let status = facts(&shape).running(Timestamp::UNIX_EPOCH, 0, None);
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], "10.244.0.2");
        assert_eq!(status["containerStatuses"][0]["ready"], true);
        assert!(status["containerStatuses"][0]["state"]["running"].is_object());
        assert_eq!(
            status["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        assert!(status["initContainerStatuses"][1]["state"]["running"].is_object());
        let conditions = status["conditions"].as_array().expect("conditions");
        assert!(
            conditions.iter().all(|c| c["status"] == "True"),
            "{conditions:?}"
        );
        assert!(conditions.iter().any(|c| c["type"] == "PodScheduled"));
    }

    #[test]
    fn a_restart_counts_and_keeps_the_last_state() {
        let p = pod(r#"{"spec": {"containers": [{"name": "c", "image": "busybox"}]}}"#);
        let shape = Shape::of(&p);
        let exit = Exit {
            code: 3,
            started: Timestamp::UNIX_EPOCH,
            finished: Timestamp::UNIX_EPOCH,
        };
        let status = facts(&shape).running(Timestamp::UNIX_EPOCH, 2, Some(&exit));
        let c = &status["containerStatuses"][0];
        assert_eq!(c["restartCount"], 2);
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 3);
        assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
        // A restart is no transition of the (still True) conditions.
        assert!(status["conditions"][0].get("lastTransitionTime").is_none());
    }

    #[test]
    fn an_exit_code_decides_succeeded_or_failed() {
        let p = pod(r#"{"spec": {"containers": [{"name": "c", "image": "busybox"}]}}"#);
        let shape = Shape::of(&p);
        let exit = |code| Exit {
            code,
            started: Timestamp::UNIX_EPOCH,
            finished: Timestamp::UNIX_EPOCH,
        };
        let ok = facts(&shape).ended(&exit(0), 0);
        assert_eq!(ok["phase"], "Succeeded");
        assert_eq!(
            ok["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        let failed = facts(&shape).ended(&exit(1), 0);
        assert_eq!(failed["phase"], "Failed");
        assert_eq!(
            failed["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            1
        );
        assert_eq!(failed["containerStatuses"][0]["ready"], false);
    }
}
