//! The kubelet's backend on a simulated node: containers are timers. A pod's sandbox takes
//! `--pod-startup-ms` to make and gets an address from the node's range; an init container
//! exits 0 at once; a sidecar runs until stopped; an app container runs for
//! `skiff.io/sim-run-seconds` (a short default for pods of a Job, as kwok completes them,
//! else until stopped) and exits with `skiff.io/sim-exit-code`. SIGTERM ends a container
//! cleanly (exit 0), SIGKILL by the signal. No volumes, no images, no network traffic.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use k8s_openapi::{
    api::core::v1::{Container, ContainerStatus, Pod},
    jiff::Timestamp,
};
use kube::ResourceExt;
use skiff_kubelet::pod::backend::{BackendError, Exit, ImageInfo, PodBackend, Run, SandboxInfo};
use skiff_types::{ContainerId, ContainerRestartPolicy};
use tokio::{sync::watch, time::Instant};

use crate::{
    Naming,
    addresses::{PodIps, node_ip},
};

/// Pod annotation: the exit code the simulated app containers end with (default 0).
pub const EXIT_CODE: &str = "skiff.io/sim-exit-code";
/// Pod annotation: seconds the simulated app containers run before they exit (absent:
/// until the pod is deleted, like a server; for a Job's pods, the node's default run).
pub const RUN_SECONDS: &str = "skiff.io/sim-run-seconds";
/// How runs are named in pod status.
const SCHEME: &str = "sim://";
const SIGKILL: i32 = 9;

/// What one simulated container does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Behaviour {
    /// How long it runs; `None`: until signalled.
    run_for: Option<Duration>,
    /// How it exits when its time is up.
    code: i32,
}

/// A container that runs now.
#[derive(Debug)]
struct Script {
    exit_at: Option<Instant>,
    code: i32,
    /// The last signal sent to it.
    signal: watch::Sender<Option<i32>>,
}

/// The scripted backend every simulated node of a process shares.
#[derive(Debug)]
pub(crate) struct SimBackend {
    naming: Naming,
    node_ip_base: Ipv4Addr,
    pod_startup: Duration,
    job_run: Duration,
    ips: Mutex<PodIps>,
    /// Node index -> its `spec.podCIDR`, once node IPAM gave one.
    cidrs: Mutex<HashMap<usize, String>>,
    /// Pod UID -> (node index, address) of sandboxes with an address of their own.
    sandboxes: Mutex<HashMap<String, (usize, Ipv4Addr)>>,
    /// Runtime ID -> the running container.
    containers: Mutex<HashMap<String, Script>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn owned_by_job(pod: &Pod) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.kind == "Job" && o.api_version.starts_with("batch/"))
}

/// The pod's containers by name: the spec and whether it is a sidecar or an init container.
fn find<'a>(pod: &'a Pod, name: &str) -> Option<(&'a Container, Kind)> {
    let spec = pod.spec.as_ref()?;
    if let Some(c) = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == name)
    {
        let sidecar = ContainerRestartPolicy::from_field(c.restart_policy.as_deref())
            .is_ok_and(ContainerRestartPolicy::is_sidecar);
        return Some((c, if sidecar { Kind::Sidecar } else { Kind::Init }));
    }
    spec.containers
        .iter()
        .find(|c| c.name == name)
        .map(|c| (c, Kind::App))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Init,
    Sidecar,
    App,
}

impl SimBackend {
    /// A backend for the nodes `naming` names.
    pub(crate) fn new(
        naming: Naming,
        node_ip_base: Ipv4Addr,
        pod_startup: Duration,
        job_run: Duration,
    ) -> Self {
        Self {
            naming,
            node_ip_base,
            pod_startup,
            job_run,
            ips: Mutex::default(),
            cidrs: Mutex::default(),
            sandboxes: Mutex::default(),
            containers: Mutex::default(),
        }
    }

