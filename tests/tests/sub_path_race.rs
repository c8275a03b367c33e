//! The kubelet subPath race (CVE-2017-1002101, CVE-2021-25741) against real containers: one
//! container of a pod keeps swapping components of a shared emptyDir for symlinks to a host
//! directory while the pod's other container, which mounts a `subPath` of that emptyDir, is
//! started again and again. A marker file in the host directory must never be visible in
//! the second container, nor on the bind target the node prepared for it.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, Pod, PodSpec, Volume, VolumeMount as K8sVolumeMount,
};
use skiff_kubelet::pod::{
    command::{ConfigError, NodeLimits, Sources},
    volume::{SystemMounter, VolumeError, VolumeManager},
};
use skiff_node_runtime::{ContainerConfig, ContainerRuntime, Libcontainer, MountSpec};
use skiff_tests::{
    container::{CGROUP_ROOT, Sandbox},
    node::mounts_under,
    require_root, unique_name,
};

const APPLETS: [&str; 9] = [
    "sh", "echo", "sleep", "ln", "rm", "mkdir", "test", "[", "true",
];
/// How many times the reading container is started.
const STARTS: usize = 120;

/// No configMaps or secrets: the pod has only an emptyDir.
struct NoSources;

#[async_trait::async_trait]
impl Sources for NoSources {
    async fn config_map(
        &self,
        _namespace: &str,
        _name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        Ok(None)
    }

    async fn secret(
        &self,
        _namespace: &str,
        _name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        Ok(None)
    }
}

