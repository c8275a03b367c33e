//! A pod's `status` from what the node knows of its containers: phase, conditions and
//! container statuses by the kubelet's rules, so `kubectl get pods` reads the same.

use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, PodCondition, PodIP, PodSpec, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use skiff_types::RestartPolicy;

/// How a run of a container ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Terminated {
    /// The exit code (128 + signal for a signalled process, 137 when unknown after adoption).
    pub exit_code: i32,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, `ContainerStatusUnknown`.
    pub reason: String,
    /// A message for `kubectl describe`.
    pub message: Option<String>,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Timestamp,
    /// The runtime ID of that run.
    pub container_id: Option<String>,
}

/// Where a container is now.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum State {
    /// Not running: `ContainerCreating`, `PodInitializing`, `CrashLoopBackOff`,
    /// `ErrImagePull`, `ImagePullBackOff`, `CreateContainerConfigError`, ...
    Waiting {
        /// Why.
        reason: String,
        /// Details.
        message: Option<String>,
    },
    /// Its process runs.
    Running {
        /// Since when.
        started_at: Timestamp,
    },
    /// It ended and will not be restarted (or not yet).
    Terminated(Terminated),
}

/// What the node knows of one container.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The container's name.
    pub name: String,
    /// The image as the spec names it.
    pub image: String,
    /// The image's ID (`docker.io/library/busybox@sha256:...`), once pulled.
    pub image_id: String,
    /// `<runtime>://<runtime id>` of the current or last run.
    pub container_id: Option<String>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Now.
    pub state: State,
    /// The previous run's end, if it restarted.
    pub last_state: Option<Terminated>,
    /// Passing its readiness probe (or running without one).
    pub ready: bool,
    /// Past its startup probe (or running without one).
    pub started: bool,
    /// An init container with `restartPolicy: Always`: a native sidecar, which keeps
    /// running beside the app containers.
    #[serde(default)]
    pub sidecar: bool,
}

impl Record {
    /// A container not started yet.
    #[must_use]
    pub fn new(name: &str, image: &str, reason: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: String::new(),
            container_id: None,
            restart_count: 0,
            state: State::Waiting {
                reason: reason.to_owned(),
                message: None,
            },
            last_state: None,
            ready: false,
            started: false,
            sidecar: false,
        }
    }

    fn terminated(&self) -> Option<&Terminated> {
        match &self.state {
            State::Terminated(t) => Some(t),
            _ => None,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }
}

/// What the node knows of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodRecord {
    /// Init containers, in spec order.
    pub init: Vec<Record>,
    /// App containers, in spec order.
    pub containers: Vec<Record>,
    /// Ephemeral (debugging) containers, in the order they were added.
    #[serde(default)]
    pub ephemeral: Vec<Record>,
    /// The pod's address.
    pub pod_ip: Option<String>,
    /// The node's address.
    pub host_ip: Option<String>,
    /// When the node first took the pod.
    pub start_time: Option<Timestamp>,
    /// The sandbox (namespaces, network) exists.
    pub sandbox_ready: bool,
    /// The pod failed as a whole (deadline, admission): (reason, message).
    pub failed: Option<(String, String)>,
    /// Every container was stopped for good (the pod is being deleted): the phase is
    /// terminal, Succeeded when every app container ended with 0, else Failed.
    #[serde(default)]
    pub stopped: bool,
}

fn terminated_status(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: t.started_at.map(Time),
        finished_at: Some(Time(t.finished_at)),
        container_id: t.container_id.clone(),
    }
}

fn container_status(r: &Record) -> ContainerStatus {
    let state = match &r.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..ContainerState::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(terminated_status(t)),
            ..ContainerState::default()
        },
    };
    ContainerStatus {
        name: r.name.clone(),
        image: r.image.clone(),
        image_id: r.image_id.clone(),
        container_id: r.container_id.clone(),
        restart_count: r.restart_count,
        ready: r.ready && r.running(),
        started: Some(r.started && r.running()),
        state: Some(state),
        last_state: Some(
            r.last_state
                .as_ref()
                .map_or_else(ContainerState::default, |t| ContainerState {
                    terminated: Some(terminated_status(t)),
                    ..ContainerState::default()
                }),
        ),
        ..ContainerStatus::default()
    }
}