    /// Node `index` got (or lost) a pod CIDR.
    pub(crate) fn set_pod_cidr(&self, index: usize, cidr: Option<String>) {
        let mut cidrs = lock(&self.cidrs);
        match cidr {
            Some(c) => cidrs.insert(index, c),
            None => cidrs.remove(&index),
        };
    }

    /// Node `index` is no longer simulated.
    pub(crate) fn forget_node(&self, index: usize) {
        lock(&self.cidrs).remove(&index);
        lock(&self.ips).forget(index);
        lock(&self.sandboxes).retain(|_, (node, _)| *node != index);
    }

    fn node_of(&self, pod: &Pod) -> Option<usize> {
        self.naming
            .index_of(pod.spec.as_ref()?.node_name.as_deref()?)
    }

    fn behaviour(&self, pod: &Pod, kind: Kind) -> Behaviour {
        let annotation = |key: &str| pod.annotations().get(key).map(|v| v.trim().to_owned());
        match kind {
            Kind::Init => Behaviour {
                run_for: Some(Duration::ZERO),
                code: 0,
            },
            Kind::Sidecar => Behaviour {
                run_for: None,
                code: 0,
            },
            Kind::App => Behaviour {
                run_for: annotation(RUN_SECONDS)
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64)
                    .or_else(|| owned_by_job(pod).then_some(self.job_run)),
                code: annotation(EXIT_CODE)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            },
        }
    }

    fn run(&self, id: String, behaviour: Behaviour, ran: Duration) {
        let script = Script {
            exit_at: behaviour
                .run_for
                .map(|r| Instant::now() + r.saturating_sub(ran)),
            code: behaviour.code,
            signal: watch::Sender::new(None),
        };
        lock(&self.containers).insert(id, script);
    }
}

fn running_since(status: &ContainerStatus) -> Option<Timestamp> {
    Some(
        status
            .state
            .as_ref()?
            .running
            .as_ref()?
            .started_at
            .as_ref()?
            .0,
    )
}

fn lost() -> Exit {
    Exit {
        code: None,
        signal: None,
        oom_killed: false,
        finished_at: Timestamp::now(),
    }
}

#[async_trait]
impl PodBackend for SimBackend {
    async fn create_sandbox(&self, pod: &Pod) -> Result<SandboxInfo, BackendError> {
        tokio::time::sleep(self.pod_startup).await;
        let node = self.node_of(pod).ok_or_else(|| {
            BackendError::new(
                "FailedCreatePodSandBox",
                "the pod is on no node of this process",
            )
        })?;
        if host_network(pod) {
            return Ok(SandboxInfo {
                ip: Some(node_ip(self.node_ip_base, node).to_string()),
                ..SandboxInfo::default()
            });
        }
        let uid = pod.uid().unwrap_or_default();
        if let Some((_, ip)) = lock(&self.sandboxes).get(&uid) {
            return Ok(SandboxInfo {
                ip: Some(ip.to_string()),
                ..SandboxInfo::default()
            });
        }
        let cidr = lock(&self.cidrs).get(&node).cloned();
        let ip = lock(&self.ips)
            .allocate(node, cidr.as_deref())
            .ok_or_else(|| {
                BackendError::new("FailedCreatePodSandBox", "no free pod address on the node")
            })?;
        lock(&self.sandboxes).insert(uid, (node, ip));
        Ok(SandboxInfo {
            ip: Some(ip.to_string()),
            ..SandboxInfo::default()
        })
    }

    async fn adopt_sandbox(&self, pod: &Pod, sandbox: &SandboxInfo) {
        let (Some(node), Some(ip)) = (
            self.node_of(pod),
            sandbox.ip.as_deref().and_then(|ip| ip.parse().ok()),
        ) else {
            return;
        };
        if host_network(pod) {
            return;
        }
        let cidr = lock(&self.cidrs).get(&node).cloned();
        lock(&self.ips).reserve(node, cidr.as_deref(), ip);
        lock(&self.sandboxes).insert(pod.uid().unwrap_or_default(), (node, ip));
    }

