//! The pod worker against a scripted backend, on tokio's paused clock.

use std::{path::Path, sync::Mutex};

use async_trait::async_trait;
use k8s_openapi::{
    api::core::v1::{ExecAction, PodSpec, PodStatus, Probe},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use skiff_types::ContainerId;
use tokio::sync::watch;

use super::*;
use crate::{
    api::ApiError,
    pod::{records::DiskRecords, status::tests::condition_of as condition},
};

/// How a fake container behaves.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Script {
    /// Exits at once with this code.
    Exit(i32),
    /// Runs until signalled; SIGTERM ends it unless it ignores it.
    Serve { ignores_term: bool },
}

#[derive(Default)]
pub(crate) struct Fake {
    scripts: Mutex<HashMap<String, Script>>,
    /// Every start: (container, restart, when).
    starts: Mutex<Vec<(String, i32, Instant)>>,
    exits: Mutex<HashMap<String, watch::Sender<Option<Exit>>>>,
    signals: Mutex<Vec<(String, i32, Instant)>>,
    exec_code: Mutex<i32>,
    statuses: Mutex<Vec<PodStatus>>,
    pub(crate) deleted: Mutex<bool>,
    sandboxes_removed: Mutex<u32>,
    pull_error: Mutex<Option<String>>,
    adoptable: Mutex<Vec<String>>,
}

fn exit(code: i32, signal: Option<i32>) -> Exit {
    Exit {
        code: Some(code),
        signal,
        oom_killed: false,
        finished_at: Timestamp::now(),
    }
}

impl Fake {
    pub(crate) fn script(&self, container: &str, s: Script) {
        self.scripts.lock().unwrap().insert(container.into(), s);
    }
    /// The containers started, in order.
    fn order(&self) -> Vec<String> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .map(|(c, ..)| c.clone())
            .collect()
    }
    pub(crate) fn starts_of(&self, container: &str) -> Vec<(i32, Instant)> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, ..)| c == container)
            .map(|(_, r, t)| (*r, *t))
            .collect()
    }
    pub(crate) fn last(&self) -> PodStatus {
        self.statuses
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
    fn end(&self, id: &str, e: Exit) {
        if let Some(tx) = self.exits.lock().unwrap().get(id) {
            tx.send_replace(Some(e));
        }
    }
}

#[async_trait]
impl PodBackend for Fake {
    async fn create_sandbox(&self, _pod: &Pod) -> Result<SandboxInfo, BackendError> {
        Ok(SandboxInfo {
            ip: Some("10.244.0.5".into()),
            ..SandboxInfo::default()
        })
    }
    async fn remove_sandbox(&self, _uid: &str) -> Result<(), BackendError> {
        *self.sandboxes_removed.lock().unwrap() += 1;
        Ok(())
    }
    async fn setup_volumes(&self, _pod: &Pod, _s: &SandboxInfo) -> Result<(), BackendError> {
        Ok(())
    }
    async fn pull_image(&self, _pod: &Pod, c: &Container) -> Result<ImageInfo, BackendError> {
        if let Some(m) = self.pull_error.lock().unwrap().clone() {
            return Err(BackendError::new("ErrImagePull", m));
        }
        Ok(ImageInfo {
            id: "sha256:1".into(),
            image_ref: format!("{}@sha256:1", c.image.clone().unwrap_or_default()),
            ..ImageInfo::default()
        })
    }
    async fn start_container(&self, run: Run<'_>) -> Result<ContainerId, BackendError> {
        let name = run.container.name.clone();
        let typed = ContainerId::new("uid", &name, u32::try_from(run.restart).unwrap());
        let id = typed.to_string();
        self.starts
            .lock()
            .unwrap()
            .push((name.clone(), run.restart, Instant::now()));
        let (tx, _) = watch::channel(None);
        let script = self
            .scripts
            .lock()
            .unwrap()
            .get(&name)
            .copied()
            .unwrap_or(Script::Serve {
                ignores_term: false,
            });
        if let Script::Exit(code) = script {
            tx.send_replace(Some(exit(code, None)));
        }
        self.exits.lock().unwrap().insert(id, tx);
        Ok(typed)
    }
    async fn adopt_container(&self, _pod: &Pod, id: &str) -> bool {
        if self.adoptable.lock().unwrap().iter().any(|a| a == id) {
            let (tx, _) = watch::channel(None);
            self.exits.lock().unwrap().insert(id.to_owned(), tx);
            return true;
        }
        false
    }
    async fn wait_container(&self, id: &str) -> Exit {
        let Some(mut rx) = self
            .exits
            .lock()
            .unwrap()
            .get(id)
            .map(watch::Sender::subscribe)
        else {
            return exit(0, None);
        };
        let value = rx.wait_for(Option::is_some).await.map(|v| *v);
        value.ok().flatten().unwrap_or_else(|| exit(0, None))
    }
    async fn signal_container(&self, id: &str, signal: i32) -> Result<(), BackendError> {
        self.signals
            .lock()
            .unwrap()
            .push((id.to_owned(), signal, Instant::now()));
        let name = id.split('-').nth(1).unwrap_or_default().to_owned();
        let ignores = matches!(
            self.scripts.lock().unwrap().get(&name),
            Some(Script::Serve { ignores_term: true })
        );
        if signal == SIGKILL || !ignores {
            self.end(
                id,
                Exit {
                    code: None,
                    ..exit(0, Some(signal))
                },
            );
        }
        Ok(())
    }
    async fn remove_container(&self, _id: &str) -> Result<(), BackendError> {
        Ok(())
    }
    async fn exec(&self, _id: &str, _c: &[String], _t: Duration) -> Result<i32, BackendError> {
        Ok(*self.exec_code.lock().unwrap())
    }
}

