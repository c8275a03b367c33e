//! What the node's HTTP endpoint serves on a real node: the log files, exec and attach
//! sessions of this node's containers, their cgroup usage, and the image store (import,
//! list, remove, pull).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use async_trait::async_trait;
use futures::StreamExt as _;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use skiff_node_runtime::{
    ContainerRuntime,
    container_exec::{self, ExecIo, ExecProcess},
    image::PullPolicy,
    terminal::ContainerTerminal,
};
use skiff_node_server::{
    BackendError, ContainerRef, ContainerStats, CpuStats, ImageSummary, LogOptions, LogSource,
    MemoryStats, NodeBackend, NodeStats, PodReference, PodStats, PortConnection, RunningFn,
    Session, SessionExit, SessionInput, SessionOutput, StreamOptions, Summary, TerminalSize,
    stream_log,
};
use skiff_types::ContainerId;
use tokio::io::AsyncWriteExt as _;

use super::backend::LocalBackend;

/// Images the node's pods use, each with one pod that uses it.
#[derive(Debug, Default)]
struct InUse {
    ids: HashMap<String, String>,
    names: HashMap<String, String>,
}

/// The real node's endpoint backend.
pub struct Endpoint {
    backend: Arc<LocalBackend>,
    pods: Arc<Mutex<HashMap<String, Arc<Pod>>>>,
    /// Last CPU reading per container, for a rate.
    cpu: Mutex<HashMap<String, (u64, SystemTime)>>,
    /// The Service proxy's metrics, when it runs.
    proxy: Option<Arc<super::services::ProxyMetrics>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("node", &self.backend.layout.node)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Serves `backend`'s containers for the pods in `pods` (by UID), and the Service
    /// proxy's metrics.
    #[must_use]
    pub fn new(
        backend: Arc<LocalBackend>,
        pods: Arc<Mutex<HashMap<String, Arc<Pod>>>>,
        proxy: Option<Arc<super::services::ProxyMetrics>>,
    ) -> Self {
        Self {
            backend,
            pods,
            cpu: Mutex::default(),
            proxy,
        }
    }

    /// What the node's pods use: by image id and by stored name, a pod using each.
    fn images_in_use(&self) -> InUse {
        let pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        let mut used = InUse::default();
        for pod in pods.values() {
            let Some(spec) = pod.spec.as_ref() else {
                continue;
            };
            let name = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            for container in spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
            {
                if let Some(image) = container
                    .image
                    .as_deref()
                    .and_then(|i| self.backend.images.lookup(i))
                {
                    used.ids.entry(image.id).or_insert_with(|| name.clone());
                    used.names
                        .entry(image.reference)
                        .or_insert_with(|| name.clone());
                }
            }
        }
        used
    }

    fn pod(&self, namespace: &str, name: &str) -> Result<Arc<Pod>, BackendError> {
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .cloned()
            .ok_or_else(|| BackendError::pod_not_found(namespace, name))
    }

    /// The runs of a container that left a log, oldest first.
    fn runs(&self, pod: &Pod, container: &str) -> Result<Vec<u32>, BackendError> {
        let spec = pod.spec.as_ref();
        let known = spec.is_some_and(|s| {
            s.containers.iter().any(|c| c.name == container)
                || s.init_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == container)
                || s.ephemeral_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == container)
        });
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        if !known {
            return Err(BackendError::container_not_found(name, container));
        }
        let dir = self
            .backend
            .log_path(pod, container, 0)
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default();
        let mut runs: Vec<u32> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        runs.sort_unstable();
        Ok(runs)
    }

    fn id(pod: &Pod, container: &str, run: u32) -> String {
        ContainerId::new(
            pod.metadata.uid.as_deref().unwrap_or_default(),
            container,
            run,
        )
        .to_string()
    }

    fn running(&self, id: &str) -> bool {
        self.backend.layout.containers.join(id).exists()
    }

    fn current(&self, target: &ContainerRef) -> Result<(Arc<Pod>, String), BackendError> {
        let pod = self.pod(&target.namespace, &target.pod)?;
        let run = self
            .runs(&pod, &target.container)?
            .last()
            .copied()
            .ok_or_else(|| {
                BackendError::BadRequest(format!(
                    "container {:?} in pod {:?} is waiting to start",
                    target.container, target.pod
                ))
            })?;
        let id = Self::id(&pod, &target.container, run);
        Ok((pod, id))
    }

    fn usage(&self, id: &str, usage: &skiff_node_runtime::Usage) -> (CpuStats, MemoryStats) {
        let time = Timestamp::try_from(usage.at)
            .unwrap_or_else(|_| Timestamp::now())
            .to_string();
        let mut last = self.cpu.lock().unwrap_or_else(PoisonError::into_inner);
        let rate = last.get(id).and_then(|(nanos, at)| {
            let elapsed = usage.at.duration_since(*at).ok()?.as_nanos();
            let used = u128::from(usage.cpu_usage_nanos.checked_sub(*nanos)?);
            (elapsed > 0).then(|| u64::try_from(used * 1_000_000_000 / elapsed).unwrap_or(u64::MAX))
        });
        last.insert(id.to_owned(), (usage.cpu_usage_nanos, usage.at));
        (
            CpuStats {
                time: time.clone(),
                usage_nano_cores: rate,
                usage_core_nano_seconds: Some(usage.cpu_usage_nanos),
            },
            MemoryStats {
                time,
                working_set_bytes: Some(usage.memory_working_set_bytes),
                usage_bytes: Some(usage.memory_usage_bytes),
            },
        )
    }
}