    async fn remove_sandbox(&self, uid: &str) -> Result<(), BackendError> {
        if let Some((node, ip)) = lock(&self.sandboxes).remove(uid) {
            lock(&self.ips).release(node, ip);
        }
        Ok(())
    }

    async fn setup_volumes(&self, _pod: &Pod, _sandbox: &SandboxInfo) -> Result<(), BackendError> {
        Ok(())
    }

    async fn pull_image(
        &self,
        _pod: &Pod,
        container: &Container,
    ) -> Result<ImageInfo, BackendError> {
        let id = format!("{SCHEME}{}", container.image.as_deref().unwrap_or_default());
        Ok(ImageInfo {
            image_ref: id.clone(),
            id,
            ..ImageInfo::default()
        })
    }

    async fn start_container(&self, run: Run<'_>) -> Result<ContainerId, BackendError> {
        let kind = find(run.pod, &run.container.name).map_or(Kind::App, |(_, k)| k);
        let id = ContainerId::new(
            run.pod.metadata.uid.as_deref().unwrap_or_default(),
            &run.container.name,
            u32::try_from(run.restart).unwrap_or_default(),
        );
        self.run(
            id.to_string(),
            self.behaviour(run.pod, kind),
            Duration::ZERO,
        );
        Ok(id)
    }

    fn status_id(&self, id: &ContainerId) -> String {
        format!("{SCHEME}{id}")
    }

    async fn adopt_container(&self, pod: &Pod, id: &str) -> bool {
        let Ok(parsed) = id.parse::<ContainerId>() else {
            return false;
        };
        let Some((_, kind)) = find(pod, &parsed.container) else {
            return false;
        };
        let status = pod.status.as_ref();
        let statuses = status.and_then(|s| {
            s.init_container_statuses
                .iter()
                .chain(&s.container_statuses)
                .flatten()
                .find(|c| c.name == parsed.container)
                .cloned()
        });
        let Some(since) = statuses.as_ref().and_then(running_since) else {
            return false;
        };
        let ran = Duration::try_from(Timestamp::now().duration_since(since)).unwrap_or_default();
        self.run(id.to_owned(), self.behaviour(pod, kind), ran);
        true
    }