#[async_trait]
impl PodApi for Fake {
    async fn patch_status(&self, _pod: &Pod, status: &PodStatus) -> Result<(), ApiError> {
        self.statuses.lock().unwrap().push(status.clone());
        Ok(())
    }
    async fn delete_pod(&self, _pod: &Pod) -> Result<(), ApiError> {
        *self.deleted.lock().unwrap() = true;
        Ok(())
    }
    async fn event(&self, _pod: &Pod, _t: EventType, _r: &str, _m: &str) {}
}

pub(crate) fn container(name: &str) -> Container {
    Container {
        name: name.into(),
        image: Some("busybox:1".into()),
        ..Container::default()
    }
}

pub(crate) fn pod(spec: PodSpec) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("p".into()),
            namespace: Some("default".into()),
            uid: Some("uid".into()),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

struct Setup {
    fake: Arc<Fake>,
    handle: WorkerHandle,
    _dir: tempfile::TempDir,
}

fn start(spec: PodSpec, fake: Arc<Fake>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let handle = start_in(&pod(spec), fake.clone(), dir.path());
    Setup {
        fake,
        handle,
        _dir: dir,
    }
}

fn start_in(pod: &Pod, fake: Arc<Fake>, dir: &Path) -> WorkerHandle {
    let config = Arc::new(WorkerConfig {
        host_ip: "192.0.2.1".into(),
        records: Arc::new(DiskRecords::new(dir)),
        volume_refresh: Duration::from_secs(10),
        backoff: backoff::Policy::default(),
    });
    spawn(Arc::new(pod.clone()), fake.clone(), fake, config)
}

pub(crate) async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_in_order_before_app_containers() {
    let fake = Arc::new(Fake::default());
    fake.script("init-a", Script::Exit(0));
    fake.script("init-b", Script::Exit(0));
    let s = start(
        PodSpec {
            init_containers: Some(vec![container("init-a"), container("init-b")]),
            containers: vec![container("app")],
            ..PodSpec::default()
        },
        fake,
    );
    settle(Duration::from_secs(1)).await;
    let order = s.fake.order();
    assert_eq!(order, ["init-a", "init-b", "app"]);
    let status = s.fake.last();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&status, "Initialized"), "True");
    assert_eq!(condition(&status, "Ready"), "True");
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.5"));
    let init = status.init_container_statuses.unwrap();
    assert_eq!(
        init[0]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("Completed")
    );
}