/// Whether the pod is initialized: every init container finished successfully and every
/// sidecar has started. Once an app container has started the pod stays initialized, as
/// the kubelet keeps it, whatever its sidecars do later.
#[must_use]
pub fn initialized(record: &PodRecord) -> bool {
    record.containers.iter().any(|r| r.container_id.is_some())
        || record.init.iter().all(|r| {
            if r.sidecar {
                r.started && r.running()
            } else {
                r.terminated().is_some_and(|t| t.exit_code == 0)
            }
        })
}

/// The pod's restart policy; one the API would not have accepted counts as the default.
#[must_use]
pub fn restart_policy(spec: Option<&PodSpec>) -> RestartPolicy {
    RestartPolicy::from_field(spec.and_then(|s| s.restart_policy.as_deref())).unwrap_or_default()
}

/// The pod's phase by the kubelet's rules.
#[must_use]
pub fn phase(spec: &PodSpec, record: &PodRecord) -> &'static str {
    if record.failed.is_some() {
        return "Failed";
    }
    let policy = restart_policy(Some(spec));
    // An init container that failed for good fails the pod (a sidecar is restarted).
    if policy == RestartPolicy::Never
        && record
            .init
            .iter()
            .any(|r| !r.sidecar && r.terminated().is_some_and(|t| t.exit_code != 0))
    {
        return "Failed";
    }
    if record.stopped {
        let succeeded = record
            .containers
            .iter()
            .all(|r| r.terminated().is_some_and(|t| t.exit_code == 0));
        return if succeeded { "Succeeded" } else { "Failed" };
    }
    if !initialized(record) || record.containers.is_empty() {
        return "Pending";
    }
    let (mut running, mut waiting, mut failed) = (0, 0, 0);
    for r in &record.containers {
        match &r.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) if t.exit_code == 0 => {}
            State::Terminated(_) => failed += 1,
            // A container waiting to restart has run before.
            State::Waiting { .. } if r.last_state.is_some() => running += 1,
            State::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    match policy {
        RestartPolicy::Always => "Running",
        RestartPolicy::OnFailure if failed > 0 => "Running",
        _ if failed > 0 => "Failed",
        _ => "Succeeded",
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    existing: Option<&PodStatus>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let transition = existing
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_ && c.status == status))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: if ok { None } else { reason.map(str::to_owned) },
        last_transition_time: Some(transition),
        ..PodCondition::default()
    }
}