    async fn wait_container(&self, id: &str) -> Exit {
        let Some((exit_at, code, mut signal)) = lock(&self.containers)
            .get(id)
            .map(|s| (s.exit_at, s.code, s.signal.subscribe()))
        else {
            return lost();
        };
        let timer = async {
            match exit_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let signalled = async {
            loop {
                if let Some(sig) = *signal.borrow_and_update() {
                    return Some(sig);
                }
                if signal.changed().await.is_err() {
                    return None;
                }
            }
        };
        let exit = |code, signal| Exit {
            code,
            signal,
            oom_killed: false,
            finished_at: Timestamp::now(),
        };
        tokio::select! {
            () = timer => exit(Some(code), None),
            sig = signalled => match sig {
                Some(SIGKILL) => exit(None, Some(SIGKILL)),
                // A container that handles SIGTERM stops cleanly.
                Some(_) => exit(Some(0), None),
                None => lost(),
            },
        }
    }

    async fn signal_container(&self, id: &str, signal: i32) -> Result<(), BackendError> {
        if let Some(s) = lock(&self.containers).get(id) {
            s.signal.send_replace(Some(signal));
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), BackendError> {
        lock(&self.containers).remove(id);
        Ok(())
    }

    async fn exec(
        &self,
        _id: &str,
        _command: &[String],
        _timeout: Duration,
    ) -> Result<i32, BackendError> {
        Ok(0)
    }

    fn network_checks(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::PodSpec,
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    };

    use super::*;

    fn backend() -> SimBackend {
        SimBackend::new(
            Naming {
                prefix: "sim-".into(),
                count: 4,
            },
            Ipv4Addr::new(127, 64, 0, 1),
            Duration::ZERO,
            Duration::from_secs(1),
        )
    }

    fn pod(annotations: &[(&str, &str)], owner: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some("0b5c2f5e-7a43-4d7f-9a65-0c3c3d9b1e21".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                owner_references: owner.map(|kind| {
                    vec![OwnerReference {
                        api_version: "batch/v1".into(),
                        kind: kind.into(),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("sim-2".into()),
                init_containers: Some(vec![
                    Container {
                        name: "setup".into(),
                        ..Container::default()
                    },
                    Container {
                        name: "proxy".into(),
                        restart_policy: Some("Always".into()),
                        ..Container::default()
                    },
                ]),
                containers: vec![Container {
                    name: "app".into(),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn annotations_give_the_run_and_exit_code_and_jobs_finish_by_default() {
        let b = backend();
        let run = |p: &Pod, name| b.behaviour(p, find(p, name).unwrap().1);
        let plain = pod(&[], None);
        assert_eq!(
            run(&plain, "app").run_for,
            None,
            "a server runs until stopped"
        );
        assert_eq!(run(&plain, "setup").run_for, Some(Duration::ZERO));
        assert_eq!(run(&plain, "proxy").run_for, None);
        let job = pod(&[], Some("Job"));
        assert_eq!(
            run(&job, "app"),
            Behaviour {
                run_for: Some(Duration::from_secs(1)),
                code: 0
            }
        );
        let annotated = pod(&[(RUN_SECONDS, "2.5"), (EXIT_CODE, "3")], Some("Job"));
        assert_eq!(
            run(&annotated, "app"),
            Behaviour {
                run_for: Some(Duration::from_millis(2500)),
                code: 3
            }
        );
        assert_eq!(run(&pod(&[], Some("ReplicaSet")), "app").run_for, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_exits_when_its_time_is_up_or_when_signalled() {
        let b = backend();
        let p = pod(&[(RUN_SECONDS, "5"), (EXIT_CODE, "4")], None);
        let app = p.spec.as_ref().unwrap().containers[0].clone();
        let (sandbox, image) = (SandboxInfo::default(), ImageInfo::default());
        let run = Run {
            pod: &p,
            sandbox: &sandbox,
            container: &app,
            image: &image,
            restart: 0,
        };
        let id = b.start_container(run).await.unwrap();
        assert_eq!(b.status_id(&id), format!("sim://{id}"));
        let started = Instant::now();
        let exit = b.wait_container(&id.to_string()).await;
        assert_eq!(
            (exit.code, started.elapsed()),
            (Some(4), Duration::from_secs(5))
        );
        let id = b
            .start_container(Run { restart: 1, ..run })
            .await
            .unwrap()
            .to_string();
        b.signal_container(&id, 15).await.unwrap();
        assert_eq!(b.wait_container(&id).await.code, Some(0));
        b.signal_container(&id, SIGKILL).await.unwrap();
        let killed = b.wait_container(&id).await;
        assert_eq!((killed.code, killed.signal), (None, Some(SIGKILL)));
        b.remove_container(&id).await.unwrap();
        assert_eq!(b.wait_container(&id).await.code, None, "gone");
    }

    #[tokio::test]
    async fn sandboxes_get_addresses_of_their_node_and_give_them_back() {
        let b = backend();
        let p = pod(&[], None);
        let first = b.create_sandbox(&p).await.unwrap();
        assert_eq!(first.ip.as_deref(), Some("10.244.2.2"));
        // The same pod asks again (a retried sync): the same address.
        assert_eq!(b.create_sandbox(&p).await.unwrap(), first);
        b.remove_sandbox(p.metadata.uid.as_deref().unwrap())
            .await
            .unwrap();
        let mut other = pod(&[], None);
        other.metadata.uid = Some("another".into());
        b.set_pod_cidr(2, Some("10.9.0.0/24".into()));
        assert_eq!(
            b.create_sandbox(&other).await.unwrap().ip.as_deref(),
            Some("10.9.0.2")
        );
        let mut host = pod(&[], None);
        host.spec.as_mut().unwrap().host_network = Some(true);
        assert_eq!(
            b.create_sandbox(&host).await.unwrap().ip.as_deref(),
            Some("127.64.0.3")
        );
    }
}