#[tokio::test(start_paused = true)]
async fn a_crashing_container_backs_off_with_doubling_delays() {
    let fake = Arc::new(Fake::default());
    fake.script("app", Script::Exit(2));
    let s = start(
        PodSpec {
            containers: vec![container("app")],
            ..PodSpec::default()
        },
        fake,
    );
    settle(Duration::from_secs(75)).await;
    let starts = s.fake.starts_of("app");
    assert_eq!(starts.len(), 4, "{starts:?}");
    let gaps: Vec<u64> = starts
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_secs())
        .collect();
    assert_eq!(gaps, [10, 20, 40]);
    let status = s.fake.last();
    let cs = &status.container_statuses.unwrap()[0];
    assert_eq!(cs.restart_count, 3);
    assert_eq!(
        cs.state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("CrashLoopBackOff")
    );
    let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (2, Some("Error")));
}

#[tokio::test(start_paused = true)]
async fn restart_policies_decide_the_final_phase() {
    for (policy, code, phase, starts) in [
        ("Never", 0, "Succeeded", 1),
        ("Never", 1, "Failed", 1),
        ("OnFailure", 0, "Succeeded", 1),
    ] {
        let fake = Arc::new(Fake::default());
        fake.script("app", Script::Exit(code));
        let s = start(
            PodSpec {
                containers: vec![container("app")],
                restart_policy: Some(policy.into()),
                ..PodSpec::default()
            },
            fake,
        );
        settle(Duration::from_secs(30)).await;
        assert_eq!(
            s.fake.last().phase.as_deref(),
            Some(phase),
            "{policy} {code}"
        );
        assert_eq!(s.fake.starts_of("app").len(), starts);
        assert_eq!(*s.fake.sandboxes_removed.lock().unwrap(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn deletion_sends_sigterm_then_sigkill_after_the_grace_period_and_deletes_the_pod() {
    let fake = Arc::new(Fake::default());
    fake.script("app", Script::Serve { ignores_term: true });
    let s = start(
        PodSpec {
            containers: vec![container("app")],
            ..PodSpec::default()
        },
        fake,
    );
    settle(Duration::from_secs(1)).await;
    let mut deleting = pod(PodSpec {
        containers: vec![container("app")],
        ..PodSpec::default()
    });
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    deleting.metadata.deletion_grace_period_seconds = Some(5);
    let asked = Instant::now();
    s.handle.update(Arc::new(deleting));
    settle(Duration::from_secs(30)).await;
    let signals = s.fake.signals.lock().unwrap().clone();
    let kinds: Vec<i32> = signals.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(kinds, [SIGTERM, SIGKILL]);
    assert_eq!((signals[1].2 - asked).as_secs(), 5);
    assert!(*s.fake.deleted.lock().unwrap());
    assert!(s.handle.finished());
    let cs = &s.fake.last().container_statuses.unwrap()[0];
    assert_eq!(
        cs.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        137
    );
}

fn exec_probe(period: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec!["true".into()]),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_probe_flips_the_ready_condition() {
    let fake = Arc::new(Fake::default());
    let mut app = container("app");
    app.readiness_probe = Some(exec_probe(1, 1));
    let s = start(
        PodSpec {
            containers: vec![app],
            ..PodSpec::default()
        },
        fake,
    );
    settle(Duration::from_millis(500)).await;
    assert_eq!(condition(&s.fake.last(), "Ready"), "True");
    *s.fake.exec_code.lock().unwrap() = 1;
    settle(Duration::from_secs(3)).await;
    assert_eq!(condition(&s.fake.last(), "Ready"), "False");
    *s.fake.exec_code.lock().unwrap() = 0;
    settle(Duration::from_secs(3)).await;
    assert_eq!(condition(&s.fake.last(), "Ready"), "True");
    assert_eq!(s.fake.starts_of("app").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn failing_liveness_probe_restarts_the_container() {
    let fake = Arc::new(Fake::default());
    *fake.exec_code.lock().unwrap() = 1;
    let mut app = container("app");
    app.liveness_probe = Some(exec_probe(1, 3));
    let s = start(
        PodSpec {
            containers: vec![app],
            termination_grace_period_seconds: Some(2),
            ..PodSpec::default()
        },
        fake,
    );
    // Three failures a second apart, then the first restart waits out its 10 s back-off.
    settle(Duration::from_secs(15)).await;
    assert!(s.fake.starts_of("app").len() >= 2);
    let cs = &s.fake.last().container_statuses.unwrap()[0];
    assert!(cs.restart_count >= 1);
    assert_eq!(s.fake.signals.lock().unwrap()[0].1, SIGTERM);
}

#[tokio::test(start_paused = true)]
async fn a_failed_pull_is_reported_then_backs_off() {
    let fake = Arc::new(Fake::default());
    *fake.pull_error.lock().unwrap() = Some("manifest unknown".into());
    let s = start(
        PodSpec {
            containers: vec![container("app")],
            ..PodSpec::default()
        },
        fake,
    );
    settle(Duration::from_millis(100)).await;
    let waiting = |s: &Setup| {
        s.fake.last().container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap()
    };
    assert_eq!(waiting(&s).reason.as_deref(), Some("ErrImagePull"));
    assert_eq!(waiting(&s).message.as_deref(), Some("manifest unknown"));
    settle(Duration::from_secs(1)).await;
    assert_eq!(waiting(&s).reason.as_deref(), Some("ImagePullBackOff"));
    *s.fake.pull_error.lock().unwrap() = None;
    settle(Duration::from_secs(6)).await;
    assert_eq!(s.fake.starts_of("app").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_worker_adopts_running_containers_instead_of_starting_them() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PodSpec {
        containers: vec![container("app")],
        ..PodSpec::default()
    };
    let fake = Arc::new(Fake::default());
    let first = start_in(&pod(spec.clone()), fake.clone(), dir.path());
    settle(Duration::from_secs(1)).await;
    first.detach();
    assert_eq!(fake.starts_of("app").len(), 1);
    let again = Arc::new(Fake::default());
    again.adoptable.lock().unwrap().push("uid-app-0".into());
    let _second = start_in(&pod(spec), again.clone(), dir.path());
    settle(Duration::from_secs(1)).await;
    assert!(again.starts_of("app").is_empty());
    let cs = &again.last().container_statuses.unwrap()[0];
    assert!(cs.state.as_ref().unwrap().running.is_some());
    assert_eq!(cs.container_id.as_deref(), Some("skiff://uid-app-0"));
    // When the adopted run ends, the container restarts as usual.
    again.end("uid-app-0", exit(1, None));
    settle(Duration::from_secs(11)).await;
    assert_eq!(again.starts_of("app").len(), 1);
    assert_eq!(again.starts_of("app")[0].0, 1);
}

fn sidecar(name: &str) -> Container {
    Container {
        restart_policy: Some("Always".into()),
        ..container(name)
    }
}

fn init_status<'a>(
    status: &'a PodStatus,
    name: &str,
) -> &'a k8s_openapi::api::core::v1::ContainerStatus {
    status
        .init_container_statuses
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.name == name)
        .unwrap()
}

fn init_terminated(status: &PodStatus, name: &str) -> bool {
    init_status(status, name)
        .state
        .as_ref()
        .is_some_and(|s| s.terminated.is_some())
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_starts_in_order_and_keeps_running_beside_the_app() {
    let fake = Arc::new(Fake::default());
    fake.script("init-a", Script::Exit(0));
    fake.script("init-b", Script::Exit(0));
    let s = start(
        PodSpec {
            init_containers: Some(vec![
                container("init-a"),
                sidecar("proxy"),
                container("init-b"),
            ]),
            containers: vec![container("app")],
            ..PodSpec::default()
        },
        fake,
    );
    settle(Duration::from_secs(1)).await;
    let order = s.fake.order();
    assert_eq!(order, ["init-a", "proxy", "init-b", "app"]);
    let status = s.fake.last();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&status, "Initialized"), "True");
    assert_eq!(condition(&status, "Ready"), "True");
    let proxy = init_status(&status, "proxy");
    assert!(proxy.state.as_ref().unwrap().running.is_some(), "{proxy:?}");
    assert!(proxy.ready);
    assert_eq!(proxy.started, Some(true));
    assert!(init_terminated(&status, "init-b"));
}

#[tokio::test(start_paused = true)]
async fn the_next_init_container_waits_for_the_sidecars_startup_probe() {
    let fake = Arc::new(Fake::default());
    *fake.exec_code.lock().unwrap() = 1;
    let mut proxy = sidecar("proxy");
    proxy.startup_probe = Some(exec_probe(1, 30));
    let s = start(
        PodSpec {
            init_containers: Some(vec![proxy]),
            containers: vec![container("app")],
            ..PodSpec::default()
        },
        fake,
    );
    settle(Duration::from_secs(3)).await;
    assert!(s.fake.starts_of("app").is_empty());
    let status = s.fake.last();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&status, "Initialized"), "False");
    assert_eq!(init_status(&status, "proxy").started, Some(false));
    *s.fake.exec_code.lock().unwrap() = 0;
    settle(Duration::from_secs(2)).await;
    assert_eq!(s.fake.starts_of("app").len(), 1);
    let status = s.fake.last();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(init_status(&status, "proxy").started, Some(true));
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_is_restarted_whatever_the_pod_restart_policy() {
    let fake = Arc::new(Fake::default());
    let s = start(
        PodSpec {
            init_containers: Some(vec![sidecar("proxy")]),
            containers: vec![container("app")],
            restart_policy: Some("Never".into()),
            ..PodSpec::default()
        },
        fake,
    );
    settle(Duration::from_secs(1)).await;
    s.fake.end("uid-proxy-0", exit(0, None));
    settle(Duration::from_secs(12)).await;
    let starts = s.fake.starts_of("proxy");
    assert_eq!(starts.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(s.fake.starts_of("app").len(), 1, "the app runs on");
    let status = s.fake.last();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(init_status(&status, "proxy").restart_count, 1);
}

#[tokio::test(start_paused = true)]
async fn sidecars_do_not_block_completion_and_stop_after_the_app_in_reverse_order() {
    let fake = Arc::new(Fake::default());
    fake.script("app", Script::Exit(0));
    let s = start(
        PodSpec {
            init_containers: Some(vec![sidecar("logs"), sidecar("proxy")]),
            containers: vec![container("app")],
            restart_policy: Some("Never".into()),
            ..PodSpec::default()
        },
        fake,
    );
    settle(Duration::from_secs(2)).await;
    let status = s.fake.last();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let signalled: Vec<String> = s
        .fake
        .signals
        .lock()
        .unwrap()
        .iter()
        .map(|(id, sig, _)| format!("{id}:{sig}"))
        .collect();
    assert_eq!(signalled, ["uid-proxy-0:15", "uid-logs-0:15"]);
    assert_eq!(*s.fake.sandboxes_removed.lock().unwrap(), 1);
    assert_eq!(
        s.fake.starts_of("proxy").len(),
        1,
        "not restarted once done"
    );
    assert!(init_terminated(&status, "proxy"));
}

#[tokio::test(start_paused = true)]
async fn on_deletion_sidecars_stop_after_the_app_containers() {
    let fake = Arc::new(Fake::default());
    fake.script("app", Script::Serve { ignores_term: true });
    let spec = PodSpec {
        init_containers: Some(vec![sidecar("proxy")]),
        containers: vec![container("app")],
        ..PodSpec::default()
    };
    let s = start(spec.clone(), fake);
    settle(Duration::from_secs(1)).await;
    let mut deleting = pod(spec);
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    deleting.metadata.deletion_grace_period_seconds = Some(5);
    s.handle.update(Arc::new(deleting));
    settle(Duration::from_secs(30)).await;
    let signals = s.fake.signals.lock().unwrap().clone();
    let order: Vec<(String, i32)> = signals
        .iter()
        .map(|(id, sig, _)| (id.clone(), *sig))
        .collect();
    assert_eq!(
        order[..3],
        [
            ("uid-app-0".to_owned(), SIGTERM),
            ("uid-app-0".to_owned(), SIGKILL),
            ("uid-proxy-0".to_owned(), SIGTERM),
        ]
    );
    assert!(signals[2].2 >= signals[1].2);
    // The grace period was spent on the app: the sidecar still gets the least one.
    assert_eq!(order[3], ("uid-proxy-0".to_owned(), SIGKILL));
    assert_eq!((signals[3].2 - signals[2].2).as_secs(), 2);
    assert!(*s.fake.deleted.lock().unwrap());
}

/// Simulated fleets hold 50,000 waiting workers in one process: the steps are boxed so a
/// waiting worker's future stays near the size of its own state.
#[test]
fn a_waiting_worker_holds_little_more_than_its_state() {
    let fake = Arc::new(Fake::default());
    let config = Arc::new(WorkerConfig {
        host_ip: "192.0.2.1".into(),
        records: Arc::new(crate::pod::records::StatusRecords),
        volume_refresh: Duration::from_secs(10),
        backoff: backoff::Policy::default(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = Worker::new(
        Arc::new(pod(PodSpec::default())),
        fake.clone(),
        fake,
        config,
        tx,
        rx,
    );
    let state = std::mem::size_of_val(&worker);
    let future = worker.run();
    let size = std::mem::size_of_val(&future);
    assert!(
        size < state + 2048,
        "{size} bytes for {state} bytes of state"
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_taking_over_from_the_pods_status_writes_nothing_new() {
    let spec = PodSpec {
        containers: vec![container("app")],
        ..PodSpec::default()
    };
    let fake = Arc::new(Fake::default());
    let dir = tempfile::tempdir().unwrap();
    let first = start_in(&pod(spec.clone()), fake.clone(), dir.path());
    settle(Duration::from_secs(1)).await;
    first.detach();
    // What the API holds now; a new process knows nothing but that.
    let mut stored = pod(spec);
    stored.status = Some(fake.last());
    let again = Arc::new(Fake::default());
    again.adoptable.lock().unwrap().push("uid-app-0".into());
    let config = Arc::new(WorkerConfig {
        host_ip: "192.0.2.1".into(),
        records: Arc::new(crate::pod::records::StatusRecords),
        volume_refresh: Duration::from_secs(10),
        backoff: backoff::Policy::default(),
    });
    let _second = spawn(Arc::new(stored), again.clone(), again.clone(), config);
    settle(Duration::from_secs(1)).await;
    assert!(again.starts_of("app").is_empty(), "adopted, not started");
    assert!(
        again.statuses.lock().unwrap().is_empty(),
        "the stored status already said it all"
    );
    // The adopted run still ends and restarts as usual.
    again.end("uid-app-0", exit(1, None));
    settle(Duration::from_secs(11)).await;
    assert_eq!(again.starts_of("app").len(), 1);
    assert_eq!(again.last().container_statuses.unwrap()[0].restart_count, 1);
}

#[tokio::test(start_paused = true)]
async fn an_ephemeral_container_added_to_a_running_pod_runs_once_and_is_reported() {
    let fake = Arc::new(Fake::default());
    fake.script("debugger", Script::Exit(3));
    let spec = PodSpec {
        containers: vec![container("app")],
        ..PodSpec::default()
    };
    let s = start(spec.clone(), fake);
    settle(Duration::from_secs(1)).await;
    let mut debugged = spec;
    debugged.ephemeral_containers = Some(vec![k8s_openapi::api::core::v1::EphemeralContainer {
        name: "debugger".into(),
        image: Some("busybox:1".into()),
        ..Default::default()
    }]);
    s.handle.update(Arc::new(pod(debugged)));
    settle(Duration::from_mins(1)).await;
    assert_eq!(s.fake.starts_of("debugger").len(), 1, "never restarted");
    let status = s.fake.last();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let ephemeral = status.ephemeral_container_statuses.unwrap();
    let ended = ephemeral[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap();
    assert_eq!(
        (ephemeral[0].name.as_str(), ended.exit_code),
        ("debugger", 3)
    );
}