impl Endpoint {
    /// An attach to a `tty: true` container: input typed into its terminal, the terminal's
    /// output from now on, resizes; it ends when the container has ended and its output
    /// drained.
    fn terminal_session(
        &self,
        terminal: Arc<ContainerTerminal>,
        id: &str,
        opts: &StreamOptions,
    ) -> Session {
        let stdin = if opts.stdin {
            terminal
                .terminal()
                .input()
                .map_err(|err| tracing::warn!(id, %err, "attaching to a terminal's input"))
                .ok()
        } else {
            None
        };
        let stdout = if opts.stdout || opts.stderr {
            terminal.output()
        } else {
            None
        };
        let resize = opts.tty.then(|| {
            Box::new(move |size: TerminalSize| {
                if let Err(err) = terminal.terminal().resize(size.width, size.height) {
                    tracing::debug!(%err, "resizing a container terminal failed");
                }
            }) as Box<dyn FnMut(TerminalSize) + Send>
        });
        let runtime = self.backend.runtime.clone();
        let id = id.to_owned();
        let exit: SessionExit = Box::pin(async move {
            let _ = runtime.wait(&id).await;
            Ok(None)
        });
        Session {
            stdin,
            stdout,
            stderr: None,
            resize,
            exit,
        }
    }
}

/// Whether the pod's spec asks for a terminal for `container`.
fn wants_tty(pod: &Pod, container: &str) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == container && c.tty == Some(true))
            || s.ephemeral_containers
                .iter()
                .flatten()
                .any(|c| c.name == container && c.tty == Some(true))
    })
}

/// An exec'd process as a server session carrying the streams the client asked for.
fn session(mut process: ExecProcess, opts: &StreamOptions) -> Session {
    process.keep_outputs(opts.stdout, opts.stderr);
    let resize = process.terminal.take().map(|t| {
        Box::new(move |size: TerminalSize| {
            if let Err(err) = t.resize(size.width, size.height) {
                tracing::debug!(%err, "resizing an exec terminal failed");
            }
        }) as Box<dyn FnMut(TerminalSize) + Send>
    });
    Session {
        stdin: if opts.stdin {
            process.stdin.take()
        } else {
            None
        },
        stdout: process.stdout.take(),
        stderr: process.stderr.take(),
        resize,
        exit: Box::pin(async move {
            process
                .wait()
                .await
                .map(Some)
                .map_err(|e| BackendError::Internal(e.to_string()))
        }),
    }
}

#[async_trait]
impl NodeBackend for Endpoint {
    async fn log_source(
        &self,
        target: &ContainerRef,
        previous: bool,
    ) -> Result<LogSource, BackendError> {
        let pod = self.pod(&target.namespace, &target.pod)?;
        let runs = self.runs(&pod, &target.container)?;
        let pick = if previous {
            runs.len().checked_sub(2).map(|i| runs[i])
        } else {
            runs.last().copied()
        };
        let Some(run) = pick else {
            return Err(if previous {
                BackendError::BadRequest(format!(
                    "previous terminated container {:?} in pod {:?} not found",
                    target.container, target.pod
                ))
            } else {
                BackendError::BadRequest(format!(
                    "container {:?} in pod {:?} is waiting to start: ContainerCreating",
                    target.container, target.pod
                ))
            });
        };
        let id = Self::id(&pod, &target.container, run);
        let dir = self.backend.layout.containers.join(&id);
        Ok(LogSource {
            path: self.backend.log_path(&pod, &target.container, run),
            running: Arc::new(move || !previous && dir.exists()),
        })
    }

