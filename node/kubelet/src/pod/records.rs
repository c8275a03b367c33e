//! What a pod worker keeps so a restarted daemon takes its pods back: on a real node a
//! record file per pod ([`DiskRecords`]); on simulated nodes, whose containers end with
//! their process, the pod's status as the API shows it ([`StatusRecords`]).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::core::v1::{Container, ContainerStatus, Pod, PodStatus},
    jiff::Timestamp,
};
use serde::{Deserialize, Serialize};

use super::{
    backend::SandboxInfo,
    status::{PodRecord, Record, State, Terminated},
};

/// What a worker knows of its pod that a later worker needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The containers' states.
    pub record: PodRecord,
    /// The sandbox, once made.
    pub sandbox: Option<SandboxInfo>,
    /// Running containers: name -> runtime ID.
    pub live: HashMap<String, String>,
}

/// Where workers keep their [`Saved`] state.
pub trait RecordStore: Send + Sync + 'static {
    /// What an earlier worker of this pod left, if anything.
    fn load(&self, pod: &Pod) -> Option<Saved>;
    /// Whether [`RecordStore::save`] keeps anything (the worker skips building the
    /// state otherwise).
    fn persists(&self) -> bool {
        true
    }
    /// Keeps the worker's state; called after every change.
    fn save(&self, uid: &str, saved: &Saved);
    /// Forgets the pod: its worker has finished.
    fn remove(&self, uid: &str);
    /// Whether a worker of this pod left a record: a finished pod without one was never
    /// this daemon's to run.
    fn contains(&self, uid: &str) -> bool;
}

/// Records as files, `<dir>/<uid>/record.json`; `<dir>/<uid>` is the pod's directory, which
/// its volumes share.
#[derive(Debug, Clone)]
pub struct DiskRecords {
    dir: PathBuf,
}

impl DiskRecords {
    /// Records under `dir` (the node's pods directory).
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, uid: &str) -> PathBuf {
        self.dir.join(uid).join("record.json")
    }
}