fn pod(uid: &str) -> Pod {
    let mount = |path: &str, sub_path: Option<&str>| K8sVolumeMount {
        name: "shared".to_owned(),
        mount_path: path.to_owned(),
        sub_path: sub_path.map(str::to_owned),
        ..K8sVolumeMount::default()
    };
    Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("race".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some(uid.to_owned()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            volumes: Some(vec![Volume {
                name: "shared".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            containers: vec![
                Container {
                    name: "swapper".to_owned(),
                    volume_mounts: Some(vec![mount("/shared", None)]),
                    ..Container::default()
                },
                Container {
                    name: "reader".to_owned(),
                    volume_mounts: Some(vec![mount("/mnt", Some("sub/data"))]),
                    ..Container::default()
                },
            ],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// The swapping container's loop. `sub`, the first component of the sub path, turns into
/// an absolute symlink to the host directory, goes missing (the node may then make it), and
/// turns into a symlink inside the volume; inside, `real/data` turns from a link to the
/// volume's `store` into an absolute symlink to the host's `data` and back.
fn swapper_script(host: &Path) -> String {
    let host = host.display();
    format!(
        "cd /shared; mkdir -p real store; ln -sfn ../store real/data; \
         while true; do \
           rm -rf sub; ln -s {host} sub; \
           rm -f sub; ln -s real sub; \
           ln -sfn {host}/data real/data; \
           ln -sfn ../store real/data; \
         done"
    )
}

/// The pod's containers: a sandbox and the runtime.
struct Containers {
    sandbox: Sandbox,
    runtime: Libcontainer,
}

impl Containers {
    fn config(&self, id: &str, script: &str, mounts: Vec<MountSpec>) -> ContainerConfig {
        ContainerConfig {
            mounts,
            ..self.sandbox.config(id, &["/bin/sh", "-c", script])
        }
    }
}

fn bind_mounts(mounts: Vec<skiff_kubelet::pod::volume::VolumeMount>) -> Vec<MountSpec> {
    mounts
        .into_iter()
        .map(|m| MountSpec::bind(m.destination, m.source, m.read_only))
        .collect()
}

/// What the starts of the reading container came to.
#[derive(Debug, Default)]
struct Tally {
    /// The sub path was bound and the container saw the volume, not the host.
    clean: usize,
    /// The node refused the sub path (it left the volume at that moment) or could not
    /// open or bind it (it was deleted meanwhile), by reason.
    refused: BTreeMap<String, usize>,
    /// The runtime could not mount the target: what was bound there has been deleted since
    /// (the kernel refuses to bind an unlinked directory).
    not_started: usize,
    /// The host's marker was visible: the race was won.
    leaked: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_swapping_symlinks_never_gets_a_host_path_into_a_sub_path_mount() -> Result<()>
{
    if !require_root("a_container_swapping_symlinks_never_gets_a_host_path_into_a_sub_path_mount") {
        return Ok(());
    }
    let tmp = tempfile::Builder::new().prefix("skt-subpath-").tempdir()?;
    let dir = tmp.path().to_owned();
    // The host directory the swapper points at, with the marker that must stay out of sight.
    let host = dir.join("host");
    fs::create_dir_all(host.join("data"))?;
    fs::write(host.join("data/marker"), "host")?;
    fs::write(host.join("marker"), "host")?;
    let containers = Containers {
        sandbox: Sandbox::new(&dir, &APPLETS, "skt-sp")?,
        runtime: Libcontainer::new(dir.join("containers-state"), CGROUP_ROOT.into()),
    };
    let pods = dir.join("pods");
    let volumes = VolumeManager::new(
        pods.clone(),
        Arc::new(NoSources),
        Arc::new(SystemMounter),
        NodeLimits::default(),
    );
    let uid = unique_name("skt-race");
    let pod = pod(&uid);
    let spec = pod.spec.as_ref().context("spec")?;
    let (swapper, reader) = (&spec.containers[0], &spec.containers[1]);
    volumes.setup(&pod, None).await?;

    let env = HashMap::new();
    let swapper_id = format!("{uid}-swapper");
    let swapper_mounts = bind_mounts(volumes.mounts(&pod, swapper, &env)?);
    let swapper_config = containers.config(&swapper_id, &swapper_script(&host), swapper_mounts);
    containers.runtime.start(&swapper_config).await?;

    let result = race(&containers, &volumes, &pod, reader).await;

    let _ = containers.runtime.delete(&swapper_id).await;
    volumes.teardown(&uid).await?;
    let left = mounts_under(&pods);
    ensure!(left.is_empty(), "mounts left under the pods dir: {left:?}");
    ensure!(
        fs::read_to_string(host.join("data/marker"))? == "host",
        "the host directory was changed"
    );
    let tally = result?;
    eprintln!(
        "reader started {STARTS} times: {} clean, {} not started; refused: {:?}",
        tally.clean, tally.not_started, tally.refused
    );
    ensure!(
        tally.leaked.is_empty(),
        "host path visible: {:?}",
        tally.leaked
    );
    // Enough starts got a mount to have given the race a chance.
    ensure!(tally.clean >= STARTS / 10, "{tally:?}");
    Ok(())
}

/// Starts the reader `STARTS` times while the swapper runs, preparing its mounts again
/// after each refusal, as a pod worker retries a container whose start failed.
async fn race(
    containers: &Containers,
    volumes: &VolumeManager,
    pod: &Pod,
    reader: &Container,
) -> Result<Tally> {
    let env = HashMap::new();
    let mut tally = Tally::default();
    // The swapper gets going first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for start in 0..STARTS {
        let mut tries = 0;
        let mounts = loop {
            tries += 1;
            ensure!(
                tries < 100_000,
                "start {start}: never got the reader's mounts"
            );
            match volumes.mounts(pod, reader, &env) {
                Ok(mounts) => break mounts,
                Err(
                    err @ (VolumeError::InvalidSubPath { .. }
                    | VolumeError::Io { .. }
                    | VolumeError::Mount { .. }),
                ) => {
                    let reason = err.to_string();
                    let reason = reason.split(": ").last().unwrap_or_default().to_owned();
                    *tally.refused.entry(reason).or_default() += 1;
                }
                Err(err) => return Err(err).context("preparing the reader's mounts"),
            }
        };
        let target = &mounts[0].source;
        // The node's own view of the bind target, checked at once.
        if target.join("marker").exists() {
            tally
                .leaked
                .push(format!("start {start}: on the target {}", target.display()));
        }
        let id = format!(
            "{}-reader-{start}",
            pod.metadata.uid.as_deref().unwrap_or("")
        );
        let config = containers.config(
            &id,
            "if [ -e /mnt/marker ]; then echo LEAK; else echo clean; fi",
            bind_mounts(mounts),
        );
        if let Err(err) = containers.runtime.start(&config).await {
            ensure!(
                err.to_string().contains("rootfs"),
                "start {start}: the reader failed for another reason: {err}"
            );
            tally.not_started += 1;
            continue;
        }
        let status = tokio::time::timeout(Duration::from_secs(20), containers.runtime.wait(&id))
            .await
            .context("the reader did not exit")??;
        let log = fs::read_to_string(&config.log_path).unwrap_or_default();
        containers.runtime.delete(&id).await?;
        ensure!(status.code == Some(0), "start {start}: {status:?}: {log}");
        if log.contains("LEAK") {
            tally
                .leaked
                .push(format!("start {start}: inside the container"));
        } else if log.contains("clean") {
            tally.clean += 1;
        } else {
            anyhow::bail!("start {start}: unexpected output {log:?}");
        }
    }
    Ok(tally)
}