    async fn exec(
        &self,
        target: &ContainerRef,
        opts: &StreamOptions,
    ) -> Result<Session, BackendError> {
        let (_, id) = self.current(target)?;
        if !self.running(&id) {
            return Err(BackendError::BadRequest(format!(
                "container {} is not running",
                target.container
            )));
        }
        let io = ExecIo {
            stdin: opts.stdin,
            tty: opts.tty,
            env: Vec::new(),
        };
        let process =
            container_exec::exec(&self.backend.layout.runtime_state, &id, &opts.command, io)
                .await
                .map_err(|e| BackendError::Internal(e.to_string()))?;
        Ok(session(process, opts))
    }

    async fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<PortConnection, BackendError> {
        let pod = self.pod(namespace, pod)?;
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let internal = |e: String| BackendError::Internal(e);
        let stream = if host_network {
            // The daemon runs in the node's network namespace, which such a pod shares.
            tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
                .await
                .map_err(|e| internal(format!("connecting to localhost:{port}: {e}")))?
        } else {
            let uid = pod.metadata.uid.as_deref().unwrap_or_default();
            let std = self
                .backend
                .network
                .connect(uid, port)
                .await
                .map_err(|e| internal(e.to_string()))?;
            std.set_nonblocking(true)
                .and_then(|()| tokio::net::TcpStream::from_std(std))
                .map_err(|e| internal(e.to_string()))?
        };
        Ok(Box::pin(stream))
    }

    async fn attach(
        &self,
        target: &ContainerRef,
        opts: &StreamOptions,
    ) -> Result<Session, BackendError> {
        let (pod, id) = self.current(target)?;
        let dir = self.backend.layout.containers.join(&id);
        if !dir.exists() {
            return Err(BackendError::BadRequest(format!(
                "container {} is not running",
                target.container
            )));
        }
        if let Some(terminal) = self.backend.runtime.terminal(&id) {
            return Ok(self.terminal_session(terminal, &id, opts));
        }
        if opts.tty || wants_tty(&pod, &target.container) {
            return Err(BackendError::BadRequest(format!(
                "container {} has no terminal on this node (its terminal does not survive a \
                 node restart); its output is in its log",
                target.container
            )));
        }
        // Input goes into the container's stdin FIFO (there only when the spec asks for
        // `stdin: true`); output is the container's log from now on, both streams in one.
        let stdin: Option<SessionInput> = if opts.stdin {
            let fifo = dir.join("bundle").join("stdin.fifo");
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .await
                .map_err(|_| {
                    BackendError::BadRequest(format!(
                        "container {} was not started with stdin: true",
                        target.container
                    ))
                })?;
            Some(Box::pin(file))
        } else {
            None
        };
        let runs = self.runs(&pod, &target.container)?;
        let run = runs.last().copied().unwrap_or(0);
        let path = self.backend.log_path(&pod, &target.container, run);
        let gone = dir.clone();
        let running: RunningFn = Arc::new(move || gone.exists());
        // Lines from the moment of attaching on, so output that races the client's first
        // input is not lost; the session ends once the container stopped and its log drained.
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let stdout: Option<SessionOutput> = if opts.stdout || opts.stderr {
            let options = LogOptions {
                follow: true,
                since: Some(Timestamp::now()),
                ..LogOptions::default()
            };
            let stream = stream_log(path, options, running).await;
            let (reader, mut writer) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(Ok(chunk)) = stream.next().await {
                    if writer.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = writer.shutdown().await;
                let _ = done.send(());
            });
            Some(Box::pin(reader))
        } else {
            tokio::spawn(async move {
                while dir.exists() {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                let _ = done.send(());
            });
            None
        };
        let exit: SessionExit = Box::pin(async move {
            let _ = finished.await;
            Ok(None)
        });
        Ok(Session {
            stdin,
            stdout,
            stderr: None,
            resize: None,
            exit,
        })
    }

    async fn metrics(&self) -> Result<String, BackendError> {
        match &self.proxy {
            // Reading the kernel's maps or table blocks (for seconds with 10,000 Services).
            Some(proxy) => {
                let proxy = proxy.clone();
                tokio::task::spawn_blocking(move || proxy.render())
                    .await
                    .map_err(|e| BackendError::Internal(e.to_string()))?
                    .map_err(|e| BackendError::Internal(e.to_string()))
            }
            None => Ok(String::new()),
        }
    }