/// The status to write: phase, conditions (scheduler-owned ones kept), addresses and
/// container statuses.
#[must_use]
pub fn pod_status(
    spec: &PodSpec,
    record: &PodRecord,
    existing: Option<&PodStatus>,
    now: Timestamp,
) -> PodStatus {
    let phase = phase(spec, record);
    let done = matches!(phase, "Succeeded" | "Failed");
    let init_ok = initialized(record);
    // Sidecars count: a pod whose proxy is not ready is not ready either.
    let containers_ready = !done
        && !record.containers.is_empty()
        && record
            .containers
            .iter()
            .chain(record.init.iter().filter(|r| r.sidecar))
            .all(|r| r.ready && r.running());
    let not_ready_reason = if init_ok {
        "ContainersNotReady"
    } else {
        "ContainersNotInitialized"
    };
    let ours = [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    ];
    let mut conditions: Vec<PodCondition> = existing
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !ours.contains(&c.type_.as_str()))
        .collect();
    let init_reason = if init_ok {
        None
    } else {
        Some("ContainersNotInitialized")
    };
    // A pod bound at creation never went through the scheduler: the kubelet says it is
    // scheduled.
    if !conditions.iter().any(|c| c.type_ == "PodScheduled") {
        conditions.push(PodCondition {
            type_: "PodScheduled".to_owned(),
            status: "True".to_owned(),
            last_transition_time: record.start_time.map(Time),
            ..PodCondition::default()
        });
    }
    conditions.extend([
        condition(
            "PodReadyToStartContainers",
            record.sandbox_ready && !done,
            None,
            existing,
            now,
        ),
        condition("Initialized", init_ok, init_reason, existing, now),
        condition(
            "ContainersReady",
            containers_ready,
            Some(not_ready_reason),
            existing,
            now,
        ),
        condition(
            "Ready",
            containers_ready,
            Some(not_ready_reason),
            existing,
            now,
        ),
    ]);
    let (reason, message) = record
        .failed
        .clone()
        .map_or((None, None), |(r, m)| (Some(r), Some(m)));
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: record.host_ip.clone(),
        host_ips: record
            .host_ip
            .clone()
            .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip }]),
        pod_ip: record.pod_ip.clone(),
        pod_ips: record.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: record.start_time.map(Time),
        init_container_statuses: (!record.init.is_empty())
            .then(|| record.init.iter().map(container_status).collect()),
        container_statuses: Some(record.containers.iter().map(container_status).collect()),
        ephemeral_container_statuses: (!record.ephemeral.is_empty())
            .then(|| record.ephemeral.iter().map(container_status).collect()),
        qos_class: existing.and_then(|s| s.qos_class.clone()),
        nominated_node_name: existing.and_then(|s| s.nominated_node_name.clone()),
        reason,
        message,
        ..PodStatus::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn spec(policy: &str) -> PodSpec {
        PodSpec {
            restart_policy: Some(policy.to_owned()),
            ..PodSpec::default()
        }
    }

    fn ended(code: i32) -> State {
        State::Terminated(Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.to_owned(),
            message: None,
            started_at: None,
            finished_at: Timestamp::now(),
            container_id: None,
        })
    }

    fn record(states: Vec<State>) -> PodRecord {
        PodRecord {
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, state)| Record {
                    state,
                    ..Record::new(&format!("c{i}"), "busybox", "ContainerCreating")
                })
                .collect(),
            ..PodRecord::default()
        }
    }

    #[test]
    fn containers_not_started_yet_keep_the_pod_pending() {
        let r = record(vec![State::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        }]);
        assert_eq!(phase(&spec("Always"), &r), "Pending");
    }

    #[test]
    fn a_running_container_makes_the_pod_running() {
        let r = record(vec![
            State::Running {
                started_at: Timestamp::now(),
            },
            ended(0),
        ]);
        assert_eq!(phase(&spec("Never"), &r), "Running");
    }

    #[test]
    fn ended_containers_give_succeeded_or_failed_by_restart_policy() {
        assert_eq!(
            phase(&spec("Never"), &record(vec![ended(0), ended(0)])),
            "Succeeded"
        );
        assert_eq!(
            phase(&spec("Never"), &record(vec![ended(0), ended(1)])),
            "Failed"
        );
        assert_eq!(
            phase(&spec("OnFailure"), &record(vec![ended(0), ended(1)])),
            "Running"
        );
        assert_eq!(
            phase(&spec("OnFailure"), &record(vec![ended(0)])),
            "Succeeded"
        );
        assert_eq!(phase(&spec("Always"), &record(vec![ended(0)])), "Running");
    }

    #[test]
    fn a_crash_looping_container_keeps_the_pod_running() {
        let mut r = record(vec![State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: None,
        }]);
        r.containers[0].last_state = Some(match ended(1) {
            State::Terminated(t) => t,
            _ => unreachable!(),
        });
        assert_eq!(phase(&spec("Always"), &r), "Running");
    }

    #[test]
    fn unfinished_init_containers_keep_the_pod_pending_and_not_initialized() {
        let mut r = record(vec![State::Waiting {
            reason: "PodInitializing".into(),
            message: None,
        }]);
        r.init = vec![Record {
            state: State::Running {
                started_at: Timestamp::now(),
            },
            ..Record::new("init", "busybox", "")
        }];
        assert_eq!(phase(&spec("Always"), &r), "Pending");
        let status = pod_status(&spec("Always"), &r, None, Timestamp::now());
        let init = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Initialized")
            .unwrap();
        assert_eq!(init.status, "False");
        assert_eq!(init.reason.as_deref(), Some("ContainersNotInitialized"));
    }

    #[test]
    fn a_failed_init_container_fails_a_never_restarting_pod() {
        let mut r = record(vec![State::Waiting {
            reason: "PodInitializing".into(),
            message: None,
        }]);
        r.init = vec![Record {
            state: ended(2),
            ..Record::new("init", "busybox", "")
        }];
        assert_eq!(phase(&spec("Never"), &r), "Failed");
        assert_eq!(phase(&spec("Always"), &r), "Pending");
    }

    #[test]
    fn ready_needs_every_container_running_and_ready() {
        let mut r = record(vec![
            State::Running {
                started_at: Timestamp::now(),
            },
            State::Running {
                started_at: Timestamp::now(),
            },
        ]);
        r.containers[0].ready = true;
        let now = Timestamp::now();
        let status = pod_status(&spec("Always"), &r, None, now);
        let ready = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .unwrap()
                .status
                .clone()
        };
        assert_eq!(ready(&status), "False");
        r.containers[1].ready = true;
        let status = pod_status(&spec("Always"), &r, Some(&status), now);
        assert_eq!(ready(&status), "True");
    }

    fn sidecar(state: State, started: bool, ready: bool) -> Record {
        Record {
            state,
            started,
            ready,
            sidecar: true,
            container_id: Some("skiff://s".into()),
            ..Record::new("proxy", "envoy", "PodInitializing")
        }
    }

    fn running() -> State {
        State::Running {
            started_at: Timestamp::now(),
        }
    }

    /// The status of condition `type_`, empty when there is none.
    pub(crate) fn condition_of(status: &PodStatus, type_: &str) -> String {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
            .unwrap_or_default()
    }

    #[test]
    fn a_started_sidecar_initializes_the_pod_and_its_readiness_counts() {
        let mut r = record(vec![State::Waiting {
            reason: "PodInitializing".into(),
            message: None,
        }]);
        r.init = vec![sidecar(running(), false, false)];
        assert!(!initialized(&r), "not past its startup probe yet");
        r.init[0].started = true;
        assert!(initialized(&r));
        r.containers[0].state = running();
        r.containers[0].container_id = Some("skiff://c".into());
        r.containers[0].ready = true;
        let status = pod_status(&spec("Always"), &r, None, Timestamp::now());
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(
            condition_of(&status, "Ready"),
            "False",
            "the sidecar is not ready"
        );
        r.init[0].ready = true;
        let status = pod_status(&spec("Always"), &r, None, Timestamp::now());
        assert_eq!(condition_of(&status, "Ready"), "True");
        let init = &status.init_container_statuses.unwrap()[0];
        assert!(init.ready && init.started == Some(true));
    }

    #[test]
    fn sidecars_neither_hold_completion_nor_undo_initialization() {
        let mut r = record(vec![ended(0)]);
        r.containers[0].container_id = Some("skiff://c".into());
        // Stopped after the app finished: the pod stays initialized and completes.
        r.init = vec![sidecar(ended(143), false, false)];
        assert!(initialized(&r));
        assert_eq!(phase(&spec("Never"), &r), "Succeeded");
        // Still running beside a finished app: the pod is complete all the same.
        r.init = vec![sidecar(running(), true, true)];
        assert_eq!(phase(&spec("Never"), &r), "Succeeded");
        // A sidecar that crashed during initialization fails nothing: it is restarted.
        let mut r = record(vec![State::Waiting {
            reason: "PodInitializing".into(),
            message: None,
        }]);
        r.init = vec![Record {
            container_id: None,
            ..sidecar(ended(1), false, false)
        }];
        assert_eq!(phase(&spec("Never"), &r), "Pending");
    }

    #[test]
    fn a_stopped_pod_is_terminal_whatever_its_policy() {
        let mut r = record(vec![ended(0), ended(0)]);
        assert_eq!(phase(&spec("Always"), &r), "Running");
        r.stopped = true;
        assert_eq!(phase(&spec("Always"), &r), "Succeeded");
        r.containers[1].state = ended(143);
        assert_eq!(phase(&spec("Always"), &r), "Failed");
        // A container that never ran did not succeed.
        r.containers[1].state = State::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        };
        assert_eq!(phase(&spec("OnFailure"), &r), "Failed");
    }

    #[test]
    fn a_pod_bound_at_creation_is_reported_scheduled() {
        let mut r = record(vec![State::Running {
            started_at: Timestamp::now(),
        }]);
        r.start_time = Some(Timestamp::UNIX_EPOCH);
        let status = pod_status(&spec("Always"), &r, None, Timestamp::now());
        let scheduled = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
            .unwrap();
        assert_eq!(scheduled.status, "True");
        assert_eq!(
            scheduled.last_transition_time,
            Some(Time(Timestamp::UNIX_EPOCH))
        );
    }

    #[test]
    fn scheduler_conditions_are_kept() {
        let existing = PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        };
        let r = record(vec![State::Running {
            started_at: Timestamp::now(),
        }]);
        let status = pod_status(&spec("Always"), &r, Some(&existing), Timestamp::now());
        assert!(
            status
                .conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "PodScheduled")
        );
    }
}
