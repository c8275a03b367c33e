//! Pod volumes against the real kernel: a `medium: Memory` emptyDir is a tmpfs of its
//! `sizeLimit`, a secret volume is a tmpfs, teardown unmounts them, a configMap update
//! reaches a bind mount made before it (what a running container sees), and sub paths are
//! bound once per container and detached on teardown.

use std::{
    collections::BTreeMap,
    fs,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
};

use k8s_openapi::{
    api::core::v1::{
        ConfigMapVolumeSource, Container, EmptyDirVolumeSource, Pod, PodSpec, SecretVolumeSource,
        Volume, VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use skiff_kubelet::pod::{
    command::{ConfigError, NodeLimits, Sources},
    volume::{Mounter, SystemMounter, VolumeManager},
};
use skiff_tests::require_root;
use skiff_types::mountinfo::{self, Mount};

fn mounts() -> Vec<Mount> {
    mountinfo::mounts(&fs::read_to_string("/proc/self/mountinfo").expect("mountinfo is readable"))
}

fn mount_at(path: &Path) -> Option<Mount> {
    let path = fs::canonicalize(path).ok()?;
    mounts().into_iter().rfind(|m| m.point == path)
}

/// The pods directory of a test; dropping it detaches every mount left under it before the
/// directory is removed, so a failing test leaves nothing mounted.
struct PodsDir {
    dir: tempfile::TempDir,
}

impl PodsDir {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skt-vol-")
            .tempdir()
            .expect("a temporary directory");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PodsDir {
    fn drop(&mut self) {
        let Ok(root) = fs::canonicalize(self.dir.path()) else {
            return;
        };
        let mut left: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|m| m.point)
            .filter(|p| p.starts_with(&root))
            .collect();
        left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in left {
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

type Data = BTreeMap<String, Vec<u8>>;
type Fetch<'a> = Pin<Box<dyn Future<Output = Result<Option<Data>, ConfigError>> + Send + 'a>>;

/// One configMap and one secret, held in memory.
struct StaticSources {
    config: Mutex<Data>,
    secret: Data,
}

// Written out by hand: this crate does not depend on async-trait, and the trait's methods
// are plain boxed futures underneath.
impl Sources for StaticSources {
    fn config_map<'s, 'n, 'm, 'f>(&'s self, _namespace: &'n str, name: &'m str) -> Fetch<'f>
    where
        's: 'f,
        'n: 'f,
        'm: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            Ok((name == "cfg").then(|| {
                self.config
                    .lock()
                    .expect("the lock is not poisoned")
                    .clone()
            }))
        })
    }

    fn secret<'s, 'n, 'm, 'f>(&'s self, _namespace: &'n str, name: &'m str) -> Fetch<'f>
    where
        's: 'f,
        'n: 'f,
        'm: 'f,
        Self: 'f,
    {
        Box::pin(async move { Ok((name == "sec").then(|| self.secret.clone())) })
    }
}

fn manager(pods: &Path) -> (VolumeManager, Arc<StaticSources>) {
    let sources = Arc::new(StaticSources {
        config: Mutex::new(BTreeMap::from([("app.conf".to_owned(), b"v1".to_vec())])),
        secret: BTreeMap::from([("token".to_owned(), b"s3cr3t".to_vec())]),
    });
    let manager = VolumeManager::new(
        pods.to_owned(),
        Arc::clone(&sources) as Arc<dyn Sources>,
        Arc::new(SystemMounter),
        NodeLimits::default(),
    );
    (manager, sources)
}

fn pod(uid: &str) -> Pod {
    let volume = |name: &str| Volume {
        name: name.to_owned(),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some("vol".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some(uid.to_owned()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            volumes: Some(vec![
                Volume {
                    empty_dir: Some(EmptyDirVolumeSource {
                        medium: Some("Memory".to_owned()),
                        size_limit: Some(Quantity("16Mi".to_owned())),
                    }),
                    ..volume("mem")
                },
                Volume {
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..volume("disk")
                },
                Volume {
                    secret: Some(SecretVolumeSource {
                        secret_name: Some("sec".to_owned()),
                        ..Default::default()
                    }),
                    ..volume("creds")
                },
                Volume {
                    config_map: Some(ConfigMapVolumeSource {
                        name: "cfg".to_owned(),
                        ..Default::default()
                    }),
                    ..volume("config")
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn memory_empty_dir_and_secret_are_tmpfs_until_teardown() {
    if !require_root("memory_empty_dir_and_secret_are_tmpfs_until_teardown") {
        return;
    }
    let pods = PodsDir::new();
    let (volumes, _) = manager(pods.path());
    let uid = "skt-pod-1";
    let p = pod(uid);
    volumes.setup(&p, Some("10.0.0.9")).await.unwrap();
    // A refresh must not stack a second tmpfs on the first.
    volumes.setup(&p, Some("10.0.0.9")).await.unwrap();

    let vols = pods.path().join(uid).join("volumes");
    let mem = vols.join("kubernetes.io~empty-dir/mem");
    let entry = mount_at(&mem).expect("memory emptyDir is a mount point");
    assert_eq!(entry.fs_type, "tmpfs");
    assert!(
        entry.super_options.split(',').any(|o| o == "size=16384k"),
        "{entry:?}"
    );
    let root = fs::canonicalize(pods.path()).unwrap();
    let under_pod = mounts()
        .iter()
        .filter(|m| m.point.starts_with(&root))
        .count();
    assert_eq!(under_pod, 2, "one tmpfs each for mem and creds");

    let disk = vols.join("kubernetes.io~empty-dir/disk");
    assert!(disk.is_dir());
    assert!(
        mount_at(&disk).is_none(),
        "disk emptyDir is a plain directory"
    );

    let creds = vols.join("kubernetes.io~secret/creds");
    let entry = mount_at(&creds).expect("secret volume is a mount point");
    assert_eq!(entry.fs_type, "tmpfs");
    assert_eq!(fs::read_to_string(creds.join("token")).unwrap(), "s3cr3t");
    assert!(SystemMounter.is_mounted(&creds));

    let config = vols.join("kubernetes.io~configmap/config");
    assert_eq!(fs::read_to_string(config.join("app.conf")).unwrap(), "v1");

    fs::write(mem.join("scratch"), vec![0_u8; 1 << 20]).unwrap();
    volumes.teardown(uid).await.unwrap();
    assert!(mount_at(&mem).is_none());
    assert!(mount_at(&creds).is_none());
    assert!(
        !mounts().iter().any(|m| m.point.starts_with(&root)),
        "nothing mounted under the pods dir"
    );
    assert!(!pods.path().join(uid).exists());
    volumes.teardown(uid).await.unwrap();
}

#[tokio::test]
async fn memory_empty_dir_refuses_writes_beyond_its_size_limit() {
    if !require_root("memory_empty_dir_refuses_writes_beyond_its_size_limit") {
        return;
    }
    let pods = PodsDir::new();
    let (volumes, _) = manager(pods.path());
    let uid = "skt-pod-2";
    volumes.setup(&pod(uid), None).await.unwrap();
    let mem = pods
        .path()
        .join(uid)
        .join("volumes/kubernetes.io~empty-dir/mem");
    let err = fs::write(mem.join("big"), vec![0_u8; 17 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    volumes.teardown(uid).await.unwrap();
    assert!(mount_at(&mem).is_none());
}

#[tokio::test]
async fn config_map_update_reaches_an_existing_bind_mount() {
    if !require_root("config_map_update_reaches_an_existing_bind_mount") {
        return;
    }
    let pods = PodsDir::new();
    let (volumes, sources) = manager(pods.path());
    let uid = "skt-pod-3";
    volumes.setup(&pod(uid), None).await.unwrap();
    let config = pods
        .path()
        .join(uid)
        .join("volumes/kubernetes.io~configmap/config");
    // What a container sees: a bind mount of the volume made before the update.
    let view = pods.path().join("skt-view");
    fs::create_dir(&view).unwrap();
    nix::mount::mount(
        Some(&config),
        &view,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    assert_eq!(fs::read_to_string(view.join("app.conf")).unwrap(), "v1");

    sources
        .config
        .lock()
        .unwrap()
        .insert("app.conf".to_owned(), b"v2".to_vec());
    volumes.setup(&pod(uid), None).await.unwrap();
    assert_eq!(fs::read_to_string(view.join("app.conf")).unwrap(), "v2");

    nix::mount::umount2(&view, nix::mount::MntFlags::MNT_DETACH).unwrap();
    volumes.teardown(uid).await.unwrap();
}

#[tokio::test]
async fn sub_paths_are_bound_once_per_container_and_detached_on_teardown() {
    if !require_root("sub_paths_are_bound_once_per_container_and_detached_on_teardown") {
        return;
    }
    let pods = PodsDir::new();
    let (volumes, _) = manager(pods.path());
    let uid = "skt-pod-4";
    let mount = |volume: &str, path: &str, sub: &str| VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        sub_path: Some(sub.to_owned()),
        ..VolumeMount::default()
    };
    let app = Container {
        name: "app".to_owned(),
        volume_mounts: Some(vec![
            mount("disk", "/logs", "logs/app"),
            mount("config", "/etc/app.conf", "app.conf"),
        ]),
        ..Container::default()
    };
    let mut p = pod(uid);
    if let Some(spec) = p.spec.as_mut() {
        spec.containers = vec![app.clone()];
    }
    volumes.setup(&p, None).await.unwrap();
    let env = std::collections::HashMap::new();
    let first = volumes.mounts(&p, &app, &env).unwrap();
    // A restart of the container: the same targets, not a second mount stacked on each.
    let again = volumes.mounts(&p, &app, &env).unwrap();
    assert_eq!(first, again);
    let (logs, conf) = (&first[0].source, &first[1].source);
    for target in [logs, conf] {
        let root = fs::canonicalize(target).unwrap();
        let stacked = mounts().iter().filter(|m| m.point == root).count();
        assert_eq!(stacked, 1, "{}", target.display());
    }
    // The targets show the volume's files: what the node writes into the volume is there.
    let disk = pods
        .path()
        .join(uid)
        .join("volumes/kubernetes.io~empty-dir/disk/logs/app");
    fs::write(disk.join("line"), "x").unwrap();
    assert_eq!(fs::read_to_string(logs.join("line")).unwrap(), "x");
    assert_eq!(fs::read_to_string(conf).unwrap(), "v1");

    volumes.teardown(uid).await.unwrap();
    let root = fs::canonicalize(pods.path()).unwrap();
    assert!(
        !mounts().iter().any(|m| m.point.starts_with(&root)),
        "nothing mounted under the pods dir"
    );
    assert!(!pods.path().join(uid).join("volume-subpaths").exists());
}