    async fn stats(&self) -> Result<Summary, BackendError> {
        let pods: Vec<Arc<Pod>> = self
            .pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for pod in pods {
            let mut containers = Vec::new();
            let (mut cpu_total, mut mem_total, mut any) = (0_u64, 0_u64, false);
            for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                let Ok(runs) = self.runs(&pod, &c.name) else {
                    continue;
                };
                let Some(run) = runs.last() else { continue };
                let id = Self::id(&pod, &c.name, *run);
                let Ok(usage) = self.backend.runtime.usage(&id).await else {
                    continue;
                };
                let (cpu, memory) = self.usage(&id, &usage);
                cpu_total += cpu.usage_nano_cores.unwrap_or(0);
                mem_total += memory.working_set_bytes.unwrap_or(0);
                any = true;
                containers.push(ContainerStats {
                    name: c.name.clone(),
                    start_time: None,
                    cpu: Some(cpu),
                    memory: Some(memory),
                });
            }
            let now = Timestamp::now().to_string();
            out.push(PodStats {
                pod_ref: PodReference {
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    uid: pod.metadata.uid.clone().unwrap_or_default(),
                },
                start_time: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .map(|t| t.0.to_string()),
                containers,
                cpu: any.then(|| CpuStats {
                    time: now.clone(),
                    usage_nano_cores: Some(cpu_total),
                    usage_core_nano_seconds: None,
                }),
                memory: any.then_some(MemoryStats {
                    time: now,
                    working_set_bytes: Some(mem_total),
                    usage_bytes: None,
                }),
            });
        }
        Ok(Summary {
            node: NodeStats {
                node_name: self.backend.layout.node.clone(),
                start_time: None,
                cpu: None,
                memory: None,
            },
            pods: out,
        })
    }

    async fn import_image(&self, tarball: &Path) -> Result<Vec<String>, BackendError> {
        let images = self.backend.images.clone();
        let path: PathBuf = tarball.to_owned();
        let imported = tokio::task::spawn_blocking(move || images.import(&path))
            .await
            .map_err(|e| BackendError::Internal(e.to_string()))?
            .map_err(|e| BackendError::BadRequest(e.to_string()))?;
        Ok(imported.into_iter().map(|i| i.reference).collect())
    }

    async fn list_images(&self) -> Result<Vec<ImageSummary>, BackendError> {
        let used: HashSet<String> = self.images_in_use().ids.into_keys().collect();
        Ok(self
            .backend
            .images
            .list()
            .into_iter()
            .map(|i| ImageSummary {
                in_use: used.contains(&i.id),
                reference: i.reference,
                id: i.id,
                size: i.size,
            })
            .collect())
    }

    async fn remove_image(&self, reference: &str) -> Result<String, BackendError> {
        let images = self.backend.images.clone();
        let image = images
            .lookup(reference)
            .ok_or_else(|| BackendError::NotFound(format!("image {reference:?} not found")))?;
        // Removing one name of an image that keeps another is harmless unless a pod runs it
        // by that name; removing by id, or the last name, takes the data its pods run on.
        let used = self.images_in_use();
        let by_id = image.id == reference || image.id == format!("sha256:{reference}");
        let other_names = images
            .list()
            .iter()
            .any(|i| i.id == image.id && i.reference != image.reference);
        let holder = if by_id || !other_names {
            used.ids.get(&image.id)
        } else {
            used.names.get(&image.reference)
        };
        if let Some(pod) = holder {
            return Err(BackendError::Conflict(format!(
                "image {reference:?} ({}) is used by pod {pod}",
                image.id
            )));
        }
        let owned = reference.to_owned();
        let removed = tokio::task::spawn_blocking(move || images.remove(&owned))
            .await
            .map_err(|e| BackendError::Internal(e.to_string()))?
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        Ok(removed.id)
    }

    async fn pull_image(&self, reference: &str) -> Result<ImageSummary, BackendError> {
        let image = self
            .backend
            .images
            .ensure(reference, PullPolicy::Always, &[])
            .await
            .map_err(|e| BackendError::BadRequest(e.to_string()))?;
        let in_use = self.images_in_use().ids.contains_key(&image.id);
        Ok(ImageSummary {
            reference: image.reference,
            id: image.id,
            size: image.size,
            in_use,
        })
    }
}