impl RecordStore for DiskRecords {
    fn load(&self, pod: &Pod) -> Option<Saved> {
        let uid = pod.metadata.uid.as_deref()?;
        let bytes = std::fs::read(self.path(uid)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn save(&self, uid: &str, saved: &Saved) {
        let path = self.path(uid);
        let write = || -> std::io::Result<()> {
            // Only the pod's own directory: the pods directory is the daemon's, and a worker
            // outliving it (a test's temporary directory) must not bring it back.
            match std::fs::create_dir(self.dir.join(uid)) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(saved).unwrap_or_default())?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(err) = write() {
            tracing::warn!(%uid, ?err, "could not save the pod record");
        }
    }

    fn remove(&self, uid: &str) {
        let _ = std::fs::remove_dir_all(self.dir.join(uid));
    }

    fn contains(&self, uid: &str) -> bool {
        self.path(uid).exists()
    }
}

/// Records read back from the pod's status: what this node's kubelet last wrote is what
/// it knew. Nothing is written (the status is); run IDs are the part of `containerID`
/// after the scheme.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusRecords;

fn state_of(status: &ContainerStatus) -> Option<(State, Option<Terminated>)> {
    let state = status.state.as_ref()?;
    let terminated = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| Terminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: t.reason.clone().unwrap_or_default(),
        message: t.message.clone(),
        started_at: t.started_at.as_ref().map(|t| t.0),
        finished_at: t.finished_at.as_ref().map_or_else(Timestamp::now, |t| t.0),
        container_id: t.container_id.clone(),
    };
    let now = if let Some(r) = &state.running {
        State::Running {
            started_at: r.started_at.as_ref().map_or_else(Timestamp::now, |t| t.0),
        }
    } else if let Some(t) = &state.terminated {
        State::Terminated(terminated(t))
    } else {
        let waiting = state.waiting.as_ref()?;
        State::Waiting {
            reason: waiting.reason.clone().unwrap_or_default(),
            message: waiting.message.clone(),
        }
    };
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(terminated);
    Some((now, last))
}

fn record_of(container: &Container, statuses: Option<&Vec<ContainerStatus>>) -> Record {
    let image = container.image.clone().unwrap_or_default();
    let fresh = Record::new(&container.name, &image, "ContainerCreating");
    let Some(status) = statuses.and_then(|s| s.iter().find(|s| s.name == container.name)) else {
        return fresh;
    };
    let Some((state, last_state)) = state_of(status) else {
        return fresh;
    };
    Record {
        image: status.image.clone(),
        image_id: status.image_id.clone(),
        container_id: status.container_id.clone(),
        restart_count: status.restart_count,
        state,
        last_state,
        ready: status.ready,
        started: status.started.unwrap_or(false),
        ..fresh
    }
}

fn condition(status: &PodStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

impl RecordStore for StatusRecords {
    fn load(&self, pod: &Pod) -> Option<Saved> {
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref()?;
        // A pod no kubelet has written to yet has nothing to take back.
        status
            .container_statuses
            .as_ref()
            .filter(|s| !s.is_empty())?;
        let init: Vec<Record> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Record {
                sidecar: super::worker::is_sidecar(c),
                ..record_of(c, status.init_container_statuses.as_ref())
            })
            .collect();
        let containers: Vec<Record> = spec
            .containers
            .iter()
            .map(|c| record_of(c, status.container_statuses.as_ref()))
            .collect();
        let live = init
            .iter()
            .chain(&containers)
            .filter(|r| matches!(r.state, State::Running { .. }))
            .filter_map(|r| {
                let id = r.container_id.as_deref()?;
                let run = id.split_once("://").map_or(id, |(_, run)| run);
                Some((r.name.clone(), run.to_owned()))
            })
            .collect();
        let sandbox_ready = condition(status, "PodReadyToStartContainers");
        let failed = (status.phase.as_deref() == Some("Failed"))
            .then(|| Some((status.reason.clone()?, status.message.clone()?)))
            .flatten();
        let record = PodRecord {
            init,
            containers,
            pod_ip: status.pod_ip.clone(),
            host_ip: status.host_ip.clone(),
            start_time: status.start_time.as_ref().map(|t| t.0),
            sandbox_ready,
            failed,
            ..PodRecord::default()
        };
        Some(Saved {
            sandbox: sandbox_ready.then(|| SandboxInfo {
                ip: status.pod_ip.clone(),
                ..SandboxInfo::default()
            }),
            record,
            live,
        })
    }

    fn persists(&self) -> bool {
        false
    }

    fn save(&self, _uid: &str, _saved: &Saved) {}

    fn remove(&self, _uid: &str) {}

    fn contains(&self, _uid: &str) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::core::v1::PodSpec, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    use super::*;
    use crate::pod::status::pod_status;

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("busybox".into()),
            ..Container::default()
        }
    }

    #[test]
    fn a_status_reads_back_as_the_record_it_was_built_from() {
        let spec = PodSpec {
            init_containers: Some(vec![
                container("setup"),
                Container {
                    restart_policy: Some("Always".into()),
                    ..container("proxy")
                },
            ]),
            containers: vec![container("app"), container("crashing")],
            ..PodSpec::default()
        };
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let ended = |code: i32, id: &str| Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: Some(t("2026-01-01T00:00:00Z")),
            finished_at: t("2026-01-01T00:00:01Z"),
            container_id: Some(id.into()),
        };
        let run = |name: &str, state: State| Record {
            image_id: "sim://busybox".into(),
            container_id: Some(format!("sim://u-{name}-0")),
            state,
            ready: true,
            started: true,
            ..Record::new(name, "busybox", "ContainerCreating")
        };
        let running = State::Running {
            started_at: t("2026-01-01T00:00:02Z"),
        };
        let record = PodRecord {
            init: vec![
                Record {
                    ready: false,
                    started: false,
                    ..run("setup", State::Terminated(ended(0, "sim://u-setup-0")))
                },
                Record {
                    sidecar: true,
                    ..run("proxy", running.clone())
                },
            ],
            containers: vec![
                run("app", running),
                Record {
                    restart_count: 2,
                    last_state: Some(ended(3, "sim://u-crashing-1")),
                    ready: false,
                    started: false,
                    state: State::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: Some("back-off 20s".into()),
                    },
                    ..run(
                        "crashing",
                        State::Running {
                            started_at: t("2026-01-01T00:00:00Z"),
                        },
                    )
                },
            ],
            pod_ip: Some("10.244.0.9".into()),
            host_ip: Some("127.64.0.1".into()),
            start_time: Some(t("2026-01-01T00:00:00Z")),
            sandbox_ready: true,
            ..PodRecord::default()
        };
        let status = pod_status(&spec, &record, None, t("2026-01-01T00:00:03Z"));
        let pod = Pod {
            metadata: ObjectMeta {
                uid: Some("u".into()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: Some(status),
        };
        let saved = StatusRecords.load(&pod).unwrap();
        assert_eq!(saved.record, record);
        assert_eq!(saved.sandbox.unwrap().ip.as_deref(), Some("10.244.0.9"));
        let mut live: Vec<(String, String)> = saved.live.into_iter().collect();
        live.sort();
        assert_eq!(
            live,
            [
                ("app".to_owned(), "u-app-0".to_owned()),
                ("proxy".to_owned(), "u-proxy-0".to_owned())
            ]
        );
    }

    #[test]
    fn a_pod_no_kubelet_wrote_to_has_no_record() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container("app")],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        assert_eq!(StatusRecords.load(&pod), None);
    }

    #[test]
    fn disk_records_round_trip_and_are_removed_with_the_pod_directory() {
        let dir = tempfile::tempdir().unwrap();
        let records = DiskRecords::new(dir.path());
        let pod = Pod {
            metadata: ObjectMeta {
                uid: Some("u1".into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        assert!(!records.contains("u1"));
        let saved = Saved {
            live: HashMap::from([("app".to_owned(), "u1-app-0".to_owned())]),
            ..Saved::default()
        };
        records.save("u1", &saved);
        assert!(records.contains("u1"));
        assert_eq!(records.load(&pod), Some(saved));
        records.remove("u1");
        assert!(!dir.path().join("u1").exists());
        // Saving never recreates the pods directory itself.
        drop(dir);
        records.save("u1", &Saved::default());
        assert!(!records.contains("u1"));
    }
}
